/* test_ops.c: every op's shape rule and CPU kernel against small hand-computed
 * values, or values computed here independently (plain double loops, other loop
 * orders, libm). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../runtime/cpu.h"
#include "../runtime/rng.h"
#include "test.h"

/* ---------------------------------------------------------------------------
 * A tiny harness: a graph of inputs and nodes, run once on the CPU. */

#define K(n) zoo_dim_const(n)
#define NDIMS(...) ((int)(sizeof((zoo_dim[]){__VA_ARGS__}) / sizeof(zoo_dim)))
#define F32T(...) mktype(ZOO_F32, NDIMS(__VA_ARGS__), (zoo_dim[]){__VA_ARGS__})
#define I32T(...) mktype(ZOO_I32, NDIMS(__VA_ARGS__), (zoo_dim[]){__VA_ARGS__})

static zoo_type mktype(zoo_dtype dt, int nd, const zoo_dim *d) {
  zoo_type t = {.dtype = dt, .ndim = nd};
  for (int k = 0; k < nd; k++) t.dim[k] = d[k];
  return t;
}

static const zoo_type scalar_t = {.dtype = ZOO_F32, .ndim = 0};

typedef struct og {
  zoo_graph g;
  zoo_diag d;
  zoo_cpu cpu;
  int nin;
  int in[8];
  const void *data[8];
} og;

static void og_init(og *o) {
  memset(o, 0, sizeof *o);
  zoo_graph_init(&o->g);
  zoo_diag_init(&o->d, stderr);
}

/* An input with its values (f32 or i32, by the type). */
static int og_input(og *o, zoo_type t, const void *data) {
  int id = zoo_graph_input(&o->g, "x", t);
  o->in[o->nin] = id;
  o->data[o->nin++] = data;
  return id;
}

static int og_node(og *o, zoo_op op, int nin, const int *in, const zoo_attrs *a) {
  return zoo_graph_node(&o->g, op, nin, in, a, zoo_nospan, &o->d);
}

static int og_node1(og *o, zoo_op op, int x, const zoo_attrs *a) { return og_node(o, op, 1, &x, a); }

static int og_node2(og *o, zoo_op op, int x, int y, const zoo_attrs *a) {
  int in[2] = {x, y};
  return og_node(o, op, 2, in, a);
}

static int og_node3(og *o, zoo_op op, int x, int y, int z, const zoo_attrs *a) {
  int in[3] = {x, y, z};
  return og_node(o, op, 3, in, a);
}

/* Allocates, copies the inputs in, runs every node. Returns 0 or -1 (c->err). */
static int og_run(og *o, int training, uint64_t seed) {
  if (zoo_cpu_init(&o->cpu, &o->g, NULL) != 0) return -1;
  o->cpu.training = training;
  o->cpu.seed = seed;
  for (int i = 0; i < o->nin; i++)
    memcpy(o->cpu.data[o->in[i]], o->data[i], (size_t)o->cpu.numel[o->in[i]] * 4);
  return zoo_cpu_run(&o->cpu, 0, o->g.nnodes);
}

static void og_free(og *o) {
  zoo_cpu_free(&o->cpu);
  zoo_graph_free(&o->g);
}

static float *og_f(og *o, int t) { return zoo_cpu_f32(&o->cpu, t); }

/* max |a - b| / (1 + |b|) */
static double maxdiff(const float *a, const double *b, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; i++) {
    double e = fabs(a[i] - b[i]) / (1.0 + fabs(b[i]));
    if (!(e <= m)) m = e; /* NaN counts as a failure */
  }
  return m;
}

static double maxdiff_f(const float *a, const float *b, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; i++) {
    double e = fabs((double)a[i] - b[i]) / (1.0 + fabs((double)b[i]));
    if (!(e <= m)) m = e;
  }
  return m;
}

static uint64_t rng_state = 12345;
static float frand(void) { /* uniform in [-1, 1) */
  rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
  return (float)((rng_state >> 40) * (2.0 / 16777216.0) - 1.0);
}

static float *randv(int64_t n) {
  float *v = malloc((size_t)n * sizeof *v);
  for (int64_t i = 0; i < n; i++) v[i] = frand();
  return v;
}

/* Shape rule of a node built by hand: 0 and out, or -1 and the message. */
static int shape_of_node(zoo_graph *g, zoo_op op, int nin, const int *in, const zoo_attrs *a,
                         zoo_type *out, char *err) {
  zoo_node n = {.op = op, .nin = nin, .nout = zoo_ops[op].nout};
  memcpy(n.in, in, (size_t)nin * sizeof *in);
  if (a) n.attrs = *a;
  err[0] = 0;
  return zoo_shape_infer(g, &n, out, err, 512);
}

/* ---------------------------------------------------------------------------
 * Shape rules */

TEST(op_shape_messages) {
  zoo_graph g;
  zoo_graph_init(&g);
  int B = zoo_graph_symbol(&g, "B"), T = zoo_graph_symbol(&g, "T");
  zoo_dim b = {1, 1u << B}, tt = {1, 1u << T};
  int x48 = zoo_graph_input(&g, "x", F32T(b, tt, K(48)));
  int x64 = zoo_graph_input(&g, "y", F32T(b, tt, K(64)));
  int x32 = zoo_graph_input(&g, "z", F32T(b, tt, K(32)));
  int w = zoo_graph_param(&g, "w", F32T(K(128), K(64)), (zoo_init){0});
  int ids = zoo_graph_input(&g, "ids", I32T(b, tt));
  zoo_type out[3];
  char err[512];

  CHECK(shape_of_node(&g, ZOO_OP_LINEAR, 2, (int[]){x48, w}, NULL, out, err) == -1);
  CHECKF(strcmp(err, "linear: input has 48 features but the weight expects 64 "
                     "(x: f32[B, T, 48], w: f32[128, 64])") == 0, "%s", err);
  CHECK(shape_of_node(&g, ZOO_OP_LINEAR, 2, (int[]){x64, w}, NULL, out, err) == 0);
  char buf[128];
  CHECKF(strcmp(zoo_type_str(&g, &out[0], buf, sizeof buf), "f32[B, T, 128]") == 0, "%s", buf);

  CHECK(shape_of_node(&g, ZOO_OP_ADD, 2, (int[]){x64, x32}, NULL, out, err) == -1);
  CHECKF(strcmp(err, "add: shapes f32[B, T, 64] and f32[B, T, 32] do not broadcast") == 0, "%s",
         err);

  zoo_attrs a = {0};
  a.i[0] = 5;
  CHECK(shape_of_node(&g, ZOO_OP_SPLIT_HEADS, 1, &x64, &a, out, err) == -1);
  CHECKF(strcmp(err, "split_heads: width 64 of f32[B, T, 64] is not divisible by 5 heads") == 0,
         "%s", err);
  a.i[0] = 4;
  CHECK(shape_of_node(&g, ZOO_OP_SPLIT_HEADS, 1, &x64, &a, out, err) == 0);
  CHECKF(strcmp(zoo_type_str(&g, &out[0], buf, sizeof buf), "f32[B, 4, T, 16]") == 0, "%s", buf);

  CHECK(shape_of_node(&g, ZOO_OP_EMBEDDING, 2, (int[]){w, x64}, NULL, out, err) == -1);
  CHECKF(strcmp(err, "embedding: the ids must be i32, got f32[B, T, 64]") == 0, "%s", err);
  CHECK(shape_of_node(&g, ZOO_OP_EMBEDDING, 2, (int[]){w, ids}, NULL, out, err) == 0);
  CHECKF(strcmp(zoo_type_str(&g, &out[0], buf, sizeof buf), "f32[B, T, 64]") == 0, "%s", buf);

  a = (zoo_attrs){0};
  a.i[0] = 3;
  CHECK(shape_of_node(&g, ZOO_OP_SUM, 1, &x64, &a, out, err) == -1);
  CHECKF(strcmp(err, "sum: axis 3 is out of range for f32[B, T, 64]") == 0, "%s", err);
  a.i[0] = -2;
  CHECK(shape_of_node(&g, ZOO_OP_SUM, 1, &x64, &a, out, err) == 0);
  CHECKF(strcmp(zoo_type_str(&g, &out[0], buf, sizeof buf), "f32[B, 64]") == 0, "%s", buf);

  CHECK(shape_of_node(&g, ZOO_OP_CROSS_ENTROPY, 2, (int[]){x64, x48}, NULL, out, err) == -1);
  CHECKF(strcmp(err, "cross_entropy: the targets must be i32, got f32[B, T, 48]") == 0, "%s",
         err);
  CHECK(shape_of_node(&g, ZOO_OP_CROSS_ENTROPY, 2, (int[]){x64, ids}, NULL, out, err) == 0);
  CHECK(out[0].ndim == 0 && out[0].dtype == ZOO_F32);

  /* reshape [B, T, 64] -> [B*T, 64] and not to [B, 64] */
  a = (zoo_attrs){0};
  a.ndim = 2;
  a.dims[0] = zoo_dim_mul(b, tt);
  a.dims[1] = K(64);
  CHECK(shape_of_node(&g, ZOO_OP_RESHAPE, 1, &x64, &a, out, err) == 0);
  a.dims[0] = b;
  CHECK(shape_of_node(&g, ZOO_OP_RESHAPE, 1, &x64, &a, out, err) == -1);
  CHECKF(strcmp(err, "reshape: cannot reshape f32[B, T, 64] to f32[B, 64] (element counts "
                     "differ)") == 0, "%s", err);

  /* matmul inner dims; attention q/k mismatch */
  CHECK(shape_of_node(&g, ZOO_OP_MATMUL, 2, (int[]){x64, w}, NULL, out, err) == -1);
  a = (zoo_attrs){0};
  a.i[1] = 1;
  CHECK(shape_of_node(&g, ZOO_OP_MATMUL, 2, (int[]){x64, w}, &a, out, err) == 0);
  CHECKF(strcmp(zoo_type_str(&g, &out[0], buf, sizeof buf), "f32[B, T, 128]") == 0, "%s", buf);
  int q = zoo_graph_input(&g, "q", F32T(b, K(2), tt, K(16)));
  int v = zoo_graph_input(&g, "v", F32T(b, K(2), tt, K(5)));
  CHECK(shape_of_node(&g, ZOO_OP_POLY_ATTENTION, 3, (int[]){q, v, v}, NULL, out, err) == -1);
  CHECKF(strcmp(err, "poly_attention: q f32[B, 2, T, 16] and k f32[B, 2, T, 5] differ") == 0,
         "%s", err);
  CHECK(shape_of_node(&g, ZOO_OP_POLY_ATTENTION, 3, (int[]){q, q, v}, NULL, out, err) == 0);
  CHECKF(strcmp(zoo_type_str(&g, &out[0], buf, sizeof buf), "f32[B, 2, T, 5]") == 0, "%s", buf);

  /* poly_attention with the heads interleaved (i0 = 1, i1 = H): [B, T, H*W] */
  int x10 = zoo_graph_input(&g, "v10", F32T(b, tt, K(10)));
  a = (zoo_attrs){0};
  a.i[0] = 1, a.i[1] = 2;
  CHECK(shape_of_node(&g, ZOO_OP_POLY_ATTENTION, 3, (int[]){x32, x32, x10}, &a, out, err) == 0);
  CHECKF(strcmp(zoo_type_str(&g, &out[0], buf, sizeof buf), "f32[B, T, 10]") == 0, "%s", buf);
  CHECK(shape_of_node(&g, ZOO_OP_POLY_ATTENTION_BWD, 4, (int[]){x10, x32, x32, x10}, &a, out, err) == 0);
  CHECKF(strcmp(zoo_type_str(&g, &out[0], buf, sizeof buf), "f32[B, T, 32]") == 0 &&
         strcmp(zoo_type_str(&g, &out[2], buf, sizeof buf), "f32[B, T, 10]") == 0, "%s", buf);
  CHECK(shape_of_node(&g, ZOO_OP_POLY_ATTENTION_BWD, 4, (int[]){x32, x32, x32, x10}, &a, out, err) == -1);
  CHECKF(strcmp(err, "poly_attention_bwd: do f32[B, T, 32] must be the output's type f32[B, T, 10]") == 0,
         "%s", err);
  CHECK(shape_of_node(&g, ZOO_OP_POLY_ATTENTION, 3, (int[]){x32, x48, x10}, &a, out, err) == -1);
  CHECKF(strcmp(err, "poly_attention: q f32[B, T, 32] and k f32[B, T, 48] differ") == 0, "%s", err);
  CHECK(shape_of_node(&g, ZOO_OP_POLY_ATTENTION, 3, (int[]){q, q, v}, &a, out, err) == -1);
  CHECKF(strcmp(err, "poly_attention: q must be [B, T, H*F] (heads interleaved), got f32[B, 2, T, 16]") == 0,
         "%s", err);
  CHECK(shape_of_node(&g, ZOO_OP_POLY_ATTENTION, 3, (int[]){x32, x32, w}, &a, out, err) == -1);
  CHECKF(strcmp(err, "poly_attention: v f32[128, 64] does not match q f32[B, T, 32] in [B, T]") == 0, "%s", err);
  a.i[1] = 3;
  CHECK(shape_of_node(&g, ZOO_OP_POLY_ATTENTION, 3, (int[]){x48, x48, x10}, &a, out, err) == -1);
  CHECKF(strcmp(err, "poly_attention: width 10 of v f32[B, T, 10] is not divisible by 3 heads") == 0, "%s", err);
  CHECK(shape_of_node(&g, ZOO_OP_POLY_ATTENTION, 3, (int[]){x32, x32, x48}, &a, out, err) == -1);
  CHECKF(strcmp(err, "poly_attention: width 32 of q f32[B, T, 32] is not divisible by 3 heads") == 0, "%s", err);
  a.i[1] = 0;
  CHECK(shape_of_node(&g, ZOO_OP_POLY_ATTENTION, 3, (int[]){x32, x32, x10}, &a, out, err) == -1);
  CHECKF(strcmp(err, "poly_attention: heads interleaved: number of heads 0 must be positive") == 0, "%s", err);
  /* layout 2 (q and k interleaved): v and the output [B, H, T, W] */
  a.i[0] = 2, a.i[1] = 2;
  CHECK(shape_of_node(&g, ZOO_OP_POLY_ATTENTION, 3, (int[]){x32, x32, v}, &a, out, err) == 0);
  CHECKF(strcmp(zoo_type_str(&g, &out[0], buf, sizeof buf), "f32[B, 2, T, 5]") == 0 &&
         strcmp(zoo_type_str(&g, &out[1], buf, sizeof buf), "f32[B, 2, T]") == 0, "%s", buf);
  CHECK(shape_of_node(&g, ZOO_OP_POLY_ATTENTION, 3, (int[]){x32, x32, x10}, &a, out, err) == -1);
  CHECKF(strcmp(err, "poly_attention: v f32[B, T, 10] must be [B, H, T, Dv] with q f32[B, T, 32] [B, T, H*F] "
                     "and H = 2") == 0, "%s", err);
  a.i[1] = 3;
  CHECK(shape_of_node(&g, ZOO_OP_POLY_ATTENTION, 3, (int[]){x48, x48, v}, &a, out, err) == -1);
  CHECKF(strcmp(err, "poly_attention: v f32[B, 2, T, 5] must be [B, H, T, Dv] with q f32[B, T, 48] [B, T, H*F] "
                     "and H = 3") == 0, "%s", err);
  a.i[0] = 3;
  CHECK(shape_of_node(&g, ZOO_OP_POLY_ATTENTION, 3, (int[]){x32, x32, x10}, &a, out, err) == -1);
  CHECKF(strcmp(err, "poly_attention: layout 3 is none of 0 ([B, H, T, F]), 1 (heads interleaved, [B, T, H*F]) "
                     "and 2 (q and k interleaved)") == 0, "%s", err);
  zoo_graph_free(&g);
}

