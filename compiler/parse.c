/* parse.c: the parse pass, text -> AST. Runs the flex scanner (grammar/zoo.l)
 * and the bison parser (grammar/zoo.y) over one source; both keep their state
 * in a zoo_parser on this function's stack. */
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>

#include "parse.h"
#include "zoo.tab.h"
/* the scanner's header spells the parser's types the plain way */
#define YYSTYPE ZOO_YYSTYPE
#define YYLTYPE ZOO_YYLTYPE
#include "zoo.lex.h"

/* Reports an error unless the diag's cap was reached; at the cap, the scanner
 * ends the input so the parse stops. */
void zoo_parse_error(zoo_parser *p, zoo_span at, const char *fmt, ...) {
  int cap = p->d->max_errors > 0 ? p->d->max_errors : 20;
  p->nerrors++;
  p->last_reported = 0;
  if (p->stop) return;
  if (p->d->nerrors >= cap) {
    p->stop = 1;
    return;
  }
  va_list ap;
  va_start(ap, fmt);
  zoo_verror(p->d, at, fmt, ap);
  va_end(ap);
  p->last_reported = 1;
  if (p->d->nerrors >= cap) p->stop = 1;
}

/* A note for the error just reported (dropped with it past the cap). */
void zoo_parse_note(zoo_parser *p, zoo_span at, const char *fmt, ...) {
  if (!p->last_reported) return;
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  zoo_note(p->d, at, "%s", buf);
}

zoo_ast *zoo_parse(zoo_arena *a, const zoo_source *src, zoo_diag *d) {
  zoo_parser p = {.arena = a, .d = d, .src = src, .line = 1, .col = 1};
  if (src->len > INT_MAX / 2) { /* flex counts bytes in int */
    zoo_error(d, (zoo_span){src, 1, 1, 1, 1}, "file too large (%zu bytes)", src->len);
    return NULL;
  }
  yyscan_t scanner;
  if (zoo_yylex_init_extra(&p, &scanner) != 0) {
    zoo_error(d, (zoo_span){src, 1, 1, 1, 1}, "out of memory starting the scanner");
    return NULL;
  }
  /* scans a copy, so the text may hold NUL bytes and need not end in two NULs */
  YY_BUFFER_STATE buf = zoo_yy_scan_bytes(src->text, (int)src->len, scanner);
  int rc = zoo_yyparse(scanner, &p);
  zoo_yy_delete_buffer(buf, scanner);
  zoo_yylex_destroy(scanner);
  if (rc != 0 || p.nerrors > 0) return NULL;
  return p.file;
}
