/* builtins.c: the functions a .zoo file can call without defining them.
 *
 * Ops: every op of ops.def that is not INTERNAL is a builtin of the same name.
 * Its row below gives its parameters in order, as a signature string:
 *
 *   x              a tensor input (required)
 *   b=none         an optional tensor input
 *   eps:f0=1e-5    an attribute: f0..f5 floats, i0..i3 integers (bools are
 *                  0 or 1), dims (a list of sizes), axes (a list of axes),
 *                  n (one size, into dims[0]); "=..." gives the default as a
 *                  .zoo literal
 *
 * e.g. layernorm(x, w, b, eps = 1e-5). Ops flagged RANDOM (dropout,
 * softmax_attention) get a fresh RNG stream in i0 at each call site.
 *
 * Compile-time functions (len, range, min, max, int, float, abs, sqrt on numbers,
 * ...) compute values, and param(shape, init = normal(0.02)) with the
 * initialisers normal(std), uniform(bound), zeros(), ones(), constant(v),
 * ramp(denom, power, scale = 1, offset = 0) (element i of the flattened
 * parameter: offset + scale * (i / denom)^power) and zigzag(amplitude,
 * offset = 0) (offset + amplitude * ((i + 1) % 3 - 1)), the last two for RWKV's
 * per-channel inits, declares a parameter.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "value.h"

static zoo_value *fn_number_op(zoo_lowering *, const zoo_builtin *, const zoo_arg *, int, zoo_span);
static zoo_value *fn_len(zoo_lowering *, const zoo_builtin *, const zoo_arg *, int, zoo_span);
static zoo_value *fn_range(zoo_lowering *, const zoo_builtin *, const zoo_arg *, int, zoo_span);
static zoo_value *fn_minmax(zoo_lowering *, const zoo_builtin *, const zoo_arg *, int, zoo_span);
static zoo_value *fn_convert(zoo_lowering *, const zoo_builtin *, const zoo_arg *, int, zoo_span);
static zoo_value *fn_param(zoo_lowering *, const zoo_builtin *, const zoo_arg *, int, zoo_span);
static zoo_value *fn_init(zoo_lowering *, const zoo_builtin *, const zoo_arg *, int, zoo_span);

static const zoo_builtin builtins[] = {
    /* elementwise */
    {"add", ZOO_OP_ADD, "a, b", NULL},
    {"sub", ZOO_OP_SUB, "a, b", NULL},
    {"mul", ZOO_OP_MUL, "a, b", NULL},
    {"div", ZOO_OP_DIV, "a, b", NULL},
    {"gt", ZOO_OP_GT, "a, b", NULL},
    {"where", ZOO_OP_WHERE, "c, a, b", NULL},
    {"neg", ZOO_OP_NEG, "x", fn_number_op},
    {"exp", ZOO_OP_EXP, "x", fn_number_op},
    {"log", ZOO_OP_LOG, "x", fn_number_op},
    {"sqrt", ZOO_OP_SQRT, "x", fn_number_op},
    {"rsqrt", ZOO_OP_RSQRT, "x", fn_number_op},
    {"square", ZOO_OP_SQUARE, "x", fn_number_op},
    {"sigmoid", ZOO_OP_SIGMOID, "x", fn_number_op},
    {"silu", ZOO_OP_SILU, "x", fn_number_op},
    {"softplus", ZOO_OP_SOFTPLUS, "x", fn_number_op},
    {"relu", ZOO_OP_RELU, "x", fn_number_op},
    {"gelu", ZOO_OP_GELU, "x", fn_number_op},
    {"tanh", ZOO_OP_TANH, "x", fn_number_op},
    {"sin", ZOO_OP_SIN, "x", fn_number_op},
    {"cos", ZOO_OP_COS, "x", fn_number_op},
    {"adds", ZOO_OP_ADDS, "x, c:f0", NULL},
    {"muls", ZOO_OP_MULS, "x, c:f0", NULL},
    {"pows", ZOO_OP_POWS, "x, c:f0", NULL},
    {"dropout", ZOO_OP_DROPOUT, "x, p:f0", NULL},
    /* reductions */
    {"sum", ZOO_OP_SUM, "x, axis:i0=-1, keepdim:i1=false", NULL},
    {"mean", ZOO_OP_MEAN, "x, axis:i0=-1, keepdim:i1=false", NULL},
    {"layernorm", ZOO_OP_LAYERNORM, "x, w=none, b=none, eps:f0=1e-5", NULL},
    {"rmsnorm", ZOO_OP_RMSNORM, "x, w, eps:f0=1e-5", NULL},
    {"softmax", ZOO_OP_SOFTMAX, "x", NULL},
    {"logsumexp", ZOO_OP_LOGSUMEXP, "x", NULL},
    {"cross_entropy", ZOO_OP_CROSS_ENTROPY, "logits, targets, ignore_index:i0=-100", NULL},
    {"argmax", ZOO_OP_ARGMAX, "x", NULL},
    {"accuracy", ZOO_OP_ACCURACY, "logits, targets, ignore_index:i0=-100", NULL},
    /* movement */
    {"reshape", ZOO_OP_RESHAPE, "x, shape:dims", NULL},
    {"permute", ZOO_OP_PERMUTE, "x, axes:axes", NULL},
    {"split_heads", ZOO_OP_SPLIT_HEADS, "x, heads:i0", NULL},
    {"merge_heads", ZOO_OP_MERGE_HEADS, "x", NULL},
    {"slice", ZOO_OP_SLICE, "x, axis:i0, start:i1, length:n", NULL},
    {"concat", ZOO_OP_CONCAT, "a, b, axis:i0", NULL},
    {"shift", ZOO_OP_SHIFT, "x, k:i1, axis:i0=1", NULL},
    /* matmul, gather, scan */
    {"linear", ZOO_OP_LINEAR, "x, w, b=none", NULL},
    {"matmul", ZOO_OP_MATMUL, "a, b, transpose_a:i0=false, transpose_b:i1=false", NULL},
    {"embedding", ZOO_OP_EMBEDDING, "w, ids", NULL},
    {"arange", ZOO_OP_ARANGE, "n:n", NULL},
    {"cumsum", ZOO_OP_CUMSUM, "x, axis:i0", NULL},
    {"causal_conv1d", ZOO_OP_CAUSAL_CONV1D, "x, w, b=none", NULL},
    /* intrinsics */
    {"poly_attention", ZOO_OP_POLY_ATTENTION,
     "q, k, v, c0:f0=0, c1:f1=0, c2:f2=1, scale:f3=1, eps:f4=1e-12", NULL},
    {"softmax_attention", ZOO_OP_SOFTMAX_ATTENTION,
     "q, k, v, scale:f0, dropout:f1=0, causal:i1=true", NULL},
    {"linear_cross_entropy", ZOO_OP_LINEAR_CROSS_ENTROPY, "h, w, targets, ignore_index:i0=-100",
     NULL},
    {"wkv4", ZOO_OP_WKV4, "w, u, k, v, bf16:i0=false", NULL},
    /* compile-time functions */
    {"len", -1, "x", fn_len},
    {"range", -1, "start, stop=none, step=1", fn_range},
    {"min", -1, "", fn_minmax},
    {"max", -1, "", fn_minmax},
    {"int", -1, "x", fn_convert},
    {"float", -1, "x", fn_convert},
    {"abs", -1, "x", fn_convert},
    {"param", -1, "shape, init=none", fn_param},
    {"normal", -1, "std", fn_init},
    {"uniform", -1, "bound", fn_init},
    {"zeros", -1, "", fn_init},
    {"ones", -1, "", fn_init},
    {"constant", -1, "value", fn_init},
    {"ramp", -1, "denom, power, scale=1, offset=0", fn_init},
    {"zigzag", -1, "amplitude, offset=0", fn_init},
};

