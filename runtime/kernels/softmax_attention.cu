/* softmax_attention.cu: softmax attention with the reference's additive causal
 * mask and dropout on the probabilities, forward and backward (ops.def).
 * Needs runtime/rng.h (zoo_rng_uniform), pasted before it.
 *
 * Shapes: q, k, dq, dk [B, H, T, F]; v, o, do, dv [B, H, T, DV]; BH = B H.
 *   s_ij = scale q_i.k_j - 10000 [CAUSAL and j > i], P = softmax_j(s) in fp32,
 *   o_i = sum_j P_ij M_ij v_j, M_ij = keep_ij / (1 - p) with
 *   keep_ij = zoo_rng_uniform(seed, stream, ((b H + h) T + i) T + j) >= p
 *   (the CPU reference's draw indices), M = 1 without dropout.
 * Constants: F, DV, T, BR (rows a block owns: queries in fwd and bwd_q, keys in
 * bwd_kv; a multiple of 8), BS (rows of the tile it walks over: keys, resp.
 * queries; a multiple of 16), CAUSAL, DROP (p > 0 and training); scale, p,
 * seed, stream are arguments. The emitter picks BR, BS (sattn_tiles in
 * compiler/codegen_intrinsics.c) and passes the dynamic shared memory of
 * zk_sattn_smem.
 * 128 threads per block (4 warps). Launch geometry (all three kernels): grid
 * BH * ceil(T / BR); block x takes pair bh = x / ntiles and tile x % ntiles.
 *
 * Register tiles: thread t (tx = t % 16, ty = t / 16) owns the rows ty + 8 a
 * (a < BR / 8) of every product whose rows are the block's own (scores, the
 * output and gradient accumulators) and the columns tx + 16 b, so that row
 * statistics (max, sum, D) are reduced over the 16 lanes of a half warp in
 * registers and the accumulators are rescaled in place. Each product reads
 * its two operands from shared memory, one value per owned row and one per
 * owned column per step of the inner dimension, 4 steps in one 16-byte read
 * where the operand is contiguous along it (rows padded: zk_sattn_pad).
 *
 * Causal key tiles wholly above the diagonal are skipped: their terms are
 * exp(s - 10000 - max) with max >= s_ii, which is exactly 0 in fp32 (and in
 * the reference's fp64) unless scores differ by ~10^4. Inside the processed
 * tiles the -10000 is added as the reference does.
 *
 * zk_sattn_fwd: flash-style online softmax, no T x T matrix. Per key tile: the
 *   BR x BS scores in registers, running row max m and sum l (the undropped
 *   P: softmax normalises before dropout), the accumulator o rescaled by
 *   exp(m_old - m_new) and increased by (P M) V through shared memory. Also
 *   writes lse_i = m + log l [BH][T], the op's second output.
 *
 * Backward, with dP~_ij = do_i.v_j, D_i = do_i.o_i = sum_j P_ij M_ij dP~_ij:
 *   dS_ij = P_ij (M_ij dP~_ij - D_i), dq_i = scale sum_j dS_ij k_j,
 *   dk_j = scale sum_i dS_ij q_i, dv_j = sum_i P_ij M_ij do_i.
 * zk_sattn_bwd_q<..., SAVED>: per query tile, lse_i and D_i = do_i . o_i from
 *   the forward's o and lse (SAVED, as autodiff makes the node), or from the
 *   forward again (the same tiles, so the same bits), then a walk over key
 *   tiles for dq. Stores (lse_i, D_i) into scratch stats[BH][T][2].
 * zk_sattn_bwd_kv: per key tile, walks the query tiles (from the one holding
 *   its first key when causal) with q, do, lse, D of each in shared memory:
 *   the transposed scores S^T and dP~^T in registers, then dv, dk without
 *   atomics.
 *
 * Faster later: double-buffered tile loads, one backward kernel, a split of
 * long key ranges.
 */
#ifndef ZK_SOFTMAX_ATTENTION_CU
#define ZK_SOFTMAX_ATTENTION_CU

#define ZK_SATTN_NT 128

/* Row stride of a shared [rows][W] array: W + 4 when W is a multiple of 4 (rows
 * 16-byte aligned for the products' 4-wide reads; consecutive rows 4 banks
 * apart), else W + 1. */
