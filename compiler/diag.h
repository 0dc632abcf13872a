/* diag.h: source files, spans and located diagnostics.
 *
 * Every token, AST node and graph node carries a zoo_span. A diagnostic prints
 *
 *     models/bad.zoo:3:14: error: unknown name 'd_modle'
 *         let h = d_modle / 2
 *                 ^~~~~~~
 *
 * and counts itself in the zoo_diag, so a pass can report several errors and the
 * driver can refuse to go on once any were reported.
 */
#ifndef ZOO_DIAG_H
#define ZOO_DIAG_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

typedef struct zoo_source {
  char *path;  /* as given (relative paths stay relative, for stable messages) */
  char *text;  /* NUL-terminated contents */
  size_t len;  /* bytes, not counting the NUL */
} zoo_source;

/* A half-open range of one source: lines and columns are 1-based; columns count
 * bytes. A span with src == NULL means "no location" (built-in or C-made). */
typedef struct zoo_span {
  const zoo_source *src;
  int line, col;         /* first character */
  int end_line, end_col; /* one past the last character */
} zoo_span;

typedef struct zoo_diag {
  FILE *out;      /* where messages go (stderr, or a memstream in tests) */
  int nerrors;
  int nwarnings;
  int max_errors; /* stop reporting after this many (0: 20) */
} zoo_diag;

void zoo_diag_init(zoo_diag *d, FILE *out);

/* file:line:col: error: message, then the source line and a caret under the span. */
void zoo_error(zoo_diag *d, zoo_span at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void zoo_verror(zoo_diag *d, zoo_span at, const char *fmt, va_list ap);
void zoo_warning(zoo_diag *d, zoo_span at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* A note adds context to the error before it ("note: module defined here"). */
void zoo_note(zoo_diag *d, zoo_span at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Sources live until zoo_source_free. Returns NULL and reports on failure. */
zoo_source *zoo_source_read(const char *path, zoo_diag *d, zoo_span from);
zoo_source *zoo_source_from_string(const char *path, const char *text);
void zoo_source_free(zoo_source *s);

zoo_span zoo_span_join(zoo_span a, zoo_span b);
extern const zoo_span zoo_nospan;

#endif