#define NBUILTINS ((int)(sizeof builtins / sizeof builtins[0]))

const zoo_builtin *zoo_builtin_find(const char *name) {
  for (int i = 0; i < NBUILTINS; i++)
    if (strcmp(builtins[i].name, name) == 0) return &builtins[i];
  return NULL;
}

int zoo_builtin_names(const char ***out) {
  static const char *names[sizeof builtins / sizeof builtins[0]];
  for (int i = 0; i < NBUILTINS; i++) names[i] = builtins[i].name;
  *out = names;
  return NBUILTINS;
}

/* ---- signatures ---- */

#define MAX_SIG 10

typedef struct sig_param {
  char name[32];
  char slot[8]; /* "" for a tensor input */
  char def[32]; /* the default's literal text */
  int has_def;
} sig_param;

/* Splits "x, w=none, eps:f0=1e-5" into its parameters; returns how many. */
static int parse_sig(const char *sig, sig_param *out) {
  int n = 0;
  const char *s = sig;
  while (*s && n < MAX_SIG) {
    while (*s == ' ' || *s == ',') s++;
    if (!*s) break;
    sig_param *p = &out[n++];
    memset(p, 0, sizeof *p);
    size_t len = strcspn(s, ":=,");
    snprintf(p->name, sizeof p->name, "%.*s", (int)len, s);
    s += len;
    if (*s == ':') {
      len = strcspn(++s, "=,");
      snprintf(p->slot, sizeof p->slot, "%.*s", (int)len, s);
      s += len;
    }
    if (*s == '=') {
      len = strcspn(++s, ",");
      snprintf(p->def, sizeof p->def, "%.*s", (int)len, s);
      p->has_def = 1;
      s += len;
    }
  }
  return n;
}

