/* test_intrinsics_nvrtc.c: the hand-written kernels (runtime/kernels/, one .cu per op
 * family) and their emitters (compiler/codegen_intrinsics.c), without a GPU.
 *
 * Each test builds a small graph of one op family at the sizes the shipped
 * models produce (value head widths 2, 5, 10, 21, 42; feature width 16;
 * T = 48, 128, 512, 2048; d_model 32 .. 512; vocabulary 8192), runs the
 * emitters, and compiles the module through NVRTC for sm_90; every launched
 * kernel must be in the CUBIN. Tests that need NVRTC skip when it cannot be
 * loaded. The emitter tests check steps, scratch and arguments.
 */
#include <stdlib.h>
#include <string.h>

#include "codegen_cuda.h"
#include "cuda_api.h"
#include "graph.h"
#include "nvrtc_cache.h"
#include "test.h"

const char *zoo_kernel_source(const char *name); /* build/kernels_src.c */

/* A graph under construction with an emitter over it. */
typedef struct kt {
  zoo_graph g;
  zoo_diag d;
  zoo_cuda_emit e;
  int64_t sym[ZOO_MAX_SYMS];
  int failed; /* an emitter or shape rule failed */
} kt;

static void kt_init(kt *k) {
  memset(k, 0, sizeof *k);
  zoo_graph_init(&k->g);
  zoo_diag_init(&k->d, stderr);
  k->e.g = &k->g;
  k->e.sym = k->sym;
}

static void kt_free(kt *k) {
  for (int i = 0; i < k->e.nsteps; i++) free((void *)k->e.steps[i].func);
  zoo_cuda_emit_free(&k->e);
  zoo_graph_free(&k->g);
}

/* An input of constant shape dims[0 .. nd). */
static int kt_input(kt *k, zoo_dtype dt, int nd, const int64_t *dims) {
  zoo_type t = {0};
  t.dtype = dt;
  t.ndim = nd;
  for (int i = 0; i < nd; i++) t.dim[i] = zoo_dim_const(dims[i]);
  char name[32];
  snprintf(name, sizeof name, "in%d", k->g.ntensors);
  return zoo_graph_input(&k->g, name, t);
}

/* A scalar f32 input (dloss). */
static int kt_scalar(kt *k) {
  zoo_type t = {0};
  t.dtype = ZOO_F32;
  char name[32];
  snprintf(name, sizeof name, "in%d", k->g.ntensors);
  return zoo_graph_input(&k->g, name, t);
}

#define KT_F32(k, ...) kt_input(k, ZOO_F32, (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__})
#define KT_I32(k, ...) kt_input(k, ZOO_I32, (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__})

typedef int (*emitter)(zoo_cuda_emit *e, const zoo_node *n);

/* Adds a node and emits it; returns its first output (-1 on failure). */
static int kt_node(kt *k, zoo_op op, emitter emit, int nin, const int *in, const zoo_attrs *a) {
  int out = zoo_graph_node(&k->g, op, nin, in, a, zoo_nospan, &k->d);
  if (out < 0) {
    k->failed = 1;
    return -1;
  }
  if (emit(&k->e, &k->g.nodes[k->g.nnodes - 1]) != 0) {
    fprintf(stderr, "  emitter of %s failed: %s\n", zoo_ops[op].name, k->e.err);
    k->failed = 1;
    return -1;
  }
  return out;
}

/* Compiles the module for sm_90 and checks every kernel step's function is in
 * the CUBIN. Returns 1 when NVRTC is missing (the caller skips), 0 when all is
 * well, -1 on failure (reported). */
static int kt_compile(kt *k, const char *what) {
  char err[1024];
  if (zoo_nvrtc_load(err, sizeof err) != 0) return 1;
  zoo_cubin cubin = {0};
  if (zoo_nvrtc_compile(k->e.src.s, what, "sm_90", NULL, &cubin, err, sizeof err) != 0) {
    fprintf(stderr, "  %s: %s\n", what, err);
    return -1;
  }
  int status = 0;
  for (int i = 0; i < k->e.nsteps; i++) {
    const zoo_step *s = &k->e.steps[i];
    if (s->kind != ZOO_STEP_KERNEL) continue;
    if (!s->func || !memmem(cubin.data, cubin.size, s->func, strlen(s->func) + 1)) {
      fprintf(stderr, "  %s: kernel %s is not in the CUBIN\n", what, s->func ? s->func : "(null)");
      status = -1;
    }
  }
  zoo_cubin_free(&cubin);
  return status;
}

#define KT_COMPILE(k, what)                                              \
  do {                                                                   \
    int rc_ = kt_compile(k, what);                                       \
    if (rc_ == 1) {                                                      \
      kt_free(k);                                                        \
      SKIP("libnvrtc cannot be loaded");                                 \
    }                                                                    \
    if (rc_ != 0) kt_free(k);                                            \
    CHECK(rc_ == 0);                                                     \
  } while (0)

/* poly_attention and its backward for q, k [B, 12, T, 16], v [B, 12, T, DV],
 * or with the heads interleaved (layout 1) q, k [B, T, 12*16], v [B, T, 12*DV],
 * or with q and k alone interleaved (layout 2); the backward given the
 * forward's o and z, as autodiff makes it, or (saved 0) recomputing them. */
static void add_poly_saved(kt *k, int64_t T, int64_t DV, double c0, double c1, double c2, int layout, int saved) {
  int q, kk, v, dout;
  if (layout != 0) q = KT_F32(k, 2, T, 12 * 16), kk = KT_F32(k, 2, T, 12 * 16);
  else q = KT_F32(k, 2, 12, T, 16), kk = KT_F32(k, 2, 12, T, 16);
  if (layout == 1) v = KT_F32(k, 2, T, 12 * DV), dout = KT_F32(k, 2, T, 12 * DV);
  else v = KT_F32(k, 2, 12, T, DV), dout = KT_F32(k, 2, 12, T, DV);
  zoo_attrs a = {0};
  a.f[0] = c0, a.f[1] = c1, a.f[2] = c2, a.f[3] = 0.25, a.f[4] = 1e-12;
  a.i[0] = layout, a.i[1] = layout != 0 ? 12 : 0;
  int in[4] = {q, kk, v, -1};
  int o = kt_node(k, ZOO_OP_POLY_ATTENTION, zoo_cuda_poly_attention, 3, in, &a);
  int bin[6] = {dout, q, kk, v, o, o + 1};
  kt_node(k, ZOO_OP_POLY_ATTENTION_BWD, zoo_cuda_poly_attention_bwd, saved ? 6 : 4, bin, &a);
}

static void add_poly_layout(kt *k, int64_t T, int64_t DV, double c0, double c1, double c2, int layout) {
  add_poly_saved(k, T, DV, c0, c1, c2, layout, 1);
}

static void add_poly(kt *k, int64_t T, int64_t DV, double c0, double c1, double c2) {
  add_poly_layout(k, T, DV, c0, c1, c2, 0);
}

