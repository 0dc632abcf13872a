/* softmax.cu: softmax, logsumexp and argmax over the last axis (ops.def).
 *
 * Shapes: x [N, V] (leading axes flattened); softmax y [N, V], logsumexp
 * y [N], argmax y i32 [N]. Constant: V. One warp per row, 8 warps (256
 * threads) per block in the emitter, grid ceil(N / 8).
 *
 * zk_softmax_rows<V, LOG>: a first pass keeps an online (max, sum) per lane,
 *   merged over the warp: lse = max + log(sum). LOG = 0 writes exp(x - lse)
 *   (softmax), LOG = 1 writes lse (logsumexp). fp32 throughout.
 * zk_argmax_rows<V>: each lane keeps its first maximum, the warp merges pairs
 *   so that ties go to the smaller index: the row's first maximum, as the CPU.
 */
#ifndef ZK_SOFTMAX_CU
#define ZK_SOFTMAX_CU

/* (m, s) of row xr over the warp, in every lane */
template <int V>
__device__ __forceinline__ float zk_row_lse(const float *__restrict__ xr) {
  int lane = threadIdx.x & 31;
  float m = ZK_NEG_INF, s = 0.0f;
  for (int j = lane; j < V; j += 32) zk_lse_push(m, s, xr[j]);
  zk_warp_lse(m, s);
  return m + logf(s);
}

template <int V, bool LOG>
__device__ __forceinline__ void zk_softmax_rows(const float *__restrict__ x, float *__restrict__ y,
                                                int N) {
  int lane = threadIdx.x & 31;
  zk_i64 row = (zk_i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= N) return;
  const float *xr = x + row * V;
  float lse = zk_row_lse<V>(xr);
  if (LOG) {
    if (lane == 0) y[row] = lse;
  } else {
    float *yr = y + row * V;
    for (int j = lane; j < V; j += 32) yr[j] = expf(xr[j] - lse);
  }
}

/* index of the first maximum of row xr, in every lane */
template <int V>
__device__ __forceinline__ int zk_row_argmax(const float *__restrict__ xr) {
  int lane = threadIdx.x & 31;
  float best = lane < V ? xr[lane] : ZK_NEG_INF;
  int bi = lane < V ? lane : 0x7fffffff;
  for (int j = lane + 32; j < V; j += 32) {
    float v = xr[j];
    if (v > best) {
      best = v;
      bi = j;
    }
  }
  zk_warp_argmax(best, bi);
  return bi;
}

template <int V>
__device__ __forceinline__ void zk_argmax_rows(const float *__restrict__ x, int *__restrict__ y,
                                               int N) {
  zk_i64 row = (zk_i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= N) return;
  int bi = zk_row_argmax<V>(x + row * V);
  if ((threadIdx.x & 31) == 0) y[row] = bi;
}

#endif /* ZK_SOFTMAX_CU */
