/* cpu_backend.c: the training backend on the CPU reference executor (backend.h).
 *
 * One zoo_cpu holds every tensor of the training graph with B = micro-batch rows
 * and T = sequence length. A step runs the whole graph once per micro-batch with
 * the loss seed 1/accum, sums each parameter's gradient into an accumulator, then
 * applies AdamW exactly as torch.optim.AdamW does (decoupled weight decay, bias
 * corrections, eps added after the square root). Metrics are always current.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cpu.h"
#include "rng.h"

typedef struct cpu_backend {
  zoo_backend be;
  const zoo_graph *g;
  zoo_cpu cpu;
  int64_t B, T;
  int tokens, targets, dloss; /* input tensor ids */
  float **grad;               /* per parameter: the gradient summed over micro-batches */
  float **m, **v;             /* AdamW moments */
  int64_t *numel;             /* per parameter */
  int64_t step;               /* optimiser steps taken */
  zoo_metrics last;
} cpu_backend;

/* Copies rows of a batch into the tokens and targets inputs; the rows past
 * `rows` get token 0 and target -100 (nothing learnt from them). */
static int cpu_fill(cpu_backend *cb, const int32_t *tokens, const int32_t *targets, int rows) {
  if (rows < 0 || rows > cb->B) {
    snprintf(cb->be.err, sizeof cb->be.err, "a batch of %d rows does not fit B = %lld", rows,
             (long long)cb->B);
    return -1;
  }
  int32_t *tok = zoo_cpu_i32(&cb->cpu, cb->tokens), *tgt = zoo_cpu_i32(&cb->cpu, cb->targets);
  size_t n = (size_t)rows * (size_t)cb->T, total = (size_t)cb->B * (size_t)cb->T;
  memcpy(tok, tokens, n * sizeof *tok);
  memcpy(tgt, targets, n * sizeof *tgt);
  for (size_t i = n; i < total; i++) tok[i] = 0, tgt[i] = -100;
  return 0;
}

/* Reads loss and (correct, labelled) after a forward pass. */
static void cpu_read_metrics(cpu_backend *cb, zoo_metrics *m) {
  const zoo_graph *g = cb->g;
  m->loss = zoo_cpu_f32(&cb->cpu, g->loss)[0];
  const float *acc = zoo_cpu_f32(&cb->cpu, g->metrics);
  m->correct = acc[0];
  m->labelled = acc[1];
}

/* AdamW on one parameter, in fp32 like torch (the scalars computed in double). */
static void cpu_adamw(float *p, float *m, float *v, const float *g, int64_t n,
                      const zoo_adamw *o, int64_t step) {
  double bc1 = 1.0 - pow(o->beta1, (double)step), bc2 = 1.0 - pow(o->beta2, (double)step);
  float decay = (float)(1.0 - (double)o->lr * o->weight_decay);
  float one_b1 = (float)(1.0 - o->beta1), b2 = o->beta2, one_b2 = (float)(1.0 - o->beta2);
  float step_size = (float)(o->lr / bc1), bc2_sqrt = (float)sqrt(bc2), eps = o->eps;
#pragma omp parallel for if (n > 65536) schedule(static)
  for (int64_t i = 0; i < n; i++) {
    p[i] *= decay;
    m[i] += one_b1 * (g[i] - m[i]); /* torch: exp_avg.lerp_(grad, 1 - beta1) */
    v[i] = v[i] * b2 + one_b2 * g[i] * g[i];
    float denom = sqrtf(v[i]) / bc2_sqrt + eps;
    p[i] -= step_size * (m[i] / denom);
  }
}

static int cpu_train_step(zoo_backend *be, int accum, const int32_t *const *tokens,
                          const int32_t *const *targets, const int *rows, const zoo_adamw *opt,
                          uint64_t seed, zoo_metrics *out) {
  cpu_backend *cb = (cpu_backend *)be;
  const zoo_graph *g = cb->g;
  zoo_metrics sum = {0};
  for (int mb = 0; mb < accum; mb++) {
    if (cpu_fill(cb, tokens[mb], targets[mb], rows[mb])) return -1;
    zoo_cpu_f32(&cb->cpu, g->dloss)[0] = 1.0f / (float)accum;
    cb->cpu.training = 1;
    cb->cpu.seed = zoo_rng_mix(seed + 0x9e3779b97f4a7c15ULL * (uint64_t)(mb + 1));
    if (zoo_cpu_run(&cb->cpu, 0, g->nnodes)) {
      snprintf(be->err, sizeof be->err, "%s", cb->cpu.err);
      return -1;
    }
    zoo_metrics m;
    cpu_read_metrics(cb, &m);
    sum.loss += m.loss / accum;
    sum.correct += m.correct;
    sum.labelled += m.labelled;
    for (int i = 0; i < g->nparams; i++) {
      const float *gi = zoo_cpu_f32(&cb->cpu, g->tensors[g->params[i]].grad);
      float *acc = cb->grad[i];
      int64_t n = cb->numel[i];
      if (mb == 0) memcpy(acc, gi, (size_t)n * sizeof *acc);
      else
        for (int64_t k = 0; k < n; k++) acc[k] += gi[k];
    }
  }
  cb->step++;
  for (int i = 0; i < g->nparams; i++)
    cpu_adamw(zoo_cpu_f32(&cb->cpu, g->params[i]), cb->m[i], cb->v[i], cb->grad[i], cb->numel[i],
              opt, cb->step);
  cb->last = sum;
  if (out) *out = sum;
  return 0;
}

