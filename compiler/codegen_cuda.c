/* codegen_cuda.c: CUDA C for the generic ops, and the driver over a fused graph.
 *
 * Emitted here: every elementwise op (fused groups: one kernel per group, the
 * values of a group in registers, each op a C expression from ew_exprs[]; an
 * inline stencil of the group through its inline form, and a group that is a
 * row op's prologue as a lambda handed to that op's kernel: fuse.h),
 * dropout (the counter RNG of runtime/rng.h, pasted into the module), sum, mean
 * and reduce_to (a two-stage column/row reduction), the movement ops (reshape is
 * an alias, the rest one gather kernel each), linear and matmul (GEMM steps for
 * cuBLASLt, the bias as its epilogue) and arange. The intrinsics' emitters live
 * in codegen_intrinsics.c.
 *
 * Generated code is meant to be read: shapes are literal constants, each kernel
 * starts with a comment naming its nodes and their .zoo spans, and values are
 * named after the graph's tensor ids (v12 is tensor 12).
 */
#include "codegen_cuda.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuse.h"

/* runtime/rng.h's text (embedded into libzoo by runtime/kernels/embed.sh), so
 * the module draws dropout masks with the very function the CPU reference uses. */
const char *zoo_kernel_source(const char *name);

/* ---------------------------------------------------------------------------
 * Buffers and steps */

static void *xrealloc(void *p, size_t n) {
  p = realloc(p, n ? n : 1);
  if (!p) abort(); /* out of memory */
  return p;
}

static void strbuf_reserve(zoo_strbuf *b, size_t extra) {
  if (b->len + extra + 1 <= b->cap) return;
  size_t cap = b->cap ? b->cap : 4096;
  while (cap < b->len + extra + 1) cap *= 2;
  b->s = xrealloc(b->s, cap);
  b->cap = cap;
}

void zoo_strbuf_printf(zoo_strbuf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  strbuf_reserve(b, (size_t)n);
  va_start(ap, fmt);
  vsnprintf(b->s + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}

void zoo_strbuf_puts(zoo_strbuf *b, const char *s) {
  size_t n = strlen(s);
  strbuf_reserve(b, n);
  memcpy(b->s + b->len, s, n + 1);
  b->len += n;
}

void zoo_strbuf_free(zoo_strbuf *b) {
  free(b->s);
  memset(b, 0, sizeof *b);
}

zoo_step *zoo_cuda_step(zoo_cuda_emit *e, zoo_step_kind kind, int node) {
  if (e->nsteps == e->steps_cap) {
    e->steps_cap = e->steps_cap ? 2 * e->steps_cap : 64;
    e->steps = xrealloc(e->steps, (size_t)e->steps_cap * sizeof *e->steps);
  }
  zoo_step *s = &e->steps[e->nsteps++];
  memset(s, 0, sizeof *s);
  s->kind = kind;
  s->node = node;
  s->gemm.bias = -1;
  s->gemm.a = s->gemm.b = s->gemm.c = -1;
  return s;
}

const char *zoo_cuda_strdup(zoo_cuda_emit *e, const char *s) {
  if (e->nowned == e->owned_cap) {
    e->owned_cap = e->owned_cap ? 2 * e->owned_cap : 64;
    e->owned = xrealloc(e->owned, (size_t)e->owned_cap * sizeof *e->owned);
  }
  char *copy = strdup(s);
  if (!copy) abort();
  e->owned[e->nowned++] = copy;
  return copy;
}

void zoo_cuda_emit_free(zoo_cuda_emit *e) {
  for (int i = 0; i < e->nowned; i++) free(e->owned[i]);
  free(e->owned);
  e->owned = NULL;
  e->nowned = e->owned_cap = 0;
  zoo_strbuf_free(&e->src);
  free(e->steps);
  free(e->alias);
  free(e->stored);
  e->steps = NULL;
  e->alias = NULL;
  e->stored = NULL;
  e->nsteps = e->steps_cap = 0;
}

/* Sets e->err and returns -1. */
__attribute__((format(printf, 2, 3))) static int emit_fail(zoo_cuda_emit *e, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->err, sizeof e->err, fmt, ap);
  va_end(ap);
  return -1;
}

/* ---------------------------------------------------------------------------
 * Shapes */

int64_t zoo_cuda_dim(const zoo_cuda_emit *e, int t, int axis) {
  return zoo_dim_eval(e->g->tensors[t].type.dim[axis], e->sym);
}

int64_t zoo_cuda_numel(const zoo_cuda_emit *e, int t) {
  return zoo_type_numel(&e->g->tensors[t].type, e->sym);
}

/* Concrete dims of tensor t; returns ndim. */
static int dims_of(const zoo_cuda_emit *e, int t, int64_t *d) {
  const zoo_type *ty = &e->g->tensors[t].type;
  for (int k = 0; k < ty->ndim; k++) d[k] = zoo_dim_eval(ty->dim[k], e->sym);
  return ty->ndim;
}

static const char *ctype(const zoo_cuda_emit *e, int t) {
  return e->g->tensors[t].type.dtype == ZOO_I32 ? "int" : "float";
}

static int node_index(const zoo_cuda_emit *e, const zoo_node *n) { return (int)(n - e->g->nodes); }

void zoo_cuda_comment_node(zoo_cuda_emit *e, int node) {
  const zoo_node *n = &e->g->nodes[node];
  char ty[160];
  zoo_type_str(e->g, &e->g->tensors[n->out[0]].type, ty, sizeof ty);
  if (n->span.src)
    zoo_strbuf_printf(&e->src, "//   %-14s -> %-22s %s:%d:%d\n", zoo_ops[n->op].name, ty,
                      n->span.src->path, n->span.line, n->span.col);
  else
    zoo_strbuf_printf(&e->src, "//   %-14s -> %s\n", zoo_ops[n->op].name, ty);
}

/* The type of an index over n elements. */
static const char *index_type(int64_t n) { return n < 2147483647LL ? "int" : "long long"; }

/* Blocks for a grid-stride loop over n elements with 256 threads a block. */
static unsigned grid_for(int64_t n) {
  int64_t b = (n + 255) / 256;
  if (b > 8192) b = 8192;
  return (unsigned)(b < 1 ? 1 : b);
}

/* A float literal that reads back exactly (NVRTC sees "0.100000001f"). */
static void float_lit(char *buf, size_t n, double v) {
  float f = (float)v;
  if (isinf(f)) snprintf(buf, n, "%s__int_as_float(0x7f800000)", f < 0 ? "-" : "");
  else if (isnan(f)) snprintf(buf, n, "__int_as_float(0x7fc00000)");
  else {
    snprintf(buf, n, "%.9g", (double)f);
    if (!strpbrk(buf, ".eE")) strncat(buf, ".0", n - strlen(buf) - 1);
    strncat(buf, "f", n - strlen(buf) - 1);
  }
}

/* An axis of an index map: `size` positions `stride` elements apart. */
typedef struct axis {
  int64_t size, stride;
} axis;

/* Merges neighbouring axes that walk memory as one (or are both broadcast),
 * innermost first in `in` (count n); writes the merged list innermost first to
 * out and returns its length. Size-1 axes vanish. */
static int merge_axes(const axis *in, int n, axis *out) {
  int m = 0;
  for (int k = 0; k < n; k++) {
    if (in[k].size == 1) continue;
    if (m > 0) {
      axis *p = &out[m - 1];
      if ((p->stride == 0 && in[k].stride == 0) ||
          (p->stride != 0 && in[k].stride == p->stride * p->size)) {
        if (p->stride == 0 && in[k].stride == 0) p->size *= in[k].size;
        else p->size *= in[k].size;
        continue;
      }
    }
    out[m++] = in[k];
  }
  return m;
}

/* The C expression of sum_k coord_k(i) * stride_k, where coord_k walks the
 * merged axes (innermost first) of a flat index `var` over `total` positions. */
static void offset_expr(char *buf, size_t n, const char *var, const axis *ax, int nax,
                        int64_t total) {
  size_t len = 0;
  buf[0] = 0;
  int64_t inner = 1;
  for (int k = 0; k < nax && len < n; k++) {
    if (ax[k].stride != 0) {
      /* coord = var / inner % size, without the parts that do nothing */
      int outermost = inner * ax[k].size >= total;
      int div = inner != 1, mod = !outermost, mul = ax[k].stride != 1;
      int paren = mul && (div || mod); /* (coord) * stride */
      len += (size_t)snprintf(buf + len, n - len, "%s%s", len ? " + " : "", paren ? "(" : "");
      if (div && mod) len += (size_t)snprintf(buf + len, n - len, "(%s / %lld) %% %lld", var,
                                              (long long)inner, (long long)ax[k].size);
      else if (div) len += (size_t)snprintf(buf + len, n - len, "%s / %lld", var, (long long)inner);
      else if (mod) len += (size_t)snprintf(buf + len, n - len, "%s %% %lld", var, (long long)ax[k].size);
      else len += (size_t)snprintf(buf + len, n - len, "%s", var);
      if (len < n) len += (size_t)snprintf(buf + len, n - len, "%s", paren ? ")" : "");
      if (len < n && mul) len += (size_t)snprintf(buf + len, n - len, " * %lld", (long long)ax[k].stride);
    }
    inner *= ax[k].size;
  }
  if (!buf[0]) snprintf(buf, n, "0");
}

/* Index into input tensor t (dims aligned at the last axis, numpy broadcast)
 * from the flat index `var` over the output dims od[0..ond). */
static void broadcast_index(const zoo_cuda_emit *e, int t, const int64_t *od, int ond,
                            const char *var, char *buf, size_t n) {
  int64_t id[ZOO_MAX_DIMS];
  int ind = dims_of(e, t, id);
  int64_t total = 1, in_total = 1;
  for (int k = 0; k < ond; k++) total *= od[k];
  for (int k = 0; k < ind; k++) in_total *= id[k];
  if (in_total == total) { /* same element count: no broadcast at all */
    snprintf(buf, n, "%s", var);
    return;
  }
  axis ax[ZOO_MAX_DIMS], merged[ZOO_MAX_DIMS];
  int64_t stride = 1;
  for (int k = ond - 1, a = 0; k >= 0; k--, a++) {
    int j = ind - ond + k;
    ax[a].size = od[k];
    ax[a].stride = (j < 0 || id[j] == 1) ? 0 : stride;
    if (j >= 0) stride *= id[j];
  }
  int m = merge_axes(ax, ond, merged);
  offset_expr(buf, n, var, merged, m, total);
}

/* ---------------------------------------------------------------------------
 * Elementwise ops: one C expression each. %0 %1 %2 are the inputs, %f the float
 * attribute f0. Dropout is written out in emit_elementwise (it needs the index
 * and the seed). */

