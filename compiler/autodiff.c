/* autodiff.c: reverse-mode differentiation, graph to graph.
 *
 * zoo_autodiff appends the backward pass to a graph: it walks the forward nodes
 * from last to first, hands each differentiable node the gradients of its
 * outputs, and lets the op's rule (zoo_grad_<name>, below, one per row of
 * ops.def) emit the nodes that compute the gradients of its inputs. A tensor
 * read by several nodes (the residual stream, a tied embedding) gets the sum of
 * their contributions. Broadcasting ops hand back reduce_to of their gradient,
 * so every gradient has exactly its tensor's type, which is checked after each
 * rule: a mismatch is a bug in a rule, not the user's mistake, and aborts.
 */
#include "autodiff.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------
 * Emitting nodes */

/* Appends a node at the forward node's span. Shape errors here mean a rule
 * built an ill-typed node: a broken invariant. */
static int emit(zoo_grad_ctx *c, zoo_op op, int nin, const int *in, const zoo_attrs *a) {
  int t = zoo_graph_node(c->g, op, nin, in, a, c->span, c->d);
  if (t < 0) {
    fprintf(stderr, "zoo: internal error: a gradient rule made an ill-typed %s node\n",
            zoo_ops[op].name);
    abort();
  }
  return t;
}

static int op1(zoo_grad_ctx *c, zoo_op op, int x) { return emit(c, op, 1, &x, NULL); }

static int op2(zoo_grad_ctx *c, zoo_op op, int a, int b) {
  int in[2] = {a, b};
  return emit(c, op, 2, in, NULL);
}

static int op3(zoo_grad_ctx *c, zoo_op op, int a, int b, int d) {
  int in[3] = {a, b, d};
  return emit(c, op, 3, in, NULL);
}

/* adds, muls, pows: x op f */
static int scalar_op(zoo_grad_ctx *c, zoo_op op, int x, double f) {
  zoo_attrs a = {0};
  a.f[0] = f;
  return emit(c, op, 1, &x, &a);
}

static zoo_type type_of(zoo_grad_ctx *c, int t) { return c->g->tensors[t].type; }

/* reshape x to type t's dims */
static int reshape_to(zoo_grad_ctx *c, int x, const zoo_type *t) {
  zoo_attrs a = {0};
  a.ndim = t->ndim;
  memcpy(a.dims, t->dim, sizeof t->dim);
  return emit(c, ZOO_OP_RESHAPE, 1, &x, &a);
}

/* sum (x; axis, keepdim) */
static int sum_axis(zoo_grad_ctx *c, int x, int axis, int keepdim) {
  zoo_attrs a = {0};
  a.i[0] = axis;
  a.i[1] = keepdim;
  return emit(c, ZOO_OP_SUM, 1, &x, &a);
}

/* The gradient dy of a broadcast result, summed back to the shape of `like`. */
static int unbroadcast(zoo_grad_ctx *c, int dy, int like) {
  zoo_type ty = type_of(c, dy), tl = type_of(c, like);
  if (zoo_type_eq(&ty, &tl)) return dy;
  zoo_attrs a = {0};
  a.ndim = tl.ndim;
  memcpy(a.dims, tl.dim, sizeof tl.dim);
  return emit(c, ZOO_OP_REDUCE_TO, 1, &dy, &a);
}

/* dy stretched to the shape of `like` (dy must broadcast to it). The op set has
 * no broadcast op; where(like, dy, dy) is dy at every position of like's shape,
 * whatever like's values are. */
static int expand(zoo_grad_ctx *c, int dy, int like) {
  zoo_type ty = type_of(c, dy), tl = type_of(c, like);
  if (zoo_type_eq(&ty, &tl)) return dy;
  return op3(c, ZOO_OP_WHERE, like, dy, dy);
}

/* Zeros of t's type (t * 0; t is a finite activation or gradient). */
static int zeros_like(zoo_grad_ctx *c, int t) { return scalar_op(c, ZOO_OP_MULS, t, 0.0); }

/* The node's own attributes, for *_bwd ops and ops that are their own gradient. */
static int emit_same(zoo_grad_ctx *c, zoo_op op, int nin, const int *in, const zoo_node *n) {
  return emit(c, op, nin, in, &n->attrs);
}

/* ---------------------------------------------------------------------------
 * Rules. x, y: the node's input and output; dy = dout[0]. */

#define NO_GRAD(name) \
  int zoo_grad_##name(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) { return 0; }

