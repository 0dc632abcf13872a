/* bench.c: zoorun bench (see bench.h). */
#include "bench.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../compiler/codegen_cuda.h"
#include "../compiler/compile.h"
#include "../compiler/generate.h"
#include "backend.h"
#include "cuda_backend.h"
#include "mqar.h"
#include "nvrtc_cache.h"
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
static int pairs_at(int seq_len) { return seq_len == 128 ? 16 : seq_len / 4; }
static int cell_pairs(const bench_cell *c) { return pairs_at(c->seq_len); }

/* models/<mixer>.zoo at d_model and seq_len, with the training graph the bench
 * trains (compact head over the MQAR labels), into *p. Returns 0, or -1 with
 * err (*p then freed). */
static int cell_program(const char *mixer, int d_model, int seq_len, zoo_precision prec, zoo_program **p, char *err,
                        size_t errlen) {
  char path[128], dm[32], sl[32];
  snprintf(path, sizeof path, "models/%s.zoo", mixer);
  snprintf(dm, sizeof dm, "%d", d_model);
  snprintf(sl, sizeof sl, "%d", seq_len);
  zoo_define defs[2] = {{"d_model", dm}, {"seq_len", sl}};
  zoo_compile_opts co = {0};
  co.path = path;
  co.defines = defs;
  co.ndefines = 2;
  zoo_diag d;
  zoo_diag_init(&d, stderr);
  *p = NULL;
  if (zoo_compile(&co, &d, p) != 0) {
    snprintf(err, errlen, "%s does not compile", path);
    return -1;
  }
  if (zoo_train_graph_tc(&(*p)->graph, ZOO_HEAD_COMPACT, pairs_at(seq_len), prec != ZOO_FP32, &d) != 0) {
    snprintf(err, errlen, "no training graph");
    zoo_program_free(*p);
    *p = NULL;
    return -1;
  }
  return 0;
}

/* ---------------------------------------------------------------------------
 * The compute floor: what one optimiser step of a cell's plan costs at the
 * fp32 peak, counting the GEMMs and poly_attention (the work that is bound by
 * arithmetic); norms and elementwise kernels are bound by memory and left out,
 * as is softmax_attention (conv_attention's, small at its one cell). */

/* The compute floor's legend, shared by the cells' table and --floor's. */
#define FLOOR_LEGEND                                                                                         \
  "TFLOP: one step's GEMMs (2 m n k batch over the plan's GEMM steps) and poly_attention's forward and "     \
  "backward useful work in the\nform the plan runs (quadratic, or chunked from L = 1024: poly_flops, "        \
  "poly_chunked_flops in runtime/bench.c), all micro-batches; norms and\nelementwise kernels (bound by "     \
  "memory) and softmax_attention are left out; floor ms: TFLOP at the fp32 peak; max x: ref ms / floor ms,\n" \
  "the most any fp32 implementation of this plan could gain on one H200.\n"

/* Useful work, in floating-point operations, of the quadratic causal form (the
 * --poly section counts it for both forms, so that their TFLOP/s compare; the
 * floor counts each form's own). Per (batch, head) pair,
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

/* Useful work of the chunked linear form (runtime/kernels/poly_attention_chunked.cu)
 * with D features (136 for ReBased, 153 for Based at F 16) and chunks of C rows,
 * W = DV + 1 (the values and the denominator's column). Per (batch, head) pair
 * and row:
 *   forward   3D (the feature maps) + 2DW (phq.S) + 2DW (S += phk v'^T)
 *   backward  3D (the feature maps) + 8D (the Jacobians of dq, dk)
 *             + 2DW (S g_i) + 2DW (S again, walked for dq) + 2DW (R += phq g^T)
 *             + 2DW (R v'_j, dk) + 2D DV (R^T phk, dv)
 * and the pairs j <= i inside each chunk as the quadratic form counts them
 * (poly_flops' per-pair terms). */
static double poly_chunked_flops(double BH, double T, double F, double DV, double D, double C, int backward) {
  double W = DV + 1, full = floor(T / C), rest = T - full * C;
  double pairs = BH * (full * C * (C + 1) / 2 + rest * (rest + 1) / 2);
  double rows = BH * T;
  if (!backward) return rows * (3 * D + 4 * D * W) + pairs * (2 * F + 2 * DV + 5);
  return rows * (11 * D + 8 * D * W + 2 * D * DV) + pairs * (6 * F + 4 * DV + 9);
}

/* The useful work of a poly_attention or poly_attention_bwd node in the form
 * the CUDA emitter picks for it (zoo_cuda_poly_form, the same rule) into
 * *flop, *chunked set when that is the chunked form; shapes read from q and v
 * with the symbols bound: layout 0 q [B, H, T, F], v [B, H, T, DV]; layout 1
 * (heads interleaved, i1 = H) q [B, T, H*F], v [B, T, H*DV]; layout 2 q as in
 * 1, v as in 0. Returns 0, or -1
 * with err (ZOO_POLY_FORM unknown). */
