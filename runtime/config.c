/* config.c: YAML run configurations and sweeps (see config.h).
 *
 * Stages: libyaml events -> a located tree (cfg_parse) -> flags replace nodes
 * (zoo_config_override) -> the schema table below checks every key and fills the
 * struct (cfg_apply) -> cross-field checks and the reference trainer's rewrites
 * (cfg_reference_rewrites).
 */
#include "config.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

/* ---------------------------------------------------------------- YAML tree */

/* A span from libyaml's marks. A flag's value (col_shift > 0) is one line: a mark
 * past its end is put at its end. */
static zoo_span cfg_span(const zoo_source *src, yaml_mark_t a, yaml_mark_t b, int col_shift) {
  zoo_span s = {src, (int)a.line + 1, (int)a.column + 1 + col_shift, (int)b.line + 1,
                (int)b.column + 1 + col_shift};
  if (col_shift > 0) {
    int last = (int)src->len + 1;
    if (s.line > 1 || s.col > last) s.col = last;
    if (s.end_line > 1 || s.end_col > last) s.end_col = last;
    s.line = s.end_line = 1;
  }
  if (s.end_line == s.line && s.end_col <= s.col) s.end_col = s.col + 1;
  return s;
}

typedef struct cfg_parser {
  yaml_parser_t p;
  zoo_arena *arena;
  const zoo_source *src;
  zoo_diag *d;
  int col_shift; /* flags: the value's offset within the flag's text */
} cfg_parser;

static int cfg_event(cfg_parser *cp, yaml_event_t *ev) {
  if (yaml_parser_parse(&cp->p, ev)) return 0;
  zoo_span at = cfg_span(cp->src, cp->p.problem_mark, cp->p.problem_mark, cp->col_shift);
  if (cp->p.context)
    zoo_error(cp->d, at, "invalid YAML: %s %s", cp->p.problem, cp->p.context);
  else
    zoo_error(cp->d, at, "invalid YAML: %s", cp->p.problem ? cp->p.problem : "unreadable");
  return -1;
}

/* Appends an item (and its key, for maps) to a sequence or map node. */
static void cfg_push(zoo_arena *a, zoo_yaml *n, zoo_yaml *item, const char *key, zoo_span ks) {
  if (n->n == n->cap) { /* the old arrays stay in the arena: configs are small */
    int cap = n->cap ? 2 * n->cap : 8;
    zoo_yaml **items = zoo_arena_alloc(a, (size_t)cap * sizeof *items);
    const char **keys = zoo_arena_alloc(a, (size_t)cap * sizeof *keys);
    zoo_span *spans = zoo_arena_alloc(a, (size_t)cap * sizeof *spans);
    if (n->n) {
      memcpy(items, n->items, (size_t)n->n * sizeof *items);
      memcpy(keys, n->keys, (size_t)n->n * sizeof *keys);
      memcpy(spans, n->key_spans, (size_t)n->n * sizeof *spans);
    }
    n->items = items, n->keys = keys, n->key_spans = spans, n->cap = cap;
  }
  n->items[n->n] = item;
  n->keys[n->n] = key;
  n->key_spans[n->n] = ks;
  n->n++;
}

/* node := scalar | sequence of nodes | mapping of scalar keys to nodes.
 * The event `ev` starts the node; returns it, or NULL after reporting. */
static zoo_yaml *cfg_node(cfg_parser *cp, yaml_event_t *ev) {
  zoo_yaml *n = zoo_arena_alloc(cp->arena, sizeof *n);
  switch (ev->type) {
  case YAML_SCALAR_EVENT:
    n->kind = ZOO_YAML_SCALAR;
    n->span = cfg_span(cp->src, ev->start_mark, ev->end_mark, cp->col_shift);
    n->text = zoo_arena_strdup(cp->arena, (const char *)ev->data.scalar.value);
    n->quoted = ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE;
    return n;
  case YAML_ALIAS_EVENT:
    zoo_error(cp->d, cfg_span(cp->src, ev->start_mark, ev->end_mark, cp->col_shift),
              "YAML aliases are not supported in configs");
    return NULL;
  case YAML_SEQUENCE_START_EVENT:
  case YAML_MAPPING_START_EVENT: {
    int is_map = ev->type == YAML_MAPPING_START_EVENT;
    n->kind = is_map ? ZOO_YAML_MAP : ZOO_YAML_SEQ;
    n->span = cfg_span(cp->src, ev->start_mark, ev->start_mark, cp->col_shift);
    for (;;) {
      yaml_event_t kev;
      if (cfg_event(cp, &kev)) return NULL;
      if (kev.type == YAML_SEQUENCE_END_EVENT || kev.type == YAML_MAPPING_END_EVENT) {
        yaml_event_delete(&kev);
        break;
      }
      const char *key = NULL;
      zoo_span ks = zoo_nospan;
      if (is_map) {
        if (kev.type != YAML_SCALAR_EVENT) {
          zoo_error(cp->d, cfg_span(cp->src, kev.start_mark, kev.end_mark, cp->col_shift),
                    "a key must be a plain name");
          yaml_event_delete(&kev);
          return NULL;
        }
        key = zoo_arena_strdup(cp->arena, (const char *)kev.data.scalar.value);
        ks = cfg_span(cp->src, kev.start_mark, kev.end_mark, cp->col_shift);
        yaml_event_delete(&kev);
        for (int i = 0; i < n->n; i++)
          if (strcmp(n->keys[i], key) == 0) {
            zoo_error(cp->d, ks, "duplicate key '%s'", key);
            zoo_note(cp->d, n->key_spans[i], "first given here");
            return NULL;
          }
        if (cfg_event(cp, &kev)) return NULL;
      }
      zoo_yaml *item = cfg_node(cp, &kev);
      yaml_event_delete(&kev);
      if (!item) return NULL;
      cfg_push(cp->arena, n, item, key, ks);
    }
    return n;
  }
  default:
    zoo_error(cp->d, cfg_span(cp->src, ev->start_mark, ev->end_mark, cp->col_shift),
              "unexpected YAML content");
    return NULL;
  }
}

/* stream := [document]; an empty stream is an empty mapping. */
static zoo_yaml *cfg_parse(zoo_arena *arena, const zoo_source *src, const char *text, size_t len,
                           int col_shift, zoo_diag *d) {
  cfg_parser cp = {.arena = arena, .src = src, .d = d, .col_shift = col_shift};
  yaml_parser_initialize(&cp.p);
  yaml_parser_set_input_string(&cp.p, (const unsigned char *)text, len);
  zoo_yaml *root = NULL;
  int docs = 0, failed = 0;
  for (;;) {
    yaml_event_t ev;
    if (cfg_event(&cp, &ev)) {
      failed = 1;
      break;
    }
    yaml_event_type_t t = ev.type;
    if (t == YAML_STREAM_END_EVENT) {
      yaml_event_delete(&ev);
      break;
    }
    if (t == YAML_DOCUMENT_START_EVENT && ++docs > 1) {
      zoo_error(d, cfg_span(src, ev.start_mark, ev.end_mark, col_shift),
                "a config holds one YAML document");
      yaml_event_delete(&ev);
      failed = 1;
      break;
    }
    if (t == YAML_SCALAR_EVENT || t == YAML_SEQUENCE_START_EVENT ||
        t == YAML_MAPPING_START_EVENT || t == YAML_ALIAS_EVENT) {
      root = cfg_node(&cp, &ev);
      if (!root) {
        yaml_event_delete(&ev);
        failed = 1;
        break;
      }
    }
    yaml_event_delete(&ev);
  }
  yaml_parser_delete(&cp.p);
  if (failed) return NULL;
  if (!root) {
    root = zoo_arena_alloc(arena, sizeof *root);
    root->kind = ZOO_YAML_MAP;
    root->span = (zoo_span){src, 1, 1, 1, 2};
  }
  return root;
}

/* A scalar that YAML reads as null: ~, null, or nothing. */
static int cfg_is_null(const zoo_yaml *n) {
  return n->kind == ZOO_YAML_SCALAR && !n->quoted &&
         (!n->text[0] || !strcmp(n->text, "~") || !strcmp(n->text, "null") ||
          !strcmp(n->text, "Null") || !strcmp(n->text, "NULL"));
}

/* The value of key in map n, or NULL. */
static zoo_yaml *cfg_get(const zoo_yaml *n, const char *key, int *index) {
  if (!n || n->kind != ZOO_YAML_MAP) return NULL;
  for (int i = 0; i < n->n; i++)
    if (!strcmp(n->keys[i], key)) {
      if (index) *index = i;
      return n->items[i];
    }
  return NULL;
}

/* The node at a dotted path, or NULL. */
static zoo_yaml *cfg_find(const zoo_yaml *root, const char *path) {
  char part[128];
  const zoo_yaml *n = root;
  while (n && *path) {
    size_t len = strcspn(path, ".");
    if (len >= sizeof part) return NULL;
    memcpy(part, path, len);
    part[len] = 0;
    n = cfg_get(n, part, NULL);
    path += len + (path[len] == '.');
  }
  return (zoo_yaml *)n;
}

/* The span of the key that holds `path` (for errors about a key), or nospan. */
static zoo_span cfg_key_span(const zoo_yaml *root, const char *path) {
  const char *dot = strrchr(path, '.');
  char parent[256];
  const zoo_yaml *p = root;
  if (dot) {
    snprintf(parent, sizeof parent, "%.*s", (int)(dot - path), path);
    p = cfg_find(root, parent);
  }
  int i;
  if (cfg_get(p, dot ? dot + 1 : path, &i)) return p->key_spans[i];
  return zoo_nospan;
}

/* Sets the node at a dotted path, making maps on the way (a null on the way
 * becomes one). Returns 0, or -1 when a value that is not a map is in the way
 * (*blocker is that value). */
