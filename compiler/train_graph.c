/* train_graph.c: from a model graph (tokens -> logits) to a training graph.
 *
 * Adds the targets input, the loss (cross-entropy ignoring -100), the metrics
 * (accuracy: correct and labelled counts), the loss's gradient seed "dloss", and
 * the backward pass, so that every parameter has a gradient tensor. See
 * zoo_train_graph in graph.h.
 *
 * The fused head. A language model's logits are h w^T, [B*T, V] with V = 8192,
 * and MQAR labels a quarter of the positions or fewer: making the logits, their
 * softmax and their gradient for every row is most of a step's work and memory.
 * When the logits are a bias-free linear that nothing else reads, its node is
 * dropped and the loss and the metrics read (h, w) instead:
 * linear_cross_entropy(h, w, targets) and accuracy(h, w, targets) make logits
 * for the labelled rows only, a few rows at a time. ZOO_NO_FUSED_HEAD=1 in the
 * environment keeps the plain form (the same loss, metrics and gradients up to
 * rounding), to bisect a difference to this rewrite.
 *
 * Interleaved heads. ReBased and Based compute
 *     o = poly_attention(split_heads(q, H), split_heads(k, H), split_heads(v, H))
 *     y = merge_heads(o)
 * and each split_heads and merge_heads is a copy, a kernel on the GPU, as is
 * each of their gradients: eight per layer and step. poly_attention's layout 1
 * (ops.def) reads q, k, v as the projections make them, [B, T, H*F], and
 * writes y in that layout, so before anything else the rewrite gives the
 * poly_attention node the split_heads' inputs and the merge_heads' output and
 * drops the merge_heads, and each split_heads that nothing else reads. The
 * backward pass made afterwards reads and writes layout 1 as well. The node
 * keeps its span, so messages still point at the .zoo call. Results are the
 * same bit for bit (the copies moved values, computed nothing); with
 * ZOO_NO_INTERLEAVED_HEADS=1 in the environment the copies stay, to bisect a
 * difference to this rewrite.
 *   It pays only when a head's value rows are wide enough. In layout 1 the
 * quadratic kernels read a row of DV floats out of every H DV, and at DV = 2
 * or 5 the sectors they fetch are mostly other heads' values. Measured on the
 * H200 (zoorun bench --only rebased, with and without the rewrite): DV 2
 * (32/48) 1.33 vs 1.31 ms and DV 5 (64/128) 3.22 vs 3.17 ms with it, but DV 42
 * (512/512) 102.0 vs 103.5 ms. So it applies from ZOO_INTERLEAVE_MIN_DV.
 * Those are ReBased's cells, whose q and k come split from their norms (below)
 * for nothing, so layout 0 copies only v and o there. Where q and k would be
 * copied too (Based) and the kernels are the fp32 ones, it pays at DV 5, the
 * narrowest measured (ZOO_INTERLEAVE_MIN_DV_QK; session 15's tree, .gpu/s15run2.sh, zoorun bench
 * --quick: Based 64/128, DV 5, 2.42 to 2.36 ms twice; with tf32, whose layout
 * 2 below interleaves q and k already, 1.45 to 1.49, so not there).
 *   Below that, layout 2 interleaves q and k alone (rows of F = 16 floats,
 * whole sectors) and leaves v and o split, which removes q's and k's
 * split_heads and their gradients' merge_heads, the 192-float-wide copies. It
 * applies where poly_attention's products run on the tensor cores (tc, from
 * precision tf32 or bf16) and q and k are not layernorm outputs (ReBased's
 * norms write the split layout themselves, zoo_norm_split_heads below).
 * Measured on the H200 (zoorun bench --quick, with and without it, device run
 * 2 of session 10): Based 64/128 in tf32 1.72 to 1.58 ms, but 2.60 to 2.66 in
 * fp32, where the one-row kernels read q and k slower in layout 2 (bwd_kv
 * 0.237 to 0.326 ms), more than the copies cost; ReBased's norms already
 * absorb the copies (64/128 tf32 1.70 against 1.72). ZOO_NO_QK_INTERLEAVE=1
 * keeps layout 0 there, for measuring.
 *
 * Packed attention. MHA computes
 *     qkv = linear(x, w, b)                                    [B, T, 3 H d]
 *     o = softmax_attention(split_heads(slice(qkv, -1, 0, H d), H), ... k, v)
 *     y = merge_heads(o)
 * where each slice is a copy, and autodiff puts the three gradients back
 * together with concats: five copy kernels per layer and step.
 * softmax_attention_packed (ops.def) reads q, k, v from qkv itself and writes
 * y, and its backward writes dqkv, so the rewrite gives the node qkv and the
 * merge_heads' output, drops the merge_heads and the split_heads and slices
 * that nothing else reads. Results are the same bit for bit (the copies moved
 * values, computed nothing; the dropout draws keep their indices). With
 * ZOO_NO_PACKED_ATTENTION=1 in the environment the copies stay, to bisect.
 *
 * The compacted head's step at small D. After fold_loss_step the compacted
 * head (see graph.h) is
 *     logits = linear(hc, w)                                   [M, V], K = D
 *     (loss, metrics, dlogits) = cross_entropy_step(logits, tc, dloss)
 *     dhc = matmul(dlogits, w)                                 [M, D], K = V
 * (and dw = matmul(dlogits^T, hc)). When D is a constant of at most 64 and a
 * multiple of 4, V a multiple of 128, the logits feed nothing else and one
 * matmul alone is linear's input gradient, one linear_cross_entropy_step node
 * in the linear's place makes loss, metrics, dlogits and dhc (the tensors keep
 * their ids) and the logits are never stored: on the GPU one kernel instead of
 * two GEMMs and the loss's rows kernel in fp32 (runtime/kernels/
 * linear_cross_entropy_step.cu), TF32 tensor-core kernels and a GEMM for dhc
 * with precision tf32 and bf16 (linear_cross_entropy_tc.cu); on the CPU the
 * same bits as the three nodes. It saves memory (the logits: 410 instead of
 * 578 MiB at rebased 32/48). With tc (zoo_train_graph_tc) it is on, the
 * tensor-core form being as fast or faster (H200, zoorun bench --quick
 * --precision tf32 with ZOO_FUSED_LCE_STEP=1 and 0, session 11: 0.77 against
 * 0.80 ms a step at 32/48, 1.35-1.70 against 1.36-1.71 at 64/128); in fp32
 * it is off, its kernel slower (1.10 against 0.99 ms at 32/48, 2.88 against
 * 2.58 at 64/128). ZOO_FUSED_LCE_STEP=1 or 0 in the environment overrides.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graph.h"

/* The node making the model's output when it is linear(h, w) without bias and
 * no node reads the output; -1 otherwise. */
