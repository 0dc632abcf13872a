/* codegen_intrinsics.c: CUDA emitters of the hand-written kernels.
 *
 * The kernels live in runtime/kernels/ (one .cu file per op family) as __device__ templates whose
 * template arguments are shape constants; the Makefile embeds those files as C
 * strings (zoo_kernel_source). An emitter here
 *   1. pastes the files it needs into the module, once per module (common.cu
 *      first; rng.h before softmax_attention.cu),
 *   2. writes one small extern "C" __global__ wrapper per kernel of the node,
 *      named zoo_<op>_<part>_<uid>, that instantiates the template with the
 *      node's sizes and passes float attributes as literals,
 *   3. appends the launches (zoo_cuda_step) with their grids and arguments.
 * Ops that need several kernels (a pass over rows, then a reduction) keep their
 * intermediate values in the step's scratch area: every step of such a node
 * declares the same scratch_bytes, and the plan gives a node's consecutive
 * steps that declare scratch one area that lives across them (as the generic
 * reductions of codegen_cuda.c use it). So a ZOO_STEP_ZERO of such a node
 * comes before or after its scratch steps, never between them.
 *
 * Each kernel file's header comment gives its launch geometry; the choices of
 * tile sizes below follow those comments.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codegen_cuda.h"

/* The text of runtime/kernels/<name> (or "rng.h"), from the generated
 * build/kernels_src.c; NULL for an unknown name. */
const char *zoo_kernel_source(const char *name);

/* ---------------------------------------------------------------------------
 * Helpers */

__attribute__((format(printf, 2, 3))) static int fail(zoo_cuda_emit *e, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->err, sizeof e->err, fmt, ap);
  va_end(ap);
  return -1;
}

static int node_of(const zoo_cuda_emit *e, const zoo_node *n) { return (int)(n - e->g->nodes); }

static int ndim_of(const zoo_cuda_emit *e, int t) { return e->g->tensors[t].type.ndim; }

/* Size of axis k of tensor t; k < 0 counts from the end. */
static int64_t dim_of(const zoo_cuda_emit *e, int t, int k) {
  if (k < 0) k += ndim_of(e, t);
  return zoo_cuda_dim(e, t, k);
}

/* A float literal that reads back as the same float. */
static const char *flit(char *buf, size_t n, double v) {
  float f = (float)v;
  if (isinf(f)) snprintf(buf, n, "%s__int_as_float(0x7f800000)", f < 0 ? "-" : "");
  else if (isnan(f)) snprintf(buf, n, "__int_as_float(0x7fc00000)");
  else {
    snprintf(buf, n, "%.9g", (double)f);
    if (!strpbrk(buf, ".eEn")) strncat(buf, ".0", n - strlen(buf) - 1);
    strncat(buf, "f", n - strlen(buf) - 1);
  }
  return buf;
}

/* Template arguments are ints: sizes must fit. */
static int want_int(zoo_cuda_emit *e, const char *what, int64_t v) {
  if (v < 0 || v > 2147483647LL) return fail(e, "%s = %lld does not fit the kernels' int sizes", what, (long long)v);
  return 0;
}

/* Pastes runtime/kernels/<file> (or rng.h) into the module unless its include
 * guard is there already. */
static int paste(zoo_cuda_emit *e, const char *file) {
  char guard[96];
  if (strcmp(file, "rng.h") == 0) {
    snprintf(guard, sizeof guard, "#define ZOO_RNG_H\n");
  } else { /* poly_attention.cu -> ZK_POLY_ATTENTION_CU */
    int k = snprintf(guard, sizeof guard, "#define ZK_");
    for (const char *p = file; *p && k < (int)sizeof guard - 1; p++)
      guard[k++] = *p == '.' ? '_' : (char)(*p >= 'a' && *p <= 'z' ? *p - 'a' + 'A' : *p);
    guard[k] = 0;
    strncat(guard, "\n", sizeof guard - strlen(guard) - 1);
  }
  if (e->src.s && strstr(e->src.s, guard)) return 0;
  const char *text = zoo_kernel_source(file);
  if (!text) return fail(e, "kernel source %s is not built into the library", file);
  zoo_strbuf_printf(&e->src, "\n// ---- runtime/kernels/%s ----\n", file);
  zoo_strbuf_puts(&e->src, text);
  return 0;
}

/* Whether tensor t is a graph input (or parameter), or a view of one: what
 * reads nothing else may be an early step (zoo_step). */
static int of_inputs(const zoo_cuda_emit *e, int t) {
  while (e->g->tensors[t].producer >= 0) {
    const zoo_node *p = &e->g->nodes[e->g->tensors[t].producer];
    if (!zoo_cuda_is_view(e->g, e->sym, p)) return 0;
    t = p->in[0];
  }
  return 1;
}

/* Pastes common.cu and then each named file, in order. */
static int need(zoo_cuda_emit *e, const char *a, const char *b, const char *c) {
  if (paste(e, "common.cu")) return -1;
  const char *files[3] = {a, b, c};
  for (int k = 0; k < 3; k++)
    if (files[k] && paste(e, files[k])) return -1;
  return 0;
}

/* A fresh kernel name zoo_<base>_<uid> into buf; the header comment of the
 * wrapper names the node. */
static const char *kernel_name(zoo_cuda_emit *e, const zoo_node *n, const char *base, char *buf,
                               size_t len) {
  snprintf(buf, len, "zoo_%s_%d", base, e->uid++);
  zoo_strbuf_printf(&e->src, "\n// %s: node %d\n", buf, node_of(e, n));
  zoo_cuda_comment_node(e, node_of(e, n));
  return buf;
}

/* A kernel launch of `name` over a 1-D grid. */
static zoo_step *launch(zoo_cuda_emit *e, const zoo_node *n, const char *name, int64_t grid,
                        unsigned block, unsigned smem) {
  if (grid < 1) grid = 1;
  if (grid > 2147483647LL) {
    fail(e, "%s needs %lld blocks (at most 2^31 - 1)", name, (long long)grid);
    return NULL;
  }
  zoo_step *s = zoo_cuda_step(e, ZOO_STEP_KERNEL, node_of(e, n));
  s->func = strdup(name);
  s->grid[0] = (unsigned)grid, s->grid[1] = s->grid[2] = 1;
  s->block[0] = block, s->block[1] = s->block[2] = 1;
  s->smem = smem;
  return s;
}

static void arg_tensor(zoo_step *s, int t) { s->args[s->nargs++] = (zoo_arg){ZOO_ARG_TENSOR, t, 0, 0, 0}; }
static void arg_scratch(zoo_step *s, int64_t offset) {
  s->args[s->nargs++] = (zoo_arg){ZOO_ARG_SCRATCH, -1, offset, 0, 0};
}
static void arg_seed(zoo_step *s) { s->args[s->nargs++] = (zoo_arg){ZOO_ARG_SEED, -1, 0, 0, 0}; }

/* A step that clears tensor t. */
static void zero_step(zoo_cuda_emit *e, const zoo_node *n, int t) {
  zoo_step *s = zoo_cuda_step(e, ZOO_STEP_ZERO, node_of(e, n));
  s->gemm.c = t;
}

static int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
static int64_t align16(int64_t a) { return (a + 15) / 16 * 16; }

/* Parameter gradients summed over rows (the *_bwd kernels, common.cu): each
 * of P blocks writes M partial sums to part, and then either the last block to
 * finish adds them up (zk_finish_partials, when P M is small enough for one
 * block to read quickly) or a second kernel does (zk_sum_partials).
 * partials_params is the rows kernel's extra parameters, partials_close closes
 * its body, partials_end passes out0, out1 (when >= 0) and the counter, or
 * emits the second kernel. */
#define PARTIALS_IN_KERNEL 32768 /* floats one block adds up at the end */

static const char *partials_params(int64_t P, int64_t M, int two) {
  if (P * M > PARTIALS_IN_KERNEL) return "";
  return two ? ", float *__restrict__ out0, float *__restrict__ out1, unsigned *__restrict__ counter"
             : ", float *__restrict__ out0, unsigned *__restrict__ counter";
}

static void partials_close(zoo_cuda_emit *e, int64_t P, int64_t M, int64_t M0, int two) {
  if (P * M <= PARTIALS_IN_KERNEL)
    zoo_strbuf_printf(&e->src, "  zk_finish_partials<%lld, %lld, %lld>(part, out0, %s, counter);\n",
                      (long long)P, (long long)M, (long long)M0, two ? "out1" : "nullptr");
  zoo_strbuf_puts(&e->src, "}\n");
}

static int partials_end(zoo_cuda_emit *e, const zoo_node *n, zoo_step *s, int64_t P, int64_t M, int64_t M0,
                        int out0, int out1, int64_t scratch) {
  if (P * M <= PARTIALS_IN_KERNEL) {
    arg_tensor(s, out0);
    if (out1 >= 0) arg_tensor(s, out1);
    s->args[s->nargs++] = (zoo_arg){ZOO_ARG_COUNTER, -1, e->ncounters++, 0, 0};
    return 0;
  }
  char name[64];
  kernel_name(e, n, "sum_partials", name, sizeof name);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(256) %s(const float *__restrict__ part, "
                    "float *__restrict__ out0%s) {\n"
                    "  zk_sum_partials<%lld, %lld, %lld>(part, out0, %s);\n}\n",
                    name, out1 >= 0 ? ", float *__restrict__ out1" : "", (long long)P, (long long)M,
                    (long long)M0, out1 >= 0 ? "out1" : "nullptr");
  zoo_step *t = launch(e, n, name, cdiv(M, 32), 256, 0);
  if (!t) return -1;
  arg_scratch(t, 0);
  arg_tensor(t, out0);
  if (out1 >= 0) arg_tensor(t, out1);
  t->scratch_bytes = scratch;
  return 0;
}

/* Rows (all leading axes) and width (last axis) of tensor t. */
static void rows_cols(const zoo_cuda_emit *e, int t, int64_t *rows, int64_t *cols) {
  int64_t total = zoo_cuda_numel(e, t);
  *cols = ndim_of(e, t) > 0 ? dim_of(e, t, -1) : 1;
  *rows = *cols ? total / *cols : 0;
}

/* ---------------------------------------------------------------------------
 * poly_attention: runtime/kernels/poly_attention.cu */

typedef struct attn_dims {
  int64_t BH, T, F, DV;
  int64_t HI; /* the kernels' HI (common.cu): 0 in layout 0, H in layout 1 (all
                 heads interleaved), -H in layout 2 (those of q and k alone) */
} attn_dims;

/* Sizes of q [B, H, T, F] and v [B, H, T, DV] at inputs qi, qi + 2, or of
 * q [B, T, H*F] and v [B, T, H*DV] in poly_attention's layout 1, q [B, T, H*F]
 * and v [B, H, T, DV] in its layout 2 (ops.def). */
static int attn_dims_of(zoo_cuda_emit *e, const zoo_node *n, int qi, attn_dims *a) {
  int q = n->in[qi], v = n->in[qi + 2];
  int poly = n->op == ZOO_OP_POLY_ATTENTION || n->op == ZOO_OP_POLY_ATTENTION_BWD;
  int64_t layout = poly ? n->attrs.i[0] : 0;
  int64_t H = layout != 0 ? n->attrs.i[1] : 1, HV = layout == 1 ? H : 1;
  if (H < 1) return fail(e, "poly_attention: %lld heads", (long long)H);
  a->HI = layout == 0 ? 0 : layout == 1 ? H : -H;
  a->T = dim_of(e, q, -2), a->F = dim_of(e, q, -1) / H, a->DV = dim_of(e, v, -1) / HV;
  a->BH = a->T > 0 && a->F > 0 ? zoo_cuda_numel(e, q) / (a->T * a->F) : 0;
  if (want_int(e, "H", H)) return -1;
  if (want_int(e, "T", a->T) || want_int(e, "B*H", a->BH)) return -1;
  if (a->F > 1024 || a->DV > 1024)
    return fail(e, "attention head widths %lld, %lld exceed 1024", (long long)a->F, (long long)a->DV);
  return 0;
}

static int poly_tile(int64_t T) { return T <= 32 ? 32 : 64; }

/* Rows per thread (register blocking): `most` for narrow values, fewer for
 * wide ones (registers), never more slabs than T has tiles. */
static int poly_rows(int64_t T, int64_t DV, int most) {
  int R = DV <= 8 ? most : DV <= 16 && most > 2 ? 2 : 1;
  int64_t tiles = cdiv(T, poly_tile(T));
  return R > tiles ? (int)tiles : R;
}

/* The backward's rows per thread: poly_rows with at most 2, or
 * ZOO_POLY_BWD_ROWS (1, 2 or 4) from the environment, for measuring. The
 * rule's 1 for value widths over 8 stands measured on the H200 (zoorun bench
 * --only rebased, device run 7 of session 4): 2 rows took rebased 128/512
 * from 26.27 to 26.38 ms and 512/512 from 98.84 to 105.62 ms, 4 rows to 26.71
 * and 139.79 ms. The 2 for narrow values stands measured at rebased 64/128
 * (device run 8 of session 6, zoorun bench --quick --profile): bwd_q and
 * bwd_kv 0.215 and 0.229 ms with 2 rows, 0.235 and 0.252 with 1; a step 2.61
 * against 2.65 ms. */
static int poly_bwd_rows(int64_t T, int64_t DV) {
  const char *env = getenv("ZOO_POLY_BWD_ROWS");
  int want = env ? atoi(env) : 0;
  if (want != 1 && want != 2 && want != 4) return poly_rows(T, DV, 2);
  int64_t tiles = cdiv(T, poly_tile(T));
  return want > tiles ? (int)tiles : want;
}

/* Loads in flight a thread while the forward reads a key tile (zk_poly_fwd's
 * NB): 8, or ZOO_POLY_FWD_BATCH (1 or 8) from the environment, for
 * measuring. Measured on the H200 (device run 3 of session 5, zoorun bench
 * --only rebased --profile with 1 and with 8), the forward's time: 32/48
 * 0.048 / 0.049 ms, 64/128 0.149 / 0.144, 128/512 1.015 / 0.952, 512/512
 * 2.587 / 2.585. */
static int poly_fwd_batch(void) {
  const char *env = getenv("ZOO_POLY_FWD_BATCH");
  int want = env ? atoi(env) : 0;
  return want == 1 ? 1 : 8;
}

/* The same for the backward's tile loads: 1, or ZOO_POLY_BWD_BATCH (2, 4 or
 * 8) from the environment, for measuring. One stands measured on the H200
 * (device run 10 of session 5, zoorun bench --only rebased --profile with 1,
 * 2 and 4): rebased 128/512 25.84, 26.36 and 26.09 ms, 512/512 98.18, 100.67
 * and 99.45; the backward's warps already hide the loads' latency, and the
 * batch's registers cost occupancy. */
static int poly_bwd_batch(void) {
  const char *env = getenv("ZOO_POLY_BWD_BATCH");
  int want = env ? atoi(env) : 0;
  return want == 2 || want == 4 || want == 8 ? want : 1;
}

/* The five float attributes as literals "c0, c1, c2, scale" and eps. */
static void poly_consts(const zoo_node *n, char *c, size_t len, char *eps, size_t elen) {
  char a[4][48];
  for (int k = 0; k < 4; k++) flit(a[k], sizeof a[k], n->attrs.f[k]);
  snprintf(c, len, "%s, %s, %s, %s", a[0], a[1], a[2], a[3]);
  flit(eps, elen, n->attrs.f[4]);
}

/* A forward kernel of poly_attention: the wrapper `name`(q, k, v, o, z) with
 * __launch_bounds__(bounds) whose body is the call `call`, launched over
 * `grid` blocks of `threads` with (q, k, v) -> (o, z). */
static int poly_fwd_launch_bounds(zoo_cuda_emit *e, const zoo_node *n, const char *name, const char *bounds,
                                  const char *call, int threads, int64_t grid, unsigned smem) {
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(%s) %s(const float *__restrict__ q, "
                    "const float *__restrict__ k, const float *__restrict__ v, float *__restrict__ o, "
                    "float *__restrict__ z) {\n"
                    "  %s;\n}\n",
                    bounds, name, call);
  zoo_step *s = launch(e, n, name, grid, (unsigned)threads, smem);
  if (!s) return -1;
  for (int k = 0; k < 3; k++) arg_tensor(s, n->in[k]);
  arg_tensor(s, n->out[0]);
  arg_tensor(s, n->out[1]);
  return 0;
}