int zoo_bind_args(zoo_lowering *L, const char *what, const char *const *names, int nnames,
                  const zoo_arg *args, int nargs, const zoo_arg **slots) {
  for (int i = 0; i < nnames; i++) slots[i] = NULL;
  int npos = 0;
  for (int i = 0; i < nargs; i++)
    if (!args[i].name) npos++;
  int pos = 0;
  for (int i = 0; i < nargs; i++) {
    const zoo_arg *a = &args[i];
    if (!a->name) {
      if (pos >= nnames) {
        zoo_lower_error(L, a->at, "too many arguments to %s: it takes %d, got %d", what, nnames, npos);
        return -1;
      }
      slots[pos++] = a;
      continue;
    }
    int k = 0;
    while (k < nnames && strcmp(names[k], a->name) != 0) k++;
    if (k == nnames) {
      const char *s = zoo_resolve_suggest(NULL, a->name, names, nnames);
      zoo_lower_error(L, a->at, "%s has no parameter '%s'%s%s%s", what, a->name,
                      s ? "; did you mean '" : "", s ? s : "", s ? "'?" : "");
      return -1;
    }
    if (slots[k]) {
      zoo_lower_error(L, a->at, "argument '%s' of %s is given twice", a->name, what);
      return -1;
    }
    slots[k] = a;
  }
  return 0;
}

/* Binds a builtin's arguments by its signature: vals[i] gets the argument or
 * the default; uses[i] where it was written (the call when defaulted). */
static int bind_sig(zoo_lowering *L, const zoo_builtin *b, const zoo_arg *args, int nargs,
                    zoo_span at, sig_param *sig, int *nsig, zoo_value **vals, zoo_span *uses) {
  *nsig = parse_sig(b->sig, sig);
  const char *names[MAX_SIG];
  const zoo_arg *slots[MAX_SIG];
  for (int i = 0; i < *nsig; i++) names[i] = sig[i].name;
  if (zoo_bind_args(L, b->name, names, *nsig, args, nargs, slots)) return -1;
  for (int i = 0; i < *nsig; i++) {
    uses[i] = slots[i] ? slots[i]->at : at;
    if (slots[i]) {
      vals[i] = slots[i]->v;
    } else if (sig[i].has_def) {
      vals[i] = zoo_literal_parse(L, sig[i].def, at);
      if (!vals[i]) abort(); /* a bad default in the table above */
    } else {
      zoo_lower_error(L, at, "missing argument '%s' of %s", sig[i].name, b->name);
      return -1;
    }
  }
  return 0;
}

/* ---- ops ---- */