static int cfg_set(zoo_arena *a, zoo_yaml *root, const char *path, zoo_yaml *value,
                   zoo_span key_span, const zoo_yaml **blocker) {
  zoo_yaml *n = root;
  for (;;) {
    size_t len = strcspn(path, ".");
    const char *key = zoo_arena_strndup(a, path, len);
    int last = path[len] == 0;
    int i;
    zoo_yaml *child = cfg_get(n, key, &i);
    if (last) {
      if (child) {
        n->items[i] = value;
        n->key_spans[i] = key_span;
      } else {
        cfg_push(a, n, value, key, key_span);
      }
      return 0;
    }
    if (child && child->kind != ZOO_YAML_MAP) {
      if (cfg_is_null(child)) { /* "kwargs:" with nothing: becomes a map */
        zoo_yaml *m = zoo_arena_alloc(a, sizeof *m);
        m->kind = ZOO_YAML_MAP;
        m->span = child->span;
        n->items[i] = m;
        child = m;
      } else {
        *blocker = child;
        return -1;
      }
    }
    if (!child) {
      child = zoo_arena_alloc(a, sizeof *child);
      child->kind = ZOO_YAML_MAP;
      child->span = value->span;
      cfg_push(a, n, child, key, key_span);
    }
    n = child;
    path += len + 1;
  }
}

/* ---------------------------------------------------------------- schema */

typedef enum cfg_type {
  CFG_INT,     /* int */
  CFG_INT64,   /* int64_t */
  CFG_FLOAT,   /* double */
  CFG_BOOL,    /* int */
  CFG_STR,     /* const char * */
  CFG_STR_NULL,/* const char *, or null */
  CFG_STRS,    /* a list of strings: tags */
  CFG_EMPTY,   /* a mapping that must be empty ({}), or null */
  CFG_ANY,     /* anything (ignored) */
  CFG_PARAMS,  /* model.params: name -> value, becomes zoo_defines */
} cfg_type;

#define NOSTORE ((size_t)-1)
#define AT(f) offsetof(zoo_config, f)

typedef struct cfg_field {
  const char *path;
  cfg_type type;
  size_t offset;    /* into zoo_config, or NOSTORE */
  const char *only; /* the one value zoo implements (compared as the type), or NULL */
  const char *note; /* accepted but unused: why (a note, once per distinct text) */
} cfg_field;

static const char note_logger[] =
    "zoo writes metrics to runs/<run_id>/ and does not log to Weights & Biases";
static const char note_cache[] = "zoo makes the data in memory for each run; there is no cache";
static const char note_ignored[] = "the reference's setting has no effect in zoo";
static const char note_mixer_kind[] = "the reference trainer sets this from the sequence mixer";

static const cfg_field cfg_fields[] = {
    {"data.builder.name", CFG_STR, NOSTORE, "src.data.associative_recall.multiquery_ar", NULL},
    {"data.builder.kwargs.num_kv_pairs", CFG_INT, AT(num_kv_pairs), NULL, NULL},
    {"data.builder.kwargs.train_power_a", CFG_FLOAT, AT(train_power_a), NULL, NULL},
    {"data.builder.kwargs.test_power_a", CFG_FLOAT, AT(test_power_a), NULL, NULL},
    {"data.builder.kwargs.random_non_queries", CFG_BOOL, AT(random_non_queries), NULL, NULL},
    {"data.seed", CFG_INT64, AT(data_seed), NULL, NULL},
    {"data.num_train_examples", CFG_INT64, AT(num_train_examples), NULL, NULL},
    {"data.num_test_examples", CFG_INT64, AT(num_test_examples), NULL, NULL},
    {"data.input_seq_len", CFG_INT, AT(input_seq_len), NULL, NULL},
    {"data.vocab_size", CFG_INT, AT(vocab_size), NULL, NULL},
    {"data.batch_size", CFG_INT, AT(batch_size), NULL, NULL},
    {"data.cache_dir", CFG_STR_NULL, NOSTORE, NULL, note_cache},
    {"data.caching", CFG_BOOL, NOSTORE, NULL, note_cache},
    {"data.force_cache", CFG_BOOL, NOSTORE, NULL, note_cache},
    {"model.file", CFG_STR, AT(model_file), NULL, NULL},
    {"model.params", CFG_PARAMS, NOSTORE, NULL, NULL},
    {"model.sequence_mixer.name", CFG_STR, AT(mixer), NULL, NULL},
    {"model.sequence_mixer.kwargs", CFG_EMPTY, NOSTORE, NULL, NULL},
    {"model.state_mixer.name", CFG_STR, NOSTORE, "torch.nn.Identity", NULL},
    {"model.state_mixer.kwargs", CFG_EMPTY, NOSTORE, NULL, NULL},
    {"model.d_model", CFG_INT, AT(d_model), NULL, NULL},
    {"model.n_layers", CFG_INT, AT(n_layers), "2", NULL},
    {"model.num_heads", CFG_INT, AT(num_heads), NULL, NULL},
    {"model.max_position_embeddings", CFG_INT, AT(max_position_embeddings), NULL, NULL},
    {"model.vocab_size", CFG_INT, AT(model_vocab_size), NULL, NULL},
    {"model.affine_norm", CFG_BOOL, NOSTORE, "true", NULL},
    {"model.pre_norm", CFG_BOOL, NOSTORE, "true", NULL},
    {"model.use_gamma", CFG_BOOL, NOSTORE, "true", NULL},
    {"model.use_beta", CFG_BOOL, NOSTORE, "true", NULL},
    {"model.normalize", CFG_BOOL, NOSTORE, "true", NULL},
    {"model.learnable_word_embeddings", CFG_BOOL, NOSTORE, "true", NULL},
    {"model.resid_dropout", CFG_FLOAT, NOSTORE, "0", NULL},
    {"model.embed_dropout", CFG_FLOAT, NOSTORE, "0.1", NULL},
    {"model.drop_path", CFG_FLOAT, NOSTORE, "0", NULL},
    {"model.layer_norm_epsilon", CFG_FLOAT, NOSTORE, "1e-5", NULL},
    {"model.pad_vocab_size_multiple", CFG_INT, NOSTORE, "1", NULL},
    {"model.gradient_checkpointing", CFG_BOOL, NOSTORE, NULL, note_ignored},
    {"model.log_scores", CFG_BOOL, NOSTORE, NULL, note_ignored},
    {"model.block_type", CFG_STR, NOSTORE, NULL, note_mixer_kind},
    {"logger.project_name", CFG_STR_NULL, NOSTORE, NULL, note_logger},
    {"logger.entity", CFG_STR_NULL, NOSTORE, NULL, note_logger},
    {"logger.do_log_ckpt", CFG_BOOL, NOSTORE, NULL, note_logger},
    {"logger.do_log_gamma_beta", CFG_BOOL, NOSTORE, NULL, note_logger},
    {"tqdm", CFG_BOOL, NOSTORE, NULL, "zoorun shows a progress bar when stdout is a terminal"},
    {"max_epochs", CFG_INT, AT(max_epochs), NULL, NULL},
    {"sequence_mixer", CFG_STR_NULL, NOSTORE, NULL, note_ignored},
    {"early_stopping_metric", CFG_STR_NULL, NOSTORE, NULL, NULL},
    {"early_stopping_threshold", CFG_FLOAT, AT(early_stopping_threshold), NULL, NULL},
    {"learning_rate", CFG_FLOAT, AT(learning_rate), NULL, NULL},
    {"weight_decay", CFG_FLOAT, AT(weight_decay), NULL, NULL},
    {"seed", CFG_INT64, AT(seed), NULL, NULL},
    {"gradient_accumulation_steps", CFG_INT, AT(gradient_accumulation_steps), NULL, NULL},
    {"launch_id", CFG_STR_NULL, NOSTORE, NULL, note_ignored},
    {"sweep_id", CFG_STR_NULL, NOSTORE, NULL, note_ignored},
    {"run_id", CFG_STR, AT(run_id), NULL, NULL},
    {"precision", CFG_STR, AT(precision), NULL, NULL},
    {"tags", CFG_STRS, NOSTORE, NULL, NULL},
    {"_wandb", CFG_ANY, NOSTORE, NULL, note_logger},
};
enum { CFG_NFIELDS = sizeof cfg_fields / sizeof *cfg_fields };

static const cfg_field *cfg_field_of(const char *path) {
  for (int i = 0; i < CFG_NFIELDS; i++)
    if (!strcmp(cfg_fields[i].path, path)) return &cfg_fields[i];
  return NULL;
}

/* Is `path` a section (a proper prefix of some field's path)? */
static int cfg_is_section(const char *path) {
  size_t n = strlen(path);
  for (int i = 0; i < CFG_NFIELDS; i++)
    if (!strncmp(cfg_fields[i].path, path, n) && cfg_fields[i].path[n] == '.') return 1;
  return 0;
}

/* Edit distance, for "did you mean". */
static int cfg_distance(const char *a, const char *b) {
  int la = (int)strlen(a), lb = (int)strlen(b);
  if (la > 63 || lb > 63) return 99;
  int row[64];
  for (int j = 0; j <= lb; j++) row[j] = j;
  for (int i = 1; i <= la; i++) {
    int diag = row[0];
    row[0] = i;
    for (int j = 1; j <= lb; j++) {
      int up = row[j];
      int best = diag + (a[i - 1] != b[j - 1]);
      if (up + 1 < best) best = up + 1;
      if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
      row[j] = best;
      diag = up;
    }
  }
  return row[lb];
}

/* The closest known key under `section` (last components compared), or NULL. */
static const char *cfg_suggest(const char *section, const char *key, char *buf, size_t n) {
  size_t sl = strlen(section);
  int best = 3;
  const char *found = NULL;
  for (int i = 0; i < CFG_NFIELDS; i++) {
    const char *p = cfg_fields[i].path;
    if (sl && (strncmp(p, section, sl) || p[sl] != '.')) continue;
    const char *rest = sl ? p + sl + 1 : p;
    size_t len = strcspn(rest, ".");
    char cand[64];
    if (len >= sizeof cand) continue;
    memcpy(cand, rest, len);
    cand[len] = 0;
    int dist = cfg_distance(key, cand);
    if (dist > 0 && dist < best) { /* the key itself is a section, not a typo */
      best = dist;
      snprintf(buf, n, "%s", cand);
      found = buf;
    }
  }
  return found;
}

/* The keys directly under section `path`, "builder.*, seed, ..." (sections with
 * ".*"), for "is a section" messages. */
static const char *cfg_section_keys(zoo_arena *a, const char *path) {
  size_t pl = strlen(path);
  const char *list = "";
  const char *seen[CFG_NFIELDS];
  int nseen = 0;
  for (int i = 0; i < CFG_NFIELDS; i++) {
    const char *p = cfg_fields[i].path;
    if (strncmp(p, path, pl) || p[pl] != '.') continue;
    const char *rest = p + pl + 1;
    size_t len = strcspn(rest, ".");
    int dup = 0;
    for (int k = 0; k < nseen; k++)
      dup |= !strncmp(seen[k], rest, len) && (seen[k][len] == '.' || !seen[k][len]);
    if (dup) continue;
    seen[nseen++] = rest;
    if (nseen > 12) {
      list = zoo_arena_printf(a, "%s, ...", list);
      break;
    }
    list = zoo_arena_printf(a, "%s%s%.*s%s", list, nseen > 1 ? ", " : "", (int)len, rest,
                            rest[len] ? ".*" : "");
  }
  return list;
}

