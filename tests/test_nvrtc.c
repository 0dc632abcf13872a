/* test_nvrtc.c: the GPU path without a GPU: fusion, planning, code generation,
 * the cuBLAS operand mapping, NVRTC compilation (of whole shipped models for
 * sm_90) and its disk cache, and generated/ being current.
 *
 * Tests that need libnvrtc skip when it cannot be loaded. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../compiler/codegen_cuda.h"
#include "../compiler/compile.h"
#include "../compiler/fuse.h"
#include "../compiler/generate.h"
#include "../compiler/plan.h"
#include "../runtime/cuda_api.h"
#include "../runtime/cuda_backend.h"
#include "../runtime/nvrtc_cache.h"
#include "test.h"

/* ---------------------------------------------------------------------------
 * Hand-built graphs */

typedef struct hg {
  zoo_graph g;
  zoo_diag d;
  int64_t sym[ZOO_MAX_SYMS];
  int B, T;  /* symbol ids */
} hg;

static void hg_init(hg *h) {
  memset(h, 0, sizeof *h);
  zoo_graph_init(&h->g);
  zoo_diag_init(&h->d, stderr);
  h->B = zoo_graph_symbol(&h->g, "B");
  h->T = zoo_graph_symbol(&h->g, "T");
  h->sym[h->B] = 4;
  h->sym[h->T] = 6;
}

/* f32[B, T, c] */
static zoo_type btc(hg *h, int64_t c) {
  zoo_type t = {.dtype = ZOO_F32, .ndim = 3};
  t.dim[0] = (zoo_dim){1, 1u << h->B};
  t.dim[1] = (zoo_dim){1, 1u << h->T};
  t.dim[2] = zoo_dim_const(c);
  return t;
}

static zoo_type vec(int64_t c) {
  zoo_type t = {.dtype = ZOO_F32, .ndim = 1};
  t.dim[0] = zoo_dim_const(c);
  return t;
}

static int node1(hg *h, zoo_op op, int a) { return zoo_graph_node(&h->g, op, 1, &a, NULL, zoo_nospan, &h->d); }
static int node2(hg *h, zoo_op op, int a, int b) {
  int in[2] = {a, b};
  return zoo_graph_node(&h->g, op, 2, in, NULL, zoo_nospan, &h->d);
}
static int node_attrs(hg *h, zoo_op op, int nin, const int *in, zoo_attrs a) {
  return zoo_graph_node(&h->g, op, nin, in, &a, zoo_nospan, &h->d);
}
static int producer(hg *h, int t) { return h->g.tensors[t].producer; }
static int group_of(hg *h, int t) { return h->g.nodes[producer(h, t)].group; }

/* Does any step name tensor t? */
static int named_by_steps(const zoo_cuda_emit *e, int t) {
  for (int s = 0; s < e->nsteps; s++) {
    const zoo_step *st = &e->steps[s];
    for (int a = 0; a < st->nargs; a++)
      if (st->args[a].kind == ZOO_ARG_TENSOR && st->args[a].tensor == t) return 1;
    if (st->kind != ZOO_STEP_KERNEL &&
        (st->gemm.a == t || st->gemm.b == t || st->gemm.c == t || st->gemm.bias == t))
      return 1;
  }
  return 0;
}

static int nvrtc_here(char *why, size_t n) { return zoo_nvrtc_load(why, n) == 0; }

/* ---------------------------------------------------------------------------
 * Fusion */

