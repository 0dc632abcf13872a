/* softmax.cu: softmax, logsumexp and argmax over the last axis (ops.def).
 *
 * Shapes: x [N, V] (leading axes flattened); softmax y [N, V], logsumexp
 * y [N], argmax y i32 [N]. Constant: V. One warp per row, 8 warps (256
 * threads) per block in the emitter, grid ceil(N / 8).
 *
 * zk_row_scan<V, LSE, ARG> is one pass over a row that makes its logsumexp,
 * its argmax or both (cross_entropy.cu's training step wants both at once).
 * zk_softmax_rows<V, LOG>: lse from zk_row_scan; LOG = 0 writes exp(x - lse)
 *   (softmax), LOG = 1 writes lse (logsumexp). fp32 throughout.
 * zk_argmax_rows<V>: the row's first maximum, as the CPU.
 */
#ifndef ZK_SOFTMAX_CU
#define ZK_SOFTMAX_CU

/* One pass of a warp over row xr: with LSE, lse = log(sum(exp(row))) from an
 * online (max, sum) per lane merged over the warp; with ARG, arg = the index of
 * the row's first maximum (each lane keeps its first maximum, the warp merges
 * pairs so that ties go to the smaller index, as the CPU). Both in every lane.
 * When V is a multiple of 128 (the LM head's 8192), lanes read whole float4s
 * (a lane's indices 4j .. 4j + 3 in increasing order) and fold each into
 * (max, sum) at once. */
template <int V, bool LSE, bool ARG>
__device__ __forceinline__ void zk_row_scan(const float *__restrict__ xr, float &lse, int &arg) {
  int lane = threadIdx.x & 31;
  float m = ZK_NEG_INF, s = 0.0f, best = ZK_NEG_INF;
  int bi = 0x7fffffff;
  if (V % 128 == 0) {
    const zk_f4 *x4 = (const zk_f4 *)xr;
    for (int j = lane; j < V / 4; j += 32) {
      zk_f4 v = x4[j];
      if (ARG) {
        if (v.x > best || bi == 0x7fffffff) best = v.x, bi = 4 * j;
        if (v.y > best) best = v.y, bi = 4 * j + 1;
        if (v.z > best) best = v.z, bi = 4 * j + 2;
        if (v.w > best) best = v.w, bi = 4 * j + 3;
      }
      if (LSE) {
        float mx = fmaxf(fmaxf(v.x, v.y), fmaxf(v.z, v.w));
        if (mx == ZK_NEG_INF) continue;
        if (mx > m) {
          s *= expf(m - mx);
          m = mx;
        }
        s += expf(v.x - m) + expf(v.y - m) + expf(v.z - m) + expf(v.w - m);
      }
    }
  } else {
    for (int j = lane; j < V; j += 32) {
      float v = xr[j];
      if (ARG && (v > best || bi == 0x7fffffff)) best = v, bi = j;
      if (LSE) zk_lse_push(m, s, v);
    }
  }
  if (LSE) {
    zk_warp_lse(m, s);
    lse = m + logf(s);
  }
  if (ARG) {
    zk_warp_argmax(best, bi);
    arg = bi;
  }
}

/* logsumexp of row xr over the warp, in every lane */
template <int V>
__device__ __forceinline__ float zk_row_lse(const float *__restrict__ xr) {
  float lse;
  int unused;
  zk_row_scan<V, true, false>(xr, lse, unused);
  return lse;
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
  float unused;
  int bi;
  zk_row_scan<V, false, true>(xr, unused, bi);
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
