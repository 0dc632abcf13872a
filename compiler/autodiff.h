/* autodiff.h: the gradient rules behind zoo_autodiff (graph.h).
 *
 * Every row of ops.def has a rule zoo_grad_<name>. zoo_autodiff walks the
 * forward nodes in reverse and, for a node whose op has ZOO_OPF_GRAD and whose
 * outputs received gradients, calls its rule with
 *
 *   dout[k]  the gradient tensor of output k, or -1 if none reached it;
 *   din[i]   to be set to the gradient tensor of input i, or left at -1.
 *
 * A rule emits ordinary graph nodes (zoo_graph_node) at the forward node's span
 * and only for the inputs whose c->want[i] is set (f32 inputs that depend on a
 * parameter or an f32 input). zoo_autodiff checks that each gradient has its
 * input's type, and adds gradients of tensors used more than once. Rows without
 * ZOO_OPF_GRAD have rules that set nothing.
 */
#ifndef ZOO_AUTODIFF_H
#define ZOO_AUTODIFF_H

#include "graph.h"

typedef struct zoo_grad_ctx {
  zoo_graph *g;
  zoo_diag *d;
  zoo_span span;           /* the forward node's, given to every node a rule makes */
  int want[ZOO_MAX_IN];    /* input i needs a gradient */
} zoo_grad_ctx;

/* Returns 0, or -1 after reporting through c->d (a gradient zoo cannot express). */
#define X(NAME, name, cls, nin_min, nin_max, nout, flags) \
  int zoo_grad_##name(zoo_grad_ctx *c, const zoo_node *n, const int *dout, int *din);
#include "ops.def"
#undef X

#endif
