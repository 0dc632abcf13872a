/* train_graph.c: from a model graph (tokens -> logits) to a training graph.
 *
 * Adds the targets input, the loss (cross-entropy ignoring -100), the metrics
 * (accuracy: correct and labelled counts), the loss's gradient seed "dloss", and
 * the backward pass, so that every parameter has a gradient tensor. See
 * zoo_train_graph in graph.h.
 */
#include <stdio.h>

#include "graph.h"

int zoo_train_graph(zoo_graph *g, zoo_diag *d) {
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

  zoo_type tt = logits; /* the logits' leading axes */
  tt.dtype = ZOO_I32;
  tt.ndim--;
  g->targets = zoo_graph_input(g, "targets", tt);

  zoo_attrs ignore = {0};
  ignore.i[0] = -100;
  int in[2] = {g->output, g->targets};
  g->loss = zoo_graph_node(g, ZOO_OP_CROSS_ENTROPY, 2, in, &ignore, at, d);
  if (g->loss < 0) return -1;
  g->metrics = zoo_graph_node(g, ZOO_OP_ACCURACY, 2, in, &ignore, at, d);
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
  return 0;
}