/* The same with __launch_bounds__(threads). */
static int poly_fwd_launch(zoo_cuda_emit *e, const zoo_node *n, const char *name, const char *call,
                           int threads, int64_t grid, unsigned smem) {
  char bounds[16];
  snprintf(bounds, sizeof bounds, "%d", threads);
  return poly_fwd_launch_bounds(e, n, name, bounds, call, threads, grid, smem);
}

/* The dq kernel of poly_attention_bwd: the wrapper `name`(dout, q, k, v, [o,
 * z,] dq, stats) with __launch_bounds__(bounds) whose body is the call `call`,
 * launched over `grid` blocks of `threads` with (do, q, k, v[, o, z]) -> (dq,
 * scratch of `scratch` bytes); o and z when with_oz. */
static int poly_bwd_q_launch(zoo_cuda_emit *e, const zoo_node *n, const char *name, const char *bounds, int with_oz,
                             const char *call, int threads, int64_t grid, unsigned smem, int64_t scratch) {
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(%s) %s(const float *__restrict__ dout, "
                    "const float *__restrict__ q, const float *__restrict__ k, const float *__restrict__ v, "
                    "%sfloat *__restrict__ dq, float *__restrict__ stats) {\n"
                    "  %s;\n}\n",
                    bounds, name, with_oz ? "const float *__restrict__ o, const float *__restrict__ z, " : "", call);
  zoo_step *s = launch(e, n, name, grid, (unsigned)threads, smem);
  if (!s) return -1;
  for (int k = 0; k < (with_oz ? 6 : 4); k++) arg_tensor(s, n->in[k]);
  arg_tensor(s, n->out[0]);
  arg_scratch(s, 0);
  s->scratch_bytes = scratch;
  return 0;
}

/* The dk, dv kernel of poly_attention_bwd: the wrapper `name`(q, k, v, stats,
 * dk, dv) with __launch_bounds__(bounds) whose body is the call `call`,
 * launched over `grid` blocks of `threads` with (q, k, v, scratch of
 * `scratch` bytes) -> (dk, dv). */
static int poly_bwd_kv_launch(zoo_cuda_emit *e, const zoo_node *n, const char *name, const char *bounds,
                              const char *call, int threads, int64_t grid, unsigned smem, int64_t scratch) {
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(%s) %s(const float *__restrict__ q, "
                    "const float *__restrict__ k, const float *__restrict__ v, "
                    "const float *__restrict__ stats, float *__restrict__ dk, float *__restrict__ dv) {\n"
                    "  %s;\n}\n",
                    bounds, name, call);
  zoo_step *s = launch(e, n, name, grid, (unsigned)threads, smem);
  if (!s) return -1;
  for (int k = 1; k < 4; k++) arg_tensor(s, n->in[k]);
  arg_scratch(s, 0);
  arg_tensor(s, n->out[1]);
  arg_tensor(s, n->out[2]);
  s->scratch_bytes = scratch;
  return 0;
}

/* ---- the quadratic form on the tensor cores: runtime/kernels/poly_attention_mma.cu
 * (64 rows a block of 4 warps, TF32 m16n8k8 products); the rule is
 * zoo_cuda_poly_mma's (codegen_cuda.h). */
enum { PM_TILE = 64, PM_THREADS = 128 };

/* How the backward kernels load their tiles (their LOAD): 1, the next tile
 * into registers ahead of the products, up to 16 value floats; 2, by cp.async
 * into a second buffer, past that (see poly_attention_mma.cu);
 * ZOO_POLY_MMA_LOAD=0|1|2 from the environment, for measuring (0: a tile at a
 * time). */
static int pm_load(int64_t DV) {
  const char *env = getenv("ZOO_POLY_MMA_LOAD");
  if (env && (!strcmp(env, "0") || !strcmp(env, "1") || !strcmp(env, "2"))) return atoi(env);
  return DV <= 16 ? 1 : 2;
}

/* zk_poly_mma_smem, mirrored (the wrappers static_assert that both agree). */
static int64_t pm_smem(int64_t F, int64_t DV, int part, int load) {
  int64_t dvp = (DV + 7) / 8 * 8, fs = F + 4, vs = dvp + 4 + (dvp % 16 == 8 ? 8 : 0), nb = load == 2 ? 2 : 1;
  return 4 * (part == 0   ? PM_TILE * (fs + vs)
              : part == 1 ? PM_TILE * (nb * (fs + vs) + vs) + PM_TILE
                          : nb * (PM_TILE * (fs + vs) + PM_TILE));
}

int zoo_cuda_poly_mma(int64_t T, int64_t F, int64_t DV, int tf32) {
  if (F % 8 != 0 || pm_smem(F, DV, 1, 2) > 227 * 1024 || pm_smem(F, DV, 2, 2) > 227 * 1024) return 0;
  const char *env = getenv("ZOO_POLY_MMA");
  if (env && (!strcmp(env, "0") || !strcmp(env, "1") || !strcmp(env, "3"))) return atoi(env);
  return tf32 && T >= PM_TILE ? 1 : 0;
}


/* The wrappers' __launch_bounds__: 128 threads and the blocks an SM ptxas is
 * to fit (part 0 forward, else backward), or ZOO_POLY_MMA_BLOCKS (2 to 8) from
 * the environment, for measuring. Without a count ptxas picks registers by
 * its own measure (72 to 168 here, a spill at 72). */
static void pm_bounds(char *buf, size_t len, int part, int64_t DV) {
  const char *env = getenv("ZOO_POLY_MMA_BLOCKS");
  int b = env ? atoi(env) : 0;
  if (b < 2 || b > 8) b = part == 0 ? (DV <= 16 ? 4 : 3) : (DV <= 16 ? 0 : 4);
  if (b) snprintf(buf, len, "%d, %d", PM_THREADS, b);
  else snprintf(buf, len, "%d", PM_THREADS);
}

static void pm_assert(zoo_cuda_emit *e, const attn_dims *a, int part, int load) {
  zoo_strbuf_printf(&e->src, "static_assert(zk_poly_mma_smem<%lld, %lld, %d>(%d) == %lld, \"shared memory\");\n",
                    (long long)a->F, (long long)a->DV, load, part, (long long)pm_smem(a->F, a->DV, part, load));
}

static int poly_mma_fwd(zoo_cuda_emit *e, const zoo_node *n, const attn_dims *a, int split) {
  if (need(e, "poly_attention_mma.cu", NULL, NULL)) return -1;
  char name[64], c[200], eps[48], call[640];
  poly_consts(n, c, sizeof c, eps, sizeof eps);
  kernel_name(e, n, "poly_mma_fwd", name, sizeof name);
  pm_assert(e, a, 0, 1);
  snprintf(call, sizeof call, "zk_poly_mma_fwd<%lld, %lld, %lld, %lld, %d>(q, k, v, o, z, %s, %s)", (long long)a->F,
           (long long)a->DV, (long long)a->T, (long long)a->HI, split, c, eps);
  char bounds[16];
  pm_bounds(bounds, sizeof bounds, 0, a->DV);
  return poly_fwd_launch_bounds(e, n, name, bounds, call, PM_THREADS, a->BH * cdiv(a->T, PM_TILE),
                                (unsigned)pm_smem(a->F, a->DV, 0, 1));
}

/* Needs the forward's o and z (the node's inputs 4 and 5). */
static int poly_mma_bwd(zoo_cuda_emit *e, const zoo_node *n, const attn_dims *a, int split) {
  if (need(e, "poly_attention_mma.cu", NULL, NULL)) return -1;
  int64_t scratch = a->BH * a->T * (a->DV + 1) * (int64_t)sizeof(float); /* dn_i, dd_i */
  int64_t grid = a->BH * cdiv(a->T, PM_TILE);
  char name[64], c[200], eps[48];
  poly_consts(n, c, sizeof c, eps, sizeof eps);
  kernel_name(e, n, "poly_mma_bwd_q", name, sizeof name);
  int load = pm_load(a->DV);
  pm_assert(e, a, 1, load);
  char bounds[16], call[640];
  pm_bounds(bounds, sizeof bounds, 1, a->DV);
  snprintf(call, sizeof call, "zk_poly_mma_bwd_q<%lld, %lld, %lld, %lld, %d, %d>(dout, q, k, v, o, z, dq, stats, %s)",
           (long long)a->F, (long long)a->DV, (long long)a->T, (long long)a->HI, split, load, c);
  if (poly_bwd_q_launch(e, n, name, bounds, 1, call, PM_THREADS, grid, (unsigned)pm_smem(a->F, a->DV, 1, load),
                        scratch))
    return -1;

  kernel_name(e, n, "poly_mma_bwd_kv", name, sizeof name);
  pm_assert(e, a, 2, load);
  snprintf(call, sizeof call, "zk_poly_mma_bwd_kv<%lld, %lld, %lld, %lld, %d, %d>(q, k, v, stats, dk, dv, %s)",
           (long long)a->F, (long long)a->DV, (long long)a->T, (long long)a->HI, split, load, c);
  return poly_bwd_kv_launch(e, n, name, bounds, call, PM_THREADS, grid, (unsigned)pm_smem(a->F, a->DV, 2, load),
                            scratch);
}

/* ---- the tiled quadratic form: runtime/kernels/poly_attention_tiled.cu
 *
 * Two-level register tiles (64 queries x 64 keys a block, 128 threads) for
 * value widths where the one-row-a-thread kernels above are left one row a
 * thread; the rule is zoo_cuda_poly_tiled's (codegen_cuda.h). */
enum { PT_TILE = 64, PT_THREADS = 128, PT_LD = 68 };

/* zk_poly_tiled_smem, mirrored (the wrappers static_assert that both agree). */
static int64_t pt_smem(int64_t F, int64_t DV, int part) {
  int64_t dvp = 8 * ((DV + 7) / 8);
  int64_t rows = part == 0 ? 2 * F + dvp + PT_TILE : part == 1 ? 2 * F + 2 * dvp + PT_TILE : 2 * F + 2 * dvp + 2 * PT_TILE;
  return 4 * (rows * PT_LD + (part ? PT_TILE : 0));
}

int zoo_cuda_poly_tiled(int64_t T, int64_t F, int64_t DV) {
  if (F % 8 != 0 || pt_smem(F, DV, 2) > 227 * 1024) return 0;
  const char *env = getenv("ZOO_POLY_TILED");
  if (env && (!strcmp(env, "0") || !strcmp(env, "1"))) return env[0] == '1';
  return DV >= ZOO_POLY_TILED_MIN_DV && T >= PT_TILE;
}

static int poly_tiled(const attn_dims *a) { return zoo_cuda_poly_tiled(a->T, a->F, a->DV); }

static void pt_assert(zoo_cuda_emit *e, const attn_dims *a, int part) {
  zoo_strbuf_printf(&e->src, "static_assert(zk_poly_tiled_smem<%lld, %lld>(%d) == %lld, \"shared memory\");\n",
                    (long long)a->F, (long long)a->DV, part, (long long)pt_smem(a->F, a->DV, part));
}

static int poly_tiled_fwd(zoo_cuda_emit *e, const zoo_node *n, const attn_dims *a) {
  if (need(e, "poly_attention_tiled.cu", NULL, NULL)) return -1;
  char name[64], c[200], eps[48], call[640];
  poly_consts(n, c, sizeof c, eps, sizeof eps);
  kernel_name(e, n, "poly_tiled_fwd", name, sizeof name);
  pt_assert(e, a, 0);
  snprintf(call, sizeof call, "zk_poly_tiled_fwd<%lld, %lld, %lld, %lld>(q, k, v, o, z, %s, %s)", (long long)a->F,
           (long long)a->DV, (long long)a->T, (long long)a->HI, c, eps);
  return poly_fwd_launch(e, n, name, call, PT_THREADS, a->BH * cdiv(a->T, PT_TILE),
                         (unsigned)pt_smem(a->F, a->DV, 0));
}

/* Needs the forward's o and z (the node's inputs 4 and 5). The tiled kernels
 * keep ptxas's own register choice (bwd_kv 168, bwd_q 139, forward 127 at
 * DV 42 in session 9; 128, 127, 126 since session 16's loads, Nsight Compute
 * at L 512, layout 0): held to 3 or 4 blocks an SM they were no faster where they run
 * (L 512, DV 42, forward / backward ms: 4.916 / 15.145; 4, 4, 4 blocks
 * 4.923 / 15.684; 4, 4, 3 4.929 / 15.192; 3, 3, 3 4.928 / 16.005; session
 * 9, device run 8). */
static int poly_tiled_bwd(zoo_cuda_emit *e, const zoo_node *n, const attn_dims *a) {
  if (need(e, "poly_attention_tiled.cu", NULL, NULL)) return -1;
  int64_t scratch = a->BH * a->T * (a->DV + 1) * (int64_t)sizeof(float); /* dn_i, dd_i */
  int64_t grid = a->BH * cdiv(a->T, PT_TILE);
  char name[64], c[200], eps[48];
  poly_consts(n, c, sizeof c, eps, sizeof eps);
  kernel_name(e, n, "poly_tiled_bwd_q", name, sizeof name);
  pt_assert(e, a, 1);
  char bounds[16], call[640];
  snprintf(bounds, sizeof bounds, "%d", PT_THREADS);
  snprintf(call, sizeof call, "zk_poly_tiled_bwd_q<%lld, %lld, %lld, %lld>(dout, q, k, v, o, z, dq, stats, %s)",
           (long long)a->F, (long long)a->DV, (long long)a->T, (long long)a->HI, c);
  if (poly_bwd_q_launch(e, n, name, bounds, 1, call, PT_THREADS, grid, (unsigned)pt_smem(a->F, a->DV, 1), scratch))
    return -1;

  kernel_name(e, n, "poly_tiled_bwd_kv", name, sizeof name);
  pt_assert(e, a, 2);
  snprintf(call, sizeof call, "zk_poly_tiled_bwd_kv<%lld, %lld, %lld, %lld>(q, k, v, stats, dk, dv, %s)",
           (long long)a->F, (long long)a->DV, (long long)a->T, (long long)a->HI, c);
  return poly_bwd_kv_launch(e, n, name, bounds, call, PT_THREADS, grid, (unsigned)pt_smem(a->F, a->DV, 2), scratch);
}

/* ---- the chunked form: runtime/kernels/poly_attention_chunked.cu
 *
 * Operation counts per (batch, head) pair, multiply-adds, W = DV + 1, D = 136
 * features (ReBased; 153 Based), chunks of C:
 *   quadratic  T^2 / 2 (F + W)                       forward
 *   chunked    T (2 D W + C / 2 (F + W))             forward (outputs, state)
 * equal near T = 4 D W / (F + W) + C: about 250 for DV 5, 500 for DV 42; the
 * backward's ratio is alike. ZOO_POLY_CHUNKED_MIN_T sits above both. */

enum { PC_CHUNK = ZOO_POLY_CHUNK, PC_THREADS = 256, PC_SMEM_MAX = 227 * 1024 };

/* The kernel's zk_pc_shape and zk_poly_chunked_smem, mirrored (the wrappers
 * static_assert that both agree). */
typedef struct pc_layout {
  int F, DV, C, NT, k0, k1, k2;
  int NP, WQ, ZC, WS, D, NUB, UB, SW, FP;
  int64_t smem[3]; /* bytes: fwd, bwd_q, bwd_kv */
} pc_layout;