static int fusable_head(const zoo_graph *g) {
  int p = g->tensors[g->output].producer;
  if (p < 0) return -1;
  const zoo_node *n = &g->nodes[p];
  if (n->op != ZOO_OP_LINEAR || n->nin != 2 || n->nout != 1) return -1;
  for (int i = 0; i < g->nnodes; i++)
    for (int k = 0; k < g->nodes[i].nin; k++)
      if (g->nodes[i].in[k] == g->output) return -1;
  return p;
}

/* Removes the nodes marked dead (dead[i] != 0); the values they made stay
 * behind with no producer, and the forward count follows. */
static void drop_nodes(zoo_graph *g, const char *dead) {
  int *renum = malloc(((size_t)g->nnodes + 1) * sizeof *renum);
  if (!renum) abort();
  int kept = 0, forward = 0;
  for (int i = 0; i < g->nnodes; i++) {
    renum[i] = dead[i] ? -1 : kept;
    if (dead[i]) continue;
    forward += i < g->nforward;
    g->nodes[kept++] = g->nodes[i];
  }
  for (int t = 0; t < g->ntensors; t++)
    if (g->tensors[t].producer >= 0) g->tensors[t].producer = renum[g->tensors[t].producer];
  g->nnodes = kept;
  g->nforward = forward;
  free(renum);
}

/* Removes nodes p and q (q may be -1). */
static void remove_nodes(zoo_graph *g, int p, int q) {
  char *dead = calloc((size_t)g->nnodes + 1, 1);
  if (!dead) abort();
  dead[p] = 1;
  if (q >= 0) dead[q] = 1;
  drop_nodes(g, dead);
  free(dead);
}

