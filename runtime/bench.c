/* bench.c: zoorun bench (see bench.h). */
#include "bench.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../compiler/codegen_cuda.h"
#include "../compiler/compile.h"
#include "backend.h"
#include "cuda_backend.h"
#include "mqar.h"
#include "train.h"

/* The reference's cells (peer-h200.jsonl): PyTorch + Triton, fp32, one H200,
 * one optimiser step over 512 sequences, mean of 10 steps after 3 warm-ups;
 * peak_mib is torch.cuda.max_memory_allocated. */
typedef struct bench_cell {
  const char *mixer;
  int d_model, seq_len;
  long long params;
  int micro_batch, accum;
  double ref_ms;
  double ref_peak_mib;
} bench_cell;

static const bench_cell cells[] = {
    {"rebased", 32, 48, 279776, 512, 1, 7.16, 2486},
    {"rebased", 64, 128, 570560, 512, 1, 17.27, 6624},
    {"based", 64, 128, 569792, 512, 1, 16.44, 6527},
    {"conv_attention", 64, 128, 554176, 512, 1, 14.1, 6535},
    {"rebased", 128, 512, 1213056, 256, 2, 96.01, 13607},
    {"based", 128, 512, 1212288, 256, 2, 94.5, 13413},
    {"rebased", 512, 512, 5439744, 256, 2, 270.34, 16217},
    {"rebased", 64, 2048, 693440, 64, 8, 571.16, 13181},
    {"rebased", 512, 2048, 6226176, 64, 8, 1633.78, 16227},
};
#define NCELLS (int)(sizeof cells / sizeof *cells)

/* The key-value pairs of a cell's MQAR data, as the paper's sweep makes them:
 * 16 at L = 128, else L / 4. Each pair labels one position of a sequence. */
static int cell_pairs(const bench_cell *c) { return c->seq_len == 128 ? 16 : c->seq_len / 4; }

typedef struct bench_opts {
  int device, steps, warmup, quick, precompile, profile, poly;
  zoo_precision precision;
  const char *only, *json;
} bench_opts;

typedef struct bench_result {
  long long params;
  double ms_median, ms_min, ms_wall;
  int launches, kernels, gemms;
  double zoo_mib, used_mib, arena_mib;
  double compile_s;
  double first_loss, last_loss;
  char error[1100];
  char *profile; /* --profile's lines, or NULL */
} bench_result;

static const char usage[] =
    "usage: zoorun bench [--device cuda[:N]] [--steps N] [--warmup N] [--only MIXER] [--quick]\n"
    "                    [--json FILE] [--profile] [--profile-steps] [--poly] [--precompile]\n"
    "                    [--precision fp32|tf32|bf16]\n"
    "  times optimiser steps of the reference's H200 cells (rebased, based, conv_attention),\n"
    "  then poly_attention alone (B 512, H 12, L 128 / 512 / 2048, value widths 5 and 42, each\n"
    "  form: forward and backward ms, TFLOP/s, fraction of the fp32 peak)\n"
    "  --steps N     timed steps per cell (20)       --warmup N  untimed steps first (3)\n"
    "  --only MIXER  cells of that mixer only        --quick     the four small cells only\n"
    "  --json FILE   also write one JSON line per cell\n"
    "  --profile     after timing, GPU time per kernel kind of one micro-batch (steps run one by\n"
    "                one between CUDA events), the 15 largest\n"
    "  --profile-steps  the same for every step in order, GEMMs with their m, n, k\n"
    "  --precision P the GEMMs' arithmetic (fp32, the reference's and the default; tf32; bf16)\n"
    "  --poly        poly_attention alone only (on device 0); left out by --only and --quick\n"
    "  --precompile  no GPU needed: compile every cell's module for sm_90 into the kernel cache\n"
    "                (ZOO_CACHE_DIR), so the GPU machine skips NVRTC (with --poly: the poly\n"
    "                section's modules)\n";

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int by_float(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return x < y ? -1 : x > y;
}

