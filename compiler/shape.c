/* shape.c: shape rules, one per row of ops.def.
 *
 * zoo_shape_infer checks a node's inputs and attributes and fills the types of
 * its outputs. A mismatch is the user's mistake (or a lowering bug), so it is
 * returned as a message that names the shapes involved, e.g.
 *
 *     linear: input has 48 features but the weight expects 64 (x: f32[B, T, 48], w: f32[128, 64])
 *
 * and zoo_graph_node reports it at the node's .zoo span. Dimensions are symbolic
 * (coef * symbols), so every comparison goes through zoo_dim_eq.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "graph.h"

/* What every rule sees: the node, its input types, where to write. */
typedef struct shape_ctx {
  const zoo_graph *g;
  const zoo_node *n;
  const char *op;                /* the op's name, for messages */
  const zoo_type *in[ZOO_MAX_IN]; /* input types */
  zoo_type *out;
  char *err;
  size_t errlen;
  char bufs[8][96]; /* rotating buffers for type strings in messages */
  int nbuf;
} shape_ctx;

/* A type as text ("f32[B, T, 64]") in one of the context's buffers. */
static const char *ts(shape_ctx *s, const zoo_type *t) {
  char *b = s->bufs[s->nbuf++ % 8];
  return zoo_type_str(s->g, t, b, sizeof s->bufs[0]);
}

/* A dimension as text. */
static const char *ds(shape_ctx *s, zoo_dim d) {
  char *b = s->bufs[s->nbuf++ % 8];
  return zoo_dim_str(s->g, d, b, sizeof s->bufs[0]);
}

/* Writes "op: message" into err and returns -1. */
__attribute__((format(printf, 2, 3))) static int fail(shape_ctx *s, const char *fmt, ...) {
  int k = snprintf(s->err, s->errlen, "%s: ", s->op);
  if (k < 0 || (size_t)k >= s->errlen) return -1;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(s->err + k, s->errlen - (size_t)k, fmt, ap);
  va_end(ap);
  return -1;
}

static int is_one(zoo_dim d) { return d.sym == 0 && d.coef == 1; }
static int is_const(zoo_dim d) { return d.sym == 0; }

/* Input i must be f32 (what = its role in messages). */
static int want_f32(shape_ctx *s, int i, const char *what) {
  if (s->in[i]->dtype != ZOO_F32)
    return fail(s, "%s must be f32, got %s", what, ts(s, s->in[i]));
  return 0;
}

static int want_i32(shape_ctx *s, int i, const char *what) {
  if (s->in[i]->dtype != ZOO_I32)
    return fail(s, "%s must be i32, got %s", what, ts(s, s->in[i]));
  return 0;
}

/* Input i must have at least min axes. */
static int want_rank(shape_ctx *s, int i, int min, const char *what) {
  if (s->in[i]->ndim < min)
    return fail(s, "%s needs at least %d axes, got %s", what, min, ts(s, s->in[i]));
  return 0;
}

/* Normalises a possibly negative axis against ndim; -1 after an error. */
static int axis_of(shape_ctx *s, int64_t axis, int ndim, const zoo_type *t) {
  int64_t a = axis < 0 ? axis + ndim : axis;
  if (a < 0 || a >= ndim)
    return fail(s, "axis %lld is out of range for %s", (long long)axis, ts(s, t));
  return (int)a;
}

/* The dims of a, except the last k, equal b's (all of b's)? */
static int leading_eq(const zoo_type *a, int k, const zoo_type *b) {
  if (a->ndim - k != b->ndim) return 0;
  for (int i = 0; i < b->ndim; i++)
    if (!zoo_dim_eq(a->dim[i], b->dim[i])) return 0;
  return 1;
}

/* The broadcast of the input types (numpy rules: aligned at the last axis, a
 * missing or size-1 axis stretches). */
static int broadcast(shape_ctx *s, int nin, zoo_type *out) {
  int nd = 0;
  for (int i = 0; i < nin; i++)
    if (s->in[i]->ndim > nd) nd = s->in[i]->ndim;
  out->dtype = ZOO_F32;
  out->ndim = nd;
  for (int k = 0; k < nd; k++) {
    zoo_dim d = zoo_dim_const(1);
    for (int i = 0; i < nin; i++) {
      const zoo_type *t = s->in[i];
      int j = t->ndim - nd + k;
      if (j < 0 || is_one(t->dim[j])) continue;
      if (is_one(d)) d = t->dim[j];
      else if (!zoo_dim_eq(d, t->dim[j])) {
        if (nin == 2)
          return fail(s, "shapes %s and %s do not broadcast", ts(s, s->in[0]), ts(s, s->in[1]));
        return fail(s, "shapes %s, %s and %s do not broadcast", ts(s, s->in[0]),
                    ts(s, s->in[1]), ts(s, s->in[2]));
      }
    }
    out->dim[k] = d;
  }
  return 0;
}

/* Binary elementwise ops: f32 operands, broadcast. */
static int binary(shape_ctx *s) {
  if (want_f32(s, 0, "the left operand") || want_f32(s, 1, "the right operand")) return -1;
  return broadcast(s, 2, &s->out[0]);
}

/* Unary elementwise ops: f32 in, same type out. */
static int unary(shape_ctx *s) {
  if (want_f32(s, 0, "the operand")) return -1;
  s->out[0] = *s->in[0];
  return 0;
}

static int zoo_shape_add(shape_ctx *s) { return binary(s); }
static int zoo_shape_sub(shape_ctx *s) { return binary(s); }
static int zoo_shape_mul(shape_ctx *s) { return binary(s); }
static int zoo_shape_div(shape_ctx *s) { return binary(s); }
static int zoo_shape_gt(shape_ctx *s) { return binary(s); }

static int zoo_shape_where(shape_ctx *s) {
  if (want_f32(s, 0, "the condition") || want_f32(s, 1, "the first value") ||
      want_f32(s, 2, "the second value"))
    return -1;
  return broadcast(s, 3, &s->out[0]);
}

