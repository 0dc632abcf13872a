/* cpu_ops.c: the reference kernels, one zoo_cpu_<name> per row of ops.def.
 *
 * Each kernel does exactly what the op's line in ops.def says, in plain C. They
 * are the oracle every GPU kernel is checked against, so they favour the obvious
 * loop over the fast one; long sums (norm statistics, logsumexp, attention
 * denominators, reductions) accumulate in double and store f32. The heavy ones
 * (linear, matmul, attention, the losses) run their outer loop with OpenMP,
 * only above a work threshold (an `if` clause: waking threads costs more than
 * small loops); each thread writes disjoint outputs, so results do not depend
 * on the thread count. Temporaries come from the executor's scratch
 * (zoo_cpu_scratch), so a step allocates nothing.
 *
 * Letters: N rows (all leading axes flattened), C channels, V vocabulary,
 * B batch, H heads, T time, F feature width of q and k, Dv value width.
 */
#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu.h"
#include "rng.h"

/* ---------------------------------------------------------------------------
 * Helpers */

/* Hot kernels are compiled for AVX2 and for any x86-64; the loader picks one. */
#define ZOO_CPU_CLONES __attribute__((target_clones("avx2", "default")))

/* GCC vector types for the explicitly vectorised loops (lane-wise IEEE
 * arithmetic: every path, clone and machine computes the same bits). */
typedef float f32x8 __attribute__((vector_size(32)));
typedef float f32x4 __attribute__((vector_size(16)));
typedef int32_t i32x8 __attribute__((vector_size(32)));
typedef double f64x4 __attribute__((vector_size(32)));
typedef int64_t i64x4 __attribute__((vector_size(32)));

/* A tensor's concrete shape. */
typedef struct shape {
  int nd;
  int64_t d[ZOO_MAX_DIMS];
  int64_t n; /* elements */
} shape;

static shape shape_of(zoo_cpu *c, int t) {
  shape s;
  s.nd = zoo_cpu_dims(c, t, s.d);
  s.n = 1;
  for (int k = 0; k < s.nd; k++) s.n *= s.d[k];
  return s;
}

static float *in_f(zoo_cpu *c, const zoo_node *n, int i) { return zoo_cpu_f32(c, n->in[i]); }
static int32_t *in_i(zoo_cpu *c, const zoo_node *n, int i) { return zoo_cpu_i32(c, n->in[i]); }
static float *out_f(zoo_cpu *c, const zoo_node *n, int k) { return zoo_cpu_f32(c, n->out[k]); }
static shape in_shape(zoo_cpu *c, const zoo_node *n, int i) { return shape_of(c, n->in[i]); }
static shape out_shape(zoo_cpu *c, const zoo_node *n, int k) { return shape_of(c, n->out[k]); }

/* The product of the dims of s before axis k. */
static int64_t prod_before(const shape *s, int k) {
  int64_t p = 1;
  for (int i = 0; i < k; i++) p *= s->d[i];
  return p;
}

static int64_t prod_after(const shape *s, int k) {
  int64_t p = 1;
  for (int i = k + 1; i < s->nd; i++) p *= s->d[i];
  return p;
}

/* A possibly negative axis attribute as an index into s. */
static int norm_axis(int64_t axis, int nd) { return (int)(axis < 0 ? axis + nd : axis); }

/* Sets c->err and returns -1. */
__attribute__((format(printf, 2, 3))) static int cpu_fail(zoo_cpu *c, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->err, sizeof c->err, fmt, ap);
  va_end(ap);
  return -1;
}

/* n zeroed elements of `size` bytes from the executor's scratch (see
 * zoo_cpu_scratch): kernels' temporaries without an allocation per step. */
static void *scratch_zeroed(zoo_cpu *c, size_t n, size_t size) {
  void *p = zoo_cpu_scratch(c, n * size);
  memset(p, 0, n * size);
  return p;
}

/* Dropout's keep decision, shared by dropout and softmax_attention: element
 * `index` of stream `stream` is kept when its uniform draw is >= p. */
static int keep(uint64_t seed, int64_t stream, int64_t index, float p) {
  return zoo_rng_uniform(seed, (zoo_u64)stream, (zoo_u64)index) >= p;
}

/* ---------------------------------------------------------------------------
 * Broadcasting. The output is walked row by row (a row = the last axis); each
 * input has a stride per output axis, 0 where it is broadcast. */

typedef struct bcast {
  int nd;                            /* output axes (at least 1) */
  int64_t od[ZOO_MAX_DIMS];          /* output dims */
  int64_t st[3][ZOO_MAX_DIMS];       /* per input, per output axis */
  int64_t rows, last;
} bcast;

static void bcast_init(bcast *b, zoo_cpu *c, const zoo_node *n, int nin) {
  shape o = out_shape(c, n, 0);
  if (o.nd == 0) o.nd = 1, o.d[0] = 1;
  b->nd = o.nd;
  memcpy(b->od, o.d, sizeof o.d);
  for (int i = 0; i < nin; i++) {
    shape s = in_shape(c, n, i);
    int64_t stride = 1;
    for (int k = o.nd - 1; k >= 0; k--) {
      int j = s.nd - o.nd + k;
      b->st[i][k] = (j < 0 || s.d[j] == 1) ? 0 : stride;
      if (j >= 0) stride *= s.d[j];
    }
  }
  b->last = o.d[o.nd - 1];
  b->rows = b->last ? o.n / b->last : 0;
  if (o.n == 0) b->rows = 0;
}

/* Offsets of row r's first element in each input. */
static void bcast_row(const bcast *b, int nin, int64_t r, int64_t *off) {
  for (int i = 0; i < nin; i++) off[i] = 0;
  for (int k = b->nd - 2; k >= 0; k--) {
    int64_t idx = r % b->od[k];
    r /= b->od[k];
    for (int i = 0; i < nin; i++) off[i] += idx * b->st[i][k];
  }
}

/* One row of a binary op: y[j] = a[j*sa] op b[j*sb]. */
static void binary_row(zoo_op op, float *y, const float *a, int64_t sa, const float *b,
                       int64_t sb, int64_t n) {
  if (sa == 1 && sb == 1) { /* the common case, in loops the compiler vectorises */
    switch (op) {
    case ZOO_OP_ADD:
#pragma omp simd
      for (int64_t j = 0; j < n; j++) y[j] = a[j] + b[j];
      return;
    case ZOO_OP_SUB:
#pragma omp simd
      for (int64_t j = 0; j < n; j++) y[j] = a[j] - b[j];
      return;
    case ZOO_OP_MUL:
#pragma omp simd
      for (int64_t j = 0; j < n; j++) y[j] = a[j] * b[j];
      return;
    default: break;
    }
  }
  switch (op) {
  case ZOO_OP_ADD: for (int64_t j = 0; j < n; j++) y[j] = a[j * sa] + b[j * sb]; break;
  case ZOO_OP_SUB: for (int64_t j = 0; j < n; j++) y[j] = a[j * sa] - b[j * sb]; break;
  case ZOO_OP_MUL: for (int64_t j = 0; j < n; j++) y[j] = a[j * sa] * b[j * sb]; break;
  case ZOO_OP_DIV: for (int64_t j = 0; j < n; j++) y[j] = a[j * sa] / b[j * sb]; break;
  case ZOO_OP_GT: for (int64_t j = 0; j < n; j++) y[j] = a[j * sa] > b[j * sb] ? 1.0f : 0.0f; break;
  default: abort();
  }
}

static int binary(zoo_cpu *c, const zoo_node *n) {
  bcast b;
  bcast_init(&b, c, n, 2);
  const float *A = in_f(c, n, 0), *B = in_f(c, n, 1);
  float *Y = out_f(c, n, 0);
#pragma omp parallel for if (b.rows * b.last > (1 << 17))
  for (int64_t r = 0; r < b.rows; r++) {
    int64_t off[2];
    bcast_row(&b, 2, r, off);
    binary_row(n->op, Y + r * b.last, A + off[0], b.st[0][b.nd - 1], B + off[1],
               b.st[1][b.nd - 1], b.last);
  }
  return 0;
}

int zoo_cpu_add(zoo_cpu *c, const zoo_node *n) { return binary(c, n); }
int zoo_cpu_sub(zoo_cpu *c, const zoo_node *n) { return binary(c, n); }
int zoo_cpu_mul(zoo_cpu *c, const zoo_node *n) { return binary(c, n); }
int zoo_cpu_div(zoo_cpu *c, const zoo_node *n) { return binary(c, n); }
int zoo_cpu_gt(zoo_cpu *c, const zoo_node *n) { return binary(c, n); }

/* where (cond, a, b) -> cond != 0 ? a : b, broadcast */
int zoo_cpu_where(zoo_cpu *c, const zoo_node *n) {
  bcast b;
  bcast_init(&b, c, n, 3);
  const float *C = in_f(c, n, 0), *A = in_f(c, n, 1), *B = in_f(c, n, 2);
  float *Y = out_f(c, n, 0);
  int k = b.nd - 1;
#pragma omp parallel for if (b.rows * b.last > (1 << 17))
  for (int64_t r = 0; r < b.rows; r++) {
    int64_t off[3];
    bcast_row(&b, 3, r, off);
    float *y = Y + r * b.last;
    for (int64_t j = 0; j < b.last; j++)
      y[j] = C[off[0] + j * b.st[0][k]] != 0 ? A[off[1] + j * b.st[1][k]]
                                             : B[off[2] + j * b.st[2][k]];
  }
  return 0;
}

/* ---------------------------------------------------------------------------
 * Unary elementwise ops */

static float softplusf(float x) { return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))); }
static float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }
static float geluf(float x) { return 0.5f * x * (1.0f + erff(x * (float)M_SQRT1_2)); }

/* d gelu / dx = Phi(x) + x phi(x) */
static float gelu_gradf(float x) {
  float cdf = 0.5f * (1.0f + erff(x * (float)M_SQRT1_2));
  float pdf = expf(-0.5f * x * x) * (float)(0.5 * M_2_SQRTPI * M_SQRT1_2);
  return cdf + x * pdf;
}

static float unary_one(zoo_op op, const zoo_attrs *a, float x) {
  switch (op) {
  case ZOO_OP_NEG: return -x;
  case ZOO_OP_EXP: return expf(x);
  case ZOO_OP_LOG: return logf(x);
  case ZOO_OP_SQRT: return sqrtf(x);
  case ZOO_OP_RSQRT: return 1.0f / sqrtf(x);
  case ZOO_OP_SQUARE: return x * x;
  case ZOO_OP_SIGMOID: return sigmoidf(x);
  case ZOO_OP_SILU: return x * sigmoidf(x);
  case ZOO_OP_SOFTPLUS: return softplusf(x);
  case ZOO_OP_RELU: return x > 0 ? x : 0.0f;
  case ZOO_OP_GELU: return geluf(x);
  case ZOO_OP_TANH: return tanhf(x);
  case ZOO_OP_SIN: return sinf(x);
  case ZOO_OP_COS: return cosf(x);
  case ZOO_OP_ADDS: return x + (float)a->f[0];
  case ZOO_OP_MULS: return x * (float)a->f[0];
  case ZOO_OP_POWS: return powf(x, (float)a->f[0]);
  default: abort();
  }
}

static int unary(zoo_cpu *c, const zoo_node *n) {
  const float *x = in_f(c, n, 0);
  float *y = out_f(c, n, 0);
  int64_t len = c->numel[n->out[0]];
#pragma omp parallel for if (len > (1 << 17))
  for (int64_t i = 0; i < len; i++) y[i] = unary_one(n->op, &n->attrs, x[i]);
  return 0;
}

int zoo_cpu_neg(zoo_cpu *c, const zoo_node *n) { return unary(c, n); }
int zoo_cpu_exp(zoo_cpu *c, const zoo_node *n) { return unary(c, n); }
int zoo_cpu_log(zoo_cpu *c, const zoo_node *n) { return unary(c, n); }
int zoo_cpu_sqrt(zoo_cpu *c, const zoo_node *n) { return unary(c, n); }
int zoo_cpu_rsqrt(zoo_cpu *c, const zoo_node *n) { return unary(c, n); }
int zoo_cpu_square(zoo_cpu *c, const zoo_node *n) { return unary(c, n); }
int zoo_cpu_sigmoid(zoo_cpu *c, const zoo_node *n) { return unary(c, n); }
int zoo_cpu_silu(zoo_cpu *c, const zoo_node *n) { return unary(c, n); }
int zoo_cpu_softplus(zoo_cpu *c, const zoo_node *n) { return unary(c, n); }
int zoo_cpu_relu(zoo_cpu *c, const zoo_node *n) { return unary(c, n); }
int zoo_cpu_gelu(zoo_cpu *c, const zoo_node *n) { return unary(c, n); }
int zoo_cpu_tanh(zoo_cpu *c, const zoo_node *n) { return unary(c, n); }
int zoo_cpu_sin(zoo_cpu *c, const zoo_node *n) { return unary(c, n); }
int zoo_cpu_cos(zoo_cpu *c, const zoo_node *n) { return unary(c, n); }
int zoo_cpu_adds(zoo_cpu *c, const zoo_node *n) { return unary(c, n); }
int zoo_cpu_muls(zoo_cpu *c, const zoo_node *n) { return unary(c, n); }
int zoo_cpu_pows(zoo_cpu *c, const zoo_node *n) { return unary(c, n); }

