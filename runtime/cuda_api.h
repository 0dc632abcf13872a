/* cuda_api.h: the CUDA driver, NVRTC and cuBLASLt, opened at run time.
 *
 * zoo never links against CUDA: libcuda.so.1, libnvrtc and libcublasLt are
 * dlopen()ed on first use, so one binary runs on machines with and without a GPU.
 * The toolkit headers are included for their types and prototypes only; every
 * entry point becomes a function pointer in one of three tables, declared with
 * the header's own prototype (__typeof__), so a call through the table is checked
 * by the compiler exactly as a linked call would be.
 *
 * Every call goes through a check macro that, on failure, writes
 *
 *     cuMemAlloc(&p, bytes) failed at runtime/cuda.c:123: CUDA_ERROR_OUT_OF_MEMORY: out of memory
 *
 * into an error buffer and returns -1 from the calling function, so errors travel
 * up to whoever can report them; nothing here exits.
 */
#ifndef ZOO_CUDA_API_H
#define ZOO_CUDA_API_H

#include <stddef.h>

#include <cublasLt.h>
#include <cuda.h>
#include <nvrtc.h>

/* Names of the entry points, each expanded through the headers' own #defines
 * (cuMemAlloc is cuMemAlloc_v2, cuGraphInstantiate is
 * cuGraphInstantiateWithFlags, ...), so the table member and the symbol looked up
 * are the versioned ones the header's prototype describes. */
#define ZOO_CU_FUNCS(X)                                                                \
  X(cuInit) X(cuDriverGetVersion) X(cuGetErrorName) X(cuGetErrorString)                \
  X(cuDeviceGet) X(cuDeviceGetCount) X(cuDeviceGetAttribute) X(cuDeviceGetName)        \
  X(cuDevicePrimaryCtxRetain) X(cuDevicePrimaryCtxRelease) X(cuCtxSetCurrent)          \
  X(cuCtxSynchronize) X(cuModuleLoadData) X(cuModuleUnload) X(cuModuleGetFunction)     \
  X(cuFuncSetAttribute) X(cuLaunchKernel) X(cuLaunchKernelEx) X(cuMemAlloc)          \
  X(cuMemFree) X(cuMemHostAlloc)                                                       \
  X(cuMemFreeHost) X(cuMemcpyHtoD) X(cuMemcpyDtoH) X(cuMemcpyHtoDAsync)                \
  X(cuMemcpyDtoHAsync) X(cuMemcpyDtoDAsync) X(cuMemsetD8Async) X(cuMemsetD32Async)     \
  X(cuMemGetInfo) X(cuStreamCreate) X(cuStreamDestroy) X(cuStreamSynchronize)          \
  X(cuStreamBeginCapture) X(cuStreamEndCapture) X(cuStreamGetCaptureInfo)              \
  X(cuGraphInstantiate) X(cuGraphLaunch) X(cuGraphExecDestroy) X(cuGraphDestroy)       \
  X(cuGraphExecKernelNodeSetParams) X(cuGraphKernelNodeGetParams) X(cuGraphGetNodes)    \
  X(cuEventCreate)                                                                     \
  X(cuEventRecord) X(cuEventSynchronize) X(cuEventElapsedTime) X(cuEventDestroy)       \
  X(cuEventQuery) X(cuStreamWaitEvent) X(cuStreamCreateWithPriority)   \
  X(cuCtxGetStreamPriorityRange)

#define ZOO_NVRTC_FUNCS(X)                                                             \
  X(nvrtcVersion) X(nvrtcGetErrorString) X(nvrtcCreateProgram) X(nvrtcDestroyProgram)  \
  X(nvrtcCompileProgram) X(nvrtcGetProgramLogSize) X(nvrtcGetProgramLog)               \
  X(nvrtcGetCUBINSize) X(nvrtcGetCUBIN)

#define ZOO_CUBLASLT_FUNCS(X)                                                          \
  X(cublasLtCreate) X(cublasLtDestroy) X(cublasLtGetVersion) X(cublasLtGetStatusString) \
  X(cublasLtMatmulDescCreate) X(cublasLtMatmulDescDestroy)                             \
  X(cublasLtMatmulDescSetAttribute) X(cublasLtMatrixLayoutCreate)                      \
  X(cublasLtMatrixLayoutDestroy) X(cublasLtMatrixLayoutSetAttribute)                   \
  X(cublasLtMatmulPreferenceCreate) X(cublasLtMatmulPreferenceDestroy)                 \
  X(cublasLtMatmulPreferenceSetAttribute) X(cublasLtMatmulAlgoGetHeuristic)            \
  X(cublasLtMatmulAlgoGetIds) X(cublasLtMatmulAlgoInit) X(cublasLtMatmul)

