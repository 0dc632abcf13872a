/* test_head.c: the fused LM head of the training graph (compiler/train_graph.c)
 * and its CPU kernels: linear_cross_entropy, its backward and the 3-input
 * accuracy (runtime/cpu_ops.c).
 *
 * The rewritten training graph of every shipped model must give the same loss,
 * metrics and parameter gradients as the plain one (logits, cross_entropy,
 * accuracy) and must not make the logits; the kernels must skip unlabelled rows
 * entirely and give the same bits whatever the number of threads. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../compiler/compile.h"
#include "../runtime/cpu.h"
#include "test.h"

/* ---------------------------------------------------------------------------
 * Whole models, rewritten and plain */

typedef struct run {
  zoo_program *p;
  zoo_cpu cpu;
  int ok;
} run;

static uint64_t lcg(uint64_t *s) {
  *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
  return *s >> 11;
}
static double urand(uint64_t *s) { return (double)lcg(s) / 9007199254740992.0; }

/* HV: a vocabulary no other width of the models equals; HVC: the compacted
 * head's, a multiple of 128, so that at d_model 24 its step is folded into
 * linear_cross_entropy_step (train_graph.c) */
enum { HB = 8, HT = 32, HV = 37, HVC = 128 };

/* The batch's tokens and targets (40% unlabelled) over vocabulary V, from a
 * fixed seed, and the most labelled positions a sequence has. */
static int make_batch(int32_t *tok, int32_t *tgt, int V) {
  uint64_t seed = 7;
  int most = 0;
  for (int b = 0; b < HB; b++) {
    int n = 0;
    for (int i = b * HT; i < (b + 1) * HT; i++) {
      tok[i] = (int32_t)(urand(&seed) * V);
      tgt[i] = urand(&seed) < 0.4 ? -100 : (int32_t)(urand(&seed) * V);
      n += tgt[i] != -100;
    }
    if (n > most) most = n;
  }
  return most;
}

/* Compiles models/<name>.zoo at vocabulary V, d_model dm, seq_len HT, two
 * heads; builds its training graph with the given head (the compacted one with
 * two rows to spare per sequence); binds B = HB, T = HT and fills parameters,
 * tokens and targets from fixed seeds, the same for every form. */
/* tc: the training graph as the CUDA backend makes it for precision tf32 and
 * bf16 (zoo_train_graph_tc). */
static int run_init_tc(run *r, const char *name, zoo_head head, int V, int dm, int tc) {
  memset(r, 0, sizeof *r);
  char path[64], vocab[16], dmodel[16];
  snprintf(path, sizeof path, "models/%s.zoo", name);
  snprintf(vocab, sizeof vocab, "%d", V);
  snprintf(dmodel, sizeof dmodel, "%d", dm);
  zoo_define defs[4] = {{"vocab_size", vocab}, {"d_model", dmodel}, {"seq_len", "32"}, {"num_heads", "2"}};
  zoo_compile_opts o = {.path = path, .defines = defs, .ndefines = 4, .std_dir = "models"};
  zoo_diag d;
  zoo_diag_init(&d, stderr);
  if (zoo_compile(&o, &d, &r->p) != 0 || !r->p) return -1;
  zoo_graph *g = &r->p->graph;
  int32_t tok0[HB * HT], tgt0[HB * HT];
  int most = make_batch(tok0, tgt0, V);
  if (zoo_train_graph_tc(g, head, most + 2, tc, &d) != 0) return -1;
  int64_t syms[ZOO_MAX_SYMS] = {0};
  for (int s = 0; s < g->nsyms; s++)
    syms[s] = strcmp(g->sym_names[s], "B") == 0 ? HB : strcmp(g->sym_names[s], "T") == 0 ? HT : 1;
  if (zoo_cpu_init(&r->cpu, g, syms) != 0) return -1;
  r->ok = 1;
  uint64_t seed = 11;
  for (int i = 0; i < g->nparams; i++) {
    int t = g->params[i];
    float *v = zoo_cpu_f32(&r->cpu, t);
    zoo_init_kind k = g->tensors[t].init.kind;
    for (int64_t j = 0; j < r->cpu.numel[t]; j++) {
      double u = 2 * urand(&seed) - 1;
      v[j] = (float)(k == ZOO_INIT_ONES ? 1 + 0.2 * u : k == ZOO_INIT_ZEROS ? 0.1 * u : 0.5 * u);
    }
  }
  int tokens = -1;
  for (int i = 0; i < g->ninputs; i++)
    if (strcmp(g->tensors[g->inputs[i]].name, "tokens") == 0) tokens = g->inputs[i];
  memcpy(zoo_cpu_i32(&r->cpu, tokens), tok0, sizeof tok0);
  memcpy(zoo_cpu_i32(&r->cpu, g->targets), tgt0, sizeof tgt0);
  zoo_cpu_f32(&r->cpu, g->dloss)[0] = 0.5f;
  r->cpu.training = 1;
  r->cpu.seed = 1234;
  return 0;
}

static int run_init_at(run *r, const char *name, zoo_head head, int V, int dm) {
  return run_init_tc(r, name, head, V, dm, 0);
}

static void run_free(run *r) {
  if (r->ok) zoo_cpu_free(&r->cpu);
  if (r->p) zoo_program_free(r->p);
}

/* max |a - b| over max |b| (0 when both are all zero) */
static double rel_diff(const float *a, const float *b, int64_t n) {
  double m = 0, scale = 0;
  for (int64_t i = 0; i < n; i++) {
    double e = fabs((double)a[i] - b[i]);
    if (!(e <= m)) m = e; /* NaN counts */
    if (fabs(b[i]) > scale) scale = fabs(b[i]);
  }
  return scale > 0 ? m / scale : m;
}

/* Every node reads tensors made before it (or inputs and parameters), and
 * every tensor a node makes names that node as its producer. */
