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

/* Removes node p from the node list; the nodes after it move down one. */
static void remove_node(zoo_graph *g, int p) {
  memmove(&g->nodes[p], &g->nodes[p + 1], (size_t)(g->nnodes - p - 1) * sizeof *g->nodes);
  g->nnodes--;
  if (p < g->nforward) g->nforward--;
  for (int i = 0; i < g->ntensors; i++)
    if (g->tensors[i].producer > p) g->tensors[i].producer--;
}

/* Removes node p (the head) and its output, which no node reads. The output
 * leaves the tensor table when it is the last tensor, as a model's final op
 * makes it; otherwise it stays behind as a value that no node produces, which
 * the backends neither compute nor allocate. */
static void drop_head(zoo_graph *g, int p) {
  int t = g->nodes[p].out[0];
  remove_node(g, p);
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
  int gone[2] = {pb > pm ? pb : pm, pb > pm ? pm : pb}; /* the later one first */
  for (int k = 0; k < 2; k++) remove_node(g, gone[k]);
}

int zoo_train_graph(zoo_graph *g, zoo_diag *d) {
  const char *off = getenv("ZOO_NO_FUSED_HEAD");
  int plain = off && *off && strcmp(off, "0") != 0;
  return zoo_train_graph_head(g, plain ? ZOO_HEAD_PLAIN : ZOO_HEAD_FUSED, 0, d);
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
  if (g->output < 0) {
    zoo_error(d, zoo_nospan, "the model returns no tensor to train");
    return -1;
  }
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
  return 0;
}
