/* codegen_cuda.h: from a (fused) graph to CUDA C and a list of launches.
 *
 * Every op has an emitter, zoo_cuda_<name> (ops.def). An emitter appends CUDA C
 * (one translation unit for the whole graph, compiled once by NVRTC) and the
 * steps that run it: kernel launches, or GEMMs that the runtime hands to
 * cuBLASLt. Shapes are bound before emission, so sizes are compile-time
 * constants in the generated code. Emitters for elementwise, reduction and
 * movement ops are generated from the op table in compiler/codegen_cuda.c; the
 * hand-written intrinsics live in runtime/kernels/<name>.cu and their emitters in
 * compiler/codegen_intrinsics.c, which specialise them with #defines.
 *
 * Pointers reach kernels as arguments (ZOO_ARG_TENSOR), never baked into the
 * source, so one compiled module serves every step and the arena can move.
 */
#ifndef ZOO_CODEGEN_CUDA_H
#define ZOO_CODEGEN_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "graph.h"

typedef struct zoo_strbuf {
  char *s;
  size_t len, cap;
} zoo_strbuf;
void zoo_strbuf_printf(zoo_strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void zoo_strbuf_puts(zoo_strbuf *b, const char *s);
void zoo_strbuf_free(zoo_strbuf *b);

/* A copy of the module source src (malloc'ed) in which every kernel begins with
 * zk_entry_wait(): on sm_90 and later it waits for the kernel before it on the
 * stream to complete, then lets the one after it be scheduled (programmatic
 * dependent launch, which runtime/cuda.c uses to close the gaps between
 * kernels). zoo_nvrtc_compile applies it to whatever it compiles, and zooc to
 * what it writes, so generated/ shows the code that runs. Idempotent. */
char *zoo_cuda_entry_waits(const char *src);

/* NVRTC compiles a module's kernels one after another: a long module takes
 * seconds. zoo_cuda_split_module cuts src into up to `parts` sources
 * (ZOO_MODULE_PARTS_MAX at most) that compile independently, in parallel
 * (nvrtc_cache.h's zoo_nvrtc_compile_parts): each keeps all of src's text but
 * the kernel definitions (lines beginning `extern "C" __global__`), which are
 * dealt out by a rough compile cost (zoo's GEMMs 8, other library kernels 3,
 * generated ones 1), the heaviest first, each to the part with the least so
 * far. Every kernel is then defined in exactly one source, in its order; the
 * shared text (library code, helpers, static_asserts) in all, where what a
 * source does not use costs only its parsing (0.03 s for rebased's). Fewer
 * sources than parts when src has fewer kernels (one when it has none).
 * Fills out[0 .. n) (malloc'ed) and returns n. */
#define ZOO_MODULE_PARTS_MAX 64
int zoo_cuda_split_module(const char *src, int parts, char **out);

typedef enum zoo_arg_kind {
  ZOO_ARG_TENSOR,  /* device pointer of tensor `tensor` */
  ZOO_ARG_SCRATCH, /* device pointer to this step's scratch area + `i` bytes; the
                      steps of one node share one area (the largest scratch_bytes
                      among them), so a first kernel can leave partials there
                      for a second; for a GEMM step, zoo's own kernel's */
  ZOO_ARG_I64,     /* long long i */
  ZOO_ARG_F32,     /* float f */
  ZOO_ARG_SEED,    /* unsigned long long: the step's RNG seed (dropout) */
  ZOO_ARG_COUNTER, /* unsigned *: counter number `i` of the plan's counters, zero
                      before every launch; a kernel that counts its blocks
                      (zk_finish_partials) puts it back to zero. With n > 1,
                      counters i .. i + n - 1, consecutive */
} zoo_arg_kind;

typedef struct zoo_arg {
  zoo_arg_kind kind;
  int tensor;
  int64_t i;
  float f;
  int n; /* ZOO_ARG_COUNTER: how many (0 means 1) */
} zoo_arg;

#define ZOO_MAX_ARGS 16

typedef enum zoo_step_kind {
  ZOO_STEP_KERNEL, /* launch `func` from the module */
  ZOO_STEP_GEMM,   /* C = alpha op(A) op(B) + beta C, row-major, batched; by
                      cuBLASLt, or by zoo's own kernel `func` (when not NULL,
                      launched over grid/block with (A, B, bias, C)) where
                      the backend's timing picks it */
  ZOO_STEP_ZERO,   /* memset tensor `gemm.c` to zero */
} zoo_step_kind;

/* Row-major GEMM: C[m, n] = alpha * op(A)[m, k] op(B)[k, n] + beta * C, over
 * `batch` matrices at the given element strides (0 = shared). bias (tensor id
 * or -1) is added to each row of C: bias[n]. */
typedef struct zoo_gemm {
  int a, b, c, bias;
  int trans_a, trans_b;
  int64_t m, n, k, batch;
  int64_t stride_a, stride_b, stride_c;
  float alpha, beta;
} zoo_gemm;

typedef struct zoo_step {
  zoo_step_kind kind;
  const char *func;       /* kernel name in the module (ZOO_STEP_KERNEL) */
  unsigned grid[3], block[3];
  unsigned smem;          /* dynamic shared memory bytes */
  int nargs;
  zoo_arg args[ZOO_MAX_ARGS];
  zoo_gemm gemm;
  int node;               /* the graph node (first node of a fused group) it runs */
  int64_t scratch_bytes;  /* temporary device memory this step needs */
  int early;              /* reads nothing but the graph's inputs (and its node's scratch):
                             the training step runs it first, on the second stream
                             (generate.c, schedule.c), beside the forward */
} zoo_step;

typedef struct zoo_cuda_emit {
  const zoo_graph *g;
  const int64_t *sym;     /* bound symbol values */
  zoo_strbuf src;         /* the module's CUDA C */
  zoo_step *steps;
  int nsteps, steps_cap;
  int uid;                /* for unique kernel names */
  char err[256];
  /* Added with the generic emitters (all zero in a fresh emit: the defaults). */
  const unsigned char *keep; /* per tensor, set by the caller: 1 = must reach memory
                                even when fusion could keep it in a register (tests
                                that read intermediates); NULL: only the graph's
                                output, loss, metrics and parameter gradients */
  int *alias;              /* per tensor, filled by zoo_cuda_emit_graph: the tensor whose
                              memory it shares (reshape is free), -1 if none */
  unsigned char *stored;   /* per tensor, filled by zoo_cuda_emit_graph: 1 if some
                              node outside its group (or the caller) reads it */
  int nforward_steps;      /* of the last zoo_cuda_emit_graph call */
  char **owned;            /* strings made by zoo_cuda_strdup, freed with e */
  int nowned, owned_cap;
  int ncounters;           /* ZOO_ARG_COUNTER numbers handed out */
  int tf32;                /* set by the caller: 1 = TF32 tensor-core products where zoo's
                              kernels have them (precision tf32 and bf16): poly_attention's
                              quadratic form (ZOO_POLY_MMA overrides it, zoo_cuda_poly_mma)
                              and linear_cross_entropy_step (ZOO_LCE_STEP_FORM); 0 = fp32 */
  /* While emit_elementwise cuts a group into kernels: the group's list, each node's
     place in it and, per tensor, the last member that reads it (-1: none), so that
     asking whether a tensor is made or read inside a range of it takes no scan
     (long unrolled chains would otherwise take cubic time). */
  const int *grp;
  int *grp_pos, *grp_last;
} zoo_cuda_emit;

/* A copy of s that lives as long as e (for zoo_step.func). */
const char *zoo_cuda_strdup(zoo_cuda_emit *e, const char *s);

/* Appends a step and returns it (zeroed, node set). The pointer is valid until
 * the next zoo_cuda_step call. */
zoo_step *zoo_cuda_step(zoo_cuda_emit *e, zoo_step_kind kind, int node);

/* Shape helpers for emitters: dims of tensor t with the symbols bound. */
int64_t zoo_cuda_dim(const zoo_cuda_emit *e, int t, int axis);
int64_t zoo_cuda_numel(const zoo_cuda_emit *e, int t);
/* Appends a comment line naming node i's op and .zoo span:
 *   // add  models/std/nn.zoo:12:5 */
void zoo_cuda_comment_node(zoo_cuda_emit *e, int node);

/* Whether node n moves no data under the bound symbols sym: a reshape, or
 * split_heads / merge_heads with one head (or one step), whose two layouts
 * are the same. Its output is then an alias of its input (zoo_cuda_emit's
 * alias), with no kernel. */
int zoo_cuda_is_view(const zoo_graph *g, const int64_t *sym, const zoo_node *n);

/* Emitters, one per op. Return 0, or -1 with e->err set. */
#define X(NAME, name, cls, nin_min, nin_max, nout, flags) \
  int zoo_cuda_##name(zoo_cuda_emit *e, const zoo_node *n);
#include "ops.def"
#undef X

/* poly_attention's two forms (codegen_intrinsics.c): the quadratic tiled form
 * (runtime/kernels/poly_attention.cu) and the chunked linear form with the
 * feature state (poly_attention_chunked.cu). The one rule that chooses:
 * ZOO_POLY_FORM=quadratic|chunked|auto in the environment, else auto, which
 * takes the chunked form when T >= ZOO_POLY_CHUNKED_MIN_T and the form can
 * run the shape (features exist, its shared memory fits), except that with
 * tf32 (TF32 products: precision tf32 and bf16) it keeps the quadratic form
 * where that runs on the tensor cores with one TF32 product and T <= 2048
 * (measured: codegen_intrinsics.c). */
typedef enum zoo_poly_form { ZOO_POLY_QUADRATIC, ZOO_POLY_CHUNKED } zoo_poly_form;

/* Measured with `zoorun bench --poly` on an H200 (B 512, H 12, ReBased): at
 * T = 512 the quadratic form is 1.65-2.4x faster (forward and backward, DV 5
 * and 42), at T = 2048 the chunked one is 1.2-1.8x faster. Their ratio moves
 * with T (quadratic against linear work), which puts the crossover between
 * T = 850 and 1250: chunked from 1024. */
#define ZOO_POLY_CHUNKED_MIN_T 1024

/* Positions per chunk of the chunked form (its kernels' C). */
#define ZOO_POLY_CHUNK 64

/* The form for q [.., T, F], v [.., T, DV], coefficients c0, c1, c2 and tf32. Returns
 * 0, or -1 with err (ZOO_POLY_FORM unknown, or chunked asked for a shape it
 * cannot run). */
int zoo_cuda_poly_form(int64_t T, int64_t F, int64_t DV, double c0, double c1, double c2, int tf32,
                       zoo_poly_form *form, char *err, size_t errlen);

/* Whether the quadratic form runs as poly_attention_tiled.cu's two-level tiles
 * (64 queries x 64 keys a block) rather than poly_attention.cu's one row a
 * thread: ZOO_POLY_TILED=0|1 in the environment, else when DV >=
 * ZOO_POLY_TILED_MIN_DV and T >= 64; never when F is not a multiple of 8 or
 * the tiles' shared memory would not fit. A backward that must recompute the
 * forward's o and z (given do, q, k, v alone) keeps the one-row kernels. */
int zoo_cuda_poly_tiled(int64_t T, int64_t F, int64_t DV);

/* Measured with `zoorun bench --poly` on an H200 (session 8, device run 1; B
 * 512, H 12, ReBased), forward / backward ms, rows against tiles: DV 42 at
 * T 128 0.649 / 1.832 against 0.458 / 1.608, at T 512 5.160 / 15.390 against
 * 4.906 / 15.111; DV 5 at T 512 1.391 / 4.170 against 1.907 / 7.088. At the
 * cells (zoorun bench --only rebased): 512/512 (DV 42) 97.61 -> 95.84 ms a
 * step with the tiles, 128/512 (DV 10) 25.60 -> 28.26. Both kinds are bound
 * by shared-memory reads (ncu: L1 82-88% busy in the tiles), as if a warp's
 * 16-byte read took 4 of the L1's cycles, broadcast or not: then a float read
 * must feed 4 multiply-adds to keep up, and the tiles' value phases come near
 * that only with many value columns a thread. Hence tiles from DV 32. Value, dq
 * and dk phases in 8-row tiles (half the threads, 161-166 registers) read a
 * third fewer floats and measured slower (device run 2): DV 42, T 512, 6.50 /
 * 16.77 ms. Session 16's paired lanes made the tiles much faster at DV 42 but
 * left the narrow widths with one row a thread (session 18, .gpu/s18run2.sh,
 * zoorun bench with ZOO_POLY_TILED=1 and without, twice each): rebased
 * 128/512 (DV 10) 24.38-24.39 against 24.26-24.27 ms a step, 64/128 (DV 5)
 * 2.48 against 2.38-2.40, 32/48 (DV 2) 0.96 against 0.87; Based 128/512
 * 23.83-23.92 against 23.77-23.83; and poly_attention alone at DV 5 (zoorun
 * bench --poly), L 512 1.438 / 4.866 against 1.318 / 3.970 ms. One cell went
 * the other way: Based 64/128 (DV 5, heads interleaved) 2.31-2.32 against
 * 2.34-2.36 ms in three runs each (s18run2.sh, s18run4.sh), 1.3%; a rule
 * that picks by the coefficients and layout to catch it would be fitted to
 * that one cell, so the threshold stands. */
#define ZOO_POLY_TILED_MIN_DV 32

/* The tensor-core kernels of the quadratic form (poly_attention_mma.cu) that
 * the emitter takes for q [.., T, F], v [.., T, DV]: 0 none (the fp32 kernels
 * above), 1 one TF32 product, 3 three (each fp32 operand split into a TF32
 * head and tail: errors of the order of fp32 rounding). ZOO_POLY_MMA=0|1|3 in
 * the environment, else 1 when the caller asks for TF32 products (tf32, the
 * emit's tf32) and T >= 64, else 0; always 0 when F is not a multiple of
 * 8 or the tiles' shared memory would not fit.
 *   Measured (zoorun bench --precision tf32, session 8, device runs 3-5),
 * against the fp32 kernels: rebased 128/512 16.43 -> 13.46 ms a step, based
 * 128/512 15.78 -> 12.90, 64/128 1.88 -> 1.87; at 32/48 (T 48) 0.80 -> 0.86,
 * hence T >= 64 (session 10's leaner kernels, .gpu/s10run6.sh: 0.80 against
 * 0.81 ms, the three kernels 0.178 against 0.180 ms: it stands). Three products are opt-in, so that fp32 stays fp32
 * arithmetic: they gain where the value rows are wide (L 512, DV 42: 4.38 +
 * 12.17 ms against the tiles' 4.91 + 15.12, device run 8) and lose at narrow
 * ones (DV 5: 1.90 + 5.67 against rows' 1.39 + 4.18; rebased 128/512, DV 10,
 * 27.94 against 25.76 ms a step, device run 4). */
int zoo_cuda_poly_mma(int64_t T, int64_t F, int64_t DV, int tf32);

/* zoo's own fp32 kernel for GEMM step s (runtime/kernels/gemm.cu), emitted
 * beside cuBLASLt's where it may win: one matrix, A not transposed, K <= 32
 * (measured on the H200, session 5: at K = 24 or 32 it took 0.006 ms where
 * cuBLASLt's best took 0.011 to 0.013 at m 24576, n 24 or 32, and 0.122
 * against 0.131 for rebased 32/48's logits; at K = 64 it lost or tied); and
 * the weight gradients' form, A transposed, B not, 2048 <= K <= 32768 and
 * M N <= 65536
 * (a small C over the batch's rows), split along K in one launch
 * (zk_wgrad: its arguments go on in s->args, a scratch area for the partial
 * sums and the reduction's counters). Sets s->func, grid and block;
 * nothing when the GEMM does not qualify. Returns 0, or -1 with e's error. */
int zoo_cuda_gemm_own(zoo_cuda_emit *e, zoo_step *s);

/* Fused groups beyond elementwise chains (fuse.h).
 *
 * A row op with ZOO_OPF_PROLOGUE gets its input 0 from a prologue: the kernel
 * parameters of the group's tensors (what it reads, what it stores for other
 * groups, the seed), the statements that compute input 0 at the flat index
 * i_ (a long long) and return it, to be the body of a lambda
 * `[&](long long i_) -> float { body }` that the row kernel calls once per
 * element instead of loading input 0, and the launch arguments in the order
 * of params. zoo_cuda_<op>_prologue emits the op's kernel with it (NULL: input
 * 0 read from memory, as zoo_cuda_<op>). */
typedef struct zoo_cuda_prologue {
  const char *params;      /* "const float *__restrict__ t3, float *__restrict__ t9"; may be "" */
  const char *body;
  zoo_arg args[ZOO_MAX_ARGS];
  int nargs;
  const int *nodes;        /* the prologue's nodes, for the kernel's header comment */
  int count;
} zoo_cuda_prologue;

int zoo_cuda_layernorm_prologue(zoo_cuda_emit *e, const zoo_node *n, const zoo_cuda_prologue *p);

/* A row op with ZOO_OPF_EPILOGUE hands its output 0 to an epilogue: the same
 * fields, whose body is that of a lambda `[&](long long i_, float v_) { body }`
 * that the row kernel calls once per element of output 0 (i_ its flat index,
 * v_ its value) instead of storing it; the body computes the group there and
 * stores what other groups read (output 0 too, when someone reads it).
 * zoo_cuda_<op>_epilogue emits the op's kernel with it (NULL: output 0 stored,
 * as zoo_cuda_<op>). */
typedef zoo_cuda_prologue zoo_cuda_epilogue;

int zoo_cuda_layernorm_bwd_epilogue(zoo_cuda_emit *e, const zoo_node *n, const zoo_cuda_epilogue *p);
int zoo_cuda_causal_conv1d_bwd_epilogue(zoo_cuda_emit *e, const zoo_node *n, const zoo_cuda_epilogue *p);

/* A row op with both flags may take a prologue and an epilogue at once:
 * zoo_cuda_<op>_fused(e, n, pro, epi), either NULL; with both, pro's params
 * and args are those of both lambdas (each tensor once), epi's are empty. */
int zoo_cuda_layernorm_bwd_prologue(zoo_cuda_emit *e, const zoo_node *n, const zoo_cuda_prologue *p);
int zoo_cuda_layernorm_bwd_fused(zoo_cuda_emit *e, const zoo_node *n, const zoo_cuda_prologue *pro,
                                 const zoo_cuda_epilogue *epi);

/* An op with ZOO_OPF_INLINE computed inside an elementwise group's kernel:
 * zoo_cuda_inline_<op> writes to expr the C expression of node n's output
 * element at the flat index `i`, reading each input t through its kernel
 * parameter t<id> (pasting the kernel file it needs into the module first). */
int zoo_cuda_inline_causal_conv1d(zoo_cuda_emit *e, const zoo_node *n, char *expr, size_t len);

/* The fusion flags (ZOO_OPF_INLINE, ZOO_OPF_PROLOGUE, ZOO_OPF_EPILOGUE) whose forms the CUDA
 * generator has for op: equal to the op's flags in ops.def (a test checks). */
int zoo_cuda_op_fusion(zoo_op op);

/* Emits the whole graph (after fusion): the module source and every step in
 * node order. Steps of nodes [0, g->nforward) come first; *nforward_steps says
 * how many. Returns 0, or -1 with the reason in e->err. A second call on the
 * same e (another graph over the same tensors, e.g. the evaluation graph)
 * appends its kernels and steps after the first's; *nforward_steps then counts
 * that call's steps only. */
int zoo_cuda_emit_graph(zoo_cuda_emit *e, const zoo_graph *g, const int64_t *sym,
                        int *nforward_steps);
void zoo_cuda_emit_free(zoo_cuda_emit *e);

/* The optimiser's inputs on the device, written by the host before each step
 * (the module declares the same struct). */
typedef struct zoo_hyper {
  float lr, beta1, beta2, eps, weight_decay, pad;
  int64_t step; /* AdamW's t, from 1 */
} zoo_hyper;

/* Appends the runtime's own kernels, once per module:
 *   zoo_adamw(p, g, m, v, const zoo_hyper *h, long long n)    torch.optim.AdamW
 *   zoo_accumulate(acc, g, long long n, int first)             acc = g or acc + g
 *   zoo_metrics_accumulate(acc[3], loss, metrics[2], int first) loss, correct, labelled
 * all over flat fp32 arrays; grid-stride loops of 256 threads. */
void zoo_cuda_emit_optimizer(zoo_cuda_emit *e);

/* Kernels defined twice in e's module, the same text but the name (the
 * evaluation's forward repeats the training step's: 31 of rebased 32/48's 91
 * kernels), are defined once: each later copy becomes a comment naming the
 * first, and the steps that launched it launch the first. NVRTC then compiles
 * each once. Returns how many were merged. */
int zoo_cuda_merge_duplicate_kernels(zoo_cuda_emit *e);

#endif