/* s with JSON's special characters escaped, into buf. */
static const char *json_str(const char *s, char *buf, size_t n) {
  size_t k = 0;
  for (; *s && k + 7 < n; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') buf[k++] = '\\', buf[k++] = (char)ch;
    else if (ch < 0x20) k += (size_t)snprintf(buf + k, n - k, "\\u%04x", ch);
    else buf[k++] = (char)ch;
  }
  buf[k] = 0;
  return buf;
}

/* Runs one cell; fills r (r->error on failure). */
static void run_cell(const bench_cell *c, const bench_opts *o, bench_result *r) {
  memset(r, 0, sizeof *r);
  r->first_loss = r->last_loss = NAN;
  char path[128], dm[32], sl[32];
  snprintf(path, sizeof path, "models/%s.zoo", c->mixer);
  snprintf(dm, sizeof dm, "%d", c->d_model);
  snprintf(sl, sizeof sl, "%d", c->seq_len);
  zoo_define defs[2] = {{"d_model", dm}, {"seq_len", sl}};
  zoo_compile_opts co = {0};
  co.path = path;
  co.defines = defs;
  co.ndefines = 2;
  zoo_diag d;
  zoo_diag_init(&d, stderr);
  zoo_program *p = NULL;
  if (zoo_compile(&co, &d, &p) != 0) {
    snprintf(r->error, sizeof r->error, "%s does not compile", path);
    return;
  }
  zoo_graph *g = &p->graph;
  r->params = zoo_graph_param_count(g);
  if (zoo_train_graph_head(g, ZOO_HEAD_COMPACT, cell_pairs(c), &d) != 0) {
    snprintf(r->error, sizeof r->error, "no training graph");
    zoo_program_free(p);
    return;
  }
  int64_t B = c->micro_batch, T = c->seq_len;
  char err[1024];
  double t0 = now_s();
  zoo_backend *be = zoo_cuda_backend_init(g, B, T, o->device, o->precision, err, sizeof err);
  r->compile_s = now_s() - t0;
  if (!be) {
    snprintf(r->error, sizeof r->error, "%s", err);
    zoo_program_free(p);
    return;
  }
  /* parameters as the trainer initialises them */
  int np = g->nparams;
  float **params = calloc((size_t)np, sizeof *params);
  for (int i = 0; i < np; i++)
    params[i] = malloc((size_t)zoo_type_numel(&g->tensors[g->params[i]].type, NULL) * sizeof(float));
  zoo_train_init_params(g, 1, params);
  int ok = be->set_state(be, params, NULL, NULL, 0) == 0;
  for (int i = 0; i < np; i++) free(params[i]);
  free(params);

  /* MQAR batches as the paper's sweep makes them */
  zoo_mqar gen;
  zoo_mqar_opts mo = {8192, c->seq_len, cell_pairs(c), 0.01, 0};
  int32_t **tok = calloc((size_t)c->accum, sizeof *tok), **tgt = calloc((size_t)c->accum, sizeof *tgt);
  int rows[64];
  if (ok && zoo_mqar_init(&gen, &mo, err, sizeof err) != 0) {
    snprintf(r->error, sizeof r->error, "MQAR: %s", err);
    ok = 0;
  } else if (ok) {
    for (int k = 0; k < c->accum; k++) {
      tok[k] = malloc((size_t)(B * T) * 4);
      tgt[k] = malloc((size_t)(B * T) * 4);
      zoo_mqar_batch(&gen, 42, NULL, k * B, B, tok[k], tgt[k]);
      rows[k] = (int)B;
    }
    zoo_mqar_free(&gen);
  }
  zoo_adamw opt = {1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f};
  int total = o->warmup + o->steps;
  float *ms = calloc((size_t)(o->steps ? o->steps : 1), sizeof *ms);
  zoo_metrics m;
  /* one step at a time, synchronised, timed by events around the graph launch */
  for (int s = 0; ok && s < total; s++) {
    if (be->train_step(be, c->accum, (const int32_t *const *)tok, (const int32_t *const *)tgt, rows,
                       &opt, (uint64_t)s, &m) < 0 ||
        be->sync(be, &m) != 0) {
      snprintf(r->error, sizeof r->error, "step %d: %s", s + 1, be->err);
      ok = 0;
      break;
    }
    if (s == 0) r->first_loss = m.loss;
    r->last_loss = m.loss;
    zoo_cuda_stats st;
    if (s >= o->warmup && zoo_cuda_backend_stats(be, &st) == 0) ms[s - o->warmup] = st.last_step_ms;
  }
  /* then back to back, as training runs: wall time per step */
  if (ok && o->steps > 0) {
    double w0 = now_s();
    for (int s = 0; ok && s < o->steps; s++)
      if (be->train_step(be, c->accum, (const int32_t *const *)tok, (const int32_t *const *)tgt, rows,
                         &opt, (uint64_t)(total + s), &m) < 0) {
        snprintf(r->error, sizeof r->error, "pipelined step %d: %s", s + 1, be->err);
        ok = 0;
      }
    if (ok && be->sync(be, &m) != 0) {
      snprintf(r->error, sizeof r->error, "sync: %s", be->err);
      ok = 0;
    }
    r->ms_wall = (now_s() - w0) * 1e3 / o->steps;
  }
  if (ok && o->steps > 0) {
    qsort(ms, (size_t)o->steps, sizeof *ms, by_float);
    r->ms_median = o->steps % 2 ? ms[o->steps / 2] : 0.5 * (ms[o->steps / 2 - 1] + ms[o->steps / 2]);
    r->ms_min = ms[0];
  }
  if (ok && o->profile) {
    r->profile = malloc(1 << 18);
    FILE *f = r->profile ? fmemopen(r->profile, 1 << 18, "w") : NULL;
    if (f) {
      if (zoo_cuda_backend_profile(be, 5, o->profile == 2 ? 0 : 15, f) != 0) fprintf(f, "    profile failed: %s\n", be->err);
      fclose(f);
    }
  }
  zoo_cuda_stats st;
  if (ok && zoo_cuda_backend_stats(be, &st) == 0) {
    r->launches = st.launches_per_step;
    r->kernels = st.kernels;
    r->gemms = st.gemms;
    r->zoo_mib = (double)st.device_bytes / (1024.0 * 1024.0);
    r->used_mib = (double)st.mem_used_delta / (1024.0 * 1024.0);
    r->arena_mib = (double)st.arena_bytes / (1024.0 * 1024.0);
    r->compile_s = st.compile_ms > 0 ? st.compile_ms / 1e3 : r->compile_s;
  }
  free(ms);
  for (int k = 0; k < c->accum; k++) free(tok[k]), free(tgt[k]);
  free(tok);
  free(tgt);
  be->free(be);
  zoo_program_free(p);
}