/* Scalar conversions. Each returns 0, or -1 if the text is not of the type. */
static int cfg_parse_int(const char *s, int64_t *out) {
  char digits[64];
  size_t k = 0;
  for (const char *p = s; *p; p++) /* YAML 1.1 allows 100_000 */
    if (*p != '_' && k + 1 < sizeof digits) digits[k++] = *p;
  digits[k] = 0;
  if (!k) return -1;
  char *end;
  errno = 0;
  long long v = strtoll(digits, &end, 10);
  if (*end || errno) return -1;
  *out = v;
  return 0;
}

/* A number: 0, or -1 if the text is not one, or -2 if it is one a double cannot
 * hold (1e400, and 1e-400, which would read as 0). Subnormals (4.9e-324) are
 * numbers; what range a key allows is its own check. */
static int cfg_parse_float(const char *s, double *out) {
  char *end;
  if (!*s || isspace((unsigned char)*s)) return -1;
  errno = 0;
  double v = strtod(s, &end);
  if (end == s || *end || isnan(v)) return -1;
  if (isinf(v) && errno != ERANGE) return -1; /* "inf": not a number to zoo */
  if (errno == ERANGE && (isinf(v) || v == 0)) return -2;
  *out = v;
  return 0;
}

static int cfg_parse_bool(const char *s, int *out) {
  static const char *yes[] = {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"};
  static const char *no[] = {"false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF"};
  for (int i = 0; i < 9; i++) {
    if (!strcmp(s, yes[i])) return *out = 1, 0;
    if (!strcmp(s, no[i])) return *out = 0, 0;
  }
  return -1;
}

static const char *cfg_kind_name(const zoo_yaml *n) {
  if (n->kind == ZOO_YAML_MAP) return "a mapping";
  if (n->kind == ZOO_YAML_SEQ) return "a list";
  if (cfg_is_null(n)) return "nothing (null)";
  return n->quoted ? "a quoted string" : NULL;
}

/* "expected an integer, got 'abc'" */
static void cfg_type_error(zoo_diag *d, const char *path, const zoo_yaml *n, const char *want) {
  const char *kind = cfg_kind_name(n);
  if (n->kind == ZOO_YAML_SCALAR && n->quoted)
    zoo_error(d, n->span, "%s: expected %s, got the quoted string \"%s\"", path, want, n->text);
  else if (kind)
    zoo_error(d, n->span, "%s: expected %s, got %s", path, want, kind);
  else
    zoo_error(d, n->span, "%s: expected %s, got '%s'", path, want, n->text);
}

/* Writes a scalar as a .zoo literal (for model.params): numbers and booleans as
 * written, other text as a quoted string, lists as [a, b]. */
static const char *cfg_zoo_literal(zoo_arena *a, const zoo_yaml *n, zoo_diag *d,
                                   const char *path) {
  if (n->kind == ZOO_YAML_SEQ) {
    char buf[1024];
    size_t len = 0;
    buf[len++] = '[';
    for (int i = 0; i < n->n; i++) {
      const char *item = cfg_zoo_literal(a, n->items[i], d, path);
      if (!item) return NULL;
      len += (size_t)snprintf(buf + len, sizeof buf - len, "%s%s", i ? ", " : "", item);
      if (len >= sizeof buf - 2) {
        zoo_error(d, n->span, "%s: list too long", path);
        return NULL;
      }
    }
    buf[len++] = ']';
    buf[len] = 0;
    return zoo_arena_strdup(a, buf);
  }
  if (n->kind == ZOO_YAML_MAP || cfg_is_null(n)) {
    zoo_error(d, n->span, "%s: a model parameter is a number, a boolean, a string or a list",
              path);
    return NULL;
  }
  int64_t i;
  double f;
  int b;
  if (!n->quoted && !cfg_parse_int(n->text, &i)) return zoo_arena_printf(a, "%lld", (long long)i);
  if (!n->quoted && !cfg_parse_float(n->text, &f)) return n->text;
  if (!n->quoted && !cfg_parse_bool(n->text, &b)) return b ? "true" : "false";
  char *out = zoo_arena_alloc(a, 2 * strlen(n->text) + 3), *o = out;
  *o++ = '"';
  for (const char *p = n->text; *p; p++) {
    if (*p == '"' || *p == '\\') *o++ = '\\';
    *o++ = *p;
  }
  *o++ = '"';
  return out;
}

typedef struct cfg_walk {
  zoo_config *c;
  zoo_diag *d;
  const char *notes[16]; /* notes to give (once each), when there was no error */
  const char *note_keys[16];
  zoo_span note_spans[16];
  int nnotes;
} cfg_walk;

/* Checks one value against its field and stores it. */
static void cfg_value(cfg_walk *w, const cfg_field *f, zoo_yaml *n) {
  zoo_config *c = w->c;
  zoo_diag *d = w->d;
  void *slot = f->offset == NOSTORE ? NULL : (char *)c + f->offset;
  if (f->note) {
    int said = 0;
    for (int i = 0; i < w->nnotes; i++) said |= w->notes[i] == f->note;
    if (!said && w->nnotes < 16) {
      const char *key = f->path, *dot = strchr(f->path, '.');
      zoo_span at = cfg_key_span(c->root, f->path);
      if (dot && f->note == note_logger) { /* one note for the whole section */
        key = zoo_arena_strndup(&c->arena, f->path, (size_t)(dot - f->path));
        zoo_span s = cfg_key_span(c->root, key);
        if (s.src) at = s;
      }
      w->notes[w->nnotes] = f->note;
      w->note_keys[w->nnotes] = key;
      w->note_spans[w->nnotes++] = at.src ? at : n->span;
    }
  }
  int64_t iv;
  double fv;
  int bv;
  switch (f->type) {
  case CFG_INT:
  case CFG_INT64:
    if (n->kind != ZOO_YAML_SCALAR || n->quoted || cfg_parse_int(n->text, &iv)) {
      cfg_type_error(d, f->path, n, "an integer");
      return;
    }
    if (f->type == CFG_INT && (iv < -2147483647 || iv > 2147483647)) {
      zoo_error(d, n->span, "%s: %lld is out of range", f->path, (long long)iv);
      return;
    }
    if (f->only && iv != strtoll(f->only, NULL, 10)) {
      zoo_error(d, n->span, "%s: only %s is supported (got %lld)", f->path, f->only,
                (long long)iv);
      return;
    }
    if (slot && f->type == CFG_INT) *(int *)slot = (int)iv;
    if (slot && f->type == CFG_INT64) *(int64_t *)slot = iv;
    return;
  case CFG_FLOAT: {
    int bad = n->kind != ZOO_YAML_SCALAR || n->quoted ? -1 : cfg_parse_float(n->text, &fv);
    if (bad == -2) {
      int tiny = strtod(n->text, NULL) == 0;
      zoo_error(d, n->span, "%s: %s is too %s for a double%s", f->path, n->text,
                tiny ? "close to 0" : "large", tiny ? " (it would read as 0)" : "");
      return;
    }
    if (bad) {
      cfg_type_error(d, f->path, n, "a number");
      return;
    }
    if (f->only && fv != strtod(f->only, NULL)) {
      zoo_error(d, n->span, "%s: only %s is supported (got %s)", f->path, f->only, n->text);
      return;
    }
    if (slot) *(double *)slot = fv;
    return;
  }
  case CFG_BOOL:
    if (n->kind != ZOO_YAML_SCALAR || n->quoted || cfg_parse_bool(n->text, &bv)) {
      cfg_type_error(d, f->path, n, "true or false");
      return;
    }
    if (f->only && bv != !strcmp(f->only, "true")) {
      zoo_error(d, n->span, "%s: only %s is supported in zoo's models", f->path, f->only);
      return;
    }
    if (slot) *(int *)slot = bv;
    return;
  case CFG_STR:
  case CFG_STR_NULL:
    if (f->type == CFG_STR_NULL && cfg_is_null(n)) {
      if (slot) *(const char **)slot = NULL;
      return;
    }
    if (n->kind != ZOO_YAML_SCALAR || cfg_is_null(n)) {
      cfg_type_error(d, f->path, n, "a string");
      return;
    }
    if (f->only && strcmp(n->text, f->only)) {
      zoo_error(d, n->span, "%s: only '%s' is supported (got '%s')", f->path, f->only, n->text);
      return;
    }
    if (slot) *(const char **)slot = n->text;
    return;
  case CFG_STRS:
    if (cfg_is_null(n)) {
      c->tags = NULL, c->ntags = 0;
      return;
    }
    if (n->kind != ZOO_YAML_SEQ) {
      cfg_type_error(d, f->path, n, "a list of strings");
      return;
    }
    c->tags = zoo_arena_alloc(&c->arena, (size_t)(n->n + 1) * sizeof *c->tags);
    c->ntags = 0;
    for (int i = 0; i < n->n; i++) {
      if (n->items[i]->kind != ZOO_YAML_SCALAR || cfg_is_null(n->items[i])) {
        cfg_type_error(d, f->path, n->items[i], "a string");
        return;
      }
      c->tags[c->ntags++] = n->items[i]->text;
    }
    return;
  case CFG_EMPTY:
    if (cfg_is_null(n) || (n->kind == ZOO_YAML_MAP && n->n == 0)) return;
    if (n->kind != ZOO_YAML_MAP) {
      cfg_type_error(d, f->path, n, "a mapping");
      return;
    }
    zoo_error(d, n->key_spans[0], "%s: zoo's models take no extra arguments here (got '%s')",
              f->path, n->keys[0]);
    return;
  case CFG_ANY:
    return;
  case CFG_PARAMS:
    if (cfg_is_null(n)) return;
    if (n->kind != ZOO_YAML_MAP) {
      cfg_type_error(d, f->path, n, "a mapping of model parameters");
      return;
    }
    c->defines = zoo_arena_alloc(&c->arena, (size_t)(n->n + 1) * sizeof *c->defines);
    c->define_at = zoo_arena_alloc(&c->arena, (size_t)(n->n + 1) * sizeof *c->define_at);
    c->ndefines = 0;
    for (int i = 0; i < n->n; i++) {
      char path[256];
      snprintf(path, sizeof path, "model.params.%s", n->keys[i]);
      const char *v = cfg_zoo_literal(&c->arena, n->items[i], d, path);
      if (!v) continue;
      c->define_at[c->ndefines] = (zoo_define_at){n->key_spans[i], n->items[i]->span};
      c->defines[c->ndefines++] = (zoo_define){n->keys[i], v};
    }
    return;
  }
}

/* Every entry of map n (at dotted prefix) against the schema. */
static void cfg_walk_map(cfg_walk *w, zoo_yaml *n, const char *prefix) {
  for (int i = 0; i < n->n; i++) {
    char path[256];
    snprintf(path, sizeof path, "%s%s%s", prefix, *prefix ? "." : "", n->keys[i]);
    const cfg_field *f = cfg_field_of(path);
    if (f) {
      cfg_value(w, f, n->items[i]);
      continue;
    }
    if (cfg_is_section(path)) {
      if (n->items[i]->kind == ZOO_YAML_MAP) cfg_walk_map(w, n->items[i], path);
      else if (!cfg_is_null(n->items[i])) cfg_type_error(w->d, path, n->items[i], "a mapping");
      continue;
    }
    char buf[64];
    const char *hint = cfg_suggest(prefix, n->keys[i], buf, sizeof buf);
    if (hint)
      zoo_error(w->d, n->key_spans[i], "unknown key '%s'%s%s (did you mean '%s'?)", n->keys[i],
                *prefix ? " in " : "", prefix, hint);
    else
      zoo_error(w->d, n->key_spans[i], "unknown key '%s'%s%s", n->keys[i], *prefix ? " in " : "",
                prefix);
  }
}

/* ---------------------------------------------------------------- loading */

static void cfg_defaults(zoo_config *c) {
  c->vocab_size = 8192;
  c->input_seq_len = 64;
  c->batch_size = 32;
  c->num_train_examples = 100000;
  c->num_test_examples = 3000;
  c->data_seed = 42;
  c->num_kv_pairs = 4;
  c->train_power_a = 0.01;
  c->test_power_a = 0.01;
  c->random_non_queries = 1;
  c->model_file = NULL;
  c->mixer = NULL;
  c->d_model = 128;
  c->num_heads = 1;
  c->n_layers = 2;
  c->max_position_embeddings = 64;
  c->model_vocab_size = 8192;
  c->defines = NULL;
  c->define_at = NULL;
  c->ndefines = 0;
  c->max_epochs = 100;
  c->learning_rate = 1e-3;
  c->weight_decay = 0.1;
  c->seed = 123;
  c->gradient_accumulation_steps = 1;
  c->early_stopping = 1;
  c->early_stopping_threshold = 0.99;
  c->run_id = "default";
  c->precision = "fp32";
  c->tags = NULL;
  c->ntags = 0;
}

static int cfg_load_source(zoo_config *c, zoo_source *src, zoo_diag *d) {
  memset(c, 0, sizeof *c);
  zoo_arena_init(&c->arena);
  c->sources[c->nsources++] = src;
  c->path = src->path;
  int before = d->nerrors;
  c->root = cfg_parse(&c->arena, src, src->text, src->len, 0, d);
  if (!c->root || d->nerrors > before) return -1;
  if (c->root->kind != ZOO_YAML_MAP) {
    zoo_error(d, c->root->span, "a config is a mapping of settings (data:, model:, ...)");
    return -1;
  }
  return 0;
}

int zoo_config_load(zoo_config *c, const char *path, zoo_diag *d) {
  zoo_source *src = zoo_source_read(path, d, zoo_nospan);
  if (!src) {
    memset(c, 0, sizeof *c);
    return -1;
  }
  return cfg_load_source(c, src, d);
}

int zoo_config_load_string(zoo_config *c, const char *path, const char *text, zoo_diag *d) {
  return cfg_load_source(c, zoo_source_from_string(path, text), d);
}

int zoo_config_known_key(const char *key) {
  return cfg_field_of(key) || cfg_is_section(key) ||
         (!strncmp(key, "model.params.", 13) && key[13]);
}

int zoo_config_override(zoo_config *c, const char *flag, zoo_diag *d) {
  if (c->nsources >= (int)(sizeof c->sources / sizeof *c->sources)) {
    zoo_error(d, zoo_nospan, "too many command-line overrides");
    return -1;
  }
  zoo_source *src = zoo_source_from_string("<command line>", flag);
  c->sources[c->nsources++] = src;
  const char *text = src->text;
  int start = !strncmp(text, "--", 2) ? 2 : 0;
  const char *eq = strchr(text, '=');
  int keylen = eq ? (int)(eq - text) - start : (int)strlen(text) - start;
  zoo_span key_span = {src, 1, 1, 1, start + keylen + 1};
  if (!eq || keylen == 0) {
    zoo_error(d, key_span, "an override is --key=value (e.g. --model.d_model=64)");
    return -1;
  }
  char *key = zoo_arena_strndup(&c->arena, text + start, (size_t)keylen);
  int known = cfg_field_of(key) || !strncmp(key, "model.params.", 13);
  if (!known) {
    const char *dot = strrchr(key, '.');
    char section[256], buf[64];
    snprintf(section, sizeof section, "%.*s", dot ? (int)(dot - key) : 0, key);
    const char *hint = cfg_suggest(section, dot ? dot + 1 : key, buf, sizeof buf);
    if (cfg_is_section(key))
      zoo_error(d, key_span, "--%s is a section, not a key; override one of its keys "
                             "(--%s.KEY=VALUE): %s",
                key, key, cfg_section_keys(&c->arena, key));
    else if (hint)
      zoo_error(d, key_span, "unknown option --%s (did you mean --%s%s%s?)", key, section,
                *section ? "." : "", hint);
    else
      zoo_error(d, key_span, "unknown option --%s", key);
    return -1;
  }
  int vstart = (int)(eq - text) + 1;
  const char *vtext = eq + 1 + strspn(eq + 1, " \t");
  /* "---" and "..." start and end a YAML document: as a value they would read
   * as nothing, or fail as YAML */
  if ((!strncmp(vtext, "---", 3) || !strncmp(vtext, "...", 3)) &&
      (!vtext[3] || isspace((unsigned char)vtext[3]))) {
    zoo_span at = {src, 1, (int)(vtext - text) + 1, 1, (int)strlen(text) + 1};
    zoo_error(d, at, "--%s: '%.3s' marks a YAML document's %s, not a value; for the text, "
                     "quote it: --%s='\"%s\"'",
              key, vtext, vtext[0] == '-' ? "start" : "end", key, vtext);
    return -1;
  }
  int before = d->nerrors;
  zoo_yaml *value = cfg_parse(&c->arena, src, eq + 1, strlen(eq + 1), vstart, d);
  if (!value || d->nerrors > before) return -1;
  /* "--key=", "--key= " or "--key=# x": no document at all, which is null (not the
   * empty mapping cfg_parse makes of an empty file) */
  if (value->kind == ZOO_YAML_MAP && value->n == 0 && (!*vtext || *vtext == '#')) {
    value->kind = ZOO_YAML_SCALAR;
    value->text = "";
  }
  value->span.col = vstart + 1;
  value->span.end_col = (int)strlen(text) + 1;
  if (value->span.end_col <= value->span.col) value->span.end_col = value->span.col + 1;
  const zoo_yaml *blocker = NULL;
  if (cfg_set(&c->arena, c->root, key, value, key_span, &blocker)) {
    zoo_error(d, key_span, "cannot set --%s: the config has a value there that is not a mapping",
              key);
    return -1;
  }
  return 0;
}

/* ---------------------------------------------------------------- checks */

/* "<the binary's folder>/../rel" (bin/zoorun -> models/...), or NULL. */
static const char *cfg_beside_binary(zoo_arena *a, const char *rel) {
  char exe[1024];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) return NULL;
  exe[n] = 0;
  char *slash = strrchr(exe, '/');
  if (!slash) return NULL;
  *slash = 0;
  return zoo_arena_printf(a, "%s/../%s", exe, rel);
}

