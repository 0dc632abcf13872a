/* test_interleave.c: the training graph's heads-interleaved rewrite
 * (compiler/train_graph.c, zoo_interleave_heads in graph.h):
 * split_heads -> poly_attention -> merge_heads becomes one poly_attention in
 * layout 1 (ops.def).
 *
 *   interleave_<model>      ReBased and Based: the rewrite fires (no split_heads
 *                           or merge_heads left, forward or backward; the node
 *                           keeps its .zoo span), the CUDA program has 8 launches
 *                           fewer per training step and 4 per evaluation, and a
 *                           CPU training step gives the same loss, metrics and
 *                           gradients, bit for bit, as with
 *                           ZOO_NO_INTERLEAVED_HEADS=1 (evaluation too)
 *   interleave_qk_based     layout 2 (q and k alone interleaved, for tensor-core
 *                           products) at value width 4: Based's q and k copies
 *                           gone, 4 launches fewer per step and 2 per
 *                           evaluation, a CPU step the same bit for bit;
 *                           ReBased (q, k from norms) and fp32 plans keep layout 0
 *   pack_attention          the packed-attention rewrite (zoo_pack_attention):
 *                           MHA's slices, head copies and gradient concats
 *                           gone in conv_attention and attention (six heads),
 *                           fewer launches, a CPU step the same bit for bit
 *                           (dropout on) as with ZOO_NO_PACKED_ATTENTION=1
 *   interleave_conditions   hand-made graphs: what it rewrites and what it leaves
 *   norm_split_rebased      the layernorm-into-heads rewrite (zoo_norm_split_heads)
 *   linear_norm_rebased     the projection-and-norm fold (linear_layernorm)
 *
 * The layout-1 kernels themselves: op_poly_attention_interleaved (test_ops.c),
 * grad_poly_attention_interleaved (test_grad.c), the *_heads cases of
 * test_gpu.c (emulated and GPU) and intrinsics_nvrtc_poly_* (NVRTC). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../compiler/compile.h"
#include "../compiler/generate.h"
#include "../runtime/cpu.h"
#include "test.h"

/* Every node reads tensors made before it (or inputs and parameters), and
 * every tensor a node makes names that node as its producer. */
static int graph_consistent(const zoo_graph *g) {
  for (int i = 0; i < g->nnodes; i++) {
    const zoo_node *n = &g->nodes[i];
    for (int k = 0; k < n->nin; k++) {
      if (n->in[k] < 0 || n->in[k] >= g->ntensors) return 0;
      const zoo_tensor *x = &g->tensors[n->in[k]];
      if (x->kind == ZOO_T_VALUE && (x->producer < 0 || x->producer >= i)) return 0;
    }
    for (int k = 0; k < n->nout; k++)
      if (g->tensors[n->out[k]].producer != i || g->tensors[n->out[k]].out_index != k) return 0;
  }
  return 1;
}

static int count_op(const zoo_graph *g, zoo_op op) {
  int c = 0;
  for (int i = 0; i < g->nnodes; i++) c += g->nodes[i].op == op;
  return c;
}

static int find_op(const zoo_graph *g, zoo_op op) {
  for (int i = 0; i < g->nnodes; i++)
    if (g->nodes[i].op == op) return i;
  return -1;
}

/* ---------------------------------------------------------------------------
 * The shipped models */

enum { IB = 4, IT = 24, IV = 37 };

/* models/<name>.zoo at d_model `dm`, six heads (value width dm / 6), its
 * training graph with `head` for products on the tensor cores or not (tc);
 * keep: the copies kept (both rewrites off, as ZOO_NO_INTERLEAVED_HEADS=1
 * ZOO_NO_NORM_SPLIT=1 in the environment), or, with keep 2, only the
 * layernorm rewrite off. */
static zoo_program *compile_train_tc(const char *name, const char *dm, zoo_head head, int keep, int tc) {
  char path[64];
  snprintf(path, sizeof path, "models/%s.zoo", name);
  zoo_define defs[4] = {{"vocab_size", "37"}, {"d_model", dm}, {"seq_len", "24"}, {"num_heads", "6"}};
  zoo_compile_opts o = {.path = path, .defines = defs, .ndefines = 4, .std_dir = "models"};
  zoo_diag d;
  zoo_diag_init(&d, stderr);
  zoo_program *p = NULL;
  if (zoo_compile(&o, &d, &p) != 0 || !p) return NULL;
  char *saved = zoo_test_env_set("ZOO_NO_INTERLEAVED_HEADS", keep == 1 ? "1" : NULL);
  char *saved2 = zoo_test_env_set("ZOO_NO_NORM_SPLIT", keep != 0 ? "1" : NULL);
  int rc = zoo_train_graph_tc(&p->graph, head, IT, tc, &d);
  zoo_test_env_restore("ZOO_NO_INTERLEAVED_HEADS", saved);
  zoo_test_env_restore("ZOO_NO_NORM_SPLIT", saved2);
  if (rc != 0) {
    zoo_program_free(p);
    return NULL;
  }
  return p;
}