static void pc_layout_of(pc_layout *l, int64_t F, int64_t DV, double c0, double c1, double c2) {
  memset(l, 0, sizeof *l);
  l->F = (int)F, l->DV = (int)DV, l->C = PC_CHUNK, l->NT = PC_THREADS;
  l->k0 = c0 != 0, l->k1 = c1 != 0, l->k2 = c2 != 0;
  l->NP = l->NT / l->C;
  l->WQ = (l->DV + l->NP - 1) / l->NP;
  int vec = l->WQ >= 8; /* zk_pc_shape's VEC: rows read 16 bytes at a time */
  if (vec) l->WQ = (l->WQ + 3) / 4 * 4;
  l->ZC = l->NP * l->WQ;
  l->WS = l->ZC + 1;
  l->D = l->k0 + l->k1 * l->F + l->k2 * l->F * (l->F + 1) / 2;
  if (l->D == 0) return;
  l->NUB = l->NT / l->D > 0 ? l->NT / l->D : 1;
  l->UB = (l->WS + l->NUB - 1) / l->NUB;
  l->SW = vec ? (l->NUB * l->UB + 3) / 4 * 4 : l->NUB * l->UB;
  l->FP = l->F + 1;
  int64_t common = (int64_t)l->D * l->SW + 2 * l->C * l->FP + l->C * l->SW + (2 * l->D + 3) / 4 * 4;
  int64_t red = vec ? 0 : (int64_t)l->NP * l->WS * l->C; /* narrow outputs' partial sums */
  int rw = vec || l->FP >= l->WS ? l->FP : l->WS;
  l->smem[0] = 4 * (common + red);
  l->smem[1] = 4 * (common + 2 * l->C * l->SW + l->C * l->NP + l->C * l->NP * rw);
  l->smem[2] = 4 * (common + l->C * l->SW + l->C * l->NP * l->FP + (vec ? 0 : (int64_t)l->NP * l->ZC * l->C));
}

/* Whether the chunked kernels can run this shape. */
static int pc_fits(const pc_layout *l) {
  return l->D > 0 && l->F <= 64 && l->DV <= 256 && l->smem[0] <= PC_SMEM_MAX && l->smem[1] <= PC_SMEM_MAX &&
         l->smem[2] <= PC_SMEM_MAX;
}

/* With TF32 products (tf32) the tensor-core quadratic form beats the
 * chunked one at T 2048: `zoorun bench --poly`, forward + backward ms, DV 42:
 * tc1 38.8 + 82.7 against chunked 36.2 + 111.6 (session 8, device run 8). So
 * the automatic rule keeps the quadratic form there, up to the T measured.
 * Session 14 had made narrow value widths (DV <= 28) an exception from T
 * 2048 on, where its narrow chunked kernels were the faster; since the
 * tensor-core kernels' loads of session 16 (zk_tile64) tc1 wins at both
 * widths: DV 5 7.84 + 22.65 against chunked 8.67 + 27.67, DV 42 20.56 +
 * 63.89 against 28.51 + 86.97 (.gpu/s16run4.sh). */
#define PM_LONG_MAX_T 2048

int zoo_cuda_poly_form(int64_t T, int64_t F, int64_t DV, double c0, double c1, double c2, int tf32,
                       zoo_poly_form *form, char *err, size_t errlen) {
  pc_layout l;
  pc_layout_of(&l, F, DV, c0, c1, c2);
  const char *env = getenv("ZOO_POLY_FORM");
  if (env && !strcmp(env, "quadratic")) {
    *form = ZOO_POLY_QUADRATIC;
  } else if (env && !strcmp(env, "chunked")) {
    if (!pc_fits(&l)) {
      snprintf(err, errlen, "ZOO_POLY_FORM=chunked: the chunked form cannot run F %lld, DV %lld (%s)",
               (long long)F, (long long)DV, l.D == 0 ? "no features: c0 = c1 = c2 = 0" : "too wide");
      return -1;
    }
    *form = ZOO_POLY_CHUNKED;
  } else if (!env || !env[0] || !strcmp(env, "auto")) {
    *form = T >= ZOO_POLY_CHUNKED_MIN_T && pc_fits(&l) ? ZOO_POLY_CHUNKED : ZOO_POLY_QUADRATIC;
    if (*form == ZOO_POLY_CHUNKED && T <= PM_LONG_MAX_T && zoo_cuda_poly_mma(T, F, DV, tf32) == 1)
      *form = ZOO_POLY_QUADRATIC; /* the tensor cores' quadratic form wins there */
  } else {
    snprintf(err, errlen, "ZOO_POLY_FORM=%s: expected quadratic, chunked or auto", env);
    return -1;
  }
  return 0;
}

/* Template arguments "F, DV, C, NT, K0, K1, K2" of the chunked kernels. */
static void pc_targs(const pc_layout *l, char *buf, size_t len) {
  snprintf(buf, len, "%d, %d, %d, %d, %s, %s, %s", l->F, l->DV, l->C, l->NT, l->k0 ? "true" : "false",
           l->k1 ? "true" : "false", l->k2 ? "true" : "false");
}

/* The wrapper's check that the emitter's shared memory figure is the kernel's. */
static void pc_assert(zoo_cuda_emit *e, const pc_layout *l, const char *targs, int part) {
  zoo_strbuf_printf(&e->src, "static_assert(zk_poly_chunked_smem<%s>(%d) == %lld, \"shared memory\");\n", targs,
                    part, (long long)l->smem[part]);
}

static int poly_chunked_fwd(zoo_cuda_emit *e, const zoo_node *n, const attn_dims *a) {
  if (need(e, "poly_attention_chunked.cu", NULL, NULL)) return -1;
  pc_layout l;
  pc_layout_of(&l, a->F, a->DV, n->attrs.f[0], n->attrs.f[1], n->attrs.f[2]);
  char name[64], c[200], eps[48], targs[96], call[640];
  poly_consts(n, c, sizeof c, eps, sizeof eps);
  pc_targs(&l, targs, sizeof targs);
  kernel_name(e, n, "poly_chunked_fwd", name, sizeof name);
  pc_assert(e, &l, targs, 0);
  snprintf(call, sizeof call, "zk_poly_chunked_fwd<%s, %lld, %lld>(q, k, v, o, z, %s, %s)", targs, (long long)a->T,
           (long long)a->HI, c, eps);
  return poly_fwd_launch(e, n, name, call, l.NT, a->BH, (unsigned)l.smem[0]);
}

static int poly_chunked_bwd(zoo_cuda_emit *e, const zoo_node *n, const attn_dims *a) {
  if (need(e, "poly_attention_chunked.cu", NULL, NULL)) return -1;
  pc_layout l;
  pc_layout_of(&l, a->F, a->DV, n->attrs.f[0], n->attrs.f[1], n->attrs.f[2]);
  int64_t scratch = a->BH * a->T * (a->DV + 1) * (int64_t)sizeof(float); /* g_i = dn_i, dd_i */
  char name[64], c[200], eps[48], targs[96];
  poly_consts(n, c, sizeof c, eps, sizeof eps);
  pc_targs(&l, targs, sizeof targs);

  kernel_name(e, n, "poly_chunked_bwd_q", name, sizeof name);
  pc_assert(e, &l, targs, 1);
  char bounds[16], call[640];
  snprintf(bounds, sizeof bounds, "%d", l.NT);
  snprintf(call, sizeof call, "zk_poly_chunked_bwd_q<%s, %lld, %lld>(dout, q, k, v, dq, stats, %s, %s)", targs,
           (long long)a->T, (long long)a->HI, c, eps);
  if (poly_bwd_q_launch(e, n, name, bounds, 0, call, l.NT, a->BH, (unsigned)l.smem[1], scratch)) return -1;

  kernel_name(e, n, "poly_chunked_bwd_kv", name, sizeof name);
  pc_assert(e, &l, targs, 2);
  snprintf(call, sizeof call, "zk_poly_chunked_bwd_kv<%s, %lld, %lld>(q, k, v, stats, dk, dv, %s)", targs,
           (long long)a->T, (long long)a->HI, c);
  return poly_bwd_kv_launch(e, n, name, bounds, call, l.NT, a->BH, (unsigned)l.smem[2], scratch);
}

/* The form of node n, or -1 with e->err. */
static int poly_form_of(zoo_cuda_emit *e, const zoo_node *n, const attn_dims *a, zoo_poly_form *form) {
  if (zoo_cuda_poly_form(a->T, a->F, a->DV, n->attrs.f[0], n->attrs.f[1], n->attrs.f[2], e->tf32, form,
                         e->err, sizeof e->err) != 0)
    return -1;
  return 0;
}

int zoo_cuda_poly_attention(zoo_cuda_emit *e, const zoo_node *n) {
  attn_dims a;
  zoo_poly_form form;
  if (attn_dims_of(e, n, 0, &a) || poly_form_of(e, n, &a, &form)) return -1;
  if (form == ZOO_POLY_CHUNKED) return poly_chunked_fwd(e, n, &a);
  int split = zoo_cuda_poly_mma(a.T, a.F, a.DV, e->tf32);
  if (split) return poly_mma_fwd(e, n, &a, split);
  if (poly_tiled(&a)) return poly_tiled_fwd(e, n, &a);
  if (need(e, "poly_attention.cu", NULL, NULL)) return -1;
  int BQ = poly_tile(a.T), R = poly_rows(a.T, a.DV, 4);
  char name[64], c[200], eps[48], call[640];
  poly_consts(n, c, sizeof c, eps, sizeof eps);
  kernel_name(e, n, "poly_attn_fwd", name, sizeof name);
  snprintf(call, sizeof call, "zk_poly_fwd<%lld, %lld, %d, %d, %lld, %lld, %d>(q, k, v, o, z, %s, %s)",
           (long long)a.F, (long long)a.DV, BQ, R, (long long)a.T, (long long)a.HI, poly_fwd_batch(), c, eps);
  return poly_fwd_launch(e, n, name, call, BQ, a.BH * cdiv(a.T, (int64_t)BQ * R), 0);
}

int zoo_cuda_poly_attention_bwd(zoo_cuda_emit *e, const zoo_node *n) {
  attn_dims a;
  zoo_poly_form form;
  if (attn_dims_of(e, n, 1, &a) || poly_form_of(e, n, &a, &form)) return -1;
  if (form == ZOO_POLY_CHUNKED) return poly_chunked_bwd(e, n, &a);
  int split = n->nin == 6 ? zoo_cuda_poly_mma(a.T, a.F, a.DV, e->tf32) : 0;
  if (split) return poly_mma_bwd(e, n, &a, split);
  if (n->nin == 6 && poly_tiled(&a)) return poly_tiled_bwd(e, n, &a);
  if (need(e, "poly_attention.cu", NULL, NULL)) return -1;
  int BQ = poly_tile(a.T), R = poly_bwd_rows(a.T, a.DV);
  int64_t scratch = a.BH * a.T * (a.DV + 1) * (int64_t)sizeof(float); /* dn_i, dd_i */
  int64_t grid = a.BH * cdiv(a.T, (int64_t)BQ * R);
  char name[64], c[200], eps[48];
  poly_consts(n, c, sizeof c, eps, sizeof eps);

  /* with the forward's o and z (inputs 4, 5), no walk to recompute them */
  int saved = n->nin == 6;
  char nb[16] = ""; /* the tile loads' batch (zk_poly_load_tile), when not 1 */
  if (poly_bwd_batch() > 1) snprintf(nb, sizeof nb, ", %d", poly_bwd_batch());
  kernel_name(e, n, "poly_attn_bwd_q", name, sizeof name);
  char bounds[32], call[640];
  snprintf(bounds, sizeof bounds, "%d", BQ);
  snprintf(call, sizeof call, "zk_poly_bwd_q<%lld, %lld, %d, %d, %lld, %lld, %s%s>(dout, q, k, v, %s, dq, stats, %s, %s)",
           (long long)a.F, (long long)a.DV, BQ, R, (long long)a.T, (long long)a.HI, saved ? "true" : "false", nb,
           saved ? "o, z" : "nullptr, nullptr", c, eps);
  if (poly_bwd_q_launch(e, n, name, bounds, saved, call, BQ, grid, 0, scratch)) return -1;

  /* bwd_kv keeps 2 R (F + DV) floats per thread; where that and one query
   * row stay within 112, it is held to 128 registers (8 blocks of 64 threads
   * per SM, without spills at F 16, DV 5 (R 2), 10, 21; DV 42 would spill).
   * The forward and bwd_q keep ptxas's own register choice: held to 8 or 12
   * blocks an SM they moved the fp32 cells by 1% at most (based 128 / 512
   * 24.81 ms, 24.99 with 8, 24.64 with 12; 64 / 128 2.60, 2.59, 2.73;
   * session 9, device run 7), though 8 took the forward at L 512, DV 5 from
   * 1.389 to 1.255 ms in `zoorun bench --poly`. */
  int kv_blocks = R * 2 * (a.F + a.DV) + a.F + a.DV + 1 <= 112 && BQ == 64 ? 8 : 1;
  kernel_name(e, n, "poly_attn_bwd_kv", name, sizeof name);
  snprintf(bounds, sizeof bounds, "%d, %d", BQ, kv_blocks);
  snprintf(call, sizeof call, "zk_poly_bwd_kv<%lld, %lld, %d, %d, %lld, %lld%s>(q, k, v, stats, dk, dv, %s)",
           (long long)a.F, (long long)a.DV, BQ, R, (long long)a.T, (long long)a.HI, nb, c);
  return poly_bwd_kv_launch(e, n, name, bounds, call, BQ, grid, 0, scratch);
}

/* ---------------------------------------------------------------------------
 * softmax_attention: runtime/kernels/softmax_attention.cu */

/* Tiles: BR rows a block owns (the register tiles hold BR / 8 rows of up to
 * ceil(max(F, DV) / 16) columns per thread: at most 32 accumulators each), BS
 * rows of the tile it walks; no larger than T needs. Dynamic shared memory
 * per kernel (part 0 fwd, 1 bwd_q, 2 bwd_kv) mirrors zk_sattn_smem (the
 * wrappers assert it). */
#define SATTN_SMEM_MAX (200 * 1024)
static int64_t sattn_pad(int64_t w) { return w % 4 == 0 ? w + 4 : w + 1; }
static int64_t sattn_smem(int64_t F, int64_t DV, int BR, int BS, int part) {
  int64_t floats = (BR + BS) * sattn_pad(F) + BS * sattn_pad(DV) + BR * sattn_pad(BS);
  if (part > 0) floats += BR * sattn_pad(DV);
  if (part == 2) floats += 2 * BS;
  return 4 * floats;
}

static int sattn_tiles(int64_t F, int64_t DV, int64_t T, int *BR, int *BS) {
  int64_t w = F > DV ? F : DV, cols = (w + 15) / 16;
  int br = 64;
  while (br > 8 && (br / 8) * cols > 32) br /= 2;
  while (br > 8 && br / 2 >= T) br /= 2; /* T <= br / 2: a smaller tile holds it */
  int bs = br >= 32 ? 32 : 16;
  while (bs > 16 && bs / 2 >= T) bs /= 2;
  while (sattn_smem(F, DV, br, bs, 2) > SATTN_SMEM_MAX && (br > 8 || bs > 16)) {
    if (bs > 16) bs /= 2;
    else br /= 2;
  }
  if (sattn_smem(F, DV, br, bs, 2) > SATTN_SMEM_MAX) return -1;
  *BR = br, *BS = bs;
  return 0;
}

typedef struct sattn_cfg {
  attn_dims a;
  int BR, BS, causal, drop;
  int64_t HP; /* the kernels' HP: 0, or H for softmax_attention_packed */
  int64_t smem[3];
  char scale[48], p[48];
  long long stream;
} sattn_cfg;

/* Sizes of q, k, v at inputs qi.. (softmax_attention), or of the packed qkv
 * [B, T, 3*H*d] at input qi (softmax_attention_packed, H = i2). */
static int sattn_dims(zoo_cuda_emit *e, const zoo_node *n, int qi, sattn_cfg *c) {
  int packed = n->op == ZOO_OP_SOFTMAX_ATTENTION_PACKED || n->op == ZOO_OP_SOFTMAX_ATTENTION_PACKED_BWD;
  c->HP = packed ? n->attrs.i[2] : 0;
  if (!packed) return attn_dims_of(e, n, qi, &c->a);
  int x = n->in[qi];
  int64_t H = c->HP;
  if (H < 1 || want_int(e, "H", H)) return fail(e, "softmax_attention_packed: %lld heads", (long long)H);
  c->a.HI = 0;
  c->a.T = dim_of(e, x, -2), c->a.F = c->a.DV = dim_of(e, x, -1) / (3 * H);
  c->a.BH = c->a.T > 0 && c->a.F > 0 ? zoo_cuda_numel(e, x) / (c->a.T * 3 * c->a.F) : 0;
  if (want_int(e, "T", c->a.T) || want_int(e, "B*H", c->a.BH)) return -1;
  if (c->a.F > 1024) return fail(e, "attention head width %lld exceeds 1024", (long long)c->a.F);
  return 0;
}

