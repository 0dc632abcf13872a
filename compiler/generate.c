/* generate.c: fuse, emit and plan a training graph for the GPU (see generate.h). */
#include "generate.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuse.h"

static void *memdup(const void *p, size_t n) {
  void *q = malloc(n ? n : 1);
  if (!q) abort(); /* out of memory */
  if (n) memcpy(q, p, n);
  return q;
}

int64_t zoo_micro_batch(int64_t T) {
  if (T < 512) return 512;
  int64_t b = 256 / (T / 512);
  return b > 0 ? b : 1;
}

/* Binds B and T by name; any other symbol is an error. */
static int bind_symbols(const zoo_graph *g, int64_t B, int64_t T, int64_t *sym, char *err, size_t n) {
  for (int s = 0; s < ZOO_MAX_SYMS; s++) sym[s] = 1;
  for (int s = 0; s < g->nsyms; s++) {
    if (strcmp(g->sym_names[s], "B") == 0) sym[s] = B;
    else if (strcmp(g->sym_names[s], "T") == 0) sym[s] = T;
    else {
      snprintf(err, n, "the graph has a symbol %s; the CUDA backend binds only B and T", g->sym_names[s]);
      return -1;
    }
  }
  return 0;
}

/* Evaluation's copy of the forward nodes: what draws random numbers draws none. */
static void dropout_off(zoo_node *n) {
  if (n->op == ZOO_OP_DROPOUT) n->attrs.f[0] = 0.0;
  if (n->op == ZOO_OP_SOFTMAX_ATTENTION || n->op == ZOO_OP_SOFTMAX_ATTENTION_PACKED) n->attrs.f[1] = 0.0;
}

/* Moves the early steps (zoo_step's early: they need nothing but the graph's
 * inputs) of steps[0, n) to the front, in their order, the others keeping
 * theirs; returns how many moved. The plan then keeps their node's scratch
 * from the first of them to the node's last step (plan.c), and the schedule
 * runs them on the second stream beside the forward (schedule.c). */
static int hoist_early(zoo_step *steps, int n) {
  int moved = 0;
  for (int i = 0; i < n; i++) {
    if (!steps[i].early) continue;
    zoo_step s = steps[i];
    memmove(&steps[moved + 1], &steps[moved], (size_t)(i - moved) * sizeof *steps);
    steps[moved++] = s;
  }
  return moved;
}

int zoo_cuda_program_build(zoo_cuda_program *cp, const zoo_graph *train, int64_t B, int64_t T,
                           int fuse, int reuse, char *err, size_t errlen) {
  return zoo_cuda_program_build_tf32(cp, train, B, T, fuse, reuse, 0, err, errlen);
}