/* A list of sizes into attrs->dims; for reshape one -1 stands for the rest. */
static int want_dims(zoo_lowering *L, const zoo_value *v, zoo_span at, const char *what, int axes,
                     const zoo_type *x, zoo_attrs *attrs) {
  if (v->kind != ZOO_V_LIST) {
    zoo_lower_error(L, at, "%s must be a list, like [B, T, 64]; got %s", what, zoo_value_describe(L, v));
    return -1;
  }
  if (v->nitems > ZOO_MAX_DIMS) {
    zoo_lower_error(L, at, "%s has %d entries; a tensor has at most %d axes", what, v->nitems, ZOO_MAX_DIMS);
    return -1;
  }
  int infer = -1;
  for (int k = 0; k < v->nitems; k++) {
    const zoo_value *e = v->items[k];
    if (axes) {
      int64_t a;
      if (zoo_value_want_int(L, e, at, "an axis", &a)) return -1;
      if (a < 0 && x) a += x->ndim;
      attrs->dims[k] = zoo_dim_const(a);
    } else if (e->kind == ZOO_V_INT && e->i == -1 && infer < 0 && x) {
      infer = k;
    } else if (zoo_value_want_dim(L, e, at, "a size", &attrs->dims[k])) {
      return -1;
    }
  }
  attrs->ndim = v->nitems;
  if (infer >= 0) {
    zoo_dim total = zoo_dim_const(1), known = zoo_dim_const(1), rest;
    int fits = 1;
    for (int k = 0; k < x->ndim; k++) fits &= zoo_dim_mul_checked(total, x->dim[k], &total);
    for (int k = 0; k < v->nitems && fits; k++)
      if (k != infer) fits &= zoo_dim_mul_checked(known, attrs->dims[k], &known);
    if (!fits) {
      zoo_lower_error(L, at, "cannot infer the -1 in %s: the sizes' product overflows an int64", what);
      return -1;
    }
    if (!zoo_dim_div(total, known, &rest)) {
      char a[64], b[64];
      zoo_lower_error(L, at, "cannot infer the -1 in %s: %s elements are not divisible by %s", what,
                      zoo_dim_str(L->g, total, a, sizeof a), zoo_dim_str(L->g, known, b, sizeof b));
      return -1;
    }
    attrs->dims[infer] = rest;
  }
  return 0;
}

/* Calls an op: tensors in order, attributes into their slots, then the node. */
static zoo_value *call_op(zoo_lowering *L, const zoo_builtin *b, const zoo_arg *args, int nargs,
                          zoo_span at) {
  if (!L->tracing)
    return zoo_lower_error(L, at, "%s works on tensors, which exist only inside forward", b->name);
  sig_param sig[MAX_SIG];
  zoo_value *vals[MAX_SIG];
  zoo_span uses[MAX_SIG];
  int nsig;
  if (bind_sig(L, b, args, nargs, at, sig, &nsig, vals, uses)) return NULL;

  zoo_attrs attrs;
  memset(&attrs, 0, sizeof attrs);
  int in[ZOO_MAX_IN], nin = 0, skipped = -1;
  for (int i = 0; i < nsig; i++) {
    const zoo_value *v = vals[i];
    const char *slot = sig[i].slot;
    const char *what = zoo_arena_printf(L->a, "argument '%s' of %s", sig[i].name, b->name);
    if (!slot[0]) {
      if (v->kind == ZOO_V_NONE && sig[i].has_def) {
        if (skipped < 0) skipped = i;
        continue;
      }
      if (v->kind != ZOO_V_TENSOR)
        return zoo_lower_error(L, uses[i], "%s must be a tensor, got %s", what, zoo_value_describe(L, v));
      if (skipped >= 0)
        return zoo_lower_error(L, uses[i], "%s needs '%s' too", what, sig[skipped].name);
      in[nin++] = v->tensor;
    } else if (slot[0] == 'f') {
      if (zoo_value_want_number(L, v, uses[i], what, &attrs.f[slot[1] - '0'])) return NULL;
    } else if (slot[0] == 'i') {
      if (v->kind == ZOO_V_BOOL) attrs.i[slot[1] - '0'] = v->i;
      else if (zoo_value_want_int(L, v, uses[i], what, &attrs.i[slot[1] - '0'])) return NULL;
    } else if (strcmp(slot, "n") == 0) {
      if (zoo_value_want_dim(L, v, uses[i], what, &attrs.dims[0])) return NULL;
      attrs.ndim = 1;
    } else {
      const zoo_type *x = nin > 0 ? &L->g->tensors[in[0]].type : NULL;
      if (want_dims(L, v, uses[i], what, strcmp(slot, "axes") == 0, x, &attrs)) return NULL;
    }
  }
  if (b->op == ZOO_OP_DROPOUT && attrs.f[0] == 0) return zoo_value_tensor(L, in[0], at);
  if (zoo_ops[b->op].flags & ZOO_OPF_RANDOM) attrs.i[0] = L->g->next_stream++;
  return zoo_lower_node(L, (zoo_op)b->op, nin, in, &attrs, at);
}

