/* graph.h: zoo's graph IR.
 *
 * A graph is a list of nodes in a valid execution order (each node's inputs are
 * produced by earlier nodes, or are inputs or parameters) and the tensors they
 * read and write. A node has up to ZOO_MAX_IN inputs and ZOO_MAX_OUT outputs, all
 * tensor ids. Shapes are symbolic in a few named symbols (B, T, ...): a dimension
 * is coef * the product of the symbols in its mask, so B*T is representable. A
 * backend binds the symbols to numbers before it runs the graph.
 *
 * Ops come from ops.def (one X-macro row each); per-op behaviour lives in the
 * functions that row names (see ops.def).
 */
#ifndef ZOO_GRAPH_H
#define ZOO_GRAPH_H

#include <stdint.h>
#include <stdio.h>

#include "diag.h"

#define ZOO_MAX_DIMS 6
#define ZOO_MAX_IN 6
#define ZOO_MAX_OUT 4
#define ZOO_MAX_SYMS 8
/* The most elements a parameter tensor may have, and so the most of each of its
 * sizes (param() in builtins.c refuses more): 4 TiB of floats, and a count no
 * sum of a model's parameters can overflow. */
#define ZOO_PARAM_MAX ((int64_t)1 << 40)

typedef enum zoo_op {
#define X(NAME, name, cls, nin_min, nin_max, nout, flags) ZOO_OP_##NAME,
#include "ops.def"
#undef X
  ZOO_OP_COUNT
} zoo_op;

typedef enum zoo_op_class {
  ZOO_CLASS_ELEMENTWISE,
  ZOO_CLASS_REDUCTION,
  ZOO_CLASS_MOVEMENT,
  ZOO_CLASS_MATMUL,
  ZOO_CLASS_GATHER,
  ZOO_CLASS_SCAN,
  ZOO_CLASS_INTRINSIC,
} zoo_op_class;

enum {
  ZOO_OPF_GRAD = 1,     /* has a gradient with respect to its float inputs */
  ZOO_OPF_RANDOM = 2,   /* draws from the counter-based RNG (attrs.i[0] = stream) */
  ZOO_OPF_INTERNAL = 4, /* made by passes; not a .zoo builtin */
  /* Fusion beyond the class (compiler/fuse.c; codegen_cuda.c emits them): */
  ZOO_OPF_INLINE = 8,   /* output element e reads a fixed, small window of its inputs
                           around e (a stencil such as a short causal conv): the kernel
                           of an elementwise group that consumes it can compute it in
                           place, as if it were elementwise */
  ZOO_OPF_PROLOGUE = 16, /* works on input 0 row by row (last axis), each element
                            read once: input 0 can be computed inside its kernel by
                            the elementwise group that makes it (the group becomes
                            the op's prologue) */
  ZOO_OPF_EPILOGUE = 32, /* makes output 0 row by row (last axis), each element
                            written once: the elementwise group that consumes
                            output 0 can be computed inside its kernel (the
                            group becomes the op's epilogue) */
};

typedef struct zoo_op_info {
  const char *name;
  zoo_op_class cls;
  int nin_min, nin_max, nout;
  int flags;
} zoo_op_info;

extern const zoo_op_info zoo_ops[ZOO_OP_COUNT];
/* Looks up a builtin by its .zoo spelling; -1 when there is none (INTERNAL ops
 * are not found). */
int zoo_op_lookup(const char *name);

typedef enum zoo_dtype { ZOO_F32, ZOO_I32 } zoo_dtype;

/* coef * product of the symbols whose bits are set in sym */
typedef struct zoo_dim {
  int64_t coef;
  uint32_t sym;
} zoo_dim;

typedef struct zoo_type {
  zoo_dtype dtype;
  int ndim; /* 0: a scalar */
  zoo_dim dim[ZOO_MAX_DIMS];
} zoo_type;

typedef struct zoo_attrs {
  int64_t i[4];
  double f[6];
  int ndim;
  zoo_dim dims[ZOO_MAX_DIMS];
} zoo_attrs;

typedef enum zoo_tensor_kind {
  ZOO_T_VALUE, /* produced by a node */
  ZOO_T_INPUT, /* fed by the runtime each step (tokens, targets, dloss) */
  ZOO_T_PARAM, /* a trained parameter */
} zoo_tensor_kind;

typedef enum zoo_init_kind {
  ZOO_INIT_ZEROS,
  ZOO_INIT_ONES,
  ZOO_INIT_NORMAL,  /* mean 0, std a */
  ZOO_INIT_UNIFORM, /* in [-a, a] */
  ZOO_INIT_CONST,   /* every element a */
  ZOO_INIT_RAMP,    /* element i (flat index): d + c * (i / a)^b */
  ZOO_INIT_ZIGZAG,  /* element i: b + a * ((i + 1) % 3 - 1) */
} zoo_init_kind;

/* a is the only number of the first five kinds; RAMP and ZIGZAG (RWKV's
 * per-channel inits) use a..d as their comments say. */
