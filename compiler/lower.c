/* lower.c: from a resolved .zoo program to a shape-checked graph.
 *
 * A small tree-walking interpreter over compile-time values (value.h), run in
 * two times:
 *
 *   instantiation  the model declaration's expression is evaluated; calling a
 *                  module definition binds its parameters and evaluates its lets
 *                  and fields in order, giving a module instance;
 *   naming         the finished tree of instances is walked from the root, field
 *                  by field, and each param(...) met gets its graph tensor, named
 *                  by its path (backbone.layers.1.sequence_mixer.mixer.proj_q.weight);
 *                  one met again becomes an alias (weight tying);
 *   tracing        the root's forward runs once with the input "tokens" i32[B, T];
 *                  calling an instance runs its forward; every tensor operation
 *                  appends a node to the graph, whose shape rule checks it.
 *
 * Control flow (if, for) runs at compile time, so it unrolls; a tensor can never
 * decide it. Errors are reported where the .zoo text caused them, with notes
 * naming the modules being instantiated or traced.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "value.h"

#define ZOO_MAX_STEPS 20000000L /* evaluation steps before "runs too long" */
#define ZOO_MAX_NESTING 1000    /* nested evaluations (deep expressions) */
#define ZOO_MAX_LIST 100000     /* elements in a compile-time list */
#define ZOO_MAX_NODES 200000    /* nodes of a traced graph */

enum { EXEC_NEXT, EXEC_RETURN, EXEC_ERROR };

static zoo_value *eval(zoo_lowering *L, zoo_env *env, const zoo_ast *n);
static int exec_block(zoo_lowering *L, zoo_env *env, zoo_ast **items, int nitems, zoo_value **ret);

/* ---- values ---- */

zoo_value *zoo_value_new(zoo_lowering *L, zoo_value_kind kind, zoo_span at) {
  zoo_value *v = zoo_arena_alloc(L->a, sizeof *v);
  v->kind = kind;
  v->at = at;
  v->tensor = -1;
  return v;
}

zoo_value *zoo_value_int(zoo_lowering *L, int64_t i, zoo_span at) {
  zoo_value *v = zoo_value_new(L, ZOO_V_INT, at);
  v->i = i;
  return v;
}

zoo_value *zoo_value_float(zoo_lowering *L, double f, zoo_span at) {
  zoo_value *v = zoo_value_new(L, ZOO_V_FLOAT, at);
  v->f = f;
  return v;
}

static zoo_value *value_bool(zoo_lowering *L, int b, zoo_span at) {
  zoo_value *v = zoo_value_new(L, ZOO_V_BOOL, at);
  v->i = b != 0;
  return v;
}

zoo_value *zoo_value_tensor(zoo_lowering *L, int tensor, zoo_span at) {
  zoo_value *v = zoo_value_new(L, ZOO_V_TENSOR, at);
  v->tensor = tensor;
  return v;
}

/* A size as a value: an INT when it has no symbols, else a DIM. */
static zoo_value *value_dim(zoo_lowering *L, zoo_dim d, zoo_span at) {
  if (d.sym == 0) return zoo_value_int(L, d.coef, at);
  zoo_value *v = zoo_value_new(L, ZOO_V_DIM, at);
  v->dim = d;
  return v;
}

/* A float in the shortest form that reads back the same, always with a '.' or
 * an exponent so that it reads back as a float. */
static void format_float(char *buf, size_t n, double f) {
  if (isnan(f) || isinf(f)) {
    snprintf(buf, n, "%s", isnan(f) ? "nan" : f > 0 ? "inf" : "-inf");
    return;
  }
  for (int prec = 1; prec <= 17; prec++) {
    snprintf(buf, n, "%.*g", prec, f);
    if (strtod(buf, NULL) == f) break;
  }
  if (!strpbrk(buf, ".e")) strncat(buf, ".0", n - strlen(buf) - 1);
}

static const char *module_name(const zoo_value *v) {
  if (v->kind == ZOO_V_INSTANCE) return v->inst->module->str;
  return v->module ? v->module->str : "?";
}

static const char *init_str(zoo_lowering *L, zoo_init init) {
  char f[64];
  format_float(f, sizeof f, init.a);
  switch (init.kind) {
  case ZOO_INIT_ZEROS: return "zeros()";
  case ZOO_INIT_ONES: return "ones()";
  case ZOO_INIT_NORMAL: return zoo_arena_printf(L->a, "normal(%s)", f);
  case ZOO_INIT_UNIFORM: return zoo_arena_printf(L->a, "uniform(%s)", f);
  case ZOO_INIT_CONST: return zoo_arena_printf(L->a, "constant(%s)", f);
  case ZOO_INIT_RAMP:
  case ZOO_INIT_ZIGZAG: {
    char b[64], c[64], d[64];
    format_float(b, sizeof b, init.b);
    format_float(c, sizeof c, init.c);
    format_float(d, sizeof d, init.d);
    if (init.kind == ZOO_INIT_ZIGZAG) return zoo_arena_printf(L->a, "zigzag(%s, offset = %s)", f, b);
    return zoo_arena_printf(L->a, "ramp(%s, %s, scale = %s, offset = %s)", f, b, c, d);
  }
  }
  return "?";
}

const char *zoo_value_format(zoo_lowering *L, const zoo_value *v) {
  char buf[128];
  switch (v->kind) {
  case ZOO_V_NONE: return "none";
  case ZOO_V_BOOL: return v->i ? "true" : "false";
  case ZOO_V_INT: return zoo_arena_printf(L->a, "%lld", (long long)v->i);
  case ZOO_V_FLOAT: format_float(buf, sizeof buf, v->f); return zoo_arena_strdup(L->a, buf);
  case ZOO_V_STRING: return zoo_arena_printf(L->a, "\"%s\"", v->s);
  case ZOO_V_LIST: {
    const char *s = "[";
    for (int i = 0; i < v->nitems; i++)
      s = zoo_arena_printf(L->a, "%s%s%s", s, i ? ", " : "", zoo_value_format(L, v->items[i]));
    return zoo_arena_printf(L->a, "%s]", s);
  }
  case ZOO_V_DIM: return zoo_arena_strdup(L->a, zoo_dim_str(L->g, v->dim, buf, sizeof buf));
  case ZOO_V_INIT: return init_str(L, v->init);
  default: return zoo_value_describe(L, v);
  }
}

const char *zoo_value_describe(zoo_lowering *L, const zoo_value *v) {
  char buf[256];
  switch (v->kind) {
  case ZOO_V_NONE: return "none";
  case ZOO_V_BOOL: return zoo_arena_printf(L->a, "bool %s", v->i ? "true" : "false");
  case ZOO_V_INT: return zoo_arena_printf(L->a, "int %lld", (long long)v->i);
  case ZOO_V_FLOAT: return zoo_arena_printf(L->a, "float %s", zoo_value_format(L, v));
  case ZOO_V_STRING: return zoo_arena_printf(L->a, "string \"%s\"", v->s);
  case ZOO_V_LIST: return zoo_arena_printf(L->a, "a list of %d", v->nitems);
  case ZOO_V_DIM: return zoo_arena_printf(L->a, "the symbolic size %s", zoo_value_format(L, v));
  case ZOO_V_TENSOR:
    return zoo_arena_strdup(L->a, zoo_type_str(L->g, &L->g->tensors[v->tensor].type, buf, sizeof buf));
  case ZOO_V_MODULE: return zoo_arena_printf(L->a, "the module %s", module_name(v));
  case ZOO_V_INSTANCE: return zoo_arena_printf(L->a, "a %s instance", module_name(v));
  case ZOO_V_BUILTIN: return zoo_arena_printf(L->a, "the builtin %s", v->builtin->name);
  case ZOO_V_INIT: return zoo_arena_printf(L->a, "the initialiser %s", init_str(L, v->init));
  case ZOO_V_PARAM:
    return zoo_arena_printf(L->a, "a parameter %s", zoo_type_str(L->g, &v->param->type, buf, sizeof buf));
  }
  return "?";
}