/* An elementwise chain with a broadcast bias is one group; a matmul breaks it. */
TEST(fuse_elementwise_chain) {
  hg h;
  hg_init(&h);
  int x = zoo_graph_input(&h.g, "x", btc(&h, 8));
  int b = zoo_graph_input(&h.g, "b", vec(8));
  int w = zoo_graph_input(&h.g, "w", (zoo_type){.dtype = ZOO_F32, .ndim = 2, .dim = {{8, 0}, {8, 0}}});
  int a = node2(&h, ZOO_OP_ADD, x, b);
  int e = node1(&h, ZOO_OP_EXP, a);
  int m = node2(&h, ZOO_OP_MUL, e, x);
  int l = node2(&h, ZOO_OP_LINEAR, m, w);
  int s = node1(&h, ZOO_OP_SIGMOID, l);
  int y = node2(&h, ZOO_OP_MUL, s, m);
  h.g.output = y;
  CHECK(y >= 0);
  int ngroups = zoo_fuse(&h.g, 1);
  CHECK(group_of(&h, a) == group_of(&h, e));
  CHECK(group_of(&h, a) == group_of(&h, m));
  CHECK(group_of(&h, l) == producer(&h, l));
  CHECK(group_of(&h, s) == group_of(&h, y));
  CHECK(group_of(&h, s) != group_of(&h, a));
  CHECK(ngroups == 3);
  int order[16];
  CHECK(zoo_fuse_order(&h.g, order) == 3);
  CHECK(order[0] == group_of(&h, a) && order[1] == producer(&h, l) && order[2] == group_of(&h, s));
  /* --no-fuse: every node alone */
  CHECK(zoo_fuse(&h.g, 0) == h.g.nnodes);
  for (int i = 0; i < h.g.nnodes; i++) CHECK(h.g.nodes[i].group == i);
  zoo_graph_free(&h.g);
}

/* y = x2 + broadcast(sum(x2)) where x2 = exp(x): joining y to exp's group would
 * make the group wait for the sum, which waits for the group. */
TEST(fuse_refuses_cycles) {
  hg h;
  hg_init(&h);
  int x = zoo_graph_input(&h.g, "x", btc(&h, 8));
  int e = node1(&h, ZOO_OP_EXP, x);
  zoo_attrs sa = {0};
  sa.i[0] = -1;
  sa.i[1] = 1; /* keepdim: [B, T, 1] */
  int s = node_attrs(&h, ZOO_OP_SUM, 1, &e, sa);
  int y = node2(&h, ZOO_OP_ADD, e, s);
  h.g.output = y;
  CHECK(y >= 0);
  zoo_fuse(&h.g, 1);
  CHECK(group_of(&h, y) != group_of(&h, e));
  int order[16];
  CHECK(zoo_fuse_order(&h.g, order) == 3);
  zoo_graph_free(&h.g);
}

/* Different shapes do not fuse; forward and backward nodes do not mix. */
TEST(fuse_shape_and_side) {
  hg h;
  hg_init(&h);
  int x = zoo_graph_input(&h.g, "x", btc(&h, 8));
  int b = zoo_graph_input(&h.g, "b", vec(8));
  int nb = node1(&h, ZOO_OP_NEG, b); /* [8] */
  int y = node2(&h, ZOO_OP_ADD, x, nb); /* [B, T, 8] */
  int z = node1(&h, ZOO_OP_EXP, y);
  h.g.nforward = h.g.nnodes;
  int w = node1(&h, ZOO_OP_TANH, z); /* "backward" side */
  h.g.output = w;
  zoo_fuse(&h.g, 1);
  CHECK(group_of(&h, nb) != group_of(&h, y));
  CHECK(group_of(&h, y) == group_of(&h, z));
  CHECK(group_of(&h, w) != group_of(&h, z));
  zoo_graph_free(&h.g);
}

/* ---------------------------------------------------------------------------
 * Code generation */

/* A fused chain keeps its inner values in registers: no step names them, the
 * bias is read through its broadcast index, and the result is stored. */
TEST(codegen_registers_and_broadcast) {
  hg h;
  hg_init(&h);
  int x = zoo_graph_input(&h.g, "x", btc(&h, 8));
  int b = zoo_graph_input(&h.g, "b", vec(8));
  int a = node2(&h, ZOO_OP_ADD, x, b);
  int e = node1(&h, ZOO_OP_EXP, a);
  zoo_attrs p = {0};
  p.f[0] = 0.25;
  int y = node_attrs(&h, ZOO_OP_MULS, 1, &e, p);
  h.g.output = y;
  zoo_fuse(&h.g, 1);
  zoo_cuda_emit em = {0};
  int nf = -1;
  CHECKF(zoo_cuda_emit_graph(&em, &h.g, h.sym, &nf) == 0, "%s", em.err);
  CHECK(em.nsteps == 1);
  CHECK(!named_by_steps(&em, a) && !named_by_steps(&em, e));
  CHECK(named_by_steps(&em, x) && named_by_steps(&em, b) && named_by_steps(&em, y));
  char want[64];
  snprintf(want, sizeof want, "t%d[i %% 8]", b);
  CHECKF(strstr(em.src.s, want), "no '%s' in\n%s", want, em.src.s);
  CHECK(strstr(em.src.s, "expf(") && strstr(em.src.s, "0.25f"));
  CHECK(strstr(em.src.s, "i < 192;")); /* B*T*8 = 4*6*8 as a constant */
  /* a caller that reads the intermediate gets it stored */
  zoo_cuda_emit_free(&em);
  unsigned char *keep = calloc((size_t)h.g.ntensors, 1);
  keep[e] = 1;
  zoo_cuda_emit em2 = {0};
  em2.keep = keep;
  CHECK(zoo_cuda_emit_graph(&em2, &h.g, h.sym, &nf) == 0);
  CHECK(named_by_steps(&em2, e) && !named_by_steps(&em2, a));
  zoo_cuda_emit_free(&em2);
  free(keep);
  zoo_graph_free(&h.g);
}