static int zoo_shape_neg(shape_ctx *s) { return unary(s); }
static int zoo_shape_exp(shape_ctx *s) { return unary(s); }
static int zoo_shape_log(shape_ctx *s) { return unary(s); }
static int zoo_shape_sqrt(shape_ctx *s) { return unary(s); }
static int zoo_shape_rsqrt(shape_ctx *s) { return unary(s); }
static int zoo_shape_square(shape_ctx *s) { return unary(s); }
static int zoo_shape_sigmoid(shape_ctx *s) { return unary(s); }
static int zoo_shape_silu(shape_ctx *s) { return unary(s); }
static int zoo_shape_softplus(shape_ctx *s) { return unary(s); }
static int zoo_shape_relu(shape_ctx *s) { return unary(s); }
static int zoo_shape_gelu(shape_ctx *s) { return unary(s); }
static int zoo_shape_tanh(shape_ctx *s) { return unary(s); }
static int zoo_shape_sin(shape_ctx *s) { return unary(s); }
static int zoo_shape_cos(shape_ctx *s) { return unary(s); }
static int zoo_shape_adds(shape_ctx *s) { return unary(s); }
static int zoo_shape_muls(shape_ctx *s) { return unary(s); }
static int zoo_shape_pows(shape_ctx *s) { return unary(s); }

/* gelu_bwd (dy, x): both of x's type. */
static int zoo_shape_gelu_bwd(shape_ctx *s) {
  if (want_f32(s, 0, "dy") || want_f32(s, 1, "x")) return -1;
  if (!zoo_type_eq(s->in[0], s->in[1]))
    return fail(s, "dy %s and x %s differ", ts(s, s->in[0]), ts(s, s->in[1]));
  s->out[0] = *s->in[1];
  return 0;
}

static int zoo_shape_dropout(shape_ctx *s) {
  double p = s->n->attrs.f[0];
  if (!(p >= 0 && p < 1)) return fail(s, "probability %g is not in [0, 1)", p);
  return unary(s);
}

/* sum, mean (x; axis, keepdim) */
static int reduce_axis(shape_ctx *s) {
  if (want_f32(s, 0, "the operand") || want_rank(s, 0, 1, "the operand")) return -1;
  const zoo_type *x = s->in[0];
  int a = axis_of(s, s->n->attrs.i[0], x->ndim, x);
  if (a < 0) return -1;
  zoo_type *o = &s->out[0];
  *o = *x;
  if (s->n->attrs.i[1]) {
    o->dim[a] = zoo_dim_const(1);
  } else {
    for (int k = a; k + 1 < x->ndim; k++) o->dim[k] = x->dim[k + 1];
    o->ndim--;
  }
  return 0;
}

static int zoo_shape_sum(shape_ctx *s) { return reduce_axis(s); }
static int zoo_shape_mean(shape_ctx *s) { return reduce_axis(s); }

/* reduce_to (x; dims = target): target must broadcast to x. */
static int zoo_shape_reduce_to(shape_ctx *s) {
  if (want_f32(s, 0, "the operand")) return -1;
  const zoo_type *x = s->in[0];
  zoo_type target = {.dtype = ZOO_F32, .ndim = s->n->attrs.ndim};
  for (int k = 0; k < target.ndim; k++) target.dim[k] = s->n->attrs.dims[k];
  int ok = target.ndim <= x->ndim;
  for (int k = 0; ok && k < target.ndim; k++) {
    zoo_dim t = target.dim[k], d = x->dim[x->ndim - target.ndim + k];
    if (!is_one(t) && !zoo_dim_eq(t, d)) ok = 0;
  }
  if (!ok) return fail(s, "%s does not broadcast to %s", ts(s, &target), ts(s, x));
  s->out[0] = target;
  return 0;
}

/* A per-channel vector (weight, bias) must be f32[C]. */
static int want_channels(shape_ctx *s, int i, const char *what, zoo_dim c) {
  const zoo_type *w = s->in[i];
  if (w->dtype != ZOO_F32 || w->ndim != 1 || !zoo_dim_eq(w->dim[0], c))
    return fail(s, "%s must be f32[%s] for input %s, got %s", what, ds(s, c), ts(s, s->in[0]),
                ts(s, w));
  return 0;
}

/* layernorm (x, [w, b]) */
/* split_heads(x, h)'s type: x[..., T, h*d] -> [..., h, T, d]. */
static int split_type(shape_ctx *s, const zoo_type *x, int64_t h, zoo_type *o) {
  if (h < 1) return fail(s, "number of heads %lld must be positive", (long long)h);
  if (x->ndim < 2) return fail(s, "%s has fewer than 2 axes to split into heads", ts(s, x));
  if (x->ndim + 1 > ZOO_MAX_DIMS) return fail(s, "%s has too many axes", ts(s, x));
  zoo_dim width = x->dim[x->ndim - 1], d;
  if (!zoo_dim_div(width, zoo_dim_const(h), &d))
    return fail(s, "width %s of %s is not divisible by %lld heads", ds(s, width), ts(s, x), (long long)h);
  *o = *x;
  o->ndim = x->ndim + 1;
  o->dim[x->ndim - 2] = zoo_dim_const(h);
  o->dim[x->ndim - 1] = x->dim[x->ndim - 2];
  o->dim[x->ndim] = d;
  return 0;
}

static int zoo_shape_layernorm(shape_ctx *s) {
  if (want_f32(s, 0, "the input") || want_rank(s, 0, 1, "the input")) return -1;
  zoo_dim c = s->in[0]->dim[s->in[0]->ndim - 1];
  if (s->n->nin > 1 && want_channels(s, 1, "the weight", c)) return -1;
  if (s->n->nin > 2 && want_channels(s, 2, "the bias", c)) return -1;
  s->out[0] = *s->in[0];
  if (s->n->attrs.i[0] != 0) return split_type(s, s->in[0], s->n->attrs.i[0], &s->out[0]);
  return 0;
}

/* dy and x of a *_bwd op must have the same f32 type. */
static int want_dy_like_x(shape_ctx *s, int dy, int x) {
  if (want_f32(s, dy, "dy") || want_f32(s, x, "x") || want_rank(s, x, 1, "x")) return -1;
  if (!zoo_type_eq(s->in[dy], s->in[x]))
    return fail(s, "dy %s and x %s differ", ts(s, s->in[dy]), ts(s, s->in[x]));
  return 0;
}