/* Removes node p (the head) and its output, which no node reads. The output
 * leaves the tensor table when it is the last tensor, as a model's final op
 * makes it; otherwise it stays behind as a value that no node produces, which
 * the backends neither compute nor allocate. */
static void drop_head(zoo_graph *g, int p) {
  int t = g->nodes[p].out[0];
  remove_nodes(g, p, -1);
  if (t == g->ntensors - 1) {
    free((char *)g->tensors[t].name);
    g->ntensors--;
  } else {
    g->tensors[t].producer = -1;
  }
  g->output = -1;
}

/* After autodiff, the logits of a plain or compacted head are read three
 * times: by cross_entropy, by accuracy and by cross_entropy_bwd, whose dloss is
 * the graph's seed, known before the step starts. One cross_entropy_step node,
 * in cross_entropy's place, makes the three results in one pass over the
 * logits (on the GPU: one read of each row instead of five, three launches
 * instead of six). The tensors keep their ids. */
static void fold_loss_step(zoo_graph *g) {
  int pl = g->tensors[g->loss].producer, pm = g->tensors[g->metrics].producer;
  if (pl < 0 || pm < 0) return;
  zoo_node *ce = &g->nodes[pl], *acc = &g->nodes[pm];
  if (ce->op != ZOO_OP_CROSS_ENTROPY || acc->op != ZOO_OP_ACCURACY || acc->nin != 2) return;
  int logits = ce->in[0], targets = ce->in[1], pb = -1;
  if (acc->in[0] != logits || acc->in[1] != targets || acc->attrs.i[0] != ce->attrs.i[0]) return;
  for (int i = 0; i < g->nnodes; i++) {
    const zoo_node *n = &g->nodes[i];
    if (n->op != ZOO_OP_CROSS_ENTROPY_BWD) continue;
    if (pb >= 0 || n->in[0] != g->dloss || n->in[1] != logits || n->in[2] != targets ||
        n->attrs.i[0] != ce->attrs.i[0])
      return;
    pb = i;
  }
  if (pb < 0) return;
  int metrics = g->metrics, dlogits = g->nodes[pb].out[0];
  ce->op = ZOO_OP_CROSS_ENTROPY_STEP;
  ce->nin = 3, ce->nout = 3;
  ce->in[2] = g->dloss;
  ce->out[1] = metrics, ce->out[2] = dlogits;
  g->tensors[metrics].producer = pl, g->tensors[metrics].out_index = 1;
  g->tensors[dlogits].producer = pl, g->tensors[dlogits].out_index = 2;
  remove_nodes(g, pm, pb);
}

/* ---------------------------------------------------------------------------
 * Interleaved heads (see the top of the file) */

/* The split_heads node that makes tensor t from a [B, T, H*W] input, with
 * *heads heads when *heads > 0 (else sets *heads); -1 if there is none. */
static int split_of(const zoo_graph *g, int t, int64_t *heads) {
  int p = g->tensors[t].producer;
  if (p < 0) return -1;
  const zoo_node *n = &g->nodes[p];
  if (n->op != ZOO_OP_SPLIT_HEADS || g->tensors[n->in[0]].type.ndim != 3) return -1;
  if (*heads > 0 && n->attrs.i[0] != *heads) return -1;
  *heads = n->attrs.i[0];
  return p;
}

/* How many times live nodes read tensor t (a node that reads it twice counts
 * twice; dead nodes do not count); *last gets the last such node. */
static int reads_of(const zoo_graph *g, int t, const char *dead, int *last) {
  int count = 0;
  for (int i = 0; i < g->nnodes; i++)
    for (int k = 0; k < g->nodes[i].nin; k++)
      if (g->nodes[i].in[k] == t && !dead[i]) *last = i, count++;
  return count;
}

/* The one node that reads tensor t, -1 when none or several do. */
static int only_reader(const zoo_graph *g, int t, const char *dead) {
  int reader = -1;
  return reads_of(g, t, dead, &reader) == 1 ? reader : -1;
}

static int is_read(const zoo_graph *g, int t, const char *dead) {
  int unused;
  return reads_of(g, t, dead, &unused) > 0 || t == g->output;
}