static int cfg_by_name(const void *x, const void *y) {
  return strcmp(*(const char *const *)x, *(const char *const *)y);
}

/* The sequence mixers zoo has, "attention, based, ...": the models/<name>.zoo
 * files of the working directory, else of the folder beside the binary. */
static const char *cfg_mixer_names(zoo_arena *a) {
  const char *dirs[2] = {"models", cfg_beside_binary(a, "models")};
  for (int k = 0; k < 2; k++) {
    DIR *dir = dirs[k] ? opendir(dirs[k]) : NULL;
    if (!dir) continue;
    const char *names[64];
    int n = 0;
    for (struct dirent *e; (e = readdir(dir)) && n < 64;) {
      size_t len = strlen(e->d_name);
      if (len > 4 && !strcmp(e->d_name + len - 4, ".zoo"))
        names[n++] = zoo_arena_strndup(a, e->d_name, len - 4);
    }
    closedir(dir);
    if (!n) continue;
    qsort(names, (size_t)n, sizeof *names, cfg_by_name);
    const char *list = names[0];
    for (int i = 1; i < n; i++) list = zoo_arena_printf(a, "%s, %s", list, names[i]);
    return list;
  }
  return "attention, based, conv_attention, rebased, rwkv"; /* what zoo ships */
}

/* An error at the node of `path` (or at the file's start if the default is wrong). */
static void cfg_error_at(zoo_config *c, zoo_diag *d, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void cfg_error_at(zoo_config *c, zoo_diag *d, const char *path, const char *fmt, ...) {
  const zoo_yaml *n = cfg_find(c->root, path);
  zoo_span at = n ? n->span : (zoo_span){c->sources[0], 1, 1, 1, 1};
  if (!n) at = zoo_nospan;
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (n) zoo_error(d, at, "%s: %s", path, msg);
  else zoo_error(d, at, "%s: %s (the default; set it in %s)", path, msg, c->path);
}

/* run_id names the folder runs/<run_id> and is written into summary.json and
 * config.yaml: a plain name, no control characters, quotes or backslashes, and
 * no spaces at its ends. */
static void cfg_check_run_id(zoo_config *c, zoo_diag *d) {
  const char *id = c->run_id, *why = NULL;
  size_t len = strlen(id);
  for (const char *p = id; !why && *p; p++) {
    unsigned char ch = (unsigned char)*p;
    if (ch < 0x20 || ch == 0x7f) why = "must not hold control characters (a newline, a tab)";
    else if (ch == '"' || ch == '\'' || ch == '\\') why = "must not hold quotes or backslashes";
  }
  if (!why && strspn(id, " ") == len) why = len ? "must not be blank" : "must not be empty";
  if (!why && (id[0] == ' ' || id[len - 1] == ' ')) why = "must not start or end with a space";
  if (!why && (strchr(id, '/') || !strcmp(id, "..") || !strcmp(id, ".")))
    why = "must be a plain name";
  if (why) cfg_error_at(c, d, "run_id", "%s (it names the folder runs/<run_id>)", why);
}

static void cfg_checks(zoo_config *c, zoo_diag *d) {
  if (c->input_seq_len < 4 || c->input_seq_len % 2)
    cfg_error_at(c, d, "data.input_seq_len", "must be even and at least 4 (got %d)",
                 c->input_seq_len);
  if (c->batch_size < 1) cfg_error_at(c, d, "data.batch_size", "must be at least 1");
  if (c->vocab_size <= c->input_seq_len)
    cfg_error_at(c, d, "data.vocab_size", "must be larger than input_seq_len (%d)",
                 c->input_seq_len);
  if (c->num_train_examples < 1)
    cfg_error_at(c, d, "data.num_train_examples", "must be at least 1");
  if (c->num_test_examples < 1) cfg_error_at(c, d, "data.num_test_examples", "must be at least 1");
  /* a batch is distinct training examples (a slice of a shuffle of all of them) */
  if (c->num_train_examples >= 1 && c->batch_size > c->num_train_examples)
    cfg_error_at(c, d, "data.batch_size", "must be at most data.num_train_examples (%lld)",
                 (long long)c->num_train_examples);
  if (!(c->train_power_a > 0 && c->train_power_a <= 1))
    cfg_error_at(c, d, "data.builder.kwargs.train_power_a", "must be in (0, 1]");
  if (!(c->test_power_a > 0 && c->test_power_a <= 1))
    cfg_error_at(c, d, "data.builder.kwargs.test_power_a", "must be in (0, 1]");
  if (c->max_epochs < 1) cfg_error_at(c, d, "max_epochs", "must be at least 1");
  /* AdamW takes the rate as a float: 1e-50 would be 0 there, 1e39 infinite */
  if (!(c->learning_rate > 0)) cfg_error_at(c, d, "learning_rate", "must be positive");
  else if (c->learning_rate < FLT_MIN || c->learning_rate > FLT_MAX)
    cfg_error_at(c, d, "learning_rate", "%g is too %s: the optimiser computes in float, "
                 "whose %s normal value is %g", c->learning_rate,
                 c->learning_rate < FLT_MIN ? "small" : "large",
                 c->learning_rate < FLT_MIN ? "smallest" : "largest",
                 c->learning_rate < FLT_MIN ? (double)FLT_MIN : (double)FLT_MAX);
  if (c->early_stopping_threshold < 0) /* above 1: never stops, and allowed */
    cfg_error_at(c, d, "early_stopping_threshold",
                 "must not be negative: it is the validation accuracy that stops the run "
                 "(above 1: never)");
  if (c->weight_decay < 0) cfg_error_at(c, d, "weight_decay", "must not be negative");
  if (c->gradient_accumulation_steps < 1)
    cfg_error_at(c, d, "gradient_accumulation_steps", "must be at least 1");
  if (c->d_model < 1) cfg_error_at(c, d, "model.d_model", "must be at least 1");
  if (!cfg_find(c->root, "model.file") && c->model_vocab_size < c->vocab_size) /* reference form */
    cfg_error_at(c, d, "model.vocab_size", "must hold the data's %d tokens (got %d)",
                 c->vocab_size, c->model_vocab_size);
  if (strcmp(c->precision, "fp32") && strcmp(c->precision, "tf32") && strcmp(c->precision, "bf16"))
    cfg_error_at(c, d, "precision", "must be fp32, tf32 or bf16 (got '%s')", c->precision);
  cfg_check_run_id(c, d);

  const zoo_yaml *metric = cfg_find(c->root, "early_stopping_metric");
  if (metric) {
    if (cfg_is_null(metric)) c->early_stopping = 0;
    else if (metric->kind == ZOO_YAML_SCALAR && strcmp(metric->text, "valid/accuracy"))
      zoo_error(d, metric->span,
                "early_stopping_metric: only 'valid/accuracy' (or null) is supported");
  }

  const zoo_yaml *file = cfg_find(c->root, "model.file");
  const zoo_yaml *mixer = cfg_find(c->root, "model.sequence_mixer.name");
  if (file && mixer) {
    zoo_error(d, file->span,
              "model.file and model.sequence_mixer.name both name a model; keep one");
    zoo_note(d, mixer->span, "the sequence mixer is named here");
  } else if (!file && !mixer) {
    zoo_span at = cfg_key_span(c->root, "model");
    if (at.src)
      zoo_error(d, at, "the config names no model: set model.sequence_mixer.name "
                       "(e.g. --model.sequence_mixer.name=rebased) or model.file");
    else
      zoo_error(d, zoo_nospan, "%s: the config names no model: set model.sequence_mixer.name "
                               "(e.g. --model.sequence_mixer.name=rebased) or model.file",
                c->path);
  } else if (mixer && mixer->kind == ZOO_YAML_SCALAR) {
    const char *name = mixer->text;
    int plain = name[0] != 0;
    for (const char *p = name; *p; p++)
      plain &= islower((unsigned char)*p) != 0 || isdigit((unsigned char)*p) != 0 || *p == '_';
    if (!plain)
      zoo_error(d, mixer->span, "model.sequence_mixer.name: '%s' is not a mixer name "
                                "(zoo has %s)",
                name, cfg_mixer_names(&c->arena));
    else
      c->model_file = zoo_arena_printf(&c->arena, "models/%s.zoo", name);
  }
  const zoo_yaml *params = cfg_find(c->root, "model.params");
  if (params && !file)
    zoo_error(d, cfg_key_span(c->root, "model.params"),
              "model.params binds the parameters of model.file; this config names no file");
  if (file && cfg_find(c->root, "model.d_model"))
    zoo_warning(d, cfg_find(c->root, "model.d_model")->span,
                "model.d_model is unused with model.file: bind the model's parameters "
                "in model.params");
}

/* The reference trainer's rewrites (configs/utils.py update_sequence_mixer),
 * applied to every config it runs; each change is printed. */
static void cfg_reference_rewrites(zoo_config *c, FILE *log) {
  if (!c->mixer) return;
  int heads = strstr(c->mixer, "attention") || strstr(c->mixer, "rwkv") ? 1 : 12;
  if (heads != c->num_heads && log)
    fprintf(log, "override: model.num_heads %d -> %d (reference trainer: %s)\n", c->num_heads,
            heads,
            heads == 1 ? "1 head for mixers named with \"attention\" or \"rwkv\""
                       : "12 heads for mixers without \"attention\"/\"rwkv\"");
  c->num_heads = heads;
  if (c->max_position_embeddings != c->input_seq_len && log)
    fprintf(log,
            "override: model.max_position_embeddings %d -> %d (reference trainer: the input "
            "sequence length)\n",
            c->max_position_embeddings, c->input_seq_len);
  c->max_position_embeddings = c->input_seq_len;
  int kv = c->input_seq_len == 128 ? 16 : c->input_seq_len / 4;
  if (kv != c->num_kv_pairs && log)
    fprintf(log,
            "override: data.builder.kwargs.num_kv_pairs %d -> %d (reference trainer: 16 at "
            "input_seq_len 128, else input_seq_len / 4)\n",
            c->num_kv_pairs, kv);
  c->num_kv_pairs = kv;
  if (c->input_seq_len >= 512 && c->batch_size > 64) {
    int max_bs = 256 / (c->input_seq_len / 512);
    if (max_bs < c->batch_size) {
      int accum = c->batch_size / max_bs;
      if (log)
        fprintf(log,
                "override: data.batch_size %d -> %d, gradient_accumulation_steps %d -> %d "
                "(reference trainer: micro-batches of 256 / (input_seq_len / 512) rows)\n",
                c->batch_size, max_bs, c->gradient_accumulation_steps, accum);
      c->batch_size = max_bs;
      c->gradient_accumulation_steps = accum;
    }
  }
}

/* Appends the define name=value, located at the config key `path` when the
 * config wrote that very value there (not one a rewrite replaced). */
static void cfg_add_define(zoo_config *c, const char *name, int value, const char *path) {
  const zoo_yaml *n = cfg_find(c->root, path);
  int64_t written;
  zoo_define_at at = {zoo_nospan, zoo_nospan};
  if (n && n->kind == ZOO_YAML_SCALAR && !cfg_parse_int(n->text, &written) && written == value)
    at = (zoo_define_at){cfg_key_span(c->root, path), n->span};
  c->define_at[c->ndefines] = at;
  c->defines[c->ndefines++] = (zoo_define){name, zoo_arena_printf(&c->arena, "%d", value)};
}

/* The model parameters the reference form binds (the shipped models' names). */
static void cfg_reference_defines(zoo_config *c) {
  c->defines = zoo_arena_alloc(&c->arena, 4 * sizeof *c->defines);
  c->define_at = zoo_arena_alloc(&c->arena, 4 * sizeof *c->define_at);
  c->ndefines = 0;
  cfg_add_define(c, "vocab_size", c->model_vocab_size, "model.vocab_size");
  cfg_add_define(c, "d_model", c->d_model, "model.d_model");
  /* max_position_embeddings is rewritten to the input length */
  cfg_add_define(c, "seq_len", c->max_position_embeddings, "data.input_seq_len");
  cfg_add_define(c, "num_heads", c->num_heads, "model.num_heads");
}

/* A sweep file (zoo_sweep_load's keys: parameters, with method, program or
 * command) given where a run config belongs: one error saying so, not one
 * "unknown key" per sweep key. */
static int cfg_sweep_file(zoo_config *c, zoo_diag *d) {
  const zoo_yaml *root = c->root;
  int first = -1;
  if (!cfg_get(root, "parameters", NULL)) return 0;
  for (int i = 0; i < root->n; i++)
    if (!strcmp(root->keys[i], "method") || !strcmp(root->keys[i], "program") ||
        !strcmp(root->keys[i], "command") || !strcmp(root->keys[i], "parameters")) {
      if (first < 0) first = i;
      if (strcmp(root->keys[i], "parameters")) {
        zoo_error(d, root->key_spans[first],
                  "this is a sweep file, not a run config: zoorun --sweep %s --dry-run", c->path);
        return 1;
      }
    }
  return 0;
}

int zoo_config_finish(zoo_config *c, zoo_diag *d, FILE *log) {
  int before = d->nerrors;
  cfg_defaults(c);
  if (cfg_sweep_file(c, d)) return -1;
  cfg_walk w = {.c = c, .d = d};
  cfg_walk_map(&w, c->root, "");
  if (d->nerrors > before) return -1;
  cfg_checks(c, d);
  if (d->nerrors > before) return -1;
  cfg_reference_rewrites(c, log);
  if (c->num_kv_pairs < 1 || 4 * c->num_kv_pairs > c->input_seq_len) {
    cfg_error_at(c, d, "data.builder.kwargs.num_kv_pairs",
                 "must be between 1 and input_seq_len / 4 = %d (got %d)", c->input_seq_len / 4,
                 c->num_kv_pairs);
    return -1;
  }
  if (c->vocab_size / 2 - 1 < c->num_kv_pairs) {
    cfg_error_at(c, d, "data.vocab_size", "has %d keys, fewer than the %d key-value pairs",
                 c->vocab_size / 2 - 1, c->num_kv_pairs);
    return -1;
  }
  int64_t micro = (c->num_train_examples + c->batch_size - 1) / c->batch_size;
  if (micro < c->gradient_accumulation_steps) {
    cfg_error_at(c, d, "gradient_accumulation_steps",
                 "an epoch of %lld examples is %lld micro-batches of %d, fewer than the %d "
                 "accumulated in an optimiser step",
                 (long long)c->num_train_examples, (long long)micro, c->batch_size,
                 c->gradient_accumulation_steps);
    return -1;
  }
  if (c->mixer) cfg_reference_defines(c);
  for (int i = 0; i < w.nnotes; i++)
    zoo_note(d, w.note_spans[i], "'%s' is accepted and ignored: %s", w.note_keys[i], w.notes[i]);
  return 0;
}

static int cfg_is_dir(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Finds the model's .zoo file: as written (relative paths from the working
 * directory), else beside the binary's folder, where c->model_file then points.
 * Returns 0, or -1 with *readable (something that is not a file is there) and
 * *why (errno). */
static int cfg_find_model(zoo_config *c, int *readable, int *why) {
  *readable = access(c->model_file, R_OK) == 0, *why = errno;
  if (*readable && !cfg_is_dir(c->model_file)) return 0;
  if (!*readable && c->model_file[0] != '/') { /* beside the binary: <bin>/../models/x.zoo */
    const char *alt = cfg_beside_binary(&c->arena, c->model_file);
    if (alt && access(alt, R_OK) == 0 && !cfg_is_dir(alt)) {
      c->model_file = alt;
      return 0;
    }
  }
  return -1;
}

int zoo_config_check_model(zoo_config *c, zoo_diag *d) {
  if (!c->model_file) return 0;
  int readable, why;
  if (!cfg_find_model(c, &readable, &why)) return 0;
  const zoo_yaml *n = cfg_find(c->root, c->mixer ? "model.sequence_mixer.name" : "model.file");
  zoo_span at = n ? n->span : zoo_nospan;
  if (c->mixer && readable)
    zoo_error(d, at, "no model for sequence mixer '%s': %s is a directory (zoo has %s)",
              c->mixer, c->model_file, cfg_mixer_names(&c->arena));
  else if (c->mixer)
    zoo_error(d, at, "no model for sequence mixer '%s': %s does not exist (zoo has %s)", c->mixer,
              c->model_file, cfg_mixer_names(&c->arena));
  else if (readable)
    zoo_error(d, at, "model.file: '%s' is a directory, not a .zoo file", c->model_file);
  else
    zoo_error(d, at, "model.file: cannot read '%s': %s", c->model_file, strerror(why));
  return -1;
}

/* A model binding's integer value: 0 and *out, or -1 (absent, or not an integer). */
static int cfg_binding_int(const zoo_program *p, const char *name, int64_t *out) {
  for (int i = 0; i < p->nbindings; i++)
    if (p->bindings[i].name && !strcmp(p->bindings[i].name, name))
      return cfg_parse_int(p->bindings[i].value, out);
  return -1;
}

int zoo_config_check_program(zoo_config *c, const zoo_program *p, zoo_diag *d) {
  static const struct {
    const char *binding, *data, *param, *shorter;
  } checks[] = {
      {"seq_len", "data.input_seq_len", "model.params.seq_len", "shorter"},
      {"vocab_size", "data.vocab_size", "model.params.vocab_size", "smaller"},
  };
  int rc = 0;
  for (int k = 0; k < 2; k++) {
    int64_t v;
    int want = k == 0 ? c->input_seq_len : c->vocab_size;
    if (cfg_binding_int(p, checks[k].binding, &v) || v >= want) continue;
    if (cfg_find(c->root, checks[k].param))
      cfg_error_at(c, d, checks[k].param, "the model's %s %lld is %s than %s %d",
                   checks[k].binding, (long long)v, checks[k].shorter, checks[k].data, want);
    else /* the model's default, or (reference form) a rewrite */
      cfg_error_at(c, d, checks[k].data, "the model's %s %lld is %s than %s %d%s%s",
                   checks[k].binding, (long long)v, checks[k].shorter, checks[k].data, want,
                   c->mixer ? "" : "; bind it in ", c->mixer ? "" : checks[k].param);
    rc = -1;
  }
  return rc;
}

/* ---------------------------------------------------------------- output */

/* A double as the shortest text that reads back the same. */
static void cfg_write_double(FILE *out, double v) {
  char buf[40];
  for (int prec = 1; prec <= 17; prec++) {
    snprintf(buf, sizeof buf, "%.*g", prec, v);
    if (strtod(buf, NULL) == v) break;
  }
  /* YAML 1.1 readers take 1e-3 as a string: write an explicit fraction */
  if (!strchr(buf, '.') && strchr(buf, 'e')) {
    char *e = strchr(buf, 'e');
    fprintf(out, "%.*s.0%s", (int)(e - buf), buf, e);
  } else {
    fputs(buf, out);
  }
}

/* The inside of a YAML double-quoted scalar. */
static void cfg_write_escaped(FILE *out, const char *s) {
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    static const char esc[] = "abtnvfr"; /* \a .. \r: 7 .. 13 */
    if (*p == '"' || *p == '\\') {
      fputc('\\', out);
      fputc(*p, out);
    } else if (*p >= 7 && *p <= 13) {
      fputc('\\', out);
      fputc(esc[*p - 7], out);
    } else if (*p < 0x20 || *p == 0x7f) {
      fprintf(out, "\\x%02x", *p);
    } else if (*p == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f) { /* U+0080 .. U+009F, NEL */
      fprintf(out, "\\x%02x", *++p);
    } else if (*p == 0xe2 && p[1] == 0x80 && (p[2] == 0xa8 || p[2] == 0xa9)) { /* LS, PS */
      fprintf(out, "\\u%04x", 0x2000 + p[2] - 0x80);
      p += 2;
    } else {
      fputc(*p, out);
    }
  }
}