NO_GRAD(gt)
NO_GRAD(gelu_bwd)
NO_GRAD(layernorm_bwd)
NO_GRAD(rmsnorm_bwd)
NO_GRAD(cross_entropy_bwd)
NO_GRAD(softmax_attention_packed_bwd)
NO_GRAD(cross_entropy_step)
NO_GRAD(linear_layernorm)
NO_GRAD(argmax)
NO_GRAD(accuracy)
NO_GRAD(embedding_bwd)
NO_GRAD(arange)
NO_GRAD(label_rows)
NO_GRAD(scatter_rows)
NO_GRAD(causal_conv1d_bwd)
NO_GRAD(poly_attention_bwd)
NO_GRAD(wkv4_bwd)
NO_GRAD(softmax_attention_bwd)
NO_GRAD(linear_cross_entropy_bwd)
NO_GRAD(linear_cross_entropy_step)

int zoo_grad_add(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  if (c->want[0]) din[0] = unbroadcast(c, dout[0], n->in[0]);
  if (c->want[1]) din[1] = unbroadcast(c, dout[0], n->in[1]);
  return 0;
}

int zoo_grad_sub(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  if (c->want[0]) din[0] = unbroadcast(c, dout[0], n->in[0]);
  if (c->want[1]) din[1] = unbroadcast(c, op1(c, ZOO_OP_NEG, dout[0]), n->in[1]);
  return 0;
}

/* d(a b) = dy b, dy a */
int zoo_grad_mul(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  int a = n->in[0], b = n->in[1];
  if (c->want[0]) din[0] = unbroadcast(c, op2(c, ZOO_OP_MUL, dout[0], b), a);
  if (c->want[1]) din[1] = unbroadcast(c, op2(c, ZOO_OP_MUL, dout[0], a), b);
  return 0;
}

/* y = a / b: da = dy / b, db = -dy y / b */
int zoo_grad_div(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  int a = n->in[0], b = n->in[1], y = n->out[0];
  if (c->want[0]) din[0] = unbroadcast(c, op2(c, ZOO_OP_DIV, dout[0], b), a);
  if (c->want[1]) {
    int t = op2(c, ZOO_OP_DIV, op2(c, ZOO_OP_MUL, dout[0], y), b);
    din[1] = unbroadcast(c, op1(c, ZOO_OP_NEG, t), b);
  }
  return 0;
}

/* where (cond, a, b): the gradient goes to the side that was chosen; none to cond. */
int zoo_grad_where(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  int cond = n->in[0], dy = dout[0];
  if (!c->want[1] && !c->want[2]) return 0;
  int zero = zeros_like(c, dy);
  if (c->want[1]) din[1] = unbroadcast(c, op3(c, ZOO_OP_WHERE, cond, dy, zero), n->in[1]);
  if (c->want[2]) din[2] = unbroadcast(c, op3(c, ZOO_OP_WHERE, cond, zero, dy), n->in[2]);
  return 0;
}

int zoo_grad_neg(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  din[0] = op1(c, ZOO_OP_NEG, dout[0]);
  return 0;
}

/* d exp(x) = dy y */
int zoo_grad_exp(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  din[0] = op2(c, ZOO_OP_MUL, dout[0], n->out[0]);
  return 0;
}

/* d log(x) = dy / x */
int zoo_grad_log(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  din[0] = op2(c, ZOO_OP_DIV, dout[0], n->in[0]);
  return 0;
}

/* d sqrt(x) = dy / (2 y) */
int zoo_grad_sqrt(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  din[0] = op2(c, ZOO_OP_DIV, scalar_op(c, ZOO_OP_MULS, dout[0], 0.5), n->out[0]);
  return 0;
}

/* d x^(-1/2) = -dy y^3 / 2 */
int zoo_grad_rsqrt(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  int y = n->out[0];
  int y3 = op2(c, ZOO_OP_MUL, y, op1(c, ZOO_OP_SQUARE, y));
  din[0] = op2(c, ZOO_OP_MUL, scalar_op(c, ZOO_OP_MULS, dout[0], -0.5), y3);
  return 0;
}

/* d x^2 = 2 x dy */
int zoo_grad_square(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  din[0] = op2(c, ZOO_OP_MUL, dout[0], scalar_op(c, ZOO_OP_MULS, n->in[0], 2.0));
  return 0;
}

/* d sigmoid = dy (y - y^2) */
int zoo_grad_sigmoid(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  int y = n->out[0];
  din[0] = op2(c, ZOO_OP_MUL, dout[0], op2(c, ZOO_OP_SUB, y, op1(c, ZOO_OP_SQUARE, y)));
  return 0;
}