/* ---- errors ---- */

/* Notes for what is being instantiated or traced, innermost first (the ten
 * innermost); one at the error's own span would only repeat it. */
static void notes_after(zoo_lowering *L, zoo_span err) {
  int shown = 0;
  for (int i = L->depth - 1; i >= 0; i--) {
    zoo_span at = L->stack[i].at;
    if (at.src == err.src && at.line == err.line && at.col == err.col && at.end_col == err.end_col)
      continue;
    if (shown++ == 10) {
      zoo_note(L->d, zoo_nospan, "... and %d outer calls", i + 1);
      break;
    }
    const char *m = L->stack[i].module->str;
    if (L->stack[i].forward) zoo_note(L->d, at, "in %s.forward, called here", m);
    else zoo_note(L->d, at, "in module %s, instantiated here", m);
  }
}

void zoo_lower_notes(zoo_lowering *L) { notes_after(L, zoo_nospan); }

zoo_value *zoo_lower_error(zoo_lowering *L, zoo_span at, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  zoo_verror(L->d, at, fmt, ap);
  va_end(ap);
  notes_after(L, at);
  return NULL;
}

/* After an error about v at `at`: where v was computed, when that is elsewhere. */
static void origin_note(zoo_lowering *L, const zoo_value *v, zoo_span at) {
  if (v->at.src && (v->at.src != at.src || v->at.line != at.line || v->at.col != at.col))
    zoo_note(L->d, v->at, "the value comes from here");
}

int zoo_value_want_int(zoo_lowering *L, const zoo_value *v, zoo_span at, const char *what, int64_t *out) {
  if (v->kind == ZOO_V_INT) {
    *out = v->i;
    return 0;
  }
  if (v->kind == ZOO_V_FLOAT && v->f == floor(v->f)) {
    zoo_error(L->d, at, "%s must be an integer, got float %s; `/` always gives a float, "
              "`//` divides integers", what, zoo_value_format(L, v));
  } else if (v->kind == ZOO_V_TENSOR) {
    zoo_error(L->d, at, "%s must be an integer known at compile time, got a tensor %s", what,
              zoo_value_describe(L, v));
  } else {
    zoo_error(L->d, at, "%s must be an integer, got %s", what, zoo_value_describe(L, v));
  }
  origin_note(L, v, at);
  zoo_lower_notes(L);
  return -1;
}

int zoo_value_want_number(zoo_lowering *L, const zoo_value *v, zoo_span at, const char *what,
                          double *out) {
  if (v->kind == ZOO_V_INT) *out = (double)v->i;
  else if (v->kind == ZOO_V_FLOAT) *out = v->f;
  else {
    zoo_error(L->d, at, "%s must be a number, got %s", what, zoo_value_describe(L, v));
    origin_note(L, v, at);
    zoo_lower_notes(L);
    return -1;
  }
  return 0;
}

int zoo_value_want_dim(zoo_lowering *L, const zoo_value *v, zoo_span at, const char *what,
                       zoo_dim *out) {
  if (v->kind == ZOO_V_DIM) {
    *out = v->dim;
    return 0;
  }
  int64_t n;
  if (zoo_value_want_int(L, v, at, what, &n)) return -1;
  *out = zoo_dim_const(n);
  return 0;
}

zoo_value *zoo_lower_node(zoo_lowering *L, zoo_op op, int nin, const int *in, const zoo_attrs *attrs,
                          zoo_span at) {
  if (L->g->nnodes >= ZOO_MAX_NODES)
    return zoo_lower_error(L, at, "the graph grows past %d nodes (a huge loop?)", ZOO_MAX_NODES);
  int id = zoo_graph_node(L->g, op, nin, in, attrs, at, L->d);
  if (id < 0) {
    zoo_lower_notes(L);
    return NULL;
  }
  return zoo_value_tensor(L, id, at);
}

/* ---- scopes ---- */

static zoo_env *env_new(zoo_lowering *L, zoo_env *parent, const zoo_unit *unit) {
  zoo_env *e = zoo_arena_alloc(L->a, sizeof *e);
  e->parent = parent;
  e->unit = unit;
  return e;
}

/* Binds name in this frame, replacing a binding of the same name here. */
static void env_set(zoo_lowering *L, zoo_env *e, const char *name, zoo_value *v) {
  for (int i = 0; i < e->n; i++)
    if (strcmp(e->names[i], name) == 0) {
      e->values[i] = v;
      return;
    }
  if (e->n == e->cap) {
    int cap = e->cap ? e->cap * 2 : 8;
    const char **names = zoo_arena_alloc(L->a, (size_t)cap * sizeof *names);
    zoo_value **values = zoo_arena_alloc(L->a, (size_t)cap * sizeof *values);
    if (e->n) {
      memcpy(names, e->names, (size_t)e->n * sizeof *names);
      memcpy(values, e->values, (size_t)e->n * sizeof *values);
    }
    e->names = names;
    e->values = values;
    e->cap = cap;
  }
  e->names[e->n] = name;
  e->values[e->n++] = v;
}

static zoo_value *env_get_frame(const zoo_env *e, const char *name) {
  for (int i = e->n - 1; i >= 0; i--)
    if (strcmp(e->names[i], name) == 0) return e->values[i];
  return NULL;
}

/* Looks a name up through the frames, then the globals of the file: its
 * modules and those it imports, then the builtins. NULL when unbound. */
static zoo_value *env_lookup(zoo_lowering *L, const zoo_env *e, const char *name, zoo_span at) {
  const zoo_unit *unit = NULL;
  for (; e; e = e->parent) {
    zoo_value *v = env_get_frame(e, name);
    if (v) return v;
    unit = e->unit;
  }
  const zoo_unit *where;
  const zoo_ast *m = unit ? zoo_resolve_module(unit, name, &where) : NULL;
  if (m) {
    zoo_value *v = zoo_value_new(L, ZOO_V_MODULE, at);
    v->module = m;
    v->unit = where;
    return v;
  }
  const zoo_builtin *b = zoo_builtin_find(name);
  if (b) {
    zoo_value *v = zoo_value_new(L, ZOO_V_BUILTIN, at);
    v->builtin = b;
    return v;
  }
  return NULL;
}

/* The closest bound name to `name`, for "did you mean". */
static const char *suggest(zoo_lowering *L, const zoo_env *e, const char *name) {
  const char **extra = NULL;
  int n = 0, cap = 0;
  const zoo_unit *unit = NULL;
  for (; e; e = e->parent) {
    unit = e->unit;
    for (int i = 0; i < e->n; i++) {
      if (n == cap) {
        cap = cap ? cap * 2 : 32;
        const char **grown = zoo_arena_alloc(L->a, (size_t)cap * sizeof *grown);
        if (n) memcpy(grown, extra, (size_t)n * sizeof *grown);
        extra = grown;
      }
      extra[n++] = e->names[i];
    }
  }
  return zoo_resolve_suggest(unit, name, extra, n);
}

/* While tracing, a parameter read from a field becomes its graph tensor. */
static zoo_value *deparam(zoo_lowering *L, zoo_value *v, zoo_span at) {
  if (!v || v->kind != ZOO_V_PARAM || !L->tracing) return v;
  if (v->param->tensor < 0) {
    zoo_lower_error(L, at, "this parameter is not stored in any field of the model, so it has "
                    "no name; make it (or the module holding it) a field");
    zoo_note(L->d, v->param->at, "the parameter is declared here");
    return NULL;
  }
  return zoo_value_tensor(L, v->param->tensor, at);
}

/* ---- arithmetic ---- */