static const char *const ew_exprs[ZOO_OP_COUNT] = {
    [ZOO_OP_ADD] = "%0 + %1",
    [ZOO_OP_SUB] = "%0 - %1",
    [ZOO_OP_MUL] = "%0 * %1",
    [ZOO_OP_DIV] = "%0 / %1",
    [ZOO_OP_GT] = "%0 > %1 ? 1.0f : 0.0f",
    [ZOO_OP_WHERE] = "%0 != 0.0f ? %1 : %2",
    [ZOO_OP_NEG] = "-%0",
    [ZOO_OP_EXP] = "expf(%0)",
    [ZOO_OP_LOG] = "logf(%0)",
    [ZOO_OP_SQRT] = "sqrtf(%0)",
    [ZOO_OP_RSQRT] = "1.0f / sqrtf(%0)",
    [ZOO_OP_SQUARE] = "%0 * %0",
    [ZOO_OP_SIGMOID] = "zg_sigmoid(%0)",
    [ZOO_OP_SILU] = "%0 * zg_sigmoid(%0)",
    [ZOO_OP_SOFTPLUS] = "zg_softplus(%0)",
    [ZOO_OP_RELU] = "%0 > 0.0f ? %0 : 0.0f",
    [ZOO_OP_GELU] = "zg_gelu(%0)",
    [ZOO_OP_GELU_BWD] = "%0 * zg_gelu_grad(%1)",
    [ZOO_OP_TANH] = "tanhf(%0)",
    [ZOO_OP_SIN] = "sinf(%0)",
    [ZOO_OP_COS] = "cosf(%0)",
    [ZOO_OP_ADDS] = "%0 + %f",
    [ZOO_OP_MULS] = "%0 * %f",
    [ZOO_OP_POWS] = "powf(%0, %f)",
};

/* Expands an ew_exprs template with input names and the float attribute. */
static void expand_expr(zoo_strbuf *b, const char *tmpl, char names[][24], const char *f0) {
  for (const char *p = tmpl; *p; p++) {
    if (*p == '%' && p[1] >= '0' && p[1] <= '2') {
      zoo_strbuf_puts(b, names[p[1] - '0']);
      p++;
    } else if (*p == '%' && p[1] == 'f') {
      zoo_strbuf_puts(b, f0);
      p++;
    } else {
      char c[2] = {*p, 0};
      zoo_strbuf_puts(b, c);
    }
  }
}

/* Is tensor t one of the graph's results that must reach memory? */
static int graph_keeps(const zoo_cuda_emit *e, int t) {
  const zoo_graph *g = e->g;
  if (e->keep && e->keep[t]) return 1;
  if (t == g->output || t == g->loss || t == g->metrics) return 1;
  for (int i = 0; i < g->nparams; i++)
    if (g->tensors[g->params[i]].grad == t) return 1;
  return 0;
}

/* Is t produced by a member of nodes[lo, hi)? */
static int made_in(const zoo_cuda_emit *e, int t, const int *nodes, int lo, int hi) {
  int p = e->g->tensors[t].producer;
  if (nodes == e->grp) {
    int k = p >= 0 ? e->grp_pos[p] : -1;
    return k >= lo && k < hi;
  }
  for (int k = lo; k < hi; k++)
    if (nodes[k] == p) return 1;
  return 0;
}

/* Must output t of a member of nodes[lo, hi) be written to memory? When some
 * node outside the group reads it (e->stored), the caller keeps it, nothing reads
 * it at all, or a later member of the group outside [lo, hi) does (the group was
 * split in chunks). */
static int must_store(const zoo_cuda_emit *e, int t, const int *nodes, int lo, int hi, int count) {
  if (!e->stored || e->stored[t] || graph_keeps(e, t)) return 1;
  if (nodes == e->grp) return e->grp_last[t] >= hi;
  const zoo_graph *g = e->g;
  for (int k = hi; k < count; k++)
    for (int j = 0; j < g->nodes[nodes[k]].nin; j++)
      if (g->nodes[nodes[k]].in[j] == t) return 1;
  return 0;
}

static int emitters_call(zoo_cuda_emit *e, const zoo_node *n);

typedef struct ew_io {
  int inputs[ZOO_MAX_ARGS * 2], ninputs;
  unsigned char load[ZOO_MAX_ARGS * 2]; /* per input: read at the element (an elementwise
                                           member reads it), else only through its
                                           pointer (an inline stencil reads it) */
  int outputs[ZOO_MAX_ARGS * 2], noutputs;
  int random; /* needs the seed */
} ew_io;

static int is_inline(const zoo_graph *g, int node) {
  return (zoo_ops[g->nodes[node].op].flags & ZOO_OPF_INLINE) != 0;
}

/* The kernel arguments of members nodes[lo, hi): tensors read from outside,
 * tensors stored, the seed. */
static void ew_collect(const zoo_cuda_emit *e, const int *nodes, int lo, int hi, int count,
                       ew_io *io) {
  memset(io, 0, sizeof *io);
  for (int k = lo; k < hi; k++) {
    const zoo_node *n = &e->g->nodes[nodes[k]];
    int loads = !is_inline(e->g, nodes[k]);
    if (n->op == ZOO_OP_DROPOUT && n->attrs.f[0] != 0.0) io->random = 1;
    for (int j = 0; j < n->nin; j++) {
      int t = n->in[j];
      if (made_in(e, t, nodes, lo, hi)) continue;
      int at = -1;
      for (int q = 0; q < io->ninputs; q++)
        if (io->inputs[q] == t) at = q;
      if (at < 0 && io->ninputs < ZOO_MAX_ARGS * 2) {
        at = io->ninputs++;
        io->inputs[at] = t;
      }
      if (at >= 0 && loads) io->load[at] = 1;
    }
    if (must_store(e, n->out[0], nodes, lo, hi, count) && io->noutputs < ZOO_MAX_ARGS * 2)
      io->outputs[io->noutputs++] = n->out[0];
  }
}

static int ew_nargs(const ew_io *io) { return io->ninputs + io->noutputs + io->random; }

/* Inline forms of the ZOO_OPF_INLINE ops (codegen_intrinsics.c). */
typedef int (*zoo_cuda_inline_emitter)(zoo_cuda_emit *e, const zoo_node *n, char *expr, size_t len);
static const zoo_cuda_inline_emitter inline_emitters[ZOO_OP_COUNT] = {
    [ZOO_OP_CAUSAL_CONV1D] = zoo_cuda_inline_causal_conv1d,
};

/* Row ops that take a prologue (ZOO_OPF_PROLOGUE; codegen_intrinsics.c). */
typedef int (*zoo_cuda_prologue_emitter)(zoo_cuda_emit *e, const zoo_node *n, const zoo_cuda_prologue *p);
static const zoo_cuda_prologue_emitter prologue_emitters[ZOO_OP_COUNT] = {
    [ZOO_OP_LAYERNORM] = zoo_cuda_layernorm_prologue,
    [ZOO_OP_LAYERNORM_BWD] = zoo_cuda_layernorm_bwd_prologue,
};

/* Row ops that take an epilogue (ZOO_OPF_EPILOGUE; codegen_intrinsics.c);
 * zoo_cuda_epilogue is zoo_cuda_prologue, so the emitters' type is the same. */
static const zoo_cuda_prologue_emitter epilogue_emitters[ZOO_OP_COUNT] = {
    [ZOO_OP_LAYERNORM_BWD] = zoo_cuda_layernorm_bwd_epilogue,
    [ZOO_OP_CAUSAL_CONV1D_BWD] = zoo_cuda_causal_conv1d_bwd_epilogue,
};

/* Row ops that take both at once (codegen_cuda.h). */
typedef int (*zoo_cuda_both_emitter)(zoo_cuda_emit *e, const zoo_node *n, const zoo_cuda_prologue *pro,
                                     const zoo_cuda_epilogue *epi);
static const zoo_cuda_both_emitter both_emitters[ZOO_OP_COUNT] = {
    [ZOO_OP_LAYERNORM_BWD] = zoo_cuda_layernorm_bwd_fused,
};

int zoo_cuda_op_fusion(zoo_op op) {
  return (inline_emitters[op] ? ZOO_OPF_INLINE : 0) | (prologue_emitters[op] ? ZOO_OPF_PROLOGUE : 0) |
         (epilogue_emitters[op] ? ZOO_OPF_EPILOGUE : 0);
}

/* The statements that compute members nodes[lo, hi) at the flat index `i` (of
 * the output dims od[0..ond)), into b, each line indented by ind: the loads of
 * io's inputs, one line per member (an inline stencil through its emitter,
 * which may paste its kernel file into the module first), the stores. */
static int ew_body(zoo_cuda_emit *e, zoo_strbuf *b, const int *nodes, int lo, int hi,
                   const ew_io *io, const int64_t *od, int ond, const char *ind) {
  const zoo_graph *g = e->g;
  for (int q = 0; q < io->ninputs; q++) {
    if (!io->load[q]) continue;
    char idx[512];
    broadcast_index(e, io->inputs[q], od, ond, "i", idx, sizeof idx);
    zoo_strbuf_printf(b, "%sfloat v%d = t%d[%s];\n", ind, io->inputs[q], io->inputs[q], idx);
  }
  for (int k = lo; k < hi; k++) {
    const zoo_node *n = &g->nodes[nodes[k]];
    char names[3][24], f0[64];
    for (int j = 0; j < n->nin && j < 3; j++) snprintf(names[j], sizeof names[j], "v%d", n->in[j]);
    float_lit(f0, sizeof f0, n->attrs.f[0]);
    if (is_inline(g, nodes[k])) {
      char expr[512];
      if (!inline_emitters[n->op]) return emit_fail(e, "no inline form for op %s", zoo_ops[n->op].name);
      for (int j = 0; j < n->nin; j++)
        if (made_in(e, n->in[j], nodes, lo, hi))
          return emit_fail(e, "%s reads t%d, made in its own kernel", zoo_ops[n->op].name, n->in[j]);
      if (inline_emitters[n->op](e, n, expr, sizeof expr) != 0) return -1;
      zoo_strbuf_printf(b, "%sfloat v%d = %s;  // %s, inline\n", ind, n->out[0], expr, zoo_ops[n->op].name);
      continue;
    }
    zoo_strbuf_printf(b, "%sfloat v%d = ", ind, n->out[0]);
    if (n->op == ZOO_OP_DROPOUT) {
      double p = n->attrs.f[0];
      if (p == 0.0) {
        zoo_strbuf_printf(b, "%s;", names[0]);
      } else {
        char scale[64];
        float_lit(scale, sizeof scale, 1.0f / (1.0f - (float)p));
        zoo_strbuf_printf(b, "zoo_rng_uniform(seed, %lldULL, (zoo_u64)i) >= %s ? %s * %s : 0.0f;",
                          (long long)n->attrs.i[0], f0, names[0], scale);
      }
    } else if (ew_exprs[n->op]) {
      expand_expr(b, ew_exprs[n->op], names, f0);
      zoo_strbuf_puts(b, ";");
    } else {
      return emit_fail(e, "no elementwise expression for op %s", zoo_ops[n->op].name);
    }
    zoo_strbuf_printf(b, "  // %s\n", zoo_ops[n->op].name);
  }
  for (int q = 0; q < io->noutputs; q++)
    zoo_strbuf_printf(b, "%st%d[i] = v%d;\n", ind, io->outputs[q], io->outputs[q]);
  return 0;
}

/* The kernel parameters of io ("const float *__restrict__ t3, float
 * *__restrict__ t9, unsigned long long seed") into b, and their launch
 * arguments appended to args. */
static void ew_params(zoo_strbuf *b, const ew_io *io, zoo_arg *args, int *nargs) {
  for (int q = 0; q < io->ninputs; q++) {
    zoo_strbuf_printf(b, "%sconst float *__restrict__ t%d", q ? ", " : "", io->inputs[q]);
    args[(*nargs)++] = (zoo_arg){ZOO_ARG_TENSOR, io->inputs[q], 0, 0, 0};
  }
  for (int q = 0; q < io->noutputs; q++) {
    zoo_strbuf_printf(b, "%sfloat *__restrict__ t%d", io->ninputs + q ? ", " : "", io->outputs[q]);
    args[(*nargs)++] = (zoo_arg){ZOO_ARG_TENSOR, io->outputs[q], 0, 0, 0};
  }
  if (io->random) {
    zoo_strbuf_printf(b, "%sunsigned long long seed", ew_nargs(io) > 1 ? ", " : "");
    args[(*nargs)++] = (zoo_arg){ZOO_ARG_SEED, -1, 0, 0, 0};
  }
}

