/* checkpoint.c: safetensors reading and writing (see checkpoint.h).
 *
 * The reader trusts nothing: the header length is checked against the file size,
 * the header is parsed by a small JSON parser (json_*) into a tree, every tensor
 * entry must be F32 with a shape whose byte size equals its offsets' span, and
 * the spans must lie inside the file without overlapping. Assumes a
 * little-endian host, as safetensors does.
 */
#include "checkpoint.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------------------------------------------------------- JSON */

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUM, JSON_STR, JSON_ARR, JSON_OBJ } json_kind;

typedef struct json json;
struct json {
  json_kind kind;
  double num;
  int64_t inum;  /* JSON_NUM when integral */
  int integral;
  char *str;     /* JSON_STR */
  int n;
  json **items;  /* JSON_ARR items, JSON_OBJ values */
  char **keys;   /* JSON_OBJ */
};

typedef struct json_parser {
  const char *p, *end;
  char err[160];
  int depth;
} json_parser;

static void json_free(json *j) {
  if (!j) return;
  for (int i = 0; i < j->n; i++) {
    json_free(j->items[i]);
    if (j->keys) free(j->keys[i]);
  }
  free(j->items);
  free(j->keys);
  free(j->str);
  free(j);
}

static void json_ws(json_parser *jp) {
  while (jp->p < jp->end && (*jp->p == ' ' || *jp->p == '\t' || *jp->p == '\n' || *jp->p == '\r'))
    jp->p++;
}

static json *json_fail(json_parser *jp, const char *what) {
  if (!jp->err[0]) snprintf(jp->err, sizeof jp->err, "%s", what);
  return NULL;
}

/* string := '"' chars '"' (escapes decoded; \u to UTF-8) */
static char *json_string(json_parser *jp) {
  if (jp->p >= jp->end || *jp->p != '"') return json_fail(jp, "expected a string"), NULL;
  jp->p++;
  size_t cap = 32, len = 0;
  char *s = malloc(cap);
  while (jp->p < jp->end && *jp->p != '"') {
    unsigned c = (unsigned char)*jp->p++;
    int unicode = 0; /* c came from \uXXXX: encode it as UTF-8 */
    if (c < 0x20) {
      free(s);
      return json_fail(jp, "control character in a string"), NULL;
    }
    if (c == '\\') {
      if (jp->p >= jp->end) break;
      char e = *jp->p++;
      switch (e) {
      case '"': case '\\': case '/': c = (unsigned)e; break;
      case 'b': c = '\b'; break;
      case 'f': c = '\f'; break;
      case 'n': c = '\n'; break;
      case 'r': c = '\r'; break;
      case 't': c = '\t'; break;
      case 'u': {
        if (jp->end - jp->p < 4) {
          free(s);
          return json_fail(jp, "bad \\u escape"), NULL;
        }
        char hex[5] = {jp->p[0], jp->p[1], jp->p[2], jp->p[3], 0};
        char *e2;
        c = (unsigned)strtoul(hex, &e2, 16);
        if (*e2) {
          free(s);
          return json_fail(jp, "bad \\u escape"), NULL;
        }
        jp->p += 4;
        unicode = 1;
        break;
      }
      default:
        free(s);
        return json_fail(jp, "bad escape in a string"), NULL;
      }
    }
    if (len + 4 >= cap) s = realloc(s, cap *= 2);
    if (!unicode || c < 0x80) {
      s[len++] = (char)c;
    } else if (c < 0x800) { /* from \u */
      s[len++] = (char)(0xc0 | (c >> 6));
      s[len++] = (char)(0x80 | (c & 0x3f));
    } else {
      s[len++] = (char)(0xe0 | (c >> 12));
      s[len++] = (char)(0x80 | ((c >> 6) & 0x3f));
      s[len++] = (char)(0x80 | (c & 0x3f));
    }
  }
  if (jp->p >= jp->end) {
    free(s);
    return json_fail(jp, "unterminated string"), NULL;
  }
  jp->p++;
  s[len] = 0;
  return s;
}