/* ---------------------------------------------------------------------------
 * Elementwise */

TEST(op_binary_broadcast) {
  og o;
  og_init(&o);
  float a[6] = {1, 2, 3, 4, 5, 6}; /* [2, 3] */
  float b[3] = {10, 20, 30};       /* [3] */
  float col[2] = {-1, 2};          /* [2, 1] */
  int ta = og_input(&o, F32T(K(2), K(3)), a), tb = og_input(&o, F32T(K(3)), b);
  int tc = og_input(&o, F32T(K(2), K(1)), col);
  int add = og_node2(&o, ZOO_OP_ADD, ta, tb, NULL), sub = og_node2(&o, ZOO_OP_SUB, tb, ta, NULL);
  int mul = og_node2(&o, ZOO_OP_MUL, tc, tb, NULL), dv = og_node2(&o, ZOO_OP_DIV, ta, tc, NULL);
  int gt = og_node2(&o, ZOO_OP_GT, ta, og_node2(&o, ZOO_OP_ADD, tc, tc, NULL), NULL);
  int wh = og_node3(&o, ZOO_OP_WHERE, gt, ta, tb, NULL);
  CHECK(wh >= 0);
  CHECK(og_run(&o, 0, 0) == 0);
  double e_add[6] = {11, 22, 33, 14, 25, 36}, e_sub[6] = {9, 18, 27, 6, 15, 24};
  double e_mul[6] = {-10, -20, -30, 20, 40, 60}, e_div[6] = {-1, -2, -3, 2, 2.5, 3};
  double e_gt[6] = {1, 1, 1, 0, 1, 1}, e_wh[6] = {1, 2, 3, 10, 5, 6};
  CHECK(maxdiff(og_f(&o, add), e_add, 6) == 0);
  CHECK(maxdiff(og_f(&o, sub), e_sub, 6) == 0);
  CHECK(maxdiff(og_f(&o, mul), e_mul, 6) == 0);
  CHECK(maxdiff(og_f(&o, dv), e_div, 6) == 0);
  CHECK(maxdiff(og_f(&o, gt), e_gt, 6) == 0);
  CHECK(maxdiff(og_f(&o, wh), e_wh, 6) == 0);
  og_free(&o);
}

TEST(op_unary) {
  og o;
  og_init(&o);
  float x[5] = {-1.5f, -0.25f, 0.5f, 1.0f, 2.25f}, px[5] = {0.1f, 0.5f, 1.0f, 2.0f, 9.0f};
  int tx = og_input(&o, F32T(K(5)), x), tp = og_input(&o, F32T(K(5)), px);
  zoo_op ops[] = {ZOO_OP_NEG, ZOO_OP_EXP, ZOO_OP_SQUARE, ZOO_OP_SIGMOID, ZOO_OP_SILU,
                  ZOO_OP_SOFTPLUS, ZOO_OP_RELU, ZOO_OP_GELU, ZOO_OP_TANH, ZOO_OP_SIN, ZOO_OP_COS};
  int nops = (int)(sizeof ops / sizeof ops[0]);
  int outs[16];
  for (int i = 0; i < nops; i++) outs[i] = og_node1(&o, ops[i], tx, NULL);
  int lg = og_node1(&o, ZOO_OP_LOG, tp, NULL), sq = og_node1(&o, ZOO_OP_SQRT, tp, NULL);
  int rs = og_node1(&o, ZOO_OP_RSQRT, tp, NULL);
  zoo_attrs a = {0};
  a.f[0] = 0.5;
  int adds = og_node1(&o, ZOO_OP_ADDS, tx, &a), muls = og_node1(&o, ZOO_OP_MULS, tx, &a);
  a.f[0] = 1.5;
  int pows = og_node1(&o, ZOO_OP_POWS, tp, &a);
  float big[2] = {100.0f, -100.0f};
  int tbig = og_input(&o, F32T(K(2)), big);
  int spbig = og_node1(&o, ZOO_OP_SOFTPLUS, tbig, NULL);
  CHECK(og_run(&o, 0, 0) == 0);
  for (int i = 0; i < 5; i++) {
    double v = x[i], p = px[i], s = 1 / (1 + exp(-v));
    double want[] = {-v, exp(v), v * v, s, v * s, log1p(exp(v)), v > 0 ? v : 0,
                     0.5 * v * (1 + erf(v / sqrt(2))), tanh(v), sin(v), cos(v)};
    for (int k = 0; k < nops; k++)
      CHECKF(fabs(og_f(&o, outs[k])[i] - want[k]) <= 1e-6 * (1 + fabs(want[k])), "%s(%g) = %g, not %g",
             zoo_ops[ops[k]].name, v, og_f(&o, outs[k])[i], want[k]);
    CHECK(fabs(og_f(&o, lg)[i] - log(p)) < 1e-6);
    CHECK(fabs(og_f(&o, sq)[i] - sqrt(p)) < 1e-6);
    CHECK(fabs(og_f(&o, rs)[i] - 1 / sqrt(p)) < 1e-5);
    CHECK(og_f(&o, adds)[i] == x[i] + 0.5f);
    CHECK(og_f(&o, muls)[i] == x[i] * 0.5f);
    CHECK(fabs(og_f(&o, pows)[i] - pow(p, 1.5)) < 1e-5 * (1 + pow(p, 1.5)));
  }
  /* softplus is stable far from 0 */
  CHECK(og_f(&o, spbig)[0] == 100.0f && og_f(&o, spbig)[1] > 0 && og_f(&o, spbig)[1] < 1e-40);
  og_free(&o);
}

TEST(op_gelu_bwd) {
  og o;
  og_init(&o);
  float x[4] = {-2, -0.5f, 0.3f, 1.7f}, dy[4] = {1, 2, -1, 0.5f};
  int tx = og_input(&o, F32T(K(4)), x), td = og_input(&o, F32T(K(4)), dy);
  int g = og_node2(&o, ZOO_OP_GELU_BWD, td, tx, NULL);
  CHECK(og_run(&o, 0, 0) == 0);
  for (int i = 0; i < 4; i++) { /* central difference of the erf form in double */
    double h = 1e-6, v = x[i];
    double f1 = 0.5 * (v + h) * (1 + erf((v + h) / sqrt(2)));
    double f0 = 0.5 * (v - h) * (1 + erf((v - h) / sqrt(2)));
    CHECK(fabs(og_f(&o, g)[i] - dy[i] * (f1 - f0) / (2 * h)) < 1e-5);
  }
  og_free(&o);
}

