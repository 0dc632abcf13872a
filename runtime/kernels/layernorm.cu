/* layernorm.cu: layernorm and layernorm_bwd over the last axis (ops.def).
 *
 * Shapes: x, y, dy, dx [N, C] (all leading axes flattened into N rows);
 * w, b, dw, db [C]. Constants: C (row width), HAS_W / HAS_B (the optional
 * affine inputs), P (blocks of the backward's first kernel), eps (a float
 * argument). Statistics in fp32: the mean, then the biased variance of the
 * row held in registers (two passes, no cancellation).
 *
 * Rows go to groups of L = zk_ln_lanes(C) lanes (8 at C = 32, the whole warp
 * from C = 128), 32 / L rows a warp; lane l of a group holds columns l, l + L,
 * ... in registers (ceil(C / L) of them), and the row's sums are over its group.
 *
 * Heads (HS, TS): with HS > 0, y (forward) and dy (backward) are in
 * split_heads' layout [.., HS, TS, C / HS] (rows run TS per batch), layernorm's
 * i0 (ops.def); zk_ln_at gives an element's place.
 *
 * zk_layernorm_fwd<C, HAS_W, HAS_B, HS, TS>(x, w, b, y, N, eps)
 *   any number of warps per block (the emitter uses 8 = 256 threads); grid
 *   ceil(N / rows per block). x is a loader, not a
 *   pointer: x(e) returns element e = row C + c of the input, called once per
 *   element (c < C) in its row's warp. zk_load{p} reads p[e]; a fused group
 *   (compiler/fuse.c) passes a lambda that computes the element from its own
 *   inputs and stores the values the rest of the graph needs (the prologue),
 *   so the input of the norm never has to make a round trip through memory.
 *
 * zk_layernorm_bwd_rows<C, HAS_W, P, HS, TS>(dy, x, w, dx, part, N, eps)
 *   With xh = (x - mean) rstd, g = dy w: dx = rstd (g - mean(g) - xh mean(g xh)),
 *   handed to dx(e, value) for element e = row C + c: zk_store{ptr}, or a
 *   fused kernel's epilogue (compiler/fuse.h). dy's element e comes from
 *   dy(e) (e in dy's own layout): zk_load{ptr}, or a fused kernel's prologue.
 *   Grid P blocks of NW warps; warp k of block p takes row groups p*NW + k,
 *   + P*NW, ... Each lane also sums dy xh and dy for its columns over its
 *   rows; the warp folds its groups, the block adds its warps' sums in warp
 *   order (deterministic) and writes them to part[p][0][C] (dw) and
 *   part[p][1][C] (db).
 *   Dynamic shared memory: 2 C floats.
 * Then zk_finish_partials or zk_sum_partials<P, 2C, C> (common.cu): part
 * summed over p into dw, db.
 *
 * zk_linear_layernorm<K, N, HAS_G, HAS_B, HS, TS, RPW>(x, w, g, b, p, y, M, eps)
 *   linear_layernorm (ops.def): p = x w^T (x [M, K], w [N, K], no bias) and
 *   y = layernorm(p) with g, b (y split into HS heads when HS > 0), in one
 *   pass: for K up to 64, the projection is too thin for a GEMM library to run
 *   well, and the norm then reads p back. w sits transposed in dynamic shared
 *   memory, wt[k][c] with rows of N + 1 floats (so both the block's fill,
 *   c fixed and k running, and the warps' reads, k fixed and c running, are
 *   free of bank conflicts): K (N + 1) floats. A warp takes RPW rows together
 *   (independent sums for the pipes); lane l holds columns l, l + 32, ...
 *   (N / 32 of them, N a multiple of 32) of each, and x's element k comes
 *   from the lane holding it by a shuffle. Grid ceil(M / (8 RPW)) blocks of
 *   256 threads.
 *
 * Without w the layernorm_bwd's dw, db are zeros; the emitter clears them instead.
 */
#ifndef ZK_LAYERNORM_CU
#define ZK_LAYERNORM_CU

/* Lanes per row: a row of C floats goes to a group of L lanes, 32 / L rows a
 * warp, about four columns a lane (a whole warp from C = 128 on). The emitter
 * sizes the grid with the same rule (ln_lanes in codegen_intrinsics.c). */
__host__ __device__ constexpr int zk_ln_lanes(int c) {
  return c <= 4 ? 1 : c <= 8 ? 2 : c <= 16 ? 4 : c <= 32 ? 8 : c <= 64 ? 16 : 32;
}

/* Sum over the L lanes of a row group (L a power of 2; at L = 32 the same
 * order as zk_warp_sum). Every lane of the warp must call it. */
template <int L>
__device__ __forceinline__ float zk_group_sum(float v) {
#pragma unroll
  for (int o = L / 2; o > 0; o >>= 1) v += __shfl_xor_sync(ZK_FULL_MASK, v, o);
  return v;
}

/* Element (row, c) of a [N, C] tensor: at row C + c, or with HS heads in
 * split_heads' layout. */