/* gelu_bwd (dy, x) -> dy * gelu'(x) */
int zoo_cpu_gelu_bwd(zoo_cpu *c, const zoo_node *n) {
  const float *dy = in_f(c, n, 0), *x = in_f(c, n, 1);
  float *dx = out_f(c, n, 0);
  int64_t len = c->numel[n->out[0]];
#pragma omp parallel for if (len > (1 << 17))
  for (int64_t i = 0; i < len; i++) dx[i] = dy[i] * gelu_gradf(x[i]);
  return 0;
}

/* dropout (x; f0 = p, i0 = stream): element i is kept when
 * zoo_rng_uniform(seed, stream, i) >= p, and then scaled by 1 / (1 - p). The
 * index is the element's flat (row-major) index in x. */
int zoo_cpu_dropout(zoo_cpu *c, const zoo_node *n) {
  const float *x = in_f(c, n, 0);
  float *y = out_f(c, n, 0);
  int64_t len = c->numel[n->out[0]];
  float p = (float)n->attrs.f[0];
  if (!c->training || p == 0.0f) {
    memcpy(y, x, (size_t)len * sizeof *y);
    return 0;
  }
  float scale = 1.0f / (1.0f - p);
  int64_t stream = n->attrs.i[0];
#pragma omp parallel for if (len > (1 << 17))
  for (int64_t i = 0; i < len; i++) y[i] = keep(c->seed, stream, i, p) ? x[i] * scale : 0.0f;
  return 0;
}

/* ---------------------------------------------------------------------------
 * Reductions */

/* sum, mean (x; axis, keepdim): x viewed as [outer, n, inner]. */
static int reduce_axis(zoo_cpu *c, const zoo_node *n, int mean) {
  shape s = in_shape(c, n, 0);
  int a = norm_axis(n->attrs.i[0], s.nd);
  int64_t outer = prod_before(&s, a), len = s.d[a], inner = prod_after(&s, a);
  const float *x = in_f(c, n, 0);
  float *y = out_f(c, n, 0);
#pragma omp parallel for if (outer * inner * len > (1 << 17))
  for (int64_t oi = 0; oi < outer * inner; oi++) {
    int64_t o = oi / inner, i = oi % inner;
    double acc = 0;
    for (int64_t k = 0; k < len; k++) acc += x[(o * len + k) * inner + i];
    y[oi] = (float)(mean ? acc / (double)len : acc);
  }
  return 0;
}

int zoo_cpu_sum(zoo_cpu *c, const zoo_node *n) { return reduce_axis(c, n, 0); }
int zoo_cpu_mean(zoo_cpu *c, const zoo_node *n) { return reduce_axis(c, n, 1); }

/* reduce_to (x; dims = target): sums x over the axes on which the target is
 * broadcast. Sequential over x, accumulating in double. */
int zoo_cpu_reduce_to(zoo_cpu *c, const zoo_node *n) {
  bcast b; /* walk x's rows; "input" 0 is the target, strided in x's axes */
  shape x = in_shape(c, n, 0), t = out_shape(c, n, 0);
  if (x.nd == 0) x.nd = 1, x.d[0] = 1;
  b.nd = x.nd;
  memcpy(b.od, x.d, sizeof x.d);
  int64_t stride = 1;
  for (int k = x.nd - 1; k >= 0; k--) {
    int j = t.nd - x.nd + k;
    b.st[0][k] = (j < 0 || t.d[j] == 1) ? 0 : stride;
    if (j >= 0) stride *= t.d[j];
  }
  b.last = x.d[x.nd - 1];
  b.rows = b.last ? x.n / b.last : 0;
  double *acc = scratch_zeroed(c, (size_t)t.n, sizeof *acc);
  const float *X = in_f(c, n, 0);
  int64_t sl = b.st[0][b.nd - 1];
  for (int64_t r = 0; r < b.rows; r++) {
    int64_t off;
    bcast_row(&b, 1, r, &off);
    const float *xr = X + r * b.last;
    for (int64_t j = 0; j < b.last; j++) acc[off + j * sl] += xr[j];
  }
  float *y = out_f(c, n, 0);
  for (int64_t i = 0; i < t.n; i++) y[i] = (float)acc[i];
  return 0;
}

/* Mean and 1/sqrt(var + eps) (biased variance) of one row, in double. */
static void row_moments(const float *x, int64_t C, double eps, double *mean, double *rstd) {
  double m = 0, v = 0;
#pragma omp simd reduction(+ : m)
  for (int64_t j = 0; j < C; j++) m += x[j];
  m /= (double)C;
#pragma omp simd reduction(+ : v)
  for (int64_t j = 0; j < C; j++) v += (x[j] - m) * (x[j] - m);
  v /= (double)C;
  *mean = m;
  *rstd = 1.0 / sqrt(v + eps);
}

/* layernorm (x, [w, b]; eps) over the last axis */
/* Where element (row r, column j) of a [N, C] tensor whose rows run T per
 * batch lies in split_heads of it with H heads ([.., H, T, C / H]); with
 * H = 0, where it lies in the tensor itself. layernorm's i0 (ops.def). */
static inline int64_t heads_at(int64_t r, int64_t j, int64_t C, int64_t H, int64_t T) {
  if (H == 0) return r * C + j;
  int64_t F = C / H, b = r / T, h = j / F;
  return ((b * H + h) * T + r % T) * F + j % F;
}

int zoo_cpu_layernorm(zoo_cpu *c, const zoo_node *n) {
  shape s = in_shape(c, n, 0);
  int64_t C = s.d[s.nd - 1], N = C ? s.n / C : 0;
  int64_t H = n->attrs.i[0], T = s.nd > 1 ? s.d[s.nd - 2] : 1;
  const float *X = in_f(c, n, 0);
  const float *w = n->nin > 1 ? in_f(c, n, 1) : NULL, *b = n->nin > 2 ? in_f(c, n, 2) : NULL;
  float *Y = out_f(c, n, 0);
  double eps = n->attrs.f[0];
#pragma omp parallel for if (N * C > (1 << 16))
  for (int64_t r = 0; r < N; r++) {
    const float *x = X + r * C;
    double mean, rstd;
    row_moments(x, C, eps, &mean, &rstd);
    for (int64_t j = 0; j < C; j++) {
      double v = (x[j] - mean) * rstd;
      if (w) v *= w[j];
      if (b) v += b[j];
      Y[heads_at(r, j, C, H, T)] = (float)v;
    }
  }
  return 0;
}

/* linear_layernorm (x, w, [g, [b]]) -> p, y: linear(x, w), then layernorm of
 * p, each as on its own (the same numbers, bit for bit). */
int zoo_cpu_linear_layernorm(zoo_cpu *c, const zoo_node *n) {
  zoo_node part = *n;
  part.attrs = (zoo_attrs){0};
  part.nin = 2, part.nout = 1; /* p = linear(x, w), no bias */
  if (zoo_cpu_linear(c, &part) != 0) return -1;
  part = *n;
  part.nin = n->nin - 1, part.nout = 1;
  part.in[0] = n->out[0];
  for (int k = 2; k < n->nin; k++) part.in[k - 1] = n->in[k];
  part.out[0] = n->out[1];
  return zoo_cpu_layernorm(c, &part);
}

/* Row chunks for per-channel sums over rows (weight gradients): each chunk of
 * ROW_CHUNK rows sums into its own partial, and the partials are added in chunk
 * order, so the result does not depend on the number of threads. */
enum { ROW_CHUNK = 128 };

/* layernorm_bwd (dy, x, [w]) -> dx, dw, db. With xh = (x - mean) rstd and
 * g = dy w: dx = rstd (g - mean(g) - xh mean(g xh)), dw = sum dy xh, db = sum dy. */
int zoo_cpu_layernorm_bwd(zoo_cpu *c, const zoo_node *n) {
  shape s = in_shape(c, n, 1);
  int64_t C = s.d[s.nd - 1], N = C ? s.n / C : 0;
  int64_t H = n->attrs.i[0], T = s.nd > 1 ? s.d[s.nd - 2] : 1; /* dy split into heads when H > 0 */
  const float *DY = in_f(c, n, 0), *X = in_f(c, n, 1);
  const float *w = n->nin > 2 ? in_f(c, n, 2) : NULL;
  float *DX = out_f(c, n, 0), *dw = out_f(c, n, 1), *db = out_f(c, n, 2);
  double eps = n->attrs.f[0];
  int64_t nchunks = (N + ROW_CHUNK - 1) / ROW_CHUNK;
  /* [chunk][dw | db], then g, xh and dy rows for each thread */
  double *part = scratch_zeroed(c, (size_t)(nchunks * 2 * C + omp_get_max_threads() * 3 * C), sizeof *part);
#pragma omp parallel for if (N * C > (1 << 16))
  for (int64_t ch = 0; ch < nchunks; ch++) {
    double *pw = part + ch * 2 * C, *pb = pw + C;
    double *g = part + nchunks * 2 * C + omp_get_thread_num() * 3 * C, *xh = g + C;
    for (int64_t r = ch * ROW_CHUNK; r < N && r < (ch + 1) * ROW_CHUNK; r++) {
      const float *x = X + r * C;
      double mean, rstd, mg = 0, mgx = 0, *dy = g + 2 * C; /* dy's row gathered */
      for (int64_t j = 0; j < C; j++) dy[j] = DY[heads_at(r, j, C, H, T)];
      row_moments(x, C, eps, &mean, &rstd);
#pragma omp simd reduction(+ : mg, mgx)
      for (int64_t j = 0; j < C; j++) {
        g[j] = dy[j] * (w ? w[j] : 1.0);
        xh[j] = (x[j] - mean) * rstd;
        mg += g[j];
        mgx += g[j] * xh[j];
      }
      mg /= (double)C;
      mgx /= (double)C;
#pragma omp simd
      for (int64_t j = 0; j < C; j++) {
        DX[r * C + j] = (float)(rstd * (g[j] - mg - xh[j] * mgx));
        pw[j] += dy[j] * xh[j];
        pb[j] += dy[j];
      }
    }
  }
  for (int64_t j = 0; j < C; j++) {
    double sw = 0, sb = 0;
    for (int64_t ch = 0; ch < nchunks; ch++) sw += part[ch * 2 * C + j], sb += part[ch * 2 * C + C + j];
    dw[j] = w ? (float)sw : 0.0f;
    db[j] = w ? (float)sb : 0.0f;
  }
  return 0;
}

/* 1 / sqrt(mean(x^2) + eps) of one row */
static double row_rms_inv(const float *x, int64_t C, double eps) {
  double m = 0;
  for (int64_t j = 0; j < C; j++) m += (double)x[j] * x[j];
  return 1.0 / sqrt(m / (double)C + eps);
}

/* rmsnorm (x, w; eps): x / sqrt(mean(x^2) + eps) * w */
int zoo_cpu_rmsnorm(zoo_cpu *c, const zoo_node *n) {
  shape s = in_shape(c, n, 0);
  int64_t C = s.d[s.nd - 1], N = C ? s.n / C : 0;
  const float *X = in_f(c, n, 0), *w = in_f(c, n, 1);
  float *Y = out_f(c, n, 0);
#pragma omp parallel for if (N * C > (1 << 17))
  for (int64_t r = 0; r < N; r++) {
    double ri = row_rms_inv(X + r * C, C, n->attrs.f[0]);
    for (int64_t j = 0; j < C; j++) Y[r * C + j] = (float)(X[r * C + j] * ri * w[j]);
  }
  return 0;
}

/* rmsnorm_bwd (dy, x, w) -> dx, dw. With r = 1/rms and g = dy w:
 * dx = r g - x r^3 mean(g x), dw = sum dy x r (in row chunks, as layernorm_bwd). */