/* One kernel for members nodes[lo, hi) of an elementwise group (all with the
 * output shape of the first). */
static int emit_ew_chunk(zoo_cuda_emit *e, const int *nodes, int lo, int hi, int count) {
  const zoo_graph *g = e->g;
  ew_io io;
  ew_collect(e, nodes, lo, hi, count, &io);
  int first = nodes[lo];
  int64_t od[ZOO_MAX_DIMS];
  int ond = dims_of(e, g->nodes[first].out[0], od);
  int64_t N = zoo_cuda_numel(e, g->nodes[first].out[0]);

  /* the body first: an inline member may paste its kernel file into the module */
  zoo_strbuf body = {0};
  if (ew_body(e, &body, nodes, lo, hi, &io, od, ond, "    ") != 0) {
    zoo_strbuf_free(&body);
    return -1;
  }

  char kname[96];
  int len = snprintf(kname, sizeof kname, "zoo_k%d", e->uid++);
  for (int k = lo; k < hi && k < lo + 3; k++)
    len += snprintf(kname + len, sizeof kname - (size_t)len, "_%s", zoo_ops[g->nodes[nodes[k]].op].name);
  if (hi - lo > 3) snprintf(kname + len, sizeof kname - (size_t)len, "_etc");

  zoo_strbuf *b = &e->src;
  zoo_strbuf_printf(b, "\n// %s: %d elementwise op%s over %lld elements\n", kname, hi - lo,
                    hi - lo == 1 ? "" : "s", (long long)N);
  for (int k = lo; k < hi; k++) zoo_cuda_comment_node(e, nodes[k]);
  zoo_strbuf_printf(b, "extern \"C\" __global__ void __launch_bounds__(256) %s(", kname);
  zoo_step *s = zoo_cuda_step(e, ZOO_STEP_KERNEL, first);
  ew_params(b, &io, s->args, &s->nargs);
  const char *ity = index_type(N);
  zoo_strbuf_printf(b, ") {\n  for (%s i = blockIdx.x * 256 + threadIdx.x; i < %lld; i += gridDim.x * 256) {\n",
                    ity, (long long)N);
  zoo_strbuf_puts(b, body.s ? body.s : "");
  zoo_strbuf_puts(b, "  }\n}\n");
  zoo_strbuf_free(&body);

  s->grid[0] = grid_for(N), s->grid[1] = s->grid[2] = 1;
  s->block[0] = 256, s->block[1] = s->block[2] = 1;
  s->func = zoo_cuda_strdup(e, kname);
  return 0;
}

static int emit_elementwise_cuts(zoo_cuda_emit *e, const int *nodes, int count);

/* An elementwise group: one kernel, or several when the arguments would
 * exceed ZOO_MAX_ARGS (values crossing a cut are then stored). */
static int emit_elementwise(zoo_cuda_emit *e, const int *nodes, int count) {
  const zoo_graph *g = e->g;
  e->grp = nodes;
  e->grp_pos = malloc((size_t)g->nnodes * sizeof *e->grp_pos);
  e->grp_last = malloc((size_t)g->ntensors * sizeof *e->grp_last);
  for (int i = 0; i < g->nnodes; i++) e->grp_pos[i] = -1;
  for (int t = 0; t < g->ntensors; t++) e->grp_last[t] = -1;
  for (int k = 0; k < count; k++) {
    e->grp_pos[nodes[k]] = k;
    for (int j = 0; j < g->nodes[nodes[k]].nin; j++) e->grp_last[g->nodes[nodes[k]].in[j]] = k;
  }
  int rc = emit_elementwise_cuts(e, nodes, count);
  free(e->grp_pos);
  free(e->grp_last);
  e->grp = NULL;
  e->grp_pos = e->grp_last = NULL;
  return rc;
}

/* emit_elementwise's cuts, greedy: each kernel takes members while their
 * arguments fit. */
static int emit_elementwise_cuts(zoo_cuda_emit *e, const int *nodes, int count) {
  int lo = 0;
  while (lo < count) {
    int hi = lo + 1;
    ew_io io;
    ew_collect(e, nodes, lo, hi, count, &io);
    if (ew_nargs(&io) > ZOO_MAX_ARGS)
      return emit_fail(e, "%s needs %d kernel arguments (at most %d)",
                       zoo_ops[e->g->nodes[nodes[lo]].op].name, ew_nargs(&io), ZOO_MAX_ARGS);
    while (hi < count) {
      ew_collect(e, nodes, lo, hi + 1, count, &io);
      if (ew_nargs(&io) > ZOO_MAX_ARGS) break;
      hi++;
    }
    if (emit_ew_chunk(e, nodes, lo, hi, count) != 0) return -1;
    lo = hi;
  }
  return 0;
}

/* The body of a fused group's lambda (codegen_cuda.h) into body: the
 * statements of nodes[0, count) at the flat index i_ of tensor x, after `head`
 * (the lambda's first lines) and before `tail`. */
static int lambda_body(zoo_cuda_emit *e, zoo_strbuf *body, int x, const int *nodes, int count, const ew_io *io,
                       const char *head, const char *tail) {
  int64_t od[ZOO_MAX_DIMS];
  int ond = dims_of(e, x, od);
  const char *ity = index_type(zoo_cuda_numel(e, x));
  zoo_strbuf_printf(body, "    const %s i = (%s)i_;\n%s", ity, ity, head);
  if (ew_body(e, body, nodes, 0, count, io, od, ond, "    ") != 0) return -1;
  zoo_strbuf_puts(body, tail);
  return 0;
}

/* The row op rn's kernel with the pointwise members nodes[0, count) fused in
 * (a prologue or an epilogue): lambda_body's statements at the flat index i_
 * of tensor x, through emit, the op's emitter of that form. */
static int emit_row_fused(zoo_cuda_emit *e, const zoo_node *rn, int x, const int *nodes, int count,
                          const ew_io *io, const char *head, const char *tail, zoo_cuda_prologue_emitter emit) {
  zoo_strbuf body = {0}, params = {0};
  if (lambda_body(e, &body, x, nodes, count, io, head, tail) != 0) {
    zoo_strbuf_free(&body);
    return -1;
  }
  zoo_cuda_prologue p = {0};
  ew_params(&params, io, p.args, &p.nargs);
  p.params = params.s ? params.s : "";
  p.body = body.s;
  p.nodes = nodes;
  p.count = count;
  int status = emit(e, rn, &p);
  zoo_strbuf_free(&body);
  zoo_strbuf_free(&params);
  return status;
}

/* A group of pointwise members (nodes, count of them) and one row op `row`
 * whose input 0 they make: the row op's kernel with the members as its
 * prologue, computed at each element of each row (a lambda the row kernel
 * calls instead of loading input 0), storing what other groups read. When the
 * arguments would not fit one kernel, the members are one kernel (input 0
 * stored) and the row op another, as without the rewrite. */
static int emit_prologue_group(zoo_cuda_emit *e, const int *nodes, int count, int row) {
  const zoo_graph *g = e->g;
  const zoo_node *rn = &g->nodes[row];
  int x = rn->in[0];
  if (!prologue_emitters[rn->op]) return emit_fail(e, "op %s takes no prologue", zoo_ops[rn->op].name);
  if (!made_in(e, x, nodes, 0, count))
    return emit_fail(e, "the prologue of %s (node %d) does not make its input", zoo_ops[rn->op].name, row);
  ew_io io;
  ew_collect(e, nodes, 0, count, count, &io);
  /* the row op's own arguments: its other inputs and its outputs */
  if (ew_nargs(&io) + rn->nin - 1 + rn->nout > ZOO_MAX_ARGS) {
    e->stored[x] = 1;
    if (emit_elementwise(e, nodes, count) != 0) return -1;
    return emitters_call(e, rn);
  }
  char tail[48];
  snprintf(tail, sizeof tail, "    return v%d;\n", x);
  return emit_row_fused(e, rn, x, nodes, count, &io, "", tail, prologue_emitters[rn->op]);
}

/* The arguments of an epilogue (nodes[0, count)) of row op `row` into io:
 * its output 0 comes from the row kernel, not from memory, and is stored when
 * read elsewhere. Returns 0, or -1 with e's error when no member reads it. */
static int epilogue_io(zoo_cuda_emit *e, const int *nodes, int count, int row, ew_io *io) {
  const zoo_node *rn = &e->g->nodes[row];
  int x = rn->out[0], at = -1;
  ew_collect(e, nodes, 0, count, count, io);
  for (int q = 0; q < io->ninputs; q++)
    if (io->inputs[q] == x) at = q;
  if (at < 0)
    return emit_fail(e, "the epilogue of %s (node %d) does not read its output", zoo_ops[rn->op].name, row);
  io->ninputs--;
  for (int q = at; q < io->ninputs; q++) io->inputs[q] = io->inputs[q + 1], io->load[q] = io->load[q + 1];
  if (must_store(e, x, nodes, 0, count, count)) io->outputs[io->noutputs++] = x;
  return 0;
}

/* A group of pointwise members (nodes, count of them) and one row op `row`
 * whose output 0 some of them read: the row op's kernel with the members as
 * its epilogue, computed at each element the row op makes (a lambda the row
 * kernel calls with the element's value instead of storing it), storing what
 * other groups read, output 0 included. When the arguments would not fit one
 * kernel, the row op is one kernel (output 0 stored) and the members another,
 * as without the rewrite. */
static int emit_epilogue_group(zoo_cuda_emit *e, const int *nodes, int count, int row) {
  const zoo_graph *g = e->g;
  const zoo_node *rn = &g->nodes[row];
  int x = rn->out[0];
  if (!epilogue_emitters[rn->op]) return emit_fail(e, "op %s takes no epilogue", zoo_ops[rn->op].name);
  ew_io io;
  if (epilogue_io(e, nodes, count, row, &io) != 0) return -1;
  /* the row op's own arguments: its inputs, its other outputs, a scratch
   * area and a counter */
  if (ew_nargs(&io) + rn->nin + rn->nout + 1 > ZOO_MAX_ARGS) {
    e->stored[x] = 1;
    if (emitters_call(e, rn) != 0) return -1;
    return emit_elementwise(e, nodes, count);
  }
  char head[48];
  snprintf(head, sizeof head, "    const float v%d = v_;\n", x);
  return emit_row_fused(e, rn, x, nodes, count, &io, head, "", epilogue_emitters[rn->op]);
}

/* The union of a's and b's arguments into m, each tensor once: a tensor that
 * either stores is an output (the other may read it back through the same
 * pointer), the rest inputs. */
static void ew_union(const ew_io *a, const ew_io *b, ew_io *m) {
  memset(m, 0, sizeof *m);
  const ew_io *both[2] = {a, b};
  for (int s = 0; s < 2; s++)
    for (int q = 0; q < both[s]->noutputs; q++) {
      int t = both[s]->outputs[q], seen = 0;
      for (int r = 0; r < m->noutputs; r++) seen |= m->outputs[r] == t;
      if (!seen) m->outputs[m->noutputs++] = t;
    }
  for (int s = 0; s < 2; s++)
    for (int q = 0; q < both[s]->ninputs; q++) {
      int t = both[s]->inputs[q], seen = 0;
      for (int r = 0; r < m->noutputs; r++) seen |= m->outputs[r] == t;
      for (int r = 0; r < m->ninputs; r++) seen |= m->inputs[r] == t;
      if (!seen) m->inputs[m->ninputs++] = t;
    }
  m->random = a->random | b->random;
}