/* value := object | array | string | number | true | false | null */
static json *json_value(json_parser *jp) {
  json_ws(jp);
  if (jp->p >= jp->end) return json_fail(jp, "unexpected end of the header");
  if (++jp->depth > 32) return json_fail(jp, "nested too deeply");
  json *j = calloc(1, sizeof *j);
  char c = *jp->p;
  if (c == '{' || c == '[') {
    int obj = c == '{';
    j->kind = obj ? JSON_OBJ : JSON_ARR;
    jp->p++;
    json_ws(jp);
    if (jp->p < jp->end && *jp->p == (obj ? '}' : ']')) {
      jp->p++;
      jp->depth--;
      return j;
    }
    for (;;) {
      char *key = NULL;
      if (obj) {
        json_ws(jp);
        key = json_string(jp);
        json_ws(jp);
        if (!key || jp->p >= jp->end || *jp->p != ':') {
          free(key);
          json_free(j);
          return json_fail(jp, "expected \"key\": value");
        }
        jp->p++;
      }
      json *item = json_value(jp);
      if (!item) {
        free(key);
        json_free(j);
        return NULL;
      }
      j->items = realloc(j->items, (size_t)(j->n + 1) * sizeof *j->items);
      if (obj) j->keys = realloc(j->keys, (size_t)(j->n + 1) * sizeof *j->keys), j->keys[j->n] = key;
      j->items[j->n++] = item;
      json_ws(jp);
      if (jp->p < jp->end && *jp->p == ',') {
        jp->p++;
        continue;
      }
      if (jp->p < jp->end && *jp->p == (obj ? '}' : ']')) {
        jp->p++;
        break;
      }
      json_free(j);
      return json_fail(jp, obj ? "expected ',' or '}'" : "expected ',' or ']'");
    }
  } else if (c == '"') {
    j->kind = JSON_STR;
    if (!(j->str = json_string(jp))) {
      free(j);
      return NULL;
    }
  } else if (c == '-' || (c >= '0' && c <= '9')) {
    char buf[64];
    size_t len = 0;
    while (jp->p < jp->end && len + 1 < sizeof buf && strchr("+-.eE0123456789", *jp->p))
      buf[len++] = *jp->p++;
    buf[len] = 0;
    char *end;
    j->kind = JSON_NUM;
    j->num = strtod(buf, &end);
    if (*end) {
      free(j);
      return json_fail(jp, "bad number");
    }
    errno = 0;
    long long v = strtoll(buf, &end, 10);
    j->integral = !*end && !errno;
    j->inum = v;
  } else if (jp->end - jp->p >= 4 && !strncmp(jp->p, "true", 4)) {
    j->kind = JSON_BOOL, j->num = 1, jp->p += 4;
  } else if (jp->end - jp->p >= 5 && !strncmp(jp->p, "false", 5)) {
    j->kind = JSON_BOOL, jp->p += 5;
  } else if (jp->end - jp->p >= 4 && !strncmp(jp->p, "null", 4)) {
    j->kind = JSON_NULL, jp->p += 4;
  } else {
    free(j);
    return json_fail(jp, "unexpected character");
  }
  jp->depth--;
  return j;
}

static json *json_get(const json *o, const char *key) {
  if (!o || o->kind != JSON_OBJ) return NULL;
  for (int i = 0; i < o->n; i++)
    if (!strcmp(o->keys[i], key)) return o->items[i];
  return NULL;
}

/* ---------------------------------------------------------------- writing */

static void ckpt_json_string(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
    else if (c < 0x20) fprintf(f, "\\u%04x", c);
    else fputc(c, f);
  }
  fputc('"', f);
}

static int ckpt_err(char *err, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int ckpt_err(char *err, size_t n, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, n, fmt, ap);
  va_end(ap);
  return -1;
}