static int poly_node_flops(const zoo_graph *g, const int64_t *sym, const zoo_node *n, double *flop, int *chunked,
                           char *err, size_t errlen) {
  int bwd = n->op == ZOO_OP_POLY_ATTENTION_BWD;
  const zoo_type *q = &g->tensors[n->in[bwd ? 1 : 0]].type, *v = &g->tensors[n->in[bwd ? 3 : 2]].type;
  double B = (double)zoo_dim_eval(q->dim[0], sym), H, T, F, DV;
  if (n->attrs.i[0] != 0) {
    H = (double)n->attrs.i[1];
    T = (double)zoo_dim_eval(q->dim[1], sym);
    F = (double)zoo_dim_eval(q->dim[2], sym) / H;
    DV = n->attrs.i[0] == 1 ? (double)zoo_dim_eval(v->dim[2], sym) / H : (double)zoo_dim_eval(v->dim[3], sym);
  } else {
    H = (double)zoo_dim_eval(q->dim[1], sym);
    T = (double)zoo_dim_eval(q->dim[2], sym);
    F = (double)zoo_dim_eval(q->dim[3], sym);
    DV = (double)zoo_dim_eval(v->dim[3], sym);
  }
  double c0 = n->attrs.f[0], c1 = n->attrs.f[1], c2 = n->attrs.f[2];
  zoo_poly_form form;
  if (zoo_cuda_poly_form((int64_t)T, (int64_t)F, (int64_t)DV, c0, c1, c2, 0, &form, err, errlen) != 0) return -1;
  *chunked = form == ZOO_POLY_CHUNKED;
  double D = (c0 != 0) + (c1 != 0) * F + (c2 != 0) * F * (F + 1) / 2;
  *flop = *chunked ? poly_chunked_flops(B * H, T, F, DV, D, ZOO_POLY_CHUNK, bwd) : poly_flops(B * H, T, F, DV, bwd);
  return 0;
}

/* The floor of a training graph (zoo_train_graph's) at B rows and T positions,
 * accum micro-batches per step: builds the program the CUDA backend would run
 * (no GPU needed), then sums its training steps' GEMMs and the poly_attention
 * nodes that have steps (in their form). Returns 0, or -1 with err. */
static int plan_floor(const zoo_graph *train, int64_t B, int64_t T, int accum, zoo_bench_floor *f, char *err,
                      size_t errlen) {
  memset(f, 0, sizeof *f);
  zoo_cuda_program cp;
  if (zoo_cuda_program_build(&cp, train, B, T, !zoo_env_on("ZOO_NO_FUSE"), 1, err, errlen) != 0) {
    zoo_cuda_program_free(&cp);
    return -1;
  }
  const zoo_graph *g = &cp.train;
  unsigned char *ran = calloc((size_t)(g->nnodes ? g->nnodes : 1), 1);
  if (!ran) abort();
  for (int i = 0; i < cp.ntrain; i++) {
    const zoo_step *s = &cp.emit.steps[i];
    if (s->node >= 0 && s->node < g->nnodes) ran[s->node] = 1;
    if (s->kind != ZOO_STEP_GEMM) continue;
    const zoo_gemm *gm = &s->gemm;
    f->gemm_flop += 2.0 * (double)gm->m * (double)gm->n * (double)gm->k * (double)(gm->batch > 1 ? gm->batch : 1);
    f->gemms++;
  }
  for (int i = 0; i < g->nnodes; i++) {
    const zoo_node *n = &g->nodes[i];
    if (!ran[i] || (n->op != ZOO_OP_POLY_ATTENTION && n->op != ZOO_OP_POLY_ATTENTION_BWD)) continue;
    double flop;
    int chunked;
    if (poly_node_flops(g, cp.sym, n, &flop, &chunked, err, errlen) != 0) {
      free(ran);
      zoo_cuda_program_free(&cp);
      return -1;
    }
    f->poly_flop += flop;
    f->polys++;
    f->chunked += chunked;
  }
  free(ran);
  zoo_cuda_program_free(&cp);
  f->gemm_flop *= accum;
  f->poly_flop *= accum;
  f->flop = f->gemm_flop + f->poly_flop;
  f->floor_ms = f->flop / (ZOO_H200_FP32_TFLOPS * 1e12) * 1e3;
  return 0;
}

/* The poly_attention form of a floor, for its tables: none, quadratic,
 * chunked or mixed. */
static const char *floor_form(const zoo_bench_floor *f) {
  return !f->polys ? "none" : !f->chunked ? "quadratic" : f->chunked == f->polys ? "chunked" : "mixed";
}

int zoo_bench_floor_of(const char *mixer, int d_model, int seq_len, int micro_batch, int accum,
                       zoo_bench_floor *f, char *err, size_t errlen) {
  zoo_program *p;
  memset(f, 0, sizeof *f);
  if (cell_program(mixer, d_model, seq_len, ZOO_FP32, &p, err, errlen) != 0) return -1;
  int r = plan_floor(&p->graph, micro_batch, seq_len, accum, f, err, errlen);
  zoo_program_free(p);
  return r;
}

typedef struct bench_opts {
  int device, steps, warmup, quick, precompile, profile, poly, floor;
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
  zoo_bench_floor floor; /* the plan's compute floor */
  char error[1100];
  char *profile; /* --profile's lines, or NULL */
} bench_result;