/* sqrt(2), exp(-1.0): the elementwise ops also work on numbers, at compile time. */
static zoo_value *fn_number_op(zoo_lowering *L, const zoo_builtin *b, const zoo_arg *args, int nargs,
                               zoo_span at) {
  if (nargs != 1 || args[0].name || (args[0].v->kind != ZOO_V_INT && args[0].v->kind != ZOO_V_FLOAT))
    return call_op(L, b, args, nargs, at);
  double x = args[0].v->kind == ZOO_V_INT ? (double)args[0].v->i : args[0].v->f, r;
  switch (b->op) {
  case ZOO_OP_NEG: r = -x; break;
  case ZOO_OP_EXP: r = exp(x); break;
  case ZOO_OP_LOG:
    if (x <= 0) return zoo_lower_error(L, at, "log of %g, which is not positive", x);
    r = log(x);
    break;
  case ZOO_OP_SQRT:
  case ZOO_OP_RSQRT:
    if (x < 0 || (x == 0 && b->op == ZOO_OP_RSQRT))
      return zoo_lower_error(L, at, "%s of %g", b->name, x);
    r = b->op == ZOO_OP_SQRT ? sqrt(x) : 1 / sqrt(x);
    break;
  case ZOO_OP_SQUARE: r = x * x; break;
  case ZOO_OP_SIGMOID: r = 1 / (1 + exp(-x)); break;
  case ZOO_OP_SILU: r = x / (1 + exp(-x)); break;
  case ZOO_OP_SOFTPLUS: r = x > 20 ? x : log1p(exp(x)); break;
  case ZOO_OP_RELU: r = x > 0 ? x : 0; break;
  case ZOO_OP_GELU: r = 0.5 * x * (1 + erf(x / sqrt(2.0))); break;
  case ZOO_OP_TANH: r = tanh(x); break;
  case ZOO_OP_SIN: r = sin(x); break;
  case ZOO_OP_COS: r = cos(x); break;
  default: return call_op(L, b, args, nargs, at);
  }
  return zoo_value_float(L, r, at);
}

/* ---- compile-time functions ---- */

static zoo_value *fn_len(zoo_lowering *L, const zoo_builtin *b, const zoo_arg *args, int nargs,
                         zoo_span at) {
  sig_param sig[MAX_SIG];
  zoo_value *v[MAX_SIG];
  zoo_span uses[MAX_SIG];
  int n;
  if (bind_sig(L, b, args, nargs, at, sig, &n, v, uses)) return NULL;
  if (v[0]->kind == ZOO_V_LIST) return zoo_value_int(L, v[0]->nitems, at);
  if (v[0]->kind == ZOO_V_STRING) return zoo_value_int(L, (int64_t)strlen(v[0]->s), at);
  return zoo_lower_error(L, uses[0], "len needs a list or a string, got %s", zoo_value_describe(L, v[0]));
}

/* range(stop), range(start, stop), range(start, stop, step): a list of ints. */
static zoo_value *fn_range(zoo_lowering *L, const zoo_builtin *b, const zoo_arg *args, int nargs,
                           zoo_span at) {
  sig_param sig[MAX_SIG];
  zoo_value *v[MAX_SIG];
  zoo_span uses[MAX_SIG];
  int n;
  if (bind_sig(L, b, args, nargs, at, sig, &n, v, uses)) return NULL;
  int64_t start = 0, stop, step;
  if (v[1]->kind == ZOO_V_NONE) {
    if (zoo_value_want_int(L, v[0], uses[0], "the argument of range", &stop)) return NULL;
  } else if (zoo_value_want_int(L, v[0], uses[0], "the start of range", &start) ||
             zoo_value_want_int(L, v[1], uses[1], "the end of range", &stop)) {
    return NULL;
  }
  if (zoo_value_want_int(L, v[2], uses[2], "the step of range", &step)) return NULL;
  if (step == 0) return zoo_lower_error(L, uses[2], "the step of range is zero");
  double count = ceil(((double)stop - (double)start) / (double)step);
  if (count < 0) count = 0;
  if (count > 100000) return zoo_lower_error(L, at, "range of %.0f numbers is too long", count);
  zoo_value *list = zoo_value_new(L, ZOO_V_LIST, at);
  list->items = zoo_arena_alloc(L->a, (size_t)(count + 1) * sizeof *list->items);
  for (int64_t i = 0; i < (int64_t)count; i++)
    list->items[list->nitems++] = zoo_value_int(L, start + i * step, at);
  return list;
}