/* Reshape is an alias; a split reduction gets a partial-sum scratch and a
 * counter, and its last block adds the partials up (one step). */
TEST(codegen_alias_and_reduce) {
  hg h;
  hg_init(&h);
  h.sym[h.B] = 64;
  h.sym[h.T] = 128;
  int x = zoo_graph_input(&h.g, "x", btc(&h, 8));
  zoo_attrs r = {0};
  r.ndim = 2;
  r.dims[0] = (zoo_dim){1, (1u << h.B) | (1u << h.T)};
  r.dims[1] = zoo_dim_const(8);
  int v = node_attrs(&h, ZOO_OP_RESHAPE, 1, &x, r);
  zoo_attrs to = {0};
  to.ndim = 1;
  to.dims[0] = zoo_dim_const(8);
  int s = node_attrs(&h, ZOO_OP_REDUCE_TO, 1, &v, to);
  h.g.output = s;
  CHECK(s >= 0);
  zoo_fuse(&h.g, 1);
  zoo_cuda_emit em = {0};
  CHECKF(zoo_cuda_emit_graph(&em, &h.g, h.sym, NULL) == 0, "%s", em.err);
  CHECK(em.alias[v] == x);
  CHECK(em.nsteps == 1); /* partial sums, added up by the last block */
  CHECK(em.steps[0].scratch_bytes > 0 && em.steps[0].nargs == 4 && em.steps[0].args[3].kind == ZOO_ARG_COUNTER);
  zoo_plan p;
  char err[256];
  CHECKF(zoo_plan_build(&p, &h.g, h.sym, em.steps, em.nsteps, em.alias, NULL, 0, 1, err, sizeof err) == 0, "%s", err);
  CHECK(p.mem[v] == ZOO_MEM_INPUT && p.offset[v] == p.offset[x]);
  CHECK(p.scratch[0] >= 0 && p.input_bytes >= p.counter_offset + 4);
  CHECK(p.mem[s] == ZOO_MEM_ARENA);
  /* the output and the scratch are live together at step 0: no overlap */
  CHECK(p.offset[s] >= p.scratch[0] + em.steps[0].scratch_bytes || p.offset[s] + p.bytes[s] <= p.scratch[0]);
  zoo_plan_free(&p);
  zoo_cuda_emit_free(&em);
  zoo_graph_free(&h.g);
}

/* ---------------------------------------------------------------------------
 * cuBLAS's column-major view, checked by computing both ways on the CPU */

/* D = op(A) op(B), column-major, as cuBLAS defines it. */
static void colmajor_gemm(const zoo_colmajor_gemm *g, const float *A, const float *B, float *D) {
  int64_t rows = g->c_rows, cols = g->c_cols, k = g->trans_a ? g->a_rows : g->a_cols;
  for (int64_t q = 0; q < g->batch; q++) {
    const float *a = A + q * g->stride_a, *b = B + q * g->stride_b;
    float *d = D + q * g->stride_c;
    for (int64_t i = 0; i < rows; i++)
      for (int64_t j = 0; j < cols; j++) {
        double acc = 0;
        for (int64_t p = 0; p < k; p++) {
          double av = g->trans_a ? a[p + i * g->lda] : a[i + p * g->lda];
          double bv = g->trans_b ? b[j + p * g->ldb] : b[p + j * g->ldb];
          acc += av * bv;
        }
        d[i + j * g->ldc] = (float)acc;
      }
  }
}