TEST(op_dropout) {
  enum { N = 20000 };
  float *x = randv(N);
  for (int pass = 0; pass < 2; pass++) {
    og o;
    og_init(&o);
    int tx = og_input(&o, F32T(K(N)), x);
    zoo_attrs a = {0};
    a.f[0] = 0.25;
    a.i[0] = 7;
    int y = og_node1(&o, ZOO_OP_DROPOUT, tx, &a);
    CHECK(og_run(&o, pass, 99) == 0);
    int kept = 0;
    for (int i = 0; i < N; i++) {
      float v = og_f(&o, y)[i];
      if (pass == 0) {
        CHECK(v == x[i]); /* identity when not training */
        continue;
      }
      int keep = zoo_rng_uniform(99, 7, (zoo_u64)i) >= 0.25f;
      CHECK(v == (keep ? x[i] * (1.0f / 0.75f) : 0.0f));
      kept += keep;
    }
    if (pass == 1) CHECKF(kept > N * 0.73 && kept < N * 0.77, "kept %d of %d", kept, N);
    og_free(&o);
  }
  free(x);
}

/* ---------------------------------------------------------------------------
 * Reductions */

TEST(op_sum_mean_reduce_to) {
  og o;
  og_init(&o);
  float x[24];
  for (int i = 0; i < 24; i++) x[i] = (float)i; /* [2, 3, 4]: x[a,b,c] = 12a + 4b + c */
  int tx = og_input(&o, F32T(K(2), K(3), K(4)), x);
  zoo_attrs a = {0};
  a.i[0] = 1;
  int s1 = og_node1(&o, ZOO_OP_SUM, tx, &a);
  a.i[1] = 1;
  int m1 = og_node1(&o, ZOO_OP_MEAN, tx, &a);
  a.i[0] = -1;
  a.i[1] = 0;
  int s2 = og_node1(&o, ZOO_OP_SUM, tx, &a);
  zoo_attrs r = {0};
  r.ndim = 2;
  r.dims[0] = K(3);
  r.dims[1] = K(1);
  int rt = og_node1(&o, ZOO_OP_REDUCE_TO, tx, &r);
  r.ndim = 1;
  r.dims[0] = K(4);
  int rt2 = og_node1(&o, ZOO_OP_REDUCE_TO, tx, &r);
  CHECK(rt2 >= 0);
  CHECK(o.g.tensors[s1].type.ndim == 2 && o.g.tensors[m1].type.ndim == 3);
  CHECK(og_run(&o, 0, 0) == 0);
  double e_s1[8], e_m1[8], e_s2[6], e_rt[3], e_rt2[4];
  for (int i = 0; i < 2; i++)
    for (int c = 0; c < 4; c++) e_s1[i * 4 + c] = 3 * (12 * i + c) + 12, e_m1[i * 4 + c] = e_s1[i * 4 + c] / 3;
  for (int i = 0; i < 2; i++)
    for (int b = 0; b < 3; b++) e_s2[i * 3 + b] = 4 * (12 * i + 4 * b) + 6;
  for (int b = 0; b < 3; b++) e_rt[b] = 8 * (4 * b) + 2 * 6 + 4 * 12;
  for (int c = 0; c < 4; c++) e_rt2[c] = 6 * c + 2 * (0 + 4 + 8) + 3 * 12;
  CHECK(maxdiff(og_f(&o, s1), e_s1, 8) == 0);
  CHECK(maxdiff(og_f(&o, m1), e_m1, 8) < 1e-7);
  CHECK(maxdiff(og_f(&o, s2), e_s2, 6) == 0);
  CHECK(maxdiff(og_f(&o, rt), e_rt, 3) == 0);
  CHECK(maxdiff(og_f(&o, rt2), e_rt2, 4) == 0);
  og_free(&o);
}

TEST(op_layernorm_rmsnorm) {
  og o;
  og_init(&o);
  float x[8] = {1, 2, 3, 4, -2, 0, 2, 8}, w[4] = {1, 2, 0.5f, -1}, b[4] = {0, 1, 0, 2};
  int tx = og_input(&o, F32T(K(2), K(4)), x), tw = og_input(&o, F32T(K(4)), w);
  int tb = og_input(&o, F32T(K(4)), b);
  zoo_attrs a = {0};
  a.f[0] = 1e-5;
  int ln0 = og_node1(&o, ZOO_OP_LAYERNORM, tx, &a);
  int ln = og_node3(&o, ZOO_OP_LAYERNORM, tx, tw, tb, &a);
  int rms = og_node2(&o, ZOO_OP_RMSNORM, tx, tw, &a);
  CHECK(og_run(&o, 0, 0) == 0);
  /* row 0: mean 2.5, var 1.25; row 1: mean 2, var (16 + 4 + 0 + 36) / 4 = 14 */
  double mean[2] = {2.5, 2}, var[2] = {1.25, 14}, ms[2] = {30.0 / 4, 72.0 / 4};
  for (int r = 0; r < 2; r++)
    for (int j = 0; j < 4; j++) {
      double xh = (x[r * 4 + j] - mean[r]) / sqrt(var[r] + 1e-5);
      CHECK(fabs(og_f(&o, ln0)[r * 4 + j] - xh) < 1e-6);
      CHECK(fabs(og_f(&o, ln)[r * 4 + j] - (xh * w[j] + b[j])) < 1e-6);
      double want = x[r * 4 + j] / sqrt(ms[r] + 1e-5) * w[j];
      CHECK(fabs(og_f(&o, rms)[r * 4 + j] - want) < 1e-6);
    }
  og_free(&o);
}

/* layernorm into heads (i0 = H: y as split_heads(layernorm(x), H)) and
 * linear_layernorm (the projection-and-norm fold): the same numbers, bit for
 * bit, as linear, layernorm and split_heads on their own. */
TEST(op_layernorm_heads_linear_layernorm) {
  og o;
  og_init(&o);
  float *x = randv(2 * 3 * 8), *w = randv(6 * 8), *g = randv(6), *b = randv(6);
  int tx = og_input(&o, F32T(K(2), K(3), K(8)), x), tw = og_input(&o, F32T(K(6), K(8)), w);
  int tg = og_input(&o, F32T(K(6)), g), tb = og_input(&o, F32T(K(6)), b);
  zoo_attrs a = {0}, h = {0};
  a.f[0] = 1e-5;
  h.i[0] = 2;
  int p = og_node2(&o, ZOO_OP_LINEAR, tx, tw, NULL);
  int y = og_node3(&o, ZOO_OP_LAYERNORM, p, tg, tb, &a);
  int ys = og_node1(&o, ZOO_OP_SPLIT_HEADS, y, &h);
  a.i[0] = 2;
  int yh = og_node3(&o, ZOO_OP_LAYERNORM, p, tg, tb, &a);
  int f = og_node(&o, ZOO_OP_LINEAR_LAYERNORM, 4, (int[]){tx, tw, tg, tb}, &a);
  a.i[0] = 0;
  int f0 = og_node(&o, ZOO_OP_LINEAR_LAYERNORM, 2, (int[]){tx, tw}, &a);
  int y0 = og_node1(&o, ZOO_OP_LAYERNORM, p, &a);
  CHECK(f >= 0 && f0 >= 0 && zoo_type_eq(&o.g.tensors[yh].type, &o.g.tensors[ys].type));
  CHECK(zoo_type_eq(&o.g.tensors[f + 1].type, &o.g.tensors[ys].type));
  CHECK(og_run(&o, 0, 0) == 0);
  size_t bytes = 2 * 3 * 6 * sizeof(float);
  CHECK(memcmp(og_f(&o, yh), og_f(&o, ys), bytes) == 0);
  CHECK(memcmp(og_f(&o, f), og_f(&o, p), bytes) == 0 && memcmp(og_f(&o, f + 1), og_f(&o, ys), bytes) == 0);
  CHECK(memcmp(og_f(&o, f0), og_f(&o, p), bytes) == 0 && memcmp(og_f(&o, f0 + 1), og_f(&o, y0), bytes) == 0);
  og_free(&o);
  free(x), free(w), free(g), free(b);
}

TEST(op_softmax_logsumexp) {
  og o;
  og_init(&o);
  float x[6] = {1, 2, 3, 1000, 1000, 999};
  int tx = og_input(&o, F32T(K(2), K(3)), x);
  int sm = og_node1(&o, ZOO_OP_SOFTMAX, tx, NULL), ls = og_node1(&o, ZOO_OP_LOGSUMEXP, tx, NULL);
  CHECK(og_run(&o, 0, 0) == 0);
  double z = exp(1) + exp(2) + exp(3), z2 = 2 + exp(-1);
  double e_sm[6] = {exp(1) / z, exp(2) / z, exp(3) / z, 1 / z2, 1 / z2, exp(-1) / z2};
  double e_ls[2] = {log(z), 1000 + log(z2)};
  CHECK(maxdiff(og_f(&o, sm), e_sm, 6) < 1e-7);
  CHECK(maxdiff(og_f(&o, ls), e_ls, 2) < 1e-7);
  og_free(&o);
}

TEST(op_cross_entropy_accuracy_argmax) {
  og o;
  og_init(&o);
  /* [2, 2, 3] logits; targets with one ignored entry */
  float l[12] = {1, 2, 3, 0, 0, 0, 5, 1, 5, -1, 2, 0};
  int32_t tg[4] = {2, -100, 2, 0};
  int32_t none[4] = {-100, -100, -100, -100};
  int tl = og_input(&o, F32T(K(2), K(2), K(3)), l), tt = og_input(&o, I32T(K(2), K(2)), tg);
  int tn = og_input(&o, I32T(K(2), K(2)), none);
  float one = 1.0f;
  int td = og_input(&o, scalar_t, &one);
  zoo_attrs a = {0};
  a.i[0] = -100;
  int ce = og_node2(&o, ZOO_OP_CROSS_ENTROPY, tl, tt, &a);
  int ce0 = og_node2(&o, ZOO_OP_CROSS_ENTROPY, tl, tn, &a);
  int acc = og_node2(&o, ZOO_OP_ACCURACY, tl, tt, &a);
  int am = og_node1(&o, ZOO_OP_ARGMAX, tl, NULL);
  int ceb = og_node3(&o, ZOO_OP_CROSS_ENTROPY_BWD, td, tl, tt, &a);
  CHECK(ceb >= 0);
  CHECK(og_run(&o, 0, 0) == 0);
  double lse0 = log(exp(1) + exp(2) + exp(3)), lse2 = log(2 * exp(5) + exp(1));
  double lse3 = log(exp(-1) + exp(2) + exp(0));
  double want = ((lse0 - 3) + (lse2 - 5) + (lse3 + 1)) / 3;
  CHECKF(fabs(og_f(&o, ce)[0] - want) < 1e-6, "%g vs %g", og_f(&o, ce)[0], want);
  CHECK(og_f(&o, ce0)[0] == 0.0f);
  /* argmax: first maximum; row 2 ties 5, 5 -> 0; correct: row 0 (2 == 2) only */
  int32_t *amv = zoo_cpu_i32(&o.cpu, am);
  CHECK(amv[0] == 2 && amv[1] == 0 && amv[2] == 0 && amv[3] == 1);
  CHECK(og_f(&o, acc)[0] == 1.0f && og_f(&o, acc)[1] == 3.0f);
  /* dlogits: (softmax - onehot) / 3 on labelled rows, zero on the ignored row */
  const float *d = og_f(&o, ceb);
  for (int j = 0; j < 3; j++) {
    CHECK(fabs(d[j] - (exp(l[j] - lse0) - (j == 2)) / 3) < 1e-7);
    CHECK(d[3 + j] == 0.0f);
  }
  og_free(&o);

  /* cross_entropy_step: the three results above in one node, bit for bit */
  og_init(&o);
  tl = og_input(&o, F32T(K(2), K(2), K(3)), l), tt = og_input(&o, I32T(K(2), K(2)), tg);
  float half = 0.5f;
  td = og_input(&o, scalar_t, &half);
  int step = og_node3(&o, ZOO_OP_CROSS_ENTROPY_STEP, tl, tt, td, &a);
  ce = og_node2(&o, ZOO_OP_CROSS_ENTROPY, tl, tt, &a);
  acc = og_node2(&o, ZOO_OP_ACCURACY, tl, tt, &a);
  ceb = og_node3(&o, ZOO_OP_CROSS_ENTROPY_BWD, td, tl, tt, &a);
  CHECK(ceb >= 0 && step >= 0);
  CHECK(og_run(&o, 0, 0) == 0);
  CHECK(og_f(&o, step)[0] == og_f(&o, ce)[0]);
  CHECK(memcmp(og_f(&o, step + 1), og_f(&o, acc), 2 * sizeof(float)) == 0);
  CHECK(memcmp(og_f(&o, step + 2), og_f(&o, ceb), 12 * sizeof(float)) == 0);
  CHECK(og_f(&o, step + 2)[3] == 0.0f && og_f(&o, step + 1)[1] == 3.0f);
  og_free(&o);

  /* a target out of range is a run-time error that says so */
  og_init(&o);
  int32_t bad[4] = {2, 3, 0, 0};
  tl = og_input(&o, F32T(K(2), K(2), K(3)), l);
  tt = og_input(&o, I32T(K(2), K(2)), bad);
  og_node2(&o, ZOO_OP_CROSS_ENTROPY, tl, tt, &a);
  CHECK(og_run(&o, 0, 0) == -1);
  CHECKF(strcmp(o.cpu.err, "cross_entropy: target 3 out of range [0, 3)") == 0, "%s", o.cpu.err);
  og_free(&o);
}