/* min(a, b, ...) or min(list); ints stay ints. */
static zoo_value *fn_minmax(zoo_lowering *L, const zoo_builtin *b, const zoo_arg *args, int nargs,
                            zoo_span at) {
  zoo_value *const *items;
  int n;
  zoo_value **tmp = zoo_arena_alloc(L->a, (size_t)(nargs + 1) * sizeof *tmp);
  for (int i = 0; i < nargs; i++) {
    if (args[i].name)
      return zoo_lower_error(L, args[i].at, "%s takes no keyword arguments", b->name);
    tmp[i] = args[i].v;
  }
  if (nargs == 1 && args[0].v->kind == ZOO_V_LIST) {
    items = args[0].v->items;
    n = args[0].v->nitems;
  } else {
    items = tmp;
    n = nargs;
  }
  if (n == 0) return zoo_lower_error(L, at, "%s of nothing", b->name);
  int want_max = strcmp(b->name, "max") == 0;
  const zoo_value *best = NULL;
  double bestv = 0;
  for (int i = 0; i < n; i++) {
    double x;
    if (zoo_value_want_number(L, items[i], nargs == 1 ? args[0].at : args[i].at, "an argument of min/max", &x))
      return NULL;
    if (!best || (want_max ? x > bestv : x < bestv)) {
      best = items[i];
      bestv = x;
    }
  }
  return best->kind == ZOO_V_INT ? zoo_value_int(L, best->i, at) : zoo_value_float(L, best->f, at);
}

/* int(x) (toward zero), float(x), abs(x). */
static zoo_value *fn_convert(zoo_lowering *L, const zoo_builtin *b, const zoo_arg *args, int nargs,
                             zoo_span at) {
  sig_param sig[MAX_SIG];
  zoo_value *v[MAX_SIG];
  zoo_span uses[MAX_SIG];
  int n;
  if (bind_sig(L, b, args, nargs, at, sig, &n, v, uses)) return NULL;
  const zoo_value *x = v[0];
  if (strcmp(b->name, "int") == 0 && x->kind == ZOO_V_BOOL) return zoo_value_int(L, x->i, at);
  double d;
  const char *what = zoo_arena_printf(L->a, "the argument of %s", b->name);
  if (zoo_value_want_number(L, x, uses[0], what, &d)) return NULL;
  if (strcmp(b->name, "float") == 0) return zoo_value_float(L, d, at);
  if (strcmp(b->name, "abs") == 0) {
    if (x->kind == ZOO_V_FLOAT) return zoo_value_float(L, fabs(d), at);
    if (x->i == INT64_MIN) return zoo_lower_error(L, at, "integer overflow");
    return zoo_value_int(L, x->i < 0 ? -x->i : x->i, at);
  }
  if (x->kind == ZOO_V_INT) return zoo_value_int(L, x->i, at);
  if (!(fabs(d) < 9.2e18)) return zoo_lower_error(L, at, "%g does not fit an integer", d);
  return zoo_value_int(L, (int64_t)trunc(d), at);
}

