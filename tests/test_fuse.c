/* test_fuse.c: the fusion pass's rewrites (compiler/fuse.h) beyond elementwise
 * chains: a stencil (causal_conv1d) computed inline by the elementwise group
 * that consumes it, an elementwise group made the prologue of the row op
 * (layernorm) it feeds, and one made the epilogue of the row op
 * (layernorm_bwd, causal_conv1d_bwd) whose output it reads.
 *
 *   fuse_rule_*            the rules on hand-built graphs: what joins, what may not
 *   fuse_rewrites_<model>  on the shipped training graphs: BaseConv's conv, mul
 *                          and residual add, every pre-norm residual add with
 *                          its LayerNorm, the backward's adds with the
 *                          LayerNorm or conv gradient they read, and the sum of
 *                          the q, k and v projections' gradients with the
 *                          LayerNorm gradient that reads it, are one kernel
 *                          each; the launches saved
 *                          are exactly those; the values other kernels read are
 *                          stored, the others stay in registers; the module
 *                          compiles through NVRTC for sm_90 at d_model 128, T 512
 *   emu_fuse_<model>       the training step and evaluation, emulated on the CPU
 *                          (tests/emu.h), with the rewrites and without them
 *                          (ZOO_FUSE_CHAINS): the same loss, metrics and gradients.
 *                          rebased and conv_attention only (about 45 s each):
 *                          based's blocks fuse as rebased's, and
 *                          emu_program_based checks its fused program on the CPU
 *
 * The GPU-versus-CPU case of the fused kernels is gpu_ops_fused in test_gpu.c. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../compiler/codegen_cuda.h"
#include "../compiler/compile.h"
#include "../compiler/fuse.h"
#include "../compiler/generate.h"
#include "../compiler/plan.h"
#include "../runtime/cuda_api.h"
#include "../runtime/nvrtc_cache.h"
#include "../runtime/rng.h"
#include "../runtime/train.h"
#include "emu.h"
#include "test.h"

/* ---------------------------------------------------------------------------
 * The rules, on hand-built graphs */

typedef struct fg {
  zoo_graph g;
  zoo_diag d;
  int B, T;
} fg;

static void fg_init(fg *h) {
  memset(h, 0, sizeof *h);
  zoo_graph_init(&h->g);
  zoo_diag_init(&h->d, stderr);
  h->B = zoo_graph_symbol(&h->g, "B");
  h->T = zoo_graph_symbol(&h->g, "T");
}

static zoo_type btc(fg *h, int64_t c) {
  zoo_type t = {.dtype = ZOO_F32, .ndim = 3};
  t.dim[0] = (zoo_dim){1, 1u << h->B};
  t.dim[1] = (zoo_dim){1, 1u << h->T};
  t.dim[2] = zoo_dim_const(c);
  return t;
}

static zoo_type shape(int nd, const int64_t *d) {
  zoo_type t = {.dtype = ZOO_F32, .ndim = nd};
  for (int k = 0; k < nd; k++) t.dim[k] = zoo_dim_const(d[k]);
  return t;
}

static int op(fg *h, zoo_op o, int nin, const int *in) {
  return zoo_graph_node(&h->g, o, nin, in, NULL, zoo_nospan, &h->d);
}
static int op2(fg *h, zoo_op o, int a, int b) { return op(h, o, 2, (int[]){a, b}); }
static int grp(fg *h, int t) { return h->g.nodes[h->g.tensors[t].producer].group; }

/* u -> conv(u, w, b) * u + u -> layernorm: one group; at ZOO_FUSE_CHAINS three. */
TEST(fuse_rule_conv_and_prologue) {
  fg h;
  fg_init(&h);
  int u = zoo_graph_input(&h.g, "u", btc(&h, 8));
  int w = zoo_graph_input(&h.g, "w", shape(3, (int64_t[]){8, 1, 3}));
  int b = zoo_graph_input(&h.g, "b", shape(1, (int64_t[]){8}));
  int c = op(&h, ZOO_OP_CAUSAL_CONV1D, 3, (int[]){u, w, b});
  int m = op2(&h, ZOO_OP_MUL, c, u);
  int r = op2(&h, ZOO_OP_ADD, m, u);
  int y = op(&h, ZOO_OP_LAYERNORM, 3, (int[]){r, b, b});
  CHECK(y >= 0);
  h.g.output = y;
  CHECK(zoo_fuse(&h.g, ZOO_FUSE_ALL) == 1);
  CHECK(grp(&h, c) == h.g.tensors[c].producer); /* the id is the first node */
  CHECK(grp(&h, m) == grp(&h, c) && grp(&h, r) == grp(&h, c) && grp(&h, y) == grp(&h, c));
  int order[8];
  CHECK(zoo_fuse_order(&h.g, order) == 1);
  CHECK(zoo_fuse(&h.g, ZOO_FUSE_CHAINS) == 3);
  CHECK(grp(&h, m) == grp(&h, r) && grp(&h, c) != grp(&h, m) && grp(&h, y) != grp(&h, r));
  CHECK(zoo_fuse(&h.g, ZOO_FUSE_OFF) == h.g.nnodes);
  zoo_graph_free(&h.g);
}