/* A string as YAML that reads back the same: plain when it is a plain name that
 * YAML reads as a string, else double-quoted with every character YAML would
 * not keep as written escaped (quotes, backslashes, control characters, and the
 * line breaks NEL, LS and PS that a quoted scalar would fold). */
static void cfg_write_string(FILE *out, const char *s) {
  int plain = s[0] && isalpha((unsigned char)s[0]);
  for (const char *p = s; *p; p++)
    plain &= isalnum((unsigned char)*p) != 0 || strchr("._/-", *p) != NULL;
  int dummy;
  zoo_yaml probe = {.kind = ZOO_YAML_SCALAR, .text = s};
  if (plain && cfg_parse_bool(s, &dummy) != 0 && !cfg_is_null(&probe)) {
    fputs(s, out);
    return;
  }
  fputc('"', out);
  cfg_write_escaped(out, s);
  fputc('"', out);
}

/* A model parameter's .zoo literal (cfg_zoo_literal's text: numbers, booleans,
 * "strings" with \" and \\ escaped, [lists]) as YAML that reads back to it:
 * everything but the strings as written, the strings quoted and escaped. */
static void cfg_write_param(FILE *out, const char *v) {
  while (*v) {
    if (*v != '"') {
      fputc(*v++, out);
      continue;
    }
    size_t n = 0;
    char *text = malloc(strlen(v) + 1);
    for (v++; *v && *v != '"'; v++) {
      if (*v == '\\' && v[1]) v++;
      text[n++] = *v;
    }
    text[n] = 0;
    if (*v) v++;
    fputc('"', out); /* quoted even when plain: a number's text stays a string */
    cfg_write_escaped(out, text);
    fputc('"', out);
    free(text);
  }
}