static zoo_program *compile_train_d(const char *name, const char *dm, zoo_head head, int keep) {
  return compile_train_tc(name, dm, head, keep, 0);
}

/* At d_model 48 (value width 8) the interleaving fires. */
static zoo_program *compile_train(const char *name, zoo_head head, int keep) {
  return compile_train_d(name, "48", head, keep);
}

/* A CPU training step and an evaluation of one batch from fixed parameters. */
typedef struct cpu_step {
  zoo_cpu cpu;
  float loss, metrics[2], eval_loss, eval_metrics[2];
  int ok;
} cpu_step;

static int run_step(cpu_step *r, const zoo_graph *g) {
  memset(r, 0, sizeof *r);
  int64_t syms[ZOO_MAX_SYMS] = {0};
  for (int s = 0; s < g->nsyms; s++)
    syms[s] = strcmp(g->sym_names[s], "B") == 0 ? IB : strcmp(g->sym_names[s], "T") == 0 ? IT : 1;
  if (zoo_cpu_init(&r->cpu, g, syms) != 0) return -1;
  r->ok = 1;
  uint64_t seed = 5;
#define NEXT() (seed = seed * 6364136223846793005ULL + 1442695040888963407ULL, (double)(seed >> 11) / 9007199254740992.0)
  for (int i = 0; i < g->nparams; i++) {
    int t = g->params[i];
    float *v = zoo_cpu_f32(&r->cpu, t);
    zoo_init_kind k = g->tensors[t].init.kind;
    for (int64_t j = 0; j < r->cpu.numel[t]; j++) {
      double u = 2 * NEXT() - 1;
      v[j] = (float)(k == ZOO_INIT_ONES ? 1 + 0.2 * u : k == ZOO_INIT_ZEROS ? 0.1 * u : 0.5 * u);
    }
  }
  int tokens = -1;
  for (int i = 0; i < g->ninputs; i++)
    if (strcmp(g->tensors[g->inputs[i]].name, "tokens") == 0) tokens = g->inputs[i];
  int32_t *tok = zoo_cpu_i32(&r->cpu, tokens), *tgt = zoo_cpu_i32(&r->cpu, g->targets);
  for (int i = 0; i < IB * IT; i++) {
    tok[i] = (int32_t)(NEXT() * IV);
    tgt[i] = NEXT() < 0.5 ? -100 : (int32_t)(NEXT() * IV);
  }
#undef NEXT
  zoo_cpu_f32(&r->cpu, g->dloss)[0] = 1.0f;
  r->cpu.training = 1;
  r->cpu.seed = 99;
  if (zoo_cpu_run(&r->cpu, 0, g->nnodes) != 0) return -1;
  r->loss = zoo_cpu_f32(&r->cpu, g->loss)[0];
  memcpy(r->metrics, zoo_cpu_f32(&r->cpu, g->metrics), sizeof r->metrics);
  return 0;
}

/* Evaluation: the forward nodes again, without dropout (after the gradients
 * were compared). */
static int run_eval(cpu_step *r, const zoo_graph *g) {
  r->cpu.training = 0;
  if (zoo_cpu_run(&r->cpu, 0, g->nforward) != 0) return -1;
  r->eval_loss = zoo_cpu_f32(&r->cpu, g->loss)[0];
  memcpy(r->eval_metrics, zoo_cpu_f32(&r->cpu, g->metrics), sizeof r->eval_metrics);
  return 0;
}

/* Launches per training step and per evaluation of the CUDA program. */
static int cuda_launches(const zoo_graph *g, int *train, int *eval) {
  zoo_cuda_program cp;
  char err[512];
  if (zoo_cuda_program_build(&cp, g, IB, IT, 1, 1, err, sizeof err) != 0) {
    fprintf(stderr, "  %s\n", err);
    return -1;
  }
  *train = cp.train_plan.kernels + cp.train_plan.gemms + cp.train_plan.zeros;
  *eval = cp.eval_plan.kernels + cp.eval_plan.gemms + cp.eval_plan.zeros;
  zoo_cuda_program_free(&cp);
  return 0;
}

