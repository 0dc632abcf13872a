/* compile.h: the compiler driver, from a .zoo path to a shape-checked graph.
 *
 *   parse (grammar/, compiler/parse.c)  -> AST
 *   resolve (compiler/resolve.c)        -> imports loaded, names bound
 *   lower (compiler/lower.c)            -> modules instantiated, forward traced into
 *                                          a zoo_graph, shapes checked op by op
 *
 * zooc and zoorun both call zoo_compile; zoorun then adds the training graph
 * (zoo_train_graph) and hands it to a backend.
 */
#ifndef ZOO_COMPILE_H
#define ZOO_COMPILE_H

#include "arena.h"
#include "ast.h"
#include "diag.h"
#include "graph.h"

/* -D name=value: value is parsed as a .zoo literal (int, float, bool, string,
 * list). Names a parameter of the model declaration. */
typedef struct zoo_define {
  const char *name;
  const char *value;
} zoo_define;

/* Where a config wrote a define (zoorun's model.params): its key and its value.
 * Errors about the define point there; without it (zooc's -D) they point at a
 * "-D name=value" of a "<command line>" source. */
typedef struct zoo_define_at {
  zoo_span name;
  zoo_span value;
} zoo_define_at;

typedef struct zoo_compile_opts {
  const char *path;       /* the .zoo file */
  const char *model;      /* which `model` declaration; NULL: the last one in the file */
  const zoo_define *defines;
  int ndefines;
  const zoo_define_at *define_at; /* NULL, or ndefines of them (src NULL: as -D) */
  const char *std_dir;    /* where `import "std/..."` looks besides the importing
                             file's folder; NULL: models/ found next to the binary
                             or in the working directory */
  int stop_after_parse;   /* for --dump=ast */
} zoo_compile_opts;

/* A parameter name that refers to another parameter's tensor (weight tying):
 * the reference's state_dict has both names. */
typedef struct zoo_alias {
  const char *name;
  int tensor;
} zoo_alias;

/* A model parameter's final value, for the summary ("d_model = 128"). */
typedef struct zoo_binding_print {
  const char *name;
  const char *value;
} zoo_binding_print;

typedef struct zoo_program {
  zoo_arena arena;          /* AST, strings, everything of this compilation */
  zoo_source **sources;     /* every file read (spans point into them) */
  int nsources;
  zoo_ast *file;            /* the main file's AST */
  zoo_graph graph;          /* inputs: "tokens" i32[B, T]; output: logits */
  const char *model_name;
  zoo_binding_print *bindings;
  int nbindings;
  zoo_alias *aliases;
  int naliases;
} zoo_program;

/* Returns 0 and *out, or -1 after reporting every error through d (nothing is
 * lowered once any error was reported). */
int zoo_compile(const zoo_compile_opts *o, zoo_diag *d, zoo_program **out);
void zoo_program_free(zoo_program *p);

/* zooc --summary: model bindings, every parameter (name, shape, count), the
 * total, and the op counts of the graph. */
void zoo_program_summary(FILE *out, const zoo_program *p);

#endif