/* A stencil never reads what its own kernel makes: mul(conv(exp(u)), exp(u))
 * cannot join exp's group (it would wait on the conv, which waits on exp), so
 * the conv joins the mul alone and reads exp's value from memory. A layernorm
 * whose other input depends on the group stays alone (cycle); so does one on
 * the other side of the forward/backward boundary from its input. */
TEST(fuse_rule_refusals) {
  fg h;
  fg_init(&h);
  int u = zoo_graph_input(&h.g, "u", btc(&h, 8));
  int w = zoo_graph_input(&h.g, "w", shape(3, (int64_t[]){8, 1, 3}));
  int e = op(&h, ZOO_OP_EXP, 1, &u);
  int c = op(&h, ZOO_OP_CAUSAL_CONV1D, 2, (int[]){e, w});
  int m = op2(&h, ZOO_OP_MUL, c, e); /* not exp's group: the conv reads exp */
  zoo_attrs to = {0};
  to.ndim = 1;
  to.dims[0] = zoo_dim_const(8);
  int s = zoo_graph_node(&h.g, ZOO_OP_REDUCE_TO, 1, &m, &to, zoo_nospan, &h.d); /* [8] from the group */
  int y = op(&h, ZOO_OP_LAYERNORM, 2, (int[]){m, s}); /* w depends on the group: a cycle */
  int v = op(&h, ZOO_OP_SIGMOID, 1, &s); /* [8] */
  int y2 = op(&h, ZOO_OP_LAYERNORM, 1, &v); /* ok: a group of its own shape */
  h.g.nforward = h.g.nnodes;
  int n2 = op2(&h, ZOO_OP_ADD, y, u); /* backward side */
  int y3 = op(&h, ZOO_OP_LAYERNORM, 1, &n2); /* backward side too: joins */
  int y4 = op(&h, ZOO_OP_LAYERNORM, 1, &e); /* backward layernorm of a forward group: alone */
  CHECK(y4 >= 0 && y2 >= 0 && y3 >= 0);
  h.g.output = y4;
  zoo_fuse(&h.g, ZOO_FUSE_ALL);
  CHECK(grp(&h, e) != grp(&h, m) && grp(&h, e) != grp(&h, c));
  CHECK(grp(&h, c) == h.g.tensors[c].producer && grp(&h, c) == grp(&h, m));
  CHECK(grp(&h, y) != grp(&h, m));
  CHECK(grp(&h, y2) == grp(&h, v));
  CHECK(grp(&h, y3) == grp(&h, n2));
  CHECK(grp(&h, y4) != grp(&h, e));
  int order[32];
  CHECK(zoo_fuse_order(&h.g, order) > 0);
  zoo_graph_free(&h.g);
}

/* The backward's residual adds: a = lnb(dy).dx, b = lnb(a).dx, c = a + b,
 * d = c * r. a's layernorm_bwd cannot take c's group (c also waits on b,
 * which waits on a: a cycle), b's does; at ZOO_FUSE_CHAINS both stay alone. */