static const char usage[] =
    "usage: zoorun bench [--device cuda[:N]] [--steps N] [--warmup N] [--only MIXER] [--quick]\n"
    "                    [--json FILE] [--profile] [--profile-steps] [--poly] [--precompile]\n"
    "                    [--precision fp32|tf32|bf16] [--floor]\n"
    "  times optimiser steps of the reference's H200 cells (rebased, based, conv_attention)\n"
    "  beside each one's compute floor at the fp32 peak,\n"
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
    "                section's modules)\n"
    "  --floor       no GPU needed: each cell's compute floor alone (its plan's GEMM and\n"
    "                poly_attention work at the fp32 peak, and the most speed-up it allows)\n"
    "  --device D    cuda or auto (device 0), or cuda:N\n"
    "  exit status: 0 when every cell ran, 1 when one failed (or the output could not be\n"
    "  written), 2 on bad usage, a flag that the run asked for would ignore included\n"
    "  (--steps with --floor, --only with --poly, ...)\n";

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

/* --json's file. Its lines are flushed one by one, so that a long GPU run
 * keeps what it measured; the first failed write's errno is kept for the
 * message at the end (a failed flush empties the buffer, and fclose then
 * succeeds). */
typedef struct bench_json {
  FILE *f;          /* NULL without --json */
  const char *path;
  int err;          /* errno of the first failed write, 0 if none */
} bench_json;

static void json_flush(bench_json *js) {
  if ((fflush(js->f) != 0 || ferror(js->f)) && !js->err) js->err = errno ? errno : EIO;
}

/* Opens --json's file (if given). Returns 0, or 1 after saying why not. */
static int json_open(bench_json *js, const char *path) {
  js->f = NULL;
  js->path = path;
  js->err = 0;
  if (path && !(js->f = fopen(path, "w"))) {
    fprintf(stderr, "zoorun bench: cannot write %s: %s\n", path, strerror(errno));
    return 1;
  }
  return 0;
}

/* Closes --json's file (if open). Returns 0, or 1 after saying that its lines
 * could not all be written. */
static int json_close(bench_json *js) {
  if (!js->f) return 0;
  if (ferror(js->f) && !js->err) js->err = EIO;
  if (fclose(js->f) != 0 && !js->err) js->err = errno;
  js->f = NULL;
  if (!js->err) return 0;
  fprintf(stderr, "zoorun bench: cannot write %s: %s\n", js->path, strerror(js->err));
  return 1;
}