/* d x s(x) = dy s (1 + x (1 - s)), s = sigmoid(x) */
int zoo_grad_silu(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  int x = n->in[0], s = op1(c, ZOO_OP_SIGMOID, x);
  int one_minus_s = scalar_op(c, ZOO_OP_ADDS, op1(c, ZOO_OP_NEG, s), 1.0);
  int inner = scalar_op(c, ZOO_OP_ADDS, op2(c, ZOO_OP_MUL, x, one_minus_s), 1.0);
  din[0] = op2(c, ZOO_OP_MUL, dout[0], op2(c, ZOO_OP_MUL, s, inner));
  return 0;
}

/* d softplus = dy sigmoid(x) */
int zoo_grad_softplus(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  din[0] = op2(c, ZOO_OP_MUL, dout[0], op1(c, ZOO_OP_SIGMOID, n->in[0]));
  return 0;
}

/* d relu = dy where y != 0 (that is, x > 0), else 0 */
int zoo_grad_relu(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  din[0] = op3(c, ZOO_OP_WHERE, n->out[0], dout[0], zeros_like(c, dout[0]));
  return 0;
}

int zoo_grad_gelu(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  din[0] = op2(c, ZOO_OP_GELU_BWD, dout[0], n->in[0]);
  return 0;
}

/* d tanh = dy (1 - y^2) */
int zoo_grad_tanh(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  int y2 = op1(c, ZOO_OP_SQUARE, n->out[0]);
  din[0] = op2(c, ZOO_OP_MUL, dout[0], scalar_op(c, ZOO_OP_ADDS, op1(c, ZOO_OP_NEG, y2), 1.0));
  return 0;
}

int zoo_grad_sin(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  din[0] = op2(c, ZOO_OP_MUL, dout[0], op1(c, ZOO_OP_COS, n->in[0]));
  return 0;
}

int zoo_grad_cos(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  din[0] = op1(c, ZOO_OP_NEG, op2(c, ZOO_OP_MUL, dout[0], op1(c, ZOO_OP_SIN, n->in[0])));
  return 0;
}

int zoo_grad_adds(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  din[0] = dout[0];
  return 0;
}

int zoo_grad_muls(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  din[0] = scalar_op(c, ZOO_OP_MULS, dout[0], n->attrs.f[0]);
  return 0;
}

/* d x^p = dy p x^(p-1) */
int zoo_grad_pows(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  double p = n->attrs.f[0];
  int xp = scalar_op(c, ZOO_OP_POWS, n->in[0], p - 1.0);
  din[0] = op2(c, ZOO_OP_MUL, dout[0], scalar_op(c, ZOO_OP_MULS, xp, p));
  return 0;
}

/* The same mask (same stream, same step seed) applied to dy. */
int zoo_grad_dropout(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  din[0] = emit_same(c, ZOO_OP_DROPOUT, 1, &dout[0], n);
  return 0;
}

/* dy with the reduced axis put back as size 1 (when keepdim was off). */
static int keep_axis(zoo_grad_ctx *c, const zoo_node *n, int dy) {
  if (n->attrs.i[1]) return dy;
  zoo_type t = type_of(c, n->in[0]);
  int axis = (int)(n->attrs.i[0] < 0 ? n->attrs.i[0] + t.ndim : n->attrs.i[0]);
  t.dim[axis] = zoo_dim_const(1);
  return reshape_to(c, dy, &t);
}

int zoo_grad_sum(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  din[0] = expand(c, keep_axis(c, n, dout[0]), n->in[0]);
  return 0;
}

/* dy / n at every position; n is the reduced axis's length, which may be
 * symbolic: then it is computed as sum(1) over that axis. */
int zoo_grad_mean(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  int x = n->in[0];
  zoo_type t = type_of(c, x);
  int axis = (int)(n->attrs.i[0] < 0 ? n->attrs.i[0] + t.ndim : n->attrs.i[0]);
  int g = expand(c, keep_axis(c, n, dout[0]), x);
  zoo_dim len = t.dim[axis];
  if (len.sym == 0) {
    din[0] = scalar_op(c, ZOO_OP_MULS, g, 1.0 / (double)len.coef);
  } else {
    int ones = scalar_op(c, ZOO_OP_ADDS, zeros_like(c, x), 1.0);
    din[0] = op2(c, ZOO_OP_DIV, g, sum_axis(c, ones, axis, 1));
  }
  return 0;
}

