/* graph.c: building graphs, and arithmetic on symbolic dimensions. */
#include "graph.h"

#include <stdlib.h>
#include <string.h>

#define GROW(ptr, n, cap)                                     \
  do {                                                        \
    if ((n) == (cap)) {                                       \
      (cap) = (cap) ? (cap) * 2 : 64;                         \
      (ptr) = realloc((ptr), (size_t)(cap) * sizeof *(ptr));  \
      if (!(ptr)) abort(); /* out of memory */                \
    }                                                         \
  } while (0)

void zoo_graph_init(zoo_graph *g) {
  memset(g, 0, sizeof *g);
  g->output = g->targets = g->loss = g->metrics = g->dloss = -1;
}

void zoo_graph_free(zoo_graph *g) {
  for (int i = 0; i < g->ntensors; i++) free((char *)g->tensors[i].name);
  for (int i = 0; i < g->nsyms; i++) free((char *)g->sym_names[i]);
  free(g->nodes);
  free(g->tensors);
  free(g->params);
  free(g->inputs);
  memset(g, 0, sizeof *g);
}

int zoo_graph_symbol(zoo_graph *g, const char *name) {
  for (int i = 0; i < g->nsyms; i++)
    if (strcmp(g->sym_names[i], name) == 0) return i;
  if (g->nsyms == ZOO_MAX_SYMS) return -1;
  g->sym_names[g->nsyms] = strdup(name);
  return g->nsyms++;
}

/* A fresh tensor of type t; returns its id. */
static int new_tensor(zoo_graph *g, zoo_type t, zoo_tensor_kind kind, const char *name) {
  GROW(g->tensors, g->ntensors, g->tensors_cap);
  zoo_tensor *x = &g->tensors[g->ntensors];
  memset(x, 0, sizeof *x);
  x->type = t;
  x->kind = kind;
  x->producer = -1;
  x->name = name ? strdup(name) : NULL;
  x->grad = -1;
  return g->ntensors++;
}

int zoo_graph_input(zoo_graph *g, const char *name, zoo_type t) {
  int id = new_tensor(g, t, ZOO_T_INPUT, name);
  GROW(g->inputs, g->ninputs, g->inputs_cap);
  g->inputs[g->ninputs++] = id;
  return id;
}

int zoo_graph_param(zoo_graph *g, const char *name, zoo_type t, zoo_init init) {
  int id = new_tensor(g, t, ZOO_T_PARAM, name);
  g->tensors[id].init = init;
  GROW(g->params, g->nparams, g->params_cap);
  g->params[g->nparams++] = id;
  return id;
}

int zoo_graph_node(zoo_graph *g, zoo_op op, int nin, const int *in, const zoo_attrs *attrs,
                   zoo_span at, zoo_diag *d) {
  const zoo_op_info *info = &zoo_ops[op];
  if (nin < info->nin_min || nin > info->nin_max) {
    if (info->nin_min == info->nin_max)
      zoo_error(d, at, "%s takes %d tensor argument%s, got %d", info->name, info->nin_min,
                info->nin_min == 1 ? "" : "s", nin);
    else
      zoo_error(d, at, "%s takes %d to %d tensor arguments, got %d", info->name, info->nin_min,
                info->nin_max, nin);
    return -1;
  }
  for (int i = 0; i < nin; i++)
    if (in[i] < 0 || in[i] >= g->ntensors) abort(); /* a pass passed a bad tensor id */

  zoo_node n;
  memset(&n, 0, sizeof n);
  n.op = op;
  n.nin = nin;
  n.nout = info->nout;
  if (nin > 0) memcpy(n.in, in, (size_t)nin * sizeof *in);
  if (attrs) n.attrs = *attrs;
  n.span = at;
  n.group = -1;

  zoo_type out[ZOO_MAX_OUT];
  memset(out, 0, sizeof out);
  char err[512] = "";
  if (zoo_shape_infer(g, &n, out, err, sizeof err) != 0) {
    zoo_error(d, at, "%s", err[0] ? err : "shape error");
    return -1;
  }
  int id = g->nnodes;
  for (int k = 0; k < n.nout; k++) {
    n.out[k] = new_tensor(g, out[k], ZOO_T_VALUE, NULL);
    g->tensors[n.out[k]].producer = id;
    g->tensors[n.out[k]].out_index = k;
  }
  GROW(g->nodes, g->nnodes, g->nodes_cap);
  g->nodes[g->nnodes++] = n;
  return n.out[0];
}