/* --precompile: each cell's module into the kernel cache, for sm_90. */
static int precompile_cells(const bench_opts *o) {
  int failures = 0;
  for (int i = 0; i < NCELLS; i++) {
    const bench_cell *c = &cells[i];
    if (o->only && strcmp(o->only, c->mixer) != 0) continue;
    if (o->quick && c->seq_len > 128) continue;
    char path[128], dm[32], sl[32], err[1024];
    snprintf(path, sizeof path, "models/%s.zoo", c->mixer);
    snprintf(dm, sizeof dm, "%d", c->d_model);
    snprintf(sl, sizeof sl, "%d", c->seq_len);
    zoo_define defs[2] = {{"d_model", dm}, {"seq_len", sl}};
    zoo_compile_opts co = {0};
    co.path = path;
    co.defines = defs;
    co.ndefines = 2;
    zoo_diag d;
    zoo_diag_init(&d, stderr);
    zoo_program *p = NULL;
    double t0 = now_s();
    int ok = zoo_compile(&co, &d, &p) == 0 && zoo_train_graph_head(&p->graph, ZOO_HEAD_COMPACT, cell_pairs(c), &d) == 0 &&
             zoo_cuda_precompile(&p->graph, c->micro_batch, c->seq_len, "sm_90", err, sizeof err) == 0;
    printf("%-15s D %4d L %5d: %s (%.1f s)\n", c->mixer, c->d_model, c->seq_len, ok ? "compiled" : err,
           now_s() - t0);
    fflush(stdout);
    failures += !ok;
    zoo_program_free(p);
  }
  return failures ? 1 : 0;
}

