/* softmax_attention.cu: softmax attention with the reference's additive causal
 * mask and dropout on the probabilities, forward and backward (ops.def).
 * Needs runtime/rng.h (zoo_rng_uniform), pasted before it.
 *
 * Shapes: q, k, dq, dk [B, H, T, F]; v, o, do, dv [B, H, T, DV]; BH = B H.
 *   s_ij = scale q_i.k_j - 10000 [CAUSAL and j > i], P = softmax_j(s) in fp32,
 *   o_i = sum_j P_ij M_ij v_j, M_ij = keep_ij / (1 - p) with
 *   keep_ij = zoo_rng_uniform(seed, stream, ((b H + h) T + i) T + j) >= p
 *   (the CPU reference's draw indices), M = 1 without dropout.
 * Constants: F, DV, T, R (rows per tile: queries per block and keys per
 * shared-memory tile, at most 32, chosen by the emitter so that the backward's
 * shared memory stays under 48 KB), CAUSAL, DROP (p > 0 and training);
 * scale, p, seed, stream are arguments. 128 threads per block (4 warps).
 * Launch geometry (all three kernels): grid BH * ceil(T / R); block x takes
 * pair bh = x / ntiles and tile x % ntiles.
 *
 * Causal key tiles wholly above the diagonal are skipped: their terms are
 * exp(s - 10000 - max) with max >= s_ii, which is exactly 0 in fp32 (and in
 * the reference's fp64) unless scores differ by ~10^4. On the diagonal tile
 * the -10000 is added as the reference does.
 *
 * zk_sattn_fwd: flash-style online softmax, no T x T matrix. Per key tile: the
 *   R x R scores (dot products from shared memory, each over SPLIT = 128 / R^2
 *   lanes when the tile has fewer entries than threads, else one thread per
 *   entry), the
 *   running row max m and sum l updated by one warp per row, then the
 *   accumulator o (R x DV entries spread over the threads, in registers)
 *   rescaled by exp(m_old - m_new) and increased by (P M) V. The row sum l
 *   uses the undropped P, as softmax normalises before dropout.
 *
 * Backward, with dP~_ij = do_i.v_j, D_i = do_i.o_i = sum_j P_ij M_ij dP~_ij:
 *   dS_ij = P_ij (M_ij dP~_ij - D_i), dq_i = scale sum_j dS_ij k_j,
 *   dk_j = scale sum_i dS_ij q_i, dv_j = sum_i P_ij M_ij do_i.
 * zk_sattn_bwd_q: per query tile, the forward again (giving m, l, o, hence
 *   lse_i = m + log l and D_i), then a second walk over key tiles for dq.
 *   Stores (lse_i, D_i) into scratch stats[BH][T][2].
 * zk_sattn_bwd_kv: per key tile, walks the query tiles (from its own when
 *   causal) with q, do, lse, D of each in shared memory: dk, dv without atomics.
 *
 * Faster later: register tiles (each thread a 4x4 block of scores), tensor
 * cores (TF32 mma) for the two products, a split of long key ranges.
 */
#ifndef ZK_SOFTMAX_ATTENTION_CU
#define ZK_SOFTMAX_ATTENTION_CU

#define ZK_SATTN_NT 128

