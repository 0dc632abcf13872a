/* cuda.c: the CUDA backend (backend.h), and a plain graph executor for tests.
 *
 * At init the training graph is fused, emitted and planned for the bound B and
 * T (compiler/generate.c), the module is compiled by NVRTC for the device's own
 * architecture (cached on disk), and the memory is allocated once: the arena of
 * activations, five flat buffers of the parameters' layout (parameters,
 * gradients, accumulated gradients, AdamW m and v), the inputs and cuBLASLt's
 * workspace.
 *
 * A training step (every micro-batch's forward and backward, gradient
 * accumulation, metric sums and AdamW) is captured once as a CUDA graph and
 * replayed. Two graphs alternate, each with its own inputs (tokens, targets,
 * hyper-parameters, dloss) in a pinned host buffer and a device copy of it,
 * which the graph's kernels read in place of the plan's input memory: the host
 * fills step k+1's buffer and uploads it in one copy, on a stream of its own,
 * while step k runs, and the metrics come back on another. (The graph began
 * with four copies and ended with one: on the H200 moving them out took
 * rebased 32/48 from 1.00 to 0.95 ms a step in fp32, .gpu/s13run4.sh.)
 * The learning rate and step count reach AdamW through that device copy; the
 * dropout seed is a kernel argument, updated in the graph's nodes before each
 * launch. Nothing waits for the GPU except the delivery of metrics, which come
 * one step late: train_step returns 1 with the previous step's metrics (zeros on
 * the first call) and sync() returns the last step's.
 *
 * The steps that feed nothing in the next few launches (weight gradients, a
 * norm's parameter gradients) go to a second stream in the captured graphs,
 * beside the main stream's next steps, with events wherever two steps touch
 * the same memory (compiler/schedule.h): the same bits as on one stream, less
 * time at the small cells, where each such launch is a few microseconds that
 * the next steps need not wait for. ZOO_ONE_STREAM=1 keeps every step on one
 * stream, to bisect a difference to this.
 *
 * Every CUDA call is checked; a failure names the call, the file and line, and,
 * when it happens in a step, the step's kernel and .zoo node. ZOO_DEBUG=1 runs
 * the steps one by one with a synchronisation after each.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../compiler/fuse.h"
#include "../compiler/generate.h"
#include "../compiler/schedule.h"
#include "backend.h"
#include "cuda_api.h"
#include "cuda_backend.h"
#include "gemm_choice.h"
#include "nvrtc_cache.h"
#include "rng.h"

#define WORKSPACE_BYTES (32u << 20)
#define GEMM_HEURISTIC 8   /* the heuristic's best fits asked for */
#define GEMM_PER_ID 4      /* and its best configurations of each algorithm */
#define GEMM_CANDIDATES 48 /* candidates in all (gemm_more_candidates) */

/* cuBLASLt's description of one GEMM step. */
typedef struct gemm_plan {
  cublasLtMatmulDesc_t desc;
  cublasLtMatrixLayout_t la, lb, lc; /* la: our b (cuBLAS's A), lb: our a */
  cublasLtMatmulAlgo_t algo;
  cublasLtMatmulAlgo_t cand[GEMM_CANDIDATES]; /* cuBLASLt's heuristic's choices, its best fit first */
  int ncand;
  int nbest; /* cand[0, nbest): the best fits; the rest from gemm_more_candidates */
  int own; /* 1: the step runs zoo's kernel (candidate ncand), not cuBLASLt */
  int ready;
} gemm_plan;

/* A kernel node of a captured graph whose arguments hold the dropout seed. */
typedef struct seed_node {
  CUgraphNode node;
  int step; /* index in the emitted steps */
  int micro;
} seed_node;

typedef struct captured {
  CUgraph graph;
  CUgraphExec exec;
  seed_node *seeds;
  int nseeds, seeds_cap;
  int nodes; /* launches it holds */
} captured;

/* What running steps needs: shared by the backend and the test executor. */
typedef struct core {
  CUdevice dev;
  CUcontext ctx;
  int ctx_retained;
  CUstream stream;
  CUstream side;       /* the second stream of captured graphs (schedule.h), or 0 */
  CUstream cur;        /* where launch_step puts its work: stream, or side */
  CUevent *ev;         /* per step of a list: recorded after it (schedule.h's marks) */
  int nev;
  CUevent ev_start, ev_join; /* a list's start on the main stream; the side stream's end */
  CUmodule mod[ZOO_MODULE_PARTS_MAX]; /* the module, compiled in parts (ZOO_MODULE_PARTS) */
  int nmod;
  struct module_build *building; /* NVRTC at work on another thread (core_module_start) */
  const zoo_cuda_emit *emit;
  CUfunction *func;    /* per emitted step (kernels) */
  gemm_plan *gemm;     /* per emitted step (GEMMs) */
  int nsteps;
  cublasLtHandle_t lt;
  CUdeviceptr workspace, workspace_side; /* cuBLASLt's, one per stream */
  CUdeviceptr base[5]; /* per zoo_mem: ARENA, PARAM, GRAD, INPUT */
  char arch[16], device[128];
  double compile_ms;
  int cached;
  int debug;
  int module_kernels;
  int pdl;             /* kernels launched with programmatic dependent launch */
  captured *capturing; /* set while a graph is being captured */
  zoo_precision precision; /* the GEMMs' (backend.h) */
  /* Address ranges of the INPUT memory that tensor_ptr moves elsewhere while
   * they are set: a training slot's own copy of the inputs (slot_inputs). */
  int nremap;
  struct {
    CUdeviceptr from, to;
    int64_t bytes;
  } remap[3];
  char *err;
  size_t errlen;
} core;

/* ---------------------------------------------------------------------------
 * Device, module, steps */

/* Describes step i for messages: "step 12 (zoo_k12_add; node 34 add at
 * models/std/nn.zoo:3:4)". */
static void step_desc(const core *c, const zoo_graph *g, int i, char *buf, size_t n) {
  const zoo_step *s = &c->emit->steps[i];
  const char *what = s->kind == ZOO_STEP_GEMM ? "GEMM" : s->kind == ZOO_STEP_ZERO ? "clear" : s->func;
  if (g && s->node >= 0 && s->node < g->nnodes) {
    const zoo_node *nd = &g->nodes[s->node];
    if (nd->span.src)
      snprintf(buf, n, "step %d (%s; node %d %s at %s:%d:%d)", i, what ? what : "?", s->node,
               zoo_ops[nd->op].name, nd->span.src->path, nd->span.line, nd->span.col);
    else
      snprintf(buf, n, "step %d (%s; node %d %s)", i, what ? what : "?", s->node, zoo_ops[nd->op].name);
  } else {
    snprintf(buf, n, "step %d (%s)", i, what ? what : "?");
  }
}

/* Prefixes c->err with context ("while X: "). Returns -1. */
static int context(core *c, const char *what) {
  char tmp[1024];
  snprintf(tmp, sizeof tmp, "%s", c->err);
  snprintf(c->err, c->errlen, "%s: %s", what, tmp);
  return -1;
}

/* ZOO_DEBUG=1 set (and not "0")? */
static int debug_mode(void) { return zoo_env_on("ZOO_DEBUG"); }

/* Opens the libraries, picks the device and makes its primary context
 * current. */
static int core_device(core *c, int device) {
  if (zoo_cu_load(c->err, c->errlen) != 0) return -1;
  zoo_cuda_preload(); /* NVRTC (for the module) and cuBLASLt, loaded meanwhile */
  int count = 0;
  ZOO_CU_N(c->err, c->errlen, cuDeviceGetCount(&count));
  if (device < 0 || device >= count) {
    snprintf(c->err, c->errlen, "no CUDA device %d (%d present)", device, count);
    return -1;
  }
  ZOO_CU_N(c->err, c->errlen, cuDeviceGet(&c->dev, device));
  int major = 0, minor = 0;
  ZOO_CU_N(c->err, c->errlen, cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, c->dev));
  ZOO_CU_N(c->err, c->errlen, cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, c->dev));
  snprintf(c->arch, sizeof c->arch, "sm_%d%d", major, minor);
  ZOO_CU_N(c->err, c->errlen, cuDeviceGetName(c->device, (int)sizeof c->device, c->dev));
  ZOO_CU_N(c->err, c->errlen, cuDevicePrimaryCtxRetain(&c->ctx, c->dev));
  c->ctx_retained = 1;
  ZOO_CU_N(c->err, c->errlen, cuCtxSetCurrent(c->ctx));
  c->debug = debug_mode();
  if (zoo_env_on("ZOO_ONE_STREAM")) {
    ZOO_CU_N(c->err, c->errlen, cuStreamCreate(&c->stream, CU_STREAM_NON_BLOCKING));
  } else {
    /* the main stream at the greatest priority, the side one at the least:
     * where both have blocks waiting, the main stream's go first (the graphs
     * keep the priorities per node, CUDA_GRAPH_INSTANTIATE_FLAG_USE_NODE_PRIORITY) */
    int least = 0, greatest = 0;
    ZOO_CU_N(c->err, c->errlen, cuCtxGetStreamPriorityRange(&least, &greatest));
    if (getenv("ZOO_STREAM_PRIORITY") && !zoo_env_on("ZOO_STREAM_PRIORITY")) least = greatest = 0; /* measuring */
    ZOO_CU_N(c->err, c->errlen, cuStreamCreateWithPriority(&c->stream, CU_STREAM_NON_BLOCKING, greatest));
    ZOO_CU_N(c->err, c->errlen, cuStreamCreateWithPriority(&c->side, CU_STREAM_NON_BLOCKING, least));
    ZOO_CU_N(c->err, c->errlen, cuEventCreate(&c->ev_start, CU_EVENT_DISABLE_TIMING));
    ZOO_CU_N(c->err, c->errlen, cuEventCreate(&c->ev_join, CU_EVENT_DISABLE_TIMING));
  }
  c->cur = c->stream;
  c->pdl = major >= 9 && !zoo_env_on("ZOO_NO_PDL");
  return 0;
}

/* Launches kernel f on the stream. From sm_90 on, with programmatic dependent
 * launch: the kernel may be scheduled while the kernel before it on the stream
 * finishes, and every zoo kernel begins by waiting for that one to complete
 * (griddepcontrol.wait, put at each kernel's entry by zoo_cuda_entry_waits),
 * so what the overlap saves is the gap between the two, not any ordering.
 * ZOO_NO_PDL=1 launches plainly, to bisect a difference to this. */
static CUresult core_launch(const core *c, CUfunction f, const unsigned grid[3], const unsigned block[3],
                            unsigned smem, void **params) {
  if (!c->pdl)
    return zoo_cu.cuLaunchKernel(f, grid[0], grid[1], grid[2], block[0], block[1], block[2], smem, c->cur,
                                 params, NULL);
  CUlaunchAttribute attr;
  memset(&attr, 0, sizeof attr);
  attr.id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
  attr.value.programmaticStreamSerializationAllowed = 1;
  CUlaunchConfig cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.gridDimX = grid[0], cfg.gridDimY = grid[1], cfg.gridDimZ = grid[2];
  cfg.blockDimX = block[0], cfg.blockDimY = block[1], cfg.blockDimZ = block[2];
  cfg.sharedMemBytes = smem;
  cfg.hStream = c->cur;
  cfg.attrs = &attr;
  cfg.numAttrs = 1;
  return zoo_cu.cuLaunchKernelEx(&cfg, f, params, NULL);
}

/* The module is compiled in this many parts, in parallel (codegen_cuda.h's
 * zoo_cuda_split_module), each thread taking the next part left. A fixed
 * number, so that the kernel cache's entries do not depend on the machine's
 * core count. Measured with NVRTC 13.0 on the 2-core build machine, on
 * simple_mqar's module (rebased, D 32, L 48): with its 91 kernels, 6.1 s in
 * one piece, 7.3 s of work in 16 parts (the largest 0.69 s) or in 32 (the
 * largest 0.38 s); with the evaluation's copies merged (60 kernels), 4.9 s
 * of work in 32 parts, the largest 0.28 s. On the H200 machine (16 vCPUs,
 * each about half as fast) NVRTC took 13.8 s in one piece and 1.37 s in 32
 * parts (session 6, device runs 3 and 5). */
#define ZOO_MODULE_PARTS 32

/* NVRTC over a module's source, with the options every caller uses (so a
 * precompiled CUBIN is found in the cache by the run that needs it). */
static int compile_module(const char *src, const char *arch, zoo_cubin *cubins, int *n, double *ms, char *err,
                          size_t errlen) {
  const char *opts[] = {"-lineinfo", NULL};
  return zoo_nvrtc_compile_parts(src, "zoo_module.cu", arch, debug_mode() ? opts : NULL, ZOO_MODULE_PARTS, cubins,
                                 n, ms, err, errlen);
}

/* compile_module for precompiling: the CUBINs land in the cache, nothing is
 * kept. */
static int precompile_module(const char *src, const char *arch, char *err, size_t errlen) {
  zoo_cubin cubins[ZOO_MODULE_PARTS_MAX];
  int n = 0;
  if (compile_module(src, arch, cubins, &n, NULL, err, errlen) != 0) return -1;
  for (int i = 0; i < n; i++) zoo_cubin_free(&cubins[i]);
  return 0;
}

/* Kernel `name` from whichever part of the module defines it. */
static CUresult core_function(const core *c, const char *name, CUfunction *f) {
  CUresult r = CUDA_ERROR_NOT_FOUND;
  for (int m = 0; m < c->nmod && r != CUDA_SUCCESS; m++) r = zoo_cu.cuModuleGetFunction(f, c->mod[m], name);
  return r;
}

/* The module's compilation on a thread of its own, so that the backend's
 * other set-up (the context's memory, cuBLASLt's heuristics) runs meanwhile:
 * NVRTC needs no CUDA context. */
typedef struct module_build {
  pthread_t thread;
  const char *src, *arch;
  zoo_cubin cubins[ZOO_MODULE_PARTS_MAX];
  int n, status;
  double ms;
  char err[1024];
} module_build;

static void *module_build_run(void *arg) {
  module_build *b = arg;
  b->status = compile_module(b->src, b->arch, b->cubins, &b->n, &b->ms, b->err, sizeof b->err);
  return NULL;
}

/* Starts compiling e's module (on another thread when one can be made) and
 * makes the per-step tables. core_module_finish waits for it. */
static void core_module_start(core *c, const zoo_cuda_emit *e) {
  c->emit = e;
  c->nsteps = e->nsteps;
  c->func = calloc((size_t)(e->nsteps ? e->nsteps : 1), sizeof *c->func);
  c->gemm = calloc((size_t)(e->nsteps ? e->nsteps : 1), sizeof *c->gemm);
  module_build *b = calloc(1, sizeof *b);
  if (!c->func || !c->gemm || !b) abort();
  b->src = e->src.s, b->arch = c->arch;
  if (pthread_create(&b->thread, NULL, module_build_run, b) != 0) {
    module_build_run(b); /* no thread: here, now */
    b->thread = pthread_self();
  }
  c->building = b;
}

