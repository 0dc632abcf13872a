/* plan.c: liveness and memory layout over a step list (see plan.h). */
#include "plan.h"

#include <stdlib.h>
#include <string.h>

static void *xcalloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size);
  if (!p) abort(); /* out of memory */
  return p;
}

static int64_t align_up(int64_t n) { return (n + ZOO_PLAN_ALIGN - 1) / ZOO_PLAN_ALIGN * ZOO_PLAN_ALIGN; }

char *zoo_bytes_str(int64_t bytes, char *buf, size_t n) {
  double b = (double)bytes;
  if (b >= 1024.0 * 1024 * 1024) snprintf(buf, n, "%.2f GiB", b / (1024.0 * 1024 * 1024));
  else if (b >= 1024.0 * 1024) snprintf(buf, n, "%.1f MiB", b / (1024.0 * 1024));
  else if (b >= 1024.0) snprintf(buf, n, "%.1f KiB", b / 1024.0);
  else snprintf(buf, n, "%lld B", (long long)bytes);
  return buf;
}

void zoo_plan_free(zoo_plan *p) {
  free(p->mem);
  free(p->offset);
  free(p->bytes);
  free(p->base);
  free(p->first);
  free(p->last);
  free(p->scratch);
  free(p->scratch_size);
  free(p->param_offset);
  memset(p, 0, sizeof *p);
}

/* Calls fn for every tensor a step names. */
static int step_tensors(const zoo_step *s, int *out) {
  int n = 0;
  if (s->kind == ZOO_STEP_KERNEL) {
    for (int a = 0; a < s->nargs; a++)
      if (s->args[a].kind == ZOO_ARG_TENSOR) out[n++] = s->args[a].tensor;
  } else if (s->kind == ZOO_STEP_GEMM) {
    out[n++] = s->gemm.a;
    out[n++] = s->gemm.b;
    out[n++] = s->gemm.c;
    if (s->gemm.bias >= 0) out[n++] = s->gemm.bias;
  } else {
    out[n++] = s->gemm.c;
  }
  return n;
}

/* A block of arena to place: size, live steps, and who it is for. */
typedef struct item {
  int64_t size, offset;
  int first, last;
  int tensor; /* or -1 - node for a scratch area */
} item;

static int by_size_desc(const void *a, const void *b) {
  const item *x = a, *y = b;
  if (x->size != y->size) return x->size < y->size ? 1 : -1;
  if (x->first != y->first) return x->first - y->first;
  return x->tensor - y->tensor;
}