/* Rows [r0, r0 + R) of a [T, W] slice into sh[R][WP] (zeros past T). */
template <int W, int WP, int R, int T>
__device__ __forceinline__ void zk_sattn_load(float *sh, const float *__restrict__ src, int r0) {
  for (int e = threadIdx.x; e < R * W; e += ZK_SATTN_NT) {
    int r = e / W, c = e - r * W;
    sh[r * WP + c] = r0 + r < T ? src[(zk_i64)(r0 + r) * W + c] : 0.0f;
  }
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

/* Lanes per dot product: the R x R entries of a tile times SPLIT lanes cover
 * the block at least once (SPLIT a power of two, at most 32), so that small
 * tiles of wide heads still use every thread. */
template <int R>
struct zk_sattn_split {
  static constexpr int value = R * R >= ZK_SATTN_NT ? 1 : ZK_SATTN_NT / (R * R) > 32 ? 32 : ZK_SATTN_NT / (R * R);
};

/* a . b over W floats, split over the SPLIT consecutive lanes that share the
 * entry (lane part of them takes elements part, part + SPLIT, ...); the sum
 * reaches every one of those lanes. All lanes of the warp must call it. */
template <int W, int SPLIT>
__device__ __forceinline__ float zk_sattn_dot(const float *a, const float *b, int part) {
  float s = 0.0f;
#pragma unroll 4
  for (int f = part; f < W; f += SPLIT) s += a[f] * b[f];
#pragma unroll
  for (int o = SPLIT / 2; o > 0; o >>= 1) s += __shfl_xor_sync(ZK_FULL_MASK, s, o);
  return s;
}

/* Walks the R x R entries of a tile, SPLIT lanes per entry: calls
 * fn(r, c, part, valid) with every thread a warp-uniform number of times
 * (entries past R x R come with valid = 0 and r, c clamped). */
template <int R, class Fn>
__device__ __forceinline__ void zk_sattn_entries(Fn fn) {
  constexpr int SPLIT = zk_sattn_split<R>::value;
  for (int base = 0; base < R * R * SPLIT; base += ZK_SATTN_NT) {
    int e = (base + (int)threadIdx.x) / SPLIT, part = (base + (int)threadIdx.x) % SPLIT;
    int valid = e < R * R;
    if (!valid) e = 0;
    fn(e / R, e % R, part, valid);
  }
}

/* score of (query row r of the q tile, key row c of the k tile), split */
template <int F, int FP, int T, bool CAUSAL, int SPLIT>
__device__ __forceinline__ float zk_sattn_score(const float *qs, const float *ks, int r, int c,
                                                int i, int j, float scale, int part) {
  float s = zk_sattn_dot<F, SPLIT>(qs + r * FP, ks + c * FP, part) * scale;
  if (j >= T) return ZK_NEG_INF; /* no such key */
  if (CAUSAL && j > i) s += -10000.0f;
  return s;
}

/* One key tile of the forward: scores into ps, online softmax update of
 * m, l (alpha = rescale factor per row), ps <- P M (unnormalised). */
template <int F, int R, int T, bool CAUSAL, bool DROP>
__device__ __forceinline__ void zk_sattn_probs(const float *qs, const float *ks, float *ps,
                                               float *mrow, float *lrow, float *arow, zk_i64 bh,
                                               int i0, int j0, float scale, float p,
                                               float inv_keep, unsigned long long seed,
                                               unsigned long long stream) {
  constexpr int FP = F + 1, RP = R + 1, SPLIT = zk_sattn_split<R>::value;
  zk_sattn_entries<R>([&](int r, int c, int part, int valid) {
    float s = zk_sattn_score<F, FP, T, CAUSAL, SPLIT>(qs, ks, r, c, i0 + r, j0 + c, scale, part);
    if (valid && part == 0) ps[r * RP + c] = s;
  });
  __syncthreads();
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int r = warp; r < R; r += ZK_SATTN_NT / 32) {
    float x = lane < R ? ps[r * RP + lane] : ZK_NEG_INF;
    float mold = mrow[r];
    float mnew = fmaxf(mold, zk_warp_max(x));
    float e = x == ZK_NEG_INF ? 0.0f : expf(x - mnew);
    float sum = zk_warp_sum(e);
    if (lane < R) {
      int i = i0 + r, j = j0 + lane;
      if (DROP && i < T && j < T) e *= zk_sattn_keep<DROP, T>(bh, i, j, p, inv_keep, seed, stream);
      ps[r * RP + lane] = e;
    }
    if (lane == 0) {
      float alpha = expf(mold - mnew); /* mold = -inf: 0 */
      lrow[r] = lrow[r] * alpha + sum;
      mrow[r] = mnew;
      arow[r] = alpha;
    }
  }
  __syncthreads();
}

/* acc (the R x W tile spread over the threads: element e = threadIdx.x + a*NT
 * is row e / W, column e % W) <- acc * alpha[row] + P B, with P [R][R + 1] and
 * B [R][WP] in shared memory. The key loop stays a loop; the register loop is
 * unrolled (registers need constant indices). */
template <int W, int WP, int R, bool RESCALE>
__device__ __forceinline__ void zk_sattn_accum(float *acc, const float *ps, const float *b,
                                               const float *alpha) {
  constexpr int ACC = (R * W + ZK_SATTN_NT - 1) / ZK_SATTN_NT, RP = R + 1;
  if (RESCALE) {
#pragma unroll
    for (int a = 0; a < ACC; a++) {
      int e = threadIdx.x + a * ZK_SATTN_NT;
      if (e < R * W) acc[a] *= alpha[e / W];
    }
  }
#pragma unroll 1
  for (int jj = 0; jj < R; jj++) {
#pragma unroll
    for (int a = 0; a < ACC; a++) {
      int e = threadIdx.x + a * ZK_SATTN_NT;
      if (e < R * W) {
        int r = e / W, c = e - r * W;
        acc[a] += ps[r * RP + jj] * b[jj * WP + c];
      }
    }
  }
}

