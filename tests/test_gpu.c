/* test_gpu.c: the GPU against the CPU reference. Skipped unless ZOO_GPU_TESTS=1
 * and a GPU is present (make test-gpu).
 *
 * Op tests: each case builds a small graph around one op (every op of ops.def
 * appears in a case, the INTERNAL ones through autodiff), seeds autodiff with a
 * random tensor of the output's type, and runs the whole graph, forward and
 * backward, on the CPU executor and on the GPU (fused, as the backend runs it,
 * with every tensor kept in memory). Every tensor is compared: i32 exactly, f32
 * within tol of the tensor's largest magnitude:
 *
 *   max |gpu - cpu| <= tol * max(1, max |cpu|)
 *
 * tol is 2e-5 for elementwise and movement ops (the same fp32 formulas), 1e-4
 * for reductions and GEMMs (other summation orders), 1e-3 for the attention
 * intrinsics and cross-entropy (long fp32 sums against the CPU's double).
 * Dropout masks must match exactly (one RNG), which the tolerance demands.
 *
 * Training tests: each shipped model, shrunk (vocabulary 64, d_model 24,
 * seq_len 16, 8 rows), takes 3 AdamW steps on the CPU backend and on the CUDA
 * backend from the same initial parameters and batches (the last batch short,
 * to exercise padding). Step losses must agree to 1e-3 relative, correct and
 * labelled counts exactly; the parameters' changes to 2% (relative norm: AdamW
 * divides by tiny second moments, so a few coordinates may differ by up to
 * 2 lr per step), and no parameter by more than 6 lr. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../compiler/compile.h"
#include "../compiler/fuse.h"
#include "../compiler/generate.h"
#include "../runtime/backend.h"
#include "../runtime/cpu.h"
#include "../runtime/cuda_backend.h"
#include "../runtime/rng.h"
#include "../runtime/train.h"
#include "emu.h"
#include "fake_cuda.h"
#include "test.h"

/* Where the gpu_ tests run: MODE_GPU, or MODE_PRECOMPILE with
 * ZOO_GPU_PRECOMPILE=1, which builds every module the GPU run will need and
 * compiles it for sm_90 into the kernel cache (ZOO_CACHE_DIR), no GPU needed,
 * so the GPU machine finds them there. Otherwise SKIPs unless asked for and
 * possible. */
enum { MODE_GPU, MODE_EMU, MODE_PRECOMPILE };
#define GPU_MODE_OR_SKIP(mode)                                                      \
  do {                                                                              \
    const char *on = getenv("ZOO_GPU_TESTS"), *pre = getenv("ZOO_GPU_PRECOMPILE");  \
    char why_[512];                                                                 \
    if (pre && strcmp(pre, "1") == 0) {                                             \
      (mode) = MODE_PRECOMPILE;                                                     \
      break;                                                                        \
    }                                                                               \
    if (!on || strcmp(on, "1") != 0) SKIP("set ZOO_GPU_TESTS=1 (make test-gpu)");   \
    if (!zoo_cuda_available(why_, sizeof why_)) SKIP("%s", why_);                   \
    (mode) = MODE_GPU;                                                              \
  } while (0)

/* SKIPs without a C++ compiler for the emulator. The op and program cases (a
 * few minutes on 2 cores) run by default, so CI checks the generated CUDA and the
 * intrinsics on every change; ZOO_EMU_TESTS=0 turns them off. The backend cases
 * (runtime/cuda.c over the fake driver, about ten minutes) run only with
 * ZOO_EMU_TESTS=1 (make test-emu). */
#define EMU_OR_SKIP_LEVEL(heavy)                                                    \
  do {                                                                              \
    char why_[256];                                                                 \
    const char *on_ = getenv("ZOO_EMU_TESTS");                                      \
    if (on_ && strcmp(on_, "0") == 0) SKIP("ZOO_EMU_TESTS=0");                      \
    if ((heavy) && (!on_ || strcmp(on_, "1") != 0))                                 \
      SKIP("set ZOO_EMU_TESTS=1 to emulate the backend (make test-emu)");           \
    if (!emu_available(why_, sizeof why_)) SKIP("%s", why_);                        \
  } while (0)
#define EMU_OR_SKIP() EMU_OR_SKIP_LEVEL(0)

/* ---------------------------------------------------------------------------
 * One-op cases */

/* V_TARGETS: 30% ignore_index (-100), the rest in [lo, hi); V_LABELLED_FIRST:
 * the first 60% in [lo, hi), the rest -100 (the compacted head's rows);
 * V_HOT_ROWS: a [V, D] matrix, signed except rows HOT .. HOT + 7, positive
 * and growing (1 + 0.4 k, a little noise): with positive rows of h, row HOT
 * + 7 is every row's argmax by a margin TF32 cannot blur, so hits occur. */
#define HOT 300
#ifndef MQAR_ROWS
#define MQAR_ROWS 64
#endif
typedef enum { V_SIGNED, V_POSITIVE, V_AWAY, V_BINARY, V_IDS, V_TARGETS, V_LABELLED_FIRST, V_MQAR_IDS, V_HOT_ROWS } vkind;

typedef struct ocase {
  zoo_graph g;
  zoo_diag d;
  int64_t sym[ZOO_MAX_SYMS];
  int in[12];
  vkind kind[12];
  int lo[12], hi[12]; /* range of integer inputs */
  int nin;
  uint64_t rng;
  double tol;
  const char *name;
  int bad;
} ocase;

static void oc_init(ocase *c, const char *name, double tol) {
  memset(c, 0, sizeof *c);
  zoo_graph_init(&c->g);
  zoo_diag_init(&c->d, stderr);
  c->name = name;
  c->tol = tol;
  c->rng = 0x9e3779b97f4a7c15ULL ^ (uint64_t)strlen(name) * 1000003ULL;
  for (int s = 0; s < ZOO_MAX_SYMS; s++) c->sym[s] = 1;
}

static zoo_type ty(zoo_dtype dt, int nd, const int64_t *dims) {
  zoo_type t = {.dtype = dt, .ndim = nd};
  for (int k = 0; k < nd; k++) t.dim[k] = zoo_dim_const(dims[k]);
  return t;
}

#define DIMS(...) (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__}

static int oc_f32(ocase *c, vkind k, int nd, const int64_t *dims) {
  char name[16];
  snprintf(name, sizeof name, "x%d", c->nin);
  int t = zoo_graph_input(&c->g, name, ty(ZOO_F32, nd, dims));
  c->in[c->nin] = t;
  c->kind[c->nin++] = k;
  return t;
}

static int oc_i32(ocase *c, vkind k, int lo, int hi, int nd, const int64_t *dims) {
  char name[16];
  snprintf(name, sizeof name, "i%d", c->nin);
  int t = zoo_graph_input(&c->g, name, ty(ZOO_I32, nd, dims));
  c->in[c->nin] = t;
  c->kind[c->nin] = k;
  c->lo[c->nin] = lo;
  c->hi[c->nin++] = hi;
  return t;
}

static int oc_op(ocase *c, zoo_op op, int nin, const int *in, const zoo_attrs *a) {
  int y = zoo_graph_node(&c->g, op, nin, in, a, zoo_nospan, &c->d);
  if (y < 0) c->bad = 1;
  return y;
}

static double urand(ocase *c) {
  c->rng = c->rng * 6364136223846793005ULL + 1442695040888963407ULL;
  return (double)(c->rng >> 11) / 9007199254740992.0;
}

/* Fills input k with values of its kind. */
static void fill(ocase *c, int k, void *data, int64_t n) {
  float *f = data;
  int32_t *i = data;
  for (int64_t e = 0; e < n; e++) {
    double u = urand(c);
    switch (c->kind[k]) {
    case V_SIGNED: f[e] = (float)(2 * u - 1); break;
    case V_POSITIVE: f[e] = (float)(0.1 + 1.9 * u); break;
    case V_AWAY: f[e] = (float)((u < 0.5 ? -1 : 1) * (0.5 + u)); break;
    case V_BINARY: f[e] = u < 0.5 ? 0.0f : 1.0f; break;
    case V_IDS: i[e] = c->lo[k] + (int32_t)(u * (c->hi[k] - c->lo[k])); break;
    case V_MQAR_IDS: i[e] = u < 0.25 ? 0 : c->lo[k] + (int32_t)(urand(c) * (c->hi[k] - c->lo[k])); break;
    case V_TARGETS: i[e] = u < 0.3 ? -100 : c->lo[k] + (int32_t)(urand(c) * (c->hi[k] - c->lo[k])); break;
    case V_LABELLED_FIRST: i[e] = e >= n * 3 / 5 ? -100 : c->lo[k] + (int32_t)(u * (c->hi[k] - c->lo[k])); break;
    case V_HOT_ROWS: {
      const zoo_type *ty = &c->g.tensors[c->in[k]].type;
      int64_t v = e / ty->dim[ty->ndim - 1].coef;
      f[e] = v >= HOT && v < HOT + 8 ? (float)(1 + 0.4 * (double)(v - HOT) + 0.05 * u) : (float)(2 * u - 1);
      break;
    }
    }
  }
}

/* Where a case runs: the GPU (zoo_cuda_exec) or the CPU emulation of the
 * generated module (tests/emu.h); either way every tensor is kept in memory. */
typedef struct dev {
  int emu;
  zoo_cuda_exec *x;
  zoo_graph g; /* emu: own node array */
  zoo_cuda_emit e;
  zoo_plan p;
  emu_module *m;
  emu_mem mem;
  char err[1024];
} dev;

static int dev_init(dev *d, const zoo_graph *g, const int64_t *sym, int emu) {
  memset(d, 0, sizeof *d);
  d->emu = emu;
  if (!emu) {
    d->x = zoo_cuda_exec_init(g, sym, 1, NULL, d->err, sizeof d->err);
    return d->x ? 0 : -1;
  }
  d->g = *g;
  d->g.nodes = malloc((size_t)(g->nnodes ? g->nnodes : 1) * sizeof *g->nodes);
  memcpy(d->g.nodes, g->nodes, (size_t)g->nnodes * sizeof *g->nodes);
  zoo_fuse(&d->g, 1);
  unsigned char *keep = malloc((size_t)g->ntensors + 1);
  int *ids = malloc(((size_t)g->ntensors + 1) * sizeof *ids);
  memset(keep, 1, (size_t)g->ntensors + 1);
  for (int t = 0; t < g->ntensors; t++) ids[t] = t;
  d->e.keep = keep;
  int r = zoo_cuda_emit_graph(&d->e, &d->g, sym, NULL);
  d->e.keep = NULL;
  if (r != 0) snprintf(d->err, sizeof d->err, "codegen: %s", d->e.err);
  if (r == 0) r = zoo_plan_build(&d->p, &d->g, sym, d->e.steps, d->e.nsteps, d->e.alias, ids, g->ntensors, 1, d->err, sizeof d->err);
  free(keep);
  free(ids);
  if (r == 0 && !(d->m = emu_load(&d->e, d->err, sizeof d->err))) r = -1;
  if (r == 0) emu_mem_init(&d->mem, &d->p);
  return r;
}

static int dev_upload(dev *d, int t, const void *host) {
  if (!d->emu) return zoo_cuda_exec_upload(d->x, t, host);
  void *at = emu_ptr(&d->mem, &d->p, t);
  if (!at) return snprintf(d->err, sizeof d->err, "tensor %d has no memory", t), -1;
  memcpy(at, host, (size_t)d->p.bytes[t]);
  return 0;
}

static int dev_download(dev *d, int t, void *host) {
  if (!d->emu) return zoo_cuda_exec_download(d->x, t, host);
  void *at = emu_ptr(&d->mem, &d->p, t);
  if (!at) return snprintf(d->err, sizeof d->err, "tensor %d has no memory", t), -1;
  memcpy(host, at, (size_t)d->p.bytes[t]);
  return 0;
}

static int dev_run(dev *d, uint64_t seed) {
  if (!d->emu) return zoo_cuda_exec_run(d->x, seed);
  return emu_run(d->m, &d->e, &d->p, &d->mem, 0, d->e.nsteps, seed, d->err, sizeof d->err);
}

static const char *dev_error(dev *d) { return d->emu ? d->err : zoo_cuda_exec_error(d->x); }

static void dev_free(dev *d) {
  if (!d->emu) {
    zoo_cuda_exec_free(d->x);
    return;
  }
  emu_unload(d->m);
  emu_mem_free(&d->mem);
  zoo_plan_free(&d->p);
  zoo_cuda_emit_free(&d->e);
  free(d->g.nodes);
}

/* Adds the backward pass of y (if y's op differentiates), runs the case on both
 * sides and compares every tensor. Returns 1 when they agree. */
static int oc_run(zoo_test_ctx *t, ocase *c, int y, int grad, int emu) {
  if (c->bad || y < 0) {
    fprintf(stderr, "  %s: the case does not build\n", c->name);
    return 0;
  }
  c->g.output = y;
  c->g.nforward = c->g.nnodes;
  if (grad && c->g.tensors[y].type.dtype == ZOO_F32) {
    int w = oc_f32(c, V_SIGNED, 0, NULL);
    c->g.tensors[w].type = c->g.tensors[y].type; /* the seed has y's type */
    if (zoo_autodiff(&c->g, y, w, &c->d) != 0) {
      fprintf(stderr, "  %s: autodiff failed\n", c->name);
      return 0;
    }
  }
  if (emu == MODE_PRECOMPILE) {
    char perr[1024];
    if (zoo_cuda_exec_precompile(&c->g, c->sym, 1, NULL, "sm_90", perr, sizeof perr) != 0) {
      fprintf(stderr, "  %s: precompile: %s\n", c->name, perr);
      return 0;
    }
    return 1;
  }
  zoo_cpu cpu;
  if (zoo_cpu_init(&cpu, &c->g, c->sym) != 0) {
    fprintf(stderr, "  %s: cpu init: %s\n", c->name, cpu.err);
    return 0;
  }
  cpu.training = 1;
  cpu.seed = 12345;
  dev dv, *x = &dv;
  if (dev_init(x, &c->g, c->sym, emu) != 0) {
    fprintf(stderr, "  %s: %s init: %s\n", c->name, emu ? "emulator" : "GPU", x->err);
    dev_free(x);
    zoo_cpu_free(&cpu);
    return 0;
  }
  int ok = 1;
  for (int k = 0; k < c->nin && ok; k++) {
    int tt = c->in[k];
    fill(c, k, cpu.data[tt], cpu.numel[tt]);
    if (dev_upload(x, tt, cpu.data[tt]) != 0) {
      fprintf(stderr, "  %s: upload: %s\n", c->name, dev_error(x));
      ok = 0;
    }
  }
  if (ok && zoo_cpu_run(&cpu, 0, c->g.nnodes) != 0) {
    fprintf(stderr, "  %s: cpu: %s\n", c->name, cpu.err);
    ok = 0;
  }
  if (ok && dev_run(x, 12345) != 0) {
    fprintf(stderr, "  %s: gpu: %s\n", c->name, dev_error(x));
    ok = 0;
  }
  for (int tt = 0; ok && tt < c->g.ntensors; tt++) {
    if (c->g.tensors[tt].kind != ZOO_T_VALUE) continue;
    int64_t n = cpu.numel[tt];
    void *got = malloc((size_t)(n ? n : 1) * 4);
    if (dev_download(x, tt, got) != 0) {
      fprintf(stderr, "  %s: download of t%d: %s\n", c->name, tt, dev_error(x));
      ok = 0;
    } else if (c->g.tensors[tt].type.dtype == ZOO_I32) {
      const int32_t *a = cpu.data[tt], *b = got;
      for (int64_t e = 0; e < n && ok; e++)
        if (a[e] != b[e]) {
          fprintf(stderr, "  %s: t%d (%s) element %lld: gpu %d, cpu %d\n", c->name, tt,
                  zoo_ops[c->g.nodes[c->g.tensors[tt].producer].op].name, (long long)e, b[e], a[e]);
          ok = 0;
        }
    } else {
      const float *a = cpu.data[tt], *b = got;
      double scale = 1, worst = 0;
      int64_t at = 0;
      for (int64_t e = 0; e < n; e++)
        if (fabs(a[e]) > scale) scale = fabs(a[e]);
      for (int64_t e = 0; e < n; e++) {
        double d = fabs((double)a[e] - (double)b[e]);
        if (!(d <= worst)) worst = d, at = e; /* NaN counts as worst */
      }
      if (!(worst <= c->tol * scale)) {
        const zoo_node *p = &c->g.nodes[c->g.tensors[tt].producer];
        fprintf(stderr, "  %s: t%d (%s%s) differs by %.3g at element %lld (gpu %.9g, cpu %.9g; tolerance %.3g)\n",
                c->name, tt, zoo_ops[p->op].name, c->g.tensors[tt].producer >= c->g.nforward ? ", backward" : "",
                worst, (long long)at, b[at], a[at], c->tol * scale);
        ok = 0;
      }
    }
    free(got);
  }
  dev_free(x);
  zoo_cpu_free(&cpu);
  (void)t;
  return ok;
}

static void oc_free(ocase *c) { zoo_graph_free(&c->g); }