int zoo_env_on(const char *name) {
  const char *v = getenv(name);
  return v && *v && strcmp(v, "0") != 0;
}

zoo_dim zoo_dim_const(int64_t n) { return (zoo_dim){n, 0}; }

int zoo_dim_eq(zoo_dim a, zoo_dim b) { return a.coef == b.coef && a.sym == b.sym; }

/* Symbols appear at most once in a product (B*T, never B*B): good enough for the
 * shapes models make, and it keeps a dimension one word. */
zoo_dim zoo_dim_mul(zoo_dim a, zoo_dim b) { return (zoo_dim){a.coef * b.coef, a.sym | b.sym}; }

int zoo_dim_mul_checked(zoo_dim a, zoo_dim b, zoo_dim *out) {
  int64_t coef;
  if (__builtin_mul_overflow(a.coef, b.coef, &coef)) return 0;
  *out = (zoo_dim){coef, a.sym | b.sym};
  return 1;
}

int zoo_dim_div(zoo_dim a, zoo_dim b, zoo_dim *out) {
  if ((a.sym & b.sym) != b.sym || b.coef == 0 || a.coef % b.coef != 0) return 0;
  *out = (zoo_dim){a.coef / b.coef, a.sym & ~b.sym};
  return 1;
}

int zoo_type_eq(const zoo_type *a, const zoo_type *b) {
  if (a->dtype != b->dtype || a->ndim != b->ndim) return 0;
  for (int i = 0; i < a->ndim; i++)
    if (!zoo_dim_eq(a->dim[i], b->dim[i])) return 0;
  return 1;
}

char *zoo_dim_str(const zoo_graph *g, zoo_dim d, char *buf, size_t n) {
  size_t len = 0;
  buf[0] = 0;
  if (d.coef != 1 || d.sym == 0) len += (size_t)snprintf(buf + len, n - len, "%lld", (long long)d.coef);
  for (int s = 0; s < ZOO_MAX_SYMS && len < n; s++) {
    if (!(d.sym & (1u << s))) continue;
    const char *name = g && s < g->nsyms ? g->sym_names[s] : "?";
    len += (size_t)snprintf(buf + len, n - len, "%s%s", len ? "*" : "", name);
  }
  return buf;
}

char *zoo_type_str(const zoo_graph *g, const zoo_type *t, char *buf, size_t n) {
  size_t len = (size_t)snprintf(buf, n, "%s[", t->dtype == ZOO_F32 ? "f32" : "i32");
  for (int i = 0; i < t->ndim && len < n; i++) {
    char d[64];
    len += (size_t)snprintf(buf + len, n - len, "%s%s", i ? ", " : "", zoo_dim_str(g, t->dim[i], d, sizeof d));
  }
  if (len < n) snprintf(buf + len, n - len, "]");
  return buf;
}

int64_t zoo_dim_eval(zoo_dim d, const int64_t *sym_values) {
  int64_t v = d.coef;
  for (int s = 0; s < ZOO_MAX_SYMS; s++)
    if (d.sym & (1u << s)) v *= sym_values ? sym_values[s] : 1;
  return v;
}

int64_t zoo_type_numel(const zoo_type *t, const int64_t *sym_values) {
  int64_t n = 1;
  for (int i = 0; i < t->ndim; i++) n *= zoo_dim_eval(t->dim[i], sym_values);
  return n;
}

/* Each parameter has at most ZOO_PARAM_MAX elements, so only some 2^23 of the
 * largest could overflow the sum; it stops at INT64_MAX rather than wrap. */
int64_t zoo_graph_param_count(const zoo_graph *g) {
  int64_t total = 0;
  for (int i = 0; i < g->nparams; i++) {
    int64_t n = zoo_type_numel(&g->tensors[g->params[i]].type, NULL);
    if (__builtin_add_overflow(total, n, &total)) return INT64_MAX;
  }
  return total;
}