/* linear_cross_entropy_step: linear, cross_entropy_step and matmul(dlogits, w)
 * in one node, bit for bit; h with and without leading axes, ignored rows */
TEST(op_linear_cross_entropy_step) {
  int64_t shapes[2][3] = {{13, 1, 8}, {2, 3, 4}}; /* rows (or B, T), D */
  int64_t vocab[2] = {10, 5};
  for (int c = 0; c < 2; c++) {
    int64_t V = vocab[c], D = shapes[c][2], N = shapes[c][0] * shapes[c][1];
    zoo_type ht = c == 0 ? F32T(K(N), K(D)) : F32T(K(shapes[c][0]), K(shapes[c][1]), K(D));
    zoo_type tt = c == 0 ? I32T(K(N)) : I32T(K(shapes[c][0]), K(shapes[c][1]));
    float *h = randv(N * D), *w = randv(V * D);
    int32_t tg[13];
    for (int r = 0; r < N; r++) tg[r] = r % 4 == 1 ? -100 : (int32_t)((r * 7) % V);
    float dl = 0.75f;
    og o;
    og_init(&o);
    int th = og_input(&o, ht, h), tw = og_input(&o, F32T(K(V), K(D)), w);
    int tt_ = og_input(&o, tt, tg), td = og_input(&o, scalar_t, &dl);
    zoo_attrs a = {0};
    a.i[0] = -100;
    int in4[4] = {th, tw, tt_, td};
    int step = og_node(&o, ZOO_OP_LINEAR_CROSS_ENTROPY_STEP, 4, in4, &a);
    int logits = og_node2(&o, ZOO_OP_LINEAR, th, tw, NULL);
    int ce = og_node3(&o, ZOO_OP_CROSS_ENTROPY_STEP, logits, tt_, td, &a);
    int dh = og_node2(&o, ZOO_OP_MATMUL, ce + 2, tw, NULL);
    CHECK(step >= 0 && dh >= 0);
    CHECK(zoo_type_eq(&o.g.tensors[step + 2].type, &o.g.tensors[logits].type));
    CHECK(zoo_type_eq(&o.g.tensors[step + 3].type, &ht));
    CHECK(og_run(&o, 0, 0) == 0);
    CHECK(og_f(&o, step)[0] == og_f(&o, ce)[0] && og_f(&o, step)[0] > 0);
    CHECK(memcmp(og_f(&o, step + 1), og_f(&o, ce + 1), 2 * sizeof(float)) == 0);
    CHECK(memcmp(og_f(&o, step + 2), og_f(&o, ce + 2), (size_t)(N * V) * sizeof(float)) == 0);
    CHECK(memcmp(og_f(&o, step + 3), og_f(&o, dh), (size_t)(N * D) * sizeof(float)) == 0);
    int zero_rows = 1; /* ignored rows: no gradient */
    for (int r = 1; r < N; r += 4)
      for (int j = 0; j < D; j++) zero_rows &= og_f(&o, step + 3)[r * D + j] == 0.0f;
    CHECK(zero_rows);
    og_free(&o);
    free(h), free(w);
  }

  /* shapes: dloss must be a scalar, w's width h's */
  og o;
  og_init(&o);
  FILE *quiet = fopen("/dev/null", "w");
  zoo_diag_init(&o.d, quiet);
  int th = og_input(&o, F32T(K(6), K(4)), NULL), tw = og_input(&o, F32T(K(9), K(4)), NULL);
  int tw3 = og_input(&o, F32T(K(9), K(3)), NULL), tt_ = og_input(&o, I32T(K(6)), NULL);
  int td = og_input(&o, scalar_t, NULL);
  zoo_attrs a = {0};
  int ok4[4] = {th, tw, tt_, td}, bad_w[4] = {th, tw3, tt_, td}, bad_dl[4] = {th, tw, tt_, th};
  CHECK(og_node(&o, ZOO_OP_LINEAR_CROSS_ENTROPY_STEP, 4, ok4, &a) >= 0);
  CHECK(og_node(&o, ZOO_OP_LINEAR_CROSS_ENTROPY_STEP, 4, bad_w, &a) < 0);
  CHECK(og_node(&o, ZOO_OP_LINEAR_CROSS_ENTROPY_STEP, 4, bad_dl, &a) < 0);
  if (quiet) fclose(quiet);
  zoo_graph_free(&o.g);
}

/* ---------------------------------------------------------------------------
 * Movement */

TEST(op_movement) {
  og o;
  og_init(&o);
  float x[24];
  for (int i = 0; i < 24; i++) x[i] = (float)i; /* [2, 3, 4] */
  int tx = og_input(&o, F32T(K(2), K(3), K(4)), x);
  zoo_attrs a = {0};
  a.ndim = 2;
  a.dims[0] = K(6);
  a.dims[1] = K(4);
  int rs = og_node1(&o, ZOO_OP_RESHAPE, tx, &a);
  a = (zoo_attrs){0};
  a.ndim = 3;
  a.dims[0] = K(2), a.dims[1] = K(0), a.dims[2] = K(1); /* y[c, a, b] = x[a, b, c] */
  int pm = og_node1(&o, ZOO_OP_PERMUTE, tx, &a);
  a = (zoo_attrs){0};
  a.i[0] = 2;
  int sh = og_node1(&o, ZOO_OP_SPLIT_HEADS, tx, &a); /* [2, 2, 3, 2] */
  int mh = og_node1(&o, ZOO_OP_MERGE_HEADS, sh, NULL);
  a = (zoo_attrs){0};
  a.i[0] = 1, a.i[1] = 1, a.ndim = 1, a.dims[0] = K(2);
  int sl = og_node1(&o, ZOO_OP_SLICE, tx, &a); /* [2, 2, 4] rows b = 1, 2 */
  a = (zoo_attrs){0};
  a.i[0] = -1;
  int cc = og_node2(&o, ZOO_OP_CONCAT, tx, tx, &a); /* [2, 3, 8] */
  a = (zoo_attrs){0};
  a.i[0] = 1, a.i[1] = 1;
  int s1 = og_node1(&o, ZOO_OP_SHIFT, tx, &a);
  a.i[1] = -2;
  int s2 = og_node1(&o, ZOO_OP_SHIFT, tx, &a);
  int32_t ids[3] = {4, 5, 6};
  int ti = og_input(&o, I32T(K(3)), ids);
  a = (zoo_attrs){0};
  a.ndim = 2, a.dims[0] = K(1), a.dims[1] = K(3);
  int ri = og_node1(&o, ZOO_OP_RESHAPE, ti, &a); /* i32 moves too */
  CHECK(og_run(&o, 0, 0) == 0);
  for (int i = 0; i < 24; i++) CHECK(og_f(&o, rs)[i] == x[i]);
  for (int A = 0; A < 2; A++)
    for (int B = 0; B < 3; B++)
      for (int C = 0; C < 4; C++) {
        float v = x[A * 12 + B * 4 + C];
        CHECK(og_f(&o, pm)[C * 6 + A * 3 + B] == v);
        /* split into 2 heads of 2: [A, h, B, e] = x[A, B, 2h + e] */
        CHECK(og_f(&o, sh)[((A * 2 + C / 2) * 3 + B) * 2 + C % 2] == v);
        CHECK(og_f(&o, mh)[A * 12 + B * 4 + C] == v);
        CHECK(og_f(&o, cc)[A * 24 + B * 8 + C] == v && og_f(&o, cc)[A * 24 + B * 8 + 4 + C] == v);
        if (B >= 1) CHECK(og_f(&o, sl)[A * 8 + (B - 1) * 4 + C] == v);
        CHECK(og_f(&o, s1)[A * 12 + B * 4 + C] == (B >= 1 ? x[A * 12 + (B - 1) * 4 + C] : 0));
        CHECK(og_f(&o, s2)[A * 12 + B * 4 + C] == (B + 2 < 3 ? x[A * 12 + (B + 2) * 4 + C] : 0));
      }
  CHECK(zoo_cpu_i32(&o.cpu, ri)[2] == 6);
  og_free(&o);
}

/* ---------------------------------------------------------------------------
 * Matrix products */

TEST(op_linear) {
  og o;
  og_init(&o);
  float x[6] = {1, 2, 3, 4, 5, 6};       /* [2, 3] */
  float w[6] = {1, 0, -1, 0.5f, 1, 2};   /* [2, 3] */
  float b[2] = {10, -10};
  int tx = og_input(&o, F32T(K(2), K(3)), x), tw = og_input(&o, F32T(K(2), K(3)), w);
  int tb = og_input(&o, F32T(K(2)), b);
  int y0 = og_node2(&o, ZOO_OP_LINEAR, tx, tw, NULL), y1 = og_node3(&o, ZOO_OP_LINEAR, tx, tw, tb, NULL);
  /* a bigger one against a plain double loop: [2, 5, 37] x [29, 37]^T */
  float *X = randv(2 * 5 * 37), *W = randv(29 * 37), *Bv = randv(29);
  int tX = og_input(&o, F32T(K(2), K(5), K(37)), X), tW = og_input(&o, F32T(K(29), K(37)), W);
  int tB = og_input(&o, F32T(K(29)), Bv);
  int Y = og_node3(&o, ZOO_OP_LINEAR, tX, tW, tB, NULL);
  CHECK(og_run(&o, 0, 0) == 0);
  double e0[4] = {1 - 3, 0.5 + 2 + 6, 4 - 6, 2 + 5 + 12};
  double e1[4] = {e0[0] + 10, e0[1] - 10, e0[2] + 10, e0[3] - 10};
  CHECK(maxdiff(og_f(&o, y0), e0, 4) == 0);
  CHECK(maxdiff(og_f(&o, y1), e1, 4) == 0);
  double *ref = malloc(10 * 29 * sizeof *ref);
  for (int r = 0; r < 10; r++)
    for (int j = 0; j < 29; j++) {
      double s = Bv[j];
      for (int k = 0; k < 37; k++) s += (double)X[r * 37 + k] * W[j * 37 + k];
      ref[r * 29 + j] = s;
    }
  CHECK(maxdiff(og_f(&o, Y), ref, 10 * 29) < 1e-5);
  free(ref), free(X), free(W), free(Bv);
  og_free(&o);
}