/* ---------------------------------------------------------------------------
 * poly_attention alone (--poly): the intrinsic's forward and backward kernels
 * at the training shapes of the reference's sweep, each form, so that the
 * switch between the forms (ZOO_POLY_CHUNKED_MIN_T, codegen_cuda.h) can be set
 * from measurement. */

/* The fp32 (non-tensor) peak of one H200 SXM: 67 TFLOP/s, from NVIDIA's H200
 * Tensor Core GPU datasheet (FP32: 67 TFLOPS, H200 SXM column). */
#define H200_FP32_TFLOPS 67.0

static const int poly_B = 512, poly_H = 12, poly_F = 16;
static const int poly_T[] = {128, 512, 2048};
static const int poly_DV[] = {5, 42};
static const char *const poly_forms[] = {"quadratic", "chunked"};

/* Useful work, in floating-point operations, of the quadratic causal form; the
 * same count for both forms, so their TFLOP/s compare. Per (batch, head) pair,
 * over the P = T (T + 1) / 2 pairs j <= i:
 *   forward   2F (s_ij) + 4 (a_ij) + 2 DV (numerator) + 1 (denominator)
 *   backward  2F (s_ij) + 4 (a_ij) + 2 (DV + 1) (da_ij) + 3 (ds_ij)
 *             + 2F (dq) + 2F (dk) + 2 DV (dv)
 * The backward's recomputation of the forward, the chunked form's state work
 * and the per-row divisions are not counted. */
static double poly_flops(double BH, double T, double F, double DV, int backward) {
  double pairs = BH * T * (T + 1) / 2;
  return pairs * (backward ? 6 * F + 4 * DV + 9 : 2 * F + 2 * DV + 5);
}

/* q, k [B, H, T, F], v [B, H, T, DV] -> poly_attention (ReBased's
 * coefficients) and its backward from a seed dy; io: q, k, v, dy. */
static int poly_graph(zoo_graph *g, int64_t T, int64_t DV, int io[4], zoo_diag *d) {
  zoo_graph_init(g);
  zoo_type tq = {.dtype = ZOO_F32, .ndim = 4}, tv;
  int64_t dims[4] = {poly_B, poly_H, T, poly_F};
  for (int k = 0; k < 4; k++) tq.dim[k] = zoo_dim_const(dims[k]);
  tv = tq;
  tv.dim[3] = zoo_dim_const(DV);
  io[0] = zoo_graph_input(g, "q", tq);
  io[1] = zoo_graph_input(g, "k", tq);
  io[2] = zoo_graph_input(g, "v", tv);
  zoo_attrs a;
  memset(&a, 0, sizeof a);
  a.f[2] = 1, a.f[3] = 0.25, a.f[4] = 1e-12; /* ReBased: c = 0, 0, 1; scale 16^-1/2 */
  int y = zoo_graph_node(g, ZOO_OP_POLY_ATTENTION, 3, io, &a, zoo_nospan, d);
  if (y < 0) return -1;
  g->output = y;
  g->nforward = g->nnodes;
  io[3] = zoo_graph_input(g, "dy", tv);
  return zoo_autodiff(g, y, io[3], d);
}

/* Sets ZOO_POLY_FORM to form (NULL: unsets it); returns the old value (to free). */
static char *poly_form_env(const char *form) {
  const char *old = getenv("ZOO_POLY_FORM");
  char *saved = old ? strdup(old) : NULL;
  if (form) setenv("ZOO_POLY_FORM", form, 1);
  else unsetenv("ZOO_POLY_FORM");
  return saved;
}

static void poly_form_restore(char *saved) {
  if (saved) setenv("ZOO_POLY_FORM", saved, 1);
  else unsetenv("ZOO_POLY_FORM");
  free(saved);
}

typedef struct poly_result {
  double ms[2];      /* median GPU ms: forward, backward */
  double tflops[2];  /* poly_flops / time */
  char error[1100];
} poly_result;

