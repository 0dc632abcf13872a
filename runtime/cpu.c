/* cpu.c: the CPU reference executor (see cpu.h).
 *
 * Every tensor of the graph gets its own zeroed buffer, sized with the symbols
 * bound; nodes run in graph order through a table built from ops.def, one
 * kernel per op (runtime/cpu_ops.c). Nothing is fused or reused.
 */
#include "cpu.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int (*zoo_cpu_kernel)(zoo_cpu *c, const zoo_node *n);

static const zoo_cpu_kernel cpu_kernels[ZOO_OP_COUNT] = {
#define X(NAME, name, cls, nin_min, nin_max, nout, flags) [ZOO_OP_##NAME] = zoo_cpu_##name,
#include "../compiler/ops.def"
#undef X
};

int zoo_cpu_init(zoo_cpu *c, const zoo_graph *g, const int64_t *sym_values) {
  memset(c, 0, sizeof *c);
  c->g = g;
  for (int i = 0; i < g->nsyms; i++) {
    if (sym_values[i] < 1) {
      snprintf(c->err, sizeof c->err, "symbol %s is bound to %lld", g->sym_names[i],
               (long long)sym_values[i]);
      return -1;
    }
    c->sym[i] = sym_values[i];
  }
  int nt = g->ntensors;
  c->data = calloc((size_t)(nt ? nt : 1), sizeof *c->data);
  c->numel = calloc((size_t)(nt ? nt : 1), sizeof *c->numel);
  if (!c->data || !c->numel) goto oom;
  for (int t = 0; t < nt; t++) {
    const zoo_tensor *x = &g->tensors[t];
    int64_t n = zoo_type_numel(&x->type, c->sym);
    c->numel[t] = n;
    if (x->kind == ZOO_T_VALUE && x->producer < 0) n = 1; /* nothing computes it */
    /* f32 and i32 are both 4 bytes; at least one element so no pointer is NULL */
    c->data[t] = calloc((size_t)(n > 0 ? n : 1), 4);
    if (!c->data[t]) goto oom;
  }
  if (zoo_env_on("ZOO_CPU_PROFILE")) {
    c->prof_s = calloc(ZOO_OP_COUNT, sizeof *c->prof_s);
    c->prof_calls = calloc(ZOO_OP_COUNT, sizeof *c->prof_calls);
    if (!c->prof_s || !c->prof_calls) goto oom;
  }
  return 0;
oom:
  zoo_cpu_free(c);
  snprintf(c->err, sizeof c->err, "out of memory allocating the tensors");
  return -1;
}

/* ZOO_CPU_PROFILE's table: op kinds by time spent, largest first. */
static void print_profile(const zoo_cpu *c) {
  int order[ZOO_OP_COUNT], n = 0;
  double total = 0;
  for (int op = 0; op < ZOO_OP_COUNT; op++)
    if (c->prof_calls[op]) order[n++] = op, total += c->prof_s[op];
  for (int i = 1; i < n; i++) /* insertion sort, by seconds descending */
    for (int j = i; j > 0 && c->prof_s[order[j]] > c->prof_s[order[j - 1]]; j--) {
      int t = order[j];
      order[j] = order[j - 1];
      order[j - 1] = t;
    }
  fprintf(stderr, "zoo cpu profile: %.3f s in %d op kinds\n", total, n);
  fprintf(stderr, "  %-26s %10s %8s %6s %10s\n", "op", "seconds", "calls", "%", "ms/call");
  for (int i = 0; i < n; i++) {
    int op = order[i];
    fprintf(stderr, "  %-26s %10.3f %8lld %5.1f%% %10.3f\n", zoo_ops[op].name, c->prof_s[op],
            (long long)c->prof_calls[op], total > 0 ? 100 * c->prof_s[op] / total : 0.0,
            1e3 * c->prof_s[op] / (double)c->prof_calls[op]);
  }
}

void zoo_cpu_free(zoo_cpu *c) {
  if (c->prof_s && c->prof_calls) print_profile(c);
  if (c->data && c->g)
    for (int t = 0; t < c->g->ntensors; t++) free(c->data[t]);
  free(c->data);
  free(c->numel);
  free(c->scratch);
  free(c->prof_s);
  free(c->prof_calls);
  c->data = NULL;
  c->numel = NULL;
  c->scratch = NULL;
  c->scratch_bytes = 0;
  c->prof_s = NULL;
  c->prof_calls = NULL;
}

void *zoo_cpu_scratch(zoo_cpu *c, size_t bytes) {
  if (bytes <= c->scratch_bytes) return c->scratch;
  free(c->scratch);
  bytes = (bytes + 4095) / 4096 * 4096;
  c->scratch = aligned_alloc(64, bytes);
  if (!c->scratch) {
    fprintf(stderr, "zoo: out of memory for %zu bytes of CPU kernel scratch\n", bytes);
    abort();
  }
  c->scratch_bytes = bytes;
  return c->scratch;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int zoo_cpu_run(zoo_cpu *c, int first, int end) {
  const zoo_graph *g = c->g;
  if (first < 0 || end > g->nnodes || first > end) {
    snprintf(c->err, sizeof c->err, "nodes [%d, %d) are not within the graph's %d", first, end,
             g->nnodes);
    return -1;
  }
  for (int i = first; i < end; i++) {
    const zoo_node *n = &g->nodes[i];
    c->err[0] = 0;
    double t0 = c->prof_s ? now_s() : 0;
    if (cpu_kernels[n->op](c, n) != 0) {
      if (!c->err[0]) snprintf(c->err, sizeof c->err, "%s failed", zoo_ops[n->op].name);
      return -1;
    }
    if (c->prof_s) {
      c->prof_s[n->op] += now_s() - t0;
      c->prof_calls[n->op]++;
    }
  }
  return 0;
}

int zoo_cpu_dims(const zoo_cpu *c, int tensor, int64_t *dims) {
  const zoo_type *t = &c->g->tensors[tensor].type;
  for (int k = 0; k < t->ndim; k++) dims[k] = zoo_dim_eval(t->dim[k], c->sym);
  return t->ndim;
}