__host__ __device__ constexpr int zk_sattn_pad(int w) { return w % 4 == 0 ? w + 4 : w + 1; }

/* Dynamic shared memory (floats) of kernel part 0 (fwd), 1 (bwd_q), 2
 * (bwd_kv); the emitter mirrors it (sattn_smem in codegen_intrinsics.c). */
template <int F, int DV, int BR, int BS>
__host__ __device__ constexpr int zk_sattn_smem(int part) {
  return (BR + BS) * zk_sattn_pad(F) + BS * zk_sattn_pad(DV) + BR * zk_sattn_pad(BS) +
         (part == 0 ? 0 : BR * zk_sattn_pad(DV)) + (part == 2 ? 2 * BS : 0);
}

/* Rows [r0, r0 + R) of a [T, W] slice (rows LD floats apart) into sh[R][WP]
 * (zeros past T); 16 bytes at a time where the rows allow it. */
template <int W, int WP, int R, int T, int LD = W>
__device__ __forceinline__ void zk_sattn_load(float *sh, const float *__restrict__ src, int r0) {
  /* up to 8 loads a thread in flight (zk_tile_copy) */
  if (W % 4 == 0 && WP % 4 == 0 && LD % 4 == 0 && ((unsigned long long)src & 15) == 0) {
    constexpr int W4 = W / 4;
    zk_tile_copy<R * W4, ZK_SATTN_NT, 8, zk_f4>(
        [&](int e) {
          int r = e / W4, c = (e - r * W4) * 4;
          return r0 + r < T ? *(const zk_f4 *)(src + (zk_i64)(r0 + r) * LD + c) : zk_f4{0.0f, 0.0f, 0.0f, 0.0f};
        },
        [&](int e, zk_f4 x) {
          int r = e / W4, c = (e - r * W4) * 4;
          *(zk_f4 *)(sh + r * WP + c) = x;
        });
    return;
  }
  zk_tile_copy<R * W, ZK_SATTN_NT, 8, float>(
      [&](int e) {
        int r = e / W, c = e - r * W;
        return r0 + r < T ? src[(zk_i64)(r0 + r) * LD + c] : 0.0f;
      },
      [&](int e, float x) {
        int r = e / W, c = e - r * W;
        sh[r * WP + c] = x;
      });
}

/* dropout factor M_ij */
template <bool DROP, int T>
__device__ __forceinline__ float zk_sattn_keep(zk_i64 bh, int i, int j, float p, float inv_keep,
                                               unsigned long long seed,
                                               unsigned long long stream) {
  if (!DROP) return 1.0f;
  unsigned long long idx = (unsigned long long)(((bh * T + i) * T) + j);
  return zoo_rng_uniform(seed, stream, idx) >= p ? inv_keep : 0.0f;
}

/* KV consecutive values p[0], p[step], ...: one 16-byte read when V. */
template <int KV, bool V>
struct zk_sattn_ldk {
  static __device__ __forceinline__ void run(float (&o)[KV], const float *p, int step) {
#pragma unroll
    for (int kk = 0; kk < KV; kk++) o[kk] = p[kk * step];
  }
};
template <>
struct zk_sattn_ldk<4, true> {
  static __device__ __forceinline__ void run(float (&o)[4], const float *p, int) {
    zk_f4 t = *(const zk_f4 *)p;
    o[0] = t.x, o[1] = t.y, o[2] = t.z, o[3] = t.w;
  }
};

/* acc[a][b] += sum_k A(ty + 8 a, k) B(col_b, k) over k < K in order, where
 * A(m, k) = A[m * AR + k * AK], B(n, k) = B[n * BN + k * BK] in shared memory
 * and col_b = min(tx + 16 b, N - 1) (columns past N are computed from the last
 * one and never stored). An operand contiguous in k with 16-byte aligned rows
 * is read 4 k at a time (A: two addresses per warp, one wavefront). */