int zoo_cpu_rmsnorm_bwd(zoo_cpu *c, const zoo_node *n) {
  shape s = in_shape(c, n, 1);
  int64_t C = s.d[s.nd - 1], N = C ? s.n / C : 0;
  const float *DY = in_f(c, n, 0), *X = in_f(c, n, 1), *w = in_f(c, n, 2);
  float *DX = out_f(c, n, 0), *dw = out_f(c, n, 1);
  int64_t nchunks = (N + ROW_CHUNK - 1) / ROW_CHUNK;
  double *part = scratch_zeroed(c, (size_t)(nchunks * C), sizeof *part);
#pragma omp parallel for if (N * C > (1 << 16))
  for (int64_t ch = 0; ch < nchunks; ch++) {
    double *pw = part + ch * C;
    for (int64_t r = ch * ROW_CHUNK; r < N && r < (ch + 1) * ROW_CHUNK; r++) {
      const float *x = X + r * C, *dy = DY + r * C;
      double ri = row_rms_inv(x, C, n->attrs.f[0]), mgx = 0;
      for (int64_t j = 0; j < C; j++) mgx += (double)dy[j] * w[j] * x[j];
      mgx /= (double)C;
      for (int64_t j = 0; j < C; j++) {
        DX[r * C + j] = (float)(ri * dy[j] * w[j] - x[j] * ri * ri * ri * mgx);
        pw[j] += (double)dy[j] * x[j] * ri;
      }
    }
  }
  for (int64_t j = 0; j < C; j++) {
    double acc = 0;
    for (int64_t ch = 0; ch < nchunks; ch++) acc += part[ch * C + j];
    dw[j] = (float)acc;
  }
  return 0;
}

/* Exponentials of the losses' rows. libm's exp, at some 6 ns a call, was most
 * of a CPU step of the fused head; exp4 takes four at once in plain IEEE
 * operations (the same bits on every machine and code path) and is within
 * 1e-14 relative of libm on its range [-708, 0]: with x = k ln2 + r and
 * |r| <= ln2 / 2, exp(x) = 2^k exp(r), exp(r) by its Taylor series to degree
 * 11, and 2^k written into the exponent bits. k is x / ln2 rounded by adding
 * 1.5 * 2^52, whose low mantissa bits then hold it (two's complement). */

/* v = exp(v), lane by lane. (Vectors go through pointers: a vector argument
 * would have a different ABI in the AVX2 and plain clones.) */
static inline void exp4(f64x4 *v) {
  f64x4 x = *v;
  const double magic = 0x1.8p52, ln2_hi = 6.93147180369123816490e-01,
               ln2_lo = 1.90821492927058770002e-10;
  f64x4 t = x * 1.44269504088896338700 + magic;
  f64x4 k = t - magic;
  f64x4 r = x - k * ln2_hi - k * ln2_lo;
  f64x4 p = r * (1.0 / 39916800) + 1.0 / 3628800;
  p = p * r + 1.0 / 362880, p = p * r + 1.0 / 40320, p = p * r + 1.0 / 5040;
  p = p * r + 1.0 / 720, p = p * r + 1.0 / 120, p = p * r + 1.0 / 24;
  p = p * r + 1.0 / 6, p = p * r + 0.5, p = p * r + 1.0, p = p * r + 1.0;
  i64x4 two_k = ((i64x4)t - 0x4338000000000000LL + 1023) << 52; /* bits of 1.5 * 2^52 */
  *v = p * (f64x4)two_k;
}

/* The maximum of a row (NaN never wins; -inf for an empty row), eight lanes
 * at a time. */
ZOO_CPU_CLONES
static double row_max(const float *x, int64_t V) {
  f32x8 m8 = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
  int64_t j = 0;
  for (; j + 8 <= V; j += 8) {
    f32x8 v;
    memcpy(&v, x + j, sizeof v);
    i32x8 more = v > m8; /* all ones where v wins */
    m8 = (f32x8)(((i32x8)v & more) | ((i32x8)m8 & ~more));
  }
  float m = -INFINITY;
  for (int k = 0; k < 8; k++)
    if (m8[k] > m) m = m8[k];
  for (; j < V; j++)
    if (x[j] > m) m = x[j];
  return m;
}

/* y = exp(x[j] - m) for j in [j0, j0 + n), n <= 4, as four lanes (lanes past
 * n are 0); below -708 counts as -708, NaN stays NaN. */
static inline void exp4_at(f64x4 *y, const float *x, int64_t j0, int n, double m) {
  const f64x4 lo = {-708.0, -708.0, -708.0, -708.0};
  f32x4 xf = {0, 0, 0, 0};
  memcpy(&xf, x + j0, (size_t)n * sizeof(float));
  f64x4 d = __builtin_convertvector(xf, f64x4) - m;
  i64x4 low = d < lo; /* all ones where d < -708 */
  *y = (f64x4)(((i64x4)d & ~low) | ((i64x4)lo & low));
  exp4(y);
  for (int k = n; k < 4; k++) (*y)[k] = 0.0;
}

/* sum_j exp(x[j] - m) over a row, in double, four lanes each summed in order
 * and then added (lane 0 + lane 1) + (lane 2 + lane 3); e[j] gets each term
 * unless e is NULL. Terms below exp(-708) count as exp(-708): nothing beside
 * the maximum's term 1. */