/* Runs a case built by fn; counts failures. */
typedef int (*case_fn)(ocase *c);
typedef struct named_case {
  const char *name;
  case_fn build; /* returns y */
  double tol;
  int grad;
} named_case;

static int run_cases(zoo_test_ctx *t, const named_case *cases, int n, int emu) {
  int failed = 0;
  for (int i = 0; i < n; i++) {
    ocase c;
    oc_init(&c, cases[i].name, cases[i].tol);
    int y = cases[i].build(&c);
    if (!oc_run(t, &c, y, cases[i].grad, emu)) failed++;
    oc_free(&c);
  }
  return failed;
}

/* ---- elementwise */

static zoo_attrs A0(void) {
  zoo_attrs a;
  memset(&a, 0, sizeof a);
  return a;
}

static int c_binary(ocase *c, zoo_op op, vkind kb) {
  int a = oc_f32(c, V_SIGNED, DIMS(2, 3, 8)), b = oc_f32(c, kb, DIMS(3, 1));
  int in[2] = {a, b};
  return oc_op(c, op, 2, in, NULL);
}
static int c_add(ocase *c) {
  int a = oc_f32(c, V_SIGNED, DIMS(2, 3, 8)), b = oc_f32(c, V_SIGNED, DIMS(8));
  int in[2] = {a, b};
  return oc_op(c, ZOO_OP_ADD, 2, in, NULL);
}
static int c_sub(ocase *c) { return c_binary(c, ZOO_OP_SUB, V_SIGNED); }
static int c_mul(ocase *c) { return c_binary(c, ZOO_OP_MUL, V_SIGNED); }
static int c_div(ocase *c) { return c_binary(c, ZOO_OP_DIV, V_AWAY); }
static int c_gt(ocase *c) { return c_binary(c, ZOO_OP_GT, V_SIGNED); }
static int c_where(ocase *c) {
  int k = oc_f32(c, V_BINARY, DIMS(4, 9)), a = oc_f32(c, V_SIGNED, DIMS(4, 9)), b = oc_f32(c, V_SIGNED, DIMS(9));
  int in[3] = {k, a, b};
  return oc_op(c, ZOO_OP_WHERE, 3, in, NULL);
}
static int c_unary(ocase *c, zoo_op op, vkind k, double f0) {
  int x = oc_f32(c, k, DIMS(5, 37));
  zoo_attrs a = A0();
  a.f[0] = f0;
  return oc_op(c, op, 1, &x, &a);
}
#define UNARY(fn, op, k, f0) \
  static int fn(ocase *c) { return c_unary(c, op, k, f0); }
UNARY(c_neg, ZOO_OP_NEG, V_SIGNED, 0)
UNARY(c_exp, ZOO_OP_EXP, V_SIGNED, 0)
UNARY(c_log, ZOO_OP_LOG, V_POSITIVE, 0)
UNARY(c_sqrt, ZOO_OP_SQRT, V_POSITIVE, 0)
UNARY(c_rsqrt, ZOO_OP_RSQRT, V_POSITIVE, 0)
UNARY(c_square, ZOO_OP_SQUARE, V_SIGNED, 0)
UNARY(c_sigmoid, ZOO_OP_SIGMOID, V_SIGNED, 0)
UNARY(c_silu, ZOO_OP_SILU, V_SIGNED, 0)
UNARY(c_softplus, ZOO_OP_SOFTPLUS, V_SIGNED, 0)
UNARY(c_relu, ZOO_OP_RELU, V_AWAY, 0)
UNARY(c_gelu, ZOO_OP_GELU, V_SIGNED, 0)
UNARY(c_tanh, ZOO_OP_TANH, V_SIGNED, 0)
UNARY(c_sin, ZOO_OP_SIN, V_SIGNED, 0)
UNARY(c_cos, ZOO_OP_COS, V_SIGNED, 0)
UNARY(c_adds, ZOO_OP_ADDS, V_SIGNED, 0.5)
UNARY(c_muls, ZOO_OP_MULS, V_SIGNED, -1.5)
UNARY(c_pows, ZOO_OP_POWS, V_POSITIVE, 2.5)
UNARY(c_pows_int, ZOO_OP_POWS, V_SIGNED, 3)
static int c_dropout(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(4, 33, 8));
  zoo_attrs a = A0();
  a.f[0] = 0.3;
  a.i[0] = 7;
  return oc_op(c, ZOO_OP_DROPOUT, 1, &x, &a);
}
/* a chain that fuses into one kernel, with values used twice */
static int c_chain(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(3, 5, 16)), b = oc_f32(c, V_SIGNED, DIMS(16));
  int in[2] = {x, b};
  int s = oc_op(c, ZOO_OP_ADD, 2, in, NULL);
  int e = oc_op(c, ZOO_OP_SIGMOID, 1, &s, NULL);
  int m[2] = {e, x};
  int y = oc_op(c, ZOO_OP_MUL, 2, m, NULL);
  int g = oc_op(c, ZOO_OP_GELU, 1, &y, NULL);
  int q[2] = {g, s};
  return oc_op(c, ZOO_OP_SUB, 2, q, NULL);
}

static const named_case elementwise_cases[] = {
      {"add", c_add, 2e-5, 1},         {"sub", c_sub, 2e-5, 1},         {"mul", c_mul, 2e-5, 1},
      {"div", c_div, 2e-5, 1},         {"gt", c_gt, 0, 0},              {"where", c_where, 2e-5, 1},
      {"neg", c_neg, 2e-5, 1},         {"exp", c_exp, 2e-5, 1},         {"log", c_log, 2e-5, 1},
      {"sqrt", c_sqrt, 2e-5, 1},       {"rsqrt", c_rsqrt, 2e-5, 1},     {"square", c_square, 2e-5, 1},
      {"sigmoid", c_sigmoid, 2e-5, 1}, {"silu", c_silu, 2e-5, 1},       {"softplus", c_softplus, 2e-5, 1},
      {"relu", c_relu, 2e-5, 1},       {"gelu", c_gelu, 2e-5, 1},       {"tanh", c_tanh, 2e-5, 1},
      {"sin", c_sin, 2e-5, 1},         {"cos", c_cos, 2e-5, 1},         {"adds", c_adds, 2e-5, 1},
      {"muls", c_muls, 2e-5, 1},       {"pows", c_pows, 2e-5, 1},       {"pows_int", c_pows_int, 2e-5, 1},
      {"dropout", c_dropout, 2e-5, 1}, {"fused_chain", c_chain, 2e-5, 1},
};

TEST(gpu_ops_elementwise) {
  int mode = MODE_GPU;
  GPU_MODE_OR_SKIP(mode);
  int failed = run_cases(t, elementwise_cases, (int)(sizeof elementwise_cases / sizeof *elementwise_cases), mode);
  CHECKF(failed == 0, "%d elementwise case(s) differ", failed);
  if (mode == MODE_PRECOMPILE) SKIP("precompiled for sm_90 only");
}

TEST(emu_ops_elementwise) {
  EMU_OR_SKIP();
  int failed = run_cases(t, elementwise_cases, (int)(sizeof elementwise_cases / sizeof *elementwise_cases), 1);
  CHECKF(failed == 0, "%d elementwise case(s) differ (emulated)", failed);
}

/* ---- reductions */

static int c_sum_axis(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(4, 33, 7));
  zoo_attrs a = A0();
  a.i[0] = 1;
  return oc_op(c, ZOO_OP_SUM, 1, &x, &a);
}
static int c_mean_last(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(4, 33, 7));
  zoo_attrs a = A0();
  a.i[0] = -1;
  a.i[1] = 1;
  return oc_op(c, ZOO_OP_MEAN, 1, &x, &a);
}
static int c_sum_columns(ocase *c) { /* many rows: split in chunks */
  int x = oc_f32(c, V_SIGNED, DIMS(3000, 5));
  zoo_attrs a = A0();
  return oc_op(c, ZOO_OP_SUM, 1, &x, &a);
}
static int c_mean_rows(ocase *c) { /* long rows: warps along r, split */
  int x = oc_f32(c, V_SIGNED, DIMS(5, 3000));
  zoo_attrs a = A0();
  a.i[0] = 1;
  return oc_op(c, ZOO_OP_MEAN, 1, &x, &a);
}
static int c_reduce_to(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(4, 33, 7));
  zoo_attrs a = A0();
  a.ndim = 2;
  a.dims[0] = zoo_dim_const(33);
  a.dims[1] = zoo_dim_const(1);
  return oc_op(c, ZOO_OP_REDUCE_TO, 1, &x, &a);
}
static int c_reduce_to_bias(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(64, 40, 8));
  zoo_attrs a = A0();
  a.ndim = 1;
  a.dims[0] = zoo_dim_const(8);
  return oc_op(c, ZOO_OP_REDUCE_TO, 1, &x, &a);
}
static int c_layernorm(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(6, 40)), w = oc_f32(c, V_SIGNED, DIMS(40)), b = oc_f32(c, V_SIGNED, DIMS(40));
  zoo_attrs a = A0();
  a.f[0] = 1e-5;
  int in[3] = {x, w, b};
  return oc_op(c, ZOO_OP_LAYERNORM, 3, in, &a);
}
static int c_layernorm_plain(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(2, 3, 192));
  zoo_attrs a = A0();
  a.f[0] = 1e-12;
  return oc_op(c, ZOO_OP_LAYERNORM, 1, &x, &a);
}
static int c_rmsnorm(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(6, 40)), w = oc_f32(c, V_SIGNED, DIMS(40));
  zoo_attrs a = A0();
  a.f[0] = 1e-5;
  int in[2] = {x, w};
  return oc_op(c, ZOO_OP_RMSNORM, 2, in, &a);
}
/* 500 rows: the backward's parameter gradients come from 8 blocks' partials,
 * added by the last block to finish (zk_finish_partials) */
static int c_layernorm_many(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(5, 100, 40)), w = oc_f32(c, V_SIGNED, DIMS(40)), b = oc_f32(c, V_SIGNED, DIMS(40));
  zoo_attrs a = A0();
  a.f[0] = 1e-5;
  int in[3] = {x, w, b};
  return oc_op(c, ZOO_OP_LAYERNORM, 3, in, &a);
}
/* rows of 512 (a warp a row, 16 floats a lane), 2100 of them: the backward's
 * 33 blocks' partials (2 x 512 floats each, more than the last block adds up)
 * added by a kernel of its own */
static int c_layernorm_wide(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(3, 700, 512)), w = oc_f32(c, V_SIGNED, DIMS(512)),
      b = oc_f32(c, V_SIGNED, DIMS(512));
  zoo_attrs a = A0();
  a.f[0] = 1e-5;
  int in[3] = {x, w, b};
  return oc_op(c, ZOO_OP_LAYERNORM, 3, in, &a);
}
/* rows of 20 and of 3: groups of 8 and 1 lanes, 4 and 32 rows a warp, the
 * last warp's groups partly past the end */
static int c_layernorm_narrow(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(7, 13, 20)), w = oc_f32(c, V_SIGNED, DIMS(20)), b = oc_f32(c, V_SIGNED, DIMS(20));
  zoo_attrs a = A0();
  a.f[0] = 1e-5;
  int in[3] = {x, w, b};
  return oc_op(c, ZOO_OP_LAYERNORM, 3, in, &a);
}
static int c_layernorm_tiny(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(75, 3)), w = oc_f32(c, V_SIGNED, DIMS(3));
  zoo_attrs a = A0();
  a.f[0] = 1e-5;
  int in[2] = {x, w};
  return oc_op(c, ZOO_OP_LAYERNORM, 2, in, &a);
}
/* The output written split into 12 heads (layernorm's i0, ops.def), as
 * ReBased's q and k norms train; the backward reads dy in that layout. 3 x 50
 * rows of 192: several rows per block, the last block partial. */
static int c_layernorm_heads(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(3, 50, 192)), w = oc_f32(c, V_SIGNED, DIMS(192)), b = oc_f32(c, V_SIGNED, DIMS(192));
  zoo_attrs a = A0();
  a.f[0] = 1e-5;
  a.i[0] = 12;
  int in[3] = {x, w, b};
  return oc_op(c, ZOO_OP_LAYERNORM, 3, in, &a);
}
/* rows of 20 in 4 heads of 5, groups of 8 lanes */
static int c_layernorm_heads_narrow(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(2, 7, 20)), w = oc_f32(c, V_SIGNED, DIMS(20));
  zoo_attrs a = A0();
  a.f[0] = 1e-5;
  a.i[0] = 4;
  int in[2] = {x, w};
  return oc_op(c, ZOO_OP_LAYERNORM, 2, in, &a);
}
/* linear_layernorm (the fold of ReBased's q and k projections and norms):
 * K 32, N 192 into 12 heads over 3 x 50 rows (a partial last block); and
 * K 20, N 64 without g, b or heads. */
static int c_linear_layernorm_heads(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(3, 50, 32)), w = oc_f32(c, V_SIGNED, DIMS(192, 32));
  int g = oc_f32(c, V_SIGNED, DIMS(192)), b = oc_f32(c, V_SIGNED, DIMS(192));
  zoo_attrs a = A0();
  a.f[0] = 1e-5;
  a.i[0] = 12;
  int in[4] = {x, w, g, b};
  return oc_op(c, ZOO_OP_LINEAR_LAYERNORM, 4, in, &a);
}
static int c_linear_layernorm_plain(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(2, 77, 20)), w = oc_f32(c, V_SIGNED, DIMS(64, 20));
  zoo_attrs a = A0();
  a.f[0] = 1e-5;
  int in[2] = {x, w};
  return oc_op(c, ZOO_OP_LINEAR_LAYERNORM, 2, in, &a);
}
static int c_rmsnorm_many(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(500, 40)), w = oc_f32(c, V_SIGNED, DIMS(40));
  zoo_attrs a = A0();
  a.f[0] = 1e-5;
  int in[2] = {x, w};
  return oc_op(c, ZOO_OP_RMSNORM, 2, in, &a);
}
static int c_softmax(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(5, 33));
  return oc_op(c, ZOO_OP_SOFTMAX, 1, &x, NULL);
}
static int c_logsumexp(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(5, 33));
  return oc_op(c, ZOO_OP_LOGSUMEXP, 1, &x, NULL);
}
static int c_cross_entropy(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(3, 7, 50)), tg = oc_i32(c, V_TARGETS, 0, 50, DIMS(3, 7));
  zoo_attrs a = A0();
  a.i[0] = -100;
  int in[2] = {x, tg};
  return oc_op(c, ZOO_OP_CROSS_ENTROPY, 2, in, &a);
}
static int c_accuracy(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(3, 7, 50)), tg = oc_i32(c, V_TARGETS, 0, 50, DIMS(3, 7));
  zoo_attrs a = A0();
  a.i[0] = -100;
  int in[2] = {x, tg};
  return oc_op(c, ZOO_OP_ACCURACY, 2, in, &a);
}
static int c_argmax(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(5, 33));
  return oc_op(c, ZOO_OP_ARGMAX, 1, &x, NULL);
}

/* rows of a multiple of 128: the float4 paths of softmax.cu and cross_entropy.cu */
static int c_cross_entropy_wide(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(3, 5, 256)), tg = oc_i32(c, V_TARGETS, 0, 256, DIMS(3, 5));
  zoo_attrs a = A0();
  a.i[0] = -100;
  int in[2] = {x, tg};
  return oc_op(c, ZOO_OP_CROSS_ENTROPY, 2, in, &a);
}
static int c_accuracy_wide(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(4, 9, 384)), tg = oc_i32(c, V_TARGETS, 0, 384, DIMS(4, 9));
  zoo_attrs a = A0();
  a.i[0] = -100;
  int in[2] = {x, tg};
  return oc_op(c, ZOO_OP_ACCURACY, 2, in, &a);
}
static int c_argmax_wide(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(7, 256));
  return oc_op(c, ZOO_OP_ARGMAX, 1, &x, NULL);
}
static int c_logsumexp_wide(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(5, 128));
  return oc_op(c, ZOO_OP_LOGSUMEXP, 1, &x, NULL);
}

/* the training graph's loss head: loss, metrics and dlogits in one pass, rows
 * of 50 (scalar loads) and of 256 (float4s) */
static int c_cross_entropy_step_t(ocase *c, int64_t V) {
  int x = oc_f32(c, V_SIGNED, DIMS(3, 7, V)), tg = oc_i32(c, V_TARGETS, 0, V, DIMS(3, 7));
  int dl = oc_f32(c, V_POSITIVE, 0, NULL);
  zoo_attrs a = A0();
  a.i[0] = -100;
  int in[3] = {x, tg, dl};
  return oc_op(c, ZOO_OP_CROSS_ENTROPY_STEP, 3, in, &a);
}
static int c_cross_entropy_step(ocase *c) { return c_cross_entropy_step_t(c, 50); }
static int c_cross_entropy_step_wide(ocase *c) { return c_cross_entropy_step_t(c, 256); }
/* rows of 2048: a block per row, the row in registers (zk_ce_step_row_block) */
static int c_cross_entropy_step_block(ocase *c) { return c_cross_entropy_step_t(c, 2048); }