int zoo_grad_reduce_to(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  din[0] = expand(c, dout[0], n->in[0]);
  return 0;
}

/* layernorm_bwd (dy, x, [w]) -> dx, dw, db */
int zoo_grad_layernorm(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  int in[3] = {dout[0], n->in[0], n->nin > 1 ? n->in[1] : -1};
  int first = emit_same(c, ZOO_OP_LAYERNORM_BWD, n->nin > 1 ? 3 : 2, in, n);
  din[0] = first;
  if (n->nin > 1) din[1] = first + 1;
  if (n->nin > 2) din[2] = first + 2;
  return 0;
}

int zoo_grad_rmsnorm(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  int in[3] = {dout[0], n->in[0], n->in[1]};
  int first = emit_same(c, ZOO_OP_RMSNORM_BWD, 3, in, n);
  din[0] = first;
  din[1] = first + 1;
  return 0;
}

/* dx = y (dy - sum(dy y)) over the last axis */
int zoo_grad_softmax(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  int y = n->out[0];
  int s = sum_axis(c, op2(c, ZOO_OP_MUL, dout[0], y), -1, 1);
  din[0] = op2(c, ZOO_OP_MUL, y, op2(c, ZOO_OP_SUB, dout[0], s));
  return 0;
}

/* dx = dy softmax(x), dy broadcast along the dropped axis */
int zoo_grad_logsumexp(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  zoo_type t = type_of(c, n->in[0]);
  t.dim[t.ndim - 1] = zoo_dim_const(1);
  int dy = reshape_to(c, dout[0], &t);
  din[0] = op2(c, ZOO_OP_MUL, dy, op1(c, ZOO_OP_SOFTMAX, n->in[0]));
  return 0;
}

int zoo_grad_cross_entropy(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  int in[3] = {dout[0], n->in[0], n->in[1]};
  din[0] = emit_same(c, ZOO_OP_CROSS_ENTROPY_BWD, 3, in, n);
  return 0;
}

int zoo_grad_reshape(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  zoo_type t = type_of(c, n->in[0]);
  din[0] = reshape_to(c, dout[0], &t);
  return 0;
}

/* the inverse permutation: output axis k came from source axis p[k] */
int zoo_grad_permute(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  zoo_attrs a = {0};
  a.ndim = n->attrs.ndim;
  for (int k = 0; k < a.ndim; k++) a.dims[n->attrs.dims[k].coef] = zoo_dim_const(k);
  din[0] = emit(c, ZOO_OP_PERMUTE, 1, &dout[0], &a);
  return 0;
}

int zoo_grad_split_heads(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  din[0] = op1(c, ZOO_OP_MERGE_HEADS, dout[0]);
  return 0;
}

int zoo_grad_merge_heads(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  zoo_type t = type_of(c, n->in[0]);
  zoo_dim h = t.dim[t.ndim - 3];
  if (h.sym) {
    zoo_error(c->d, c->span, "merge_heads: cannot differentiate with a symbolic head count");
    return -1;
  }
  zoo_attrs a = {0};
  a.i[0] = h.coef;
  din[0] = emit(c, ZOO_OP_SPLIT_HEADS, 1, &dout[0], &a);
  return 0;
}

/* slice (x; axis, start, len) of x, or zeros of x's type outside [start, start + len) */
static int slice_of(zoo_grad_ctx *c, int x, int axis, int64_t start, zoo_dim len, int zero) {
  zoo_attrs a = {0};
  a.i[0] = axis;
  a.i[1] = start;
  a.ndim = 1;
  a.dims[0] = len;
  int s = emit(c, ZOO_OP_SLICE, 1, &x, &a);
  return zero ? zeros_like(c, s) : s;
}

static int concat_of(zoo_grad_ctx *c, int a, int b, int axis) {
  zoo_attrs at = {0};
  at.i[0] = axis;
  int in[2] = {a, b};
  return emit(c, ZOO_OP_CONCAT, 2, in, &at);
}

