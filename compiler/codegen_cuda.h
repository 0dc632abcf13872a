/* codegen_cuda.h: from a (fused) graph to CUDA C and a list of launches.
 *
 * Every op has an emitter, zoo_cuda_<name> (ops.def). An emitter appends CUDA C
 * (one translation unit for the whole graph, compiled once by NVRTC) and the
 * steps that run it: kernel launches, or GEMMs that the runtime hands to
 * cuBLASLt. Shapes are bound before emission, so sizes are compile-time
 * constants in the generated code. Emitters for elementwise, reduction and
 * movement ops are generated from the op table in compiler/codegen_cuda.c; the
 * hand-written intrinsics live in runtime/kernels/*.cu and their emitters in
 * compiler/codegen_intrinsics.c, which specialise them with #defines.
 *
 * Pointers reach kernels as arguments (ZOO_ARG_TENSOR), never baked into the
 * source, so one compiled module serves every step and the arena can move.
 */
#ifndef ZOO_CODEGEN_CUDA_H
#define ZOO_CODEGEN_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "graph.h"

typedef struct zoo_strbuf {
  char *s;
  size_t len, cap;
} zoo_strbuf;
void zoo_strbuf_printf(zoo_strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void zoo_strbuf_puts(zoo_strbuf *b, const char *s);
void zoo_strbuf_free(zoo_strbuf *b);

typedef enum zoo_arg_kind {
  ZOO_ARG_TENSOR,  /* device pointer of tensor `tensor` */
  ZOO_ARG_SCRATCH, /* device pointer to this step's scratch area + `i` bytes */
  ZOO_ARG_I64,     /* long long i */
  ZOO_ARG_F32,     /* float f */
  ZOO_ARG_SEED,    /* unsigned long long: the step's RNG seed (dropout) */
} zoo_arg_kind;

typedef struct zoo_arg {
  zoo_arg_kind kind;
  int tensor;
  int64_t i;
  float f;
} zoo_arg;

#define ZOO_MAX_ARGS 16

typedef enum zoo_step_kind {
  ZOO_STEP_KERNEL, /* launch `func` from the module */
  ZOO_STEP_GEMM,   /* C = alpha op(A) op(B) + beta C, row-major, batched */
  ZOO_STEP_ZERO,   /* memset tensor `gemm.c` to zero */
} zoo_step_kind;

/* Row-major GEMM: C[m, n] = alpha * op(A)[m, k] op(B)[k, n] + beta * C, over
 * `batch` matrices at the given element strides (0 = shared). bias (tensor id
 * or -1) is added to each row of C: bias[n]. */
typedef struct zoo_gemm {
  int a, b, c, bias;
  int trans_a, trans_b;
  int64_t m, n, k, batch;
  int64_t stride_a, stride_b, stride_c;
  float alpha, beta;
} zoo_gemm;

typedef struct zoo_step {
  zoo_step_kind kind;
  const char *func;       /* kernel name in the module (ZOO_STEP_KERNEL) */
  unsigned grid[3], block[3];
  unsigned smem;          /* dynamic shared memory bytes */
  int nargs;
  zoo_arg args[ZOO_MAX_ARGS];
  zoo_gemm gemm;
  int node;               /* the graph node (first node of a fused group) it runs */
  int64_t scratch_bytes;  /* temporary device memory this step needs */
} zoo_step;

typedef struct zoo_cuda_emit {
  const zoo_graph *g;
  const int64_t *sym;     /* bound symbol values */
  zoo_strbuf src;         /* the module's CUDA C */
  zoo_step *steps;
  int nsteps, steps_cap;
  int uid;                /* for unique kernel names */
  char err[256];
} zoo_cuda_emit;

/* Appends a step and returns it (zeroed, node set). */
zoo_step *zoo_cuda_step(zoo_cuda_emit *e, zoo_step_kind kind, int node);

/* Emitters, one per op. Return 0, or -1 with e->err set. */
#define X(NAME, name, cls, nin_min, nin_max, nout, flags) \
  int zoo_cuda_##name(zoo_cuda_emit *e, const zoo_node *n);
#include "ops.def"
#undef X

/* Emits the whole graph (after fusion): the module source and every step in
 * node order. Steps of nodes [0, g->nforward) come first; *nforward_steps says
 * how many. Returns 0, or -1 with the reason in e->err. */
int zoo_cuda_emit_graph(zoo_cuda_emit *e, const zoo_graph *g, const int64_t *sym,
                        int *nforward_steps);
void zoo_cuda_emit_free(zoo_cuda_emit *e);

#endif