static zoo_type vec_type(zoo_dim c) {
  zoo_type t = {.dtype = ZOO_F32, .ndim = 1};
  t.dim[0] = c;
  return t;
}

/* linear_layernorm (x[..., K], w[N, K], [g[N], [b[N]]]) -> p[..., N], y: p's
 * type, or split into i0 heads */
static int zoo_shape_linear_layernorm(shape_ctx *s) {
  if (want_f32(s, 0, "x") || want_rank(s, 0, 1, "x") || want_f32(s, 1, "w")) return -1;
  const zoo_type *x = s->in[0], *w = s->in[1];
  if (w->ndim != 2 || !zoo_dim_eq(w->dim[1], x->dim[x->ndim - 1]))
    return fail(s, "w %s must be [N, %s] for x %s", ts(s, w), ds(s, x->dim[x->ndim - 1]), ts(s, x));
  zoo_dim n = w->dim[0];
  if (s->n->nin > 2 && want_channels(s, 2, "the weight", n)) return -1;
  if (s->n->nin > 3 && want_channels(s, 3, "the bias", n)) return -1;
  s->out[0] = *x;
  s->out[0].dim[x->ndim - 1] = n;
  s->out[1] = s->out[0];
  if (s->n->attrs.i[0] != 0) return split_type(s, &s->out[0], s->n->attrs.i[0], &s->out[1]);
  return 0;
}

/* layernorm_bwd (dy, x, [w]) -> dx, dw[C], db[C] */
static int zoo_shape_layernorm_bwd(shape_ctx *s) {
  if (s->n->attrs.i[0] != 0) { /* dy in split_heads(y, H)'s layout */
    zoo_type want;
    if (want_f32(s, 0, "dy") || want_f32(s, 1, "x") || split_type(s, s->in[1], s->n->attrs.i[0], &want)) return -1;
    if (!zoo_type_eq(s->in[0], &want))
      return fail(s, "dy %s must be x %s split into heads, %s", ts(s, s->in[0]), ts(s, s->in[1]), ts(s, &want));
  } else if (want_dy_like_x(s, 0, 1)) {
    return -1;
  }
  zoo_dim c = s->in[1]->dim[s->in[1]->ndim - 1];
  if (s->n->nin > 2 && want_channels(s, 2, "the weight", c)) return -1;
  s->out[0] = *s->in[1];
  s->out[1] = vec_type(c);
  s->out[2] = vec_type(c);
  return 0;
}

/* rmsnorm (x, w) */
static int zoo_shape_rmsnorm(shape_ctx *s) {
  if (want_f32(s, 0, "the input") || want_rank(s, 0, 1, "the input")) return -1;
  zoo_dim c = s->in[0]->dim[s->in[0]->ndim - 1];
  if (want_channels(s, 1, "the weight", c)) return -1;
  s->out[0] = *s->in[0];
  return 0;
}

/* rmsnorm_bwd (dy, x, w) -> dx, dw */
static int zoo_shape_rmsnorm_bwd(shape_ctx *s) {
  if (want_dy_like_x(s, 0, 1)) return -1;
  zoo_dim c = s->in[1]->dim[s->in[1]->ndim - 1];
  if (want_channels(s, 2, "the weight", c)) return -1;
  s->out[0] = *s->in[1];
  s->out[1] = vec_type(c);
  return 0;
}

static int zoo_shape_softmax(shape_ctx *s) {
  if (want_f32(s, 0, "the operand") || want_rank(s, 0, 1, "the operand")) return -1;
  s->out[0] = *s->in[0];
  return 0;
}

/* Drops the last axis. */
static int zoo_shape_logsumexp(shape_ctx *s) {
  if (want_f32(s, 0, "the operand") || want_rank(s, 0, 1, "the operand")) return -1;
  s->out[0] = *s->in[0];
  s->out[0].ndim--;
  return 0;
}

/* logits[..., V] (input li) and targets i32[...] (input ti) */
static int want_logits_targets(shape_ctx *s, int li, int ti) {
  if (want_f32(s, li, "the logits") || want_rank(s, li, 1, "the logits") ||
      want_i32(s, ti, "the targets"))
    return -1;
  if (!leading_eq(s->in[li], 1, s->in[ti]))
    return fail(s, "targets %s do not match the logits %s (expected the logits' leading axes)",
                ts(s, s->in[ti]), ts(s, s->in[li]));
  return 0;
}

static zoo_type scalar_f32(void) { return (zoo_type){.dtype = ZOO_F32, .ndim = 0}; }

/* want input i to be an f32 scalar */
static int want_scalar(shape_ctx *s, int i, const char *what) {
  if (s->in[i]->dtype != ZOO_F32 || s->in[i]->ndim != 0)
    return fail(s, "%s must be an f32 scalar (f32[]), got %s", what, ts(s, s->in[i]));
  return 0;
}

static int zoo_shape_cross_entropy(shape_ctx *s) {
  if (want_logits_targets(s, 0, 1)) return -1;
  s->out[0] = scalar_f32();
  return 0;
}

/* cross_entropy_bwd (dloss[], logits, targets) -> dlogits */
static int zoo_shape_cross_entropy_bwd(shape_ctx *s) {
  if (want_scalar(s, 0, "dloss") || want_logits_targets(s, 1, 2)) return -1;
  s->out[0] = *s->in[1];
  return 0;
}

static int zoo_shape_argmax(shape_ctx *s) {
  if (want_f32(s, 0, "the operand") || want_rank(s, 0, 1, "the operand")) return -1;
  s->out[0] = *s->in[0];
  s->out[0].ndim--;
  s->out[0].dtype = ZOO_I32;
  return 0;
}

static int want_lce(shape_ctx *s, int hi);