static int graph_consistent(const zoo_graph *g) {
  for (int i = 0; i < g->nnodes; i++) {
    const zoo_node *n = &g->nodes[i];
    for (int k = 0; k < n->nin; k++) {
      const zoo_tensor *x = &g->tensors[n->in[k]];
      if (n->in[k] < 0 || n->in[k] >= g->ntensors) return 0;
      if (x->kind == ZOO_T_VALUE && (x->producer < 0 || x->producer >= i)) return 0;
    }
    for (int k = 0; k < n->nout; k++)
      if (g->tensors[n->out[k]].producer != i || g->tensors[n->out[k]].out_index != k) return 0;
  }
  return 1;
}

static int count_op(const zoo_graph *g, zoo_op op, int end) {
  int c = 0;
  for (int i = 0; i < end; i++) c += g->nodes[i].op == op;
  return c;
}

/* A plain or compacted head's loss, metrics and dlogits come from one
 * cross_entropy_step node (train_graph.c folds the three nodes after autodiff):
 * no cross_entropy, accuracy or cross_entropy_bwd is left. */
static int plain_step(const zoo_graph *g) {
  int p = g->tensors[g->loss].producer;
  const zoo_node *n = &g->nodes[p];
  return n->op == ZOO_OP_CROSS_ENTROPY_STEP && g->tensors[g->metrics].producer == p &&
         n->out[1] == g->metrics && n->in[2] == g->dloss && p < g->nforward &&
         count_op(g, ZOO_OP_CROSS_ENTROPY_STEP, g->nnodes) == 1 &&
         count_op(g, ZOO_OP_CROSS_ENTROPY, g->nnodes) == 0 && count_op(g, ZOO_OP_ACCURACY, g->nnodes) == 0 &&
         count_op(g, ZOO_OP_CROSS_ENTROPY_BWD, g->nnodes) == 0;
}

/* The fused head: the logits node is gone, and nothing dangles. */
static int fused_shape(const zoo_graph *gf, const zoo_graph *gp) {
  const zoo_node *lf = &gf->nodes[gf->tensors[gf->loss].producer];
  const zoo_node *mf = &gf->nodes[gf->tensors[gf->metrics].producer];
  int shape_ok = gf->output == -1 && gp->output >= 0 && lf->op == ZOO_OP_LINEAR_CROSS_ENTROPY &&
                 mf->op == ZOO_OP_ACCURACY && mf->nin == 3 && plain_step(gp) &&
                 count_op(gf, ZOO_OP_LINEAR, gf->nforward) + 1 == count_op(gp, ZOO_OP_LINEAR, gp->nforward) &&
                 count_op(gf, ZOO_OP_CROSS_ENTROPY, gf->nnodes) == 0 &&
                 count_op(gf, ZOO_OP_CROSS_ENTROPY_BWD, gf->nnodes) == 0 &&
                 count_op(gf, ZOO_OP_CROSS_ENTROPY_STEP, gf->nnodes) == 0 &&
                 gf->nforward == gp->nforward && graph_consistent(gf) && graph_consistent(gp);
  for (int i = 0; i < gf->nnodes; i++) /* no tensor of the logits' width [.., HV] but w and dw */
    for (int k = 0; k < gf->nodes[i].nout; k++) {
      const zoo_type *ty = &gf->tensors[gf->nodes[i].out[k]].type;
      if (ty->ndim >= 2 && ty->dim[ty->ndim - 1].coef == HV && ty->dim[ty->ndim - 1].sym == 0 &&
          (ty->ndim != 2 || ty->dim[0].sym != 0))
        shape_ok = 0;
    }
  return shape_ok;
}

/* The compacted head at small D: label_rows and gather_rows take the M
 * labelled rows, one linear_cross_entropy_step node (the linear,
 * cross_entropy_step and linear's input gradient folded, train_graph.c) makes
 * loss, metrics, dlogits [M, V] and dhc from them, and no logits; dw is
 * the one matmul left reading dlogits; the backward scatters dhc back. */
static int lce_step(const zoo_graph *g) {
  int p = g->tensors[g->loss].producer, lr = -1, gr = -1;
  const zoo_node *n = &g->nodes[p];
  for (int i = 0; i < g->nnodes; i++) {
    if (g->nodes[i].op == ZOO_OP_LABEL_ROWS) lr = i;
    if (g->nodes[i].op == ZOO_OP_GATHER_ROWS) gr = i;
  }
  if (n->op != ZOO_OP_LINEAR_CROSS_ENTROPY_STEP || lr < 0 || gr < 0) return 0;
  const zoo_type *dl = &g->tensors[n->out[2]].type;
  int dw_readers = 0, scatter_dh = 0;
  for (int i = 0; i < g->nnodes; i++) {
    const zoo_node *m = &g->nodes[i];
    dw_readers += m->op == ZOO_OP_MATMUL && m->in[0] == n->out[2] && m->attrs.i[0] == 1;
    scatter_dh += m->op == ZOO_OP_SCATTER_ROWS && m->in[0] == n->out[3];
  }
  return g->tensors[g->metrics].producer == p && n->out[1] == g->metrics && n->in[0] == g->nodes[gr].out[0] &&
         n->in[2] == g->nodes[lr].out[2] && n->in[3] == g->dloss && p < g->nforward && dl->ndim == 2 &&
         zoo_dim_eq(dl->dim[0], g->tensors[g->nodes[lr].out[0]].type.dim[0]) && dl->dim[0].sym != 0 &&
         dl->dim[1].coef == HVC && dw_readers == 1 && scatter_dh == 1 &&
         count_op(g, ZOO_OP_LINEAR_CROSS_ENTROPY_STEP, g->nnodes) == 1 &&
         count_op(g, ZOO_OP_CROSS_ENTROPY_STEP, g->nnodes) == 0 &&
         count_op(g, ZOO_OP_CROSS_ENTROPY, g->nnodes) == 0 && count_op(g, ZOO_OP_ACCURACY, g->nnodes) == 0 &&
         count_op(g, ZOO_OP_CROSS_ENTROPY_BWD, g->nnodes) == 0;
}