/* Puts the rewritten node f in node i's place when the types its shape rule
 * gives are those the tensors f->out[] already have; each output then names
 * node i as its producer. Returns 1, or 0 with the graph as it was. Every
 * rewrite below goes through it, so a rewritten node is checked as one made
 * from .zoo would be. */
static int replace_node(zoo_graph *g, int i, const zoo_node *f) {
  zoo_type types[ZOO_MAX_OUT];
  char err[256];
  if (zoo_shape_infer(g, f, types, err, sizeof err) != 0) return 0;
  for (int k = 0; k < f->nout; k++)
    if (!zoo_type_eq(&types[k], &g->tensors[f->out[k]].type)) return 0;
  g->nodes[i] = *f;
  for (int k = 0; k < f->nout; k++) g->tensors[f->out[k]].producer = i, g->tensors[f->out[k]].out_index = k;
  return 1;
}

/* Rewrites poly_attention node i when its inputs come from split_heads of one
 * H: in layout 1 when its output goes to one merge_heads alone (marked dead)
 * and the value rows are wide enough, else in layout 2 (q and k interleaved,
 * v and o as they were). Marks the split_heads it bypasses in `touched`.
 * Returns 1 when rewritten, else 0 with the graph as it was. */
#define ZOO_INTERLEAVE_MIN_DV 8 /* value floats per head: 32-byte rows */
#define ZOO_INTERLEAVE_MIN_DV_QK 5 /* the same where q and k need copies too (fp32) */

/* The rule's least DV: ZOO_INTERLEAVE_MIN_DV, or ZOO_INTERLEAVE_MIN_DV_QK in
 * fp32 (no tc) where neither q nor k is a layernorm's output, so that layout
 * 0 would copy them as well as v and o; ZOO_INTERLEAVE_MIN_DV=n from the
 * environment sets both, for measuring. */
static int64_t interleave_min_dv(int qk_copies) {
  const char *env = getenv("ZOO_INTERLEAVE_MIN_DV");
  if (env && *env) return atoll(env);
  return qk_copies ? ZOO_INTERLEAVE_MIN_DV_QK : ZOO_INTERLEAVE_MIN_DV;
}

/* Is tensor t a layernorm's output? (zoo_norm_split_heads then absorbs its
 * split_heads.) */
static int is_norm(const zoo_graph *g, int t) {
  int p = g->tensors[t].producer;
  return p >= 0 && g->nodes[p].op == ZOO_OP_LAYERNORM;
}

static int interleave_one(zoo_graph *g, int i, char *dead, char *touched, int tc) {
  zoo_node *n = &g->nodes[i];
  if (n->op != ZOO_OP_POLY_ATTENTION || n->attrs.i[0] != 0) return 0;
  const zoo_type *v = &g->tensors[n->in[2]].type;
  zoo_dim dv = v->dim[v->ndim - 1];
  int64_t heads = 0;
  int split[3];
  for (int k = 0; k < 2; k++)
    if ((split[k] = split_of(g, n->in[k], &heads)) < 0) return 0;
  split[2] = split_of(g, n->in[2], &heads);
  int o = n->out[0];
  int merge = o == g->output ? -1 : only_reader(g, o, dead);
  int qk_from_norm = is_norm(g, g->nodes[split[0]].in[0]) || is_norm(g, g->nodes[split[1]].in[0]);
  int whole = dv.sym == 0 && dv.coef >= interleave_min_dv(!tc && !qk_from_norm) && split[2] >= 0 &&
              merge >= 0 && g->nodes[merge].op == ZOO_OP_MERGE_HEADS;
  if (!whole && (!tc || qk_from_norm || zoo_env_on("ZOO_NO_QK_INTERLEAVE"))) return 0;

  zoo_node m = *n; /* z keeps [B, H, T] in every layout */
  int nsplit = whole ? 3 : 2;
  for (int k = 0; k < nsplit; k++) m.in[k] = g->nodes[split[k]].in[0];
  m.attrs.i[0] = whole ? 1 : 2;
  m.attrs.i[1] = heads;
  if (whole) m.out[0] = g->nodes[merge].out[0];
  if (!replace_node(g, i, &m)) return 0;
  if (whole) {
    g->tensors[o].producer = -1; /* a value no node makes: not computed, not allocated */
    dead[merge] = 1;
  }
  for (int k = 0; k < nsplit; k++) touched[split[k]] = 1;
  return 1;
}

