/* test_grad.c: every gradient rule against finite differences.
 *
 * A case builds a small graph by hand: parameters (the tensors to differentiate
 * with respect to), fixed inputs (ids, targets, conditions), and the op under
 * test with output y. Autodiff is seeded with a random tensor w of y's type, so
 * it computes the gradient of L = sum(w * y). Each parameter entry checked is
 * nudged by +-eps and L recomputed in double from the forward pass; the
 * double-sided difference must match the autodiff gradient to ~1e-2 relative. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../compiler/compile.h"
#include "../runtime/cpu.h"
#include "test.h"

#define K(n) zoo_dim_const(n)
#define NDIMS(...) ((int)(sizeof((zoo_dim[]){__VA_ARGS__}) / sizeof(zoo_dim)))
#define F32T(...) mktype(ZOO_F32, NDIMS(__VA_ARGS__), (zoo_dim[]){__VA_ARGS__})
#define I32T(...) mktype(ZOO_I32, NDIMS(__VA_ARGS__), (zoo_dim[]){__VA_ARGS__})

static zoo_type mktype(zoo_dtype dt, int nd, const zoo_dim *d) {
  zoo_type t = {.dtype = dt, .ndim = nd};
  for (int k = 0; k < nd; k++) t.dim[k] = d[k];
  return t;
}

/* How a parameter's values are drawn. */
typedef enum { VAL_SIGNED, VAL_POSITIVE, VAL_AWAY } val_kind;

typedef struct gcase {
  zoo_graph g;
  zoo_diag d;
  int64_t syms[ZOO_MAX_SYMS];
  int nleaves;
  int leaf[8];
  val_kind kind[8];
  int nfixed;
  int fixed[8];
  const void *fixed_data[8];
  uint64_t rng;
  int training;    /* dropout on, with the seed below */
  double tol;      /* relative tolerance */
} gcase;

static void gc_init(gcase *c) {
  memset(c, 0, sizeof *c);
  zoo_graph_init(&c->g);
  zoo_diag_init(&c->d, stderr);
  c->rng = 0x5eed;
  c->tol = 1e-2;
}

static double urand(gcase *c) { /* [0, 1) */
  c->rng = c->rng * 6364136223846793005ULL + 1442695040888963407ULL;
  return (double)(c->rng >> 11) / 9007199254740992.0;
}

static zoo_dim gc_sym(gcase *c, const char *name, int64_t value) {
  int s = zoo_graph_symbol(&c->g, name);
  c->syms[s] = value;
  return (zoo_dim){1, 1u << s};
}

/* A parameter to differentiate with respect to. */
static int gc_param(gcase *c, zoo_type t, val_kind kind) {
  char name[16];
  snprintf(name, sizeof name, "p%d", c->nleaves);
  int id = zoo_graph_param(&c->g, name, t, (zoo_init){0});
  c->leaf[c->nleaves] = id;
  c->kind[c->nleaves++] = kind;
  return id;
}

/* An input with fixed values (f32 or i32 by the type). */
static int gc_fixed(gcase *c, zoo_type t, const void *data) {
  int id = zoo_graph_input(&c->g, "fixed", t);
  c->fixed[c->nfixed] = id;
  c->fixed_data[c->nfixed++] = data;
  return id;
}

static int gc_node(gcase *c, zoo_op op, int nin, const int *in, const zoo_attrs *a) {
  return zoo_graph_node(&c->g, op, nin, in, a, zoo_nospan, &c->d);
}

static int gc1(gcase *c, zoo_op op, int x, const zoo_attrs *a) { return gc_node(c, op, 1, &x, a); }
static int gc2(gcase *c, zoo_op op, int x, int y, const zoo_attrs *a) {
  int in[2] = {x, y};
  return gc_node(c, op, 2, in, a);
}
static int gc3(gcase *c, zoo_op op, int x, int y, int z, const zoo_attrs *a) {
  int in[3] = {x, y, z};
  return gc_node(c, op, 3, in, a);
}

/* sum(w * y) in double */
static double weighted(zoo_cpu *cpu, int y, const float *w) {
  const float *v = zoo_cpu_f32(cpu, y);
  double s = 0;
  for (int64_t i = 0; i < cpu->numel[y]; i++) s += (double)w[i] * v[i];
  return s;
}

/* Differentiates sum(w * y) by autodiff and by finite differences; returns 0
 * when they agree, else prints the first disagreement and returns -1. Checks
 * every entry of small parameters and `sample` random entries of larger ones. */