/* param(shape, init = normal(0.02)): declares a parameter tensor. */
static zoo_value *fn_param(zoo_lowering *L, const zoo_builtin *b, const zoo_arg *args, int nargs,
                           zoo_span at) {
  if (L->tracing)
    return zoo_lower_error(L, at, "param(...) declares a parameter; write it as a module field, "
                           "not inside forward");
  sig_param sig[MAX_SIG];
  zoo_value *v[MAX_SIG];
  zoo_span uses[MAX_SIG];
  int n;
  if (bind_sig(L, b, args, nargs, at, sig, &n, v, uses)) return NULL;
  const zoo_value *shape = v[0];
  if (shape->kind != ZOO_V_LIST)
    return zoo_lower_error(L, uses[0], "the shape of a parameter must be a list of sizes, like "
                           "[d_out, d_in]; got %s", zoo_value_describe(L, shape));
  if (shape->nitems > ZOO_MAX_DIMS)
    return zoo_lower_error(L, uses[0], "a parameter has at most %d axes, got %d", ZOO_MAX_DIMS,
                           shape->nitems);
  zoo_param *p = zoo_arena_alloc(L->a, sizeof *p);
  p->type.dtype = ZOO_F32;
  p->type.ndim = shape->nitems;
  for (int k = 0; k < shape->nitems; k++) {
    const zoo_value *e = shape->items[k];
    const char *what = zoo_arena_printf(L->a, "size %d of the parameter's shape", k);
    if (e->kind == ZOO_V_DIM)
      return zoo_lower_error(L, uses[0], "%s is the symbolic size %s; parameters have fixed "
                             "sizes", what, zoo_value_format(L, e));
    int64_t d;
    if (zoo_value_want_int(L, e, uses[0], what, &d)) return NULL;
    if (d < 1)
      return zoo_lower_error(L, uses[0], "%s is %lld; sizes must be positive", what, (long long)d);
    if (d > ZOO_PARAM_MAX)
      return zoo_lower_error(L, uses[0], "%s is %lld; a size may be at most 2^40 (%lld)", what,
                             (long long)d, (long long)ZOO_PARAM_MAX);
    p->type.dim[k] = zoo_dim_const(d);
  }
  int64_t numel = 1;
  for (int k = 0; k < p->type.ndim; k++) {
    if (p->type.dim[k].coef > ZOO_PARAM_MAX / numel) {
      char buf[256];
      return zoo_lower_error(L, uses[0], "a parameter %s would have more than 2^40 (%lld) "
                             "elements, the most a parameter may have",
                             zoo_type_str(L->g, &p->type, buf, sizeof buf), (long long)ZOO_PARAM_MAX);
    }
    numel *= p->type.dim[k].coef;
  }
  if (v[1]->kind == ZOO_V_NONE) {
    p->init = (zoo_init){.kind = ZOO_INIT_NORMAL, .a = 0.02};
  } else if (v[1]->kind == ZOO_V_INIT) {
    p->init = v[1]->init;
  } else {
    return zoo_lower_error(L, uses[1], "init must be an initialiser such as normal(0.02), "
                           "uniform(0.1), zeros(), ones() or constant(1); got %s",
                           zoo_value_describe(L, v[1]));
  }
  p->at = at;
  p->tensor = -1;
  zoo_value *r = zoo_value_new(L, ZOO_V_PARAM, at);
  r->param = p;
  return r;
}

/* normal(std), uniform(bound), zeros(), ones(), constant(value). */
static zoo_value *fn_init(zoo_lowering *L, const zoo_builtin *b, const zoo_arg *args, int nargs,
                          zoo_span at) {
  sig_param sig[MAX_SIG];
  zoo_value *v[MAX_SIG];
  zoo_span uses[MAX_SIG];
  int n;
  if (bind_sig(L, b, args, nargs, at, sig, &n, v, uses)) return NULL;
  zoo_value *r = zoo_value_new(L, ZOO_V_INIT, at);
  const char *name = b->name;
  r->init.kind = strcmp(name, "normal") == 0 ? ZOO_INIT_NORMAL
               : strcmp(name, "uniform") == 0 ? ZOO_INIT_UNIFORM
               : strcmp(name, "zeros") == 0 ? ZOO_INIT_ZEROS
               : strcmp(name, "ones") == 0 ? ZOO_INIT_ONES
               : strcmp(name, "ramp") == 0 ? ZOO_INIT_RAMP
               : strcmp(name, "zigzag") == 0 ? ZOO_INIT_ZIGZAG : ZOO_INIT_CONST;
  if (r->init.kind == ZOO_INIT_RAMP || r->init.kind == ZOO_INIT_ZIGZAG) {
    double *slot[4] = {&r->init.a, &r->init.b, &r->init.c, &r->init.d};
    for (int k = 0; k < n; k++) {
      const char *what = zoo_arena_printf(L->a, "argument %d of %s", k + 1, name);
      if (zoo_value_want_number(L, v[k], uses[k], what, slot[k])) return NULL;
    }
    if (r->init.kind == ZOO_INIT_RAMP && !(r->init.a > 0))
      return zoo_lower_error(L, uses[0], "the denominator of ramp must be positive");
    return r;
  }
  if (n == 1) {
    const char *what = zoo_arena_printf(L->a, "the argument of %s", name);
    if (zoo_value_want_number(L, v[0], uses[0], what, &r->init.a)) return NULL;
    if (r->init.kind != ZOO_INIT_CONST && !(r->init.a >= 0))
      return zoo_lower_error(L, uses[0], "%s must not be negative", what);
  }
  return r;
}