int zoo_cuda_program_build_tf32(zoo_cuda_program *cp, const zoo_graph *train, int64_t B, int64_t T, int fuse,
                                int reuse, int tf32, char *err, size_t errlen) {
  memset(cp, 0, sizeof *cp);
  cp->emit.tf32 = tf32;
  cp->B = B;
  cp->T = T;
  if (train->loss < 0 || train->metrics < 0 || train->nforward <= 0) {
    snprintf(err, errlen, "the CUDA backend needs a training graph (zoo_train_graph)");
    return -1;
  }
  if (bind_symbols(train, B, T, cp->sym, err, errlen) != 0) return -1;

  cp->train = *train;
  cp->train.nodes = memdup(train->nodes, (size_t)train->nnodes * sizeof *train->nodes);
  cp->train.nodes_cap = train->nnodes;
  zoo_fuse(&cp->train, fuse);

  cp->eval = *train;
  cp->eval.nnodes = train->nforward;
  cp->eval.nodes = memdup(train->nodes, (size_t)train->nforward * sizeof *train->nodes);
  cp->eval.nodes_cap = train->nforward;
  for (int i = 0; i < cp->eval.nnodes; i++) dropout_off(&cp->eval.nodes[i]);
  zoo_fuse(&cp->eval, fuse);

  zoo_cuda_emit *e = &cp->emit;
  if (zoo_cuda_emit_graph(e, &cp->train, cp->sym, &cp->nforward) != 0) {
    snprintf(err, errlen, "code generation (training step): %s", e->err);
    return -1;
  }
  cp->ntrain = e->nsteps;
  cp->nforward += hoist_early(e->steps, cp->ntrain);
  int nf_eval = 0;
  zoo_strbuf_puts(&e->src, "\n// ======== evaluation: the forward pass without dropout ========\n");
  if (zoo_cuda_emit_graph(e, &cp->eval, cp->sym, &nf_eval) != 0) {
    snprintf(err, errlen, "code generation (evaluation): %s", e->err);
    return -1;
  }
  cp->neval = e->nsteps - cp->ntrain;
  zoo_cuda_emit_optimizer(e);
  zoo_cuda_merge_duplicate_kernels(e);

  /* The plans need the aliases of both emissions; the second call replaced
   * e->alias with the evaluation graph's, a subset of the training graph's
   * (the same forward nodes), so re-derive the training ones from the views. */
  int nt = train->ntensors;
  int *alias = malloc((size_t)(nt ? nt : 1) * sizeof *alias);
  if (!alias) abort();
  for (int t = 0; t < nt; t++) alias[t] = -1;
  for (int i = 0; i < train->nnodes; i++)
    if (zoo_cuda_is_view(train, cp->sym, &train->nodes[i])) alias[train->nodes[i].out[0]] = train->nodes[i].in[0];
  int keep[2] = {train->loss, train->metrics};
  int status = zoo_plan_build(&cp->train_plan, &cp->train, cp->sym, e->steps, cp->ntrain, alias, keep,
                              2, reuse, err, errlen);
  if (status == 0)
    status = zoo_plan_build(&cp->eval_plan, &cp->eval, cp->sym, e->steps + cp->ntrain, cp->neval,
                            alias, keep, 2, reuse, err, errlen);
  free(alias);
  return status;
}

void zoo_cuda_program_free(zoo_cuda_program *cp) {
  free(cp->train.nodes);
  free(cp->eval.nodes);
  zoo_cuda_emit_free(&cp->emit);
  zoo_plan_free(&cp->train_plan);
  zoo_plan_free(&cp->eval_plan);
  memset(cp, 0, sizeof *cp);
}

/* A deep copy of a graph (the program's stays untouched). */
static void graph_clone(zoo_graph *dst, const zoo_graph *src) {
  *dst = *src;
  dst->nodes = memdup(src->nodes, (size_t)src->nnodes * sizeof *src->nodes);
  dst->nodes_cap = src->nnodes;
  dst->tensors = memdup(src->tensors, (size_t)src->ntensors * sizeof *src->tensors);
  dst->tensors_cap = src->ntensors;
  for (int t = 0; t < src->ntensors; t++)
    if (src->tensors[t].name) dst->tensors[t].name = strdup(src->tensors[t].name);
  dst->params = memdup(src->params, (size_t)src->nparams * sizeof *src->params);
  dst->params_cap = src->nparams;
  dst->inputs = memdup(src->inputs, (size_t)src->ninputs * sizeof *src->inputs);
  dst->inputs_cap = src->ninputs;
  for (int s = 0; s < src->nsyms; s++) dst->sym_names[s] = strdup(src->sym_names[s]);
}

/* Where the model's seq_len took its value: the last -D seq_len=... (lower.c
 * makes each -D a "<command line>" source whose text is "-D name=value"), else
 * its default in the model's declaration. No location when neither is found. */
static zoo_span seq_len_span(const zoo_program *p) {
  static const char flag[] = "-D seq_len=";
  for (int i = p->nsources - 1; i >= 0; i--) {
    const zoo_source *src = p->sources[i];
    if (strcmp(src->path, "<command line>") != 0 || strncmp(src->text, flag, strlen(flag)) != 0)
      continue;
    int col = (int)strlen(flag) + 1;
    return (zoo_span){src, 1, col, 1, (int)src->len + 1};
  }
  const zoo_ast *file = p->file;
  for (int i = 0; file && i < file->nitems; i++) {
    const zoo_ast *m = file->items[i];
    if (m->kind != ZOO_AST_MODEL || !p->model_name || strcmp(m->str, p->model_name) != 0) continue;
    for (int k = 0; k < m->nparams; k++)
      if (strcmp(m->params[k]->str, "seq_len") == 0)
        return m->params[k]->b ? m->params[k]->b->span : m->params[k]->span;
  }
  return zoo_nospan;
}