static int gc_check(gcase *c, const char *what, int y) {
  int rc = -1;
  if (y < 0) {
    fprintf(stderr, "  %s: graph construction failed\n", what);
    return -1;
  }
  zoo_type ty = c->g.tensors[y].type;
  int seed = zoo_graph_input(&c->g, "w", ty);
  int nfwd = c->g.nnodes;
  if (zoo_autodiff(&c->g, y, seed, &c->d) != 0) {
    fprintf(stderr, "  %s: autodiff failed\n", what);
    return -1;
  }
  zoo_cpu cpu;
  if (zoo_cpu_init(&cpu, &c->g, c->syms) != 0) {
    fprintf(stderr, "  %s: %s\n", what, cpu.err);
    return -1;
  }
  cpu.training = c->training;
  cpu.seed = 4242;
  for (int i = 0; i < c->nleaves; i++) {
    float *v = zoo_cpu_f32(&cpu, c->leaf[i]);
    for (int64_t j = 0; j < cpu.numel[c->leaf[i]]; j++) {
      double u = urand(c);
      switch (c->kind[i]) {
      case VAL_SIGNED: v[j] = (float)(2 * u - 1); break;
      case VAL_POSITIVE: v[j] = (float)(0.5 + u); break;
      case VAL_AWAY: v[j] = (float)((0.2 + 0.8 * u) * (urand(c) < 0.5 ? -1 : 1)); break;
      }
    }
  }
  for (int i = 0; i < c->nfixed; i++)
    memcpy(cpu.data[c->fixed[i]], c->fixed_data[i], (size_t)cpu.numel[c->fixed[i]] * 4);
  float *w = zoo_cpu_f32(&cpu, seed);
  for (int64_t j = 0; j < cpu.numel[seed]; j++) w[j] = (float)(2 * urand(c) - 1);
  if (zoo_cpu_run(&cpu, 0, c->g.nnodes) != 0) {
    fprintf(stderr, "  %s: %s\n", what, cpu.err);
    goto done;
  }
  for (int i = 0; i < c->nleaves; i++) {
    int p = c->leaf[i], gt = c->g.tensors[p].grad;
    if (gt < 0) {
      fprintf(stderr, "  %s: parameter %d got no gradient\n", what, i);
      goto done;
    }
    int64_t n = cpu.numel[p];
    float *grad = malloc((size_t)n * sizeof *grad);
    memcpy(grad, zoo_cpu_f32(&cpu, gt), (size_t)n * sizeof *grad);
    float *v = zoo_cpu_f32(&cpu, p);
    int checks = n <= 48 ? (int)n : 24;
    for (int s = 0; s < checks; s++) {
      int64_t j = n <= 48 ? s : (int64_t)(urand(c) * (double)n);
      float orig = v[j];
      float up = orig + 1e-3f, down = orig - 1e-3f;
      v[j] = up;
      int e1 = zoo_cpu_run(&cpu, 0, nfwd);
      double lp = weighted(&cpu, y, w);
      v[j] = down;
      int e2 = zoo_cpu_run(&cpu, 0, nfwd);
      double lm = weighted(&cpu, y, w);
      v[j] = orig;
      if (e1 || e2) {
        fprintf(stderr, "  %s: %s\n", what, cpu.err);
        free(grad);
        goto done;
      }
      double fd = (lp - lm) / ((double)up - (double)down), an = grad[j];
      double err = fabs(fd - an), scale = fmax(fabs(fd), fabs(an));
      if (!(err <= c->tol * scale + 2e-4)) {
        fprintf(stderr, "  %s: parameter %d entry %lld: autodiff %.6g, finite difference %.6g\n",
                what, i, (long long)j, an, fd);
        free(grad);
        goto done;
      }
    }
    free(grad);
  }
  rc = 0;
done:
  zoo_cpu_free(&cpu);
  return rc;
}

/* Runs gc_check and frees the case. */
static int gc_finish(gcase *c, const char *what, int y) {
  int rc = gc_check(c, what, y);
  zoo_graph_free(&c->g);
  return rc;
}

/* ---------------------------------------------------------------------------
 * Elementwise */

TEST(grad_binary_broadcast) {
  zoo_op ops[] = {ZOO_OP_ADD, ZOO_OP_SUB, ZOO_OP_MUL, ZOO_OP_DIV};
  for (int k = 0; k < 4; k++) {
    /* [2, 3, 4] op [4], [2, 1, 4] op [3, 1], and the same shape */
    zoo_type shapes[3][2] = {{F32T(K(2), K(3), K(4)), F32T(K(4))},
                             {F32T(K(2), K(1), K(4)), F32T(K(3), K(1))},
                             {F32T(K(3), K(2)), F32T(K(3), K(2))}};
    for (int s = 0; s < 3; s++) {
      for (int swap = 0; swap < 2; swap++) {
        gcase c;
        gc_init(&c);
        int a = gc_param(&c, shapes[s][swap], VAL_SIGNED);
        int b = gc_param(&c, shapes[s][1 - swap], ops[k] == ZOO_OP_DIV ? VAL_AWAY : VAL_SIGNED);
        char what[64];
        snprintf(what, sizeof what, "%s shapes %d swap %d", zoo_ops[ops[k]].name, s, swap);
        CHECK(gc_finish(&c, what, gc2(&c, ops[k], a, b, NULL)) == 0);
      }
    }
  }
}

TEST(grad_where) {
  gcase c;
  gc_init(&c);
  float cond[4] = {1, 0, 0, 1}; /* [4], broadcast against [3, 4] and [3, 1] */
  int tc = gc_fixed(&c, F32T(K(4)), cond);
  int a = gc_param(&c, F32T(K(3), K(4)), VAL_SIGNED), b = gc_param(&c, F32T(K(3), K(1)), VAL_SIGNED);
  CHECK(gc_finish(&c, "where", gc3(&c, ZOO_OP_WHERE, tc, a, b, NULL)) == 0);
}

TEST(grad_unary) {
  struct { zoo_op op; val_kind kind; double f; } cases[] = {
      {ZOO_OP_NEG, VAL_SIGNED, 0},      {ZOO_OP_EXP, VAL_SIGNED, 0},
      {ZOO_OP_LOG, VAL_POSITIVE, 0},    {ZOO_OP_SQRT, VAL_POSITIVE, 0},
      {ZOO_OP_RSQRT, VAL_POSITIVE, 0},  {ZOO_OP_SQUARE, VAL_SIGNED, 0},
      {ZOO_OP_SIGMOID, VAL_SIGNED, 0},  {ZOO_OP_SILU, VAL_SIGNED, 0},
      {ZOO_OP_SOFTPLUS, VAL_SIGNED, 0}, {ZOO_OP_RELU, VAL_AWAY, 0},
      {ZOO_OP_GELU, VAL_SIGNED, 0},     {ZOO_OP_TANH, VAL_SIGNED, 0},
      {ZOO_OP_SIN, VAL_SIGNED, 0},      {ZOO_OP_COS, VAL_SIGNED, 0},
      {ZOO_OP_ADDS, VAL_SIGNED, 0.75},  {ZOO_OP_MULS, VAL_SIGNED, -1.5},
      {ZOO_OP_POWS, VAL_POSITIVE, 2.5}, {ZOO_OP_POWS, VAL_POSITIVE, -0.5},
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    gcase c;
    gc_init(&c);
    int x = gc_param(&c, F32T(K(2), K(5)), cases[k].kind);
    zoo_attrs a = {0};
    a.f[0] = cases[k].f;
    CHECK(gc_finish(&c, zoo_ops[cases[k].op].name, gc1(&c, cases[k].op, x, &a)) == 0);
  }
}