ZOO_CPU_CLONES
static double row_sum_exp(const float *x, int64_t V, double m, double *e) {
  f64x4 acc = {0, 0, 0, 0}, y;
  int64_t j = 0;
  for (; j + 4 <= V; j += 4) {
    exp4_at(&y, x, j, 4, m);
    acc += y;
    if (e) memcpy(e + j, &y, sizeof y);
  }
  if (j < V) {
    exp4_at(&y, x, j, (int)(V - j), m);
    acc += y;
    if (e) memcpy(e + j, &y, (size_t)(V - j) * sizeof(double));
  }
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

/* log(sum(exp(x - max))) + max of one row, in double */
static double row_logsumexp(const float *x, int64_t V) {
  double m = row_max(x, V);
  return m + log(row_sum_exp(x, V, m, NULL));
}

/* g[j] = scale (softmax(x)_j - [j = target]) in f32 for one row, through e
 * (V doubles of room); g may be x itself. cross_entropy_bwd and
 * linear_cross_entropy_bwd both make their gradients here. */
static void row_ce_grad(float *g, const float *x, int64_t V, int64_t target, double scale,
                        double *e) {
  double m = row_max(x, V);
  double w = scale / row_sum_exp(x, V, m, e);
  for (int64_t j = 0; j < V; j++) g[j] = (float)(e[j] * w);
  if (target >= 0 && target < V) g[target] = (float)(e[target] * w - scale);
}

/* softmax over the last axis */
int zoo_cpu_softmax(zoo_cpu *c, const zoo_node *n) {
  shape s = in_shape(c, n, 0);
  int64_t V = s.d[s.nd - 1], N = V ? s.n / V : 0;
  const float *X = in_f(c, n, 0);
  float *Y = out_f(c, n, 0);
#pragma omp parallel for if (N * V > (1 << 17))
  for (int64_t r = 0; r < N; r++) {
    double lse = row_logsumexp(X + r * V, V);
    for (int64_t j = 0; j < V; j++) Y[r * V + j] = (float)exp(X[r * V + j] - lse);
  }
  return 0;
}

int zoo_cpu_logsumexp(zoo_cpu *c, const zoo_node *n) {
  shape s = in_shape(c, n, 0);
  int64_t V = s.d[s.nd - 1], N = V ? s.n / V : 0;
  const float *X = in_f(c, n, 0);
  float *Y = out_f(c, n, 0);
#pragma omp parallel for if (N * V > (1 << 17))
  for (int64_t r = 0; r < N; r++) Y[r] = (float)row_logsumexp(X + r * V, V);
  return 0;
}

/* Checks targets against [0, V) (ignore_index allowed); returns the number of
 * labelled targets, or -1 with c->err set. */
static int64_t check_targets(zoo_cpu *c, const char *op, const int32_t *t, int64_t N, int64_t V,
                             int64_t ignore) {
  int64_t labelled = 0;
  for (int64_t r = 0; r < N; r++) {
    if (t[r] == ignore) continue;
    if (t[r] < 0 || t[r] >= V)
      return cpu_fail(c, "%s: target %d out of range [0, %lld)", op, t[r], (long long)V);
    labelled++;
  }
  return labelled;
}

/* cross_entropy (logits[N, V], targets[N]; ignore): mean over labelled rows of
 * logsumexp(row) - row[target]; 0 when no row is labelled. */
int zoo_cpu_cross_entropy(zoo_cpu *c, const zoo_node *n) {
  shape s = in_shape(c, n, 0);
  int64_t V = s.d[s.nd - 1], N = V ? s.n / V : 0;
  const float *L = in_f(c, n, 0);
  const int32_t *t = in_i(c, n, 1);
  int64_t ignore = n->attrs.i[0];
  int64_t labelled = check_targets(c, "cross_entropy", t, N, V, ignore);
  if (labelled < 0) return -1;
  double *loss = scratch_zeroed(c, (size_t)N, sizeof *loss);
#pragma omp parallel for if (N * V > (1 << 17))
  for (int64_t r = 0; r < N; r++)
    if (t[r] != ignore) loss[r] = row_logsumexp(L + r * V, V) - L[r * V + t[r]];
  double sum = 0; /* in row order, whatever the thread count */
  for (int64_t r = 0; r < N; r++) sum += loss[r];
  out_f(c, n, 0)[0] = labelled ? (float)(sum / (double)labelled) : 0.0f;
  return 0;
}

/* cross_entropy_bwd (dloss, logits, targets) -> dlogits =
 * dloss / labelled * (softmax(row) - onehot(target)) on labelled rows, 0 elsewhere
 * (row_ce_grad, with a row of doubles per thread from the scratch). */
int zoo_cpu_cross_entropy_bwd(zoo_cpu *c, const zoo_node *n) {
  shape s = in_shape(c, n, 1);
  int64_t V = s.d[s.nd - 1], N = V ? s.n / V : 0;
  const float *L = in_f(c, n, 1);
  const int32_t *t = in_i(c, n, 2);
  float *D = out_f(c, n, 0);
  int64_t ignore = n->attrs.i[0];
  int64_t labelled = check_targets(c, "cross_entropy", t, N, V, ignore);
  if (labelled < 0) return -1;
  double scale = labelled ? in_f(c, n, 0)[0] / (double)labelled : 0.0;
  double *ebuf = zoo_cpu_scratch(c, (size_t)(omp_get_max_threads() * V) * sizeof *ebuf);
#pragma omp parallel for if (N * V > (1 << 17))
  for (int64_t r = 0; r < N; r++) {
    float *d = D + r * V;
    if (t[r] == ignore) memset(d, 0, (size_t)V * sizeof *d);
    else row_ce_grad(d, L + r * V, V, t[r], scale, ebuf + omp_get_thread_num() * V);
  }
  return 0;
}

/* Index of the first maximum of a row: the j a scan keeping `if (x[j] >
 * x[best]) best = j` ends with (NaN never wins, and a NaN at 0 is never
 * beaten). The maximum first (vectorised), then its first position. */
static int64_t row_argmax(const float *x, int64_t V) {
  if (V == 0 || isnan(x[0])) return 0;
  double m = row_max(x, V);
  for (int64_t j = 0; j < V; j++)
    if (x[j] == m) return j;
  return 0;
}

int zoo_cpu_argmax(zoo_cpu *c, const zoo_node *n) {
  shape s = in_shape(c, n, 0);
  int64_t V = s.d[s.nd - 1], N = V ? s.n / V : 0;
  const float *X = in_f(c, n, 0);
  int32_t *y = zoo_cpu_i32(c, n->out[0]);
  for (int64_t r = 0; r < N; r++) y[r] = (int32_t)row_argmax(X + r * V, V);
  return 0;
}

static int accuracy_head(zoo_cpu *c, const zoo_node *n);

/* accuracy (logits, targets) -> (correct, labelled) over labelled targets;
 * (h, w, targets): the same from logits = h w^T (accuracy_head, below) */
int zoo_cpu_accuracy(zoo_cpu *c, const zoo_node *n) {
  if (n->nin == 3) return accuracy_head(c, n);
  shape s = in_shape(c, n, 0);
  int64_t V = s.d[s.nd - 1], N = V ? s.n / V : 0;
  const float *L = in_f(c, n, 0);
  const int32_t *t = in_i(c, n, 1);
  int64_t ignore = n->attrs.i[0];
  int64_t correct = 0, labelled = 0;
  for (int64_t r = 0; r < N; r++) {
    if (t[r] == ignore) continue;
    labelled++;
    if (row_argmax(L + r * V, V) == t[r]) correct++;
  }
  float *y = out_f(c, n, 0);
  y[0] = (float)correct;
  y[1] = (float)labelled;
  return 0;
}

/* cross_entropy_step (logits, targets, dloss) -> loss, metrics, dlogits: the
 * three ops it stands for, each on its own (the same numbers, bit for bit). */
int zoo_cpu_cross_entropy_step(zoo_cpu *c, const zoo_node *n) {
  zoo_node part = *n;
  part.nin = 2, part.nout = 1;
  if (zoo_cpu_cross_entropy(c, &part) != 0) return -1;
  part.out[0] = n->out[1];
  if (zoo_cpu_accuracy(c, &part) != 0) return -1;
  part.nin = 3;
  part.in[0] = n->in[2], part.in[1] = n->in[0], part.in[2] = n->in[1];
  part.out[0] = n->out[2];
  return zoo_cpu_cross_entropy_bwd(c, &part);
}

/* ---------------------------------------------------------------------------
 * Movement (f32 and i32 alike: both are 4-byte elements) */

typedef uint32_t word;

static word *in_w(zoo_cpu *c, const zoo_node *n, int i) { return (word *)c->data[n->in[i]]; }
static word *out_w(zoo_cpu *c, const zoo_node *n, int k) { return (word *)c->data[n->out[k]]; }

int zoo_cpu_reshape(zoo_cpu *c, const zoo_node *n) {
  memcpy(out_w(c, n, 0), in_w(c, n, 0), (size_t)c->numel[n->out[0]] * sizeof(word));
  return 0;
}

/* permute: output axis k reads source axis dims[k].coef */
int zoo_cpu_permute(zoo_cpu *c, const zoo_node *n) {
  shape x = in_shape(c, n, 0), y = out_shape(c, n, 0);
  if (y.nd == 0) return zoo_cpu_reshape(c, n);
  int64_t xs[ZOO_MAX_DIMS], st[ZOO_MAX_DIMS]; /* x's strides; per output axis */
  int64_t stride = 1;
  for (int k = x.nd - 1; k >= 0; k--) xs[k] = stride, stride *= x.d[k];
  for (int k = 0; k < y.nd; k++) st[k] = xs[n->attrs.dims[k].coef];
  const word *X = in_w(c, n, 0);
  word *Y = out_w(c, n, 0);
  int64_t last = y.d[y.nd - 1], rows = last ? y.n / last : 0;
#pragma omp parallel for if (y.n > (1 << 17))
  for (int64_t r = 0; r < rows; r++) {
    int64_t off = 0, rem = r;
    for (int k = y.nd - 2; k >= 0; k--) {
      off += (rem % y.d[k]) * st[k];
      rem /= y.d[k];
    }
    for (int64_t j = 0; j < last; j++) Y[r * last + j] = X[off + j * st[y.nd - 1]];
  }
  return 0;
}

/* split_heads: y[p, h, t, e] = x[p, t, h*d + e] */
int zoo_cpu_split_heads(zoo_cpu *c, const zoo_node *n) {
  shape y = out_shape(c, n, 0);
  int64_t H = y.d[y.nd - 3], T = y.d[y.nd - 2], d = y.d[y.nd - 1];
  int64_t P = (H * T * d) != 0 ? y.n / (H * T * d) : 0;
  const word *X = in_w(c, n, 0);
  word *Y = out_w(c, n, 0);
#pragma omp parallel for if (y.n > (1 << 17))
  for (int64_t p = 0; p < P; p++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t t = 0; t < T; t++)
        for (int64_t e = 0; e < d; e++)
          Y[((p * H + h) * T + t) * d + e] = X[(p * T + t) * H * d + h * d + e];
  return 0;
}

/* merge_heads: y[p, t, h*d + e] = x[p, h, t, e] */
int zoo_cpu_merge_heads(zoo_cpu *c, const zoo_node *n) {
  shape x = in_shape(c, n, 0);
  int64_t H = x.d[x.nd - 3], T = x.d[x.nd - 2], d = x.d[x.nd - 1];
  int64_t P = (H * T * d) != 0 ? x.n / (H * T * d) : 0;
  const word *X = in_w(c, n, 0);
  word *Y = out_w(c, n, 0);
#pragma omp parallel for if (x.n > (1 << 17))
  for (int64_t p = 0; p < P; p++)
    for (int64_t t = 0; t < T; t++)
      for (int64_t h = 0; h < H; h++)
        for (int64_t e = 0; e < d; e++)
          Y[(p * T + t) * H * d + h * d + e] = X[((p * H + h) * T + t) * d + e];
  return 0;
}

/* slice (x; axis, start, length): y[o, k, i] = x[o, start + k, i] */
int zoo_cpu_slice(zoo_cpu *c, const zoo_node *n) {
  shape x = in_shape(c, n, 0);
  int a = norm_axis(n->attrs.i[0], x.nd);
  int64_t outer = prod_before(&x, a), inner = prod_after(&x, a), len = x.d[a];
  int64_t start = n->attrs.i[1], ylen = out_shape(c, n, 0).d[a];
  const word *X = in_w(c, n, 0);
  word *Y = out_w(c, n, 0);
  for (int64_t o = 0; o < outer; o++)
    memcpy(Y + o * ylen * inner, X + (o * len + start) * inner,
           (size_t)(ylen * inner) * sizeof(word));
  return 0;
}

/* concat (a, b; axis) */
int zoo_cpu_concat(zoo_cpu *c, const zoo_node *n) {
  shape a = in_shape(c, n, 0), b = in_shape(c, n, 1);
  int ax = norm_axis(n->attrs.i[0], a.nd);
  int64_t outer = prod_before(&a, ax), inner = prod_after(&a, ax);
  int64_t la = a.d[ax] * inner, lb = b.d[ax] * inner; /* elements per outer index */
  const word *A = in_w(c, n, 0), *B = in_w(c, n, 1);
  word *Y = out_w(c, n, 0);
  for (int64_t o = 0; o < outer; o++) {
    memcpy(Y + o * (la + lb), A + o * la, (size_t)la * sizeof(word));
    memcpy(Y + o * (la + lb) + la, B + o * lb, (size_t)lb * sizeof(word));
  }
  return 0;
}

/* shift (x; axis, k): y[t] = x[t - k], zeros where t - k is outside */
int zoo_cpu_shift(zoo_cpu *c, const zoo_node *n) {
  shape x = in_shape(c, n, 0);
  int a = norm_axis(n->attrs.i[0], x.nd);
  int64_t outer = prod_before(&x, a), inner = prod_after(&x, a), len = x.d[a];
  int64_t k = n->attrs.i[1];
  const word *X = in_w(c, n, 0);
  word *Y = out_w(c, n, 0);
  for (int64_t o = 0; o < outer; o++)
    for (int64_t t = 0; t < len; t++) {
      word *y = Y + (o * len + t) * inner;
      int64_t src = t - k;
      if (src < 0 || src >= len) memset(y, 0, (size_t)inner * sizeof(word));
      else memcpy(y, X + (o * len + src) * inner, (size_t)inner * sizeof(word));
    }
  return 0;
}

/* ---------------------------------------------------------------------------
 * Matrix products. All of them come down to C[m, n] += A[m, k] B[k, n] with
 * row-major A and B (transposed operands are copied to that layout first),
 * computed four rows of C at a time, i-k-j order: each C element is the f32 sum
 * C + A[i,0] B[0,j] + A[i,1] B[1,j] + ... in that order, whichever path below
 * computes it (8-wide vector columns, or the scalar tail), so results do not
 * depend on the shape of the blocking or on the machine. (zoo builds with
 * -std=c11, under which gcc does not contract a * b + c into an FMA.) */

/* C[r, 0..n) += sum_p A(r, p) B[p, 0..n) for r < rows (rows <= 4), where
 * A(r, p) = A[r * ar + p * ap] (ap = 1: A row-major; ar = 1: A stored
 * transposed); ldb and ldc are the row strides of B and C. Compiled twice, for
 * AVX2 and for any x86-64, and picked at load time. */
ZOO_CPU_CLONES
static void gemm_rows(float *C, int64_t ldc, const float *A, int64_t ar, int64_t ap,
                      const float *B, int64_t ldb, int64_t k, int64_t n, int rows) {
  int64_t j = 0;
  if (rows == 4) { /* 4 rows x 16 columns of C held in registers over the k loop */
    const float *a0 = A, *a1 = A + ar, *a2 = A + 2 * ar, *a3 = A + 3 * ar;
    float *c0 = C, *c1 = C + ldc, *c2 = C + 2 * ldc, *c3 = C + 3 * ldc;
    for (; j + 16 <= n; j += 16) {
      f32x8 s00, s01, s10, s11, s20, s21, s30, s31;
      memcpy(&s00, c0 + j, 32), memcpy(&s01, c0 + j + 8, 32);
      memcpy(&s10, c1 + j, 32), memcpy(&s11, c1 + j + 8, 32);
      memcpy(&s20, c2 + j, 32), memcpy(&s21, c2 + j + 8, 32);
      memcpy(&s30, c3 + j, 32), memcpy(&s31, c3 + j + 8, 32);
      for (int64_t p = 0; p < k; p++) {
        f32x8 b0, b1;
        memcpy(&b0, B + p * ldb + j, 32);
        memcpy(&b1, B + p * ldb + j + 8, 32);
        float x0 = a0[p * ap], x1 = a1[p * ap], x2 = a2[p * ap], x3 = a3[p * ap];
        s00 += x0 * b0, s01 += x0 * b1;
        s10 += x1 * b0, s11 += x1 * b1;
        s20 += x2 * b0, s21 += x2 * b1;
        s30 += x3 * b0, s31 += x3 * b1;
      }
      memcpy(c0 + j, &s00, 32), memcpy(c0 + j + 8, &s01, 32);
      memcpy(c1 + j, &s10, 32), memcpy(c1 + j + 8, &s11, 32);
      memcpy(c2 + j, &s20, 32), memcpy(c2 + j + 8, &s21, 32);
      memcpy(c3 + j, &s30, 32), memcpy(c3 + j + 8, &s31, 32);
    }
  }
  for (int r = 0; r < rows; r++) { /* the columns left, row by row */
    float *cr = C + r * ldc;
    const float *arow = A + r * ar;
    int64_t jj = j;
    for (; jj + 8 <= n; jj += 8) {
      f32x8 s;
      memcpy(&s, cr + jj, 32);
      for (int64_t p = 0; p < k; p++) {
        f32x8 b;
        memcpy(&b, B + p * ldb + jj, 32);
        s += arow[p * ap] * b;
      }
      memcpy(cr + jj, &s, 32);
    }
    for (; jj < n; jj++) {
      float s = cr[jj];
      for (int64_t p = 0; p < k; p++) s += arow[p * ap] * B[p * ldb + jj];
      cr[jj] = s;
    }
  }
}

/* C[m, n] += A(m, k) B[k, n], with A row-major, or stored transposed ([k, m])
 * when ta: panels of B of GEMM_KC x GEMM_NC (which stay in cache) in order,
 * each swept by blocks of four rows of C spread over the threads. Going through
 * k in blocks continues each C element's sum where the previous block left it,
 * so the order of the terms is unchanged. */
enum { GEMM_KC = 256, GEMM_NC = 512 };

static void gemm(float *C, const float *A, int ta, const float *B, int64_t m, int64_t k,
                 int64_t n) {
  int64_t blocks = (m + 3) / 4, ar = ta ? 1 : k, ap = ta ? m : 1;
  for (int64_t kc = 0; kc < k; kc += GEMM_KC) {
    int64_t kk = k - kc < GEMM_KC ? k - kc : GEMM_KC;
    for (int64_t jc = 0; jc < n; jc += GEMM_NC) {
      int64_t nn = n - jc < GEMM_NC ? n - jc : GEMM_NC;
#pragma omp parallel for schedule(static) if (m * kk * nn > 65536)
      for (int64_t bi = 0; bi < blocks; bi++) {
        int64_t i = bi * 4;
        int rows = (int)(m - i < 4 ? m - i : 4);
        gemm_rows(C + i * n + jc, n, A + i * ar + kc * ap, ar, ap, B + kc * n + jc, n, kk, nn,
                  rows);
      }
    }
  }
}

/* dst[cols, rows] = src[rows, cols]^T */
static void transpose(float *dst, const float *src, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; r++)
    for (int64_t k = 0; k < cols; k++) dst[k * rows + r] = src[r * cols + k];
}