/* The model's declaration, for an error about it as a whole. */
static zoo_span model_span(const zoo_program *p) {
  for (int i = 0; p->file && i < p->file->nitems; i++) {
    const zoo_ast *m = p->file->items[i];
    if (m->kind == ZOO_AST_MODEL && p->model_name && strcmp(m->str, p->model_name) == 0) {
      zoo_span at = m->span;
      at.end_line = at.line;
      at.end_col = at.col + (int)strlen("model");
      return at;
    }
  }
  return zoo_nospan;
}

/* T is the model's seq_len, which must be a positive integer: its binding is
 * printed as .zoo text (compile.h), so an int is digits alone. */
static int64_t seq_len_of(const zoo_program *p, zoo_diag *d) {
  const char *value = NULL;
  for (int i = 0; i < p->nbindings; i++)
    if (strcmp(p->bindings[i].name, "seq_len") == 0) value = p->bindings[i].value;
  const char *name = p->model_name ? p->model_name : "?";
  if (!value) {
    zoo_error(d, model_span(p), "model %s has no seq_len parameter to bind T with", name);
    return -1;
  }
  char *end;
  errno = 0;
  long long seq = strtoll(value, &end, 10);
  if (value[0] < '0' || value[0] > '9' || *end || errno || seq <= 0) {
    zoo_error(d, seq_len_span(p), "seq_len is %s; it must be a positive integer (the sequence "
              "length T)", value);
    return -1;
  }
  return seq;
}

int zoo_generate_train_graph(const zoo_program *p, zoo_graph *out, int64_t *B, int64_t *T,
                             zoo_diag *d) {
  int64_t seq = seq_len_of(p, d);
  if (seq < 0) return -1;
  graph_clone(out, &p->graph);
  /* The compacted head, as zoorun trains on CUDA, sized for the most labels
   * MQAR can put in a sequence (4 N <= L: a quarter of the positions). */
  if (out->loss < 0 && zoo_train_graph_head(out, ZOO_HEAD_COMPACT, seq / 4 > 0 ? seq / 4 : 1, d) != 0) {
    zoo_graph_free(out);
    return -1;
  }
  *T = seq;
  *B = zoo_micro_batch(seq);
  return 0;
}

/* mkdir -p */
static int make_dirs(const char *path) {
  char buf[1024];
  snprintf(buf, sizeof buf, "%s", path);
  for (char *q = buf + 1; *q; q++) {
    if (*q != '/') continue;
    *q = 0;
    mkdir(buf, 0755);
    *q = '/';
  }
  if (mkdir(buf, 0755) != 0 && errno != EEXIST) return -1;
  struct stat st;
  return stat(buf, &st) == 0 && S_ISDIR(st.st_mode) ? 0 : -1;
}

/* Builds the program for p's model (fuse as asked, planned with reuse). */
static int build_for(const zoo_program *p, int fuse, zoo_graph *g, zoo_cuda_program *cp, zoo_diag *d) {
  int64_t B, T;
  if (zoo_generate_train_graph(p, g, &B, &T, d) != 0) return -1;
  char err[512];
  if (zoo_cuda_program_build(cp, g, B, T, fuse, 1, err, sizeof err) != 0) {
    zoo_error(d, zoo_nospan, "%s", err);
    zoo_cuda_program_free(cp);
    zoo_graph_free(g);
    return -1;
  }
  return 0;
}

/* Closes f, written as path: 0, or -1 after reporting that it could not be
 * written. A full disk shows at the close, or in the error flag: a failed
 * write empties the buffer, so the close then succeeds, and errno still holds
 * that write's reason (the writers make no other calls that fail). */
static int close_written(FILE *f, const char *path, zoo_diag *d) {
  int bad = ferror(f), e = errno;
  if (fclose(f) != 0) bad = 1, e = errno;
  if (!bad) return 0;
  zoo_error(d, zoo_nospan, "cannot write %s: %s", path, strerror(e ? e : EIO));
  return -1;
}

/* Opens dir/name for writing into *f (path: its name). Returns 0, or -1 after
 * reporting why not. */
static int open_written(const char *dir, const char *name, char *path, size_t n, FILE **f, zoo_diag *d) {
  snprintf(path, n, "%s/%s", dir, name);
  *f = fopen(path, "w");
  if (*f) return 0;
  zoo_error(d, zoo_nospan, "cannot write %s: %s", path, strerror(errno));
  return -1;
}