static const named_case reductions_cases[] = {
      {"sum_axis", c_sum_axis, 1e-4, 1},
      {"mean_last_keepdim", c_mean_last, 1e-4, 1},
      {"sum_columns_split", c_sum_columns, 1e-4, 1},
      {"mean_rows_split", c_mean_rows, 1e-4, 1},
      {"reduce_to", c_reduce_to, 1e-4, 1},
      {"reduce_to_bias", c_reduce_to_bias, 1e-4, 1},
      {"layernorm", c_layernorm, 1e-4, 1},
      {"layernorm_plain", c_layernorm_plain, 1e-4, 1},
      {"rmsnorm", c_rmsnorm, 1e-4, 1},
      {"layernorm_many_rows", c_layernorm_many, 1e-4, 1},
      {"layernorm_wide_rows", c_layernorm_wide, 1e-4, 1},
      {"layernorm_narrow", c_layernorm_narrow, 1e-4, 1},
      {"layernorm_tiny", c_layernorm_tiny, 1e-4, 1},
      {"layernorm_heads", c_layernorm_heads, 1e-4, 1},
      {"layernorm_heads_narrow", c_layernorm_heads_narrow, 1e-4, 1},
      {"linear_layernorm_heads", c_linear_layernorm_heads, 1e-4, 0},
      {"linear_layernorm_plain", c_linear_layernorm_plain, 1e-4, 0},
      {"rmsnorm_many_rows", c_rmsnorm_many, 1e-4, 1},
      {"softmax", c_softmax, 1e-4, 1},
      {"logsumexp", c_logsumexp, 1e-4, 1},
      {"cross_entropy", c_cross_entropy, 1e-3, 1},
      {"accuracy", c_accuracy, 0, 0},
      {"argmax", c_argmax, 0, 0},
      {"cross_entropy_wide", c_cross_entropy_wide, 1e-3, 1},
      {"accuracy_wide", c_accuracy_wide, 0, 0},
      {"argmax_wide", c_argmax_wide, 0, 0},
      {"logsumexp_wide", c_logsumexp_wide, 1e-4, 1},
      {"cross_entropy_step", c_cross_entropy_step, 1e-4, 0},
      {"cross_entropy_step_wide", c_cross_entropy_step_wide, 1e-4, 0},
      {"cross_entropy_step_block", c_cross_entropy_step_block, 1e-4, 0},
};

TEST(gpu_ops_reductions) {
  int mode = MODE_GPU;
  GPU_MODE_OR_SKIP(mode);
  int failed = run_cases(t, reductions_cases, (int)(sizeof reductions_cases / sizeof *reductions_cases), mode);
  CHECKF(failed == 0, "%d reduction case(s) differ", failed);
  if (mode == MODE_PRECOMPILE) SKIP("precompiled for sm_90 only");
}

TEST(emu_ops_reductions) {
  EMU_OR_SKIP();
  int failed = run_cases(t, reductions_cases, (int)(sizeof reductions_cases / sizeof *reductions_cases), 1);
  CHECKF(failed == 0, "%d reduction case(s) differ (emulated)", failed);
}

/* ---- movement */

static int c_reshape(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(2, 3, 8));
  zoo_attrs a = A0();
  a.ndim = 2;
  a.dims[0] = zoo_dim_const(6);
  a.dims[1] = zoo_dim_const(8);
  return oc_op(c, ZOO_OP_RESHAPE, 1, &x, &a);
}
static int c_permute(ocase *c, const int *perm) {
  int x = oc_f32(c, V_SIGNED, DIMS(2, 3, 4, 5));
  zoo_attrs a = A0();
  a.ndim = 4;
  for (int k = 0; k < 4; k++) a.dims[k] = zoo_dim_const(perm[k]);
  return oc_op(c, ZOO_OP_PERMUTE, 1, &x, &a);
}
static int c_permute1(ocase *c) { return c_permute(c, (const int[]){0, 2, 1, 3}); }
static int c_permute2(ocase *c) { return c_permute(c, (const int[]){3, 0, 2, 1}); }
static int c_split_heads(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(2, 5, 15));
  zoo_attrs a = A0();
  a.i[0] = 3;
  return oc_op(c, ZOO_OP_SPLIT_HEADS, 1, &x, &a);
}
static int c_merge_heads(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(2, 3, 5, 4));
  return oc_op(c, ZOO_OP_MERGE_HEADS, 1, &x, NULL);
}
static int c_slice(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(2, 7, 4));
  zoo_attrs a = A0();
  a.i[0] = 1;
  a.i[1] = 2;
  a.ndim = 1;
  a.dims[0] = zoo_dim_const(3);
  return oc_op(c, ZOO_OP_SLICE, 1, &x, &a);
}
static int c_concat(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(2, 3, 4)), y = oc_f32(c, V_SIGNED, DIMS(2, 3, 5));
  zoo_attrs a = A0();
  a.i[0] = -1;
  int in[2] = {x, y};
  return oc_op(c, ZOO_OP_CONCAT, 2, in, &a);
}
static int c_shift(ocase *c, int k) {
  int x = oc_f32(c, V_SIGNED, DIMS(2, 7, 3));
  zoo_attrs a = A0();
  a.i[0] = 1;
  a.i[1] = k;
  return oc_op(c, ZOO_OP_SHIFT, 1, &x, &a);
}
static int c_shift_fwd(ocase *c) { return c_shift(c, 2); }
static int c_shift_back(ocase *c) { return c_shift(c, -1); }

static const named_case movement_cases[] = {
      {"reshape", c_reshape, 0, 1},         {"permute_0213", c_permute1, 0, 1},
      {"permute_3021", c_permute2, 0, 1},   {"split_heads", c_split_heads, 0, 1},
      {"merge_heads", c_merge_heads, 0, 1}, {"slice", c_slice, 0, 1},
      {"concat", c_concat, 0, 1},           {"shift_2", c_shift_fwd, 0, 1},
      {"shift_-1", c_shift_back, 0, 1},
};

TEST(gpu_ops_movement) {
  int mode = MODE_GPU;
  GPU_MODE_OR_SKIP(mode);
  int failed = run_cases(t, movement_cases, (int)(sizeof movement_cases / sizeof *movement_cases), mode);
  CHECKF(failed == 0, "%d movement case(s) differ", failed);
  if (mode == MODE_PRECOMPILE) SKIP("precompiled for sm_90 only");
}

TEST(emu_ops_movement) {
  EMU_OR_SKIP();
  int failed = run_cases(t, movement_cases, (int)(sizeof movement_cases / sizeof *movement_cases), 1);
  CHECKF(failed == 0, "%d movement case(s) differ (emulated)", failed);
}

/* ---- matrix products */

static int c_linear(ocase *c, int bias) {
  int x = oc_f32(c, V_SIGNED, DIMS(3, 5, 16)), w = oc_f32(c, V_SIGNED, DIMS(24, 16));
  int in[3] = {x, w, bias ? oc_f32(c, V_SIGNED, DIMS(24)) : -1};
  return oc_op(c, ZOO_OP_LINEAR, bias ? 3 : 2, in, NULL);
}
static int c_linear_bias(ocase *c) { return c_linear(c, 1); }
static int c_linear_nobias(ocase *c) { return c_linear(c, 0); }
static int c_matmul(ocase *c, int ta, int tb, int abatch, int bbatch) {
  int64_t M = 7, K = 5, N = 9;
  int64_t ad[3] = {2, ta ? K : M, ta ? M : K}, bd[3] = {2, tb ? N : K, tb ? K : N};
  int a = abatch ? oc_f32(c, V_SIGNED, 3, ad) : oc_f32(c, V_SIGNED, 2, ad + 1);
  int b = bbatch ? oc_f32(c, V_SIGNED, 3, bd) : oc_f32(c, V_SIGNED, 2, bd + 1);
  zoo_attrs at = A0();
  at.i[0] = ta;
  at.i[1] = tb;
  int in[2] = {a, b};
  return oc_op(c, ZOO_OP_MATMUL, 2, in, &at);
}
static int c_mm(ocase *c) { return c_matmul(c, 0, 0, 1, 1); }
static int c_mm_ta(ocase *c) { return c_matmul(c, 1, 0, 1, 1); }
static int c_mm_tb(ocase *c) { return c_matmul(c, 0, 1, 1, 1); }
static int c_mm_tab(ocase *c) { return c_matmul(c, 1, 1, 1, 1); }
static int c_mm_shared_b(ocase *c) { return c_matmul(c, 0, 0, 1, 0); }
static int c_mm_shared_a(ocase *c) { return c_matmul(c, 0, 1, 0, 1); }
static int c_mm_2d(ocase *c) { return c_matmul(c, 1, 0, 0, 0); }

/* zoo's own GEMM kernel's three tile shapes (runtime/kernels/gemm.cu), with
 * edges: N 20 (256 x 32 tiles) with a bias, N 70 (64 x 64), N 300 (128 x 64);
 * the backward's products have K 20, 70 and 300 (cuBLASLt's, K > 32). */
static int c_gemm_own(ocase *c, int64_t M, int64_t K, int64_t N, int bias) {
  int x = oc_f32(c, V_SIGNED, DIMS(2, M, K)), w = oc_f32(c, V_SIGNED, DIMS(N, K));
  int in[3] = {x, w, bias ? oc_f32(c, V_SIGNED, DIMS(N)) : -1};
  return oc_op(c, ZOO_OP_LINEAR, bias ? 3 : 2, in, NULL);
}
static int c_gemm_own_narrow(ocase *c) { return c_gemm_own(c, 150, 24, 20, 1); }
static int c_gemm_own_mid(ocase *c) { return c_gemm_own(c, 67, 32, 70, 0); }
static int c_gemm_own_wide(ocase *c) { return c_gemm_own(c, 75, 17, 300, 0); }
/* a head's width: N 2100, 33 column tiles, the last partly past N, a bias */
static int c_gemm_own_head(ocase *c) { return c_gemm_own(c, 37, 20, 2100, 1); }

/* its weight-gradient form (zk_wgrad), A^T B over a long K split into blocks
 * with a two-level reduction: C 70 x 20 (3 tiles, 19 blocks each, groups of
 * 5, the last of 4) and 20 x 130 over 4101 rows (5 tiles, 32 blocks of 129
 * rows, the last of 102), both read a float at a time; 24 x 32 with 16-byte
 * reads (23 blocks) */
static int c_wgrad(ocase *c, int64_t M, int64_t K, int64_t N) {
  int a = oc_f32(c, V_SIGNED, DIMS(K, M)), b = oc_f32(c, V_SIGNED, DIMS(K, N));
  zoo_attrs at = A0();
  at.i[0] = 1;
  int in[2] = {a, b};
  return oc_op(c, ZOO_OP_MATMUL, 2, in, &at);
}
static int c_wgrad_rows(ocase *c) { return c_wgrad(c, 70, 2500, 20); }
static int c_wgrad_cols(ocase *c) { return c_wgrad(c, 20, 4101, 130); }
static int c_wgrad_vec(ocase *c) { return c_wgrad(c, 24, 3000, 32); }

static const named_case matmul_cases[] = {
      {"gemm_own_narrow", c_gemm_own_narrow, 1e-4, 1}, {"gemm_own_mid", c_gemm_own_mid, 1e-4, 1},
      {"gemm_own_wide", c_gemm_own_wide, 1e-4, 1},     {"gemm_own_head", c_gemm_own_head, 1e-4, 1},
      {"gemm_wgrad_rows", c_wgrad_rows, 1e-4, 1}, {"gemm_wgrad_cols", c_wgrad_cols, 1e-4, 1},
      {"gemm_wgrad_vec", c_wgrad_vec, 1e-4, 1},
      {"linear_bias", c_linear_bias, 1e-4, 1}, {"linear", c_linear_nobias, 1e-4, 1},
      {"matmul", c_mm, 1e-4, 1},               {"matmul_ta", c_mm_ta, 1e-4, 1},
      {"matmul_tb", c_mm_tb, 1e-4, 1},         {"matmul_tab", c_mm_tab, 1e-4, 1},
      {"matmul_shared_b", c_mm_shared_b, 1e-4, 1}, {"matmul_shared_a", c_mm_shared_a, 1e-4, 1},
      {"matmul_2d", c_mm_2d, 1e-4, 1},
};

TEST(gpu_ops_matmul) {
  int mode = MODE_GPU;
  GPU_MODE_OR_SKIP(mode);
  int failed = run_cases(t, matmul_cases, (int)(sizeof matmul_cases / sizeof *matmul_cases), mode);
  CHECKF(failed == 0, "%d matrix product case(s) differ", failed);
  if (mode == MODE_PRECOMPILE) SKIP("precompiled for sm_90 only");
}

TEST(emu_ops_matmul) {
  EMU_OR_SKIP();
  int failed = run_cases(t, matmul_cases, (int)(sizeof matmul_cases / sizeof *matmul_cases), 1);
  CHECKF(failed == 0, "%d matrix product case(s) differ (emulated)", failed);
}

/* The same cases with every GEMM that has zoo's own kernel run by it
 * (ZOO_GEMM_OWN=1), where timing would pick cuBLASLt's for most. */
TEST(gpu_ops_matmul_own) {
  int mode = MODE_GPU;
  GPU_MODE_OR_SKIP(mode);
  char *saved = zoo_test_env_set("ZOO_GEMM_OWN", "1");
  int failed = run_cases(t, matmul_cases, (int)(sizeof matmul_cases / sizeof *matmul_cases), mode);
  zoo_test_env_restore("ZOO_GEMM_OWN", saved);
  CHECKF(failed == 0, "%d matrix product case(s) differ with zoo's GEMM kernel", failed);
  if (mode == MODE_PRECOMPILE) SKIP("precompiled for sm_90 only");
}

TEST(emu_ops_matmul_own) {
  EMU_OR_SKIP();
  char *saved = zoo_test_env_set("ZOO_GEMM_OWN", "1");
  int failed = run_cases(t, matmul_cases, (int)(sizeof matmul_cases / sizeof *matmul_cases), 1);
  zoo_test_env_restore("ZOO_GEMM_OWN", saved);
  CHECKF(failed == 0, "%d matrix product case(s) differ with zoo's GEMM kernel (emulated)", failed);
}

/* ---- gather, scan, intrinsics */

static int c_embedding(ocase *c) {
  int w = oc_f32(c, V_SIGNED, DIMS(50, 16)), ids = oc_i32(c, V_IDS, 0, 50, DIMS(3, 7));
  int in[2] = {w, ids};
  return oc_op(c, ZOO_OP_EMBEDDING, 2, in, NULL);
}
/* Many rows, few ids (each id's rows span several of the backward's pieces
 * and chunks) and many ids; D 40 (a partial warp of columns, the forward's
 * one-float path) and 64 (16-byte rows). */
static int c_embedding_hot(ocase *c) {
  int w = oc_f32(c, V_SIGNED, DIMS(300, 40)), ids = oc_i32(c, V_IDS, 0, 5, DIMS(8, 400));
  int in[2] = {w, ids};
  return oc_op(c, ZOO_OP_EMBEDDING, 2, in, NULL);
}
static int c_embedding_wide(ocase *c) {
  int w = oc_f32(c, V_SIGNED, DIMS(300, 64)), ids = oc_i32(c, V_IDS, 0, 300, DIMS(8, 400));
  int in[2] = {w, ids};
  return oc_op(c, ZOO_OP_EMBEDDING, 2, in, NULL);
}
/* MQAR's tokens at simple_mqar's shape: vocabulary 8192, width 32, a quarter
 * of the positions the fill token 0 (its rows span many pieces and chunks),
 * most other ids absent from the batch. */