static void interleave_model(zoo_test_ctx *t, const char *name) {
  /* the graphs, as the CPU (fused head) and CUDA (compacted head) build them */
  zoo_program *pi = compile_train(name, ZOO_HEAD_FUSED, 0), *pk = compile_train(name, ZOO_HEAD_FUSED, 1);
  zoo_program *ci = compile_train(name, ZOO_HEAD_COMPACT, 0), *ck = compile_train(name, ZOO_HEAD_COMPACT, 1);
  int compiled = pi && pk && ci && ck;
  int shape_ok = 0, span_ok = 0, launches_ok = 0;
  int lt[2] = {0, 0}, le[2] = {0, 0};
  if (compiled) {
    const zoo_graph *gi = &pi->graph, *gk = &pk->graph;
    int poly = find_op(gi, ZOO_OP_POLY_ATTENTION), bwd = find_op(gi, ZOO_OP_POLY_ATTENTION_BWD);
    int poly0 = find_op(gk, ZOO_OP_POLY_ATTENTION);
    shape_ok = count_op(gi, ZOO_OP_SPLIT_HEADS) == 0 && count_op(gi, ZOO_OP_MERGE_HEADS) == 0 &&
               count_op(gk, ZOO_OP_SPLIT_HEADS) == 4 && count_op(gk, ZOO_OP_MERGE_HEADS) == 4 &&
               poly >= 0 && bwd >= 0 && poly0 >= 0 && gi->nodes[poly].attrs.i[0] == 1 &&
               gi->nodes[poly].attrs.i[1] == 6 && gi->nodes[bwd].attrs.i[0] == 1 &&
               gk->nodes[poly0].attrs.i[0] == 0 && gi->nforward == gk->nforward - 4 &&
               gi->nnodes == gk->nnodes - 8 && graph_consistent(gi) && graph_consistent(gk) &&
               count_op(&ci->graph, ZOO_OP_SPLIT_HEADS) == 0 && graph_consistent(&ci->graph);
    /* q is the LayerNorm's (ReBased) or the projection's (Based) output */
    if (poly >= 0) {
      const zoo_node *n = &gi->nodes[poly];
      const zoo_type *qt = &gi->tensors[n->in[0]].type;
      int qp = gi->tensors[n->in[0]].producer;
      shape_ok &= qt->ndim == 3 && qp >= 0 &&
                  gi->nodes[qp].op == (strcmp(name, "rebased") == 0 ? ZOO_OP_LAYERNORM : ZOO_OP_LINEAR);
      span_ok = poly0 >= 0 && n->span.line == gk->nodes[poly0].span.line && n->span.line > 0 &&
                n->span.col == gk->nodes[poly0].span.col && gi->nodes[bwd].span.line == n->span.line;
    }
    launches_ok = cuda_launches(&ci->graph, &lt[0], &le[0]) == 0 && cuda_launches(&ck->graph, &lt[1], &le[1]) == 0;
  }
  cpu_step a, b;
  memset(&a, 0, sizeof a), memset(&b, 0, sizeof b);
  int ran = compiled && run_step(&a, &pi->graph) == 0 && run_step(&b, &pk->graph) == 0;
  int same = 0;
  double worst = 0;
  if (ran) {
    same = a.loss == b.loss && a.metrics[0] == b.metrics[0] && a.metrics[1] == b.metrics[1] && b.metrics[1] > 0;
    for (int i = 0; i < pi->graph.nparams; i++) {
      int ta = pi->graph.tensors[pi->graph.params[i]].grad, tb = pk->graph.tensors[pk->graph.params[i]].grad;
      int64_t n = a.cpu.numel[ta];
      const float *ga = zoo_cpu_f32(&a.cpu, ta), *gb = zoo_cpu_f32(&b.cpu, tb);
      same &= n == b.cpu.numel[tb] && memcmp(ga, gb, (size_t)n * sizeof *ga) == 0;
      for (int64_t e = 0; e < n; e++) worst = fmax(worst, fabs((double)ga[e] - gb[e]));
    }
    ran = run_eval(&a, &pi->graph) == 0 && run_eval(&b, &pk->graph) == 0;
    same &= a.eval_loss == b.eval_loss && a.eval_metrics[0] == b.eval_metrics[0];
  }
  printf("  %s: loss %.6f (copies kept %.6f), launches per step %d (%d), per evaluation %d (%d)%s\n", name,
         a.loss, b.loss, lt[0], lt[1], le[0], le[1], same ? ", bit for bit" : "");
  if (a.ok) zoo_cpu_free(&a.cpu);
  if (b.ok) zoo_cpu_free(&b.cpu);
  zoo_program_free(pi), zoo_program_free(pk), zoo_program_free(ci), zoo_program_free(ck);
  CHECKF(compiled, "%s does not compile", name);
  CHECKF(shape_ok, "%s: the rewritten training graph is not as expected", name);
  CHECKF(span_ok, "%s: the rewritten poly_attention lost its span", name);
  CHECK(launches_ok);
  /* fewer launches: 3 split_heads + 1 merge_heads forward, as many backward */
  CHECKF(lt[1] - lt[0] == 8 && le[1] - le[0] == 4, "%s: %d -> %d launches per step, %d -> %d per evaluation",
         name, lt[1], lt[0], le[1], le[0]);
  CHECKF(ran, "%s: a CPU run failed", name);
  CHECKF(same, "%s: the rewrite changes the step (gradients differ by up to %g)", name, worst);
}

/* 1 when the CUDA program of `with` launches `step` fewer per training step
 * and `eval` fewer per evaluation than that of `without`; else says what. */