/* accuracy (logits, targets) or (h, w, targets) -> f32[2] (correct, labelled) */
static int zoo_shape_accuracy(shape_ctx *s) {
  if (s->n->nin == 3 ? want_lce(s, 0) : want_logits_targets(s, 0, 1)) return -1;
  s->out[0] = vec_type(zoo_dim_const(2));
  return 0;
}

/* cross_entropy_step (logits, targets, dloss[]) -> loss[], metrics[2], dlogits */
static int zoo_shape_cross_entropy_step(shape_ctx *s) {
  if (want_logits_targets(s, 0, 1) || want_scalar(s, 2, "dloss")) return -1;
  s->out[0] = scalar_f32();
  s->out[1] = vec_type(zoo_dim_const(2));
  s->out[2] = *s->in[0];
  return 0;
}

/* The product of a type's dims (a monomial) into *out; -1 after an error when
 * its coefficient overflows. */
static int numel_dim(shape_ctx *s, const zoo_type *t, zoo_dim *out) {
  zoo_dim p = zoo_dim_const(1);
  for (int k = 0; k < t->ndim; k++)
    if (!zoo_dim_mul_checked(p, t->dim[k], &p))
      return fail(s, "%s has more elements than an int64 can count", ts(s, t));
  *out = p;
  return 0;
}

/* reshape (x; dims): any dtype, same element count. */
static int zoo_shape_reshape(shape_ctx *s) {
  const zoo_type *x = s->in[0];
  zoo_type o = {.dtype = x->dtype, .ndim = s->n->attrs.ndim};
  if (o.ndim < 0 || o.ndim > ZOO_MAX_DIMS) return fail(s, "bad target rank %d", o.ndim);
  for (int k = 0; k < o.ndim; k++) o.dim[k] = s->n->attrs.dims[k];
  zoo_dim nx, no;
  if (numel_dim(s, x, &nx) || numel_dim(s, &o, &no)) return -1;
  if (!zoo_dim_eq(nx, no))
    return fail(s, "cannot reshape %s to %s (element counts differ)", ts(s, x), ts(s, &o));
  s->out[0] = o;
  return 0;
}

/* permute (x; dims[k].coef = source axis of output axis k) */
static int zoo_shape_permute(shape_ctx *s) {
  const zoo_type *x = s->in[0];
  const zoo_attrs *a = &s->n->attrs;
  if (a->ndim != x->ndim)
    return fail(s, "%d axes given for %s, which has %d", a->ndim, ts(s, x), x->ndim);
  int seen[ZOO_MAX_DIMS] = {0};
  zoo_type o = *x;
  for (int k = 0; k < a->ndim; k++) {
    int64_t src = a->dims[k].coef;
    if (a->dims[k].sym || src < 0 || src >= x->ndim || seen[src])
      return fail(s, "axes are not a permutation of 0..%d", x->ndim - 1);
    seen[src] = 1;
    o.dim[k] = x->dim[src];
  }
  s->out[0] = o;
  return 0;
}

/* split_heads (x[..., T, H*d]; i0 = H) -> [..., H, T, d] */
static int zoo_shape_split_heads(shape_ctx *s) {
  if (want_rank(s, 0, 2, "the input")) return -1;
  return split_type(s, s->in[0], s->n->attrs.i[0], &s->out[0]);
}

/* merge_heads (x[..., H, T, d]) -> [..., T, H*d] */
static int zoo_shape_merge_heads(shape_ctx *s) {
  if (want_rank(s, 0, 3, "the input")) return -1;
  const zoo_type *x = s->in[0];
  int nd = x->ndim;
  zoo_type o = *x;
  o.ndim = nd - 1;
  o.dim[nd - 3] = x->dim[nd - 2];
  if (!zoo_dim_mul_checked(x->dim[nd - 3], x->dim[nd - 1], &o.dim[nd - 2]))
    return fail(s, "the merged size of %s overflows an int64", ts(s, x));
  s->out[0] = o;
  return 0;
}

/* slice (x; i0 = axis, i1 = start, dims[0] = length) */
static int zoo_shape_slice(shape_ctx *s) {
  if (want_rank(s, 0, 1, "the input")) return -1;
  const zoo_type *x = s->in[0];
  int a = axis_of(s, s->n->attrs.i[0], x->ndim, x);
  if (a < 0) return -1;
  int64_t start = s->n->attrs.i[1];
  zoo_dim len = s->n->attrs.dims[0], n = x->dim[a];
  int ok;
  if (is_const(n) && is_const(len)) ok = start >= 0 && len.coef >= 0 && start + len.coef <= n.coef;
  else ok = start == 0 && zoo_dim_eq(len, n); /* a symbolic axis: only the whole of it */
  if (!ok)
    return fail(s, "[%lld, %lld + %s) is not within axis %d of %s", (long long)start,
                (long long)start, ds(s, len), a, ts(s, x));
  s->out[0] = *x;
  s->out[0].dim[a] = len;
  return 0;
}

/* concat (a, b; i0 = axis): other axes equal. */
static int zoo_shape_concat(shape_ctx *s) {
  const zoo_type *x = s->in[0], *y = s->in[1];
  if (want_rank(s, 0, 1, "the first operand")) return -1;
  if (x->dtype != y->dtype || x->ndim != y->ndim)
    return fail(s, "cannot concatenate %s and %s", ts(s, x), ts(s, y));
  int a = axis_of(s, s->n->attrs.i[0], x->ndim, x);
  if (a < 0) return -1;
  for (int k = 0; k < x->ndim; k++)
    if (k != a && !zoo_dim_eq(x->dim[k], y->dim[k]))
      return fail(s, "%s and %s differ outside axis %d", ts(s, x), ts(s, y), a);
  zoo_dim p = x->dim[a], q = y->dim[a];
  if (p.sym != q.sym)
    return fail(s, "cannot add the lengths %s and %s along axis %d", ds(s, p), ds(s, q), a);
  s->out[0] = *x;
  s->out[0].dim[a].coef = p.coef + q.coef;
  return 0;
}

/* shift (x; i0 = axis, i1 = k) */
static int zoo_shape_shift(shape_ctx *s) {
  if (want_rank(s, 0, 1, "the input")) return -1;
  if (axis_of(s, s->n->attrs.i[0], s->in[0]->ndim, s->in[0]) < 0) return -1;
  s->out[0] = *s->in[0];
  return 0;
}