/* The compacted head: label_rows, gather_rows and the logits over M rows, the
 * loss and metrics reading those; the backward scatters the rows back. (With
 * ZOO_FUSED_LCE_STEP=1 the logits and the loss become one node: step_fold,
 * below.) */
static int compact_shape(const zoo_graph *gf, const zoo_graph *gp) {
  const zoo_node *lf = &gf->nodes[gf->tensors[gf->loss].producer];
  const zoo_type *lt = &gf->tensors[lf->in[0]].type;
  int lr = -1;
  for (int i = 0; i < gf->nnodes; i++)
    if (gf->nodes[i].op == ZOO_OP_LABEL_ROWS) lr = i;
  return gf->output == -1 && plain_step(gf) && plain_step(gp) && lr >= 0 && lt->ndim == 2 &&
         zoo_dim_eq(lt->dim[0], gf->tensors[gf->nodes[lr].out[0]].type.dim[0]) &&
         lt->dim[0].sym != 0 && lt->dim[1].coef == HVC && lf->in[1] == gf->nodes[lr].out[2] &&
         count_op(gf, ZOO_OP_GATHER_ROWS, gf->nforward) == 1 &&
         count_op(gf, ZOO_OP_SCATTER_ROWS, gf->nnodes) == 1 &&
         count_op(gf, ZOO_OP_LINEAR_CROSS_ENTROPY_STEP, gf->nnodes) == 0 &&
         gf->nforward == gp->nforward + 2 && graph_consistent(gf) && graph_consistent(gp);
}

/* Model `name` with a rewritten head against the plain one: graph shape, then
 * training step and evaluation. */
static void head_model(zoo_test_ctx *t, const char *name, zoo_head head) {
  run f, p;
  int V = head == ZOO_HEAD_COMPACT ? HVC : HV;
  int rf = run_init_at(&f, name, head, V, 24), rp = run_init_at(&p, name, ZOO_HEAD_PLAIN, V, 24);
  if (rf || rp) {
    run_free(&f), run_free(&p);
    CHECKF(0, "%s does not compile or bind", name);
  }
  const zoo_graph *gf = &f.p->graph, *gp = &p.p->graph;
  int shape_ok = head == ZOO_HEAD_FUSED ? fused_shape(gf, gp) : compact_shape(gf, gp);
  if (!shape_ok) {
    run_free(&f), run_free(&p);
    CHECKF(0, "%s: the %s training graph is not as expected", name,
           head == ZOO_HEAD_FUSED ? "fused" : "compacted");
  }

  int e1 = zoo_cpu_run(&f.cpu, 0, gf->nnodes), e2 = zoo_cpu_run(&p.cpu, 0, gp->nnodes);
  double worst = 0;
  int same_bits = 1, same_metrics = 0;
  float lossf = 0, lossp = 0;
  if (!e1 && !e2) {
    lossf = zoo_cpu_f32(&f.cpu, gf->loss)[0], lossp = zoo_cpu_f32(&p.cpu, gp->loss)[0];
    const float *af = zoo_cpu_f32(&f.cpu, gf->metrics), *ap = zoo_cpu_f32(&p.cpu, gp->metrics);
    same_metrics = af[0] == ap[0] && af[1] == ap[1] && ap[1] > 0;
    same_bits = lossf == lossp;
    for (int i = 0; i < gf->nparams; i++) {
      int tf = gf->tensors[gf->params[i]].grad, tp = gp->tensors[gp->params[i]].grad;
      int64_t n = f.cpu.numel[gf->params[i]];
      const float *a = zoo_cpu_f32(&f.cpu, tf), *b = zoo_cpu_f32(&p.cpu, tp);
      double r = rel_diff(a, b, n);
      if (r > worst) worst = r;
      same_bits &= memcmp(a, b, (size_t)n * sizeof *a) == 0;
    }
  }
  /* evaluation: the forward nodes without dropout */
  f.cpu.training = p.cpu.training = 0;
  int e3 = zoo_cpu_run(&f.cpu, 0, gf->nforward), e4 = zoo_cpu_run(&p.cpu, 0, gp->nforward);
  int eval_same = !e3 && !e4 &&
                  fabs(zoo_cpu_f32(&f.cpu, gf->loss)[0] - zoo_cpu_f32(&p.cpu, gp->loss)[0]) <=
                      1e-5 * fabs(zoo_cpu_f32(&p.cpu, gp->loss)[0]) &&
                  zoo_cpu_f32(&f.cpu, gf->metrics)[0] == zoo_cpu_f32(&p.cpu, gp->metrics)[0];
  printf("  %s: loss %.6f (plain %.6f), gradients within %.2g of the plain head%s\n", name, lossf,
         lossp, worst, same_bits ? " (bit for bit)" : "");
  run_free(&f), run_free(&p);
  CHECKF(!e1 && !e2 && !e3 && !e4, "%s: a CPU run failed", name);
  CHECKF(fabs(lossf - lossp) <= 1e-5 * fabs(lossp), "%s: loss %.9g vs %.9g", name, lossf, lossp);
  CHECKF(same_metrics, "%s: metrics differ", name);
  CHECKF(worst <= 1e-5, "%s: gradients differ by %g", name, worst);
  CHECKF(eval_same, "%s: evaluation differs", name);
}

TEST(head_rebased) { head_model(t, "rebased", ZOO_HEAD_FUSED); }
TEST(head_based) { head_model(t, "based", ZOO_HEAD_FUSED); }
TEST(head_conv_attention) { head_model(t, "conv_attention", ZOO_HEAD_FUSED); }
TEST(head_attention) { head_model(t, "attention", ZOO_HEAD_FUSED); }
TEST(head_compact_rebased) { head_model(t, "rebased", ZOO_HEAD_COMPACT); }
TEST(head_compact_based) { head_model(t, "based", ZOO_HEAD_COMPACT); }
TEST(head_compact_conv_attention) { head_model(t, "conv_attention", ZOO_HEAD_COMPACT); }
TEST(head_compact_attention) { head_model(t, "attention", ZOO_HEAD_COMPACT); }