TEST(fuse_rule_epilogue) {
  fg h;
  fg_init(&h);
  int dy = zoo_graph_input(&h.g, "dy", btc(&h, 8));
  int x = zoo_graph_input(&h.g, "x", btc(&h, 8));
  int r = zoo_graph_input(&h.g, "r", btc(&h, 8));
  int w = zoo_graph_input(&h.g, "w", shape(1, (int64_t[]){8}));
  int a = op(&h, ZOO_OP_LAYERNORM_BWD, 3, (int[]){dy, x, w});
  int b = op(&h, ZOO_OP_LAYERNORM_BWD, 3, (int[]){a, x, w});
  int c = op2(&h, ZOO_OP_ADD, a, b);
  int m = op2(&h, ZOO_OP_MUL, c, r);
  CHECK(a >= 0 && b >= 0 && m >= 0);
  h.g.output = m;
  zoo_fuse(&h.g, ZOO_FUSE_ALL);
  CHECK(grp(&h, b) == h.g.tensors[b].producer); /* the id is the first node */
  CHECK(grp(&h, c) == grp(&h, b) && grp(&h, m) == grp(&h, b));
  CHECK(grp(&h, a) != grp(&h, c));
  int order[8];
  CHECK(zoo_fuse_order(&h.g, order) == 2);
  CHECK(zoo_fuse(&h.g, ZOO_FUSE_CHAINS) == 3);
  CHECK(grp(&h, c) == grp(&h, m) && grp(&h, b) != grp(&h, c));
  zoo_graph_free(&h.g);
}

/* layernorm_bwd with both: d = g1 + g2 its prologue, s = dx + r its epilogue,
 * one group; at ZOO_FUSE_CHAINS three; with rows narrower than
 * ZOO_FUSE_PROLOGUE_MIN_ROW, the epilogue alone. Where dy is split into
 * heads (other dims than dx), the prologue is refused once the epilogue is
 * in. */
TEST(fuse_rule_prologue_and_epilogue) {
  char *env = zoo_test_env_set("ZOO_FUSE_PROLOGUE_MIN_ROW", "8"); /* rows of 8 here */
  fg h;
  fg_init(&h);
  int g1 = zoo_graph_input(&h.g, "g1", btc(&h, 8)), g2 = zoo_graph_input(&h.g, "g2", btc(&h, 8));
  int x = zoo_graph_input(&h.g, "x", btc(&h, 8)), r = zoo_graph_input(&h.g, "r", btc(&h, 8));
  int w = zoo_graph_input(&h.g, "w", shape(1, (int64_t[]){8}));
  int d = op2(&h, ZOO_OP_ADD, g1, g2);
  int lb = op(&h, ZOO_OP_LAYERNORM_BWD, 3, (int[]){d, x, w});
  int sm = op2(&h, ZOO_OP_ADD, lb, r);
  CHECK(d >= 0 && lb >= 0 && sm >= 0);
  h.g.output = sm;
  CHECK(zoo_fuse(&h.g, ZOO_FUSE_ALL) == 1);
  CHECK(grp(&h, d) == h.g.tensors[d].producer && grp(&h, lb) == grp(&h, d) && grp(&h, sm) == grp(&h, d));
  int order[8];
  CHECK(zoo_fuse_order(&h.g, order) == 1);
  CHECK(zoo_fuse(&h.g, ZOO_FUSE_CHAINS) == 3);
  zoo_test_env_restore("ZOO_FUSE_PROLOGUE_MIN_ROW", env);
  CHECK(zoo_fuse(&h.g, ZOO_FUSE_ALL) == 2 && grp(&h, sm) == grp(&h, lb) && grp(&h, d) != grp(&h, lb));
  env = zoo_test_env_set("ZOO_FUSE_PROLOGUE_MIN_ROW", "8");
  zoo_graph_free(&h.g);

  fg_init(&h);
  int64_t hd[4] = {2, 2, 3, 4};
  g1 = zoo_graph_input(&h.g, "g1", shape(4, hd)), g2 = zoo_graph_input(&h.g, "g2", shape(4, hd));
  x = zoo_graph_input(&h.g, "x", shape(3, (int64_t[]){2, 3, 8}));
  r = zoo_graph_input(&h.g, "r", shape(3, (int64_t[]){2, 3, 8}));
  w = zoo_graph_input(&h.g, "w", shape(1, (int64_t[]){8}));
  d = op2(&h, ZOO_OP_ADD, g1, g2);
  zoo_attrs heads = {0};
  heads.i[0] = 2;
  lb = zoo_graph_node(&h.g, ZOO_OP_LAYERNORM_BWD, 3, (int[]){d, x, w}, &heads, zoo_nospan, &h.d);
  sm = op2(&h, ZOO_OP_ADD, lb, r);
  CHECK(d >= 0 && lb >= 0 && sm >= 0);
  h.g.output = sm;
  CHECK(zoo_fuse(&h.g, ZOO_FUSE_ALL) == 2);
  CHECK(grp(&h, sm) == grp(&h, lb) && grp(&h, d) != grp(&h, lb));
  zoo_graph_free(&h.g);
  zoo_test_env_restore("ZOO_FUSE_PROLOGUE_MIN_ROW", env);
}