int zoo_ckpt_save(const char *path, const zoo_ckpt_tensor *t, int n, const zoo_ckpt_meta *meta,
                  int nmeta, char *err, size_t errlen) {
  char *header = NULL;
  size_t hlen = 0;
  FILE *h = open_memstream(&header, &hlen);
  fputs("{\"__metadata__\":{", h);
  for (int i = 0; i < nmeta; i++) {
    if (i) fputc(',', h);
    ckpt_json_string(h, meta[i].key);
    fputc(':', h);
    ckpt_json_string(h, meta[i].value);
  }
  fputc('}', h);
  int64_t offset = 0;
  for (int i = 0; i < n; i++) {
    fputc(',', h);
    ckpt_json_string(h, t[i].name);
    fputs(":{\"dtype\":\"F32\",\"shape\":[", h);
    for (int k = 0; k < t[i].ndim; k++) fprintf(h, "%s%lld", k ? "," : "", (long long)t[i].shape[k]);
    fprintf(h, "],\"data_offsets\":[%lld,%lld]}", (long long)offset,
            (long long)(offset + 4 * t[i].numel));
    offset += 4 * t[i].numel;
  }
  fputc('}', h);
  while ((ftell(h) % 8) != 0) fputc(' ', h);
  fclose(h);

  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) {
    free(header);
    return ckpt_err(err, errlen, "%s: cannot create: %s", tmp, strerror(errno));
  }
  FILE *f = fdopen(fd, "wb");
  uint64_t len = hlen;
  unsigned char le[8];
  for (int k = 0; k < 8; k++) le[k] = (unsigned char)(len >> (8 * k));
  int ok = fwrite(le, 1, 8, f) == 8 && fwrite(header, 1, hlen, f) == hlen;
  for (int i = 0; ok && i < n; i++)
    ok = fwrite(t[i].data, sizeof(float), (size_t)t[i].numel, f) == (size_t)t[i].numel;
  free(header);
  ok = ok && fflush(f) == 0 && fsync(fd) == 0;
  int saved = errno;
  ok = (fclose(f) == 0) && ok;
  if (!ok) {
    unlink(tmp);
    return ckpt_err(err, errlen, "%s: cannot write: %s", tmp, strerror(saved ? saved : errno));
  }
  if (rename(tmp, path)) {
    saved = errno;
    unlink(tmp);
    return ckpt_err(err, errlen, "cannot rename %s to %s: %s", tmp, path, strerror(saved));
  }
  /* make the rename itself durable */
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  if (slash) *slash = 0;
  else snprintf(dir, sizeof dir, ".");
  int dfd = open(dir, O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  return 0;
}

/* ---------------------------------------------------------------- reading */

void zoo_ckpt_free(zoo_ckpt *c) {
  for (int i = 0; i < c->ntensors; i++) {
    free(c->tensors[i].data);
    free((char *)c->tensors[i].name);
  }
  for (int i = 0; i < c->nmeta; i++) {
    free((char *)c->meta[i].key);
    free((char *)c->meta[i].value);
  }
  free(c->tensors);
  free(c->meta);
  free(c->strings);
  memset(c, 0, sizeof *c);
}

typedef struct ckpt_span {
  int64_t a, b;
  int tensor;
} ckpt_span;

static int ckpt_by_start(const void *x, const void *y) {
  const ckpt_span *a = x, *b = y;
  return a->a < b->a ? -1 : a->a > b->a;
}