TEST(op_matmul) {
  /* every transpose combination, with b shared over a batch of 3 or both batched */
  enum { NB = 3, M = 4, KK = 5, N = 6 };
  for (int mode = 0; mode < 8; mode++) {
    int ta = mode & 1, tb = (mode >> 1) & 1, shared = mode >> 2;
    og o;
    og_init(&o);
    float *A = randv(NB * M * KK), *Bm = randv(NB * KK * N);
    zoo_type at = ta ? F32T(K(NB), K(KK), K(M)) : F32T(K(NB), K(M), K(KK));
    zoo_type bt = tb ? F32T(K(N), K(KK)) : F32T(K(KK), K(N));
    if (!shared) bt = tb ? F32T(K(NB), K(N), K(KK)) : F32T(K(NB), K(KK), K(N));
    int tA = og_input(&o, at, A), tB = og_input(&o, bt, Bm);
    zoo_attrs a = {0};
    a.i[0] = ta, a.i[1] = tb;
    int y = og_node2(&o, ZOO_OP_MATMUL, tA, tB, &a);
    CHECK(y >= 0);
    CHECK(og_run(&o, 0, 0) == 0);
    double ref[NB * M * N];
    for (int q = 0; q < NB; q++)
      for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
          double s = 0;
          for (int k = 0; k < KK; k++) {
            double av = ta ? A[(q * KK + k) * M + i] : A[(q * M + i) * KK + k];
            const float *bq = Bm + (shared ? 0 : q * KK * N);
            double bv = tb ? bq[j * KK + k] : bq[k * N + j];
            s += av * bv;
          }
          ref[(q * M + i) * N + j] = s;
        }
    CHECKF(maxdiff(og_f(&o, y), ref, NB * M * N) < 1e-6, "mode %d", mode);
    free(A), free(Bm);
    og_free(&o);
  }
}

/* ---------------------------------------------------------------------------
 * Gather, scans */