static int launches_saved(const zoo_graph *with, const zoo_graph *without, int step, int eval) {
  int lt[2], le[2];
  if (cuda_launches(with, &lt[0], &le[0]) != 0 || cuda_launches(without, &lt[1], &le[1]) != 0) return 0;
  if (lt[1] - lt[0] == step && le[1] - le[0] == eval) return 1;
  fprintf(stderr, "  %d -> %d launches per step, %d -> %d per evaluation\n", lt[1], lt[0], le[1], le[0]);
  return 0;
}

/* A CPU training step and evaluation of graphs ga and gb from the same
 * parameters and batch: 1 when loss, metrics and every gradient agree bit for
 * bit (the losses into la, lb), 0 when they differ, -1 when a run fails. */
static int same_step(const zoo_graph *ga, const zoo_graph *gb, float *la, float *lb) {
  cpu_step a, b;
  memset(&a, 0, sizeof a), memset(&b, 0, sizeof b);
  int rc = -1;
  if (run_step(&a, ga) == 0 && run_step(&b, gb) == 0) {
    int same = a.loss == b.loss && a.metrics[0] == b.metrics[0] && b.metrics[1] > 0;
    for (int i = 0; i < ga->nparams; i++) {
      int ta = ga->tensors[ga->params[i]].grad, tb = gb->tensors[gb->params[i]].grad;
      same &= a.cpu.numel[ta] == b.cpu.numel[tb] &&
              memcmp(zoo_cpu_f32(&a.cpu, ta), zoo_cpu_f32(&b.cpu, tb), (size_t)a.cpu.numel[ta] * 4) == 0;
    }
    if (run_eval(&a, ga) == 0 && run_eval(&b, gb) == 0) {
      same &= a.eval_loss == b.eval_loss && a.eval_metrics[0] == b.eval_metrics[0];
      rc = same;
    }
    *la = a.loss, *lb = b.loss;
  }
  if (a.ok) zoo_cpu_free(&a.cpu);
  if (b.ok) zoo_cpu_free(&b.cpu);
  return rc;
}

/* The layernorm-into-heads rewrite (zoo_norm_split_heads): ReBased at value
 * width 4, below ZOO_INTERLEAVE_MIN_DV, keeps layout 0; its q and k norms write
 * the split layout (their split_heads gone, and the merge_heads of their
 * gradients), 4 launches fewer per step and 2 per evaluation, and a CPU step
 * is the same bit for bit as with ZOO_NO_NORM_SPLIT=1. */
TEST(norm_split_rebased) {
  zoo_program *pn = compile_train_d("rebased", "24", ZOO_HEAD_FUSED, 0);
  zoo_program *pk = compile_train_d("rebased", "24", ZOO_HEAD_FUSED, 2);
  zoo_program *cn = compile_train_d("rebased", "24", ZOO_HEAD_COMPACT, 0);
  zoo_program *ck = compile_train_d("rebased", "24", ZOO_HEAD_COMPACT, 2);
  CHECK(pn && pk && cn && ck);
  const zoo_graph *gn = &pn->graph, *gk = &pk->graph;
  int split_ln = 0, split_bwd = 0;
  for (int i = 0; i < gn->nnodes; i++) {
    split_ln += gn->nodes[i].op == ZOO_OP_LAYERNORM && gn->nodes[i].attrs.i[0] == 6;
    split_bwd += gn->nodes[i].op == ZOO_OP_LAYERNORM_BWD && gn->nodes[i].attrs.i[0] == 6;
  }
  CHECK(split_ln == 2 && split_bwd == 2);
  CHECK(count_op(gn, ZOO_OP_SPLIT_HEADS) == 2 && count_op(gk, ZOO_OP_SPLIT_HEADS) == 4);
  CHECK(count_op(gn, ZOO_OP_MERGE_HEADS) == 2 && count_op(gk, ZOO_OP_MERGE_HEADS) == 4);
  CHECK(find_op(gn, ZOO_OP_POLY_ATTENTION) >= 0 && gn->nodes[find_op(gn, ZOO_OP_POLY_ATTENTION)].attrs.i[0] == 0);
  CHECK(graph_consistent(gn) && gn->nforward == gk->nforward - 2 && gn->nnodes == gk->nnodes - 4);
  CHECK(launches_saved(&cn->graph, &ck->graph, 4, 2));
  float la = 0, lb = 0;
  int same = same_step(gn, gk, &la, &lb);
  CHECKF(same == 1, "the layernorm rewrite changes the step (loss %.7f vs %.7f)", la, lb);
  zoo_program_free(pn), zoo_program_free(pk), zoo_program_free(cn), zoo_program_free(ck);
}

/* The projection-and-norm fold (train_graph.c, after autodiff, with
 * ZOO_LINEAR_NORM=1): ReBased's q and k become linear_layernorm nodes (split
 * into heads at value width 4, not at 8 where poly_attention reads them
 * interleaved), 2 launches fewer per step, and a CPU step is the same bit for
 * bit as without the fold, which is the default. */