/* linear (x[..., in], w[out, in], [b[out]]) -> [..., out] */
static int zoo_shape_linear(shape_ctx *s) {
  const zoo_type *x = s->in[0], *w = s->in[1];
  if (want_f32(s, 0, "the input") || want_rank(s, 0, 1, "the input") ||
      want_f32(s, 1, "the weight"))
    return -1;
  if (w->ndim != 2) return fail(s, "the weight must be [out, in], got %s", ts(s, w));
  zoo_dim in = x->dim[x->ndim - 1];
  if (!zoo_dim_eq(in, w->dim[1]))
    return fail(s, "input has %s features but the weight expects %s (x: %s, w: %s)", ds(s, in),
                ds(s, w->dim[1]), ts(s, x), ts(s, w));
  if (s->n->nin > 2) {
    const zoo_type *b = s->in[2];
    if (b->dtype != ZOO_F32 || b->ndim != 1 || !zoo_dim_eq(b->dim[0], w->dim[0]))
      return fail(s, "the bias must be f32[%s] for the weight %s, got %s", ds(s, w->dim[0]),
                  ts(s, w), ts(s, b));
  }
  s->out[0] = *x;
  s->out[0].dim[x->ndim - 1] = w->dim[0];
  return 0;
}

/* matmul (a[..., m, k], b[..., k, n]; i0 = transpose a, i1 = transpose b) */
static int zoo_shape_matmul(shape_ctx *s) {
  const zoo_type *a = s->in[0], *b = s->in[1];
  if (want_f32(s, 0, "the left operand") || want_f32(s, 1, "the right operand") ||
      want_rank(s, 0, 2, "the left operand") || want_rank(s, 1, 2, "the right operand"))
    return -1;
  int ta = s->n->attrs.i[0] != 0, tb = s->n->attrs.i[1] != 0;
  int na = a->ndim, nb = b->ndim;
  zoo_dim m = a->dim[na - 2 + ta], ka = a->dim[na - 1 - ta];
  zoo_dim kb = b->dim[nb - 2 + tb], n = b->dim[nb - 1 - tb];
  if (!zoo_dim_eq(ka, kb))
    return fail(s, "inner dimensions %s and %s differ (a: %s%s, b: %s%s)", ds(s, ka), ds(s, kb),
                ts(s, a), ta ? " transposed" : "", ts(s, b), tb ? " transposed" : "");
  const zoo_type *batch = na >= nb ? a : b;
  if (na > 2 && nb > 2) {
    int same = na == nb;
    for (int k = 0; same && k < na - 2; k++) same = zoo_dim_eq(a->dim[k], b->dim[k]);
    if (!same)
      return fail(s, "batch axes of %s and %s differ (they must be equal, or absent in one)",
                  ts(s, a), ts(s, b));
  }
  zoo_type o = *batch;
  o.dtype = ZOO_F32;
  o.dim[o.ndim - 2] = m;
  o.dim[o.ndim - 1] = n;
  s->out[0] = o;
  return 0;
}

/* embedding (w[V, D], ids i32[...]) -> [..., D] */
static int zoo_shape_embedding(shape_ctx *s) {
  const zoo_type *w = s->in[0], *ids = s->in[1];
  if (want_f32(s, 0, "the table") || want_i32(s, 1, "the ids")) return -1;
  if (w->ndim != 2) return fail(s, "the table must be [V, D], got %s", ts(s, w));
  if (ids->ndim + 1 > ZOO_MAX_DIMS) return fail(s, "ids %s have too many axes", ts(s, ids));
  zoo_type o = *ids;
  o.dtype = ZOO_F32;
  o.dim[o.ndim++] = w->dim[1];
  s->out[0] = o;
  return 0;
}

/* embedding_bwd (dy[..., D], ids; dims = [V, D]) -> dw[V, D] */
static int zoo_shape_embedding_bwd(shape_ctx *s) {
  const zoo_type *dy = s->in[0], *ids = s->in[1];
  if (want_f32(s, 0, "dy") || want_i32(s, 1, "the ids")) return -1;
  if (s->n->attrs.ndim != 2) return fail(s, "the table shape must be [V, D]");
  zoo_type o = {.dtype = ZOO_F32, .ndim = 2};
  o.dim[0] = s->n->attrs.dims[0];
  o.dim[1] = s->n->attrs.dims[1];
  if (!leading_eq(dy, 1, ids) || !zoo_dim_eq(dy->dim[dy->ndim - 1], o.dim[1]))
    return fail(s, "dy %s does not match ids %s and the table %s", ts(s, dy), ts(s, ids),
                ts(s, &o));
  s->out[0] = o;
  return 0;
}

/* label_rows (targets i32[..., T]; i0 = ignore, i1 = per sequence)
 *   -> idx i32[M], pos i32[..., T], tc i32[M], M = i1 * the sequences */
static int zoo_shape_label_rows(shape_ctx *s) {
  const zoo_type *t = s->in[0];
  if (want_i32(s, 0, "the targets") || want_rank(s, 0, 1, "the targets")) return -1;
  int64_t per = s->n->attrs.i[1];
  if (per < 1) return fail(s, "needs at least one labelled position per sequence, not %lld", (long long)per);
  zoo_dim m = {per, 0};
  for (int k = 0; k + 1 < t->ndim; k++) m = zoo_dim_mul(m, t->dim[k]);
  zoo_type rows = {.dtype = ZOO_I32, .ndim = 1};
  rows.dim[0] = m;
  s->out[0] = rows;
  s->out[1] = *t;
  s->out[2] = rows;
  return 0;
}