/* Runs one(g, i, dead, touched, arg) on every node: a rewrite that bypasses
 * movement nodes (marked in `touched`) and may mark others dead. Then drops
 * the dead and each touched node that nothing reads now; later nodes first, so
 * that a chain of them (a slice and its split_heads) goes whole. Returns the
 * number of nodes rewritten. */
static int rewrite_bypassing(zoo_graph *g, int (*one)(zoo_graph *, int, char *, char *, int), int arg) {
  char *dead = calloc((size_t)g->nnodes + 1, 1), *touched = calloc((size_t)g->nnodes + 1, 1);
  if (!dead || !touched) abort();
  int rewritten = 0;
  for (int i = 0; i < g->nnodes; i++) rewritten += one(g, i, dead, touched, arg);
  for (int i = g->nnodes - 1; i >= 0; i--)
    if (touched[i] && !is_read(g, g->nodes[i].out[0], dead)) dead[i] = 1;
  if (rewritten) drop_nodes(g, dead);
  free(dead);
  free(touched);
  return rewritten;
}

int zoo_interleave_heads(zoo_graph *g, int tc) { return rewrite_bypassing(g, interleave_one, tc); }

/* ---------------------------------------------------------------------------
 * The compacted head's step at small D (see the top of the file) */

/* A constant dim, or -1. */
static int64_t const_dim(zoo_dim d) { return d.sym == 0 ? d.coef : -1; }

/* Folds linear, cross_entropy_step and the input gradient's matmul into one
 * linear_cross_entropy_step node when the conditions at the top hold;
 * returns 1 when it did, else 0 with the graph as it was. */
static int fold_linear_step(zoo_graph *g) {
  if (g->loss < 0) return 0;
  int ps = g->tensors[g->loss].producer;
  if (ps < 0 || g->nodes[ps].op != ZOO_OP_CROSS_ENTROPY_STEP) return 0;
  const zoo_node *ce = &g->nodes[ps];
  int logits = ce->in[0], dlogits = ce->out[2];
  int pl = g->tensors[logits].producer;
  if (pl < 0 || logits == g->output) return 0;
  const zoo_node *lin = &g->nodes[pl];
  if (lin->op != ZOO_OP_LINEAR || lin->nin != 2) return 0;
  int hc = lin->in[0], w = lin->in[1];
  const zoo_type *ht = &g->tensors[hc].type, *wt = &g->tensors[w].type;
  int64_t D = const_dim(ht->dim[ht->ndim - 1]), V = wt->ndim == 2 ? const_dim(wt->dim[0]) : -1;
  if (D < 4 || D > 64 || D % 4 != 0 || V < 128 || V % 128 != 0) return 0;
  char *dead = calloc((size_t)g->nnodes + 1, 1);
  if (!dead) abort();
  int pm = -1, matmuls = 0;
  for (int i = 0; i < g->nnodes; i++) {
    const zoo_node *n = &g->nodes[i];
    if (n->op == ZOO_OP_MATMUL && n->in[0] == dlogits && n->in[1] == w && n->attrs.i[0] == 0 &&
        n->attrs.i[1] == 0)
      pm = i, matmuls++;
  }
  int ok = matmuls == 1 && only_reader(g, logits, dead) == ps;
  if (ok) {
    zoo_node f = *lin; /* the folded node, in the linear's place */
    f.op = ZOO_OP_LINEAR_CROSS_ENTROPY_STEP;
    f.nin = 4, f.nout = 4;
    f.in[2] = ce->in[1], f.in[3] = ce->in[2];
    f.attrs = ce->attrs;
    f.out[0] = ce->out[0], f.out[1] = ce->out[1], f.out[2] = dlogits, f.out[3] = g->nodes[pm].out[0];
    ok = replace_node(g, pl, &f);
  }
  if (ok) {
    g->tensors[logits].producer = -1; /* a value no node makes: not computed, not allocated */
    dead[ps] = dead[pm] = 1;
    drop_nodes(g, dead);
  }
  free(dead);
  return ok;
}

/* Layernorm node i whose output only a split_heads reads takes over that
 * split_heads' output; the split_heads is marked dead. Returns 1 when
 * rewritten, else 0 with the graph as it was. */
