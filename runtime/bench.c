/* bench.c: zoorun bench (see bench.h). */
#include "bench.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
  int device, steps, warmup, quick, precompile, profile;
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
    "                    [--json FILE] [--profile] [--precision fp32|tf32|bf16]\n"
    "  times optimiser steps of the reference's H200 cells (rebased, based, conv_attention)\n"
    "  --steps N     timed steps per cell (20)       --warmup N  untimed steps first (3)\n"
    "  --only MIXER  cells of that mixer only        --quick     the four small cells only\n"
    "  --json FILE   also write one JSON line per cell\n"
    "  --profile     after timing, GPU time per kernel kind of one micro-batch (steps run one by\n"
    "                one between CUDA events), the 15 largest\n"
    "  --precision P the GEMMs' arithmetic (fp32, the reference's and the default; tf32; bf16)\n"
    "  --precompile  no GPU needed: compile every cell's module for sm_90 into the kernel cache\n"
    "                (ZOO_CACHE_DIR), so the GPU machine skips NVRTC\n";

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
    r->profile = malloc(1 << 16);
    FILE *f = r->profile ? fmemopen(r->profile, 1 << 16, "w") : NULL;
    if (f) {
      if (zoo_cuda_backend_profile(be, 5, 15, f) != 0) fprintf(f, "    profile failed: %s\n", be->err);
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

int zoo_bench_main(int argc, char **argv) {
  bench_opts o = {0, 20, 3, 0, 0, 0, ZOO_FP32, NULL, NULL};
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
    } else if (!strcmp(a, "--precompile")) {
      o.precompile = 1;
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
  if (o.precompile) return precompile_cells(&o);
  if (!zoo_cuda_available(why, sizeof why)) {
    fprintf(stderr, "zoorun bench: no GPU: %s\n", why);
    return 1;
  }
  FILE *js = NULL;
  if (o.json && !(js = fopen(o.json, "w"))) {
    fprintf(stderr, "zoorun bench: cannot write %s\n", o.json);
    return 1;
  }
  printf("zoo bench on %s, %s matmuls: median GPU ms per optimiser step over %d steps after %d "
         "warm-up; reference: PyTorch+Triton fp32 on one H200\n\n",
         why, zoo_precision_name(o.precision), o.steps, o.warmup);
  printf("%-15s %4s %5s %7s %8s | %8s %8s %8s %7s | %8s %8s %8s %8s | %7s %s\n", "mixer", "D", "L",
         "batch", "params", "ms/step", "wall ms", "ref ms", "speedup", "launches", "zoo MiB",
         "used MiB", "ref MiB", "NVRTC s", "loss first -> last");
  int failures = 0;
  for (int i = 0; i < NCELLS; i++) {
    const bench_cell *c = &cells[i];
    if (o.only && strcmp(o.only, c->mixer) != 0) continue;
    if (o.quick && c->seq_len > 128) continue;
    bench_result r;
    run_cell(c, &o, &r);
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
              c->mixer, zoo_precision_name(o.precision), c->d_model, c->seq_len, c->micro_batch, c->accum, r.params, c->params, r.ms_median,
              r.ms_min, r.ms_wall, c->ref_ms, r.ms_median > 0 ? c->ref_ms / r.ms_median : 0.0, r.launches,
              r.kernels, r.gemms, r.zoo_mib, r.used_mib, r.arena_mib, c->ref_peak_mib, r.compile_s,
              isfinite(r.first_loss) ? r.first_loss : -1.0, isfinite(r.last_loss) ? r.last_loss : -1.0,
              json_str(r.error, esc, sizeof esc));
      fflush(js);
    }
  }
  if (js) fclose(js);
  printf("\nms/step: GPU time of one step's graph (CUDA events), median; wall ms: steps launched back to "
         "back, wall clock per step;\nzoo MiB: everything zoo allocated (activations arena, 5 parameter-sized "
         "buffers, inputs, cuBLASLt workspace);\nused MiB: the driver's used memory after set-up minus before "
         "(adds context, module, libraries); ref MiB: torch's max_memory_allocated.\n");
  return failures ? 1 : 0;
}
