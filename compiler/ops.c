/* ops.c: the op table, built from ops.def. */
#include <string.h>

#include "graph.h"

const zoo_op_info zoo_ops[ZOO_OP_COUNT] = {
#define X(NAME, name, cls, nin_min, nin_max, nout, flags) \
  [ZOO_OP_##NAME] = {#name, cls, nin_min, nin_max, nout, flags},
#include "ops.def"
#undef X
};

int zoo_op_lookup(const char *name) {
  for (int i = 0; i < ZOO_OP_COUNT; i++)
    if (!(zoo_ops[i].flags & ZOO_OPF_INTERNAL) && strcmp(zoo_ops[i].name, name) == 0) return i;
  return -1;
}