/* Waits for the compilation core_module_start began; its CUBINs, or NULL when
 * none is under way. */
static module_build *core_module_join(core *c) {
  module_build *b = c->building;
  c->building = NULL;
  if (b && !pthread_equal(b->thread, pthread_self())) pthread_join(b->thread, NULL);
  return b;
}

/* Loads the module core_module_start compiled and looks up every kernel its
 * steps launch. */
static int core_module_finish(core *c, const zoo_graph *names_graph) {
  const zoo_cuda_emit *e = c->emit;
  module_build *b = core_module_join(c);
  if (!b) return -1;
  int n = b->status == 0 ? b->n : 0;
  if (b->status != 0) snprintf(c->err, c->errlen, "%s", b->err);
  c->cached = 1;
  for (int m = 0; m < n; m++) c->cached &= b->cubins[m].cached;
  c->compile_ms = c->cached ? 0 : b->ms;
  CUresult r = CUDA_SUCCESS;
  for (int m = 0; m < n; m++) {
    if (r == CUDA_SUCCESS) r = zoo_cu.cuModuleLoadData(&c->mod[m], b->cubins[m].data);
    if (r == CUDA_SUCCESS) c->nmod = m + 1;
    zoo_cubin_free(&b->cubins[m]);
  }
  int status = b->status;
  free(b);
  if (status != 0) return -1;
  if (r != CUDA_SUCCESS) return zoo_cu_fail(r, "cuModuleLoadData(&mod, cubin)", __FILE__, __LINE__, c->err, c->errlen);
  for (int i = 0; i < e->nsteps; i++) {
    const zoo_step *s = &e->steps[i];
    if (s->kind == ZOO_STEP_ZERO || (s->kind == ZOO_STEP_GEMM && !s->func)) continue;
    if (!s->func) {
      char d[400];
      step_desc(c, names_graph, i, d, sizeof d);
      snprintf(c->err, c->errlen, "%s has no kernel name", d);
      return -1;
    }
    /* a kernel launched by several steps is looked up once; a GEMM step's
     * is zoo's own kernel, a candidate beside cuBLASLt's */
    for (int j = 0; j < i && !c->func[i]; j++)
      if (c->func[j] && e->steps[j].func && strcmp(e->steps[j].func, s->func) == 0) c->func[i] = c->func[j];
    if (!c->func[i]) {
      CUresult rr = core_function(c, s->func, &c->func[i]);
      if (rr != CUDA_SUCCESS) {
        zoo_cu_fail(rr, "cuModuleGetFunction(&f, mod, name)", __FILE__, __LINE__, c->err, c->errlen);
        char d[400];
        step_desc(c, names_graph, i, d, sizeof d);
        return context(c, d);
      }
      c->module_kernels++;
    }
    if (s->smem > 48 * 1024)
      ZOO_CU_N(c->err, c->errlen,
               cuFuncSetAttribute(c->func[i], CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, (int)s->smem));
  }
  return 0;
}

/* Compiles the module and looks up every kernel its steps launch. */
static int core_module(core *c, const zoo_cuda_emit *e, const zoo_graph *names_graph) {
  core_module_start(c, e);
  return core_module_finish(c, names_graph);
}

static int core_alloc(core *c, CUdeviceptr *p, int64_t bytes) {
  ZOO_CU_N(c->err, c->errlen, cuMemAlloc(p, (size_t)(bytes > 0 ? bytes : 256)));
  return 0;
}

/* The device address of tensor t under plan p (an input's, or a view's of
 * one, moved as c->remap says). */
static CUdeviceptr tensor_ptr(const core *c, const zoo_plan *p, int t) {
  if (t < 0 || p->mem[t] == ZOO_MEM_NONE) return 0;
  CUdeviceptr a = c->base[p->mem[t]] + (CUdeviceptr)p->offset[t];
  if (p->mem[t] == ZOO_MEM_INPUT)
    for (int k = 0; k < c->nremap; k++)
      if (a >= c->remap[k].from && a < c->remap[k].from + (CUdeviceptr)c->remap[k].bytes)
        return c->remap[k].to + (a - c->remap[k].from);
  return a;
}

#define ZOO_LT(call)                                                                             \
  do {                                                                                           \
    cublasStatus_t st_ = zoo_cublaslt.call;                                                      \
    if (st_ != CUBLAS_STATUS_SUCCESS) return zoo_cublaslt_fail(st_, #call, __FILE__, __LINE__, c->err, c->errlen); \
  } while (0)

/* A row-major matrix stored [r, c] is, read column-major, the [c, r] matrix
 * with leading dimension c: its transpose, for free. So row-major
 * C[m, n] = op(a) op(b) is column-major C^T[n, m] = op(b)^T op(a)^T: cuBLAS's A
 * is our b, its B our a, each transposed exactly when ours is. */
void zoo_cuda_gemm_colmajor(const zoo_gemm *gm, zoo_colmajor_gemm *o) {
  int64_t m = gm->m, n = gm->n, k = gm->k;
  o->trans_a = gm->trans_b;
  o->trans_b = gm->trans_a;
  /* our b: stored [k, n] (column-major [n, k], ld n), or [n, k] when transposed */
  o->a_rows = gm->trans_b ? k : n;
  o->a_cols = gm->trans_b ? n : k;
  o->lda = o->a_rows;
  /* our a: stored [m, k] (column-major [k, m], ld k), or [k, m] when transposed */
  o->b_rows = gm->trans_a ? m : k;
  o->b_cols = gm->trans_a ? k : m;
  o->ldb = o->b_rows;
  o->c_rows = n;
  o->c_cols = m;
  o->ldc = n;
  o->stride_a = gm->stride_b;
  o->stride_b = gm->stride_a;
  o->stride_c = gm->stride_c;
  o->batch = gm->batch;
}

/* Whether the candidates go past the heuristic's best fits (gemm_more_candidates):
 * fp32 only, unless ZOO_GEMM_SEARCH=0. */
static int gemm_search_on(const core *c) {
  const char *env = getenv("ZOO_GEMM_SEARCH");
  if (env && strcmp(env, "0") == 0) return 0;
  return c->precision == ZOO_FP32 && zoo_cublaslt.cublasLtMatmulAlgoGetIds && zoo_cublaslt.cublasLtMatmulAlgoInit;
}

/* More candidates for gp's GEMM: asked with CUBLASLT_SEARCH_BEST_FIT, cuBLASLt's
 * heuristic ranks configurations of all its algorithms by one model and
 * returns its first few (for zoo's fp32 GEMMs on the H200, 3 to 8); asked once
 * for each algorithm id (CUBLASLT_SEARCH_LIMITED_BY_ALGO_ID, the id set in the
 * results' algo), it returns that algorithm's best configurations too. Each new
 * one (not already a candidate) joins the list, up to GEMM_CANDIDATES;
 * gemm_tune times them all. An id the heuristic cannot configure for this GEMM
 * gives none. Measured on the H200 (session 18, .gpu/s18run3.sh and s18run4.sh,
 * zoorun bench, with ZOO_GEMM_SEARCH=0 and without in run 3, and
 * ZOO_GEMM_TUNE_LOG=1 in run 4): 3 or 4 more candidates a GEMM, which won
 * at rebased 512 / 512 the head's gradients (dh 5.30 ms against the best fits'
 * 5.53, dw 5.11 against 5.21) and the q and k projections' input gradients
 * (0.597 against 0.623); that cell went from 87.0-87.4 ms a step to 86.5-86.9,
 * 512 / 2048 from 410.5-411.8 to 407.7-409.2. The other cells kept their picks
 * or moved within noise, and simple_mqar its bits. fp32 only: tf32 and bf16
 * were not measured with it. */
static void gemm_more_candidates(core *c, gemm_plan *gp, cublasComputeType_t compute) {
  int ids[64], nids = 0;
  if (zoo_cublaslt.cublasLtMatmulAlgoGetIds(c->lt, compute, CUDA_R_32F, CUDA_R_32F, CUDA_R_32F, CUDA_R_32F,
                                            CUDA_R_32F, 64, ids, &nids) != CUBLAS_STATUS_SUCCESS)
    return;
  cublasLtMatmulPreference_t pref;
  if (zoo_cublaslt.cublasLtMatmulPreferenceCreate(&pref) != CUBLAS_STATUS_SUCCESS) return;
  uint64_t ws = WORKSPACE_BYTES;
  uint32_t mode = CUBLASLT_SEARCH_LIMITED_BY_ALGO_ID;
  if (zoo_cublaslt.cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                        sizeof ws) != CUBLAS_STATUS_SUCCESS ||
      zoo_cublaslt.cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_SEARCH_MODE, &mode,
                                                        sizeof mode) != CUBLAS_STATUS_SUCCESS)
    nids = 0;
  for (int a = 0; a < nids && gp->ncand < GEMM_CANDIDATES; a++) {
    cublasLtMatmulHeuristicResult_t res[GEMM_PER_ID];
    memset(res, 0, sizeof res);
    if (zoo_cublaslt.cublasLtMatmulAlgoInit(c->lt, compute, CUDA_R_32F, CUDA_R_32F, CUDA_R_32F, CUDA_R_32F,
                                            CUDA_R_32F, ids[a], &res[0].algo) != CUBLAS_STATUS_SUCCESS)
      continue;
    for (int r = 1; r < GEMM_PER_ID; r++) res[r].algo = res[0].algo;
    int found = 0;
    if (zoo_cublaslt.cublasLtMatmulAlgoGetHeuristic(c->lt, gp->desc, gp->la, gp->lb, gp->lc, gp->lc, pref,
                                                    GEMM_PER_ID, res, &found) != CUBLAS_STATUS_SUCCESS)
      continue;
    for (int r = 0; r < found && gp->ncand < GEMM_CANDIDATES; r++) {
      if (res[r].state != CUBLAS_STATUS_SUCCESS) continue;
      int dup = 0;
      for (int k = 0; k < gp->ncand && !dup; k++) dup = !memcmp(&gp->cand[k], &res[r].algo, sizeof res[r].algo);
      if (!dup) gp->cand[gp->ncand++] = res[r].algo;
    }
  }
  zoo_cublaslt.cublasLtMatmulPreferenceDestroy(pref);
}

