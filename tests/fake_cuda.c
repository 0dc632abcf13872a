/* fake_cuda.c: the CUDA driver and cuBLASLt on the host (see fake_cuda.h). */
#include "fake_cuda.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/cuda_api.h"

/* A kernel of the emulated module. */
struct CUfunc_st {
  char name[128];
  int nargs;
};

typedef enum { OP_KERNEL, OP_COPY, OP_MEMSET8, OP_MEMSET32, OP_GEMM } op_kind;

/* Streams and events. A captured operation depends on the one before it on
 * its stream and on the events its stream waited for since; a replay runs
 * the operations in any order those dependencies allow (fake_cuda_replay). */
#define FAKE_STREAMS 8 /* handle 0 is the null stream */
#define FAKE_ALGOS 64  /* distinct GEMM algorithms remembered */
#define FAKE_DEPS 16
struct CUstream_st {
  int id;
};
struct CUevent_st {
  int captured; /* recorded on a stream in the capture */
  int ndeps, deps[FAKE_DEPS];
};
static struct CUstream_st fake_stream[FAKE_STREAMS] = {{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}};
static int stream_id(CUstream s) { return s ? s->id : 0; }

/* One recorded operation of a captured stream. */
typedef struct fop {
  op_kind kind;
  CUfunction f;
  unsigned grid[3], block[3], smem;
  uint64_t args[16];
  void *dst;
  const void *src;
  size_t n;
  unsigned val;
  /* GEMM */
  const void *desc, *la, *lb, *lc;
  const void *A, *B, *C;
  void *D;
  float alpha, beta;
  /* captured: its stream and the operations it waits for */
  int stream, ndeps, deps[FAKE_DEPS];
} fop;

struct CUgraph_st {
  fop *ops;
  int n, cap, origin;
};
struct CUgraphExec_st {
  fop *ops;
  int n, origin;
};

static struct {
  emu_module *m;
  const zoo_cuda_emit *e;
  struct CUfunc_st funcs[1024];
  int nfuncs;
  CUgraph capturing;
  /* per stream while capturing: in the capture, its last operation and
   * node, the operations waited for since */
  unsigned char joined[FAKE_STREAMS];
  int tail[FAKE_STREAMS], npend[FAKE_STREAMS], pend[FAKE_STREAMS][FAKE_DEPS];
  CUgraphNode node[FAKE_STREAMS];
  int nstreams;
  int replay;
  fake_cuda_stats st;
  cublasLtMatmulAlgo_t algos[FAKE_ALGOS]; /* the distinct algorithms cublasLtMatmul ran */
  int nalgos;
  int installed;
} F;

void fake_cuda_replay(int order) { F.replay = order; }

/* Adds operation k to a dependency list, once. */
static int add_dep(int *deps, int *n, int k) {
  for (int i = 0; i < *n; i++)
    if (deps[i] == k) return 0;
  if (*n == FAKE_DEPS) return -1;
  deps[(*n)++] = k;
  return 0;
}

fake_cuda_stats fake_cuda_counters(void) { return F.st; }

void fake_cuda_module(emu_module *m, const zoo_cuda_emit *e) {
  F.m = m;
  F.e = e;
  F.nfuncs = 0;
}

/* The argument count of a kernel, from the steps that launch it. */
static int kernel_nargs(const char *name) {
  if (!strcmp(name, "zoo_adamw")) return 6;
  if (!strcmp(name, "zoo_accumulate") || !strcmp(name, "zoo_metrics_accumulate")) return 4;
  for (int i = 0; F.e && i < F.e->nsteps; i++)
    if (F.e->steps[i].func && !strcmp(F.e->steps[i].func, name))
      return F.e->steps[i].kind == ZOO_STEP_GEMM ? 4 : F.e->steps[i].nargs; /* zoo's GEMM: a, b, bias, c */
  return -1;
}

/* Records op on stream id of the capture: after the stream's last operation
 * and the events it waited for. */
static CUresult record(fop *op, int id) {
  CUgraph g = F.capturing;
  if (!F.joined[id]) return CUDA_ERROR_STREAM_CAPTURE_ISOLATION; /* a stream outside the capture */
  op->stream = id, op->ndeps = 0;
  if (F.tail[id] >= 0) add_dep(op->deps, &op->ndeps, F.tail[id]);
  for (int k = 0; k < F.npend[id]; k++)
    if (add_dep(op->deps, &op->ndeps, F.pend[id][k]) != 0) return CUDA_ERROR_NOT_SUPPORTED;
  F.npend[id] = 0;
  if (g->n == g->cap) {
    g->cap = g->cap ? 2 * g->cap : 64;
    g->ops = realloc(g->ops, (size_t)g->cap * sizeof *g->ops);
  }
  g->ops[g->n++] = *op;
  F.tail[id] = g->n - 1;
  F.node[id] = (CUgraphNode)(intptr_t)g->n; /* node k + 1 */
  if (id != g->origin) F.st.side_ops++;
  return CUDA_SUCCESS;
}