/* The transposed product for the key side: acc (R x W, row = key c) += P^T B,
 * i.e. acc[c][f] += sum_r P[r][c] B[r][f]. */
template <int W, int WP, int R>
__device__ __forceinline__ void zk_sattn_accum_t(float *acc, const float *ps, const float *b) {
  constexpr int ACC = (R * W + ZK_SATTN_NT - 1) / ZK_SATTN_NT, RP = R + 1;
#pragma unroll 1
  for (int r = 0; r < R; r++) {
#pragma unroll
    for (int a = 0; a < ACC; a++) {
      int e = threadIdx.x + a * ZK_SATTN_NT;
      if (e < R * W) {
        int c = e / W, f = e - c * W;
        acc[a] += ps[r * RP + c] * b[r * WP + f];
      }
    }
  }
}

template <int F, int DV, int R, int T, bool CAUSAL, bool DROP>
__device__ __forceinline__ void zk_sattn_fwd(const float *__restrict__ q,
                                             const float *__restrict__ k,
                                             const float *__restrict__ v, float *__restrict__ o,
                                             float scale, float p, unsigned long long seed,
                                             unsigned long long stream) {
  constexpr int NTILE = (T + R - 1) / R, FP = F + 1, RP = R + 1;
  constexpr int ACC = (R * DV + ZK_SATTN_NT - 1) / ZK_SATTN_NT;
  __shared__ float qs[R * FP], ks[R * FP], vs[R * DV], ps[R * RP];
  __shared__ float mrow[R], lrow[R], arow[R];
  zk_i64 bh = blockIdx.x / NTILE;
  int tile = blockIdx.x % NTILE, i0 = tile * R;
  const float *qb = q + bh * T * F, *kb = k + bh * T * F, *vb = v + bh * T * DV;
  float inv_keep = DROP ? 1.0f / (1.0f - p) : 1.0f;

  float acc[ACC];
#pragma unroll
  for (int a = 0; a < ACC; a++) acc[a] = 0.0f;
  if (threadIdx.x < R) {
    mrow[threadIdx.x] = ZK_NEG_INF;
    lrow[threadIdx.x] = 0.0f;
  }
  zk_sattn_load<F, FP, R, T>(qs, qb, i0);

  int nkt = CAUSAL ? tile + 1 : NTILE;
  for (int kt = 0; kt < nkt; kt++) {
    __syncthreads();
    zk_sattn_load<F, FP, R, T>(ks, kb, kt * R);
    zk_sattn_load<DV, DV, R, T>(vs, vb, kt * R);
    __syncthreads();
    zk_sattn_probs<F, R, T, CAUSAL, DROP>(qs, ks, ps, mrow, lrow, arow, bh, i0, kt * R, scale, p,
                                          inv_keep, seed, stream);
    zk_sattn_accum<DV, DV, R, true>(acc, ps, vs, arow);
  }
#pragma unroll
  for (int a = 0; a < ACC; a++) {
    int e = threadIdx.x + a * ZK_SATTN_NT;
    if (e < R * DV) {
      int r = e / DV, c = e - r * DV;
      if (i0 + r < T) o[(bh * T + i0 + r) * DV + c] = acc[a] / lrow[r];
    }
  }
}