/* gather_rows (x[..., D], idx i32[M], pos i32[...]) -> [M, D] */
static int zoo_shape_gather_rows(shape_ctx *s) {
  const zoo_type *x = s->in[0], *idx = s->in[1], *pos = s->in[2];
  if (want_f32(s, 0, "the rows") || want_rank(s, 0, 2, "the rows") || want_i32(s, 1, "idx") ||
      want_i32(s, 2, "pos"))
    return -1;
  if (idx->ndim != 1) return fail(s, "idx must be i32[M], got %s", ts(s, idx));
  if (!leading_eq(x, 1, pos))
    return fail(s, "pos %s does not match the rows %s (expected their leading axes)", ts(s, pos),
                ts(s, x));
  zoo_type o = {.dtype = ZOO_F32, .ndim = 2};
  o.dim[0] = idx->dim[0];
  o.dim[1] = x->dim[x->ndim - 1];
  s->out[0] = o;
  return 0;
}

/* scatter_rows (dy[M, D], pos i32[...]) -> [..., D] */
static int zoo_shape_scatter_rows(shape_ctx *s) {
  const zoo_type *dy = s->in[0], *pos = s->in[1];
  if (want_f32(s, 0, "dy") || want_i32(s, 1, "pos")) return -1;
  if (dy->ndim != 2) return fail(s, "dy must be [M, D], got %s", ts(s, dy));
  if (pos->ndim + 1 > ZOO_MAX_DIMS) return fail(s, "pos %s has too many axes", ts(s, pos));
  zoo_type o = *pos;
  o.dtype = ZOO_F32;
  o.dim[o.ndim++] = dy->dim[1];
  s->out[0] = o;
  return 0;
}

/* arange (; dims[0] = n) -> i32[n] */
static int zoo_shape_arange(shape_ctx *s) {
  if (s->n->attrs.ndim != 1) return fail(s, "needs one length");
  zoo_type o = {.dtype = ZOO_I32, .ndim = 1};
  o.dim[0] = s->n->attrs.dims[0];
  s->out[0] = o;
  return 0;
}

static int zoo_shape_cumsum(shape_ctx *s) {
  if (want_f32(s, 0, "the operand") || want_rank(s, 0, 1, "the operand")) return -1;
  if (axis_of(s, s->n->attrs.i[0], s->in[0]->ndim, s->in[0]) < 0) return -1;
  s->out[0] = *s->in[0];
  return 0;
}

/* x[B, T, C] and w[C, 1, K] of causal_conv1d (inputs xi, wi) */
static int want_conv(shape_ctx *s, int xi, int wi) {
  const zoo_type *x = s->in[xi], *w = s->in[wi];
  if (want_f32(s, xi, "the input") || want_f32(s, wi, "the weight")) return -1;
  if (x->ndim != 3) return fail(s, "the input must be [B, T, C], got %s", ts(s, x));
  zoo_dim c = x->dim[2];
  if (w->ndim != 3 || !zoo_dim_eq(w->dim[0], c) || !is_one(w->dim[1]) || !is_const(w->dim[2]))
    return fail(s, "the weight must be [%s, 1, K] for input %s, got %s", ds(s, c), ts(s, x),
                ts(s, w));
  return 0;
}

static int zoo_shape_causal_conv1d(shape_ctx *s) {
  if (want_conv(s, 0, 1)) return -1;
  if (s->n->nin > 2 && want_channels(s, 2, "the bias", s->in[0]->dim[2])) return -1;
  s->out[0] = *s->in[0];
  return 0;
}

/* causal_conv1d_bwd (dy, x, w) -> dx, dw, db[C] */
static int zoo_shape_causal_conv1d_bwd(shape_ctx *s) {
  if (want_conv(s, 1, 2) || want_dy_like_x(s, 0, 1)) return -1;
  s->out[0] = *s->in[1];
  s->out[1] = *s->in[2];
  s->out[2] = vec_type(s->in[1]->dim[2]);
  return 0;
}

/* q[B,H,T,F], k[B,H,T,F], v[B,H,T,Dv] at inputs qi, qi+1, qi+2 */
static int want_qkv(shape_ctx *s, int qi) {
  const zoo_type *q = s->in[qi], *k = s->in[qi + 1], *v = s->in[qi + 2];
  if (want_f32(s, qi, "q") || want_f32(s, qi + 1, "k") || want_f32(s, qi + 2, "v")) return -1;
  if (q->ndim != 4) return fail(s, "q must be [B, H, T, F], got %s", ts(s, q));
  if (!zoo_type_eq(q, k)) return fail(s, "q %s and k %s differ", ts(s, q), ts(s, k));
  if (v->ndim != 4 || !zoo_dim_eq(v->dim[0], q->dim[0]) || !zoo_dim_eq(v->dim[1], q->dim[1]) ||
      !zoo_dim_eq(v->dim[2], q->dim[2]))
    return fail(s, "v %s does not match q %s in [B, H, T]", ts(s, v), ts(s, q));
  return 0;
}

static zoo_type attention_out(shape_ctx *s, int qi) {
  zoo_type o = *s->in[qi];
  o.dim[3] = s->in[qi + 2]->dim[3];
  return o;
}

/* poly_attention's q, k, v at inputs qi .. qi+2 in the node's layout (i0,
 * ops.def): 0 as want_qkv; 1 (heads interleaved) q, k [B, T, H*F] and
 * v [B, T, H*Dv] with H = i1; 2 (q and k interleaved) q, k [B, T, H*F] and
 * v [B, H, T, Dv]. Fills the output's type into o. */