/* linear (x[N, in], w[out, in], [b[out]]) -> y[N, out] = x w^T + b */
int zoo_cpu_linear(zoo_cpu *c, const zoo_node *n) {
  shape ws = in_shape(c, n, 1);
  int64_t O = ws.d[0], I = ws.d[1];
  int64_t N = c->numel[n->out[0]] / (O ? O : 1);
  const float *X = in_f(c, n, 0), *W = in_f(c, n, 1), *b = n->nin > 2 ? in_f(c, n, 2) : NULL;
  float *Y = out_f(c, n, 0);
  float *wt = zoo_cpu_scratch(c, (size_t)(I * O) * sizeof *wt); /* w^T [in, out] */
  transpose(wt, W, O, I);
  for (int64_t r = 0; r < N; r++)
    for (int64_t j = 0; j < O; j++) Y[r * O + j] = b ? b[j] : 0.0f;
  gemm(Y, X, 0, wt, N, I, O);
  return 0;
}

/* matmul (a[..., m, k], b[..., k, n]; i0 = a transposed (stored [..., k, m]),
 * i1 = b transposed (stored [..., n, k])). Batch axes equal, or absent in one
 * operand, which is then shared by every batch. A transposed b is copied to its
 * plain layout first (gemm reads a either way). */
int zoo_cpu_matmul(zoo_cpu *c, const zoo_node *n) {
  shape as = in_shape(c, n, 0), bs = in_shape(c, n, 1), ys = out_shape(c, n, 0);
  int ta = n->attrs.i[0] != 0, tb = n->attrs.i[1] != 0;
  int64_t M = ys.d[ys.nd - 2], Nn = ys.d[ys.nd - 1];
  int64_t K = as.d[as.nd - 1 - ta];
  int64_t batch = prod_before(&ys, ys.nd - 2);
  int64_t bbatch = bs.nd > 2 ? batch : 1;
  const float *A = in_f(c, n, 0), *B = in_f(c, n, 1);
  float *Y = out_f(c, n, 0);
  float *bt = NULL;
  if (tb) { /* [bbatch][K, N] */
    bt = zoo_cpu_scratch(c, (size_t)(bbatch * K * Nn) * sizeof *bt);
    for (int64_t q = 0; q < bbatch; q++) transpose(bt + q * K * Nn, B + q * K * Nn, Nn, K);
    B = bt;
  }
  memset(Y, 0, (size_t)(batch * M * Nn) * sizeof *Y);
  for (int64_t q = 0; q < batch; q++)
    gemm(Y + q * M * Nn, A + (as.nd > 2 ? q : 0) * M * K, ta, B + (bs.nd > 2 ? q : 0) * K * Nn,
         M, K, Nn);
  return 0;
}

/* ---------------------------------------------------------------------------
 * Gather */

/* Checks every id against [0, V). */
static int check_ids(zoo_cpu *c, const char *op, const int32_t *ids, int64_t N, int64_t V) {
  for (int64_t r = 0; r < N; r++)
    if (ids[r] < 0 || ids[r] >= V)
      return cpu_fail(c, "%s: id %d out of range [0, %lld)", op, ids[r], (long long)V);
  return 0;
}

/* embedding (w[V, D], ids[N]) -> y[N, D] = w[ids] */
int zoo_cpu_embedding(zoo_cpu *c, const zoo_node *n) {
  shape ws = in_shape(c, n, 0);
  int64_t V = ws.d[0], D = ws.d[1], N = c->numel[n->in[1]];
  const float *W = in_f(c, n, 0);
  const int32_t *ids = in_i(c, n, 1);
  if (check_ids(c, "embedding", ids, N, V)) return -1;
  float *Y = out_f(c, n, 0);
  for (int64_t r = 0; r < N; r++) memcpy(Y + r * D, W + ids[r] * D, (size_t)D * sizeof *Y);
  return 0;
}

/* embedding_bwd (dy[N, D], ids[N]; dims = [V, D]) -> dw[V, D], dw[ids[r]] += dy[r].
 * Each thread owns a range of columns and walks the rows in order, so the sums
 * are race-free and their order is fixed. */
int zoo_cpu_embedding_bwd(zoo_cpu *c, const zoo_node *n) {
  shape ws = out_shape(c, n, 0);
  int64_t V = ws.d[0], D = ws.d[1], N = c->numel[n->in[1]];
  const float *DY = in_f(c, n, 0);
  const int32_t *ids = in_i(c, n, 1);
  if (check_ids(c, "embedding", ids, N, V)) return -1;
  double *acc = scratch_zeroed(c, (size_t)(V * D), sizeof *acc);
#pragma omp parallel for if (N * D > (1 << 17))
  for (int64_t j = 0; j < D; j++)
    for (int64_t r = 0; r < N; r++) acc[ids[r] * D + j] += DY[r * D + j];
  float *dw = out_f(c, n, 0);
  for (int64_t i = 0; i < V * D; i++) dw[i] = (float)acc[i];
  return 0;
}

int zoo_cpu_arange(zoo_cpu *c, const zoo_node *n) {
  int32_t *y = zoo_cpu_i32(c, n->out[0]);
  int64_t len = c->numel[n->out[0]];
  for (int64_t i = 0; i < len; i++) y[i] = (int32_t)i;
  return 0;
}

/* label_rows (targets; i0 = ignore, i1 = per sequence) -> idx[M], pos, tc[M] */
int zoo_cpu_label_rows(zoo_cpu *c, const zoo_node *n) {
  const int32_t *t = in_i(c, n, 0);
  int32_t *idx = zoo_cpu_i32(c, n->out[0]), *pos = zoo_cpu_i32(c, n->out[1]);
  int32_t *tc = zoo_cpu_i32(c, n->out[2]);
  int64_t N = c->numel[n->in[0]], M = c->numel[n->out[0]], r = 0;
  int32_t ignore = (int32_t)n->attrs.i[0];
  for (int64_t j = 0; j < N; j++) {
    pos[j] = -1;
    if (t[j] == ignore) continue;
    if (r == M)
      return cpu_fail(c, "label_rows: more than %lld labelled positions (%lld per sequence)",
                      (long long)M, (long long)n->attrs.i[1]);
    idx[r] = (int32_t)j, tc[r] = t[j], pos[j] = (int32_t)r;
    r++;
  }
  for (; r < M; r++) idx[r] = -1, tc[r] = ignore;
  return 0;
}

/* dst[i] = src[map[i]] for `rows` rows of D floats, zeros where map[i] < 0;
 * map[i] must be below `have` (the source's rows). */
static int copy_mapped_rows(zoo_cpu *c, const char *op, float *dst, const float *src,
                            const int32_t *map, int64_t rows, int64_t have, int64_t D) {
  for (int64_t i = 0; i < rows; i++) {
    if (map[i] >= have) return cpu_fail(c, "%s: row %d of %lld", op, map[i], (long long)have);
    if (map[i] < 0)
      memset(dst + i * D, 0, (size_t)D * sizeof *dst);
    else
      memcpy(dst + i * D, src + map[i] * D, (size_t)D * sizeof *dst);
  }
  return 0;
}

/* gather_rows (x[N, D], idx[M], pos) -> y[M, D] = x[idx] */
int zoo_cpu_gather_rows(zoo_cpu *c, const zoo_node *n) {
  shape ys = out_shape(c, n, 0);
  int64_t M = ys.d[0], D = ys.d[1];
  return copy_mapped_rows(c, "gather_rows", out_f(c, n, 0), in_f(c, n, 0), in_i(c, n, 1), M,
                          c->numel[n->in[0]] / D, D);
}

/* scatter_rows (dy[M, D], pos[N]) -> dx[N, D] = dy[pos] */
int zoo_cpu_scatter_rows(zoo_cpu *c, const zoo_node *n) {
  shape ds = in_shape(c, n, 0);
  return copy_mapped_rows(c, "scatter_rows", out_f(c, n, 0), in_f(c, n, 0), in_i(c, n, 1),
                          c->numel[n->in[1]], ds.d[0], ds.d[1]);
}

/* ---------------------------------------------------------------------------
 * Scans and convolutions */

/* cumsum (x; axis): running sum in double */
int zoo_cpu_cumsum(zoo_cpu *c, const zoo_node *n) {
  shape s = in_shape(c, n, 0);
  int a = norm_axis(n->attrs.i[0], s.nd);
  int64_t outer = prod_before(&s, a), len = s.d[a], inner = prod_after(&s, a);
  const float *X = in_f(c, n, 0);
  float *Y = out_f(c, n, 0);
#pragma omp parallel for if (s.n > (1 << 17))
  for (int64_t oi = 0; oi < outer * inner; oi++) {
    int64_t o = oi / inner, i = oi % inner;
    double acc = 0;
    for (int64_t k = 0; k < len; k++) {
      acc += X[(o * len + k) * inner + i];
      Y[(o * len + k) * inner + i] = (float)acc;
    }
  }
  return 0;
}

/* causal_conv1d (x[B, T, C], w[C, 1, K], [b[C]]):
 * y[b, t, c] = b[c] + sum_j w[c, 0, j] x[b, t - K + 1 + j, c], zero before t = 0. */
int zoo_cpu_causal_conv1d(zoo_cpu *c, const zoo_node *n) {
  shape xs = in_shape(c, n, 0);
  int64_t B = xs.d[0], T = xs.d[1], C = xs.d[2], K = in_shape(c, n, 1).d[2];
  const float *X = in_f(c, n, 0), *W = in_f(c, n, 1), *bias = n->nin > 2 ? in_f(c, n, 2) : NULL;
  float *Y = out_f(c, n, 0);
#pragma omp parallel for if (xs.n * K > (1 << 17))
  for (int64_t bt = 0; bt < B * T; bt++) {
    int64_t b = bt / T, t = bt % T;
    for (int64_t ch = 0; ch < C; ch++) {
      float acc = bias ? bias[ch] : 0.0f;
      for (int64_t j = 0; j < K; j++) {
        int64_t s = t - K + 1 + j;
        if (s >= 0) acc += W[ch * K + j] * X[(b * T + s) * C + ch];
      }
      Y[bt * C + ch] = acc;
    }
  }
  return 0;
}

/* causal_conv1d_bwd (dy, x, w) -> dx, dw, db:
 * dx[b, s, c] = sum_j w[c, j] dy[b, s + K - 1 - j, c] (terms inside [0, T)),
 * dw[c, j] = sum_{b,t} dy[b, t, c] x[b, t - K + 1 + j, c], db[c] = sum_{b,t} dy[b, t, c]. */
int zoo_cpu_causal_conv1d_bwd(zoo_cpu *c, const zoo_node *n) {
  shape xs = in_shape(c, n, 1);
  int64_t B = xs.d[0], T = xs.d[1], C = xs.d[2], K = in_shape(c, n, 2).d[2];
  const float *DY = in_f(c, n, 0), *X = in_f(c, n, 1), *W = in_f(c, n, 2);
  float *DX = out_f(c, n, 0), *DW = out_f(c, n, 1), *DB = out_f(c, n, 2);
#pragma omp parallel for if (xs.n * K > (1 << 17))
  for (int64_t bs = 0; bs < B * T; bs++) {
    int64_t b = bs / T, s = bs % T;
    for (int64_t ch = 0; ch < C; ch++) {
      double acc = 0;
      for (int64_t j = 0; j < K; j++) {
        int64_t t = s + K - 1 - j;
        if (t < T) acc += (double)W[ch * K + j] * DY[(b * T + t) * C + ch];
      }
      DX[bs * C + ch] = (float)acc;
    }
  }
  /* dw, db: sums over (b, t) in that order, one row-major pass */
  double *sw = scratch_zeroed(c, (size_t)(C * K + C), sizeof *sw), *sb = sw + C * K;
  for (int64_t b = 0; b < B; b++)
    for (int64_t t = 0; t < T; t++) {
      const float *dy = DY + (b * T + t) * C;
      for (int64_t ch = 0; ch < C; ch++) sb[ch] += dy[ch];
      for (int64_t j = 0; j < K; j++) {
        int64_t s = t - K + 1 + j;
        if (s < 0) continue;
        const float *x = X + (b * T + s) * C;
        for (int64_t ch = 0; ch < C; ch++) sw[ch * K + j] += (double)dy[ch] * x[ch];
      }
    }
  for (int64_t i = 0; i < C * K; i++) DW[i] = (float)sw[i];
  for (int64_t ch = 0; ch < C; ch++) DB[ch] = (float)sb[ch];
  return 0;
}

/* ---------------------------------------------------------------------------
 * Attention intrinsics. Both work one (batch, head) pair at a time: q, k [T, F]
 * and v [T, Dv] are rows of the pair's slices; pairs run in parallel. A pair's
 * rows are contiguous ([B, H, T, W]), or H W floats apart (poly_attention's
 * layout 1, heads interleaved: [B, T, H*W]); the row stride is an argument. */

/* x[T, W] (f32, rows sx floats apart) as xt[W, T] (double): one pair's keys or
 * values with time running along rows, so the loops over j below are
 * contiguous. */
