/* resolve.c: loading a .zoo file with its imports, and checking names.
 *
 * `import "std/nn.zoo"` looks for the file next to the importing file first,
 * then in the models folder (which holds std/). Each file is loaded once, and
 * an import that leads back to a file still being loaded is a cycle. A file
 * sees its own modules and those of the files it imports, not what those
 * import in turn.
 *
 * zoo_resolve_check then walks every module and model before anything runs, so
 * that all unknown names and duplicate declarations are reported in one go:
 *
 *   module scope   parameters, then lets and fields in order; a field may take
 *                  a parameter's name (Linear's `bias` parameter says whether
 *                  its `bias` field exists)
 *   forward scope  the module's names, its parameters, names bound by its
 *                  parameter types (B, T in f32[B, T, d]), and lets, which bind
 *                  for the rest of the body (a body is one scope)
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "value.h"

/* ---- loading ---- */

static zoo_unit *find_unit(zoo_resolver *r, const char *real) {
  for (int i = 0; i < r->nunits; i++)
    if (strcmp(r->units[i]->real, real) == 0) return r->units[i];
  return NULL;
}

static void add_source(zoo_program *p, zoo_source *s) {
  zoo_source **grown = realloc(p->sources, (size_t)(p->nsources + 1) * sizeof *grown);
  if (!grown) abort();
  p->sources = grown;
  p->sources[p->nsources++] = s;
}

/* "models/rebased.zoo" + "std/nn.zoo" -> "models/std/nn.zoo" */
static char *join_dir_of(zoo_arena *a, const char *file, const char *rel) {
  if (rel[0] == '/') return zoo_arena_strdup(a, rel);
  const char *slash = strrchr(file, '/');
  if (!slash) return zoo_arena_strdup(a, rel);
  return zoo_arena_printf(a, "%.*s/%s", (int)(slash - file), file, rel);
}

static int readable(const char *path) { return access(path, R_OK) == 0; }

static zoo_unit *load(zoo_resolver *r, const char *path, zoo_span from);

/* Loads the imports of u, in order. */
static void load_imports(zoo_resolver *r, zoo_unit *u) {
  zoo_arena *a = &r->p->arena;
  for (int i = 0; i < u->file->nitems; i++) {
    const zoo_ast *imp = u->file->items[i];
    if (imp->kind != ZOO_AST_IMPORT) continue;
    char *here = join_dir_of(a, u->src->path, imp->str);
    char *std = r->std_dir && imp->str[0] != '/' ? zoo_arena_printf(a, "%s/%s", r->std_dir, imp->str) : NULL;
    const char *path = readable(here) ? here : std && readable(std) ? std : NULL;
    if (!path) {
      if (std)
        zoo_error(r->d, imp->span, "cannot find '%s' (looked for %s and %s)", imp->str, here, std);
      else
        zoo_error(r->d, imp->span, "cannot find '%s' (looked for %s)", imp->str, here);
      continue;
    }
    char real[PATH_MAX];
    if (!realpath(path, real)) {
      zoo_error(r->d, imp->span, "cannot open '%s'", path);
      continue;
    }
    zoo_unit *dep = find_unit(r, real);
    if (dep && dep->loading) {
      const char *chain = "";
      int k = 0;
      while (k < r->depth && r->stack[k] != dep) k++;
      for (; k < r->depth; k++) chain = zoo_arena_printf(a, "%s%s -> ", chain, r->stack[k]->src->path);
      zoo_error(r->d, imp->span, "import cycle: %s%s", chain, dep->src->path);
      continue;
    }
    if (!dep) dep = load(r, path, imp->span);
    if (!dep) continue;
    int seen = 0;
    for (int k = 0; k < u->nimports; k++) seen |= u->imports[k] == dep;
    if (seen) continue;
    zoo_unit **grown = zoo_arena_alloc(a, (size_t)(u->nimports + 1) * sizeof *grown);
    if (u->nimports) memcpy(grown, u->imports, (size_t)u->nimports * sizeof *grown);
    grown[u->nimports++] = dep;
    u->imports = grown;
  }
}