TEST(gemm_colmajor_mapping) {
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++)
      for (int shared_b = 0; shared_b < 2; shared_b++) {
        zoo_gemm gm = {0};
        gm.m = 5, gm.n = 3, gm.k = 4, gm.batch = 2;
        gm.trans_a = ta, gm.trans_b = tb;
        gm.stride_a = gm.m * gm.k, gm.stride_b = shared_b ? 0 : gm.k * gm.n, gm.stride_c = gm.m * gm.n;
        float a[40], b[24], want[30], got[30];
        for (int i = 0; i < 40; i++) a[i] = (float)((i * 7) % 11) - 5;
        for (int i = 0; i < 24; i++) b[i] = (float)((i * 5) % 9) - 4;
        /* row-major reference: C[m, n] = op(a) op(b) */
        for (int q = 0; q < 2; q++)
          for (int i = 0; i < gm.m; i++)
            for (int j = 0; j < gm.n; j++) {
              double acc = 0;
              for (int p = 0; p < gm.k; p++) {
                const float *aq = a + q * gm.stride_a, *bq = b + q * gm.stride_b;
                double av = ta ? aq[p * gm.m + i] : aq[i * gm.k + p];
                double bv = tb ? bq[j * gm.k + p] : bq[p * gm.n + j];
                acc += av * bv;
              }
              want[q * gm.stride_c + i * gm.n + j] = (float)acc;
            }
        zoo_colmajor_gemm cm;
        zoo_cuda_gemm_colmajor(&gm, &cm);
        colmajor_gemm(&cm, b, a, got); /* cuBLAS's A is our b */
        for (int i = 0; i < 30; i++)
          CHECKF(got[i] == want[i], "ta %d tb %d shared %d: element %d is %g, want %g", ta, tb,
                 shared_b, i, got[i], want[i]);
      }
}

/* ---------------------------------------------------------------------------
 * NVRTC and its cache */

TEST(nvrtc_cache_and_failures) {
  char why[512];
  if (!nvrtc_here(why, sizeof why)) SKIP("%s", why);
  char dir[] = "/tmp/zoo-nvrtc-test-XXXXXX";
  CHECK(mkdtemp(dir));
  char *saved = zoo_test_env_set("ZOO_CACHE_DIR", dir);
  char src[256];
  snprintf(src, sizeof src, "extern \"C\" __global__ void k(float *x) { x[threadIdx.x] *= %d.0f; }\n",
           (int)getpid() % 1000);
  zoo_cubin c1, c2, c3;
  char err[2048];
  int r1 = zoo_nvrtc_compile(src, "t.cu", "sm_90", NULL, &c1, err, sizeof err);
  int r2 = r1 == 0 ? zoo_nvrtc_compile(src, "t.cu", "sm_90", NULL, &c2, err, sizeof err) : -1;
  int r3 = zoo_nvrtc_compile("this is not CUDA", "bad.cu", "sm_90", NULL, &c3, err, sizeof err);
  zoo_test_env_restore("ZOO_CACHE_DIR", saved);
  CHECKF(r1 == 0 && r2 == 0, "%s", err);
  CHECK(!c1.cached && c2.cached);
  CHECK(c1.size == c2.size && memcmp(c1.data, c2.data, c1.size) == 0);
  CHECK(memcmp(c1.data, "\177ELF", 4) == 0); /* a CUBIN is an ELF image */
  zoo_cubin_free(&c1);
  zoo_cubin_free(&c2);
  CHECK(r3 != 0);
  /* the message names the kept source, which exists */
  char *at = strstr(err, dir);
  CHECKF(at != NULL, "%s", err);
  char path[512];
  size_t len = strcspn(at, ";");
  snprintf(path, sizeof path, "%.*s", (int)len, at);
  CHECKF(access(path, R_OK) == 0, "missing %s", path);
  CHECK(strstr(err, "error"));
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  CHECK(system(cmd) == 0);
}

/* The shipped models: compile, train graph, fuse, emit, plan and compile the
 * whole module for sm_90. Checks the plan's invariants on real graphs too. */