int zoo_generate(const zoo_program *p, const char *dir, zoo_diag *d) {
  zoo_graph g;
  zoo_cuda_program cp;
  if (build_for(p, 1, &g, &cp, d) != 0) return -1;
  int status = 0;
  char path[1200];
  FILE *f;
  struct stat st;
  if (make_dirs(dir) != 0) {
    if (stat(dir, &st) == 0 && !S_ISDIR(st.st_mode))
      zoo_error(d, zoo_nospan, "cannot write into %s: it is not a folder", dir);
    else
      zoo_error(d, zoo_nospan, "cannot make the folder %s: %s", dir, strerror(errno));
    status = -1;
  }
  if (status == 0) status = open_written(dir, "kernels.cu", path, sizeof path, &f, d);
  if (status == 0) {
    char *src = zoo_cuda_entry_waits(cp.emit.src.s);
    fputs(src, f);
    free(src);
    status = close_written(f, path, d);
  }
  if (status == 0) status = open_written(dir, "plan.txt", path, sizeof path, &f, d);
  if (status == 0) {
    fprintf(f, "# %s: B = %lld, T = %lld (generated by zooc -o; do not edit)\n",
            p->model_name ? p->model_name : "model", (long long)cp.B, (long long)cp.T);
    zoo_plan_summary(f, &cp.train_plan, &cp.train, cp.emit.steps, 1);
    fprintf(f, "\n# ======== training step ========\n");
    zoo_plan_write(f, &cp.train_plan, &cp.train, cp.emit.steps, cp.nforward);
    fprintf(f, "\n# ======== evaluation (forward, no dropout) ========\n");
    zoo_plan_write(f, &cp.eval_plan, &cp.eval, cp.emit.steps + cp.ntrain, cp.neval);
    status = close_written(f, path, d);
  }
  zoo_cuda_program_free(&cp);
  zoo_graph_free(&g);
  return status;
}

int zoo_generate_summary(FILE *out, const zoo_program *p, int fuse, zoo_diag *d) {
  zoo_graph g;
  zoo_cuda_program cp;
  if (build_for(p, fuse, &g, &cp, d) != 0) return -1;
  fprintf(out, "CUDA at B = %lld, T = %lld:\n", (long long)cp.B, (long long)cp.T);
  zoo_plan_summary(out, &cp.train_plan, &cp.train, cp.emit.steps, 1);
  zoo_cuda_program_free(&cp);
  zoo_graph_free(&g);
  return 0;
}

/* --dump=fused: each group with its nodes. */
static void dump_groups(FILE *out, const zoo_graph *g) {
  int *order = malloc((size_t)(g->nnodes ? g->nnodes : 1) * sizeof *order);
  if (!order) abort();
  int n = zoo_fuse_order(g, order);
  fprintf(out, "# %d kernels' worth of groups for %d nodes, in launch order\n", n, g->nnodes);
  for (int q = 0; q < n; q++) {
    fprintf(out, "group %d:", order[q]);
    for (int i = order[q]; i < g->nnodes; i++)
      if (zoo_node_group(g, i) == order[q]) fprintf(out, " %d:%s", i, zoo_ops[g->nodes[i].op].name);
    fprintf(out, "\n");
  }
  free(order);
}

int zoo_generate_dump(FILE *out, const zoo_program *p, const char *what, int fuse, zoo_diag *d) {
  if (strcmp(what, "fused") != 0 && strcmp(what, "plan") != 0 && strcmp(what, "cuda") != 0) {
    zoo_error(d, zoo_nospan, "unknown dump '%s' (fused, plan or cuda)", what);
    return -1;
  }
  zoo_graph g;
  zoo_cuda_program cp;
  if (build_for(p, fuse, &g, &cp, d) != 0) return -1;
  if (strcmp(what, "fused") == 0) dump_groups(out, &cp.train);
  else if (strcmp(what, "plan") == 0) zoo_plan_write(out, &cp.train_plan, &cp.train, cp.emit.steps, cp.nforward);
  else {
    char *src = zoo_cuda_entry_waits(cp.emit.src.s);
    fputs(src, out);
    free(src);
  }
  zoo_cuda_program_free(&cp);
  zoo_graph_free(&g);
  return 0;
}