static int sattn_setup(zoo_cuda_emit *e, const zoo_node *n, int qi, sattn_cfg *c) {
  if (sattn_dims(e, n, qi, c)) return -1;
  if (sattn_tiles(c->a.F, c->a.DV, c->a.T, &c->BR, &c->BS))
    return fail(e, "softmax attention head widths %lld, %lld are too large for the kernel", (long long)c->a.F,
                (long long)c->a.DV);
  for (int part = 0; part < 3; part++) c->smem[part] = sattn_smem(c->a.F, c->a.DV, c->BR, c->BS, part);
  c->causal = n->attrs.i[1] != 0;
  c->drop = n->attrs.f[1] != 0.0;
  c->stream = (long long)n->attrs.i[0];
  flit(c->scale, sizeof c->scale, n->attrs.f[0]);
  flit(c->p, sizeof c->p, n->attrs.f[1]);
  return need(e, "rng.h", "softmax_attention.cu", NULL);
}

/* "<F, DV, BR, BS, T, CAUSAL, DROP" and then, from `more`, what bwd_q adds
 * (SAVED, or "" for the others), HP and ">" */
static void sattn_targs(const sattn_cfg *c, const char *more, char *buf, size_t len) {
  snprintf(buf, len, "<%lld, %lld, %d, %d, %lld, %s, %s%s, %lld>", (long long)c->a.F, (long long)c->a.DV, c->BR,
           c->BS, (long long)c->a.T, c->causal ? "true" : "false", c->drop ? "true" : "false", more,
           (long long)c->HP);
}

/* The wrapper's check that the emitter's shared memory figure is the kernel's. */
static void sattn_assert(zoo_cuda_emit *e, const sattn_cfg *c, int part) {
  zoo_strbuf_printf(&e->src, "static_assert(4 * zk_sattn_smem<%lld, %lld, %d, %d>(%d) == %lld, \"shared memory\");\n",
                    (long long)c->a.F, (long long)c->a.DV, c->BR, c->BS, part, (long long)c->smem[part]);
}

/* ", scale, p, seed, stream" of a call; the wrapper has a seed parameter only
 * when dropping. */
static void sattn_tail(const sattn_cfg *c, char *buf, size_t len) {
  snprintf(buf, len, "%s, %s, %s, %lldULL", c->scale, c->p, c->drop ? "seed" : "0ULL", c->stream);
}

/* The kernels' q, k, v arguments from node n's input `first` on: three
 * tensors, or softmax_attention_packed's one tensor three times (the kernels
 * take their thirds). */
static void arg_qkv(zoo_step *s, const zoo_node *n, int first, const sattn_cfg *c) {
  for (int k = 0; k < 3; k++) arg_tensor(s, n->in[first + (c->HP ? 0 : k)]);
}

/* softmax_attention and softmax_attention_packed (arg_qkv). */
int zoo_cuda_softmax_attention(zoo_cuda_emit *e, const zoo_node *n) {
  sattn_cfg c;
  if (sattn_setup(e, n, 0, &c)) return -1;
  char name[64], targs[112], tail[160];
  sattn_targs(&c, "", targs, sizeof targs);
  sattn_tail(&c, tail, sizeof tail);
  kernel_name(e, n, "softmax_attn_fwd", name, sizeof name);
  sattn_assert(e, &c, 0);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(128) %s(const float *__restrict__ q, "
                    "const float *__restrict__ k, const float *__restrict__ v, float *__restrict__ o, "
                    "float *__restrict__ lse%s) {\n"
                    "  zk_sattn_fwd%s(q, k, v, o, lse, %s);\n}\n",
                    name, c.drop ? ", unsigned long long seed" : "", targs, tail);
  zoo_step *s = launch(e, n, name, c.a.BH * cdiv(c.a.T, c.BR), 128, (unsigned)c.smem[0]);
  if (!s) return -1;
  arg_qkv(s, n, 0, &c);
  arg_tensor(s, n->out[0]);
  arg_tensor(s, n->out[1]);
  if (c.drop) arg_seed(s);
  return 0;
}

int zoo_cuda_softmax_attention_packed(zoo_cuda_emit *e, const zoo_node *n) { return zoo_cuda_softmax_attention(e, n); }

/* softmax_attention_bwd (do, q, k, v, [o, lse]) -> dq, dk, dv, and
 * softmax_attention_packed_bwd (do, qkv, [o, lse]) -> dqkv, whose kernels get
 * qkv three times and dqkv twice or once and take their thirds. */
int zoo_cuda_softmax_attention_bwd(zoo_cuda_emit *e, const zoo_node *n) {
  sattn_cfg c;
  if (sattn_setup(e, n, 1, &c)) return -1;
  char name[64], targs[112], tail[160];
  sattn_targs(&c, "", targs, sizeof targs);
  sattn_tail(&c, tail, sizeof tail);
  int64_t grid = c.a.BH * cdiv(c.a.T, c.BR);
  int64_t scratch = c.a.BH * c.a.T * 2 * (int64_t)sizeof(float); /* lse_i, D_i */
  const char *seedp = c.drop ? ", unsigned long long seed" : "";

  /* with the forward's o and lse bwd_q need not walk the keys twice */
  int saved = n->nin == (c.HP ? 4 : 6), nqkv = c.HP ? 1 : 3;
  char qtargs[120];
  sattn_targs(&c, saved ? ", true" : ", false", qtargs, sizeof qtargs);
  kernel_name(e, n, "softmax_attn_bwd_q", name, sizeof name);
  sattn_assert(e, &c, 1);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(128) %s(const float *__restrict__ dout, "
                    "const float *__restrict__ q, const float *__restrict__ k, const float *__restrict__ v, "
                    "%sfloat *__restrict__ dq, float *__restrict__ stats%s) {\n"
                    "  zk_sattn_bwd_q%s(dout, q, k, v, %s, dq, stats, %s);\n}\n",
                    name, saved ? "const float *__restrict__ o, const float *__restrict__ lse, " : "", seedp,
                    qtargs, saved ? "o, lse" : "nullptr, nullptr", tail);
  zoo_step *s = launch(e, n, name, grid, 128, (unsigned)c.smem[1]);
  if (!s) return -1;
  arg_tensor(s, n->in[0]);
  arg_qkv(s, n, 1, &c);
  if (saved)
    for (int k = 0; k < 2; k++) arg_tensor(s, n->in[1 + nqkv + k]);
  arg_tensor(s, n->out[0]);
  arg_scratch(s, 0);
  if (c.drop) arg_seed(s);
  s->scratch_bytes = scratch;

  kernel_name(e, n, "softmax_attn_bwd_kv", name, sizeof name);
  sattn_assert(e, &c, 2);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(128) %s(const float *__restrict__ dout, "
                    "const float *__restrict__ q, const float *__restrict__ k, const float *__restrict__ v, "
                    "const float *__restrict__ stats, float *__restrict__ dk, float *__restrict__ dv%s) {\n"
                    "  zk_sattn_bwd_kv%s(dout, q, k, v, stats, dk, dv, %s);\n}\n",
                    name, seedp, targs, tail);
  s = launch(e, n, name, grid, 128, (unsigned)c.smem[2]);
  if (!s) return -1;
  arg_tensor(s, n->in[0]);
  arg_qkv(s, n, 1, &c);
  arg_scratch(s, 0);
  arg_tensor(s, n->out[c.HP ? 0 : 1]);
  arg_tensor(s, n->out[c.HP ? 0 : 2]);
  if (c.drop) arg_seed(s);
  s->scratch_bytes = scratch;
  return 0;
}

int zoo_cuda_softmax_attention_packed_bwd(zoo_cuda_emit *e, const zoo_node *n) {
  return zoo_cuda_softmax_attention_bwd(e, n);
}

/* ---------------------------------------------------------------------------
 * linear_cross_entropy: runtime/kernels/linear_cross_entropy.cu */

enum { LCE_RT = 16 };

typedef struct lce_cfg {
  int64_t N, D, V, ignore;
  int64_t off_count, off_rows, scratch; /* scratch: idx [N] i32, count, rows [N] f32 */
} lce_cfg;

static int lce_setup(zoo_cuda_emit *e, const zoo_node *n, int hi, lce_cfg *c) {
  int w = n->in[hi + 1], t = n->in[hi + 2];
  c->N = zoo_cuda_numel(e, t);
  c->V = dim_of(e, w, 0), c->D = dim_of(e, w, 1);
  c->ignore = n->attrs.i[0];
  if (want_int(e, "rows", c->N) || want_int(e, "V", c->V) || want_int(e, "D", c->D)) return -1;
  c->off_count = align16(c->N * 4);
  c->off_rows = c->off_count + 16;
  c->scratch = c->off_rows + align16(c->N * 4);
  return need(e, "linear_cross_entropy.cu", NULL, NULL);
}

/* The compaction of labelled rows (idx, count), which every kernel of these
 * nodes reads. */
static int lce_compact(zoo_cuda_emit *e, const zoo_node *n, int hi, const lce_cfg *c) {
  char name[64];
  kernel_name(e, n, "lce_compact", name, sizeof name);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(1024) %s(const int *__restrict__ targets, "
                    "int *__restrict__ idx, int *__restrict__ count) {\n"
                    "  zk_lce_compact<%lld, %lld>(targets, idx, count);\n}\n",
                    name, (long long)c->N, (long long)c->ignore);
  zoo_step *s = launch(e, n, name, 1, 1024, 0);
  if (!s) return -1;
  arg_tensor(s, n->in[hi + 2]);
  arg_scratch(s, 0);
  arg_scratch(s, c->off_count);
  s->scratch_bytes = c->scratch;
  return 0;
}

/* The compaction and the per-row pass (forward: loss, or backward: lse),
 * common to both directions. */
static int lce_rows(zoo_cuda_emit *e, const zoo_node *n, int hi, const lce_cfg *c, int lse) {
  if (lce_compact(e, n, hi, c)) return -1;
  char name[64];
  kernel_name(e, n, lse ? "lce_lse" : "lce_loss_rows", name, sizeof name);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(256) %s(const float *__restrict__ h, "
                    "const float *__restrict__ w, const int *__restrict__ targets, const int *__restrict__ idx, "
                    "const int *__restrict__ count, float *__restrict__ rows) {\n"
                    "  zk_lce_rows<%lld, %lld, %d, %s>(h, w, targets, idx, count, rows);\n}\n",
                    name, (long long)c->D, (long long)c->V, LCE_RT, lse ? "true" : "false");
  zoo_step *s = launch(e, n, name, cdiv(c->N, LCE_RT), 256, 0);
  if (!s) return -1;
  for (int k = 0; k < 3; k++) arg_tensor(s, n->in[hi + k]);
  arg_scratch(s, 0);
  arg_scratch(s, c->off_count);
  arg_scratch(s, c->off_rows);
  s->scratch_bytes = c->scratch;
  return 0;
}

int zoo_cuda_linear_cross_entropy(zoo_cuda_emit *e, const zoo_node *n) {
  lce_cfg c;
  if (lce_setup(e, n, 0, &c) || lce_rows(e, n, 0, &c, 0)) return -1;
  char name[64];
  kernel_name(e, n, "lce_finish", name, sizeof name);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(1024) %s(const float *__restrict__ rows, "
                    "const int *__restrict__ count, float *__restrict__ loss) {\n"
                    "  zk_lce_finish<%lld>(rows, count, loss);\n}\n",
                    name, (long long)c.N);
  zoo_step *s = launch(e, n, name, 1, 1024, 0);
  if (!s) return -1;
  arg_scratch(s, c.off_rows);
  arg_scratch(s, c.off_count);
  arg_tensor(s, n->out[0]);
  s->scratch_bytes = c.scratch;
  return 0;
}

int zoo_cuda_linear_cross_entropy_bwd(zoo_cuda_emit *e, const zoo_node *n) {
  lce_cfg c;
  if (lce_setup(e, n, 1, &c)) return -1;
  /* dh rows of ignored targets stay zero. First: the plan shares one scratch
   * area among a node's consecutive steps that declare scratch, and a step
   * without it in between would split them. */
  zero_step(e, n, n->out[0]);
  if (lce_rows(e, n, 1, &c, 1)) return -1;
  char name[64];
  kernel_name(e, n, "lce_bwd_dh", name, sizeof name);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(256) %s(const float *__restrict__ dloss, "
                    "const float *__restrict__ h, const float *__restrict__ w, const int *__restrict__ targets, "
                    "const int *__restrict__ idx, const int *__restrict__ count, const float *__restrict__ lse, "
                    "float *__restrict__ dh) {\n"
                    "  zk_lce_bwd_dh<%lld, %lld, %d>(dloss, h, w, targets, idx, count, lse, dh);\n}\n",
                    name, (long long)c.D, (long long)c.V, LCE_RT);
  zoo_step *s = launch(e, n, name, cdiv(c.N, LCE_RT), 256, 0);
  if (!s) return -1;
  for (int k = 0; k < 4; k++) arg_tensor(s, n->in[k]);
  arg_scratch(s, 0);
  arg_scratch(s, c.off_count);
  arg_scratch(s, c.off_rows);
  arg_tensor(s, n->out[0]);
  s->scratch_bytes = c.scratch;

  kernel_name(e, n, "lce_bwd_dw", name, sizeof name);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(256) %s(const float *__restrict__ dloss, "
                    "const float *__restrict__ h, const float *__restrict__ w, const int *__restrict__ targets, "
                    "const int *__restrict__ idx, const int *__restrict__ count, const float *__restrict__ lse, "
                    "float *__restrict__ dw) {\n"
                    "  zk_lce_bwd_dw<%lld, %lld>(dloss, h, w, targets, idx, count, lse, dw);\n}\n",
                    name, (long long)c.D, (long long)c.V);
  s = launch(e, n, name, cdiv(c.V, 16), 256, 0);
  if (!s) return -1;
  for (int k = 0; k < 4; k++) arg_tensor(s, n->in[k]);
  arg_scratch(s, 0);
  arg_scratch(s, c.off_count);
  arg_scratch(s, c.off_rows);
  arg_tensor(s, n->out[1]);
  s->scratch_bytes = c.scratch;
  return 0;
}

/* ---------------------------------------------------------------------------
 * causal_conv1d: runtime/kernels/causal_conv1d.cu */

int zoo_cuda_causal_conv1d(zoo_cuda_emit *e, const zoo_node *n) {
  int x = n->in[0], w = n->in[1];
  int64_t T = dim_of(e, x, 1), C = dim_of(e, x, 2), K = dim_of(e, w, 2);
  int64_t N = zoo_cuda_numel(e, x) / (C ? C : 1);
  int has_b = n->nin > 2;
  if (want_int(e, "T", T) || want_int(e, "C", C) || need(e, "causal_conv1d.cu", NULL, NULL)) return -1;
  char name[64];
  kernel_name(e, n, "conv1d_fwd", name, sizeof name);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(256) %s(const float *__restrict__ x, "
                    "const float *__restrict__ w, %sfloat *__restrict__ y) {\n"
                    "  zk_conv1d_fwd<%lld, %lld, %lld, %s>(x, w, %s, y, %lldLL);\n}\n",
                    name, has_b ? "const float *__restrict__ b, " : "", (long long)T, (long long)C,
                    (long long)K, has_b ? "true" : "false", has_b ? "b" : "nullptr", (long long)N);
  zoo_step *s = launch(e, n, name, cdiv(N * C, 256), 256, 0);
  if (!s) return -1;
  for (int k = 0; k < n->nin; k++) arg_tensor(s, n->in[k]);
  arg_tensor(s, n->out[0]);
  return 0;
}

/* causal_conv1d inline, in the kernel of the elementwise group that consumes it
 * (fuse.h): zk_conv1d_at, the very function zk_conv1d_fwd computes each output
 * with, at the group's flat index i. */
int zoo_cuda_inline_causal_conv1d(zoo_cuda_emit *e, const zoo_node *n, char *expr, size_t len) {
  int x = n->in[0], w = n->in[1];
  int64_t T = dim_of(e, x, 1), C = dim_of(e, x, 2), K = dim_of(e, w, 2);
  int has_b = n->nin > 2;
  if (want_int(e, "T", T) || want_int(e, "C", C) || need(e, "causal_conv1d.cu", NULL, NULL)) return -1;
  char bias[32] = "nullptr";
  if (has_b) snprintf(bias, sizeof bias, "t%d", n->in[2]);
  snprintf(expr, len, "zk_conv1d_at<%lld, %lld, %lld, %s>(t%d, t%d, %s, i)", (long long)T, (long long)C,
           (long long)K, has_b ? "true" : "false", x, w, bias);
  return 0;
}