template <int MI, int NJ, int N, int K, int AR, int AK, int BN, int BK>
__device__ __forceinline__ void zk_sattn_mm(float (&acc)[MI][NJ], const float *a, const float *b) {
  constexpr bool AV = AK == 1 && AR % 4 == 0, BV = BK == 1 && BN % 4 == 0;
  constexpr int KV = (AV || BV) && K % 4 == 0 ? 4 : 1;
  int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const float *ap = a + ty * AR;
  int bo[NJ];
#pragma unroll
  for (int j = 0; j < NJ; j++) bo[j] = (tx + 16 * j < N ? tx + 16 * j : N - 1) * BN;
  constexpr int UNROLL = KV == 4 ? 1 : 4; /* 4 steps a pass either way (more spills in bwd_q) */
#pragma unroll UNROLL
  for (int k = 0; k < K; k += KV) {
    float av[MI][KV], bv[NJ][KV];
#pragma unroll
    for (int i = 0; i < MI; i++) zk_sattn_ldk<KV, AV && KV == 4>::run(av[i], ap + i * 8 * AR + k * AK, AK);
#pragma unroll
    for (int j = 0; j < NJ; j++) zk_sattn_ldk<KV, BV && KV == 4>::run(bv[j], b + bo[j] + k * BK, BK);
#pragma unroll
    for (int kk = 0; kk < KV; kk++)
#pragma unroll
      for (int i = 0; i < MI; i++)
#pragma unroll
        for (int j = 0; j < NJ; j++) acc[i][j] += av[i][kk] * bv[j][kk];
  }
}

template <int MI, int NJ>
__device__ __forceinline__ void zk_sattn_zero(float (&acc)[MI][NJ]) {
#pragma unroll
  for (int i = 0; i < MI; i++)
#pragma unroll
    for (int j = 0; j < NJ; j++) acc[i][j] = 0.0f;
}

/* over the 16 lanes of a half warp (the threads sharing ty), in every lane */
__device__ __forceinline__ float zk_sattn_hsum(float v) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(ZK_FULL_MASK, v, o);
  return v;
}
__device__ __forceinline__ float zk_sattn_hmax(float v) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(ZK_FULL_MASK, v, o));
  return v;
}

/* Stores acc (rows r0 + ty + 8 a, columns tx + 16 b < W) times mul[a] into
 * dst[T][W] (rows LD floats apart). */
template <int MI, int NJ, int W, int T, int LD = W>
__device__ __forceinline__ void zk_sattn_store(float *__restrict__ dst, const float (&acc)[MI][NJ], int r0,
                                               const float *mul) {
  int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
#pragma unroll
  for (int i = 0; i < MI; i++) {
    int r = r0 + ty + 8 * i;
#pragma unroll
    for (int j = 0; j < NJ; j++) {
      int c = tx + 16 * j;
      if (r < T && c < W) dst[(zk_i64)r * LD + c] = acc[i][j] * mul[i];
    }
  }
}

/* Where pair bh's [T, W] slice of an operand starts: [BH][T][W] when HP = 0;
 * with HP = H > 0 (softmax_attention_packed), third `part` (0 q, 1 k, 2 v) of
 * the packed [B][T][3 H W] (N = 3: qkv, dqkv) or the merged [B][T][H W]
 * (N = 1: o, do), rows ZK_SATTN_LD(W, HP, N) floats apart. */
#define ZK_SATTN_LD(W, HP, N) ((HP) > 0 ? (N) * (HP) * (W) : (W))

template <int W, int T, int HP, int N>
__device__ __forceinline__ zk_i64 zk_sattn_slice(zk_i64 bh, int part) {
  if (HP > 0) return ((bh / HP) * T * N * HP + part * HP + bh % HP) * W;
  return bh * T * W;
}

/* One key tile (keys j0.., in ks [BS][pad F], vs [BS][pad DV]) of the online
 * softmax for the query tile in qs [BR][pad F] (queries i0..): scores, m, l,
 * acc (unnormalised o) rescaled and increased by (P M) V through ps. */