TEST(op_embedding_arange) {
  og o;
  og_init(&o);
  float w[8] = {0, 1, 10, 11, 20, 21, 30, 31}; /* [4, 2] */
  int32_t ids[5] = {3, 0, 3, 1, 3};
  float dy[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  int tw = og_input(&o, F32T(K(4), K(2)), w), ti = og_input(&o, I32T(K(5)), ids);
  int td = og_input(&o, F32T(K(5), K(2)), dy);
  int e = og_node2(&o, ZOO_OP_EMBEDDING, tw, ti, NULL);
  zoo_attrs a = {0};
  a.ndim = 2, a.dims[0] = K(4), a.dims[1] = K(2);
  int eb = og_node2(&o, ZOO_OP_EMBEDDING_BWD, td, ti, &a);
  a = (zoo_attrs){0};
  a.ndim = 1, a.dims[0] = K(5);
  int ar = og_node(&o, ZOO_OP_ARANGE, 0, NULL, &a);
  CHECK(og_run(&o, 0, 0) == 0);
  double e_e[10] = {30, 31, 0, 1, 30, 31, 10, 11, 30, 31};
  double e_eb[8] = {3, 4, 7, 8, 0, 0, 1 + 5 + 9, 2 + 6 + 10};
  CHECK(maxdiff(og_f(&o, e), e_e, 10) == 0);
  CHECK(maxdiff(og_f(&o, eb), e_eb, 8) == 0);
  for (int i = 0; i < 5; i++) CHECK(zoo_cpu_i32(&o.cpu, ar)[i] == i);
  og_free(&o);

  /* an id out of range is an error naming it */
  og_init(&o);
  float *big = calloc(8192 * 2, sizeof *big);
  int32_t bad[2] = {1, 9000};
  tw = og_input(&o, F32T(K(8192), K(2)), big);
  ti = og_input(&o, I32T(K(2)), bad);
  og_node2(&o, ZOO_OP_EMBEDDING, tw, ti, NULL);
  CHECK(og_run(&o, 0, 0) == -1);
  CHECKF(strcmp(o.cpu.err, "embedding: id 9000 out of range [0, 8192)") == 0, "%s", o.cpu.err);
  free(big);
  og_free(&o);
}

/* label_rows lists the labelled positions in order (idx, tc), marks them in
 * pos and pads; gather_rows and scatter_rows move rows both ways; more labelled
 * positions than rows is an error */
TEST(op_label_gather_scatter_rows) {
  og o;
  og_init(&o);
  int32_t tg[6] = {-100, 7, 5, -100, -100, 2}; /* [2, 3] */
  float x[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}; /* [6, 2] as [2, 3, 2] */
  float dy[8] = {1, 2, 3, 4, 5, 6, 7, 8};                /* [4, 2] */
  int tt = og_input(&o, I32T(K(2), K(3)), tg);
  int tx = og_input(&o, F32T(K(2), K(3), K(2)), x);
  int td = og_input(&o, F32T(K(4), K(2)), dy);
  zoo_attrs a = {0};
  a.i[0] = -100, a.i[1] = 2; /* 4 rows */
  int idx = og_node(&o, ZOO_OP_LABEL_ROWS, 1, &tt, &a);
  int gi[3] = {tx, idx, idx + 1};
  int y = og_node(&o, ZOO_OP_GATHER_ROWS, 3, gi, NULL);
  int dx = og_node2(&o, ZOO_OP_SCATTER_ROWS, td, idx + 1, NULL);
  CHECK(og_run(&o, 0, 0) == 0);
  int32_t e_idx[4] = {1, 2, 5, -1}, e_pos[6] = {-1, 0, 1, -1, -1, 2}, e_tc[4] = {7, 5, 2, -100};
  CHECK(memcmp(zoo_cpu_i32(&o.cpu, idx), e_idx, sizeof e_idx) == 0);
  CHECK(memcmp(zoo_cpu_i32(&o.cpu, idx + 1), e_pos, sizeof e_pos) == 0);
  CHECK(memcmp(zoo_cpu_i32(&o.cpu, idx + 2), e_tc, sizeof e_tc) == 0);
  double e_y[8] = {3, 4, 5, 6, 11, 12, 0, 0};
  double e_dx[12] = {0, 0, 1, 2, 3, 4, 0, 0, 0, 0, 5, 6};
  CHECK(maxdiff(og_f(&o, y), e_y, 8) == 0);
  CHECK(maxdiff(og_f(&o, dx), e_dx, 12) == 0);
  og_free(&o);

  og_init(&o);
  int32_t many[6] = {1, 2, 3, -100, 4, 5};
  tt = og_input(&o, I32T(K(2), K(3)), many);
  og_node(&o, ZOO_OP_LABEL_ROWS, 1, &tt, &a);
  CHECK(og_run(&o, 0, 0) == -1);
  CHECKF(strcmp(o.cpu.err, "label_rows: more than 4 labelled positions (2 per sequence)") == 0, "%s",
         o.cpu.err);
  og_free(&o);
}

TEST(op_cumsum) {
  og o;
  og_init(&o);
  float x[6] = {1, 2, 3, 4, 5, 6}; /* [2, 3] */
  int tx = og_input(&o, F32T(K(2), K(3)), x);
  zoo_attrs a = {0};
  a.i[0] = 0;
  int c0 = og_node1(&o, ZOO_OP_CUMSUM, tx, &a);
  a.i[0] = -1;
  int c1 = og_node1(&o, ZOO_OP_CUMSUM, tx, &a);
  CHECK(og_run(&o, 0, 0) == 0);
  double e0[6] = {1, 2, 3, 5, 7, 9}, e1[6] = {1, 3, 6, 4, 9, 15};
  CHECK(maxdiff(og_f(&o, c0), e0, 6) == 0);
  CHECK(maxdiff(og_f(&o, c1), e1, 6) == 0);
  og_free(&o);
}

TEST(op_causal_conv1d) {
  og o;
  og_init(&o);
  /* B = 1, T = 4, C = 2, K = 3 */
  float x[8] = {1, 10, 2, 20, 3, 30, 4, 40};
  float w[6] = {1, 2, 3, -1, 0, 1}; /* w[c, 0, j] */
  float b[2] = {0.5f, -0.5f};
  float dy[8] = {1, 1, 2, 0, 0, 3, 1, -1};
  int tx = og_input(&o, F32T(K(1), K(4), K(2)), x), tw = og_input(&o, F32T(K(2), K(1), K(3)), w);
  int tb = og_input(&o, F32T(K(2)), b), td = og_input(&o, F32T(K(1), K(4), K(2)), dy);
  int y = og_node3(&o, ZOO_OP_CAUSAL_CONV1D, tx, tw, tb, NULL);
  int y0 = og_node2(&o, ZOO_OP_CAUSAL_CONV1D, tx, tw, NULL);
  int bw = og_node3(&o, ZOO_OP_CAUSAL_CONV1D_BWD, td, tx, tw, NULL);
  CHECK(og_run(&o, 0, 0) == 0);
  /* channel 0 (w 1 2 3): y[t] = x[t-2] + 2 x[t-1] + 3 x[t]; channel 1 (w -1 0 1): x[t] - x[t-2] */
  double e0[8] = {3, 10, 2 + 6, 20, 1 + 4 + 9, 30 - 10, 2 + 6 + 12, 40 - 20};
  CHECK(maxdiff(og_f(&o, y0), e0, 8) == 0);
  for (int i = 0; i < 8; i++) CHECK(og_f(&o, y)[i] == (float)e0[i] + b[i % 2]);
  /* dx[s, c] = sum_j w[c, j] dy[s + 2 - j, c]; dw[c, j] = sum_t dy[t, c] x[t - 2 + j, c] */
  double dx[8], dw[6], db[2] = {0, 0};
  for (int s = 0; s < 4; s++)
    for (int c = 0; c < 2; c++) {
      dx[s * 2 + c] = 0;
      for (int j = 0; j < 3; j++)
        if (s + 2 - j < 4) dx[s * 2 + c] += w[c * 3 + j] * dy[(s + 2 - j) * 2 + c];
    }
  for (int c = 0; c < 2; c++)
    for (int j = 0; j < 3; j++) {
      dw[c * 3 + j] = 0;
      for (int s = 0; s < 4; s++)
        if (s - 2 + j >= 0) dw[c * 3 + j] += dy[s * 2 + c] * x[(s - 2 + j) * 2 + c];
    }
  for (int s = 0; s < 4; s++) db[0] += dy[s * 2], db[1] += dy[s * 2 + 1];
  CHECK(maxdiff(og_f(&o, bw), dx, 8) == 0);
  CHECK(maxdiff(og_f(&o, bw + 1), dw, 6) == 0);
  CHECK(maxdiff(og_f(&o, bw + 2), db, 2) == 0);
  og_free(&o);
}

/* ---------------------------------------------------------------------------
 * Attention intrinsics */

/* poly_attention by its feature map, in another loop order: with
 * phi(x) = [sqrt(c0), sqrt(c1 s) x, sqrt(c2) s x (x) x] (s = scale), a_ij =
 * phi(q_i).phi(k_j), and the causal sums are running states over j:
 * S = sum_j phi(k_j) v_j^T, z = sum_j phi(k_j); o_i = phi(q_i)^T S / (phi(q_i).z + eps). */
static void poly_by_features(const float *q, const float *k, const float *v, float *o, int BH,
                             int T, int F, int Dv, double c0, double c1, double c2, double scale,
                             double eps) {
  int P = 1 + F + F * F;
  double *phk = malloc(P * sizeof *phk), *phq = malloc(P * sizeof *phq);
  double *S = malloc((size_t)P * Dv * sizeof *S), *z = malloc(P * sizeof *z);
  for (int p = 0; p < BH; p++) {
    memset(S, 0, (size_t)P * Dv * sizeof *S);
    memset(z, 0, P * sizeof *z);
    for (int t = 0; t < T; t++) {
      const float *kt = k + (p * T + t) * F, *qt = q + (p * T + t) * F, *vt = v + (p * T + t) * Dv;
      for (int side = 0; side < 2; side++) {
        const float *x = side ? qt : kt;
        double *ph = side ? phq : phk;
        ph[0] = sqrt(c0);
        for (int a = 0; a < F; a++) ph[1 + a] = sqrt(c1 * scale) * x[a];
        for (int a = 0; a < F; a++)
          for (int b = 0; b < F; b++) ph[1 + F + a * F + b] = sqrt(c2) * scale * x[a] * x[b];
      }
      for (int f = 0; f < P; f++) {
        z[f] += phk[f];
        for (int e = 0; e < Dv; e++) S[f * Dv + e] += phk[f] * vt[e];
      }
      double den = eps;
      for (int f = 0; f < P; f++) den += phq[f] * z[f];
      for (int e = 0; e < Dv; e++) {
        double num = 0;
        for (int f = 0; f < P; f++) num += phq[f] * S[f * Dv + e];
        o[(p * T + t) * Dv + e] = (float)(num / den);
      }
    }
  }
  free(phk), free(phq), free(S), free(z);
}

TEST(op_poly_attention) {
  enum { B = 2, H = 3, T = 7, F = 4, Dv = 5 };
  float *q = randv(B * H * T * F), *k = randv(B * H * T * F), *v = randv(B * H * T * Dv);
  for (int i = 0; i < B * H * T * F; i++) k[i] = 0.5f * k[i] + 0.6f, q[i] = 0.5f * q[i] + 0.6f;
  double coefs[2][5] = {{0, 0, 1, 0.5, 1e-12}, {1, 1, 0.5, 0.5, 1e-12}}; /* ReBased, Based */
  for (int which = 0; which < 2; which++) {
    og o;
    og_init(&o);
    int tq = og_input(&o, F32T(K(B), K(H), K(T), K(F)), q);
    int tk = og_input(&o, F32T(K(B), K(H), K(T), K(F)), k);
    int tv = og_input(&o, F32T(K(B), K(H), K(T), K(Dv)), v);
    zoo_attrs a = {0};
    for (int i = 0; i < 5; i++) a.f[i] = coefs[which][i];
    int y = og_node3(&o, ZOO_OP_POLY_ATTENTION, tq, tk, tv, &a);
    CHECK(y >= 0);
    CHECK(og_run(&o, 0, 0) == 0);
    float ref[B * H * T * Dv];
    poly_by_features(q, k, v, ref, B * H, T, F, Dv, a.f[0], a.f[1], a.f[2], a.f[3], a.f[4]);
    CHECKF(maxdiff_f(og_f(&o, y), ref, B * H * T * Dv) < 1e-5, "coefficients %d: %g", which,
           maxdiff_f(og_f(&o, y), ref, B * H * T * Dv));
    /* the first position attends to itself only: o_0 = v_0 a / (a + eps) */
    for (int e = 0; e < Dv; e++) CHECK(fabs(og_f(&o, y)[e] - v[e]) < 1e-6);
    og_free(&o);
  }
  free(q), free(k), free(v);
}

/* poly_attention and its backward with the heads interleaved (layout 1,
 * [B, T, H*W]), and with q and k alone interleaved (layout 2), against
 * split_heads, layout 0 and merge_heads: the same bits, forward and backward.
 * T = 21 crosses the kernel's blocks of 16 keys. */
TEST(op_poly_attention_interleaved) {
  enum { B = 2, H = 3, T = 21, F = 4, Dv = 5 };
  float *q = randv(B * T * H * F), *k = randv(B * T * H * F), *v = randv(B * T * H * Dv);
  float *dout = randv(B * T * H * Dv);
  double coefs[2][5] = {{0, 0, 1, 0.5, 1e-12}, {1, 1, 0.5, 0.5, 1e-12}}; /* ReBased, Based */
  for (int which = 0; which < 2; which++) {
    og o;
    og_init(&o);
    int tq = og_input(&o, F32T(K(B), K(T), K(H * F)), q);
    int tk = og_input(&o, F32T(K(B), K(T), K(H * F)), k);
    int tv = og_input(&o, F32T(K(B), K(T), K(H * Dv)), v);
    int td = og_input(&o, F32T(K(B), K(T), K(H * Dv)), dout);
    zoo_attrs a = {0}, heads = {0};
    for (int i = 0; i < 5; i++) a.f[i] = coefs[which][i];
    heads.i[0] = H;
    /* layout 0 between the copies */
    int sq = og_node1(&o, ZOO_OP_SPLIT_HEADS, tq, &heads), sk = og_node1(&o, ZOO_OP_SPLIT_HEADS, tk, &heads);
    int sv = og_node1(&o, ZOO_OP_SPLIT_HEADS, tv, &heads), sd = og_node1(&o, ZOO_OP_SPLIT_HEADS, td, &heads);
    int y0 = og_node1(&o, ZOO_OP_MERGE_HEADS, og_node3(&o, ZOO_OP_POLY_ATTENTION, sq, sk, sv, &a), NULL);
    int g0 = og_node(&o, ZOO_OP_POLY_ATTENTION_BWD, 4, (int[]){sd, sq, sk, sv}, &a);
    int d0[3];
    for (int j = 0; j < 3; j++) d0[j] = og_node1(&o, ZOO_OP_MERGE_HEADS, g0 + j, NULL);
    /* layout 1 */
    a.i[0] = 1, a.i[1] = H;
    int y1 = og_node3(&o, ZOO_OP_POLY_ATTENTION, tq, tk, tv, &a);
    int g1 = og_node(&o, ZOO_OP_POLY_ATTENTION_BWD, 4, (int[]){td, tq, tk, tv}, &a);
    /* layout 2: v, do split; the output and dv merged after */
    a.i[0] = 2;
    int y2 = og_node1(&o, ZOO_OP_MERGE_HEADS, og_node3(&o, ZOO_OP_POLY_ATTENTION, tq, tk, sv, &a), NULL);
    int g2 = og_node(&o, ZOO_OP_POLY_ATTENTION_BWD, 4, (int[]){sd, tq, tk, sv}, &a);
    int dv2 = og_node1(&o, ZOO_OP_MERGE_HEADS, g2 + 2, NULL);
    CHECK(y0 >= 0 && g0 >= 0 && y1 >= 0 && g1 >= 0 && y2 >= 0 && g2 >= 0 && dv2 >= 0);
    CHECK(og_run(&o, 0, 0) == 0);
    CHECKF(memcmp(og_f(&o, y0), og_f(&o, y1), B * T * H * Dv * sizeof(float)) == 0, "coefficients %d: o differs",
           which);
    CHECKF(memcmp(og_f(&o, y0), og_f(&o, y2), B * T * H * Dv * sizeof(float)) == 0,
           "coefficients %d: o differs in layout 2", which);
    int l2[3] = {g2, g2 + 1, dv2};
    for (int j = 0; j < 3; j++) {
      int64_t n = o.cpu.numel[d0[j]];
      CHECKF(o.cpu.numel[g1 + j] == n && memcmp(og_f(&o, d0[j]), og_f(&o, g1 + j), (size_t)n * sizeof(float)) == 0,
             "coefficients %d: gradient %d differs", which, j);
      CHECKF(o.cpu.numel[l2[j]] == n && memcmp(og_f(&o, d0[j]), og_f(&o, l2[j]), (size_t)n * sizeof(float)) == 0,
             "coefficients %d: gradient %d differs in layout 2", which, j);
    }
    double largest = 0; /* the comparison is not of zeros */
    for (int64_t i = 0; i < B * T * H * F; i++) largest = fmax(largest, fabs(og_f(&o, g1)[i]));
    CHECK(largest > 1e-3);
    og_free(&o);
  }
  free(q), free(k), free(v), free(dout);
}

/* softmax attention straight from its definition, [B, H, T, T] scores in hand */
static void softmax_attention_naive(const float *q, const float *k, const float *v, double *o,
                                    int B, int H, int T, int F, int Dv, double scale, int causal,
                                    double p, uint64_t seed, int stream) {
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++) {
      int pr = b * H + h;
      for (int i = 0; i < T; i++) {
        double s[64], mx = -1e300, z = 0;
        for (int j = 0; j < T; j++) {
          double d = 0;
          for (int f = 0; f < F; f++) d += (double)q[(pr * T + i) * F + f] * k[(pr * T + j) * F + f];
          s[j] = scale * d + (causal && j > i ? -10000.0 : 0.0);
          mx = fmax(mx, s[j]);
        }
        for (int j = 0; j < T; j++) z += exp(s[j] - mx);
        for (int e = 0; e < Dv; e++) o[(pr * T + i) * Dv + e] = 0;
        for (int j = 0; j < T; j++) {
          double pij = exp(s[j] - mx) / z;
          if (p > 0) {
            float u = zoo_rng_uniform(seed, (zoo_u64)stream, (zoo_u64)(((b * H + h) * T + i) * T + j));
            pij = u >= (float)p ? pij / (1 - p) : 0;
          }
          for (int e = 0; e < Dv; e++) o[(pr * T + i) * Dv + e] += pij * v[(pr * T + j) * Dv + e];
        }
      }
    }
}