/* dy put back at [start, start + len) of the axis, zeros around it */
int zoo_grad_slice(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  int x = n->in[0];
  zoo_type t = type_of(c, x);
  int axis = (int)(n->attrs.i[0] < 0 ? n->attrs.i[0] + t.ndim : n->attrs.i[0]);
  int64_t start = n->attrs.i[1];
  zoo_dim len = n->attrs.dims[0], full = t.dim[axis];
  if (zoo_dim_eq(len, full)) { /* the whole axis */
    din[0] = dout[0];
    return 0;
  }
  int64_t after = full.coef - start - len.coef; /* both constant (shape rule) */
  int g = dout[0];
  if (start > 0) g = concat_of(c, slice_of(c, x, axis, 0, zoo_dim_const(start), 1), g, axis);
  if (after > 0)
    g = concat_of(c, g, slice_of(c, x, axis, start + len.coef, zoo_dim_const(after), 1), axis);
  din[0] = g;
  return 0;
}

int zoo_grad_concat(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  zoo_type ta = type_of(c, n->in[0]), tb = type_of(c, n->in[1]);
  int axis = (int)(n->attrs.i[0] < 0 ? n->attrs.i[0] + ta.ndim : n->attrs.i[0]);
  zoo_dim la = ta.dim[axis];
  if (la.sym) {
    zoo_error(c->d, c->span, "concat: cannot differentiate along a symbolic axis");
    return -1;
  }
  if (c->want[0]) din[0] = slice_of(c, dout[0], axis, 0, la, 0);
  if (c->want[1]) din[1] = slice_of(c, dout[0], axis, la.coef, tb.dim[axis], 0);
  return 0;
}

int zoo_grad_shift(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  zoo_attrs a = n->attrs;
  a.i[1] = -a.i[1];
  din[0] = emit(c, ZOO_OP_SHIFT, 1, &dout[0], &a);
  return 0;
}

/* x[..., in], w[out, in]: with dy and x flattened to [N, out] and [N, in],
 * dx = dy w, dw = dy^T x, db = sum over rows of dy. */
int zoo_grad_linear(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  int x = n->in[0], w = n->in[1];
  zoo_type tx = type_of(c, x), ty = type_of(c, dout[0]);
  zoo_dim rows = zoo_dim_const(1);
  for (int k = 0; k + 1 < tx.ndim; k++) rows = zoo_dim_mul(rows, tx.dim[k]);
  zoo_type fy = {.dtype = ZOO_F32, .ndim = 2, .dim = {rows, ty.dim[ty.ndim - 1]}};
  zoo_type fx = {.dtype = ZOO_F32, .ndim = 2, .dim = {rows, tx.dim[tx.ndim - 1]}};
  int dy = ty.ndim == 2 ? dout[0] : reshape_to(c, dout[0], &fy);
  if (c->want[0]) {
    int dx = op2(c, ZOO_OP_MATMUL, dy, w); /* [N, out] [out, in] */
    din[0] = tx.ndim == 2 ? dx : reshape_to(c, dx, &tx);
  }
  if (c->want[1]) {
    int x2 = tx.ndim == 2 ? x : reshape_to(c, x, &fx);
    zoo_attrs a = {0};
    a.i[0] = 1; /* dy^T x: [out, N] [N, in] */
    int in[2] = {dy, x2};
    din[1] = emit(c, ZOO_OP_MATMUL, 2, in, &a);
  }
  if (n->nin > 2 && c->want[2]) din[2] = sum_axis(c, dy, 0, 0);
  return 0;
}

static int matmul_of(zoo_grad_ctx *c, int a, int b, int ta, int tb) {
  zoo_attrs at = {0};
  at.i[0] = ta;
  at.i[1] = tb;
  int in[2] = {a, b};
  return emit(c, ZOO_OP_MATMUL, 2, in, &at);
}

/* C = op(A) op(B) with op = transpose where flagged, in stored layouts:
 *   (0,0) C = A B:      dA = dC B^T,    dB = A^T dC
 *   (0,1) C = A B^T:    dA = dC B,      dB = dC^T A
 *   (1,0) C = A^T B:    dA = B dC^T,    dB = A dC
 *   (1,1) C = A^T B^T:  dA = B^T dC^T,  dB = dC^T A^T
 * An operand without batch axes gets its gradient summed over the batch. */
int zoo_grad_matmul(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  int a = n->in[0], b = n->in[1], dc = dout[0];
  int ta = n->attrs.i[0] != 0, tb = n->attrs.i[1] != 0;
  if (c->want[0]) {
    int g = !ta ? matmul_of(c, dc, b, 0, !tb) : matmul_of(c, b, dc, tb, 1);
    din[0] = unbroadcast(c, g, a);
  }
  if (c->want[1]) {
    int g = !tb ? matmul_of(c, a, dc, !ta, 0) : matmul_of(c, dc, a, 1, ta);
    din[1] = unbroadcast(c, g, b);
  }
  return 0;
}

