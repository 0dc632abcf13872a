/* parse.h: what the scanner (grammar/zoo.l), the parser (grammar/zoo.y), the
 * node constructors (ast.c) and the driver (parse.c) share. Private to the front
 * end: other passes include ast.h.
 *
 * All parse state lives in one zoo_parser, handed to the reentrant scanner as
 * its "extra" and to the pure parser as a parameter; there are no globals.
 */
#ifndef ZOO_PARSE_H
#define ZOO_PARSE_H

#include <stddef.h>

#include "ast.h"

/* Brackets ( [ { open at once, at most; one more is "nested too deeply". This
 * also bounds the depth of the tree that later passes walk recursively. */
#define ZOO_PARSE_MAX_DEPTH 256

typedef struct zoo_parse_open {
  char ch;     /* '(', '[' or '{' */
  zoo_span at; /* where it was opened */
} zoo_parse_open;

typedef struct zoo_parser {
  zoo_arena *arena;
  zoo_diag *d;
  const zoo_source *src;

  /* scanner position: the next byte to read, as offset, line and column */
  size_t pos;
  int line, col;
  /* the token last returned (what "unexpected ..." shows), and the one before */
  size_t tok_pos, tok_len, prev_pos, prev_len;
  zoo_span prev_at;
  int tok_end_line, tok_end_col; /* end of the last token that was not blank */

  /* brackets open now, innermost last; nopen_before: as it was before the
   * last token, so an error can point at the bracket the token failed to close */
  zoo_parse_open open[ZOO_PARSE_MAX_DEPTH];
  int nopen, nopen_before;

  /* the module whose body is being parsed, for "unterminated module body?" */
  const char *module_name;
  zoo_span module_at;

  /* after `model` (`module`, `import`) inside a module body: the scanner first
   * returns resync_braces '}'s, then this token again (see zoo.y) */
  int resync_braces, resync_token;
  zoo_span resync_at;

  int nerrors;        /* errors this parse reported */
  int last_reported;  /* the last error was printed (so its notes may be) */
  int stop;           /* the error cap was reached: the scanner returns end of file */
  zoo_ast *file;      /* the result */
} zoo_parser;

/* A growing array of nodes, used while a list is being parsed. */
typedef struct zoo_ast_list {
  zoo_ast **items;
  int n, cap;
} zoo_ast_list;

/* Syntax errors and notes of this parse; they respect the diag's error cap. */
void zoo_parse_error(zoo_parser *p, zoo_span at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void zoo_parse_note(zoo_parser *p, zoo_span at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Node constructors (ast.c): zeroed nodes in the arena. */
zoo_ast *zoo_ast_new(zoo_arena *a, zoo_ast_kind kind, zoo_span span);
zoo_ast *zoo_ast_binary(zoo_arena *a, int op, zoo_ast *l, zoo_ast *r);
zoo_ast *zoo_ast_unary(zoo_arena *a, int op, zoo_span opspan, zoo_ast *x);
zoo_ast_list *zoo_ast_list_new(zoo_arena *a);
void zoo_ast_list_push(zoo_arena *a, zoo_ast_list *l, zoo_ast *n);
/* Points n->items (n->params) at a list's nodes; a NULL list means none. */
void zoo_ast_set_items(zoo_ast *n, const zoo_ast_list *l);
void zoo_ast_set_params(zoo_ast *n, const zoo_ast_list *l);

#endif