/* Sets ZOO_POLY_FORM (NULL: unsets it). */
static void poly_form_env(const char *form) {
  if (form) setenv("ZOO_POLY_FORM", form, 1);
  else unsetenv("ZOO_POLY_FORM");
}

TEST(intrinsics_nvrtc_poly_attention) {
  kt k;
  kt_init(&k);
  poly_form_env("quadratic"); /* T = 2048 would take the chunked form */
  char *tiled = zoo_test_env_set("ZOO_POLY_TILED", "0"); /* one row a thread; the tiles below */
  /* ReBased at the shipped (d_model, T): head widths d_model / 12 */
  add_poly(&k, 48, 2, 0, 0, 1);    /* d 32, T 48 */
  add_poly(&k, 128, 5, 0, 0, 1);   /* d 64, T 128 */
  add_poly(&k, 512, 10, 0, 0, 1);  /* d 128, T 512 */
  add_poly(&k, 512, 21, 0, 0, 1);  /* d 256 */
  add_poly(&k, 2048, 42, 0, 0, 1); /* d 512, T 2048 */
  add_poly(&k, 2048, 5, 1, 1, 0.5); /* Based, d 64 */
  add_poly_layout(&k, 48, 2, 0, 0, 1, 1);     /* heads interleaved, as ReBased trains */
  add_poly_layout(&k, 128, 5, 1, 1, 0.5, 1);  /* and Based */
  add_poly_saved(&k, 128, 5, 0, 0, 1, 0, 0);  /* the backward without o, z */
  add_poly_saved(&k, 48, 2, 1, 1, 0.5, 1, 0);
  add_poly_layout(&k, 128, 5, 1, 1, 0.5, 2); /* q and k interleaved, as Based trains with tf32 */
  add_poly_saved(&k, 128, 5, 1, 1, 0.5, 2, 0);
  poly_form_env(NULL);
  zoo_test_env_restore("ZOO_POLY_TILED", tiled);
  CHECK(!k.failed);
  KT_COMPILE(&k, "poly_attention");
  kt_free(&k);
}

/* The quadratic form in two-level tiles (poly_attention_tiled.cu) at every
 * value width, both layouts, ReBased and Based; T past one tile or not. */
TEST(intrinsics_nvrtc_poly_tiled) {
  kt k;
  kt_init(&k);
  poly_form_env("quadratic");
  char *tiled = zoo_test_env_set("ZOO_POLY_TILED", "1");
  int64_t widths[] = {2, 5, 10, 21, 42};
  for (int i = 0; i < 5; i++) add_poly(&k, 512, widths[i], 0, 0, 1);
  add_poly(&k, 2048, 42, 1, 1, 0.5);
  add_poly(&k, 100, 10, 1, 1, 0.5);
  add_poly_layout(&k, 512, 42, 0, 0, 1, 1);
  add_poly_layout(&k, 128, 10, 1, 1, 0.5, 1);
  add_poly_layout(&k, 128, 5, 1, 1, 0.5, 2);
  poly_form_env(NULL);
  zoo_test_env_restore("ZOO_POLY_TILED", tiled);
  CHECK(!k.failed);
  CHECK(strstr(k.e.src.s, "zk_poly_tiled_bwd_kv<16, 42, 512, 12>") != NULL);
  CHECK(strstr(k.e.src.s, "zk_poly_bwd_kv<") == NULL);
  KT_COMPILE(&k, "poly_attention_tiled");
  kt_free(&k);
}

/* The tensor-core kernels (poly_attention_mma.cu), one and three TF32
 * products, at every value width, both layouts, ReBased and Based. */
TEST(intrinsics_nvrtc_poly_mma) {
  const char *splits[2] = {"1", "3"};
  for (int sp = 0; sp < 2; sp++) {
    kt k;
    kt_init(&k);
    poly_form_env("quadratic");
    char *mma = zoo_test_env_set("ZOO_POLY_MMA", splits[sp]);
    int64_t widths[] = {2, 5, 10, 21, 42};
    for (int i = 0; i < 5; i++) add_poly(&k, 512, widths[i], 0, 0, 1);
    add_poly(&k, 2048, 42, 1, 1, 0.5);
    add_poly(&k, 48, 2, 1, 1, 0.5);
    add_poly_layout(&k, 512, 42, 0, 0, 1, 1);
    add_poly_layout(&k, 128, 5, 1, 1, 0.5, 1);
    add_poly_layout(&k, 128, 5, 1, 1, 0.5, 2);
    poly_form_env(NULL);
    zoo_test_env_restore("ZOO_POLY_MMA", mma);
    CHECK(!k.failed);
    char want[64];
    snprintf(want, sizeof want, "zk_poly_mma_bwd_kv<16, 42, 512, 12, %s, 2>", splits[sp]);
    CHECKF(strstr(k.e.src.s, want) != NULL, "%s", want);
    CHECK(strstr(k.e.src.s, "zk_poly_bwd_kv<") == NULL && strstr(k.e.src.s, "zk_poly_tiled_bwd_kv<") == NULL);
    CHECK(strstr(k.e.src.s, "zk_poly_mma_bwd_q<16, 10, 512, 0, 1, 1>") || sp == 1); /* loads ahead to DV 16 */
    KT_COMPILE(&k, "poly_attention_mma");
    kt_free(&k);
  }
}

/* Tensor cores or not: the caller's TF32, the override, what they cannot take. */
TEST(intrinsics_poly_mma_rule) {
  char *saved = zoo_test_env_set("ZOO_POLY_MMA", NULL);
  CHECK(zoo_cuda_poly_mma(512, 16, 42, 0) == 0 && zoo_cuda_poly_mma(512, 16, 42, 1) == 1);
  CHECK(zoo_cuda_poly_mma(64, 16, 2, 1) == 1 && zoo_cuda_poly_mma(63, 16, 2, 1) == 0); /* T >= 64 */
  CHECK(zoo_cuda_poly_mma(512, 12, 42, 1) == 0);   /* F not a multiple of 8 */
  CHECK(zoo_cuda_poly_mma(512, 16, 1000, 1) == 0); /* shared memory */
  setenv("ZOO_POLY_MMA", "3", 1);
  CHECK(zoo_cuda_poly_mma(48, 16, 42, 0) == 3 && zoo_cuda_poly_mma(512, 16, 42, 1) == 3);
  setenv("ZOO_POLY_MMA", "0", 1);
  CHECK(zoo_cuda_poly_mma(512, 16, 42, 1) == 0);
  setenv("ZOO_POLY_MMA", "2", 1); /* not a choice: the rule */
  CHECK(zoo_cuda_poly_mma(512, 16, 42, 1) == 1);
  zoo_test_env_restore("ZOO_POLY_MMA", saved);
}

