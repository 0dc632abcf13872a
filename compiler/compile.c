/* compile.c: the compiler driver, from a .zoo path to a shape-checked graph.
 *
 *   resolve   load the file and its imports (each parsed by zoo_parse), then
 *             check every name of every module
 *   lower     instantiate the model, name its parameters, trace forward
 *
 * Nothing is lowered once an error was reported.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "value.h"

static int is_dir(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* models/ (the folder that holds std/): as given, else ./models, else
 * ../models next to the running binary (bin/zooc -> models/). */
static const char *find_std_dir(zoo_arena *a, const char *given) {
  if (given) return given;
  if (is_dir("models/std")) return "models";
  char exe[4096];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    exe[n] = 0;
    char *slash = strrchr(exe, '/');
    if (slash) {
      *slash = 0;
      char *dir = zoo_arena_printf(a, "%s/../models", exe);
      char *std = zoo_arena_printf(a, "%s/std", dir);
      if (is_dir(std)) return dir;
    }
  }
  return "models";
}

int zoo_compile(const zoo_compile_opts *o, zoo_diag *d, zoo_program **out) {
  *out = NULL;
  zoo_program *p = calloc(1, sizeof *p);
  if (!p) abort();
  zoo_arena_init(&p->arena);
  zoo_graph_init(&p->graph);
  int before = d->nerrors;

  zoo_resolver r;
  memset(&r, 0, sizeof r);
  r.p = p;
  r.d = d;
  r.std_dir = find_std_dir(&p->arena, o->std_dir);
  zoo_unit *main = zoo_resolve_load(&r, o->path);
  if (!main) goto fail;
  p->file = main->file;
  if (o->stop_after_parse) {
    *out = p;
    return 0;
  }
  if (zoo_resolve_check(&r) > 0 || d->nerrors > before) goto fail;
  if (zoo_lower(p, main, o, d) != 0 || d->nerrors > before) goto fail;
  *out = p;
  return 0;

fail:
  zoo_program_free(p);
  return -1;
}

void zoo_program_free(zoo_program *p) {
  if (!p) return;
  zoo_graph_free(&p->graph);
  for (int i = 0; i < p->nsources; i++) zoo_source_free(p->sources[i]);
  free(p->sources);
  zoo_arena_free(&p->arena);
  free(p);
}