/* The op table's fusion flags are exactly the forms the CUDA generator has. */
TEST(fuse_rule_flags_have_emitters) {
  int inl = 0, pro = 0, epi = 0;
  for (int o = 0; o < ZOO_OP_COUNT; o++) {
    int want = zoo_ops[o].flags & (ZOO_OPF_INLINE | ZOO_OPF_PROLOGUE | ZOO_OPF_EPILOGUE);
    CHECKF(zoo_cuda_op_fusion((zoo_op)o) == want, "op %s: flags %d, emitters %d", zoo_ops[o].name, want,
           zoo_cuda_op_fusion((zoo_op)o));
    inl += (want & ZOO_OPF_INLINE) != 0;
    pro += (want & ZOO_OPF_PROLOGUE) != 0;
    epi += (want & ZOO_OPF_EPILOGUE) != 0;
  }
  CHECK(inl >= 1 && pro >= 1 && epi >= 1);
  CHECK(zoo_ops[ZOO_OP_CAUSAL_CONV1D].flags & ZOO_OPF_INLINE);
  CHECK(zoo_ops[ZOO_OP_LAYERNORM].flags & ZOO_OPF_PROLOGUE);
  CHECK(zoo_ops[ZOO_OP_LAYERNORM_BWD].flags & ZOO_OPF_EPILOGUE);
}

/* ---------------------------------------------------------------------------
 * The shipped models */

static zoo_program *compile_model(const char *model, const zoo_define *defs, int ndefs) {
  char path[128];
  snprintf(path, sizeof path, "models/%s.zoo", model);
  zoo_compile_opts o = {0};
  o.path = path;
  o.defines = defs;
  o.ndefines = ndefs;
  zoo_diag d;
  zoo_diag_init(&d, stderr);
  zoo_program *p = NULL;
  if (zoo_compile(&o, &d, &p) != 0) return NULL;
  return p;
}

static int group_has(const zoo_graph *g, int gid, zoo_op o) {
  for (int i = 0; i < g->nnodes; i++)
    if (zoo_node_group(g, i) == gid && g->nodes[i].op == o) return 1;
  return 0;
}

/* Is tensor t named by any of steps[0, n)? */
static int named(const zoo_step *steps, int n, int t) {
  for (int s = 0; s < n; s++)
    for (int a = 0; a < steps[s].nargs; a++)
      if (steps[s].args[a].kind == ZOO_ARG_TENSOR && steps[s].args[a].tensor == t) return 1;
  return 0;
}

