/* dump.c: the graph as text (--dump=graph, --dump=grad) and as Graphviz
 * (--dump=dot).
 *
 *   input %0 tokens: i32[B, T]
 *   param %1 backbone.embeddings.word_embeddings.weight: f32[8192, 64] normal(0.02)
 *   %30 = embedding(%1, %0): f32[B, T, 64]  @ models/std/nn.zoo:33:12
 *   %31 = layernorm(%30, %5, %6) eps=1e-05: f32[B, T, 64]  @ ...
 */
#include <string.h>

#include "graph.h"
#include "value.h"

static void print_init(FILE *out, zoo_init init) {
  switch (init.kind) {
  case ZOO_INIT_ZEROS: fputs("zeros()", out); break;
  case ZOO_INIT_ONES: fputs("ones()", out); break;
  case ZOO_INIT_NORMAL: fprintf(out, "normal(%g)", init.a); break;
  case ZOO_INIT_UNIFORM: fprintf(out, "uniform(%g)", init.a); break;
  case ZOO_INIT_CONST: fprintf(out, "constant(%g)", init.a); break;
  case ZOO_INIT_RAMP:
    fprintf(out, "ramp(%g, %g, scale=%g, offset=%g)", init.a, init.b, init.c, init.d);
    break;
  case ZOO_INIT_ZIGZAG: fprintf(out, "zigzag(%g, offset=%g)", init.a, init.b); break;
  }
}

static void print_span(FILE *out, zoo_span at) {
  if (at.src) fprintf(out, "  @ %s:%d:%d", at.src->path, at.line, at.col);
}

void zoo_graph_dump(FILE *out, const zoo_graph *g) {
  char buf[256];
  fprintf(out, "graph: %d nodes, %d tensors, symbols", g->nnodes, g->ntensors);
  for (int i = 0; i < g->nsyms; i++) fprintf(out, " %s", g->sym_names[i]);
  fputc('\n', out);
  for (int i = 0; i < g->ntensors; i++) {
    const zoo_tensor *t = &g->tensors[i];
    if (t->kind == ZOO_T_VALUE) continue;
    fprintf(out, "%s %%%d %s: %s", t->kind == ZOO_T_INPUT ? "input" : "param", i,
            t->name ? t->name : "?", zoo_type_str(g, &t->type, buf, sizeof buf));
    if (t->kind == ZOO_T_PARAM) {
      fputc(' ', out);
      print_init(out, t->init);
    }
    fputc('\n', out);
  }
  for (int i = 0; i < g->nnodes; i++) {
    const zoo_node *n = &g->nodes[i];
    if (i == g->nforward && g->nforward > 0) fputs("# backward\n", out);
    for (int k = 0; k < n->nout; k++) fprintf(out, "%s%%%d", k ? ", " : "", n->out[k]);
    fprintf(out, " = %s(", zoo_ops[n->op].name);
    for (int k = 0; k < n->nin; k++) fprintf(out, "%s%%%d", k ? ", " : "", n->in[k]);
    fputc(')', out);
    zoo_builtin_print_attrs(out, g, n);
    fputc(':', out);
    for (int k = 0; k < n->nout; k++)
      fprintf(out, "%s %s", k ? "," : "", zoo_type_str(g, &g->tensors[n->out[k]].type, buf, sizeof buf));
    print_span(out, n->span);
    fputc('\n', out);
  }
  if (g->output >= 0) fprintf(out, "output %%%d\n", g->output);
  if (g->loss >= 0) fprintf(out, "loss %%%d\n", g->loss);
  if (g->metrics >= 0) fprintf(out, "metrics %%%d\n", g->metrics);
  for (int i = 0; i < g->ntensors; i++)
    if (g->tensors[i].kind != ZOO_T_VALUE && g->tensors[i].grad >= 0)
      fprintf(out, "grad %%%d %s: %%%d\n", i, g->tensors[i].name ? g->tensors[i].name : "?",
              g->tensors[i].grad);
}

/* One box per input and parameter, one ellipse per node; edges follow tensors. */
void zoo_graph_dump_dot(FILE *out, const zoo_graph *g) {
  char buf[256];
  fputs("digraph zoo {\n  rankdir=TB;\n  node [fontname=\"monospace\", fontsize=10];\n", out);
  for (int i = 0; i < g->ntensors; i++) {
    const zoo_tensor *t = &g->tensors[i];
    if (t->kind == ZOO_T_VALUE) continue;
    fprintf(out, "  t%d [shape=box, label=\"%s\\n%s\"];\n", i, t->name ? t->name : "?",
            zoo_type_str(g, &t->type, buf, sizeof buf));
  }
  for (int i = 0; i < g->nnodes; i++) {
    const zoo_node *n = &g->nodes[i];
    fprintf(out, "  n%d [label=\"%s\\n%s\"%s];\n", i, zoo_ops[n->op].name,
            zoo_type_str(g, &g->tensors[n->out[0]].type, buf, sizeof buf),
            g->nforward > 0 && i >= g->nforward ? ", style=dashed" : "");
    for (int k = 0; k < n->nin; k++) {
      const zoo_tensor *t = &g->tensors[n->in[k]];
      if (t->kind == ZOO_T_VALUE) fprintf(out, "  n%d -> n%d;\n", t->producer, i);
      else fprintf(out, "  t%d -> n%d;\n", n->in[k], i);
    }
  }
  fputs("}\n", out);
}