static int c_embedding_mqar(ocase *c) {
  int w = oc_f32(c, V_SIGNED, DIMS(8192, 32)), ids = oc_i32(c, V_MQAR_IDS, 0, 8192, DIMS(MQAR_ROWS, 48));
  int in[2] = {w, ids};
  return oc_op(c, ZOO_OP_EMBEDDING, 2, in, NULL);
}
static int c_arange(ocase *c) {
  zoo_attrs a = A0();
  a.ndim = 1;
  a.dims[0] = zoo_dim_const(9);
  return oc_op(c, ZOO_OP_ARANGE, 0, NULL, &a);
}
static int c_cumsum(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(2, 9, 4));
  zoo_attrs a = A0();
  a.i[0] = 1;
  return oc_op(c, ZOO_OP_CUMSUM, 1, &x, &a);
}
static int c_conv(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(2, 9, 6)), w = oc_f32(c, V_SIGNED, DIMS(6, 1, 3)), b = oc_f32(c, V_SIGNED, DIMS(6));
  int in[3] = {x, w, b};
  return oc_op(c, ZOO_OP_CAUSAL_CONV1D, 3, in, NULL);
}
static int c_conv_many(ocase *c) { /* 400 rows: 7 blocks' partials */
  int x = oc_f32(c, V_SIGNED, DIMS(8, 50, 6)), w = oc_f32(c, V_SIGNED, DIMS(6, 1, 3)), b = oc_f32(c, V_SIGNED, DIMS(6));
  int in[3] = {x, w, b};
  return oc_op(c, ZOO_OP_CAUSAL_CONV1D, 3, in, NULL);
}
static int c_poly_t(ocase *c, double c0, double c1, double c2, int64_t dv, int64_t T) {
  int q = oc_f32(c, V_SIGNED, DIMS(2, 3, T, 16)), k = oc_f32(c, V_SIGNED, DIMS(2, 3, T, 16));
  int64_t vd[4] = {2, 3, T, dv};
  int v = oc_f32(c, V_SIGNED, 4, vd);
  zoo_attrs a = A0();
  a.f[0] = c0, a.f[1] = c1, a.f[2] = c2, a.f[3] = 0.25, a.f[4] = 1e-12;
  int in[3] = {q, k, v};
  return oc_op(c, ZOO_OP_POLY_ATTENTION, 3, in, &a);
}
static int c_poly(ocase *c, double c0, double c1, double c2, int64_t dv) {
  return c_poly_t(c, c0, c1, c2, dv, 9);
}
static int c_rebased(ocase *c) { return c_poly(c, 0, 0, 1, 5); }
static int c_based(ocase *c) { return c_poly(c, 1, 1, 0.5, 10); }
/* several key tiles and register-blocked slabs, a partial last tile */
static int c_rebased_long(ocase *c) { return c_poly_t(c, 0, 0, 1, 5, 200); }
static int c_based_long(ocase *c) { return c_poly_t(c, 1, 1, 0.5, 10, 150); }
/* The chunked form (poly_attention_chunked.cu, chunks of 64), forced by
 * ZOO_POLY_FORM=chunked: T = 100 and 200 end in a partial chunk, 200 carries
 * the state across three chunk boundaries; value widths 5 and 42 leave spare
 * columns in the last part (WQ 2 and 11 of 4 parts). */
static int c_poly_shape(ocase *c, double c0, double c1, double c2, int64_t B, int64_t H, int64_t T, int64_t dv) {
  int64_t qd[4] = {B, H, T, 16}, vd[4] = {B, H, T, dv};
  int q = oc_f32(c, V_SIGNED, 4, qd), k = oc_f32(c, V_SIGNED, 4, qd), v = oc_f32(c, V_SIGNED, 4, vd);
  zoo_attrs a = A0();
  a.f[0] = c0, a.f[1] = c1, a.f[2] = c2, a.f[3] = 0.25, a.f[4] = 1e-12;
  int in[3] = {q, k, v};
  return oc_op(c, ZOO_OP_POLY_ATTENTION, 3, in, &a);
}
/* The heads interleaved (poly_attention's layout 1, ops.def): q, k [B, T, H*16],
 * v [B, T, H*dv], a pair's rows H 16 (H dv) floats apart; or (layout 2) q and
 * k alone, v [B, H, T, dv]; either form. */
static int c_poly_layout(ocase *c, int layout, double c0, double c1, double c2, int64_t B, int64_t H, int64_t T,
                         int64_t dv) {
  int64_t qd[3] = {B, T, H * 16}, vd1[3] = {B, T, H * dv}, vd2[4] = {B, H, T, dv};
  int q = oc_f32(c, V_SIGNED, 3, qd), k = oc_f32(c, V_SIGNED, 3, qd);
  int v = layout == 1 ? oc_f32(c, V_SIGNED, 3, vd1) : oc_f32(c, V_SIGNED, 4, vd2);
  zoo_attrs a = A0();
  a.f[0] = c0, a.f[1] = c1, a.f[2] = c2, a.f[3] = 0.25, a.f[4] = 1e-12;
  a.i[0] = layout, a.i[1] = H;
  int in[3] = {q, k, v};
  return oc_op(c, ZOO_OP_POLY_ATTENTION, 3, in, &a);
}
static int c_poly_heads(ocase *c, double c0, double c1, double c2, int64_t B, int64_t H, int64_t T, int64_t dv) {
  return c_poly_layout(c, 1, c0, c1, c2, B, H, T, dv);
}
static int c_poly_qk(ocase *c, double c0, double c1, double c2, int64_t B, int64_t H, int64_t T, int64_t dv) {
  return c_poly_layout(c, 2, c0, c1, c2, B, H, T, dv);
}
/* The backward given (do, q, k, v) alone, recomputing o and z (autodiff gives
 * it the forward's o and z as well), in each layout. */
static int c_poly_recompute(ocase *c, int layout) {
  int64_t T = 150, H = 3, dv = 10;
  int64_t qd0[4] = {2, H, T, 16}, vd0[4] = {2, H, T, dv}, qd1[3] = {2, T, H * 16}, vd1[3] = {2, T, H * dv};
  int nq = layout ? 3 : 4, nv = layout == 1 ? 3 : 4;
  const int64_t *qd = layout ? qd1 : qd0, *vd = layout == 1 ? vd1 : vd0;
  int q = oc_f32(c, V_SIGNED, nq, qd), k = oc_f32(c, V_SIGNED, nq, qd), v = oc_f32(c, V_SIGNED, nv, vd);
  int d = oc_f32(c, V_SIGNED, nv, vd);
  zoo_attrs a = A0();
  a.f[0] = 1, a.f[1] = 1, a.f[2] = 0.5, a.f[3] = 0.25, a.f[4] = 1e-12;
  a.i[0] = layout, a.i[1] = layout ? H : 0;
  int in[4] = {d, q, k, v};
  return oc_op(c, ZOO_OP_POLY_ATTENTION_BWD, 4, in, &a);
}
static int c_poly_recompute0(ocase *c) { return c_poly_recompute(c, 0); }
static int c_poly_recompute1(ocase *c) { return c_poly_recompute(c, 1); }
static int c_poly_recompute2(ocase *c) { return c_poly_recompute(c, 2); }
static int c_based_long_qk(ocase *c) { return c_poly_qk(c, 1, 1, 0.5, 2, 3, 150, 5); }
static int c_rebased_qk(ocase *c) { return c_poly_qk(c, 0, 0, 1, 2, 3, 9, 10); }
static int c_rebased_heads(ocase *c) { return c_poly_heads(c, 0, 0, 1, 2, 3, 9, 5); }
static int c_rebased_long_heads(ocase *c) { return c_poly_heads(c, 0, 0, 1, 2, 3, 200, 5); }
static int c_based_long_heads(ocase *c) { return c_poly_heads(c, 1, 1, 0.5, 1, 3, 150, 10); }
static int c_chunked_rebased_5(ocase *c) { return c_poly_shape(c, 0, 0, 1, 1, 2, 100, 5); }
static int c_chunked_rebased_42(ocase *c) { return c_poly_shape(c, 0, 0, 1, 2, 1, 200, 42); }
static int c_chunked_based_5(ocase *c) { return c_poly_shape(c, 1, 1, 0.5, 2, 1, 200, 5); }
static int c_chunked_based_42(ocase *c) { return c_poly_shape(c, 1, 1, 0.5, 1, 2, 100, 42); }
static int c_chunked_short(ocase *c) { return c_poly_shape(c, 1, 1, 0.5, 1, 1, 9, 10); } /* one partial chunk */
static int c_chunked_rebased_5_heads(ocase *c) { return c_poly_heads(c, 0, 0, 1, 2, 2, 200, 5); }
static int c_chunked_based_42_heads(ocase *c) { return c_poly_heads(c, 1, 1, 0.5, 1, 3, 100, 42); }
static int c_chunked_based_5_qk(ocase *c) { return c_poly_qk(c, 1, 1, 0.5, 2, 2, 200, 5); }
/* the realistic shapes (GPU only): B 2, H 12, T 2048, DV 42 and 5. Tolerance
 * 1e-3, the other poly cases': with random q, k a few rows have a_ii near 0
 * and d_i + eps tiny, where the backward's fp32 error grows (emulated, both
 * the quadratic form stays within 1e-4 of the largest |dq|, |dk|, the chunked
 * within 1.4e-4, both off at such a row) */
static int c_chunked_rebased_2048(ocase *c) { return c_poly_shape(c, 0, 0, 1, 2, 12, 2048, 42); }
static int c_chunked_based_2048(ocase *c) { return c_poly_shape(c, 1, 1, 0.5, 2, 12, 2048, 5); }
static int c_chunked_rebased_2048_heads(ocase *c) { return c_poly_heads(c, 0, 0, 1, 2, 12, 2048, 42); }

static const named_case poly_chunked_cases[] = {
      {"poly_chunked_rebased_dv5", c_chunked_rebased_5, 1e-4, 1},
      {"poly_chunked_rebased_dv42", c_chunked_rebased_42, 1e-4, 1},
      {"poly_chunked_based_dv5", c_chunked_based_5, 1e-4, 1},
      {"poly_chunked_based_dv42", c_chunked_based_42, 1e-4, 1},
      {"poly_chunked_short", c_chunked_short, 1e-4, 1},
      {"poly_chunked_rebased_dv5_heads", c_chunked_rebased_5_heads, 1e-4, 1},
      {"poly_chunked_based_dv42_heads", c_chunked_based_42_heads, 1e-4, 1},
      {"poly_chunked_based_dv5_qk", c_chunked_based_5_qk, 1e-4, 1},
};
static const named_case poly_chunked_long_cases[] = {
      {"poly_chunked_rebased_2048", c_chunked_rebased_2048, 1e-3, 1},
      {"poly_chunked_based_2048", c_chunked_based_2048, 1e-3, 1},
      {"poly_chunked_rebased_2048_heads", c_chunked_rebased_2048_heads, 1e-3, 1},
};

/* Runs cases with ZOO_POLY_FORM=form, restoring the variable after. */
static int run_cases_form(zoo_test_ctx *t, const named_case *cases, int n, int emu, const char *form) {
  char *saved = zoo_test_env_set("ZOO_POLY_FORM", form);
  int failed = run_cases(t, cases, n, emu);
  zoo_test_env_restore("ZOO_POLY_FORM", saved);
  return failed;
}

static int c_softmax_attention_t(ocase *c, double p, int64_t T, int64_t d, int causal) {
  int q = oc_f32(c, V_SIGNED, DIMS(2, 1, T, d)), k = oc_f32(c, V_SIGNED, DIMS(2, 1, T, d)), v = oc_f32(c, V_SIGNED, DIMS(2, 1, T, d));
  zoo_attrs a = A0();
  a.f[0] = 1.0 / sqrt((double)d), a.f[1] = p;
  a.i[0] = 3, a.i[1] = causal;
  int in[3] = {q, k, v};
  return oc_op(c, ZOO_OP_SOFTMAX_ATTENTION, 3, in, &a);
}
static int c_sa(ocase *c) { return c_softmax_attention_t(c, 0, 9, 8, 1); }
static int c_sa_dropout(ocase *c) { return c_softmax_attention_t(c, 0.1, 9, 8, 1); }
/* not causal, width 10 (one partial column group; rows not a multiple of 4:
 * the scalar loads and products), two partial tiles */
static int c_sa_full(ocase *c) { return c_softmax_attention_t(c, 0.1, 70, 10, 0); }
/* width 64 (the conv_attention cell's tiles): several query and key tiles, the
 * last ones partial */
static int c_sa_wide(ocase *c) { return c_softmax_attention_t(c, 0.1, 150, 64, 1); }
/* The backward given (do, q, k, v) alone, recomputing the softmax's statistics
 * (autodiff gives it the forward's o and lse as well, as the cases above run
 * it); dropout, two partial query tiles. */
/* The packed form: qkv [B, T, 3*H*d], the output merged [B, T, H*d]; H heads,
 * dropout, the backward given the forward's o and lse by autodiff, or not. */
static int c_sa_packed_t(ocase *c, int64_t T, int64_t H, int64_t d, int bwd) {
  int x = oc_f32(c, V_SIGNED, DIMS(2, T, 3 * H * d));
  zoo_attrs a = A0();
  a.f[0] = 1.0 / sqrt((double)d), a.f[1] = 0.1;
  a.i[0] = 3, a.i[1] = 1, a.i[2] = H;
  if (!bwd) return oc_op(c, ZOO_OP_SOFTMAX_ATTENTION_PACKED, 1, &x, &a);
  int in[2] = {oc_f32(c, V_SIGNED, DIMS(2, T, H * d)), x};
  return oc_op(c, ZOO_OP_SOFTMAX_ATTENTION_PACKED_BWD, 2, in, &a);
}
static int c_sa_packed_heads(ocase *c) { return c_sa_packed_t(c, 70, 3, 8, 0); }
static int c_sa_packed_wide(ocase *c) { return c_sa_packed_t(c, 80, 1, 64, 0); } /* conv_attention's width */
static int c_sa_packed_recompute(ocase *c) { return c_sa_packed_t(c, 70, 2, 10, 1); }
static int c_sa_recompute(ocase *c) {
  int64_t T = 70, d = 16;
  int q = oc_f32(c, V_SIGNED, DIMS(2, 1, T, d)), k = oc_f32(c, V_SIGNED, DIMS(2, 1, T, d));
  int v = oc_f32(c, V_SIGNED, DIMS(2, 1, T, d)), dy = oc_f32(c, V_SIGNED, DIMS(2, 1, T, d));
  zoo_attrs a = A0();
  a.f[0] = 0.25, a.f[1] = 0.1;
  a.i[0] = 3, a.i[1] = 1;
  int in[4] = {dy, q, k, v};
  return oc_op(c, ZOO_OP_SOFTMAX_ATTENTION_BWD, 4, in, &a);
}
static int c_lce(ocase *c) {
  int h = oc_f32(c, V_SIGNED, DIMS(3, 7, 16)), w = oc_f32(c, V_SIGNED, DIMS(50, 16));
  int tg = oc_i32(c, V_TARGETS, 0, 50, DIMS(3, 7));
  zoo_attrs a = A0();
  a.i[0] = -100;
  int in[3] = {h, w, tg};
  return oc_op(c, ZOO_OP_LINEAR_CROSS_ENTROPY, 3, in, &a);
}
/* the compacted head's step at small D: M rows (not a multiple of the block's
 * rows), D down to 4 and not a power of 2, V of one and two column tiles */
static int c_lce_step_t(ocase *c, int64_t M, int64_t D, int64_t V, vkind tk) {
  int h = oc_f32(c, V_SIGNED, DIMS(M, D)), w = oc_f32(c, V_SIGNED, DIMS(V, D));
  int tg = oc_i32(c, tk, 0, (int)V, DIMS(M)), dl = oc_f32(c, V_POSITIVE, 0, NULL);
  zoo_attrs a = A0();
  a.i[0] = -100;
  int in[4] = {h, w, tg, dl};
  return oc_op(c, ZOO_OP_LINEAR_CROSS_ENTROPY_STEP, 4, in, &a);
}
static int c_lce_step(ocase *c) { return c_lce_step_t(c, 70, 32, 256, V_TARGETS); }
static int c_lce_step_d8(ocase *c) { return c_lce_step_t(c, 70, 8, 256, V_TARGETS); }
static int c_lce_step_d4(ocase *c) { return c_lce_step_t(c, 37, 4, 128, V_TARGETS); }
static int c_lce_step_d20(ocase *c) { return c_lce_step_t(c, 70, 20, 256, V_LABELLED_FIRST); }
static int c_lce_step_d64(ocase *c) { return c_lce_step_t(c, 50, 64, 128, V_LABELLED_FIRST); }
/* three row tiles of 128, the last unlabelled, and four vocabulary tiles */
static int c_lce_step_tiles(ocase *c) { return c_lce_step_t(c, 300, 32, 512, V_LABELLED_FIRST); }
/* hits: every row's argmax is HOT + 7 (third vocabulary tile, inside a
 * thread's columns), the targets HOT .. HOT + 7 */
static int c_lce_step_hits(ocase *c) {
  int h = oc_f32(c, V_POSITIVE, DIMS(200, 32)), w = oc_f32(c, V_HOT_ROWS, DIMS(512, 32));
  int tg = oc_i32(c, V_TARGETS, HOT, HOT + 8, DIMS(200)), dl = oc_f32(c, V_POSITIVE, 0, NULL);
  zoo_attrs a = A0();
  a.i[0] = -100;
  int in[4] = {h, w, tg, dl};
  return oc_op(c, ZOO_OP_LINEAR_CROSS_ENTROPY_STEP, 4, in, &a);
}

static int c_wkv4_t(ocase *c, int64_t T, int bf16) {
  int w = oc_f32(c, V_SIGNED, DIMS(6)), u = oc_f32(c, V_SIGNED, DIMS(6));
  int64_t kd[3] = {3, T, 6};
  int k = oc_f32(c, V_SIGNED, 3, kd), v = oc_f32(c, V_SIGNED, 3, kd);
  zoo_attrs a = A0();
  a.i[0] = bf16;
  int in[4] = {w, u, k, v};
  return oc_op(c, ZOO_OP_WKV4, 4, in, &a);
}
static int c_wkv4(ocase *c) { return c_wkv4_t(c, 9, 0); }
static int c_wkv4_long(ocase *c) { return c_wkv4_t(c, 300, 0); }
static int c_wkv4_bf16(ocase *c) { return c_wkv4_t(c, 9, 1); }

/* the compacted head's rows: label_rows, then gather_rows (its gradient is
 * scatter_rows); 7 rows per sequence of 7 so no batch overflows */