TEST(op_softmax_attention) {
  enum { B = 2, H = 2, T = 9, F = 4, Dv = 3 };
  float *q = randv(B * H * T * F), *k = randv(B * H * T * F), *v = randv(B * H * T * Dv);
  struct { int causal; double p; int training; } cases[] = {{1, 0, 1}, {0, 0, 0}, {1, 0.3, 1},
                                                             {1, 0.3, 0}};
  for (int c = 0; c < 4; c++) {
    og o;
    og_init(&o);
    int tq = og_input(&o, F32T(K(B), K(H), K(T), K(F)), q);
    int tk = og_input(&o, F32T(K(B), K(H), K(T), K(F)), k);
    int tv = og_input(&o, F32T(K(B), K(H), K(T), K(Dv)), v);
    zoo_attrs a = {0};
    a.f[0] = 0.7, a.f[1] = cases[c].p, a.i[0] = 3, a.i[1] = cases[c].causal;
    int y = og_node3(&o, ZOO_OP_SOFTMAX_ATTENTION, tq, tk, tv, &a);
    CHECK(y >= 0);
    CHECK(og_run(&o, cases[c].training, 1234) == 0);
    double ref[B * H * T * Dv];
    softmax_attention_naive(q, k, v, ref, B, H, T, F, Dv, 0.7, cases[c].causal,
                            cases[c].training ? cases[c].p : 0, 1234, 3);
    CHECKF(maxdiff(og_f(&o, y), ref, B * H * T * Dv) < 1e-6, "case %d", c);
    /* the second output: each row's log-sum-exp of the masked, scaled scores */
    double lse[B * H * T];
    for (int r = 0; r < B * H * T; r++) {
      int pr = r / T, i = r % T;
      double s[T], m = -INFINITY, sum = 0;
      for (int j = 0; j < T; j++) {
        double dot = 0;
        for (int f = 0; f < F; f++) dot += (double)q[(pr * T + i) * F + f] * k[(pr * T + j) * F + f];
        s[j] = 0.7 * dot + (cases[c].causal && j > i ? -10000.0 : 0.0);
        m = fmax(m, s[j]);
      }
      for (int j = 0; j < T; j++) sum += exp(s[j] - m);
      lse[r] = m + log(sum);
    }
    CHECKF(maxdiff(og_f(&o, y + 1), lse, B * H * T) < 1e-5, "case %d: lse", c);
    if (cases[c].causal) /* position 0 sees only itself */
      for (int e = 0; e < Dv; e++)
        CHECK(cases[c].p > 0 || fabs(og_f(&o, y)[e] - v[e]) < 1e-6);
    og_free(&o);
  }
  free(q), free(k), free(v);
}

/* The packed form against slices, split_heads, softmax_attention, merge_heads
 * and (backward) concats of the three gradients: the same bits, dropout on. */
TEST(op_softmax_attention_packed) {
  enum { B = 2, H = 3, T = 9, F = 4 };
  float *x = randv(B * T * 3 * H * F), *dy = randv(B * T * H * F);
  og o;
  og_init(&o);
  int tx = og_input(&o, F32T(K(B), K(T), K(3 * H * F)), x), td = og_input(&o, F32T(K(B), K(T), K(H * F)), dy);
  zoo_attrs a = {0}, heads = {0};
  a.f[0] = 0.7, a.f[1] = 0.2, a.i[0] = 3, a.i[1] = 1, a.i[2] = H;
  heads.i[0] = H;
  int part[3], dpart[3];
  for (int p = 0; p < 3; p++) {
    zoo_attrs s = {0};
    s.i[0] = -1, s.i[1] = p * H * F, s.ndim = 1, s.dims[0] = K(H * F);
    part[p] = og_node1(&o, ZOO_OP_SPLIT_HEADS, og_node1(&o, ZOO_OP_SLICE, tx, &s), &heads);
  }
  int sd = og_node1(&o, ZOO_OP_SPLIT_HEADS, td, &heads);
  int y0 = og_node1(&o, ZOO_OP_MERGE_HEADS, og_node3(&o, ZOO_OP_SOFTMAX_ATTENTION, part[0], part[1], part[2], &a),
                    NULL);
  int g0 = og_node(&o, ZOO_OP_SOFTMAX_ATTENTION_BWD, 4, (int[]){sd, part[0], part[1], part[2]}, &a);
  for (int p = 0; p < 3; p++) dpart[p] = og_node1(&o, ZOO_OP_MERGE_HEADS, g0 + p, NULL);
  zoo_attrs last = {0};
  last.i[0] = -1;
  int d0 = og_node(&o, ZOO_OP_CONCAT, 2, (int[]){og_node(&o, ZOO_OP_CONCAT, 2, dpart, &last), dpart[2]}, &last);
  int y1 = og_node(&o, ZOO_OP_SOFTMAX_ATTENTION_PACKED, 1, &tx, &a);
  int d1 = og_node(&o, ZOO_OP_SOFTMAX_ATTENTION_PACKED_BWD, 4, (int[]){td, tx, y1, y1 + 1}, &a);
  CHECK(y0 >= 0 && g0 >= 0 && d0 >= 0 && y1 >= 0 && d1 >= 0);
  CHECK(og_run(&o, 1, 1234) == 0);
  CHECK(memcmp(og_f(&o, y0), og_f(&o, y1), B * T * H * F * sizeof(float)) == 0);
  CHECK(memcmp(og_f(&o, d0), og_f(&o, d1), B * T * 3 * H * F * sizeof(float)) == 0);
  double largest = 0; /* the comparison is not of zeros */
  for (int i = 0; i < B * T * 3 * H * F; i++) largest = fmax(largest, fabs(og_f(&o, d1)[i]));
  CHECK(largest > 1e-3);
  og_free(&o);
  free(x), free(dy);
}

TEST(op_linear_cross_entropy) {
  enum { N = 6, D = 5, V = 11 };
  float *h = randv(N * D), *w = randv(V * D);
  int32_t tg[N] = {3, -100, 10, 0, -100, 7};
  og o;
  og_init(&o);
  int th = og_input(&o, F32T(K(2), K(3), K(D)), h), tw = og_input(&o, F32T(K(V), K(D)), w);
  int tt = og_input(&o, I32T(K(2), K(3)), tg);
  float dl = 0.5f;
  int td = og_input(&o, scalar_t, &dl);
  zoo_attrs a = {0};
  a.i[0] = -100;
  int lce = og_node3(&o, ZOO_OP_LINEAR_CROSS_ENTROPY, th, tw, tt, &a);
  int logits = og_node2(&o, ZOO_OP_LINEAR, th, tw, NULL);
  int ce = og_node2(&o, ZOO_OP_CROSS_ENTROPY, logits, tt, &a);
  int in4[4] = {td, th, tw, tt};
  int bw = og_node(&o, ZOO_OP_LINEAR_CROSS_ENTROPY_BWD, 4, in4, &a);
  int dlog = og_node3(&o, ZOO_OP_CROSS_ENTROPY_BWD, td, logits, tt, &a);
  /* unfused gradients: dh = dlogits w, dw = dlogits^T h */
  zoo_attrs rs = {0};
  rs.ndim = 2, rs.dims[0] = K(N), rs.dims[1] = K(V);
  int dl2 = og_node1(&o, ZOO_OP_RESHAPE, dlog, &rs);
  rs.dims[1] = K(D);
  int h2 = og_node1(&o, ZOO_OP_RESHAPE, th, &rs);
  int dh = og_node2(&o, ZOO_OP_MATMUL, dl2, tw, NULL);
  zoo_attrs tr = {0};
  tr.i[0] = 1;
  int dw = og_node2(&o, ZOO_OP_MATMUL, dl2, h2, &tr);
  CHECK(dw >= 0);
  CHECK(og_run(&o, 0, 0) == 0);
  CHECKF(fabs(og_f(&o, lce)[0] - og_f(&o, ce)[0]) < 1e-6, "%g vs %g", og_f(&o, lce)[0],
         og_f(&o, ce)[0]);
  CHECK(maxdiff_f(og_f(&o, bw), og_f(&o, dh), N * D) < 1e-6);
  CHECK(maxdiff_f(og_f(&o, bw + 1), og_f(&o, dw), V * D) < 1e-6);
  for (int j = 0; j < D; j++) CHECK(og_f(&o, bw)[1 * D + j] == 0.0f); /* ignored row */
  free(h), free(w);
  og_free(&o);
}

/* The norms' and attention's backward kernels are checked against finite
 * differences in test_grad.c; here the executor's plumbing. */
TEST(op_cpu_symbols_and_errors) {
  zoo_graph g;
  zoo_graph_init(&g);
  int B = zoo_graph_symbol(&g, "B"), T = zoo_graph_symbol(&g, "T");
  zoo_dim b = {1, 1u << B}, tt = {2, 1u << T};
  zoo_diag d;
  zoo_diag_init(&d, stderr);
  int x = zoo_graph_input(&g, "x", F32T(b, tt, K(3)));
  int y = zoo_graph_node(&g, ZOO_OP_EXP, 1, &x, NULL, zoo_nospan, &d);
  zoo_cpu c;
  int64_t syms[2] = {4, 5};
  CHECK(zoo_cpu_init(&c, &g, syms) == 0);
  int64_t dims[ZOO_MAX_DIMS];
  CHECK(zoo_cpu_dims(&c, y, dims) == 3 && dims[0] == 4 && dims[1] == 10 && dims[2] == 3);
  CHECK(c.numel[y] == 120);
  for (int i = 0; i < 120; i++) CHECK(zoo_cpu_f32(&c, y)[i] == 0.0f); /* zeroed */
  CHECK(zoo_cpu_run(&c, 0, 1) == 0);
  CHECK(zoo_cpu_f32(&c, y)[119] == 1.0f);
  CHECK(zoo_cpu_run(&c, 0, 2) == -1);
  zoo_cpu_free(&c);
  zoo_graph_free(&g);
}

/* MQAR-sized kernels stay fast enough for CPU training (printed, not checked:
 * timing depends on the machine). */
TEST(op_linear_speed) {
  enum { N = 64 * 64, D = 64 };
  og o;
  og_init(&o);
  float *x = randv(N * D), *w = randv(D * D);
  int tx = og_input(&o, F32T(K(N), K(D)), x), tw = og_input(&o, F32T(K(D), K(D)), w);
  int y = og_node2(&o, ZOO_OP_LINEAR, tx, tw, NULL);
  CHECK(og_run(&o, 0, 0) == 0);
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int r = 0; r < 10; r++) CHECK(zoo_cpu_run(&o.cpu, 0, 1) == 0);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double ms = ((t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6) / 10;
  printf("  linear [%d, %d] x [%d, %d]^T: %.2f ms\n", N, D, D, D, ms);
  double s = 0; /* spot check one entry */
  for (int k = 0; k < D; k++) s += (double)x[5 * D + k] * w[7 * D + k];
  CHECK(fabs(og_f(&o, y)[5 * D + 7] - s) < 1e-4);
  free(x), free(w);
  og_free(&o);
}

/* Shapes that cross the GEMM's blocking (k > 256, n > 512, rows not a multiple
 * of 4, columns not a multiple of 8): every entry is exactly the f32 sum taken
 * in order, as the kernel's comment promises. */
TEST(op_matmul_blocking_exact) {
  enum { M = 7, KK = 300, N = 521 };
  for (int ta = 0; ta < 2; ta++) {
    og o;
    og_init(&o);
    float *A = randv(M * KK), *Bm = randv(KK * N);
    zoo_type at = ta ? F32T(K(KK), K(M)) : F32T(K(M), K(KK));
    int tA = og_input(&o, at, A), tB = og_input(&o, F32T(K(KK), K(N)), Bm);
    zoo_attrs a = {0};
    a.i[0] = ta;
    int y = og_node2(&o, ZOO_OP_MATMUL, tA, tB, &a);
    CHECK(og_run(&o, 0, 0) == 0);
    for (int i = 0; i < M; i++)
      for (int j = 0; j < N; j++) {
        float s = 0.0f;
        for (int k = 0; k < KK; k++) s += (ta ? A[k * M + i] : A[i * KK + k]) * Bm[k * N + j];
        CHECKF(og_f(&o, y)[i * N + j] == s, "ta %d (%d, %d): %.9g vs %.9g", ta, i, j,
               og_f(&o, y)[i * N + j], s);
      }
    free(A), free(Bm);
    og_free(&o);
  }
}