static int is_number(const zoo_value *v) { return v->kind == ZOO_V_INT || v->kind == ZOO_V_FLOAT; }
static double num(const zoo_value *v) { return v->kind == ZOO_V_INT ? (double)v->i : v->f; }

/* Structural equality of compile-time values; *ok = 0 when it cannot be known. */
static int values_equal(const zoo_value *a, const zoo_value *b, int *ok) {
  *ok = 1;
  if (a->kind == ZOO_V_NONE || b->kind == ZOO_V_NONE) return a->kind == b->kind;
  if (is_number(a) && is_number(b)) {
    if (a->kind == ZOO_V_INT && b->kind == ZOO_V_INT) return a->i == b->i;
    return num(a) == num(b);
  }
  if ((a->kind == ZOO_V_DIM || b->kind == ZOO_V_DIM) &&
      (a->kind == ZOO_V_DIM || a->kind == ZOO_V_INT) && (b->kind == ZOO_V_DIM || b->kind == ZOO_V_INT)) {
    zoo_dim x = a->kind == ZOO_V_DIM ? a->dim : zoo_dim_const(a->i);
    zoo_dim y = b->kind == ZOO_V_DIM ? b->dim : zoo_dim_const(b->i);
    if (zoo_dim_eq(x, y)) return 1;
    if (x.sym == y.sym) return 0;
    *ok = 0; /* T == 128 is decided only when the model runs */
    return 0;
  }
  if (a->kind != b->kind) return 0;
  switch (a->kind) {
  case ZOO_V_BOOL: return a->i == b->i;
  case ZOO_V_STRING: return strcmp(a->s, b->s) == 0;
  case ZOO_V_LIST:
    if (a->nitems != b->nitems) return 0;
    for (int i = 0; i < a->nitems; i++)
      if (!values_equal(a->items[i], b->items[i], ok) || !*ok) return 0;
    return 1;
  case ZOO_V_INSTANCE: return a->inst == b->inst;
  case ZOO_V_MODULE: return a->module == b->module;
  case ZOO_V_BUILTIN: return a->builtin == b->builtin;
  case ZOO_V_PARAM: return a->param == b->param;
  case ZOO_V_INIT:
    return a->init.kind == b->init.kind && a->init.a == b->init.a && a->init.b == b->init.b &&
           a->init.c == b->init.c && a->init.d == b->init.d;
  case ZOO_V_TENSOR: *ok = 0; return 0;
  default: return 0;
  }
}

/* x op c, c op x or x op y on tensors (c a number). */
static zoo_value *tensor_binary(zoo_lowering *L, int op, zoo_value *a, zoo_value *b, zoo_span at) {
  zoo_attrs attrs;
  memset(&attrs, 0, sizeof attrs);
  if (a->kind == ZOO_V_TENSOR && b->kind == ZOO_V_TENSOR) {
    zoo_op k = op == ZOO_BIN_ADD ? ZOO_OP_ADD : op == ZOO_BIN_SUB ? ZOO_OP_SUB
             : op == ZOO_BIN_MUL ? ZOO_OP_MUL : op == ZOO_BIN_DIV ? ZOO_OP_DIV : ZOO_OP_COUNT;
    if (k == ZOO_OP_COUNT)
      return zoo_lower_error(L, at, "'%s' is not defined between two tensors", zoo_binop_spelling(op));
    int in[2] = {a->tensor, b->tensor};
    return zoo_lower_node(L, k, 2, in, NULL, at);
  }
  int tensor_left = a->kind == ZOO_V_TENSOR;
  zoo_value *x = tensor_left ? a : b, *c = tensor_left ? b : a;
  if (!is_number(c))
    return zoo_lower_error(L, at, "'%s' is not defined between %s and %s", zoo_binop_spelling(op),
                           zoo_value_describe(L, a), zoo_value_describe(L, b));
  double k = num(c);
  int in[1] = {x->tensor};
  switch (op) {
  case ZOO_BIN_ADD:
    attrs.f[0] = k;
    return zoo_lower_node(L, ZOO_OP_ADDS, 1, in, &attrs, at);
  case ZOO_BIN_SUB:
    if (tensor_left) {
      attrs.f[0] = -k;
      return zoo_lower_node(L, ZOO_OP_ADDS, 1, in, &attrs, at);
    } else {
      zoo_value *neg = zoo_lower_node(L, ZOO_OP_NEG, 1, in, NULL, at);
      if (!neg) return NULL;
      in[0] = neg->tensor;
      attrs.f[0] = k;
      return zoo_lower_node(L, ZOO_OP_ADDS, 1, in, &attrs, at);
    }
  case ZOO_BIN_MUL:
    attrs.f[0] = k;
    return zoo_lower_node(L, ZOO_OP_MULS, 1, in, &attrs, at);
  case ZOO_BIN_DIV:
    if (tensor_left) {
      if (k == 0) return zoo_lower_error(L, at, "division by zero");
      attrs.f[0] = 1 / k;
      return zoo_lower_node(L, ZOO_OP_MULS, 1, in, &attrs, at);
    } else {
      attrs.f[0] = -1;
      zoo_value *inv = zoo_lower_node(L, ZOO_OP_POWS, 1, in, &attrs, at);
      if (!inv || k == 1) return inv;
      in[0] = inv->tensor;
      attrs.f[0] = k;
      return zoo_lower_node(L, ZOO_OP_MULS, 1, in, &attrs, at);
    }
  case ZOO_BIN_POW:
    if (!tensor_left)
      return zoo_lower_error(L, at, "a number to the power of a tensor is not supported; "
                             "write exp(x * log(c))");
    if (k == 2) return zoo_lower_node(L, ZOO_OP_SQUARE, 1, in, NULL, at);
    attrs.f[0] = k;
    return zoo_lower_node(L, ZOO_OP_POWS, 1, in, &attrs, at);
  default:
    return zoo_lower_error(L, at, "'%s' is not defined on tensors", zoo_binop_spelling(op));
  }
}

/* Floor division and modulo of integers, as Python has them. */
static int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) q--;
  return q;
}

static zoo_value *int_binary(zoo_lowering *L, int op, int64_t a, int64_t b, zoo_span at) {
  int64_t r = 0;
  int overflow = 0;
  switch (op) {
  case ZOO_BIN_ADD: overflow = __builtin_add_overflow(a, b, &r); break;
  case ZOO_BIN_SUB: overflow = __builtin_sub_overflow(a, b, &r); break;
  case ZOO_BIN_MUL: overflow = __builtin_mul_overflow(a, b, &r); break;
  case ZOO_BIN_DIV:
    if (b == 0) return zoo_lower_error(L, at, "division by zero");
    return zoo_value_float(L, (double)a / (double)b, at);
  case ZOO_BIN_IDIV:
  case ZOO_BIN_MOD:
    if (b == 0) return zoo_lower_error(L, at, "%s by zero", op == ZOO_BIN_MOD ? "modulo" : "division");
    if (a == INT64_MIN && b == -1) overflow = 1;
    else r = op == ZOO_BIN_IDIV ? floor_div(a, b) : a - floor_div(a, b) * b;
    break;
  case ZOO_BIN_POW: /* by squaring */
    if (b < 0) return zoo_value_float(L, pow((double)a, (double)b), at);
    r = 1;
    for (int64_t base = a, e = b; e > 0 && !overflow; e >>= 1) {
      if (e & 1) overflow = __builtin_mul_overflow(r, base, &r);
      if (e > 1 && !overflow) overflow = __builtin_mul_overflow(base, base, &base);
    }
    break;
  case ZOO_BIN_LT: return value_bool(L, a < b, at);
  case ZOO_BIN_LE: return value_bool(L, a <= b, at);
  case ZOO_BIN_GT: return value_bool(L, a > b, at);
  case ZOO_BIN_GE: return value_bool(L, a >= b, at);
  default: return zoo_lower_error(L, at, "'%s' is not defined on integers", zoo_binop_spelling(op));
  }
  if (overflow) return zoo_lower_error(L, at, "integer overflow");
  return zoo_value_int(L, r, at);
}