/* Blocks of a rows-then-partials backward: about 64 rows each, at most 512.
 * For measuring, ZOO_PARTIAL_ROWS_WIDE=r rows a block and
 * ZOO_PARTIAL_MAX_WIDE=p blocks at most from the environment set them for
 * layernorm_bwd from C = 128, where a row takes a whole warp (wide). Measured
 * on the H200 (zoorun bench, .gpu/s15run4.sh and s15run5.sh), the default
 * stands: 16 rows and 2048 blocks took rebased 512/512 from 94.34 to 93.43
 * ms and 512/2048 from 416.7-421.1 to 413.2 in two runs each, but 128/512 from
 * 24.31 to 24.37 and 64/128 from 2.33-2.36 to 2.42; the same from C = 512
 * only (512/512's five norms, not its C = 192 q and k norms) made 512/512
 * slower, 94.56-94.60 to 95.29-95.32; 32 rows and 1024 blocks were no better
 * anywhere. */
static int64_t partial_blocks(int64_t rows, int wide) {
  const char *er = wide ? getenv("ZOO_PARTIAL_ROWS_WIDE") : NULL, *ep = wide ? getenv("ZOO_PARTIAL_MAX_WIDE") : NULL;
  int64_t per = er && atoll(er) > 0 ? atoll(er) : 64, most = ep && atoll(ep) > 0 ? atoll(ep) : 512;
  int64_t P = cdiv(rows, per);
  return P < 1 ? 1 : P > most ? most : P;
}

/* Comment lines naming the members of a fused group p (NULL: none) before a
 * row kernel: `what` (e.g. "prologue that makes its input") and tensor t. */
static void comment_fused(zoo_cuda_emit *e, const zoo_cuda_prologue *p, const char *what, int t) {
  if (!p) return;
  zoo_strbuf_printf(&e->src, "// with the %s t%d:\n", what, t);
  for (int k = 0; k < p->count; k++) zoo_cuda_comment_node(e, p->nodes[k]);
}

/* causal_conv1d_bwd, alone (dx stored through zk_store) or with an epilogue
 * (codegen_cuda.h), as layernorm_bwd. */
int zoo_cuda_causal_conv1d_bwd_epilogue(zoo_cuda_emit *e, const zoo_node *n, const zoo_cuda_epilogue *p) {
  int x = n->in[1], w = n->in[2];
  int64_t T = dim_of(e, x, 1), C = dim_of(e, x, 2), K = dim_of(e, w, 2);
  int64_t N = zoo_cuda_numel(e, x) / (C ? C : 1);
  if (want_int(e, "T", T) || want_int(e, "C", C) || need(e, "causal_conv1d.cu", NULL, NULL)) return -1;
  int64_t P = partial_blocks(N, 0), M = C * (K + 1);
  if (M * 4 > 48 * 1024) return fail(e, "causal_conv1d_bwd: %lld channels x %lld taps is too wide", (long long)C, (long long)K);
  if (p && p->nargs + n->nin + n->nout + 1 > ZOO_MAX_ARGS)
    return fail(e, "causal_conv1d_bwd with an epilogue needs %d kernel arguments (at most %d)",
                p->nargs + n->nin + n->nout + 1, ZOO_MAX_ARGS);
  int64_t scratch = P * M * 4;
  char name[64];
  kernel_name(e, n, p ? "conv1d_bwd_fused" : "conv1d_bwd_rows", name, sizeof name);
  comment_fused(e, p, "epilogue that reads its output", n->out[0]);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(256) %s(const float *__restrict__ dy, "
                    "const float *__restrict__ x, const float *__restrict__ w, %s%sfloat *__restrict__ part%s) {\n",
                    name, p ? p->params : "float *__restrict__ dx", p && !p->params[0] ? "" : ", ",
                    partials_params(P, M, 1));
  if (p) zoo_strbuf_printf(&e->src, "  auto dx = [&](long long i_, float v_) {\n%s  };\n", p->body);
  zoo_strbuf_printf(&e->src, "  zk_conv1d_bwd_rows<%lld, %lld, %lld, %lld>(dy, x, w, %s, part, %lldLL);\n",
                    (long long)T, (long long)C, (long long)K, (long long)P, p ? "dx" : "zk_store{dx}", (long long)N);
  partials_close(e, P, M, C * K, 1);
  zoo_step *s = launch(e, n, name, P, 256, (unsigned)(M * 4));
  if (!s) return -1;
  for (int k = 0; k < 3; k++) arg_tensor(s, n->in[k]);
  if (p)
    for (int k = 0; k < p->nargs; k++) s->args[s->nargs++] = p->args[k];
  else
    arg_tensor(s, n->out[0]);
  arg_scratch(s, 0);
  s->scratch_bytes = scratch;
  return partials_end(e, n, s, P, M, C * K, n->out[1], n->out[2], scratch);
}

int zoo_cuda_causal_conv1d_bwd(zoo_cuda_emit *e, const zoo_node *n) {
  return zoo_cuda_causal_conv1d_bwd_epilogue(e, n, NULL);
}

/* ---------------------------------------------------------------------------
 * layernorm, rmsnorm: runtime/kernels/layernorm.cu, rmsnorm.cu. One warp per
 * row, 8 rows per block. */

/* Rows a warp of layernorm.cu takes at once: 32 / zk_ln_lanes(C) (the same rule). */
static int64_t ln_rows_per_warp(int64_t C) {
  int64_t lanes = C <= 4 ? 1 : C <= 8 ? 2 : C <= 16 ? 4 : C <= 32 ? 8 : C <= 64 ? 16 : 32;
  return 32 / lanes;
}

/* layernorm's template arguments ", HS, TS" when its y (dy) is split into
 * heads (i0, ops.def), x at input xi; "" otherwise. */
static int ln_heads(zoo_cuda_emit *e, const zoo_node *n, int xi, char *buf, size_t len) {
  buf[0] = 0;
  if (n->attrs.i[0] == 0) return 0;
  int64_t T = dim_of(e, n->in[xi], -2);
  if (want_int(e, "T", T)) return -1;
  snprintf(buf, len, ", %lld, %lld", (long long)n->attrs.i[0], (long long)T);
  return 0;
}

/* layernorm, alone (input 0 from memory through zk_load) or with a prologue
 * (codegen_cuda.h): the same template, whose loader is then a lambda over the
 * fused group's values. */
int zoo_cuda_layernorm_prologue(zoo_cuda_emit *e, const zoo_node *n, const zoo_cuda_prologue *p) {
  int64_t N, C;
  rows_cols(e, n->in[0], &N, &C);
  if (want_int(e, "rows", N) || want_int(e, "C", C) || need(e, "layernorm.cu", NULL, NULL)) return -1;
  int has_w = n->nin > 1, has_b = n->nin > 2;
  if (p && p->nargs + n->nin - 1 + 1 > ZOO_MAX_ARGS)
    return fail(e, "layernorm with a prologue needs %d kernel arguments (at most %d)", p->nargs + n->nin, ZOO_MAX_ARGS);
  char name[64], eps[48];
  flit(eps, sizeof eps, n->attrs.f[0]);
  kernel_name(e, n, p ? "layernorm_fused" : "layernorm_fwd", name, sizeof name);
  comment_fused(e, p, "prologue that makes its input", n->in[0]);
  const char *sep = p && p->params[0] ? ", " : "";
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(256) %s(%s%s%s%s%sfloat *__restrict__ y) {\n",
                    name, p ? p->params : "", sep, p ? "" : "const float *__restrict__ x, ",
                    has_w ? "const float *__restrict__ w, " : "", has_b ? "const float *__restrict__ b, " : "");
  if (p) zoo_strbuf_printf(&e->src, "  auto x = [&](long long i_) -> float {\n%s  };\n", p->body);
  char heads[64];
  if (ln_heads(e, n, 0, heads, sizeof heads)) return -1;
  zoo_strbuf_printf(&e->src, "  zk_layernorm_fwd<%lld, %s, %s%s>(%s, %s, %s, y, %lld, %s);\n}\n", (long long)C,
                    has_w ? "true" : "false", has_b ? "true" : "false", heads, p ? "x" : "zk_load{x}",
                    has_w ? "w" : "nullptr", has_b ? "b" : "nullptr", (long long)N, eps);
  zoo_step *s = launch(e, n, name, cdiv(N, 8 * ln_rows_per_warp(C)), 256, 0);
  if (!s) return -1;
  if (p)
    for (int k = 0; k < p->nargs; k++) s->args[s->nargs++] = p->args[k];
  for (int k = p ? 1 : 0; k < n->nin; k++) arg_tensor(s, n->in[k]);
  arg_tensor(s, n->out[0]);
  return 0;
}

int zoo_cuda_layernorm(zoo_cuda_emit *e, const zoo_node *n) { return zoo_cuda_layernorm_prologue(e, n, NULL); }

/* layernorm_bwd, alone (dy read through zk_load, dx stored through zk_store)
 * or fused (codegen_cuda.h): pro, a prologue that makes dy at each element,
 * epi, an epilogue that takes dx at each element; either may be NULL. The
 * same template, with lambdas for the loader and the storer. The kernel's
 * parameters: the fused group's (pro's, or else epi's: with both, pro carries
 * those of both), then dy, x, w and dx as the lambdas leave them. */
int zoo_cuda_layernorm_bwd_fused(zoo_cuda_emit *e, const zoo_node *n, const zoo_cuda_prologue *pro,
                                 const zoo_cuda_epilogue *epi) {
  int64_t N, C;
  rows_cols(e, n->in[1], &N, &C);
  if (want_int(e, "rows", N) || want_int(e, "C", C) || need(e, "layernorm.cu", NULL, NULL)) return -1;
  if (2 * C * 4 > 48 * 1024) return fail(e, "layernorm_bwd: rows of %lld are too wide", (long long)C);
  int has_w = n->nin > 2;
  int64_t P = partial_blocks(N, C >= 128), scratch = P * 2 * C * 4;
  const zoo_cuda_prologue *g = pro ? pro : epi; /* the group's parameters */
  if (g && g->nargs + n->nin + n->nout + 1 > ZOO_MAX_ARGS)
    return fail(e, "layernorm_bwd with a fused group needs %d kernel arguments (at most %d)",
                g->nargs + n->nin + n->nout + 1, ZOO_MAX_ARGS);
  char name[64], eps[48];
  flit(eps, sizeof eps, n->attrs.f[0]);
  char heads[64];
  if (ln_heads(e, n, 1, heads, sizeof heads)) return -1;
  kernel_name(e, n, g ? "layernorm_bwd_fused" : "layernorm_bwd_rows", name, sizeof name);
  comment_fused(e, pro, "prologue that makes its input", n->in[0]);
  comment_fused(e, epi, "epilogue that reads its output", n->out[0]);
  zoo_strbuf_printf(&e->src, "extern \"C\" __global__ void __launch_bounds__(256) %s(%s%s%s"
                    "const float *__restrict__ x, %s%sfloat *__restrict__ part%s) {\n",
                    name, g ? g->params : "", g && g->params[0] ? ", " : "",
                    pro ? "" : "const float *__restrict__ dy, ", has_w ? "const float *__restrict__ w, " : "",
                    epi ? "" : "float *__restrict__ dx, ", has_w ? partials_params(P, 2 * C, 1) : "");
  if (pro) zoo_strbuf_printf(&e->src, "  auto dy = [&](long long i_) -> float {\n%s  };\n", pro->body);
  if (epi) zoo_strbuf_printf(&e->src, "  auto dx = [&](long long i_, float v_) {\n%s  };\n", epi->body);
  zoo_strbuf_printf(&e->src, "  zk_layernorm_bwd_rows<%lld, %s, %lld%s>(%s, x, %s, %s, part, %lld, %s);\n",
                    (long long)C, has_w ? "true" : "false", (long long)P, heads, pro ? "dy" : "zk_load{dy}",
                    has_w ? "w" : "nullptr", epi ? "dx" : "zk_store{dx}", (long long)N, eps);
  if (has_w) partials_close(e, P, 2 * C, C, 1);
  else zoo_strbuf_puts(&e->src, "}\n");
  zoo_step *s = launch(e, n, name, P, 256, (unsigned)(2 * C * 4));
  if (!s) return -1;
  if (g)
    for (int k = 0; k < g->nargs; k++) s->args[s->nargs++] = g->args[k];
  if (!pro) arg_tensor(s, n->in[0]);
  arg_tensor(s, n->in[1]);
  if (has_w) arg_tensor(s, n->in[2]);
  if (!epi) arg_tensor(s, n->out[0]);
  arg_scratch(s, 0);
  s->scratch_bytes = scratch;
  if (!has_w) { /* ops.def: dw, db are zeros without w */
    zero_step(e, n, n->out[1]);
    zero_step(e, n, n->out[2]);
    return 0;
  }
  return partials_end(e, n, s, P, 2 * C, C, n->out[1], n->out[2], scratch);
}

int zoo_cuda_layernorm_bwd(zoo_cuda_emit *e, const zoo_node *n) { return zoo_cuda_layernorm_bwd_fused(e, n, NULL, NULL); }
int zoo_cuda_layernorm_bwd_prologue(zoo_cuda_emit *e, const zoo_node *n, const zoo_cuda_prologue *p) {
  return zoo_cuda_layernorm_bwd_fused(e, n, p, NULL);
}
int zoo_cuda_layernorm_bwd_epilogue(zoo_cuda_emit *e, const zoo_node *n, const zoo_cuda_epilogue *p) {
  return zoo_cuda_layernorm_bwd_fused(e, n, NULL, p);
}

/* linear_layernorm (x, w, [g, [b]]) -> p, y: runtime/kernels/layernorm.cu's
 * zk_linear_layernorm; the fold (train_graph.c) makes it only where that
 * kernel runs: K <= 64, N a multiple of 32 up to 256. */
enum { LLN_ROWS_PER_WARP = 4 };

int zoo_cuda_linear_layernorm(zoo_cuda_emit *e, const zoo_node *n) {
  int64_t M, K, N = dim_of(e, n->in[1], 0);
  rows_cols(e, n->in[0], &M, &K);
  if (want_int(e, "rows", M) || want_int(e, "K", K) || want_int(e, "N", N) || need(e, "layernorm.cu", NULL, NULL))
    return -1;
  if (K > 64 || N % 32 != 0 || N > 256)
    return fail(e, "linear_layernorm: the kernel needs K <= 64 and N a multiple of 32 up to 256 (K %lld, N %lld)",
                (long long)K, (long long)N);
  int has_g = n->nin > 2, has_b = n->nin > 3;
  char name[64], eps[48], heads[64] = "0, 1";
  flit(eps, sizeof eps, n->attrs.f[0]);
  if (n->attrs.i[0] != 0) {
    int64_t T = dim_of(e, n->in[0], -2);
    if (want_int(e, "T", T)) return -1;
    snprintf(heads, sizeof heads, "%lld, %lld", (long long)n->attrs.i[0], (long long)T);
  }
  kernel_name(e, n, "linear_layernorm", name, sizeof name);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(256) %s(const float *__restrict__ x, "
                    "const float *__restrict__ w, %s%sfloat *__restrict__ p, float *__restrict__ y) {\n"
                    "  zk_linear_layernorm<%lld, %lld, %s, %s, %s, %d>(x, w, %s, %s, p, y, %lld, %s);\n}\n",
                    name, has_g ? "const float *__restrict__ g, " : "", has_b ? "const float *__restrict__ b, " : "",
                    (long long)K, (long long)N, has_g ? "true" : "false", has_b ? "true" : "false", heads,
                    LLN_ROWS_PER_WARP, has_g ? "g" : "nullptr", has_b ? "b" : "nullptr", (long long)M, eps);
  zoo_step *s = launch(e, n, name, cdiv(M, 8 * LLN_ROWS_PER_WARP), 256, (unsigned)(K * (N + 1) * 4));
  if (!s) return -1;
  for (int k = 0; k < n->nin; k++) arg_tensor(s, n->in[k]);
  arg_tensor(s, n->out[0]);
  arg_tensor(s, n->out[1]);
  return 0;
}