static void gemm_run(const fop *op);

/* Runs one operation now. */
static CUresult run_op(const fop *op) {
  switch (op->kind) {
  case OP_KERNEL: {
    void *params[16];
    uint64_t vals[16];
    memcpy(vals, op->args, sizeof vals);
    for (int a = 0; a < op->f->nargs; a++) params[a] = &vals[a];
    if (emu_launch(F.m, op->f->name, op->grid, op->block, op->smem, params) != 0) return CUDA_ERROR_LAUNCH_FAILED;
    return CUDA_SUCCESS;
  }
  case OP_COPY: memmove(op->dst, op->src, op->n); return CUDA_SUCCESS;
  case OP_MEMSET8: memset(op->dst, (int)op->val, op->n); return CUDA_SUCCESS;
  case OP_MEMSET32:
    for (size_t i = 0; i < op->n; i++) ((uint32_t *)op->dst)[i] = op->val;
    return CUDA_SUCCESS;
  case OP_GEMM: gemm_run(op); return CUDA_SUCCESS;
  }
  return CUDA_ERROR_UNKNOWN;
}

static CUresult issue(fop *op, CUstream s) {
  if (F.capturing) return record(op, stream_id(s));
  return run_op(op);
}

/* ---- the driver */

static CUresult f_cuInit(unsigned int flags) { return CUDA_SUCCESS; }
static CUresult f_cuDriverGetVersion(int *v) { return *v = 13000, CUDA_SUCCESS; }
static CUresult f_cuGetErrorName(CUresult e, const char **s) { return *s = "CUDA_ERROR_FAKE", CUDA_SUCCESS; }
static CUresult f_cuGetErrorString(CUresult e, const char **s) { return *s = "an error of the fake driver", CUDA_SUCCESS; }
static CUresult f_cuDeviceGet(CUdevice *d, int ordinal) { return *d = ordinal, CUDA_SUCCESS; }
static CUresult f_cuDeviceGetCount(int *n) { return *n = 1, CUDA_SUCCESS; }
static CUresult f_cuDeviceGetAttribute(int *v, CUdevice_attribute a, CUdevice d) {
  *v = a == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR ? 9 : a == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR ? 0 : 1;
  return CUDA_SUCCESS;
}
static CUresult f_cuDeviceGetName(char *name, int len, CUdevice d) {
  snprintf(name, (size_t)len, "fake H200 (CPU emulation)");
  return CUDA_SUCCESS;
}
static CUresult f_cuDevicePrimaryCtxRetain(CUcontext *c, CUdevice d) { return *c = (CUcontext)(intptr_t)1, CUDA_SUCCESS; }
static CUresult f_cuDevicePrimaryCtxRelease(CUdevice d) { return CUDA_SUCCESS; }
static CUresult f_cuCtxSetCurrent(CUcontext c) { return CUDA_SUCCESS; }
static CUresult f_cuCtxSynchronize(void) { return CUDA_SUCCESS; }
static CUresult f_cuModuleLoadData(CUmodule *m, const void *image) {
  if (!F.m || memcmp(image, "\177ELF", 4) != 0) return CUDA_ERROR_INVALID_IMAGE;
  *m = (CUmodule)F.m;
  return CUDA_SUCCESS;
}
static CUresult f_cuModuleUnload(CUmodule m) { return CUDA_SUCCESS; }
static CUresult f_cuModuleGetFunction(CUfunction *f, CUmodule m, const char *name) {
  int nargs = kernel_nargs(name);
  if (nargs < 0 || F.nfuncs == 1024) return CUDA_ERROR_NOT_FOUND;
  struct CUfunc_st *fn = &F.funcs[F.nfuncs++];
  snprintf(fn->name, sizeof fn->name, "%s", name);
  fn->nargs = nargs;
  *f = fn;
  return CUDA_SUCCESS;
}
static CUresult f_cuFuncSetAttribute(CUfunction f, CUfunction_attribute a, int v) { return CUDA_SUCCESS; }
static CUresult launch(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                       unsigned bz, unsigned smem, CUstream s, void **params, void **extra) {
  fop op;
  memset(&op, 0, sizeof op);
  op.kind = OP_KERNEL;
  op.f = f;
  op.grid[0] = gx, op.grid[1] = gy, op.grid[2] = gz;
  op.block[0] = bx, op.block[1] = by, op.block[2] = bz;
  op.smem = smem;
  /* the driver copies each argument at launch: 8 bytes covers every kind */
  for (int a = 0; a < f->nargs; a++) memcpy(&op.args[a], params[a], 8);
  if (!F.capturing) F.st.kernel_launches++;
  return issue(&op, s);
}
static CUresult f_cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                 unsigned bz, unsigned smem, CUstream s, void **params, void **extra) {
  F.st.plain_launches++;
  return launch(f, gx, gy, gz, bx, by, bz, smem, s, params, extra);
}
static CUresult f_cuLaunchKernelEx(const CUlaunchConfig *cfg, CUfunction f, void **params, void **extra) {
  int pdl = 0;
  for (unsigned a = 0; a < cfg->numAttrs; a++)
    pdl |= cfg->attrs[a].id == CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION &&
           cfg->attrs[a].value.programmaticStreamSerializationAllowed;
  if (pdl) F.st.pdl_launches++;
  else F.st.plain_launches++;
  return launch(f, cfg->gridDimX, cfg->gridDimY, cfg->gridDimZ, cfg->blockDimX, cfg->blockDimY,
                          cfg->blockDimZ, cfg->sharedMemBytes, cfg->hStream, params, extra);
}
static CUresult f_cuMemAlloc(CUdeviceptr *p, size_t n) {
  void *q = calloc(1, n ? n : 1);
  if (!q) return CUDA_ERROR_OUT_OF_MEMORY;
  memset(q, 0xa5, n); /* garbage, as fresh device memory may hold */
  F.st.allocations++;
  *p = (CUdeviceptr)(uintptr_t)q;
  return CUDA_SUCCESS;
}
static CUresult f_cuMemFree(CUdeviceptr p) {
  F.st.allocations--;
  free((void *)(uintptr_t)p);
  return CUDA_SUCCESS;
}
static CUresult f_cuMemHostAlloc(void **p, size_t n, unsigned flags) {
  *p = calloc(1, n ? n : 1);
  return *p ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
static CUresult f_cuMemFreeHost(void *p) { return free(p), CUDA_SUCCESS; }
static CUresult f_cuMemcpyHtoD(CUdeviceptr d, const void *s, size_t n) {
  if (F.capturing) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
  memcpy((void *)(uintptr_t)d, s, n);
  return CUDA_SUCCESS;
}
static CUresult f_cuMemcpyDtoH(void *d, CUdeviceptr s, size_t n) {
  if (F.capturing) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
  memcpy(d, (const void *)(uintptr_t)s, n);
  return CUDA_SUCCESS;
}
static CUresult copy_op(void *d, const void *s, size_t n, CUstream st) {
  fop op;
  memset(&op, 0, sizeof op);
  op.kind = OP_COPY, op.dst = d, op.src = s, op.n = n;
  return issue(&op, st);
}
static CUresult f_cuMemcpyHtoDAsync(CUdeviceptr d, const void *s, size_t n, CUstream st) {
  return copy_op((void *)(uintptr_t)d, s, n, st);
}
static CUresult f_cuMemcpyDtoHAsync(void *d, CUdeviceptr s, size_t n, CUstream st) {
  return copy_op(d, (const void *)(uintptr_t)s, n, st);
}
static CUresult f_cuMemcpyDtoDAsync(CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st) {
  return copy_op((void *)(uintptr_t)d, (const void *)(uintptr_t)s, n, st);
}
static CUresult f_cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, CUstream st) {
  fop op;
  memset(&op, 0, sizeof op);
  op.kind = OP_MEMSET8, op.dst = (void *)(uintptr_t)d, op.val = v, op.n = n;
  return issue(&op, st);
}
static CUresult f_cuMemsetD32Async(CUdeviceptr d, unsigned int v, size_t n, CUstream st) {
  fop op;
  memset(&op, 0, sizeof op);
  op.kind = OP_MEMSET32, op.dst = (void *)(uintptr_t)d, op.val = v, op.n = n;
  return issue(&op, st);
}
static CUresult f_cuMemGetInfo(size_t *fr, size_t *total) {
  *total = (size_t)80 << 30;
  *fr = *total - (size_t)F.st.allocations * 4096;
  return CUDA_SUCCESS;
}
static CUresult f_cuStreamCreate(CUstream *s, unsigned flags) {
  *s = &fake_stream[1 + F.nstreams++ % (FAKE_STREAMS - 1)];
  return CUDA_SUCCESS;
}
static CUresult f_cuStreamCreateWithPriority(CUstream *s, unsigned flags, int priority) {
  return f_cuStreamCreate(s, flags);
}
static CUresult f_cuCtxGetStreamPriorityRange(int *least, int *greatest) {
  *least = 0, *greatest = -5;
  return CUDA_SUCCESS;
}
static CUresult f_cuStreamDestroy(CUstream s) { return CUDA_SUCCESS; }
static CUresult f_cuStreamSynchronize(CUstream s) {
  return F.capturing ? CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED : CUDA_SUCCESS;
}
static CUresult f_cuStreamBeginCapture(CUstream s, CUstreamCaptureMode mode) {
  if (F.capturing) return CUDA_ERROR_ILLEGAL_STATE;
  F.capturing = calloc(1, sizeof *F.capturing);
  F.capturing->origin = stream_id(s);
  for (int k = 0; k < FAKE_STREAMS; k++) F.joined[k] = 0, F.tail[k] = -1, F.npend[k] = 0, F.node[k] = NULL;
  F.joined[stream_id(s)] = 1;
  return CUDA_SUCCESS;
}
/* Ends the capture; as the driver does, refuses it when a stream that joined
 * it has work the origin stream does not wait for (not joined back). */