static void linear_norm_model(zoo_test_ctx *t, const char *dm, int64_t heads) {
  zoo_program *pk = compile_train_d("rebased", dm, ZOO_HEAD_FUSED, 0);
  zoo_program *ck = compile_train_d("rebased", dm, ZOO_HEAD_COMPACT, 0);
  char *saved = zoo_test_env_set("ZOO_LINEAR_NORM", "1");
  zoo_program *pf = compile_train_d("rebased", dm, ZOO_HEAD_FUSED, 0);
  zoo_program *cf = compile_train_d("rebased", dm, ZOO_HEAD_COMPACT, 0);
  zoo_test_env_restore("ZOO_LINEAR_NORM", saved);
  CHECK(pf && pk && cf && ck);
  const zoo_graph *gf = &pf->graph, *gk = &pk->graph;
  int folded = 0;
  for (int i = 0; i < gf->nnodes; i++)
    folded += gf->nodes[i].op == ZOO_OP_LINEAR_LAYERNORM && gf->nodes[i].attrs.i[0] == heads;
  CHECKF(folded == 2 && count_op(gk, ZOO_OP_LINEAR_LAYERNORM) == 0, "d_model %s: %d folded", dm, folded);
  CHECK(graph_consistent(gf) && gf->nnodes == gk->nnodes - 2 && gf->nforward == gk->nforward - 2);
  CHECK(launches_saved(&cf->graph, &ck->graph, 2, 2));
  float la = 0, lb = 0;
  int same = same_step(gf, gk, &la, &lb);
  CHECKF(same == 1, "the fold changes the step (loss %.7f vs %.7f)", la, lb);
  zoo_program_free(pf), zoo_program_free(pk), zoo_program_free(cf), zoo_program_free(ck);
}

TEST(linear_norm_rebased) {
  linear_norm_model(t, "24", 6); /* value width 4: the norms write the split layout */
  linear_norm_model(t, "48", 0); /* width 8: interleaved, the norms' output plain */
}

TEST(interleave_rebased) { interleave_model(t, "rebased"); }
TEST(interleave_based) { interleave_model(t, "based"); }

TEST(interleave_qk_based) {
  zoo_program *pq = compile_train_tc("based", "24", ZOO_HEAD_FUSED, 0, 1);
  zoo_program *pk = compile_train_tc("based", "24", ZOO_HEAD_FUSED, 1, 1);
  zoo_program *p0 = compile_train_tc("based", "24", ZOO_HEAD_FUSED, 0, 0);
  zoo_program *cq = compile_train_tc("based", "24", ZOO_HEAD_COMPACT, 0, 1);
  zoo_program *ck = compile_train_tc("based", "24", ZOO_HEAD_COMPACT, 1, 1);
  zoo_program *rq = compile_train_tc("rebased", "24", ZOO_HEAD_FUSED, 0, 1);
  CHECK(pq && pk && p0 && cq && ck && rq);
  const zoo_graph *gq = &pq->graph, *gk = &pk->graph;
  int poly = find_op(gq, ZOO_OP_POLY_ATTENTION), bwd = find_op(gq, ZOO_OP_POLY_ATTENTION_BWD);
  CHECK(poly >= 0 && bwd >= 0 && gq->nodes[poly].attrs.i[0] == 2 && gq->nodes[poly].attrs.i[1] == 6 &&
        gq->nodes[bwd].attrs.i[0] == 2);
  /* q and k as the projections make them; v still split, the output merged */
  const zoo_node *n = &gq->nodes[poly];
  int qp = gq->tensors[n->in[0]].producer, vp = gq->tensors[n->in[2]].producer;
  CHECK(qp >= 0 && gq->nodes[qp].op == ZOO_OP_LINEAR && vp >= 0 && gq->nodes[vp].op == ZOO_OP_SPLIT_HEADS);
  CHECK(count_op(gq, ZOO_OP_SPLIT_HEADS) == 2 && count_op(gk, ZOO_OP_SPLIT_HEADS) == 4);
  CHECK(count_op(gq, ZOO_OP_MERGE_HEADS) == 2 && count_op(gk, ZOO_OP_MERGE_HEADS) == 4);
  CHECK(graph_consistent(gq) && gq->nforward == gk->nforward - 2 && gq->nnodes == gk->nnodes - 4);
  CHECK(launches_saved(&cq->graph, &ck->graph, 4, 2));
  /* fp32 products, or q and k from layernorms: layout 0 */
  int p0p = find_op(&p0->graph, ZOO_OP_POLY_ATTENTION), rqp = find_op(&rq->graph, ZOO_OP_POLY_ATTENTION);
  CHECK(p0p >= 0 && p0->graph.nodes[p0p].attrs.i[0] == 0 && rqp >= 0 && rq->graph.nodes[rqp].attrs.i[0] == 0);
  float la = 0, lb = 0;
  int same = same_step(gq, gk, &la, &lb);
  CHECKF(same == 1, "layout 2 changes the step (loss %.7f vs %.7f)", la, lb);
  zoo_program_free(pq), zoo_program_free(pk), zoo_program_free(p0);
  zoo_program_free(cq), zoo_program_free(ck), zoo_program_free(rq);
}

