/* arena.h: one bump allocator per compilation, freed at once (zoo_arena_free). */
#ifndef ZOO_ARENA_H
#define ZOO_ARENA_H

#include <stddef.h>

typedef struct zoo_arena_block zoo_arena_block;
typedef struct zoo_arena {
  zoo_arena_block *head;
} zoo_arena;

void zoo_arena_init(zoo_arena *a);
void zoo_arena_free(zoo_arena *a);
/* Zeroed memory, aligned for any type; aborts only when the machine is out of memory. */
void *zoo_arena_alloc(zoo_arena *a, size_t n);
char *zoo_arena_strdup(zoo_arena *a, const char *s);
char *zoo_arena_strndup(zoo_arena *a, const char *s, size_t n);
char *zoo_arena_printf(zoo_arena *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