/* scatter-add of dy into a table of w's shape */
int zoo_grad_embedding(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  zoo_type tw = type_of(c, n->in[0]);
  zoo_attrs a = {0};
  a.ndim = 2;
  a.dims[0] = tw.dim[0];
  a.dims[1] = tw.dim[1];
  int in[2] = {dout[0], n->in[1]};
  din[0] = emit(c, ZOO_OP_EMBEDDING_BWD, 2, in, &a);
  return 0;
}

/* the rows go back where they came from: dx = scatter_rows(dy, pos) */
int zoo_grad_gather_rows(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  int in[2] = {dout[0], n->in[2]};
  din[0] = emit(c, ZOO_OP_SCATTER_ROWS, 2, in, NULL);
  return 0;
}

/* dx[t] = sum_{s >= t} dy[s] = total - cumsum(dy)[t] + dy[t] */
int zoo_grad_cumsum(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  int dy = dout[0];
  int total = sum_axis(c, dy, (int)n->attrs.i[0], 1);
  int cs = emit_same(c, ZOO_OP_CUMSUM, 1, &dy, n);
  din[0] = op2(c, ZOO_OP_ADD, op2(c, ZOO_OP_SUB, total, cs), dy);
  return 0;
}

int zoo_grad_causal_conv1d(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  int in[3] = {dout[0], n->in[0], n->in[1]};
  int first = emit_same(c, ZOO_OP_CAUSAL_CONV1D_BWD, 3, in, n);
  din[0] = first;
  din[1] = first + 1;
  if (n->nin > 2) din[2] = first + 2;
  return 0;
}

/* poly_attention: (do, q, k, v, o, z), the forward's output and normaliser
 * saved, so that the backward need not recompute them (ops.def), with the
 * forward node's attributes, so its layout (i0, i1) carries over: dq, dk, dv
 * come out in q's, k's and v's layout, do is read in o's. Nothing
 * differentiates z itself: only this rule's node reads it. */
int zoo_grad_poly_attention(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  int in[6] = {dout[0], n->in[0], n->in[1], n->in[2], n->out[0], n->out[1]};
  int first = emit_same(c, ZOO_OP_POLY_ATTENTION_BWD, 6, in, n);
  for (int k = 0; k < 3; k++) din[k] = first + k;
  return 0;
}

/* softmax_attention: (do, q, k, v, o, lse), the forward's output and
 * log-sum-exp saved (ops.def), as for poly_attention. */
int zoo_grad_softmax_attention(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  int in[6] = {dout[0], n->in[0], n->in[1], n->in[2], n->out[0], n->out[1]};
  int first = emit_same(c, ZOO_OP_SOFTMAX_ATTENTION_BWD, 6, in, n);
  for (int k = 0; k < 3; k++) din[k] = first + k;
  return 0;
}

/* softmax_attention_packed: dqkv from (do, qkv, o, lse), in qkv's layout */
int zoo_grad_softmax_attention_packed(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  int in[4] = {dout[0], n->in[0], n->out[0], n->out[1]};
  din[0] = emit_same(c, ZOO_OP_SOFTMAX_ATTENTION_PACKED_BWD, 4, in, n);
  return 0;
}

int zoo_grad_linear_cross_entropy(zoo_grad_ctx *c, const zoo_node *n, const int *dout,
                                  int *din) {
  int in[4] = {dout[0], n->in[0], n->in[1], n->in[2]};
  int first = emit_same(c, ZOO_OP_LINEAR_CROSS_ENTROPY_BWD, 4, in, n);
  din[0] = first;
  din[1] = first + 1;
  return 0;
}

/* wkv4: one backward node (dy, w, u, k, v) -> dw, du, dk, dv, same attributes */
int zoo_grad_wkv4(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din) {
  int in[5] = {dout[0], n->in[0], n->in[1], n->in[2], n->in[3]};
  int first = emit_same(c, ZOO_OP_WKV4_BWD, 5, in, n);
  for (int k = 0; k < 4; k++) din[k] = first + k;
  return 0;
}

/* ---------------------------------------------------------------------------
 * The walk */

typedef int (*grad_fn)(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din);

static const grad_fn grad_rules[ZOO_OP_COUNT] = {
#define X(NAME, name, cls, nin_min, nin_max, nout, flags) [ZOO_OP_##NAME] = zoo_grad_##name,
#include "ops.def"
#undef X
};