static int norm_split_one(zoo_graph *g, int i, char *dead) {
  zoo_node *n = &g->nodes[i];
  if (n->op != ZOO_OP_LAYERNORM || n->attrs.i[0] != 0 || dead[i]) return 0;
  int y = n->out[0];
  int split = y == g->output ? -1 : only_reader(g, y, dead);
  if (split < 0 || g->nodes[split].op != ZOO_OP_SPLIT_HEADS) return 0;
  int ys = g->nodes[split].out[0];
  zoo_node m = *n;
  m.attrs.i[0] = g->nodes[split].attrs.i[0];
  m.out[0] = ys;
  if (!replace_node(g, i, &m)) return 0;
  g->tensors[y].producer = -1; /* a value no node makes: not computed, not allocated */
  dead[split] = 1;
  return 1;
}

/* Runs one(g, i, dead) on every node i, then drops the nodes it marked dead;
 * returns how many times it rewrote. */
static int rewrite_each(zoo_graph *g, int (*one)(zoo_graph *, int, char *)) {
  char *dead = calloc((size_t)g->nnodes + 1, 1);
  if (!dead) abort();
  int rewritten = 0;
  for (int i = 0; i < g->nnodes; i++) rewritten += one(g, i, dead);
  if (rewritten) drop_nodes(g, dead);
  free(dead);
  return rewritten;
}

int zoo_norm_split_heads(zoo_graph *g) { return rewrite_each(g, norm_split_one); }

/* ---------------------------------------------------------------------------
 * Packed attention (see the top of the file) */

/* The tensor x that tensor t is the `part`-th of: t = split_heads(slice(x,
 * last axis, part d, d), H) with x's last axis 3 d wide, H = *heads when
 * *heads > 0 (else sets it); fills the two nodes into nodes[0], nodes[1].
 * Returns x, or -1. */
static int third_of(const zoo_graph *g, int t, int part, int64_t *heads, int *nodes) {
  int sp = split_of(g, t, heads);
  if (sp < 0) return -1;
  int sl = g->tensors[g->nodes[sp].in[0]].producer;
  if (sl < 0 || g->nodes[sl].op != ZOO_OP_SLICE) return -1;
  const zoo_node *s = &g->nodes[sl];
  int x = s->in[0];
  const zoo_type *xt = &g->tensors[x].type;
  zoo_dim w = xt->dim[xt->ndim - 1], d = s->attrs.dims[0];
  int64_t axis = s->attrs.i[0] < 0 ? s->attrs.i[0] + xt->ndim : s->attrs.i[0];
  if (xt->ndim != 3 || axis != 2 || w.sym != 0 || d.sym != 0 || w.coef != 3 * d.coef ||
      s->attrs.i[1] != part * d.coef)
    return -1;
  nodes[0] = sp, nodes[1] = sl;
  return x;
}

/* Rewrites softmax_attention node i when its q, k, v are the thirds of one
 * tensor and its output goes to one merge_heads alone; marks the merge_heads
 * dead and the split_heads and slices in `touched`. Returns 1 when
 * rewritten, else 0 with the graph as it was. */
static int pack_one(zoo_graph *g, int i, char *dead, char *touched, int unused) {
  zoo_node *n = &g->nodes[i];
  if (n->op != ZOO_OP_SOFTMAX_ATTENTION) return 0;
  int64_t heads = 0;
  int x = -1, moved[3][2];
  for (int k = 0; k < 3; k++) {
    int xk = third_of(g, n->in[k], k, &heads, moved[k]);
    if (xk < 0 || (x >= 0 && xk != x)) return 0;
    x = xk;
  }
  int o = n->out[0];
  int merge = o == g->output ? -1 : only_reader(g, o, dead);
  if (merge < 0 || g->nodes[merge].op != ZOO_OP_MERGE_HEADS) return 0;

  zoo_node m = *n; /* lse keeps [B, H, T] */
  m.op = ZOO_OP_SOFTMAX_ATTENTION_PACKED;
  m.nin = 1;
  m.in[0] = x;
  m.attrs.i[2] = heads;
  m.out[0] = g->nodes[merge].out[0];
  if (!replace_node(g, i, &m)) return 0;
  g->tensors[o].producer = -1; /* a value no node makes: not computed, not allocated */
  dead[merge] = 1;
  for (int k = 0; k < 3; k++) touched[moved[k][0]] = touched[moved[k][1]] = 1;
  return 1;
}