static void to_columns(double *xt, const float *x, int64_t T, int64_t W, int64_t sx, int64_t ld) {
  for (int64_t w = 0; w < W; w++)
    for (int64_t t = T; t < ld; t++) xt[w * ld + t] = 0; /* padding */
  for (int64_t t = 0; t < T; t++)
    for (int64_t w = 0; w < W; w++) xt[w * ld + t] = x[t * sx + w];
}

/* Row i of one pair's poly attention: s[j] = scale q_i.k_j and a[j] = c0 + c1 s
 * + c2 s^2 for j <= i, from kt = k in columns of ld (a multiple of 16, zeros
 * past T); returns z_i = sum_j a[j] + eps. The dot products go sixteen keys at
 * a time (four independent vector sums), each summed over f in order; s has
 * room for ld values (those past i are scratch). */
static inline double poly_row(const zoo_node *n, const float *qi, const double *kt, int64_t i,
                              int64_t ld, int64_t F, double *s, double *a) {
  const double c0 = n->attrs.f[0], c1 = n->attrs.f[1], c2 = n->attrs.f[2];
  const double scale = n->attrs.f[3], eps = n->attrs.f[4];
  for (int64_t j0 = 0; j0 <= i; j0 += 16) {
    f64x4 s0 = {0, 0, 0, 0}, s1 = s0, s2 = s0, s3 = s0, k0, k1, k2, k3;
    for (int64_t f = 0; f < F; f++) {
      const double *kf = kt + f * ld + j0;
      memcpy(&k0, kf, 32), memcpy(&k1, kf + 4, 32), memcpy(&k2, kf + 8, 32), memcpy(&k3, kf + 12, 32);
      double qf = qi[f];
      s0 += qf * k0, s1 += qf * k1, s2 += qf * k2, s3 += qf * k3;
    }
    memcpy(s + j0, &s0, 32), memcpy(s + j0 + 4, &s1, 32);
    memcpy(s + j0 + 8, &s2, 32), memcpy(s + j0 + 12, &s3, 32);
  }
  double z = 0;
#pragma omp simd reduction(+ : z)
  for (int64_t j = 0; j <= i; j++) {
    s[j] *= scale;
    a[j] = c0 + c1 * s[j] + c2 * s[j] * s[j];
    z += a[j];
  }
  return z + eps;
}

/* The attention kernels below work on one (batch, head) pair per call and are
 * compiled twice like gemm_rows (4 or 2 double lanes; the lane sums can differ
 * in the last bits of a double, never visibly in the f32 results). */

/* Doubles of work space one pair of poly_attention or its backward needs
 * (each thread has its own, from the executor's scratch). */
static int64_t poly_ld(int64_t T) { return (T + 15) / 16 * 16; }
static int64_t poly_work(int64_t T, int64_t F, int64_t Dv) { return 2 * (F + Dv + 2) * poly_ld(T) + F; }

/* poly_attention's sizes in the node's layout (ops.def): BH pairs of T rows,
 * q and k rows of F floats lq apart, v and o rows of Dv floats lv apart. */
typedef struct poly_dims {
  int64_t BH, T, F, Dv;
  int64_t hq, hv; /* heads interleaved in q and k, in v and o: H or 0 */
  int64_t lq, lv;
} poly_dims;

/* From q and v at inputs qi, qi + 2: layout 0 [B, H, T, W]; 1 [B, T, H*W];
 * 2 q, k [B, T, H*F] and v, o [B, H, T, Dv]. */
static poly_dims poly_dims_of(zoo_cpu *c, const zoo_node *n, int qi) {
  shape qs = in_shape(c, n, qi), vs = in_shape(c, n, qi + 2);
  int64_t layout = n->attrs.i[0], H = n->attrs.i[1];
  poly_dims d = {0};
  if (layout == 0) {
    d.BH = qs.d[0] * qs.d[1], d.T = qs.d[2], d.F = qs.d[3];
    d.lq = d.F;
  } else {
    d.hq = H;
    d.BH = qs.d[0] * H, d.T = qs.d[1], d.F = qs.d[2] / H;
    d.lq = qs.d[2];
  }
  if (layout == 1) {
    d.hv = H;
    d.Dv = vs.d[2] / H, d.lv = vs.d[2];
  } else {
    d.Dv = vs.d[3], d.lv = d.Dv;
  }
  return d;
}

/* Where pair p's slice of an operand W floats wide per head starts, with H
 * heads interleaved (0: none). */
static int64_t poly_pair_at(const poly_dims *d, int64_t p, int64_t W, int64_t H) {
  if (H == 0) return p * d->T * W;
  return ((p / H) * d->T * H + p % H) * W;
}

/* One pair of poly_attention: q, k [T, F] (rows lq apart), v [T, Dv] (rows
 * lv apart) -> o [T, Dv] (rows lv apart), z [T]. */
ZOO_CPU_CLONES
static void poly_pair(const zoo_node *n, int64_t T, int64_t F, int64_t Dv, int64_t lq, int64_t lv,
                      const float *q, const float *k, const float *v, float *o, float *zo, double *work) {
  int64_t ld = poly_ld(T); /* poly_work(T, F, Dv) doubles: */
  double *kt = work, *vt = kt + F * ld, *s = vt + Dv * T, *a = s + ld;
  to_columns(kt, k, T, F, lq, ld);
  to_columns(vt, v, T, Dv, lv, T);
  for (int64_t i = 0; i < T; i++) {
    double z = poly_row(n, q + i * lq, kt, i, ld, F, s, a);
    zo[i] = (float)z;
    for (int64_t e = 0; e < Dv; e++) {
      const double *ve = vt + e * T;
      double num = 0;
#pragma omp simd reduction(+ : num)
      for (int64_t j = 0; j <= i; j++) num += a[j] * ve[j];
      o[i * lv + e] = (float)(num / z);
    }
  }
}

/* poly_attention (q, k, v; c0, c1, c2, scale, eps, layout, H), causal:
 * s_ij = scale q_i.k_j, a_ij = c0 + c1 s_ij + c2 s_ij^2 (j <= i),
 * o_i = sum_j a_ij v_j / z_i with z_i = sum_j a_ij + eps, the second output
 * ([B, H, T] in both layouts). In double throughout; both layouts do the same
 * arithmetic in the same order. */
int zoo_cpu_poly_attention(zoo_cpu *c, const zoo_node *n) {
  poly_dims d = poly_dims_of(c, n, 0);
  int64_t BH = d.BH, T = d.T, F = d.F, Dv = d.Dv;
  const float *Q = in_f(c, n, 0), *K = in_f(c, n, 1), *V = in_f(c, n, 2);
  float *O = out_f(c, n, 0), *Z = out_f(c, n, 1);
  int64_t per = poly_work(T, F, Dv);
  double *work = zoo_cpu_scratch(c, (size_t)(omp_get_max_threads() * per) * sizeof *work);
#pragma omp parallel for if (BH * T * T * (F + Dv) > 65536)
  for (int64_t p = 0; p < BH; p++) {
    int64_t pq = poly_pair_at(&d, p, F, d.hq), pv = poly_pair_at(&d, p, Dv, d.hv);
    poly_pair(n, T, F, Dv, d.lq, d.lv, Q + pq, K + pq, V + pv, O + pv, Z + p * T,
              work + omp_get_thread_num() * per);
  }
  return 0;
}

/* One pair of poly_attention_bwd: do [T, Dv], q, k [T, F], v [T, Dv] -> dq, dk, dv
 * (rows of q, k, dq, dk lq apart, of do, v, dv lv apart). dq_i and dk_j run
 * along rows of F (q, k as stored): no sum across lanes. */
ZOO_CPU_CLONES
static void poly_pair_bwd(const zoo_node *n, int64_t T, int64_t F, int64_t Dv, int64_t lq, int64_t lv,
                          const float *dout, const float *q, const float *k, const float *v, float *dq,
                          float *dk, float *dv, double *work) {
  const double c1 = n->attrs.f[1], c2 = n->attrs.f[2], scale = n->attrs.f[3];
  int64_t ld = poly_ld(T); /* poly_work(T, F, Dv) doubles: */
  double *kt = work, *vt = kt + F * ld, *dkr = vt + Dv * T, *dvt = dkr + F * T;
  double *s = dvt + Dv * T, *a = s + ld, *ds = a + ld, *dqi = ds + ld;
  memset(dkr, 0, (size_t)(F * T) * sizeof *dkr);
  memset(dvt, 0, (size_t)(Dv * T) * sizeof *dvt);
  to_columns(kt, k, T, F, lq, ld);
  to_columns(vt, v, T, Dv, lv, T);
  for (int64_t i = 0; i < T; i++) {
    const float *qi = q + i * lq, *doi = dout + i * lv;
    double z = poly_row(n, qi, kt, i, ld, F, s, a);
    /* ds[j] = do_i.v_j first; then do_i.o_i = sum_j a_j do_i.v_j / z */
    for (int64_t j = 0; j <= i; j++) ds[j] = 0;
    for (int64_t e = 0; e < Dv; e++) {
      double de = doi[e];
      const double *ve = vt + e * T;
#pragma omp simd
      for (int64_t j = 0; j <= i; j++) ds[j] += de * ve[j];
    }
    double do_o = 0;
#pragma omp simd reduction(+ : do_o)
    for (int64_t j = 0; j <= i; j++) do_o += a[j] * ds[j];
    do_o /= z;
#pragma omp simd
    for (int64_t j = 0; j <= i; j++) ds[j] = scale * (ds[j] - do_o) / z * (c1 + 2 * c2 * s[j]);
    /* dq_i = sum_j ds_j k_j; dk_j += ds_j q_i */
    for (int64_t f = 0; f < F; f++) dqi[f] = 0;
    for (int64_t j = 0; j <= i; j++) {
      const float *kj = k + j * lq;
      double *dkj = dkr + j * F, d = ds[j];
#pragma omp simd
      for (int64_t f = 0; f < F; f++) {
        dqi[f] += d * kj[f];
        dkj[f] += d * qi[f];
      }
    }
    for (int64_t f = 0; f < F; f++) dq[i * lq + f] = (float)dqi[f];
    for (int64_t e = 0; e < Dv; e++) {
      double *dve = dvt + e * T, w = doi[e] / z;
#pragma omp simd
      for (int64_t j = 0; j <= i; j++) dve[j] += a[j] * w;
    }
  }
  for (int64_t t = 0; t < T; t++) {
    for (int64_t f = 0; f < F; f++) dk[t * lq + f] = (float)dkr[t * F + f];
    for (int64_t e = 0; e < Dv; e++) dv[t * lv + e] = (float)dvt[e * T + t];
  }
}

/* poly_attention_bwd (do, q, k, v, [o, z]) -> dq, dk, dv. With z_i = sum_j a_ij + eps
 * and o_i = n_i / z_i: dL/da_ij = (do_i.v_j - do_i.o_i) / z_i, dv_j += a_ij do_i / z_i,
 * ds_ij = dL/da_ij (c1 + 2 c2 s_ij), dq_i += scale ds_ij k_j, dk_j += scale ds_ij q_i.
 * The reference recomputes o_i and z_i in double whether or not the forward's
 * (f32) are given. */
int zoo_cpu_poly_attention_bwd(zoo_cpu *c, const zoo_node *n) {
  poly_dims d = poly_dims_of(c, n, 1);
  int64_t BH = d.BH, T = d.T, F = d.F, Dv = d.Dv;
  const float *DO = in_f(c, n, 0), *Q = in_f(c, n, 1), *K = in_f(c, n, 2), *V = in_f(c, n, 3);
  float *DQ = out_f(c, n, 0), *DK = out_f(c, n, 1), *DV = out_f(c, n, 2);
  int64_t per = poly_work(T, F, Dv);
  double *work = zoo_cpu_scratch(c, (size_t)(omp_get_max_threads() * per) * sizeof *work);
#pragma omp parallel for if (BH * T * T * (F + Dv) > 65536)
  for (int64_t p = 0; p < BH; p++) {
    int64_t pq = poly_pair_at(&d, p, F, d.hq), pv = poly_pair_at(&d, p, Dv, d.hv);
    poly_pair_bwd(n, T, F, Dv, d.lq, d.lv, DO + pv, Q + pq, K + pq, V + pv, DQ + pq, DK + pq, DV + pv,
                  work + omp_get_thread_num() * per);
  }
  return 0;
}

