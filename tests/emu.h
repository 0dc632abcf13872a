/* emu.h: runs a generated CUDA module on the CPU, for tests on machines
 * without a GPU.
 *
 * The module's source (the very text NVRTC compiles) is compiled by the host
 * C++ compiler against a small prelude that provides CUDA's built-ins: a block
 * runs as one CPU thread per CUDA thread, __syncthreads is a barrier of the
 * block's live threads, warp shuffles exchange through a per-warp buffer,
 * __shared__ variables are statics (blocks run one after another). The steps
 * run in order on host memory laid out by the same plan the CUDA backend uses;
 * GEMM steps are computed on the CPU through the same column-major mapping the
 * backend hands to cuBLASLt (zoo_cuda_gemm_colmajor).
 *
 * It checks the generated code, the planner and the argument passing, not
 * timing, memory-model subtleties or the driver calls of runtime/cuda.c.
 * Needs a C++ compiler (c++, or $CXX); emu_available says whether there is one.
 */
#ifndef ZOO_TEST_EMU_H
#define ZOO_TEST_EMU_H

#include <stddef.h>
#include <stdint.h>

#include "../compiler/codegen_cuda.h"
#include "../compiler/plan.h"

int emu_available(char *why, size_t n);

typedef struct emu_module emu_module;

/* Compiles e's module (cached by a hash of the source under
 * $TMPDIR/zoo-emu). Returns NULL with the reason in err. */
emu_module *emu_load(const zoo_cuda_emit *e, char *err, size_t n);
void emu_unload(emu_module *m);

/* Host memory for plan p: arena, parameters, gradients, inputs (zeroed). */
typedef struct emu_mem {
  unsigned char *base[5]; /* by zoo_mem */
} emu_mem;
void emu_mem_init(emu_mem *mem, const zoo_plan *p);
void emu_mem_free(emu_mem *mem);
/* Address of tensor t under p (NULL when it has no memory). */
void *emu_ptr(const emu_mem *mem, const zoo_plan *p, int t);

/* Runs steps [first, first + n) of e under plan p (whose first step is
 * `first`), dropout seeded with seed. Returns 0, or -1 with err. */
int emu_run(emu_module *m, const zoo_cuda_emit *e, const zoo_plan *p, emu_mem *mem, int first,
            int n, uint64_t seed, char *err, size_t errlen);

/* Launches a kernel of the module by name with raw argument pointers (as for
 * cuLaunchKernel). Returns 0, -1 when the module has no such kernel (or the
 * block is too large), -2 when the kernel gave mma.sync an operand that is
 * not TF32 (which the hardware would truncate). */
int emu_launch(emu_module *m, const char *name, const unsigned *grid, const unsigned *block,
               unsigned smem, void **params);

#endif