int zoo_cuda_rmsnorm(zoo_cuda_emit *e, const zoo_node *n) {
  int64_t N, C;
  rows_cols(e, n->in[0], &N, &C);
  if (want_int(e, "rows", N) || want_int(e, "C", C) || need(e, "rmsnorm.cu", NULL, NULL)) return -1;
  char name[64], eps[48];
  flit(eps, sizeof eps, n->attrs.f[0]);
  kernel_name(e, n, "rmsnorm_fwd", name, sizeof name);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(256) %s(const float *__restrict__ x, "
                    "const float *__restrict__ w, float *__restrict__ y) {\n"
                    "  zk_rmsnorm_fwd<%lld>(x, w, y, %lld, %s);\n}\n",
                    name, (long long)C, (long long)N, eps);
  zoo_step *s = launch(e, n, name, cdiv(N, 8), 256, 0);
  if (!s) return -1;
  arg_tensor(s, n->in[0]);
  arg_tensor(s, n->in[1]);
  arg_tensor(s, n->out[0]);
  return 0;
}

int zoo_cuda_rmsnorm_bwd(zoo_cuda_emit *e, const zoo_node *n) {
  int64_t N, C;
  rows_cols(e, n->in[1], &N, &C);
  if (want_int(e, "rows", N) || want_int(e, "C", C) || need(e, "rmsnorm.cu", NULL, NULL)) return -1;
  if (C * 4 > 48 * 1024) return fail(e, "rmsnorm_bwd: rows of %lld are too wide", (long long)C);
  int64_t P = partial_blocks(N, 0), scratch = P * C * 4;
  char name[64], eps[48];
  flit(eps, sizeof eps, n->attrs.f[0]);
  kernel_name(e, n, "rmsnorm_bwd_rows", name, sizeof name);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(256) %s(const float *__restrict__ dy, "
                    "const float *__restrict__ x, const float *__restrict__ w, float *__restrict__ dx, "
                    "float *__restrict__ part%s) {\n"
                    "  zk_rmsnorm_bwd_rows<%lld, %lld>(dy, x, w, dx, part, %lld, %s);\n",
                    name, partials_params(P, C, 0), (long long)C, (long long)P, (long long)N, eps);
  partials_close(e, P, C, C, 0);
  zoo_step *s = launch(e, n, name, P, 256, (unsigned)(C * 4));
  if (!s) return -1;
  for (int k = 0; k < 3; k++) arg_tensor(s, n->in[k]);
  arg_tensor(s, n->out[0]);
  arg_scratch(s, 0);
  s->scratch_bytes = scratch;
  return partials_end(e, n, s, P, C, C, n->out[1], -1, scratch);
}

/* ---------------------------------------------------------------------------
 * Row-wise ops over the last axis: runtime/kernels/softmax.cu and
 * cross_entropy.cu. One warp per row, 8 rows per block. */

/* softmax (LOG = 0) or logsumexp (LOG = 1) */
static int softmax_like(zoo_cuda_emit *e, const zoo_node *n, int log) {
  int64_t N, V;
  rows_cols(e, n->in[0], &N, &V);
  if (want_int(e, "rows", N) || want_int(e, "V", V) || need(e, "softmax.cu", NULL, NULL)) return -1;
  char name[64];
  kernel_name(e, n, log ? "logsumexp" : "softmax", name, sizeof name);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(256) %s(const float *__restrict__ x, "
                    "float *__restrict__ y) {\n"
                    "  zk_softmax_rows<%lld, %s>(x, y, %lld);\n}\n",
                    name, (long long)V, log ? "true" : "false", (long long)N);
  zoo_step *s = launch(e, n, name, cdiv(N, 8), 256, 0);
  if (!s) return -1;
  arg_tensor(s, n->in[0]);
  arg_tensor(s, n->out[0]);
  return 0;
}

int zoo_cuda_softmax(zoo_cuda_emit *e, const zoo_node *n) { return softmax_like(e, n, 0); }
int zoo_cuda_logsumexp(zoo_cuda_emit *e, const zoo_node *n) { return softmax_like(e, n, 1); }

int zoo_cuda_argmax(zoo_cuda_emit *e, const zoo_node *n) {
  int64_t N, V;
  rows_cols(e, n->in[0], &N, &V);
  if (want_int(e, "rows", N) || want_int(e, "V", V) || need(e, "softmax.cu", NULL, NULL)) return -1;
  char name[64];
  kernel_name(e, n, "argmax", name, sizeof name);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(256) %s(const float *__restrict__ x, "
                    "int *__restrict__ y) {\n"
                    "  zk_argmax_rows<%lld>(x, y, %lld);\n}\n",
                    name, (long long)V, (long long)N);
  zoo_step *s = launch(e, n, name, cdiv(N, 8), 256, 0);
  if (!s) return -1;
  arg_tensor(s, n->in[0]);
  arg_tensor(s, n->out[0]);
  return 0;
}

/* Rows and vocabulary of a loss over logits at input li with targets at ti. */
static int loss_dims(zoo_cuda_emit *e, const zoo_node *n, int li, int ti, int64_t *N, int64_t *V) {
  int64_t rows;
  rows_cols(e, n->in[li], &rows, V);
  *N = zoo_cuda_numel(e, n->in[ti]);
  if (*N != rows) return fail(e, "%lld targets for %lld rows of logits", (long long)*N, (long long)rows);
  if (want_int(e, "rows", *N) || want_int(e, "V", *V)) return -1;
  return need(e, "softmax.cu", "cross_entropy.cu", NULL);
}

/* zk_ce_count over the N targets (input ti; ignore_index i0) into the float
 * at scratch offset 0, for the gradient's scale. */
static int ce_count_step(zoo_cuda_emit *e, const zoo_node *n, int ti, int64_t N, int64_t scratch) {
  char name[64];
  kernel_name(e, n, "ce_count", name, sizeof name);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(1024) %s(const int *__restrict__ targets, "
                    "float *__restrict__ count) {\n"
                    "  zk_ce_count<%lld, %lld>(targets, count);\n}\n",
                    name, (long long)N, (long long)n->attrs.i[0]);
  zoo_step *s = launch(e, n, name, 1, 1024, 0);
  if (!s) return -1;
  arg_tensor(s, n->in[ti]);
  arg_scratch(s, 0);
  s->scratch_bytes = scratch;
  return 0;
}

/* The scratch of the training step's loss kernels: the labelled count, then
 * rowloss [N] at off_loss and hit [N] at off_hit. */
typedef struct ce_scratch {
  int64_t off_loss, off_hit, bytes;
} ce_scratch;

static ce_scratch ce_scratch_of(int64_t N) {
  ce_scratch c = {16, 16 + align16(N * 4), 0};
  c.bytes = c.off_hit + align16(N * 4);
  return c;
}

/* zk_ce_step_finish: loss (output 0) and metrics (output 1) from the rows'
 * losses and hits; the targets at input ti. */
static int ce_finish_step(zoo_cuda_emit *e, const zoo_node *n, int ti, int64_t N, const ce_scratch *c) {
  char name[64];
  kernel_name(e, n, "ce_step_finish", name, sizeof name);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(1024) %s(const float *__restrict__ rowloss, "
                    "const int *__restrict__ hit, const int *__restrict__ targets, float *__restrict__ loss, "
                    "float *__restrict__ metrics) {\n"
                    "  zk_ce_step_finish<%lld, %lld>(rowloss, hit, targets, loss, metrics);\n}\n",
                    name, (long long)N, (long long)n->attrs.i[0]);
  zoo_step *s = launch(e, n, name, 1, 1024, 0);
  if (!s) return -1;
  arg_scratch(s, c->off_loss);
  arg_scratch(s, c->off_hit);
  arg_tensor(s, n->in[ti]);
  arg_tensor(s, n->out[0]);
  arg_tensor(s, n->out[1]);
  s->scratch_bytes = c->bytes;
  return 0;
}

/* The plain `cross_entropy` and `accuracy`: two kernels, zk_<what>_rows (a
 * warp a row of logits, its value into a scratch row of `type`: the row's
 * loss, or whether it hit) and zk_<what>_finish (one block: their sum over the
 * labelled rows into out[0]). */
static int rows_then_finish(zoo_cuda_emit *e, const zoo_node *n, const char *what, const char *type) {
  int64_t N, V, ig = n->attrs.i[0];
  if (loss_dims(e, n, 0, 1, &N, &V)) return -1;
  int64_t scratch = align16(N * 4); /* a value a row, float or int */
  char name[64], kind[32];
  snprintf(kind, sizeof kind, "%s_rows", what);
  kernel_name(e, n, kind, name, sizeof name);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(256) %s(const float *__restrict__ logits, "
                    "const int *__restrict__ targets, %s *__restrict__ part) {\n"
                    "  zk_%s_rows<%lld, %lld>(logits, targets, part, %lld);\n}\n",
                    name, type, what, (long long)V, (long long)ig, (long long)N);
  zoo_step *s = launch(e, n, name, cdiv(N, 8), 256, 0);
  if (!s) return -1;
  arg_tensor(s, n->in[0]);
  arg_tensor(s, n->in[1]);
  arg_scratch(s, 0);
  s->scratch_bytes = scratch;

  snprintf(kind, sizeof kind, "%s_finish", what);
  kernel_name(e, n, kind, name, sizeof name);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(1024) %s(const %s *__restrict__ part, "
                    "const int *__restrict__ targets, float *__restrict__ out) {\n"
                    "  zk_%s_finish<%lld, %lld>(part, targets, out);\n}\n",
                    name, type, what, (long long)N, (long long)ig);
  s = launch(e, n, name, 1, 1024, 0);
  if (!s) return -1;
  arg_scratch(s, 0);
  arg_tensor(s, n->in[1]);
  arg_tensor(s, n->out[0]);
  s->scratch_bytes = scratch;
  return 0;
}

int zoo_cuda_cross_entropy(zoo_cuda_emit *e, const zoo_node *n) { return rows_then_finish(e, n, "ce", "float"); }

int zoo_cuda_cross_entropy_bwd(zoo_cuda_emit *e, const zoo_node *n) {
  int64_t N, V, ig = n->attrs.i[0];
  if (loss_dims(e, n, 1, 2, &N, &V)) return -1;
  int64_t scratch = 16; /* the labelled count, a float */
  if (ce_count_step(e, n, 2, N, scratch)) return -1;
  char name[64];
  zoo_step *s;

  kernel_name(e, n, "ce_bwd_rows", name, sizeof name);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(256) %s(const float *__restrict__ dloss, "
                    "const float *__restrict__ logits, const int *__restrict__ targets, "
                    "const float *__restrict__ count, float *__restrict__ dlogits) {\n"
                    "  zk_ce_bwd_rows<%lld, %lld>(dloss, logits, targets, count, dlogits, %lld);\n}\n",
                    name, (long long)V, (long long)ig, (long long)N);
  s = launch(e, n, name, cdiv(N, 8), 256, 0);
  if (!s) return -1;
  for (int k = 0; k < 3; k++) arg_tensor(s, n->in[k]);
  arg_scratch(s, 0);
  arg_tensor(s, n->out[0]);
  s->scratch_bytes = scratch;
  return 0;
}

/* Is t read by a node of the graph, or kept by the caller? */
static int wanted(const zoo_cuda_emit *e, int t) {
  if (e->keep && e->keep[t]) return 1;
  for (int i = 0; i < e->g->nnodes; i++)
    for (int k = 0; k < e->g->nodes[i].nin; k++)
      if (e->g->nodes[i].in[k] == t) return 1;
  return 0;
}

/* cross_entropy_step (logits, targets, dloss) -> loss, metrics, dlogits:
 * runtime/kernels/cross_entropy.cu. The evaluation graph, which ends before
 * the backward, reads no dlogits: then the rows kernel writes none (and needs
 * no count), and the planner gives dlogits no memory. */
int zoo_cuda_cross_entropy_step(zoo_cuda_emit *e, const zoo_node *n) {
  int64_t N, V, ig = n->attrs.i[0];
  if (loss_dims(e, n, 0, 1, &N, &V)) return -1;
  int grad = wanted(e, n->out[2]);
  ce_scratch cs = ce_scratch_of(N);
  char name[64];
  zoo_step *s;
  if (grad && ce_count_step(e, n, 1, N, cs.bytes)) return -1;

  /* rows of 1024 k floats (k <= 16): a block per row, the row in registers */
  int block_rows = V % 1024 == 0 && V <= 16384;
  kernel_name(e, n, "ce_step_rows", name, sizeof name);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(256) %s(const float *__restrict__ logits, "
                    "const int *__restrict__ targets, const float *__restrict__ dloss, "
                    "const float *__restrict__ count, float *__restrict__ rowloss, int *__restrict__ hit%s) {\n",
                    name, grad ? ", float *__restrict__ dlogits" : "");
  if (block_rows)
    zoo_strbuf_printf(&e->src,
                      "  zk_ce_step_row_block<%lld, %lld, %s>(logits, targets, dloss, count, rowloss, hit, %s);\n}\n",
                      (long long)V, (long long)ig, grad ? "true" : "false", grad ? "dlogits" : "nullptr");
  else
    zoo_strbuf_printf(&e->src,
                      "  zk_ce_step_rows<%lld, %lld, %s>(logits, targets, dloss, count, rowloss, hit, %s, %lld);\n}\n",
                      (long long)V, (long long)ig, grad ? "true" : "false", grad ? "dlogits" : "nullptr",
                      (long long)N);
  if (!(s = launch(e, n, name, block_rows ? N : cdiv(N, 8), 256, 0))) return -1;
  for (int k = 0; k < 3; k++) arg_tensor(s, n->in[k]);
  arg_scratch(s, 0);
  arg_scratch(s, cs.off_loss);
  arg_scratch(s, cs.off_hit);
  if (grad) arg_tensor(s, n->out[2]);
  s->scratch_bytes = cs.bytes;
  return ce_finish_step(e, n, 1, N, &cs);
}

/* linear_cross_entropy_step: runtime/kernels/linear_cross_entropy_step.cu.
 * Rows per block BM: the fewest waves of blocks over an H200's LCS_SMS SMs
 * times BM (below 24, smaller tiles lose more to shared-memory reads than they
 * save), the larger BM on a tie; ZOO_LCE_STEP_ROWS=16|32|48|64 in the
 * environment sets it (tests, tuning). Dynamic shared memory mirrors
 * zk_lcs_smem (the wrapper asserts it). */
#define LCS_SMS 132
static int64_t lcs_pow2(int64_t d) { return d <= 4 ? 4 : d <= 8 ? 8 : d <= 16 ? 16 : d <= 32 ? 32 : 64; }
static int64_t lcs_smem(int64_t D, int BM, int dh) {
  int tm = BM / 16, tmp = tm == 3 ? 4 : tm;
  return 4 * (D * 16 * tmp + 2 * lcs_pow2(D) * 132 + (dh ? BM * 132 : 0) + 11 * BM);
}

static int lcs_rows(zoo_cuda_emit *e, int64_t M) {
  const char *env = getenv("ZOO_LCE_STEP_ROWS");
  if (env && *env) {
    int bm = atoi(env);
    if (bm != 16 && bm != 32 && bm != 48 && bm != 64)
      return fail(e, "ZOO_LCE_STEP_ROWS=%s: expected 16, 32, 48 or 64", env);
    return bm;
  }
  int best = 64;
  int64_t best_cost = -1;
  for (int bm = 64; bm >= 16; bm -= 16) {
    int64_t cost = cdiv(cdiv(M, bm), LCS_SMS) * (bm > 24 ? bm : 24);
    if (best_cost < 0 || cost < best_cost) best = bm, best_cost = cost;
  }
  return best;
}

/* The fp32 form of linear_cross_entropy_step: zk_ce_count, zk_lcs_rows,
 * zk_ce_step_finish, with cross_entropy_step's scratch. The evaluation graph
 * reads neither dlogits nor dh: then the rows kernel makes the loss and the
 * hits only (no count, no second pass), and the planner gives them no memory. */