/* With TF32 products (precision tf32, bf16) T 2048 keeps the quadratic form on
 * the tensor cores at every value width; a forced form, and fp32, keep the
 * chunked one. */
TEST(intrinsics_poly_tf32_long) {
  char *form = zoo_test_env_set("ZOO_POLY_FORM", NULL), *mma = zoo_test_env_set("ZOO_POLY_MMA", NULL);
  /* T 2048: the tensor cores at DV 42 and DV 5 with tf32 (since session 16's tile loads) */
  const char *kinds[4] = {"tf32 DV 42", "tf32 DV 5", "tf32 DV 42, ZOO_POLY_FORM=chunked", "fp32 DV 42"};
  const int tf32[4] = {1, 1, 1, 0}, dv[4] = {42, 5, 42, 42}, want_mma[4] = {1, 1, 0, 0};
  for (int c = 0; c < 4; c++) {
    kt k;
    kt_init(&k);
    k.e.tf32 = tf32[c];
    if (c == 2) setenv("ZOO_POLY_FORM", "chunked", 1);
    add_poly(&k, 2048, dv[c], 0, 0, 1);
    unsetenv("ZOO_POLY_FORM");
    CHECK(!k.failed);
    int mma_kernels = strstr(k.e.src.s, "zk_poly_mma_fwd<") != NULL && strstr(k.e.src.s, "zk_poly_mma_bwd_kv<") != NULL;
    int chunked = strstr(k.e.src.s, "zk_poly_chunked_fwd<") != NULL;
    CHECKF(mma_kernels == want_mma[c] && chunked == !want_mma[c], "%s: tensor cores %d, chunked %d", kinds[c],
           mma_kernels, chunked);
    kt_free(&k);
  }
  zoo_test_env_restore("ZOO_POLY_FORM", form);
  zoo_test_env_restore("ZOO_POLY_MMA", mma);
}

/* Rows or tiles: the rule, the override, the shapes the tiles cannot take. */
TEST(intrinsics_poly_tiled_rule) {
  char *saved = zoo_test_env_set("ZOO_POLY_TILED", NULL);
  CHECK(zoo_cuda_poly_tiled(512, 16, ZOO_POLY_TILED_MIN_DV) == 1);
  CHECK(zoo_cuda_poly_tiled(512, 16, ZOO_POLY_TILED_MIN_DV - 1) == 0);
  CHECK(zoo_cuda_poly_tiled(63, 16, 42) == 0);
  CHECK(zoo_cuda_poly_tiled(512, 12, 42) == 0); /* F not a multiple of 8 */
  setenv("ZOO_POLY_TILED", "1", 1);
  CHECK(zoo_cuda_poly_tiled(48, 16, 2) == 1);
  CHECK(zoo_cuda_poly_tiled(512, 16, 600) == 0); /* shared memory */
  setenv("ZOO_POLY_TILED", "0", 1);
  CHECK(zoo_cuda_poly_tiled(512, 16, 42) == 0);
  zoo_test_env_restore("ZOO_POLY_TILED", saved);
}

/* The chunked form (poly_attention_chunked.cu) at every value width, ReBased
 * and Based, and a T that ends in a partial chunk. */
/* linear_layernorm at ReBased's q, k shapes (d_model 32, 48, 64; 12 heads of
 * 16) and without heads, g or b. */
TEST(intrinsics_nvrtc_linear_layernorm) {
  kt k;
  kt_init(&k);
  int64_t widths[] = {32, 48, 64};
  for (int i = 0; i < 3; i++) {
    int x = KT_F32(&k, 2, 48, widths[i]), w = KT_F32(&k, 192, widths[i]), g = KT_F32(&k, 192), b = KT_F32(&k, 192);
    zoo_attrs a = {0};
    a.f[0] = 1e-5, a.i[0] = 12;
    kt_node(&k, ZOO_OP_LINEAR_LAYERNORM, zoo_cuda_linear_layernorm, 4, (int[]){x, w, g, b}, &a);
  }
  int x = KT_F32(&k, 100, 20), w = KT_F32(&k, 64, 20);
  zoo_attrs a = {0};
  a.f[0] = 1e-5;
  kt_node(&k, ZOO_OP_LINEAR_LAYERNORM, zoo_cuda_linear_layernorm, 2, (int[]){x, w}, &a);
  CHECK(!k.failed && k.e.nsteps == 4 && k.e.steps[0].smem == 32 * 193 * 4);
  CHECK(strstr(k.e.src.s, "zk_linear_layernorm<64, 192, true, true, 12, 48, 4>") != NULL);
  KT_COMPILE(&k, "linear_layernorm");
  kt_free(&k);
}

TEST(intrinsics_nvrtc_poly_chunked) {
  kt k;
  kt_init(&k);
  poly_form_env("chunked");
  int64_t widths[] = {2, 5, 10, 21, 42};
  for (int i = 0; i < 5; i++) add_poly(&k, 2048, widths[i], 0, 0, 1);
  add_poly(&k, 2048, 5, 1, 1, 0.5);
  add_poly(&k, 2048, 42, 1, 1, 0.5);
  add_poly(&k, 100, 42, 0, 0, 1);
  add_poly_layout(&k, 2048, 42, 0, 0, 1, 1); /* heads interleaved */
  add_poly_layout(&k, 2048, 5, 1, 1, 0.5, 1);
  add_poly_layout(&k, 2048, 5, 1, 1, 0.5, 2); /* q and k interleaved */
  poly_form_env(NULL);
  CHECK(!k.failed);
  CHECK(strstr(k.e.src.s, ", 2048, -12>(") != NULL); /* HI = -H: layout 2 */
  KT_COMPILE(&k, "poly_attention_chunked");
  kt_free(&k);
}