static double median_ms(float *ms, int n) {
  qsort(ms, (size_t)n, sizeof *ms, by_float);
  return n % 2 ? ms[n / 2] : 0.5 * (ms[n / 2 - 1] + ms[n / 2]);
}

/* Times one shape in one form; host holds random values for the largest input. */
static void poly_run(int64_t T, int64_t DV, const char *form, const bench_opts *o, const float *host,
                     poly_result *r) {
  memset(r, 0, sizeof *r);
  zoo_graph g;
  zoo_diag d;
  zoo_diag_init(&d, stderr);
  int io[4];
  int64_t sym[ZOO_MAX_SYMS];
  for (int k = 0; k < ZOO_MAX_SYMS; k++) sym[k] = 1;
  char err[1024];
  if (poly_graph(&g, T, DV, io, &d) != 0) {
    snprintf(r->error, sizeof r->error, "the graph does not build");
    zoo_graph_free(&g);
    return;
  }
  char *saved = poly_form_env(form);
  zoo_cuda_exec *x = zoo_cuda_exec_init(&g, sym, 1, NULL, err, sizeof err);
  poly_form_restore(saved);
  if (!x) {
    snprintf(r->error, sizeof r->error, "%s", err);
    zoo_graph_free(&g);
    return;
  }
  int ok = 1;
  for (int k = 0; k < 4 && ok; k++) /* every input a prefix of the same random values */
    if (zoo_cuda_exec_upload(x, io[k], host) != 0) ok = 0;
  int nf, n = zoo_cuda_exec_steps(x, &nf);
  float *ms = calloc((size_t)o->steps, sizeof *ms);
  double BH = (double)poly_B * poly_H;
  for (int part = 0; part < 2 && ok; part++) {
    int first = part ? nf : 0, count = part ? n - nf : nf;
    if (zoo_cuda_exec_time(x, first, count, o->steps, ms) != 0) {
      ok = 0;
      break;
    }
    r->ms[part] = median_ms(ms, o->steps);
    r->tflops[part] = poly_flops(BH, (double)T, poly_F, (double)DV, part) / (r->ms[part] * 1e-3) / 1e12;
  }
  if (!ok) snprintf(r->error, sizeof r->error, "%s", zoo_cuda_exec_error(x));
  free(ms);
  zoo_cuda_exec_free(x);
  zoo_graph_free(&g);
}

/* The form the automatic rule picks for a shape. */
static const char *poly_auto_form(int64_t T, int64_t DV) {
  char *saved = poly_form_env(NULL), err[256];
  zoo_poly_form f = ZOO_POLY_QUADRATIC;
  int r = zoo_cuda_poly_form(T, poly_F, DV, 0, 0, 1, &f, err, sizeof err);
  poly_form_restore(saved);
  return r != 0 ? "?" : f == ZOO_POLY_CHUNKED ? "chunked" : "quadratic";
}

/* --precompile --poly: the section's modules into the kernel cache, for sm_90. */
static int precompile_poly(void) {
  int failures = 0;
  for (int ti = 0; ti < 3; ti++)
    for (int di = 0; di < 2; di++)
      for (int fi = 0; fi < 2; fi++) {
        zoo_graph g;
        zoo_diag d;
        zoo_diag_init(&d, stderr);
        int io[4];
        int64_t sym[ZOO_MAX_SYMS];
        for (int k = 0; k < ZOO_MAX_SYMS; k++) sym[k] = 1;
        char err[1024] = "the graph does not build";
        double t0 = now_s();
        int ok = poly_graph(&g, poly_T[ti], poly_DV[di], io, &d) == 0;
        char *saved = poly_form_env(poly_forms[fi]);
        ok = ok && zoo_cuda_exec_precompile(&g, sym, 1, NULL, "sm_90", err, sizeof err) == 0;
        poly_form_restore(saved);
        printf("poly_attention L %5d DV %2d %-9s: %s (%.1f s)\n", poly_T[ti], poly_DV[di], poly_forms[fi],
               ok ? "compiled" : err, now_s() - t0);
        fflush(stdout);
        failures += !ok;
        zoo_graph_free(&g);
      }
  return failures;
}