/* The compacted head's step folded into linear_cross_entropy_step (with
 * ZOO_FUSED_LCE_STEP=1) against the same graph without (linear,
 * cross_entropy_step and the matmul of linear's input gradient): the same
 * tensors (ids kept), and the same training step and evaluation on the CPU,
 * bit for bit. */
static void step_fold(zoo_test_ctx *t, const char *name) {
  run f, u;
  char *saved = zoo_test_env_set("ZOO_FUSED_LCE_STEP", "1");
  int rf = run_init_at(&f, name, ZOO_HEAD_COMPACT, HVC, 24);
  unsetenv("ZOO_FUSED_LCE_STEP");
  int ru = run_init_at(&u, name, ZOO_HEAD_COMPACT, HVC, 24);
  zoo_test_env_restore("ZOO_FUSED_LCE_STEP", saved);
  if (rf || ru) {
    run_free(&f), run_free(&u);
    CHECKF(0, "%s does not compile or bind", name);
  }
  const zoo_graph *gf = &f.p->graph, *gu = &u.p->graph;
  const zoo_node *sf = &gf->nodes[gf->tensors[gf->loss].producer];
  int shape_ok = lce_step(gf) && count_op(gu, ZOO_OP_LINEAR_CROSS_ENTROPY_STEP, gu->nnodes) == 0 &&
                 count_op(gu, ZOO_OP_CROSS_ENTROPY_STEP, gu->nnodes) == 1 && gf->nnodes + 2 == gu->nnodes &&
                 gf->nforward + 1 == gu->nforward && gf->ntensors == gu->ntensors && graph_consistent(gu) &&
                 gu->tensors[sf->out[2]].producer >= 0 && gu->tensors[sf->out[3]].producer >= 0;
  int e1 = zoo_cpu_run(&f.cpu, 0, gf->nnodes), e2 = zoo_cpu_run(&u.cpu, 0, gu->nnodes);
  int same = !e1 && !e2 && shape_ok;
  for (int k = 0; same && k < 4; k++) { /* loss, metrics, dlogits, dhc */
    int tt = sf->out[k];
    same = memcmp(f.cpu.data[tt], u.cpu.data[tt], (size_t)f.cpu.numel[tt] * 4) == 0;
  }
  for (int i = 0; same && i < gf->nparams; i++) {
    int tg = gf->tensors[gf->params[i]].grad;
    same = tg == gu->tensors[gu->params[i]].grad && memcmp(f.cpu.data[tg], u.cpu.data[tg], (size_t)f.cpu.numel[tg] * 4) == 0;
  }
  f.cpu.training = u.cpu.training = 0;
  int e3 = zoo_cpu_run(&f.cpu, 0, gf->nforward), e4 = zoo_cpu_run(&u.cpu, 0, gu->nforward);
  int eval_same = !e3 && !e4 && memcmp(f.cpu.data[gf->loss], u.cpu.data[gu->loss], 4) == 0 &&
                  memcmp(f.cpu.data[gf->metrics], u.cpu.data[gu->metrics], 8) == 0;
  run_free(&f), run_free(&u);
  CHECKF(shape_ok, "%s: the folded and unfolded graphs are not as expected", name);
  CHECKF(same, "%s: the training step differs (or a run failed)", name);
  CHECKF(eval_same, "%s: evaluation differs", name);
}

TEST(head_step_fold_rebased) { step_fold(t, "rebased"); }
TEST(head_step_fold_based) { step_fold(t, "based"); }
TEST(head_step_fold_conv_attention) { step_fold(t, "conv_attention"); }
TEST(head_step_fold_attention) { step_fold(t, "attention"); }

/* The fold: in fp32 only with ZOO_FUSED_LCE_STEP=1 (not by default, not with
 * 0); with tc (precision tf32 and bf16) by default, not with 0; and never
 * where the kernels cannot take the shapes (D 128 or 26, V 37) or for the
 * plain head (its logits are the output). */
TEST(head_step_fold_conditions) {
  struct { int V, dm; const char *on; zoo_head head; int tc, folded; } cases[] = {
      {HVC, 24, "1", ZOO_HEAD_COMPACT, 0, 1},  {HVC, 128, "1", ZOO_HEAD_COMPACT, 0, 0},
      {HVC, 26, "1", ZOO_HEAD_COMPACT, 0, 0},  {HV, 24, "1", ZOO_HEAD_COMPACT, 0, 0},
      {HVC, 24, NULL, ZOO_HEAD_COMPACT, 0, 0}, {HVC, 24, "0", ZOO_HEAD_COMPACT, 0, 0},
      {HVC, 24, "1", ZOO_HEAD_PLAIN, 0, 0},    {HVC, 64, "1", ZOO_HEAD_COMPACT, 0, 1},
      {HVC, 24, NULL, ZOO_HEAD_COMPACT, 1, 1}, {HVC, 24, "0", ZOO_HEAD_COMPACT, 1, 0},
      {HVC, 128, NULL, ZOO_HEAD_COMPACT, 1, 0},
  };
  for (int c = 0; c < (int)(sizeof cases / sizeof *cases); c++) {
    char *saved = zoo_test_env_set("ZOO_FUSED_LCE_STEP", cases[c].on);
    run r;
    int rc = run_init_tc(&r, "rebased", cases[c].head, cases[c].V, cases[c].dm, cases[c].tc);
    zoo_test_env_restore("ZOO_FUSED_LCE_STEP", saved);
    int folded = -1, consistent = 0;
    if (rc == 0) {
      const zoo_graph *g = &r.p->graph;
      folded = count_op(g, ZOO_OP_LINEAR_CROSS_ENTROPY_STEP, g->nnodes);
      consistent = graph_consistent(g) && (folded ? lce_step(g) || cases[c].V != HVC : plain_step(g));
    }
    run_free(&r);
    CHECKF(rc == 0 && folded == cases[c].folded && consistent,
           "case %d (V %d, d_model %d, switch %s, tc %d): folded %d", c, cases[c].V, cases[c].dm,
           cases[c].on ? cases[c].on : "unset", cases[c].tc, folded);
  }
}