typedef struct zoo_init {
  zoo_init_kind kind;
  double a, b, c, d;
} zoo_init;

typedef struct zoo_tensor {
  zoo_type type;
  zoo_tensor_kind kind;
  int producer;     /* node id, -1 for inputs and parameters */
  int out_index;    /* which output of the producer */
  const char *name; /* parameters: hierarchical name; inputs: argument name; else NULL */
  zoo_init init;    /* parameters */
  int grad;         /* after autodiff: id of d(loss)/d(this), -1 if none */
} zoo_tensor;

typedef struct zoo_node {
  zoo_op op;
  int nin, nout;
  int in[ZOO_MAX_IN];
  int out[ZOO_MAX_OUT];
  zoo_attrs attrs;
  zoo_span span; /* the .zoo call it came from (backward nodes: their forward node's) */
  int group;     /* set by fuse: the kernel this node belongs to, -1 before */
} zoo_node;

typedef struct zoo_graph {
  zoo_node *nodes;
  int nnodes, nodes_cap;
  zoo_tensor *tensors;
  int ntensors, tensors_cap;
  const char *sym_names[ZOO_MAX_SYMS];
  int nsyms;
  int *params; /* tensor ids, in declaration order */
  int nparams, params_cap;
  int *inputs; /* tensor ids of ZOO_T_INPUT tensors, in order */
  int ninputs, inputs_cap;
  int output;  /* the model's returned tensor (logits), -1 if none; also -1 after
                  zoo_train_graph fused the head into the loss (the logits are gone) */
  /* Set by zoo_train_graph: */
  int targets, loss, metrics, dloss; /* tensor ids, -1 if absent */
  int nforward; /* nodes [0, nforward) are the forward pass (loss and metrics included) */
  int next_stream; /* next RNG stream id for dropout-like ops */
} zoo_graph;

void zoo_graph_init(zoo_graph *g);
void zoo_graph_free(zoo_graph *g);

/* Symbols by name, made on first use. */
int zoo_graph_symbol(zoo_graph *g, const char *name);

/* New tensors. Names are copied. */
int zoo_graph_input(zoo_graph *g, const char *name, zoo_type t);
int zoo_graph_param(zoo_graph *g, const char *name, zoo_type t, zoo_init init);

/* Appends a node, runs the op's shape rule and makes its output tensors. Returns
 * the id of the first output tensor (the others follow it: out[k] = first + k), or
 * -1 after reporting the shape rule's error at `at` through d. */
int zoo_graph_node(zoo_graph *g, zoo_op op, int nin, const int *in, const zoo_attrs *attrs,
                   zoo_span at, zoo_diag *d);

/* Types and shapes */
/* Is environment variable `name` set to something other than "" and "0"?
 * (The ZOO_* switches: ZOO_DEBUG, ZOO_NO_FUSED_HEAD, ZOO_TIMING, ...) */
int zoo_env_on(const char *name);

zoo_dim zoo_dim_const(int64_t n);
int zoo_dim_eq(zoo_dim a, zoo_dim b);
zoo_dim zoo_dim_mul(zoo_dim a, zoo_dim b);
/* a * b into *out and 1, or 0 when the coefficient would overflow int64 (sizes
 * made from the user's numbers go through this one). */
int zoo_dim_mul_checked(zoo_dim a, zoo_dim b, zoo_dim *out);
/* a / b when exact (same symbols or b constant dividing a's coefficient); 0 if not */
int zoo_dim_div(zoo_dim a, zoo_dim b, zoo_dim *out);
int zoo_type_eq(const zoo_type *a, const zoo_type *b);
/* "f32[B, T, 64]" into buf; returns buf */
char *zoo_type_str(const zoo_graph *g, const zoo_type *t, char *buf, size_t n);
char *zoo_dim_str(const zoo_graph *g, zoo_dim d, char *buf, size_t n);
/* Elements of a type with the symbols bound (sym_values[i] for symbol i). */
int64_t zoo_dim_eval(zoo_dim d, const int64_t *sym_values);
int64_t zoo_type_numel(const zoo_type *t, const int64_t *sym_values);
/* Parameter element count (parameters never have symbolic dims); INT64_MAX
 * where the sum would overflow. */
int64_t zoo_graph_param_count(const zoo_graph *g);

/* Shape rules (compiler/shape.c): fills out[0 .. nout-1]; returns 0, or -1 with a
 * message naming the offending shapes in err. */
int zoo_shape_infer(const zoo_graph *g, const zoo_node *n, zoo_type *out, char *err, size_t errlen);