/* A row op `row` with a prologue (members pro[0, npro), which make its input
 * 0) and an epilogue (epi[0, nepi), which read its output 0): one kernel with
 * both lambdas. What the epilogue reads of the prologue's values the prologue
 * stores (the same thread stores an element before it reads it back). When
 * the arguments would not fit one kernel, the prologue is a kernel of its own
 * and the row op keeps the epilogue. */
static int emit_both_group(zoo_cuda_emit *e, const int *pro, int npro, const int *epi, int nepi, int row) {
  const zoo_graph *g = e->g;
  const zoo_node *rn = &g->nodes[row];
  int xin = rn->in[0], xout = rn->out[0];
  if (!both_emitters[rn->op]) return emit_fail(e, "op %s takes no prologue and epilogue together", zoo_ops[rn->op].name);
  if (!made_in(e, xin, pro, 0, npro))
    return emit_fail(e, "the prologue of %s (node %d) does not make its input", zoo_ops[rn->op].name, row);
  for (int k = 0; k < nepi; k++)
    for (int j = 0; j < g->nodes[epi[k]].nin; j++)
      if (made_in(e, g->nodes[epi[k]].in[j], pro, 0, npro)) e->stored[g->nodes[epi[k]].in[j]] = 1;
  ew_io ip, ie, m;
  ew_collect(e, pro, 0, npro, npro, &ip);
  if (epilogue_io(e, epi, nepi, row, &ie) != 0) return -1;
  ew_union(&ip, &ie, &m);
  if (ew_nargs(&m) + rn->nin + rn->nout + 1 > ZOO_MAX_ARGS) {
    e->stored[xin] = 1;
    if (emit_elementwise(e, pro, npro) != 0) return -1;
    return emit_epilogue_group(e, epi, nepi, row);
  }
  zoo_strbuf bp = {0}, be = {0}, params = {0};
  char tail[48], head[48];
  snprintf(tail, sizeof tail, "    return v%d;\n", xin);
  snprintf(head, sizeof head, "    const float v%d = v_;\n", xout);
  int status = lambda_body(e, &bp, xin, pro, npro, &ip, "", tail);
  if (status == 0) status = lambda_body(e, &be, xout, epi, nepi, &ie, head, "");
  if (status == 0) {
    zoo_cuda_prologue p = {0};
    zoo_cuda_epilogue q = {0};
    ew_params(&params, &m, p.args, &p.nargs);
    p.params = params.s ? params.s : "";
    p.body = bp.s, p.nodes = pro, p.count = npro;
    q.params = "", q.body = be.s, q.nodes = epi, q.count = nepi;
    status = both_emitters[rn->op](e, rn, &p, &q);
  }
  zoo_strbuf_free(&bp);
  zoo_strbuf_free(&be);
  zoo_strbuf_free(&params);
  return status;
}

/* The per-op entry points of the elementwise ops: a group of one. */
static int emit_one_ew(zoo_cuda_emit *e, const zoo_node *n) {
  int i = node_index(e, n);
  return emit_elementwise(e, &i, 1);
}

int zoo_cuda_add(zoo_cuda_emit *e, const zoo_node *n) { return emit_one_ew(e, n); }
int zoo_cuda_sub(zoo_cuda_emit *e, const zoo_node *n) { return emit_one_ew(e, n); }
int zoo_cuda_mul(zoo_cuda_emit *e, const zoo_node *n) { return emit_one_ew(e, n); }
int zoo_cuda_div(zoo_cuda_emit *e, const zoo_node *n) { return emit_one_ew(e, n); }
int zoo_cuda_gt(zoo_cuda_emit *e, const zoo_node *n) { return emit_one_ew(e, n); }
int zoo_cuda_where(zoo_cuda_emit *e, const zoo_node *n) { return emit_one_ew(e, n); }
int zoo_cuda_neg(zoo_cuda_emit *e, const zoo_node *n) { return emit_one_ew(e, n); }
int zoo_cuda_exp(zoo_cuda_emit *e, const zoo_node *n) { return emit_one_ew(e, n); }
int zoo_cuda_log(zoo_cuda_emit *e, const zoo_node *n) { return emit_one_ew(e, n); }
int zoo_cuda_sqrt(zoo_cuda_emit *e, const zoo_node *n) { return emit_one_ew(e, n); }
int zoo_cuda_rsqrt(zoo_cuda_emit *e, const zoo_node *n) { return emit_one_ew(e, n); }
int zoo_cuda_square(zoo_cuda_emit *e, const zoo_node *n) { return emit_one_ew(e, n); }
int zoo_cuda_sigmoid(zoo_cuda_emit *e, const zoo_node *n) { return emit_one_ew(e, n); }
int zoo_cuda_silu(zoo_cuda_emit *e, const zoo_node *n) { return emit_one_ew(e, n); }
int zoo_cuda_softplus(zoo_cuda_emit *e, const zoo_node *n) { return emit_one_ew(e, n); }
int zoo_cuda_relu(zoo_cuda_emit *e, const zoo_node *n) { return emit_one_ew(e, n); }
int zoo_cuda_gelu(zoo_cuda_emit *e, const zoo_node *n) { return emit_one_ew(e, n); }
int zoo_cuda_gelu_bwd(zoo_cuda_emit *e, const zoo_node *n) { return emit_one_ew(e, n); }
int zoo_cuda_tanh(zoo_cuda_emit *e, const zoo_node *n) { return emit_one_ew(e, n); }
int zoo_cuda_sin(zoo_cuda_emit *e, const zoo_node *n) { return emit_one_ew(e, n); }
int zoo_cuda_cos(zoo_cuda_emit *e, const zoo_node *n) { return emit_one_ew(e, n); }
int zoo_cuda_adds(zoo_cuda_emit *e, const zoo_node *n) { return emit_one_ew(e, n); }
int zoo_cuda_muls(zoo_cuda_emit *e, const zoo_node *n) { return emit_one_ew(e, n); }
int zoo_cuda_pows(zoo_cuda_emit *e, const zoo_node *n) { return emit_one_ew(e, n); }
int zoo_cuda_dropout(zoo_cuda_emit *e, const zoo_node *n) { return emit_one_ew(e, n); }

/* ---------------------------------------------------------------------------
 * Reductions: y[o] = scale * sum_r x[offset(o) + offset(r)], with the kept and
 * the reduced axes each merged into as few as possible.
 *
 * Column mode (x's innermost axis is kept): block 32 x 8, thread x walks
 * outputs, so loads are coalesced; the 8 rows of the block and blockIdx.y
 * split r. Row mode (x's innermost axis is reduced): one warp per output,
 * lanes along r. Each block writes one partial per output; with more than one
 * chunk of r (S > 1) a second kernel adds the S partials in order. Sums are
 * fp32, in a fixed order. */

typedef struct reduce_map {
  axis kept[ZOO_MAX_DIMS], red[ZOO_MAX_DIMS]; /* merged, innermost first */
  int nkept, nred;
  int64_t O, R;
  int column; /* innermost axis kept */
} reduce_map;

/* Splits x's axes (dims xd[0..nd)) into kept and reduced ones (reduced[k]). */
static void reduce_map_init(reduce_map *m, const int64_t *xd, int nd, const int *reduced) {
  axis kept[ZOO_MAX_DIMS], red[ZOO_MAX_DIMS];
  int nk = 0, nr = 0;
  int64_t stride = 1;
  m->column = 1;
  int innermost_found = 0;
  for (int k = nd - 1; k >= 0; k--) {
    if (xd[k] != 1 && !innermost_found) {
      innermost_found = 1;
      m->column = !reduced[k];
    }
    if (reduced[k]) red[nr++] = (axis){xd[k], stride};
    else kept[nk++] = (axis){xd[k], stride};
    stride *= xd[k];
  }
  m->nkept = merge_axes(kept, nk, m->kept);
  m->nred = merge_axes(red, nr, m->red);
  m->O = 1;
  m->R = 1;
  for (int k = 0; k < m->nkept; k++) m->O *= m->kept[k].size;
  for (int k = 0; k < m->nred; k++) m->R *= m->red[k].size;
}

