/* rmsnorm.cu: rmsnorm and rmsnorm_bwd over the last axis (ops.def).
 *
 * Shapes: x, y, dy, dx [N, C]; w, dw [C]. Constants: C, P (blocks of the
 * backward's first kernel); eps is a float argument. fp32 statistics.
 *
 * zk_rmsnorm_fwd<C>: y = x / sqrt(mean(x^2) + eps) * w. One warp per row (the
 *   emitter uses 8 warps = 256 threads per block), grid ceil(N / 8); lane l
 *   holds columns l, l + 32, ... in registers.
 *
 * zk_rmsnorm_bwd_rows<C, P>: with r = 1 / sqrt(mean(x^2) + eps), g = dy w:
 *   dx = r g - x r^3 mean(g x). Grid P blocks of NW warps, warp k of block p
 *   takes rows p*NW + k, + P*NW, ...; lanes sum dy x r per column, the block
 *   adds its warps in order and writes part[p][C]. Dynamic shared memory: C
 *   floats. Then zk_finish_partials or zk_sum_partials<P, C, C> (common.cu): dw.
 */
#ifndef ZK_RMSNORM_CU
#define ZK_RMSNORM_CU

template <int C>
__device__ __forceinline__ void zk_rmsnorm_fwd(const float *__restrict__ x,
                                               const float *__restrict__ w,
                                               float *__restrict__ y, int N, float eps) {
  constexpr int PL = (C + 31) / 32;
  int lane = threadIdx.x & 31;
  zk_i64 row = (zk_i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= N) return;
  const float *xr = x + row * C;
  float v[PL];
  float sq = 0.0f;
#pragma unroll
  for (int k = 0; k < PL; k++) {
    int c = lane + 32 * k;
    v[k] = c < C ? xr[c] : 0.0f;
    sq += v[k] * v[k];
  }
  float r = 1.0f / sqrtf(zk_warp_sum(sq) / (float)C + eps);
  float *yr = y + row * C;
#pragma unroll
  for (int k = 0; k < PL; k++) {
    int c = lane + 32 * k;
    if (c < C) yr[c] = v[k] * r * w[c];
  }
}

template <int C, int P>
__device__ __forceinline__ void zk_rmsnorm_bwd_rows(const float *__restrict__ dy,
                                                    const float *__restrict__ x,
                                                    const float *__restrict__ w,
                                                    float *__restrict__ dx,
                                                    float *__restrict__ part, int N, float eps) {
  constexpr int PL = (C + 31) / 32;
  extern __shared__ float zk_rms_sh[]; /* [C] */
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  float pw[PL];
#pragma unroll
  for (int k = 0; k < PL; k++) pw[k] = 0.0f;

  for (zk_i64 row = (zk_i64)blockIdx.x * nw + warp; row < N; row += (zk_i64)P * nw) {
    const float *xr = x + row * C, *dyr = dy + row * C;
    float xv[PL], dv[PL];
    float sq = 0.0f, sgx = 0.0f;
#pragma unroll
    for (int k = 0; k < PL; k++) {
      int c = lane + 32 * k;
      dv[k] = c < C ? dyr[c] : 0.0f;
      xv[k] = c < C ? xr[c] : 0.0f;
      sq += xv[k] * xv[k];
      sgx += (c < C ? dv[k] * w[c] : 0.0f) * xv[k];
    }
    float r = 1.0f / sqrtf(zk_warp_sum(sq) / (float)C + eps);
    float mgx = zk_warp_sum(sgx) / (float)C;
    float *dxr = dx + row * C;
#pragma unroll
    for (int k = 0; k < PL; k++) {
      int c = lane + 32 * k;
      if (c < C) dxr[c] = r * dv[k] * w[c] - xv[k] * r * r * r * mgx;
      pw[k] += dv[k] * xv[k] * r;
    }
  }

  for (int c = threadIdx.x; c < C; c += blockDim.x) zk_rms_sh[c] = 0.0f;
  __syncthreads();
  for (int k2 = 0; k2 < nw; k2++) {
    if (warp == k2) {
#pragma unroll
      for (int k = 0; k < PL; k++) {
        int c = lane + 32 * k;
        if (c < C) zk_rms_sh[c] += pw[k];
      }
    }
    __syncthreads();
  }
  for (int c = threadIdx.x; c < C; c += blockDim.x) part[(zk_i64)blockIdx.x * C + c] = zk_rms_sh[c];
}

#endif /* ZK_RMSNORM_CU */
