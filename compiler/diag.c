/* diag.c: printing located diagnostics and reading sources. */
#include "diag.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

const zoo_span zoo_nospan = {0};

void zoo_diag_init(zoo_diag *d, FILE *out) {
  d->out = out ? out : stderr;
  d->nerrors = 0;
  d->nwarnings = 0;
  d->max_errors = 20;
}

/* Prints the source line of `at` and a caret line under its columns. Tabs in the
 * line are echoed in the caret line so the caret stays aligned. */
static void show_line(FILE *out, zoo_span at) {
  const char *p = at.src->text;
  const char *end = p + at.src->len;
  for (int line = 1; line < at.line && p < end; p++)
    if (*p == '\n') line++;
  if (p >= end && at.line > 1 && at.col > 1) return;
  const char *eol = p;
  while (eol < end && *eol != '\n') eol++;
  fputs("    ", out);
  for (const char *q = p; q < eol; q++) {
    unsigned char ch = (unsigned char)*q;
    fputc(ch == '\t' || (ch >= 32 && ch < 127) || ch >= 128 ? ch : '?', out);
  }
  fputs("\n    ", out);
  int width = (int)(eol - p);
  int col = at.col < 1 ? 1 : at.col;
  for (int c = 1; c < col && c <= width; c++) fputc(p[c - 1] == '\t' ? '\t' : ' ', out);
  fputc('^', out);
  int last = at.end_line == at.line ? at.end_col - 1 : width;
  if (last > width) last = width;
  for (int c = col + 1; c <= last; c++) fputc('~', out);
  fputc('\n', out);
}

static void report(zoo_diag *d, const char *kind, zoo_span at, const char *fmt, va_list ap) {
  FILE *out = d->out ? d->out : stderr;
  if (at.src) fprintf(out, "%s:%d:%d: %s: ", at.src->path, at.line, at.col, kind);
  else fprintf(out, "zoo: %s: ", kind);
  vfprintf(out, fmt, ap);
  fputc('\n', out);
  if (at.src && at.line > 0) show_line(out, at);
}

void zoo_verror(zoo_diag *d, zoo_span at, const char *fmt, va_list ap) {
  d->nerrors++;
  int cap = d->max_errors > 0 ? d->max_errors : 20;
  if (d->nerrors > cap) return;
  report(d, "error", at, fmt, ap);
  if (d->nerrors == cap) fprintf(d->out ? d->out : stderr, "zoo: too many errors; stopping\n");
}

void zoo_error(zoo_diag *d, zoo_span at, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  zoo_verror(d, at, fmt, ap);
  va_end(ap);
}

void zoo_warning(zoo_diag *d, zoo_span at, const char *fmt, ...) {
  d->nwarnings++;
  va_list ap;
  va_start(ap, fmt);
  report(d, "warning", at, fmt, ap);
  va_end(ap);
}

void zoo_note(zoo_diag *d, zoo_span at, const char *fmt, ...) {
  int cap = d->max_errors > 0 ? d->max_errors : 20;
  if (d->nerrors > cap) return;
  va_list ap;
  va_start(ap, fmt);
  report(d, "note", at, fmt, ap);
  va_end(ap);
}

zoo_source *zoo_source_from_string(const char *path, const char *text) {
  zoo_source *s = calloc(1, sizeof *s);
  s->path = strdup(path);
  s->len = strlen(text);
  s->text = malloc(s->len + 1);
  memcpy(s->text, text, s->len + 1);
  return s;
}

zoo_source *zoo_source_read(const char *path, zoo_diag *d, zoo_span from) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    zoo_error(d, from, "cannot open '%s': %s", path, strerror(errno));
    return NULL;
  }
  size_t cap = 1 << 16, len = 0;
  char *buf = malloc(cap);
  for (;;) {
    if (len + 1 >= cap) {
      cap *= 2;
      buf = realloc(buf, cap);
    }
    size_t got = fread(buf + len, 1, cap - 1 - len, f);
    len += got;
    if (got == 0) break;
  }
  int failed = ferror(f);
  fclose(f);
  if (failed) {
    free(buf);
    zoo_error(d, from, "cannot read '%s'", path);
    return NULL;
  }
  buf[len] = 0;
  zoo_source *s = calloc(1, sizeof *s);
  s->path = strdup(path);
  s->text = buf;
  s->len = len;
  return s;
}

void zoo_source_free(zoo_source *s) {
  if (!s) return;
  free(s->path);
  free(s->text);
  free(s);
}

zoo_span zoo_span_join(zoo_span a, zoo_span b) {
  if (!a.src) return b;
  if (!b.src || a.src != b.src) return a;
  zoo_span r = a;
  if (b.end_line > r.end_line || (b.end_line == r.end_line && b.end_col > r.end_col)) {
    r.end_line = b.end_line;
    r.end_col = b.end_col;
  }
  return r;
}