int zoo_pack_attention(zoo_graph *g) { return rewrite_bypassing(g, pack_one, 0); }

/* ---------------------------------------------------------------------------
 * Projection and LayerNorm. ReBased's q and k are layernorm(linear(x, w)) with
 * x of d_model floats a row: at d_model up to 64 the GEMM is too thin to run
 * well and the norm then reads its output back. After autodiff each bias-free
 * linear whose output a layernorm reads (K <= 64, N a multiple of 32 up to
 * 256) becomes, with that layernorm, one linear_layernorm node making both
 * outputs under their old ids: p, which the layernorm's backward reads, and
 * the norm's y (split into heads if the norm was). On the CPU the same bits
 * as the two nodes; on CUDA one kernel (layernorm.cu). It is off unless the
 * environment has ZOO_LINEAR_NORM=1: measured on the H200 (zoorun bench
 * --quick --profile-steps, with and without it), the kernel takes 0.032 ms
 * where cuBLASLt's GEMM and the norm's kernel take 0.034 at rebased 32/48
 * (step 1.09 vs 1.08 ms), and 0.113 where they take 0.093 at 64/128 (2.73 vs
 * 2.68 ms): it does not pay at these widths. */

static int fold_linear_norm_one(zoo_graph *g, int i, char *dead) {
  const zoo_node *l = &g->nodes[i];
  if (l->op != ZOO_OP_LINEAR || l->nin != 2 || dead[i] || l->out[0] == g->output) return 0;
  int pt = l->out[0], ln = -1;
  for (int j = i + 1; j < g->nnodes && ln < 0; j++)
    if (!dead[j] && g->nodes[j].op == ZOO_OP_LAYERNORM && g->nodes[j].in[0] == pt) ln = j;
  if (ln < 0) return 0;
  const zoo_type *xt = &g->tensors[l->in[0]].type, *wt = &g->tensors[l->in[1]].type;
  int64_t K = const_dim(xt->dim[xt->ndim - 1]), N = wt->ndim == 2 ? const_dim(wt->dim[0]) : -1;
  if (K < 1 || K > 64 || N < 32 || N > 256 || N % 32 != 0) return 0;
  const zoo_node *m = &g->nodes[ln];
  zoo_node f = *l;
  f.op = ZOO_OP_LINEAR_LAYERNORM;
  f.nin = 1 + m->nin;
  for (int k = 1; k < m->nin; k++) f.in[k + 1] = m->in[k];
  f.nout = 2;
  f.out[1] = m->out[0];
  f.attrs = m->attrs;
  if (!replace_node(g, i, &f)) return 0;
  dead[ln] = 1;
  return 1;
}

static int fold_linear_norm(zoo_graph *g) { return rewrite_each(g, fold_linear_norm_one); }

int zoo_train_graph(zoo_graph *g, zoo_diag *d) {
  return zoo_train_graph_head(g, zoo_env_on("ZOO_NO_FUSED_HEAD") ? ZOO_HEAD_PLAIN : ZOO_HEAD_FUSED, 0, d);
}

/* The compacted head's rows: (idx, pos, tc) = label_rows(targets), then
 * hc = gather_rows(h, idx, pos) and logits = linear(hc, w). Sets in[0] to the
 * logits and in[1] to tc, the loss's and the metrics' inputs. */
static int compact_head(zoo_graph *g, int h, int w, int64_t per_seq, zoo_span at, int *in,
                        zoo_diag *d) {
  if (per_seq < 1) {
    zoo_error(d, at, "the compacted head needs the most labelled positions per sequence (got %lld)",
              (long long)per_seq);
    return -1;
  }
  zoo_attrs a = {0};
  a.i[0] = -100;
  a.i[1] = per_seq;
  int idx = zoo_graph_node(g, ZOO_OP_LABEL_ROWS, 1, &g->targets, &a, at, d);
  if (idx < 0) return -1;
  int rows[3] = {h, idx, idx + 1};
  int hc = zoo_graph_node(g, ZOO_OP_GATHER_ROWS, 3, rows, NULL, at, d);
  if (hc < 0) return -1;
  int lin[2] = {hc, w};
  in[0] = zoo_graph_node(g, ZOO_OP_LINEAR, 2, lin, NULL, at, d);
  in[1] = idx + 2;
  return in[0] < 0 ? -1 : 0;
}