static void check_rewrites(zoo_test_ctx *t, const char *model) {
  zoo_define big[] = {{"d_model", "128"}, {"seq_len", "512"}};
  for (int size = 0; size < 2; size++) {
    zoo_program *p = compile_model(model, big, size ? 2 : 0);
    CHECKF(p, "%s does not compile", model);
    zoo_diag d;
    zoo_diag_init(&d, stderr);
    zoo_graph g;
    int64_t B, T;
    CHECK(zoo_generate_train_graph(p, &g, &B, &T, &d) == 0);
    zoo_cuda_program all, chains;
    char err[512];
    int ok = zoo_cuda_program_build(&all, &g, B, T, ZOO_FUSE_ALL, 1, err, sizeof err) == 0;
    ok = ok && zoo_cuda_program_build(&chains, &g, B, T, ZOO_FUSE_CHAINS, 1, err, sizeof err) == 0;
    CHECKF(ok, "%s: %s", model, err);
    const zoo_graph *f = &all.train;
    /* what the rewrites should take: every conv, every forward layernorm of an
     * elementwise value */
    int nconv = 0, nln = 0, bad = 0;
    for (int i = 0; i < g.nforward; i++) {
      const zoo_node *n = &g.nodes[i];
      int gid = zoo_node_group(f, i);
      if (n->op == ZOO_OP_CAUSAL_CONV1D) {
        nconv++;
        /* BaseConv: conv * proj + u, the residual add and norm2, one kernel */
        if (!group_has(f, gid, ZOO_OP_MUL) || !group_has(f, gid, ZOO_OP_ADD) || !group_has(f, gid, ZOO_OP_LAYERNORM)) {
          fprintf(stderr, "  %s: conv node %d is not in a group with mul, add and layernorm\n", model, i);
          bad = 1;
        }
        /* the backward's mul reads the conv's output: stored in training,
         * a register in evaluation */
        if (!named(all.emit.steps, all.ntrain, n->out[0]) ||
            named(all.emit.steps + all.ntrain, all.neval, n->out[0])) {
          fprintf(stderr, "  %s: the conv's output t%d is stored where it should not be, or not where it should\n", model, n->out[0]);
          bad = 1;
        }
      }
      if (n->op == ZOO_OP_LAYERNORM) {
        int pr = g.tensors[n->in[0]].producer;
        if (pr < 0 || zoo_ops[g.nodes[pr].op].cls != ZOO_CLASS_ELEMENTWISE) continue;
        nln++;
        if (zoo_node_group(f, pr) != gid) {
          fprintf(stderr, "  %s: layernorm node %d is not in its input's group\n", model, i);
          bad = 1;
        }
        /* the residual stream: layernorm_bwd and the next add read it */
        if (!named(all.emit.steps, all.ntrain, n->in[0])) {
          fprintf(stderr, "  %s: the residual t%d is not stored\n", model, n->in[0]);
          bad = 1;
        }
      }
    }
    /* the backward: each row op with an epilogue form (layernorm_bwd,
     * causal_conv1d_bwd) whose dx an elementwise node reads takes that node's
     * group as its epilogue, but where two layernorms' gradients meet in one
     * add (the first would wait on the second); its dx is then stored only
     * when another group reads it. A layernorm_bwd whose dy an elementwise
     * group makes that is no other row op's epilogue takes it as its prologue
     * (ReBased's and Based's sum of the q, k and v projections' gradients). */
    int ncand = 0, nepi = 0, npro = 0;
    for (int i = g.nforward; i < g.nnodes; i++) {
      const zoo_node *n = &g.nodes[i];
      if (!(zoo_ops[n->op].flags & (ZOO_OPF_EPILOGUE | ZOO_OPF_PROLOGUE))) continue;
      int gid = zoo_node_group(f, i), read_ew = 0, read_outside = 0, fused = 0;
      int pr = g.tensors[n->in[0]].producer;
      npro += pr >= 0 && zoo_node_group(f, pr) == gid;
      if (!(zoo_ops[n->op].flags & ZOO_OPF_EPILOGUE)) continue;
      for (int c = 0; c < g.nnodes; c++)
        for (int k = 0; k < g.nodes[c].nin; k++)
          if (g.nodes[c].in[k] == n->out[0]) {
            read_ew |= zoo_ops[g.nodes[c].op].cls == ZOO_CLASS_ELEMENTWISE;
            read_outside |= zoo_node_group(f, c) != gid;
            fused |= zoo_node_group(f, c) == gid;
          }
      ncand += read_ew;
      nepi += fused;
      if (fused && named(all.emit.steps, all.ntrain, n->out[0]) != read_outside) {
        fprintf(stderr, "  %s: %s node %d's dx t%d is %sstored\n", model, zoo_ops[n->op].name, i, n->out[0],
                read_outside ? "not " : "");
        bad = 1;
      }
    }
    int saved = chains.train_plan.kernels - all.train_plan.kernels;
    int saved_eval = chains.eval_plan.kernels - all.eval_plan.kernels;
    int gemms_same = chains.train_plan.gemms == all.train_plan.gemms && chains.train_plan.zeros == all.train_plan.zeros;
    /* the fused module compiles for sm_90, every launched kernel in it */
    int compiled = 1, have_nvrtc = size == 1 && zoo_nvrtc_load(err, sizeof err) == 0;
    char cerr[2048] = "";
    if (have_nvrtc) {
      zoo_cubin cubin = {0};
      int built = zoo_nvrtc_compile(all.emit.src.s, model, "sm_90", NULL, &cubin, cerr, sizeof cerr) == 0;
      compiled = built;
      for (int s = 0; compiled && s < all.emit.nsteps; s++) {
        const zoo_step *st = &all.emit.steps[s];
        if (st->kind == ZOO_STEP_KERNEL && !memmem(cubin.data, cubin.size, st->func, strlen(st->func) + 1)) {
          snprintf(cerr, sizeof cerr, "kernel %s is not in the CUBIN", st->func);
          compiled = 0;
        }
      }
      if (built) zoo_cubin_free(&cubin);
    }
    int fused_kernels = strstr(all.emit.src.s, "zoo_layernorm_fused_") != NULL &&
                        strstr(all.emit.src.s, "zoo_layernorm_bwd_fused_") != NULL &&
                        strstr(all.emit.src.s, "zoo_conv1d_bwd_fused_") != NULL;
    int conv_inline = strstr(all.emit.src.s, "zk_conv1d_at<") != NULL &&
                      strstr(all.emit.src.s, "causal_conv1d, inline") != NULL;
    zoo_cuda_program_free(&all);
    zoo_cuda_program_free(&chains);
    zoo_graph_free(&g);
    zoo_program_free(p);
    CHECK(!bad);
    CHECKF(nconv >= 1 && nln >= 4, "%s: %d convs, %d layernorms of elementwise values", model, nconv, nln);
    CHECKF(nepi >= 5 && nepi >= ncand - 1, "%s: %d of %d backward row ops take an epilogue", model, nepi, ncand);
    /* the backward's prologue only from rows of 512 (fuse.c): none here */
    CHECKF(npro == 0, "%s: %d backward row ops take a prologue", model, npro);
    CHECKF(saved == nconv + nln + nepi, "%s: the rewrites save %d launches, want %d", model, saved,
           nconv + nln + nepi);
    CHECKF(saved_eval == nconv + nln, "%s (evaluation): the rewrites save %d launches, want %d", model, saved_eval,
           nconv + nln);
    CHECK(gemms_same);
    CHECK(fused_kernels && conv_inline);
    CHECKF(compiled, "%s: %s", model, cerr);
  }
}