/* Dropout with a fixed seed: the mask is a function of the seed, so the forward
 * pass is linear in x and the backward pass must use the same mask. */
TEST(grad_dropout) {
  gcase c;
  gc_init(&c);
  c.training = 1;
  int x = gc_param(&c, F32T(K(4), K(6)), VAL_SIGNED);
  zoo_attrs a = {0};
  a.f[0] = 0.3;
  a.i[0] = 5;
  CHECK(gc_finish(&c, "dropout", gc1(&c, ZOO_OP_DROPOUT, x, &a)) == 0);
}

/* ---------------------------------------------------------------------------
 * Reductions */

TEST(grad_sum_mean_reduce_to) {
  for (int op = 0; op < 2; op++)
    for (int axis = -3; axis < 3; axis++)
      for (int keep = 0; keep < 2; keep++) {
        gcase c;
        gc_init(&c);
        int x = gc_param(&c, F32T(K(2), K(3), K(4)), VAL_SIGNED);
        zoo_attrs a = {0};
        a.i[0] = axis;
        a.i[1] = keep;
        char what[64];
        snprintf(what, sizeof what, "%s axis %d keepdim %d", op ? "mean" : "sum", axis, keep);
        CHECK(gc_finish(&c, what, gc1(&c, op ? ZOO_OP_MEAN : ZOO_OP_SUM, x, &a)) == 0);
      }
  /* mean over a symbolic axis */
  gcase c;
  gc_init(&c);
  zoo_dim T = gc_sym(&c, "T", 5);
  int x = gc_param(&c, F32T(K(2), K(3)), VAL_SIGNED);
  zoo_attrs r = {0};
  r.ndim = 3, r.dims[0] = K(2), r.dims[1] = T, r.dims[2] = K(3);
  /* a [2, 1, 3] parameter broadcast to [2, T, 3] through where, then mean over T */
  zoo_attrs rs = {0};
  rs.ndim = 3, rs.dims[0] = K(2), rs.dims[1] = K(1), rs.dims[2] = K(3);
  float *ones = malloc(2 * 5 * 3 * sizeof *ones);
  for (int i = 0; i < 30; i++) ones[i] = (float)(i % 7);
  int big = gc_fixed(&c, F32T(K(2), T, K(3)), ones);
  int x3 = gc1(&c, ZOO_OP_RESHAPE, x, &rs);
  int prod = gc2(&c, ZOO_OP_MUL, big, x3, NULL);
  zoo_attrs m = {0};
  m.i[0] = 1;
  CHECK(gc_finish(&c, "mean over T", gc1(&c, ZOO_OP_MEAN, prod, &m)) == 0);
  free(ones);
  /* reduce_to itself (its gradient broadcasts back) */
  gc_init(&c);
  x = gc_param(&c, F32T(K(2), K(3), K(4)), VAL_SIGNED);
  r = (zoo_attrs){0};
  r.ndim = 2, r.dims[0] = K(3), r.dims[1] = K(1);
  CHECK(gc_finish(&c, "reduce_to", gc1(&c, ZOO_OP_REDUCE_TO, x, &r)) == 0);
}

TEST(grad_layernorm_rmsnorm) {
  for (int nin = 1; nin <= 3; nin++) {
    gcase c;
    gc_init(&c);
    int in[3];
    in[0] = gc_param(&c, F32T(K(3), K(2), K(6)), VAL_SIGNED);
    if (nin > 1) in[1] = gc_param(&c, F32T(K(6)), VAL_SIGNED);
    if (nin > 2) in[2] = gc_param(&c, F32T(K(6)), VAL_SIGNED);
    zoo_attrs a = {0};
    a.f[0] = 1e-5;
    char what[32];
    snprintf(what, sizeof what, "layernorm with %d inputs", nin);
    CHECK(gc_finish(&c, what, gc_node(&c, ZOO_OP_LAYERNORM, nin, in, &a)) == 0);
  }
  /* the output split into 3 heads (i0, ops.def): the backward reads dy so */
  {
    gcase c;
    gc_init(&c);
    int in[3] = {gc_param(&c, F32T(K(2), K(4), K(6)), VAL_SIGNED), gc_param(&c, F32T(K(6)), VAL_SIGNED),
                 gc_param(&c, F32T(K(6)), VAL_SIGNED)};
    zoo_attrs a = {0};
    a.f[0] = 1e-5;
    a.i[0] = 3;
    CHECK(gc_finish(&c, "layernorm split into heads", gc_node(&c, ZOO_OP_LAYERNORM, 3, in, &a)) == 0);
  }
  gcase c;
  gc_init(&c);
  int x = gc_param(&c, F32T(K(4), K(5)), VAL_SIGNED), w = gc_param(&c, F32T(K(5)), VAL_SIGNED);
  zoo_attrs a = {0};
  a.f[0] = 1e-5;
  CHECK(gc_finish(&c, "rmsnorm", gc2(&c, ZOO_OP_RMSNORM, x, w, &a)) == 0);
}

TEST(grad_softmax_logsumexp) {
  for (int op = 0; op < 2; op++) {
    gcase c;
    gc_init(&c);
    int x = gc_param(&c, F32T(K(3), K(7)), VAL_SIGNED);
    zoo_op o = op ? ZOO_OP_LOGSUMEXP : ZOO_OP_SOFTMAX;
    CHECK(gc_finish(&c, zoo_ops[o].name, gc1(&c, o, x, NULL)) == 0);
  }
}