template <int C, int HS, int TS>
__device__ __forceinline__ zk_i64 zk_ln_at(zk_i64 row, int c) {
  if constexpr (HS == 0) {
    return row * C + c;
  } else {
    constexpr int F = C / HS;
    zk_i64 b = row / TS;
    int t = (int)(row - b * TS), h = c / F;
    return ((b * HS + h) * TS + t) * F + (c - h * F);
  }
}

template <int C, bool HAS_W, bool HAS_B, int HS = 0, int TS = 1, class LoadX>
__device__ __forceinline__ void zk_layernorm_fwd(LoadX x,
                                                 const float *__restrict__ w,
                                                 const float *__restrict__ b,
                                                 float *__restrict__ y, int N, float eps) {
  constexpr int L = zk_ln_lanes(C), PL = (C + L - 1) / L, RW = 32 / L;
  int lane = threadIdx.x & 31, sub = lane % L;
  zk_i64 base = ((zk_i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * RW;
  if (base >= N) return; /* the whole warp leaves together */
  zk_i64 row = base + lane / L;
  bool ok = row < N;
  float v[PL];
  float sum = 0.0f;
#pragma unroll
  for (int k = 0; k < PL; k++) {
    int c = sub + L * k;
    v[k] = ok && c < C ? x(row * C + c) : 0.0f;
    sum += v[k];
  }
  float mean = zk_group_sum<L>(sum) / (float)C;
  float sq = 0.0f;
#pragma unroll
  for (int k = 0; k < PL; k++) {
    int c = sub + L * k;
    float d = c < C ? v[k] - mean : 0.0f;
    sq += d * d;
  }
  float rstd = 1.0f / sqrtf(zk_group_sum<L>(sq) / (float)C + eps);
  if (!ok) return;
#pragma unroll
  for (int k = 0; k < PL; k++) {
    int c = sub + L * k;
    if (c < C) {
      float o = (v[k] - mean) * rstd;
      if (HAS_W) o *= w[c];
      if (HAS_B) o += b[c];
      y[zk_ln_at<C, HS, TS>(row, c)] = o;
    }
  }
}

/* Row `row`'s columns sub, sub + L, ... of x and dy into xn, dn (zeros past
 * the last row). */
template <int C, int HS, int TS, int PL, int L, class LoadDy>
__device__ __forceinline__ void zk_ln_bwd_fetch(const float *__restrict__ x, LoadDy dy, zk_i64 row, int sub, int N,
                                                float (&xn)[PL], float (&dn)[PL]) {
  bool ok = row < N;
#pragma unroll
  for (int k = 0; k < PL; k++) {
    int c = sub + L * k;
    xn[k] = ok && c < C ? x[row * C + c] : 0.0f;
    dn[k] = ok && c < C ? dy(zk_ln_at<C, HS, TS>(row, c)) : 0.0f;
  }
}

template <int C, bool HAS_W, int P, int HS = 0, int TS = 1, class LoadDy, class StoreDx>
__device__ __forceinline__ void zk_layernorm_bwd_rows(LoadDy dy, const float *__restrict__ x,
                                                      const float *__restrict__ w, StoreDx dx,
                                                      float *__restrict__ part, int N, float eps) {
  constexpr int L = zk_ln_lanes(C), PL = (C + L - 1) / L, RW = 32 / L;
  extern __shared__ float zk_ln_sh[]; /* [2][C] */
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5, sub = lane % L;
  float pw[PL], pb[PL];
#pragma unroll
  for (int k = 0; k < PL; k++) pw[k] = pb[k] = 0.0f;

  /* With several rows a warp (C <= 64), x and dy of the warp's next rows are
   * read while it works on these: the kernel waits on memory once, not once
   * a row group (rebased 32/48, C 32: 14.0 to 10.3 us under Nsight Compute's
   * clocks). A row a warp (C >= 128) streams near the memory's bandwidth
   * already, and reading ahead measured slower there (C 192: 22 to 28 us). */
  constexpr bool AHEAD = RW > 1;
  const zk_i64 STRIDE = (zk_i64)P * nw * RW;
  float xn[PL], dn[PL];
  zk_i64 first = ((zk_i64)blockIdx.x * nw + warp) * RW;
  if (AHEAD) zk_ln_bwd_fetch<C, HS, TS, PL, L, LoadDy>(x, dy, first + lane / L, sub, N, xn, dn);
  for (zk_i64 base = first; base < N; base += STRIDE) {
    zk_i64 row = base + lane / L;
    bool ok = row < N;
    if (!AHEAD) zk_ln_bwd_fetch<C, HS, TS, PL, L, LoadDy>(x, dy, row, sub, N, xn, dn);
    float xv[PL], dv[PL], g[PL];
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < PL; k++) {
      xv[k] = xn[k], dv[k] = dn[k];
      sum += xv[k];
    }
    if (AHEAD) zk_ln_bwd_fetch<C, HS, TS, PL, L, LoadDy>(x, dy, base + STRIDE + lane / L, sub, N, xn, dn);
    float mean = zk_group_sum<L>(sum) / (float)C;
    float sq = 0.0f;
#pragma unroll
    for (int k = 0; k < PL; k++) {
      int c = sub + L * k;
      float d = c < C ? xv[k] - mean : 0.0f;
      sq += d * d;
    }
    float rstd = 1.0f / sqrtf(zk_group_sum<L>(sq) / (float)C + eps);
    float sg = 0.0f, sgx = 0.0f;
#pragma unroll
    for (int k = 0; k < PL; k++) {
      int c = sub + L * k;
      float d = dv[k];
      float xh = (xv[k] - mean) * rstd;
      xv[k] = c < C ? xh : 0.0f; /* from here on xv holds xh */
      g[k] = HAS_W && c < C ? d * w[c] : d;
      sg += g[k];
      sgx += g[k] * xv[k];
      pw[k] += d * xv[k];
      pb[k] += d;
    }
    float mg = zk_group_sum<L>(sg) / (float)C, mgx = zk_group_sum<L>(sgx) / (float)C;
    /* __fmul_rn: an epilogue's add after it is never contracted into an
     * FMA, so a fused kernel rounds as the unfused pair does */
#pragma unroll
    for (int k = 0; k < PL; k++) {
      int c = sub + L * k;
      if (ok && c < C) dx(row * C + c, __fmul_rn(rstd, g[k] - mg - xv[k] * mgx));
    }
  }

  /* the warp's row groups hold the same columns: fold them into the first */
#pragma unroll
  for (int o = L; o < 32; o <<= 1)
#pragma unroll
    for (int k = 0; k < PL; k++) {
      pw[k] += __shfl_xor_sync(ZK_FULL_MASK, pw[k], o);
      pb[k] += __shfl_xor_sync(ZK_FULL_MASK, pb[k], o);
    }
  /* block partials, added warp by warp in a fixed order */
  for (int c = threadIdx.x; c < 2 * C; c += blockDim.x) zk_ln_sh[c] = 0.0f;
  __syncthreads();
  for (int k2 = 0; k2 < nw; k2++) {
    if (warp == k2 && lane < L) {
#pragma unroll
      for (int k = 0; k < PL; k++) {
        int c = sub + L * k;
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

template <int K, int N, bool HAS_G, bool HAS_B, int HS, int TS, int RPW>
__device__ __forceinline__ void zk_linear_layernorm(const float *__restrict__ x, const float *__restrict__ w,
                                                    const float *__restrict__ g, const float *__restrict__ b,
                                                    float *__restrict__ p, float *__restrict__ y, zk_i64 M,
                                                    float eps) {
  static_assert(N % 32 == 0 && K <= 64, "linear_layernorm: N a multiple of 32, K at most 64");
  constexpr int NL = N / 32, KL = (K + 31) / 32, WP = N + 1;
  extern __shared__ float zk_lln_wt[]; /* [K][N + 1] */
  for (int e = threadIdx.x; e < N * K; e += blockDim.x) {
    int c = e / K, k = e - c * K;
    zk_lln_wt[k * WP + c] = w[e];
  }
  __syncthreads();
  int lane = threadIdx.x & 31;
  zk_i64 r0 = ((zk_i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * RPW;
  if (r0 >= M) return; /* the whole warp leaves together */
  /* the warp's RPW rows at once: independent chains for the FMA pipes */
  float xr[RPW][KL], acc[RPW][NL];
#pragma unroll
  for (int r = 0; r < RPW; r++) {
    bool ok = r0 + r < M;
#pragma unroll
    for (int q = 0; q < KL; q++) xr[r][q] = ok && lane + 32 * q < K ? x[(r0 + r) * K + lane + 32 * q] : 0.0f;
#pragma unroll
    for (int j = 0; j < NL; j++) acc[r][j] = 0.0f;
  }
#pragma unroll 8
  for (int k = 0; k < K; k++) {
    float wv[NL];
#pragma unroll
    for (int j = 0; j < NL; j++) wv[j] = zk_lln_wt[k * WP + lane + 32 * j];
#pragma unroll
    for (int r = 0; r < RPW; r++) {
      float xk = __shfl_sync(ZK_FULL_MASK, xr[r][k / 32], k % 32);
#pragma unroll
      for (int j = 0; j < NL; j++) acc[r][j] += xk * wv[j];
    }
  }
#pragma unroll
  for (int r = 0; r < RPW; r++) {
    zk_i64 row = r0 + r;
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < NL; j++) sum += acc[r][j];
    float mean = zk_warp_sum(sum) / (float)N, sq = 0.0f;
#pragma unroll
    for (int j = 0; j < NL; j++) {
      float d = acc[r][j] - mean;
      sq += d * d;
    }
    float rstd = 1.0f / sqrtf(zk_warp_sum(sq) / (float)N + eps);
    if (row >= M) continue;
#pragma unroll
    for (int j = 0; j < NL; j++) {
      int c = lane + 32 * j;
      p[row * N + c] = acc[r][j];
      float o = (acc[r][j] - mean) * rstd;
      if (HAS_G) o *= g[c];
      if (HAS_B) o += b[c];
      y[zk_ln_at<N, HS, TS>(row, c)] = o;
    }
  }
}

#endif /* ZK_LAYERNORM_CU */