static int emit_reduce(zoo_cuda_emit *e, const zoo_node *n, const int *reduced, double scale) {
  int x = n->in[0], y = n->out[0];
  int64_t xd[ZOO_MAX_DIMS];
  int nd = dims_of(e, x, xd);
  reduce_map m;
  reduce_map_init(&m, xd, nd, reduced);
  int64_t O = m.O, R = m.R;
  int node = node_index(e, n);

  /* Split r into S chunks so the grid fills the GPU (about 2 blocks per SM of
   * an H100/H200), each chunk still long enough to be worth a block. */
  int64_t blocks_o = m.column ? (O + 31) / 32 : (O + 7) / 8;
  int64_t per_thread_min = m.column ? 8 * 32 : 32 * 8; /* r per block at least */
  int64_t S = (264 + blocks_o - 1) / blocks_o;
  int64_t smax = (R + per_thread_min - 1) / per_thread_min;
  if (S > smax) S = smax;
  if (S > 65535) S = 65535;
  if (S < 1) S = 1;
  int64_t CH = (R + S - 1) / S;
  S = (R + CH - 1) / CH;
  if (R == 0) S = 1, CH = 0;

  char oexpr[512], rexpr[512], sc[64];
  offset_expr(oexpr, sizeof oexpr, "o", m.kept, m.nkept, O);
  offset_expr(rexpr, sizeof rexpr, "r", m.red, m.nred, R);
  float_lit(sc, sizeof sc, scale);
  const char *ity = index_type(zoo_cuda_numel(e, x));

  char kname[64];
  int uid = e->uid++;
  snprintf(kname, sizeof kname, "zoo_k%d_%s", uid, zoo_ops[n->op].name);
  zoo_strbuf *b = &e->src;
  zoo_strbuf_printf(b, "\n// %s: %lld outputs, each a sum of %lld values (%s mode, %lld chunk%s)\n",
                    kname, (long long)O, (long long)R, m.column ? "column" : "row", (long long)S,
                    S == 1 ? "" : "s");
  zoo_cuda_comment_node(e, node);
  /* With S chunks, the last block to finish adds the chunks' partial sums up
   * (counted on a ZOO_ARG_COUNTER, as common.cu's zk_finish_partials; in chunk
   * order, deterministic). The rule for S above keeps S O under 17k floats. */
  int fin_here = S > 1;
  zoo_strbuf_printf(b,
                    "extern \"C\" __global__ void __launch_bounds__(256) %s(const float *__restrict__ x, "
                    "float *__restrict__ out%s) {\n",
                    kname, fin_here ? ", float *__restrict__ y, unsigned *__restrict__ counter" : "");
  const char *dest = S == 1 ? "out[o]" : "out[(long long)blockIdx.y * O + o]";
  const char *fin = S == 1 ? sc : "1.0f";
  zoo_strbuf_printf(b, "  const %s O = %lld, R = %lld, CH = %lld;\n", ity, (long long)O,
                    (long long)R, (long long)CH);
  if (m.column) {
    zoo_strbuf_printf(b,
                      "  __shared__ float sh[8][33];\n"
                      "  %s o = blockIdx.x * 32 + threadIdx.x;\n"
                      "  float acc = 0.0f;\n"
                      "  if (o < O) {\n"
                      "    %s base = %s;\n"
                      "    %s r1 = min(R, (%s)blockIdx.y * CH + CH);\n"
                      "    for (%s r = (%s)blockIdx.y * CH + threadIdx.y; r < r1; r += 8) acc += x[base + %s];\n"
                      "  }\n"
                      "  sh[threadIdx.y][threadIdx.x] = acc;\n"
                      "  __syncthreads();\n"
                      "  if (threadIdx.y == 0 && o < O) {\n"
                      "    float s = 0.0f;\n"
                      "    for (int k = 0; k < 8; k++) s += sh[k][threadIdx.x];\n"
                      "    %s = s * %s;\n"
                      "  }\n",
                      ity, ity, oexpr, ity, ity, ity, ity, rexpr, dest, fin);
  } else {
    zoo_strbuf_printf(b,
                      "  %s o = blockIdx.x * 8 + threadIdx.y;\n"
                      "  if (o < O) { /* the whole warp */\n"
                      "    %s base = %s;\n"
                      "    %s r1 = min(R, (%s)blockIdx.y * CH + CH);\n"
                      "    float acc = 0.0f;\n"
                      "    for (%s r = (%s)blockIdx.y * CH + threadIdx.x; r < r1; r += 32) acc += x[base + %s];\n"
                      "    acc = zg_warp_sum(acc);\n"
                      "    if (threadIdx.x == 0) %s = acc * %s;\n"
                      "  }\n",
                      ity, ity, oexpr, ity, ity, ity, ity, rexpr, dest, fin);
  }
  if (fin_here)
    zoo_strbuf_printf(b,
                      "  __shared__ bool last;\n"
                      "  __threadfence();\n"
                      "  __syncthreads();\n"
                      "  if (threadIdx.x == 0 && threadIdx.y == 0) last = atomicAdd(counter, 1u) == gridDim.x * gridDim.y - 1;\n"
                      "  __syncthreads();\n"
                      "  if (!last) return;\n"
                      "  __threadfence();\n"
                      "  for (int i = threadIdx.y * 32 + threadIdx.x; i < %lld; i += 256) {\n"
                      "    float s = 0.0f;\n"
                      "    for (int k = 0; k < %lld; k++) s += __ldcg(out + (long long)k * %lld + i);\n"
                      "    y[i] = s * %s;\n"
                      "  }\n"
                      "  if (threadIdx.x == 0 && threadIdx.y == 0) *counter = 0;\n",
                      (long long)O, (long long)S, (long long)O, sc);
  zoo_strbuf_puts(b, "}\n");
  zoo_step *s = zoo_cuda_step(e, ZOO_STEP_KERNEL, node);
  s->func = zoo_cuda_strdup(e, kname);
  s->grid[0] = (unsigned)(blocks_o < 1 ? 1 : blocks_o), s->grid[1] = (unsigned)S, s->grid[2] = 1;
  s->block[0] = 32, s->block[1] = 8, s->block[2] = 1;
  if (S == 1) {
    s->args[s->nargs++] = (zoo_arg){ZOO_ARG_TENSOR, x, 0, 0, 0};
    s->args[s->nargs++] = (zoo_arg){ZOO_ARG_TENSOR, y, 0, 0, 0};
    return 0;
  }
  s->args[s->nargs++] = (zoo_arg){ZOO_ARG_TENSOR, x, 0, 0, 0};
  s->args[s->nargs++] = (zoo_arg){ZOO_ARG_SCRATCH, -1, 0, 0, 0};
  s->scratch_bytes = S * O * (int64_t)sizeof(float);
  s->args[s->nargs++] = (zoo_arg){ZOO_ARG_TENSOR, y, 0, 0, 0};
  s->args[s->nargs++] = (zoo_arg){ZOO_ARG_COUNTER, -1, e->ncounters++, 0, 0};
  return 0;
}

/* sum, mean (x; i0 = axis, i1 = keepdim) */
static int emit_reduce_axis(zoo_cuda_emit *e, const zoo_node *n, int mean) {
  int nd = e->g->tensors[n->in[0]].type.ndim;
  int a = (int)(n->attrs.i[0] < 0 ? n->attrs.i[0] + nd : n->attrs.i[0]);
  if (a < 0 || a >= nd) return emit_fail(e, "%s: axis out of range", zoo_ops[n->op].name);
  int reduced[ZOO_MAX_DIMS] = {0};
  reduced[a] = 1;
  int64_t len = zoo_cuda_dim(e, n->in[0], a);
  return emit_reduce(e, n, reduced, mean ? 1.0 / (double)(len ? len : 1) : 1.0);
}

int zoo_cuda_sum(zoo_cuda_emit *e, const zoo_node *n) { return emit_reduce_axis(e, n, 0); }
int zoo_cuda_mean(zoo_cuda_emit *e, const zoo_node *n) { return emit_reduce_axis(e, n, 1); }

/* reduce_to (x; dims = target): the axes where the target is 1 or missing */
int zoo_cuda_reduce_to(zoo_cuda_emit *e, const zoo_node *n) {
  int64_t xd[ZOO_MAX_DIMS], td[ZOO_MAX_DIMS];
  int nd = dims_of(e, n->in[0], xd), tnd = dims_of(e, n->out[0], td);
  int reduced[ZOO_MAX_DIMS] = {0};
  for (int k = 0; k < nd; k++) {
    int j = tnd - nd + k;
    reduced[k] = j < 0 || (td[j] == 1 && xd[k] != 1);
  }
  return emit_reduce(e, n, reduced, 1.0);
}

/* ---------------------------------------------------------------------------
 * Movement */

/* y[i] = x[base + offset(i)]: a gather over the output's flat index with the
 * given source stride per output axis (dims od[0..nd), outermost first). */
static int emit_gather(zoo_cuda_emit *e, const zoo_node *n, const int64_t *od, const int64_t *st,
                       int nd, int64_t base, const char *what) {
  int x = n->in[0], y = n->out[0];
  int64_t N = zoo_cuda_numel(e, y);
  axis ax[ZOO_MAX_DIMS], merged[ZOO_MAX_DIMS];
  for (int k = nd - 1, a = 0; k >= 0; k--, a++) ax[a] = (axis){od[k], st[k]};
  int m = merge_axes(ax, nd, merged);
  char off[512];
  offset_expr(off, sizeof off, "i", merged, m, N);
  char kname[64], base_str[32] = "";
  if (base) snprintf(base_str, sizeof base_str, "%lld", (long long)base);
  snprintf(kname, sizeof kname, "zoo_k%d_%s", e->uid++, zoo_ops[n->op].name);
  const char *ty = ctype(e, y);
  zoo_strbuf *b = &e->src;
  zoo_strbuf_printf(b, "\n// %s: %s, %lld elements\n", kname, what, (long long)N);
  zoo_cuda_comment_node(e, node_index(e, n));
  zoo_strbuf_printf(b,
                    "extern \"C\" __global__ void __launch_bounds__(256) %s(const %s *__restrict__ x, "
                    "%s *__restrict__ y) {\n"
                    "  for (%s i = blockIdx.x * 256 + threadIdx.x; i < %lld; i += gridDim.x * 256)\n"
                    "    y[i] = x[%s%s%s];\n}\n",
                    kname, ty, ty, index_type(N), (long long)N, base_str, base ? " + " : "", off);
  zoo_step *s = zoo_cuda_step(e, ZOO_STEP_KERNEL, node_index(e, n));
  s->func = zoo_cuda_strdup(e, kname);
  s->grid[0] = grid_for(N), s->grid[1] = s->grid[2] = 1;
  s->block[0] = 256, s->block[1] = s->block[2] = 1;
  s->args[s->nargs++] = (zoo_arg){ZOO_ARG_TENSOR, x, 0, 0, 0};
  s->args[s->nargs++] = (zoo_arg){ZOO_ARG_TENSOR, y, 0, 0, 0};
  return 0;
}

int zoo_cuda_is_view(const zoo_graph *g, const int64_t *sym, const zoo_node *n) {
  if (n->op == ZOO_OP_RESHAPE) return 1;
  if (n->op != ZOO_OP_SPLIT_HEADS && n->op != ZOO_OP_MERGE_HEADS) return 0;
  const zoo_type *t = &g->tensors[n->op == ZOO_OP_SPLIT_HEADS ? n->out[0] : n->in[0]].type;
  if (t->ndim < 3) return 0;
  return zoo_dim_eval(t->dim[t->ndim - 3], sym) == 1 || zoo_dim_eval(t->dim[t->ndim - 2], sym) == 1;
}

/* reshape: the output shares the input's memory; no kernel */
int zoo_cuda_reshape(zoo_cuda_emit *e, const zoo_node *n) {
  if (e->alias) e->alias[n->out[0]] = n->in[0];
  else return emit_gather(e, n, (int64_t[]){zoo_cuda_numel(e, n->out[0])}, (int64_t[]){1}, 1, 0, "copy");
  zoo_strbuf_printf(&e->src, "\n// t%d is t%d reshaped (same memory, no kernel)\n", n->out[0], n->in[0]);
  return 0;
}

/* permute: output axis k reads source axis dims[k].coef */
int zoo_cuda_permute(zoo_cuda_emit *e, const zoo_node *n) {
  int64_t xd[ZOO_MAX_DIMS], yd[ZOO_MAX_DIMS], xs[ZOO_MAX_DIMS], st[ZOO_MAX_DIMS];
  int nd = dims_of(e, n->in[0], xd);
  int ynd = dims_of(e, n->out[0], yd);
  int64_t stride = 1;
  for (int k = nd - 1; k >= 0; k--) xs[k] = stride, stride *= xd[k];
  for (int k = 0; k < ynd; k++) {
    int64_t src = n->attrs.dims[k].coef;
    if (src < 0 || src >= nd) return emit_fail(e, "permute: bad axis %lld", (long long)src);
    st[k] = xs[src];
  }
  return emit_gather(e, n, yd, st, ynd, 0, "permute");
}

/* split_heads: y[p, h, t, e] = x[p, t, h*d + e]; with one head (or one step)
 * both layouts are the same, and it is a reshape */
int zoo_cuda_split_heads(zoo_cuda_emit *e, const zoo_node *n) {
  int64_t yd[ZOO_MAX_DIMS];
  int nd = dims_of(e, n->out[0], yd);
  if (nd < 3) return emit_fail(e, "split_heads: output has %d axes", nd);
  int64_t H = yd[nd - 3], T = yd[nd - 2], d = yd[nd - 1];
  if (e->alias && zoo_cuda_is_view(e->g, e->sym, n)) return zoo_cuda_reshape(e, n);
  int64_t P = 1;
  for (int k = 0; k < nd - 3; k++) P *= yd[k];
  int64_t od[4] = {P, H, T, d}, st[4] = {T * H * d, d, H * d, 1};
  return emit_gather(e, n, od, st, 4, 0, "split heads");
}