/* The choice of form: the threshold, the override, its errors. */
TEST(intrinsics_poly_form) {
  zoo_poly_form f;
  char err[256];
  poly_form_env(NULL);
  CHECK(zoo_cuda_poly_form(ZOO_POLY_CHUNKED_MIN_T - 1, 16, 42, 0, 0, 1, 0, &f, err, sizeof err) == 0 &&
        f == ZOO_POLY_QUADRATIC);
  CHECK(zoo_cuda_poly_form(ZOO_POLY_CHUNKED_MIN_T, 16, 42, 0, 0, 1, 0, &f, err, sizeof err) == 0 &&
        f == ZOO_POLY_CHUNKED);
  CHECK(zoo_cuda_poly_form(ZOO_POLY_CHUNKED_MIN_T, 16, 5, 1, 1, 0.5, 0, &f, err, sizeof err) == 0 &&
        f == ZOO_POLY_CHUNKED);
  /* with TF32 products the tensor cores' quadratic form up to T 2048, at
   * either width */
  CHECK(zoo_cuda_poly_form(2048, 16, 5, 0, 0, 1, 1, &f, err, sizeof err) == 0 && f == ZOO_POLY_QUADRATIC);
  CHECK(zoo_cuda_poly_form(2048, 16, 42, 0, 0, 1, 1, &f, err, sizeof err) == 0 && f == ZOO_POLY_QUADRATIC);
  CHECK(zoo_cuda_poly_form(4096, 16, 5, 0, 0, 1, 1, &f, err, sizeof err) == 0 && f == ZOO_POLY_CHUNKED);
  CHECK(zoo_cuda_poly_form(2048, 16, 5, 0, 0, 1, 0, &f, err, sizeof err) == 0 && f == ZOO_POLY_CHUNKED);
  /* no features (all coefficients 0), or a state too wide: quadratic */
  CHECK(zoo_cuda_poly_form(4096, 16, 42, 0, 0, 0, 0, &f, err, sizeof err) == 0 && f == ZOO_POLY_QUADRATIC);
  CHECK(zoo_cuda_poly_form(4096, 64, 42, 0, 0, 1, 0, &f, err, sizeof err) == 0 && f == ZOO_POLY_QUADRATIC);
  poly_form_env("quadratic");
  CHECK(zoo_cuda_poly_form(4096, 16, 42, 0, 0, 1, 0, &f, err, sizeof err) == 0 && f == ZOO_POLY_QUADRATIC);
  poly_form_env("chunked");
  CHECK(zoo_cuda_poly_form(48, 16, 2, 0, 0, 1, 0, &f, err, sizeof err) == 0 && f == ZOO_POLY_CHUNKED);
  CHECK(zoo_cuda_poly_form(48, 16, 2, 0, 0, 0, 0, &f, err, sizeof err) == -1);
  CHECKF(strstr(err, "cannot run") != NULL, "%s", err);
  poly_form_env("auto");
  CHECK(zoo_cuda_poly_form(4096, 16, 42, 0, 0, 1, 0, &f, err, sizeof err) == 0 && f == ZOO_POLY_CHUNKED);
  poly_form_env("fast");
  CHECK(zoo_cuda_poly_form(4096, 16, 42, 0, 0, 1, 0, &f, err, sizeof err) == -1);
  CHECKF(strcmp(err, "ZOO_POLY_FORM=fast: expected quadratic, chunked or auto") == 0, "%s", err);
  poly_form_env(NULL);
}

/* softmax_attention and its backward, given the forward's o and lse (as
 * autodiff makes it) or (saved 0) recomputing them */
static void add_sattn_saved(kt *k, int64_t B, int64_t T, int64_t d, double p, int saved) {
  int q = KT_F32(k, B, 1, T, d), kk = KT_F32(k, B, 1, T, d), v = KT_F32(k, B, 1, T, d);
  int dout = KT_F32(k, B, 1, T, d);
  zoo_attrs a = {0};
  a.f[0] = 1.0 / sqrt((double)d), a.f[1] = p, a.i[0] = 3, a.i[1] = 1;
  int in[4] = {q, kk, v, -1};
  int o = kt_node(k, ZOO_OP_SOFTMAX_ATTENTION, zoo_cuda_softmax_attention, 3, in, &a);
  int bin[6] = {dout, q, kk, v, o, o + 1};
  kt_node(k, ZOO_OP_SOFTMAX_ATTENTION_BWD, zoo_cuda_softmax_attention_bwd, saved ? 6 : 4, bin, &a);
}

static void add_sattn(kt *k, int64_t B, int64_t T, int64_t d, double p) { add_sattn_saved(k, B, T, d, p, 1); }

/* softmax_attention_packed (qkv [B, T, 3*H*d]) and its backward, as autodiff
 * makes it (o and lse saved) or (saved 0) without them */
static void add_sattn_packed(kt *k, int64_t B, int64_t T, int64_t H, int64_t d, int saved) {
  int x = KT_F32(k, B, T, 3 * H * d), dout = KT_F32(k, B, T, H * d);
  zoo_attrs a = {0};
  a.f[0] = 1.0 / sqrt((double)d), a.f[1] = 0.1, a.i[0] = 3, a.i[1] = 1, a.i[2] = H;
  int o = kt_node(k, ZOO_OP_SOFTMAX_ATTENTION_PACKED, zoo_cuda_softmax_attention_packed, 1, &x, &a);
  int bin[4] = {dout, x, o, o + 1};
  kt_node(k, ZOO_OP_SOFTMAX_ATTENTION_PACKED_BWD, zoo_cuda_softmax_attention_packed_bwd, saved ? 4 : 2, bin, &a);
}

TEST(intrinsics_nvrtc_softmax_attention) {
  kt k;
  kt_init(&k);
  add_sattn(&k, 4, 128, 64, 0.1); /* conv_attention d 64 */
  add_sattn(&k, 2, 512, 128, 0.1);
  add_sattn(&k, 2, 512, 256, 0.0); /* no dropout: no seed argument */
  add_sattn(&k, 1, 2048, 512, 0.1);
  add_sattn(&k, 2, 48, 32, 0.1);
  add_sattn_saved(&k, 4, 128, 64, 0.1, 0); /* the backward without o, lse */
  add_sattn_packed(&k, 4, 128, 1, 64, 1);   /* conv_attention's, packed */
  add_sattn_packed(&k, 2, 100, 4, 16, 0);
  CHECK(!k.failed);
  CHECK(strstr(k.e.src.s, ", true, true, 0>(dout, q, k, v, o, lse, dq") != NULL &&
        strstr(k.e.src.s, ", true, false, 0>(dout, q, k, v, nullptr, nullptr, dq") != NULL &&
        strstr(k.e.src.s, ", true, true, 1>(dout, q, k, v, o, lse, dq") != NULL &&
        strstr(k.e.src.s, ", true, false, 4>(dout, q, k, v, nullptr, nullptr, dq") != NULL);
  KT_COMPILE(&k, "softmax_attention");
  kt_free(&k);
}

static void add_lce(kt *k, int64_t B, int64_t T, int64_t D) {
  int h = KT_F32(k, B, T, D), w = KT_F32(k, 8192, D), t = KT_I32(k, B, T), dl = kt_scalar(k);
  zoo_attrs a = {0};
  a.i[0] = -100;
  int in[3] = {h, w, t};
  kt_node(k, ZOO_OP_LINEAR_CROSS_ENTROPY, zoo_cuda_linear_cross_entropy, 3, in, &a);
  int bin[4] = {dl, h, w, t};
  kt_node(k, ZOO_OP_LINEAR_CROSS_ENTROPY_BWD, zoo_cuda_linear_cross_entropy_bwd, 4, bin, &a);
  kt_node(k, ZOO_OP_ACCURACY, zoo_cuda_accuracy, 3, in, &a); /* the fused head's metrics */
}

TEST(intrinsics_nvrtc_linear_cross_entropy) {
  kt k;
  kt_init(&k);
  add_lce(&k, 512, 48, 32);
  add_lce(&k, 512, 128, 64);
  add_lce(&k, 256, 512, 128);
  add_lce(&k, 64, 2048, 512);
  CHECK(!k.failed);
  KT_COMPILE(&k, "linear_cross_entropy");
  kt_free(&k);
}