static int lcs_rows_form(zoo_cuda_emit *e, const zoo_node *n) {
  int64_t M = zoo_cuda_numel(e, n->in[2]), V = dim_of(e, n->in[1], 0), D = dim_of(e, n->in[1], 1);
  int64_t ig = n->attrs.i[0];
  if (need(e, "softmax.cu", "cross_entropy.cu", "linear_cross_entropy_step.cu")) return -1;
  int g = wanted(e, n->out[2]), dh = wanted(e, n->out[3]);
  int BM = lcs_rows(e, M);
  if (BM < 0) return -1;
  int64_t smem = lcs_smem(D, BM, dh);
  ce_scratch cs = ce_scratch_of(M);
  char name[64];
  zoo_step *s;
  if ((g || dh) && ce_count_step(e, n, 2, M, cs.bytes)) return -1;

  /* one block per SM: up to 255 registers (about 160 at D = 32, 220 at 64),
   * no spills; the rows per block fill the SMs */
  kernel_name(e, n, "lcs_rows", name, sizeof name);
  zoo_strbuf_printf(&e->src, "static_assert(4 * zk_lcs_smem<%lld, %d, %s>() == %lld, \"shared memory\");\n",
                    (long long)D, BM, dh ? "true" : "false", (long long)smem);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(256, 1) %s(const float *__restrict__ h, "
                    "const float *__restrict__ w, const int *__restrict__ targets, const float *__restrict__ dloss, "
                    "const float *__restrict__ count, float *__restrict__ rowloss, int *__restrict__ hit%s%s) {\n"
                    "  zk_lcs_rows<%lld, %lld, %d, %lld, %s, %s>(h, w, targets, dloss, count, rowloss, hit, %s, %s, "
                    "%lld);\n}\n",
                    name, g ? ", float *__restrict__ dlogits" : "",
                    dh ? ", float *__restrict__ dh" : "", (long long)D, (long long)V, BM, (long long)ig,
                    g ? "true" : "false", dh ? "true" : "false", g ? "dlogits" : "nullptr", dh ? "dh" : "nullptr",
                    (long long)M);
  if (!(s = launch(e, n, name, cdiv(M, BM), 256, (unsigned)smem))) return -1;
  for (int k = 0; k < 4; k++) arg_tensor(s, n->in[k]);
  arg_scratch(s, 0);
  arg_scratch(s, cs.off_loss);
  arg_scratch(s, cs.off_hit);
  if (g) arg_tensor(s, n->out[2]);
  if (dh) arg_tensor(s, n->out[3]);
  s->scratch_bytes = cs.bytes;
  return ce_finish_step(e, n, 2, M, &cs);
}

/* The tensor-core form's vocabulary groups NG: blocks take 128 rows and
 * NT / NG tiles of the vocabulary each, so that the grid is one wave of two
 * blocks an SM of an H200 (264) where the rows allow; ZOO_LCE_STEP_GROUPS=n
 * sets it, up to NT (tests, measuring). */
static int lctc_groups(zoo_cuda_emit *e, int64_t M, int64_t NT) {
  int64_t rt = cdiv(M, 128), ng = 264 / rt;
  const char *env = getenv("ZOO_LCE_STEP_GROUPS");
  if (env && *env) {
    ng = atoi(env);
    if (ng < 1) return fail(e, "ZOO_LCE_STEP_GROUPS=%s: expected a number of groups, 1 or more", env);
  }
  return (int)(ng < 1 ? 1 : ng > NT ? NT : ng);
}

/* The tensor-core form (runtime/kernels/linear_cross_entropy_tc.cu): zk_ce_count,
 * zk_lctc_stats, zk_lctc_lse, zk_lctc_grad, zk_ce_step_finish, and a GEMM step
 * dh = dlogits w. Scratch: cross_entropy_step's (count, rowloss, hit), then
 * pm, ps, pb, pa [NG][M], xt [M], lse [M]. The evaluation graph's (no dlogits,
 * no dh) has no count, gradient or GEMM. Dynamic shared memory mirrors
 * zk_lctc_smem (the wrappers assert it). */
static int lctc_form(zoo_cuda_emit *e, const zoo_node *n) {
  int64_t M = zoo_cuda_numel(e, n->in[2]), V = dim_of(e, n->in[1], 0), D = dim_of(e, n->in[1], 1);
  int64_t ig = n->attrs.i[0], NT = V / 128, rt = cdiv(M, 128), smem = 4 * 3 * 128 * ((D + 7) / 8 * 8 + 4);
  int g = wanted(e, n->out[2]), dh = wanted(e, n->out[3]);
  if (dh && !g)
    return fail(e, "linear_cross_entropy_step: the tensor-core form makes dh from dlogits, which the graph "
                   "does not keep");
  int NG = lctc_groups(e, M, NT);
  if (NG < 0 || need(e, "softmax.cu", "cross_entropy.cu", "linear_cross_entropy_tc.cu")) return -1;
  ce_scratch cs = ce_scratch_of(M);
  /* pm, ps, pb, pa [NG][M] and xt [M], part bytes apart (NG >= 1), then lse [M] */
  int64_t part = align16(NG * M * 4), off_pm = cs.bytes, off_lse = off_pm + 5 * part;
  cs.bytes = off_lse + align16(M * 4);
  char name[64];
  zoo_step *s;
  if (g && ce_count_step(e, n, 2, M, cs.bytes)) return -1;

  kernel_name(e, n, "lctc_stats", name, sizeof name);
  zoo_strbuf_printf(&e->src, "static_assert(4 * zk_lctc_smem(%lld) == %lld, \"shared memory\");\n", (long long)D,
                    (long long)smem);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(256, 2) %s(const float *__restrict__ h, "
                    "const float *__restrict__ w, const int *__restrict__ targets, float *__restrict__ pm, "
                    "float *__restrict__ ps, float *__restrict__ pb, int *__restrict__ pa, float *__restrict__ xt) {\n"
                    "  zk_lctc_stats<%lld, %lld, %lld, %lld, %d>(h, w, targets, pm, ps, pb, pa, xt);\n}\n",
                    name, (long long)D, (long long)V, (long long)ig, (long long)M, NG);
  if (!(s = launch(e, n, name, rt, 256, (unsigned)smem))) return -1;
  s->grid[1] = (unsigned)NG;
  for (int k = 0; k < 3; k++) arg_tensor(s, n->in[k]);
  for (int k = 0; k < 5; k++) arg_scratch(s, off_pm + k * part); /* pm, ps, pb, pa, xt */
  s->scratch_bytes = cs.bytes;

  kernel_name(e, n, "lctc_lse", name, sizeof name);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(256) %s(const float *__restrict__ pm, "
                    "const float *__restrict__ ps, const float *__restrict__ pb, const int *__restrict__ pa, "
                    "const float *__restrict__ xt, const int *__restrict__ targets, float *__restrict__ lse, "
                    "float *__restrict__ rowloss, int *__restrict__ hit) {\n"
                    "  zk_lctc_lse<%d, %lld, %lld, %lld>(pm, ps, pb, pa, xt, targets, lse, rowloss, hit);\n}\n",
                    name, NG, (long long)V, (long long)ig, (long long)M);
  if (!(s = launch(e, n, name, cdiv(8 * M, 256), 256, 0))) return -1;
  for (int k = 0; k < 5; k++) arg_scratch(s, off_pm + k * part); /* pm, ps, pb, pa, xt */
  arg_tensor(s, n->in[2]);
  arg_scratch(s, off_lse);
  arg_scratch(s, cs.off_loss);
  arg_scratch(s, cs.off_hit);
  s->scratch_bytes = cs.bytes;

  if (g) {
    kernel_name(e, n, "lctc_grad", name, sizeof name);
    zoo_strbuf_printf(&e->src,
                      "extern \"C\" __global__ void __launch_bounds__(256, 2) %s(const float *__restrict__ h, "
                      "const float *__restrict__ w, const int *__restrict__ targets, const float *__restrict__ "
                      "dloss, const float *__restrict__ count, const float *__restrict__ lse, float *__restrict__ "
                      "dlogits) {\n"
                      "  zk_lctc_grad<%lld, %lld, %lld, %lld, %d>(h, w, targets, dloss, count, lse, dlogits);\n}\n",
                      name, (long long)D, (long long)V, (long long)ig, (long long)M, NG);
    if (!(s = launch(e, n, name, rt, 256, (unsigned)smem))) return -1;
    s->grid[1] = (unsigned)NG;
    for (int k = 0; k < 4; k++) arg_tensor(s, n->in[k]);
    arg_scratch(s, 0);
    arg_scratch(s, off_lse);
    arg_tensor(s, n->out[2]);
    s->scratch_bytes = cs.bytes;
  }
  if (ce_finish_step(e, n, 2, M, &cs)) return -1;
  if (dh) { /* dh [M, D] = dlogits [M, V] w [V, D], after the steps that share the scratch (plan.c gives a
               run of one node's steps one area) */
    s = zoo_cuda_step(e, ZOO_STEP_GEMM, node_of(e, n));
    zoo_gemm *gm = &s->gemm;
    gm->a = n->out[2], gm->b = n->in[1], gm->c = n->out[3], gm->bias = -1;
    gm->trans_a = gm->trans_b = 0;
    gm->m = M, gm->n = D, gm->k = V, gm->batch = 1;
    gm->alpha = 1, gm->beta = 0;
    zoo_strbuf_printf(&e->src, "\n// GEMM (cuBLASLt): t%d = t%d t%d, the rows' gradient of node %d\n", gm->c, gm->a,
                      gm->b, node_of(e, n));
    if (zoo_cuda_gemm_own(e, s)) return -1;
  }
  return 0;
}

/* linear_cross_entropy_step (h, w, targets, dloss) -> loss, metrics, dlogits,
 * dh: with TF32 products allowed (the emit's tf32) the tensor-core form, else
 * the fp32 rows form; ZOO_LCE_STEP_FORM=rows|tc sets it (tests, measuring). */
int zoo_cuda_linear_cross_entropy_step(zoo_cuda_emit *e, const zoo_node *n) {
  int64_t M = zoo_cuda_numel(e, n->in[2]), V = dim_of(e, n->in[1], 0), D = dim_of(e, n->in[1], 1);
  if (D % 4 != 0 || D > 64 || V % 128 != 0)
    return fail(e, "linear_cross_entropy_step: the kernel needs D a multiple of 4 up to 64 and V a multiple "
                   "of 128 (D = %lld, V = %lld)",
                (long long)D, (long long)V);
  if (want_int(e, "rows", M) || want_int(e, "V", V)) return -1;
  const char *form = getenv("ZOO_LCE_STEP_FORM");
  if (form && *form && strcmp(form, "rows") && strcmp(form, "tc"))
    return fail(e, "ZOO_LCE_STEP_FORM=%s: expected rows or tc", form);
  int tc = form && *form ? !strcmp(form, "tc") : e->tf32;
  return tc ? lctc_form(e, n) : lcs_rows_form(e, n);
}

/* accuracy (h, w, targets): the labelled rows compacted as for
 * linear_cross_entropy, a hit per row from the argmax of its logits, then the
 * counts (runtime/kernels/linear_cross_entropy.cu). */
static int accuracy_head(zoo_cuda_emit *e, const zoo_node *n) {
  lce_cfg c;
  if (lce_setup(e, n, 0, &c) || lce_compact(e, n, 0, &c)) return -1;
  char name[64];
  kernel_name(e, n, "lce_argmax", name, sizeof name);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(256) %s(const float *__restrict__ h, "
                    "const float *__restrict__ w, const int *__restrict__ targets, const int *__restrict__ idx, "
                    "const int *__restrict__ count, float *__restrict__ rows) {\n"
                    "  zk_lce_argmax_rows<%lld, %lld, %d>(h, w, targets, idx, count, rows);\n}\n",
                    name, (long long)c.D, (long long)c.V, LCE_RT);
  zoo_step *s = launch(e, n, name, cdiv(c.N, LCE_RT), 256, 0);
  if (!s) return -1;
  for (int k = 0; k < 3; k++) arg_tensor(s, n->in[k]);
  arg_scratch(s, 0);
  arg_scratch(s, c.off_count);
  arg_scratch(s, c.off_rows);
  s->scratch_bytes = c.scratch;

  kernel_name(e, n, "lce_acc_finish", name, sizeof name);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(1024) %s(const float *__restrict__ rows, "
                    "const int *__restrict__ count, float *__restrict__ out) {\n"
                    "  zk_lce_acc_finish<%lld>(rows, count, out);\n}\n",
                    name, (long long)c.N);
  s = launch(e, n, name, 1, 1024, 0);
  if (!s) return -1;
  arg_scratch(s, c.off_rows);
  arg_scratch(s, c.off_count);
  arg_tensor(s, n->out[0]);
  s->scratch_bytes = c.scratch;
  return 0;
}

int zoo_cuda_accuracy(zoo_cuda_emit *e, const zoo_node *n) {
  return n->nin == 3 ? accuracy_head(e, n) : rows_then_finish(e, n, "acc", "int");
}

/* ---------------------------------------------------------------------------
 * embedding, cumsum: runtime/kernels/embedding.cu, cumsum.cu */

int zoo_cuda_embedding(zoo_cuda_emit *e, const zoo_node *n) {
  int w = n->in[0], ids = n->in[1];
  int64_t V = dim_of(e, w, 0), D = dim_of(e, w, 1), N = zoo_cuda_numel(e, ids);
  if (want_int(e, "V", V) || want_int(e, "D", D) || need(e, "embedding.cu", NULL, NULL)) return -1;
  int by4 = D % 4 == 0; /* 16-byte rows (see embedding.cu) */
  char name[64];
  kernel_name(e, n, "embedding_fwd", name, sizeof name);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(256) %s(const float *__restrict__ w, "
                    "const int *__restrict__ ids, float *__restrict__ y) {\n"
                    "  zk_embedding_fwd%s<%lld, %lld>(w, ids, y, %lldLL);\n}\n",
                    name, by4 ? "4" : "", (long long)V, (long long)D, (long long)N);
  zoo_step *s = launch(e, n, name, cdiv(N * D, by4 ? 1024 : 256), 256, 0);
  if (!s) return -1;
  arg_tensor(s, w);
  arg_tensor(s, ids);
  arg_tensor(s, n->out[0]);
  return 0;
}

/* embedding_bwd by atomicAdd (embedding.cu: exact when the ids are distinct). */
static int embedding_bwd_scatter(zoo_cuda_emit *e, const zoo_node *n, int64_t V, int64_t D, int64_t N) {
  /* blocks of about 16 rows per thread group (see embedding.cu) */
  int64_t groups = 256 / (D < 256 ? D : 256), P = cdiv(N, 16 * groups);
  if (P < 1) P = 1;
  char name[64];
  kernel_name(e, n, "embedding_bwd", name, sizeof name);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(256) %s(const float *__restrict__ dy, "
                    "const int *__restrict__ ids, float *__restrict__ dw) {\n"
                    "  zk_embedding_bwd<%lld, %lld, %lld>(dy, ids, dw, %lldLL);\n}\n",
                    name, (long long)V, (long long)D, (long long)P, (long long)N);
  zoo_step *s = launch(e, n, name, P, 256, 0);
  if (!s) return -1;
  arg_tensor(s, n->in[0]);
  arg_tensor(s, n->in[1]);
  arg_tensor(s, n->out[0]);
  return 0;
}

#define EMB_R 1024        /* embedding.cu's ZK_EMB_R */
#define EMB_S 64          /* ZK_EMB_S */
#define EMB_MAX_V 11248   /* ZK_EMB_MAX_V */

/* embedding_bwd in a fixed order: count, offsets, place, sum, join
 * (embedding.cu). ZOO_EMB_SCATTER=1 in the environment takes the atomicAdd
 * scatter instead (faster by about 10 us a step at rebased 32/48, not
 * reproducible), for measuring: simple_mqar's final accuracy over seeds 44 to
 * 56 came out the same either way within MQAR's spread (device runs 6 to 9 of
 * session 5: 0.913 to 0.986 with this form, 0.841 to 0.993 with the scatter). */