/* Ignored targets: their rows of the logits' gradient are exactly zero. */
TEST(grad_cross_entropy) {
  gcase c;
  gc_init(&c);
  int32_t tg[6] = {4, -100, 0, 6, -100, 2};
  int x = gc_param(&c, F32T(K(2), K(3), K(7)), VAL_SIGNED);
  int tt = gc_fixed(&c, I32T(K(2), K(3)), tg);
  zoo_attrs a = {0};
  a.i[0] = -100;
  int y = gc2(&c, ZOO_OP_CROSS_ENTROPY, x, tt, &a);
  CHECK(gc_check(&c, "cross_entropy", y) == 0);
  /* run again to look at the gradient itself */
  zoo_cpu cpu;
  CHECK(zoo_cpu_init(&cpu, &c.g, c.syms) == 0);
  memcpy(cpu.data[tt], tg, sizeof tg);
  for (int i = 0; i < 42; i++) zoo_cpu_f32(&cpu, x)[i] = (float)(i % 5) * 0.3f;
  zoo_cpu_f32(&cpu, c.g.inputs[c.g.ninputs - 1])[0] = 1.0f;
  CHECK(zoo_cpu_run(&cpu, 0, c.g.nnodes) == 0);
  const float *g = zoo_cpu_f32(&cpu, c.g.tensors[x].grad);
  for (int r = 0; r < 6; r++) {
    double s = 0;
    for (int v = 0; v < 7; v++) {
      if (tg[r] == -100) CHECK(g[r * 7 + v] == 0.0f);
      s += g[r * 7 + v];
    }
    CHECK(fabs(s) < 1e-6); /* softmax - onehot sums to zero */
  }
  zoo_cpu_free(&cpu);
  zoo_graph_free(&c.g);
}

/* ---------------------------------------------------------------------------
 * Movement */

TEST(grad_movement) {
  zoo_attrs a;
  gcase c;
  /* reshape */
  gc_init(&c);
  int x = gc_param(&c, F32T(K(2), K(3), K(4)), VAL_SIGNED);
  a = (zoo_attrs){0};
  a.ndim = 2, a.dims[0] = K(4), a.dims[1] = K(6);
  CHECK(gc_finish(&c, "reshape", gc1(&c, ZOO_OP_RESHAPE, x, &a)) == 0);
  /* permute (1, 2, 0) */
  gc_init(&c);
  x = gc_param(&c, F32T(K(2), K(3), K(4)), VAL_SIGNED);
  a = (zoo_attrs){0};
  a.ndim = 3, a.dims[0] = K(1), a.dims[1] = K(2), a.dims[2] = K(0);
  CHECK(gc_finish(&c, "permute", gc1(&c, ZOO_OP_PERMUTE, x, &a)) == 0);
  /* split_heads, merge_heads */
  gc_init(&c);
  x = gc_param(&c, F32T(K(2), K(3), K(6)), VAL_SIGNED);
  a = (zoo_attrs){0};
  a.i[0] = 3;
  CHECK(gc_finish(&c, "split_heads", gc1(&c, ZOO_OP_SPLIT_HEADS, x, &a)) == 0);
  gc_init(&c);
  x = gc_param(&c, F32T(K(2), K(3), K(4), K(2)), VAL_SIGNED);
  CHECK(gc_finish(&c, "merge_heads", gc1(&c, ZOO_OP_MERGE_HEADS, x, NULL)) == 0);
  /* slice in the middle, at the start, and whole */
  int64_t starts[3] = {1, 0, 0}, lens[3] = {2, 3, 5};
  for (int s = 0; s < 3; s++) {
    gc_init(&c);
    x = gc_param(&c, F32T(K(2), K(5), K(3)), VAL_SIGNED);
    a = (zoo_attrs){0};
    a.i[0] = 1, a.i[1] = starts[s], a.ndim = 1, a.dims[0] = K(lens[s]);
    CHECK(gc_finish(&c, "slice", gc1(&c, ZOO_OP_SLICE, x, &a)) == 0);
  }
  /* concat */
  gc_init(&c);
  x = gc_param(&c, F32T(K(2), K(2), K(3)), VAL_SIGNED);
  int y = gc_param(&c, F32T(K(2), K(4), K(3)), VAL_SIGNED);
  a = (zoo_attrs){0};
  a.i[0] = 1;
  CHECK(gc_finish(&c, "concat", gc2(&c, ZOO_OP_CONCAT, x, y, &a)) == 0);
  /* shift by +1 and -2 along time */
  for (int k = -2; k <= 1; k += 3) {
    gc_init(&c);
    x = gc_param(&c, F32T(K(2), K(5), K(3)), VAL_SIGNED);
    a = (zoo_attrs){0};
    a.i[0] = 1, a.i[1] = k;
    CHECK(gc_finish(&c, "shift", gc1(&c, ZOO_OP_SHIFT, x, &a)) == 0);
  }
  /* cumsum */
  gc_init(&c);
  x = gc_param(&c, F32T(K(2), K(5), K(3)), VAL_SIGNED);
  a = (zoo_attrs){0};
  a.i[0] = 1;
  CHECK(gc_finish(&c, "cumsum", gc1(&c, ZOO_OP_CUMSUM, x, &a)) == 0);
}

/* ---------------------------------------------------------------------------
 * Matrix products, gathers, convolutions */

TEST(grad_linear) {
  for (int bias = 0; bias < 2; bias++) {
    gcase c;
    gc_init(&c);
    zoo_dim B = gc_sym(&c, "B", 2), T = gc_sym(&c, "T", 3);
    int in[3];
    in[0] = gc_param(&c, F32T(B, T, K(5)), VAL_SIGNED);
    in[1] = gc_param(&c, F32T(K(4), K(5)), VAL_SIGNED);
    if (bias) in[2] = gc_param(&c, F32T(K(4)), VAL_SIGNED);
    CHECK(gc_finish(&c, bias ? "linear with bias" : "linear",
                    gc_node(&c, ZOO_OP_LINEAR, 2 + bias, in, NULL)) == 0);
  }
  gcase c; /* a 2-D input */
  gc_init(&c);
  int x = gc_param(&c, F32T(K(3), K(5)), VAL_SIGNED), w = gc_param(&c, F32T(K(2), K(5)), VAL_SIGNED);
  CHECK(gc_finish(&c, "linear 2-D", gc2(&c, ZOO_OP_LINEAR, x, w, NULL)) == 0);
}