zoo_value *zoo_builtin_call(zoo_lowering *L, const zoo_builtin *b, const zoo_arg *args, int nargs,
                            zoo_span at) {
  if (b->fn) return b->fn(L, b, args, nargs, at);
  return call_op(L, b, args, nargs, at);
}

/* ---- dumps ---- */

void zoo_builtin_print_attrs(FILE *out, const zoo_graph *g, const zoo_node *n) {
  char name[64];
  snprintf(name, sizeof name, "%s", zoo_ops[n->op].name);
  char *bwd = strstr(name, "_bwd");
  if (bwd && bwd[4] == 0) *bwd = 0; /* a gradient op has its forward op's attributes */
  char *packed = strstr(name, "_packed");
  if (packed && packed[7] == 0) *packed = 0; /* softmax_attention_packed: softmax_attention's */
  const zoo_builtin *b = zoo_builtin_find(name);
  const zoo_attrs *a = &n->attrs;
  int dims_shown = 0;
  if (b && b->op >= 0) {
    sig_param sig[MAX_SIG];
    int ns = parse_sig(b->sig, sig);
    for (int i = 0; i < ns; i++) {
      const char *slot = sig[i].slot;
      if (!slot[0]) continue;
      if (slot[0] == 'f') fprintf(out, " %s=%g", sig[i].name, a->f[slot[1] - '0']);
      else if (slot[0] == 'i') fprintf(out, " %s=%lld", sig[i].name, (long long)a->i[slot[1] - '0']);
      else {
        char d[64];
        dims_shown = 1;
        if (strcmp(slot, "n") == 0) {
          fprintf(out, " %s=%s", sig[i].name, zoo_dim_str(g, a->dims[0], d, sizeof d));
          continue;
        }
        fprintf(out, " %s=[", sig[i].name);
        for (int k = 0; k < a->ndim; k++)
          fprintf(out, "%s%s", k ? ", " : "", zoo_dim_str(g, a->dims[k], d, sizeof d));
        fputc(']', out);
      }
    }
  }
  if (!dims_shown && a->ndim > 0) {
    char d[64];
    fputs(" dims=[", out);
    for (int k = 0; k < a->ndim; k++)
      fprintf(out, "%s%s", k ? ", " : "", zoo_dim_str(g, a->dims[k], d, sizeof d));
    fputc(']', out);
  }
  if (zoo_ops[n->op].flags & ZOO_OPF_RANDOM) fprintf(out, " stream=%lld", (long long)a->i[0]);
  /* set by a pass, not from .zoo (ops.def): poly_attention's heads-interleaved layout */
  if ((n->op == ZOO_OP_POLY_ATTENTION || n->op == ZOO_OP_POLY_ATTENTION_BWD) && a->i[0] != 0)
    fprintf(out, " layout=%lld heads=%lld", (long long)a->i[0], (long long)a->i[1]);
  if (n->op == ZOO_OP_SOFTMAX_ATTENTION_PACKED || n->op == ZOO_OP_SOFTMAX_ATTENTION_PACKED_BWD)
    fprintf(out, " heads=%lld", (long long)a->i[2]);
  /* and layernorm's output split into heads; linear_layernorm's (no .zoo signature) */
  if (n->op == ZOO_OP_LINEAR_LAYERNORM) fprintf(out, " eps=%g", a->f[0]);
  if ((n->op == ZOO_OP_LAYERNORM || n->op == ZOO_OP_LAYERNORM_BWD || n->op == ZOO_OP_LINEAR_LAYERNORM) &&
      a->i[0] != 0)
    fprintf(out, " split_heads=%lld", (long long)a->i[0]);
}
