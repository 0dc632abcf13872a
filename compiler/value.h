/* value.h: compile-time values, and what resolve, lower and builtins share.
 *
 * The compiler runs a .zoo model in two times (DESIGN.md "The language"):
 * instantiation evaluates module parameters, lets and fields to values, and
 * forward tracing evaluates each instance's forward once with symbolic tensors,
 * appending nodes to the graph. Both are one small tree-walking interpreter
 * (lower.c) over the values below; builtins.c maps builtin calls to ops and
 * compile-time functions; resolve.c loads files and checks names before any of
 * that runs.
 *
 * Private to the compiler driver: other passes see only compile.h and graph.h.
 */
#ifndef ZOO_VALUE_H
#define ZOO_VALUE_H

#include <stdint.h>

#include "arena.h"
#include "ast.h"
#include "compile.h"
#include "diag.h"
#include "graph.h"

/* ---- files (resolve.c) ---- */

/* One loaded .zoo file: its AST and the files it imports (not transitively:
 * a file sees its own modules and those of the files it names). */
typedef struct zoo_unit zoo_unit;
struct zoo_unit {
  zoo_source *src;
  zoo_ast *file;
  char *real;          /* realpath, what identifies the file */
  zoo_unit **imports;
  int nimports;
  int loading;         /* on the import stack now (cycle detection) */
};

typedef struct zoo_resolver {
  zoo_program *p;
  zoo_diag *d;
  const char *std_dir; /* models/ (holds std/) */
  zoo_unit **units;
  int nunits, cap;
  zoo_unit *stack[64]; /* files being loaded, for the cycle message */
  int depth;
} zoo_resolver;

/* Loads `path` and, recursively, what it imports. Returns the main unit, or
 * NULL after reporting. Sources are recorded in p->sources. */
zoo_unit *zoo_resolve_load(zoo_resolver *r, const char *path);
/* Checks every module of every loaded unit: duplicate declarations, members,
 * parameters; names used before or without a binding. Returns the number of
 * errors reported. */
int zoo_resolve_check(zoo_resolver *r);
/* A module declared in u or in a file u imports; NULL if none. *where receives
 * the unit that declares it. */
const zoo_ast *zoo_resolve_module(const zoo_unit *u, const char *name, const zoo_unit **where);
/* The name within edit distance 2 of `name` that is closest, among the module
 * names u sees, the builtins and the extra names given; NULL if none. */
const char *zoo_resolve_suggest(const zoo_unit *u, const char *name, const char *const *extra,
                                int nextra);
/* Levenshtein distance, capped: returns max + 1 once it exceeds max. */
int zoo_edit_distance(const char *a, const char *b, int max);

/* ---- values (lower.c) ---- */

typedef enum zoo_value_kind {
  ZOO_V_NONE,
  ZOO_V_BOOL,     /* i: 0 or 1 */
  ZOO_V_INT,      /* i */
  ZOO_V_FLOAT,    /* f */
  ZOO_V_STRING,   /* s */
  ZOO_V_LIST,     /* items, nitems */
  ZOO_V_DIM,      /* dim: a size with symbols (T, B*T); constant sizes are INTs */
  ZOO_V_TENSOR,   /* tensor: a tensor id of the graph being traced */
  ZOO_V_MODULE,   /* module, unit: a module definition */
  ZOO_V_INSTANCE, /* inst */
  ZOO_V_BUILTIN,  /* builtin */
  ZOO_V_INIT,     /* init: an initialiser, normal(0.02) */
  ZOO_V_PARAM,    /* param: a parameter made by param(...) */
} zoo_value_kind;

typedef struct zoo_value zoo_value;
typedef struct zoo_instance zoo_instance;
typedef struct zoo_builtin zoo_builtin;

/* A parameter tensor declared by param(shape, init). It gets its graph tensor
 * and name only once the whole model is built: the name is the field path by
 * which it is first reached from the root, not where param() ran. */
typedef struct zoo_param {
  zoo_type type;
  zoo_init init;
  zoo_span at;  /* the param(...) call */
  int tensor;   /* -1 until named */
} zoo_param;

struct zoo_value {
  zoo_value_kind kind;
  zoo_span at; /* the expression that computed it (errors point there) */
  int64_t i;
  double f;
  const char *s;
  zoo_value **items;
  int nitems;
  zoo_dim dim;
  int tensor;
  const zoo_ast *module;
  const zoo_unit *unit;
  zoo_instance *inst;
  const zoo_builtin *builtin;
  zoo_init init;
  zoo_param *param;
};

/* Names bound to values: one frame of a scope chain. */
typedef struct zoo_env zoo_env;
struct zoo_env {
  zoo_env *parent;       /* NULL: the globals of `unit` come next */
  const zoo_unit *unit;  /* the file whose globals end the chain */
  const char **names;
  zoo_value **values;
  int n, cap;
};

struct zoo_instance {
  const zoo_ast *module;  /* the MODULE node */
  const zoo_unit *unit;   /* the file that declares it */
  zoo_env *env;           /* parameters, lets and fields */
  const char **fields;    /* field names in declaration order (parameter naming) */
  zoo_value **field_values;
  int nfields;
};