/* From rows of 512 the layernorm_bwd that reads the sum of the q, k and v
 * projections' gradients makes it in its prologue: one launch fewer than
 * without it (ZOO_FUSE_PROLOGUE_MIN_ROW set past 512). */
TEST(fuse_prologue_wide) {
  zoo_define wide[] = {{"d_model", "512"}, {"seq_len", "64"}};
  int kernels[2] = {0, 0};
  for (int v = 0; v < 2; v++) {
    char *saved = zoo_test_env_set("ZOO_FUSE_PROLOGUE_MIN_ROW", v ? "1024" : NULL);
    zoo_program *p = compile_model("rebased", wide, 2);
    CHECKF(p, "rebased does not compile");
    zoo_diag d;
    zoo_diag_init(&d, stderr);
    zoo_graph g;
    int64_t B, T;
    CHECK(zoo_generate_train_graph(p, &g, &B, &T, &d) == 0);
    zoo_cuda_program cp;
    char err[512];
    int ok = zoo_cuda_program_build(&cp, &g, B, T, ZOO_FUSE_ALL, 1, err, sizeof err) == 0;
    zoo_test_env_restore("ZOO_FUSE_PROLOGUE_MIN_ROW", saved);
    CHECKF(ok, "%s", err);
    kernels[v] = cp.train_plan.kernels;
    zoo_cuda_program_free(&cp);
    zoo_graph_free(&g);
    zoo_program_free(p);
  }
  CHECKF(kernels[0] == kernels[1] - 1, "launches %d with the prologue, %d without", kernels[0], kernels[1]);
}

TEST(fuse_rewrites_rebased) { check_rewrites(t, "rebased"); }
TEST(fuse_rewrites_based) { check_rewrites(t, "based"); }
TEST(fuse_rewrites_conv_attention) { check_rewrites(t, "conv_attention"); }

/* ---------------------------------------------------------------------------
 * The same training step, emulated, with and without the rewrites */

typedef struct step_result {
  float loss, metrics[2], eval_loss, eval_metrics[2];
  float *grads; /* the flat gradient buffer */
  int64_t nflat;
} step_result;

/* Builds the program at fuse level `level`, runs one training step (and one
 * evaluation of the same batch) on the emulator from parameters p0. */
