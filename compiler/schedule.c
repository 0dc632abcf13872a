/* schedule.c: two streams for one list of steps (see schedule.h). */
#include "schedule.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

static void *xcalloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size);
  if (!p) abort(); /* out of memory */
  return p;
}

static int is_ident(int ch) { return isalnum(ch) || ch == '_'; }

/* Parses the parameter list (open, close) into sig: pointers, and those not
 * to const. A parameter is a pointer when it has a '*'; it points to const
 * when "const" comes before its first '*'. */
static void parse_params(const char *open, const char *close, zoo_kernel_sig *sig) {
  sig->nparams = 0, sig->pointers = sig->writes = 0;
  const char *p = open + 1;
  while (p < close && isspace((unsigned char)*p)) p++;
  if (p == close) return; /* no parameters */
  while (p <= close) {
    const char *end = p;
    int depth = 0;
    while (end < close && !(depth == 0 && *end == ',')) {
      if (*end == '(' || *end == '<') depth++;
      if (*end == ')' || *end == '>') depth--;
      end++;
    }
    const char *star = memchr(p, '*', (size_t)(end - p));
    int is_const = 0;
    for (const char *q = p; q + 5 <= (star ? star : end); q++)
      if (strncmp(q, "const", 5) == 0 && (q == p || !is_ident(q[-1])) && !is_ident(q[5])) is_const = 1;
    if (sig->nparams < 32 && star) {
      sig->pointers |= 1u << sig->nparams;
      if (!is_const) sig->writes |= 1u << sig->nparams;
    }
    sig->nparams++;
    p = end + 1;
  }
}

zoo_kernel_sig *zoo_kernel_sigs(const char *src, int *n) {
  zoo_kernel_sig *sigs = NULL;
  int cap = 0;
  *n = 0;
  for (const char *k = src; (k = strstr(k, "__global__")) != NULL; k += 10) {
    /* the body's brace; the parameter list is the last parenthesis before it */
    const char *brace = strchr(k, '{'), *semi = strchr(k, ';');
    if (!brace || (semi && semi < brace)) continue; /* a declaration, or a mention in text */
    const char *close = brace - 1;
    while (close > k && isspace((unsigned char)*close)) close--;
    if (*close != ')') continue;
    const char *open = close;
    int depth = 0;
    for (; open > k; open--) {
      if (*open == ')') depth++;
      if (*open == '(' && --depth == 0) break;
    }
    const char *name_end = open;
    while (name_end > k && isspace((unsigned char)name_end[-1])) name_end--;
    const char *name = name_end;
    while (name > k && is_ident(name[-1])) name--;
    if (name == name_end) continue;
    if (*n == cap) {
      cap = cap ? 2 * cap : 64;
      sigs = realloc(sigs, (size_t)cap * sizeof *sigs);
      if (!sigs) abort();
    }
    zoo_kernel_sig *s = &sigs[(*n)++];
    s->name = name, s->name_len = (int)(name_end - name);
    parse_params(open, close, s);
  }
  return sigs;
}

static const zoo_kernel_sig *find_sig(const zoo_kernel_sig *sigs, int nsigs, const char *name) {
  size_t len = name ? strlen(name) : 0;
  for (int k = 0; k < nsigs; k++)
    if ((size_t)sigs[k].name_len == len && strncmp(sigs[k].name, name, len) == 0) return &sigs[k];
  return NULL;
}

/* Appends tensor t's bytes, unless it has no memory. */
static void add_tensor(const zoo_plan *p, int t, int write, zoo_access *out, int *n) {
  if (t < 0 || t >= p->ntensors || p->mem[t] == ZOO_MEM_NONE) return;
  int64_t bytes = p->bytes[t] > 0 ? p->bytes[t] : 4;
  out[(*n)++] = (zoo_access){p->mem[t], p->offset[t], p->offset[t] + bytes, write};
}

/* Appends the memory of argument a of step s (plan index ps): tensors with
 * the given write flag, scratch and counters written. */
static void add_arg(const zoo_plan *p, const zoo_arg *a, int ps, int write, zoo_access *out, int *n) {
  switch (a->kind) {
  case ZOO_ARG_TENSOR: add_tensor(p, a->tensor, write, out, n); break;
  case ZOO_ARG_SCRATCH:
    if (p->scratch[ps] >= 0)
      out[(*n)++] = (zoo_access){ZOO_MEM_ARENA, p->scratch[ps], p->scratch[ps] + p->scratch_size[ps], 1};
    break;
  case ZOO_ARG_COUNTER: {
    int64_t lo = p->counter_offset + 4 * (a->i - p->counter_first);
    out[(*n)++] = (zoo_access){ZOO_MEM_INPUT, lo, lo + 4 * (a->n > 1 ? a->n : 1), 1};
    break;
  }
  default: break;
  }
}