/* Reads, parses and registers one file, then loads its imports. */
static zoo_unit *load(zoo_resolver *r, const char *path, zoo_span from) {
  zoo_arena *a = &r->p->arena;
  if (r->depth == (int)(sizeof r->stack / sizeof r->stack[0])) {
    zoo_error(r->d, from, "imports nested too deeply");
    return NULL;
  }
  zoo_source *src = zoo_source_read(path, r->d, from); /* reports why not */
  if (!src) return NULL;
  /* A pipe (/dev/stdin, <(...)) has no real path: its name stands for it. */
  char real[PATH_MAX];
  if (!realpath(path, real)) snprintf(real, sizeof real, "%s", path);
  add_source(r->p, src);
  zoo_ast *file = zoo_parse(a, src, r->d);
  if (!file) return NULL;

  zoo_unit *u = zoo_arena_alloc(a, sizeof *u);
  u->src = src;
  u->file = file;
  u->real = zoo_arena_strdup(a, real);
  if (r->nunits == r->cap) {
    r->cap = r->cap ? r->cap * 2 : 8;
    zoo_unit **grown = zoo_arena_alloc(a, (size_t)r->cap * sizeof *grown);
    if (r->nunits) memcpy(grown, r->units, (size_t)r->nunits * sizeof *grown);
    r->units = grown;
  }
  r->units[r->nunits++] = u;

  u->loading = 1;
  r->stack[r->depth++] = u;
  load_imports(r, u);
  r->depth--;
  u->loading = 0;
  return u;
}

zoo_unit *zoo_resolve_load(zoo_resolver *r, const char *path) {
  int before = r->d->nerrors;
  zoo_unit *u = load(r, path, zoo_nospan);
  return r->d->nerrors > before ? NULL : u;
}

/* ---- lookup ---- */

static const zoo_ast *local_module(const zoo_unit *u, const char *name) {
  for (int i = 0; i < u->file->nitems; i++) {
    const zoo_ast *n = u->file->items[i];
    if (n->kind == ZOO_AST_MODULE && strcmp(n->str, name) == 0) return n;
  }
  return NULL;
}

const zoo_ast *zoo_resolve_module(const zoo_unit *u, const char *name, const zoo_unit **where) {
  const zoo_ast *m = local_module(u, name);
  if (m) {
    *where = u;
    return m;
  }
  for (int i = 0; i < u->nimports; i++)
    if ((m = local_module(u->imports[i], name))) {
      *where = u->imports[i];
      return m;
    }
  return NULL;
}