/* The poly_attention section: a table, and JSON lines into js (if not NULL).
 * Returns the number of failures. */
static int bench_poly(const bench_opts *o, FILE *js) {
  int64_t most = 0; /* the largest input, in floats */
  for (int ti = 0; ti < 3; ti++)
    for (int di = 0; di < 2; di++) {
      int64_t n = (int64_t)poly_B * poly_H * poly_T[ti] * (poly_DV[di] > poly_F ? poly_DV[di] : poly_F);
      if (n > most) most = n;
    }
  float *host = malloc((size_t)most * sizeof *host);
  if (!host) {
    fprintf(stderr, "zoorun bench: no host memory for the poly_attention inputs\n");
    return 1;
  }
  uint64_t r = 0x9e3779b97f4a7c15ULL;
  for (int64_t e = 0; e < most; e++) {
    r = r * 6364136223846793005ULL + 1442695040888963407ULL;
    host[e] = (float)((double)(r >> 40) / 16777216.0 * 2 - 1); /* uniform in [-1, 1) */
  }
  printf("\npoly_attention alone (ReBased: c = 0, 0, 1; F %d), B %d, H %d: median GPU ms over %d runs; "
         "TFLOP/s of the quadratic form's useful work;\n%% of the H200's fp32 peak, %.0f TFLOP/s\n\n",
         poly_F, poly_B, poly_H, o->steps, H200_FP32_TFLOPS);
  printf("%5s %3s %-9s %-4s | %9s %8s %6s | %9s %8s %6s\n", "L", "DV", "form", "auto", "fwd ms", "TFLOP/s",
         "peak", "bwd ms", "TFLOP/s", "peak");
  int failures = 0;
  for (int ti = 0; ti < 3; ti++)
    for (int di = 0; di < 2; di++)
      for (int fi = 0; fi < 2; fi++) {
        int64_t T = poly_T[ti], DV = poly_DV[di];
        const char *form = poly_forms[fi], *chosen = poly_auto_form(T, DV);
        poly_result pr;
        poly_run(T, DV, form, o, host, &pr);
        const char *mark = strcmp(chosen, form) == 0 ? "*" : "";
        if (pr.error[0]) {
          failures++;
          printf("%5lld %3lld %-9s %-4s   FAILED: %s\n", (long long)T, (long long)DV, form, mark, pr.error);
        } else {
          printf("%5lld %3lld %-9s %-4s | %9.3f %8.2f %5.1f%% | %9.3f %8.2f %5.1f%%\n", (long long)T,
                 (long long)DV, form, mark, pr.ms[0], pr.tflops[0], 100 * pr.tflops[0] / H200_FP32_TFLOPS,
                 pr.ms[1], pr.tflops[1], 100 * pr.tflops[1] / H200_FP32_TFLOPS);
        }
        fflush(stdout);
        if (js) {
          char esc[2400];
          fprintf(js,
                  "{\"kind\": \"poly_attention\", \"coefficients\": \"rebased\", \"B\": %d, \"H\": %d, "
                  "\"seq_len\": %lld, \"F\": %d, \"dv\": %lld, \"form\": \"%s\", \"auto_form\": \"%s\", "
                  "\"fwd_ms\": %.4f, \"bwd_ms\": %.4f, \"fwd_gflop\": %.3f, \"bwd_gflop\": %.3f, "
                  "\"fwd_tflops\": %.3f, \"bwd_tflops\": %.3f, \"fwd_peak_fraction\": %.4f, "
                  "\"bwd_peak_fraction\": %.4f, \"peak_tflops\": %.1f, \"error\": \"%s\"}\n",
                  poly_B, poly_H, (long long)T, poly_F, (long long)DV, form, chosen, pr.ms[0], pr.ms[1],
                  poly_flops((double)poly_B * poly_H, (double)T, poly_F, (double)DV, 0) / 1e9,
                  poly_flops((double)poly_B * poly_H, (double)T, poly_F, (double)DV, 1) / 1e9, pr.tflops[0],
                  pr.tflops[1], pr.tflops[0] / H200_FP32_TFLOPS, pr.tflops[1] / H200_FP32_TFLOPS,
                  H200_FP32_TFLOPS, json_str(pr.error, esc, sizeof esc));
          fflush(js);
        }
      }
  free(host);
  printf("\n*: the form ZOO_POLY_FORM=auto picks (chunked from L = %d, ZOO_POLY_CHUNKED_MIN_T); forward: "
         "poly_attention's kernel;\nbackward: poly_attention_bwd's kernels (dq, then dk and dv); FLOPs as "
         "poly_flops in runtime/bench.c, the same for both forms.\n",
         ZOO_POLY_CHUNKED_MIN_T);
  return failures;
}