/* ---------------------------------------------------------------------------
 * Split tensors. A tensor read only by slices along one axis, at constant,
 * disjoint ranges (the q, k, v thirds of a fused projection), gets the
 * concatenation of the slices' gradients, zeros in the gaps, once all of them
 * are known: summing each slice's gradient padded with zeros to the whole
 * tensor (zoo_grad_slice) would make and add a full-size tensor per slice. */

typedef struct split_piece {
  int64_t start, len;
  int grad; /* the slice's gradient, -1 if none (or not yet known) */
  int node;
} split_piece;

typedef struct split_info {
  int axis, npieces, done;
  split_piece *pieces;
} split_info;

/* Fills split[t] for each tensor t that is such a split; NULL entries for the
 * rest. Only forward nodes [0, nfwd) count as readers. */
static split_info **find_splits(const zoo_graph *g, int nfwd) {
  int nt = g->ntensors;
  int *readers = calloc((size_t)nt + 1, sizeof *readers), *slices = calloc((size_t)nt + 1, sizeof *slices);
  split_info **split = calloc((size_t)nt + 1, sizeof *split);
  if (!readers || !slices || !split) abort();
  for (int i = 0; i < nfwd; i++) {
    const zoo_node *n = &g->nodes[i];
    for (int j = 0; j < n->nin; j++) {
      readers[n->in[j]]++;
      if (n->op == ZOO_OP_SLICE && n->attrs.dims[0].sym == 0) slices[n->in[j]]++;
    }
  }
  for (int t = 0; t < nt; t++) {
    if (slices[t] < 2 || slices[t] != readers[t]) continue;
    const zoo_type *ty = &g->tensors[t].type;
    split_info *s = calloc(1, sizeof *s);
    s->pieces = calloc((size_t)slices[t], sizeof *s->pieces);
    if (!s->pieces) abort();
    s->axis = -1;
    int ok = 1;
    for (int i = 0; i < nfwd && ok; i++) {
      const zoo_node *n = &g->nodes[i];
      if (n->op != ZOO_OP_SLICE || n->in[0] != t) continue;
      int axis = (int)(n->attrs.i[0] < 0 ? n->attrs.i[0] + ty->ndim : n->attrs.i[0]);
      if (s->axis >= 0 && axis != s->axis) ok = 0;
      s->axis = axis;
      split_piece pc = {n->attrs.i[1], n->attrs.dims[0].coef, -1, i};
      for (int k = 0; k < s->npieces && ok; k++) /* disjoint */
        ok = pc.start + pc.len <= s->pieces[k].start || s->pieces[k].start + s->pieces[k].len <= pc.start;
      s->pieces[s->npieces++] = pc;
    }
    if (ok && ty->dim[s->axis].sym == 0) {
      split[t] = s;
    } else {
      free(s->pieces);
      free(s);
    }
  }
  free(readers);
  free(slices);
  return split;
}

/* Once every slice of x has handed in its gradient: x's gradient, the pieces
 * in order with zeros between them, or -1 when no slice had one. */
static int split_gradient(zoo_grad_ctx *c, int x, split_info *s) {
  int any = 0;
  for (int k = 0; k < s->npieces; k++) any |= s->pieces[k].grad >= 0;
  if (!any) return -1;
  for (int a = 1; a < s->npieces; a++) /* by start */
    for (int b = a; b > 0 && s->pieces[b - 1].start > s->pieces[b].start; b--) {
      split_piece tmp = s->pieces[b];
      s->pieces[b] = s->pieces[b - 1];
      s->pieces[b - 1] = tmp;
    }
  int64_t full = type_of(c, x).dim[s->axis].coef, at = 0;
  int g = -1;
  for (int k = 0; k <= s->npieces; k++) {
    int64_t start = k < s->npieces ? s->pieces[k].start : full;
    int part;
    if (start > at) { /* a gap */
      part = slice_of(c, x, s->axis, at, zoo_dim_const(start - at), 1);
      g = g < 0 ? part : concat_of(c, g, part, s->axis);
    }
    if (k == s->npieces) break;
    const split_piece *p = &s->pieces[k];
    part = p->grad >= 0 ? p->grad : slice_of(c, x, s->axis, p->start, zoo_dim_const(p->len), 1);
    g = g < 0 ? part : concat_of(c, g, part, s->axis);
    at = p->start + p->len;
  }
  return g;
}