template <int F, int DV, int R, int T, bool CAUSAL, bool DROP>
__device__ __forceinline__ void zk_sattn_bwd_q(const float *__restrict__ dout,
                                               const float *__restrict__ q,
                                               const float *__restrict__ k,
                                               const float *__restrict__ v,
                                               float *__restrict__ dq, float *__restrict__ stats,
                                               float scale, float p, unsigned long long seed,
                                               unsigned long long stream) {
  constexpr int NTILE = (T + R - 1) / R, FP = F + 1, DVP = DV + 1, RP = R + 1;
  constexpr int ACC = (R * DV + ZK_SATTN_NT - 1) / ZK_SATTN_NT;
  constexpr int ACCQ = (R * F + ZK_SATTN_NT - 1) / ZK_SATTN_NT;
  constexpr int SPLIT = zk_sattn_split<R>::value;
  __shared__ float qs[R * FP], ks[R * FP], vs[R * DVP], dos[R * DVP], ps[R * RP];
  __shared__ float mrow[R], lrow[R], arow[R], drow[R];
  zk_i64 bh = blockIdx.x / NTILE;
  int tile = blockIdx.x % NTILE, i0 = tile * R;
  const float *qb = q + bh * T * F, *kb = k + bh * T * F, *vb = v + bh * T * DV;
  const float *dob = dout + bh * T * DV;
  float inv_keep = DROP ? 1.0f / (1.0f - p) : 1.0f;
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int nkt = CAUSAL ? tile + 1 : NTILE;

  if (threadIdx.x < R) {
    mrow[threadIdx.x] = ZK_NEG_INF;
    lrow[threadIdx.x] = 0.0f;
  }
  zk_sattn_load<F, FP, R, T>(qs, qb, i0);
  zk_sattn_load<DV, DVP, R, T>(dos, dob, i0);

  /* first walk: the forward's o (unnormalised), m and l */
  float acc[ACC];
#pragma unroll
  for (int a = 0; a < ACC; a++) acc[a] = 0.0f;
  for (int kt = 0; kt < nkt; kt++) {
    __syncthreads();
    zk_sattn_load<F, FP, R, T>(ks, kb, kt * R);
    zk_sattn_load<DV, DVP, R, T>(vs, vb, kt * R);
    __syncthreads();
    zk_sattn_probs<F, R, T, CAUSAL, DROP>(qs, ks, ps, mrow, lrow, arow, bh, i0, kt * R, scale, p,
                                          inv_keep, seed, stream);
    zk_sattn_accum<DV, DVP, R, true>(acc, ps, vs, arow);
  }

  /* D_i = do_i . o_i (products through ps, summed by one warp per row, in
   * order), then mrow <- lse */
  __syncthreads();
#pragma unroll
  for (int a = 0; a < ACC; a++) {
    int e = threadIdx.x + a * ZK_SATTN_NT;
    if (e < R * DV) {
      int r = e / DV, c = e - r * DV;
      vs[r * DVP + c] = dos[r * DVP + c] * (acc[a] / lrow[r]);
    }
  }
  __syncthreads();
  for (int r = warp; r < R; r += ZK_SATTN_NT / 32) {
    float s = 0.0f;
    for (int c = lane; c < DV; c += 32) s += vs[r * DVP + c];
    s = zk_warp_sum(s);
    if (lane == 0) {
      drow[r] = s;
      mrow[r] = mrow[r] + logf(lrow[r]);
    }
  }

  /* second walk: dS and dq */
  float dqa[ACCQ];
#pragma unroll
  for (int a = 0; a < ACCQ; a++) dqa[a] = 0.0f;
  for (int kt = 0; kt < nkt; kt++) {
    __syncthreads();
    zk_sattn_load<F, FP, R, T>(ks, kb, kt * R);
    zk_sattn_load<DV, DVP, R, T>(vs, vb, kt * R);
    __syncthreads();
    int j0 = kt * R;
    zk_sattn_entries<R>([&](int r, int c, int part, int valid) {
      int i = i0 + r, j = j0 + c;
      float s = zk_sattn_score<F, FP, T, CAUSAL, SPLIT>(qs, ks, r, c, i, j, scale, part);
      float dp = zk_sattn_dot<DV, SPLIT>(dos + r * DVP, vs + c * DVP, part);
      float ds = 0.0f;
      if (s != ZK_NEG_INF && i < T) {
        float pr = expf(s - mrow[r]);
        dp *= zk_sattn_keep<DROP, T>(bh, i, j, p, inv_keep, seed, stream);
        ds = pr * (dp - drow[r]);
      }
      if (valid && part == 0) ps[r * RP + c] = ds;
    });
    __syncthreads();
    zk_sattn_accum<F, FP, R, false>(dqa, ps, ks, nullptr);
  }
#pragma unroll
  for (int a = 0; a < ACCQ; a++) {
    int e = threadIdx.x + a * ZK_SATTN_NT;
    if (e < R * F) {
      int r = e / F, c = e - r * F;
      if (i0 + r < T) dq[(bh * T + i0 + r) * F + c] = dqa[a] * scale;
    }
  }
  if (threadIdx.x < R && i0 + (int)threadIdx.x < T) {
    float *st = stats + (bh * T + i0 + threadIdx.x) * 2;
    st[0] = mrow[threadIdx.x];
    st[1] = drow[threadIdx.x];
  }
}