template <int F, int DV, int BR, int BS, int T, bool CAUSAL, bool DROP>
__device__ __forceinline__ void zk_sattn_fwd_tile(const float *qs, const float *ks, const float *vs, float *ps,
                                                  float (&m)[BR / 8], float (&l)[BR / 8],
                                                  float (&acc)[BR / 8][(DV + 15) / 16], zk_i64 bh, int i0,
                                                  int j0, float scale, float p, float inv_keep,
                                                  unsigned long long seed, unsigned long long stream) {
  constexpr int MI = BR / 8, NS = BS / 16, NV = (DV + 15) / 16;
  constexpr int FP = zk_sattn_pad(F), DVP = zk_sattn_pad(DV), SP = zk_sattn_pad(BS);
  int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  float s[MI][NS];
  zk_sattn_zero(s);
  zk_sattn_mm<MI, NS, BS, F, FP, 1, FP, 1>(s, qs, ks);
#pragma unroll
  for (int a = 0; a < MI; a++) {
    int r = ty + 8 * a, i = i0 + r;
    float tmax = ZK_NEG_INF;
#pragma unroll
    for (int b = 0; b < NS; b++) {
      int j = j0 + tx + 16 * b;
      float x = s[a][b] * scale;
      if (j >= T) x = ZK_NEG_INF; /* no such key */
      else if (CAUSAL && j > i) x += -10000.0f;
      s[a][b] = x;
      tmax = fmaxf(tmax, x);
    }
    float mold = m[a], mnew = fmaxf(mold, zk_sattn_hmax(tmax));
    float sum = 0.0f;
#pragma unroll
    for (int b = 0; b < NS; b++) {
      int c = tx + 16 * b, j = j0 + c;
      float e = s[a][b] == ZK_NEG_INF ? 0.0f : expf(s[a][b] - mnew);
      sum += e;
      if (DROP && i < T && j < T) e *= zk_sattn_keep<DROP, T>(bh, i, j, p, inv_keep, seed, stream);
      ps[r * SP + c] = e;
    }
    sum = zk_sattn_hsum(sum);
    float alpha = expf(mold - mnew); /* mold = -inf: 0 */
    l[a] = l[a] * alpha + sum;
    m[a] = mnew;
#pragma unroll
    for (int b = 0; b < NV; b++) acc[a][b] *= alpha;
  }
  __syncthreads();
  zk_sattn_mm<MI, NV, DV, BS, SP, 1, 1, DVP>(acc, ps, vs);
}

template <int F, int DV, int BR, int BS, int T, bool CAUSAL, bool DROP, int HP = 0>
__device__ __forceinline__ void zk_sattn_fwd(const float *__restrict__ q, const float *__restrict__ k,
                                             const float *__restrict__ v, float *__restrict__ o,
                                             float *__restrict__ lse, float scale, float p,
                                             unsigned long long seed, unsigned long long stream) {
  static_assert(BR % 8 == 0 && BS % 16 == 0, "tile rows");
  constexpr int NTILE = (T + BR - 1) / BR, MI = BR / 8, NV = (DV + 15) / 16;
  constexpr int FP = zk_sattn_pad(F), DVP = zk_sattn_pad(DV);
  extern __shared__ float zk_sattn_sh[];
  float *qs = zk_sattn_sh, *ks = qs + BR * FP, *vs = ks + BS * FP, *ps = vs + BS * DVP;
  constexpr int LQ = ZK_SATTN_LD(F, HP, 3), LV = ZK_SATTN_LD(DV, HP, 3), LO = ZK_SATTN_LD(DV, HP, 1);
  zk_i64 bh = blockIdx.x / NTILE;
  int tile = blockIdx.x % NTILE, i0 = tile * BR;
  const float *qb = q + zk_sattn_slice<F, T, HP, 3>(bh, 0), *kb = k + zk_sattn_slice<F, T, HP, 3>(bh, 1);
  const float *vb = v + zk_sattn_slice<DV, T, HP, 3>(bh, 2);
  float *ob = o + zk_sattn_slice<DV, T, HP, 1>(bh, 0);
  float inv_keep = DROP ? 1.0f / (1.0f - p) : 1.0f;

  float m[MI], l[MI], acc[MI][NV];
  zk_sattn_zero(acc);
#pragma unroll
  for (int a = 0; a < MI; a++) m[a] = ZK_NEG_INF, l[a] = 0.0f;
  zk_sattn_load<F, FP, BR, T, LQ>(qs, qb, i0);
  int kend = CAUSAL ? (i0 + BR < T ? i0 + BR : T) : T;
  for (int j0 = 0; j0 < kend; j0 += BS) {
    __syncthreads();
    zk_sattn_load<F, FP, BS, T, LQ>(ks, kb, j0);
    zk_sattn_load<DV, DVP, BS, T, LV>(vs, vb, j0);
    __syncthreads();
    zk_sattn_fwd_tile<F, DV, BR, BS, T, CAUSAL, DROP>(qs, ks, vs, ps, m, l, acc, bh, i0, j0, scale, p, inv_keep,
                                                      seed, stream);
  }
  /* o = acc / l */
  int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
#pragma unroll
  for (int a = 0; a < MI; a++) {
    int r = i0 + ty + 8 * a;
#pragma unroll
    for (int b = 0; b < NV; b++) {
      int c = tx + 16 * b;
      if (r < T && c < DV) ob[(zk_i64)r * LO + c] = acc[a][b] / l[a];
    }
    if (tx == 0 && r < T) lse[bh * T + r] = m[a] + logf(l[a]);
  }
}