static int want_poly_qkv(shape_ctx *s, int qi, zoo_type *o) {
  int64_t layout = s->n->attrs.i[0], h = s->n->attrs.i[1];
  if (layout == 0) {
    if (want_qkv(s, qi)) return -1;
    *o = attention_out(s, qi);
    return 0;
  }
  if (layout != 1 && layout != 2)
    return fail(s,
                "layout %lld is none of 0 ([B, H, T, F]), 1 (heads interleaved, [B, T, H*F]) and 2 (q and k "
                "interleaved)",
                (long long)layout);
  if (h < 1) return fail(s, "heads interleaved: number of heads %lld must be positive", (long long)h);
  const zoo_type *q = s->in[qi], *k = s->in[qi + 1], *v = s->in[qi + 2];
  if (want_f32(s, qi, "q") || want_f32(s, qi + 1, "k") || want_f32(s, qi + 2, "v")) return -1;
  if (q->ndim != 3) return fail(s, "q must be [B, T, H*F] (heads interleaved), got %s", ts(s, q));
  if (!zoo_type_eq(q, k)) return fail(s, "q %s and k %s differ", ts(s, q), ts(s, k));
  zoo_dim w;
  if (!zoo_dim_div(q->dim[2], zoo_dim_const(h), &w))
    return fail(s, "width %s of q %s is not divisible by %lld heads", ds(s, q->dim[2]), ts(s, q),
                (long long)h);
  if (layout == 2) {
    if (v->ndim != 4 || !zoo_dim_eq(v->dim[0], q->dim[0]) || !zoo_dim_eq(v->dim[1], zoo_dim_const(h)) ||
        !zoo_dim_eq(v->dim[2], q->dim[1]))
      return fail(s, "v %s must be [B, H, T, Dv] with q %s [B, T, H*F] and H = %lld", ts(s, v), ts(s, q),
                  (long long)h);
    *o = *v;
    return 0;
  }
  if (v->ndim != 3 || !zoo_dim_eq(v->dim[0], q->dim[0]) || !zoo_dim_eq(v->dim[1], q->dim[1]))
    return fail(s, "v %s does not match q %s in [B, T]", ts(s, v), ts(s, q));
  if (!zoo_dim_div(v->dim[2], zoo_dim_const(h), &w))
    return fail(s, "width %s of v %s is not divisible by %lld heads", ds(s, v->dim[2]), ts(s, v),
                (long long)h);
  *o = *v;
  return 0;
}

/* The normaliser z [B, H, T] of poly_attention with q at input qi, in every
 * layout. */
static zoo_type poly_z(shape_ctx *s, int qi) {
  const zoo_type *q = s->in[qi];
  zoo_type z = *q;
  z.ndim = 3;
  if (s->n->attrs.i[0] != 0) z.dim[1] = zoo_dim_const(s->n->attrs.i[1]), z.dim[2] = q->dim[1];
  return z;
}

static int zoo_shape_poly_attention(shape_ctx *s) {
  if (want_poly_qkv(s, 0, &s->out[0])) return -1;
  s->out[1] = poly_z(s, 0);
  return 0;
}

/* (do, q, k, v) -> dq, dk, dv, given the forward output's type o */
static int attention_bwd(shape_ctx *s, const zoo_type *o) {
  if (!zoo_type_eq(s->in[0], o))
    return fail(s, "do %s must be the output's type %s", ts(s, s->in[0]), ts(s, o));
  for (int k = 0; k < 3; k++) s->out[k] = *s->in[1 + k];
  return 0;
}

static int zoo_shape_poly_attention_bwd(shape_ctx *s) {
  zoo_type o;
  if (want_poly_qkv(s, 1, &o)) return -1;
  if (s->n->nin == 5) return fail(s, "takes (do, q, k, v) or (do, q, k, v, o, z), got 5 inputs");
  if (s->n->nin == 6) {
    zoo_type z = poly_z(s, 1);
    if (!zoo_type_eq(s->in[4], &o)) return fail(s, "o %s must be the output's type %s", ts(s, s->in[4]), ts(s, &o));
    if (!zoo_type_eq(s->in[5], &z)) return fail(s, "z %s must be %s", ts(s, s->in[5]), ts(s, &z));
  }
  return attention_bwd(s, &o);
}

/* softmax_attention's lse [B, H, T] for q [B, H, T, F] at input qi */
static zoo_type sattn_lse(shape_ctx *s, int qi) {
  zoo_type l = *s->in[qi];
  l.ndim = 3;
  return l;
}

static int zoo_shape_softmax_attention(shape_ctx *s) {
  double p = s->n->attrs.f[1];
  if (!(p >= 0 && p < 1)) return fail(s, "dropout probability %g is not in [0, 1)", p);
  if (want_qkv(s, 0)) return -1;
  s->out[0] = attention_out(s, 0);
  s->out[1] = sattn_lse(s, 0);
  return 0;
}

static int zoo_shape_softmax_attention_bwd(shape_ctx *s) {
  if (want_qkv(s, 1)) return -1;
  zoo_type o = attention_out(s, 1);
  if (s->n->nin == 5) return fail(s, "takes (do, q, k, v) or (do, q, k, v, o, lse), got 5 inputs");
  if (s->n->nin == 6) {
    zoo_type l = sattn_lse(s, 1);
    if (!zoo_type_eq(s->in[4], &o)) return fail(s, "o %s must be the output's type %s", ts(s, s->in[4]), ts(s, &o));
    if (!zoo_type_eq(s->in[5], &l)) return fail(s, "lse %s must be %s", ts(s, s->in[5]), ts(s, &l));
  }
  return attention_bwd(s, &o);
}

/* softmax_attention_packed's qkv [B, T, 3*H*d] at input qi (H = i2): fills
 * its output o [B, T, H*d] and lse [B, H, T]. */
static int want_packed_qkv(shape_ctx *s, int qi, zoo_type *o, zoo_type *lse) {
  const zoo_type *x = s->in[qi];
  int64_t h = s->n->attrs.i[2];
  double p = s->n->attrs.f[1];
  if (!(p >= 0 && p < 1)) return fail(s, "dropout probability %g is not in [0, 1)", p);
  if (h < 1) return fail(s, "number of heads %lld must be positive", (long long)h);
  if (want_f32(s, qi, "qkv")) return -1;
  zoo_dim d;
  if (x->ndim != 3 || !zoo_dim_div(x->dim[2], zoo_dim_const(3 * h), &d))
    return fail(s, "qkv must be [B, T, 3*H*d] with H = %lld, got %s", (long long)h, ts(s, x));
  *o = *x;
  zoo_dim_div(x->dim[2], zoo_dim_const(3), &o->dim[2]);
  *lse = *x;
  lse->dim[1] = zoo_dim_const(h), lse->dim[2] = x->dim[1];
  return 0;
}

static int zoo_shape_softmax_attention_packed(shape_ctx *s) {
  return want_packed_qkv(s, 0, &s->out[0], &s->out[1]);
}