int zoo_edit_distance(const char *a, const char *b, int max) {
  int la = (int)strlen(a), lb = (int)strlen(b);
  if (la - lb > max || lb - la > max || la > 63 || lb > 63) return max + 1;
  int row[64], prev[64];
  for (int j = 0; j <= lb; j++) prev[j] = j;
  for (int i = 1; i <= la; i++) {
    row[0] = i;
    int best = row[0];
    for (int j = 1; j <= lb; j++) {
      int sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
      int del = prev[j] + 1, ins = row[j - 1] + 1;
      row[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
      if (row[j] < best) best = row[j];
    }
    if (best > max) return max + 1;
    memcpy(prev, row, sizeof(int) * (size_t)(lb + 1));
  }
  return prev[lb] > max ? max + 1 : prev[lb];
}

/* Keeps the closest candidate in *best (ties: the first seen). */
static void consider(const char *name, const char *cand, const char **best, int *bestd) {
  if (strcmp(name, cand) == 0) return;
  int d = zoo_edit_distance(name, cand, 2);
  if (d <= 2 && d < *bestd) {
    *best = cand;
    *bestd = d;
  }
}

const char *zoo_resolve_suggest(const zoo_unit *u, const char *name, const char *const *extra,
                                int nextra) {
  const char *best = NULL;
  int bestd = 3;
  if (strlen(name) < 2) return NULL; /* one letter is close to every short name */
  for (int i = nextra - 1; i >= 0; i--) consider(name, extra[i], &best, &bestd);
  if (u) {
    for (int i = 0; i < u->file->nitems; i++)
      if (u->file->items[i]->kind == ZOO_AST_MODULE) consider(name, u->file->items[i]->str, &best, &bestd);
    for (int k = 0; k < u->nimports; k++)
      for (int i = 0; i < u->imports[k]->file->nitems; i++)
        if (u->imports[k]->file->items[i]->kind == ZOO_AST_MODULE)
          consider(name, u->imports[k]->file->items[i]->str, &best, &bestd);
    const char **names;
    int n = zoo_builtin_names(&names);
    for (int i = 0; i < n; i++) consider(name, names[i], &best, &bestd);
  }
  return best;
}

/* ---- checking names ---- */

typedef struct checker {
  zoo_resolver *r;
  const zoo_unit *u;
  const char **names; /* bound names, innermost last */
  int n, cap;
  int depth;
} checker;

static void bind(checker *c, const char *name) {
  if (c->n == c->cap) {
    c->cap = c->cap ? c->cap * 2 : 32;
    const char **grown = zoo_arena_alloc(&c->r->p->arena, (size_t)c->cap * sizeof *grown);
    if (c->n) memcpy(grown, c->names, (size_t)c->n * sizeof *grown);
    c->names = grown;
  }
  c->names[c->n++] = name;
}

static int bound(const checker *c, const char *name) {
  for (int i = c->n - 1; i >= 0; i--)
    if (strcmp(c->names[i], name) == 0) return 1;
  const zoo_unit *where;
  return zoo_resolve_module(c->u, name, &where) || zoo_builtin_find(name);
}

static void unknown(checker *c, const zoo_ast *n, const char *kind) {
  /* Declared in a loaded file that this one does not import? */
  for (int k = 0; k < c->r->nunits; k++)
    if (local_module(c->r->units[k], n->str)) {
      zoo_error(c->r->d, n->span, "unknown %s '%s'; it is declared in %s, which this file does not "
                "import", kind, n->str, c->r->units[k]->src->path);
      return;
    }
  const char *s = zoo_resolve_suggest(c->u, n->str, c->names, c->n);
  zoo_error(c->r->d, n->span, "unknown %s '%s'%s%s%s", kind, n->str, s ? "; did you mean '" : "",
            s ? s : "", s ? "'?" : "");
}

static void check_expr(checker *c, const zoo_ast *n) {
  if (!n) return;
  if (c->depth > 1000) {
    zoo_error(c->r->d, n->span, "expression nested too deeply");
    return;
  }
  c->depth++;
  switch (n->kind) {
  case ZOO_AST_NAME:
    if (!bound(c, n->str)) unknown(c, n, "name");
    break;
  case ZOO_AST_CALL:
    if (n->a->kind == ZOO_AST_NAME) {
      if (!bound(c, n->a->str)) unknown(c, n->a, "function");
    } else {
      check_expr(c, n->a);
    }
    for (int i = 0; i < n->nitems; i++) check_expr(c, n->items[i]);
    break;
  case ZOO_AST_KWARG:
    check_expr(c, n->a);
    break;
  case ZOO_AST_FIELD:
    check_expr(c, n->a);
    break;
  case ZOO_AST_LIST:
    for (int i = 0; i < n->nitems; i++) check_expr(c, n->items[i]);
    break;
  case ZOO_AST_UNARY:
  case ZOO_AST_BINARY:
  case ZOO_AST_COND:
  case ZOO_AST_INDEX:
    check_expr(c, n->a);
    check_expr(c, n->b);
    check_expr(c, n->c);
    break;
  default:
    break;
  }
  c->depth--;
}

/* A tensor type's dims: a name not bound yet is bound by the type. */
static void check_type(checker *c, const zoo_ast *t) {
  if (strcmp(t->str, "f32") != 0 && strcmp(t->str, "i32") != 0)
    zoo_error(c->r->d, t->span, "unknown element type '%s' (f32 or i32)", t->str);
  for (int k = 0; k < t->nitems; k++) {
    const zoo_ast *e = t->items[k];
    if (e->kind == ZOO_AST_NAME && !bound(c, e->str)) bind(c, e->str);
    else check_expr(c, e);
  }
}

static void check_stmts(checker *c, zoo_ast **items, int nitems) {
  for (int i = 0; i < nitems; i++) {
    const zoo_ast *s = items[i];
    switch (s->kind) {
    case ZOO_AST_LET:
      check_expr(c, s->a);
      bind(c, s->str);
      break;
    case ZOO_AST_RETURN:
      check_expr(c, s->a);
      break;
    case ZOO_AST_FOR:
      check_expr(c, s->a);
      bind(c, s->str);
      check_stmts(c, s->items, s->nitems);
      break;
    case ZOO_AST_IF:
      check_expr(c, s->a);
      check_stmts(c, s->items, s->nitems);
      if (s->b) check_stmts(c, s->b->items, s->b->nitems);
      break;
    case ZOO_AST_BLOCK:
      check_stmts(c, s->items, s->nitems);
      break;
    default:
      break;
    }
  }
}

/* Parameters: no name twice; defaults see the parameters before them. */
static void check_params(checker *c, zoo_ast **params, int nparams, int typed) {
  for (int i = 0; i < nparams; i++) {
    const zoo_ast *p = params[i];
    for (int j = 0; j < i; j++)
      if (strcmp(params[j]->str, p->str) == 0)
        zoo_error(c->r->d, p->span, "parameter '%s' is declared twice", p->str);
    if (p->a && !typed)
      zoo_error(c->r->d, p->a->span, "parameter '%s' has a tensor type, but module and model "
                "parameters are compile-time values; tensors go to forward", p->str);
    check_expr(c, p->b);
    if (p->a && typed) check_type(c, p->a);
    bind(c, p->str);
  }
}

static void check_module(checker *c, const zoo_ast *m) {
  c->n = 0;
  check_params(c, m->params, m->nparams, 0);
  const zoo_ast *fwd = NULL;
  for (int i = 0; i < m->nitems; i++) {
    const zoo_ast *mem = m->items[i];
    if (mem->kind == ZOO_AST_FORWARD) {
      if (fwd) {
        zoo_error(c->r->d, mem->span, "module %s has a second forward", m->str);
        zoo_note(c->r->d, fwd->span, "the first is here");
      }
      fwd = mem;
      continue;
    }
    for (int j = 0; j < i; j++) {
      const zoo_ast *prev = m->items[j];
      if (prev->kind != ZOO_AST_FORWARD && strcmp(prev->str, mem->str) == 0) {
        zoo_error(c->r->d, mem->span, "'%s' is already declared in module %s", mem->str, m->str);
        zoo_note(c->r->d, prev->span, "first declared here");
        break;
      }
    }
    if (mem->kind == ZOO_AST_MLET)
      for (int j = 0; j < m->nparams; j++)
        if (strcmp(m->params[j]->str, mem->str) == 0)
          zoo_error(c->r->d, mem->span, "let '%s' hides the parameter of the same name", mem->str);
    check_expr(c, mem->b);
    check_expr(c, mem->a);
    bind(c, mem->str);
  }
  if (fwd) {
    check_params(c, fwd->params, fwd->nparams, 1);
    if (fwd->a) check_type(c, fwd->a);
    if (fwd->b) check_stmts(c, fwd->b->items, fwd->b->nitems);
  }
}

/* Two declarations of one name in a file; two imports declaring one name. */
static void check_declarations(checker *c, const zoo_unit *u) {
  for (int i = 0; i < u->file->nitems; i++) {
    const zoo_ast *n = u->file->items[i];
    if (n->kind != ZOO_AST_MODULE && n->kind != ZOO_AST_MODEL) continue;
    for (int j = 0; j < i; j++) {
      const zoo_ast *prev = u->file->items[j];
      if (prev->kind == n->kind && strcmp(prev->str, n->str) == 0) {
        zoo_error(c->r->d, n->span, "%s '%s' is already declared", n->kind == ZOO_AST_MODULE ? "module" : "model", n->str);
        zoo_note(c->r->d, prev->span, "first declared here");
        break;
      }
    }
  }
  for (int k = 1; k < u->nimports; k++) {
    const zoo_unit *b = u->imports[k];
    for (int i = 0; i < b->file->nitems; i++) {
      const zoo_ast *n = b->file->items[i];
      if (n->kind != ZOO_AST_MODULE || local_module(u, n->str)) continue;
      for (int j = 0; j < k; j++)
        if (local_module(u->imports[j], n->str)) {
          zoo_span at = u->src ? (zoo_span){u->src, 1, 1, 1, 1} : zoo_nospan;
          for (int t = 0, seen = 0; t < u->file->nitems; t++)
            if (u->file->items[t]->kind == ZOO_AST_IMPORT && seen++ == k) at = u->file->items[t]->span;
          zoo_error(c->r->d, at, "module %s is declared both in %s and in %s", n->str,
                    u->imports[j]->src->path, b->src->path);
          break;
        }
    }
  }
}

int zoo_resolve_check(zoo_resolver *r) {
  int before = r->d->nerrors;
  for (int k = 0; k < r->nunits; k++) {
    checker c = {r, r->units[k], NULL, 0, 0, 0};
    check_declarations(&c, c.u);
    for (int i = 0; i < c.u->file->nitems; i++) {
      const zoo_ast *n = c.u->file->items[i];
      if (n->kind == ZOO_AST_MODULE) {
        check_module(&c, n);
      } else if (n->kind == ZOO_AST_MODEL) {
        c.n = 0;
        check_params(&c, n->params, n->nparams, 0);
        check_expr(&c, n->a);
      }
    }
  }
  return r->d->nerrors - before;
}