/* The cells' table, and JSON lines into js (if not NULL). Returns the number
 * of failures. */
static int bench_cells(const bench_opts *o, FILE *js, const char *why) {
  int failures = 0;
  printf("zoo bench on %s, %s matmuls: median GPU ms per optimiser step over %d steps after %d "
         "warm-up; reference: PyTorch+Triton fp32 on one H200\n\n",
         why, zoo_precision_name(o->precision), o->steps, o->warmup);
  printf("%-15s %4s %5s %7s %8s | %8s %8s %8s %7s | %8s %8s %8s %8s | %7s %s\n", "mixer", "D", "L",
         "batch", "params", "ms/step", "wall ms", "ref ms", "speedup", "launches", "zoo MiB",
         "used MiB", "ref MiB", "NVRTC s", "loss first -> last");
  for (int i = 0; i < NCELLS; i++) {
    const bench_cell *c = &cells[i];
    if (o->only && strcmp(o->only, c->mixer) != 0) continue;
    if (o->quick && c->seq_len > 128) continue;
    bench_result r;
    run_cell(c, o, &r);
    char batch[32];
    snprintf(batch, sizeof batch, "%dx%d", c->micro_batch, c->accum);
    if (r.error[0]) {
      failures++;
      printf("%-15s %4d %5d %7s  FAILED: %s\n", c->mixer, c->d_model, c->seq_len, batch, r.error);
    } else {
      printf("%-15s %4d %5d %7s %8lld | %8.2f %8.2f %8.2f %6.2fx | %8d %8.0f %8.0f %8.0f | %7.1f %.4f -> %.4f%s\n",
             c->mixer, c->d_model, c->seq_len, batch, r.params, r.ms_median, r.ms_wall, c->ref_ms,
             c->ref_ms / r.ms_median, r.launches, r.zoo_mib, r.used_mib, c->ref_peak_mib, r.compile_s,
             r.first_loss, r.last_loss, r.params != c->params ? "  (parameter count differs from the reference's)" : "");
      if (!isfinite(r.last_loss)) failures++;
    }
    if (r.profile) fputs(r.profile, stdout);
    free(r.profile);
    fflush(stdout);
    if (js) {
      char esc[2400];
      fprintf(js,
              "{\"mixer\": \"%s\", \"precision\": \"%s\", \"d_model\": %d, \"seq_len\": %d, \"micro_batch\": %d, \"accum\": %d, "
              "\"params\": %lld, \"ref_params\": %lld, \"ms_per_step\": %.4f, \"ms_min\": %.4f, "
              "\"ms_wall\": %.4f, \"ref_ms_per_step\": %.2f, \"speedup\": %.4f, \"launches_per_step\": %d, "
              "\"kernels_per_micro_batch\": %d, \"gemms_per_micro_batch\": %d, \"zoo_mib\": %.1f, "
              "\"used_mib\": %.1f, \"arena_mib\": %.1f, \"ref_peak_mib\": %.0f, \"nvrtc_s\": %.2f, "
              "\"first_loss\": %.6f, \"last_loss\": %.6f, \"error\": \"%s\"}\n",
              c->mixer, zoo_precision_name(o->precision), c->d_model, c->seq_len, c->micro_batch, c->accum, r.params, c->params, r.ms_median,
              r.ms_min, r.ms_wall, c->ref_ms, r.ms_median > 0 ? c->ref_ms / r.ms_median : 0.0, r.launches,
              r.kernels, r.gemms, r.zoo_mib, r.used_mib, r.arena_mib, c->ref_peak_mib, r.compile_s,
              isfinite(r.first_loss) ? r.first_loss : -1.0, isfinite(r.last_loss) ? r.last_loss : -1.0,
              json_str(r.error, esc, sizeof esc));
      fflush(js);
    }
  }
  printf("\nms/step: GPU time of one step's graph (CUDA events), median; wall ms: steps launched back to "
         "back, wall clock per step;\nzoo MiB: everything zoo allocated (activations arena, 5 parameter-sized "
         "buffers, inputs, cuBLASLt workspace);\nused MiB: the driver's used memory after set-up minus before "
         "(adds context, module, libraries); ref MiB: torch's max_memory_allocated.\n");
  return failures;
}