static int cpu_eval_batch(zoo_backend *be, const int32_t *tokens, const int32_t *targets,
                          int rows, zoo_metrics *m) {
  cpu_backend *cb = (cpu_backend *)be;
  if (cpu_fill(cb, tokens, targets, rows)) return -1;
  cb->cpu.training = 0;
  if (zoo_cpu_run(&cb->cpu, 0, cb->g->nforward)) {
    snprintf(be->err, sizeof be->err, "%s", cb->cpu.err);
    return -1;
  }
  cpu_read_metrics(cb, m);
  return 0;
}

static int cpu_get_state(zoo_backend *be, float **params, float **m, float **v, int64_t *step) {
  cpu_backend *cb = (cpu_backend *)be;
  for (int i = 0; i < cb->g->nparams; i++) {
    size_t bytes = (size_t)cb->numel[i] * sizeof(float);
    if (params) memcpy(params[i], zoo_cpu_f32(&cb->cpu, cb->g->params[i]), bytes);
    if (m) memcpy(m[i], cb->m[i], bytes);
    if (v) memcpy(v[i], cb->v[i], bytes);
  }
  if (step) *step = cb->step;
  return 0;
}

static int cpu_set_state(zoo_backend *be, float *const *params, float *const *m,
                         float *const *v, int64_t step) {
  cpu_backend *cb = (cpu_backend *)be;
  for (int i = 0; i < cb->g->nparams; i++) {
    size_t bytes = (size_t)cb->numel[i] * sizeof(float);
    if (params) memcpy(zoo_cpu_f32(&cb->cpu, cb->g->params[i]), params[i], bytes);
    if (m) memcpy(cb->m[i], m[i], bytes);
    else memset(cb->m[i], 0, bytes);
    if (v) memcpy(cb->v[i], v[i], bytes);
    else memset(cb->v[i], 0, bytes);
  }
  cb->step = step;
  return 0;
}

static int cpu_sync(zoo_backend *be, zoo_metrics *last) {
  if (last) *last = ((cpu_backend *)be)->last;
  return 0;
}

static void cpu_backend_free(zoo_backend *be) {
  cpu_backend *cb = (cpu_backend *)be;
  if (!cb) return;
  for (int i = 0; cb->g && i < cb->g->nparams; i++) {
    if (cb->grad) free(cb->grad[i]);
    if (cb->m) free(cb->m[i]);
    if (cb->v) free(cb->v[i]);
  }
  free(cb->grad);
  free(cb->m);
  free(cb->v);
  free(cb->numel);
  zoo_cpu_free(&cb->cpu);
  free(cb);
}

zoo_backend *zoo_cpu_backend_init(const zoo_graph *g, int64_t rows_B, int64_t seq_T, char *err,
                                  size_t errlen) {
  if (g->loss < 0 || g->metrics < 0 || g->dloss < 0 || g->targets < 0) {
    snprintf(err, errlen, "the graph has no training part (zoo_train_graph was not run)");
    return NULL;
  }
  int64_t sym[ZOO_MAX_SYMS];
  for (int i = 0; i < g->nsyms; i++) {
    if (!strcmp(g->sym_names[i], "B")) sym[i] = rows_B;
    else if (!strcmp(g->sym_names[i], "T")) sym[i] = seq_T;
    else {
      snprintf(err, errlen, "the graph has a symbol '%s' that the trainer cannot bind (only B, T)",
               g->sym_names[i]);
      return NULL;
    }
  }
  cpu_backend *cb = calloc(1, sizeof *cb);
  cb->g = g;
  cb->B = rows_B;
  cb->T = seq_T;
  cb->tokens = -1;
  for (int i = 0; i < g->ninputs; i++) {
    const char *name = g->tensors[g->inputs[i]].name;
    if (name && !strcmp(name, "tokens")) cb->tokens = g->inputs[i];
  }
  cb->targets = g->targets;
  cb->dloss = g->dloss;
  if (cb->tokens < 0) {
    snprintf(err, errlen, "the model has no input named 'tokens'");
    free(cb);
    return NULL;
  }
  if (zoo_cpu_init(&cb->cpu, g, sym)) {
    snprintf(err, errlen, "%s", cb->cpu.err);
    free(cb);
    return NULL;
  }
  cb->grad = calloc((size_t)g->nparams + 1, sizeof *cb->grad);
  cb->m = calloc((size_t)g->nparams + 1, sizeof *cb->m);
  cb->v = calloc((size_t)g->nparams + 1, sizeof *cb->v);
  cb->numel = calloc((size_t)g->nparams + 1, sizeof *cb->numel);
  for (int i = 0; i < g->nparams; i++) {
    int p = g->params[i];
    if (g->tensors[p].grad < 0) {
      snprintf(err, errlen, "parameter %s has no gradient", g->tensors[p].name);
      cpu_backend_free(&cb->be);
      return NULL;
    }
    int64_t n = cb->cpu.numel[p];
    cb->numel[i] = n;
    cb->grad[i] = calloc((size_t)(n ? n : 1), sizeof(float));
    cb->m[i] = calloc((size_t)(n ? n : 1), sizeof(float));
    cb->v[i] = calloc((size_t)(n ? n : 1), sizeof(float));
  }
  cb->be.name = "cpu";
  cb->be.train_step = cpu_train_step;
  cb->be.eval_batch = cpu_eval_batch;
  cb->be.get_state = cpu_get_state;
  cb->be.set_state = cpu_set_state;
  cb->be.sync = cpu_sync;
  cb->be.free = cpu_backend_free;
  cb->be.impl = cb;
  return &cb->be;
}