int zoo_cuda_embedding_bwd(zoo_cuda_emit *e, const zoo_node *n) {
  int dw = n->out[0], ids = n->in[1];
  int64_t V = dim_of(e, dw, 0), D = dim_of(e, dw, 1), N = zoo_cuda_numel(e, ids);
  if (want_int(e, "V", V) || want_int(e, "D", D) || need(e, "embedding.cu", NULL, NULL)) return -1;
  if (N > 2147483647LL) return fail(e, "embedding_bwd: %lld rows (at most 2^31 - 1)", (long long)N);
  zero_step(e, n, dw);
  int p = e->g->tensors[ids].producer;
  if ((p >= 0 && e->g->nodes[p].op == ZOO_OP_ARANGE) || V > EMB_MAX_V || zoo_env_on("ZOO_EMB_SCATTER"))
    return embedding_bwd_scatter(e, n, V, D, N);

  int64_t C = cdiv(N, EMB_R), NP = cdiv(N, EMB_S);
  int64_t off_total = align16(C * V * 4), off_start = off_total + align16(V * 4);
  int64_t off_sorted = off_start + align16((V + 1) * 4), off_end = off_sorted + align16(N * 4);
  int64_t off_first = off_end + align16(NP * 4), off_last = off_first + align16(NP * D * 4);
  int64_t scratch = off_last + align16(NP * D * 4);
  /* The five kernels: each one's call, parameters, grid and arguments
   * (tensors by name: DY, IDS, DW; scratch areas by offset). */
  enum { DY = -1, IDS = -2, DW = -3, END = -4 };
  long long v = V, d = D, rows = N, chunks = C;
  char call[5][160];
  snprintf(call[0], sizeof call[0], "zk_emb_count<%lld>(ids, cnt, %lldLL)", v, rows);
  snprintf(call[1], sizeof call[1], "zk_emb_offsets<%lld, %lld>(cnt, total)", v, chunks);
  snprintf(call[2], sizeof call[2], "zk_emb_place<%lld>(ids, cnt, total, start, sorted, %lldLL)", v, rows);
  snprintf(call[3], sizeof call[3], "zk_emb_sum<%lld, %lld>(dy, ids, sorted, start, first, last, end, dw, %lldLL)",
           v, d, rows);
  snprintf(call[4], sizeof call[4], "zk_emb_join<%lld, %lld>(start, first, last, end, dw)", v, d);
  const struct {
    const char *base, *params;
    int64_t grid;
    int64_t args[9];
  } ks[] = {
      {"emb_count", "const int *__restrict__ ids, int *__restrict__ cnt", C, {IDS, 0, END}},
      {"emb_offsets", "int *__restrict__ cnt, int *__restrict__ total", cdiv(V, 256), {0, off_total, END}},
      {"emb_place",
       "const int *__restrict__ ids, const int *__restrict__ cnt, const int *__restrict__ total, "
       "int *__restrict__ start, int *__restrict__ sorted",
       C, {IDS, 0, off_total, off_start, off_sorted, END}},
      {"emb_sum",
       "const float *__restrict__ dy, const int *__restrict__ ids, const int *__restrict__ sorted, "
       "const int *__restrict__ start, float *__restrict__ first, float *__restrict__ last, int *__restrict__ end, "
       "float *__restrict__ dw",
       cdiv(NP, 8), {DY, IDS, off_sorted, off_start, off_first, off_last, off_end, DW, END}},
      {"emb_join",
       "const int *__restrict__ start, const float *__restrict__ first, const float *__restrict__ last, "
       "const int *__restrict__ end, float *__restrict__ dw",
       NP, {off_start, off_first, off_last, off_end, DW, END}},
  };
  /* count, offsets and place need only the ids: when those are a graph input
   * (the tokens), they run first, beside the forward */
  int early = of_inputs(e, ids);
  for (size_t k = 0; k < sizeof ks / sizeof ks[0]; k++) {
    char name[64];
    kernel_name(e, n, ks[k].base, name, sizeof name);
    zoo_strbuf_printf(&e->src, "extern \"C\" __global__ void __launch_bounds__(256) %s(%s) {\n  %s;\n}\n", name,
                      ks[k].params, call[k]);
    zoo_step *s = launch(e, n, name, ks[k].grid, 256, 0);
    if (!s) return -1;
    for (const int64_t *a = ks[k].args; *a != END; a++) {
      if (*a == DY) arg_tensor(s, n->in[0]);
      else if (*a == IDS) arg_tensor(s, ids);
      else if (*a == DW) arg_tensor(s, dw);
      else arg_scratch(s, *a);
    }
    s->scratch_bytes = scratch;
    s->early = early && k < 3;
  }
  return 0;
}

/* ---------------------------------------------------------------------------
 * zoo's own GEMM: runtime/kernels/gemm.cu (see zoo_cuda_gemm_own in
 * codegen_cuda.h). Tiles by the width of C: 256 x 32 for N <= 32 (a row of
 * blocks covers C's width), 64 x 64 up to N = 256, 128 x 64 above; the
 * fastest of the configurations tried at those shapes. For rebased 32/48's
 * logits (m 6144, n 8192, k 32) on the H200 (session 6, device run 7):
 * 128 x 64 0.121 ms, the same with 3 blocks an SM asked of ptxas 0.119,
 * 64 x 64 0.128, 256 x 64 0.149, 128 x 128 0.151, 64 x 128 0.204; cuBLASLt's
 * best 0.135. Over a longer K it loses: at m 24576, n 32, k 192 (the q and k
 * projections' input gradients at 32/48) 0.0195 ms in 128 x 32 tiles against
 * cuBLASLt's 0.0140 (device run 10). A grid of 264 blocks, each making
 * several tiles and reading the next one's operands during the current one's
 * last stage, was no faster (0.1237 against 0.1247 ms at the logits above; at
 * k 64, 0.304 against cuBLASLt's 0.258; runtime/PERFORMANCE.md, session 20). */
/* The weight gradients' form, C[M, N] = A^T B over a long K (zk_wgrad), in
 * 32 x 32 tiles split along K into S blocks each: about two blocks per SM of
 * an H200 (264 in all), at least 2 and each with at least 128 rows; groups
 * of GS = ceil(sqrt S) for the reduction. At rebased 32/48's 32 x 24 over
 * 24576 rows: 192 blocks of 128 rows, 14 groups. Offered where it won on
 * the H200 (session 6, device runs 3 and 4, ZOO_GEMM_TUNE_LOG=1 zoorun bench
 * --quick): over 24576 rows 0.014 ms against cuBLASLt's 0.016 at 32 x 24 and
 * 32 x 32, 0.019 against 0.024 at 192 x 32; it lost over 65536 rows (0.030
 * against 0.026 at 64 x 60, 0.062 against 0.054 at 192 x 64) and for the
 * tied head's 8192 x 32 over 6144 rows (0.116 against 0.098). Nor did
 * zk_gemm's larger tiles (256 x 32, 128 x 64) win the head's gradients with K
 * split over about 264 blocks and the same reduction (session 17,
 * .gpu/s17run3.sh, ZOO_GEMM_TUNE_LOG=1): dh at 6144 x 32 over 8192, 0.161 ms
 * against cuBLASLt's 0.112; dw at 8192 x 32 over 6144, 0.156 against 0.096;
 * at 64 / 128's 8192 x 64 over 8192, 0.279 and 0.276 against 0.203 and
 * 0.219. So no split form is offered. */
static int gemm_own_wgrad(zoo_cuda_emit *e, zoo_step *s) {
  const zoo_gemm *gm = &s->gemm;
  int64_t tiles = cdiv(gm->n, 32) * cdiv(gm->m, 32);
  int64_t S = cdiv(264, tiles) > 2 ? cdiv(264, tiles) : 2;
  if (S > gm->k / 128) S = gm->k / 128;
  if (S > 1024) S = 1024;
  if (S < 2) return 0;
  int64_t GS = (int64_t)ceil(sqrt((double)S)), NG = cdiv(S, GS);
  if (need(e, "gemm.cu", NULL, NULL)) return -1;
  char name[64];
  snprintf(name, sizeof name, "zoo_gemm_%d", e->uid++);
  zoo_strbuf_printf(&e->src, "\n// %s: zoo's kernel for GEMM step %d, in %lld blocks along K (the backend times it "
                    "against cuBLASLt)\n", name, e->nsteps - 1, (long long)S);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(256) %s(const float *__restrict__ a, "
                    "const float *__restrict__ b, const float *__restrict__ bias, float *__restrict__ c, "
                    "float *__restrict__ part, unsigned *__restrict__ counters) {\n"
                    "  zk_wgrad<%lld, %lld, %lld, %lld, %lld>(a, b, c, part, counters);\n}\n",
                    name, (long long)gm->m, (long long)gm->n, (long long)gm->k, (long long)S, (long long)GS);
  s->func = zoo_cuda_strdup(e, name);
  s->grid[0] = (unsigned)cdiv(gm->n, 32), s->grid[1] = (unsigned)cdiv(gm->m, 32), s->grid[2] = (unsigned)S;
  s->block[0] = 256, s->block[1] = s->block[2] = 1;
  s->args[s->nargs++] = (zoo_arg){ZOO_ARG_SCRATCH, -1, 0, 0, 0};
  s->scratch_bytes = S * gm->m * gm->n * (int64_t)sizeof(float);
  s->args[s->nargs++] = (zoo_arg){ZOO_ARG_COUNTER, -1, e->ncounters, 0, (int)(tiles * (NG + 1))};
  e->ncounters += (int)(tiles * (NG + 1));
  return 0;
}

int zoo_cuda_gemm_own(zoo_cuda_emit *e, zoo_step *s) {
  const zoo_gemm *gm = &s->gemm;
  if (gm->batch == 1 && gm->trans_a && !gm->trans_b && gm->bias < 0 && gm->k >= 2048 && gm->k <= 32768 &&
      gm->m * gm->n <= 65536 && gm->beta == 0 && gm->alpha == 1)
    return gemm_own_wgrad(e, s);
  if (gm->batch != 1 || gm->trans_a || gm->k > 32 || gm->k < 1 || gm->beta != 0 || gm->alpha != 1) return 0;
  if (gm->m > 2147483647LL || gm->n > 2147483647LL) return 0;
  int bm, bn, tm, tn;
  if (gm->n <= 32) bm = 256, bn = 32, tm = 8, tn = 4;
  else if (gm->n <= 256) bm = 64, bn = 64, tm = 4, tn = 4;
  else bm = 128, bn = 64, tm = 8, tn = 4;
  if (need(e, "gemm.cu", NULL, NULL)) return -1;
  char name[64];
  snprintf(name, sizeof name, "zoo_gemm_%d", e->uid++);
  zoo_strbuf_printf(&e->src, "\n// %s: zoo's kernel for GEMM step %d (the backend times it against cuBLASLt)\n",
                    name, e->nsteps - 1);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(256) %s(const float *__restrict__ a, "
                    "const float *__restrict__ b, const float *__restrict__ bias, float *__restrict__ c) {\n"
                    "  zk_gemm<%lld, %lld, %lld, 0, %d, %d, %d, 16, %d, %d, 1, %d>(a, b, bias, c);\n}\n",
                    name, (long long)gm->m, (long long)gm->n, (long long)gm->k, gm->trans_b, bm, bn, tm, tn,
                    gm->bias >= 0);
  s->func = strdup(name);
  s->grid[0] = (unsigned)cdiv(gm->n, bn), s->grid[1] = (unsigned)cdiv(gm->m, bm), s->grid[2] = 1;
  s->block[0] = 256, s->block[1] = s->block[2] = 1;
  return 0;
}

/* ---------------------------------------------------------------------------
 * label_rows, gather_rows, scatter_rows: runtime/kernels/rows.cu */

int zoo_cuda_label_rows(zoo_cuda_emit *e, const zoo_node *n) {
  int64_t N = zoo_cuda_numel(e, n->in[0]), M = zoo_cuda_numel(e, n->out[0]);
  int64_t ig = n->attrs.i[0];
  if (ig < -2147483647LL || ig > 2147483647LL) return fail(e, "label_rows: ignore_index %lld", (long long)ig);
  if (need(e, "rows.cu", NULL, NULL)) return -1;
  /* tiles of 256 threads x 4 positions (see rows.cu) */
  const int threads = 256, per = 4, tile = threads * per;
  int64_t tiles = cdiv(N, tile);
  char name[64];
  kernel_name(e, n, "label_count", name, sizeof name);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(%d) %s(const int *__restrict__ targets, "
                    "int *__restrict__ counts) {\n"
                    "  zk_label_count<%lldLL, %lld, %d>(targets, counts);\n}\n",
                    threads, name, (long long)N, (long long)ig, tile);
  /* both read only the targets: when those are a graph input, early steps */
  int early = of_inputs(e, n->in[0]);
  zoo_step *s = launch(e, n, name, tiles, (unsigned)threads, 0);
  if (!s) return -1;
  arg_tensor(s, n->in[0]);
  arg_scratch(s, 0);
  s->scratch_bytes = align16(tiles * 4);
  s->early = early;

  kernel_name(e, n, "label_write", name, sizeof name);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(%d) %s(const int *__restrict__ targets, "
                    "const int *__restrict__ counts, int *__restrict__ idx, int *__restrict__ pos, "
                    "int *__restrict__ tc) {\n"
                    "  zk_label_write<%lldLL, %lldLL, %lld, %d, %d, %lldLL>(targets, counts, idx, pos, tc);\n}\n",
                    threads, name, (long long)N, (long long)M, (long long)ig, tile, per, (long long)tiles);
  s = launch(e, n, name, tiles, (unsigned)threads, 0);
  if (!s) return -1;
  arg_tensor(s, n->in[0]);
  arg_scratch(s, 0);
  for (int k = 0; k < 3; k++) arg_tensor(s, n->out[k]);
  s->scratch_bytes = align16(tiles * 4);
  s->early = early;
  return 0;
}

/* gather_rows (x, idx, pos) -> y and scatter_rows (dy, pos) -> dx: one thread
 * per element written */
static int rows_copy(zoo_cuda_emit *e, const zoo_node *n, int gather) {
  int wide = gather ? n->in[0] : n->out[0], narrow = gather ? n->out[0] : n->in[0];
  int64_t D = dim_of(e, narrow, 1), M = dim_of(e, narrow, 0), N = zoo_cuda_numel(e, wide) / D;
  if (want_int(e, "D", D) || need(e, "rows.cu", NULL, NULL)) return -1;
  char name[64];
  kernel_name(e, n, gather ? "gather_rows" : "scatter_rows", name, sizeof name);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(256) %s(const float *__restrict__ src, "
                    "const int *__restrict__ map, float *__restrict__ dst) {\n"
                    "  zk_%s<%lldLL, %lldLL, %lld>(src, map, dst);\n}\n",
                    name, gather ? "gather_rows" : "scatter_rows", (long long)N, (long long)M,
                    (long long)D);
  zoo_step *s = launch(e, n, name, cdiv((gather ? M : N) * D, 256), 256, 0);
  if (!s) return -1;
  arg_tensor(s, n->in[0]);
  arg_tensor(s, n->in[1]);
  arg_tensor(s, n->out[0]);
  return 0;
}

int zoo_cuda_gather_rows(zoo_cuda_emit *e, const zoo_node *n) { return rows_copy(e, n, 1); }
int zoo_cuda_scatter_rows(zoo_cuda_emit *e, const zoo_node *n) { return rows_copy(e, n, 0); }

int zoo_cuda_cumsum(zoo_cuda_emit *e, const zoo_node *n) {
  int x = n->in[0], nd = ndim_of(e, x);
  int axis = (int)n->attrs.i[0];
  if (axis < 0) axis += nd;
  if (axis < 0 || axis >= nd) return fail(e, "cumsum: axis %lld of a rank-%d tensor", (long long)n->attrs.i[0], nd);
  int64_t outer = 1, inner = 1, L = dim_of(e, x, axis);
  for (int k = 0; k < axis; k++) outer *= dim_of(e, x, k);
  for (int k = axis + 1; k < nd; k++) inner *= dim_of(e, x, k);
  if (need(e, "cumsum.cu", NULL, NULL)) return -1;
  char name[64];
  kernel_name(e, n, "cumsum", name, sizeof name);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(256) %s(const float *__restrict__ x, "
                    "float *__restrict__ y) {\n"
                    "  zk_cumsum<%lldLL, %lldLL, %lldLL>(x, y);\n}\n",
                    name, (long long)outer, (long long)L, (long long)inner);
  zoo_step *s = launch(e, n, name, cdiv(outer * inner, 256), 256, 0);
  if (!s) return -1;
  arg_tensor(s, x);
  arg_tensor(s, n->out[0]);
  return 0;
}