TEST(grad_matmul) {
  for (int mode = 0; mode < 12; mode++) {
    int ta = mode & 1, tb = (mode >> 1) & 1, batch = mode >> 2; /* 0 both, 1 a only, 2 b only */
    gcase c;
    gc_init(&c);
    zoo_type at = ta ? F32T(K(2), K(4), K(3)) : F32T(K(2), K(3), K(4));
    zoo_type bt = tb ? F32T(K(2), K(5), K(4)) : F32T(K(2), K(4), K(5));
    if (batch == 2) at = ta ? F32T(K(4), K(3)) : F32T(K(3), K(4));
    if (batch == 1) bt = tb ? F32T(K(5), K(4)) : F32T(K(4), K(5));
    int a = gc_param(&c, at, VAL_SIGNED), b = gc_param(&c, bt, VAL_SIGNED);
    zoo_attrs at2 = {0};
    at2.i[0] = ta, at2.i[1] = tb;
    char what[48];
    snprintf(what, sizeof what, "matmul ta %d tb %d batch %d", ta, tb, batch);
    CHECK(gc_finish(&c, what, gc2(&c, ZOO_OP_MATMUL, a, b, &at2)) == 0);
  }
}

/* A tied embedding: the table is used by the lookup and as the output layer, so
 * its gradient is the sum of both uses. */
TEST(grad_embedding_tied) {
  gcase c;
  gc_init(&c);
  int32_t ids[6] = {1, 3, 3, 0, 6, 1};
  int w = gc_param(&c, F32T(K(7), K(4)), VAL_SIGNED);
  int tt = gc_fixed(&c, I32T(K(2), K(3)), ids);
  int e = gc2(&c, ZOO_OP_EMBEDDING, w, tt, NULL);
  CHECK(gc_finish(&c, "embedding", e) == 0);
  gc_init(&c);
  w = gc_param(&c, F32T(K(7), K(4)), VAL_SIGNED);
  tt = gc_fixed(&c, I32T(K(2), K(3)), ids);
  e = gc2(&c, ZOO_OP_EMBEDDING, w, tt, NULL);
  CHECK(gc_finish(&c, "tied embedding", gc2(&c, ZOO_OP_LINEAR, gc1(&c, ZOO_OP_TANH, e, NULL), w,
                                            NULL)) == 0);
}

/* A tensor read only by slices (a fused q, k, v projection): its gradient is
 * the slices' gradients side by side, zeros in the gaps [6, 7) and [11, 12)
 * and under the slice [10, 11) that nothing reads on. All 48 entries checked. */
TEST(grad_split_slices) {
  gcase c;
  gc_init(&c);
  int x = gc_param(&c, F32T(K(2), K(2), K(12)), VAL_SIGNED);
  int64_t at[4][2] = {{0, 3}, {3, 3}, {7, 3}, {10, 1}};
  int s[4];
  for (int k = 0; k < 4; k++) {
    zoo_attrs a = {0};
    a.i[0] = -1, a.i[1] = at[k][0];
    a.ndim = 1, a.dims[0] = K(at[k][1]);
    s[k] = gc1(&c, ZOO_OP_SLICE, x, &a);
  }
  int y = gc2(&c, ZOO_OP_ADD, gc2(&c, ZOO_OP_MUL, s[0], s[1], NULL), gc1(&c, ZOO_OP_TANH, s[2], NULL), NULL);
  CHECK(gc_finish(&c, "split slices", y) == 0);
}

/* the compacted head's rows: labelled rows gathered (unused rows zero), and
 * their gradient scattered back with zeros in the unlabelled rows */
TEST(grad_gather_rows) {
  gcase c;
  gc_init(&c);
  int32_t tg[8] = {-100, 3, -100, 0, 2, -100, -100, -100};
  int x = gc_param(&c, F32T(K(2), K(4), K(5)), VAL_SIGNED);
  int tt = gc_fixed(&c, I32T(K(2), K(4)), tg);
  zoo_attrs a = {0};
  a.i[0] = -100;
  a.i[1] = 3; /* 6 rows for 3 labelled positions */
  int idx = gc1(&c, ZOO_OP_LABEL_ROWS, tt, &a);
  int y = gc3(&c, ZOO_OP_GATHER_ROWS, x, idx, idx + 1, NULL);
  CHECK(gc_finish(&c, "gather_rows", gc1(&c, ZOO_OP_TANH, y, NULL)) == 0);
}

TEST(grad_causal_conv1d) {
  for (int bias = 0; bias < 2; bias++) {
    gcase c;
    gc_init(&c);
    int in[3];
    in[0] = gc_param(&c, F32T(K(2), K(5), K(3)), VAL_SIGNED);
    in[1] = gc_param(&c, F32T(K(3), K(1), K(3)), VAL_SIGNED);
    if (bias) in[2] = gc_param(&c, F32T(K(3)), VAL_SIGNED);
    CHECK(gc_finish(&c, "causal_conv1d", gc_node(&c, ZOO_OP_CAUSAL_CONV1D, 2 + bias, in, NULL)) == 0);
  }
}

/* ---------------------------------------------------------------------------
 * Intrinsics */

TEST(grad_poly_attention) {
  /* ReBased (0, 0, 1; eps 1e-12) with positive q, k so no denominator is tiny,
   * and Based (1, 1, 1/2) with signed inputs; value width 5 */
  double coefs[2][5] = {{0, 0, 1, 0.5, 1e-12}, {1, 1, 0.5, 0.5, 1e-12}};
  for (int which = 0; which < 2; which++) {
    gcase c;
    gc_init(&c);
    val_kind kind = which == 0 ? VAL_POSITIVE : VAL_SIGNED;
    int q = gc_param(&c, F32T(K(1), K(2), K(6), K(3)), kind);
    int k = gc_param(&c, F32T(K(1), K(2), K(6), K(3)), kind);
    int v = gc_param(&c, F32T(K(1), K(2), K(6), K(5)), VAL_SIGNED);
    zoo_attrs a = {0};
    for (int i = 0; i < 5; i++) a.f[i] = coefs[which][i];
    CHECK(gc_finish(&c, which ? "poly_attention (Based)" : "poly_attention (ReBased)",
                    gc3(&c, ZOO_OP_POLY_ATTENTION, q, k, v, &a)) == 0);
  }
}