/* The interpreter's state for one compilation. */
typedef struct zoo_lowering {
  zoo_program *p;
  zoo_graph *g;
  zoo_diag *d;
  zoo_arena *a;
  int tracing;   /* 0: instantiating modules; 1: tracing forward */
  long steps;    /* evaluation steps so far (a bound against runaway loops) */
  int nesting;   /* evaluations in progress (a bound on recursion) */
  /* What is being instantiated or traced, innermost last: for the recursion
   * check and the "note: in ..." lines under an error. */
  struct {
    const zoo_ast *module;
    int forward;      /* 1: tracing its forward; 0: instantiating it */
    zoo_span at;      /* the call */
  } stack[128];
  int depth;
} zoo_lowering;

/* Lowers the model of unit `main` into p->graph. Returns 0, or -1 after
 * reporting. */
int zoo_lower(zoo_program *p, const zoo_unit *main, const zoo_compile_opts *o, zoo_diag *d);

/* Value constructors and helpers shared with builtins.c. */
zoo_value *zoo_value_new(zoo_lowering *L, zoo_value_kind kind, zoo_span at);
zoo_value *zoo_value_int(zoo_lowering *L, int64_t i, zoo_span at);
zoo_value *zoo_value_float(zoo_lowering *L, double f, zoo_span at);
zoo_value *zoo_value_tensor(zoo_lowering *L, int tensor, zoo_span at);
/* "int", "float", "f32[B, T, 64]", "module instance Linear", ... */
const char *zoo_value_describe(zoo_lowering *L, const zoo_value *v);
/* The value as .zoo source text: 64, 0.1, "s", [1, 2], none. */
const char *zoo_value_format(zoo_lowering *L, const zoo_value *v);
/* Reports an error at `at`, followed by notes naming what was being
 * instantiated or traced. Always returns NULL, for `return zoo_lower_error(...)`. */
zoo_value *zoo_lower_error(zoo_lowering *L, zoo_span at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The notes of zoo_lower_error alone (after an error something else printed). */
void zoo_lower_notes(zoo_lowering *L);
/* An integer from v, or an error at `at` (where v is used) saying what needed
 * it, with a hint about // when v is a whole float and a note where v was
 * computed. Returns 0 or -1. */
int zoo_value_want_int(zoo_lowering *L, const zoo_value *v, zoo_span at, const char *what,
                       int64_t *out);
/* A number (int or float) as a double. Returns 0 or -1 after reporting. */
int zoo_value_want_number(zoo_lowering *L, const zoo_value *v, zoo_span at, const char *what,
                          double *out);
/* A size: an int, or a symbolic size. Returns 0 or -1 after reporting. */
int zoo_value_want_dim(zoo_lowering *L, const zoo_value *v, zoo_span at, const char *what,
                       zoo_dim *out);
/* Adds a graph node; on a shape error adds the trace notes. Returns a tensor
 * value or NULL. */
zoo_value *zoo_lower_node(zoo_lowering *L, zoo_op op, int nin, const int *in, const zoo_attrs *attrs,
                          zoo_span at);

/* Parses a .zoo literal (int, float, bool, none, string, list of them), as -D
 * values and builtin defaults are written. NULL when text is not one. */
zoo_value *zoo_literal_parse(zoo_lowering *L, const char *text, zoo_span at);

/* ---- builtins (builtins.c) ---- */

/* A call argument: positional when name is NULL. */
typedef struct zoo_arg {
  const char *name;
  zoo_value *v;
  zoo_span at;
} zoo_arg;

/* Binds arguments to parameter names: slots[i] receives the argument given for
 * names[i], or NULL. Reports too many arguments, unknown and repeated keywords
 * (`what` names the callee in messages). Returns 0 or -1. */
int zoo_bind_args(zoo_lowering *L, const char *what, const char *const *names, int nnames,
                  const zoo_arg *args, int nargs, const zoo_arg **slots);

struct zoo_builtin {
  const char *name;
  int op;            /* the zoo_op it makes, or -1 */
  const char *sig;   /* ops: parameters and attribute slots, see builtins.c */
  /* Compile-time functions (op == -1), and ops with a number form (sqrt(2.0)). */
  zoo_value *(*fn)(zoo_lowering *L, const zoo_builtin *b, const zoo_arg *args, int nargs,
                   zoo_span at);
};

/* The builtin spelled `name`, or NULL. */
const zoo_builtin *zoo_builtin_find(const char *name);
/* Every builtin name, for suggestions; returns the count. */
int zoo_builtin_names(const char ***out);
/* Calls a builtin. Returns the result or NULL after reporting. */
zoo_value *zoo_builtin_call(zoo_lowering *L, const zoo_builtin *b, const zoo_arg *args, int nargs,
                            zoo_span at);
/* Writes " name=value ..." for the attributes an op uses (graph dumps). */
void zoo_builtin_print_attrs(FILE *out, const zoo_graph *g, const zoo_node *n);

#endif