static int c_rows(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(3, 7, 16));
  int tg = oc_i32(c, V_TARGETS, 0, 50, DIMS(3, 7));
  zoo_attrs a = A0();
  a.i[0] = -100, a.i[1] = 7;
  int idx = oc_op(c, ZOO_OP_LABEL_ROWS, 1, &tg, &a);
  if (idx < 0) return -1;
  int in[3] = {x, idx, idx + 1};
  return oc_op(c, ZOO_OP_GATHER_ROWS, 3, in, NULL);
}

static const named_case intrinsics_cases[] = {
      {"embedding", c_embedding, 1e-4, 1},
      {"embedding_hot_ids", c_embedding_hot, 1e-4, 1},
      {"embedding_many_ids", c_embedding_wide, 1e-4, 1},
      {"embedding_mqar", c_embedding_mqar, 1e-4, 1},
      {"arange", c_arange, 0, 0},
      {"cumsum", c_cumsum, 1e-4, 1},
      {"causal_conv1d", c_conv, 1e-4, 1},
      {"causal_conv1d_many_rows", c_conv_many, 1e-4, 1},
      {"poly_attention_rebased", c_rebased, 1e-3, 1},
      {"poly_attention_based", c_based, 1e-3, 1},
      {"poly_attention_rebased_long", c_rebased_long, 1e-3, 1},
      {"poly_attention_based_long", c_based_long, 1e-3, 1},
      {"poly_attention_rebased_heads", c_rebased_heads, 1e-3, 1},
      {"poly_attention_rebased_long_heads", c_rebased_long_heads, 1e-3, 1},
      {"poly_attention_based_long_heads", c_based_long_heads, 1e-3, 1},
      {"poly_attention_bwd_recompute", c_poly_recompute0, 1e-3, 0},
      {"poly_attention_bwd_recompute_heads", c_poly_recompute1, 1e-3, 0},
      {"poly_attention_based_long_qk", c_based_long_qk, 1e-3, 1},
      {"poly_attention_rebased_qk", c_rebased_qk, 1e-3, 1},
      {"poly_attention_bwd_recompute_qk", c_poly_recompute2, 1e-3, 0},
      {"softmax_attention", c_sa, 1e-3, 1},
      {"softmax_attention_dropout", c_sa_dropout, 1e-3, 1},
      {"softmax_attention_wide", c_sa_wide, 1e-3, 1},
      {"softmax_attention_full", c_sa_full, 1e-3, 1},
      {"softmax_attention_bwd_recompute", c_sa_recompute, 1e-3, 0},
      {"softmax_attention_packed_heads", c_sa_packed_heads, 1e-3, 1},
      {"softmax_attention_packed_wide", c_sa_packed_wide, 1e-3, 1},
      {"softmax_attention_packed_bwd_recompute", c_sa_packed_recompute, 1e-3, 0},
      {"linear_cross_entropy", c_lce, 1e-3, 1},
      {"linear_cross_entropy_step", c_lce_step, 1e-4, 0},
      {"linear_cross_entropy_step_d8", c_lce_step_d8, 1e-4, 0},
      {"linear_cross_entropy_step_d4", c_lce_step_d4, 1e-4, 0},
      {"linear_cross_entropy_step_d20", c_lce_step_d20, 1e-4, 0},
      {"linear_cross_entropy_step_d64", c_lce_step_d64, 1e-4, 0},
      {"label_gather_scatter_rows", c_rows, 0, 1},
      {"wkv4", c_wkv4, 1e-4, 1},
      {"wkv4_long", c_wkv4_long, 1e-3, 1},
      {"wkv4_bf16", c_wkv4_bf16, 1e-2, 1}, /* one bf16 step of fp32 vs double rounding */
};

TEST(gpu_ops_intrinsics) {
  int mode = MODE_GPU;
  GPU_MODE_OR_SKIP(mode);
  int failed = run_cases(t, intrinsics_cases, (int)(sizeof intrinsics_cases / sizeof *intrinsics_cases), mode);
  CHECKF(failed == 0, "%d gather/scan/intrinsic case(s) differ", failed);
  if (mode == MODE_PRECOMPILE) SKIP("precompiled for sm_90 only");
}

TEST(emu_ops_intrinsics) {
  EMU_OR_SKIP();
  int failed = run_cases(t, intrinsics_cases, (int)(sizeof intrinsics_cases / sizeof *intrinsics_cases), 1);
  CHECKF(failed == 0, "%d gather/scan/intrinsic case(s) differ (emulated)", failed);
}

/* linear_cross_entropy_step in both forms: the fp32 rows form at each block
 * height it has (ZOO_LCE_STEP_ROWS: 1 to 4 rows of the register tiles per
 * thread), and the tensor-core form (ZOO_LCE_STEP_FORM=tc) within TF32's
 * tolerance, its blocks taking one tile of the vocabulary, all of them or
 * uneven shares (ZOO_LCE_STEP_GROUPS); blocks past M and blocks with no
 * labelled row. */
static const named_case lce_step_cases[] = {
      {"linear_cross_entropy_step", c_lce_step, 1e-4, 0},
      {"linear_cross_entropy_step_d20", c_lce_step_d20, 1e-4, 0},
      {"linear_cross_entropy_step_d4", c_lce_step_d4, 1e-4, 0},
      {"linear_cross_entropy_step_hits", c_lce_step_hits, 1e-4, 0},
};
static const named_case lce_step_tc_cases[] = {
      {"linear_cross_entropy_step_tc", c_lce_step, 1e-3, 0},
      {"linear_cross_entropy_step_tc_d20", c_lce_step_d20, 1e-3, 0},
      {"linear_cross_entropy_step_tc_d4", c_lce_step_d4, 1e-3, 0},
      {"linear_cross_entropy_step_tc_tiles", c_lce_step_tiles, 1e-3, 0},
      {"linear_cross_entropy_step_tc_hits", c_lce_step_hits, 1e-3, 0},
};

static int lce_step_rows(zoo_test_ctx *t, int mode) {
  char *saved[3] = {zoo_test_env_set("ZOO_LCE_STEP_ROWS", NULL), zoo_test_env_set("ZOO_LCE_STEP_FORM", "rows"),
                    zoo_test_env_set("ZOO_LCE_STEP_GROUPS", NULL)};
  const char *rows[4] = {"16", "32", "48", "64"};
  int failed = 0;
  for (int k = 0; k < 4; k++) {
    setenv("ZOO_LCE_STEP_ROWS", rows[k], 1);
    int f = run_cases(t, lce_step_cases, (int)(sizeof lce_step_cases / sizeof *lce_step_cases), mode);
    if (f) fprintf(stderr, "  %d case(s) differ with %s rows per block\n", f, rows[k]);
    failed += f;
  }
  setenv("ZOO_LCE_STEP_FORM", "tc", 1);
  const char *groups[3] = {NULL, "1", "3"}; /* the emitter's (a tile a block here), all tiles, uneven shares */
  for (int k = 0; k < 3; k++) {
    if (groups[k]) setenv("ZOO_LCE_STEP_GROUPS", groups[k], 1);
    else unsetenv("ZOO_LCE_STEP_GROUPS");
    int f = run_cases(t, lce_step_tc_cases, (int)(sizeof lce_step_tc_cases / sizeof *lce_step_tc_cases), mode);
    if (f) fprintf(stderr, "  %d case(s) differ in the tensor-core form (groups %s)\n", f, groups[k] ? groups[k] : "-");
    failed += f;
  }
  zoo_test_env_restore("ZOO_LCE_STEP_ROWS", saved[0]);
  zoo_test_env_restore("ZOO_LCE_STEP_FORM", saved[1]);
  zoo_test_env_restore("ZOO_LCE_STEP_GROUPS", saved[2]);
  return failed;
}

TEST(gpu_ops_lce_step_rows) {
  int mode = MODE_GPU;
  GPU_MODE_OR_SKIP(mode);
  int failed = lce_step_rows(t, mode);
  CHECKF(failed == 0, "%d linear_cross_entropy_step case(s) differ", failed);
  if (mode == MODE_PRECOMPILE) SKIP("precompiled for sm_90 only");
}

TEST(emu_ops_lce_step_rows) {
  EMU_OR_SKIP();
  int failed = lce_step_rows(t, 1);
  CHECKF(failed == 0, "%d linear_cross_entropy_step case(s) differ (emulated)", failed);
}

/* poly_attention's chunked form against the CPU, forward and backward: the
 * small cases emulated, those and the realistic shapes on a GPU, where the
 * quadratic form runs the long shapes too. */
TEST(gpu_ops_poly_chunked) {
  int mode = MODE_GPU;
  GPU_MODE_OR_SKIP(mode);
  int n = (int)(sizeof poly_chunked_cases / sizeof *poly_chunked_cases);
  int nl = (int)(sizeof poly_chunked_long_cases / sizeof *poly_chunked_long_cases);
  int failed = run_cases_form(t, poly_chunked_cases, n, mode, "chunked");
  failed += run_cases_form(t, poly_chunked_long_cases, nl, mode, "chunked");
  failed += run_cases_form(t, poly_chunked_long_cases, nl, mode, "quadratic");
  CHECKF(failed == 0, "%d poly_attention chunked case(s) differ", failed);
  if (mode == MODE_PRECOMPILE) SKIP("precompiled for sm_90 only");
}

TEST(emu_ops_poly_chunked) {
  EMU_OR_SKIP();
  int n = (int)(sizeof poly_chunked_cases / sizeof *poly_chunked_cases);
  int failed = run_cases_form(t, poly_chunked_cases, n, 1, "chunked");
  CHECKF(failed == 0, "%d poly_attention chunked case(s) differ (emulated)", failed);
}

/* poly_attention's tiled quadratic form (poly_attention_tiled.cu), the
 * choice forced both ways by ZOO_POLY_TILED: value widths 5 (one column a
 * thread), 10, 21 (3 columns a thread, odd) and 42 (6, padded to 48); T 200
 * and 150 end in a partial tile, 64 is one whole tile; both layouts. */
static int c_tiled_rebased_42(ocase *c) { return c_poly_shape(c, 0, 0, 1, 2, 1, 200, 42); }
static int c_tiled_based_21(ocase *c) { return c_poly_shape(c, 1, 1, 0.5, 1, 2, 150, 21); }
static int c_tiled_rebased_10_one(ocase *c) { return c_poly_shape(c, 0, 0, 1, 2, 2, 64, 10); }
static int c_tiled_based_5(ocase *c) { return c_poly_shape(c, 1, 1, 0.5, 1, 2, 130, 5); }
static int c_tiled_rebased_42_heads(ocase *c) { return c_poly_heads(c, 0, 0, 1, 1, 3, 200, 42); }
static int c_tiled_based_10_heads(ocase *c) { return c_poly_heads(c, 1, 1, 0.5, 2, 2, 150, 10); }
static int c_tiled_based_5_qk(ocase *c) { return c_poly_qk(c, 1, 1, 0.5, 2, 2, 150, 5); }

static const named_case poly_tiled_cases[] = {
      {"poly_tiled_rebased_dv42", c_tiled_rebased_42, 1e-3, 1},
      {"poly_tiled_based_dv21", c_tiled_based_21, 1e-3, 1},
      {"poly_tiled_rebased_dv10_one_tile", c_tiled_rebased_10_one, 1e-3, 1},
      {"poly_tiled_based_dv5", c_tiled_based_5, 1e-3, 1},
      {"poly_tiled_rebased_dv42_heads", c_tiled_rebased_42_heads, 1e-3, 1},
      {"poly_tiled_based_dv10_heads", c_tiled_based_10_heads, 1e-3, 1},
      {"poly_tiled_based_dv5_qk", c_tiled_based_5_qk, 1e-3, 1},
};

/* The cases with ZOO_POLY_TILED=1 and =0 (the one-row-a-thread kernels). */
static int poly_tiled_both(zoo_test_ctx *t, int mode) {
  int n = (int)(sizeof poly_tiled_cases / sizeof *poly_tiled_cases), failed = 0;
  char *saved = zoo_test_env_set("ZOO_POLY_TILED", "1");
  failed += run_cases_form(t, poly_tiled_cases, n, mode, "quadratic");
  setenv("ZOO_POLY_TILED", "0", 1);
  failed += run_cases_form(t, poly_tiled_cases, n, mode, "quadratic");
  zoo_test_env_restore("ZOO_POLY_TILED", saved);
  return failed;
}

TEST(gpu_ops_poly_tiled) {
  int mode = MODE_GPU;
  GPU_MODE_OR_SKIP(mode);
  int failed = poly_tiled_both(t, mode);
  CHECKF(failed == 0, "%d poly_attention tiled case(s) differ", failed);
  if (mode == MODE_PRECOMPILE) SKIP("precompiled for sm_90 only");
}

TEST(emu_ops_poly_tiled) {
  EMU_OR_SKIP();
  int failed = poly_tiled_both(t, 1);
  CHECKF(failed == 0, "%d poly_attention tiled case(s) differ (emulated)", failed);
}

/* Sequences within one tile (T <= 32 or 64), one row a thread (no tiles, no
 * tensor cores): ReBased's 32 / 48 cell (DV 2) in each layout, a whole tile of
 * 64 and one of 32, a partial second warp (T 33). */
static int c_short_rebased_48(ocase *c) { return c_poly_t(c, 0, 0, 1, 2, 48); }
static int c_short_rebased_48_heads(ocase *c) { return c_poly_heads(c, 0, 0, 1, 2, 3, 48, 2); }
static int c_short_based_64_qk(ocase *c) { return c_poly_qk(c, 1, 1, 0.5, 2, 3, 64, 5); }
static int c_short_based_32(ocase *c) { return c_poly_t(c, 1, 1, 0.5, 10, 32); }
static int c_short_rebased_33_heads(ocase *c) { return c_poly_heads(c, 0, 0, 1, 2, 2, 33, 10); }
static const named_case poly_short_cases[] = {
      {"poly_short_rebased_48", c_short_rebased_48, 1e-3, 1},
      {"poly_short_rebased_48_heads", c_short_rebased_48_heads, 1e-3, 1},
      {"poly_short_based_64_qk", c_short_based_64_qk, 1e-3, 1},
      {"poly_short_based_32", c_short_based_32, 1e-3, 1},
      {"poly_short_rebased_33_heads", c_short_rebased_33_heads, 1e-3, 1},
};

static int poly_short_rows(zoo_test_ctx *t, int mode) {
  int n = (int)(sizeof poly_short_cases / sizeof *poly_short_cases);
  char *saved[2] = {zoo_test_env_set("ZOO_POLY_TILED", "0"), zoo_test_env_set("ZOO_POLY_MMA", "0")};
  int failed = run_cases_form(t, poly_short_cases, n, mode, "quadratic");
  zoo_test_env_restore("ZOO_POLY_TILED", saved[0]);
  zoo_test_env_restore("ZOO_POLY_MMA", saved[1]);
  return failed;
}

TEST(gpu_ops_poly_short) {
  int mode = MODE_GPU;
  GPU_MODE_OR_SKIP(mode);
  int failed = poly_short_rows(t, mode);
  CHECKF(failed == 0, "%d short poly_attention case(s) differ", failed);
  if (mode == MODE_PRECOMPILE) SKIP("precompiled for sm_90 only");
}

TEST(emu_ops_poly_short) {
  EMU_OR_SKIP();
  int failed = poly_short_rows(t, 1);
  CHECKF(failed == 0, "%d short poly_attention case(s) differ (emulated)", failed);
}

/* poly_attention on the tensor cores (poly_attention_mma.cu), forced by
 * ZOO_POLY_MMA: three TF32 products a product (3) within the fp32 cases'
 * tolerance, one (1, precision tf32 and bf16) within TF32's. The shapes of the
 * tiles' cases, and T 48 (one partial tile) at DV 2. */
static int c_mma_short(ocase *c) { return c_poly_heads(c, 0, 0, 1, 2, 3, 48, 2); }
static const named_case poly_mma_cases[] = {
      {"poly_mma_rebased_dv42", c_tiled_rebased_42, 1e-3, 1},
      {"poly_mma_based_dv21", c_tiled_based_21, 1e-3, 1},
      {"poly_mma_rebased_dv10_one_tile", c_tiled_rebased_10_one, 1e-3, 1},
      {"poly_mma_based_dv5", c_tiled_based_5, 1e-3, 1},
      {"poly_mma_rebased_dv42_heads", c_tiled_rebased_42_heads, 1e-3, 1},
      {"poly_mma_based_dv10_heads", c_tiled_based_10_heads, 1e-3, 1},
      {"poly_mma_rebased_dv2_short_heads", c_mma_short, 1e-3, 1},
      {"poly_mma_based_dv5_qk", c_tiled_based_5_qk, 1e-3, 1},
};
static const named_case poly_mma_tf32_cases[] = {
      {"poly_mma_tf32_rebased_dv42", c_tiled_rebased_42, 2e-2, 1},
      {"poly_mma_tf32_based_dv21", c_tiled_based_21, 2e-2, 1},
      {"poly_mma_tf32_based_dv10_heads", c_tiled_based_10_heads, 2e-2, 1},
      {"poly_mma_tf32_rebased_dv2_short_heads", c_mma_short, 2e-2, 1},
      {"poly_mma_tf32_based_dv5_qk", c_tiled_based_5_qk, 2e-2, 1},
};