int zoo_autodiff(zoo_graph *g, int loss, int seed, zoo_diag *d) {
  zoo_type tl = g->tensors[loss].type, ts = g->tensors[seed].type;
  if (!zoo_type_eq(&tl, &ts)) {
    char a[128], b[128];
    zoo_error(d, zoo_nospan, "autodiff: the seed %s does not have the loss's type %s",
              zoo_type_str(g, &ts, a, sizeof a), zoo_type_str(g, &tl, b, sizeof b));
    return -1;
  }
  int nt = g->ntensors, nfwd = g->nnodes;

  /* Which tensors depend on something differentiable (a parameter, an f32 input)
   * through differentiable ops: only they need gradients. */
  char *needs = calloc((size_t)nt + 1, 1);
  int *grad = malloc(((size_t)nt + 1) * sizeof *grad);
  if (!needs || !grad) abort();
  for (int t = 0; t < nt; t++) {
    const zoo_tensor *x = &g->tensors[t];
    needs[t] = x->type.dtype == ZOO_F32 && (x->kind == ZOO_T_PARAM || x->kind == ZOO_T_INPUT);
    grad[t] = -1;
  }
  for (int i = 0; i < nfwd; i++) {
    const zoo_node *n = &g->nodes[i];
    if (!(zoo_ops[n->op].flags & ZOO_OPF_GRAD)) continue;
    int any = 0;
    for (int j = 0; j < n->nin; j++) any |= needs[n->in[j]];
    for (int k = 0; k < n->nout; k++)
      needs[n->out[k]] = any && g->tensors[n->out[k]].type.dtype == ZOO_F32;
  }
  grad[loss] = seed;
  split_info **split = find_splits(g, nfwd);

  int rc = 0;
  for (int i = nfwd - 1; i >= 0 && rc == 0; i--) {
    zoo_node n = g->nodes[i]; /* a copy: rules append nodes, which may move g->nodes */
    if (!(zoo_ops[n.op].flags & ZOO_OPF_GRAD)) continue;
    split_info *sp = n.op == ZOO_OP_SLICE ? split[n.in[0]] : NULL;
    if (sp) { /* hand the gradient in; the last slice assembles x's */
      int x = n.in[0];
      for (int k = 0; k < sp->npieces; k++)
        if (sp->pieces[k].node == i) sp->pieces[k].grad = grad[n.out[0]];
      if (++sp->done == sp->npieces && needs[x]) {
        zoo_grad_ctx c = {.g = g, .d = d, .span = n.span};
        grad[x] = split_gradient(&c, x, sp);
      }
      continue;
    }
    int dout[ZOO_MAX_OUT], any_out = 0, any_in = 0;
    for (int k = 0; k < ZOO_MAX_OUT; k++) {
      dout[k] = k < n.nout ? grad[n.out[k]] : -1;
      any_out |= dout[k] >= 0;
    }
    zoo_grad_ctx c = {.g = g, .d = d, .span = n.span};
    for (int j = 0; j < n.nin; j++) {
      c.want[j] = needs[n.in[j]] && g->tensors[n.in[j]].type.dtype == ZOO_F32;
      any_in |= c.want[j];
    }
    if (!any_out || !any_in) continue;
    int din[ZOO_MAX_IN];
    for (int j = 0; j < ZOO_MAX_IN; j++) din[j] = -1;
    if (grad_rules[n.op](&c, &n, dout, din) != 0) {
      rc = -1;
      break;
    }
    for (int j = 0; j < n.nin; j++) {
      if (din[j] < 0 || !c.want[j]) continue;
      int x = n.in[j];
      zoo_type tx = g->tensors[x].type, tg = g->tensors[din[j]].type;
      if (!zoo_type_eq(&tx, &tg)) {
        char a[128], b[128];
        fprintf(stderr,
                "zoo: internal error: the gradient rule of %s gave input %d the type %s, "
                "not %s\n",
                zoo_ops[n.op].name, j, zoo_type_str(g, &tg, a, sizeof a),
                zoo_type_str(g, &tx, b, sizeof b));
        abort();
      }
      /* a tensor used more than once sums its gradients */
      grad[x] = grad[x] < 0 ? din[j] : op2(&c, ZOO_OP_ADD, grad[x], din[j]);
    }
  }
  for (int t = 0; t < nt; t++)
    if (split[t]) free(split[t]->pieces), free(split[t]);
  free(split);
  for (int t = 0; t < nt && rc == 0; t++)
    if (grad[t] >= 0 && t != loss) g->tensors[t].grad = grad[t];
  if (rc == 0) g->tensors[loss].grad = seed;
  free(needs);
  free(grad);
  return rc;
}
