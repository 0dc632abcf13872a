/* cuda_backend.h: what the benchmark and the GPU tests ask of the CUDA backend
 * beyond backend.h.
 *
 * (Not named cuda.h: that would hide the toolkit's cuda.h, since runtime/ comes
 * first on the include path.)
 *
 * Environment:
 *   ZOO_DEBUG=1    no CUDA graph: every step is launched on its own and followed
 *                  by a synchronisation, so a failure names its kernel and node
 *   ZOO_NO_FUSE=1  every node its own kernel (bisects a fusion bug)
 *   ZOO_CACHE_DIR, ZOO_NO_CACHE  the kernel cache (nvrtc_cache.h), which also
 *                  holds each GEMM's timed pick (gemm_choice.h)
 *   ZOO_NO_GEMM_TUNE, ZOO_GEMM_RETUNE, ZOO_GEMM_TUNE_LOG, ZOO_GEMM_OWN  how GEMMs
 *                  are picked (cuda.c, gemm_tune); README.md lists the rest
 */
#ifndef ZOO_CUDA_BACKEND_H
#define ZOO_CUDA_BACKEND_H

#include <stdint.h>
#include <stdio.h>

#include "../compiler/codegen_cuda.h"
#include "backend.h"

typedef struct zoo_cuda_stats {
  char device[128];          /* "NVIDIA H200" */
  char arch[16];             /* "sm_90" */
  int kernels, gemms, clears; /* steps of one micro-batch (forward and backward) */
  int launches_per_step;     /* every node of the captured training graph: the steps of
                                each micro-batch, copies, accumulation, AdamW */
  int module_kernels;        /* distinct kernels in the module */
  int64_t arena_bytes;       /* activations (largest of training and evaluation plans) */
  int64_t param_bytes;       /* one flat buffer; parameters, gradients, their
                                accumulation, AdamW m and v take 5 of them */
  int64_t workspace_bytes;   /* cuBLASLt */
  int64_t device_bytes;      /* all of the above and the inputs: what zoo allocated */
  int64_t mem_used_delta;    /* cuMemGetInfo's used memory after init minus before
                                (includes the context, module and library overheads
                                of first use) */
  double compile_ms;         /* NVRTC time (0 when the cache had the module) */
  int cached;
  float last_step_ms;        /* GPU time of the last finished training step (CUDA
                                events around its graph launch); -1 if none */
} zoo_cuda_stats;

/* Fills s (waits for outstanding work first). Returns 0, or -1 with be->err. */
int zoo_cuda_backend_stats(zoo_backend *be, zoo_cuda_stats *s);

/* ZOO profiling: runs one micro-batch's training steps one by one (after a
 * training step, on its inputs), with CUDA events around each step, `repeats`
 * times after one untimed pass, and prints to out the GPU time per kernel kind
 * (kernel name without its numbers; GEMMs by pass and op), the `top` largest;
 * top <= 0 prints every step in order instead, GEMMs with their m, n, k.
 * Leaves the gradients changed (not the parameters). Returns 0 or -1. */
int zoo_cuda_backend_profile(zoo_backend *be, int repeats, int top, FILE *out);

/* Compiles, without a GPU, the module a backend (zoo_cuda_backend_init) or an
 * executor (zoo_cuda_exec_init) would compile for this graph, into the kernel
 * cache, for arch ("sm_90"): run on a machine without a GPU, with ZOO_CACHE_DIR
 * set, it saves the GPU machine the NVRTC time. Same environment (ZOO_DEBUG,
 * ZOO_NO_FUSE) and precision (which decides poly_attention's kernels) as the
 * run it prepares. Returns 0, or -1 with err. */
int zoo_cuda_precompile(const zoo_graph *g, int64_t rows_B, int64_t seq_T, zoo_precision precision, const char *arch,
                        char *err, size_t errlen);
int zoo_cuda_exec_precompile(const zoo_graph *g, const int64_t *sym, int fuse, const unsigned char *keep,
                             const char *arch, char *err, size_t errlen);

/* cuBLAS's column-major view of a row-major zoo_gemm: cuBLAS computes
 * D = op(A) op(B) with A = our b and B = our a (C^T = op(b)^T op(a)^T), each
 * operand described by its stored rows, columns and leading dimension. */
typedef struct zoo_colmajor_gemm {
  int trans_a, trans_b;          /* cuBLAS's ops: 1 = transposed */
  int64_t a_rows, a_cols, lda;   /* cuBLAS's A: our b */
  int64_t b_rows, b_cols, ldb;   /* cuBLAS's B: our a */
  int64_t c_rows, c_cols, ldc;   /* D = C^T: n x m */
  int64_t stride_a, stride_b, stride_c, batch;
} zoo_colmajor_gemm;
void zoo_cuda_gemm_colmajor(const zoo_gemm *gm, zoo_colmajor_gemm *out);

/* Runs a plain graph (no training graph needed) on the GPU: every node, once,
 * with eager launches, for op-by-op tests against the CPU executor. Tensors the
 * test reads back must be in keep (per tensor, 1 = keep; NULL keeps every
 * tensor), so fusion leaves them in memory. */
typedef struct zoo_cuda_exec zoo_cuda_exec;
zoo_cuda_exec *zoo_cuda_exec_init(const zoo_graph *g, const int64_t *sym, int fuse,
                                  const unsigned char *keep, char *err, size_t errlen);
/* Host to device and back; the tensor's whole contents (4-byte elements). */
int zoo_cuda_exec_upload(zoo_cuda_exec *x, int tensor, const void *host);
int zoo_cuda_exec_download(zoo_cuda_exec *x, int tensor, void *host);
/* Runs every step; seed feeds dropout. Returns 0 or -1 (zoo_cuda_exec_error). */
int zoo_cuda_exec_run(zoo_cuda_exec *x, uint64_t seed);
const char *zoo_cuda_exec_error(const zoo_cuda_exec *x);
/* The executor's steps; *nforward (if not NULL) of them run the graph's nodes
 * [0, g->nforward), the others follow. */
int zoo_cuda_exec_steps(const zoo_cuda_exec *x, int *nforward);
/* Times steps [first, first + n) (bench): one untimed run, then `repeats` runs,
 * ms[r] the GPU time of run r (CUDA events around it). Dropout's seed is 0.
 * Returns 0 or -1 (zoo_cuda_exec_error). */
int zoo_cuda_exec_time(zoo_cuda_exec *x, int first, int n, int repeats, float *ms);
void zoo_cuda_exec_free(zoo_cuda_exec *x);

#endif