int zoo_train_graph_head(zoo_graph *g, zoo_head mode, int64_t per_seq, zoo_diag *d) {
  return zoo_train_graph_tc(g, mode, per_seq, 0, d);
}

int zoo_train_graph_tc(zoo_graph *g, zoo_head mode, int64_t per_seq, int tc, zoo_diag *d) {
  if (g->output < 0) {
    zoo_error(d, zoo_nospan, "the model returns no tensor to train");
    return -1;
  }
  if (!zoo_env_on("ZOO_NO_INTERLEAVED_HEADS")) zoo_interleave_heads(g, tc);
  if (!zoo_env_on("ZOO_NO_NORM_SPLIT")) zoo_norm_split_heads(g);
  if (!zoo_env_on("ZOO_NO_PACKED_ATTENTION")) zoo_pack_attention(g);

  zoo_type logits = g->tensors[g->output].type;
  int producer = g->tensors[g->output].producer;
  zoo_span at = producer >= 0 ? g->nodes[producer].span : zoo_nospan;
  if (logits.dtype != ZOO_F32 || logits.ndim < 2) {
    char buf[128];
    zoo_error(d, at, "the model must return logits f32[B, T, V], not %s",
              zoo_type_str(g, &logits, buf, sizeof buf));
    return -1;
  }

  /* the loss's and the metrics' inputs but the targets: (logits) or (h, w) */
  int in[3] = {g->output, -1, -1}, nin = 2;
  zoo_op loss_op = ZOO_OP_CROSS_ENTROPY;
  int head = mode != ZOO_HEAD_PLAIN ? fusable_head(g) : -1;
  int h = -1, w = -1;
  if (head >= 0) {
    h = g->nodes[head].in[0];
    w = g->nodes[head].in[1];
    drop_head(g, head); /* first, so that the logits can leave the tensor table */
  }

  zoo_type tt = logits; /* the logits' leading axes */
  tt.dtype = ZOO_I32;
  tt.ndim--;
  g->targets = zoo_graph_input(g, "targets", tt);
  in[nin - 1] = g->targets;
  if (head >= 0 && mode == ZOO_HEAD_FUSED) {
    in[0] = h, in[1] = w, in[2] = g->targets;
    nin = 3;
    loss_op = ZOO_OP_LINEAR_CROSS_ENTROPY;
  } else if (head >= 0 && compact_head(g, h, w, per_seq, at, in, d) != 0) {
    return -1;
  }

  zoo_attrs ignore = {0};
  ignore.i[0] = -100;
  g->loss = zoo_graph_node(g, loss_op, nin, in, &ignore, at, d);
  if (g->loss < 0) return -1;
  g->metrics = zoo_graph_node(g, ZOO_OP_ACCURACY, nin, in, &ignore, at, d);
  if (g->metrics < 0) return -1;
  zoo_type scalar = {.dtype = ZOO_F32, .ndim = 0};
  g->dloss = zoo_graph_input(g, "dloss", scalar);
  g->nforward = g->nnodes;

  if (zoo_autodiff(g, g->loss, g->dloss, d) != 0) return -1;

  /* A parameter the loss does not reach still gets a gradient (zeros), so the
   * optimiser can treat every parameter alike. */
  for (int i = 0; i < g->nparams; i++) {
    int p = g->params[i];
    if (g->tensors[p].grad >= 0) continue;
    zoo_attrs zero = {0};
    int z = zoo_graph_node(g, ZOO_OP_MULS, 1, &p, &zero, at, d);
    if (z < 0) return -1;
    g->tensors[p].grad = z;
  }
  fold_loss_step(g);
  /* the fold: where tc (its tensor-core form measured as fast or faster), or as the environment says */
  const char *fold = getenv("ZOO_FUSED_LCE_STEP");
  if (fold && *fold ? strcmp(fold, "0") != 0 : tc) fold_linear_step(g);
  if (zoo_env_on("ZOO_LINEAR_NORM")) fold_linear_norm(g);
  return 0;
}