template <int F, int DV, int BR, int BS, int T, bool CAUSAL, bool DROP, bool SAVED, int HP = 0>
__device__ __forceinline__ void zk_sattn_bwd_q(const float *__restrict__ dout, const float *__restrict__ q,
                                               const float *__restrict__ k, const float *__restrict__ v,
                                               const float *__restrict__ o, const float *__restrict__ lse,
                                               float *__restrict__ dq, float *__restrict__ stats, float scale,
                                               float p, unsigned long long seed, unsigned long long stream) {
  static_assert(BR % 8 == 0 && BS % 16 == 0, "tile rows");
  constexpr int NTILE = (T + BR - 1) / BR, MI = BR / 8, NS = BS / 16, NV = (DV + 15) / 16, NF = (F + 15) / 16;
  constexpr int FP = zk_sattn_pad(F), DVP = zk_sattn_pad(DV), SP = zk_sattn_pad(BS);
  extern __shared__ float zk_sattn_sh[];
  float *qs = zk_sattn_sh, *dos = qs + BR * FP, *ks = dos + BR * DVP, *vs = ks + BS * FP, *ps = vs + BS * DVP;
  constexpr int LQ = ZK_SATTN_LD(F, HP, 3), LV = ZK_SATTN_LD(DV, HP, 3), LO = ZK_SATTN_LD(DV, HP, 1);
  zk_i64 bh = blockIdx.x / NTILE;
  int tile = blockIdx.x % NTILE, i0 = tile * BR;
  const float *qb = q + zk_sattn_slice<F, T, HP, 3>(bh, 0), *kb = k + zk_sattn_slice<F, T, HP, 3>(bh, 1);
  const float *vb = v + zk_sattn_slice<DV, T, HP, 3>(bh, 2), *dob = dout + zk_sattn_slice<DV, T, HP, 1>(bh, 0);
  float inv_keep = DROP ? 1.0f / (1.0f - p) : 1.0f;
  int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  int kend = CAUSAL ? (i0 + BR < T ? i0 + BR : T) : T;

  zk_sattn_load<F, FP, BR, T, LQ>(qs, qb, i0);
  zk_sattn_load<DV, DVP, BR, T, LO>(dos, dob, i0);

  float m[MI], dd[MI];
  if constexpr (SAVED) {
    /* the forward's o and lse: D_i = do_i . o_i, m <- lse */
    const float *ob = o + zk_sattn_slice<DV, T, HP, 1>(bh, 0);
    __syncthreads();
#pragma unroll
    for (int a = 0; a < MI; a++) {
      int r = ty + 8 * a, i = i0 + r;
      float s = 0.0f;
#pragma unroll
      for (int b = 0; b < NV; b++) {
        int c = tx + 16 * b;
        if (c < DV && i < T) s += dos[r * DVP + c] * ob[(zk_i64)i * LO + c];
      }
      dd[a] = zk_sattn_hsum(s);
      m[a] = i < T ? lse[bh * T + i] : 0.0f;
    }
  } else {
    /* first walk: the forward's o (unnormalised), m and l */
    float l[MI];
    float acc[MI][NV];
    zk_sattn_zero(acc);
#pragma unroll
    for (int a = 0; a < MI; a++) m[a] = ZK_NEG_INF, l[a] = 0.0f;
    for (int j0 = 0; j0 < kend; j0 += BS) {
      __syncthreads();
      zk_sattn_load<F, FP, BS, T, LQ>(ks, kb, j0);
      zk_sattn_load<DV, DVP, BS, T, LV>(vs, vb, j0);
      __syncthreads();
      zk_sattn_fwd_tile<F, DV, BR, BS, T, CAUSAL, DROP>(qs, ks, vs, ps, m, l, acc, bh, i0, j0, scale, p,
                                                        inv_keep, seed, stream);
    }
    /* D_i = do_i . o_i, then m <- lse */
#pragma unroll
    for (int a = 0; a < MI; a++) {
      int r = ty + 8 * a;
      float s = 0.0f;
#pragma unroll
      for (int b = 0; b < NV; b++) {
        int c = tx + 16 * b;
        if (c < DV) s += dos[r * DVP + c] * (acc[a][b] / l[a]);
      }
      dd[a] = zk_sattn_hsum(s);
      m[a] = m[a] + logf(l[a]);
    }
  }

  /* second walk: dS and dq */
  float dqa[MI][NF];
  zk_sattn_zero(dqa);
  for (int j0 = 0; j0 < kend; j0 += BS) {
    __syncthreads();
    zk_sattn_load<F, FP, BS, T, LQ>(ks, kb, j0);
    zk_sattn_load<DV, DVP, BS, T, LV>(vs, vb, j0);
    __syncthreads();
    float s[MI][NS], dp[MI][NS];
    zk_sattn_zero(s);
    zk_sattn_zero(dp);
    zk_sattn_mm<MI, NS, BS, F, FP, 1, FP, 1>(s, qs, ks);
    zk_sattn_mm<MI, NS, BS, DV, DVP, 1, DVP, 1>(dp, dos, vs);
#pragma unroll
    for (int a = 0; a < MI; a++) {
      int r = ty + 8 * a, i = i0 + r;
#pragma unroll
      for (int b = 0; b < NS; b++) {
        int c = tx + 16 * b, j = j0 + c;
        float ds = 0.0f;
        if (j < T && i < T) {
          float x = s[a][b] * scale;
          if (CAUSAL && j > i) x += -10000.0f;
          float pr = expf(x - m[a]);
          float dpm = dp[a][b] * zk_sattn_keep<DROP, T>(bh, i, j, p, inv_keep, seed, stream);
          ds = pr * (dpm - dd[a]);
        }
        ps[r * SP + c] = ds;
      }
    }
    __syncthreads();
    zk_sattn_mm<MI, NF, F, BS, SP, 1, 1, FP>(dqa, ps, ks);
  }
  float sc[MI];
#pragma unroll
  for (int a = 0; a < MI; a++) sc[a] = scale;
  zk_sattn_store<MI, NF, F, T, LQ>(dq + zk_sattn_slice<F, T, HP, 3>(bh, 0), dqa, i0, sc);
  if (tx == 0) {
#pragma unroll
    for (int a = 0; a < MI; a++) {
      int i = i0 + ty + 8 * a;
      if (i < T) {
        float *st = stats + (bh * T + i) * 2;
        st[0] = m[a];
        st[1] = dd[a];
      }
    }
  }
}