/* merge_heads: y[p, t, h*d + e] = x[p, h, t, e]; a reshape with one head */
int zoo_cuda_merge_heads(zoo_cuda_emit *e, const zoo_node *n) {
  int64_t xd[ZOO_MAX_DIMS];
  int nd = dims_of(e, n->in[0], xd);
  if (nd < 3) return emit_fail(e, "merge_heads: input has %d axes", nd);
  int64_t H = xd[nd - 3], T = xd[nd - 2], d = xd[nd - 1];
  if (e->alias && zoo_cuda_is_view(e->g, e->sym, n)) return zoo_cuda_reshape(e, n);
  int64_t P = 1;
  for (int k = 0; k < nd - 3; k++) P *= xd[k];
  int64_t od[4] = {P, T, H, d}, st[4] = {H * T * d, d, T * d, 1};
  return emit_gather(e, n, od, st, 4, 0, "merge heads");
}

/* x viewed as [outer, len, inner] around axis a */
static void around_axis(const zoo_cuda_emit *e, int t, int64_t axis_attr, int *a, int64_t *outer,
                        int64_t *len, int64_t *inner) {
  int64_t d[ZOO_MAX_DIMS];
  int nd = dims_of(e, t, d);
  int ax = (int)(axis_attr < 0 ? axis_attr + nd : axis_attr);
  *a = ax;
  *outer = 1, *inner = 1;
  for (int k = 0; k < ax; k++) *outer *= d[k];
  for (int k = ax + 1; k < nd; k++) *inner *= d[k];
  *len = d[ax];
}

/* slice (x; axis, start, length): y[o, k, i] = x[o, start + k, i] */
int zoo_cuda_slice(zoo_cuda_emit *e, const zoo_node *n) {
  int a;
  int64_t outer, len, inner;
  around_axis(e, n->in[0], n->attrs.i[0], &a, &outer, &len, &inner);
  int64_t ylen = zoo_cuda_dim(e, n->out[0], a), start = n->attrs.i[1];
  int64_t od[3] = {outer, ylen, inner}, st[3] = {len * inner, inner, 1};
  return emit_gather(e, n, od, st, 3, start * inner, "slice");
}

/* shift (x; axis, k): y[t] = x[t - k], zeros shifted in */
int zoo_cuda_shift(zoo_cuda_emit *e, const zoo_node *n) {
  int a;
  int64_t outer, len, inner;
  around_axis(e, n->in[0], n->attrs.i[0], &a, &outer, &len, &inner);
  int64_t k = n->attrs.i[1], N = zoo_cuda_numel(e, n->out[0]);
  const char *ty = ctype(e, n->out[0]), *ity = index_type(N);
  char kname[64];
  snprintf(kname, sizeof kname, "zoo_k%d_shift", e->uid++);
  zoo_strbuf *b = &e->src;
  zoo_strbuf_printf(b, "\n// %s: shift by %lld along an axis of %lld (inner %lld)\n", kname,
                    (long long)k, (long long)len, (long long)inner);
  zoo_cuda_comment_node(e, node_index(e, n));
  zoo_strbuf_printf(b,
                    "extern \"C\" __global__ void __launch_bounds__(256) %s(const %s *__restrict__ x, "
                    "%s *__restrict__ y) {\n"
                    "  for (%s i = blockIdx.x * 256 + threadIdx.x; i < %lld; i += gridDim.x * 256) {\n"
                    "    %s t = (i / %lld) %% %lld - %lld;\n"
                    "    y[i] = t >= 0 && t < %lld ? x[i - %lldLL] : (%s)0;\n"
                    "  }\n}\n",
                    kname, ty, ty, ity, (long long)N, ity, (long long)inner, (long long)len,
                    (long long)k, (long long)len, (long long)(k * inner), ty);
  zoo_step *s = zoo_cuda_step(e, ZOO_STEP_KERNEL, node_index(e, n));
  s->func = zoo_cuda_strdup(e, kname);
  s->grid[0] = grid_for(N), s->grid[1] = s->grid[2] = 1;
  s->block[0] = 256, s->block[1] = s->block[2] = 1;
  s->args[s->nargs++] = (zoo_arg){ZOO_ARG_TENSOR, n->in[0], 0, 0, 0};
  s->args[s->nargs++] = (zoo_arg){ZOO_ARG_TENSOR, n->out[0], 0, 0, 0};
  return 0;
}

/* concat (a, b; axis) */
int zoo_cuda_concat(zoo_cuda_emit *e, const zoo_node *n) {
  int a;
  int64_t outer, la, inner, lb, o2, i2;
  around_axis(e, n->in[0], n->attrs.i[0], &a, &outer, &la, &inner);
  around_axis(e, n->in[1], n->attrs.i[0], &a, &o2, &lb, &i2);
  int64_t A = la * inner, Bn = lb * inner, N = zoo_cuda_numel(e, n->out[0]);
  const char *ty = ctype(e, n->out[0]), *ity = index_type(N);
  char kname[64];
  snprintf(kname, sizeof kname, "zoo_k%d_concat", e->uid++);
  zoo_strbuf *b = &e->src;
  zoo_strbuf_printf(b, "\n// %s: rows of %lld + %lld elements\n", kname, (long long)A, (long long)Bn);
  zoo_cuda_comment_node(e, node_index(e, n));
  zoo_strbuf_printf(b,
                    "extern \"C\" __global__ void __launch_bounds__(256) %s(const %s *__restrict__ a, "
                    "const %s *__restrict__ b, %s *__restrict__ y) {\n"
                    "  for (%s i = blockIdx.x * 256 + threadIdx.x; i < %lld; i += gridDim.x * 256) {\n"
                    "    %s o = i / %lld, j = i %% %lld;\n"
                    "    y[i] = j < %lld ? a[o * %lld + j] : b[o * %lld + j - %lld];\n"
                    "  }\n}\n",
                    kname, ty, ty, ty, ity, (long long)N, ity, (long long)(A + Bn),
                    (long long)(A + Bn), (long long)A, (long long)A, (long long)Bn, (long long)A);
  zoo_step *s = zoo_cuda_step(e, ZOO_STEP_KERNEL, node_index(e, n));
  s->func = zoo_cuda_strdup(e, kname);
  s->grid[0] = grid_for(N), s->grid[1] = s->grid[2] = 1;
  s->block[0] = 256, s->block[1] = s->block[2] = 1;
  s->args[s->nargs++] = (zoo_arg){ZOO_ARG_TENSOR, n->in[0], 0, 0, 0};
  s->args[s->nargs++] = (zoo_arg){ZOO_ARG_TENSOR, n->in[1], 0, 0, 0};
  s->args[s->nargs++] = (zoo_arg){ZOO_ARG_TENSOR, n->out[0], 0, 0, 0};
  return 0;
}

/* arange (; dims[0] = n) -> i32[n] */
int zoo_cuda_arange(zoo_cuda_emit *e, const zoo_node *n) {
  int64_t N = zoo_cuda_numel(e, n->out[0]);
  char kname[64];
  snprintf(kname, sizeof kname, "zoo_k%d_arange", e->uid++);
  zoo_strbuf_printf(&e->src, "\n// %s: 0 .. %lld\n", kname, (long long)N - 1);
  zoo_cuda_comment_node(e, node_index(e, n));
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(256) %s(int *__restrict__ y) {\n"
                    "  for (int i = blockIdx.x * 256 + threadIdx.x; i < %lld; i += gridDim.x * 256) y[i] = i;\n}\n",
                    kname, (long long)N);
  zoo_step *s = zoo_cuda_step(e, ZOO_STEP_KERNEL, node_index(e, n));
  s->func = zoo_cuda_strdup(e, kname);
  s->grid[0] = grid_for(N), s->grid[1] = s->grid[2] = 1;
  s->block[0] = 256, s->block[1] = s->block[2] = 1;
  s->args[s->nargs++] = (zoo_arg){ZOO_ARG_TENSOR, n->out[0], 0, 0, 0};
  return 0;
}

/* ---------------------------------------------------------------------------
 * Matrix products: steps for cuBLASLt. */

static void gemm_comment(zoo_cuda_emit *e, const zoo_node *n, const zoo_gemm *gm) {
  zoo_strbuf_printf(&e->src,
                    "\n// GEMM (cuBLASLt, fp32): t%d[%lld x %lld] = %st%d%s * %st%d%s%s, batch %lld, k = %lld\n",
                    gm->c, (long long)gm->m, (long long)gm->n, gm->trans_a ? "(" : "", gm->a,
                    gm->trans_a ? ")^T" : "", gm->trans_b ? "(" : "", gm->b, gm->trans_b ? ")^T" : "",
                    gm->bias >= 0 ? " + bias" : "", (long long)gm->batch, (long long)gm->k);
  zoo_cuda_comment_node(e, node_index(e, n));
}

/* linear (x[..., in], w[out, in], [b[out]]) -> x w^T + b */
int zoo_cuda_linear(zoo_cuda_emit *e, const zoo_node *n) {
  int64_t in = zoo_cuda_dim(e, n->in[1], 1), out = zoo_cuda_dim(e, n->in[1], 0);
  zoo_step *s = zoo_cuda_step(e, ZOO_STEP_GEMM, node_index(e, n));
  zoo_gemm *gm = &s->gemm;
  gm->a = n->in[0], gm->b = n->in[1], gm->c = n->out[0];
  gm->bias = n->nin > 2 ? n->in[2] : -1;
  gm->trans_a = 0, gm->trans_b = 1;
  gm->k = in, gm->n = out;
  gm->m = in ? zoo_cuda_numel(e, n->in[0]) / in : 0;
  gm->batch = 1;
  gm->alpha = 1, gm->beta = 0;
  gemm_comment(e, n, gm);
  return zoo_cuda_gemm_own(e, s);
}

/* matmul (a[..., m, k], b[..., k, n]; i0, i1 = transposed): batch axes equal or
 * absent in one operand. A batched a times a shared, untransposed b is one tall
 * GEMM (the rows of a's batches are contiguous). */
int zoo_cuda_matmul(zoo_cuda_emit *e, const zoo_node *n) {
  int64_t ad[ZOO_MAX_DIMS], bd[ZOO_MAX_DIMS], yd[ZOO_MAX_DIMS];
  int and_ = dims_of(e, n->in[0], ad), bnd = dims_of(e, n->in[1], bd), ynd = dims_of(e, n->out[0], yd);
  if (and_ < 2 || bnd < 2 || ynd < 2) return emit_fail(e, "matmul needs operands of 2 axes or more");
  int ta = n->attrs.i[0] != 0, tb = n->attrs.i[1] != 0;
  int64_t M = yd[ynd - 2], N = yd[ynd - 1], K = ad[and_ - 1 - ta];
  int64_t batch = 1;
  for (int k = 0; k < ynd - 2; k++) batch *= yd[k];
  zoo_step *s = zoo_cuda_step(e, ZOO_STEP_GEMM, node_index(e, n));
  zoo_gemm *gm = &s->gemm;
  gm->a = n->in[0], gm->b = n->in[1], gm->c = n->out[0];
  gm->trans_a = ta, gm->trans_b = tb;
  gm->m = M, gm->n = N, gm->k = K, gm->batch = batch;
  gm->stride_a = and_ > 2 ? M * K : 0;
  gm->stride_b = bnd > 2 ? K * N : 0;
  gm->stride_c = M * N;
  gm->alpha = 1, gm->beta = 0;
  if (batch > 1 && and_ > 2 && bnd == 2 && !ta) { /* one tall GEMM */
    gm->m = M * batch;
    gm->batch = 1;
    gm->stride_a = gm->stride_c = 0;
  }
  gemm_comment(e, n, gm);
  return zoo_cuda_gemm_own(e, s);
}

/* ---------------------------------------------------------------------------
 * The whole graph */

