/* backend.h: what the trainer asks of a backend (CPU reference or CUDA).
 *
 * A backend is made from a training graph (zoo_train_graph) with its symbols
 * bound: B = micro-batch rows, T = sequence length. It owns the parameters, their
 * gradients and the AdamW state. The trainer (runtime/train.c) only feeds batches
 * and reads metrics, so it is the same for every backend.
 *
 * Batches are host arrays of int32, row-major [rows, T]. A step may be given fewer
 * rows than B (the last batch of an epoch); the backend pads with targets of -100,
 * which contribute nothing to loss, gradient or accuracy.
 */
#ifndef ZOO_BACKEND_H
#define ZOO_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "../compiler/graph.h"

typedef struct zoo_adamw {
  float lr, beta1, beta2, eps, weight_decay;
} zoo_adamw;

typedef struct zoo_metrics {
  double loss;      /* mean cross-entropy over labelled targets of the batch */
  double correct;   /* labelled targets whose argmax is right */
  double labelled;  /* labelled targets */
} zoo_metrics;

typedef struct zoo_backend zoo_backend;
struct zoo_backend {
  const char *name; /* "cpu", "cuda" */
  /* One optimiser step over `accum` micro-batches of up to B rows each:
   * tokens[m], targets[m] hold rows[m] rows. Gradients of the micro-batches are
   * summed with the loss seed 1/accum (the reference's loss / accum), then
   * AdamW is applied with opt. seed feeds dropout's RNG. *m receives the
   * metrics summed over micro-batches (loss averaged); a backend may deliver
   * them one step late (returns 1 then, 0 when m is current). Returns -1 on
   * error (message in err). */
  int (*train_step)(zoo_backend *be, int accum, const int32_t *const *tokens,
                    const int32_t *const *targets, const int *rows, const zoo_adamw *opt,
                    uint64_t seed, zoo_metrics *m);
  /* Forward only, no dropout: metrics of one batch of `rows` rows. */
  int (*eval_batch)(zoo_backend *be, const int32_t *tokens, const int32_t *targets, int rows,
                    zoo_metrics *m);
  /* Parameter values and optimiser state to and from the host, in g->params
   * order; each array has the parameter's element count. m and v may be NULL. */
  int (*get_state)(zoo_backend *be, float **params, float **m, float **v, int64_t *step);
  int (*set_state)(zoo_backend *be, float *const *params, float *const *m, float *const *v,
                   int64_t step);
  /* Waits for outstanding work; the last metrics are then current. */
  int (*sync)(zoo_backend *be, zoo_metrics *last);
  void (*free)(zoo_backend *be);
  char err[512];
  void *impl;
};

/* CPU reference backend (runtime/cpu.c). */
zoo_backend *zoo_cpu_backend_init(const zoo_graph *g, int64_t rows_B, int64_t seq_T,
                                  char *err, size_t errlen);
/* The matmuls' arithmetic on CUDA (config key `precision`). Parameters,
 * gradients, optimiser state and every other kernel stay fp32 in all three:
 *   ZOO_FP32  fp32 GEMMs (the reference's, and the default)
 *   ZOO_TF32  GEMM inputs rounded to TF32 on the tensor cores, fp32 sums
 *   ZOO_BF16  GEMM inputs rounded to bf16 on the tensor cores, fp32 sums
 * The CPU backend computes in fp32 whatever the setting. */
typedef enum zoo_precision { ZOO_FP32, ZOO_TF32, ZOO_BF16 } zoo_precision;
const char *zoo_precision_name(zoo_precision p);
/* The setting named "tf32" or "bf16", else ZOO_FP32 (config.c and zoorun
 * bench reject other names before). */
zoo_precision zoo_precision_of(const char *name);

/* CUDA backend (runtime/cuda.c); NULL with a reason in err when no driver/GPU. */
zoo_backend *zoo_cuda_backend_init(const zoo_graph *g, int64_t rows_B, int64_t seq_T,
                                   int device, zoo_precision precision, char *err, size_t errlen);
/* Is there a CUDA driver that sees a GPU? Then NVRTC and cuBLASLt start
 * loading on a thread of their own (cuda_api.h's zoo_cuda_preload), and
 * zoo_cuda_libraries says (waiting for them) whether they loaded. */
int zoo_cuda_available(char *why, size_t n);
int zoo_cuda_libraries(char *why, size_t n);

/* The counter-based RNG that dropout uses on every backend: a uniform float in
 * [0, 1) from (seed, stream, index). Defined in runtime/rng.h so CUDA code can
 * include the same function. */

#endif