template <int F, int DV, int BR, int BS, int T, bool CAUSAL, bool DROP, int HP = 0>
__device__ __forceinline__ void zk_sattn_bwd_kv(const float *__restrict__ dout, const float *__restrict__ q,
                                                const float *__restrict__ k, const float *__restrict__ v,
                                                const float *__restrict__ stats, float *__restrict__ dk,
                                                float *__restrict__ dv, float scale, float p,
                                                unsigned long long seed, unsigned long long stream) {
  static_assert(BR % 8 == 0 && BS % 16 == 0, "tile rows");
  constexpr int NTILE = (T + BR - 1) / BR, MI = BR / 8, NS = BS / 16, NV = (DV + 15) / 16, NF = (F + 15) / 16;
  constexpr int FP = zk_sattn_pad(F), DVP = zk_sattn_pad(DV), SP = zk_sattn_pad(BS);
  extern __shared__ float zk_sattn_sh[];
  float *ks = zk_sattn_sh, *vs = ks + BR * FP, *qs = vs + BR * DVP, *dos = qs + BS * FP, *pt = dos + BS * DVP;
  float *lse = pt + BR * SP, *drow = lse + BS;
  constexpr int LQ = ZK_SATTN_LD(F, HP, 3), LV = ZK_SATTN_LD(DV, HP, 3), LO = ZK_SATTN_LD(DV, HP, 1);
  zk_i64 bh = blockIdx.x / NTILE;
  int tile = blockIdx.x % NTILE, j0 = tile * BR;
  const float *qb = q + zk_sattn_slice<F, T, HP, 3>(bh, 0), *kb = k + zk_sattn_slice<F, T, HP, 3>(bh, 1);
  const float *vb = v + zk_sattn_slice<DV, T, HP, 3>(bh, 2);
  const float *dob = dout + zk_sattn_slice<DV, T, HP, 1>(bh, 0), *sb = stats + bh * T * 2;
  float inv_keep = DROP ? 1.0f / (1.0f - p) : 1.0f;
  int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;

  zk_sattn_load<F, FP, BR, T, LQ>(ks, kb, j0);
  zk_sattn_load<DV, DVP, BR, T, LV>(vs, vb, j0);
  float dka[MI][NF], dva[MI][NV];
  zk_sattn_zero(dka);
  zk_sattn_zero(dva);

  for (int i0 = CAUSAL ? j0 / BS * BS : 0; i0 < T; i0 += BS) {
    __syncthreads();
    zk_sattn_load<F, FP, BS, T, LQ>(qs, qb, i0);
    zk_sattn_load<DV, DVP, BS, T, LO>(dos, dob, i0);
    for (int e = threadIdx.x; e < BS; e += ZK_SATTN_NT) {
      int i = i0 + e;
      lse[e] = i < T ? sb[(zk_i64)i * 2] : 0.0f;
      drow[e] = i < T ? sb[(zk_i64)i * 2 + 1] : 0.0f;
    }
    __syncthreads();
    /* transposed: row = key (ty + 8 a), column = query (tx + 16 b) */
    float s[MI][NS], dp[MI][NS];
    zk_sattn_zero(s);
    zk_sattn_zero(dp);
    zk_sattn_mm<MI, NS, BS, F, FP, 1, FP, 1>(s, ks, qs);
    zk_sattn_mm<MI, NS, BS, DV, DVP, 1, DVP, 1>(dp, vs, dos);
#pragma unroll
    for (int a = 0; a < MI; a++) {
      int r = ty + 8 * a, j = j0 + r;
#pragma unroll
      for (int b = 0; b < NS; b++) {
        int c = tx + 16 * b, i = i0 + c;
        float pm = 0.0f, ds = 0.0f;
        if (j < T && i < T) {
          float x = s[a][b] * scale;
          if (CAUSAL && j > i) x += -10000.0f;
          float pr = expf(x - lse[c]);
          float mk = zk_sattn_keep<DROP, T>(bh, i, j, p, inv_keep, seed, stream);
          pm = pr * mk;
          ds = pr * (dp[a][b] * mk - drow[c]);
        }
        pt[r * SP + c] = pm;
        dp[a][b] = ds;
      }
    }
    __syncthreads();
    zk_sattn_mm<MI, NV, DV, BS, SP, 1, 1, DVP>(dva, pt, dos); /* dv_j += sum_i (P M)_ij do_i */
    __syncthreads();
#pragma unroll
    for (int a = 0; a < MI; a++)
#pragma unroll
      for (int b = 0; b < NS; b++) pt[(ty + 8 * a) * SP + tx + 16 * b] = dp[a][b];
    __syncthreads();
    zk_sattn_mm<MI, NF, F, BS, SP, 1, 1, FP>(dka, pt, qs); /* dk_j += sum_i dS_ij q_i */
  }
  float one[MI], sc[MI];
#pragma unroll
  for (int a = 0; a < MI; a++) one[a] = 1.0f, sc[a] = scale;
  zk_sattn_store<MI, NV, DV, T, LV>(dv + zk_sattn_slice<DV, T, HP, 3>(bh, 2), dva, j0, one);
  zk_sattn_store<MI, NF, F, T, LQ>(dk + zk_sattn_slice<F, T, HP, 3>(bh, 1), dka, j0, sc);
}

#endif /* ZK_SOFTMAX_ATTENTION_CU */