/* cuBLASLt's plan for a row-major GEMM (see zoo_cuda_gemm_colmajor). */
static int gemm_prepare(core *c, gemm_plan *gp, const zoo_gemm *gm, CUdeviceptr bias) {
  zoo_colmajor_gemm cm;
  zoo_cuda_gemm_colmajor(gm, &cm);
  cublasComputeType_t compute = c->precision == ZOO_TF32   ? CUBLAS_COMPUTE_32F_FAST_TF32
                                : c->precision == ZOO_BF16 ? CUBLAS_COMPUTE_32F_FAST_16BF
                                                           : CUBLAS_COMPUTE_32F;
  ZOO_LT(cublasLtMatmulDescCreate(&gp->desc, compute, CUDA_R_32F));
  cublasOperation_t opa = cm.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasOperation_t opb = cm.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  ZOO_LT(cublasLtMatmulDescSetAttribute(gp->desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
  ZOO_LT(cublasLtMatmulDescSetAttribute(gp->desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
  if (gm->bias >= 0) {
    cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    void *bp = (void *)(uintptr_t)bias;
    ZOO_LT(cublasLtMatmulDescSetAttribute(gp->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
    ZOO_LT(cublasLtMatmulDescSetAttribute(gp->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp, sizeof bp));
  }
  ZOO_LT(cublasLtMatrixLayoutCreate(&gp->la, CUDA_R_32F, (uint64_t)cm.a_rows, (uint64_t)cm.a_cols, cm.lda));
  ZOO_LT(cublasLtMatrixLayoutCreate(&gp->lb, CUDA_R_32F, (uint64_t)cm.b_rows, (uint64_t)cm.b_cols, cm.ldb));
  ZOO_LT(cublasLtMatrixLayoutCreate(&gp->lc, CUDA_R_32F, (uint64_t)cm.c_rows, (uint64_t)cm.c_cols, cm.ldc));
  if (cm.batch > 1) {
    int32_t count = (int32_t)cm.batch;
    int64_t sa = cm.stride_a, sb = cm.stride_b, sc = cm.stride_c;
    ZOO_LT(cublasLtMatrixLayoutSetAttribute(gp->la, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count));
    ZOO_LT(cublasLtMatrixLayoutSetAttribute(gp->lb, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count));
    ZOO_LT(cublasLtMatrixLayoutSetAttribute(gp->lc, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count));
    ZOO_LT(cublasLtMatrixLayoutSetAttribute(gp->la, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &sa, sizeof sa));
    ZOO_LT(cublasLtMatrixLayoutSetAttribute(gp->lb, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &sb, sizeof sb));
    ZOO_LT(cublasLtMatrixLayoutSetAttribute(gp->lc, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &sc, sizeof sc));
  }
  cublasLtMatmulPreference_t pref;
  ZOO_LT(cublasLtMatmulPreferenceCreate(&pref));
  uint64_t ws = WORKSPACE_BYTES;
  cublasStatus_t st = zoo_cublaslt.cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
  cublasLtMatmulHeuristicResult_t res[GEMM_HEURISTIC];
  int found = 0;
  if (st == CUBLAS_STATUS_SUCCESS)
    st = zoo_cublaslt.cublasLtMatmulAlgoGetHeuristic(c->lt, gp->desc, gp->la, gp->lb, gp->lc, gp->lc,
                                                     pref, GEMM_HEURISTIC, res, &found);
  zoo_cublaslt.cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS)
    return zoo_cublaslt_fail(st, "cublasLtMatmulAlgoGetHeuristic(...)", __FILE__, __LINE__, c->err, c->errlen);
  if (found < 1) {
    snprintf(c->err, c->errlen,
             "cuBLASLt has no %s algorithm for m=%lld n=%lld k=%lld batch=%lld (transposes %d %d)",
             zoo_precision_name(c->precision), (long long)gm->m, (long long)gm->n, (long long)gm->k, (long long)gm->batch, gm->trans_a,
             gm->trans_b);
    return -1;
  }
  gp->ncand = 0;
  for (int a = 0; a < found && a < GEMM_HEURISTIC; a++)
    if (res[a].state == CUBLAS_STATUS_SUCCESS) gp->cand[gp->ncand++] = res[a].algo;
  gp->algo = gp->ncand ? gp->cand[0] : res[0].algo;
  gp->nbest = gp->ncand;
  if (gp->ncand && gemm_search_on(c)) gemm_more_candidates(c, gp, compute);
  gp->ready = 1;
  return 0;
}

static void gemm_release(gemm_plan *gp) {
  if (!gp->ready && !gp->desc) return;
  if (gp->desc) zoo_cublaslt.cublasLtMatmulDescDestroy(gp->desc);
  if (gp->la) zoo_cublaslt.cublasLtMatrixLayoutDestroy(gp->la);
  if (gp->lb) zoo_cublaslt.cublasLtMatrixLayoutDestroy(gp->lb);
  if (gp->lc) zoo_cublaslt.cublasLtMatrixLayoutDestroy(gp->lc);
  memset(gp, 0, sizeof *gp);
}

static int gemm_operands_ok(const core *c, const zoo_plan *p, const zoo_step *s, const gemm_plan *gp) {
  const zoo_gemm *gm = &s->gemm;
  return gp->ready && tensor_ptr(c, p, gm->a) && tensor_ptr(c, p, gm->b) && tensor_ptr(c, p, gm->c);
}

/* GEMM step s under plan p with algorithm algo, on the stream. */
static cublasStatus_t gemm_run(const core *c, const zoo_plan *p, const zoo_step *s, const gemm_plan *gp,
                               const cublasLtMatmulAlgo_t *algo) {
  const zoo_gemm *gm = &s->gemm;
  float alpha = gm->alpha, beta = gm->beta;
  CUdeviceptr A = tensor_ptr(c, p, gm->a), B = tensor_ptr(c, p, gm->b), C = tensor_ptr(c, p, gm->c);
  return zoo_cublaslt.cublasLtMatmul(c->lt, gp->desc, &alpha, (const void *)(uintptr_t)B, gp->la,
                                     (const void *)(uintptr_t)A, gp->lb, &beta, (const void *)(uintptr_t)C,
                                     gp->lc, (void *)(uintptr_t)C, gp->lc, algo,
                                     (void *)(uintptr_t)(c->cur == c->side ? c->workspace_side : c->workspace),
                                     WORKSPACE_BYTES, (cudaStream_t)c->cur);
}

/* One kernel argument's value. */
typedef union arg_value {
  CUdeviceptr ptr;
  long long i;
  float f;
  unsigned long long u;
} arg_value;

/* Fills the argument values of kernel step i (first is the index of the plan's
 * first step, to find its scratch). */
static int kernel_args(const core *c, const zoo_plan *p, int i, int first, uint64_t seed,
                       arg_value *vals, void **params) {
  const zoo_step *s = &c->emit->steps[i];
  for (int a = 0; a < s->nargs; a++) {
    const zoo_arg *x = &s->args[a];
    switch (x->kind) {
    case ZOO_ARG_TENSOR:
      vals[a].ptr = tensor_ptr(c, p, x->tensor);
      if (!vals[a].ptr) return -1;
      break;
    case ZOO_ARG_SCRATCH:
      if (p->scratch[i - first] < 0) return -1;
      vals[a].ptr = c->base[ZOO_MEM_ARENA] + (CUdeviceptr)(p->scratch[i - first] + x->i);
      break;
    case ZOO_ARG_I64: vals[a].i = (long long)x->i; break;
    case ZOO_ARG_F32: vals[a].f = x->f; break;
    case ZOO_ARG_SEED: vals[a].u = seed; break;
    case ZOO_ARG_COUNTER:
      vals[a].ptr = c->base[ZOO_MEM_INPUT] + (CUdeviceptr)(p->counter_offset + 4 * (x->i - p->counter_first));
      break;
    }
    params[a] = &vals[a];
  }
  return 0;
}

/* Launches zoo's own kernel of GEMM step i (of the plan whose first step is
 * `first`) on the stream: (A, B, bias, C), then the step's own arguments
 * (zk_wgrad's scratch and counters). */
static CUresult gemm_own_run(const core *c, const zoo_plan *p, int i, int first) {
  const zoo_step *s = &c->emit->steps[i];
  const zoo_gemm *gm = &s->gemm;
  CUdeviceptr A = tensor_ptr(c, p, gm->a), B = tensor_ptr(c, p, gm->b), C = tensor_ptr(c, p, gm->c);
  CUdeviceptr bias = gm->bias >= 0 ? tensor_ptr(c, p, gm->bias) : A; /* unread without a bias */
  arg_value vals[ZOO_MAX_ARGS];
  void *params[ZOO_MAX_ARGS + 4] = {&A, &B, &bias, &C};
  if (s->nargs > ZOO_MAX_ARGS || kernel_args(c, p, i, first, 0, vals, params + 4) != 0)
    return CUDA_ERROR_INVALID_VALUE;
  return core_launch(c, c->func[i], s->grid, s->block, 0, params);
}

/* GPU milliseconds of `reps` runs of GEMM step i with cuBLASLt's algorithm a,
 * or zoo's kernel when a is NULL, between events e0 and e1; a negative value
 * when the run is refused. */
static double gemm_time(core *c, const zoo_plan *p, int i, int first, const gemm_plan *gp,
                        const cublasLtMatmulAlgo_t *a, int reps, CUevent e0, CUevent e1) {
  const zoo_step *s = &c->emit->steps[i];
  if (zoo_cu.cuEventRecord(e0, c->stream) != CUDA_SUCCESS) return -1;
  for (int r = 0; r < reps; r++)
    if (a ? gemm_run(c, p, s, gp, a) != CUBLAS_STATUS_SUCCESS : gemm_own_run(c, p, i, first) != CUDA_SUCCESS) return -1;
  float ms = 0;
  if (zoo_cu.cuEventRecord(e1, c->stream) != CUDA_SUCCESS || zoo_cu.cuEventSynchronize(e1) != CUDA_SUCCESS ||
      zoo_cu.cuEventElapsedTime(&ms, e0, e1) != CUDA_SUCCESS)
    return -1;
  return ms;
}

/* A GEMM whose heuristic's first candidate takes less than this many ms is
 * "small" to the start-up timing: it is timed in batches (gemm_time_best) and
 * its first is kept unless another beats it by 5% instead of 2% (gemm_tune). */
#define GEMM_TUNE_SMALL_MS 0.25
#define GEMM_TUNE_BATCH_MS 0.5

/* GPU milliseconds of one run of GEMM step i (as gemm_time), from a first
 * measure of `once` ms: a GEMM that is not small is run once more; a small one
 * in three batches of about GEMM_TUNE_BATCH_MS each, and the fastest batch
 * counts, so that a hiccup in one batch does not decide between candidates a
 * few percent apart (runtime/PERFORMANCE.md, "Session 19"). A negative value
 * when a run is refused. */
static double gemm_time_best(core *c, const zoo_plan *p, int i, int first, const gemm_plan *gp,
                             const cublasLtMatmulAlgo_t *a, double once, CUevent e0, CUevent e1) {
  if (once >= GEMM_TUNE_SMALL_MS) return gemm_time(c, p, i, first, gp, a, 1, e0, e1);
  int reps = once > 0 ? (int)(GEMM_TUNE_BATCH_MS / once) + 1 : 50;
  if (reps > 50) reps = 50;
  double best = -1;
  for (int b = 0; b < 3; b++) {
    double ms = gemm_time(c, p, i, first, gp, a, reps, e0, e1);
    if (ms < 0) return -1;
    if (best < 0 || ms < best) best = ms;
  }
  return best / reps;
}

/* The factor by which another candidate must undercut the heuristic's first,
 * which took first_ms, to be picked instead. */
static double first_margin(double first_ms) { return first_ms < GEMM_TUNE_SMALL_MS ? 0.95 : 0.98; }

/* The key of a GEMM's pick on disk (gemm_choice.h): the device, cuBLASLt's
 * version, the GEMM and the heuristic's candidates. */
static void gemm_key(const core *c, const gemm_plan *gp, const zoo_gemm *gm, int own, char key[33]) {
  int sms = 0;
  zoo_cu.cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, c->dev);
  zoo_gemm_choice_in in = {
      .device = c->device, .sms = sms, .lt_version = zoo_cublaslt.cublasLtGetVersion(),
      .precision = (int)c->precision, .m = gm->m, .n = gm->n, .k = gm->k, .batch = gm->batch,
      .stride_a = gm->stride_a, .stride_b = gm->stride_b, .stride_c = gm->stride_c,
      .trans_a = gm->trans_a, .trans_b = gm->trans_b, .bias = gm->bias >= 0, .accumulate = gm->beta != 0,
      .workspace = WORKSPACE_BYTES, .own = own ? "zk_gemm 1" : NULL, .cand = gp->cand,
      .cand_size = sizeof gp->cand[0], .ncand = gp->ncand};
  zoo_gemm_choice_key(&in, key);
}

/* Picks the fastest of the heuristic's candidates for GEMM step i by timing
 * each on the step's own buffers (all zeros while the backend starts, so the
 * runs leave them as they were); the heuristic's first stays on ties within
 * 2%, or 5% where it takes under GEMM_TUNE_SMALL_MS: a small GEMM shares the
 * GPU with the other stream's work in the step, and a few percent alone did
 * not carry over there (at rebased 32 / 48 the tied head's dh and dw, run
 * side by side, each had a second candidate 1-3% faster alone, and the step
 * took 0.85 ms with both firsts against 0.87-0.90 with either second:
 * runtime/PERFORMANCE.md, "Session 19"). GEMMs whose first
 * candidate takes under GEMM_TUNE_MIN_MS keep it untimed further (each
 * candidate's first run loads its kernel: time at start-up that a small GEMM
 * does not win back). cuBLASLt's heuristic ranks by a model, and at some
 * shapes its first is not the fastest:
 * measured on the H200 (ZOO_GEMM_TUNE_LOG=1 zoorun bench --quick), the
 * logits GEMM at m 8192, n 8192, k 64 took 0.277 ms with the first and 0.260
 * with the fourth; over the four quick cells' GEMMs, 5.33 ms against 5.19.
 *
 * zoo's own kernel (codegen_cuda.h's zoo_cuda_gemm_own), where the step has
 * one and the arithmetic is fp32, is one more candidate, number ncand, timed
 * against the heuristic's first even for a small GEMM (it is made for small
 * ones). With tf32 and bf16 it would be a fp32 candidate beside TF32 and bf16
 * ones; timed so, it won alone (rebased 32/48, tf32: the first projection
 * 0.0080 against 0.0195 ms) and lost in the step (0.73 against 0.70 ms,
 * .gpu/s13run10.sh), so those precisions keep cuBLASLt's. ZOO_GEMM_OWN=1
 * runs it untimed wherever there is one (for tests), ZOO_GEMM_OWN=0 never.
 *
 * A pick by timing can change from run to run (two candidates within noise of
 * each other), and with it the GEMM's rounding, so the pick is stored on disk
 * beside the kernel cache (gemm_choice.h, keyed by device, cuBLASLt version,
 * GEMM and the candidates themselves) and a later run of the same GEMM reuses
 * it untimed: runs of one config on one machine are then bit-reproducible. The
 * first pick stored stands: a process that timed the GEMM while another stored
 * its pick adopts that one. ZOO_GEMM_RETUNE=1 times again and overwrites it;
 * ZOO_NO_CACHE=1 neither reads nor stores it; ZOO_NO_GEMM_TUNE=1 keeps the
 * first (nothing read or stored); ZOO_GEMM_TUNE_LOG=1 prints every candidate's
 * time and each pick. */
#define GEMM_TUNE_MIN_MS 0.04
static int gemm_tune(core *c, const zoo_plan *p, int i, int first, const zoo_graph *g) {
  gemm_plan *gp = &c->gemm[i];
  const zoo_step *s = &c->emit->steps[i];
  const char *own_env = getenv("ZOO_GEMM_OWN");
  int own = c->func[i] && c->precision == ZOO_FP32 && !(own_env && strcmp(own_env, "0") == 0);
  gp->own = 0;
  if (own && own_env && strcmp(own_env, "1") == 0) {
    gp->own = 1;
    return 0;
  }
  int ncand = gp->ncand + own; /* candidate gp->ncand: zoo's kernel */
  if (ncand < 2 || zoo_env_on("ZOO_NO_GEMM_TUNE")) return 0;
  int log = zoo_env_on("ZOO_GEMM_TUNE_LOG"), best = 0;
  char key[33], d[400] = "";
  gemm_key(c, gp, &s->gemm, own, key);
  if (log) step_desc(c, g, i, d, sizeof d);
  int retune = zoo_env_on("ZOO_GEMM_RETUNE");
  int stored = retune ? -1 : zoo_gemm_choice_load(key, ncand);
  if (stored >= 0) {
    gp->own = stored == gp->ncand;
    if (!gp->own) gp->algo = gp->cand[stored];
    if (log)
      fprintf(stderr, "gemm tune: %s m=%lld n=%lld k=%lld stored candidate %d%s (gemm-%s)\n", d,
              (long long)s->gemm.m, (long long)s->gemm.n, (long long)s->gemm.k, stored,
              gp->own ? " (zoo's kernel)" : "", key);
    return 0;
  }
  if (!gemm_operands_ok(c, p, s, gp)) return 0;
  CUevent e0, e1;
  ZOO_CU_N(c->err, c->errlen, cuEventCreate(&e0, CU_EVENT_DEFAULT));
  if (zoo_cu.cuEventCreate(&e1, CU_EVENT_DEFAULT) != CUDA_SUCCESS) {
    zoo_cu.cuEventDestroy(e0);
    return zoo_cu_fail(CUDA_ERROR_UNKNOWN, "cuEventCreate(&e1, 0)", __FILE__, __LINE__, c->err, c->errlen);
  }
  int measured = 0; /* a pick that no measurement made is not stored */
  double best_ms = 0;
  for (int a = 0; a < ncand; a++) {
    const cublasLtMatmulAlgo_t *alg = a < gp->ncand ? &gp->cand[a] : NULL;
    int first_only = 0; /* a small GEMM: the first against zoo's kernel alone */
    double once = gemm_time(c, p, i, first, gp, alg, 1, e0, e1); /* warm-up and a first measure */
    if (a == 0 && once >= 0 && once < GEMM_TUNE_MIN_MS) {
      once = gemm_time(c, p, i, first, gp, alg, 1, e0, e1); /* the first run loaded the kernel */
      if (once >= 0 && once < GEMM_TUNE_MIN_MS) {
        if (!own) {
          measured = 1;
          break;
        }
        first_only = 1;
      }
    }
    if (once < 0) continue;
    double ms = gemm_time_best(c, p, i, first, gp, alg, once, e0, e1);
    if (ms < 0) continue;
    if (log)
      fprintf(stderr, "gemm tune: %s m=%lld n=%lld k=%lld candidate %d%s: %.4f ms\n", d, (long long)s->gemm.m,
              (long long)s->gemm.n, (long long)s->gemm.k, a,
              !alg ? " (zoo's kernel)" : a >= gp->nbest ? " (per algorithm)" : "", ms);
    if (!measured || ms < best_ms * (best == 0 ? first_margin(best_ms) : 1.0)) best = a, best_ms = ms;
    measured = 1;
    if (first_only) a = gp->ncand - 1; /* next: zoo's kernel */
  }
  zoo_cu.cuEventDestroy(e0);
  zoo_cu.cuEventDestroy(e1);
  int timed = best, kept = measured ? zoo_gemm_choice_save(key, best, retune, ncand) : -1;
  if (kept >= 0) best = kept; /* ours, or another process's stored first */
  gp->own = best == gp->ncand;
  if (!gp->own) gp->algo = gp->cand[best]; /* the runs were on the stream: what follows is ordered after them */
  if (log) {
    char how[64];
    if (kept < 0) snprintf(how, sizeof how, "not stored");
    else if (kept == timed) snprintf(how, sizeof how, "stored");
    else snprintf(how, sizeof how, "stored first by another process (timed: %d)", timed);
    fprintf(stderr, "gemm tune: %s m=%lld n=%lld k=%lld picked candidate %d%s, %s: gemm-%s\n", d,
            (long long)s->gemm.m, (long long)s->gemm.n, (long long)s->gemm.k, best,
            gp->own ? " (zoo's kernel)" : "", how, key);
  }
  return 0;
}

/* GEMM plans for steps [first, first + n) under plan p: with tune 0 made
 * (cuBLASLt's heuristic, which needs no module), with tune 1 each timed
 * (zoo's own kernels among the candidates: the module is loaded by then). */
static int core_gemms(core *c, const zoo_plan *p, int first, int n, const zoo_graph *g, int tune) {
  for (int i = first; i < first + n; i++) {
    const zoo_step *s = &c->emit->steps[i];
    if (s->kind != ZOO_STEP_GEMM) continue;
    if (tune ? gemm_tune(c, p, i, first, g) != 0
             : gemm_prepare(c, &c->gemm[i], &s->gemm, tensor_ptr(c, p, s->gemm.bias)) != 0) {
      char d[400];
      step_desc(c, g, i, d, sizeof d);
      return context(c, d);
    }
  }
  return 0;
}

static int step_has_seed(const zoo_step *s) {
  for (int a = 0; a < s->nargs; a++)
    if (s->args[a].kind == ZOO_ARG_SEED) return 1;
  return 0;
}

/* Launches step i (of the plan whose first step is `first`) on the stream. */
static int launch_step(core *c, const zoo_plan *p, const zoo_graph *g, int i, int first,
                       uint64_t seed, int micro) {
  const zoo_step *s = &c->emit->steps[i];
  CUresult r = CUDA_SUCCESS;
  const char *call = "";
  if (s->kind == ZOO_STEP_KERNEL) {
    arg_value vals[ZOO_MAX_ARGS];
    void *params[ZOO_MAX_ARGS];
    if (kernel_args(c, p, i, first, seed, vals, params) != 0) {
      char d[400];
      step_desc(c, g, i, d, sizeof d);
      snprintf(c->err, c->errlen, "%s: an argument has no memory in the plan (bug)", d);
      return -1;
    }
    r = core_launch(c, c->func[i], s->grid, s->block, (unsigned)s->smem, params);
    call = c->pdl ? "cuLaunchKernelEx(...)" : "cuLaunchKernel(...)";
    if (r == CUDA_SUCCESS && c->capturing && step_has_seed(s)) {
      /* remember the node just captured: the seed changes each step */
      CUstreamCaptureStatus status;
      const CUgraphNode *deps = NULL;
      size_t ndeps = 0;
      r = zoo_cu.cuStreamGetCaptureInfo(c->cur, &status, NULL, NULL, &deps, NULL, &ndeps);
      call = "cuStreamGetCaptureInfo(...)";
      if (r == CUDA_SUCCESS && ndeps == 1) {
        captured *cap = c->capturing;
        if (cap->nseeds == cap->seeds_cap) {
          cap->seeds_cap = cap->seeds_cap ? 2 * cap->seeds_cap : 8;
          cap->seeds = realloc(cap->seeds, (size_t)cap->seeds_cap * sizeof *cap->seeds);
          if (!cap->seeds) abort();
        }
        cap->seeds[cap->nseeds++] = (seed_node){deps[0], i, micro};
      } else if (r == CUDA_SUCCESS) {
        snprintf(c->err, c->errlen, "capture: a kernel node has %zu dependencies, expected 1", ndeps);
        return -1;
      }
    }
  } else if (s->kind == ZOO_STEP_GEMM) {
    const gemm_plan *gp = &c->gemm[i];
    if (!gemm_operands_ok(c, p, s, gp)) {
      char d[400];
      step_desc(c, g, i, d, sizeof d);
      snprintf(c->err, c->errlen, "%s: GEMM not prepared or an operand has no memory (bug)", d);
      return -1;
    }
    if (gp->own) {
      r = gemm_own_run(c, p, i, first);
      call = c->pdl ? "cuLaunchKernelEx(...) (zoo's GEMM)" : "cuLaunchKernel(...) (zoo's GEMM)";
    }
    cublasStatus_t st = gp->own ? CUBLAS_STATUS_SUCCESS : gemm_run(c, p, s, gp, &gp->algo);
    if (st != CUBLAS_STATUS_SUCCESS) {
      zoo_cublaslt_fail(st, "cublasLtMatmul(...)", __FILE__, __LINE__, c->err, c->errlen);
      char d[400];
      step_desc(c, g, i, d, sizeof d);
      return context(c, d);
    }
  } else {
    CUdeviceptr C = tensor_ptr(c, p, s->gemm.c);
    r = zoo_cu.cuMemsetD32Async(C, 0, (size_t)(p->bytes[s->gemm.c] / 4), c->cur);
    call = "cuMemsetD32Async(...)";
  }
  if (r == CUDA_SUCCESS && c->debug && !c->capturing) {
    r = zoo_cu.cuStreamSynchronize(c->cur);
    call = "cuStreamSynchronize(stream) after the step (ZOO_DEBUG)";
  }
  if (r != CUDA_SUCCESS) {
    zoo_cu_fail(r, call, __FILE__, __LINE__, c->err, c->errlen);
    char d[400];
    step_desc(c, g, i, d, sizeof d);
    return context(c, d);
  }
  return 0;
}

/* Launches steps [first, first + n) under plan p: on the main stream, or,
 * while a graph is captured, over both streams as schedule sc says (NULL: one
 * stream), the side stream joined back into the main one at the end. */
static int run_steps(core *c, const zoo_plan *p, const zoo_graph *g, int first, int n, uint64_t seed,
                     int micro, const zoo_schedule *sc) {
  if (!sc || !sc->side || !c->capturing || !c->side) {
    for (int i = first; i < first + n; i++)
      if (launch_step(c, p, g, i, first, seed, micro) != 0) return -1;
    return 0;
  }
  if (c->nev < n) { /* an event per step that a wait may name */
    CUevent *ev = realloc(c->ev, (size_t)n * sizeof *ev);
    if (!ev) abort();
    c->ev = ev;
    for (; c->nev < n; c->nev++) ZOO_CU_N(c->err, c->errlen, cuEventCreate(&c->ev[c->nev], CU_EVENT_DISABLE_TIMING));
  }
  CUstream st[2] = {c->stream, c->side};
  ZOO_CU_N(c->err, c->errlen, cuEventRecord(c->ev_start, c->stream));
  int status = 0;
  for (int j = 0; j < n && status == 0; j++) {
    CUstream on = st[sc->stream[j]];
    if (sc->wait[j] != ZOO_SCHEDULE_NONE) {
      CUevent e = sc->wait[j] == ZOO_SCHEDULE_START ? c->ev_start : c->ev[sc->wait[j]];
      CUresult r = zoo_cu.cuStreamWaitEvent(on, e, 0);
      if (r != CUDA_SUCCESS) status = zoo_cu_fail(r, "cuStreamWaitEvent(stream, ev, 0)", __FILE__, __LINE__, c->err, c->errlen);
    }
    c->cur = on;
    if (status == 0) status = launch_step(c, p, g, first + j, first, seed, micro);
    if (status == 0 && sc->mark[j]) {
      CUresult r = zoo_cu.cuEventRecord(c->ev[j], on);
      if (r != CUDA_SUCCESS) status = zoo_cu_fail(r, "cuEventRecord(ev, stream)", __FILE__, __LINE__, c->err, c->errlen);
    }
  }
  c->cur = c->stream;
  /* the join: the main stream's next work waits for the side stream's last */
  ZOO_CU_N(c->err, c->errlen, cuEventRecord(c->ev_join, c->side));
  ZOO_CU_N(c->err, c->errlen, cuStreamWaitEvent(c->stream, c->ev_join, 0));
  return status;
}

static void captured_free(captured *cap) {
  if (cap->exec) zoo_cu.cuGraphExecDestroy(cap->exec);
  if (cap->graph) zoo_cu.cuGraphDestroy(cap->graph);
  free(cap->seeds);
  memset(cap, 0, sizeof *cap);
}

static void core_free(core *c) {
  module_build *b = core_module_join(c); /* a set-up that failed while NVRTC worked */
  for (int m = 0; b && m < ZOO_MODULE_PARTS_MAX; m++) zoo_cubin_free(&b->cubins[m]);
  free(b);
  if (!c->ctx) return;
  zoo_cu.cuCtxSetCurrent(c->ctx);
  if (c->stream) zoo_cu.cuStreamSynchronize(c->stream);
  for (int i = 0; i < c->nsteps && c->gemm; i++) gemm_release(&c->gemm[i]);
  free(c->gemm);
  free(c->func);
  if (c->lt) zoo_cublaslt.cublasLtDestroy(c->lt);
  for (int m = 1; m < 5; m++)
    if (c->base[m]) zoo_cu.cuMemFree(c->base[m]);
  if (c->workspace) zoo_cu.cuMemFree(c->workspace);
  if (c->workspace_side) zoo_cu.cuMemFree(c->workspace_side);
  for (int k = 0; k < c->nev; k++) zoo_cu.cuEventDestroy(c->ev[k]);
  free(c->ev);
  if (c->ev_start) zoo_cu.cuEventDestroy(c->ev_start);
  if (c->ev_join) zoo_cu.cuEventDestroy(c->ev_join);
  for (int m = 0; m < c->nmod; m++) zoo_cu.cuModuleUnload(c->mod[m]);
  if (c->side) zoo_cu.cuStreamSynchronize(c->side), zoo_cu.cuStreamDestroy(c->side);
  if (c->stream) zoo_cu.cuStreamDestroy(c->stream);
  if (c->ctx_retained) zoo_cu.cuDevicePrimaryCtxRelease(c->dev);
  memset(c, 0, sizeof *c);
}

/* ---------------------------------------------------------------------------
 * The backend */

/* A training slot's inputs, in pinned host memory and in a device copy of
 * the same layout, uploaded in one copy: the hyper-parameters, dloss (1 /
 * accum), every micro-batch's tokens, then every micro-batch's targets; the
 * device copy has the metrics' sums after them. The slot's graph reads the
 * device copy where the plan has its inputs (slot_inputs). */
#define SLOT_DLOSS 256
#define SLOT_TOKENS 512
_Static_assert(sizeof(zoo_hyper) <= SLOT_DLOSS, "the hyper-parameters fit before dloss");
typedef struct slot {
  unsigned char *host;       /* pinned: the inputs */
  CUdeviceptr dev;           /* the inputs' device copy, then the metrics' sums */
  int64_t in_bytes;          /* the inputs' bytes (one upload) */
  int64_t off_targets, off_metrics;
  int32_t *tokens, *targets; /* in host: [accum][B*T] each */
  zoo_hyper *hyper;          /* in host */
  float *dloss;              /* in host */
  float *metrics;            /* pinned [4]: loss sum, correct, labelled */
  int accum;                 /* micro-batches of the captured graph */
  int launched_accum;        /* of the step last launched from this slot */
  int undelivered;           /* its step's metrics are not yet returned */
  CUevent uploaded, computed, done, t0, t1;
  captured graph;
} slot;

typedef struct zoo_cuda {
  zoo_backend be; /* first: the interface */
  core c;
  zoo_cuda_program prog;
  int64_t B, T;
  CUdeviceptr acc, adam_m, adam_v, metrics_acc; /* metrics_acc: evaluation's */
  slot slots[2];
  CUstream up, down;         /* the slots' uploads, and their metrics' copies back */
  int accum;                 /* of the captured training graphs; 0 before the first */
  int64_t launched;          /* training steps launched */
  int64_t step;              /* AdamW's t */
  float last_ms;
  /* evaluation */
  int32_t *eval_tokens, *eval_targets;
  float *eval_metrics;
  captured eval_graph;
  zoo_schedule train_sched, eval_sched; /* the steps over two streams (schedule.h) */
  int64_t mem_free_before, mem_used_delta;
  int64_t device_bytes;
  CUfunction f_adamw, f_accum, f_metrics;
  int tokens_in, targets_in, dloss_in; /* input tensor ids */
  int64_t label_cap; /* labelled positions a micro-batch may have (0: any) */
} zoo_cuda;

#define BE_ERR(x) (x)->be.err, sizeof (x)->be.err

static unsigned blocks_for(int64_t n) {
  int64_t b = (n + 255) / 256;
  return (unsigned)(b > 4096 ? 4096 : b < 1 ? 1 : b);
}

/* Launches one of the runtime's own kernels. */
static int launch_rt(zoo_cuda *x, CUfunction f, unsigned grid, unsigned block, void **params,
                     const char *name) {
  const unsigned g3[3] = {grid, 1, 1}, b3[3] = {block, 1, 1};
  CUresult r = core_launch(&x->c, f, g3, b3, 0, params);
  if (r == CUDA_SUCCESS && x->c.debug && !x->c.capturing) r = zoo_cu.cuStreamSynchronize(x->c.stream);
  if (r != CUDA_SUCCESS) {
    zoo_cu_fail(r, name, __FILE__, __LINE__, x->c.err, x->c.errlen);
    return -1;
  }
  return 0;
}

/* Micro-batch m's dropout seed: the CPU backend's rule (runtime/cpu_backend.c),
 * so both draw the same masks. */
static uint64_t micro_seed(uint64_t seed, int m) {
  return zoo_rng_mix(seed + 0x9e3779b97f4a7c15ULL * (uint64_t)(m + 1));
}

/* Points the training plan's inputs at slot s's device copy of micro-batch
 * m's (tensor_ptr), or back at the plan's own memory when s is NULL. */
static void slot_inputs(zoo_cuda *x, const slot *s, int m) {
  core *c = &x->c;
  const zoo_plan *p = &x->prog.train_plan;
  c->nremap = 0;
  if (!s) return;
  int64_t bt4 = x->B * x->T * 4;
  c->remap[0].from = tensor_ptr(c, p, x->tokens_in);
  c->remap[0].to = s->dev + SLOT_TOKENS + (CUdeviceptr)(m * bt4);
  c->remap[1].from = tensor_ptr(c, p, x->targets_in);
  c->remap[1].to = s->dev + (CUdeviceptr)(s->off_targets + m * bt4);
  c->remap[0].bytes = c->remap[1].bytes = bt4;
  c->remap[2].from = tensor_ptr(c, p, x->dloss_in);
  c->remap[2].to = s->dev + SLOT_DLOSS;
  c->remap[2].bytes = sizeof(float);
  c->nremap = 3;
}

/* The work of one training step, on the stream: captured once per slot, or
 * run eagerly under ZOO_DEBUG. Its inputs are in the slot's device copy,
 * uploaded before it (cuda_train_step). */
static int enqueue_train(zoo_cuda *x, slot *s, uint64_t seed) {
  core *c = &x->c;
  zoo_cuda_program *cp = &x->prog;
  const zoo_plan *p = &cp->train_plan;
  CUdeviceptr loss = tensor_ptr(c, p, cp->train.loss), metrics = tensor_ptr(c, p, cp->train.metrics);
  CUdeviceptr sums = s->dev + (CUdeviceptr)s->off_metrics, hyper = s->dev;
  long long n = (long long)(p->param_bytes / 4);
  for (int m = 0; m < s->accum; m++) {
    slot_inputs(x, s, m);
    int status = run_steps(c, p, &cp->train, 0, cp->ntrain, micro_seed(seed, m), m, &x->train_sched);
    slot_inputs(x, NULL, 0);
    if (status != 0) return -1;
    int first = m == 0;
    if (s->accum > 1) {
      CUdeviceptr grads = c->base[ZOO_MEM_GRAD];
      void *params[] = {&x->acc, &grads, &n, &first};
      if (launch_rt(x, x->f_accum, blocks_for(n), 256, params, "zoo_accumulate") != 0) return -1;
    }
    void *mp[] = {&sums, &loss, &metrics, &first};
    if (launch_rt(x, x->f_metrics, 1, 32, mp, "zoo_metrics_accumulate") != 0) return -1;
  }
  CUdeviceptr grads = s->accum > 1 ? x->acc : c->base[ZOO_MEM_GRAD];
  CUdeviceptr params_d = c->base[ZOO_MEM_PARAM];
  void *ap[] = {&params_d, &grads, &x->adam_m, &x->adam_v, &hyper, &n};
  if (launch_rt(x, x->f_adamw, blocks_for(n), 256, ap, "zoo_adamw") != 0) return -1;
  return 0;
}

/* Captures what enqueue(x, arg) puts on the stream into cap (a graph, its
 * node count and its instance, with the nodes' priorities); on failure says
 * `what` was being captured. */
static int capture(zoo_cuda *x, captured *cap, int (*enqueue)(zoo_cuda *, void *), void *arg, const char *what) {
  core *c = &x->c;
  ZOO_CU_N(c->err, c->errlen, cuStreamBeginCapture(c->stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
  c->capturing = cap;
  int status = enqueue(x, arg);
  c->capturing = NULL;
  CUgraph graph = NULL;
  CUresult r = zoo_cu.cuStreamEndCapture(c->stream, &graph);
  if (status != 0) {
    if (graph) zoo_cu.cuGraphDestroy(graph);
    return context(c, what);
  }
  if (r != CUDA_SUCCESS) return zoo_cu_fail(r, "cuStreamEndCapture(stream, &graph)", __FILE__, __LINE__, c->err, c->errlen);
  cap->graph = graph;
  size_t nodes = 0;
  ZOO_CU_N(c->err, c->errlen, cuGraphGetNodes(graph, NULL, &nodes));
  cap->nodes = (int)nodes;
  ZOO_CU_N(c->err, c->errlen, cuGraphInstantiate(&cap->exec, graph, CUDA_GRAPH_INSTANTIATE_FLAG_USE_NODE_PRIORITY));
  return 0;
}

static int enqueue_train_slot(zoo_cuda *x, void *s) { return enqueue_train(x, s, 0); }

/* Captures the training step of slot s as a CUDA graph. */
static int capture_train(zoo_cuda *x, slot *s) {
  captured_free(&s->graph);
  return capture(x, &s->graph, enqueue_train_slot, s, "while capturing the training step");
}

/* Points the seed arguments of slot s's graph at this step's seed. */
static int update_seeds(zoo_cuda *x, slot *s, uint64_t seed) {
  core *c = &x->c;
  for (int k = 0; k < s->graph.nseeds; k++) {
    const seed_node *sn = &s->graph.seeds[k];
    const zoo_step *st = &c->emit->steps[sn->step];
    arg_value vals[ZOO_MAX_ARGS];
    void *params[ZOO_MAX_ARGS];
    slot_inputs(x, s, sn->micro);
    int status = kernel_args(c, &x->prog.train_plan, sn->step, 0, micro_seed(seed, sn->micro), vals, params);
    slot_inputs(x, NULL, 0);
    if (status != 0) {
      snprintf(c->err, c->errlen, "seed update: step %d has an argument without memory (bug)", sn->step);
      return -1;
    }
    CUDA_KERNEL_NODE_PARAMS kp;
    memset(&kp, 0, sizeof kp);
    kp.func = c->func[sn->step];
    kp.gridDimX = st->grid[0], kp.gridDimY = st->grid[1], kp.gridDimZ = st->grid[2];
    kp.blockDimX = st->block[0], kp.blockDimY = st->block[1], kp.blockDimZ = st->block[2];
    kp.sharedMemBytes = st->smem;
    kp.kernelParams = params;
    ZOO_CU_N(c->err, c->errlen, cuGraphExecKernelNodeSetParams(s->graph.exec, sn->node, &kp));
  }
  return 0;
}

static void release_slot_memory(slot *s) {
  if (s->host) zoo_cu.cuMemFreeHost(s->host);
  if (s->dev) zoo_cu.cuMemFree(s->dev);
  s->host = NULL, s->dev = 0;
  s->tokens = s->targets = NULL, s->hyper = NULL, s->dloss = NULL;
}

static int64_t align256(int64_t n) { return (n + 255) / 256 * 256; }

/* A slot's device bytes: its inputs, then 256 for the metrics' sums. */
static int64_t slot_dev_bytes(const slot *s) { return s->off_metrics + 256; }

/* (Re)captures both slots' graphs for `accum` micro-batches. */
static int prepare_accum(zoo_cuda *x, int accum) {
  core *c = &x->c;
  if (x->accum == accum) return 0;
  ZOO_CU_N(c->err, c->errlen, cuStreamSynchronize(c->stream));
  ZOO_CU_N(c->err, c->errlen, cuStreamSynchronize(x->up));
  ZOO_CU_N(c->err, c->errlen, cuStreamSynchronize(x->down));
  int64_t bytes = x->B * x->T * accum * 4;
  for (int k = 0; k < 2; k++) {
    slot *s = &x->slots[k];
    x->device_bytes -= s->dev ? slot_dev_bytes(s) : 0;
    release_slot_memory(s);
    s->off_targets = align256(SLOT_TOKENS + bytes);
    s->in_bytes = s->off_targets + bytes;
    s->off_metrics = align256(s->in_bytes);
    void *h = NULL;
    ZOO_CU_N(c->err, c->errlen, cuMemHostAlloc(&h, (size_t)s->in_bytes, 0));
    s->host = h;
    if (core_alloc(c, &s->dev, slot_dev_bytes(s)) != 0) return -1;
    x->device_bytes += slot_dev_bytes(s);
    memset(s->host, 0, (size_t)s->in_bytes);
    s->hyper = (zoo_hyper *)s->host;
    s->dloss = (float *)(s->host + SLOT_DLOSS);
    s->tokens = (int32_t *)(s->host + SLOT_TOKENS);
    s->targets = (int32_t *)(s->host + s->off_targets);
    *s->dloss = 1.0f / (float)accum;
    s->accum = accum;
  }
  x->accum = accum;
  if (!c->debug)
    for (int k = 0; k < 2; k++)
      if (capture_train(x, &x->slots[k]) != 0) {
        x->accum = 0;
        return -1;
      }
  return 0;
}

/* Copies `rows` rows into a B-row pinned block, padding with token 0 and
 * target -100. */
static void fill_rows(int32_t *dst_tok, int32_t *dst_tgt, const int32_t *tok, const int32_t *tgt,
                      int rows, int64_t B, int64_t T) {
  size_t used = (size_t)rows * (size_t)T;
  if (rows > 0) {
    memcpy(dst_tok, tok, used * 4);
    memcpy(dst_tgt, tgt, used * 4);
  }
  for (size_t i = used; i < (size_t)(B * T); i++) dst_tok[i] = 0, dst_tgt[i] = -100;
}

/* The compacted head (label_rows) takes at most x->label_cap labelled positions
 * per micro-batch; a batch with more is refused before it reaches the GPU,
 * where the rows past the cap would be dropped. */
static int check_labels(zoo_cuda *x, const int32_t *tgt, const char *what, int k) {
  if (x->label_cap <= 0) return 0;
  int64_t n = 0, bt = x->B * x->T;
  for (int64_t i = 0; i < bt; i++) n += tgt[i] != -100;
  if (n <= x->label_cap) return 0;
  snprintf(x->be.err, sizeof x->be.err,
           "%s %d has %lld labelled positions; the training graph's head was built for at most "
           "%lld (%lld per sequence)",
           what, k, (long long)n, (long long)x->label_cap, (long long)(x->label_cap / x->B));
  return -1;
}

static void read_metrics(const slot *s, zoo_metrics *m) {
  m->loss = (double)s->metrics[0] / (double)(s->launched_accum ? s->launched_accum : 1);
  m->correct = s->metrics[1];
  m->labelled = s->metrics[2];
}

static int cuda_train_step(zoo_backend *be, int accum, const int32_t *const *tokens,
                           const int32_t *const *targets, const int *rows, const zoo_adamw *opt,
                           uint64_t seed, zoo_metrics *m) {
  zoo_cuda *x = be->impl;
  core *c = &x->c;
  memset(m, 0, sizeof *m);
  ZOO_CU_N(c->err, c->errlen, cuCtxSetCurrent(c->ctx));
  if (accum < 1) {
    snprintf(be->err, sizeof be->err, "train_step: accum is %d", accum);
    return -1;
  }
  for (int k = 0; k < accum; k++)
    if (rows[k] < 0 || rows[k] > x->B) {
      snprintf(be->err, sizeof be->err, "train_step: micro-batch %d has %d rows; the backend was built for %lld",
               k, rows[k], (long long)x->B);
      return -1;
    }
  if (prepare_accum(x, accum) != 0) return -1;
  int p = (int)(x->launched % 2);
  slot *s = &x->slots[p];
  /* slot p's previous step finished: the last call waited for it */
  int64_t bt = x->B * x->T;
  for (int k = 0; k < accum; k++) {
    fill_rows(s->tokens + k * bt, s->targets + k * bt, tokens[k], targets[k], rows[k], x->B, x->T);
    if (check_labels(x, s->targets + k * bt, "train_step: micro-batch", k) != 0) return -1;
  }
  *s->hyper = (zoo_hyper){opt->lr, opt->beta1, opt->beta2, opt->eps, opt->weight_decay, 0, ++x->step};
  /* The upload on a stream of its own: it runs while the previous step
   * computes (that step reads the other slot's copy). */
  ZOO_CU_N(c->err, c->errlen, cuMemcpyHtoDAsync(s->dev, s->host, (size_t)s->in_bytes, x->up));
  ZOO_CU_N(c->err, c->errlen, cuEventRecord(s->uploaded, x->up));
  ZOO_CU_N(c->err, c->errlen, cuStreamWaitEvent(c->stream, s->uploaded, 0));
  if (c->debug) {
    ZOO_CU_N(c->err, c->errlen, cuEventRecord(s->t0, c->stream));
    if (enqueue_train(x, s, seed) != 0) return -1;
    ZOO_CU_N(c->err, c->errlen, cuEventRecord(s->t1, c->stream));
  } else {
    if (update_seeds(x, s, seed) != 0) return -1;
    ZOO_CU_N(c->err, c->errlen, cuEventRecord(s->t0, c->stream));
    CUresult r = zoo_cu.cuGraphLaunch(s->graph.exec, c->stream);
    if (r != CUDA_SUCCESS) {
      zoo_cu_fail(r, "cuGraphLaunch(exec, stream)", __FILE__, __LINE__, c->err, c->errlen);
      return context(c, "training step (rerun with ZOO_DEBUG=1 to name the failing kernel)");
    }
    ZOO_CU_N(c->err, c->errlen, cuEventRecord(s->t1, c->stream));
  }
  /* The metrics come back on another stream, so the next step need not wait
   * for the copy. */
  ZOO_CU_N(c->err, c->errlen, cuEventRecord(s->computed, c->stream));
  ZOO_CU_N(c->err, c->errlen, cuStreamWaitEvent(x->down, s->computed, 0));
  ZOO_CU_N(c->err, c->errlen,
           cuMemcpyDtoHAsync(s->metrics, s->dev + (CUdeviceptr)s->off_metrics, 3 * sizeof(float), x->down));
  ZOO_CU_N(c->err, c->errlen, cuEventRecord(s->done, x->down));
  x->launched++;
  s->undelivered = 1;
  s->launched_accum = accum;
  slot *prev = &x->slots[1 - p];
  if (prev->undelivered) {
    CUresult r = zoo_cu.cuEventSynchronize(prev->done);
    if (r != CUDA_SUCCESS) {
      zoo_cu_fail(r, "cuEventSynchronize(done)", __FILE__, __LINE__, c->err, c->errlen);
      return context(c, "training step (rerun with ZOO_DEBUG=1 to name the failing kernel)");
    }
    read_metrics(prev, m);
    zoo_cu.cuEventElapsedTime(&x->last_ms, prev->t0, prev->t1);
    prev->undelivered = 0;
  }
  return 1;
}

/* Waits for the stream; the metrics of a step not yet delivered go to last. */
static int cuda_sync(zoo_backend *be, zoo_metrics *last) {
  zoo_cuda *x = be->impl;
  core *c = &x->c;
  if (last) memset(last, 0, sizeof *last);
  ZOO_CU_N(c->err, c->errlen, cuCtxSetCurrent(c->ctx));
  CUstream streams[2] = {c->stream, x->down}; /* the steps, then their metrics' copies */
  for (int k = 0; k < 2; k++) {
    CUresult r = zoo_cu.cuStreamSynchronize(streams[k]);
    if (r != CUDA_SUCCESS) {
      zoo_cu_fail(r, "cuStreamSynchronize(stream)", __FILE__, __LINE__, c->err, c->errlen);
      return context(c, "waiting for the GPU (rerun with ZOO_DEBUG=1 to name the failing kernel)");
    }
  }
  for (int k = 0; k < 2; k++) {
    slot *s = &x->slots[(x->launched + k) % 2]; /* the older one first */
    if (!s->undelivered) continue;
    if (last) read_metrics(s, last);
    zoo_cu.cuEventElapsedTime(&x->last_ms, s->t0, s->t1);
    s->undelivered = 0;
  }
  return 0;
}

static int enqueue_eval(zoo_cuda *x) {
  core *c = &x->c;
  zoo_cuda_program *cp = &x->prog;
  const zoo_plan *p = &cp->eval_plan;
  int64_t bt = x->B * x->T;
  CUdeviceptr tok = tensor_ptr(c, p, x->tokens_in), tgt = tensor_ptr(c, p, x->targets_in);
  ZOO_CU_N(c->err, c->errlen, cuMemcpyHtoDAsync(tok, x->eval_tokens, (size_t)bt * 4, c->stream));
  ZOO_CU_N(c->err, c->errlen, cuMemcpyHtoDAsync(tgt, x->eval_targets, (size_t)bt * 4, c->stream));
  if (run_steps(c, p, &cp->eval, cp->ntrain, cp->neval, 0, 0, &x->eval_sched) != 0) return -1;
  CUdeviceptr loss = tensor_ptr(c, p, cp->eval.loss), metrics = tensor_ptr(c, p, cp->eval.metrics);
  CUdeviceptr acc = x->metrics_acc + 64;
  int first = 1;
  void *mp[] = {&acc, &loss, &metrics, &first};
  if (launch_rt(x, x->f_metrics, 1, 32, mp, "zoo_metrics_accumulate") != 0) return -1;
  ZOO_CU_N(c->err, c->errlen, cuMemcpyDtoHAsync(x->eval_metrics, acc, 3 * sizeof(float), c->stream));
  return 0;
}
static int enqueue_eval_arg(zoo_cuda *x, void *arg) {
  (void)arg;
  return enqueue_eval(x);
}

static int cuda_eval_batch(zoo_backend *be, const int32_t *tokens, const int32_t *targets, int rows,
                           zoo_metrics *m) {
  zoo_cuda *x = be->impl;
  core *c = &x->c;
  memset(m, 0, sizeof *m);
  ZOO_CU_N(c->err, c->errlen, cuCtxSetCurrent(c->ctx));
  if (rows < 0 || rows > x->B) {
    snprintf(be->err, sizeof be->err, "eval_batch: %d rows; the backend was built for %lld", rows,
             (long long)x->B);
    return -1;
  }
  /* the pinned buffers may still feed the previous evaluation's copies */
  ZOO_CU_N(c->err, c->errlen, cuStreamSynchronize(c->stream));
  fill_rows(x->eval_tokens, x->eval_targets, tokens, targets, rows, x->B, x->T);
  if (check_labels(x, x->eval_targets, "eval_batch: batch", 0) != 0) return -1;
  if (c->debug) {
    if (enqueue_eval(x) != 0) return -1;
  } else {
    if (!x->eval_graph.exec &&
        capture(x, &x->eval_graph, enqueue_eval_arg, NULL, "while capturing the evaluation step") != 0)
      return -1;
    CUresult r = zoo_cu.cuGraphLaunch(x->eval_graph.exec, c->stream);
    if (r != CUDA_SUCCESS) {
      zoo_cu_fail(r, "cuGraphLaunch(eval, stream)", __FILE__, __LINE__, c->err, c->errlen);
      return context(c, "evaluation (rerun with ZOO_DEBUG=1 to name the failing kernel)");
    }
  }
  CUresult r = zoo_cu.cuStreamSynchronize(c->stream);
  if (r != CUDA_SUCCESS) {
    zoo_cu_fail(r, "cuStreamSynchronize(stream)", __FILE__, __LINE__, c->err, c->errlen);
    return context(c, "evaluation (rerun with ZOO_DEBUG=1 to name the failing kernel)");
  }
  m->loss = x->eval_metrics[0];
  m->correct = x->eval_metrics[1];
  m->labelled = x->eval_metrics[2];
  return 0;
}

/* Copies a flat buffer to or from per-parameter host arrays. */
static int copy_flat(zoo_cuda *x, CUdeviceptr flat, float *const *host, int to_host) {
  const zoo_graph *g = &x->prog.train;
  for (int i = 0; i < g->nparams; i++) {
    size_t bytes = (size_t)x->prog.train_plan.bytes[g->params[i]];
    CUdeviceptr d = flat + (CUdeviceptr)x->prog.train_plan.param_offset[i];
    if (to_host) ZOO_CU(x->be.err, cuMemcpyDtoH(host[i], d, bytes));
    else ZOO_CU(x->be.err, cuMemcpyHtoD(d, host[i], bytes));
  }
  return 0;
}

static int cuda_get_state(zoo_backend *be, float **params, float **m, float **v, int64_t *step) {
  zoo_cuda *x = be->impl;
  ZOO_CU(be->err, cuCtxSetCurrent(x->c.ctx));
  ZOO_CU(be->err, cuStreamSynchronize(x->c.stream));
  if (params && copy_flat(x, x->c.base[ZOO_MEM_PARAM], params, 1) != 0) return -1;
  if (m && copy_flat(x, x->adam_m, m, 1) != 0) return -1;
  if (v && copy_flat(x, x->adam_v, v, 1) != 0) return -1;
  if (step) *step = x->step;
  return 0;
}

static int cuda_set_state(zoo_backend *be, float *const *params, float *const *m, float *const *v,
                          int64_t step) {
  zoo_cuda *x = be->impl;
  ZOO_CU(be->err, cuCtxSetCurrent(x->c.ctx));
  ZOO_CU(be->err, cuStreamSynchronize(x->c.stream));
  int64_t bytes = x->prog.train_plan.param_bytes;
  if (params && copy_flat(x, x->c.base[ZOO_MEM_PARAM], params, 0) != 0) return -1;
  if (m) {
    if (copy_flat(x, x->adam_m, m, 0) != 0) return -1;
  } else {
    ZOO_CU(be->err, cuMemsetD8Async(x->adam_m, 0, (size_t)bytes, x->c.stream));
  }
  if (v) {
    if (copy_flat(x, x->adam_v, v, 0) != 0) return -1;
  } else {
    ZOO_CU(be->err, cuMemsetD8Async(x->adam_v, 0, (size_t)bytes, x->c.stream));
  }
  ZOO_CU(be->err, cuStreamSynchronize(x->c.stream));
  x->step = step;
  return 0;
}

static void cuda_free(zoo_backend *be) {
  if (!be) return;
  zoo_cuda *x = be->impl;
  if (x->c.ctx) {
    zoo_cu.cuCtxSetCurrent(x->c.ctx);
    if (x->c.stream) zoo_cu.cuStreamSynchronize(x->c.stream);
    CUstream own[2] = {x->up, x->down};
    for (int k = 0; k < 2; k++)
      if (own[k]) zoo_cu.cuStreamSynchronize(own[k]), zoo_cu.cuStreamDestroy(own[k]);
    for (int k = 0; k < 2; k++) {
      slot *s = &x->slots[k];
      captured_free(&s->graph);
      release_slot_memory(s);
      if (s->metrics) zoo_cu.cuMemFreeHost(s->metrics);
      CUevent ev[] = {s->uploaded, s->computed, s->done, s->t0, s->t1};
      for (int j = 0; j < 5; j++)
        if (ev[j]) zoo_cu.cuEventDestroy(ev[j]);
    }
    captured_free(&x->eval_graph);
    CUdeviceptr bufs[] = {x->acc, x->adam_m, x->adam_v, x->metrics_acc};
    for (int k = 0; k < 4; k++)
      if (bufs[k]) zoo_cu.cuMemFree(bufs[k]);
    void *pinned[] = {x->eval_tokens, x->eval_targets, x->eval_metrics};
    for (int k = 0; k < 3; k++)
      if (pinned[k]) zoo_cu.cuMemFreeHost(pinned[k]);
  }
  core_free(&x->c);
  zoo_schedule_free(&x->train_sched);
  zoo_schedule_free(&x->eval_sched);
  zoo_cuda_program_free(&x->prog);
  free(x);
}

/* Looks up an input tensor by name; -1 if absent. */
static int input_named(const zoo_graph *g, const char *name) {
  for (int i = 0; i < g->ninputs; i++) {
    const char *n = g->tensors[g->inputs[i]].name;
    if (n && strcmp(n, name) == 0) return g->inputs[i];
  }
  return -1;
}

/* ZOO_NO_FUSE=1: every node its own kernel. */
static int fuse_mode(void) { return !zoo_env_on("ZOO_NO_FUSE"); }

int zoo_cuda_precompile(const zoo_graph *g, int64_t rows_B, int64_t seq_T, zoo_precision precision, const char *arch,
                        char *err, size_t errlen) {
  zoo_cuda_program cp;
  if (zoo_cuda_program_build_tf32(&cp, g, rows_B, seq_T, fuse_mode(), 1, precision != ZOO_FP32, err, errlen) != 0) {
    zoo_cuda_program_free(&cp);
    return -1;
  }
  int r = precompile_module(cp.emit.src.s, arch, err, errlen);
  zoo_cuda_program_free(&cp);
  return r;
}

/* ZOO_TIMING=1: how long each part of the backend's start took, on stderr
 * (after train.c's "timing:" lines' format); *t moves on to now. */
static void init_mark(const char *what, double *t) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  double now = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
  if (*t > 0 && zoo_env_on("ZOO_TIMING")) fprintf(stderr, "timing:   cuda: %-22s %.3f s\n", what, now - *t);
  *t = now;
}

static int cmp_float(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return x < y ? -1 : x > y;
}

/* Captures the training step's steps for one micro-batch (no optimiser) into
 * cap, over the streams sc says (NULL: one). */
static int enqueue_steps(zoo_cuda *x, void *sc) {
  zoo_cuda_program *cp = &x->prog;
  return run_steps(&x->c, &cp->train_plan, &cp->train, 0, cp->ntrain, 0, 0, sc);
}
static int capture_steps(zoo_cuda *x, captured *cap, const zoo_schedule *sc) {
  return capture(x, cap, enqueue_steps, (void *)sc, "while capturing a micro-batch's steps");
}

/* Two streams or one (schedule.h): whether the side stream pays depends on
 * the shapes. Measured on the H200 (session 7, device runs 1 and 2): rebased
 * 32/48 1.00 against 1.06 ms a step with two, but 64/128 2.78 against 2.62,
 * where the side stream's work shares the multiprocessors with the main
 * stream's and both run in more waves. So the backend times the candidates
 * (cand_opts): one stream; two; two with only the GEMMs of at most 1 GFLOP
 * aside. (A fourth, only the steps writing parameter gradients aside, won at
 * no cell: device run 9, rebased 32/48 0.889 ms against 0.865 for two, based
 * 64/128 2.545 against 2.453 on one.) The step's steps for one micro-batch,
 * captured each way, run alternately PICK_REPS times (ZOO_PICK_REPS=n: n, for
 * the emulated tests) on a batch with no labels (tokens 0, every target
 * ignored: the same kernels and shapes as training); the smallest median
 * wins (two streams only by PICK_MARGIN), and its schedules stay (none: one
 * stream). ZOO_TWO_STREAMS=1 keeps the second candidate without timing;
 * ZOO_ONE_STREAM=1 makes no second stream at all. */
#define PICK_REPS 5
#define PICK_CANDS 3
/* Two streams must beat one by 1%: on a tie the noise picks, and the
 * training loop may then run a little slower (device run 10: rebased 64/128
 * took two with small GEMMs aside at 2.449 against 2.458 ms, then ran 2.64 ms
 * a step against 2.61 on one). */
#define PICK_MARGIN 0.99f
static const char *const cand_names[PICK_CANDS] = {"one stream", "two", "two (small GEMMs aside)"};

/* ZOO_SCHEDULE_WINDOW=n in the environment, for measuring; else the default. */
static int schedule_window(void) {
  const char *env = getenv("ZOO_SCHEDULE_WINDOW");
  return env && *env ? atoi(env) : ZOO_SCHEDULE_WINDOW;
}

static zoo_schedule_opts cand_opts(int k) {
  zoo_schedule_opts o = {schedule_window(), 0};
  if (k == 0) o.window = 0;
  if (k == 2) o.max_gemm_flop = 1e9;
  return o;
}

static void build_schedules(zoo_cuda *x, zoo_schedule_opts o, zoo_schedule *train, zoo_schedule *eval) {
  zoo_cuda_program *cp = &x->prog;
  zoo_schedule_build(train, &cp->train_plan, cp->emit.steps, 0, cp->ntrain, cp->emit.src.s, o);
  zoo_schedule_build(eval, &cp->eval_plan, cp->emit.steps, cp->ntrain, cp->neval, cp->emit.src.s, o);
}

static int pick_streams(zoo_cuda *x) {
  core *c = &x->c;
  const zoo_plan *p = &x->prog.train_plan;
  if (!c->side || c->debug || x->train_sched.side == 0 || zoo_env_on("ZOO_TWO_STREAMS")) return 0;
  size_t bt = (size_t)(x->B * x->T);
  ZOO_CU_N(c->err, c->errlen, cuMemsetD32Async(tensor_ptr(c, p, x->tokens_in), 0, bt, c->stream));
  ZOO_CU_N(c->err, c->errlen, cuMemsetD32Async(tensor_ptr(c, p, x->targets_in), (unsigned)-100, bt, c->stream));
  zoo_schedule train[PICK_CANDS], eval[PICK_CANDS];
  train[1] = x->train_sched, eval[1] = x->eval_sched; /* built with cand_opts(1) */
  memset(&x->train_sched, 0, sizeof x->train_sched);
  memset(&x->eval_sched, 0, sizeof x->eval_sched);
  for (int k = 0; k < PICK_CANDS; k++)
    if (k != 1) build_schedules(x, cand_opts(k), &train[k], &eval[k]);
  int use[PICK_CANDS]; /* the candidates that differ from one stream */
  for (int k = 0; k < PICK_CANDS; k++) use[k] = k == 0 || train[k].side > 0;
  captured g[PICK_CANDS];
  memset(g, 0, sizeof g);
  CUevent e0 = NULL, e1 = NULL;
  float ms[PICK_CANDS][PICK_REPS];
  const char *env = getenv("ZOO_PICK_REPS");
  int reps = env && atoi(env) >= 1 && atoi(env) <= PICK_REPS ? atoi(env) : PICK_REPS;
  int status = 0;
  for (int k = 0; k < PICK_CANDS && status == 0; k++)
    if (use[k]) status = capture_steps(x, &g[k], k ? &train[k] : NULL);
  if (status == 0 && (zoo_cu.cuEventCreate(&e0, CU_EVENT_DEFAULT) != CUDA_SUCCESS ||
                      zoo_cu.cuEventCreate(&e1, CU_EVENT_DEFAULT) != CUDA_SUCCESS))
    status = -1;
  for (int k = 0; k < PICK_CANDS && status == 0; k++) /* a first run of each, untimed */
    if (use[k] && zoo_cu.cuGraphLaunch(g[k].exec, c->stream) != CUDA_SUCCESS) status = -1;
  for (int rep = 0; rep < reps && status == 0; rep++)
    for (int k = 0; k < PICK_CANDS && status == 0; k++)
      if (use[k] && (zoo_cu.cuEventRecord(e0, c->stream) != CUDA_SUCCESS ||
                     zoo_cu.cuGraphLaunch(g[k].exec, c->stream) != CUDA_SUCCESS ||
                     zoo_cu.cuEventRecord(e1, c->stream) != CUDA_SUCCESS ||
                     zoo_cu.cuEventSynchronize(e1) != CUDA_SUCCESS ||
                     zoo_cu.cuEventElapsedTime(&ms[k][rep], e0, e1) != CUDA_SUCCESS))
        status = -1;
  if (e0) zoo_cu.cuEventDestroy(e0);
  if (e1) zoo_cu.cuEventDestroy(e1);
  int best = 0;
  for (int k = 0; k < PICK_CANDS; k++) {
    captured_free(&g[k]);
    if (!use[k] || status != 0) continue;
    qsort(ms[k], (size_t)reps, sizeof(float), cmp_float);
    if (k > 0 && ms[k][reps / 2] < PICK_MARGIN * ms[0][reps / 2] && ms[k][reps / 2] < ms[best][reps / 2]) best = k;
  }
  if (status == 0 && zoo_env_on("ZOO_TIMING")) {
    fprintf(stderr, "timing:   cuda: a micro-batch's steps take");
    for (int k = 0, first = 1; k < PICK_CANDS; k++)
      if (use[k]) fprintf(stderr, "%s %.3f ms on %s", first ? "" : ",", ms[k][reps / 2], cand_names[k]), first = 0;
    fprintf(stderr, ": %s\n", cand_names[best]);
  }
  for (int k = 0; k < PICK_CANDS; k++) {
    if (status == 0 && k == best) {
      x->train_sched = train[k], x->eval_sched = eval[k]; /* one stream: k = 0's, with nothing aside */
      continue;
    }
    zoo_schedule_free(&train[k]);
    zoo_schedule_free(&eval[k]);
  }
  if (status != 0) {
    if (!c->err[0]) snprintf(c->err, c->errlen, "timing the step on one and two streams failed");
    return context(c, "while timing the step on one and two streams");
  }
  return 0;
}

static int cuda_init(zoo_cuda *x, const zoo_graph *g, int device) {
  core *c = &x->c;
  c->err = x->be.err;
  c->errlen = sizeof x->be.err;
  x->tokens_in = input_named(g, "tokens");
  x->targets_in = g->targets;
  x->dloss_in = g->dloss;
  for (int i = 0; i < g->nnodes; i++)
    if (g->nodes[i].op == ZOO_OP_LABEL_ROWS) x->label_cap = g->nodes[i].attrs.i[1] * x->B;
  if (x->tokens_in < 0 || x->targets_in < 0 || x->dloss_in < 0 || g->ninputs != 3) {
    snprintf(c->err, c->errlen, "the CUDA backend needs a training graph with the inputs tokens, "
                                "targets and dloss (and no others)");
    return -1;
  }
  double t = 0;
  init_mark("", &t);
  if (core_device(c, device) != 0) return -1;
  size_t free0 = 0, total = 0;
  ZOO_CU_N(c->err, c->errlen, cuMemGetInfo(&free0, &total));
  x->mem_free_before = (int64_t)free0;
  init_mark("driver and device", &t);
  if (zoo_cuda_program_build_tf32(&x->prog, g, x->B, x->T, fuse_mode(), 1, c->precision != ZOO_FP32, c->err,
                                  c->errlen) != 0)
    return -1;
  init_mark("program emitted", &t);
  zoo_cuda_program *cp = &x->prog;
  core_module_start(c, &cp->emit); /* NVRTC on other threads while the rest is set up */

  /* memory */
  int64_t arena = cp->train_plan.arena_bytes > cp->eval_plan.arena_bytes ? cp->train_plan.arena_bytes
                                                                          : cp->eval_plan.arena_bytes;
  int64_t pb = cp->train_plan.param_bytes, ib = cp->train_plan.input_bytes;
  if (cp->eval_plan.input_bytes > ib) ib = cp->eval_plan.input_bytes; /* its counters */
  if (core_alloc(c, &c->base[ZOO_MEM_ARENA], arena) != 0 || core_alloc(c, &c->base[ZOO_MEM_PARAM], pb) != 0 ||
      core_alloc(c, &c->base[ZOO_MEM_GRAD], pb) != 0 || core_alloc(c, &c->base[ZOO_MEM_INPUT], ib) != 0 ||
      core_alloc(c, &x->acc, pb) != 0 || core_alloc(c, &x->adam_m, pb) != 0 ||
      core_alloc(c, &x->adam_v, pb) != 0 || core_alloc(c, &x->metrics_acc, 256) != 0 ||
      core_alloc(c, &c->workspace, WORKSPACE_BYTES) != 0)
    return context(c, "allocating device memory");
  x->device_bytes = arena + 5 * pb + ib + 256 + WORKSPACE_BYTES; /* and the slots' (prepare_accum) */
  if (c->side) { /* the steps over two streams, and cuBLASLt's workspace for the second */
    build_schedules(x, cand_opts(1), &x->train_sched, &x->eval_sched);
    if (core_alloc(c, &c->workspace_side, WORKSPACE_BYTES) != 0) return context(c, "allocating device memory");
    x->device_bytes += WORKSPACE_BYTES;
  }
  CUdeviceptr zero[] = {c->base[ZOO_MEM_PARAM], c->base[ZOO_MEM_GRAD], x->acc, x->adam_m, x->adam_v};
  for (int k = 0; k < 5; k++) ZOO_CU_N(c->err, c->errlen, cuMemsetD8Async(zero[k], 0, (size_t)(pb > 0 ? pb : 1), c->stream));
  ZOO_CU_N(c->err, c->errlen, cuMemsetD8Async(c->base[ZOO_MEM_ARENA], 0, (size_t)(arena > 0 ? arena : 1), c->stream));
  ZOO_CU_N(c->err, c->errlen, cuMemsetD8Async(c->base[ZOO_MEM_INPUT], 0, (size_t)(ib > 0 ? ib : 1), c->stream));

  if (zoo_cublaslt_load(c->err, c->errlen) != 0) return -1;
  ZOO_LT(cublasLtCreate(&c->lt));
  if (core_gemms(c, &cp->train_plan, 0, cp->ntrain, &cp->train, 0) != 0 ||
      core_gemms(c, &cp->eval_plan, cp->ntrain, cp->neval, &cp->eval, 0) != 0)
    return -1;
  init_mark("memory and cuBLASLt", &t);
  if (core_module_finish(c, &cp->train) != 0) return -1;
  init_mark(c->cached ? "module (kernel cache)" : "module (NVRTC)", &t);
  CUresult fr = core_function(c, "zoo_adamw", &x->f_adamw);
  if (fr == CUDA_SUCCESS) fr = core_function(c, "zoo_accumulate", &x->f_accum);
  if (fr == CUDA_SUCCESS) fr = core_function(c, "zoo_metrics_accumulate", &x->f_metrics);
  if (fr != CUDA_SUCCESS)
    return zoo_cu_fail(fr, "cuModuleGetFunction(&f, mod, \"zoo_adamw\" ...)", __FILE__, __LINE__, c->err, c->errlen);
  if (core_gemms(c, &cp->train_plan, 0, cp->ntrain, &cp->train, 1) != 0 ||
      core_gemms(c, &cp->eval_plan, cp->ntrain, cp->neval, &cp->eval, 1) != 0)
    return -1;
  init_mark("GEMMs timed", &t);
  if (pick_streams(x) != 0) return -1;
  init_mark("streams timed", &t);

  /* pinned host memory and events */
  ZOO_CU_N(c->err, c->errlen, cuStreamCreate(&x->up, CU_STREAM_NON_BLOCKING));
  ZOO_CU_N(c->err, c->errlen, cuStreamCreate(&x->down, CU_STREAM_NON_BLOCKING));
  for (int k = 0; k < 2; k++) {
    slot *s = &x->slots[k];
    void *mt = NULL;
    ZOO_CU_N(c->err, c->errlen, cuMemHostAlloc(&mt, 4 * sizeof(float), 0));
    s->metrics = mt;
    memset(s->metrics, 0, 4 * sizeof(float));
    CUevent *plain[] = {&s->uploaded, &s->computed, &s->done};
    for (int j = 0; j < 3; j++) ZOO_CU_N(c->err, c->errlen, cuEventCreate(plain[j], CU_EVENT_DISABLE_TIMING));
    ZOO_CU_N(c->err, c->errlen, cuEventCreate(&s->t0, CU_EVENT_DEFAULT));
    ZOO_CU_N(c->err, c->errlen, cuEventCreate(&s->t1, CU_EVENT_DEFAULT));
  }
  void *et = NULL, *eg = NULL, *em = NULL;
  size_t bt = (size_t)(x->B * x->T) * 4;
  ZOO_CU_N(c->err, c->errlen, cuMemHostAlloc(&et, bt, 0));
  ZOO_CU_N(c->err, c->errlen, cuMemHostAlloc(&eg, bt, 0));
  ZOO_CU_N(c->err, c->errlen, cuMemHostAlloc(&em, 4 * sizeof(float), 0));
  x->eval_tokens = et, x->eval_targets = eg, x->eval_metrics = em;
  ZOO_CU_N(c->err, c->errlen, cuStreamSynchronize(c->stream));
  size_t free1 = 0;
  ZOO_CU_N(c->err, c->errlen, cuMemGetInfo(&free1, &total));
  x->mem_used_delta = x->mem_free_before - (int64_t)free1;
  x->last_ms = -1;
  return 0;
}

const char *zoo_precision_name(zoo_precision p) {
  return p == ZOO_TF32 ? "tf32" : p == ZOO_BF16 ? "bf16" : "fp32";
}

zoo_precision zoo_precision_of(const char *name) {
  return !strcmp(name, "tf32") ? ZOO_TF32 : !strcmp(name, "bf16") ? ZOO_BF16 : ZOO_FP32;
}

zoo_backend *zoo_cuda_backend_init(const zoo_graph *g, int64_t rows_B, int64_t seq_T, int device,
                                   zoo_precision precision, char *err, size_t errlen) {
  zoo_cuda *x = calloc(1, sizeof *x);
  if (!x) abort();
  x->c.precision = precision;
  x->be.name = "cuda";
  x->be.train_step = cuda_train_step;
  x->be.eval_batch = cuda_eval_batch;
  x->be.get_state = cuda_get_state;
  x->be.set_state = cuda_set_state;
  x->be.sync = cuda_sync;
  x->be.free = cuda_free;
  x->be.impl = x;
  x->B = rows_B;
  x->T = seq_T;
  if (cuda_init(x, g, device) != 0) {
    snprintf(err, errlen, "%s", x->be.err);
    cuda_free(&x->be);
    return NULL;
  }
  return &x->be;
}

int zoo_cuda_available(char *why, size_t n) {
  char err[512];
  if (zoo_cu_load(err, sizeof err) != 0) {
    snprintf(why, n, "no CUDA driver: %s", err);
    return 0;
  }
  int count = 0;
  CUresult r = zoo_cu.cuDeviceGetCount(&count);
  if (r != CUDA_SUCCESS || count < 1) {
    snprintf(why, n, "the CUDA driver sees no GPU");
    return 0;
  }
  zoo_cuda_preload();
  snprintf(why, n, "%d CUDA device%s", count, count == 1 ? "" : "s");
  return 1;
}

int zoo_cuda_libraries(char *why, size_t n) {
  char err[512];
  if (zoo_nvrtc_load(err, sizeof err) != 0) {
    snprintf(why, n, "a GPU is present but NVRTC is missing: %s", err);
    return 0;
  }
  if (zoo_cublaslt_load(err, sizeof err) != 0) {
    snprintf(why, n, "a GPU is present but cuBLASLt is missing: %s", err);
    return 0;
  }
  return 1;
}

int zoo_cuda_backend_stats(zoo_backend *be, zoo_cuda_stats *s) {
  memset(s, 0, sizeof *s);
  if (!be || strcmp(be->name, "cuda") != 0) return -1;
  zoo_cuda *x = be->impl;
  if (cuda_sync(be, NULL) != 0) return -1;
  const zoo_plan *p = &x->prog.train_plan;
  snprintf(s->device, sizeof s->device, "%s", x->c.device);
  snprintf(s->arch, sizeof s->arch, "%s", x->c.arch);
  s->kernels = p->kernels;
  s->gemms = p->gemms;
  s->clears = p->zeros;
  int accum = x->accum ? x->accum : 1;
  /* per micro-batch: the steps, accumulation (accum > 1), metric sum; per
   * step: AdamW (the upload and the metrics' copy back are outside the graph) */
  s->launches_per_step = accum * (p->nsteps + (accum > 1) + 1) + 1;
  if (x->slots[0].graph.nodes > 0) s->launches_per_step = x->slots[0].graph.nodes; /* exact */
  s->module_kernels = x->c.module_kernels + 3;
  s->arena_bytes = x->prog.train_plan.arena_bytes > x->prog.eval_plan.arena_bytes
                       ? x->prog.train_plan.arena_bytes
                       : x->prog.eval_plan.arena_bytes;
  s->param_bytes = p->param_bytes;
  s->workspace_bytes = WORKSPACE_BYTES;
  s->device_bytes = x->device_bytes;
  s->mem_used_delta = x->mem_used_delta;
  s->compile_ms = x->c.compile_ms;
  s->cached = x->c.cached;
  s->last_step_ms = x->last_ms;
  return 0;
}

/* The profile's name for step s: the kernel's name without "zoo_", the
 * generated kernels' "k<N>_" and the emitters' "_<N>" (zoo_k6_mul_add_add ->
 * mul_add_add, zoo_poly_attn_fwd_15 -> poly_attn_fwd); GEMMs by their node's op
 * and the pass; clears as "memset". */
static void profile_key(const zoo_step *s, const zoo_graph *g, int backward, char *buf, size_t n) {
  if (s->kind == ZOO_STEP_ZERO) {
    snprintf(buf, n, "memset");
    return;
  }
  if (s->kind == ZOO_STEP_GEMM) {
    const char *op = s->node >= 0 && s->node < g->nnodes ? zoo_ops[g->nodes[s->node].op].name : "?";
    snprintf(buf, n, "gemm %s (%s)", backward ? "bwd" : "fwd", op);
    return;
  }
  const char *f = s->func ? s->func : "?";
  if (!strncmp(f, "zoo_", 4)) f += 4;
  if (f[0] == 'k' && f[1] >= '0' && f[1] <= '9') {
    const char *u = strchr(f, '_');
    if (u) f = u + 1;
  }
  snprintf(buf, n, "%s", f);
  size_t len = strlen(buf);
  size_t e = len;
  while (e > 0 && buf[e - 1] >= '0' && buf[e - 1] <= '9') e--;
  if (e < len && e > 1 && buf[e - 1] == '_' && s->func && strncmp(s->func, "zoo_k", 5) != 0) buf[e - 1] = 0;
}

typedef struct profile_row {
  char key[64];
  double ms;
  int count;
} profile_row;

static int by_ms_desc(const void *a, const void *b) {
  double x = ((const profile_row *)a)->ms, y = ((const profile_row *)b)->ms;
  return x < y ? 1 : x > y ? -1 : 0;
}

int zoo_cuda_backend_profile(zoo_backend *be, int repeats, int top, FILE *out) {
  if (!be || strcmp(be->name, "cuda") != 0) return -1;
  zoo_cuda *x = be->impl;
  core *c = &x->c;
  zoo_cuda_program *cp = &x->prog;
  const zoo_plan *p = &cp->train_plan;
  int n = cp->ntrain;
  if (repeats < 1) repeats = 1;
  if (cuda_sync(be, NULL) != 0) return -1;
  CUevent *ev = calloc((size_t)n + 1, sizeof *ev);
  double *ms = calloc((size_t)n, sizeof *ms);
  profile_row *rows = calloc((size_t)n, sizeof *rows);
  if (!ev || !ms || !rows) abort();
  int status = 0, nrows = 0;
  for (int i = 0; i <= n && status == 0; i++)
    if (zoo_cu.cuEventCreate(&ev[i], 0) != CUDA_SUCCESS) status = -1;
  /* the inputs of the last step are still on the device: run its micro-batch's
   * steps one by one, an event before each, `repeats` times (first one untimed) */
  for (int r = 0; r <= repeats && status == 0; r++) {
    for (int i = 0; i < n && status == 0; i++) {
      if (zoo_cu.cuEventRecord(ev[i], c->stream) != CUDA_SUCCESS) status = -1;
      else status = launch_step(c, p, &cp->train, i, 0, micro_seed(1, 0), 0);
    }
    if (status == 0 && zoo_cu.cuEventRecord(ev[n], c->stream) != CUDA_SUCCESS) status = -1;
    if (status == 0 && zoo_cu.cuEventSynchronize(ev[n]) != CUDA_SUCCESS) status = -1;
    for (int i = 0; i < n && status == 0 && r > 0; i++) {
      float t = 0;
      zoo_cu.cuEventElapsedTime(&t, ev[i], ev[i + 1]);
      ms[i] += t / repeats;
    }
  }
  double total = 0;
  for (int i = 0; i < n && status == 0; i++) {
    char key[64];
    profile_key(&c->emit->steps[i], &cp->train, i >= cp->nforward, key, sizeof key);
    int k = 0;
    while (k < nrows && strcmp(rows[k].key, key) != 0) k++;
    if (k == nrows) snprintf(rows[nrows++].key, sizeof rows->key, "%s", key);
    rows[k].ms += ms[i];
    rows[k].count++;
    total += ms[i];
  }
  if (status == 0 && top <= 0) { /* every step in order, GEMMs with their sizes */
    fprintf(out, "    profile: one micro-batch, %d steps run one by one, %.3f ms in all (mean of %d)\n", n,
            total, repeats);
    for (int i = 0; i < n; i++) {
      const zoo_step *s = &c->emit->steps[i];
      char key[64];
      profile_key(s, &cp->train, i >= cp->nforward, key, sizeof key);
      fprintf(out, "    %4d %8.4f ms  %s", i, ms[i], key);
      if (s->kind == ZOO_STEP_GEMM)
        fprintf(out, " m=%lld n=%lld k=%lld%s%s%s", (long long)s->gemm.m, (long long)s->gemm.n,
                (long long)s->gemm.k, s->gemm.trans_a ? " Ta" : "", s->gemm.trans_b ? " Tb" : "",
                c->gemm[i].own ? " (zoo's kernel)" : "");
      fputc('\n', out);
    }
  } else if (status == 0) {
    qsort(rows, (size_t)nrows, sizeof *rows, by_ms_desc);
    fprintf(out, "    profile: one micro-batch, %d steps run one by one, %.3f ms in all (mean of %d)\n", n,
            total, repeats);
    for (int k = 0; k < nrows && k < top; k++)
      fprintf(out, "    %8.3f ms %5.1f%%  x%-3d %s\n", rows[k].ms, total > 0 ? 100 * rows[k].ms / total : 0,
              rows[k].count, rows[k].key);
  }
  for (int i = 0; i <= n; i++)
    if (ev[i]) zoo_cu.cuEventDestroy(ev[i]);
  free(ev);
  free(ms);
  free(rows);
  return status;
}

/* ---------------------------------------------------------------------------
 * The plain executor (tests) */

struct zoo_cuda_exec {
  core c;
  zoo_graph g; /* own node array */
  int64_t sym[ZOO_MAX_SYMS];
  zoo_cuda_emit emit;
  zoo_plan plan;
  char err[1024];
};

const char *zoo_cuda_exec_error(const zoo_cuda_exec *x) { return x->err; }

/* The executor's module, steps and plan (no device needed). */
static int exec_emit(zoo_cuda_exec *x, const zoo_graph *g, const int64_t *sym, int fuse,
                     const unsigned char *keep) {
  x->g = *g;
  x->g.nodes = malloc((size_t)(g->nnodes ? g->nnodes : 1) * sizeof *g->nodes);
  if (!x->g.nodes) abort();
  memcpy(x->g.nodes, g->nodes, (size_t)g->nnodes * sizeof *g->nodes);
  memcpy(x->sym, sym, sizeof x->sym);
  unsigned char *all = NULL;
  int *keep_ids = malloc((size_t)(g->ntensors ? g->ntensors : 1) * sizeof *keep_ids);
  int nkeep = 0;
  if (!keep) {
    all = malloc((size_t)(g->ntensors ? g->ntensors : 1));
    if (!all) abort();
    memset(all, 1, (size_t)g->ntensors);
    keep = all;
  }
  for (int t = 0; t < g->ntensors; t++)
    if (keep[t]) keep_ids[nkeep++] = t;
  zoo_fuse(&x->g, fuse);
  x->emit.keep = keep;
  int status = 0, nf = 0;
  if (zoo_cuda_emit_graph(&x->emit, &x->g, x->sym, &nf) != 0) {
    snprintf(x->err, sizeof x->err, "code generation: %s", x->emit.err);
    status = -1;
  }
  x->emit.keep = NULL;
  if (status == 0)
    status = zoo_plan_build(&x->plan, &x->g, x->sym, x->emit.steps, x->emit.nsteps, x->emit.alias,
                            keep_ids, nkeep, 1, x->err, sizeof x->err);
  free(all);
  free(keep_ids);
  return status;
}

int zoo_cuda_exec_precompile(const zoo_graph *g, const int64_t *sym, int fuse, const unsigned char *keep,
                             const char *arch, char *err, size_t errlen) {
  zoo_cuda_exec *x = calloc(1, sizeof *x);
  if (!x) abort();
  int status = exec_emit(x, g, sym, fuse, keep);
  if (status == 0) status = precompile_module(x->emit.src.s, arch, x->err, sizeof x->err);
  if (status != 0) snprintf(err, errlen, "%s", x->err);
  zoo_cuda_exec_free(x);
  return status;
}

zoo_cuda_exec *zoo_cuda_exec_init(const zoo_graph *g, const int64_t *sym, int fuse,
                                  const unsigned char *keep, char *err, size_t errlen) {
  zoo_cuda_exec *x = calloc(1, sizeof *x);
  if (!x) abort();
  core *c = &x->c;
  c->err = x->err;
  c->errlen = sizeof x->err;
  int status = exec_emit(x, g, sym, fuse, keep);
  if (status == 0) status = core_device(c, 0);
  if (status == 0) status = core_module(c, &x->emit, &x->g);
  if (status == 0) {
    int64_t sizes[5] = {0, x->plan.arena_bytes, x->plan.param_bytes, x->plan.param_bytes, x->plan.input_bytes};
    for (int m = 1; m < 5 && status == 0; m++) {
      status = core_alloc(c, &c->base[m], sizes[m]);
      if (status == 0) {
        CUresult r = zoo_cu.cuMemsetD8Async(c->base[m], 0, (size_t)(sizes[m] > 0 ? sizes[m] : 256), c->stream);
        if (r != CUDA_SUCCESS) status = zoo_cu_fail(r, "cuMemsetD8Async", __FILE__, __LINE__, x->err, sizeof x->err);
      }
    }
    if (status == 0) status = core_alloc(c, &c->workspace, WORKSPACE_BYTES);
  }
  if (status == 0) status = zoo_cublaslt_load(x->err, sizeof x->err);
  if (status == 0) {
    cublasStatus_t st = zoo_cublaslt.cublasLtCreate(&c->lt);
    if (st != CUBLAS_STATUS_SUCCESS) status = zoo_cublaslt_fail(st, "cublasLtCreate", __FILE__, __LINE__, x->err, sizeof x->err);
  }
  if (status == 0) status = core_gemms(c, &x->plan, 0, x->emit.nsteps, &x->g, 0);
  if (status == 0) status = core_gemms(c, &x->plan, 0, x->emit.nsteps, &x->g, 1);
  if (status != 0) {
    snprintf(err, errlen, "%s", x->err);
    zoo_cuda_exec_free(x);
    return NULL;
  }
  return x;
}

int zoo_cuda_exec_upload(zoo_cuda_exec *x, int tensor, const void *host) {
  CUdeviceptr d = tensor_ptr(&x->c, &x->plan, tensor);
  if (!d) {
    snprintf(x->err, sizeof x->err, "tensor %d has no memory (kept in a register, or unused)", tensor);
    return -1;
  }
  ZOO_CU(x->err, cuCtxSetCurrent(x->c.ctx));
  ZOO_CU(x->err, cuStreamSynchronize(x->c.stream));
  ZOO_CU(x->err, cuMemcpyHtoD(d, host, (size_t)x->plan.bytes[tensor]));
  return 0;
}

int zoo_cuda_exec_download(zoo_cuda_exec *x, int tensor, void *host) {
  CUdeviceptr d = tensor_ptr(&x->c, &x->plan, tensor);
  if (!d) {
    snprintf(x->err, sizeof x->err, "tensor %d has no memory (kept in a register, or unused)", tensor);
    return -1;
  }
  ZOO_CU(x->err, cuCtxSetCurrent(x->c.ctx));
  ZOO_CU(x->err, cuStreamSynchronize(x->c.stream));
  ZOO_CU(x->err, cuMemcpyDtoH(host, d, (size_t)x->plan.bytes[tensor]));
  return 0;
}

int zoo_cuda_exec_run(zoo_cuda_exec *x, uint64_t seed) {
  ZOO_CU(x->err, cuCtxSetCurrent(x->c.ctx));
  if (run_steps(&x->c, &x->plan, &x->g, 0, x->emit.nsteps, seed, 0, NULL) != 0) return -1;
  CUresult r = zoo_cu.cuStreamSynchronize(x->c.stream);
  if (r != CUDA_SUCCESS) {
    zoo_cu_fail(r, "cuStreamSynchronize(stream)", __FILE__, __LINE__, x->err, sizeof x->err);
    return context(&x->c, "running the graph (rerun with ZOO_DEBUG=1 to name the failing kernel)");
  }
  return 0;
}

int zoo_cuda_exec_steps(const zoo_cuda_exec *x, int *nforward) {
  if (nforward) *nforward = x->emit.nforward_steps;
  return x->emit.nsteps;
}

int zoo_cuda_exec_time(zoo_cuda_exec *x, int first, int n, int repeats, float *ms) {
  ZOO_CU(x->err, cuCtxSetCurrent(x->c.ctx));
  CUevent ev[2] = {NULL, NULL};
  int status = 0;
  for (int k = 0; k < 2 && status == 0; k++) {
    CUresult r = zoo_cu.cuEventCreate(&ev[k], CU_EVENT_DEFAULT);
    if (r != CUDA_SUCCESS) status = zoo_cu_fail(r, "cuEventCreate", __FILE__, __LINE__, x->err, sizeof x->err);
  }
  for (int rep = -1; rep < repeats && status == 0; rep++) { /* rep -1: untimed */
    CUresult r = zoo_cu.cuEventRecord(ev[0], x->c.stream);
    for (int i = first; i < first + n && r == CUDA_SUCCESS && status == 0; i++)
      status = launch_step(&x->c, &x->plan, &x->g, i, 0, 0, 0);
    if (status != 0) break;
    if (r == CUDA_SUCCESS) r = zoo_cu.cuEventRecord(ev[1], x->c.stream);
    if (r == CUDA_SUCCESS) r = zoo_cu.cuEventSynchronize(ev[1]);
    float t = 0;
    if (r == CUDA_SUCCESS) r = zoo_cu.cuEventElapsedTime(&t, ev[0], ev[1]);
    if (r != CUDA_SUCCESS) status = zoo_cu_fail(r, "timing the steps (cuEvent*)", __FILE__, __LINE__, x->err, sizeof x->err);
    else if (rep >= 0) ms[rep] = t;
  }
  for (int k = 0; k < 2; k++)
    if (ev[k]) zoo_cu.cuEventDestroy(ev[k]);
  return status;
}

void zoo_cuda_exec_free(zoo_cuda_exec *x) {
  if (!x) return;
  core_free(&x->c);
  zoo_cuda_emit_free(&x->emit);
  zoo_plan_free(&x->plan);
  free(x->g.nodes);
  free(x);
}