int zoo_ckpt_load(const char *path, zoo_ckpt *c, char *err, size_t errlen) {
  memset(c, 0, sizeof *c);
  FILE *f = fopen(path, "rb");
  if (!f) return ckpt_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fileno(f), &st)) {
    fclose(f);
    return ckpt_err(err, errlen, "%s: cannot stat: %s", path, strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) {
    fclose(f);
    return ckpt_err(err, errlen, "%s: %s, not a checkpoint file", path,
                    S_ISDIR(st.st_mode) ? "is a directory" : "is not a regular file");
  }
  int64_t size = st.st_size;
  unsigned char le[8];
  if (size < 8 || fread(le, 1, 8, f) != 8) {
    fclose(f);
    return ckpt_err(err, errlen, "%s: truncated: %lld bytes, too short for the header length",
                    path, (long long)size);
  }
  uint64_t hlen = 0;
  for (int k = 0; k < 8; k++) hlen |= (uint64_t)le[k] << (8 * k);
  if (hlen > (uint64_t)(size - 8)) {
    fclose(f);
    return ckpt_err(err, errlen,
                    "%s: truncated or not a safetensors file: the header claims %llu bytes but "
                    "the file has %lld after the length",
                    path, (unsigned long long)hlen, (long long)(size - 8));
  }
  if (hlen > 100u << 20) {
    fclose(f);
    return ckpt_err(err, errlen, "%s: header length %llu is implausible", path,
                    (unsigned long long)hlen);
  }
  char *header = malloc(hlen + 1);
  if (fread(header, 1, hlen, f) != hlen) {
    free(header);
    fclose(f);
    return ckpt_err(err, errlen, "%s: cannot read the header", path);
  }
  header[hlen] = 0;
  json_parser jp = {header, header + hlen, "", 0};
  json *root = json_value(&jp);
  if (root) {
    json_ws(&jp);
    if (jp.p != jp.end) {
      json_free(root);
      root = NULL;
      json_fail(&jp, "text after the header's object");
    }
  }
  if (!root || root->kind != JSON_OBJ) {
    int at = (int)(jp.p - header);
    json_free(root);
    free(header);
    fclose(f);
    return ckpt_err(err, errlen, "%s: corrupt header: %s at byte %d of the JSON", path,
                    root ? "not an object" : jp.err, 8 + at);
  }
  free(header);

  int64_t data_size = size - 8 - (int64_t)hlen;
  c->tensors = calloc((size_t)root->n + 1, sizeof *c->tensors);
  ckpt_span *spans = calloc((size_t)root->n + 1, sizeof *spans);
  int rc = 0;
  for (int i = 0; i < root->n && !rc; i++) {
    const char *name = root->keys[i];
    json *e = root->items[i];
    for (int k = 0; k < i && !rc; k++) /* JSON allows it; a checkpoint does not */
      if (!strcmp(root->keys[k], name))
        rc = ckpt_err(err, errlen, "%s: corrupt header: %s%s%s appears twice", path,
                      strcmp(name, "__metadata__") ? "tensor '" : "", name,
                      strcmp(name, "__metadata__") ? "'" : "");
    if (rc) break;
    if (!strcmp(name, "__metadata__")) {
      if (e->kind != JSON_OBJ) {
        rc = ckpt_err(err, errlen, "%s: corrupt header: __metadata__ is not an object", path);
        break;
      }
      c->meta = calloc((size_t)e->n + 1, sizeof *c->meta);
      for (int k = 0; k < e->n && !rc; k++) {
        for (int j = 0; j < k && !rc; j++)
          if (!strcmp(e->keys[j], e->keys[k]))
            rc = ckpt_err(err, errlen, "%s: corrupt header: metadata '%s' appears twice", path,
                          e->keys[k]);
        if (rc) break;
        if (e->items[k]->kind != JSON_STR) {
          rc = ckpt_err(err, errlen, "%s: corrupt header: metadata '%s' is not a string", path,
                        e->keys[k]);
          break;
        }
        c->meta[c->nmeta++] = (zoo_ckpt_meta){strdup(e->keys[k]), strdup(e->items[k]->str)};
      }
      continue;
    }
    json *dtype = json_get(e, "dtype"), *shape = json_get(e, "shape");
    json *offs = json_get(e, "data_offsets");
    if (!dtype || dtype->kind != JSON_STR || !shape || shape->kind != JSON_ARR || !offs ||
        offs->kind != JSON_ARR || offs->n != 2) {
      rc = ckpt_err(err, errlen,
                    "%s: corrupt header: tensor '%s' lacks dtype, shape or data_offsets", path,
                    name);
      break;
    }
    if (strcmp(dtype->str, "F32")) {
      rc = ckpt_err(err, errlen, "%s: tensor '%s' has dtype %s; zoo reads F32 only", path, name,
                    dtype->str);
      break;
    }
    zoo_ckpt_tensor *t = &c->tensors[c->ntensors];
    if (shape->n > ZOO_MAX_DIMS) {
      rc = ckpt_err(err, errlen, "%s: tensor '%s' has %d dimensions (at most %d)", path, name,
                    shape->n, ZOO_MAX_DIMS);
      break;
    }
    t->ndim = shape->n;
    t->numel = 1;
    for (int k = 0; k < shape->n; k++) {
      json *d = shape->items[k];
      if (d->kind != JSON_NUM || !d->integral || d->inum < 0 || d->inum > (1LL << 40)) {
        rc = ckpt_err(err, errlen, "%s: corrupt header: tensor '%s' has a bad shape", path, name);
        break;
      }
      t->shape[k] = d->inum;
      if (d->inum && t->numel > (1LL << 40) / d->inum) { /* checked before it can overflow */
        rc = ckpt_err(err, errlen,
                      "%s: corrupt header: tensor '%s' has a shape too large (more than 2^40 "
                      "elements)",
                      path, name);
        break;
      }
      t->numel *= d->inum;
    }
    if (rc) break;
    json *a = offs->items[0], *b = offs->items[1];
    if (a->kind != JSON_NUM || b->kind != JSON_NUM || !a->integral || !b->integral ||
        a->inum < 0 || b->inum < a->inum) {
      rc = ckpt_err(err, errlen, "%s: corrupt header: tensor '%s' has bad data_offsets", path,
                    name);
      break;
    }
    if (b->inum - a->inum != 4 * t->numel) {
      rc = ckpt_err(err, errlen,
                    "%s: corrupt header: tensor '%s' spans %lld bytes but its shape needs %lld",
                    path, name, (long long)(b->inum - a->inum), (long long)(4 * t->numel));
      break;
    }
    if (b->inum > data_size) {
      rc = ckpt_err(err, errlen,
                    "%s: truncated: tensor '%s' ends at byte %lld of the data but the file "
                    "holds %lld",
                    path, name, (long long)b->inum, (long long)data_size);
      break;
    }
    t->name = strdup(name);
    spans[c->ntensors] = (ckpt_span){a->inum, b->inum, c->ntensors};
    c->ntensors++;
  }
  json_free(root);
  if (!rc) { /* no two tensors share bytes */
    qsort(spans, (size_t)c->ntensors, sizeof *spans, ckpt_by_start);
    for (int i = 1; i < c->ntensors && !rc; i++)
      if (spans[i].a < spans[i - 1].b)
        rc = ckpt_err(err, errlen, "%s: corrupt header: tensors '%s' and '%s' overlap", path,
                      c->tensors[spans[i - 1].tensor].name, c->tensors[spans[i].tensor].name);
  }
  for (int i = 0; i < c->ntensors && !rc; i++) {
    zoo_ckpt_tensor *t = &c->tensors[spans[i].tensor];
    t->data = malloc((size_t)(t->numel ? t->numel : 1) * sizeof(float));
    if (fseeko(f, 8 + (off_t)hlen + spans[i].a, SEEK_SET) ||
        fread(t->data, sizeof(float), (size_t)t->numel, f) != (size_t)t->numel)
      rc = ckpt_err(err, errlen, "%s: cannot read tensor '%s'", path, t->name);
  }
  free(spans);
  fclose(f);
  if (rc) zoo_ckpt_free(c);
  return rc;
}

