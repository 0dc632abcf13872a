/* arena.c: bump allocation in growing blocks. */
#include "arena.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct zoo_arena_block {
  zoo_arena_block *next;
  size_t used, cap;
  max_align_t data[];
};

void zoo_arena_init(zoo_arena *a) { a->head = NULL; }

void zoo_arena_free(zoo_arena *a) {
  zoo_arena_block *b = a->head;
  while (b) {
    zoo_arena_block *next = b->next;
    free(b);
    b = next;
  }
  a->head = NULL;
}

void *zoo_arena_alloc(zoo_arena *a, size_t n) {
  size_t align = sizeof(max_align_t);
  n = (n + align - 1) / align * align;
  zoo_arena_block *b = a->head;
  if (!b || b->used + n > b->cap) {
    size_t cap = n > 65536 ? n : 65536;
    b = malloc(sizeof *b + cap);
    if (!b) {
      fprintf(stderr, "zoo: out of memory (arena block of %zu bytes)\n", cap);
      abort();
    }
    b->used = 0;
    b->cap = cap;
    b->next = a->head;
    a->head = b;
  }
  void *p = (char *)b->data + b->used;
  b->used += n;
  memset(p, 0, n);
  return p;
}

char *zoo_arena_strndup(zoo_arena *a, const char *s, size_t n) {
  char *p = zoo_arena_alloc(a, n + 1);
  memcpy(p, s, n);
  p[n] = 0;
  return p;
}

char *zoo_arena_strdup(zoo_arena *a, const char *s) { return zoo_arena_strndup(a, s, strlen(s)); }

char *zoo_arena_printf(zoo_arena *a, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  char *p = zoo_arena_alloc(a, (size_t)n + 1);
  va_start(ap, fmt);
  vsnprintf(p, (size_t)n + 1, fmt, ap);
  va_end(ap);
  return p;
}