/* layernorm_bwd and rmsnorm_bwd over more rows than one chunk of their
 * weight-gradient sums, against plain double formulas. */
TEST(op_norm_bwd_many_rows) {
  enum { N = 300, C = 7 };
  og o;
  og_init(&o);
  float *x = randv(N * C), *dy = randv(N * C), *w = randv(C);
  int tx = og_input(&o, F32T(K(N), K(C)), x), td = og_input(&o, F32T(K(N), K(C)), dy);
  int tw = og_input(&o, F32T(K(C)), w);
  zoo_attrs a = {0};
  a.f[0] = 1e-5;
  int lb = og_node3(&o, ZOO_OP_LAYERNORM_BWD, td, tx, tw, &a);
  int rb = og_node3(&o, ZOO_OP_RMSNORM_BWD, td, tx, tw, &a);
  CHECK(og_run(&o, 0, 0) == 0);
  double dw[C] = {0}, db[C] = {0}, rw[C] = {0};
  for (int r = 0; r < N; r++) {
    double m = 0, v = 0, ms = 0, g[C], xh[C], mg = 0, mgx = 0, mrx = 0;
    for (int j = 0; j < C; j++) m += x[r * C + j] / (double)C, ms += x[r * C + j] * (double)x[r * C + j] / C;
    for (int j = 0; j < C; j++) v += (x[r * C + j] - m) * (x[r * C + j] - m) / C;
    double rstd = 1 / sqrt(v + 1e-5), ri = 1 / sqrt(ms + 1e-5);
    for (int j = 0; j < C; j++) {
      g[j] = dy[r * C + j] * (double)w[j];
      xh[j] = (x[r * C + j] - m) * rstd;
      mg += g[j] / C, mgx += g[j] * xh[j] / C, mrx += g[j] * x[r * C + j] / C;
      dw[j] += dy[r * C + j] * xh[j], db[j] += dy[r * C + j];
      rw[j] += dy[r * C + j] * (double)x[r * C + j] * ri;
    }
    for (int j = 0; j < C; j++) {
      double want = rstd * (g[j] - mg - xh[j] * mgx);
      CHECK(fabs(og_f(&o, lb)[r * C + j] - want) < 1e-5 * (1 + fabs(want)));
      want = ri * g[j] - x[r * C + j] * ri * ri * ri * mrx;
      CHECK(fabs(og_f(&o, rb)[r * C + j] - want) < 1e-5 * (1 + fabs(want)));
    }
  }
  CHECK(maxdiff(og_f(&o, lb + 1), dw, C) < 1e-6);
  CHECK(maxdiff(og_f(&o, lb + 2), db, C) < 1e-6);
  CHECK(maxdiff(og_f(&o, rb + 1), rw, C) < 1e-6);
  free(x), free(dy), free(w);
  og_free(&o);
}

/* Every op of the table has a CPU test: above, or in test_grad.c for the two
 * attention backward kernels (checked there against finite differences). */
TEST(op_every_op_covered) {
  const char *tested[] = {
      "add", "sub", "mul", "div", "gt", "where", "neg", "exp", "log", "sqrt", "rsqrt", "square",
      "sigmoid", "silu", "softplus", "relu", "gelu", "gelu_bwd", "tanh", "sin", "cos", "adds",
      "muls", "pows", "dropout", "sum", "mean", "reduce_to", "layernorm", "layernorm_bwd", "linear_layernorm",
      "rmsnorm", "rmsnorm_bwd", "softmax", "logsumexp", "cross_entropy", "cross_entropy_bwd",
      "argmax", "accuracy", "cross_entropy_step", "reshape", "permute", "split_heads", "merge_heads", "slice", "concat",
      "shift", "linear", "matmul", "embedding", "embedding_bwd", "arange", "cumsum",
      "label_rows", "gather_rows", "scatter_rows",
      "causal_conv1d", "causal_conv1d_bwd", "poly_attention", "softmax_attention",
      "softmax_attention_packed", "softmax_attention_packed_bwd",
      "linear_cross_entropy", "linear_cross_entropy_bwd", "linear_cross_entropy_step",
      "poly_attention_bwd", "softmax_attention_bwd", /* test_grad.c */
      "wkv4", "wkv4_bwd", /* op_wkv4 and op_wkv4_bf16 below, grad_wkv4 in test_grad.c */
  };
  int n = (int)(sizeof tested / sizeof tested[0]);
  for (int op = 0; op < ZOO_OP_COUNT; op++) {
    int found = 0;
    for (int i = 0; i < n; i++) found |= strcmp(tested[i], zoo_ops[op].name) == 0;
    CHECKF(found, "no CPU test for %s", zoo_ops[op].name);
  }
}

/* ---- wkv4 (RWKV v4), appended ---- */

/* wkv4 straight from its definition, sums of exponentials shifted by the
 * largest exponent of each step (so k may be large): y [B, T, C] in double. */
static void wkv4_naive(const float *w, const float *u, const float *k, const float *v, double *y,
                       int B, int T, int C) {
  for (int b = 0; b < B; b++)
    for (int c = 0; c < C; c++) {
      double d = -exp((double)w[c]);
      for (int t = 0; t < T; t++) {
        double ex[64], mx = u[c] + (double)k[(b * T + t) * C + c];
        for (int i = 0; i < t; i++) {
          ex[i] = (t - 1 - i) * d + k[(b * T + i) * C + c];
          mx = fmax(mx, ex[i]);
        }
        double num = exp(u[c] + (double)k[(b * T + t) * C + c] - mx) * v[(b * T + t) * C + c];
        double den = exp(u[c] + (double)k[(b * T + t) * C + c] - mx);
        for (int i = 0; i < t; i++) {
          num += exp(ex[i] - mx) * v[(b * T + i) * C + c];
          den += exp(ex[i] - mx);
        }
        y[(b * T + t) * C + c] = num / den;
      }
    }
}

/* Builds wkv4 (and, with dy, its backward) over the given values and runs it. */
static int wkv4_graph(og *o, int B, int T, int C, const float *w, const float *u, const float *k,
                      const float *v, const float *dy, int bf16, int *y, int *bw) {
  og_init(o);
  int tw = og_input(o, F32T(K(C)), w), tu = og_input(o, F32T(K(C)), u);
  int tk = og_input(o, F32T(K(B), K(T), K(C)), k), tv = og_input(o, F32T(K(B), K(T), K(C)), v);
  zoo_attrs a = {0};
  a.i[0] = bf16;
  int in4[4] = {tw, tu, tk, tv};
  *y = og_node(o, ZOO_OP_WKV4, 4, in4, &a);
  if (dy) {
    int in5[5] = {og_input(o, F32T(K(B), K(T), K(C)), dy), tw, tu, tk, tv};
    *bw = og_node(o, ZOO_OP_WKV4_BWD, 5, in5, &a);
  }
  return *y >= 0 && (!dy || *bw >= 0) ? og_run(o, 0, 0) : -1;
}

TEST(op_wkv4) {
  enum { B = 2, T = 9, C = 5, N = B * T * C };
  float *w = randv(C), *u = randv(C), *k = randv(N), *v = randv(N);
  double ref[N];
  for (int big = 0; big < 2; big++) {
    if (big) /* exponents far beyond float's range: the stable form must not overflow */
      for (int i = 0; i < N; i++) k[i] = 60 * k[i] + (i % 3 == 0 ? 40 : 0);
    og o;
    int y, bw;
    CHECK(wkv4_graph(&o, B, T, C, w, u, k, v, NULL, 0, &y, &bw) == 0);
    wkv4_naive(w, u, k, v, ref, B, T, C);
    CHECKF(maxdiff(og_f(&o, y), ref, N) < 1e-5, "big %d: %g", big, maxdiff(og_f(&o, y), ref, N));
    /* the first step sees only its own token: y_0 = v_0 */
    for (int b = 0; b < B; b++)
      for (int c = 0; c < C; c++) CHECK(og_f(&o, y)[b * T * C + c] == v[b * T * C + c]);
    og_free(&o);
  }
  /* shape rule: w must match the channels */
  zoo_graph g;
  zoo_graph_init(&g);
  int in[4] = {zoo_graph_input(&g, "w", F32T(K(4))), zoo_graph_input(&g, "u", F32T(K(4))),
               zoo_graph_input(&g, "k", F32T(K(2), K(3), K(5))),
               zoo_graph_input(&g, "v", F32T(K(2), K(3), K(5)))};
  zoo_type out[4];
  char err[256];
  CHECK(shape_of_node(&g, ZOO_OP_WKV4, 4, in, NULL, out, err) != 0);
  CHECKF(strstr(err, "w must be [5]") != NULL, "%s", err);
  zoo_graph_free(&g);
  free(w), free(u), free(k), free(v);
}

static int is_bf16(float x) {
  uint32_t b;
  memcpy(&b, &x, 4);
  return (b & 0xffffu) == 0;
}

/* The bf16 mode: y and every gradient are the fp32 results rounded to bf16
 * (nearest even), the gradient computed from dy rounded to bf16. */
TEST(op_wkv4_bf16) {
  enum { B = 2, T = 7, C = 3, N = B * T * C };
  float *w = randv(C), *u = randv(C), *k = randv(N), *v = randv(N), *dy = randv(N);
  float dyr[N];
  og o16, o32;
  int y16, b16, y32, b32;
  CHECK(wkv4_graph(&o16, B, T, C, w, u, k, v, dy, 1, &y16, &b16) == 0);
  for (int i = 0; i < N; i++) { /* dy rounded to bf16 by hand: ties to even */
    uint32_t b;
    memcpy(&b, &dy[i], 4);
    b = (b + 0x7fffu + ((b >> 16) & 1u)) & 0xffff0000u;
    memcpy(&dyr[i], &b, 4);
  }
  CHECK(wkv4_graph(&o32, B, T, C, w, u, k, v, dyr, 0, &y32, &b32) == 0);
  int64_t sizes[5] = {N, C, C, N, N};
  int t16[5] = {y16, b16, b16 + 1, b16 + 2, b16 + 3}, t32[5] = {y32, b32, b32 + 1, b32 + 2, b32 + 3};
  for (int j = 0; j < 5; j++)
    for (int64_t i = 0; i < sizes[j]; i++) {
      float a = og_f(&o16, t16[j])[i], r = og_f(&o32, t32[j])[i];
      uint32_t rb;
      memcpy(&rb, &r, 4);
      rb = (rb + 0x7fffu + ((rb >> 16) & 1u)) & 0xffff0000u;
      float want;
      memcpy(&want, &rb, 4);
      CHECKF(is_bf16(a) && a == want, "output %d [%lld]: %.9g, fp32 %.9g", j, (long long)i, a, r);
    }
  og_free(&o16), og_free(&o32);
  free(w), free(u), free(k), free(v), free(dy);
}