void zoo_config_write(FILE *out, const zoo_config *c) {
  fputs("# effective configuration: ", out);
  for (const char *p = c->path; *p; p++) /* a comment ends at a line break */
    fputc((unsigned char)*p < 0x20 ? '?' : *p, out);
  fputs(" with zoorun's flags and the reference trainer's rewrites\n", out);
  fprintf(out, "data:\n  builder:\n    name: src.data.associative_recall.multiquery_ar\n");
  fprintf(out, "    kwargs:\n      num_kv_pairs: %d\n      train_power_a: ", c->num_kv_pairs);
  cfg_write_double(out, c->train_power_a);
  fprintf(out, "\n      test_power_a: ");
  cfg_write_double(out, c->test_power_a);
  fprintf(out, "\n      random_non_queries: %s\n", c->random_non_queries ? "true" : "false");
  fprintf(out, "  seed: %lld\n  num_train_examples: %lld\n  num_test_examples: %lld\n",
          (long long)c->data_seed, (long long)c->num_train_examples,
          (long long)c->num_test_examples);
  fprintf(out, "  input_seq_len: %d\n  vocab_size: %d\n  batch_size: %d\n", c->input_seq_len,
          c->vocab_size, c->batch_size);
  fprintf(out, "model:\n");
  if (c->mixer) {
    fprintf(out, "  sequence_mixer:\n    name: ");
    cfg_write_string(out, c->mixer);
    fprintf(out, "\n  state_mixer:\n    name: torch.nn.Identity\n");
    fprintf(out, "  d_model: %d\n  n_layers: %d\n  num_heads: %d\n", c->d_model, c->n_layers,
            c->num_heads);
    fprintf(out, "  max_position_embeddings: %d\n  vocab_size: %d\n", c->max_position_embeddings,
            c->model_vocab_size);
  } else {
    fprintf(out, "  file: ");
    cfg_write_string(out, c->model_file ? c->model_file : "");
    fprintf(out, "\n  params:%s\n", c->ndefines ? "" : " {}");
    for (int i = 0; i < c->ndefines; i++) {
      fputs("    ", out);
      cfg_write_string(out, c->defines[i].name);
      fputs(": ", out);
      cfg_write_param(out, c->defines[i].value);
      fputc('\n', out);
    }
  }
  fprintf(out, "max_epochs: %d\nlearning_rate: ", c->max_epochs);
  cfg_write_double(out, c->learning_rate);
  fprintf(out, "\nweight_decay: ");
  cfg_write_double(out, c->weight_decay);
  fprintf(out, "\nseed: %lld\ngradient_accumulation_steps: %d\n", (long long)c->seed,
          c->gradient_accumulation_steps);
  fprintf(out, "early_stopping_metric: %s\nearly_stopping_threshold: ",
          c->early_stopping ? "valid/accuracy" : "null");
  cfg_write_double(out, c->early_stopping_threshold);
  fprintf(out, "\nprecision: ");
  cfg_write_string(out, c->precision);
  fprintf(out, "\nrun_id: ");
  cfg_write_string(out, c->run_id);
  fprintf(out, "\ntags: [");
  for (int i = 0; i < c->ntags; i++) {
    if (i) fputs(", ", out);
    cfg_write_string(out, c->tags[i]);
  }
  fprintf(out, "]\n");
}

