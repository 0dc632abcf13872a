/* layernorm.cu: layernorm and layernorm_bwd over the last axis (ops.def).
 *
 * Shapes: x, y, dy, dx [N, C] (all leading axes flattened into N rows);
 * w, b, dw, db [C]. Constants: C (row width), HAS_W / HAS_B (the optional
 * affine inputs), P (blocks of the backward's first kernel), eps (a float
 * argument). Statistics in fp32: the mean, then the biased variance of the
 * row held in registers (two passes, no cancellation).
 *
 * zk_layernorm_fwd<C, HAS_W, HAS_B>(x, w, b, y, N, eps)
 *   one warp per row, any number of warps per block (the emitter uses 8 =
 *   256 threads); grid ceil(N / warps per block). Lane l holds columns
 *   l, l + 32, ... in registers (ceil(C / 32) of them). x is a loader, not a
 *   pointer: x(e) returns element e = row C + c of the input, called once per
 *   element (c < C) in its row's warp. zk_load{p} reads p[e]; a fused group
 *   (compiler/fuse.c) passes a lambda that computes the element from its own
 *   inputs and stores the values the rest of the graph needs (the prologue),
 *   so the input of the norm never has to make a round trip through memory.
 *
 * zk_layernorm_bwd_rows<C, HAS_W, P>
 *   With xh = (x - mean) rstd, g = dy w: dx = rstd (g - mean(g) - xh mean(g xh)).
 *   Grid P blocks of NW warps; warp k of block p takes rows p*NW + k,
 *   + P*NW, ... Each lane also sums dy xh and dy for its columns over its
 *   rows; the block adds its warps' sums in warp order (deterministic) and
 *   writes them to part[p][0][C] (dw) and part[p][1][C] (db).
 *   Dynamic shared memory: 2 C floats.
 * Then zk_finish_partials or zk_sum_partials<P, 2C, C> (common.cu): part
 * summed over p into dw, db.
 * Without w the op's dw, db are zeros; the emitter clears them instead.
 */
#ifndef ZK_LAYERNORM_CU
#define ZK_LAYERNORM_CU

template <int C, bool HAS_W, bool HAS_B, class LoadX>
__device__ __forceinline__ void zk_layernorm_fwd(LoadX x,
                                                 const float *__restrict__ w,
                                                 const float *__restrict__ b,
                                                 float *__restrict__ y, int N, float eps) {
  constexpr int PL = (C + 31) / 32;
  int lane = threadIdx.x & 31;
  zk_i64 row = (zk_i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= N) return; /* the whole warp leaves together */
  float v[PL];
  float sum = 0.0f;
#pragma unroll
  for (int k = 0; k < PL; k++) {
    int c = lane + 32 * k;
    v[k] = c < C ? x(row * C + c) : 0.0f;
    sum += v[k];
  }
  float mean = zk_warp_sum(sum) / (float)C;
  float sq = 0.0f;
#pragma unroll
  for (int k = 0; k < PL; k++) {
    int c = lane + 32 * k;
    float d = c < C ? v[k] - mean : 0.0f;
    sq += d * d;
  }
  float rstd = 1.0f / sqrtf(zk_warp_sum(sq) / (float)C + eps);
  float *yr = y + row * C;
#pragma unroll
  for (int k = 0; k < PL; k++) {
    int c = lane + 32 * k;
    if (c < C) {
      float o = (v[k] - mean) * rstd;
      if (HAS_W) o *= w[c];
      if (HAS_B) o += b[c];
      yr[c] = o;
    }
  }
}

template <int C, bool HAS_W, int P>
__device__ __forceinline__ void zk_layernorm_bwd_rows(const float *__restrict__ dy,
                                                      const float *__restrict__ x,
                                                      const float *__restrict__ w,
                                                      float *__restrict__ dx,
                                                      float *__restrict__ part, int N, float eps) {
  constexpr int PL = (C + 31) / 32;
  extern __shared__ float zk_ln_sh[]; /* [2][C] */
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  float pw[PL], pb[PL];
#pragma unroll
  for (int k = 0; k < PL; k++) pw[k] = pb[k] = 0.0f;

  for (zk_i64 row = (zk_i64)blockIdx.x * nw + warp; row < N; row += (zk_i64)P * nw) {
    const float *xr = x + row * C, *dyr = dy + row * C;
    float xv[PL], g[PL];
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < PL; k++) {
      int c = lane + 32 * k;
      xv[k] = c < C ? xr[c] : 0.0f;
      sum += xv[k];
    }
    float mean = zk_warp_sum(sum) / (float)C;
    float sq = 0.0f;
#pragma unroll
    for (int k = 0; k < PL; k++) {
      int c = lane + 32 * k;
      float d = c < C ? xv[k] - mean : 0.0f;
      sq += d * d;
    }
    float rstd = 1.0f / sqrtf(zk_warp_sum(sq) / (float)C + eps);
    float sg = 0.0f, sgx = 0.0f;
#pragma unroll
    for (int k = 0; k < PL; k++) {
      int c = lane + 32 * k;
      float d = c < C ? dyr[c] : 0.0f;
      float xh = (xv[k] - mean) * rstd;
      xv[k] = c < C ? xh : 0.0f; /* from here on xv holds xh */
      g[k] = HAS_W && c < C ? d * w[c] : d;
      sg += g[k];
      sgx += g[k] * xv[k];
      pw[k] += d * xv[k];
      pb[k] += d;
    }
    float mg = zk_warp_sum(sg) / (float)C, mgx = zk_warp_sum(sgx) / (float)C;
    float *dxr = dx + row * C;
#pragma unroll
    for (int k = 0; k < PL; k++) {
      int c = lane + 32 * k;
      if (c < C) dxr[c] = rstd * (g[k] - mg - xv[k] * mgx);
    }
  }

  /* block partials, added warp by warp in a fixed order */
  for (int c = threadIdx.x; c < 2 * C; c += blockDim.x) zk_ln_sh[c] = 0.0f;
  __syncthreads();
  for (int k2 = 0; k2 < nw; k2++) {
    if (warp == k2) {
#pragma unroll
      for (int k = 0; k < PL; k++) {
        int c = lane + 32 * k;
        if (c < C) {
          zk_ln_sh[c] += pw[k];
          zk_ln_sh[C + c] += pb[k];
        }
      }
    }
    __syncthreads();
  }
  for (int c = threadIdx.x; c < 2 * C; c += blockDim.x)
    part[(zk_i64)blockIdx.x * 2 * C + c] = zk_ln_sh[c];
}

#endif /* ZK_LAYERNORM_CU */