static int emulate_step(const zoo_graph *g, int level, int64_t B, int64_t T, float **p0, const int32_t *tok,
                        const int32_t *tgt, step_result *r, char *err, size_t errlen) {
  zoo_cuda_program cp;
  memset(r, 0, sizeof *r);
  if (zoo_cuda_program_build(&cp, g, B, T, level, 1, err, errlen) != 0) return -1;
  emu_module *m = emu_load(&cp.emit, err, errlen);
  if (!m) {
    zoo_cuda_program_free(&cp);
    return -1;
  }
  const zoo_plan *tp = &cp.train_plan, *ep = &cp.eval_plan;
  emu_mem mem;
  emu_mem_init(&mem, tp);
  int64_t arena = tp->arena_bytes > ep->arena_bytes ? tp->arena_bytes : ep->arena_bytes;
  free(mem.base[ZOO_MEM_ARENA]);
  mem.base[ZOO_MEM_ARENA] = calloc(1, (size_t)arena + 256);
  for (int i = 0; i < g->nparams; i++)
    memcpy(mem.base[ZOO_MEM_PARAM] + tp->param_offset[i], p0[i], (size_t)tp->bytes[g->params[i]]);
  int tokens = -1;
  for (int i = 0; i < g->ninputs; i++)
    if (g->tensors[g->inputs[i]].name && !strcmp(g->tensors[g->inputs[i]].name, "tokens")) tokens = g->inputs[i];
  float one = 1.0f;
  memcpy(emu_ptr(&mem, tp, g->dloss), &one, 4);
  memcpy(emu_ptr(&mem, tp, tokens), tok, (size_t)(B * T) * 4);
  memcpy(emu_ptr(&mem, tp, g->targets), tgt, (size_t)(B * T) * 4);
  int status = emu_run(m, &cp.emit, tp, &mem, 0, cp.ntrain, 4242, err, errlen);
  if (status == 0) {
    memcpy(&r->loss, emu_ptr(&mem, tp, g->loss), 4);
    memcpy(r->metrics, emu_ptr(&mem, tp, g->metrics), 8);
    r->nflat = tp->param_floats;
    r->grads = malloc((size_t)tp->param_bytes + 4);
    memcpy(r->grads, mem.base[ZOO_MEM_GRAD], (size_t)tp->param_bytes);
    memcpy(emu_ptr(&mem, ep, tokens), tok, (size_t)(B * T) * 4);
    memcpy(emu_ptr(&mem, ep, g->targets), tgt, (size_t)(B * T) * 4);
    status = emu_run(m, &cp.emit, ep, &mem, cp.ntrain, cp.neval, 0, err, errlen);
  }
  if (status == 0) {
    memcpy(&r->eval_loss, emu_ptr(&mem, ep, g->loss), 4);
    memcpy(r->eval_metrics, emu_ptr(&mem, ep, g->metrics), 8);
  }
  emu_mem_free(&mem);
  emu_unload(m);
  zoo_cuda_program_free(&cp);
  return status;
}

static void emu_fuse(zoo_test_ctx *t, const char *model) {
  char why[256];
  const char *on = getenv("ZOO_EMU_TESTS");
  if (on && strcmp(on, "0") == 0) SKIP("ZOO_EMU_TESTS=0");
  if (!emu_available(why, sizeof why)) SKIP("%s", why);
  zoo_define defs[] = {{"vocab_size", "64"}, {"d_model", "24"}, {"seq_len", "16"}};
  zoo_program *p = compile_model(model, defs, 3);
  CHECKF(p, "%s does not compile", model);
  zoo_graph *g = &p->graph;
  zoo_diag d;
  zoo_diag_init(&d, stderr);
  CHECK(zoo_train_graph_head(g, ZOO_HEAD_COMPACT, 16, &d) == 0); /* the head CUDA trains with */
  const int64_t B = 3, T = 16, V = 64;
  int np = g->nparams;
  float **p0 = calloc((size_t)np, sizeof *p0);
  for (int i = 0; i < np; i++) p0[i] = malloc((size_t)zoo_type_numel(&g->tensors[g->params[i]].type, NULL) * 4);
  zoo_train_init_params(g, 11, p0);
  /* the inits leave many zeros and ones (LayerNorm, biases): move every
   * parameter a little, so that each term of the fused kernels shows */
  for (int i = 0; i < np; i++) {
    int64_t n = zoo_type_numel(&g->tensors[g->params[i]].type, NULL);
    for (int64_t e = 0; e < n; e++) p0[i][e] += 0.05f * (float)((e * 7 + i) % 11 - 5) / 5.0f;
  }
  int32_t *tok = malloc((size_t)(B * T) * 4), *tgt = malloc((size_t)(B * T) * 4);
  uint64_t r = 17;
  for (int64_t e = 0; e < B * T; e++) {
    r = zoo_rng_mix(r + 1);
    tok[e] = (int32_t)(r % (uint64_t)V);
    tgt[e] = (r >> 20) % 3 == 0 ? (int32_t)((r >> 30) % (uint64_t)V) : -100;
  }
  step_result a, b;
  char err[1024];
  memset(&b, 0, sizeof b);
  int ok = emulate_step(g, ZOO_FUSE_ALL, B, T, p0, tok, tgt, &a, err, sizeof err) == 0;
  if (!ok) fprintf(stderr, "  fused: %s\n", err);
  if (ok && emulate_step(g, ZOO_FUSE_CHAINS, B, T, p0, tok, tgt, &b, err, sizeof err) != 0) {
    fprintf(stderr, "  unfused: %s\n", err);
    ok = 0;
  }
  double worst = 0, scale = 1e-30;
  if (ok) {
    for (int64_t e = 0; e < a.nflat; e++) {
      double dd = fabs((double)a.grads[e] - (double)b.grads[e]);
      if (!(dd <= worst)) worst = dd;
      if (fabs(b.grads[e]) > scale) scale = fabs(b.grads[e]);
    }
  }
  int nonzero = ok && scale > 1e-20;
  for (int i = 0; i < np; i++) free(p0[i]);
  free(p0);
  free(tok);
  free(tgt);
  free(a.grads);
  free(b.grads);
  zoo_program_free(p);
  CHECK(ok);
  CHECKF(fabs(a.loss - b.loss) <= 1e-6 * fabs(b.loss), "%s loss: fused %.9g, unfused %.9g", model, a.loss, b.loss);
  CHECKF(a.metrics[0] == b.metrics[0] && a.metrics[1] == b.metrics[1], "%s metrics differ", model);
  CHECKF(fabs(a.eval_loss - b.eval_loss) <= 1e-6 * fabs(b.eval_loss), "%s eval loss: fused %.9g, unfused %.9g",
         model, a.eval_loss, b.eval_loss);
  CHECKF(a.eval_metrics[0] == b.eval_metrics[0] && a.eval_metrics[1] == b.eval_metrics[1], "%s eval metrics differ", model);
  CHECK(nonzero);
  CHECKF(worst <= 1e-5 * scale, "%s gradients: fused and unfused differ by %.3g (largest %.3g)", model, worst, scale);
}