const zoo_ckpt_tensor *zoo_ckpt_find(const zoo_ckpt *c, const char *name) {
  for (int i = 0; i < c->ntensors; i++)
    if (!strcmp(c->tensors[i].name, name)) return &c->tensors[i];
  return NULL;
}

const char *zoo_ckpt_meta_get(const zoo_ckpt *c, const char *key) {
  for (int i = 0; i < c->nmeta; i++)
    if (!strcmp(c->meta[i].key, key)) return c->meta[i].value;
  return NULL;
}

/* ---------------------------------------------------------------- models */

/* A parameter's shape as a checkpoint tensor (parameters have constant dims). */
static zoo_ckpt_tensor ckpt_param(const zoo_graph *g, int tensor, const char *name, float *data) {
  const zoo_type *ty = &g->tensors[tensor].type;
  zoo_ckpt_tensor t = {.name = name, .ndim = ty->ndim, .numel = 1, .data = data};
  for (int k = 0; k < ty->ndim; k++) {
    t.shape[k] = ty->dim[k].coef;
    t.numel *= ty->dim[k].coef;
  }
  return t;
}

static int ckpt_param_index(const zoo_graph *g, int tensor) {
  for (int i = 0; i < g->nparams; i++)
    if (g->params[i] == tensor) return i;
  return -1;
}