/* One row of softmax attention's probabilities, for query i of pair p:
 * P[j] = softmax_j(scale q_i.k_j - 10000 [causal and j > i]) over all j < T
 * (the reference adds -10000 above the diagonal rather than dropping those
 * entries; in f32 they come out as exact zeros either way), and M[j] the factor
 * dropout applies to it: 1 without dropout, else keep_ij / (1 - p) with
 *
 *     keep_ij = zoo_rng_uniform(seed, stream, ((b*H + h)*T + i)*T + j) >= p,
 *
 * i.e. the draw's index is the probability's flat index in a [B, H, T, T]
 * tensor (p = b*H + h here), for every j, masked or not. The CUDA kernels must
 * draw exactly these indices. */
static inline double attention_row(const zoo_cpu *c, const zoo_node *n, int64_t p, int64_t i, int64_t T,
                                    int64_t F, const float *qi, const double *kt, double *P, double *M) {
  double scale = n->attrs.f[0];
  float drop = (float)n->attrs.f[1];
  int causal = n->attrs.i[1] != 0, dropping = c->training && drop > 0.0f;
  for (int64_t j = 0; j < T; j++) P[j] = 0;
  for (int64_t f = 0; f < F; f++) { /* q_i.k_j for every j, kt = k in columns */
    double qf = qi[f];
    const double *kf = kt + f * T;
#pragma omp simd
    for (int64_t j = 0; j < T; j++) P[j] += qf * kf[j];
  }
  double m = -INFINITY;
  for (int64_t j = 0; j < T; j++) {
    P[j] = scale * P[j] + (causal && j > i ? -10000.0 : 0.0);
    if (P[j] > m) m = P[j];
  }
  double sum = 0;
  for (int64_t j = 0; j < T; j++) sum += P[j] = exp(P[j] - m);
  float keep_scale = dropping ? 1.0f / (1.0f - drop) : 1.0f;
  for (int64_t j = 0; j < T; j++) {
    P[j] /= sum;
    M[j] = 1.0;
    if (dropping) M[j] = keep(c->seed, n->attrs.i[0], (p * T + i) * T + j, drop) ? keep_scale : 0.0;
  }
  return m + log(sum);
}

/* Doubles of work space one pair of softmax_attention or its backward needs
 * (each thread has its own, from the executor's scratch). */
static int64_t softmax_work(int64_t T, int64_t F, int64_t Dv) { return 2 * (F + Dv) * T + 3 * T; }

/* The row strides of one pair's operands: q, k (and dq, dk), v (and dv), o
 * (and do). Contiguous [T, W] rows in softmax_attention; in qkv's and o's
 * rows of 3 H d and H d floats in softmax_attention_packed. */
typedef struct sattn_strides {
  int64_t q, v, o;
} sattn_strides;

/* One pair (index p) of softmax_attention: q, k [T, F], v [T, Dv] -> o [T, Dv],
 * lse [T]. */
ZOO_CPU_CLONES
static void softmax_pair(const zoo_cpu *c, const zoo_node *n, int64_t p, int64_t T, int64_t F,
                         int64_t Dv, sattn_strides ld, const float *q, const float *k, const float *v, float *o,
                         float *lse, double *work) {
  double *kt = work, *vt = kt + F * T, *P = vt + Dv * T, *M = P + T; /* softmax_work */
  to_columns(kt, k, T, F, ld.q, T);
  to_columns(vt, v, T, Dv, ld.v, T);
  for (int64_t i = 0; i < T; i++) {
    lse[i] = (float)attention_row(c, n, p, i, T, F, q + i * ld.q, kt, P, M);
    for (int64_t j = 0; j < T; j++) P[j] *= M[j];
    for (int64_t e = 0; e < Dv; e++) {
      const double *ve = vt + e * T;
      double acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int64_t j = 0; j < T; j++) acc += P[j] * ve[j];
      o[i * ld.o + e] = (float)acc;
    }
  }
}

/* softmax_attention (q, k, v; scale, dropout p, stream, causal):
 * o_i = sum_j P_ij M_ij v_j with P, M from attention_row, and lse_i, the log of
 * the softmax's denominator. */
int zoo_cpu_softmax_attention(zoo_cpu *c, const zoo_node *n) {
  shape qs = in_shape(c, n, 0), vs = in_shape(c, n, 2);
  int64_t BH = qs.d[0] * qs.d[1], T = qs.d[2], F = qs.d[3], Dv = vs.d[3];
  const float *Q = in_f(c, n, 0), *K = in_f(c, n, 1), *V = in_f(c, n, 2);
  float *O = out_f(c, n, 0), *L = out_f(c, n, 1);
  int64_t per = softmax_work(T, F, Dv);
  double *work = zoo_cpu_scratch(c, (size_t)(omp_get_max_threads() * per) * sizeof *work);
#pragma omp parallel for if (BH * T * T * (F + Dv) > 65536)
  for (int64_t p = 0; p < BH; p++)
    softmax_pair(c, n, p, T, F, Dv, (sattn_strides){F, Dv, Dv}, Q + p * T * F, K + p * T * F, V + p * T * Dv,
                 O + p * T * Dv, L + p * T, work + omp_get_thread_num() * per);
  return 0;
}

/* One pair (index p) of softmax_attention_bwd. */
ZOO_CPU_CLONES
static void softmax_pair_bwd(const zoo_cpu *c, const zoo_node *n, int64_t p, int64_t T,
                             int64_t F, int64_t Dv, sattn_strides ld, const float *dout, const float *q,
                             const float *k, const float *v, float *dq, float *dk, float *dv,
                             double *work) {
  double scale = n->attrs.f[0];
  double *kt = work, *vt = kt + F * T, *dkt = vt + Dv * T, *dvt = dkt + F * T; /* softmax_work */
  double *P = dvt + Dv * T, *M = P + T, *dP = M + T;
  memset(dkt, 0, (size_t)((F + Dv) * T) * sizeof *dkt);
  to_columns(kt, k, T, F, ld.q, T);
  to_columns(vt, v, T, Dv, ld.v, T);
  for (int64_t i = 0; i < T; i++) {
    const float *doi = dout + i * ld.o, *qi = q + i * ld.q;
    attention_row(c, n, p, i, T, F, qi, kt, P, M);
    for (int64_t j = 0; j < T; j++) dP[j] = 0;
    for (int64_t e = 0; e < Dv; e++) { /* dv_j += P M do_i; dP_j = do_i.v_j */
      const double *ve = vt + e * T;
      double *dve = dvt + e * T, de = doi[e];
#pragma omp simd
      for (int64_t j = 0; j < T; j++) {
        dP[j] += de * ve[j];
        dve[j] += P[j] * M[j] * de;
      }
    }
    double r = 0;
#pragma omp simd reduction(+ : r)
    for (int64_t j = 0; j < T; j++) {
      dP[j] *= M[j];
      r += P[j] * dP[j];
    }
#pragma omp simd
    for (int64_t j = 0; j < T; j++) dP[j] = P[j] * (dP[j] - r) * scale; /* now dS_ij */
    for (int64_t f = 0; f < F; f++) {
      const double *kf = kt + f * T;
      double *dkf = dkt + f * T, qf = qi[f], acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int64_t j = 0; j < T; j++) {
        acc += dP[j] * kf[j];
        dkf[j] += dP[j] * qf;
      }
      dq[i * ld.q + f] = (float)acc;
    }
  }
  for (int64_t t = 0; t < T; t++) {
    for (int64_t f = 0; f < F; f++) dk[t * ld.q + f] = (float)dkt[f * T + t];
    for (int64_t e = 0; e < Dv; e++) dv[t * ld.v + e] = (float)dvt[e * T + t];
  }
}

/* softmax_attention_bwd (do, q, k, v, [o, lse]) -> dq, dk, dv, with the same
 * dropout mask, recomputing the softmax (o and lse, when given, are unread):
 * dv_j += P_ij M_ij do_i; dP_ij = M_ij do_i.v_j; dS_ij = P_ij (dP_ij - sum_l P_il dP_il);
 * dq_i = scale sum_j dS_ij k_j; dk_j += scale dS_ij q_i. */
int zoo_cpu_softmax_attention_bwd(zoo_cpu *c, const zoo_node *n) {
  shape qs = in_shape(c, n, 1), vs = in_shape(c, n, 3);
  int64_t BH = qs.d[0] * qs.d[1], T = qs.d[2], F = qs.d[3], Dv = vs.d[3];
  const float *DO = in_f(c, n, 0), *Q = in_f(c, n, 1), *K = in_f(c, n, 2), *V = in_f(c, n, 3);
  float *DQ = out_f(c, n, 0), *DK = out_f(c, n, 1), *DV = out_f(c, n, 2);
  int64_t per = softmax_work(T, F, Dv);
  double *work = zoo_cpu_scratch(c, (size_t)(omp_get_max_threads() * per) * sizeof *work);
#pragma omp parallel for if (BH * T * T * (F + Dv) > 65536)
  for (int64_t p = 0; p < BH; p++)
    softmax_pair_bwd(c, n, p, T, F, Dv, (sattn_strides){F, Dv, Dv}, DO + p * T * Dv, Q + p * T * F,
                     K + p * T * F, V + p * T * Dv, DQ + p * T * F, DK + p * T * F, DV + p * T * Dv,
                     work + omp_get_thread_num() * per);
  return 0;
}

/* softmax_attention_packed (qkv [B, T, 3 H d]; as softmax_attention, i2 = H)
 * -> o [B, T, H d], lse [B, H, T]: pair p = b H + h reads q, k, v at columns
 * h d, H d + h d, 2 H d + h d of qkv's rows and writes o at column h d. */
int zoo_cpu_softmax_attention_packed(zoo_cpu *c, const zoo_node *n) {
  shape xs = in_shape(c, n, 0);
  int64_t H = n->attrs.i[2], B = xs.d[0], T = xs.d[1], d = xs.d[2] / (3 * H), BH = B * H;
  const float *X = in_f(c, n, 0);
  float *O = out_f(c, n, 0), *L = out_f(c, n, 1);
  sattn_strides ld = {3 * H * d, 3 * H * d, H * d};
  int64_t per = softmax_work(T, d, d);
  double *work = zoo_cpu_scratch(c, (size_t)(omp_get_max_threads() * per) * sizeof *work);
#pragma omp parallel for if (BH * T * T * 2 * d > 65536)
  for (int64_t p = 0; p < BH; p++) {
    const float *q = X + (p / H) * T * ld.q + (p % H) * d;
    softmax_pair(c, n, p, T, d, d, ld, q, q + H * d, q + 2 * H * d, O + (p / H) * T * ld.o + (p % H) * d,
                 L + p * T, work + omp_get_thread_num() * per);
  }
  return 0;
}

/* softmax_attention_packed_bwd (do, qkv, [o, lse]) -> dqkv, recomputing the
 * softmax as softmax_attention_bwd does */
int zoo_cpu_softmax_attention_packed_bwd(zoo_cpu *c, const zoo_node *n) {
  shape xs = in_shape(c, n, 1);
  int64_t H = n->attrs.i[2], B = xs.d[0], T = xs.d[1], d = xs.d[2] / (3 * H), BH = B * H;
  const float *DO = in_f(c, n, 0), *X = in_f(c, n, 1);
  float *DX = out_f(c, n, 0);
  sattn_strides ld = {3 * H * d, 3 * H * d, H * d};
  int64_t per = softmax_work(T, d, d);
  double *work = zoo_cpu_scratch(c, (size_t)(omp_get_max_threads() * per) * sizeof *work);
#pragma omp parallel for if (BH * T * T * 2 * d > 65536)
  for (int64_t p = 0; p < BH; p++) {
    int64_t at = (p / H) * T * ld.q + (p % H) * d;
    const float *q = X + at;
    float *dq = DX + at;
    softmax_pair_bwd(c, n, p, T, d, d, ld, DO + (p / H) * T * ld.o + (p % H) * d, q, q + H * d, q + 2 * H * d, dq,
                     dq + H * d, dq + 2 * H * d, work + omp_get_thread_num() * per);
  }
  return 0;
}

/* ---------------------------------------------------------------------------
 * The fused head: linear_cross_entropy, its backward, and accuracy over (h, w).
 *
 * Only labelled rows cost anything. Their numbers are gathered first; then they
 * go HEAD_CHUNK at a time: their h rows are copied into hc [HEAD_CHUNK, D] and
 * their logits made into lc [HEAD_CHUNK, V], blocks of four rows spread over
 * the threads, by the same gemm_rows and term order as linear. So every logit,
 * and from it every loss term, gradient and argmax, is bit for bit what the
 * plain head (linear, then cross_entropy or accuracy) computes; unlabelled rows
 * add exact zeros there, here nothing. Each row's results are written by one
 * thread and summed in row order, so nothing depends on the thread count.
 * Temporaries live in the executor's scratch (no allocation per step). */