int zoo_bench_main(int argc, char **argv) {
  bench_opts o = {0, 20, 3, 0, 0, 0, 0, ZOO_FP32, NULL, NULL};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      fputs(usage, stdout);
      return 0;
    } else if (!strcmp(a, "--device") && v) {
      if (!strcmp(v, "cpu")) {
        fprintf(stderr, "zoorun bench: the benchmark runs on CUDA only\n");
        return 2;
      }
      const char *num = !strncmp(v, "cuda:", 5) ? v + 5 : !strcmp(v, "cuda") || !strcmp(v, "auto") ? "0" : v;
      o.device = atoi(num);
      i++;
    } else if (!strcmp(a, "--steps") && v) {
      o.steps = atoi(v), i++;
    } else if (!strcmp(a, "--warmup") && v) {
      o.warmup = atoi(v), i++;
    } else if (!strcmp(a, "--only") && v) {
      o.only = v, i++;
    } else if (!strcmp(a, "--json") && v) {
      o.json = v, i++;
    } else if (!strcmp(a, "--precision") && v) {
      if (!strcmp(v, "fp32") || !strcmp(v, "tf32") || !strcmp(v, "bf16")) {
        o.precision = !strcmp(v, "tf32") ? ZOO_TF32 : !strcmp(v, "bf16") ? ZOO_BF16 : ZOO_FP32;
      } else {
        fprintf(stderr, "zoorun bench: --precision takes fp32, tf32 or bf16, not '%s'\n", v);
        return 2;
      }
      i++;
    } else if (!strcmp(a, "--quick")) {
      o.quick = 1;
    } else if (!strcmp(a, "--profile")) {
      o.profile = 1;
    } else if (!strcmp(a, "--profile-steps")) {
      o.profile = 2;
    } else if (!strcmp(a, "--precompile")) {
      o.precompile = 1;
    } else if (!strcmp(a, "--poly")) {
      o.poly = 1;
    } else {
      fprintf(stderr, "zoorun bench: unknown option '%s'\n%s", a, usage);
      return 2;
    }
  }
  if (o.steps < 1 || o.warmup < 0) {
    fprintf(stderr, "zoorun bench: --steps must be at least 1\n");
    return 2;
  }
  char why[512];
  /* the cells, then poly_attention alone; --poly: that alone; --only, --quick: the cells */
  int cells_on = !o.poly, poly_on = o.poly || (!o.only && !o.quick);
  if (o.precompile) {
    int failures = cells_on ? precompile_cells(&o) : 0;
    if (poly_on) failures += precompile_poly();
    return failures ? 1 : 0;
  }
  if (!zoo_cuda_available(why, sizeof why)) {
    fprintf(stderr, "zoorun bench: no GPU: %s\n", why);
    return 1;
  }
  FILE *js = NULL;
  if (o.json && !(js = fopen(o.json, "w"))) {
    fprintf(stderr, "zoorun bench: cannot write %s\n", o.json);
    return 1;
  }
  int failures = 0;
  if (cells_on) failures += bench_cells(&o, js, why);
  if (poly_on) failures += bench_poly(&o, js);
  if (js) fclose(js);
  return failures ? 1 : 0;
}