typedef int (*zoo_cuda_emitter)(zoo_cuda_emit *e, const zoo_node *n);

static const zoo_cuda_emitter emitters[ZOO_OP_COUNT] = {
#define X(NAME, name, cls, nin_min, nin_max, nout, flags) [ZOO_OP_##NAME] = zoo_cuda_##name,
#include "ops.def"
#undef X
};

static int emitters_call(zoo_cuda_emit *e, const zoo_node *n) { return emitters[n->op](e, n); }

/* A group of several nodes (fuse.h): pointwise members (elementwise and inline
 * stencils), and at most one row op that takes them as its prologue or as its
 * epilogue. */
static int emit_group(zoo_cuda_emit *e, int *members, int count) {
  const zoo_graph *g = e->g;
  int row = -1, npoint = 0;
  for (int k = 0; k < count; k++) {
    int m = members[k];
    if (zoo_ops[g->nodes[m].op].cls == ZOO_CLASS_ELEMENTWISE || is_inline(g, m)) {
      members[npoint++] = m; /* in place: the pointwise members keep their order */
    } else if (row < 0 && (zoo_ops[g->nodes[m].op].flags & (ZOO_OPF_PROLOGUE | ZOO_OPF_EPILOGUE))) {
      row = m;
    } else {
      return emit_fail(e, "group %d holds %s (node %d), which does not fuse", members[0],
                       zoo_ops[g->nodes[m].op].name, m);
    }
  }
  if (row < 0) return emit_elementwise(e, members, npoint);
  int flags = zoo_ops[g->nodes[row].op].flags;
  if (!(flags & ZOO_OPF_EPILOGUE)) return emit_prologue_group(e, members, npoint, row);
  if (!(flags & ZOO_OPF_PROLOGUE)) return emit_epilogue_group(e, members, npoint, row);
  /* both forms: the members the row op's input 0 waits on are its prologue,
   * the rest its epilogue (members come in node order, producers first; fuse.c
   * gives such a group one shape, so the two index spaces are the same) */
  int *pro = malloc((size_t)(2 * npoint + 1) * sizeof *pro);
  char *feeds = calloc((size_t)(npoint ? npoint : 1), 1);
  if (!pro || !feeds) abort(); /* out of memory */
  int *epi = pro + npoint, nepi = 0, npro = 0;
  for (int k = npoint - 1; k >= 0; k--) {
    int t = g->nodes[members[k]].out[0];
    feeds[k] = t == g->nodes[row].in[0];
    for (int k2 = k + 1; k2 < npoint && !feeds[k]; k2++)
      for (int j = 0; j < g->nodes[members[k2]].nin; j++) feeds[k] |= feeds[k2] && g->nodes[members[k2]].in[j] == t;
  }
  for (int k = 0; k < npoint; k++) {
    if (feeds[k]) pro[npro++] = members[k];
    else epi[nepi++] = members[k];
  }
  int status = nepi == 0   ? emit_prologue_group(e, pro, npro, row)
               : npro == 0 ? emit_epilogue_group(e, epi, nepi, row)
                           : emit_both_group(e, pro, npro, epi, nepi, row);
  free(feeds);
  free(pro);
  return status;
}

/* ---------------------------------------------------------------------------
 * Entry waits (see codegen_cuda.h). A text pass rather than a line in each
 * emitter, so that no kernel, generated or hand-written, can miss it. */

static const char entry_wait_def[] =
    "#ifndef ZK_ENTRY_WAIT\n"
    "#define ZK_ENTRY_WAIT\n"
    "// Programmatic dependent launch (runtime/cuda.c): this kernel may be scheduled\n"
    "// while the one before it finishes. Wait for that one to complete and its\n"
    "// writes to be visible, then let the next kernel be scheduled in turn.\n"
    "__device__ __forceinline__ void zk_entry_wait() {\n"
    "#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900\n"
    "  asm volatile(\"griddepcontrol.wait;\\n\\tgriddepcontrol.launch_dependents;\" ::: \"memory\");\n"
    "#endif\n"
    "}\n"
    "#endif\n";
static const char entry_wait_call[] = "\n  zk_entry_wait();";

char *zoo_cuda_entry_waits(const char *src) {
  zoo_strbuf b = {0};
  const char *p = src;
  int defined = strstr(src, "#define ZK_ENTRY_WAIT\n") != NULL;
  for (const char *k; (k = strstr(p, "__global__ void")) != NULL;) {
    const char *open = strchr(k, '{');
    if (!open) break;
    if (!defined) { /* the definition goes before the first kernel's line */
      const char *line = k;
      while (line > p && line[-1] != '\n') line--;
      zoo_strbuf_printf(&b, "%.*s", (int)(line - p), p);
      zoo_strbuf_puts(&b, entry_wait_def);
      p = line;
      defined = 1;
    }
    zoo_strbuf_printf(&b, "%.*s", (int)(open + 1 - p), p);
    p = open + 1;
    if (strncmp(p, entry_wait_call, sizeof entry_wait_call - 1) != 0) zoo_strbuf_puts(&b, entry_wait_call);
  }
  zoo_strbuf_puts(&b, p);
  return b.s;
}

/* The end of the kernel definition whose signature starts at k: just past
 * the brace that closes its body (braces in comments and literals skipped),
 * or NULL if it has none. */
static const char *kernel_end(const char *k) {
  int depth = 0, opened = 0;
  for (const char *p = k; *p; p++) {
    if (p[0] == '/' && p[1] == '/') {
      while (*p && *p != '\n') p++;
      if (!*p) return NULL;
    } else if (p[0] == '/' && p[1] == '*') {
      const char *q = strstr(p + 2, "*/");
      if (!q) return NULL;
      p = q + 1;
    } else if (*p == '"' || *p == '\'') {
      char quote = *p;
      for (p++; *p && *p != quote; p++)
        if (*p == '\\' && p[1]) p++;
      if (!*p) return NULL;
    } else if (*p == '{') {
      depth++, opened = 1;
    } else if (*p == '}' && --depth == 0 && opened) {
      return p + 1;
    }
  }
  return NULL;
}

/* The kernel definitions of a module's source, in order: each begins a line
 * with `extern "C" __global__` and ends past its body's closing brace.
 * Returns how many, *out (malloc'ed) their [start, end). */
typedef struct kernel_def {
  const char *start, *end;
} kernel_def;

static int kernel_defs(const char *src, kernel_def **out) {
  static const char sig[] = "extern \"C\" __global__";
  int n = 0, cap = 64;
  kernel_def *ks = xrealloc(NULL, (size_t)cap * sizeof *ks);
  for (const char *p = src, *k; src && (k = strstr(p, sig)) != NULL;) {
    const char *end = (k == src || k[-1] == '\n') ? kernel_end(k) : NULL;
    if (!end) { /* not a definition at a line's start */
      p = k + sizeof sig - 1;
      continue;
    }
    if (n == cap) ks = xrealloc(ks, (size_t)(cap *= 2) * sizeof *ks);
    ks[n++] = (kernel_def){k, end};
    p = end;
  }
  *out = ks;
  return n;
}

/* A kernel's compile cost, roughly, in units of a generated elementwise
 * kernel's: measured with NVRTC 13.0 (sm_90) on rebased 32/48's module, a
 * kernel alone took about 0.2 s for zoo's GEMMs, 0.05 to 0.13 for the other
 * library kernels, 0.01 to 0.05 for generated ones. */
static int kernel_weight(const char *k, const char *end) {
  int w = 1;
  for (const char *p = k; (p = strstr(p, "zk_")) != NULL && p < end; p++) {
    if (strncmp(p, "zk_gemm", 7) == 0 || strncmp(p, "zk_wgrad", 8) == 0) return 8;
    if (strncmp(p, "zk_entry_wait", 13) != 0) w = 3;
  }
  return w;
}

int zoo_cuda_split_module(const char *src, int parts, char **out) {
  if (parts < 1) parts = 1;
  if (parts > ZOO_MODULE_PARTS_MAX) parts = ZOO_MODULE_PARTS_MAX;
  kernel_def *ks;
  int nk = kernel_defs(src, &ks);
  int *part = xrealloc(NULL, (size_t)(nk ? 2 * nk : 1) * sizeof *part), *weight = part + nk;
  for (int i = 0; i < nk; i++) weight[i] = kernel_weight(ks[i].start, ks[i].end);
  int n = nk < parts ? (nk > 0 ? nk : 1) : parts;
  /* the heaviest first, each to the lightest part so far (ties: the first) */
  int64_t load[ZOO_MODULE_PARTS_MAX] = {0};
  for (int w = 8; w >= 1; w--)
    for (int i = 0; i < nk; i++) {
      if (weight[i] != w) continue;
      int best = 0;
      for (int q = 1; q < n; q++)
        if (load[q] < load[best]) best = q;
      part[i] = best;
      load[best] += w;
    }
  zoo_strbuf b[ZOO_MODULE_PARTS_MAX];
  memset(b, 0, sizeof b);
  const char *p = src;
  for (int i = 0; i < nk; i++) {
    for (int q = 0; q < n; q++) zoo_strbuf_printf(&b[q], "%.*s", (int)(ks[i].start - p), p);
    zoo_strbuf_printf(&b[part[i]], "%.*s", (int)(ks[i].end - ks[i].start), ks[i].start);
    p = ks[i].end;
  }
  for (int q = 0; q < n; q++) {
    zoo_strbuf_puts(&b[q], p);
    out[q] = b[q].s;
  }
  free(part);
  free(ks);
  return n;
}

/* The kernel's name in the definition at k (after `__launch_bounds__(...)`
 * if any): its start and length, or 0. */
static size_t kernel_name_at(const char *k, const char *end, const char **name) {
  const char *p = strstr(k, " void ");
  if (!p || p >= end) return 0;
  p += 6;
  if (strncmp(p, "__launch_bounds__(", 18) == 0) {
    p = strchr(p, ')');
    if (!p || p >= end) return 0;
    p += 1 + strspn(p + 1, " ");
  }
  size_t n = strcspn(p, "( \n");
  if (p + n >= end) return 0;
  *name = p;
  return n;
}

int zoo_cuda_merge_duplicate_kernels(zoo_cuda_emit *e) {
  typedef struct kdef {
    const char *start, *end, *name;
    size_t len;
    int same_as; /* an earlier identical kernel, or -1 */
  } kdef;
  const char *src = e->src.s;
  kernel_def *defs;
  int ndefs = kernel_defs(src, &defs), nk = 0, merged = 0;
  kdef *ks = xrealloc(NULL, (size_t)(ndefs ? ndefs : 1) * sizeof *ks);
  for (int i = 0; i < ndefs; i++) {
    const char *k = defs[i].start, *end = defs[i].end, *name = NULL;
    size_t len = kernel_name_at(k, end, &name);
    if (!len) continue;
    kdef d = {k, end, name, len, -1};
    for (int j = 0; j < nk && d.same_as < 0; j++) {
      const kdef *o = &ks[j];
      if (o->same_as >= 0 || o->name - o->start != name - k || o->end - (o->name + o->len) != end - (name + len))
        continue;
      if (memcmp(o->start, k, (size_t)(name - k)) == 0 &&
          memcmp(o->name + o->len, name + len, (size_t)(end - (name + len))) == 0)
        d.same_as = j;
    }
    ks[nk++] = d;
  }
  free(defs);
  zoo_strbuf b = {0};
  const char *p = src;
  for (int i = 0; i < nk; i++) {
    if (ks[i].same_as < 0) continue;
    const kdef *o = &ks[ks[i].same_as];
    zoo_strbuf_printf(&b, "%.*s", (int)(ks[i].start - p), p);
    zoo_strbuf_printf(&b, "// %.*s: the same as %.*s, launched in its place", (int)ks[i].len, ks[i].name,
                      (int)o->len, o->name);
    p = ks[i].end;
    char *name = xrealloc(NULL, o->len + 1);
    memcpy(name, o->name, o->len);
    name[o->len] = 0;
    const char *keep = zoo_cuda_strdup(e, name); /* outlives src, which is replaced */
    free(name);
    for (int s = 0; s < e->nsteps; s++) {
      const char *f = e->steps[s].func;
      if (f && strlen(f) == ks[i].len && strncmp(f, ks[i].name, ks[i].len) == 0) e->steps[s].func = keep;
    }
    merged++;
  }
  if (merged) {
    zoo_strbuf_puts(&b, p);
    zoo_strbuf_free(&e->src);
    e->src = b;
  } else {
    zoo_strbuf_free(&b);
  }
  free(ks);
  return merged;
}

