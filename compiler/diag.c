/* diag.c: printing located diagnostics and reading sources. */
#include "diag.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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
  /* What the program printed before the error (zooc's summary) comes out
   * before it, also when stdout is a pipe and buffered. */
  if (out == stderr) fflush(stdout);
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
  if (!s) abort(); /* out of memory */
  s->path = strdup(path);
  s->len = strlen(text);
  s->text = malloc(s->len + 1);
  if (!s->path || !s->text) abort(); /* out of memory */
  memcpy(s->text, text, s->len + 1);
  return s;
}

/* The most bytes a source may have. Spans count lines and columns in ints, and
 * no model or config comes near this; a stream without end (/dev/zero) stops
 * here instead of filling the memory. */
#define ZOO_SOURCE_MAX ((size_t)64 << 20)

zoo_source *zoo_source_read(const char *path, zoo_diag *d, zoo_span from) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    zoo_error(d, from, "cannot open '%s': %s", path, strerror(errno));
    return NULL;
  }
  /* A directory opens for reading but has no bytes to read. Pipes and devices
   * (/dev/stdin, <(...)) are read like files, up to the limit. */
  struct stat st;
  int known = fstat(fileno(f), &st) == 0;
  if (known && S_ISDIR(st.st_mode)) {
    fclose(f);
    zoo_error(d, from, "cannot read '%s': it is a directory", path);
    return NULL;
  }
  int too_large = known && S_ISREG(st.st_mode) && (uint64_t)st.st_size > ZOO_SOURCE_MAX;
  /* Read in doubling chunks, never more than the limit and a byte (which says
   * the source is over it). */
  size_t cap = 1 << 16, len = 0;
  char *buf = too_large ? NULL : malloc(cap);
  int no_memory = !too_large && !buf;
  while (buf) {
    if (len + 1 == cap) {
      size_t want = cap * 2 < ZOO_SOURCE_MAX + 2 ? cap * 2 : ZOO_SOURCE_MAX + 2;
      char *grown = realloc(buf, want);
      if (!grown) {
        no_memory = 1;
        break;
      }
      buf = grown;
      cap = want;
    }
    size_t got = fread(buf + len, 1, cap - 1 - len, f);
    len += got;
    if (len > ZOO_SOURCE_MAX) too_large = 1;
    if (got == 0 || too_large) break;
  }
  int failed = !too_large && !no_memory && ferror(f);
  int err = errno;
  fclose(f);
  if (too_large || no_memory || failed) {
    free(buf);
    if (too_large)
      zoo_error(d, from, "cannot read '%s': it is larger than %zu MiB, the most a source may have",
                path, ZOO_SOURCE_MAX >> 20);
    else if (no_memory) zoo_error(d, from, "cannot read '%s': out of memory", path);
    else zoo_error(d, from, "cannot read '%s': %s", path, strerror(err));
    return NULL;
  }
  buf[len] = 0;
  zoo_source *s = calloc(1, sizeof *s);
  if (!s || !(s->path = strdup(path))) {
    free(s);
    free(buf);
    zoo_error(d, from, "cannot read '%s': out of memory", path);
    return NULL;
  }
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
