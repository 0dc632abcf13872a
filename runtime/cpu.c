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
    int64_t n = zoo_type_numel(&g->tensors[t].type, c->sym);
    c->numel[t] = n;
    /* f32 and i32 are both 4 bytes; at least one element so no pointer is NULL */
    c->data[t] = calloc((size_t)(n > 0 ? n : 1), 4);
    if (!c->data[t]) goto oom;
  }
  return 0;
oom:
  zoo_cpu_free(c);
  snprintf(c->err, sizeof c->err, "out of memory allocating the tensors");
  return -1;
}

void zoo_cpu_free(zoo_cpu *c) {
  if (c->data && c->g)
    for (int t = 0; t < c->g->ntensors; t++) free(c->data[t]);
  free(c->data);
  free(c->numel);
  c->data = NULL;
  c->numel = NULL;
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
    if (cpu_kernels[n->op](c, n) != 0) {
      if (!c->err[0]) snprintf(c->err, sizeof c->err, "%s failed", zoo_ops[n->op].name);
      return -1;
    }
  }
  return 0;
}

int zoo_cpu_dims(const zoo_cpu *c, int tensor, int64_t *dims) {
  const zoo_type *t = &c->g->tensors[tensor].type;
  for (int k = 0; k < t->ndim; k++) dims[k] = zoo_dim_eval(t->dim[k], c->sym);
  return t->ndim;
}