/* models/<name>.zoo (d_model 24, six heads) with its training graph (`head`),
 * packed or, with ZOO_NO_PACKED_ATTENTION=1, not */
static zoo_program *compile_packed(const char *name, zoo_head head, int packed) {
  char *saved = zoo_test_env_set("ZOO_NO_PACKED_ATTENTION", packed ? NULL : "1");
  zoo_program *p = compile_train_d(name, "24", head, 0);
  zoo_test_env_restore("ZOO_NO_PACKED_ATTENTION", saved);
  return p;
}

static void pack_model(zoo_test_ctx *t, const char *name, int layers) {
  zoo_program *pp = compile_packed(name, ZOO_HEAD_FUSED, 1), *pk = compile_packed(name, ZOO_HEAD_FUSED, 0);
  zoo_program *cp = compile_packed(name, ZOO_HEAD_COMPACT, 1), *ck = compile_packed(name, ZOO_HEAD_COMPACT, 0);
  CHECKF(pp && pk && cp && ck, "%s does not compile", name);
  const zoo_graph *gp = &pp->graph, *gk = &pk->graph;
  CHECKF(count_op(gp, ZOO_OP_SOFTMAX_ATTENTION_PACKED) == layers &&
             count_op(gp, ZOO_OP_SOFTMAX_ATTENTION_PACKED_BWD) == layers &&
             count_op(gp, ZOO_OP_SOFTMAX_ATTENTION) == 0 && count_op(gp, ZOO_OP_SLICE) == 0 &&
             count_op(gp, ZOO_OP_CONCAT) == 0 && count_op(gp, ZOO_OP_SPLIT_HEADS) == 0 &&
             count_op(gp, ZOO_OP_MERGE_HEADS) == 0 && graph_consistent(gp),
         "%s: the packed graph is not as expected", name);
  CHECK(count_op(gk, ZOO_OP_SOFTMAX_ATTENTION) == layers && count_op(gk, ZOO_OP_SLICE) == 3 * layers);
  /* the node keeps the .zoo call's span */
  int a = find_op(gp, ZOO_OP_SOFTMAX_ATTENTION_PACKED), b = find_op(gk, ZOO_OP_SOFTMAX_ATTENTION);
  CHECK(a >= 0 && b >= 0 && gp->nodes[a].span.line == gk->nodes[b].span.line && gp->nodes[a].span.line > 0);
  /* per layer and step: 3 slices, 3 split_heads and a merge_heads forward; a
   * split_heads, 3 merge_heads and 2 concats backward (7 per evaluation) */
  CHECK(launches_saved(&cp->graph, &ck->graph, 13 * layers, 7 * layers));
  float la = 0, lb = 0;
  int same = same_step(gp, gk, &la, &lb);
  CHECKF(same == 1, "%s: packing changes the step (loss %.7f vs %.7f)", name, la, lb);
  zoo_program_free(pp), zoo_program_free(pk), zoo_program_free(cp), zoo_program_free(ck);
}

TEST(pack_attention) {
  pack_model(t, "conv_attention", 1);
  pack_model(t, "attention", 2);
}

/* ---------------------------------------------------------------------------
 * Hand-made graphs */

typedef struct hg {
  zoo_graph g;
  zoo_diag d;
  int xq, xv;   /* inputs [B, T, 2*3], [B, T, 2*dv] */
  int q, k, v;  /* their split_heads */
  int o, y;     /* poly_attention, merge_heads */
} hg;

static int node1(hg *h, zoo_op op, int x, const zoo_attrs *a) {
  return zoo_graph_node(&h->g, op, 1, &x, a, zoo_nospan, &h->d);
}

/* q, k, v -> split_heads (2 heads) -> poly_attention, value width dv; with
 * k_split = 0 k is exp of q's split instead, with shared_q = 1 q and k read one
 * split_heads. Returns the attention's output. */
static int hg_build(hg *h, int64_t dv, int k_split, int shared_q) {
  memset(h, 0, sizeof *h);
  zoo_graph_init(&h->g);
  zoo_diag_init(&h->d, stderr);
  int B = zoo_graph_symbol(&h->g, "B"), T = zoo_graph_symbol(&h->g, "T");
  zoo_type tq = {.dtype = ZOO_F32, .ndim = 3, .dim = {{1, 1u << B}, {1, 1u << T}, {6, 0}}};
  zoo_type tv = tq;
  tv.dim[2] = zoo_dim_const(2 * dv);
  h->xq = zoo_graph_input(&h->g, "q", tq);
  int xk = zoo_graph_input(&h->g, "k", tq);
  h->xv = zoo_graph_input(&h->g, "v", tv);
  zoo_attrs two = {0};
  two.i[0] = 2;
  h->q = node1(h, ZOO_OP_SPLIT_HEADS, h->xq, &two);
  h->k = shared_q ? h->q : k_split ? node1(h, ZOO_OP_SPLIT_HEADS, xk, &two) : node1(h, ZOO_OP_EXP, h->q, NULL);
  h->v = node1(h, ZOO_OP_SPLIT_HEADS, h->xv, &two);
  zoo_attrs a = {0};
  a.f[2] = 1, a.f[3] = 0.5, a.f[4] = 1e-12;
  int in[3] = {h->q, h->k, h->v};
  h->o = zoo_graph_node(&h->g, ZOO_OP_POLY_ATTENTION, 3, in, &a, zoo_nospan, &h->d);
  return h->o;
}