/* Emulated: smaller shapes (each product is a barrier of the warp's threads). */
static int c_mma_emu_42(ocase *c) { return c_poly_shape(c, 0, 0, 1, 1, 1, 130, 42); }
static int c_mma_emu_10_heads(ocase *c) { return c_poly_heads(c, 1, 1, 0.5, 1, 2, 70, 10); }
static int c_mma_emu_short(ocase *c) { return c_poly_heads(c, 0, 0, 1, 1, 2, 48, 2); }
static int c_mma_emu_21(ocase *c) { return c_poly_shape(c, 1, 1, 0.5, 1, 1, 70, 21); }
static int c_mma_emu_5_qk(ocase *c) { return c_poly_qk(c, 1, 1, 0.5, 1, 2, 70, 5); }
static const named_case poly_mma_emu_cases[] = {
      {"poly_mma_rebased_dv42", c_mma_emu_42, 1e-3, 1},
      {"poly_mma_based_dv10_heads", c_mma_emu_10_heads, 1e-3, 1},
      {"poly_mma_rebased_dv2_short_heads", c_mma_emu_short, 1e-3, 1},
      {"poly_mma_based_dv5_qk", c_mma_emu_5_qk, 1e-3, 1},
};
static const named_case poly_mma_emu_tf32_cases[] = {
      {"poly_mma_tf32_based_dv21", c_mma_emu_21, 2e-2, 1},
      {"poly_mma_tf32_based_dv10_heads", c_mma_emu_10_heads, 2e-2, 1},
      {"poly_mma_tf32_based_dv5_qk", c_mma_emu_5_qk, 2e-2, 1},
};

#define NCASES(a) (int)(sizeof a / sizeof *a)
static int poly_mma_both(zoo_test_ctx *t, int mode) {
  int emu = mode == MODE_EMU, failed = 0;
  char *saved = zoo_test_env_set("ZOO_POLY_MMA", "3");
  failed += emu ? run_cases_form(t, poly_mma_emu_cases, NCASES(poly_mma_emu_cases), mode, "quadratic")
                : run_cases_form(t, poly_mma_cases, NCASES(poly_mma_cases), mode, "quadratic");
  setenv("ZOO_POLY_MMA", "1", 1);
  failed += emu ? run_cases_form(t, poly_mma_emu_tf32_cases, NCASES(poly_mma_emu_tf32_cases), mode, "quadratic")
                : run_cases_form(t, poly_mma_tf32_cases, NCASES(poly_mma_tf32_cases), mode, "quadratic");
  zoo_test_env_restore("ZOO_POLY_MMA", saved);
  return failed;
}

TEST(gpu_ops_poly_mma) {
  int mode = MODE_GPU;
  GPU_MODE_OR_SKIP(mode);
  int failed = poly_mma_both(t, mode);
  CHECKF(failed == 0, "%d poly_attention tensor-core case(s) differ", failed);
  if (mode == MODE_PRECOMPILE) SKIP("precompiled for sm_90 only");
}

TEST(emu_ops_poly_mma) {
  EMU_OR_SKIP();
  int failed = poly_mma_both(t, 1);
  CHECKF(failed == 0, "%d poly_attention tensor-core case(s) differ (emulated)", failed);
}

/* ---- the fusion pass's rewrites (compiler/fuse.h): kernels made of several ops */

/* BaseConv with the pre-norm block around it: y = layernorm(conv(u) * p + u + r),
 * one kernel (the conv inline, the rest the layernorm's prologue), which also
 * stores the conv (its gradient needs it) and the residual sum. */
static int c_fused_baseconv(ocase *c) {
  int u = oc_f32(c, V_SIGNED, DIMS(3, 9, 40)), p = oc_f32(c, V_SIGNED, DIMS(3, 9, 40));
  int r = oc_f32(c, V_SIGNED, DIMS(3, 9, 40));
  int w = oc_f32(c, V_SIGNED, DIMS(40, 1, 3)), b = oc_f32(c, V_SIGNED, DIMS(40));
  int lw = oc_f32(c, V_SIGNED, DIMS(40)), lb = oc_f32(c, V_SIGNED, DIMS(40));
  int conv = oc_op(c, ZOO_OP_CAUSAL_CONV1D, 3, (int[]){u, w, b}, NULL);
  int m = oc_op(c, ZOO_OP_MUL, 2, (int[]){conv, p}, NULL);
  int a = oc_op(c, ZOO_OP_ADD, 2, (int[]){m, u}, NULL);
  int s = oc_op(c, ZOO_OP_ADD, 2, (int[]){a, r}, NULL);
  zoo_attrs la = A0();
  la.f[0] = 1e-5;
  return oc_op(c, ZOO_OP_LAYERNORM, 3, (int[]){s, lw, lb}, &la);
}
/* The embeddings' add (a broadcast position table) and dropout as the prologue
 * of a layernorm without affine: the seed reaches the row kernel. */
static int c_fused_dropout_layernorm(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(4, 11, 72)), pos = oc_f32(c, V_SIGNED, DIMS(11, 72));
  int s = oc_op(c, ZOO_OP_ADD, 2, (int[]){x, pos}, NULL);
  zoo_attrs da = A0();
  da.f[0] = 0.2;
  da.i[0] = 3;
  int d = oc_op(c, ZOO_OP_DROPOUT, 1, &s, &da);
  zoo_attrs la = A0();
  la.f[0] = 1e-5;
  return oc_op(c, ZOO_OP_LAYERNORM, 1, &d, &la);
}
/* A prologue (an add) into a layernorm whose output is split into heads. */
static int c_fused_add_layernorm_heads(ocase *c) {
  int x = oc_f32(c, V_SIGNED, DIMS(2, 9, 48)), r = oc_f32(c, V_SIGNED, DIMS(2, 9, 48));
  int s = oc_op(c, ZOO_OP_ADD, 2, (int[]){x, r}, NULL);
  zoo_attrs la = A0();
  la.f[0] = 1e-5;
  la.i[0] = 3;
  return oc_op(c, ZOO_OP_LAYERNORM, 1, &s, &la);
}
/* The conv inline in a plain elementwise kernel (no layernorm). */
static int c_fused_conv_gate(ocase *c) {
  int u = oc_f32(c, V_SIGNED, DIMS(2, 17, 8)), w = oc_f32(c, V_SIGNED, DIMS(8, 1, 4));
  int conv = oc_op(c, ZOO_OP_CAUSAL_CONV1D, 2, (int[]){u, w}, NULL);
  int g = oc_op(c, ZOO_OP_SIGMOID, 1, &conv, NULL);
  return oc_op(c, ZOO_OP_MUL, 2, (int[]){g, u}, NULL);
}

/* layernorm_bwd's fused forms (it is a backward op; here the case's own
 * output): an epilogue (dx + r); a prologue (dy = g1 + g2) and an epilogue
 * at once, on rows of 512 (fuse.c's threshold); a prologue alone whose dy is
 * split into two heads of 256. */
static int c_fused_lnbwd(ocase *c, int64_t C, int prologue, int heads) {
  int64_t B = 2, T = 5, F = heads ? C / heads : C;
  int x = oc_f32(c, V_SIGNED, DIMS(B, T, C)), w = oc_f32(c, V_SIGNED, DIMS(C));
  int dy;
  if (heads) {
    int64_t hd[4] = {B, heads, T, F};
    int g1 = oc_f32(c, V_SIGNED, 4, hd), g2 = oc_f32(c, V_SIGNED, 4, hd);
    dy = oc_op(c, ZOO_OP_ADD, 2, (int[]){g1, g2}, NULL);
  } else if (prologue) {
    int g1 = oc_f32(c, V_SIGNED, DIMS(B, T, C)), g2 = oc_f32(c, V_SIGNED, DIMS(B, T, C));
    dy = oc_op(c, ZOO_OP_ADD, 2, (int[]){g1, g2}, NULL);
  } else {
    dy = oc_f32(c, V_SIGNED, DIMS(B, T, C));
  }
  zoo_attrs la = A0();
  la.f[0] = 1e-5;
  la.i[0] = heads;
  int dx = oc_op(c, ZOO_OP_LAYERNORM_BWD, 3, (int[]){dy, x, w}, &la);
  if (heads) return dx;
  int r = oc_f32(c, V_SIGNED, DIMS(B, T, C));
  return oc_op(c, ZOO_OP_ADD, 2, (int[]){dx, r}, NULL);
}
static int c_fused_lnbwd_epilogue(ocase *c) { return c_fused_lnbwd(c, 40, 0, 0); }
static int c_fused_lnbwd_both(ocase *c) { return c_fused_lnbwd(c, 512, 1, 0); }
static int c_fused_lnbwd_prologue_heads(ocase *c) { return c_fused_lnbwd(c, 512, 1, 2); }

static const named_case fused_cases[] = {
      {"fused_baseconv_residual_layernorm", c_fused_baseconv, 1e-4, 1},
      {"fused_dropout_layernorm", c_fused_dropout_layernorm, 1e-4, 1},
      {"fused_add_layernorm_heads", c_fused_add_layernorm_heads, 1e-4, 1},
      {"fused_conv_gate", c_fused_conv_gate, 2e-5, 1},
      {"fused_layernorm_bwd_epilogue", c_fused_lnbwd_epilogue, 1e-4, 0},
      {"fused_layernorm_bwd_prologue_epilogue", c_fused_lnbwd_both, 1e-4, 0},
      {"fused_layernorm_bwd_prologue_heads", c_fused_lnbwd_prologue_heads, 1e-4, 0},
};

/* Each fused case's forward is one kernel once fused (else it tests nothing new). */
static int fused_cases_fuse(void) {
  int n = (int)(sizeof fused_cases / sizeof *fused_cases);
  for (int i = 0; i < n; i++) {
    ocase c;
    oc_init(&c, fused_cases[i].name, fused_cases[i].tol);
    int y = fused_cases[i].build(&c);
    int groups = y >= 0 && !c.bad ? zoo_fuse(&c.g, ZOO_FUSE_ALL) : -1;
    oc_free(&c);
    if (groups != 1) {
      fprintf(stderr, "  %s: %d groups, want 1\n", fused_cases[i].name, groups);
      return 0;
    }
  }
  return 1;
}

TEST(gpu_ops_fused) {
  int mode = MODE_GPU;
  GPU_MODE_OR_SKIP(mode);
  CHECK(fused_cases_fuse());
  int failed = run_cases(t, fused_cases, (int)(sizeof fused_cases / sizeof *fused_cases), mode);
  CHECKF(failed == 0, "%d fused case(s) differ", failed);
  if (mode == MODE_PRECOMPILE) SKIP("precompiled for sm_90 only");
}

TEST(emu_ops_fused) {
  EMU_OR_SKIP();
  CHECK(fused_cases_fuse());
  int failed = run_cases(t, fused_cases, (int)(sizeof fused_cases / sizeof *fused_cases), 1);
  CHECKF(failed == 0, "%d fused case(s) differ (emulated)", failed);
}

/* ---------------------------------------------------------------------------
 * Whole training steps: CUDA backend against the CPU backend */

/* prec: the GEMMs' (backend.h); tf32 and bf16 round the GEMM inputs, so their
 * steps are held to looser bounds (loss within 2%, parameter changes within
 * 15% overall) and the argmax counts are not compared. */
/* models/<model>.zoo with vocab_size, d_model and seq_len bound; NULL (the
 * reason on stderr) when it does not compile. */
static zoo_program *compile_model(const char *model, int64_t V, int d_model, int seq_len) {
  char path[128], vocab[24], dm[24], sl[24];
  snprintf(path, sizeof path, "models/%s.zoo", model);
  snprintf(vocab, sizeof vocab, "%lld", (long long)V);
  snprintf(dm, sizeof dm, "%d", d_model);
  snprintf(sl, sizeof sl, "%d", seq_len);
  zoo_define defs[] = {{"vocab_size", vocab}, {"d_model", dm}, {"seq_len", sl}};
  zoo_compile_opts o = {.path = path, .defines = defs, .ndefines = 3};
  zoo_diag d;
  zoo_diag_init(&d, stderr);
  zoo_program *p = NULL;
  return zoo_compile(&o, &d, &p) == 0 ? p : NULL;
}

/* compile_model with the compacted head, as zoorun trains on CUDA, with room
 * for per_seq labelled positions a sequence; NULL if either fails. */
static zoo_program *compact_model(const char *model, int64_t V, int d_model, int seq_len, int per_seq) {
  zoo_program *p = compile_model(model, V, d_model, seq_len);
  if (!p) return NULL;
  zoo_diag d;
  zoo_diag_init(&d, stderr);
  if (zoo_train_graph_head(&p->graph, ZOO_HEAD_COMPACT, per_seq, &d) != 0) {
    zoo_program_free(p);
    return NULL;
  }
  return p;
}