static zoo_value *float_binary(zoo_lowering *L, int op, double a, double b, zoo_span at) {
  switch (op) {
  case ZOO_BIN_ADD: return zoo_value_float(L, a + b, at);
  case ZOO_BIN_SUB: return zoo_value_float(L, a - b, at);
  case ZOO_BIN_MUL: return zoo_value_float(L, a * b, at);
  case ZOO_BIN_DIV:
    if (b == 0) return zoo_lower_error(L, at, "division by zero");
    return zoo_value_float(L, a / b, at);
  case ZOO_BIN_IDIV:
  case ZOO_BIN_MOD: {
    if (b == 0) return zoo_lower_error(L, at, "%s by zero", op == ZOO_BIN_MOD ? "modulo" : "division");
    double q = floor(a / b);
    return zoo_value_float(L, op == ZOO_BIN_IDIV ? q : a - q * b, at);
  }
  case ZOO_BIN_POW: {
    double r = pow(a, b);
    if (isnan(r) && !isnan(a) && !isnan(b))
      return zoo_lower_error(L, at, "%g ** %g is not a real number", a, b);
    return zoo_value_float(L, r, at);
  }
  case ZOO_BIN_LT: return value_bool(L, a < b, at);
  case ZOO_BIN_LE: return value_bool(L, a <= b, at);
  case ZOO_BIN_GT: return value_bool(L, a > b, at);
  case ZOO_BIN_GE: return value_bool(L, a >= b, at);
  default: return zoo_lower_error(L, at, "'%s' is not defined on numbers", zoo_binop_spelling(op));
  }
}

/* Sizes with symbols multiply, and divide when the division is exact. */
static zoo_value *dim_binary(zoo_lowering *L, int op, zoo_value *a, zoo_value *b, zoo_span at) {
  zoo_dim x, y, r;
  if (zoo_value_want_dim(L, a, at, "a size", &x) || zoo_value_want_dim(L, b, at, "a size", &y))
    return NULL;
  if (op == ZOO_BIN_MUL) {
    if (!zoo_dim_mul_checked(x, y, &r))
      return zoo_lower_error(L, at, "%s * %s overflows an int64", zoo_value_format(L, a),
                             zoo_value_format(L, b));
    return value_dim(L, r, at);
  }
  if (op == ZOO_BIN_IDIV) {
    if (y.coef == 0 && y.sym == 0) return zoo_lower_error(L, at, "division by zero");
    if (!zoo_dim_div(x, y, &r))
      return zoo_lower_error(L, at, "%s is not known to be divisible by %s", zoo_value_format(L, a),
                             zoo_value_format(L, b));
    return value_dim(L, r, at);
  }
  return zoo_lower_error(L, at, "symbolic sizes (%s) can only be multiplied, or divided with //",
                         zoo_value_format(L, a->kind == ZOO_V_DIM ? a : b));
}

/* A tensor where a compile-time value is needed. */
static zoo_value *control_error(zoo_lowering *L, zoo_span at, const char *what, const char *hint) {
  return zoo_lower_error(L, at, "a tensor cannot %s: tensors have values only when the model "
                         "runs, while control flow happens at compile time%s", what, hint);
}

/* The bool of a condition, or -1 after reporting. */
static int want_bool(zoo_lowering *L, const zoo_value *v, zoo_span at, const char *what) {
  if (v->kind == ZOO_V_BOOL) return (int)v->i;
  if (v->kind == ZOO_V_TENSOR) control_error(L, at, "decide control flow", "");
  else zoo_lower_error(L, at, "%s must be a bool, got %s", what, zoo_value_describe(L, v));
  return -1;
}

static zoo_value *eval_binary(zoo_lowering *L, zoo_env *env, const zoo_ast *n) {
  int op = n->op;
  zoo_value *a = eval(L, env, n->a);
  if (!a) return NULL;
  if (op == ZOO_BIN_AND || op == ZOO_BIN_OR) {
    int x = want_bool(L, a, n->a->span, zoo_binop_spelling(op));
    if (x < 0) return NULL;
    if ((op == ZOO_BIN_AND && !x) || (op == ZOO_BIN_OR && x)) return value_bool(L, x, n->span);
    zoo_value *b = eval(L, env, n->b);
    if (!b) return NULL;
    int y = want_bool(L, b, n->b->span, zoo_binop_spelling(op));
    return y < 0 ? NULL : value_bool(L, y, n->span);
  }
  zoo_value *b = eval(L, env, n->b);
  if (!b) return NULL;
  zoo_span at = n->span;

  if (op == ZOO_BIN_EQ || op == ZOO_BIN_NE) {
    int ok;
    if ((a->kind == ZOO_V_TENSOR && b->kind != ZOO_V_NONE) ||
        (b->kind == ZOO_V_TENSOR && a->kind != ZOO_V_NONE))
      return control_error(L, a->kind == ZOO_V_TENSOR ? n->a->span : n->b->span,
                           "be compared here", "; only '== none' and '!= none' test tensors");
    int eq = values_equal(a, b, &ok);
    if (!ok)
      return zoo_lower_error(L, at, "%s and %s cannot be compared at compile time",
                             zoo_value_describe(L, a), zoo_value_describe(L, b));
    return value_bool(L, op == ZOO_BIN_EQ ? eq : !eq, at);
  }
  if (a->kind == ZOO_V_TENSOR || b->kind == ZOO_V_TENSOR) {
    if (op >= ZOO_BIN_LT && op <= ZOO_BIN_GE)
      return control_error(L, a->kind == ZOO_V_TENSOR ? n->a->span : n->b->span,
                           "be compared here", "; gt(a, b) compares tensors elementwise");
    return tensor_binary(L, op, a, b, at);
  }
  if (a->kind == ZOO_V_DIM || b->kind == ZOO_V_DIM) return dim_binary(L, op, a, b, at);
  if (a->kind == ZOO_V_INT && b->kind == ZOO_V_INT) return int_binary(L, op, a->i, b->i, at);
  if (is_number(a) && is_number(b)) return float_binary(L, op, num(a), num(b), at);
  if (op == ZOO_BIN_ADD && a->kind == ZOO_V_STRING && b->kind == ZOO_V_STRING) {
    zoo_value *v = zoo_value_new(L, ZOO_V_STRING, at);
    v->s = zoo_arena_printf(L->a, "%s%s", a->s, b->s);
    return v;
  }
  if (op == ZOO_BIN_ADD && a->kind == ZOO_V_LIST && b->kind == ZOO_V_LIST) {
    zoo_value *v = zoo_value_new(L, ZOO_V_LIST, at);
    v->nitems = a->nitems + b->nitems;
    if (v->nitems > ZOO_MAX_LIST) return zoo_lower_error(L, at, "list too long");
    v->items = zoo_arena_alloc(L->a, (size_t)(v->nitems ? v->nitems : 1) * sizeof *v->items);
    memcpy(v->items, a->items, (size_t)a->nitems * sizeof *v->items);
    memcpy(v->items + a->nitems, b->items, (size_t)b->nitems * sizeof *v->items);
    return v;
  }
  if ((op >= ZOO_BIN_LT && op <= ZOO_BIN_GE) && a->kind == ZOO_V_STRING && b->kind == ZOO_V_STRING) {
    int c = strcmp(a->s, b->s);
    int r = op == ZOO_BIN_LT ? c < 0 : op == ZOO_BIN_LE ? c <= 0 : op == ZOO_BIN_GT ? c > 0 : c >= 0;
    return value_bool(L, r, at);
  }
  return zoo_lower_error(L, at, "'%s' is not defined between %s and %s", zoo_binop_spelling(op),
                         zoo_value_describe(L, a), zoo_value_describe(L, b));
}