TEST(emu_fuse_rebased) { emu_fuse(t, "rebased"); }
TEST(emu_fuse_conv_attention) { emu_fuse(t, "conv_attention"); }

/* ---------------------------------------------------------------------------
 * Views: with one head, split_heads and merge_heads move nothing, so they are
 * aliases like reshape (no step); with several they stay gather kernels.
 * (ReBased's and Based's are gone from the training graph: the
 * heads-interleaved rewrite, test_interleave.c; so are MHA's, by the
 * packed-attention rewrite, which these graphs are built without.) */

static int head_moves(const char *model, const char *heads, int *views) {
  zoo_define defs[] = {{"vocab_size", "64"}, {"d_model", "24"}, {"seq_len", "16"}, {"num_heads", heads}};
  zoo_program *p = compile_model(model, defs, 4);
  if (!p) return -1;
  zoo_diag d;
  zoo_diag_init(&d, stderr);
  zoo_cuda_program cp;
  char err[512];
  int steps = -1;
  char *saved = zoo_test_env_set("ZOO_NO_PACKED_ATTENTION", "1");
  int built = zoo_train_graph_head(&p->graph, ZOO_HEAD_COMPACT, 16, &d) == 0;
  zoo_test_env_restore("ZOO_NO_PACKED_ATTENTION", saved);
  if (built &&
      zoo_cuda_program_build(&cp, &p->graph, 4, 16, ZOO_FUSE_ALL, 1, err, sizeof err) == 0) {
    steps = 0;
    *views = 0;
    for (int i = 0; i < cp.emit.nsteps; i++) {
      const zoo_step *s = &cp.emit.steps[i];
      if (s->node < 0) continue;
      const zoo_graph *g = i < cp.ntrain ? &cp.train : &cp.eval;
      zoo_op op = g->nodes[s->node].op;
      steps += op == ZOO_OP_SPLIT_HEADS || op == ZOO_OP_MERGE_HEADS;
    }
    for (int i = 0; i < cp.train.nnodes; i++)
      *views += (cp.train.nodes[i].op == ZOO_OP_SPLIT_HEADS || cp.train.nodes[i].op == ZOO_OP_MERGE_HEADS) &&
                zoo_cuda_is_view(&cp.train, cp.sym, &cp.train.nodes[i]);
    zoo_cuda_program_free(&cp);
  }
  zoo_program_free(p);
  return steps;
}

TEST(fuse_one_head_views) {
  int views = -1, steps = head_moves("attention", "1", &views);
  CHECKF(steps == 0 && views > 0, "attention (one head): %d head steps, %d views", steps, views);
  steps = head_moves("attention", "4", &views);
  CHECKF(steps > 0 && views == 0, "attention (4 heads): %d head steps, %d views", steps, views);
}