static int zoo_shape_softmax_attention_packed_bwd(shape_ctx *s) {
  zoo_type o, l;
  if (want_packed_qkv(s, 1, &o, &l)) return -1;
  if (!zoo_type_eq(s->in[0], &o)) return fail(s, "do %s must be the output's type %s", ts(s, s->in[0]), ts(s, &o));
  if (s->n->nin == 3) return fail(s, "takes (do, qkv) or (do, qkv, o, lse), got 3 inputs");
  if (s->n->nin == 4) {
    if (!zoo_type_eq(s->in[2], &o)) return fail(s, "o %s must be the output's type %s", ts(s, s->in[2]), ts(s, &o));
    if (!zoo_type_eq(s->in[3], &l)) return fail(s, "lse %s must be %s", ts(s, s->in[3]), ts(s, &l));
  }
  s->out[0] = *s->in[1];
  return 0;
}

/* h[..., D], w[V, D], targets i32[...] at inputs hi, hi+1, hi+2 */
static int want_lce(shape_ctx *s, int hi) {
  const zoo_type *h = s->in[hi], *w = s->in[hi + 1], *t = s->in[hi + 2];
  if (want_f32(s, hi, "the input") || want_rank(s, hi, 1, "the input") ||
      want_f32(s, hi + 1, "the weight") || want_i32(s, hi + 2, "the targets"))
    return -1;
  if (w->ndim != 2 || !zoo_dim_eq(w->dim[1], h->dim[h->ndim - 1]))
    return fail(s, "the weight must be [V, %s] for input %s, got %s",
                ds(s, h->dim[h->ndim - 1]), ts(s, h), ts(s, w));
  if (!leading_eq(h, 1, t))
    return fail(s, "targets %s do not match the input %s (expected its leading axes)",
                ts(s, t), ts(s, h));
  return 0;
}

static int zoo_shape_linear_cross_entropy(shape_ctx *s) {
  if (want_lce(s, 0)) return -1;
  s->out[0] = scalar_f32();
  return 0;
}

/* (dloss, h, w, targets) -> dh, dw */
static int zoo_shape_linear_cross_entropy_bwd(shape_ctx *s) {
  if (want_scalar(s, 0, "dloss") || want_lce(s, 1)) return -1;
  s->out[0] = *s->in[1];
  s->out[1] = *s->in[2];
  return 0;
}

/* (h, w, targets, dloss[]) -> loss[], metrics[2], dlogits [..., V], dh */
static int zoo_shape_linear_cross_entropy_step(shape_ctx *s) {
  if (want_lce(s, 0) || want_scalar(s, 3, "dloss")) return -1;
  s->out[0] = scalar_f32();
  s->out[1] = vec_type(zoo_dim_const(2));
  s->out[2] = *s->in[0];
  s->out[2].dim[s->out[2].ndim - 1] = s->in[1]->dim[0];
  s->out[3] = *s->in[0];
  return 0;
}

/* w[C], u[C], k[B,T,C], v[B,T,C] at inputs wi .. wi+3 */
static int want_wkv(shape_ctx *s, int wi) {
  const zoo_type *w = s->in[wi], *u = s->in[wi + 1], *k = s->in[wi + 2], *v = s->in[wi + 3];
  if (want_f32(s, wi, "w") || want_f32(s, wi + 1, "u") || want_f32(s, wi + 2, "k") ||
      want_f32(s, wi + 3, "v"))
    return -1;
  if (k->ndim != 3) return fail(s, "k must be [B, T, C], got %s", ts(s, k));
  if (!zoo_type_eq(k, v)) return fail(s, "k %s and v %s differ", ts(s, k), ts(s, v));
  if (w->ndim != 1 || !zoo_dim_eq(w->dim[0], k->dim[2]))
    return fail(s, "w must be [%s] for k %s, got %s", ds(s, k->dim[2]), ts(s, k), ts(s, w));
  if (!zoo_type_eq(w, u)) return fail(s, "w %s and u %s differ", ts(s, w), ts(s, u));
  return 0;
}

static int zoo_shape_wkv4(shape_ctx *s) {
  if (want_wkv(s, 0)) return -1;
  s->out[0] = *s->in[2];
  return 0;
}

/* (dy, w, u, k, v) -> dw, du, dk, dv */
static int zoo_shape_wkv4_bwd(shape_ctx *s) {
  if (want_wkv(s, 1)) return -1;
  if (!zoo_type_eq(s->in[0], s->in[3]))
    return fail(s, "dy %s must be k's type %s", ts(s, s->in[0]), ts(s, s->in[3]));
  for (int k = 0; k < 4; k++) s->out[k] = *s->in[1 + k];
  return 0;
}

typedef int (*shape_fn)(shape_ctx *s);

static const shape_fn shape_rules[ZOO_OP_COUNT] = {
#define X(NAME, name, cls, nin_min, nin_max, nout, flags) [ZOO_OP_##NAME] = zoo_shape_##name,
#include "ops.def"
#undef X
};

int zoo_shape_infer(const zoo_graph *g, const zoo_node *n, zoo_type *out, char *err,
                    size_t errlen) {
  shape_ctx s = {.g = g, .n = n, .out = out, .err = err, .errlen = errlen};
  if (n->op < 0 || n->op >= ZOO_OP_COUNT) {
    snprintf(err, errlen, "unknown op %d", (int)n->op);
    return -1;
  }
  const zoo_op_info *info = &zoo_ops[n->op];
  s.op = info->name;
  if (n->nin < info->nin_min || n->nin > info->nin_max) {
    if (info->nin_min == info->nin_max)
      return fail(&s, "takes %d inputs, got %d", info->nin_min, n->nin);
    return fail(&s, "takes %d to %d inputs, got %d", info->nin_min, info->nin_max, n->nin);
  }
  for (int i = 0; i < n->nin; i++) {
    if (n->in[i] < 0 || n->in[i] >= g->ntensors) return fail(&s, "input %d is not a tensor", i);
    s.in[i] = &g->tensors[n->in[i]].type;
  }
  return shape_rules[n->op](&s);
}