static int by_offset(const void *a, const void *b) {
  const item *x = *(const item *const *)a, *y = *(const item *const *)b;
  return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Greedy by size, best fit: each block, largest first, goes into the smallest
 * gap between the already placed blocks that overlap it in time, each block's
 * time running ZOO_PLAN_SLACK steps past its last use (or on top of them).
 * Returns the arena size. */
static int64_t place(item *items, int n, int reuse) {
  const char *env = getenv("ZOO_PLAN_SLACK"); /* for measuring the schedule's room */
  const int slack = env && *env ? atoi(env) : ZOO_PLAN_SLACK;
  qsort(items, (size_t)n, sizeof *items, by_size_desc);
  item **live = xcalloc((size_t)n, sizeof *live);
  int64_t top = 0;
  for (int i = 0; i < n; i++) {
    item *it = &items[i];
    if (!reuse) {
      it->offset = top;
      top += it->size;
      continue;
    }
    int nl = 0;
    for (int j = 0; j < i; j++)
      if (items[j].first <= it->last + slack && it->first <= items[j].last + slack)
        live[nl++] = &items[j];
    qsort(live, (size_t)nl, sizeof *live, by_offset);
    int64_t best = -1, best_gap = INT64_MAX, at = 0;
    for (int j = 0; j < nl; j++) {
      int64_t gap = live[j]->offset - at;
      if (gap >= it->size && gap < best_gap) best = at, best_gap = gap;
      int64_t end = live[j]->offset + live[j]->size;
      if (end > at) at = end;
    }
    it->offset = best >= 0 ? best : at;
    if (it->offset + it->size > top) top = it->offset + it->size;
  }
  free(live);
  return top;
}

int zoo_plan_build(zoo_plan *p, const zoo_graph *g, const int64_t *sym, const zoo_step *steps,
                   int nsteps, const int *alias, const int *keep, int nkeep, int reuse, char *err,
                   size_t errlen) {
  memset(p, 0, sizeof *p);
  int nt = g->ntensors;
  p->ntensors = nt;
  p->nsteps = nsteps;
  p->mem = xcalloc((size_t)nt, 1);
  p->offset = xcalloc((size_t)nt, sizeof *p->offset);
  p->bytes = xcalloc((size_t)nt, sizeof *p->bytes);
  p->base = xcalloc((size_t)nt, sizeof *p->base);
  p->first = xcalloc((size_t)nt, sizeof *p->first);
  p->last = xcalloc((size_t)nt, sizeof *p->last);
  p->scratch = xcalloc((size_t)nsteps, sizeof *p->scratch);
  p->scratch_size = xcalloc((size_t)nsteps, sizeof *p->scratch_size);
  p->param_offset = xcalloc((size_t)g->nparams, sizeof *p->param_offset);

  for (int t = 0; t < nt; t++) {
    p->bytes[t] = zoo_type_numel(&g->tensors[t].type, sym) * 4; /* f32 and i32 */
    p->first[t] = p->last[t] = -1;
    int b = t, hops = 0;
    while (alias && alias[b] >= 0 && hops++ < nt) b = alias[b];
    p->base[t] = b;
  }

  /* parameters and their gradients: one layout for both */
  int64_t at = 0;
  for (int i = 0; i < g->nparams; i++) {
    int t = g->params[i];
    p->param_offset[i] = at;
    p->mem[t] = ZOO_MEM_PARAM;
    p->offset[t] = at;
    at += align_up(p->bytes[t]);
  }
  p->param_bytes = at;
  p->param_floats = at / 4;
  for (int i = 0; i < g->nparams; i++) {
    int t = g->params[i], gt = g->tensors[t].grad;
    if (gt < 0) continue;
    int b = p->base[gt];
    if (p->mem[b] != ZOO_MEM_NONE && !(p->mem[b] == ZOO_MEM_GRAD && p->offset[b] == p->param_offset[i])) {
      snprintf(err, errlen,
               "the gradient of parameter %s (tensor %d) shares memory with tensor %d, which "
               "already lives elsewhere; the planner cannot place it",
               g->tensors[t].name ? g->tensors[t].name : "?", gt, b);
      return -1;
    }
    if (p->bytes[b] != p->bytes[t]) {
      snprintf(err, errlen, "the gradient of %s has %lld bytes, the parameter %lld",
               g->tensors[t].name ? g->tensors[t].name : "?", (long long)p->bytes[b],
               (long long)p->bytes[t]);
      return -1;
    }
    p->mem[b] = ZOO_MEM_GRAD;
    p->offset[b] = p->param_offset[i];
  }
  at = 0;
  for (int i = 0; i < g->ninputs; i++) {
    int t = g->inputs[i];
    p->mem[t] = ZOO_MEM_INPUT;
    p->offset[t] = at;
    at += align_up(p->bytes[t]);
  }
  /* the counters after the inputs: those the steps name, first to last (plans
   * of one emit, which never run at once, may share the bytes) */
  int64_t lo = INT64_MAX, hi = -1;
  for (int s = 0; s < nsteps; s++)
    for (int a = 0; a < steps[s].nargs; a++)
      if (steps[s].args[a].kind == ZOO_ARG_COUNTER) {
        int64_t i = steps[s].args[a].i, n = steps[s].args[a].n > 1 ? steps[s].args[a].n : 1;
        if (i < lo) lo = i;
        if (i + n - 1 > hi) hi = i + n - 1;
      }
  p->counter_offset = at;
  p->counter_first = hi >= 0 ? lo : 0;
  p->input_bytes = at + (hi >= 0 ? align_up((hi - lo + 1) * 4) : 0);

  /* live ranges of the arena values */
  for (int s = 0; s < nsteps; s++) {
    int ts[ZOO_MAX_ARGS + 4];
    int n = step_tensors(&steps[s], ts);
    for (int k = 0; k < n; k++) {
      if (ts[k] < 0 || ts[k] >= nt) {
        snprintf(err, errlen, "step %d (%s) names tensor %d, not in the graph", s,
                 steps[s].func ? steps[s].func : "gemm", ts[k]);
        return -1;
      }
      int b = p->base[ts[k]];
      if (p->mem[b] != ZOO_MEM_NONE && p->mem[b] != ZOO_MEM_ARENA) continue;
      p->mem[b] = ZOO_MEM_ARENA;
      if (p->first[b] < 0) p->first[b] = s;
      p->last[b] = s;
    }
    switch (steps[s].kind) {
    case ZOO_STEP_KERNEL: p->kernels++; break;
    case ZOO_STEP_GEMM: p->gemms++; break;
    case ZOO_STEP_ZERO: p->zeros++; break;
    }
  }
  for (int k = 0; k < nkeep; k++) {
    int b = keep[k] >= 0 ? p->base[keep[k]] : -1;
    if (b >= 0 && p->mem[b] == ZOO_MEM_ARENA) p->last[b] = nsteps - 1;
  }

  /* blocks to place: arena values, then one scratch area per run of steps of
   * the same node (an early step, moved to the front, and the rest of its
   * node's steps with scratch are one run, live from the first to the last) */
  item *items = xcalloc((size_t)(nt + nsteps), sizeof *items);
  int nitems = 0;
  for (int t = 0; t < nt; t++)
    if (p->base[t] == t && p->mem[t] == ZOO_MEM_ARENA)
      items[nitems++] = (item){align_up(p->bytes[t] > 0 ? p->bytes[t] : 4), 0, p->first[t], p->last[t], t};
  for (int s = 0; s < nsteps; s++) p->scratch[s] = -1;
  unsigned char *placed = xcalloc((size_t)(nsteps ? nsteps : 1), 1);
  for (int s = 0; s < nsteps; s++) {
    if (steps[s].scratch_bytes <= 0 || placed[s]) continue;
    int e = s;
    int64_t size = steps[s].scratch_bytes;
    while (e + 1 < nsteps && steps[e + 1].node == steps[s].node && steps[e + 1].scratch_bytes > 0) {
      e++;
      if (steps[e].scratch_bytes > size) size = steps[e].scratch_bytes;
    }
    if (steps[s].early)
      for (int k = e + 1; k < nsteps; k++)
        if (steps[k].node == steps[s].node && steps[k].scratch_bytes > 0) {
          e = k;
          if (steps[k].scratch_bytes > size) size = steps[k].scratch_bytes;
        }
    for (int k = s; k <= e; k++)
      if (steps[k].node == steps[s].node && steps[k].scratch_bytes > 0) placed[k] = 1;
    items[nitems++] = (item){align_up(size), 0, s, e, -1 - s};
  }
  free(placed);
  for (int i = 0; i < nitems; i++) p->naive_bytes += items[i].size;
  p->arena_bytes = place(items, nitems, reuse);
  for (int i = 0; i < nitems; i++) {
    if (items[i].tensor >= 0) {
      p->offset[items[i].tensor] = items[i].offset;
    } else {
      int s = -1 - items[i].tensor;
      for (int e = s; e <= items[i].last; e++)
        if (steps[e].node == steps[s].node && steps[e].scratch_bytes > 0)
          p->scratch[e] = items[i].offset, p->scratch_size[e] = items[i].size;
    }
  }
  free(items);
  /* aliases take their base's memory */
  for (int t = 0; t < nt; t++) {
    int b = p->base[t];
    if (b == t) continue;
    p->mem[t] = p->mem[b];
    p->offset[t] = p->offset[b];
  }
  return 0;
}

static const char *mem_name(int m) {
  static const char *const names[] = {"-", "arena", "param", "grad", "input"};
  return names[m];
}

/* One step on one line: kind, name, launch shape, arguments. */
static void write_step(FILE *out, const zoo_plan *p, const zoo_graph *g, const zoo_step *s, int i) {
  const zoo_node *n = s->node >= 0 && s->node < g->nnodes ? &g->nodes[s->node] : NULL;
  fprintf(out, "%4d  ", i);
  if (s->kind == ZOO_STEP_KERNEL) {
    fprintf(out, "kernel %s <<<(%u,%u,%u), (%u,%u,%u), %u>>>", s->func ? s->func : "?", s->grid[0],
            s->grid[1], s->grid[2], s->block[0], s->block[1], s->block[2], s->smem);
    fprintf(out, " (");
    for (int a = 0; a < s->nargs; a++) {
      const zoo_arg *x = &s->args[a];
      if (a) fprintf(out, ", ");
      switch (x->kind) {
      case ZOO_ARG_TENSOR:
        fprintf(out, "t%d@%s+%lld", x->tensor, mem_name(p->mem[x->tensor]), (long long)p->offset[x->tensor]);
        break;
      case ZOO_ARG_SCRATCH: fprintf(out, "scratch@arena+%lld", (long long)(p->scratch[i] + x->i)); break;
      case ZOO_ARG_I64: fprintf(out, "%lld", (long long)x->i); break;
      case ZOO_ARG_F32: fprintf(out, "%.9g", (double)x->f); break;
      case ZOO_ARG_SEED: fprintf(out, "seed"); break;
      case ZOO_ARG_COUNTER:
        fprintf(out, "counter%lld@input+%lld", (long long)x->i,
                (long long)(p->counter_offset + 4 * (x->i - p->counter_first)));
        break;
      }
    }
    fprintf(out, ")");
  } else if (s->kind == ZOO_STEP_GEMM) {
    const zoo_gemm *m = &s->gemm;
    fprintf(out, "gemm t%d = %st%d%s x %st%d%s%s  m=%lld n=%lld k=%lld batch=%lld", m->c,
            m->trans_a ? "(" : "", m->a, m->trans_a ? ")^T" : "", m->trans_b ? "(" : "", m->b,
            m->trans_b ? ")^T" : "", m->bias >= 0 ? " + bias" : "", (long long)m->m, (long long)m->n,
            (long long)m->k, (long long)m->batch);
    if (s->func) fprintf(out, " (or %s <<<(%u,%u,%u), (%u,1,1)>>>)", s->func, s->grid[0], s->grid[1], s->grid[2], s->block[0]);
  } else {
    fprintf(out, "zero t%d@%s+%lld", s->gemm.c, mem_name(p->mem[s->gemm.c]), (long long)p->offset[s->gemm.c]);
  }
  if (n) {
    fprintf(out, "  # node %d %s", s->node, zoo_ops[n->op].name);
    if (n->span.src) fprintf(out, " %s:%d:%d", n->span.src->path, n->span.line, n->span.col);
  }
  fprintf(out, "\n");
}

void zoo_plan_write(FILE *out, const zoo_plan *p, const zoo_graph *g, const zoo_step *steps,
                    int nforward_steps) {
  char b1[32], b2[32], b3[32], b4[32];
  fprintf(out, "# plan: %d steps (%d kernels, %d GEMMs, %d clears); the first %d are the forward pass\n",
          p->nsteps, p->kernels, p->gemms, p->zeros, nforward_steps);
  fprintf(out, "# arena %s (%lld bytes; %s without reuse), parameters %s, inputs %s\n",
          zoo_bytes_str(p->arena_bytes, b1, sizeof b1), (long long)p->arena_bytes,
          zoo_bytes_str(p->naive_bytes, b2, sizeof b2), zoo_bytes_str(p->param_bytes, b3, sizeof b3),
          zoo_bytes_str(p->input_bytes, b4, sizeof b4));
  fprintf(out, "\n## steps\n");
  for (int i = 0; i < p->nsteps; i++) {
    if (i == nforward_steps) fprintf(out, "     ---- backward ----\n");
    write_step(out, p, g, &steps[i], i);
  }
  fprintf(out, "\n## parameters (gradients at the same offsets of the gradient buffer)\n");
  for (int i = 0; i < g->nparams; i++) {
    int t = g->params[i];
    char ty[160];
    zoo_type_str(g, &g->tensors[t].type, ty, sizeof ty);
    fprintf(out, "%10lld  t%-5d %-22s %s  grad t%d\n", (long long)p->param_offset[i], t, ty,
            g->tensors[t].name ? g->tensors[t].name : "?", g->tensors[t].grad);
  }
  fprintf(out, "\n## arena (offset, bytes, live steps)\n");
  for (int t = 0; t < p->ntensors; t++) {
    if (p->mem[t] != ZOO_MEM_ARENA || p->base[t] != t) continue;
    char ty[160];
    zoo_type_str(g, &g->tensors[t].type, ty, sizeof ty);
    fprintf(out, "%10lld %10lld  [%4d, %4d]  t%-5d %s\n", (long long)p->offset[t], (long long)p->bytes[t],
            p->first[t], p->last[t], t, ty);
  }
  for (int s = 0; s < p->nsteps; s++)
    if (p->scratch[s] >= 0 && (s == 0 || p->scratch[s - 1] != p->scratch[s] || steps[s - 1].node != steps[s].node))
      fprintf(out, "%10lld %10lld  [%4d, ....]  scratch of node %d\n", (long long)p->scratch[s],
              (long long)steps[s].scratch_bytes, s, steps[s].node);
  fprintf(out, "\n## aliases (no copy)\n");
  for (int t = 0; t < p->ntensors; t++)
    if (p->base[t] != t) fprintf(out, "t%d is t%d\n", t, p->base[t]);
}

void zoo_plan_summary(FILE *out, const zoo_plan *p, const zoo_graph *g, const zoo_step *steps,
                      int accum) {
  char b1[32], b2[32], b3[32];
  (void)g;
  (void)steps;
  int per_micro = p->kernels + p->gemms + p->zeros;
  /* each optimiser step adds: upload copies, gradient accumulation, AdamW and
   * metric accumulation (see runtime/cuda.c) */
  fprintf(out, "kernels: %d generated kernel launches + %d GEMMs + %d clears per micro-batch\n",
          p->kernels, p->gemms, p->zeros);
  fprintf(out, "launches per training step: %d (x %d micro-batch%s) + optimiser, in one CUDA graph\n",
          per_micro * accum, accum, accum == 1 ? "" : "es");
  fprintf(out, "peak activation memory: %s (arena; %s without reuse)\n",
          zoo_bytes_str(p->arena_bytes, b1, sizeof b1), zoo_bytes_str(p->naive_bytes, b2, sizeof b2));
  fprintf(out, "parameters + gradients + AdamW state: %s\n",
          zoo_bytes_str(p->param_bytes * 4, b3, sizeof b3));
}