static CUresult f_cuStreamEndCapture(CUstream s, CUgraph *g) {
  if (!F.capturing || stream_id(s) != F.capturing->origin) return CUDA_ERROR_ILLEGAL_STATE;
  CUgraph cg = F.capturing;
  int o = cg->origin, *stack = malloc(((size_t)cg->n + FAKE_DEPS + 1) * sizeof *stack), top = 0;
  char *seen = calloc((size_t)cg->n + 1, 1);
  if (F.tail[o] >= 0) stack[top++] = F.tail[o];
  for (int k = 0; k < F.npend[o]; k++) stack[top++] = F.pend[o][k];
  while (top > 0) {
    int i = stack[--top];
    if (seen[i]) continue;
    seen[i] = 1;
    for (int k = 0; k < cg->ops[i].ndeps; k++)
      if (!seen[cg->ops[i].deps[k]]) stack[top++] = cg->ops[i].deps[k];
  }
  int unjoined = 0;
  for (int i = 0; i < cg->n; i++) unjoined += !seen[i];
  free(stack), free(seen);
  F.capturing = NULL;
  memset(F.joined, 0, sizeof F.joined);
  if (unjoined) {
    free(cg->ops), free(cg);
    *g = NULL;
    return CUDA_ERROR_STREAM_CAPTURE_UNJOINED;
  }
  *g = cg;
  return CUDA_SUCCESS;
}
static CUresult f_cuStreamGetCaptureInfo(CUstream s, CUstreamCaptureStatus *status, cuuint64_t *id, CUgraph *g,
                                         const CUgraphNode **deps, const CUgraphEdgeData **edges, size_t *ndeps) {
  int sid = stream_id(s);
  int in = F.capturing && F.joined[sid];
  *status = in ? CU_STREAM_CAPTURE_STATUS_ACTIVE : CU_STREAM_CAPTURE_STATUS_NONE;
  if (g) *g = in ? F.capturing : NULL;
  if (deps) *deps = &F.node[sid];
  if (edges) *edges = NULL;
  if (ndeps) *ndeps = in ? (F.node[sid] ? 1 : 0) + (size_t)F.npend[sid] : 0;
  return CUDA_SUCCESS;
}
static CUresult f_cuGraphInstantiate(CUgraphExec *x, CUgraph g, unsigned long long flags) {
  CUgraphExec e = calloc(1, sizeof *e);
  e->n = g->n;
  e->origin = g->origin;
  e->ops = malloc((size_t)(g->n ? g->n : 1) * sizeof *e->ops);
  memcpy(e->ops, g->ops, (size_t)g->n * sizeof *e->ops);
  *x = e;
  return CUDA_SUCCESS;
}
static CUresult f_cuGraphLaunch(CUgraphExec x, CUstream s) {
  if (F.capturing) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
  F.st.graph_launches++;
  if (F.replay == 0) { /* in the order of capture */
    for (int i = 0; i < x->n; i++) {
      CUresult r = run_op(&x->ops[i]);
      if (r != CUDA_SUCCESS) return r;
      F.st.graph_nodes_replayed++;
    }
    return CUDA_SUCCESS;
  }
  /* in another order the dependencies allow: the origin stream's operations
   * first whenever one is ready (replay 1), or the other streams' (2) */
  char *done = calloc((size_t)x->n + 1, 1);
  CUresult r = CUDA_SUCCESS;
  for (int count = 0; count < x->n && r == CUDA_SUCCESS; count++) {
    int pick = -1;
    for (int pass = 0; pass < 2 && pick < 0; pass++)
      for (int i = 0; i < x->n && pick < 0; i++) {
        if (done[i] || ((x->ops[i].stream == x->origin) != ((F.replay == 1) == (pass == 0)))) continue;
        int ready = 1;
        for (int k = 0; k < x->ops[i].ndeps; k++) ready &= done[x->ops[i].deps[k]];
        if (ready) pick = i;
      }
    if (pick < 0) r = CUDA_ERROR_ILLEGAL_STATE; /* a cycle: cannot happen */
    else r = run_op(&x->ops[pick]), done[pick] = 1, F.st.graph_nodes_replayed++;
  }
  free(done);
  return r;
}
static CUresult f_cuGraphExecDestroy(CUgraphExec x) {
  free(x->ops);
  free(x);
  return CUDA_SUCCESS;
}
static CUresult f_cuGraphDestroy(CUgraph g) {
  free(g->ops);
  free(g);
  return CUDA_SUCCESS;
}
static CUresult f_cuGraphExecKernelNodeSetParams(CUgraphExec x, CUgraphNode node, const CUDA_KERNEL_NODE_PARAMS *p) {
  intptr_t k = (intptr_t)node - 1;
  if (k < 0 || k >= x->n || x->ops[k].kind != OP_KERNEL || x->ops[k].f != p->func) return CUDA_ERROR_INVALID_VALUE;
  fop *op = &x->ops[k];
  op->grid[0] = p->gridDimX, op->grid[1] = p->gridDimY, op->grid[2] = p->gridDimZ;
  op->block[0] = p->blockDimX, op->block[1] = p->blockDimY, op->block[2] = p->blockDimZ;
  op->smem = p->sharedMemBytes;
  for (int a = 0; a < op->f->nargs; a++) memcpy(&op->args[a], p->kernelParams[a], 8);
  F.st.setparams++;
  return CUDA_SUCCESS;
}
static CUresult f_cuGraphKernelNodeGetParams(CUgraphNode node, CUDA_KERNEL_NODE_PARAMS *p) {
  return CUDA_ERROR_NOT_SUPPORTED;
}
static CUresult f_cuGraphGetNodes(CUgraph g, CUgraphNode *nodes, size_t *n) {
  if (nodes)
    for (int i = 0; i < g->n && (size_t)i < *n; i++) nodes[i] = (CUgraphNode)(intptr_t)(i + 1);
  *n = (size_t)g->n;
  return CUDA_SUCCESS;
}
static CUresult f_cuEventCreate(CUevent *e, unsigned flags) {
  *e = calloc(1, sizeof **e);
  return *e ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
/* Recorded in a capture, the event stands for its stream's work so far. */
static CUresult f_cuEventRecord(CUevent e, CUstream s) {
  int id = stream_id(s);
  e->captured = F.capturing && F.joined[id];
  e->ndeps = 0;
  if (!e->captured) return CUDA_SUCCESS;
  if (F.tail[id] >= 0) add_dep(e->deps, &e->ndeps, F.tail[id]);
  for (int k = 0; k < F.npend[id]; k++)
    if (add_dep(e->deps, &e->ndeps, F.pend[id][k]) != 0) return CUDA_ERROR_NOT_SUPPORTED;
  return CUDA_SUCCESS;
}
/* In a capture, the stream joins it (if it had not) and its next operation
 * waits for the event's. */
static CUresult f_cuStreamWaitEvent(CUstream s, CUevent e, unsigned flags) {
  if (!F.capturing) return CUDA_SUCCESS; /* everything ran already */
  if (!e->captured) return CUDA_ERROR_STREAM_CAPTURE_ISOLATION;
  int id = stream_id(s);
  F.joined[id] = 1;
  for (int k = 0; k < e->ndeps; k++)
    if (add_dep(F.pend[id], &F.npend[id], e->deps[k]) != 0) return CUDA_ERROR_NOT_SUPPORTED;
  return CUDA_SUCCESS;
}
static CUresult f_cuEventSynchronize(CUevent e) { return CUDA_SUCCESS; }
static CUresult f_cuEventElapsedTime(float *ms, CUevent a, CUevent b) { return *ms = 1.0f, CUDA_SUCCESS; }
static CUresult f_cuEventDestroy(CUevent e) { return free(e), CUDA_SUCCESS; }
static CUresult f_cuEventQuery(CUevent e) { return CUDA_SUCCESS; }

/* ---- cuBLASLt: descriptors are plain structs; the product is computed as
 * cuBLAS defines it, column-major. */

typedef struct fdesc {
  int32_t ta, tb;
  uint32_t epilogue;
  const void *bias;
} fdesc;
typedef struct flayout {
  uint64_t rows, cols;
  int64_t ld, stride;
  int32_t batch;
} flayout;

static void gemm_run(const fop *op) {
  const fdesc *d = op->desc;
  const flayout *la = op->la, *lb = op->lb, *lc = op->lc;
  int64_t m = (int64_t)lc->rows, n = (int64_t)lc->cols;
  int64_t k = d->ta ? (int64_t)la->rows : (int64_t)la->cols;
  const float *A = op->A, *B = op->B, *C = op->C;
  float *D = op->D;
  const float *bias = d->epilogue == CUBLASLT_EPILOGUE_BIAS ? d->bias : NULL;
  for (int32_t q = 0; q < lc->batch; q++) {
    const float *a = A + q * la->stride, *b = B + q * lb->stride;
    for (int64_t j = 0; j < n; j++)
      for (int64_t i = 0; i < m; i++) {
        double acc = 0;
        for (int64_t p = 0; p < k; p++) {
          double av = d->ta ? a[p + i * la->ld] : a[i + p * la->ld];
          double bv = d->tb ? b[j + p * lb->ld] : b[p + j * lb->ld];
          acc += av * bv;
        }
        double v = op->alpha * acc;
        if (op->beta != 0) v += op->beta * C[q * lc->stride + i + j * lc->ld];
        if (bias) v += bias[i];
        D[q * lc->stride + i + j * lc->ld] = (float)v;
      }
  }
}

static cublasStatus_t f_ltCreate(cublasLtHandle_t *h) { return *h = (cublasLtHandle_t)(intptr_t)5, CUBLAS_STATUS_SUCCESS; }
static cublasStatus_t f_ltDestroy(cublasLtHandle_t h) { return CUBLAS_STATUS_SUCCESS; }
static size_t f_ltGetVersion(void) { return 130000; }
static const char *f_ltGetStatusString(cublasStatus_t s) { return "a fake cuBLASLt status"; }
static cublasStatus_t f_ltMatmulDescCreate(cublasLtMatmulDesc_t *d, cublasComputeType_t c, cudaDataType_t s) {
  if (c != CUBLAS_COMPUTE_32F || s != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  *d = (cublasLtMatmulDesc_t)calloc(1, sizeof(fdesc));
  return CUBLAS_STATUS_SUCCESS;
}
static cublasStatus_t f_ltMatmulDescDestroy(cublasLtMatmulDesc_t d) { return free(d), CUBLAS_STATUS_SUCCESS; }
static cublasStatus_t f_ltMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t a,
                                                 const void *buf, size_t size) {
  fdesc *d = (fdesc *)desc;
  switch (a) {
  case CUBLASLT_MATMUL_DESC_TRANSA: d->ta = *(const int32_t *)buf == CUBLAS_OP_T; break;
  case CUBLASLT_MATMUL_DESC_TRANSB: d->tb = *(const int32_t *)buf == CUBLAS_OP_T; break;
  case CUBLASLT_MATMUL_DESC_EPILOGUE: d->epilogue = *(const uint32_t *)buf; break;
  case CUBLASLT_MATMUL_DESC_BIAS_POINTER: memcpy(&d->bias, buf, sizeof d->bias); break;
  default: return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  return CUBLAS_STATUS_SUCCESS;
}
static cublasStatus_t f_ltMatrixLayoutCreate(cublasLtMatrixLayout_t *l, cudaDataType t, uint64_t rows, uint64_t cols,
                                             int64_t ld) {
  flayout *x = calloc(1, sizeof *x);
  x->rows = rows, x->cols = cols, x->ld = ld, x->batch = 1;
  if (t != CUDA_R_32F || ld < (int64_t)rows) return free(x), CUBLAS_STATUS_INVALID_VALUE;
  *l = (cublasLtMatrixLayout_t)x;
  return CUBLAS_STATUS_SUCCESS;
}
static cublasStatus_t f_ltMatrixLayoutDestroy(cublasLtMatrixLayout_t l) { return free(l), CUBLAS_STATUS_SUCCESS; }
static cublasStatus_t f_ltMatrixLayoutSetAttribute(cublasLtMatrixLayout_t l, cublasLtMatrixLayoutAttribute_t a,
                                                   const void *buf, size_t size) {
  flayout *x = (flayout *)l;
  if (a == CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT) x->batch = *(const int32_t *)buf;
  else if (a == CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET) x->stride = *(const int64_t *)buf;
  else return CUBLAS_STATUS_NOT_SUPPORTED;
  return CUBLAS_STATUS_SUCCESS;
}
static cublasStatus_t f_ltPrefCreate(cublasLtMatmulPreference_t *p) {
  *p = (cublasLtMatmulPreference_t)calloc(1, 64);
  return CUBLAS_STATUS_SUCCESS;
}
static cublasStatus_t f_ltPrefDestroy(cublasLtMatmulPreference_t p) { return free(p), CUBLAS_STATUS_SUCCESS; }
/* A preference holds its search mode in its first 4 bytes. */
static cublasStatus_t f_ltPrefSetAttribute(cublasLtMatmulPreference_t p, cublasLtMatmulPreferenceAttributes_t a,
                                           const void *buf, size_t size) {
  if (a == CUBLASLT_MATMUL_PREF_SEARCH_MODE) memcpy(p, buf, sizeof(uint32_t));
  return CUBLAS_STATUS_SUCCESS;
}
/* Two algorithm ids, 5 and 9; an algorithm holds its id in data[0] and its
 * configuration in data[1]. */
static cublasStatus_t f_ltAlgoGetIds(cublasLtHandle_t h, cublasComputeType_t ct, cudaDataType_t st, cudaDataType_t at,
                                     cudaDataType_t bt, cudaDataType_t cty, cudaDataType_t dt, int req, int *ids,
                                     int *count) {
  if (req < 1) return CUBLAS_STATUS_INVALID_VALUE;
  ids[0] = 5;
  if (req > 1) ids[1] = 9;
  *count = req < 2 ? req : 2;
  return CUBLAS_STATUS_SUCCESS;
}
static cublasStatus_t f_ltAlgoInit(cublasLtHandle_t h, cublasComputeType_t ct, cudaDataType_t st, cudaDataType_t at,
                                   cudaDataType_t bt, cudaDataType_t cty, cudaDataType_t dt, int id,
                                   cublasLtMatmulAlgo_t *algo) {
  memset(algo, 0, sizeof *algo);
  algo->data[0] = (uint64_t)id;
  return CUBLAS_STATUS_SUCCESS;
}
static cublasStatus_t f_ltAlgoGetHeuristic(cublasLtHandle_t h, cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t a,
                                           cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c,
                                           cublasLtMatrixLayout_t d, cublasLtMatmulPreference_t p, int req,
                                           cublasLtMatmulHeuristicResult_t *res, int *count) {
  const flayout *la = (const flayout *)a, *lb = (const flayout *)b, *lc = (const flayout *)c;
  const fdesc *ds = (const fdesc *)op;
  /* the shapes must agree, as cuBLAS checks */
  uint64_t m = ds->ta ? la->cols : la->rows, k = ds->ta ? la->rows : la->cols;
  uint64_t kb = ds->tb ? lb->cols : lb->rows, n = ds->tb ? lb->rows : lb->cols;
  if (m != lc->rows || n != lc->cols || k != kb || la->batch != lc->batch || lb->batch != lc->batch) {
    *count = 0;
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  uint32_t mode;
  memcpy(&mode, p, sizeof mode);
  if (mode == CUBLASLT_SEARCH_LIMITED_BY_ALGO_ID) {
    /* res[0]'s algorithm id in three configurations, the third the first again
     * (data[1] = r % 2), so that the backend's list drops a repeat */
    uint64_t id = res[0].algo.data[0];
    int got = req < 3 ? req : 3;
    memset(res, 0, (size_t)got * sizeof *res);
    for (int i = 0; i < got; i++) {
      res[i].algo.data[0] = id, res[i].algo.data[1] = (uint64_t)(i % 2);
      res[i].state = CUBLAS_STATUS_SUCCESS;
    }
    *count = got;
    return CUBLAS_STATUS_SUCCESS;
  }
  /* two candidates when asked for more, so that the backend's tuning runs */
  int got = req < 2 ? req : 2;
  memset(res, 0, (size_t)got * sizeof *res);
  for (int i = 0; i < got; i++) res[i].state = CUBLAS_STATUS_SUCCESS;
  *count = got;
  return CUBLAS_STATUS_SUCCESS;
}
static cublasStatus_t f_ltMatmul(cublasLtHandle_t h, cublasLtMatmulDesc_t desc, const void *alpha, const void *A,
                                 cublasLtMatrixLayout_t la, const void *B, cublasLtMatrixLayout_t lb, const void *beta,
                                 const void *C, cublasLtMatrixLayout_t lc, void *D, cublasLtMatrixLayout_t ld,
                                 const cublasLtMatmulAlgo_t *algo, void *ws, size_t wsn, cudaStream_t s) {
  fop op;
  memset(&op, 0, sizeof op);
  op.kind = OP_GEMM;
  op.desc = desc, op.la = la, op.lb = lb, op.lc = lc;
  op.A = A, op.B = B, op.C = C, op.D = D;
  op.alpha = *(const float *)alpha, op.beta = *(const float *)beta;
  int seen = 0;
  for (int i = 0; i < F.nalgos && !seen; i++) seen = !memcmp(&F.algos[i], algo, sizeof *algo);
  if (!seen && F.nalgos < FAKE_ALGOS) F.algos[F.nalgos++] = *algo, F.st.gemm_algos++;
  return issue(&op, (CUstream)s) == CUDA_SUCCESS ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}

void fake_cuda_install(void) {
  zoo_cu_api cu;
  memset(&cu, 0, sizeof cu);
  cu.cuInit = f_cuInit;
  cu.cuDriverGetVersion = f_cuDriverGetVersion;
  cu.cuGetErrorName = f_cuGetErrorName;
  cu.cuGetErrorString = f_cuGetErrorString;
  cu.cuDeviceGet = f_cuDeviceGet;
  cu.cuDeviceGetCount = f_cuDeviceGetCount;
  cu.cuDeviceGetAttribute = f_cuDeviceGetAttribute;
  cu.cuDeviceGetName = f_cuDeviceGetName;
  cu.cuDevicePrimaryCtxRetain = f_cuDevicePrimaryCtxRetain;
  cu.cuDevicePrimaryCtxRelease = f_cuDevicePrimaryCtxRelease;
  cu.cuCtxSetCurrent = f_cuCtxSetCurrent;
  cu.cuCtxSynchronize = f_cuCtxSynchronize;
  cu.cuModuleLoadData = f_cuModuleLoadData;
  cu.cuModuleUnload = f_cuModuleUnload;
  cu.cuModuleGetFunction = f_cuModuleGetFunction;
  cu.cuFuncSetAttribute = f_cuFuncSetAttribute;
  cu.cuLaunchKernel = f_cuLaunchKernel;
  cu.cuLaunchKernelEx = f_cuLaunchKernelEx;
  cu.cuMemAlloc = f_cuMemAlloc;
  cu.cuMemFree = f_cuMemFree;
  cu.cuMemHostAlloc = f_cuMemHostAlloc;
  cu.cuMemFreeHost = f_cuMemFreeHost;
  cu.cuMemcpyHtoD = f_cuMemcpyHtoD;
  cu.cuMemcpyDtoH = f_cuMemcpyDtoH;
  cu.cuMemcpyHtoDAsync = f_cuMemcpyHtoDAsync;
  cu.cuMemcpyDtoHAsync = f_cuMemcpyDtoHAsync;
  cu.cuMemcpyDtoDAsync = f_cuMemcpyDtoDAsync;
  cu.cuMemsetD8Async = f_cuMemsetD8Async;
  cu.cuMemsetD32Async = f_cuMemsetD32Async;
  cu.cuMemGetInfo = f_cuMemGetInfo;
  cu.cuStreamCreate = f_cuStreamCreate;
  cu.cuStreamDestroy = f_cuStreamDestroy;
  cu.cuStreamSynchronize = f_cuStreamSynchronize;
  cu.cuStreamBeginCapture = f_cuStreamBeginCapture;
  cu.cuStreamEndCapture = f_cuStreamEndCapture;
  cu.cuStreamGetCaptureInfo = f_cuStreamGetCaptureInfo;
  cu.cuGraphInstantiate = f_cuGraphInstantiate;
  cu.cuGraphLaunch = f_cuGraphLaunch;
  cu.cuGraphExecDestroy = f_cuGraphExecDestroy;
  cu.cuGraphDestroy = f_cuGraphDestroy;
  cu.cuGraphExecKernelNodeSetParams = f_cuGraphExecKernelNodeSetParams;
  cu.cuGraphKernelNodeGetParams = f_cuGraphKernelNodeGetParams;
  cu.cuGraphGetNodes = f_cuGraphGetNodes;
  cu.cuEventCreate = f_cuEventCreate;
  cu.cuEventRecord = f_cuEventRecord;
  cu.cuEventSynchronize = f_cuEventSynchronize;
  cu.cuEventElapsedTime = f_cuEventElapsedTime;
  cu.cuEventDestroy = f_cuEventDestroy;
  cu.cuEventQuery = f_cuEventQuery;
  cu.cuStreamWaitEvent = f_cuStreamWaitEvent;
  cu.cuStreamCreateWithPriority = f_cuStreamCreateWithPriority;
  cu.cuCtxGetStreamPriorityRange = f_cuCtxGetStreamPriorityRange;
  zoo_cublaslt_api lt;
  memset(&lt, 0, sizeof lt);
  lt.cublasLtCreate = f_ltCreate;
  lt.cublasLtDestroy = f_ltDestroy;
  lt.cublasLtGetVersion = f_ltGetVersion;
  lt.cublasLtGetStatusString = f_ltGetStatusString;
  lt.cublasLtMatmulDescCreate = f_ltMatmulDescCreate;
  lt.cublasLtMatmulDescDestroy = f_ltMatmulDescDestroy;
  lt.cublasLtMatmulDescSetAttribute = f_ltMatmulDescSetAttribute;
  lt.cublasLtMatrixLayoutCreate = f_ltMatrixLayoutCreate;
  lt.cublasLtMatrixLayoutDestroy = f_ltMatrixLayoutDestroy;
  lt.cublasLtMatrixLayoutSetAttribute = f_ltMatrixLayoutSetAttribute;
  lt.cublasLtMatmulPreferenceCreate = f_ltPrefCreate;
  lt.cublasLtMatmulPreferenceDestroy = f_ltPrefDestroy;
  lt.cublasLtMatmulPreferenceSetAttribute = f_ltPrefSetAttribute;
  lt.cublasLtMatmulAlgoGetHeuristic = f_ltAlgoGetHeuristic;
  lt.cublasLtMatmulAlgoGetIds = f_ltAlgoGetIds;
  lt.cublasLtMatmulAlgoInit = f_ltAlgoInit;
  lt.cublasLtMatmul = f_ltMatmul;
  memset(&F.st, 0, sizeof F.st);
  F.nalgos = 0;
  zoo_cuda_api_set(&cu, &lt);
  F.installed = 1;
}

void fake_cuda_uninstall(void) {
  zoo_cuda_api_set(NULL, NULL);
  F.installed = 0;
  F.m = NULL;
  F.e = NULL;
}