/* linear_cross_entropy_step (h [M, D], w [V, D], targets [M], dloss): with
 * dlogits and dh kept (the training step) or read by nothing (evaluation). */
static void add_lce_step(kt *k, int64_t M, int64_t D, int64_t V, int grad) {
  int h = KT_F32(k, M, D), w = KT_F32(k, V, D), t = KT_I32(k, M), dl = kt_scalar(k);
  zoo_attrs a = {0};
  a.i[0] = -100;
  int in[4] = {h, w, t, dl};
  static unsigned char all[256];
  memset(all, 1, sizeof all);
  k->e.keep = grad ? all : NULL;
  kt_node(k, ZOO_OP_LINEAR_CROSS_ENTROPY_STEP, zoo_cuda_linear_cross_entropy_step, 4, in, &a);
  k->e.keep = NULL;
}

/* the compacted head of rebased at d_model 32, L 48 (M = 12 rows x 512) and
 * d_model 64, L 128 (16 x 512), D of 24 (not a power of 2), the evaluation
 * kernels */
TEST(intrinsics_nvrtc_lce_step) {
  kt k;
  kt_init(&k);
  add_lce_step(&k, 6144, 32, 8192, 1);
  add_lce_step(&k, 8192, 64, 8192, 1);
  add_lce_step(&k, 6144, 24, 8192, 1);
  add_lce_step(&k, 6144, 32, 8192, 0);
  add_lce_step(&k, 8192, 64, 8192, 0);
  CHECK(!k.failed);
  KT_COMPILE(&k, "linear_cross_entropy_step");
  kt_free(&k);
}

/* Its launches: count, rows, finish (rows and finish alone without a
 * gradient), sharing one scratch area; the block height for M = 6144 on 132
 * SMs (48 rows: 128 blocks, one wave); dynamic shared memory over 48 KB; the
 * shapes the kernel cannot take are refused with their sizes. */
TEST(intrinsics_emit_lce_step) {
  kt k;
  kt_init(&k);
  add_lce_step(&k, 6144, 32, 8192, 1);
  CHECK(!k.failed && k.e.nsteps == 3);
  const zoo_step *c = &k.e.steps[0], *r = &k.e.steps[1], *f = &k.e.steps[2];
  CHECK(c->grid[0] == 1 && c->block[0] == 1024 && c->nargs == 2);
  CHECK(r->grid[0] == 128 && r->block[0] == 256 && r->nargs == 9 && r->smem > 48 * 1024);
  CHECK(r->args[7].tensor == k.g.nodes[0].out[2] && r->args[8].tensor == k.g.nodes[0].out[3]);
  CHECK(f->nargs == 5 && f->args[3].tensor == k.g.nodes[0].out[0] && f->args[4].tensor == k.g.nodes[0].out[1]);
  CHECK(c->scratch_bytes == 16 + 2 * 6144 * 4 && r->scratch_bytes == c->scratch_bytes && f->scratch_bytes == c->scratch_bytes);
  CHECK(strstr(k.e.src.s, "zk_lcs_rows<32, 8192, 48, -100, true, true>") != NULL);
  CHECK(strstr(k.e.src.s, "__launch_bounds__(256, 1)") != NULL);
  add_lce_step(&k, 6144, 32, 8192, 0);
  CHECK(!k.failed && k.e.nsteps == 5 && k.e.steps[3].nargs == 7 && k.e.steps[3].smem < r->smem);
  CHECK(strstr(k.e.src.s, "zk_lcs_rows<32, 8192, 48, -100, false, false>") != NULL);
  add_lce_step(&k, 70, 8, 256, 1); /* few rows: the smallest blocks */
  CHECK(!k.failed && k.e.nsteps == 8 && k.e.steps[6].grid[0] == 5);
  CHECK(strstr(k.e.src.s, "zk_lcs_rows<8, 256, 16, -100, true, true>") != NULL);
  kt_free(&k);

  int64_t bad[2][2] = {{6, 256}, {32, 200}}; /* D not a multiple of 4; V not of 128 */
  for (int i = 0; i < 2; i++) {
    kt_init(&k);
    int h = KT_F32(&k, 10, bad[i][0]), w = KT_F32(&k, bad[i][1], bad[i][0]), tg = KT_I32(&k, 10), dl = kt_scalar(&k);
    int in[4] = {h, w, tg, dl};
    CHECK(zoo_graph_node(&k.g, ZOO_OP_LINEAR_CROSS_ENTROPY_STEP, 4, in, NULL, zoo_nospan, &k.d) >= 0);
    CHECK(zoo_cuda_linear_cross_entropy_step(&k.e, &k.g.nodes[0]) != 0);
    CHECK(strstr(k.e.err, "D a multiple of 4 up to 64") != NULL);
    kt_free(&k);
  }
}

/* The tensor-core form (the emit's tf32, as precision tf32 and bf16 set it):
 * the same shapes compile for sm_90. */
TEST(intrinsics_nvrtc_lce_step_tc) {
  kt k;
  kt_init(&k);
  k.e.tf32 = 1;
  add_lce_step(&k, 6144, 32, 8192, 1);
  add_lce_step(&k, 8192, 64, 8192, 1);
  add_lce_step(&k, 6144, 24, 8192, 1);
  add_lce_step(&k, 6144, 20, 8192, 1); /* D padded to 24 */
  add_lce_step(&k, 6144, 32, 8192, 0);
  CHECK(!k.failed);
  KT_COMPILE(&k, "linear_cross_entropy_step (tensor cores)");
  kt_free(&k);
}

/* Its launches: count, stats, lse, grad and finish sharing one scratch area,
 * then the GEMM of dh = dlogits w; the vocabulary groups for M = 6144 (48
 * row tiles, 5 groups: 240 blocks); the evaluation's stats, lse and finish. */