static void check_model(zoo_test_ctx *t, const char *model) {
  char path[128], why[512];
  snprintf(path, sizeof path, "models/%s.zoo", model);
  zoo_diag d;
  zoo_diag_init(&d, stderr);
  zoo_compile_opts o = {0};
  o.path = path;
  zoo_program *p = NULL;
  CHECKF(zoo_compile(&o, &d, &p) == 0, "%s does not compile", path);
  zoo_graph g;
  int64_t B, T;
  CHECKF(zoo_generate_train_graph(p, &g, &B, &T, &d) == 0, "%s: no training graph", model);
  zoo_cuda_program cp;
  char err[512];
  int built = zoo_cuda_program_build(&cp, &g, B, T, 1, 1, err, sizeof err);
  if (built != 0) {
    zoo_graph_free(&g);
    zoo_program_free(p);
    CHECKF(0, "%s: %s", model, err);
  }
  const zoo_plan *pl = &cp.train_plan;
  int ok = 1;
  /* every parameter's gradient sits at the parameter's offset of the gradient
   * buffer */
  for (int i = 0; i < g.nparams; i++) {
    int gt = g.tensors[g.params[i]].grad;
    if (gt < 0 || pl->mem[gt] != ZOO_MEM_GRAD || pl->offset[gt] != pl->param_offset[i]) ok = 0;
  }
  /* arena values live at the same time never share bytes */
  for (int a = 0; a < g.ntensors && ok; a++) {
    if (pl->mem[a] != ZOO_MEM_ARENA || pl->base[a] != a) continue;
    for (int b = a + 1; b < g.ntensors; b++) {
      if (pl->mem[b] != ZOO_MEM_ARENA || pl->base[b] != b) continue;
      int overlap_time = pl->first[a] <= pl->last[b] && pl->first[b] <= pl->last[a];
      int overlap_bytes = pl->offset[a] < pl->offset[b] + pl->bytes[b] && pl->offset[b] < pl->offset[a] + pl->bytes[a];
      if (overlap_time && overlap_bytes) ok = 0;
    }
  }
  int no_seed_in_eval = 1;
  for (int s = cp.ntrain; s < cp.ntrain + cp.neval; s++)
    for (int a = 0; a < cp.emit.steps[s].nargs; a++)
      if (cp.emit.steps[s].args[a].kind == ZOO_ARG_SEED) no_seed_in_eval = 0;
  int compiled = 1;
  char cerr[2048] = "";
  int have_nvrtc = nvrtc_here(why, sizeof why);
  if (have_nvrtc) {
    /* in parts, as the backend compiles it; every kernel in exactly one */
    zoo_cubin cubins[ZOO_MODULE_PARTS_MAX];
    int n = 0;
    compiled = zoo_nvrtc_compile_parts(cp.emit.src.s, model, "sm_90", NULL, 16, cubins, &n, NULL, cerr,
                                       sizeof cerr) == 0;
    for (int s = 0; s < cp.emit.nsteps && compiled; s++) {
      const char *f = cp.emit.steps[s].func;
      int in = 0;
      for (int i = 0; i < n && f; i++) in += memmem(cubins[i].data, cubins[i].size, f, strlen(f) + 1) != NULL;
      if (f && in != 1) {
        snprintf(cerr, sizeof cerr, "kernel %s is in %d of the %d CUBINs", f, in, n);
        compiled = 0;
      }
    }
    for (int i = 0; i < n; i++) zoo_cubin_free(&cubins[i]);
  }
  int64_t arena = pl->arena_bytes, naive = pl->naive_bytes;
  zoo_cuda_program_free(&cp);
  zoo_graph_free(&g);
  zoo_program_free(p);
  CHECKF(ok, "%s: the plan puts a gradient or two live values in the wrong place", model);
  CHECKF(no_seed_in_eval, "%s: the evaluation steps draw random numbers", model);
  CHECKF(arena <= naive, "%s: arena %lld > %lld", model, (long long)arena, (long long)naive);
  CHECKF(compiled, "%s: %s", model, cerr);
  if (!have_nvrtc) SKIP("NVRTC compile of %s: %s", model, why);
}

TEST(nvrtc_model_rebased) { check_model(t, "rebased"); }
TEST(nvrtc_model_based) { check_model(t, "based"); }
TEST(nvrtc_model_conv_attention) { check_model(t, "conv_attention"); }
TEST(nvrtc_model_attention) { check_model(t, "attention"); }
TEST(nvrtc_model_rwkv) { check_model(t, "rwkv"); }