enum { HEAD_CHUNK = 128, HEAD_RB = 4, HEAD_NS = 16 };

typedef struct head {
  int64_t N, D, V, m;  /* rows, width, vocabulary, labelled rows */
  const float *H, *W;  /* h [N, D], w [V, D] */
  const int32_t *t;    /* targets [N] */
  int64_t ignore;
  int64_t *rows;       /* [m] the labelled rows' numbers, in order */
  float *wp;           /* w^T [D, V] in strips of HEAD_NS columns (head_pack) */
  float *hc, *lc;      /* a chunk's h rows [HEAD_CHUNK, D], logits [HEAD_CHUNK, V] */
  double *per_row;     /* [m]: each labelled row's loss term, or 1 for a hit (accuracy) */
  float *dhc;          /* backward: a chunk's dh rows [HEAD_CHUNK, D] */
  double *ebuf;        /* backward: V doubles per thread (row_ce_grad) */
} head;

/* w^T [D, V] as strips of HEAD_NS columns, each stored [D][HEAD_NS] (the last
 * one [D][V mod HEAD_NS]): strip s, column j of it, row p at
 * wp[s * HEAD_NS * D + p * width + j]. gemm_rows then reads each strip's rows
 * one after another instead of D rows V floats apart (which share a cache set
 * when V is a power of two). */
static void head_pack(float *wp, const float *W, int64_t V, int64_t D) {
  for (int64_t v0 = 0; v0 < V; v0 += HEAD_NS) {
    int64_t width = V - v0 < HEAD_NS ? V - v0 : HEAD_NS;
    float *strip = wp + v0 * D;
    for (int64_t j = 0; j < width; j++)
      for (int64_t p = 0; p < D; p++) strip[p * width + j] = W[(v0 + j) * D + p];
  }
}

/* Bytes rounded up to a cache line. */
static size_t line_up(size_t bytes) { return (bytes + 63) / 64 * 64; }

/* Sets up hd for node n whose h, w, targets are inputs hi .. hi + 2: the
 * labelled rows, w^T and the chunk buffers, in c's scratch. */
static void head_init(zoo_cpu *c, const zoo_node *n, int hi, head *hd) {
  shape ws = in_shape(c, n, hi + 1);
  hd->V = ws.d[0], hd->D = ws.d[1], hd->N = c->numel[n->in[hi + 2]];
  hd->H = in_f(c, n, hi), hd->W = in_f(c, n, hi + 1), hd->t = in_i(c, n, hi + 2);
  hd->ignore = n->attrs.i[0];
  int64_t N = hd->N, D = hd->D, V = hd->V;
  size_t at[7], total = 0, sizes[7] = {
      (size_t)N * sizeof(int64_t), (size_t)(D * V) * sizeof(float),
      (size_t)(HEAD_CHUNK * D) * sizeof(float), (size_t)(HEAD_CHUNK * V) * sizeof(float),
      (size_t)N * sizeof(double), (size_t)(HEAD_CHUNK * D) * sizeof(float),
      (size_t)(omp_get_max_threads() * V) * sizeof(double)};
  for (int k = 0; k < 7; k++) at[k] = total, total += line_up(sizes[k]);
  char *s = zoo_cpu_scratch(c, total);
  hd->rows = (int64_t *)(s + at[0]);
  hd->wp = (float *)(s + at[1]);
  hd->hc = (float *)(s + at[2]);
  hd->lc = (float *)(s + at[3]);
  hd->per_row = (double *)(s + at[4]);
  hd->dhc = (float *)(s + at[5]);
  hd->ebuf = (double *)(s + at[6]);
  hd->m = 0;
  for (int64_t r = 0; r < N; r++)
    if (hd->t[r] != hd->ignore) hd->rows[hd->m++] = r;
  head_pack(hd->wp, hd->W, V, D);
}

/* Block b (four rows) of the chunk of labelled rows starting at c0: their h
 * rows into hc and their logits into lc, at the block's place; returns the
 * number of rows (fewer at the end). */
static int head_block_logits(const head *hd, int64_t c0, int64_t nc, int64_t b) {
  int64_t D = hd->D, V = hd->V, i0 = b * HEAD_RB;
  int nr = (int)(nc - i0 < HEAD_RB ? nc - i0 : HEAD_RB);
  float *hs = hd->hc + i0 * D, *ls = hd->lc + i0 * V;
  for (int r = 0; r < nr; r++) memcpy(hs + r * D, hd->H + hd->rows[c0 + i0 + r] * D, (size_t)D * sizeof *hs);
  memset(ls, 0, (size_t)(nr * V) * sizeof *ls);
  for (int64_t v0 = 0; v0 < V; v0 += HEAD_NS) {
    int64_t width = V - v0 < HEAD_NS ? V - v0 : HEAD_NS;
    gemm_rows(ls + v0, V, hs, D, 1, hd->wp + v0 * D, width, D, width, nr);
  }
  return nr;
}

/* Rows of a chunk and its blocks of four. */
static int64_t chunk_rows(const head *hd, int64_t c0) { return hd->m - c0 < HEAD_CHUNK ? hd->m - c0 : HEAD_CHUNK; }
static int64_t chunk_blocks(int64_t nc) { return (nc + HEAD_RB - 1) / HEAD_RB; }

/* linear_cross_entropy (h[N, D], w[V, D], targets[N]; ignore) ->
 * cross_entropy(linear(h, w), targets): mean over labelled rows of
 * logsumexp(logits_r) - logits_r[target]. */
int zoo_cpu_linear_cross_entropy(zoo_cpu *c, const zoo_node *n) {
  head hd;
  head_init(c, n, 0, &hd);
  if (check_targets(c, "linear_cross_entropy", hd.t, hd.N, hd.V, hd.ignore) < 0) return -1;
  for (int64_t c0 = 0; c0 < hd.m; c0 += HEAD_CHUNK) {
    int64_t nc = chunk_rows(&hd, c0);
#pragma omp parallel for schedule(static) if (nc * hd.V * hd.D > 65536)
    for (int64_t b = 0; b < chunk_blocks(nc); b++) {
      int nr = head_block_logits(&hd, c0, nc, b);
      for (int r = 0; r < nr; r++) {
        int64_t i = b * HEAD_RB + r;
        const float *l = hd.lc + i * hd.V;
        hd.per_row[c0 + i] = row_logsumexp(l, hd.V) - l[hd.t[hd.rows[c0 + i]]];
      }
    }
  }
  double sum = 0; /* in row order, whatever the thread count */
  for (int64_t i = 0; i < hd.m; i++) sum += hd.per_row[i];
  out_f(c, n, 0)[0] = hd.m ? (float)(sum / (double)hd.m) : 0.0f;
  return 0;
}

/* linear_cross_entropy_bwd (dloss, h, w, targets) -> dh, dw. With
 * g_rv = dloss / labelled (softmax(logits_r)_v - [v = t_r]) on labelled rows
 * (in f32, as cross_entropy_bwd makes it): dh_r = sum_v g_rv w_v, zero on
 * unlabelled rows; dw_v = sum over labelled r, in row order, of g_rv h_r. Per
 * chunk: logits, then g in their place, and dh, blocks of rows over the
 * threads; then dw += g^T h, blocks of four vocabulary rows over the threads
 * (each continues its sums where the previous chunk left them). */
int zoo_cpu_linear_cross_entropy_bwd(zoo_cpu *c, const zoo_node *n) {
  head hd;
  head_init(c, n, 1, &hd);
  if (check_targets(c, "linear_cross_entropy", hd.t, hd.N, hd.V, hd.ignore) < 0) return -1;
  int64_t D = hd.D, V = hd.V;
  float *DH = out_f(c, n, 0), *DW = out_f(c, n, 1);
  double scale = hd.m ? in_f(c, n, 0)[0] / (double)hd.m : 0.0;
  memset(DH, 0, (size_t)(hd.N * D) * sizeof *DH);
  memset(DW, 0, (size_t)(V * D) * sizeof *DW);
  for (int64_t c0 = 0; c0 < hd.m; c0 += HEAD_CHUNK) {
    int64_t nc = chunk_rows(&hd, c0);
#pragma omp parallel for schedule(static) if (nc * V * D > 65536)
    for (int64_t b = 0; b < chunk_blocks(nc); b++) {
      int nr = head_block_logits(&hd, c0, nc, b);
      int64_t i0 = b * HEAD_RB;
      double *e = hd.ebuf + omp_get_thread_num() * V;
      for (int r = 0; r < nr; r++) {
        float *g = hd.lc + (i0 + r) * V;
        row_ce_grad(g, g, V, hd.t[hd.rows[c0 + i0 + r]], scale, e);
      }
      float *dh = hd.dhc + i0 * D;
      memset(dh, 0, (size_t)(nr * D) * sizeof *dh);
      gemm_rows(dh, D, hd.lc + i0 * V, V, 1, hd.W, D, V, D, nr);
      for (int r = 0; r < nr; r++)
        memcpy(DH + hd.rows[c0 + i0 + r] * D, dh + r * D, (size_t)D * sizeof *dh);
    }
    /* dw[v] += sum over the chunk's rows p, in order, of g[p][v] hc[p]: HEAD_NS
     * vocabulary rows at a time, their columns of g copied into gt (rows of
     * it contiguous, one cache line of g read once) for four rows at a time. */
#pragma omp parallel for schedule(static) if (nc * V * D > 65536)
    for (int64_t vb = 0; vb < (V + HEAD_NS - 1) / HEAD_NS; vb++) {
      float gt[HEAD_NS * HEAD_CHUNK];
      int64_t v0 = vb * HEAD_NS, nv = V - v0 < HEAD_NS ? V - v0 : HEAD_NS;
      for (int64_t p = 0; p < nc; p++)
        for (int64_t i = 0; i < nv; i++) gt[i * HEAD_CHUNK + p] = hd.lc[p * V + v0 + i];
      for (int64_t i = 0; i < nv; i += HEAD_RB)
        gemm_rows(DW + (v0 + i) * D, D, gt + i * HEAD_CHUNK, HEAD_CHUNK, 1, hd.hc, D, nc, D,
                  (int)(nv - i < HEAD_RB ? nv - i : HEAD_RB));
    }
  }
  return 0;
}

/* accuracy (h, w, targets): the labelled rows whose logits' first maximum is
 * the target, and the labelled rows. */
static int accuracy_head(zoo_cpu *c, const zoo_node *n) {
  head hd;
  head_init(c, n, 0, &hd);
  for (int64_t c0 = 0; c0 < hd.m; c0 += HEAD_CHUNK) {
    int64_t nc = chunk_rows(&hd, c0);
#pragma omp parallel for schedule(static) if (nc * hd.V * hd.D > 65536)
    for (int64_t b = 0; b < chunk_blocks(nc); b++) {
      int nr = head_block_logits(&hd, c0, nc, b);
      for (int r = 0; r < nr; r++) {
        int64_t i = b * HEAD_RB + r;
        hd.per_row[c0 + i] = row_argmax(hd.lc + i * hd.V, hd.V) == hd.t[hd.rows[c0 + i]];
      }
    }
  }
  int64_t correct = 0;
  for (int64_t i = 0; i < hd.m; i++) correct += hd.per_row[i] != 0;
  float *y = out_f(c, n, 0);
  y[0] = (float)correct;
  y[1] = (float)hd.m;
  return 0;
}

/* linear_cross_entropy_step (h, w, targets, dloss) -> loss, metrics, dlogits,
 * dh: the three nodes it stands for, linear, cross_entropy_step and
 * matmul(dlogits, w), each on its own (the same numbers, bit for bit). The
 * logits are made in dlogits' buffer, which cross_entropy_bwd overwrites row
 * by row (row_ce_grad reads a row whole before writing it). */
int zoo_cpu_linear_cross_entropy_step(zoo_cpu *c, const zoo_node *n) {
  int dlogits = n->out[2];
  zoo_node part = *n;
  part.attrs = (zoo_attrs){0};
  part.nin = 2, part.nout = 1;
  part.out[0] = dlogits; /* logits = linear(h, w) */
  if (zoo_cpu_linear(c, &part) != 0) return -1;
  part = *n;
  part.nin = 3, part.nout = 3;
  part.in[0] = dlogits, part.in[1] = n->in[2], part.in[2] = n->in[3];
  if (zoo_cpu_cross_entropy_step(c, &part) != 0) return -1;
  part.attrs = (zoo_attrs){0}; /* no transposes */
  part.nin = 2, part.nout = 1;
  part.in[0] = dlogits, part.in[1] = n->in[1];
  part.out[0] = n->out[3];
  return zoo_cpu_matmul(c, &part);
}