/* The module's first lines: what it is, the RNG, small helpers. */
static void emit_prelude(zoo_cuda_emit *e) {
  const zoo_graph *g = e->g;
  zoo_strbuf *b = &e->src;
  zoo_strbuf_puts(b, "// Generated by zoo (compiler/codegen_cuda.c): one CUDA module for the whole\n"
                     "// training step. Shapes are bound:");
  for (int s = 0; s < g->nsyms; s++)
    zoo_strbuf_printf(b, " %s = %lld", g->sym_names[s], (long long)e->sym[s]);
  zoo_strbuf_puts(b, ". Do not edit; regenerate.\n"
                     "// Tensors are named by their id in the graph: v12 is the value of tensor 12.\n\n");
  const char *rng = zoo_kernel_source("rng.h");
  if (!rng) abort(); /* the build embeds it; missing means a broken build */
  zoo_strbuf_puts(b, "// ---- runtime/rng.h (the same generator as the CPU reference) ----\n");
  zoo_strbuf_puts(b, rng);
  zoo_strbuf_puts(b,
                  "\n// ---- helpers of the generated kernels ----\n"
                  "#ifndef ZG_HELPERS\n"
                  "#define ZG_HELPERS\n"
                  "__device__ __forceinline__ float zg_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }\n"
                  "__device__ __forceinline__ float zg_softplus(float x) { return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))); }\n"
                  "__device__ __forceinline__ float zg_gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }\n"
                  "// d gelu / dx = Phi(x) + x phi(x)\n"
                  "__device__ __forceinline__ float zg_gelu_grad(float x) {\n"
                  "  float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));\n"
                  "  float pdf = expf(-0.5f * x * x) * 0.39894228040143268f;\n"
                  "  return cdf + x * pdf;\n"
                  "}\n"
                  "__device__ __forceinline__ float zg_warp_sum(float v) {\n"
                  "  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);\n"
                  "  return v;\n"
                  "}\n"
                  "#endif\n");
}

/* Which tensors must reach memory: those some node of another group reads,
 * and those nothing reads (results, or dead values, kept to be safe). */
static void mark_stored(zoo_cuda_emit *e) {
  const zoo_graph *g = e->g;
  unsigned char *read = calloc((size_t)(g->ntensors ? g->ntensors : 1), 1);
  if (!read) abort();
  for (int i = 0; i < g->nnodes; i++)
    for (int k = 0; k < g->nodes[i].nin; k++) read[g->nodes[i].in[k]] = 1;
  for (int t = 0; t < g->ntensors; t++)
    if (!read[t]) e->stored[t] = 1;
  free(read);
  for (int i = 0; i < g->nnodes; i++) {
    const zoo_node *n = &g->nodes[i];
    int gi = zoo_node_group(g, i);
    for (int k = 0; k < n->nin; k++) {
      int p = g->tensors[n->in[k]].producer;
      if (p < 0 || zoo_node_group(g, p) != gi) e->stored[n->in[k]] = 1;
    }
  }
}

int zoo_cuda_emit_graph(zoo_cuda_emit *e, const zoo_graph *g, const int64_t *sym,
                        int *nforward_steps) {
  e->g = g;
  e->sym = sym;
  e->err[0] = 0;
  int nt = g->ntensors;
  /* Per-tensor tables, sized for this graph (a second call may bring a graph
   * over the same tensors). */
  free(e->alias);
  free(e->stored);
  e->alias = xrealloc(NULL, (size_t)(nt ? nt : 1) * sizeof *e->alias);
  e->stored = calloc((size_t)(nt ? nt : 1), 1);
  if (!e->stored) abort();
  for (int t = 0; t < nt; t++) e->alias[t] = -1;
  mark_stored(e);
  if (e->src.len == 0) emit_prelude(e);

  int N = g->nnodes;
  int *order = xrealloc(NULL, (size_t)(N ? N : 1) * sizeof *order);
  int ngroups = zoo_fuse_order(g, order);
  if (ngroups < 0) {
    free(order);
    return emit_fail(e, "the fused groups depend on each other in a cycle (bug in fuse)");
  }
  /* members of each group, in node order: a bucket list */
  int *head = xrealloc(NULL, (size_t)(N ? N : 1) * sizeof *head);
  int *next = xrealloc(NULL, (size_t)(N ? N : 1) * sizeof *next);
  int *tail = xrealloc(NULL, (size_t)(N ? N : 1) * sizeof *tail);
  for (int i = 0; i < N; i++) head[i] = tail[i] = next[i] = -1;
  for (int i = 0; i < N; i++) {
    int gi = zoo_node_group(g, i);
    if (head[gi] < 0) head[gi] = i;
    else next[tail[gi]] = i;
    tail[gi] = i;
  }
  int *members = xrealloc(NULL, (size_t)(N ? N : 1) * sizeof *members);
  int first_step = e->nsteps, nfwd = -1, status = 0;
  for (int q = 0; q < ngroups && status == 0; q++) {
    int gid = order[q];
    int count = 0;
    for (int i = head[gid]; i >= 0; i = next[i]) members[count++] = i;
    if (g->nforward > 0 && members[0] >= g->nforward && nfwd < 0) nfwd = e->nsteps - first_step;
    const zoo_node *n = &g->nodes[members[0]];
    if (zoo_ops[n->op].cls == ZOO_CLASS_ELEMENTWISE || count > 1) {
      status = emit_group(e, members, count);
    } else {
      char saved[sizeof e->err];
      status = emitters[n->op](e, n);
      if (status != 0) {
        snprintf(saved, sizeof saved, "%s", e->err[0] ? e->err : "emitter failed");
        if (n->span.src)
          snprintf(e->err, sizeof e->err, "%.120s (node %d, %s at %.60s:%d:%d)", saved, members[0],
                   zoo_ops[n->op].name, n->span.src->path, n->span.line, n->span.col);
        else
          snprintf(e->err, sizeof e->err, "%.160s (node %d, %s)", saved, members[0], zoo_ops[n->op].name);
      }
    }
  }
  if (nfwd < 0) nfwd = e->nsteps - first_step;
  e->nforward_steps = nfwd;
  if (nforward_steps) *nforward_steps = nfwd;
  free(order);
  free(head);
  free(next);
  free(tail);
  free(members);
  return status;
}

/* ---------------------------------------------------------------------------
 * The runtime's kernels: AdamW over the flat parameter buffer, gradient
 * accumulation over micro-batches, metric sums. */

void zoo_cuda_emit_optimizer(zoo_cuda_emit *e) {
  zoo_strbuf_puts(&e->src,
                  "\n// ---- the runtime's kernels (compiler/codegen_cuda.c, zoo_cuda_emit_optimizer) ----\n"
                  "#ifndef ZOO_OPTIMIZER_KERNELS\n"
                  "#define ZOO_OPTIMIZER_KERNELS\n"
                  "struct zoo_hyper { float lr, beta1, beta2, eps, weight_decay, pad; long long step; };\n"
                  "\n"
                  "// torch.optim.AdamW over flat arrays: p -= lr wd p; m, v updated; then\n"
                  "// p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).\n"
                  "extern \"C\" __global__ void __launch_bounds__(256) zoo_adamw(float *__restrict__ p,\n"
                  "    const float *__restrict__ g, float *__restrict__ m, float *__restrict__ v,\n"
                  "    const zoo_hyper *__restrict__ h, long long n) {\n"
                  "  // the scalars in double, the update in fp32, term for term as the CPU backend;\n"
                  "  // one thread of the block works them out (pow in double is slow)\n"
                  "  __shared__ float sc[5];\n"
                  "  if (threadIdx.x == 0) {\n"
                  "    double t = (double)h->step;\n"
                  "    double bc1 = 1.0 - pow((double)h->beta1, t), bc2 = 1.0 - pow((double)h->beta2, t);\n"
                  "    sc[0] = (float)(1.0 - (double)h->lr * h->weight_decay);\n"
                  "    sc[1] = (float)(1.0 - h->beta1), sc[2] = (float)(1.0 - h->beta2);\n"
                  "    sc[3] = (float)(h->lr / bc1), sc[4] = (float)sqrt(bc2);\n"
                  "  }\n"
                  "  __syncthreads();\n"
                  "  float decay = sc[0], one_b1 = sc[1], b2 = h->beta2, one_b2 = sc[2];\n"
                  "  float step_size = sc[3], bc2_sqrt = sc[4], eps = h->eps;\n"
                  "  for (long long i = blockIdx.x * 256LL + threadIdx.x; i < n; i += (long long)gridDim.x * 256) {\n"
                  "    float gi = g[i], mi = m[i], vi = v[i];\n"
                  "    float pi = p[i] * decay;\n"
                  "    mi += one_b1 * (gi - mi); // torch: exp_avg.lerp_(grad, 1 - beta1)\n"
                  "    vi = vi * b2 + one_b2 * gi * gi;\n"
                  "    m[i] = mi;\n"
                  "    v[i] = vi;\n"
                  "    float denom = sqrtf(vi) / bc2_sqrt + eps;\n"
                  "    p[i] = pi - step_size * (mi / denom);\n"
                  "  }\n"
                  "}\n"
                  "\n"
                  "// Gradient accumulation over micro-batches: acc = g (first) or acc + g.\n"
                  "extern \"C\" __global__ void __launch_bounds__(256) zoo_accumulate(float *__restrict__ acc,\n"
                  "    const float *__restrict__ g, long long n, int first) {\n"
                  "  for (long long i = blockIdx.x * 256LL + threadIdx.x; i < n; i += (long long)gridDim.x * 256)\n"
                  "    acc[i] = first ? g[i] : acc[i] + g[i];\n"
                  "}\n"
                  "\n"
                  "// Metric sums over micro-batches: acc = (loss, correct, labelled).\n"
                  "extern \"C\" __global__ void zoo_metrics_accumulate(float *__restrict__ acc,\n"
                  "    const float *__restrict__ loss, const float *__restrict__ metrics, int first) {\n"
                  "  if (threadIdx.x != 0 || blockIdx.x != 0) return;\n"
                  "  float l = loss[0], c = metrics[0], n = metrics[1];\n"
                  "  if (first) acc[0] = l, acc[1] = c, acc[2] = n;\n"
                  "  else acc[0] += l, acc[1] += c, acc[2] += n;\n"
                  "}\n"
                  "#endif\n");
}