static zoo_value *eval_unary(zoo_lowering *L, zoo_env *env, const zoo_ast *n) {
  zoo_value *x = eval(L, env, n->a);
  if (!x) return NULL;
  if (n->op == '!') {
    int b = want_bool(L, x, n->a->span, "the operand of 'not'");
    return b < 0 ? NULL : value_bool(L, !b, n->span);
  }
  switch (x->kind) {
  case ZOO_V_INT:
    if (x->i == INT64_MIN) return zoo_lower_error(L, n->span, "integer overflow");
    return zoo_value_int(L, -x->i, n->span);
  case ZOO_V_FLOAT: return zoo_value_float(L, -x->f, n->span);
  case ZOO_V_TENSOR: {
    int in[1] = {x->tensor};
    return zoo_lower_node(L, ZOO_OP_NEG, 1, in, NULL, n->span);
  }
  default:
    return zoo_lower_error(L, n->span, "cannot negate %s", zoo_value_describe(L, x));
  }
}

/* ---- types of forward parameters ---- */

/* Checks v against a declared type f32[B, T, d_model]. A name in the type that
 * is not bound yet (B, T) is bound in env to the size v has there, so later
 * dims, the body and the return type can use it. `what` names the value in the
 * message: "argument 'x' of ReBased.forward". Returns 0 or -1. */
static int match_type(zoo_lowering *L, zoo_env *env, const zoo_ast *type, const zoo_value *v,
                      const char *what, zoo_span at) {
  zoo_dtype dtype;
  if (strcmp(type->str, "f32") == 0) dtype = ZOO_F32;
  else if (strcmp(type->str, "i32") == 0) dtype = ZOO_I32;
  else {
    zoo_lower_error(L, type->span, "unknown element type '%s' (f32 or i32)", type->str);
    return -1;
  }
  if (type->nitems > ZOO_MAX_DIMS) {
    zoo_lower_error(L, type->span, "a tensor has at most %d axes", ZOO_MAX_DIMS);
    return -1;
  }
  const zoo_type *t = v->kind == ZOO_V_TENSOR ? &L->g->tensors[v->tensor].type : NULL;
  int ok = t && t->dtype == dtype && t->ndim == type->nitems;
  /* Evaluate the dims in order, binding new names, and build the expected type's text. */
  char *expect = zoo_arena_printf(L->a, "%s[", type->str);
  for (int k = 0; k < type->nitems; k++) {
    const zoo_ast *e = type->items[k];
    char buf[64];
    const char *text;
    if (e->kind == ZOO_AST_NAME && !env_lookup(L, env, e->str, e->span)) {
      if (t && k < t->ndim) {
        env_set(L, env, e->str, value_dim(L, t->dim[k], e->span));
        text = zoo_dim_str(L->g, t->dim[k], buf, sizeof buf);
      } else {
        text = e->str;
      }
    } else {
      zoo_value *dv = eval(L, env, e);
      if (!dv) return -1;
      zoo_dim d;
      if (zoo_value_want_dim(L, dv, e->span, "a dimension of a tensor type", &d)) return -1;
      if (ok && !zoo_dim_eq(d, t->dim[k])) ok = 0;
      text = zoo_dim_str(L->g, d, buf, sizeof buf);
    }
    expect = zoo_arena_printf(L->a, "%s%s%s", expect, k ? ", " : "", text);
  }
  if (!ok) {
    zoo_lower_error(L, at, "%s: expected %s], got %s", what, expect, zoo_value_describe(L, v));
    return -1;
  }
  return 0;
}

/* ---- calls ---- */

static const zoo_ast *find_forward(const zoo_ast *module) {
  for (int i = 0; i < module->nitems; i++)
    if (module->items[i]->kind == ZOO_AST_FORWARD) return module->items[i];
  return NULL;
}

static int push(zoo_lowering *L, const zoo_ast *module, int forward, zoo_span at) {
  if (L->depth == (int)(sizeof L->stack / sizeof L->stack[0])) {
    zoo_lower_error(L, at, "modules nested too deeply");
    return -1;
  }
  L->stack[L->depth].module = module;
  L->stack[L->depth].forward = forward;
  L->stack[L->depth].at = at;
  L->depth++;
  return 0;
}

/* Binds the parameters of a module or forward (PARAM nodes) in env from the
 * arguments, evaluating defaults in env (so they see earlier parameters) and
 * checking declared tensor types. */
static int bind_params(zoo_lowering *L, zoo_env *env, const char *what, zoo_ast **params, int nparams,
                       const zoo_arg *args, int nargs, zoo_span at) {
  const char **names = zoo_arena_alloc(L->a, (size_t)(nparams + 1) * sizeof *names);
  const zoo_arg **slots = zoo_arena_alloc(L->a, (size_t)(nparams + 1) * sizeof *slots);
  for (int i = 0; i < nparams; i++) names[i] = params[i]->str;
  if (zoo_bind_args(L, what, names, nparams, args, nargs, slots)) return -1;
  for (int i = 0; i < nparams; i++) {
    const zoo_ast *p = params[i];
    zoo_value *v = slots[i] ? slots[i]->v : NULL;
    if (!v && p->b) v = eval(L, env, p->b);
    else if (!v) {
      zoo_lower_error(L, at, "missing argument '%s' of %s", p->str, what);
      return -1;
    }
    if (!v) return -1;
    if (p->a) {
      const char *vwhat = zoo_arena_printf(L->a, "argument '%s' of %s", p->str, what);
      if (match_type(L, env, p->a, v, vwhat, slots[i] ? slots[i]->at : at)) return -1;
    }
    env_set(L, env, p->str, v);
  }
  return 0;
}

/* Calls a module definition: binds its parameters, then evaluates its lets and
 * fields in order. A module may not instantiate itself, directly or not. */
static zoo_value *instantiate(zoo_lowering *L, const zoo_ast *m, const zoo_unit *unit,
                              const zoo_arg *args, int nargs, zoo_span at) {
  if (L->tracing)
    return zoo_lower_error(L, at, "module %s is instantiated inside forward; create modules in "
                           "fields (or lets) of a module", m->str);
  for (int i = 0; i < L->depth; i++) {
    if (L->stack[i].module != m || L->stack[i].forward) continue;
    const char *chain = "";
    for (int j = i; j < L->depth; j++)
      if (!L->stack[j].forward)
        chain = zoo_arena_printf(L->a, "%s%s -> ", chain, L->stack[j].module->str);
    return zoo_lower_error(L, at, "module %s instantiates itself (%s%s)", m->str, chain, m->str);
  }
  if (push(L, m, 0, at)) return NULL;

  zoo_instance *inst = zoo_arena_alloc(L->a, sizeof *inst);
  inst->module = m;
  inst->unit = unit;
  inst->env = env_new(L, NULL, unit);
  inst->fields = zoo_arena_alloc(L->a, (size_t)(m->nitems + 1) * sizeof *inst->fields);
  inst->field_values = zoo_arena_alloc(L->a, (size_t)(m->nitems + 1) * sizeof *inst->field_values);
  if (bind_params(L, inst->env, m->str, m->params, m->nparams, args, nargs, at)) return NULL;

  for (int i = 0; i < m->nitems; i++) {
    const zoo_ast *mem = m->items[i];
    if (mem->kind == ZOO_AST_MLET) {
      zoo_value *v = eval(L, inst->env, mem->a);
      if (!v) return NULL;
      env_set(L, inst->env, mem->str, v);
    } else if (mem->kind == ZOO_AST_MEMBER) {
      zoo_value *v;
      int keep = 1;
      if (mem->b) {
        zoo_value *c = eval(L, inst->env, mem->b);
        if (!c || (keep = want_bool(L, c, mem->b->span, "the condition of a field")) < 0) return NULL;
      }
      v = keep ? eval(L, inst->env, mem->a) : zoo_value_new(L, ZOO_V_NONE, mem->span);
      if (!v) return NULL;
      env_set(L, inst->env, mem->str, v);
      inst->fields[inst->nfields] = mem->str;
      inst->field_values[inst->nfields++] = v;
    }
  }
  L->depth--;
  zoo_value *v = zoo_value_new(L, ZOO_V_INSTANCE, at);
  v->inst = inst;
  return v;
}