/* ZOO_NO_FUSED_HEAD=1 keeps the logits; zoo_train_graph fuses by default. */
TEST(head_switch) {
  char *saved = zoo_test_env_set("ZOO_NO_FUSED_HEAD", NULL);
  int outputs[2], losses[2];
  for (int k = 0; k < 2; k++) {
    if (k == 0) unsetenv("ZOO_NO_FUSED_HEAD");
    else setenv("ZOO_NO_FUSED_HEAD", "1", 1);
    zoo_compile_opts o = {.path = "models/rebased.zoo", .std_dir = "models"};
    zoo_diag d;
    zoo_diag_init(&d, stderr);
    zoo_program *p = NULL;
    outputs[k] = losses[k] = -2;
    if (zoo_compile(&o, &d, &p) == 0 && zoo_train_graph(&p->graph, &d) == 0) {
      outputs[k] = p->graph.output;
      losses[k] = p->graph.nodes[p->graph.tensors[p->graph.loss].producer].op;
    }
    if (p) zoo_program_free(p);
  }
  zoo_test_env_restore("ZOO_NO_FUSED_HEAD", saved);
  CHECK(outputs[0] == -1 && losses[0] == ZOO_OP_LINEAR_CROSS_ENTROPY);
  CHECK(outputs[1] >= 0 && losses[1] == ZOO_OP_CROSS_ENTROPY_STEP);
}

/* Graphs made by hand: tokens -> embedding (E [V, D]) -> head, optionally a
 * node after the head (so the logits are not the last tensor), a bias, or a
 * second reader of the logits. */
typedef struct hand {
  zoo_graph g;
  zoo_diag d;
  int tokens, E, logits;
} hand;

static void hand_build(hand *h, int bias, int reader, int after) {
  zoo_graph_init(&h->g);
  zoo_diag_init(&h->d, stderr);
  int B = zoo_graph_symbol(&h->g, "B");
  zoo_type tt = {.dtype = ZOO_I32, .ndim = 2, .dim = {{1, 1u << B}, {5, 0}}};
  zoo_type et = {.dtype = ZOO_F32, .ndim = 2, .dim = {{7, 0}, {3, 0}}};
  zoo_type bt = {.dtype = ZOO_F32, .ndim = 1, .dim = {{7, 0}}};
  zoo_init init = {.kind = ZOO_INIT_NORMAL, .a = 0.5};
  h->tokens = zoo_graph_input(&h->g, "tokens", tt);
  h->E = zoo_graph_param(&h->g, "E", et, init);
  int b = bias ? zoo_graph_param(&h->g, "b", bt, init) : -1;
  int in[3] = {h->E, h->tokens, -1};
  int x = zoo_graph_node(&h->g, ZOO_OP_EMBEDDING, 2, in, NULL, zoo_nospan, &h->d);
  int lin[3] = {x, h->E, b};
  h->logits = zoo_graph_node(&h->g, ZOO_OP_LINEAR, bias ? 3 : 2, lin, NULL, zoo_nospan, &h->d);
  if (reader) zoo_graph_node(&h->g, ZOO_OP_EXP, 1, &h->logits, NULL, zoo_nospan, &h->d);
  if (after) zoo_graph_node(&h->g, ZOO_OP_SIGMOID, 1, &x, NULL, zoo_nospan, &h->d);
  h->g.output = h->logits;
}

TEST(head_rewrite_conditions) {
  struct { int bias, reader, after, fused; } cases[] = {
      {0, 0, 0, 1}, {1, 0, 0, 0}, {0, 1, 0, 0}, {0, 0, 1, 1}, {0, 1, 1, 0}};
  for (int c = 0; c < 5; c++) {
    hand h;
    hand_build(&h, cases[c].bias, cases[c].reader, cases[c].after);
    int nt = h.g.ntensors;
    CHECK(zoo_train_graph_head(&h.g, ZOO_HEAD_FUSED, 0, &h.d) == 0);
    const zoo_node *ln = &h.g.nodes[h.g.tensors[h.g.loss].producer];
    int fused = ln->op == ZOO_OP_LINEAR_CROSS_ENTROPY;
    int ok = fused == cases[c].fused && graph_consistent(&h.g) && (h.g.output == -1) == fused;
    /* the logits leave the table when they are its last tensor, else stay unproduced */
    if (fused && cases[c].after)
      ok &= h.g.tensors[h.logits].producer == -1 && h.g.tensors[h.logits].kind == ZOO_T_VALUE;
    if (fused && !cases[c].after) ok &= h.g.targets == nt - 1; /* took the logits' id */
    /* it runs, and the unproduced logits get no buffer of their own size */
    int64_t syms[1] = {3};
    zoo_cpu cpu;
    int rc = zoo_cpu_init(&cpu, &h.g, syms);
    if (rc == 0) {
      int32_t *tg = zoo_cpu_i32(&cpu, h.g.targets), *tok = zoo_cpu_i32(&cpu, h.tokens);
      for (int i = 0; i < 15; i++) tok[i] = i % 7, tg[i] = i % 3 ? (i * 5) % 7 : -100;
      for (int i = 0; i < 21; i++) zoo_cpu_f32(&cpu, h.E)[i] = (float)sin(i + 1.0);
      zoo_cpu_f32(&cpu, h.g.dloss)[0] = 1;
      rc = zoo_cpu_run(&cpu, 0, h.g.nnodes);
      ok &= rc == 0 && zoo_cpu_f32(&cpu, h.g.metrics)[1] == 10.0f &&
            isfinite(zoo_cpu_f32(&cpu, h.g.loss)[0]) && zoo_cpu_f32(&cpu, h.g.loss)[0] > 0;
      zoo_cpu_free(&cpu);
    }
    zoo_graph_free(&h.g);
    CHECKF(ok && rc == 0, "case %d (bias %d, reader %d, after %d)", c, cases[c].bias,
           cases[c].reader, cases[c].after);
  }
}