int zoo_step_access(const zoo_plan *p, const zoo_step *steps, int first, int i, const zoo_kernel_sig *sigs,
                    int nsigs, zoo_access *out) {
  const zoo_step *s = &steps[i];
  int n = 0, ps = i - first;
  if (s->kind == ZOO_STEP_KERNEL) {
    const zoo_kernel_sig *sig = find_sig(sigs, nsigs, s->func);
    if (sig && sig->nparams != s->nargs) sig = NULL;
    for (int a = 0; a < s->nargs && sig; a++)
      if (s->args[a].kind == ZOO_ARG_TENSOR && !(sig->pointers >> a & 1)) sig = NULL;
    for (int a = 0; a < s->nargs; a++) add_arg(p, &s->args[a], ps, sig ? (int)(sig->writes >> a & 1) : 1, out, &n);
  } else if (s->kind == ZOO_STEP_GEMM) {
    add_tensor(p, s->gemm.a, 0, out, &n);
    add_tensor(p, s->gemm.b, 0, out, &n);
    add_tensor(p, s->gemm.bias, 0, out, &n);
    add_tensor(p, s->gemm.c, 1, out, &n);
    for (int a = 0; a < s->nargs; a++) add_arg(p, &s->args[a], ps, 1, out, &n);
  } else {
    add_tensor(p, s->gemm.c, 1, out, &n);
  }
  return n;
}

int zoo_access_conflict(const zoo_access *a, int na, const zoo_access *b, int nb) {
  for (int x = 0; x < na; x++)
    for (int y = 0; y < nb; y++)
      if ((a[x].write || b[y].write) && a[x].mem == b[y].mem && a[x].lo < b[y].hi && b[y].lo < a[x].hi)
        return 1;
  return 0;
}

void zoo_schedule_build(zoo_schedule *s, const zoo_plan *p, const zoo_step *steps, int first, int n,
                        const char *src, zoo_schedule_opts o) {
  int window = o.window;
  memset(s, 0, sizeof *s);
  s->n = n;
  s->stream = xcalloc((size_t)n, 1);
  s->mark = xcalloc((size_t)n, 1);
  s->wait = xcalloc((size_t)n, sizeof *s->wait);
  for (int j = 0; j < n; j++) s->wait[j] = ZOO_SCHEDULE_NONE;
  if (window <= 0 || n < 2) return;

  int nsigs = 0;
  zoo_kernel_sig *sigs = src ? zoo_kernel_sigs(src, &nsigs) : NULL;
  zoo_access *acc = xcalloc((size_t)n * ZOO_SCHEDULE_MAX_ACCESS, sizeof *acc);
  int *nacc = xcalloc((size_t)n, sizeof *nacc);
  for (int j = 0; j < n; j++)
    nacc[j] = zoo_step_access(p, steps, first, first + j, sigs, nsigs, acc + (size_t)j * ZOO_SCHEDULE_MAX_ACCESS);
#define CONFLICT(i, j)                                                                                      \
  zoo_access_conflict(acc + (size_t)(i) * ZOO_SCHEDULE_MAX_ACCESS, nacc[i], acc + (size_t)(j) * ZOO_SCHEDULE_MAX_ACCESS, \
                      nacc[j])

  /* which steps go to the side stream */
  for (int j = 0; j + 1 < n; j++) {
    const zoo_gemm *gm = &steps[first + j].gemm;
    int side = !(o.max_gemm_flop > 0 && steps[first + j].kind == ZOO_STEP_GEMM &&
                 2.0 * (double)gm->m * (double)gm->n * (double)gm->k * (double)(gm->batch > 0 ? gm->batch : 1) >
                     o.max_gemm_flop);
    for (int k = j + 1; k < n && k <= j + window && side; k++)
      if (CONFLICT(j, k)) side = 0;
    if (steps[first + j].early) side = 1; /* they conflict with each other only */
    s->stream[j] = (unsigned char)side;
    s->side += side;
  }

  /* the waits: synced[x] is the latest step of the other stream that stream
   * x has waited for (every step of it up to that one is ordered before) */
  int synced[2] = {-1, -1}, forked = 0;
  for (int j = 0; j < n; j++) {
    int x = s->stream[j], target = -1;
    for (int i = j - 1; i > synced[x]; i--)
      if (s->stream[i] != x && CONFLICT(i, j)) {
        target = i;
        break;
      }
    if (x == 1 && !forked) { /* the fork: at least the main stream's latest step */
      forked = 1;
      if (target < 0) {
        for (int i = j - 1; i >= 0 && target < 0; i--)
          if (s->stream[i] == 0) target = i;
        if (target < 0) {
          s->wait[j] = ZOO_SCHEDULE_START;
          s->waits++;
          continue;
        }
      }
    }
    if (target < 0) continue;
    s->wait[j] = target;
    s->mark[target] = 1;
    synced[x] = target;
    s->waits++;
  }
#undef CONFLICT
  free(acc);
  free(nacc);
  free(sigs);
}

void zoo_schedule_free(zoo_schedule *s) {
  free(s->stream);
  free(s->wait);
  free(s->mark);
  memset(s, 0, sizeof *s);
}