template <int F, int DV, int R, int T, bool CAUSAL, bool DROP>
__device__ __forceinline__ void zk_sattn_bwd_kv(const float *__restrict__ dout,
                                                const float *__restrict__ q,
                                                const float *__restrict__ k,
                                                const float *__restrict__ v,
                                                const float *__restrict__ stats,
                                                float *__restrict__ dk, float *__restrict__ dv,
                                                float scale, float p, unsigned long long seed,
                                                unsigned long long stream) {
  constexpr int NTILE = (T + R - 1) / R, FP = F + 1, DVP = DV + 1, RP = R + 1;
  constexpr int ACCV = (R * DV + ZK_SATTN_NT - 1) / ZK_SATTN_NT;
  constexpr int ACCK = (R * F + ZK_SATTN_NT - 1) / ZK_SATTN_NT;
  constexpr int SPLIT = zk_sattn_split<R>::value;
  __shared__ float ks[R * FP], vs[R * DVP], qs[R * FP], dos[R * DVP];
  __shared__ float pz[R * RP], dss[R * RP], lse[R], drow[R];
  zk_i64 bh = blockIdx.x / NTILE;
  int tile = blockIdx.x % NTILE, j0 = tile * R;
  const float *qb = q + bh * T * F, *kb = k + bh * T * F, *vb = v + bh * T * DV;
  const float *dob = dout + bh * T * DV, *sb = stats + bh * T * 2;
  float inv_keep = DROP ? 1.0f / (1.0f - p) : 1.0f;

  zk_sattn_load<F, FP, R, T>(ks, kb, j0);
  zk_sattn_load<DV, DVP, R, T>(vs, vb, j0);
  float dka[ACCK], dva[ACCV];
#pragma unroll
  for (int a = 0; a < ACCK; a++) dka[a] = 0.0f;
#pragma unroll
  for (int a = 0; a < ACCV; a++) dva[a] = 0.0f;

  for (int qt = CAUSAL ? tile : 0; qt < NTILE; qt++) {
    int i0 = qt * R;
    __syncthreads();
    zk_sattn_load<F, FP, R, T>(qs, qb, i0);
    zk_sattn_load<DV, DVP, R, T>(dos, dob, i0);
    if (threadIdx.x < R) {
      int i = i0 + threadIdx.x;
      lse[threadIdx.x] = i < T ? sb[(zk_i64)i * 2] : 0.0f;
      drow[threadIdx.x] = i < T ? sb[(zk_i64)i * 2 + 1] : 0.0f;
    }
    __syncthreads();
    zk_sattn_entries<R>([&](int r, int c, int part, int valid) { /* r: query, c: key */
      int i = i0 + r, j = j0 + c;
      float s = zk_sattn_score<F, FP, T, CAUSAL, SPLIT>(qs, ks, r, c, i, j, scale, part);
      float dp = zk_sattn_dot<DV, SPLIT>(dos + r * DVP, vs + c * DVP, part);
      float pm = 0.0f, ds = 0.0f;
      if (s != ZK_NEG_INF && i < T) {
        float pr = expf(s - lse[r]);
        float m = zk_sattn_keep<DROP, T>(bh, i, j, p, inv_keep, seed, stream);
        pm = pr * m;
        ds = pr * (dp * m - drow[r]);
      }
      if (valid && part == 0) {
        pz[r * RP + c] = pm;
        dss[r * RP + c] = ds;
      }
    });
    __syncthreads();
    zk_sattn_accum_t<DV, DVP, R>(dva, pz, dos); /* dv_j += sum_i (P M)_ij do_i */
    zk_sattn_accum_t<F, FP, R>(dka, dss, qs);   /* dk_j += sum_i dS_ij q_i */
  }
#pragma unroll
  for (int a = 0; a < ACCV; a++) {
    int e = threadIdx.x + a * ZK_SATTN_NT;
    if (e < R * DV) {
      int c = e / DV, f = e - c * DV;
      if (j0 + c < T) dv[(bh * T + j0 + c) * DV + f] = dva[a];
    }
  }
#pragma unroll
  for (int a = 0; a < ACCK; a++) {
    int e = threadIdx.x + a * ZK_SATTN_NT;
    if (e < R * F) {
      int c = e / F, f = e - c * F;
      if (j0 + c < T) dk[(bh * T + j0 + c) * F + f] = dka[a] * scale;
    }
  }
}

#endif /* ZK_SOFTMAX_ATTENTION_CU */