/* Runs one cell; fills r (r->error on failure). */
static void run_cell(const bench_cell *c, const bench_opts *o, bench_result *r) {
  memset(r, 0, sizeof *r);
  r->first_loss = r->last_loss = NAN;
  zoo_program *p;
  if (cell_program(c->mixer, c->d_model, c->seq_len, o->precision, &p, r->error, sizeof r->error) != 0) return;
  zoo_graph *g = &p->graph;
  r->params = zoo_graph_param_count(g);
  int64_t B = c->micro_batch, T = c->seq_len;
  char err[1024];
  if (plan_floor(g, B, T, c->accum, &r->floor, err, sizeof err) != 0) {
    snprintf(r->error, sizeof r->error, "the compute floor: %s", err);
    zoo_program_free(p);
    return;
  }
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
    char err[1024];
    zoo_program *p = NULL;
    double t0 = now_s();
    int ok = cell_program(c->mixer, c->d_model, c->seq_len, o->precision, &p, err, sizeof err) == 0 &&
             zoo_cuda_precompile(&p->graph, c->micro_batch, c->seq_len, o->precision, "sm_90", err, sizeof err) == 0;
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
 * from measurement. The work its TFLOP/s count is poly_flops (with the compute
 * floor, above). */

static const int poly_B = 512, poly_H = 12, poly_F = 16;
static const int poly_T[] = {128, 512, 2048};
static const int poly_DV[] = {5, 42};
/* The kernels timed: the quadratic form one row a thread (poly_attention.cu),
 * in two-level tiles (poly_attention_tiled.cu) and on the tensor cores with
 * three TF32 products a product (tc3, fp32's accuracy) or one (tc1, what
 * precision tf32 and bf16 run; poly_attention_mma.cu), and the chunked form;
 * by ZOO_POLY_FORM, ZOO_POLY_TILED and ZOO_POLY_MMA. */
typedef struct poly_variant {
  const char *name, *form, *tiled, *mma;
} poly_variant;
static const poly_variant poly_variants[] = {{"rows", "quadratic", "0", "0"},
                                             {"tiled", "quadratic", "1", "0"},
                                             {"tc3", "quadratic", NULL, "3"},
                                             {"tc1", "quadratic", NULL, "1"},
                                             {"chunked", "chunked", NULL, "0"}};
#define NPOLY_VARIANTS (int)(sizeof poly_variants / sizeof *poly_variants)

/* Whether variant `name` is timed: all of them, or those ZOO_BENCH_POLY
 * lists (names separated by commas, e.g. tc1,tc3), for measuring. */
static int poly_variant_wanted(const char *name) {
  const char *list = getenv("ZOO_BENCH_POLY");
  if (!list || !list[0]) return 1;
  size_t n = strlen(name);
  for (const char *p = list; *p;) {
    const char *end = strchr(p, ',');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    if (len == n && strncmp(p, name, n) == 0) return 1;
    p += len + (end ? 1 : 0);
  }
  return 0;
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

/* Sets variable name to value (NULL: unsets it); returns the old value (to
 * free). */
static char *env_swap(const char *name, const char *value) {
  const char *old = getenv(name);
  char *saved = old ? strdup(old) : NULL;
  if (value) setenv(name, value, 1);
  else unsetenv(name);
  return saved;
}

static void env_restore(const char *name, char *saved) {
  if (saved) setenv(name, saved, 1);
  else unsetenv(name);
  free(saved);
}

/* ZOO_POLY_FORM, ZOO_POLY_TILED and ZOO_POLY_MMA as variant v has them (v
 * NULL: all unset, the automatic rules); poly_env_restore puts them back. */
typedef struct poly_env {
  char *form, *tiled, *mma;
} poly_env;

static poly_env poly_env_set(const poly_variant *v) {
  poly_env e = {env_swap("ZOO_POLY_FORM", v ? v->form : NULL), env_swap("ZOO_POLY_TILED", v ? v->tiled : NULL),
                env_swap("ZOO_POLY_MMA", v ? v->mma : NULL)};
  return e;
}

static void poly_env_restore(poly_env e) {
  env_restore("ZOO_POLY_FORM", e.form);
  env_restore("ZOO_POLY_TILED", e.tiled);
  env_restore("ZOO_POLY_MMA", e.mma);
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

/* Times one shape with one variant; host holds random values for the largest
 * input. */
static void poly_run(int64_t T, int64_t DV, const poly_variant *var, const bench_opts *o, const float *host,
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
  poly_env saved = poly_env_set(var);
  zoo_cuda_exec *x = zoo_cuda_exec_init(&g, sym, 1, NULL, err, sizeof err);
  poly_env_restore(saved);
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

/* The variant the automatic rules pick for a shape. */
static const char *poly_auto_variant(int64_t T, int64_t DV) {
  poly_env saved = poly_env_set(NULL);
  char err[256];
  zoo_poly_form f = ZOO_POLY_QUADRATIC;
  int r = zoo_cuda_poly_form(T, poly_F, DV, 0, 0, 1, 0, &f, err, sizeof err);
  int tiled = zoo_cuda_poly_tiled(T, poly_F, DV), mma = zoo_cuda_poly_mma(T, poly_F, DV, 0);
  poly_env_restore(saved);
  return r != 0 ? "?" : f == ZOO_POLY_CHUNKED ? "chunked" : mma == 3 ? "tc3" : mma == 1 ? "tc1" : tiled ? "tiled" : "rows";
}

/* --precompile --poly: the section's modules into the kernel cache, for sm_90. */
static int precompile_poly(void) {
  int failures = 0;
  for (int ti = 0; ti < 3; ti++)
    for (int di = 0; di < 2; di++)
      for (int fi = 0; fi < NPOLY_VARIANTS; fi++) {
        if (!poly_variant_wanted(poly_variants[fi].name)) continue;
        zoo_graph g;
        zoo_diag d;
        zoo_diag_init(&d, stderr);
        int io[4];
        int64_t sym[ZOO_MAX_SYMS];
        for (int k = 0; k < ZOO_MAX_SYMS; k++) sym[k] = 1;
        char err[1024] = "the graph does not build";
        double t0 = now_s();
        int ok = poly_graph(&g, poly_T[ti], poly_DV[di], io, &d) == 0;
        poly_env saved = poly_env_set(&poly_variants[fi]);
        ok = ok && zoo_cuda_exec_precompile(&g, sym, 1, NULL, "sm_90", err, sizeof err) == 0;
        poly_env_restore(saved);
        printf("poly_attention L %5d DV %2d %-9s: %s (%.1f s)\n", poly_T[ti], poly_DV[di], poly_variants[fi].name,
               ok ? "compiled" : err, now_s() - t0);
        fflush(stdout);
        failures += !ok;
        zoo_graph_free(&g);
      }
  return failures;
}

/* The poly_attention section: a table, and JSON lines into js (if --json).
 * Returns the number of failures. */
static int bench_poly(const bench_opts *o, bench_json *js) {
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
         poly_F, poly_B, poly_H, o->steps, ZOO_H200_FP32_TFLOPS);
  printf("%5s %3s %-9s %-4s | %9s %8s %6s | %9s %8s %6s\n", "L", "DV", "form", "auto", "fwd ms", "TFLOP/s",
         "peak", "bwd ms", "TFLOP/s", "peak");
  int failures = 0;
  for (int ti = 0; ti < 3; ti++)
    for (int di = 0; di < 2; di++)
      for (int fi = 0; fi < NPOLY_VARIANTS; fi++) {
        int64_t T = poly_T[ti], DV = poly_DV[di];
        const char *form = poly_variants[fi].name, *chosen = poly_auto_variant(T, DV);
        if (!poly_variant_wanted(form)) continue;
        poly_result pr;
        poly_run(T, DV, &poly_variants[fi], o, host, &pr);
        const char *mark = strcmp(chosen, form) == 0 ? "*" : "";
        if (pr.error[0]) {
          failures++;
          printf("%5lld %3lld %-9s %-4s   FAILED: %s\n", (long long)T, (long long)DV, form, mark, pr.error);
        } else {
          printf("%5lld %3lld %-9s %-4s | %9.3f %8.2f %5.1f%% | %9.3f %8.2f %5.1f%%\n", (long long)T,
                 (long long)DV, form, mark, pr.ms[0], pr.tflops[0], 100 * pr.tflops[0] / ZOO_H200_FP32_TFLOPS,
                 pr.ms[1], pr.tflops[1], 100 * pr.tflops[1] / ZOO_H200_FP32_TFLOPS);
        }
        fflush(stdout);
        if (js->f) {
          char esc[2400];
          fprintf(js->f,
                  "{\"kind\": \"poly_attention\", \"coefficients\": \"rebased\", \"B\": %d, \"H\": %d, "
                  "\"seq_len\": %lld, \"F\": %d, \"dv\": %lld, \"form\": \"%s\", \"auto_form\": \"%s\", "
                  "\"fwd_ms\": %.4f, \"bwd_ms\": %.4f, \"fwd_gflop\": %.3f, \"bwd_gflop\": %.3f, "
                  "\"fwd_tflops\": %.3f, \"bwd_tflops\": %.3f, \"fwd_peak_fraction\": %.4f, "
                  "\"bwd_peak_fraction\": %.4f, \"peak_tflops\": %.1f, \"error\": \"%s\"}\n",
                  poly_B, poly_H, (long long)T, poly_F, (long long)DV, form, chosen, pr.ms[0], pr.ms[1],
                  poly_flops((double)poly_B * poly_H, (double)T, poly_F, (double)DV, 0) / 1e9,
                  poly_flops((double)poly_B * poly_H, (double)T, poly_F, (double)DV, 1) / 1e9, pr.tflops[0],
                  pr.tflops[1], pr.tflops[0] / ZOO_H200_FP32_TFLOPS, pr.tflops[1] / ZOO_H200_FP32_TFLOPS,
                  ZOO_H200_FP32_TFLOPS, json_str(pr.error, esc, sizeof esc));
          json_flush(js);
        }
      }
  free(host);
  printf("\nrows, tiled: the quadratic form one row a thread (poly_attention.cu) or in 64 x 64 tiles "
         "(poly_attention_tiled.cu);\ntc3, tc1: on the tensor cores (poly_attention_mma.cu), three TF32 products "
         "a product (fp32's accuracy) or one\n(what precision tf32 and bf16 run; past 100%% of the fp32 peak is "
         "possible);\n*: what the automatic rules pick in fp32 (chunked from L = %d, ZOO_POLY_CHUNKED_MIN_T; "
         "tiled from DV = %d,\nZOO_POLY_TILED_MIN_DV); forward: poly_attention's kernel; backward: "
         "poly_attention_bwd's kernels (dq, then dk and dv);\nFLOPs as poly_flops in runtime/bench.c, the same for "
         "all.\n",
         ZOO_POLY_CHUNKED_MIN_T, ZOO_POLY_TILED_MIN_DV);
  return failures;
}

/* The cells' table, and JSON lines into js (if --json). Returns the number
 * of failures. */
static int bench_cells(const bench_opts *o, bench_json *js, const char *why) {
  int failures = 0;
  printf("zoo bench on %s, %s matmuls: median GPU ms per optimiser step over %d steps after %d "
         "warm-up; reference: PyTorch+Triton fp32 on one H200\n"
         "compute floor: the plan's GEMMs and poly_attention at the fp32 peak, %.0f TFLOP/s (norms, "
         "elementwise kernels, softmax_attention left out)\n\n",
         why, zoo_precision_name(o->precision), o->steps, o->warmup, ZOO_H200_FP32_TFLOPS);
  printf("%-14s %4s %5s %6s | %7s %7s %7s %7s | %6s %8s %6s %11s | %8s %7s %8s %7s | %5s %s\n", "mixer", "D",
         "L", "batch", "ms/step", "wall ms", "ref ms", "speedup", "TFLOP", "floor ms", "max x", "GEMM+poly %",
         "launches", "zoo MiB", "used MiB", "ref MiB", "NVRTC", "loss first -> last");
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
      printf("%-14s %4d %5d %6s  FAILED: %s\n", c->mixer, c->d_model, c->seq_len, batch, r.error);
    } else {
      const zoo_bench_floor *f = &r.floor;
      printf("%-14s %4d %5d %6s | %7.2f %7.2f %7.2f %6.2fx | %6.3f %8.2f %5.2fx %10.1f%% | %8d %7.0f %8.0f %7.0f | "
             "%5.1f %.4f -> %.4f",
             c->mixer, c->d_model, c->seq_len, batch, r.ms_median, r.ms_wall, c->ref_ms, c->ref_ms / r.ms_median,
             f->flop / 1e12, f->floor_ms, c->ref_ms / f->floor_ms, 100 * f->floor_ms / r.ms_median, r.launches,
             r.zoo_mib, r.used_mib, c->ref_peak_mib, r.compile_s, r.first_loss, r.last_loss);
      if (r.params != c->params) printf("  (%lld parameters, the reference %lld)", r.params, c->params);
      printf("\n");
      if (!isfinite(r.last_loss)) failures++;
    }
    if (r.profile) fputs(r.profile, stdout);
    free(r.profile);
    fflush(stdout);
    if (js->f) {
      char esc[2400];
      fprintf(js->f,
              "{\"mixer\": \"%s\", \"precision\": \"%s\", \"d_model\": %d, \"seq_len\": %d, \"micro_batch\": %d, \"accum\": %d, "
              "\"params\": %lld, \"ref_params\": %lld, \"ms_per_step\": %.4f, \"ms_min\": %.4f, "
              "\"ms_wall\": %.4f, \"ref_ms_per_step\": %.2f, \"speedup\": %.4f, \"launches_per_step\": %d, "
              "\"kernels_per_micro_batch\": %d, \"gemms_per_micro_batch\": %d, \"zoo_mib\": %.1f, "
              "\"used_mib\": %.1f, \"arena_mib\": %.1f, \"ref_peak_mib\": %.0f, \"nvrtc_s\": %.2f, "
              "\"first_loss\": %.6f, \"last_loss\": %.6f, \"flop\": %.0f, \"gemm_flop\": %.0f, "
              "\"poly_flop\": %.0f, \"poly_form\": \"%s\", \"floor_ms\": %.4f, \"max_speedup\": %.4f, "
              "\"floor_fraction\": %.4f, \"error\": \"%s\"}\n",
              c->mixer, zoo_precision_name(o->precision), c->d_model, c->seq_len, c->micro_batch, c->accum, r.params, c->params, r.ms_median,
              r.ms_min, r.ms_wall, c->ref_ms, r.ms_median > 0 ? c->ref_ms / r.ms_median : 0.0, r.launches,
              r.kernels, r.gemms, r.zoo_mib, r.used_mib, r.arena_mib, c->ref_peak_mib, r.compile_s,
              isfinite(r.first_loss) ? r.first_loss : -1.0, isfinite(r.last_loss) ? r.last_loss : -1.0,
              r.floor.flop, r.floor.gemm_flop, r.floor.poly_flop, floor_form(&r.floor), r.floor.floor_ms,
              r.floor.floor_ms > 0 ? c->ref_ms / r.floor.floor_ms : 0.0,
              r.ms_median > 0 ? r.floor.floor_ms / r.ms_median : 0.0, json_str(r.error, esc, sizeof esc));
      json_flush(js);
    }
  }
  printf("\nms/step: GPU time of one step's graph (CUDA events), median; wall ms: steps launched back to "
         "back, wall clock per step;\nzoo MiB: everything zoo allocated (activations arena, 5 parameter-sized "
         "buffers, inputs, cuBLASLt workspace);\nused MiB: the driver's used memory after set-up minus before "
         "(adds context, module, libraries); ref MiB: torch's max_memory_allocated;\nNVRTC: seconds compiling "
         "the module (when the kernel cache had it, the backend's whole set-up); a parameter count unlike the "
         "reference's is noted;\n" FLOOR_LEGEND
         "GEMM+poly %%: floor ms / ms/step, how near the fp32 peak the step runs (tf32 and bf16 GEMMs can pass "
         "100%%).\n");
  return failures;
}

/* --floor: each cell's compute floor alone, from its plan (no GPU), and JSON
 * lines into js (if --json). Returns the number of failures. */
static int bench_floors(const bench_opts *o, bench_json *js) {
  int failures = 0;
  printf("zoo bench --floor: the compute floor of one optimiser step of each cell's training plan at the H200's "
         "fp32 peak, %.0f TFLOP/s (no GPU used)\n\n",
         ZOO_H200_FP32_TFLOPS);
  printf("%-14s %4s %5s %6s | %5s %4s %-9s | %10s %10s %10s | %8s %8s %6s\n", "mixer", "D", "L", "batch",
         "GEMMs", "poly", "poly form", "GEMM TFLOP", "poly TFLOP", "TFLOP", "floor ms", "ref ms", "max x");
  for (int i = 0; i < NCELLS; i++) {
    const bench_cell *c = &cells[i];
    if (o->only && strcmp(o->only, c->mixer) != 0) continue;
    if (o->quick && c->seq_len > 128) continue;
    zoo_bench_floor f;
    char batch[32], err[1024] = "", esc[2400];
    snprintf(batch, sizeof batch, "%dx%d", c->micro_batch, c->accum);
    if (zoo_bench_floor_of(c->mixer, c->d_model, c->seq_len, c->micro_batch, c->accum, &f, err, sizeof err) != 0) {
      failures++;
      printf("%-14s %4d %5d %6s  FAILED: %s\n", c->mixer, c->d_model, c->seq_len, batch, err);
    } else {
      printf("%-14s %4d %5d %6s | %5d %4d %-9s | %10.4f %10.4f %10.4f | %8.2f %8.2f %5.2fx\n", c->mixer,
             c->d_model, c->seq_len, batch, f.gemms, f.polys, floor_form(&f), f.gemm_flop / 1e12,
             f.poly_flop / 1e12, f.flop / 1e12, f.floor_ms, c->ref_ms, c->ref_ms / f.floor_ms);
    }
    fflush(stdout);
    if (js->f) {
      fprintf(js->f,
              "{\"kind\": \"floor\", \"mixer\": \"%s\", \"d_model\": %d, \"seq_len\": %d, \"micro_batch\": %d, "
              "\"accum\": %d, \"gemms_per_micro_batch\": %d, \"polys_per_micro_batch\": %d, \"poly_form\": \"%s\", "
              "\"flop\": %.0f, \"gemm_flop\": %.0f, \"poly_flop\": %.0f, \"floor_ms\": %.4f, "
              "\"ref_ms_per_step\": %.2f, \"max_speedup\": %.4f, \"peak_tflops\": %.1f, \"error\": \"%s\"}\n",
              c->mixer, c->d_model, c->seq_len, c->micro_batch, c->accum, f.gemms, f.polys, floor_form(&f), f.flop,
              f.gemm_flop, f.poly_flop, f.floor_ms, c->ref_ms, f.floor_ms > 0 ? c->ref_ms / f.floor_ms : 0.0,
              ZOO_H200_FP32_TFLOPS, json_str(err, esc, sizeof esc));
      json_flush(js);
    }
  }
  printf("\n" FLOOR_LEGEND "GEMMs, poly: GEMM steps and poly_attention nodes (forward, backward) of one micro-batch.\n");
  return failures;
}

/* ---------------------------------------------------------------------------
 * The command line. Bad usage (an unknown flag, a flag without its value, a
 * value out of range, a flag that would do nothing) exits with status 2; a
 * run that fails, 1. */

/* text as a whole number from lo to hi (digits alone) into *out; 0, or -1. */
static int whole_number(const char *text, long lo, long hi, int *out) {
  char *end;
  errno = 0;
  long v = strtol(text, &end, 10);
  if (text[0] < '0' || text[0] > '9' || *end || errno || v < lo || v > hi) return -1;
  *out = (int)v;
  return 0;
}

/* The most --steps and --warmup take, and the highest device number. */
#define BENCH_MAX_STEPS 1000000
#define BENCH_MAX_DEVICE 1023

/* --steps N, --warmup N: the number into *out, or 2 after saying what it takes. */
static int count_flag(const char *flag, const char *v, int lo, int *out) {
  if (whole_number(v, lo, BENCH_MAX_STEPS, out) == 0) return 0;
  fprintf(stderr, "zoorun bench: %s takes a whole number from %d to %d, not '%s'\n", flag, lo, BENCH_MAX_STEPS, v);
  return 2;
}

/* --device cuda, auto (device 0) or cuda:N into *device; or 2 after saying why
 * not. */
static int device_flag(const char *v, int *device) {
  if (!strcmp(v, "cpu")) {
    fprintf(stderr, "zoorun bench: the benchmark runs on CUDA only\n");
    return 2;
  }
  if (!strcmp(v, "cuda") || !strcmp(v, "auto")) {
    *device = 0;
    return 0;
  }
  if (!strncmp(v, "cuda:", 5) && whole_number(v + 5, 0, BENCH_MAX_DEVICE, device) == 0) return 0;
  fprintf(stderr, "zoorun bench: --device takes cuda, cuda:N (N from 0 to %d) or auto, not '%s'\n",
          BENCH_MAX_DEVICE, v);
  return 2;
}

/* --only's mixer: 0 when some cell has it, else 2 after naming those that do. */
static int only_flag(const char *mixer) {
  char names[256] = "";
  int n = 0;
  for (int i = 0; i < NCELLS; i++) {
    if (!strcmp(cells[i].mixer, mixer)) return 0;
    int seen = 0;
    for (int j = 0; j < i; j++) seen |= !strcmp(cells[j].mixer, cells[i].mixer);
    if (seen) continue;
    size_t len = strlen(names);
    snprintf(names + len, sizeof names - len, "%s%s", n ? ", " : "", cells[i].mixer);
    n++;
  }
  fprintf(stderr, "zoorun bench: --only: no cell has the mixer '%s' (the cells' mixers: %s)\n", mixer, names);
  return 2;
}

/* A flag given where it does nothing: 2 after saying so (why: what mode does
 * instead), else 0. */
static int idle_flag(int given, const char *flag, const char *mode, const char *why) {
  if (!given) return 0;
  fprintf(stderr, "zoorun bench: %s does nothing with %s (%s)\n", flag, mode, why);
  return 2;
}

/* The flags given that only some modes use (bench_opts holds their values). */
typedef struct bench_given {
  int device, steps, warmup, only, quick, json, precision;
  const char *profile; /* --profile or --profile-steps, or NULL */
} bench_given;

/* Refuses the flags that --floor, --precompile or --poly would ignore. Returns
 * 0, or 2 after saying which. */
static int check_modes(const bench_opts *o, const bench_given *g) {
  if (o->floor && o->precompile) {
    fprintf(stderr, "zoorun bench: --floor and --precompile are runs of their own; give one of them\n");
    return 2;
  }
  if (o->floor) {
    const char *why = "it counts the plans' work; nothing runs";
    if (idle_flag(o->poly, "--poly", "--floor", "the floors are the cells'; poly_attention alone is timed on a GPU") ||
        idle_flag(g->steps, "--steps", "--floor", why) || idle_flag(g->warmup, "--warmup", "--floor", why) ||
        idle_flag(g->profile != NULL, g->profile, "--floor", why) || idle_flag(g->device, "--device", "--floor", why) ||
        idle_flag(g->precision, "--precision", "--floor", "the floor counts the fp32 plan's work"))
      return 2;
  }
  if (o->precompile) {
    const char *why = "it compiles the modules; nothing runs";
    if (idle_flag(g->steps, "--steps", "--precompile", why) || idle_flag(g->warmup, "--warmup", "--precompile", why) ||
        idle_flag(g->profile != NULL, g->profile, "--precompile", why) ||
        idle_flag(g->device, "--device", "--precompile", why) ||
        idle_flag(g->json, "--json", "--precompile", "it measures nothing to write"))
      return 2;
  }
  if (o->poly) {
    const char *why = "poly_attention alone has no cells";
    if (idle_flag(g->only, "--only", "--poly", why) || idle_flag(g->quick, "--quick", "--poly", why) ||
        idle_flag(g->profile != NULL, g->profile, "--poly", "the section times its kernels whole") ||
        idle_flag(g->precision, "--precision", "--poly", "the section runs each kernel kind in turn") ||
        idle_flag(o->device != 0, "--device", "--poly", "poly_attention alone runs on device 0"))
      return 2;
  }
  return 0;
}

/* The exit status once everything is printed: 1 (and why) when the standard
 * output could not be written (a full disk), else status. A failed write
 * empties stdout's buffer, so the flush may then succeed: the error flag
 * tells, and errno most likely still holds that write's reason (the tables
 * end with a legend, which the flush writes, or fails to). */
static int stdout_checked(int status) {
  if (fflush(stdout) == 0 && !ferror(stdout)) return status;
  fprintf(stderr, "zoorun bench: cannot write the standard output: %s\n", strerror(errno ? errno : EIO));
  return 1;
}

/* Runs what o asks for; returns the exit status. */
static int bench_run(const bench_opts *o) {
  char why[512];
  /* the cells, then poly_attention alone; --poly: that alone; --only, --quick: the cells */
  int cells_on = !o->poly, poly_on = o->poly || (!o->only && !o->quick);
  if (o->precompile) {
    /* without a cache folder the modules would be compiled and dropped */
    char dir[1024], err[1200];
    if (zoo_nvrtc_cache_check(dir, sizeof dir, err, sizeof err) != 0) {
      fprintf(stderr, "zoorun bench: --precompile: %s\n", err);
      return 1;
    }
    int lost = zoo_nvrtc_cache_failures();
    int failures = cells_on ? precompile_cells(o) : 0;
    if (poly_on) failures += precompile_poly();
    lost = zoo_nvrtc_cache_failures() - lost;
    if (lost) {
      fprintf(stderr, "zoorun bench: --precompile: %d kernel cache file%s could not be stored in %s\n", lost,
              lost == 1 ? "" : "s", dir);
      return 1;
    }
    return failures ? 1 : 0;
  }
  bench_json js;
  if (o->floor) {
    if (json_open(&js, o->json) != 0) return 1;
    int failures = bench_floors(o, &js);
    failures += json_close(&js);
    return failures ? 1 : 0;
  }
  if (!zoo_cuda_available(why, sizeof why)) {
    fprintf(stderr, "zoorun bench: no GPU: %s (--floor prints the cells' compute floors without one)\n", why);
    return 1;
  }
  if (json_open(&js, o->json) != 0) return 1;
  int failures = 0;
  if (cells_on) failures += bench_cells(o, &js, why);
  if (poly_on) failures += bench_poly(o, &js);
  failures += json_close(&js);
  return failures ? 1 : 0;
}

int zoo_bench_main(int argc, char **argv) {
  bench_opts o = {0, 20, 3, 0, 0, 0, 0, 0, ZOO_FP32, NULL, NULL};
  bench_given given = {0};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    static const char *const valued[] = {"--device", "--steps", "--warmup", "--only", "--json", "--precision"};
    int takes_value = 0;
    for (size_t k = 0; k < sizeof valued / sizeof *valued; k++) takes_value |= !strcmp(a, valued[k]);
    /* a flag's value is the next word, unless that is another flag */
    const char *v = i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0 ? argv[i + 1] : NULL;
    if (takes_value && !v) {
      fprintf(stderr, "zoorun bench: %s needs a value\n%s", a, usage);
      return 2;
    }
    int bad = 0;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      fputs(usage, stdout);
      return stdout_checked(0);
    } else if (!strcmp(a, "--device")) {
      bad = device_flag(v, &o.device), given.device = 1, i++;
    } else if (!strcmp(a, "--steps")) {
      bad = count_flag(a, v, 1, &o.steps), given.steps = 1, i++;
    } else if (!strcmp(a, "--warmup")) {
      bad = count_flag(a, v, 0, &o.warmup), given.warmup = 1, i++;
    } else if (!strcmp(a, "--only")) {
      bad = only_flag(v), o.only = v, given.only = 1, i++;
    } else if (!strcmp(a, "--json")) {
      o.json = v, given.json = 1, i++;
    } else if (!strcmp(a, "--precision")) {
      if (!strcmp(v, "fp32") || !strcmp(v, "tf32") || !strcmp(v, "bf16")) {
        o.precision = zoo_precision_of(v);
      } else {
        fprintf(stderr, "zoorun bench: --precision takes fp32, tf32 or bf16, not '%s'\n", v);
        bad = 2;
      }
      given.precision = 1, i++;
    } else if (!strcmp(a, "--quick")) {
      o.quick = 1, given.quick = 1;
    } else if (!strcmp(a, "--profile")) {
      o.profile = 1, given.profile = a;
    } else if (!strcmp(a, "--profile-steps")) {
      o.profile = 2, given.profile = a;
    } else if (!strcmp(a, "--precompile")) {
      o.precompile = 1;
    } else if (!strcmp(a, "--poly")) {
      o.poly = 1;
    } else if (!strcmp(a, "--floor")) {
      o.floor = 1;
    } else {
      fprintf(stderr, "zoorun bench: unknown option '%s'\n%s", a, usage);
      return 2;
    }
    if (bad) return bad;
  }
  if (check_modes(&o, &given) != 0) return 2;
  return stdout_checked(bench_run(&o));
}