/* The same with the heads interleaved (layout 1, ops.def): q, k [B, T, H*F],
 * v [B, T, H*Dv], two heads, value width 5; and with q and k alone
 * interleaved (layout 2): v [B, H, T, Dv]. */
TEST(grad_poly_attention_interleaved) {
  double coefs[2][5] = {{0, 0, 1, 0.5, 1e-12}, {1, 1, 0.5, 0.5, 1e-12}};
  for (int layout = 1; layout <= 2; layout++)
    for (int which = 0; which < 2; which++) {
      gcase c;
      gc_init(&c);
      val_kind kind = which == 0 ? VAL_POSITIVE : VAL_SIGNED;
      int q = gc_param(&c, F32T(K(1), K(6), K(2 * 3)), kind);
      int k = gc_param(&c, F32T(K(1), K(6), K(2 * 3)), kind);
      int v = layout == 1 ? gc_param(&c, F32T(K(1), K(6), K(2 * 5)), VAL_SIGNED)
                          : gc_param(&c, F32T(K(1), K(2), K(6), K(5)), VAL_SIGNED);
      zoo_attrs a = {0};
      for (int i = 0; i < 5; i++) a.f[i] = coefs[which][i];
      a.i[0] = layout, a.i[1] = 2;
      char what[64];
      snprintf(what, sizeof what, "poly_attention layout %d (%s)", layout, which ? "Based" : "ReBased");
      CHECK(gc_finish(&c, what, gc3(&c, ZOO_OP_POLY_ATTENTION, q, k, v, &a)) == 0);
    }
}

TEST(grad_softmax_attention) {
  struct { double p; int causal; } cases[] = {{0, 1}, {0.1, 1}, {0, 0}, {0.3, 0}};
  for (int i = 0; i < 4; i++) {
    gcase c;
    gc_init(&c);
    c.training = 1; /* a fixed seed: the same mask forward and backward */
    int q = gc_param(&c, F32T(K(2), K(1), K(6), K(4)), VAL_SIGNED);
    int k = gc_param(&c, F32T(K(2), K(1), K(6), K(4)), VAL_SIGNED);
    int v = gc_param(&c, F32T(K(2), K(1), K(6), K(3)), VAL_SIGNED);
    zoo_attrs a = {0};
    a.f[0] = 0.8, a.f[1] = cases[i].p, a.i[0] = 2, a.i[1] = cases[i].causal;
    char what[64];
    snprintf(what, sizeof what, "softmax_attention p %g causal %d", cases[i].p, cases[i].causal);
    CHECK(gc_finish(&c, what, gc3(&c, ZOO_OP_SOFTMAX_ATTENTION, q, k, v, &a)) == 0);
  }
}

/* The packed form (ops.def): q, k, v the thirds of one qkv [B, T, 3*H*d], two
 * heads of width 3, the output merged; dqkv from its backward. */
TEST(grad_softmax_attention_packed) {
  struct { double p; int causal; } cases[] = {{0, 1}, {0.1, 1}, {0.3, 0}};
  for (int i = 0; i < 3; i++) {
    gcase c;
    gc_init(&c);
    c.training = 1;
    int qkv = gc_param(&c, F32T(K(2), K(6), K(3 * 2 * 3)), VAL_SIGNED);
    zoo_attrs a = {0};
    a.f[0] = 0.8, a.f[1] = cases[i].p, a.i[0] = 2, a.i[1] = cases[i].causal, a.i[2] = 2;
    char what[64];
    snprintf(what, sizeof what, "softmax_attention_packed p %g causal %d", cases[i].p, cases[i].causal);
    CHECK(gc_finish(&c, what, gc_node(&c, ZOO_OP_SOFTMAX_ATTENTION_PACKED, 1, &qkv, &a)) == 0);
  }
}

TEST(grad_linear_cross_entropy) {
  gcase c;
  gc_init(&c);
  int32_t tg[6] = {4, -100, 0, 8, -100, 2};
  int h = gc_param(&c, F32T(K(2), K(3), K(5)), VAL_SIGNED);
  int w = gc_param(&c, F32T(K(9), K(5)), VAL_SIGNED);
  int tt = gc_fixed(&c, I32T(K(2), K(3)), tg);
  zoo_attrs a = {0};
  a.i[0] = -100;
  CHECK(gc_finish(&c, "linear_cross_entropy", gc3(&c, ZOO_OP_LINEAR_CROSS_ENTROPY, h, w, tt, &a)) == 0);
}

/* A residual chain: x used by three nodes, gradients summed. (Wide enough rows
 * that layernorm is not so curved that eps = 1e-3 differences go wrong.) */
TEST(grad_reuse) {
  gcase c;
  gc_init(&c);
  int x = gc_param(&c, F32T(K(3), K(12)), VAL_SIGNED), w = gc_param(&c, F32T(K(12), K(12)), VAL_SIGNED);
  int h = gc2(&c, ZOO_OP_ADD, x, gc2(&c, ZOO_OP_LINEAR, x, w, NULL), NULL);
  zoo_attrs ln = {0};
  ln.f[0] = 1e-5;
  h = gc2(&c, ZOO_OP_ADD, h, gc1(&c, ZOO_OP_LAYERNORM, gc2(&c, ZOO_OP_MUL, h, x, NULL), &ln), NULL);
  CHECK(gc_finish(&c, "reuse", h) == 0);
}