static void train_compare_v(zoo_test_ctx *t, const char *model, int accum, int fake, zoo_precision prec,
                            int64_t V) {
  int mode = MODE_EMU;
  if (fake) EMU_OR_SKIP_LEVEL(1);
  else GPU_MODE_OR_SKIP(mode);
  zoo_program *p = compile_model(model, V, 24, 16);
  CHECKF(p != NULL, "models/%s.zoo does not compile", model);
  zoo_diag d;
  zoo_diag_init(&d, stderr);
  zoo_graph *g = &p->graph;
  /* The compacted head, as zoorun trains on CUDA (runtime/train.c), with room
   * for 10 labelled positions per sequence (the batches below label about 4 of
   * 16); the emulated programs below also run the fused one. */
  CHECK(zoo_train_graph_head(g, ZOO_HEAD_COMPACT, 10, &d) == 0);
  const int64_t B = 8, T = 16;
  char err[1024];
  if (mode == MODE_PRECOMPILE) {
    int r = zoo_cuda_precompile(g, B, T, ZOO_FP32, "sm_90", err, sizeof err);
    zoo_program_free(p);
    CHECKF(r == 0, "precompile: %s", err);
    SKIP("precompiled for sm_90 only");
  }
  zoo_backend *cpu = zoo_cpu_backend_init(g, B, T, err, sizeof err);
  CHECKF(cpu != NULL, "cpu backend: %s", err);
  /* fake: the CUDA backend over the fake driver, its kernels emulated */
  zoo_cuda_program fake_prog;
  emu_module *fake_mod = NULL;
  if (fake) {
    int built = zoo_cuda_program_build(&fake_prog, g, B, T, 1, 1, err, sizeof err) == 0;
    if (built) fake_mod = emu_load(&fake_prog.emit, err, sizeof err);
    if (!fake_mod) {
      if (built) zoo_cuda_program_free(&fake_prog);
      cpu->free(cpu);
      zoo_program_free(p);
      CHECKF(0, "emulated module: %s", err);
    }
    fake_cuda_install();
    fake_cuda_module(fake_mod, &fake_prog.emit);
  }
  zoo_backend *gpu = zoo_cuda_backend_init(g, B, T, 0, prec, err, sizeof err);
  const double loss_tol = prec == ZOO_FP32 ? 1e-3 : 2e-2, change_tol = prec == ZOO_FP32 ? 0.02 : 0.15;
  const int exact = prec == ZOO_FP32;
  if (!gpu) {
    if (fake) {
      fake_cuda_uninstall();
      emu_unload(fake_mod);
      zoo_cuda_program_free(&fake_prog);
    }
    cpu->free(cpu);
    zoo_program_free(p);
    CHECKF(0, "cuda backend: %s", err);
  }
  int np = g->nparams;
  float **p0 = calloc((size_t)np, sizeof *p0), **pc = calloc((size_t)np, sizeof *pc),
        **pg = calloc((size_t)np, sizeof *pg);
  for (int i = 0; i < np; i++) {
    size_t n = (size_t)zoo_type_numel(&g->tensors[g->params[i]].type, NULL);
    p0[i] = malloc(n * 4), pc[i] = malloc(n * 4), pg[i] = malloc(n * 4);
  }
  zoo_train_init_params(g, 7, p0);
  int ok = cpu->set_state(cpu, p0, NULL, NULL, 0) == 0 && gpu->set_state(gpu, p0, NULL, NULL, 0) == 0;
  /* batches: random tokens, about a quarter of the targets labelled; the last
   * micro-batch of the last step is short */
  int32_t *tok[4], *tgt[4];
  for (int k = 0; k < accum; k++) tok[k] = malloc((size_t)(B * T) * 4), tgt[k] = malloc((size_t)(B * T) * 4);
  uint64_t r = 99;
  zoo_adamw opt = {1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f};
  const int steps = 3;
  zoo_metrics mc[3], mg[4];
  memset(mg, 0, sizeof mg);
  int gpu_seen = 0; /* metrics delivered by the GPU so far */
  for (int s = 0; s < steps && ok; s++) {
    int rows[4];
    for (int k = 0; k < accum; k++) {
      rows[k] = (s == steps - 1 && k == accum - 1) ? 5 : (int)B;
      for (int64_t e = 0; e < B * T; e++) {
        r = zoo_rng_mix(r + 1);
        tok[k][e] = (int32_t)(r % (uint64_t)V);
        tgt[k][e] = (r >> 20) % 4 == 0 ? (int32_t)((r >> 30) % (uint64_t)V) : -100;
      }
    }
    uint64_t seed = zoo_rng_mix(1000 + (uint64_t)s);
    zoo_metrics m;
    if (cpu->train_step(cpu, accum, (const int32_t *const *)tok, (const int32_t *const *)tgt, rows, &opt, seed, &mc[s]) < 0) {
      fprintf(stderr, "  cpu step: %s\n", cpu->err);
      ok = 0;
      break;
    }
    int got = gpu->train_step(gpu, accum, (const int32_t *const *)tok, (const int32_t *const *)tgt, rows, &opt, seed, &m);
    if (got < 0) {
      fprintf(stderr, "  gpu step: %s\n", gpu->err);
      ok = 0;
      break;
    }
    if (got == 0) mg[gpu_seen++] = m;
    else if (s > 0) mg[gpu_seen++] = m; /* the previous step's */
  }
  zoo_metrics last;
  if (ok && gpu->sync(gpu, &last) != 0) {
    fprintf(stderr, "  gpu sync: %s\n", gpu->err);
    ok = 0;
  }
  if (ok && gpu_seen < steps) mg[gpu_seen++] = last;
  for (int s = 0; ok && s < steps; s++) {
    double dl = fabs(mc[s].loss - mg[s].loss);
    if (!(dl <= loss_tol * fabs(mc[s].loss) + 1e-5) || (exact && mc[s].correct != mg[s].correct) ||
        mc[s].labelled != mg[s].labelled) {
      fprintf(stderr, "  %s step %d: cpu loss %.7f correct %.0f labelled %.0f; gpu loss %.7f correct %.0f labelled %.0f\n",
              model, s + 1, mc[s].loss, mc[s].correct, mc[s].labelled, mg[s].loss, mg[s].correct, mg[s].labelled);
      ok = 0;
    }
  }
  int64_t cstep = 0, gstep = 0;
  if (ok) ok = cpu->get_state(cpu, pc, NULL, NULL, &cstep) == 0 && gpu->get_state(gpu, pg, NULL, NULL, &gstep) == 0;
  if (ok && cstep != gstep) {
    fprintf(stderr, "  step counts differ: cpu %lld gpu %lld\n", (long long)cstep, (long long)gstep);
    ok = 0;
  }
  double num = 0, den = 0, worst = 0;
  const char *worst_name = "";
  for (int i = 0; ok && i < np; i++) {
    int64_t n = zoo_type_numel(&g->tensors[g->params[i]].type, NULL);
    for (int64_t e = 0; e < n; e++) {
      double dc = (double)pc[i][e] - p0[i][e], dg = (double)pg[i][e] - p0[i][e];
      num += (dc - dg) * (dc - dg);
      den += dc * dc;
      if (fabs(dc - dg) > worst) worst = fabs(dc - dg), worst_name = g->tensors[g->params[i]].name;
    }
  }
  if (ok && !(sqrt(num) <= change_tol * sqrt(den) && worst <= 6 * opt.lr)) {
    fprintf(stderr, "  %s: parameter changes differ: relative %.3g, worst %.3g in %s\n", model,
            den > 0 ? sqrt(num / den) : 0.0, worst, worst_name);
    ok = 0;
  }
  /* a batch labelling more positions than the head holds (10 per sequence) is
   * refused before it reaches the GPU, saying why */
  if (ok) {
    int32_t *full = malloc((size_t)(B * T) * 4);
    for (int64_t e = 0; e < B * T; e++) full[e] = (int32_t)(e % V);
    zoo_metrics mx;
    const int32_t *fa[1] = {full};
    int frows[1] = {(int)B};
    int got = gpu->train_step(gpu, 1, fa, fa, frows, &opt, 5, &mx);
    if (got >= 0 || !strstr(gpu->err, "labelled positions")) {
      fprintf(stderr, "  an over-full batch: train_step gave %d (%s)\n", got, gpu->err);
      ok = 0;
    }
    free(full);
    if (ok && gpu->sync(gpu, &mx) != 0) {
      fprintf(stderr, "  sync after the refused batch: %s\n", gpu->err);
      ok = 0;
    }
  }
  /* evaluation of the last batch */
  zoo_metrics ec, eg;
  if (ok && (cpu->eval_batch(cpu, tok[0], tgt[0], 6, &ec) != 0 || gpu->eval_batch(gpu, tok[0], tgt[0], 6, &eg) != 0)) {
    fprintf(stderr, "  eval: %s / %s\n", cpu->err, gpu->err);
    ok = 0;
  }
  if (ok && (!(fabs(ec.loss - eg.loss) <= loss_tol * fabs(ec.loss) + 1e-5) ||
             (exact && ec.correct != eg.correct) || ec.labelled != eg.labelled)) {
    fprintf(stderr, "  %s eval: cpu loss %.7f correct %.0f/%.0f; gpu loss %.7f correct %.0f/%.0f\n", model, ec.loss,
            ec.correct, ec.labelled, eg.loss, eg.correct, eg.labelled);
    ok = 0;
  }
  for (int i = 0; i < np; i++) free(p0[i]), free(pc[i]), free(pg[i]);
  free(p0), free(pc), free(pg);
  for (int k = 0; k < accum; k++) free(tok[k]), free(tgt[k]);
  gpu->free(gpu);
  if (fake) {
    fake_cuda_stats fs = fake_cuda_counters();
    if (ok && getenv("ZOO_DEBUG") == NULL && fs.graph_launches < steps) {
      fprintf(stderr, "  the training steps did not run as graphs (%ld launches)\n", fs.graph_launches);
      ok = 0;
    }
    if (ok && fs.allocations != 0) {
      fprintf(stderr, "  %ld device allocations were not freed\n", fs.allocations);
      ok = 0;
    }
    /* the fake device is an sm_90: every kernel goes with programmatic
     * dependent launch, unless switched off */
    int pdl = !zoo_env_on("ZOO_NO_PDL");
    if (ok && (pdl ? fs.pdl_launches == 0 || fs.plain_launches != 0 : fs.pdl_launches != 0)) {
      fprintf(stderr, "  %ld launches with programmatic dependent launch, %ld without\n", fs.pdl_launches,
              fs.plain_launches);
      ok = 0;
    }
    fake_cuda_uninstall();
    emu_unload(fake_mod);
    zoo_cuda_program_free(&fake_prog);
  }
  cpu->free(cpu);
  zoo_program_free(p);
  CHECKF(ok, "%s (accum %d): the GPU's training steps differ from the CPU's", model, accum);
}

/* Two CUDA backends, one after the other, take the same 3 steps from the same
 * parameters: the parameters must come out the same bit for bit (no
 * timing-dependent order of additions anywhere in a step: embedding.cu's
 * sorted backward, fixed-order partial sums, the same GEMM algorithms). 64 x
 * 64 rows over a vocabulary of 64 give the embedding's backward many rows per
 * id, across its chunks and pieces. */
static int train_twice_state(zoo_graph *g, int64_t B, int64_t T, int64_t V, float **p0, float **out, char *err,
                             size_t n) {
  zoo_backend *gpu = zoo_cuda_backend_init(g, B, T, 0, ZOO_FP32, err, n);
  if (!gpu) return -1;
  int ok = gpu->set_state(gpu, p0, NULL, NULL, 0) == 0;
  int32_t *tok = malloc((size_t)(B * T) * 4), *tgt = malloc((size_t)(B * T) * 4);
  uint64_t r = 5;
  zoo_adamw opt = {1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f};
  zoo_metrics m;
  for (int s = 0; s < 3 && ok; s++) {
    for (int64_t e = 0; e < B * T; e++) {
      r = zoo_rng_mix(r + 1);
      tok[e] = (r >> 40) % 4 ? 0 : (int32_t)(r % (uint64_t)V); /* token 0 in three rows of four, as MQAR's fill */
      tgt[e] = (r >> 20) % 4 == 0 ? (int32_t)((r >> 30) % (uint64_t)V) : -100;
    }
    const int32_t *tk[1] = {tok}, *tg[1] = {tgt};
    int rows[1] = {(int)B};
    ok = gpu->train_step(gpu, 1, tk, tg, rows, &opt, zoo_rng_mix(77 + (uint64_t)s), &m) >= 0;
  }
  ok = ok && gpu->sync(gpu, &m) == 0 && gpu->get_state(gpu, out, NULL, NULL, NULL) == 0;
  if (!ok) snprintf(err, n, "%s", gpu->err);
  free(tok), free(tgt);
  gpu->free(gpu);
  return ok ? 0 : -1;
}

TEST(gpu_train_reproducible) {
  int mode = MODE_GPU;
  GPU_MODE_OR_SKIP(mode);
  zoo_program *p = compact_model("rebased", 64, 32, 64, 32);
  CHECK(p != NULL);
  zoo_graph *g = &p->graph;
  const int64_t B = 64, T = 64, V = 64;
  char err[1024];
  if (mode == MODE_PRECOMPILE) {
    int r = zoo_cuda_precompile(g, B, T, ZOO_FP32, "sm_90", err, sizeof err);
    zoo_program_free(p);
    CHECKF(r == 0, "precompile: %s", err);
    SKIP("precompiled for sm_90 only");
  }
  int np = g->nparams;
  float **p0 = calloc((size_t)np, sizeof *p0), **a = calloc((size_t)np, sizeof *a), **b = calloc((size_t)np, sizeof *b);
  for (int i = 0; i < np; i++) {
    size_t n = (size_t)zoo_type_numel(&g->tensors[g->params[i]].type, NULL);
    p0[i] = malloc(n * 4), a[i] = malloc(n * 4), b[i] = malloc(n * 4);
  }
  zoo_train_init_params(g, 3, p0);
  int ok = train_twice_state(g, B, T, V, p0, a, err, sizeof err) == 0 &&
           train_twice_state(g, B, T, V, p0, b, err, sizeof err) == 0;
  if (!ok) fprintf(stderr, "  %s\n", err);
  int same = 1;
  for (int i = 0; ok && i < np; i++) {
    size_t n = (size_t)zoo_type_numel(&g->tensors[g->params[i]].type, NULL);
    if (memcmp(a[i], b[i], n * 4) != 0) {
      fprintf(stderr, "  %s differs between the two runs\n", g->tensors[g->params[i]].name);
      same = 0;
    }
  }
  for (int i = 0; i < np; i++) free(p0[i]), free(a[i]), free(b[i]);
  free(p0), free(a), free(b);
  zoo_program_free(p);
  CHECK(ok);
  CHECKF(same, "two runs of the same steps gave different parameters");
}

static void train_compare(zoo_test_ctx *t, const char *model, int accum, int fake, zoo_precision prec) {
  train_compare_v(t, model, accum, fake, prec, 64);
}

TEST(gpu_train_rebased) { train_compare(t, "rebased", 1, 0, ZOO_FP32); }
TEST(gpu_train_rebased_gemm_own) { /* every GEMM with zoo's kernel by it */
  char *saved = zoo_test_env_set("ZOO_GEMM_OWN", "1");
  train_compare(t, "rebased", 1, 0, ZOO_FP32);
  zoo_test_env_restore("ZOO_GEMM_OWN", saved);
}
TEST(gpu_train_based) { train_compare(t, "based", 1, 0, ZOO_FP32); }
TEST(gpu_train_conv_attention) { train_compare(t, "conv_attention", 1, 0, ZOO_FP32); }
TEST(gpu_train_attention) { train_compare(t, "attention", 1, 0, ZOO_FP32); }
TEST(gpu_train_rwkv) { train_compare(t, "rwkv", 1, 0, ZOO_FP32); }
TEST(gpu_train_rebased_accum) { train_compare(t, "rebased", 2, 0, ZOO_FP32); }
TEST(gpu_train_attention_accum) { train_compare(t, "attention", 3, 0, ZOO_FP32); }
TEST(gpu_train_rebased_tf32) { train_compare(t, "rebased", 1, 0, ZOO_TF32); }
TEST(gpu_train_conv_attention_bf16) { train_compare(t, "conv_attention", 2, 0, ZOO_BF16); }
/* vocabulary 128 and ZOO_FUSED_LCE_STEP=1: the compacted head's step is
 * linear_cross_entropy_step */
static void train_compare_lce(zoo_test_ctx *t, const char *model, int accum, int fake, zoo_precision prec) {
  setenv("ZOO_FUSED_LCE_STEP", "1", 1);
  train_compare_v(t, model, accum, fake, prec, 128);
  unsetenv("ZOO_FUSED_LCE_STEP");
}
TEST(gpu_train_rebased_lce_step) { train_compare_lce(t, "rebased", 2, 0, ZOO_FP32); }
TEST(gpu_train_attention_lce_step_tf32) { train_compare_lce(t, "attention", 1, 0, ZOO_TF32); }

/* The same comparisons through runtime/cuda.c over the fake driver
 * (tests/fake_cuda.h): capture, replay, seeds, double buffers, late metrics,
 * accumulation, state copies, evaluation; the kernels emulated on the CPU. */
/* The backend's start-up times one stream against two (pick_streams), a
 * single run each here (ZOO_PICK_REPS=1: every emulated step is slow); the
 * other cases take two streams untimed (ZOO_TWO_STREAMS=1). */
TEST(emu_backend_rebased) {
  char *saved = zoo_test_env_set("ZOO_PICK_REPS", "1");
  train_compare(t, "rebased", 1, 1, ZOO_FP32);
  zoo_test_env_restore("ZOO_PICK_REPS", saved);
}
TEST(emu_backend_attention_accum) {
  char *saved = zoo_test_env_set("ZOO_TWO_STREAMS", "1");
  train_compare(t, "attention", 3, 1, ZOO_FP32);
  zoo_test_env_restore("ZOO_TWO_STREAMS", saved);
}
TEST(emu_backend_rebased_lce_step) {
  char *saved = zoo_test_env_set("ZOO_TWO_STREAMS", "1");
  train_compare_lce(t, "rebased", 2, 1, ZOO_FP32);
  zoo_test_env_restore("ZOO_TWO_STREAMS", saved);
}
TEST(emu_backend_debug_mode) {
  setenv("ZOO_DEBUG", "1", 1);
  train_compare(t, "conv_attention", 2, 1, ZOO_FP32);
  unsetenv("ZOO_DEBUG");
}

/* The CUDA program for g at B x T, fused, and its module loaded into the CPU
 * emulation; NULL (prog freed, err set) when either step fails. */
static emu_module *emu_build(zoo_cuda_program *prog, const zoo_graph *g, int64_t B, int64_t T, char *err,
                             size_t errlen) {
  if (zoo_cuda_program_build(prog, g, B, T, 1, 1, err, errlen) != 0) return NULL;
  emu_module *mod = emu_load(&prog->emit, err, errlen);
  if (!mod) zoo_cuda_program_free(prog);
  return mod;
}

/* The steps over two streams (compiler/schedule.h), through runtime/cuda.c
 * over the fake driver (ZOO_TWO_STREAMS=1: two without the start-up timing,
 * whose clock the fake does not have): the side stream is used, and three training steps
 * give the same bits as on one stream (ZOO_ONE_STREAM=1) when the graphs are
 * replayed with the side stream's work as late, and as early, as its waits
 * allow. A missing wait lets a step read what another has not yet written,
 * or has already overwritten. */
TEST(emu_backend_streams) {
  EMU_OR_SKIP();
  zoo_program *p = compact_model("rebased", 64, 24, 16, 10);
  CHECK(p != NULL);
  zoo_graph *g = &p->graph;
  const int64_t B = 8, T = 16, V = 64;
  char err[1024];
  zoo_cuda_program prog;
  emu_module *mod = emu_build(&prog, g, B, T, err, sizeof err);
  if (!mod) {
    zoo_program_free(p);
    CHECKF(0, "emulated module: %s", err);
  }
  fake_cuda_install();
  fake_cuda_module(mod, &prog.emit);
  int np = g->nparams;
  float **p0 = calloc((size_t)np, sizeof *p0), **out[3];
  for (int k = 0; k < 3; k++) out[k] = calloc((size_t)np, sizeof **out);
  for (int i = 0; i < np; i++) {
    size_t n = (size_t)zoo_type_numel(&g->tensors[g->params[i]].type, NULL);
    p0[i] = malloc(n * 4);
    for (int k = 0; k < 3; k++) out[k][i] = malloc(n * 4);
  }
  zoo_train_init_params(g, 3, p0);
  int ok = 1;
  long side[3];
  for (int k = 0; k < 3 && ok; k++) { /* one stream; two, the side late; two, the side early */
    char *saved = zoo_test_env_set("ZOO_ONE_STREAM", k == 0 ? "1" : NULL);
    char *saved2 = zoo_test_env_set("ZOO_TWO_STREAMS", k == 0 ? NULL : "1"); /* not timed: the fake's clock */
    fake_cuda_replay(k);
    long before = fake_cuda_counters().side_ops;
    ok = train_twice_state(g, B, T, V, p0, out[k], err, sizeof err) == 0;
    side[k] = fake_cuda_counters().side_ops - before;
    if (!ok) fprintf(stderr, "  order %d: %s\n", k, err);
    zoo_test_env_restore("ZOO_ONE_STREAM", saved);
    zoo_test_env_restore("ZOO_TWO_STREAMS", saved2);
  }
  fake_cuda_replay(0);
  int same = 1;
  for (int i = 0; ok && i < np; i++) {
    size_t n = (size_t)zoo_type_numel(&g->tensors[g->params[i]].type, NULL);
    for (int k = 1; k < 3; k++)
      if (memcmp(out[0][i], out[k][i], n * 4) != 0) {
        fprintf(stderr, "  %s: two streams (replay order %d) differ from one\n", g->tensors[g->params[i]].name, k);
        same = 0;
      }
  }
  fake_cuda_uninstall();
  emu_unload(mod);
  zoo_cuda_program_free(&prog);
  for (int i = 0; i < np; i++) {
    free(p0[i]);
    for (int k = 0; k < 3; k++) free(out[k][i]);
  }
  free(p0);
  for (int k = 0; k < 3; k++) free(out[k]);
  zoo_program_free(p);
  CHECK(ok);
  CHECKF(side[0] == 0 && side[1] > 0 && side[2] == side[1], "operations on the side stream: %ld, %ld, %ld",
         side[0], side[1], side[2]);
  CHECK(same);
}

