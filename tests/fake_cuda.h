/* fake_cuda.h: a stand-in for the CUDA driver and cuBLASLt, for tests of
 * runtime/cuda.c on machines without a GPU.
 *
 * The fake fills cuda_api.h's tables with host implementations: device memory
 * is host memory, streams run everything at once (in order), stream capture
 * records launches, copies and GEMMs into a graph that cuGraphLaunch replays
 * (with each operation's stream, and the events it waits for: a stream joins
 * a capture by waiting for an event recorded in it, and the capture is
 * refused when such a stream's work is not joined back),
 * kernel node parameters can be replaced as cuGraphExecKernelNodeSetParams
 * does, and kernels run on the CPU emulation of the module (tests/emu.h):
 * cuModuleLoadData ignores the CUBIN and uses the emulated module the test set
 * with fake_cuda_module. cuBLASLt's matmul computes from the descriptors and
 * layouts as cuBLAS defines them (column-major), so the backend's operand
 * mapping is checked too. NVRTC stays real.
 */
#ifndef ZOO_TEST_FAKE_CUDA_H
#define ZOO_TEST_FAKE_CUDA_H

#include "../compiler/codegen_cuda.h"
#include "emu.h"

/* Installs the fake (fake_cuda_uninstall puts the real libraries back). */
void fake_cuda_install(void);
void fake_cuda_uninstall(void);

/* The emulated module cuModuleLoadData hands out, and the argument counts of
 * its kernels (from the steps of e, plus the runtime's own kernels). */
void fake_cuda_module(emu_module *m, const zoo_cuda_emit *e);

/* Counters for assertions: kernels launched (outside capture), launches
 * captured or not with programmatic dependent launch and without, graph
 * launches, live device allocations, GEMM algorithms run. cuBLASLt's heuristic
 * offers two identical configurations (all zeros) as its best fits, and, asked
 * per algorithm id (ids 5 and 9), two distinct ones of each id. */
typedef struct fake_cuda_stats {
  long kernel_launches, pdl_launches, plain_launches, graph_launches, graph_nodes_replayed, setparams;
  long allocations;
  long side_ops;   /* operations captured on a stream other than the capture's origin */
  long gemm_algos; /* distinct cuBLASLt algorithms (configurations) cublasLtMatmul ran */
} fake_cuda_stats;
fake_cuda_stats fake_cuda_counters(void);

/* The order cuGraphLaunch replays a graph in: 0 as captured; 1 the capture's
 * origin stream first whenever one of its operations is ready (the other
 * streams' as late as their waits allow); 2 the other streams first (as
 * early as they can). Every order the dependencies allow must give the same
 * results. */
void fake_cuda_replay(int order);

#endif