static uint64_t cfg_fnv(const char *s, size_t n) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001b3ULL;
  return h;
}

uint64_t zoo_config_hash(const zoo_config *c) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  zoo_config_write(f, c);
  fclose(f);
  /* skip the comment line: it names the file, which may move */
  const char *body = strchr(buf, '\n');
  body = body ? body + 1 : buf;
  uint64_t h = cfg_fnv(body, len - (size_t)(body - buf));
  free(buf);
  return h;
}

/* A .zoo literal with its numbers written one way: "1e-2", "0.010" and "1.0e-2"
 * alike (floats as the shortest text that reads back the same, with a '.' or
 * an 'e' so they stay floats); strings and everything else as written. */
static void cfg_write_literal(FILE *out, const char *s) {
  while (*s) {
    if (*s == '"') { /* a string: copied to its closing quote */
      fputc(*s++, out);
      while (*s && *s != '"') {
        if (*s == '\\' && s[1]) fputc(*s++, out);
        fputc(*s++, out);
      }
      if (*s) fputc(*s++, out);
      continue;
    }
    char *end = (char *)s;
    double v = 0;
    if (isdigit((unsigned char)*s) || *s == '-' || *s == '+' || *s == '.') v = strtod(s, &end);
    if (end == s) {
      fputc(*s++, out);
      continue;
    }
    size_t len = (size_t)(end - s);
    if (strcspn(s, ".eE") >= len) { /* an integer */
      fprintf(out, "%lld", strtoll(s, NULL, 10));
    } else {
      char buf[40];
      for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) break;
      }
      fprintf(out, "%s%s", buf, strpbrk(buf, ".e") ? "" : ".0");
    }
    s = end;
  }
}

static int cfg_define_by_name(const void *x, const void *y) {
  return strcmp((*(const zoo_define *const *)x)->name, (*(const zoo_define *const *)y)->name);
}

uint64_t zoo_config_model_hash(const zoo_config *c) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  /* what the model is, not where it lies: its file's text (its path if unreadable) */
  FILE *model = c->model_file ? fopen(c->model_file, "rb") : NULL;
  if (model) {
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, model)) > 0) fwrite(chunk, 1, n, f);
    fclose(model);
  } else {
    fprintf(f, "%s", c->model_file ? c->model_file : "");
  }
  fputc(0, f);
  const zoo_define **sorted = malloc((size_t)(c->ndefines + 1) * sizeof *sorted);
  for (int i = 0; i < c->ndefines; i++) sorted[i] = &c->defines[i];
  qsort(sorted, (size_t)c->ndefines, sizeof *sorted, cfg_define_by_name);
  for (int i = 0; i < c->ndefines; i++) {
    fprintf(f, "%s=", sorted[i]->name);
    cfg_write_literal(f, sorted[i]->value);
    fputc('\n', f);
  }
  free(sorted);
  fclose(f);
  uint64_t h = cfg_fnv(buf, len);
  free(buf);
  return h;
}

void zoo_config_free(zoo_config *c) {
  for (int i = 0; i < c->nsources; i++) zoo_source_free(c->sources[i]);
  zoo_arena_free(&c->arena);
  memset(c, 0, sizeof *c);
}

/* ---------------------------------------------------------------- sweeps */

/* A value as text that is equal for equal values: numbers by their value
 * (1e-3 and 0.001 alike; 2 and 2.0 stay apart: a model parameter's type),
 * booleans and null by their meaning, strings and lists as written. */
static void sweep_value_key(FILE *f, const zoo_yaml *n) {
  int64_t i;
  double x;
  int b;
  if (n->kind == ZOO_YAML_SCALAR && !n->quoted) {
    if (cfg_is_null(n)) return (void)fputs("n;", f);
    if (!cfg_parse_int(n->text, &i)) return (void)fprintf(f, "i%lld;", (long long)i);
    if (!cfg_parse_float(n->text, &x)) return (void)fprintf(f, "f%a;", x);
    if (!cfg_parse_bool(n->text, &b)) return (void)fprintf(f, "b%d;", b);
  }
  if (n->kind == ZOO_YAML_SCALAR) return (void)fprintf(f, "s%zu:%s;", strlen(n->text), n->text);
  fprintf(f, "%c%d(", n->kind == ZOO_YAML_SEQ ? 'l' : 'm', n->n);
  for (int k = 0; k < n->n; k++) {
    if (n->kind == ZOO_YAML_MAP) fprintf(f, "%zu:%s=", strlen(n->keys[k]), n->keys[k]);
    sweep_value_key(f, n->items[k]);
  }
  fputc(')', f);
}

typedef struct sweep_keyed {
  const char *key;
  int index;
} sweep_keyed;

static int sweep_by_key(const void *x, const void *y) {
  const sweep_keyed *a = x, *b = y;
  int k = strcmp(a->key, b->key);
  return k ? k : (a->index > b->index) - (a->index < b->index);
}

/* A value listed twice in one parameter's values is a run listed twice: an
 * error at the second, with a note at the first. Sorted, not pairwise: a
 * parameter may list many values. */
static void sweep_check_duplicates(zoo_config *c, const zoo_sweep_param *p, zoo_diag *d) {
  if (p->nvalues < 2) return;
  sweep_keyed *v = malloc((size_t)p->nvalues * sizeof *v);
  for (int i = 0; i < p->nvalues; i++) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    sweep_value_key(f, p->values[i]);
    fclose(f);
    v[i] = (sweep_keyed){zoo_arena_strdup(&c->arena, buf), i};
    free(buf);
  }
  qsort(v, (size_t)p->nvalues, sizeof *v, sweep_by_key);
  int *first = malloc((size_t)p->nvalues * sizeof *first); /* of each value; -1: itself */
  for (int i = 0, g = 0; i < p->nvalues; i++) { /* g: where i's group starts */
    if (strcmp(v[g].key, v[i].key)) g = i;
    first[v[i].index] = g == i ? -1 : v[g].index;
  }
  for (int i = 0; i < p->nvalues; i++) { /* in the file's order */
    if (first[i] < 0) continue;
    const zoo_yaml *dup = p->values[i];
    if (dup->kind == ZOO_YAML_SCALAR)
      zoo_error(d, dup->span, "%s: the value %s is listed twice (the grid would run it twice)",
                p->key, dup->text);
    else
      zoo_error(d, dup->span, "%s: this value is listed twice (the grid would run it twice)",
                p->key);
    zoo_note(d, p->values[first[i]]->span, "first listed here");
  }
  free(first);
  free(v);
}

/* sweep := program, command (list), project, method: grid, name,
 *          metric {name, goal}, parameters {key: {values: [...]} | {value: x}} */
