/* cpu.h: the CPU reference executor, zoo's oracle.
 *
 * Runs a graph's nodes in order with plain, obvious C kernels (runtime/cpu_ops.c,
 * one zoo_cpu_<name> per row of ops.def). Every tensor gets its own buffer, sized
 * from the graph's symbols bound to numbers; nothing is fused or reused, so a
 * wrong result elsewhere can be compared against this one tensor by tensor.
 */
#ifndef ZOO_CPU_H
#define ZOO_CPU_H

#include <stddef.h>
#include <stdint.h>

#include "../compiler/graph.h"

typedef struct zoo_cpu {
  const zoo_graph *g;
  int64_t sym[ZOO_MAX_SYMS]; /* bound symbol values */
  void **data;               /* per tensor: float* (F32) or int32_t* (I32) */
  int64_t *numel;            /* per tensor */
  int training;              /* dropout active */
  uint64_t seed;             /* RNG seed of this step */
  char err[256];             /* set by a kernel that fails (e.g. token out of range) */
  void *scratch;             /* kernels' temporary memory (zoo_cpu_scratch), kept */
  size_t scratch_bytes;
  double *prof_s;            /* ZOO_CPU_PROFILE=1: seconds per op kind, else NULL */
  int64_t *prof_calls;
} zoo_cpu;

/* Binds symbols (sym_values[i] for g->sym_names[i]) and allocates every tensor,
 * zeroed (a value no node produces, such as the logits of a fused head, gets
 * one element). Returns 0, or -1 with the reason in c->err.
 *
 * With ZOO_CPU_PROFILE=1 in the environment, zoo_cpu_run times every node and
 * zoo_cpu_free prints the seconds spent per op kind to stderr. */
int zoo_cpu_init(zoo_cpu *c, const zoo_graph *g, const int64_t *sym_values);
void zoo_cpu_free(zoo_cpu *c);

/* At least `bytes` of memory for a kernel's temporaries (16-byte aligned,
 * contents undefined), reused from run to run so that steps do not allocate.
 * Valid until the next call; one kernel runs at a time. Aborts when out of memory. */
void *zoo_cpu_scratch(zoo_cpu *c, size_t bytes);

/* Runs nodes [first, end). Returns 0, or -1 with c->err set. */
int zoo_cpu_run(zoo_cpu *c, int first, int end);

static inline float *zoo_cpu_f32(zoo_cpu *c, int tensor) { return (float *)c->data[tensor]; }
static inline int32_t *zoo_cpu_i32(zoo_cpu *c, int tensor) { return (int32_t *)c->data[tensor]; }
/* Concrete dims of a tensor; returns ndim. */
int zoo_cpu_dims(const zoo_cpu *c, int tensor, int64_t *dims);

/* Kernels: one per op, declared from the table. */
#define X(NAME, name, cls, nin_min, nin_max, nout, flags) \
  int zoo_cpu_##name(zoo_cpu *c, const zoo_node *n);
#include "../compiler/ops.def"
#undef X

#endif