TEST(intrinsics_emit_lce_step_tc) {
  kt k;
  kt_init(&k);
  k.e.tf32 = 1;
  char *saved = zoo_test_env_set("ZOO_LCE_STEP_FORM", NULL);
  add_lce_step(&k, 6144, 32, 8192, 1);
  CHECK(!k.failed && k.e.nsteps == 6);
  const zoo_step *st = k.e.steps;
  CHECK(st[1].grid[0] == 48 && st[1].grid[1] == 5 && st[3].grid[0] == 48 && st[3].grid[1] == 5);
  CHECK(st[1].smem > 48 * 1024 && st[1].smem == st[3].smem);
  for (int i = 1; i < 5; i++) CHECK(st[i].kind == ZOO_STEP_KERNEL && st[i].scratch_bytes == st[0].scratch_bytes);
  const zoo_gemm *gm = &st[5].gemm;
  CHECK(st[5].kind == ZOO_STEP_GEMM && gm->a == k.g.nodes[0].out[2] && gm->b == k.g.nodes[0].in[1]);
  CHECK(gm->c == k.g.nodes[0].out[3] && gm->m == 6144 && gm->n == 32 && gm->k == 8192 && !gm->trans_a && !gm->trans_b);
  CHECK(strstr(k.e.src.s, "zk_lctc_stats<32, 8192, -100, 6144, 5>") != NULL);
  add_lce_step(&k, 6144, 32, 8192, 0);
  CHECK(!k.failed && k.e.nsteps == 9);
  setenv("ZOO_LCE_STEP_FORM", "rows", 1); /* the fp32 kernel even so */
  add_lce_step(&k, 6144, 32, 8192, 1);
  CHECK(!k.failed && k.e.nsteps == 12 && strstr(k.e.src.s, "zk_lcs_rows<32, 8192, 48") != NULL);
  setenv("ZOO_LCE_STEP_FORM", "fast", 1);
  CHECK(zoo_cuda_linear_cross_entropy_step(&k.e, &k.g.nodes[0]) != 0 && strstr(k.e.err, "ZOO_LCE_STEP_FORM=fast"));
  zoo_test_env_restore("ZOO_LCE_STEP_FORM", saved);
  kt_free(&k);
}

TEST(intrinsics_nvrtc_norms) {
  kt k;
  kt_init(&k);
  zoo_attrs a = {0};
  a.f[0] = 1e-5;
  int64_t widths[] = {32, 64, 128, 192, 256, 512};
  for (int i = 0; i < 6; i++) {
    int64_t C = widths[i];
    int x = KT_F32(&k, 8, 128, C), dy = KT_F32(&k, 8, 128, C), w = KT_F32(&k, C), b = KT_F32(&k, C);
    int in3[3] = {x, w, b};
    kt_node(&k, ZOO_OP_LAYERNORM, zoo_cuda_layernorm, 3, in3, &a);
    int bin[3] = {dy, x, w};
    kt_node(&k, ZOO_OP_LAYERNORM_BWD, zoo_cuda_layernorm_bwd, 3, bin, &a);
    kt_node(&k, ZOO_OP_LAYERNORM, zoo_cuda_layernorm, 1, in3, &a); /* no affine */
    kt_node(&k, ZOO_OP_LAYERNORM_BWD, zoo_cuda_layernorm_bwd, 2, bin, &a);
    int rin[2] = {x, w};
    kt_node(&k, ZOO_OP_RMSNORM, zoo_cuda_rmsnorm, 2, rin, &a);
    kt_node(&k, ZOO_OP_RMSNORM_BWD, zoo_cuda_rmsnorm_bwd, 3, bin, &a);
  }
  CHECK(!k.failed);
  KT_COMPILE(&k, "norms");
  kt_free(&k);
}

TEST(intrinsics_nvrtc_rows) {
  kt k;
  kt_init(&k);
  zoo_attrs a = {0};
  a.i[0] = -100;
  int64_t shapes[][2] = {{512, 48}, {64, 2048}};
  for (int i = 0; i < 2; i++) {
    int x = KT_F32(&k, shapes[i][0], shapes[i][1], 8192), tg = KT_I32(&k, shapes[i][0], shapes[i][1]);
    int dl = kt_scalar(&k);
    int in[2] = {x, tg};
    kt_node(&k, ZOO_OP_CROSS_ENTROPY, zoo_cuda_cross_entropy, 2, in, &a);
    int bin[3] = {dl, x, tg};
    kt_node(&k, ZOO_OP_CROSS_ENTROPY_BWD, zoo_cuda_cross_entropy_bwd, 3, bin, &a);
    kt_node(&k, ZOO_OP_ACCURACY, zoo_cuda_accuracy, 2, in, &a);
    kt_node(&k, ZOO_OP_SOFTMAX, zoo_cuda_softmax, 1, in, &a);
    kt_node(&k, ZOO_OP_LOGSUMEXP, zoo_cuda_logsumexp, 1, in, &a);
    kt_node(&k, ZOO_OP_ARGMAX, zoo_cuda_argmax, 1, in, &a);
    /* cross_entropy_step with dlogits (kept, as a reader would) and without */
    int sin[3] = {x, tg, dl};
    static unsigned char all[256];
    memset(all, 1, sizeof all);
    k.e.keep = all;
    kt_node(&k, ZOO_OP_CROSS_ENTROPY_STEP, zoo_cuda_cross_entropy_step, 3, sin, &a);
    k.e.keep = NULL;
    kt_node(&k, ZOO_OP_CROSS_ENTROPY_STEP, zoo_cuda_cross_entropy_step, 3, sin, &a);
  }
  int small = KT_F32(&k, 4, 7, 5); /* a row narrower than a warp */
  zoo_attrs none = {0};
  kt_node(&k, ZOO_OP_SOFTMAX, zoo_cuda_softmax, 1, &small, &none);
  kt_node(&k, ZOO_OP_ARGMAX, zoo_cuda_argmax, 1, &small, &none);
  CHECK(!k.failed);
  KT_COMPILE(&k, "rows");
  kt_free(&k);
}

TEST(intrinsics_nvrtc_conv_embedding_cumsum) {
  kt k;
  kt_init(&k);
  int64_t dms[] = {32, 64, 128, 512};
  for (int i = 0; i < 4; i++) {
    int64_t D = dms[i], T = i == 3 ? 2048 : 128;
    int x = KT_F32(&k, 4, T, D), dy = KT_F32(&k, 4, T, D), w = KT_F32(&k, D, 1, 3), b = KT_F32(&k, D);
    zoo_attrs none = {0};
    int in[3] = {x, w, b};
    kt_node(&k, ZOO_OP_CAUSAL_CONV1D, zoo_cuda_causal_conv1d, 3, in, &none);
    kt_node(&k, ZOO_OP_CAUSAL_CONV1D, zoo_cuda_causal_conv1d, 2, in, &none);
    int bin[3] = {dy, x, w};
    kt_node(&k, ZOO_OP_CAUSAL_CONV1D_BWD, zoo_cuda_causal_conv1d_bwd, 3, bin, &none);

    int ew = KT_F32(&k, 8192, D), ids = KT_I32(&k, 4, T), pw = KT_F32(&k, T, D), pos = KT_I32(&k, T);
    int ein[2] = {ew, ids};
    kt_node(&k, ZOO_OP_EMBEDDING, zoo_cuda_embedding, 2, ein, &none);
    int pin[2] = {pw, pos};
    kt_node(&k, ZOO_OP_EMBEDDING, zoo_cuda_embedding, 2, pin, &none);
    zoo_attrs ea = {0};
    ea.ndim = 2, ea.dims[0] = zoo_dim_const(8192), ea.dims[1] = zoo_dim_const(D);
    int bein[2] = {dy, ids};
    kt_node(&k, ZOO_OP_EMBEDDING_BWD, zoo_cuda_embedding_bwd, 2, bein, &ea);

    for (int axis = -1; axis <= 1; axis++) {
      zoo_attrs ca = {0};
      ca.i[0] = axis;
      kt_node(&k, ZOO_OP_CUMSUM, zoo_cuda_cumsum, 1, &x, &ca);
    }
  }
  CHECK(!k.failed);
  KT_COMPILE(&k, "conv_embedding_cumsum");
  kt_free(&k);
}