#define ZOO_API_MEMBER(f) __typeof__(&f) f;

typedef struct zoo_cu_api {
  ZOO_CU_FUNCS(ZOO_API_MEMBER)
} zoo_cu_api;
typedef struct zoo_nvrtc_api {
  ZOO_NVRTC_FUNCS(ZOO_API_MEMBER)
} zoo_nvrtc_api;
typedef struct zoo_cublaslt_api {
  ZOO_CUBLASLT_FUNCS(ZOO_API_MEMBER)
} zoo_cublaslt_api;

/* The tables; valid after the matching zoo_*_load returned 0. */
extern zoo_cu_api zoo_cu;
extern zoo_nvrtc_api zoo_nvrtc;
extern zoo_cublaslt_api zoo_cublaslt;

/* Each opens its library once (later calls return the first result) and fills
 * its table. Returns 0, or -1 with the reason (paths tried, dlerror) in err.
 * zoo_cu_load also runs cuInit(0). */
int zoo_cu_load(char *err, size_t n);
int zoo_nvrtc_load(char *err, size_t n);
int zoo_cublaslt_load(char *err, size_t n);

/* Starts loading NVRTC, then cuBLASLt, on a thread of their own and returns
 * at once: their shared objects are large (about 0.4 s to read from a cold
 * disk cache), and the caller has other work meanwhile. The loads above then
 * find the result (or wait for it); their answers and messages are the same.
 * Once per process; later calls do nothing. */
void zoo_cuda_preload(void);

/* Tests only: uses these tables instead of the libraries (a fake driver,
 * tests/fake_cuda.c); NULL, NULL forgets them, so the next load opens the real
 * libraries again. */
void zoo_cuda_api_set(const zoo_cu_api *cu, const zoo_cublaslt_api *lt);

/* Formats "CALL failed at FILE:LINE: NAME: description" into err. Return -1. */
int zoo_cu_fail(CUresult r, const char *call, const char *file, int line, char *err, size_t n);
int zoo_nvrtc_fail(nvrtcResult r, const char *call, const char *file, int line, char *err,
                   size_t n);
int zoo_cublaslt_fail(cublasStatus_t r, const char *call, const char *file, int line, char *err,
                      size_t n);

/* ZOO_CU(err, cuMemAlloc(&p, n)): calls zoo_cu.cuMemAlloc(&p, n); on failure
 * fills the char array err and returns -1 from the enclosing function. */
#define ZOO_CU(err, call)                                                         \
  do {                                                                            \
    CUresult zoo_r_ = zoo_cu.call;                                                \
    if (zoo_r_ != CUDA_SUCCESS)                                                   \
      return zoo_cu_fail(zoo_r_, #call, __FILE__, __LINE__, err, sizeof(err));    \
  } while (0)
#define ZOO_NVRTC(err, call)                                                      \
  do {                                                                            \
    nvrtcResult zoo_r_ = zoo_nvrtc.call;                                          \
    if (zoo_r_ != NVRTC_SUCCESS)                                                  \
      return zoo_nvrtc_fail(zoo_r_, #call, __FILE__, __LINE__, err, sizeof(err)); \
  } while (0)
#define ZOO_CUBLASLT(err, call)                                                        \
  do {                                                                                 \
    cublasStatus_t zoo_r_ = zoo_cublaslt.call;                                         \
    if (zoo_r_ != CUBLAS_STATUS_SUCCESS)                                               \
      return zoo_cublaslt_fail(zoo_r_, #call, __FILE__, __LINE__, err, sizeof(err));   \
  } while (0)

/* The same checks for functions whose err is a pointer with a length. */
#define ZOO_CU_N(err, n, call)                                                    \
  do {                                                                            \
    CUresult zoo_r_ = zoo_cu.call;                                                \
    if (zoo_r_ != CUDA_SUCCESS) return zoo_cu_fail(zoo_r_, #call, __FILE__, __LINE__, err, n); \
  } while (0)
#define ZOO_NVRTC_N(err, n, call)                                                 \
  do {                                                                            \
    nvrtcResult zoo_r_ = zoo_nvrtc.call;                                          \
    if (zoo_r_ != NVRTC_SUCCESS)                                                  \
      return zoo_nvrtc_fail(zoo_r_, #call, __FILE__, __LINE__, err, n);           \
  } while (0)

#endif