int zoo_ckpt_save_model(const char *path, const zoo_graph *g, const zoo_alias *aliases,
                        int naliases, const zoo_ckpt_state *s, const zoo_ckpt_meta *meta,
                        int nmeta, char *err, size_t errlen) {
  int with_optim = s->m && s->v;
  int cap = g->nparams * (with_optim ? 3 : 1) + naliases;
  zoo_ckpt_tensor *t = calloc((size_t)cap + 1, sizeof *t);
  char **names = calloc((size_t)cap + 1, sizeof *names);
  int n = 0;
  for (int i = 0; i < g->nparams; i++)
    t[n++] = ckpt_param(g, g->params[i], g->tensors[g->params[i]].name, s->params[i]);
  for (int a = 0; a < naliases; a++) {
    int i = ckpt_param_index(g, aliases[a].tensor);
    if (i < 0) continue;
    t[n++] = ckpt_param(g, g->params[i], aliases[a].name, s->params[i]);
  }
  for (int i = 0; with_optim && i < g->nparams; i++) {
    const char *name = g->tensors[g->params[i]].name;
    names[n] = malloc(strlen(name) + 16);
    sprintf(names[n], "optim.m.%s", name);
    t[n] = ckpt_param(g, g->params[i], names[n], s->m[i]);
    n++;
    names[n] = malloc(strlen(name) + 16);
    sprintf(names[n], "optim.v.%s", name);
    t[n] = ckpt_param(g, g->params[i], names[n], s->v[i]);
    n++;
  }
  int rc = zoo_ckpt_save(path, t, n, meta, nmeta, err, errlen);
  for (int i = 0; i < n; i++) free(names[i]);
  free(names);
  free(t);
  return rc;
}

/* Copies tensor `name` of the file into dst after checking its shape. */
static int ckpt_take(const zoo_ckpt *c, const char *path, const zoo_graph *g, int tensor,
                     const char *name, float *dst, char *err, size_t errlen) {
  const zoo_ckpt_tensor *t = zoo_ckpt_find(c, name);
  if (!t) return ckpt_err(err, errlen, "%s: has no tensor '%s' that the model needs", path, name);
  zoo_ckpt_tensor want = ckpt_param(g, tensor, name, NULL);
  int same = t->ndim == want.ndim;
  for (int k = 0; same && k < want.ndim; k++) same = t->shape[k] == want.shape[k];
  if (!same) {
    char a[96] = "", b[96] = "";
    for (int k = 0; k < t->ndim; k++)
      snprintf(a + strlen(a), sizeof a - strlen(a), "%s%lld", k ? ", " : "", (long long)t->shape[k]);
    for (int k = 0; k < want.ndim; k++)
      snprintf(b + strlen(b), sizeof b - strlen(b), "%s%lld", k ? ", " : "",
               (long long)want.shape[k]);
    return ckpt_err(err, errlen, "%s: tensor '%s' has shape [%s] but the model's is [%s]", path,
                    name, a, b);
  }
  memcpy(dst, t->data, (size_t)t->numel * sizeof(float));
  return 0;
}

int zoo_ckpt_restore_model(const zoo_ckpt *c, const char *path, const zoo_graph *g,
                           const zoo_alias *aliases, int naliases, const zoo_ckpt_state *s,
                           char *err, size_t errlen) {
  char name[1024];
  for (int i = 0; i < g->nparams; i++) {
    int tid = g->params[i];
    const char *pname = g->tensors[tid].name;
    if (ckpt_take(c, path, g, tid, pname, s->params[i], err, errlen)) return -1;
    if (s->m && s->v) {
      snprintf(name, sizeof name, "optim.m.%s", pname);
      if (ckpt_take(c, path, g, tid, name, s->m[i], err, errlen)) return -1;
      snprintf(name, sizeof name, "optim.v.%s", pname);
      if (ckpt_take(c, path, g, tid, name, s->v[i], err, errlen)) return -1;
    }
  }
  /* every tensor of the file must be the model's: a parameter, an alias or its state */
  for (int k = 0; k < c->ntensors; k++) {
    const char *tn = c->tensors[k].name;
    const char *base = !strncmp(tn, "optim.m.", 8) || !strncmp(tn, "optim.v.", 8) ? tn + 8 : tn;
    int known = 0;
    for (int i = 0; i < g->nparams && !known; i++) known = !strcmp(g->tensors[g->params[i]].name, base);
    for (int a = 0; a < naliases && !known; a++) known = base == tn && !strcmp(aliases[a].name, tn);
    if (!known)
      return ckpt_err(err, errlen, "%s: tensor '%s' is not a parameter of this model", path, tn);
  }
  return 0;
}