/* ---------------------------------------------------------------------------
 * The kernels */

/* A graph with h [N, D], w [V, D], targets [N], dloss and the nodes
 * linear_cross_entropy, its backward, accuracy (h, w, t), and the plain
 * forms: logits = linear(h, w), cross_entropy, accuracy (logits, t). */
typedef struct kg {
  zoo_graph g;
  zoo_diag d;
  int h, w, t, dl, lce, bwd, acc3, logits, ce, acc2;
} kg;

static void kg_build(kg *k, int64_t N, int64_t D, int64_t V) {
  zoo_graph_init(&k->g);
  zoo_diag_init(&k->d, stderr);
  zoo_type ht = {.dtype = ZOO_F32, .ndim = 2, .dim = {{N, 0}, {D, 0}}};
  zoo_type wt = {.dtype = ZOO_F32, .ndim = 2, .dim = {{V, 0}, {D, 0}}};
  zoo_type tt = {.dtype = ZOO_I32, .ndim = 1, .dim = {{N, 0}}};
  zoo_type st = {.dtype = ZOO_F32, .ndim = 0};
  k->h = zoo_graph_input(&k->g, "h", ht);
  k->w = zoo_graph_input(&k->g, "w", wt);
  k->t = zoo_graph_input(&k->g, "t", tt);
  k->dl = zoo_graph_input(&k->g, "dloss", st);
  zoo_attrs a = {0};
  a.i[0] = -100;
  int in3[3] = {k->h, k->w, k->t}, in4[4] = {k->dl, k->h, k->w, k->t};
  k->lce = zoo_graph_node(&k->g, ZOO_OP_LINEAR_CROSS_ENTROPY, 3, in3, &a, zoo_nospan, &k->d);
  k->bwd = zoo_graph_node(&k->g, ZOO_OP_LINEAR_CROSS_ENTROPY_BWD, 4, in4, &a, zoo_nospan, &k->d);
  k->acc3 = zoo_graph_node(&k->g, ZOO_OP_ACCURACY, 3, in3, &a, zoo_nospan, &k->d);
  k->logits = zoo_graph_node(&k->g, ZOO_OP_LINEAR, 2, in3, NULL, zoo_nospan, &k->d);
  int in2[2] = {k->logits, k->t};
  k->ce = zoo_graph_node(&k->g, ZOO_OP_CROSS_ENTROPY, 2, in2, &a, zoo_nospan, &k->d);
  k->acc2 = zoo_graph_node(&k->g, ZOO_OP_ACCURACY, 2, in2, &a, zoo_nospan, &k->d);
}

/* Fills h, w with values from seed, targets with about `labelled` of them set
 * (the rest -100), dloss = 0.75. */
static void kg_fill(kg *k, zoo_cpu *c, uint64_t seed, double labelled) {
  int64_t nh = c->numel[k->h], nw = c->numel[k->w], N = c->numel[k->t];
  int64_t V = nw / (nh / N);
  float *h = zoo_cpu_f32(c, k->h), *w = zoo_cpu_f32(c, k->w);
  for (int64_t i = 0; i < nh; i++) h[i] = (float)(2 * urand(&seed) - 1);
  for (int64_t i = 0; i < nw; i++) w[i] = (float)(2 * urand(&seed) - 1);
  int32_t *t = zoo_cpu_i32(c, k->t);
  for (int64_t i = 0; i < N; i++) t[i] = urand(&seed) < labelled ? (int32_t)(urand(&seed) * V) : -100;
  zoo_cpu_f32(c, k->dl)[0] = 0.75f;
}

/* accuracy (h, w, t): hand-made logits with a tie (first maximum wins) and an
 * ignored row; and the same as accuracy on linear's logits. */
TEST(head_accuracy3_small) {
  kg k;
  kg_build(&k, 4, 2, 3);
  /* w rows: (1, 0), (0, 1), (1, 0): logits of h = (a, b) are (a, b, a) */
  float w[6] = {1, 0, 0, 1, 1, 0};
  float h[8] = {2, 1, 1, 3, 5, 5, 0, 9};
  int32_t tg[4] = {0, 1, 2, -100}; /* row 2 ties 5, 5, 5: argmax 0 != 2 */
  zoo_cpu c;
  CHECK(zoo_cpu_init(&c, &k.g, NULL) == 0);
  memcpy(zoo_cpu_f32(&c, k.w), w, sizeof w);
  memcpy(zoo_cpu_f32(&c, k.h), h, sizeof h);
  memcpy(zoo_cpu_i32(&c, k.t), tg, sizeof tg);
  int rc = zoo_cpu_run(&c, 0, k.g.nnodes);
  float a3[2], a2[2];
  memcpy(a3, zoo_cpu_f32(&c, k.acc3), sizeof a3);
  memcpy(a2, zoo_cpu_f32(&c, k.acc2), sizeof a2);
  zoo_cpu_free(&c);
  zoo_graph_free(&k.g);
  CHECK(rc == 0);
  CHECKF(a3[0] == 2.0f && a3[1] == 3.0f, "accuracy (%g, %g)", a3[0], a3[1]);
  CHECK(a2[0] == a3[0] && a2[1] == a3[1]);
}