/* generated/<model>/ is what zooc -o writes now (make generated rewrites it). */
static void check_generated(zoo_test_ctx *t, const char *model) {
  char path[128], dir[] = "/tmp/zoo-gen-test-XXXXXX";
  CHECK(mkdtemp(dir));
  snprintf(path, sizeof path, "models/%s.zoo", model);
  zoo_diag d;
  zoo_diag_init(&d, stderr);
  zoo_compile_opts o = {0};
  o.path = path;
  zoo_program *p = NULL;
  CHECKF(zoo_compile(&o, &d, &p) == 0, "%s does not compile", path);
  int r = zoo_generate(p, dir, &d);
  zoo_program_free(p);
  CHECK(r == 0);
  const char *files[] = {"kernels.cu", "plan.txt"};
  int same = 1;
  char which[256] = "";
  int kernels = -1, waits = -1;
  for (int f = 0; f < 2; f++) {
    char a[256], b[256];
    snprintf(a, sizeof a, "%s/%s", dir, files[f]);
    snprintf(b, sizeof b, "generated/%s/%s", model, files[f]);
    char *x = zoo_test_read(a, NULL), *y = zoo_test_read(b, NULL);
    if (!x || !y || strcmp(x, y) != 0) {
      same = 0;
      snprintf(which, sizeof which, "%s", b);
    }
    if (f == 0 && x) kernels = zoo_test_count(x, "__global__ void"), waits = zoo_test_count(x, ") {\n  zk_entry_wait();\n");
    free(x);
    free(y);
  }
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  CHECK(system(cmd) == 0);
  CHECKF(same, "%s is missing or stale: run make generated (and commit generated/)", which);
  CHECKF(kernels > 0 && waits == kernels, "%s: %d kernels, %d begin with zk_entry_wait()", model, kernels, waits);
}

/* The entry-wait pass: one definition before the first kernel, one wait at
 * each kernel's entry, nothing else touched, and a second pass changes
 * nothing. */
TEST(entry_waits) {
  const char *src = "// a module\n#include <x>\nextern \"C\" __global__ void a(int *p) {\n  p[0] = 1;\n}\n"
                    "__device__ int f() { return 2; }\n"
                    "extern \"C\" __global__ void __launch_bounds__(256) b(int *p, int n) { p[n] = f(); }\n";
  char *once = zoo_cuda_entry_waits(src), *twice = zoo_cuda_entry_waits(once);
  CHECK(strcmp(once, twice) == 0);
  CHECK(zoo_test_count(once, "#define ZK_ENTRY_WAIT\n") == 1);
  CHECK(zoo_test_count(once, "zk_entry_wait();") == 2);
  CHECK(strstr(once, "// a module\n#include <x>\n#ifndef ZK_ENTRY_WAIT\n") == once);
  CHECK(strstr(once, "void a(int *p) {\n  zk_entry_wait();\n  p[0] = 1;") != NULL);
  CHECK(strstr(once, "int n) {\n  zk_entry_wait(); p[n] = f(); }") != NULL);
  CHECK(strstr(once, "__device__ int f() { return 2; }") != NULL);
  free(once);
  free(twice);
  char *none = zoo_cuda_entry_waits("__device__ int g;\n");
  CHECK(strcmp(none, "__device__ int g;\n") == 0);
  free(none);
}

/* A module cut into parts for parallel NVRTC: each kernel definition in one
 * part (dealt in turn), everything else in all, nothing lost or reordered. */
