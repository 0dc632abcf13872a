/* summary.c: what `zooc FILE` prints: the model's bound parameters, every
 * parameter tensor (name, shape, count), the aliases of tied weights, the total,
 * and how many of each op the graph has. */
#include <string.h>

#include "compile.h"

/* 1213056 -> "1,213,056" */
static char *thousands(int64_t n, char *buf, size_t len) {
  char digits[32];
  snprintf(digits, sizeof digits, "%lld", (long long)(n < 0 ? -n : n));
  size_t nd = strlen(digits), k = 0;
  if (n < 0 && k + 1 < len) buf[k++] = '-';
  for (size_t i = 0; i < nd && k + 2 < len; i++) {
    if (i > 0 && (nd - i) % 3 == 0) buf[k++] = ',';
    buf[k++] = digits[i];
  }
  buf[k] = 0;
  return buf;
}

/* "[8192, 64]" */
static char *shape_str(const zoo_graph *g, const zoo_type *t, char *buf, size_t n) {
  char full[256];
  zoo_type_str(g, t, full, sizeof full);
  snprintf(buf, n, "%s", strchr(full, '['));
  return buf;
}

void zoo_program_summary(FILE *out, const zoo_program *p) {
  const zoo_graph *g = &p->graph;
  char a[256], b[64];

  fprintf(out, "model %s\n", p->model_name ? p->model_name : "?");
  for (int i = 0; i < p->nbindings; i++)
    fprintf(out, "  %s = %s\n", p->bindings[i].name, p->bindings[i].value);

  int wname = (int)strlen("parameter"), wshape = (int)strlen("shape");
  for (int i = 0; i < g->nparams; i++) {
    const zoo_tensor *t = &g->tensors[g->params[i]];
    int n = (int)strlen(t->name), s = (int)strlen(shape_str(g, &t->type, a, sizeof a));
    if (n > wname) wname = n;
    if (s > wshape) wshape = s;
  }
  fprintf(out, "\n  %-*s  %-*s  %11s\n", wname, "parameter", wshape, "shape", "count");
  for (int i = 0; i < g->nparams; i++) {
    const zoo_tensor *t = &g->tensors[g->params[i]];
    fprintf(out, "  %-*s  %-*s  %11s\n", wname, t->name, wshape, shape_str(g, &t->type, a, sizeof a),
            thousands(zoo_type_numel(&t->type, NULL), b, sizeof b));
  }
  for (int i = 0; i < p->naliases; i++)
    fprintf(out, "  %-*s  is %s (tied)\n", wname, p->aliases[i].name,
            g->tensors[p->aliases[i].tensor].name);
  fprintf(out, "total: %s parameters in %d tensors\n",
          thousands(zoo_graph_param_count(g), b, sizeof b), g->nparams);

  fprintf(out, "\ngraph: %d nodes", g->nnodes);
  for (int i = 0; i < g->ninputs; i++) {
    const zoo_tensor *t = &g->tensors[g->inputs[i]];
    fprintf(out, "%s%s %s", i ? ", " : "; input ", t->name, zoo_type_str(g, &t->type, a, sizeof a));
  }
  if (g->output >= 0)
    fprintf(out, "; output %s", zoo_type_str(g, &g->tensors[g->output].type, a, sizeof a));
  fputc('\n', out);
  int count[ZOO_OP_COUNT] = {0};
  for (int i = 0; i < g->nnodes; i++) count[g->nodes[i].op]++;
  for (int op = 0; op < ZOO_OP_COUNT; op++)
    if (count[op]) fprintf(out, "  %-20s %d\n", zoo_ops[op].name, count[op]);
}