/* Shape rules of the 3-input accuracy. */
TEST(head_accuracy3_shapes) {
  kg k;
  kg_build(&k, 6, 4, 5);
  CHECK(k.acc3 >= 0 && k.g.tensors[k.acc3].type.ndim == 1 && k.g.tensors[k.acc3].type.dim[0].coef == 2);
  FILE *quiet = fopen("/dev/null", "w");
  zoo_diag_init(&k.d, quiet);
  zoo_attrs a = {0};
  int bad_w[3] = {k.h, k.h, k.t}; /* w [6, 4] would do; h as targets would not */
  int bad_t[3] = {k.h, k.w, k.h};
  int wrong_d[3] = {k.w, k.h, k.t}; /* h [5, 4] with w [6, 4], targets [6]: rows differ */
  CHECK(zoo_graph_node(&k.g, ZOO_OP_ACCURACY, 3, bad_w, &a, zoo_nospan, &k.d) >= 0);
  CHECK(zoo_graph_node(&k.g, ZOO_OP_ACCURACY, 3, bad_t, &a, zoo_nospan, &k.d) < 0);
  CHECK(zoo_graph_node(&k.g, ZOO_OP_ACCURACY, 3, wrong_d, &a, zoo_nospan, &k.d) < 0);
  if (quiet) fclose(quiet);
  zoo_graph_free(&k.g);
}

/* Runs the kernel graph at N, D, V on `threads` threads; copies out loss,
 * dh, dw, accuracy (3- and 2-input) and the plain loss. */
typedef struct kout {
  float loss, ce, acc3[2], acc2[2];
  float *dh, *dw;
} kout;

static int kg_run(int64_t N, int64_t D, int64_t V, double labelled, int threads, int nan_rows,
                  kout *o) {
  kg k;
  kg_build(&k, N, D, V);
  zoo_cpu c;
  if (zoo_cpu_init(&c, &k.g, NULL) != 0) return -1;
  kg_fill(&k, &c, 99, labelled);
  if (nan_rows) { /* unlabelled rows of h: NaN, which must not reach anything */
    for (int64_t r = 0; r < N; r++)
      if (zoo_cpu_i32(&c, k.t)[r] == -100)
        for (int64_t j = 0; j < D; j++) zoo_cpu_f32(&c, k.h)[r * D + j] = NAN;
  }
  int saved = omp_get_max_threads();
  omp_set_num_threads(threads);
  int rc = zoo_cpu_run(&c, 0, nan_rows ? 3 : k.g.nnodes); /* the plain forms read every row */
  omp_set_num_threads(saved);
  o->loss = zoo_cpu_f32(&c, k.lce)[0];
  o->ce = nan_rows ? 0 : zoo_cpu_f32(&c, k.ce)[0];
  memcpy(o->acc3, zoo_cpu_f32(&c, k.acc3), sizeof o->acc3);
  memcpy(o->acc2, nan_rows ? o->acc3 : zoo_cpu_f32(&c, k.acc2), sizeof o->acc2);
  o->dh = malloc((size_t)(N * D) * sizeof *o->dh);
  o->dw = malloc((size_t)(V * D) * sizeof *o->dw);
  memcpy(o->dh, zoo_cpu_f32(&c, k.bwd), (size_t)(N * D) * sizeof *o->dh);
  memcpy(o->dw, zoo_cpu_f32(&c, k.bwd + 1), (size_t)(V * D) * sizeof *o->dw);
  zoo_cpu_free(&c);
  zoo_graph_free(&k.g);
  return rc;
}

/* The same bits on 1 and 3 threads; several chunks of labelled rows (300 rows,
 * about 270 labelled), V not a multiple of the blocks; equal to the plain forms. */
TEST(head_kernels_threads) {
  enum { N = 300, D = 20, V = 203 };
  kout a, b;
  CHECK(kg_run(N, D, V, 0.9, 1, 0, &a) == 0);
  CHECK(kg_run(N, D, V, 0.9, 3, 0, &b) == 0);
  int same = a.loss == b.loss && a.acc3[0] == b.acc3[0] && a.acc3[1] == b.acc3[1] &&
             memcmp(a.dh, b.dh, N * D * sizeof(float)) == 0 &&
             memcmp(a.dw, b.dw, V * D * sizeof(float)) == 0;
  int plain = a.loss == a.ce && a.acc3[0] == a.acc2[0] && a.acc3[1] == a.acc2[1] && a.acc3[1] > 256;
  free(a.dh), free(a.dw), free(b.dh), free(b.dw);
  CHECK(same);
  CHECKF(plain, "loss %.9g vs %.9g, accuracy (%g, %g) vs (%g, %g)", a.loss, a.ce, a.acc3[0],
         a.acc3[1], a.acc2[0], a.acc2[1]);
}

/* Unlabelled rows are skipped entirely: NaN in their h changes nothing, their
 * dh is exactly zero. */
TEST(head_kernels_skip_unlabelled) {
  enum { N = 64, D = 8, V = 37 };
  kout a, b;
  CHECK(kg_run(N, D, V, 0.3, 2, 0, &a) == 0);
  CHECK(kg_run(N, D, V, 0.3, 2, 1, &b) == 0);
  int same = a.loss == b.loss && a.acc3[0] == b.acc3[0] && a.acc3[1] == b.acc3[1] &&
             memcmp(a.dh, b.dh, N * D * sizeof(float)) == 0 &&
             memcmp(a.dw, b.dw, V * D * sizeof(float)) == 0 && isfinite(a.loss) && a.acc3[1] > 0;
  int zero_rows = 0;
  for (int i = 0; i < N * D; i++) zero_rows += a.dh[i] == 0.0f && !signbit(a.dh[i]);
  free(a.dh), free(a.dw), free(b.dh), free(b.dw);
  CHECK(same);
  CHECK(zero_rows >= (N - (int)a.acc3[1]) * D);
}