/* The GEMM candidates past cuBLASLt's best fits (runtime/cuda.c,
 * gemm_more_candidates), through runtime/cuda.c over the fake driver, whose
 * heuristic gives one configuration as its best fits and, asked per
 * algorithm id, two more of each of its two ids (with a repeat): the
 * start-up's timing (ZOO_GEMM_RETUNE=1: not from a stored pick) runs all five,
 * and with ZOO_GEMM_SEARCH=0 the best fit alone. */
TEST(emu_backend_gemm_search) {
  EMU_OR_SKIP();
  zoo_program *p = compact_model("rebased", 64, 24, 16, 10);
  CHECK(p != NULL);
  zoo_graph *g = &p->graph;
  const int64_t B = 8, T = 16;
  char err[1024] = "";
  zoo_cuda_program prog;
  emu_module *mod = emu_build(&prog, g, B, T, err, sizeof err);
  if (!mod) {
    zoo_program_free(p);
    CHECKF(0, "emulated module: %s", err);
  }
  char *retune = zoo_test_env_set("ZOO_GEMM_RETUNE", "1");
  char *two = zoo_test_env_set("ZOO_TWO_STREAMS", "1"); /* no stream timing: the fake's clock */
  long algos[2] = {-1, -1};
  for (int k = 0; k < 2; k++) {
    char *saved = zoo_test_env_set("ZOO_GEMM_SEARCH", k == 0 ? "0" : NULL);
    fake_cuda_install();
    fake_cuda_module(mod, &prog.emit);
    zoo_backend *gpu = zoo_cuda_backend_init(g, B, T, 0, ZOO_FP32, err, sizeof err);
    if (gpu) {
      algos[k] = fake_cuda_counters().gemm_algos;
      gpu->free(gpu);
    } else {
      fprintf(stderr, "  search %d: %s\n", k, err);
    }
    fake_cuda_uninstall();
    zoo_test_env_restore("ZOO_GEMM_SEARCH", saved);
  }
  zoo_test_env_restore("ZOO_TWO_STREAMS", two);
  zoo_test_env_restore("ZOO_GEMM_RETUNE", retune);
  emu_unload(mod);
  zoo_cuda_program_free(&prog);
  zoo_program_free(p);
  CHECKF(algos[0] == 1 && algos[1] == 5, "algorithms run: %ld without the search, %ld with it (want 1 and 5)",
         algos[0], algos[1]);
}

/* ---------------------------------------------------------------------------
 * The backend's program, emulated: the very module, steps and plans the CUDA
 * backend builds (training step fused and planned with memory reuse, the
 * evaluation graph, the optimiser kernels), run on the CPU emulation and
 * compared with the CPU executor and the CPU backend. */

static int input_named(const zoo_graph *g, const char *name) {
  for (int i = 0; i < g->ninputs; i++)
    if (g->tensors[g->inputs[i]].name && !strcmp(g->tensors[g->inputs[i]].name, name)) return g->inputs[i];
  return -1;
}

/* max |a - b| <= tol * max(1, max |b|) over n floats; prints what differs. */
static int close_enough(const char *what, const float *a, const float *b, int64_t n, double tol) {
  double scale = 1, worst = 0;
  int64_t at = 0;
  for (int64_t e = 0; e < n; e++)
    if (fabs(b[e]) > scale) scale = fabs(b[e]);
  for (int64_t e = 0; e < n; e++) {
    double d = fabs((double)a[e] - (double)b[e]);
    if (!(d <= worst)) worst = d, at = e;
  }
  if (worst <= tol * scale) return 1;
  fprintf(stderr, "  %s differs by %.3g at %lld (emulated %.9g, cpu %.9g)\n", what, worst, (long long)at,
          a[at], b[at]);
  return 0;
}

static void emu_program_v(zoo_test_ctx *t, const char *model, int accum, zoo_head head, int64_t V) {
  EMU_OR_SKIP();
  zoo_program *prog = compile_model(model, V, 24, 16);
  CHECKF(prog != NULL, "models/%s.zoo does not compile", model);
  zoo_diag d;
  zoo_diag_init(&d, stderr);
  zoo_graph *g = &prog->graph;
  CHECK(zoo_train_graph_head(g, head, 16, &d) == 0);
  const int64_t B = 4, T = 16;
  zoo_cuda_program cp;
  char err[1024];
  CHECKF(zoo_cuda_program_build(&cp, g, B, T, 1, 1, err, sizeof err) == 0, "%s", err);
  emu_module *m = emu_load(&cp.emit, err, sizeof err);
  if (!m) {
    zoo_cuda_program_free(&cp);
    zoo_program_free(prog);
    CHECKF(0, "%s", err);
  }
  const zoo_plan *tp = &cp.train_plan, *ep = &cp.eval_plan;
  emu_mem mem;
  emu_mem_init(&mem, tp);
  int64_t arena = tp->arena_bytes > ep->arena_bytes ? tp->arena_bytes : ep->arena_bytes;
  free(mem.base[ZOO_MEM_ARENA]);
  mem.base[ZOO_MEM_ARENA] = calloc(1, (size_t)arena + 256);
  int64_t pb = tp->param_bytes;
  float *acc = calloc(1, (size_t)pb + 4), *am = calloc(1, (size_t)pb + 4), *av = calloc(1, (size_t)pb + 4);
  float *metrics = calloc(4, sizeof(float));

  /* the same start on both sides */
  int np = g->nparams;
  float **p0 = calloc((size_t)np, sizeof *p0), **pc = calloc((size_t)np, sizeof *pc);
  for (int i = 0; i < np; i++) {
    size_t n = (size_t)zoo_type_numel(&g->tensors[g->params[i]].type, NULL);
    p0[i] = malloc(n * 4), pc[i] = malloc(n * 4);
  }
  zoo_train_init_params(g, 5, p0);
  for (int i = 0; i < np; i++)
    memcpy(mem.base[ZOO_MEM_PARAM] + tp->param_offset[i], p0[i], (size_t)tp->bytes[g->params[i]]);
  int32_t *tok[4], *tgt[4];
  int rows[4];
  uint64_t r = 3;
  for (int k = 0; k < accum; k++) {
    tok[k] = malloc((size_t)(B * T) * 4), tgt[k] = malloc((size_t)(B * T) * 4);
    rows[k] = (int)B;
    for (int64_t e = 0; e < B * T; e++) {
      r = zoo_rng_mix(r + 1);
      tok[k][e] = (int32_t)(r % (uint64_t)V);
      tgt[k][e] = (r >> 20) % 3 == 0 ? (int32_t)((r >> 30) % (uint64_t)V) : -100;
    }
  }
  uint64_t seed = 77;
  int tokens = input_named(g, "tokens");
  int ok = 1;

  /* the training step's kernels, micro-batch by micro-batch, as cuda.c runs them */
  float dl = 1.0f / (float)accum;
  memcpy(emu_ptr(&mem, tp, g->dloss), &dl, 4);
  long long nflat = (long long)(pb / 4);
  unsigned g1[3] = {4, 1, 1}, b256[3] = {256, 1, 1}, b32[3] = {32, 1, 1}, one[3] = {1, 1, 1};
  for (int k = 0; ok && k < accum; k++) {
    memcpy(emu_ptr(&mem, tp, tokens), tok[k], (size_t)(B * T) * 4);
    memcpy(emu_ptr(&mem, tp, g->targets), tgt[k], (size_t)(B * T) * 4);
    uint64_t ms = zoo_rng_mix(seed + 0x9e3779b97f4a7c15ULL * (uint64_t)(k + 1));
    if (emu_run(m, &cp.emit, tp, &mem, 0, cp.ntrain, ms, err, sizeof err) != 0) {
      fprintf(stderr, "  %s\n", err);
      ok = 0;
      break;
    }
    if (k == 0) { /* gradients of the first micro-batch against the CPU executor */
      zoo_cpu cpu;
      CHECK(zoo_cpu_init(&cpu, g, cp.sym) == 0);
      for (int i = 0; i < np; i++) memcpy(cpu.data[g->params[i]], p0[i], (size_t)tp->bytes[g->params[i]]);
      memcpy(cpu.data[tokens], tok[0], (size_t)(B * T) * 4);
      memcpy(cpu.data[g->targets], tgt[0], (size_t)(B * T) * 4);
      zoo_cpu_f32(&cpu, g->dloss)[0] = dl;
      cpu.training = 1;
      cpu.seed = ms;
      ok = zoo_cpu_run(&cpu, 0, g->nnodes) == 0;
      ok = ok && close_enough("loss", emu_ptr(&mem, tp, g->loss), cpu.data[g->loss], 1, 1e-4);
      ok = ok && close_enough("metrics", emu_ptr(&mem, tp, g->metrics), cpu.data[g->metrics], 2, 0);
      for (int i = 0; ok && i < np; i++) {
        int gt = g->tensors[g->params[i]].grad;
        char what[300];
        snprintf(what, sizeof what, "gradient of %s", g->tensors[g->params[i]].name);
        ok = close_enough(what, (float *)(mem.base[ZOO_MEM_GRAD] + tp->param_offset[i]), cpu.data[gt],
                          cpu.numel[gt], 2e-4);
      }
      zoo_cpu_free(&cpu);
    }
    int first = k == 0;
    void *gr = mem.base[ZOO_MEM_GRAD];
    if (accum > 1) {
      void *ap[] = {&acc, &gr, &nflat, &first};
      ok = ok && emu_launch(m, "zoo_accumulate", g1, b256, 0, ap) == 0;
    }
    void *lp = emu_ptr(&mem, tp, g->loss), *mp = emu_ptr(&mem, tp, g->metrics);
    void *mpar[] = {&metrics, &lp, &mp, &first};
    ok = ok && emu_launch(m, "zoo_metrics_accumulate", one, b32, 0, mpar) == 0;
  }
  zoo_hyper h = {1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f, 0, 1};
  zoo_hyper *hp = &h;
  void *flat = mem.base[ZOO_MEM_PARAM], *grads = accum > 1 ? (void *)acc : (void *)mem.base[ZOO_MEM_GRAD];
  void *adam[] = {&flat, &grads, &am, &av, &hp, &nflat};
  ok = ok && emu_launch(m, "zoo_adamw", g1, b256, 0, adam) == 0;

  /* the CPU backend's step from the same start */
  zoo_backend *cpu = zoo_cpu_backend_init(g, B, T, err, sizeof err);
  CHECKF(cpu != NULL, "%s", err);
  zoo_adamw opt = {h.lr, h.beta1, h.beta2, h.eps, h.weight_decay};
  zoo_metrics mc;
  ok = ok && cpu->set_state(cpu, p0, NULL, NULL, 0) == 0;
  ok = ok && cpu->train_step(cpu, accum, (const int32_t *const *)tok, (const int32_t *const *)tgt, rows, &opt, seed, &mc) == 0;
  ok = ok && cpu->get_state(cpu, pc, NULL, NULL, NULL) == 0;
  if (ok && (fabs(metrics[0] / accum - mc.loss) > 1e-4 * fabs(mc.loss) + 1e-6 || metrics[1] != mc.correct ||
             metrics[2] != mc.labelled)) {
    fprintf(stderr, "  step metrics: emulated %g %g %g, cpu %g %g %g\n", metrics[0] / accum, metrics[1],
            metrics[2], mc.loss, mc.correct, mc.labelled);
    ok = 0;
  }
  double num = 0, den = 0;
  for (int i = 0; ok && i < np; i++) {
    const float *pe = (const float *)(mem.base[ZOO_MEM_PARAM] + tp->param_offset[i]);
    for (int64_t e = 0; e < zoo_type_numel(&g->tensors[g->params[i]].type, NULL); e++) {
      double dc = (double)pc[i][e] - p0[i][e], de = (double)pe[e] - p0[i][e];
      num += (dc - de) * (dc - de);
      den += dc * dc;
    }
  }
  if (ok && !(sqrt(num) <= 0.02 * sqrt(den))) {
    fprintf(stderr, "  parameter updates differ: relative %.3g\n", sqrt(num / den));
    ok = 0;
  }

  /* evaluation: the forward pass without dropout, on the evaluation plan */
  if (ok) {
    memcpy(emu_ptr(&mem, ep, tokens), tok[0], (size_t)(B * T) * 4);
    memcpy(emu_ptr(&mem, ep, g->targets), tgt[0], (size_t)(B * T) * 4);
    if (emu_run(m, &cp.emit, ep, &mem, cp.ntrain, cp.neval, 0, err, sizeof err) != 0) {
      fprintf(stderr, "  eval: %s\n", err);
      ok = 0;
    }
    zoo_metrics ec;
    ok = ok && cpu->eval_batch(cpu, tok[0], tgt[0], (int)B, &ec) == 0;
    float want[3] = {(float)ec.loss, (float)ec.correct, (float)ec.labelled};
    ok = ok && close_enough("eval loss", emu_ptr(&mem, ep, g->loss), want, 1, 1e-4);
    ok = ok && close_enough("eval metrics", emu_ptr(&mem, ep, g->metrics), want + 1, 2, 0);
  }
  cpu->free(cpu);
  for (int i = 0; i < np; i++) free(p0[i]), free(pc[i]);
  free(p0), free(pc);
  for (int k = 0; k < accum; k++) free(tok[k]), free(tgt[k]);
  free(acc), free(am), free(av), free(metrics);
  emu_mem_free(&mem);
  emu_unload(m);
  zoo_cuda_program_free(&cp);
  zoo_program_free(prog);
  CHECKF(ok, "%s: the emulated program differs from the CPU", model);
}

static void emu_program(zoo_test_ctx *t, const char *model, int accum, zoo_head head) {
  emu_program_v(t, model, accum, head, 64);
}

/* vocabulary 128 and ZOO_FUSED_LCE_STEP=1: the compacted head's step is one
 * linear_cross_entropy_step node (train_graph.c), its evaluation kernel
 * without the gradient */
static int count_ops(const zoo_graph *g, zoo_op op) {
  int c = 0;
  for (int i = 0; i < g->nnodes; i++) c += g->nodes[i].op == op;
  return c;
}
static void emu_program_lce(zoo_test_ctx *t) {
  zoo_program *prog = compile_model("rebased", 128, 24, 16);
  CHECK(prog != NULL);
  zoo_diag d;
  zoo_diag_init(&d, stderr);
  int folded = zoo_train_graph_head(&prog->graph, ZOO_HEAD_COMPACT, 16, &d) == 0 &&
               count_ops(&prog->graph, ZOO_OP_LINEAR_CROSS_ENTROPY_STEP) == 1;
  zoo_program_free(prog);
  CHECK(folded);
  emu_program_v(t, "rebased", 2, ZOO_HEAD_COMPACT, 128);
}
TEST(emu_program_rebased_compact_step) {
  setenv("ZOO_FUSED_LCE_STEP", "1", 1);
  emu_program_lce(t);
  unsetenv("ZOO_FUSED_LCE_STEP");
}

TEST(emu_program_rebased) { emu_program(t, "rebased", 1, ZOO_HEAD_FUSED); }
TEST(emu_program_based) { emu_program(t, "based", 1, ZOO_HEAD_FUSED); }
TEST(emu_program_conv_attention) { emu_program(t, "conv_attention", 1, ZOO_HEAD_FUSED); }
TEST(emu_program_attention) { emu_program(t, "attention", 1, ZOO_HEAD_FUSED); }
TEST(emu_program_rwkv) { emu_program(t, "rwkv", 1, ZOO_HEAD_FUSED); }
TEST(emu_program_rebased_accum) { emu_program(t, "rebased", 2, ZOO_HEAD_FUSED); }
TEST(emu_program_rebased_compact) { emu_program(t, "rebased", 1, ZOO_HEAD_COMPACT); }
TEST(emu_program_attention_compact) { emu_program(t, "attention", 2, ZOO_HEAD_COMPACT); }