/* Every differentiable op of the table has a test above. */
TEST(grad_every_op_covered) {
  const char *tested[] = {"add", "sub", "mul", "div", "where", "neg", "exp", "log", "sqrt", "rsqrt",
                          "square", "sigmoid", "silu", "softplus", "relu", "gelu", "tanh", "sin",
                          "cos", "adds", "muls", "pows", "dropout", "sum", "mean", "reduce_to",
                          "layernorm", "rmsnorm", "softmax", "logsumexp", "cross_entropy",
                          "reshape", "permute", "split_heads", "merge_heads", "slice", "concat",
                          "shift", "linear", "matmul", "embedding", "cumsum", "causal_conv1d",
                          "poly_attention", "softmax_attention", "softmax_attention_packed",
                          "linear_cross_entropy",
                          "wkv4", "gather_rows"};
  int n = (int)(sizeof tested / sizeof tested[0]);
  for (int op = 0; op < ZOO_OP_COUNT; op++) {
    if (!(zoo_ops[op].flags & ZOO_OPF_GRAD)) continue;
    int found = 0;
    for (int i = 0; i < n; i++) found |= strcmp(tested[i], zoo_ops[op].name) == 0;
    CHECKF(found, "no finite-difference test for %s", zoo_ops[op].name);
  }
}

/* ---------------------------------------------------------------------------
 * Whole models: the shipped .zoo models on tiny shapes, through zoo_compile and
 * zoo_train_graph, against finite differences of the loss. */

/* Mean cross-entropy over labelled targets, in double, from the logits, or
 * from the loss node's (h, w) when the training graph fused the head. */
static double host_loss(zoo_cpu *cpu, const zoo_graph *g, const int32_t *targets) {
  const zoo_node *ln = &g->nodes[g->tensors[g->loss].producer];
  int fused = ln->op == ZOO_OP_LINEAR_CROSS_ENTROPY;
  int64_t dims[ZOO_MAX_DIMS];
  int64_t V, D = 0, N;
  const float *L = NULL, *H = NULL, *W = NULL;
  if (fused) {
    zoo_cpu_dims(cpu, ln->in[1], dims);
    V = dims[0], D = dims[1], N = cpu->numel[ln->in[0]] / D;
    H = zoo_cpu_f32(cpu, ln->in[0]), W = zoo_cpu_f32(cpu, ln->in[1]);
  } else {
    int nd = zoo_cpu_dims(cpu, g->output, dims);
    V = dims[nd - 1], N = cpu->numel[g->output] / V;
    L = zoo_cpu_f32(cpu, g->output);
  }
  double *row = malloc((size_t)V * sizeof *row);
  double sum = 0;
  int64_t n = 0;
  for (int64_t r = 0; r < N; r++) {
    if (targets[r] == -100) continue;
    for (int64_t v = 0; v < V; v++) {
      if (!fused) {
        row[v] = L[r * V + v];
        continue;
      }
      double acc = 0;
      for (int64_t j = 0; j < D; j++) acc += (double)H[r * D + j] * W[v * D + j];
      row[v] = acc;
    }
    double m = -INFINITY, s = 0;
    for (int64_t v = 0; v < V; v++) m = fmax(m, row[v]);
    for (int64_t v = 0; v < V; v++) s += exp(row[v] - m);
    sum += m + log(s) - row[targets[r]];
    n++;
  }
  free(row);
  return n ? sum / (double)n : 0;
}

/* Compiles models/<name>.zoo with the tiny shapes and -D extra, builds the
 * training graph, and checks the gradient of a few entries of every parameter
 * (the largest two and two random ones) against finite differences. Dropout
 * stays on with a fixed seed, so the forward pass is a fixed function. */