/* Calls a module instance: traces its forward with the arguments. */
static zoo_value *call_instance(zoo_lowering *L, zoo_instance *inst, const zoo_arg *args, int nargs,
                                zoo_span at) {
  const zoo_ast *m = inst->module;
  if (!L->tracing)
    return zoo_lower_error(L, at, "a %s instance is called outside forward; modules run only "
                           "inside forward", m->str);
  const zoo_ast *fwd = find_forward(m);
  if (!fwd) return zoo_lower_error(L, at, "module %s has no forward, so it cannot be called", m->str);
  const char *what = zoo_arena_printf(L->a, "%s.forward", m->str);
  if (push(L, m, 1, at)) return NULL;

  zoo_env *env = env_new(L, inst->env, inst->unit);
  if (bind_params(L, env, what, fwd->params, fwd->nparams, args, nargs, at)) return NULL;
  zoo_value *ret = NULL;
  int r = exec_block(L, env, fwd->b ? fwd->b->items : NULL, fwd->b ? fwd->b->nitems : 0, &ret);
  if (r == EXEC_ERROR) return NULL;
  if (!ret) ret = zoo_value_new(L, ZOO_V_NONE, fwd->span);
  if (fwd->a) {
    const char *rwhat = zoo_arena_printf(L->a, "the result of %s", what);
    if (match_type(L, env, fwd->a, ret, rwhat, ret->at)) return NULL;
  }
  L->depth--;
  return ret;
}

/* f(args): f a module definition, an instance or a builtin. */
static zoo_value *eval_call(zoo_lowering *L, zoo_env *env, const zoo_ast *n) {
  zoo_value *f;
  if (n->a->kind == ZOO_AST_NAME) {
    f = env_lookup(L, env, n->a->str, n->a->span);
    if (!f) {
      const char *s = suggest(L, env, n->a->str);
      return zoo_lower_error(L, n->a->span, "unknown function '%s'%s%s%s", n->a->str,
                             s ? "; did you mean '" : "", s ? s : "", s ? "'?" : "");
    }
    f = deparam(L, f, n->a->span);
  } else {
    f = eval(L, env, n->a);
  }
  if (!f) return NULL;
  zoo_arg *args = zoo_arena_alloc(L->a, (size_t)(n->nitems + 1) * sizeof *args);
  for (int i = 0; i < n->nitems; i++) {
    const zoo_ast *e = n->items[i];
    if (e->kind == ZOO_AST_KWARG) {
      args[i].name = e->str;
      args[i].v = eval(L, env, e->a);
    } else {
      args[i].v = eval(L, env, e);
    }
    if (!args[i].v) return NULL;
    args[i].at = e->span;
  }
  switch (f->kind) {
  case ZOO_V_MODULE: return instantiate(L, f->module, f->unit, args, n->nitems, n->span);
  case ZOO_V_INSTANCE: return call_instance(L, f->inst, args, n->nitems, n->span);
  case ZOO_V_BUILTIN: return zoo_builtin_call(L, f->builtin, args, n->nitems, n->span);
  default:
    return zoo_lower_error(L, n->a->span, "%s cannot be called", zoo_value_describe(L, f));
  }
}

/* ---- expressions ---- */

static zoo_value *eval_index(zoo_lowering *L, zoo_env *env, const zoo_ast *n) {
  zoo_value *a = eval(L, env, n->a);
  if (!a) return NULL;
  zoo_value *i = eval(L, env, n->b);
  if (!i) return NULL;
  if (a->kind == ZOO_V_TENSOR)
    return zoo_lower_error(L, n->span, "tensors cannot be indexed; use slice(x, axis, start, length)");
  if (a->kind != ZOO_V_LIST)
    return zoo_lower_error(L, n->a->span, "%s cannot be indexed", zoo_value_describe(L, a));
  if (i->kind == ZOO_V_TENSOR) return control_error(L, n->b->span, "be a list index", "");
  int64_t k;
  if (zoo_value_want_int(L, i, n->b->span, "a list index", &k)) return NULL;
  if (k < -a->nitems || k >= a->nitems)
    return zoo_lower_error(L, n->b->span, "index %lld is out of range for a list of %d",
                           (long long)k, a->nitems);
  return deparam(L, a->items[k < 0 ? k + a->nitems : k], n->span);
}

static zoo_value *eval_field(zoo_lowering *L, zoo_env *env, const zoo_ast *n) {
  zoo_value *a = eval(L, env, n->a);
  if (!a) return NULL;
  if (a->kind == ZOO_V_TENSOR && strcmp(n->str, "shape") == 0) {
    const zoo_type *t = &L->g->tensors[a->tensor].type;
    zoo_value *v = zoo_value_new(L, ZOO_V_LIST, n->span);
    v->items = zoo_arena_alloc(L->a, (size_t)(t->ndim + 1) * sizeof *v->items);
    for (int k = 0; k < t->ndim; k++) v->items[k] = value_dim(L, t->dim[k], n->span);
    v->nitems = t->ndim;
    return v;
  }
  if (a->kind != ZOO_V_INSTANCE)
    return zoo_lower_error(L, n->span, "%s has no member '%s'", zoo_value_describe(L, a), n->str);
  zoo_value *v = env_get_frame(a->inst->env, n->str);
  if (!v) {
    const zoo_env *e = a->inst->env;
    const char *s = zoo_resolve_suggest(NULL, n->str, e->names, e->n);
    return zoo_lower_error(L, n->span, "module %s has no member '%s'%s%s%s", a->inst->module->str,
                           n->str, s ? "; did you mean '" : "", s ? s : "", s ? "'?" : "");
  }
  return deparam(L, v, n->span);
}

static zoo_value *eval_node(zoo_lowering *L, zoo_env *env, const zoo_ast *n) {
  zoo_value *v;
  switch (n->kind) {
  case ZOO_AST_INT: return zoo_value_int(L, n->ival, n->span);
  case ZOO_AST_FLOAT: return zoo_value_float(L, n->fval, n->span);
  case ZOO_AST_BOOL: return value_bool(L, (int)n->ival, n->span);
  case ZOO_AST_NONE: return zoo_value_new(L, ZOO_V_NONE, n->span);
  case ZOO_AST_STRING:
    v = zoo_value_new(L, ZOO_V_STRING, n->span);
    v->s = n->str;
    return v;
  case ZOO_AST_NAME:
    v = env_lookup(L, env, n->str, n->span);
    if (!v) {
      const char *s = suggest(L, env, n->str);
      return zoo_lower_error(L, n->span, "unknown name '%s'%s%s%s", n->str,
                             s ? "; did you mean '" : "", s ? s : "", s ? "'?" : "");
    }
    return deparam(L, v, n->span);
  case ZOO_AST_LIST:
    v = zoo_value_new(L, ZOO_V_LIST, n->span);
    v->items = zoo_arena_alloc(L->a, (size_t)(n->nitems + 1) * sizeof *v->items);
    for (int i = 0; i < n->nitems; i++)
      if (!(v->items[v->nitems++] = eval(L, env, n->items[i]))) return NULL;
    return v;
  case ZOO_AST_UNARY: return eval_unary(L, env, n);
  case ZOO_AST_BINARY: return eval_binary(L, env, n);
  case ZOO_AST_COND: {
    zoo_value *c = eval(L, env, n->b);
    if (!c) return NULL;
    int b = want_bool(L, c, n->b->span, "the condition of 'if'");
    if (b < 0) return NULL;
    return eval(L, env, b ? n->a : n->c);
  }
  case ZOO_AST_CALL: return eval_call(L, env, n);
  case ZOO_AST_INDEX: return eval_index(L, env, n);
  case ZOO_AST_FIELD: return eval_field(L, env, n);
  case ZOO_AST_TYPE:
    return zoo_lower_error(L, n->span, "a tensor type is not a value; types go on forward parameters");
  default:
    return zoo_lower_error(L, n->span, "this is not an expression");
  }
}

