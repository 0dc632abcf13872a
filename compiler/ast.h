/* ast.h: the syntax tree of a .zoo file.
 *
 * One node type for everything; `kind` says which fields mean what (table below).
 * Nodes are allocated from the zoo_arena of the parse and freed with it. Every node
 * keeps the span of its source text, which is what later errors point at.
 */
#ifndef ZOO_AST_H
#define ZOO_AST_H

#include <stdint.h>

#include "arena.h"
#include "diag.h"

typedef enum zoo_ast_kind {
  /* expressions */
  ZOO_AST_INT,    /* ival */
  ZOO_AST_FLOAT,  /* fval */
  ZOO_AST_STRING, /* str (unescaped) */
  ZOO_AST_BOOL,   /* ival: 0 or 1 */
  ZOO_AST_NONE,   /* the literal `none` */
  ZOO_AST_NAME,   /* str */
  ZOO_AST_LIST,   /* items: elements */
  ZOO_AST_UNARY,  /* op: '-', '!' (not); a: operand */
  ZOO_AST_BINARY, /* op: a zoo_binop; a, b: operands */
  ZOO_AST_COND,   /* a if b else c: a = then, b = condition, c = else */
  ZOO_AST_CALL,   /* a: callee; items: arguments (positional, then ZOO_AST_KWARG) */
  ZOO_AST_KWARG,  /* str: keyword; a: value (only inside a call's items) */
  ZOO_AST_INDEX,  /* a[b] */
  ZOO_AST_FIELD,  /* a.str */
  ZOO_AST_TYPE,   /* str: dtype name ("f32", "i32"); items: dims (expressions) */

  /* statements (inside forward and for/if blocks) */
  ZOO_AST_LET,    /* let str = a */
  ZOO_AST_RETURN, /* return a */
  ZOO_AST_FOR,    /* for str in a { items } */
  ZOO_AST_IF,     /* if a { items } else { b->items } ; b may be NULL; b is a BLOCK */
  ZOO_AST_BLOCK,  /* items: statements */

  /* declarations */
  ZOO_AST_PARAM,   /* str: name; a: type or NULL; b: default or NULL */
  ZOO_AST_MEMBER,  /* module field: str = a [if b] */
  ZOO_AST_MLET,    /* module-level let: let str = a */
  ZOO_AST_FORWARD, /* params: params; a: return type or NULL; b: BLOCK body */
  ZOO_AST_MODULE,  /* module str(params) { members }: params in `params`, members in items */
  ZOO_AST_MODEL,   /* model str(params) = a */
  ZOO_AST_IMPORT,  /* import str */
  ZOO_AST_FILE,    /* items: imports, modules and models in source order */
} zoo_ast_kind;

typedef enum zoo_binop {
  ZOO_BIN_ADD = 1, ZOO_BIN_SUB, ZOO_BIN_MUL, ZOO_BIN_DIV, /* / : true division */
  ZOO_BIN_IDIV,    /* // : floor division on integers */
  ZOO_BIN_MOD, ZOO_BIN_POW,                              /* % ** */
  ZOO_BIN_EQ, ZOO_BIN_NE, ZOO_BIN_LT, ZOO_BIN_LE, ZOO_BIN_GT, ZOO_BIN_GE,
  ZOO_BIN_AND, ZOO_BIN_OR,                               /* and or */
} zoo_binop;

typedef struct zoo_ast zoo_ast;
struct zoo_ast {
  zoo_ast_kind kind;
  zoo_span span;
  int op;        /* zoo_binop for BINARY; '-' or '!' for UNARY */
  int64_t ival;
  double fval;
  char *str;
  zoo_ast *a, *b, *c;
  zoo_ast **items;
  int nitems;
  zoo_ast **params; /* MODULE, MODEL, FORWARD: ZOO_AST_PARAM nodes */
  int nparams;
};

/* Parses one file. Returns the FILE node, or NULL when there were syntax errors
 * (each one reported through d with its location; the parser recovers at member
 * and statement boundaries to report several). Never crashes on any input bytes. */
zoo_ast *zoo_parse(zoo_arena *a, const zoo_source *src, zoo_diag *d);

/* Prints the tree, one node a line, indented, with spans (--dump=ast). */
void zoo_ast_dump(FILE *out, const zoo_ast *n);

const char *zoo_binop_spelling(int op);

#endif