/* Builds the training graph on top of a model graph whose g->output is the logits
 * [B, T, V]: adds the i32 input "targets" [B, T], cross_entropy (ignore -100) as
 * g->loss, accuracy as g->metrics, the scalar input "dloss" (the loss's gradient
 * seed, 1 / accumulation steps), sets nforward, then runs autodiff so that every
 * parameter's tensor has .grad. Returns 0, or -1 after reporting through d.
 *
 * The head, when the logits come from linear(h, w) without bias and feed
 * nothing else (otherwise the plain form is kept):
 *   ZOO_HEAD_PLAIN    the logits [B*T, V] are made, cross_entropy and accuracy
 *                     read them.
 *   ZOO_HEAD_FUSED    that node is dropped and the loss is
 *                     linear_cross_entropy(h, w, targets), the metrics
 *                     accuracy(h, w, targets): no logits are made at all (the
 *                     CPU's choice).
 *   ZOO_HEAD_COMPACT  label_rows lists the labelled positions, gather_rows takes
 *                     their rows of h, and linear, cross_entropy and accuracy run
 *                     over those M rows only: logits [M, V] with M = `per_seq`
 *                     rows per sequence (the most labelled positions a sequence
 *                     of the data has). Plain GEMMs, a quarter of the work or
 *                     less in MQAR (the CUDA backend's choice). At D <= 64 (a
 *                     multiple of 4) and V a multiple of 128, the linear, the
 *                     loss step and linear's input gradient become one
 *                     linear_cross_entropy_step node (train_graph.c) when
 *                     the environment has ZOO_FUSED_LCE_STEP=1 (less memory,
 *                     not faster: see there).
 * g->output becomes -1 when the head is rewritten. zoo_train_graph picks
 * ZOO_HEAD_FUSED unless the environment has ZOO_NO_FUSED_HEAD=1 (for
 * bisecting); zoo_train_graph_head takes the choice as arguments (per_seq is
 * read by ZOO_HEAD_COMPACT only). */
typedef enum zoo_head { ZOO_HEAD_PLAIN, ZOO_HEAD_FUSED, ZOO_HEAD_COMPACT } zoo_head;
int zoo_train_graph(zoo_graph *g, zoo_diag *d);
int zoo_train_graph_head(zoo_graph *g, zoo_head head, int64_t per_seq, zoo_diag *d);
/* The same for a CUDA plan whose poly_attention products run on the tensor
 * cores when tc is 1 (precision tf32 or bf16): zoo_interleave_heads(g, tc). */
int zoo_train_graph_tc(zoo_graph *g, zoo_head head, int64_t per_seq, int tc, zoo_diag *d);

/* The heads-interleaved rewrite (compiler/train_graph.c), on a model graph
 * before autodiff: each poly_attention whose q, k, v are split_heads of one
 * H, whose output only merge_heads reads and whose value rows are wide enough
 * becomes a poly_attention in layout 1 (ops.def) that reads the split_heads'
 * inputs and makes the merge_heads' output; the merge_heads is dropped, and
 * each of those split_heads that nothing else reads. With tc = 1 (tensor-core
 * products), one whose q and k alone are such split_heads, of something other
 * than a layernorm, becomes a poly_attention in layout 2 (q and k read as the
 * projection makes them, v and o as they were). Other graphs are left as they
 * are. zoo_train_graph_head runs it first unless the environment has
 * ZOO_NO_INTERLEAVED_HEADS=1 (for bisecting). Returns the number of
 * poly_attention nodes rewritten. */
int zoo_interleave_heads(zoo_graph *g, int tc);

/* The layernorm-into-heads rewrite (compiler/train_graph.c), on a model graph
 * before autodiff, after zoo_interleave_heads: each layernorm whose output
 * one split_heads alone reads writes that split_heads' output itself (its
 * i0 = H, ops.def), and the split_heads is dropped; autodiff then makes a
 * layernorm_bwd that reads dy in that layout, without the merge_heads of the
 * gradient. zoo_train_graph_head runs it unless the environment has
 * ZOO_NO_NORM_SPLIT=1. Returns the number of layernorms rewritten. */
int zoo_norm_split_heads(zoo_graph *g);

/* The packed-attention rewrite (compiler/train_graph.c), on a model graph
 * before autodiff: each softmax_attention whose q, k, v are split_heads of
 * the three thirds (slices along the last axis) of one tensor and whose
 * output only merge_heads reads becomes a softmax_attention_packed (ops.def)
 * that reads that tensor and makes the merge_heads' output; the merge_heads
 * is dropped, and each of those split_heads and slices that nothing else
 * reads. zoo_train_graph_head runs it unless the environment has
 * ZOO_NO_PACKED_ATTENTION=1. Returns the number of nodes rewritten. */
int zoo_pack_attention(zoo_graph *g);

/* Reverse-mode autodiff (compiler/autodiff.c): appends backward nodes for
 * d(loss)/d(x) seeded with `seed` (a tensor of loss's type) and sets .grad of
 * every tensor that receives one (parameters, and inputs that are f32). */
int zoo_autodiff(zoo_graph *g, int loss, int seed, zoo_diag *d);

/* Dumps (compiler/dump.c) */
void zoo_graph_dump(FILE *out, const zoo_graph *g);     /* --dump=graph */
void zoo_graph_dump_dot(FILE *out, const zoo_graph *g); /* --dump=dot */

#endif