/* ---------------------------------------------------------------------------
 * Emitters without NVRTC */

TEST(intrinsics_sources_embedded) {
  const char *files[] = {"common.cu", "poly_attention.cu", "poly_attention_chunked.cu", "softmax_attention.cu",
                         "linear_cross_entropy.cu", "causal_conv1d.cu", "layernorm.cu",
                         "rmsnorm.cu", "softmax.cu", "cross_entropy.cu", "embedding.cu",
                         "cumsum.cu", "linear_cross_entropy_step.cu", "gemm.cu", "rng.h"};
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
    const char *s = zoo_kernel_source(files[i]);
    CHECKF(s != NULL && strlen(s) > 100, "%s", files[i]);
  }
  CHECK(zoo_kernel_source("nope.cu") == NULL);
  /* the embedded text is the file, byte for byte */
  char *disk = zoo_test_read("runtime/kernels/poly_attention.cu", NULL);
  if (disk) {
    int same = strcmp(disk, zoo_kernel_source("poly_attention.cu")) == 0;
    free(disk);
    CHECK(same);
  }
}

TEST(intrinsics_emit_steps) {
  kt k;
  kt_init(&k);
  add_poly(&k, 128, 5, 0, 0, 1);
  add_poly(&k, 512, 10, 0, 0, 1);
  CHECK(!k.failed);
  /* each kernel file once, whatever the number of nodes */
  CHECK(zoo_test_count(k.e.src.s, "#define ZK_COMMON_CU\n") == 1);
  CHECK(zoo_test_count(k.e.src.s, "#define ZK_POLY_ATTENTION_CU\n") == 1);
  /* forward: one launch (two query slabs of 64 per block at T = 128); backward:
   * two sharing one scratch area of dn, dd */
  CHECK(k.e.nsteps == 6);
  const zoo_step *f = &k.e.steps[0], *q = &k.e.steps[1], *kv = &k.e.steps[2];
  CHECK(f->kind == ZOO_STEP_KERNEL && f->nargs == 5 && f->scratch_bytes == 0); /* q, k, v -> o, z */
  CHECK(f->grid[0] == 2 * 12 * 1 && f->block[0] == 64 && f->grid[1] == 1 && f->block[1] == 1);
  CHECK(q->scratch_bytes == 2 * 12 * 128 * 6 * 4 && kv->scratch_bytes == q->scratch_bytes);
  /* bwd_q: do, q, k, v, o, z -> dq, scratch */
  CHECK(q->nargs == 8 && q->args[7].kind == ZOO_ARG_SCRATCH && kv->args[3].kind == ZOO_ARG_SCRATCH);
  CHECK(strstr(k.e.src.s, "zk_poly_bwd_q<16, 5, 64, 2, 128, 0, true>(dout, q, k, v, o, z, dq, stats") != NULL);
  CHECK(strstr(k.e.src.s, "zk_poly_fwd<16, 5, 64, 2, 128, 0, 8>") != NULL);
  CHECK(f->func && strstr(k.e.src.s, f->func) != NULL);
  CHECK(strstr(k.e.src.s, "zk_poly_fwd<16, 10, 64, 2, 512, 0, 8>") != NULL);
  kt_free(&k);

  /* DV 42: the two-level tiles, 8 query tiles of 64 a pair, 128 threads, the
   * same scratch; dynamic shared memory past 48 KB for dk, dv */
  kt_init(&k);
  add_poly(&k, 512, 42, 0, 0, 1);
  CHECK(!k.failed && k.e.nsteps == 3);
  const zoo_step *tf = &k.e.steps[0], *tq = &k.e.steps[1], *tkv = &k.e.steps[2];
  CHECK(strstr(k.e.src.s, "zk_poly_tiled_fwd<16, 42, 512, 0>") != NULL);
  CHECK(tf->grid[0] == 2 * 12 * 8 && tf->block[0] == 128 && tq->grid[0] == tf->grid[0] && tkv->grid[0] == tf->grid[0]);
  CHECK(tf->smem == (2 * 16 + 48 + 64) * 68 * 4 && tkv->smem == ((2 * 16 + 2 * 48 + 128) * 68 + 64) * 4);
  CHECK(tq->scratch_bytes == 2 * 12 * 512 * 43 * 4 && tkv->scratch_bytes == tq->scratch_bytes);
  CHECK(tq->nargs == 8 && tq->args[7].kind == ZOO_ARG_SCRATCH && tkv->args[3].kind == ZOO_ARG_SCRATCH);
  kt_free(&k);

  /* the heads interleaved (layout 1): the same launches and scratch, HI = 12 */
  kt_init(&k);
  add_poly_layout(&k, 128, 5, 0, 0, 1, 1);
  CHECK(!k.failed && k.e.nsteps == 3);
  f = &k.e.steps[0], q = &k.e.steps[1], kv = &k.e.steps[2];
  CHECK(f->grid[0] == 2 * 12 * 1 && f->block[0] == 64 && q->grid[0] == f->grid[0] && kv->grid[0] == f->grid[0]);
  CHECK(q->scratch_bytes == 2 * 12 * 128 * 6 * 4 && kv->scratch_bytes == q->scratch_bytes);
  CHECK(strstr(k.e.src.s, "zk_poly_fwd<16, 5, 64, 2, 128, 12, 8>") != NULL);
  CHECK(strstr(k.e.src.s, "zk_poly_bwd_q<16, 5, 64, 2, 128, 12, true>") != NULL);
  CHECK(strstr(k.e.src.s, "zk_poly_bwd_kv<16, 5, 64, 2, 128, 12>") != NULL);
  kt_free(&k);

  /* the chunked form at T = 2048: one block of 256 threads per pair, dynamic
   * shared memory over 48 KB for the backward, the same scratch of g_i */
  kt_init(&k);
  add_poly(&k, 2048, 42, 0, 0, 1);
  CHECK(!k.failed);
  CHECK(zoo_test_count(k.e.src.s, "#define ZK_POLY_ATTENTION_CHUNKED_CU\n") == 1);
  CHECK(zoo_test_count(k.e.src.s, "#define ZK_POLY_ATTENTION_CU\n") == 0);
  CHECK(k.e.nsteps == 3);
  f = &k.e.steps[0], q = &k.e.steps[1], kv = &k.e.steps[2];
  CHECK(f->grid[0] == 2 * 12 && f->block[0] == 256 && f->scratch_bytes == 0 && f->smem > 0);
  CHECK(q->smem > 48 * 1024 && kv->smem > 48 * 1024);
  CHECK(q->scratch_bytes == 2 * 12 * 2048 * 43 * 4 && kv->scratch_bytes == q->scratch_bytes);
  /* the chunked bwd_q recomputes n_i, d_i as it walks (it needs the state
   * anyway): do, q, k, v -> dq, scratch */
  CHECK(q->nargs == 6 && q->args[5].kind == ZOO_ARG_SCRATCH && kv->args[3].kind == ZOO_ARG_SCRATCH);
  CHECK(strstr(k.e.src.s, "zk_poly_chunked_fwd<16, 42, 64, 256, false, false, true, 2048, 0>") != NULL);
  kt_free(&k);
  kt_init(&k);
  add_poly_layout(&k, 2048, 42, 0, 0, 1, 1);
  CHECK(!k.failed && k.e.nsteps == 3 && k.e.steps[0].grid[0] == 2 * 12);
  CHECK(k.e.steps[1].scratch_bytes == 2 * 12 * 2048 * 43 * 4);
  CHECK(strstr(k.e.src.s, "zk_poly_chunked_fwd<16, 42, 64, 256, false, false, true, 2048, 12>") != NULL);
  CHECK(strstr(k.e.src.s, "zk_poly_chunked_bwd_kv<16, 42, 64, 256, false, false, true, 2048, 12>") != NULL);
  kt_free(&k);

  /* dropout brings rng.h and a seed argument; its absence neither */
  kt_init(&k);
  add_sattn(&k, 2, 128, 64, 0.1);
  CHECK(!k.failed);
  CHECK(zoo_test_count(k.e.src.s, "#define ZOO_RNG_H\n") == 1);
  CHECK(k.e.nsteps == 3);
  CHECK(k.e.steps[0].args[k.e.steps[0].nargs - 1].kind == ZOO_ARG_SEED);
  CHECK(k.e.steps[2].args[k.e.steps[2].nargs - 1].kind == ZOO_ARG_SEED);
  /* <F, DV, BR, BS, T, ...>: 64 queries (keys in bwd_kv) a block, dynamic
   * shared memory over 48 KB for the backward */
  CHECK(strstr(k.e.src.s, "<64, 64, 64, 32, 128, true, true, 0>") != NULL);
  CHECK(k.e.steps[0].grid[0] == 2 * 2 && k.e.steps[1].grid[0] == 2 * 2 && k.e.steps[2].grid[0] == 2 * 2);
  CHECK(k.e.steps[0].smem == 4 * (96 * 68 + 32 * 68 + 64 * 36));
  CHECK(k.e.steps[1].smem > 48 * 1024 && k.e.steps[2].smem == k.e.steps[1].smem + 4 * 64);
  add_sattn(&k, 2, 128, 64, 0.0);
  CHECK(k.e.steps[3].args[k.e.steps[3].nargs - 1].kind == ZOO_ARG_TENSOR);
  kt_free(&k);

  /* the fused loss: compaction, per-row pass, finish; backward clears dh;
   * accuracy (h, w, t): compaction, argmax pass, finish */
  kt_init(&k);
  add_lce(&k, 8, 128, 64);
  CHECK(!k.failed);
  CHECK(k.e.nsteps == 3 + 5 + 3);
  CHECK(k.e.steps[3].kind == ZOO_STEP_ZERO && k.e.steps[3].gemm.c == k.g.nodes[1].out[0]);
  CHECK(strstr(k.e.src.s, "zk_lce_argmax_rows<64, 8192, 16>") != NULL);
  CHECK(k.e.steps[10].nargs == 3 && k.e.steps[10].args[2].tensor == k.g.nodes[2].out[0]);
  /* every kernel declares the scratch, and the scratch steps of a node are
   * consecutive (the plan shares one area only along such a run) */
  for (int i = 0; i < k.e.nsteps; i++) {
    const zoo_step *s = &k.e.steps[i];
    if (s->kind == ZOO_STEP_KERNEL) CHECK(s->scratch_bytes >= 2 * 8 * 128 * 4);
    if (i > 0 && i + 1 < k.e.nsteps && s->node == k.e.steps[i - 1].node &&
        s->node == k.e.steps[i + 1].node && k.e.steps[i - 1].scratch_bytes > 0)
      CHECK(s->scratch_bytes > 0);
  }
  kt_free(&k);

  /* layernorm_bwd without w: dw and db cleared, no reduction kernel */
  kt_init(&k);
  zoo_attrs a = {0};
  a.f[0] = 1e-5;
  int x = KT_F32(&k, 4, 16, 48), dy = KT_F32(&k, 4, 16, 48);
  int bin[2] = {dy, x};
  kt_node(&k, ZOO_OP_LAYERNORM_BWD, zoo_cuda_layernorm_bwd, 2, bin, &a);
  CHECK(!k.failed);
  CHECK(k.e.nsteps == 3 && k.e.steps[1].kind == ZOO_STEP_ZERO && k.e.steps[2].kind == ZOO_STEP_ZERO);
  kt_free(&k);
}

