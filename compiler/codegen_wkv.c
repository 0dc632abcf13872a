/* codegen_wkv.c: CUDA emitters of wkv4 and wkv4_bwd (runtime/kernels/wkv4.cu).
 *
 * Written like the emitters of codegen_intrinsics.c: paste common.cu and
 * wkv4.cu into the module once, write an extern "C" wrapper per kernel that
 * instantiates the template with the node's sizes, append the launches. The
 * backward's two kernels share one scratch area (per-pair partial sums of dw,
 * du, then the forward scan's saved values), declared by both steps.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codegen_cuda.h"

const char *zoo_kernel_source(const char *name);

__attribute__((format(printf, 2, 3))) static int wkv_fail(zoo_cuda_emit *e, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->err, sizeof e->err, fmt, ap);
  va_end(ap);
  return -1;
}

/* Pastes runtime/kernels/<file> unless its include guard is in the module already. */
static int wkv_paste(zoo_cuda_emit *e, const char *file, const char *guard) {
  if (e->src.s && strstr(e->src.s, guard)) return 0;
  const char *text = zoo_kernel_source(file);
  if (!text) return wkv_fail(e, "kernel source %s is not built into the library", file);
  zoo_strbuf_printf(&e->src, "\n// ---- runtime/kernels/%s ----\n", file);
  zoo_strbuf_puts(&e->src, text);
  return 0;
}

/* Sizes of k [B, T, C] (input ki) and the sources the kernels need. */
static int wkv_prepare(zoo_cuda_emit *e, const zoo_node *n, int ki, int64_t *B, int64_t *T,
                       int64_t *C) {
  *B = zoo_cuda_dim(e, n->in[ki], 0), *T = zoo_cuda_dim(e, n->in[ki], 1);
  *C = zoo_cuda_dim(e, n->in[ki], 2);
  if (*B > 2147483647LL || *T > 2147483647LL || *C > 2147483647LL || *B * *C > 2147483647LL * 64)
    return wkv_fail(e, "wkv4 sizes B = %lld, T = %lld, C = %lld do not fit the kernel's ints",
                    (long long)*B, (long long)*T, (long long)*C);
  if (wkv_paste(e, "common.cu", "#define ZK_COMMON_CU\n")) return -1;
  return wkv_paste(e, "wkv4.cu", "#define ZK_WKV4_CU\n");
}

/* A fresh kernel name zoo_<base>_<uid>, with a comment naming the node. */
static const char *wkv_name(zoo_cuda_emit *e, const zoo_node *n, const char *base, char *buf,
                            size_t len) {
  int node = (int)(n - e->g->nodes);
  snprintf(buf, len, "zoo_%s_%d", base, e->uid++);
  zoo_strbuf_printf(&e->src, "\n// %s: node %d\n", buf, node);
  zoo_cuda_comment_node(e, node);
  return buf;
}

/* A launch of `name` over `grid` blocks of `block` threads with tensor arguments. */
static zoo_step *wkv_launch(zoo_cuda_emit *e, const zoo_node *n, const char *name, int64_t grid,
                            unsigned block) {
  zoo_step *s = zoo_cuda_step(e, ZOO_STEP_KERNEL, (int)(n - e->g->nodes));
  s->func = strdup(name); /* owned by the caller, as the other intrinsics' names */
  s->grid[0] = (unsigned)(grid < 1 ? 1 : grid), s->grid[1] = s->grid[2] = 1;
  s->block[0] = block, s->block[1] = s->block[2] = 1;
  return s;
}

static void wkv_arg(zoo_step *s, int t) { s->args[s->nargs++] = (zoo_arg){ZOO_ARG_TENSOR, t, 0, 0, 0}; }

enum { WKV_BLOCK = 64 };

int zoo_cuda_wkv4(zoo_cuda_emit *e, const zoo_node *n) {
  int64_t B, T, C;
  if (wkv_prepare(e, n, 2, &B, &T, &C)) return -1;
  const char *bf = n->attrs.i[0] ? "true" : "false";
  char name[64];
  wkv_name(e, n, "wkv4_fwd", name, sizeof name);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(%d) %s(const float *__restrict__ w, "
                    "const float *__restrict__ u, const float *__restrict__ k, "
                    "const float *__restrict__ v, float *__restrict__ y) {\n"
                    "  zk_wkv4_fwd<%lld, %lld, %s>(w, u, k, v, y, %lldLL);\n}\n",
                    WKV_BLOCK, name, (long long)T, (long long)C, bf, (long long)(B * C));
  zoo_step *s = wkv_launch(e, n, name, (B * C + WKV_BLOCK - 1) / WKV_BLOCK, WKV_BLOCK);
  for (int k = 0; k < 4; k++) wkv_arg(s, n->in[k]);
  wkv_arg(s, n->out[0]);
  return 0;
}

int zoo_cuda_wkv4_bwd(zoo_cuda_emit *e, const zoo_node *n) {
  int64_t B, T, C;
  if (wkv_prepare(e, n, 3, &B, &T, &C)) return -1;
  const char *bf = n->attrs.i[0] ? "true" : "false";
  int64_t part = 2 * B * C, scratch = (part + 3 * B * T * C) * (int64_t)sizeof(float);
  char name[64];

  wkv_name(e, n, "wkv4_bwd", name, sizeof name);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(%d) %s(const float *__restrict__ dy, "
                    "const float *__restrict__ w, const float *__restrict__ u, "
                    "const float *__restrict__ k, const float *__restrict__ v, "
                    "float *__restrict__ dk, float *__restrict__ dv, float *__restrict__ part, "
                    "float *__restrict__ keep) {\n"
                    "  zk_wkv4_bwd<%lld, %lld, %s>(dy, w, u, k, v, dk, dv, part, keep, %lldLL);\n}\n",
                    WKV_BLOCK, name, (long long)T, (long long)C, bf, (long long)(B * C));
  zoo_step *s = wkv_launch(e, n, name, (B * C + WKV_BLOCK - 1) / WKV_BLOCK, WKV_BLOCK);
  for (int k = 0; k < 5; k++) wkv_arg(s, n->in[k]);
  wkv_arg(s, n->out[2]);
  wkv_arg(s, n->out[3]);
  s->args[s->nargs++] = (zoo_arg){ZOO_ARG_SCRATCH, -1, 0, 0, 0};
  s->args[s->nargs++] = (zoo_arg){ZOO_ARG_SCRATCH, -1, part * (int64_t)sizeof(float), 0, 0};
  s->scratch_bytes = scratch;

  wkv_name(e, n, "wkv4_sum", name, sizeof name);
  zoo_strbuf_printf(&e->src,
                    "extern \"C\" __global__ void __launch_bounds__(256) %s(const float *__restrict__ part, "
                    "float *__restrict__ dw, float *__restrict__ du) {\n"
                    "  zk_wkv4_sum<%lld, %lld, %s>(part, dw, du);\n}\n",
                    name, (long long)B, (long long)C, bf);
  s = wkv_launch(e, n, name, (2 * C + 255) / 256, 256);
  s->args[s->nargs++] = (zoo_arg){ZOO_ARG_SCRATCH, -1, 0, 0, 0};
  wkv_arg(s, n->out[0]);
  wkv_arg(s, n->out[1]);
  s->scratch_bytes = scratch;
  return 0;
}