/* Evaluates an expression, within bounds on time and depth. */
static zoo_value *eval(zoo_lowering *L, zoo_env *env, const zoo_ast *n) {
  if (++L->steps > ZOO_MAX_STEPS)
    return zoo_lower_error(L, n->span, "compile-time evaluation takes too long (a huge loop?)");
  if (L->nesting >= ZOO_MAX_NESTING)
    return zoo_lower_error(L, n->span, "expression nested too deeply");
  L->nesting++;
  zoo_value *v = eval_node(L, env, n);
  L->nesting--;
  return v;
}

/* ---- statements (forward bodies) ---- */

/* Runs statements in order. A forward body is one scope: a `let` binds or
 * rebinds its name for the rest of the body, also from inside if and for
 * blocks, which is how a loop carries values. */
static int exec_block(zoo_lowering *L, zoo_env *env, zoo_ast **items, int nitems, zoo_value **ret) {
  for (int i = 0; i < nitems; i++) {
    const zoo_ast *s = items[i];
    switch (s->kind) {
    case ZOO_AST_LET: {
      zoo_value *v = eval(L, env, s->a);
      if (!v) return EXEC_ERROR;
      env_set(L, env, s->str, v);
      break;
    }
    case ZOO_AST_RETURN:
      *ret = s->a ? eval(L, env, s->a) : zoo_value_new(L, ZOO_V_NONE, s->span);
      return *ret ? EXEC_RETURN : EXEC_ERROR;
    case ZOO_AST_FOR: {
      zoo_value *seq = eval(L, env, s->a);
      if (!seq) return EXEC_ERROR;
      if (seq->kind == ZOO_V_TENSOR) {
        control_error(L, s->a->span, "be iterated", "");
        return EXEC_ERROR;
      }
      if (seq->kind != ZOO_V_LIST) {
        zoo_lower_error(L, s->a->span, "for needs a list (or range(n)), got %s",
                        zoo_value_describe(L, seq));
        return EXEC_ERROR;
      }
      for (int k = 0; k < seq->nitems; k++) {
        zoo_value *item = deparam(L, seq->items[k], s->a->span);
        if (!item) return EXEC_ERROR;
        env_set(L, env, s->str, item);
        int r = exec_block(L, env, s->items, s->nitems, ret);
        if (r != EXEC_NEXT) return r;
      }
      break;
    }
    case ZOO_AST_IF: {
      zoo_value *c = eval(L, env, s->a);
      if (!c) return EXEC_ERROR;
      int b = want_bool(L, c, s->a->span, "the condition of 'if'");
      if (b < 0) return EXEC_ERROR;
      int r = EXEC_NEXT;
      if (b) r = exec_block(L, env, s->items, s->nitems, ret);
      else if (s->b) r = exec_block(L, env, s->b->items, s->b->nitems, ret);
      if (r != EXEC_NEXT) return r;
      break;
    }
    case ZOO_AST_BLOCK: {
      int r = exec_block(L, env, s->items, s->nitems, ret);
      if (r != EXEC_NEXT) return r;
      break;
    }
    default:
      zoo_lower_error(L, s->span, "this is not a statement");
      return EXEC_ERROR;
    }
  }
  return EXEC_NEXT;
}

/* ---- parameter naming ---- */

static void add_alias(zoo_lowering *L, const char *name, int tensor) {
  zoo_program *p = L->p;
  zoo_alias *grown = zoo_arena_alloc(L->a, (size_t)(p->naliases + 1) * sizeof *grown);
  if (p->naliases) memcpy(grown, p->aliases, (size_t)p->naliases * sizeof *grown);
  grown[p->naliases].name = zoo_arena_strdup(L->a, name);
  grown[p->naliases].tensor = tensor;
  p->aliases = grown;
  p->naliases++;
}

/* Walks fields from v in declaration order, giving each parameter met for the
 * first time its tensor named by the path, and recording later meetings as
 * aliases. */
static void name_params(zoo_lowering *L, const zoo_value *v, const char *path) {
  switch (v->kind) {
  case ZOO_V_INSTANCE:
    for (int i = 0; i < v->inst->nfields; i++) {
      const char *sub = path[0] ? zoo_arena_printf(L->a, "%s.%s", path, v->inst->fields[i])
                                : v->inst->fields[i];
      name_params(L, v->inst->field_values[i], sub);
    }
    break;
  case ZOO_V_LIST:
    for (int i = 0; i < v->nitems; i++)
      name_params(L, v->items[i], zoo_arena_printf(L->a, "%s.%d", path, i));
    break;
  case ZOO_V_PARAM:
    if (v->param->tensor < 0) v->param->tensor = zoo_graph_param(L->g, path, v->param->type, v->param->init);
    else add_alias(L, path, v->param->tensor);
    break;
  default:
    break;
  }
}

/* ---- literals (-D values, builtin defaults) ---- */

typedef struct lit {
  zoo_lowering *L;
  const char *s;
  zoo_span at;
} lit;

static void lit_space(lit *p) {
  while (*p->s == ' ' || *p->s == '\t') p->s++;
}

static zoo_value *lit_value(lit *p, int depth) {
  lit_space(p);
  const char *s = p->s;
  zoo_lowering *L = p->L;
  if (depth > 32) return NULL;
  if (*s == '[') {
    p->s++;
    zoo_value *v = zoo_value_new(L, ZOO_V_LIST, p->at);
    int cap = 0;
    lit_space(p);
    while (*p->s != ']') {
      zoo_value *item = lit_value(p, depth + 1);
      if (!item) return NULL;
      if (v->nitems == cap) {
        cap = cap ? cap * 2 : 8;
        zoo_value **grown = zoo_arena_alloc(L->a, (size_t)cap * sizeof *grown);
        if (v->nitems) memcpy(grown, v->items, (size_t)v->nitems * sizeof *grown);
        v->items = grown;
      }
      v->items[v->nitems++] = item;
      lit_space(p);
      if (*p->s == ',') p->s++;
      else if (*p->s != ']') return NULL;
      lit_space(p);
    }
    p->s++;
    return v;
  }
  if (*s == '"') {
    const char *e = ++s;
    while (*e && *e != '"') e++;
    if (!*e) return NULL;
    zoo_value *v = zoo_value_new(L, ZOO_V_STRING, p->at);
    v->s = zoo_arena_strndup(L->a, s, (size_t)(e - s));
    p->s = e + 1;
    return v;
  }
  static const char *const words[] = {"true", "false", "none"};
  for (int i = 0; i < 3; i++) {
    size_t n = strlen(words[i]);
    if (strncmp(s, words[i], n) == 0 && !(s[n] == '_' || (s[n] >= 'a' && s[n] <= 'z'))) {
      p->s += n;
      return i == 2 ? zoo_value_new(L, ZOO_V_NONE, p->at) : value_bool(L, i == 0, p->at);
    }
  }
  char *end;
  const char *digits = s + (*s == '-' || *s == '+');
  if (!(*digits >= '0' && *digits <= '9') && *digits != '.') return NULL;
  size_t span = strspn(s, "+-0123456789");
  if (s[span] != '.' && s[span] != 'e' && s[span] != 'E') {
    errno = 0;
    long long i = strtoll(s, &end, 10);
    if (end == s || errno) return NULL;
    p->s = end;
    return zoo_value_int(L, i, p->at);
  }
  double f = strtod(s, &end);
  if (end == s) return NULL;
  p->s = end;
  return zoo_value_float(L, f, p->at);
}