static int model_fd(const char *name, const char *extra) {
  char path[64], exbuf[64];
  snprintf(path, sizeof path, "models/%s.zoo", name);
  zoo_define defs[5] = {{"vocab_size", "32"}, {"d_model", "24"}, {"seq_len", "8"}};
  int ndefs = 3;
  if (extra) {
    snprintf(exbuf, sizeof exbuf, "%s", extra);
    char *eq = strchr(exbuf, '=');
    *eq = 0;
    defs[ndefs++] = (zoo_define){exbuf, eq + 1};
  }
  zoo_compile_opts o = {.path = path, .defines = defs, .ndefines = ndefs, .std_dir = "models"};
  zoo_diag d;
  zoo_diag_init(&d, stderr);
  zoo_program *p = NULL;
  if (zoo_compile(&o, &d, &p) != 0 || !p) {
    fprintf(stderr, "  %s: does not compile\n", name);
    return -1;
  }
  zoo_graph *g = &p->graph;
  int rc = -1;
  if (zoo_train_graph(g, &d) != 0) {
    fprintf(stderr, "  %s: zoo_train_graph failed\n", name);
    zoo_program_free(p);
    return -1;
  }
  enum { B = 2, T = 8, V = 32 };
  int64_t syms[ZOO_MAX_SYMS] = {0};
  for (int s = 0; s < g->nsyms; s++)
    syms[s] = strcmp(g->sym_names[s], "B") == 0 ? B : strcmp(g->sym_names[s], "T") == 0 ? T : 1;
  zoo_cpu cpu;
  if (zoo_cpu_init(&cpu, g, syms) != 0) {
    fprintf(stderr, "  %s: %s\n", name, cpu.err);
    zoo_program_free(p);
    return -1;
  }
  cpu.training = 1;
  cpu.seed = 77;
  uint64_t rng = 2024;
#define URAND() (rng = rng * 6364136223846793005ULL + 1442695040888963407ULL, \
                 (double)(rng >> 11) / 9007199254740992.0)
  for (int i = 0; i < g->nparams; i++) { /* larger than the real inits, so gradients are not tiny */
    int t = g->params[i];
    float *v = zoo_cpu_f32(&cpu, t);
    zoo_init_kind k = g->tensors[t].init.kind;
    for (int64_t j = 0; j < cpu.numel[t]; j++) {
      double u = 2 * URAND() - 1;
      v[j] = (float)(k == ZOO_INIT_ONES ? 1 + 0.2 * u : k == ZOO_INIT_ZEROS ? 0.1 * u : 0.3 * u);
    }
  }
  int tokens = -1;
  for (int i = 0; i < g->ninputs; i++)
    if (strcmp(g->tensors[g->inputs[i]].name, "tokens") == 0) tokens = g->inputs[i];
  int32_t *tok = zoo_cpu_i32(&cpu, tokens), *tgt = zoo_cpu_i32(&cpu, g->targets);
  for (int i = 0; i < B * T; i++) {
    tok[i] = (int32_t)(URAND() * V);
    tgt[i] = URAND() < 0.4 ? -100 : (int32_t)(URAND() * V);
  }
  zoo_cpu_f32(&cpu, g->dloss)[0] = 1.0f;
  if (zoo_cpu_run(&cpu, 0, g->nnodes) != 0) {
    fprintf(stderr, "  %s: %s\n", name, cpu.err);
    goto done;
  }
  double l0 = host_loss(&cpu, g, tgt);
  if (fabs(l0 - zoo_cpu_f32(&cpu, g->loss)[0]) > 1e-5 * l0) {
    fprintf(stderr, "  %s: loss %g, recomputed %g\n", name, zoo_cpu_f32(&cpu, g->loss)[0], l0);
    goto done;
  }
  int checked = 0;
  for (int i = 0; i < g->nparams; i++) {
    int t = g->params[i], gt = g->tensors[t].grad;
    const char *pname = g->tensors[t].name;
    if (gt < 0) {
      fprintf(stderr, "  %s: %s has no gradient\n", name, pname);
      goto done;
    }
    int64_t n = cpu.numel[t];
    const float *grad = zoo_cpu_f32(&cpu, gt);
    int64_t pick[4] = {0, 0, (int64_t)(URAND() * n), (int64_t)(URAND() * n)};
    for (int64_t j = 0; j < n; j++) { /* the two largest |gradient| entries */
      if (fabs(grad[j]) > fabs(grad[pick[0]])) pick[1] = pick[0], pick[0] = j;
      else if (j != pick[0] && fabs(grad[j]) > fabs(grad[pick[1]])) pick[1] = j;
    }
    float *v = zoo_cpu_f32(&cpu, t);
    for (int s = 0; s < 4; s++) {
      int64_t j = pick[s];
      double an = grad[j]; /* read before the forward runs below (they do not touch it) */
      float orig = v[j], up = orig + 1e-3f, down = orig - 1e-3f;
      v[j] = up;
      int e1 = zoo_cpu_run(&cpu, 0, g->nforward);
      double lp = host_loss(&cpu, g, tgt);
      v[j] = down;
      int e2 = zoo_cpu_run(&cpu, 0, g->nforward);
      double lm = host_loss(&cpu, g, tgt);
      v[j] = orig;
      if (e1 || e2) {
        fprintf(stderr, "  %s: %s\n", name, cpu.err);
        goto done;
      }
      double fd = (lp - lm) / ((double)up - (double)down);
      if (!(fabs(fd - an) <= 2e-2 * fmax(fabs(fd), fabs(an)) + 1e-4)) {
        fprintf(stderr, "  %s: %s[%lld]: autodiff %.6g, finite difference %.6g\n", name, pname,
                (long long)j, an, fd);
        goto done;
      }
      checked++;
    }
  }
  rc = checked > 0 ? 0 : -1;
#undef URAND
done:
  zoo_cpu_free(&cpu);
  zoo_program_free(p);
  return rc;
}

TEST(grad_model_rebased) { CHECK(model_fd("rebased", "num_heads=2") == 0); }
TEST(grad_model_based) { CHECK(model_fd("based", "num_heads=2") == 0); }
TEST(grad_model_conv_attention) { CHECK(model_fd("conv_attention", "num_heads=2") == 0); }
TEST(grad_model_attention) { CHECK(model_fd("attention", "num_heads=2") == 0); }
/* fp32 WKV: bf16 rounding would make the loss a step function at FD's scale */
TEST(grad_model_rwkv) { CHECK(model_fd("rwkv", "bf16=false") == 0); }

/* The same tensor as both operands: both contributions are summed. */
TEST(grad_same_input_twice) {
  zoo_op ops[] = {ZOO_OP_ADD, ZOO_OP_MUL, ZOO_OP_DIV, ZOO_OP_MATMUL};
  for (int k = 0; k < 4; k++) {
    gcase c;
    gc_init(&c);
    int x = gc_param(&c, F32T(K(3), K(3)), ops[k] == ZOO_OP_DIV ? VAL_AWAY : VAL_SIGNED);
    char what[32];
    snprintf(what, sizeof what, "%s(x, x)", zoo_ops[ops[k]].name);
    CHECK(gc_finish(&c, what, gc2(&c, ops[k], x, x, NULL)) == 0);
  }
}

/* wkv4 in fp32 against finite differences: plain values, then k scaled by 8
 * (through muls, so the stable form's rescaling is exercised) */
TEST(grad_wkv4) {
  for (int big = 0; big < 2; big++) {
    gcase c;
    gc_init(&c);
    int w = gc_param(&c, F32T(K(3)), VAL_SIGNED), u = gc_param(&c, F32T(K(3)), VAL_SIGNED);
    int k = gc_param(&c, F32T(K(2), K(6), K(3)), VAL_SIGNED);
    int v = gc_param(&c, F32T(K(2), K(6), K(3)), VAL_SIGNED);
    if (big) {
      zoo_attrs m = {0};
      m.f[0] = 8;
      k = gc1(&c, ZOO_OP_MULS, k, &m);
    }
    int in[4] = {w, u, k, v};
    CHECK(gc_finish(&c, big ? "wkv4 (large k)" : "wkv4", gc_node(&c, ZOO_OP_WKV4, 4, in, NULL)) == 0);
  }
}