/* wkv4 and its backward (both bf16 modes) at the shipped sizes: C = d_model,
 * T = seq_len, B the micro-batch. */
static void add_wkv4(kt *k, int64_t B, int64_t T, int64_t C, int bf16) {
  int w = KT_F32(k, C), u = KT_F32(k, C), kk = KT_F32(k, B, T, C), v = KT_F32(k, B, T, C);
  int dy = KT_F32(k, B, T, C);
  zoo_attrs a = {0};
  a.i[0] = bf16;
  int in[4] = {w, u, kk, v};
  kt_node(k, ZOO_OP_WKV4, zoo_cuda_wkv4, 4, in, &a);
  int bin[5] = {dy, w, u, kk, v};
  kt_node(k, ZOO_OP_WKV4_BWD, zoo_cuda_wkv4_bwd, 5, bin, &a);
}

TEST(intrinsics_nvrtc_wkv4) {
  kt k;
  kt_init(&k);
  add_wkv4(&k, 256, 128, 64, 1);
  add_wkv4(&k, 256, 512, 128, 1);
  add_wkv4(&k, 64, 2048, 512, 0);
  CHECK(!k.failed);
  /* forward: one launch; backward: the scan, then the sum over B, sharing scratch */
  CHECK(k.e.nsteps == 9);
  CHECK(k.e.steps[1].scratch_bytes == (2 * 256 * 64 + 3 * 256 * 128 * 64) * 4);
  CHECK(k.e.steps[2].scratch_bytes == k.e.steps[1].scratch_bytes);
  CHECK(strstr(k.e.src.s, "zk_wkv4_fwd<512, 128, true>") != NULL);
  CHECK(strstr(k.e.src.s, "zk_wkv4_sum<64, 512, false>") != NULL);
  KT_COMPILE(&k, "wkv4");
  kt_free(&k);
}