int zoo_sweep_load(zoo_sweep *s, const char *path, zoo_diag *d) {
  memset(s, 0, sizeof *s);
  if (zoo_config_load(&s->file, path, d)) return -1;
  zoo_config *c = &s->file;
  zoo_yaml *root = c->root;
  int before = d->nerrors;
  static const char *known[] = {"program", "command", "project", "method", "name",
                                "metric", "parameters", "description", "entity"};
  for (int i = 0; i < root->n; i++) {
    int ok = 0;
    for (size_t k = 0; k < sizeof known / sizeof *known; k++) ok |= !strcmp(root->keys[i], known[k]);
    if (!ok) zoo_error(d, root->key_spans[i], "unknown key '%s' in a sweep", root->keys[i]);
  }
  zoo_yaml *method = cfg_get(root, "method", NULL);
  if (method && (method->kind != ZOO_YAML_SCALAR || strcmp(method->text, "grid")))
    zoo_error(d, method->span, "method: only 'grid' sweeps are supported");
  zoo_yaml *name = cfg_get(root, "name", NULL);
  s->name = name && name->kind == ZOO_YAML_SCALAR ? name->text : "sweep";
  zoo_yaml *command = cfg_get(root, "command", NULL);
  if (command && command->kind == ZOO_YAML_SEQ)
    for (int i = 0; i + 1 < command->n; i++)
      if (command->items[i]->kind == ZOO_YAML_SCALAR &&
          !strcmp(command->items[i]->text, "--config_path")) {
        s->base_config = command->items[i + 1]->text;
        s->base_span = command->items[i + 1]->span;
      }
  zoo_yaml *params = cfg_get(root, "parameters", NULL);
  if (!params || params->kind != ZOO_YAML_MAP) {
    zoo_error(d, params ? params->span : root->span, "a sweep needs 'parameters:', a mapping");
    return -1;
  }
  s->params = zoo_arena_alloc(&c->arena, (size_t)(params->n + 1) * sizeof *s->params);
  s->nruns = 1;
  double runs = 1; /* the count, without int64_t's overflow, for the message */
  for (int i = 0; i < params->n; i++) {
    const char *key = params->keys[i];
    zoo_yaml *spec = params->items[i];
    if (cfg_is_section(key)) {
      zoo_error(d, params->key_spans[i], "'%s' is a section, not a key; sweep one of its "
                                         "keys ('%s.KEY'): %s",
                key, key, cfg_section_keys(&c->arena, key));
      continue;
    }
    if (!cfg_field_of(key) && strncmp(key, "model.params.", 13)) {
      char buf[64], section[256];
      const char *dot = strrchr(key, '.');
      snprintf(section, sizeof section, "%.*s", dot ? (int)(dot - key) : 0, key);
      const char *hint = cfg_suggest(section, dot ? dot + 1 : key, buf, sizeof buf);
      if (hint)
        zoo_error(d, params->key_spans[i], "unknown config key '%s' (did you mean '%s%s%s'?)",
                  key, section, *section ? "." : "", hint);
      else
        zoo_error(d, params->key_spans[i], "unknown config key '%s'", key);
      continue;
    }
    zoo_sweep_param *p = &s->params[s->nparams++];
    p->key = key;
    p->key_span = params->key_spans[i];
    zoo_yaml *values = cfg_get(spec, "values", NULL), *value = cfg_get(spec, "value", NULL);
    if (spec->kind != ZOO_YAML_MAP || spec->n != 1 || (!values && !value)) {
      zoo_error(d, spec->span, "%s: expected {values: [...]} or {value: x}", key);
      continue;
    }
    if (values) {
      if (values->kind != ZOO_YAML_SEQ || values->n == 0) {
        zoo_error(d, values->span, "%s: values must be a non-empty list", key);
        continue;
      }
      p->values = values->items;
      p->nvalues = values->n;
    } else {
      p->values = zoo_arena_alloc(&c->arena, sizeof *p->values);
      p->values[0] = value;
      p->nvalues = 1;
    }
    sweep_check_duplicates(c, p, d);
    if (__builtin_mul_overflow(s->nruns, (int64_t)p->nvalues, &s->nruns)) s->nruns = INT64_MAX;
    runs *= p->nvalues;
  }
  if (runs > ZOO_SWEEP_MAX_RUNS) {
    char count[40];
    if (runs < 9e18) snprintf(count, sizeof count, "%lld", (long long)s->nruns);
    else snprintf(count, sizeof count, "%.3g", runs);
    zoo_error(d, cfg_key_span(root, "parameters"),
              "the grid has %s runs (%d parameters); zoo takes at most %d runs a sweep", count,
              s->nparams, ZOO_SWEEP_MAX_RUNS);
  }
  if (!s->base_config && d->nerrors == before)
    zoo_error(d, command ? command->span : root->span,
              "the sweep's command has no --config_path <file>: zoo needs the base config");
  return d->nerrors > before ? -1 : 0;
}

/* The base config's path: as written (from the working directory), else beside
 * the sweep file. */
static const char *sweep_base_path(const zoo_sweep *s, char *buf, size_t n) {
  if (access(s->base_config, R_OK) == 0) return s->base_config;
  const char *slash = strrchr(s->file.path, '/');
  const char *base = strrchr(s->base_config, '/');
  snprintf(buf, n, "%.*s%s", slash ? (int)(slash - s->file.path + 1) : 0, s->file.path,
           base ? base + 1 : s->base_config);
  if (access(buf, R_OK) == 0) return buf;
  return s->base_config;
}

int zoo_sweep_run_config(const zoo_sweep *s, int64_t index, zoo_config *c, zoo_diag *d) {
  char buf[1024];
  const char *base = sweep_base_path(s, buf, sizeof buf);
  if (zoo_config_load(c, base, d)) return -1;
  int64_t rest = index;
  for (int i = s->nparams - 1; i >= 0; i--) { /* the last parameter varies fastest */
    const zoo_sweep_param *p = &s->params[i];
    zoo_yaml *v = p->values[rest % p->nvalues];
    rest /= p->nvalues;
    const zoo_yaml *blocker = NULL;
    if (cfg_set(&c->arena, c->root, p->key, v, p->key_span, &blocker)) {
      zoo_error(d, p->key_span, "cannot set '%s': the base config has a value there that is "
                                "not a mapping", p->key);
      return -1;
    }
  }
  return zoo_config_finish(c, d, NULL);
}

/* The dry run's models: one compile and check for each distinct model file and
 * parameters, by a hash table of those keys. */
typedef struct sweep_model {
  char *key;         /* the file found, then name=value of each parameter */
  int64_t first_run; /* the run that compiled it */
  int failed;
} sweep_model;

typedef struct sweep_models {
  sweep_model *slots;
  size_t cap, n; /* cap a power of two, at most half full */
} sweep_models;

static sweep_model *sweep_model_slot(sweep_models *m, const char *key) {
  if (2 * (m->n + 1) > m->cap) {
    sweep_models grown = {calloc(m->cap ? 2 * m->cap : 64, sizeof *grown.slots),
                          m->cap ? 2 * m->cap : 64, 0};
    for (size_t i = 0; i < m->cap; i++)
      if (m->slots[i].key) *sweep_model_slot(&grown, m->slots[i].key) = m->slots[i], grown.n++;
    free(m->slots);
    *m = grown;
  }
  size_t i = (size_t)cfg_fnv(key, strlen(key)) & (m->cap - 1);
  while (m->slots[i].key && strcmp(m->slots[i].key, key)) i = (i + 1) & (m->cap - 1);
  return &m->slots[i];
}

/* Compiles run c's model and checks it against its data, as zoo_train does.
 * Returns 0, or -1 after reporting through d. */
static int sweep_compile_check(zoo_config *c, zoo_diag *d) {
  zoo_compile_opts co = {.path = c->model_file, .defines = c->defines, .ndefines = c->ndefines,
                         .define_at = c->define_at};
  zoo_program *p = NULL;
  int rc = zoo_compile(&co, d, &p);
  if (!rc) rc = zoo_config_check_program(c, p, d);
  zoo_program_free(p);
  return rc;
}

/* Run r's model (found): 0 if it compiles and fits the data; else -1 with
 * *first the run that first failed with this model (r itself: not reported yet).
 * Each distinct model file and parameters is compiled once. */
static int sweep_check_model(sweep_models *m, zoo_config *c, int64_t r, int64_t *first) {
  char *key = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&key, &len);
  fputs(c->model_file, f);
  for (int i = 0; i < c->ndefines; i++)
    fprintf(f, "\n%s=%s", c->defines[i].name, c->defines[i].value);
  fclose(f);
  sweep_model *slot = sweep_model_slot(m, key);
  if (!slot->key) {
    FILE *sink = fopen("/dev/null", "w");
    zoo_diag quiet;
    zoo_diag_init(&quiet, sink);
    *slot = (sweep_model){key, r, sweep_compile_check(c, &quiet) != 0};
    if (sink) fclose(sink);
    m->n++;
  } else {
    free(key);
  }
  *first = slot->first_run;
  return slot->failed ? -1 : 0;
}

int zoo_sweep_list(const zoo_sweep *s, FILE *out, zoo_diag *d) {
  char buf[1024];
  fprintf(out, "sweep %s: %lld runs (grid over %d parameters; base config %s)\n", s->name,
          (long long)s->nruns, s->nparams, sweep_base_path(s, buf, sizeof buf));
  int64_t missing = 0, failed = 0;
  sweep_models models = {0};
  const char **vals = malloc((size_t)(s->nparams + 1) * sizeof *vals);
  FILE *sink = fopen("/dev/null", "w");
  int rc = 0;
  for (int64_t r = 0; r < s->nruns; r++) {
    zoo_config c;
    zoo_diag quiet;
    zoo_diag_init(&quiet, sink);
    if (zoo_sweep_run_config(s, r, &c, &quiet)) { /* again, to report where */
      zoo_config_free(&c);
      fprintf(out, "run %lld/%lld: invalid\n", (long long)r + 1, (long long)s->nruns);
      fflush(out);
      zoo_sweep_run_config(s, r, &c, d);
      zoo_config_free(&c);
      rc = -1;
      break;
    }
    fprintf(out, "run %lld/%lld:", (long long)r + 1, (long long)s->nruns);
    int64_t rest = r;
    for (int i = s->nparams - 1; i >= 0; i--) {
      const zoo_sweep_param *p = &s->params[i];
      const zoo_yaml *v = p->values[rest % p->nvalues];
      vals[i] = v->kind == ZOO_YAML_SCALAR ? v->text : "(list)";
      rest /= p->nvalues;
    }
    for (int i = 0; i < s->nparams; i++) fprintf(out, " --%s=%s", s->params[i].key, vals[i]);
    fprintf(out, "  (run_id %s, batch %d x %d, %d kv pairs)", c.run_id, c.batch_size,
            c.gradient_accumulation_steps, c.num_kv_pairs);
    int readable, why;
    int64_t first;
    if (c.model_file && cfg_find_model(&c, &readable, &why)) { /* as zoo_train looks */
      fprintf(out, "  [no model: %s %s]\n", c.model_file,
              readable ? "is a directory" : "does not exist");
      missing++;
    } else if (c.model_file && sweep_check_model(&models, &c, r, &first)) {
      failed++;
      if (first == r) { /* the errors, located, after the line */
        fputs("  [model check failed]\n", out);
        fflush(out);
        sweep_compile_check(&c, d);
      } else {
        fprintf(out, "  [model check failed, as for run %lld]\n", (long long)first + 1);
      }
    } else {
      fputc('\n', out);
    }
    zoo_config_free(&c);
  }
  fclose(sink);
  free(vals);
  for (size_t i = 0; i < models.cap; i++) free(models.slots[i].key);
  free(models.slots);
  if (missing)
    fprintf(out, "%lld of %lld runs name a model zoo does not have yet\n", (long long)missing,
            (long long)s->nruns);
  if (failed) {
    fprintf(out, "%lld of %lld runs fail the model check: a run of them would stop there\n",
            (long long)failed, (long long)s->nruns);
    rc = -1;
  }
  return rc;
}

void zoo_sweep_free(zoo_sweep *s) {
  zoo_config_free(&s->file);
  memset(s, 0, sizeof *s);
}
