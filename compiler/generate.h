/* generate.h: from a training graph to one CUDA module, its steps and plans.
 *
 *   fuse (fuse.c) -> emit (codegen_cuda.c, codegen_intrinsics.c) -> plan (plan.c)
 *
 * done twice over the same tensors: once for the training step (forward with
 * dropout, backward), once for evaluation (the forward nodes alone, dropout
 * off), both into one module, compiled once. The module also holds the
 * optimiser's kernels (AdamW, gradient accumulation, metric sums). The CUDA
 * backend (runtime/cuda.c) runs what this builds; zooc -o writes it out to read.
 */
#ifndef ZOO_GENERATE_H
#define ZOO_GENERATE_H

#include <stdio.h>

#include "codegen_cuda.h"
#include "compile.h"
#include "graph.h"
#include "plan.h"

typedef struct zoo_cuda_program {
  zoo_graph train;  /* the training graph with its own node array (groups set); tensors,
                       params and inputs are the caller's, shared */
  zoo_graph eval;   /* its first nforward nodes, dropout off, own groups */
  int64_t sym[ZOO_MAX_SYMS];
  int64_t B, T;
  zoo_cuda_emit emit; /* the module; steps [0, ntrain) train, then [ntrain, ntrain + neval) eval */
  int ntrain, nforward, neval;
  zoo_plan train_plan, eval_plan;
} zoo_cuda_program;

/* Builds the program for a training graph (zoo_train_graph's result, which must
 * outlive cp) with B rows and T positions. fuse is zoo_fuse's level (fuse.h):
 * 0 (zooc --no-fuse) gives every node its own kernel; reuse = 0 (--no-plan) gives every value its own
 * memory. Returns 0, or -1 with the reason in err. */
int zoo_cuda_program_build(zoo_cuda_program *cp, const zoo_graph *train, int64_t B, int64_t T,
                           int fuse, int reuse, char *err, size_t errlen);
/* The same with zoo's own kernels' products on the tensor cores in TF32 where
 * they have such a form (poly_attention's quadratic form, the head's
 * linear_cross_entropy_step) when tf32 is 1 (zoo_cuda_emit.tf32: the backend's
 * precision tf32 and bf16). */
int zoo_cuda_program_build_tf32(zoo_cuda_program *cp, const zoo_graph *train, int64_t B, int64_t T, int fuse,
                                int reuse, int tf32, char *err, size_t errlen);
void zoo_cuda_program_free(zoo_cuda_program *cp);

/* The micro-batch the reference trains with at sequence length T: 512, or
 * 256 / (T / 512) from T = 512 on (256, 128, 64 at 512, 1024, 2048). */
int64_t zoo_micro_batch(int64_t T);

/* zooc FILE -o DIR: builds the training graph of p's model, binds B =
 * zoo_micro_batch(T) and T = the model's seq_len, and writes DIR/kernels.cu
 * (the module the CUDA backend compiles) and DIR/plan.txt (steps, launches,
 * arena offsets, peak bytes). Returns 0, or -1 after reporting through d. */
int zoo_generate(const zoo_program *p, const char *dir, zoo_diag *d);

/* zooc --summary's code generation lines (zoo_plan_summary) for p's model at
 * its own seq_len; fuse as for zoo_cuda_program_build. Returns 0 or -1. */
int zoo_generate_summary(FILE *out, const zoo_program *p, int fuse, zoo_diag *d);

/* zooc --dump=fused|plan|cuda: the groups, the training plan, or the module.
 * Returns 0, or -1 after reporting through d (an unknown `what` included). */
int zoo_generate_dump(FILE *out, const zoo_program *p, const char *what, int fuse, zoo_diag *d);

/* The program's model graph copied, turned into a training graph, with B and T
 * chosen as zoo_generate does; *out must be freed with zoo_graph_free. */
int zoo_generate_train_graph(const zoo_program *p, zoo_graph *out, int64_t *B, int64_t *T,
                             zoo_diag *d);

#endif