TEST(split_module) {
  const char *src = "// head { not a brace pair\n#define X 1\n"
                    "extern \"C\" __global__ void a(int *p) {\n  if (p) { p[0] = '}'; }\n}\n"
                    "__device__ int f() { return 2; } /* } */\n"
                    "extern \"C\" __global__ void b(int *p) { p[1] = \"}\"[0]; // }\n}\n"
                    "static_assert(X == 1, \"x\");\n"
                    "extern \"C\" __global__ void c(int *p) { p[2] = 3; }\n"
                    "// tail\n";
  char *parts[ZOO_MODULE_PARTS_MAX];
  int n = zoo_cuda_split_module(src, 2, parts);
  CHECK(n == 2);
  const char *names[] = {"void a(", "void b(", "void c("};
  int where[] = {0, 1, 0};
  for (int k = 0; k < 3; k++)
    for (int i = 0; i < n; i++) CHECKF((strstr(parts[i], names[k]) != NULL) == (where[k] == i), "%s", names[k]);
  for (int i = 0; i < n; i++) {
    CHECK(strstr(parts[i], "// head { not a brace pair\n#define X 1\n") == parts[i]);
    CHECK(strstr(parts[i], "__device__ int f() { return 2; } /* } */\n") != NULL);
    CHECK(strstr(parts[i], "static_assert(X == 1, \"x\");\n") != NULL);
    CHECK(strstr(parts[i], "// tail\n") != NULL);
  }
  /* the first part, read with the second's kernel put back, is the source */
  CHECK(strstr(parts[0], "p[0] = '}'; }\n}\n__device__") != NULL);
  CHECK(strstr(parts[1], "p[1] = \"}\"[0]; // }\n}\nstatic_assert") != NULL);
  for (int i = 0; i < n; i++) free(parts[i]);
  /* more parts than kernels: one per kernel; no kernel: the source whole */
  n = zoo_cuda_split_module(src, 8, parts);
  CHECK(n == 3);
  for (int i = 0; i < n; i++) free(parts[i]);
  n = zoo_cuda_split_module("__device__ int g;\n", 4, parts);
  CHECK(n == 1 && strcmp(parts[0], "__device__ int g;\n") == 0);
  free(parts[0]);
}

/* Kernels the same but for their names are defined once; their steps then
 * launch the first. */
TEST(merge_duplicate_kernels) {
  zoo_cuda_emit e;
  memset(&e, 0, sizeof e);
  zoo_strbuf_puts(&e.src, "// m\n"
                          "extern \"C\" __global__ void __launch_bounds__(256) zoo_k1(float *x) { x[0] = 1; }\n"
                          "extern \"C\" __global__ void __launch_bounds__(256) zoo_k12(float *x) { x[0] = 1; }\n"
                          "extern \"C\" __global__ void zoo_k2(float *x) { x[0] = 2; }\n"
                          "extern \"C\" __global__ void zoo_k3(float *x) { x[0] = 2; }\n"
                          "extern \"C\" __global__ void zoo_k4(float *y) { y[0] = 2; }\n");
  const char *funcs[] = {"zoo_k1", "zoo_k12", "zoo_k2", "zoo_k3", "zoo_k4", "zoo_k12"};
  for (int i = 0; i < 6; i++) zoo_cuda_step(&e, ZOO_STEP_KERNEL, 0)->func = zoo_cuda_strdup(&e, funcs[i]);
  CHECK(zoo_cuda_merge_duplicate_kernels(&e) == 2);
  const char *want[] = {"zoo_k1", "zoo_k1", "zoo_k2", "zoo_k2", "zoo_k4", "zoo_k1"};
  for (int i = 0; i < 6; i++) CHECKF(strcmp(e.steps[i].func, want[i]) == 0, "step %d: %s", i, e.steps[i].func);
  CHECK(zoo_test_count(e.src.s, "__global__") == 3);
  CHECK(strstr(e.src.s, "// zoo_k12: the same as zoo_k1, launched in its place\n") != NULL);
  CHECK(strstr(e.src.s, "// zoo_k3: the same as zoo_k2, launched in its place\n") != NULL);
  CHECK(strstr(e.src.s, "zoo_k4(float *y) { y[0] = 2; }") != NULL);
  CHECK(zoo_cuda_merge_duplicate_kernels(&e) == 0);
  zoo_cuda_emit_free(&e);
}

TEST(generated_rebased) { check_generated(t, "rebased"); }
TEST(generated_based) { check_generated(t, "based"); }
TEST(generated_conv_attention) { check_generated(t, "conv_attention"); }
TEST(generated_attention) { check_generated(t, "attention"); }
TEST(generated_rwkv) { check_generated(t, "rwkv"); }

/* Without a GPU the backend says why, and does not crash. */
TEST(cuda_backend_without_gpu) {
  char why[512];
  int have = zoo_cuda_available(why, sizeof why);
  CHECK(why[0] != 0);
  if (have) SKIP("a GPU is present (%s); gpu_ tests cover it", why);
  zoo_graph g;
  zoo_graph_init(&g);
  char err[512] = "";
  zoo_backend *be = zoo_cuda_backend_init(&g, 2, 4, 0, ZOO_FP32, err, sizeof err);
  CHECK(be == NULL);
  CHECK(err[0] != 0);
  zoo_graph_free(&g);
}