zoo_value *zoo_literal_parse(zoo_lowering *L, const char *text, zoo_span at) {
  lit p = {L, text, at};
  zoo_value *v = lit_value(&p, 0);
  lit_space(&p);
  return v && *p.s == 0 ? v : NULL;
}

/* ---- the model ---- */

static const zoo_ast *find_model(zoo_lowering *L, const zoo_unit *main, const char *name) {
  const zoo_ast *found = NULL;
  const char *names = "";
  for (int i = 0; i < main->file->nitems; i++) {
    const zoo_ast *n = main->file->items[i];
    if (n->kind != ZOO_AST_MODEL) continue;
    names = zoo_arena_printf(L->a, "%s%s%s", names, names[0] ? ", " : "", n->str);
    if (!name || strcmp(n->str, name) == 0) found = n;
  }
  if (found) return found;
  zoo_span at = {main->src, 1, 1, 1, 1};
  if (name) zoo_error(L->d, at, "no model '%s' in this file (models: %s)", name, names[0] ? names : "none");
  else zoo_error(L->d, at, "no model declaration in this file; write `model NAME(...) = Module(...)`");
  return NULL;
}

/* Binds the model's parameters from -D values and defaults. */
static zoo_env *bind_model(zoo_lowering *L, const zoo_ast *model, const zoo_unit *main,
                           const zoo_compile_opts *o) {
  zoo_env *env = env_new(L, NULL, main);
  int bad = 0;
  /* Each define's name and value spans: where a config wrote them, else in a
   * "<command line>" source made of "-D name=value", so errors can point at them. */
  zoo_span *dspan = zoo_arena_alloc(L->a, (size_t)(o->ndefines + 1) * sizeof *dspan);
  zoo_span *vspan = zoo_arena_alloc(L->a, (size_t)(o->ndefines + 1) * sizeof *vspan);
  for (int i = 0; i < o->ndefines; i++) {
    if (o->define_at && o->define_at[i].name.src) {
      dspan[i] = o->define_at[i].name;
      vspan[i] = o->define_at[i].value.src ? o->define_at[i].value : dspan[i];
    } else {
      const char *text =
          zoo_arena_printf(L->a, "-D %s=%s", o->defines[i].name, o->defines[i].value);
      zoo_source *src = zoo_source_from_string("<command line>", text);
      zoo_program *p = L->p;
      zoo_source **grown = realloc(p->sources, (size_t)(p->nsources + 1) * sizeof *grown);
      if (!grown) abort();
      p->sources = grown;
      p->sources[p->nsources++] = src;
      int name_len = (int)strlen(o->defines[i].name);
      dspan[i] = (zoo_span){src, 1, 4, 1, 4 + name_len};
      vspan[i] = (zoo_span){src, 1, 5 + name_len, 1,
                            5 + name_len + (int)strlen(o->defines[i].value)};
    }
    int known = 0;
    for (int k = 0; k < model->nparams; k++)
      if (strcmp(model->params[k]->str, o->defines[i].name) == 0) known = 1;
    if (!known) {
      const char **names = zoo_arena_alloc(L->a, (size_t)(model->nparams + 1) * sizeof *names);
      for (int k = 0; k < model->nparams; k++) names[k] = model->params[k]->str;
      const char *s = zoo_resolve_suggest(NULL, o->defines[i].name, names, model->nparams);
      zoo_error(L->d, dspan[i], "model %s has no parameter '%s'%s%s%s", model->str,
                o->defines[i].name, s ? "; did you mean '" : "", s ? s : "", s ? "'?" : "");
      bad = 1;
    }
  }
  if (bad) return NULL;
  L->p->bindings = zoo_arena_alloc(L->a, (size_t)(model->nparams + 1) * sizeof *L->p->bindings);
  for (int k = 0; k < model->nparams; k++) {
    const zoo_ast *prm = model->params[k];
    zoo_value *v = NULL;
    for (int i = o->ndefines - 1; i >= 0 && !v; i--) {
      if (strcmp(o->defines[i].name, prm->str) != 0) continue;
      zoo_span at = vspan[i];
      v = zoo_literal_parse(L, o->defines[i].value, at);
      if (!v) {
        zoo_error(L->d, at, "'%s' is not a .zoo value (a number, true, false, none, \"string\" "
                  "or [list])", o->defines[i].value);
        return NULL;
      }
    }
    if (!v && prm->b) v = eval(L, env, prm->b);
    else if (!v) {
      zoo_error(L->d, prm->span, "model parameter '%s' has no default; give it with -D %s=...",
                prm->str, prm->str);
      return NULL;
    }
    if (!v) return NULL;
    env_set(L, env, prm->str, v);
    L->p->bindings[k].name = prm->str;
    L->p->bindings[k].value = zoo_value_format(L, v);
  }
  L->p->nbindings = model->nparams;
  return env;
}

int zoo_lower(zoo_program *p, const zoo_unit *main, const zoo_compile_opts *o, zoo_diag *d) {
  zoo_lowering lower;
  memset(&lower, 0, sizeof lower);
  zoo_lowering *L = &lower;
  L->p = p;
  L->g = &p->graph;
  L->d = d;
  L->a = &p->arena;
  int errors = d->nerrors;

  const zoo_ast *model = find_model(L, main, o->model);
  if (!model) return -1;
  p->model_name = model->str;
  zoo_env *env = bind_model(L, model, main, o);
  if (!env) return -1;

  /* Instantiation */
  zoo_value *root = eval(L, env, model->a);
  if (!root) return -1;
  if (root->kind != ZOO_V_INSTANCE) {
    zoo_error(d, model->a->span, "a model must be a module instance, like LanguageModel(...); "
              "got %s", zoo_value_describe(L, root));
    return -1;
  }

  /* Naming */
  name_params(L, root, "");

  /* Tracing */
  L->tracing = 1;
  int B = zoo_graph_symbol(L->g, "B"), T = zoo_graph_symbol(L->g, "T");
  zoo_type tt = {.dtype = ZOO_I32, .ndim = 2};
  tt.dim[0] = (zoo_dim){1, 1u << B};
  tt.dim[1] = (zoo_dim){1, 1u << T};
  int tokens = zoo_graph_input(L->g, "tokens", tt);
  zoo_arg arg = {NULL, zoo_value_tensor(L, tokens, model->a->span), model->a->span};
  zoo_value *out = call_instance(L, root->inst, &arg, 1, model->a->span);
  if (!out) return -1;
  const zoo_type *ot = out->kind == ZOO_V_TENSOR ? &L->g->tensors[out->tensor].type : NULL;
  if (!ot || ot->dtype != ZOO_F32 || ot->ndim != 3 || !zoo_dim_eq(ot->dim[0], tt.dim[0]) ||
      !zoo_dim_eq(ot->dim[1], tt.dim[1]) || ot->dim[2].sym != 0) {
    zoo_error(d, model->a->span, "a model's forward must return the logits f32[B, T, vocab]; "
              "%s.forward returns %s", root->inst->module->str, zoo_value_describe(L, out));
    return -1;
  }
  /* The runtime feeds tokens below the config's vocab_size: the logits must cover them. */
  const zoo_value *vocab = env_get_frame(env, "vocab_size");
  if (vocab && vocab->kind == ZOO_V_INT && vocab->i != ot->dim[2].coef) {
    zoo_error(d, model->a->span, "the logits %s have %lld classes, but the model's vocab_size is %lld",
              zoo_value_describe(L, out), (long long)ot->dim[2].coef, (long long)vocab->i);
    return -1;
  }
  L->g->output = out->tensor;
  return d->nerrors > errors ? -1 : 0;
}