/* No labelled row: loss 0, accuracy (0, 0), zero gradients. */
TEST(head_kernels_nothing_labelled) {
  kout a;
  CHECK(kg_run(10, 4, 9, 0.0, 2, 0, &a) == 0);
  int zeros = 1;
  for (int i = 0; i < 40; i++) zeros &= a.dh[i] == 0.0f;
  for (int i = 0; i < 36; i++) zeros &= a.dw[i] == 0.0f;
  free(a.dh), free(a.dw);
  CHECK(a.loss == 0.0f && a.acc3[0] == 0.0f && a.acc3[1] == 0.0f && zeros);
}

/* The losses' exponentials (exp4 in cpu_ops.c) against libm: logsumexp and
 * cross_entropy_bwd rows of many lengths, with terms far below the maximum and
 * -inf, agree to within one f32 ulp; NaN stays NaN. */
static int ulps_apart(float a, float b) {
  if (a == b) return 0;
  int k = 0;
  for (float x = a; x != b && k < 3; k++) x = nextafterf(x, b);
  return k;
}

TEST(head_exp_rows) {
  int lengths[] = {1, 2, 3, 4, 5, 7, 8, 9, 31, 8192};
  for (int li = 0; li < 10; li++) {
    int L = lengths[li];
    zoo_graph g;
    zoo_graph_init(&g);
    zoo_diag d;
    zoo_diag_init(&d, stderr);
    zoo_type xt = {.dtype = ZOO_F32, .ndim = 2, .dim = {{2, 0}, {L, 0}}};
    zoo_type tt = {.dtype = ZOO_I32, .ndim = 1, .dim = {{2, 0}}};
    zoo_type st = {.dtype = ZOO_F32, .ndim = 0};
    int x = zoo_graph_input(&g, "x", xt), tg = zoo_graph_input(&g, "t", tt), dl = zoo_graph_input(&g, "dl", st);
    zoo_attrs a = {0};
    a.i[0] = -100;
    int in3[3] = {dl, x, tg};
    int lse = zoo_graph_node(&g, ZOO_OP_LOGSUMEXP, 1, &x, NULL, zoo_nospan, &d);
    int grad = zoo_graph_node(&g, ZOO_OP_CROSS_ENTROPY_BWD, 3, in3, &a, zoo_nospan, &d);
    zoo_cpu c;
    CHECK(grad >= 0 && zoo_cpu_init(&c, &g, NULL) == 0);
    float *X = zoo_cpu_f32(&c, x);
    for (int j = 0; j < L; j++) X[j] = X[L + j] = (float)(30 * sin(0.7 * j + L));
    if (L > 1) X[1] = -1000.0f;
    if (L > 2) X[2] = -INFINITY;
    X[L + L / 2] = NAN; /* row 1 */
    zoo_cpu_i32(&c, tg)[0] = L - 1, zoo_cpu_i32(&c, tg)[1] = 0;
    zoo_cpu_f32(&c, dl)[0] = 0.5f;
    int rc = zoo_cpu_run(&c, 0, g.nnodes);
    double m = -INFINITY, s = 0;
    for (int j = 0; j < L; j++) m = fmax(m, X[j]);
    for (int j = 0; j < L; j++) s += exp(X[j] - m);
    int worst = ulps_apart(zoo_cpu_f32(&c, lse)[0], (float)(m + log(s)));
    for (int j = 0; j < L; j++) {
      float want = (float)(0.25 * (exp(X[j] - m) / s - (j == L - 1))); /* dloss / 2 rows */
      int u = ulps_apart(zoo_cpu_f32(&c, grad)[j], want);
      if (u > worst) worst = u;
    }
    int nan_row = isnan(zoo_cpu_f32(&c, lse)[1]) && isnan(zoo_cpu_f32(&c, grad)[L]);
    zoo_cpu_free(&c);
    zoo_graph_free(&g);
    CHECK(rc == 0);
    CHECKF(worst <= 1, "length %d: %d ulps from libm", L, worst);
    CHECKF(nan_row, "length %d: NaN lost", L);
  }
}

/* argmax keeps the scan's answer: the first maximum; NaN never wins, and a NaN
 * in column 0 is never beaten. */
TEST(head_argmax_rows) {
  enum { R = 6, L = 20 };
  float x[R * L];
  for (int i = 0; i < R * L; i++) x[i] = (float)(i % 7) - 10.0f;
  int32_t want[R] = {0, 2, 0, 0, 17, 2};
  x[0] = NAN, x[1] = 5, x[2] = 6;                           /* row 0: NaN first */
  x[L + 1] = NAN, x[L + 2] = 3, x[L + 3] = 3;               /* row 1: tie after a NaN */
  for (int j = 0; j < L; j++) x[2 * L + j] = -INFINITY;     /* row 2: all -inf */
  for (int j = 0; j < L; j++) x[3 * L + j] = j % 2 ? 0.0f : -0.0f; /* row 3: zeros */
  x[4 * L + 17] = 9, x[4 * L + 19] = 9;                     /* row 4: tie in the tail */
  x[5 * L + 2] = 50, x[5 * L + 9] = 50, x[5 * L + 16] = 50; /* row 5: ties across lanes */
  zoo_graph g;
  zoo_graph_init(&g);
  zoo_diag d;
  zoo_diag_init(&d, stderr);
  zoo_type xt = {.dtype = ZOO_F32, .ndim = 2, .dim = {{R, 0}, {L, 0}}};
  int xi = zoo_graph_input(&g, "x", xt);
  int am = zoo_graph_node(&g, ZOO_OP_ARGMAX, 1, &xi, NULL, zoo_nospan, &d);
  zoo_cpu c;
  CHECK(am >= 0 && zoo_cpu_init(&c, &g, NULL) == 0);
  memcpy(zoo_cpu_f32(&c, xi), x, sizeof x);
  int rc = zoo_cpu_run(&c, 0, 1), ok = 1;
  for (int r = 0; r < R; r++) ok &= zoo_cpu_i32(&c, am)[r] == want[r];
  zoo_cpu_free(&c);
  zoo_graph_free(&g);
  CHECK(rc == 0 && ok);
}