/* merge_heads -> exp, the output */
static void hg_finish(hg *h) {
  h->y = node1(h, ZOO_OP_MERGE_HEADS, h->o, NULL);
  h->g.output = node1(h, ZOO_OP_EXP, h->y, NULL);
}

TEST(interleave_conditions) {
  hg h;
  /* the pattern: three splits, poly, merge, exp -> poly (layout 1), exp */
  CHECK(hg_build(&h, 8, 1, 0) >= 0);
  hg_finish(&h);
  CHECK(zoo_interleave_heads(&h.g, 0) == 1);
  int p = find_op(&h.g, ZOO_OP_POLY_ATTENTION);
  CHECK(h.g.nnodes == 2 && p == 0 && h.g.nodes[0].in[0] == h.xq && h.g.nodes[0].in[2] == h.xv &&
        h.g.nodes[0].out[0] == h.y && h.g.nodes[0].attrs.i[0] == 1 && h.g.nodes[0].attrs.i[1] == 2 &&
        h.g.tensors[h.o].producer == -1 && h.g.tensors[h.q].producer == -1 && graph_consistent(&h.g));
  CHECK(zoo_interleave_heads(&h.g, 0) == 0); /* once only */
  zoo_graph_free(&h.g);

  /* value rows narrower than ZOO_INTERLEAVE_MIN_DV: unchanged, but in fp32
   * from ZOO_INTERLEAVE_MIN_DV_QK (5) when q and k would be copied too, as
   * here (with tc, layout 2 instead: q and k alone) */
  CHECK(hg_build(&h, 4, 1, 0) >= 0);
  hg_finish(&h);
  CHECK(zoo_interleave_heads(&h.g, 0) == 0 && find_op(&h.g, ZOO_OP_SPLIT_HEADS) >= 0);
  zoo_graph_free(&h.g);
  CHECK(hg_build(&h, 5, 1, 0) >= 0);
  hg_finish(&h);
  CHECK(zoo_interleave_heads(&h.g, 0) == 1 && find_op(&h.g, ZOO_OP_SPLIT_HEADS) < 0);
  p = find_op(&h.g, ZOO_OP_POLY_ATTENTION);
  CHECK(p >= 0 && h.g.nodes[p].attrs.i[0] == 1 && graph_consistent(&h.g));
  zoo_graph_free(&h.g);
  CHECK(hg_build(&h, 5, 1, 0) >= 0);
  hg_finish(&h);
  CHECK(zoo_interleave_heads(&h.g, 1) == 1);
  p = find_op(&h.g, ZOO_OP_POLY_ATTENTION);
  CHECK(p >= 0 && h.g.nodes[p].attrs.i[0] == 2 && find_op(&h.g, ZOO_OP_SPLIT_HEADS) >= 0);
  zoo_graph_free(&h.g);

  /* q and k from one split_heads: one input twice */
  CHECK(hg_build(&h, 8, 1, 1) >= 0);
  hg_finish(&h);
  CHECK(zoo_interleave_heads(&h.g, 0) == 1);
  CHECK(h.g.nnodes == 2 && h.g.nodes[0].in[0] == h.xq && h.g.nodes[0].in[1] == h.xq && graph_consistent(&h.g));
  zoo_graph_free(&h.g);

  /* k is not a split_heads: unchanged */
  CHECK(hg_build(&h, 8, 0, 0) >= 0);
  hg_finish(&h);
  int n = h.g.nnodes;
  CHECK(zoo_interleave_heads(&h.g, 0) == 0 && h.g.nnodes == n && count_op(&h.g, ZOO_OP_MERGE_HEADS) == 1);
  zoo_graph_free(&h.g);

  /* the attention's output has a second reader: unchanged */
  CHECK(hg_build(&h, 8, 1, 0) >= 0);
  node1(&h, ZOO_OP_EXP, h.o, NULL);
  hg_finish(&h);
  n = h.g.nnodes;
  CHECK(zoo_interleave_heads(&h.g, 0) == 0 && h.g.nnodes == n);
  zoo_graph_free(&h.g);

  /* no merge_heads (the output read by something else, or the graph's output) */
  CHECK(hg_build(&h, 8, 1, 0) >= 0);
  h.g.output = node1(&h, ZOO_OP_EXP, h.o, NULL);
  n = h.g.nnodes;
  CHECK(zoo_interleave_heads(&h.g, 0) == 0 && h.g.nnodes == n);
  zoo_graph_free(&h.g);
  CHECK(hg_build(&h, 8, 1, 0) >= 0);
  h.g.output = h.o;
  CHECK(zoo_interleave_heads(&h.g, 0) == 0);
  zoo_graph_free(&h.g);

  /* q's split is read elsewhere too: rewritten, that split stays */
  CHECK(hg_build(&h, 8, 1, 0) >= 0);
  int other = node1(&h, ZOO_OP_EXP, h.q, NULL);
  hg_finish(&h);
  CHECK(zoo_interleave_heads(&h.g, 0) == 1);
  CHECK(count_op(&h.g, ZOO_OP_SPLIT_HEADS) == 1 && h.g.tensors[h.q].producer == 0 &&
        h.g.nodes[h.g.tensors[other].producer].in[0] == h.q && count_op(&h.g, ZOO_OP_MERGE_HEADS) == 0 &&
        graph_consistent(&h.g));
  zoo_graph_free(&h.g);

  /* with tensor-core products: narrow values, or no merge_heads, give layout 2
   * (q and k interleaved, v's split and the merge_heads kept) */
  CHECK(hg_build(&h, 5, 1, 0) >= 0);
  hg_finish(&h);
  CHECK(zoo_interleave_heads(&h.g, 1) == 1);
  p = find_op(&h.g, ZOO_OP_POLY_ATTENTION);
  CHECK(p >= 0 && h.g.nodes[p].attrs.i[0] == 2 && h.g.nodes[p].attrs.i[1] == 2 && h.g.nodes[p].in[0] == h.xq &&
        h.g.nodes[p].in[2] == h.v && h.g.nodes[p].out[0] == h.o && count_op(&h.g, ZOO_OP_SPLIT_HEADS) == 1 &&
        count_op(&h.g, ZOO_OP_MERGE_HEADS) == 1 && graph_consistent(&h.g));
  CHECK(zoo_interleave_heads(&h.g, 1) == 0); /* once only */
  int seed2 = zoo_graph_input(&h.g, "w", h.g.tensors[h.g.output].type);
  CHECK(zoo_autodiff(&h.g, h.g.output, seed2, &h.d) == 0);
  int b2 = find_op(&h.g, ZOO_OP_POLY_ATTENTION_BWD);
  CHECK(b2 >= 0 && h.g.nodes[b2].attrs.i[0] == 2 && h.g.tensors[h.xq].grad >= 0 &&
        zoo_type_eq(&h.g.tensors[h.g.tensors[h.xq].grad].type, &h.g.tensors[h.xq].type));
  zoo_graph_free(&h.g);
  CHECK(hg_build(&h, 8, 1, 0) >= 0);
  h.g.output = h.o;
  CHECK(zoo_interleave_heads(&h.g, 1) == 1 && h.g.nodes[find_op(&h.g, ZOO_OP_POLY_ATTENTION)].attrs.i[0] == 2);
  zoo_graph_free(&h.g);
  CHECK(hg_build(&h, 8, 1, 0) >= 0); /* wide values with a merge_heads: layout 1 still */
  hg_finish(&h);
  CHECK(zoo_interleave_heads(&h.g, 1) == 1 && h.g.nodes[find_op(&h.g, ZOO_OP_POLY_ATTENTION)].attrs.i[0] == 1);
  zoo_graph_free(&h.g);
  CHECK(hg_build(&h, 5, 0, 0) >= 0); /* k not a split_heads: unchanged */
  hg_finish(&h);
  CHECK(zoo_interleave_heads(&h.g, 1) == 0);
  zoo_graph_free(&h.g);

  /* a layout-1 graph differentiates into a layout-1 backward */
  CHECK(hg_build(&h, 8, 1, 0) >= 0);
  hg_finish(&h);
  CHECK(zoo_interleave_heads(&h.g, 0) == 1);
  int seed = zoo_graph_input(&h.g, "w", h.g.tensors[h.g.output].type);
  CHECK(zoo_autodiff(&h.g, h.g.output, seed, &h.d) == 0);
  int b = find_op(&h.g, ZOO_OP_POLY_ATTENTION_BWD);
  CHECK(b >= 0 && h.g.nodes[b].attrs.i[0] == 1 && h.g.nodes[b].attrs.i[1] == 2 &&
        count_op(&h.g, ZOO_OP_SPLIT_HEADS) == 0 && count_op(&h.g, ZOO_OP_MERGE_HEADS) == 0 &&
        h.g.tensors[h.xq].grad >= 0 && zoo_type_eq(&h.g.tensors[h.g.tensors[h.xq].grad].type,
                                                   &h.g.tensors[h.xq].type));
  zoo_graph_free(&h.g);
}
