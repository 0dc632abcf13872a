/* poly_attention_mma.cu: the quadratic form of causal polynomial attention
 * (poly_attention.cu states the maths) on the tensor cores, with TF32
 * products (mma.sync m16n8k8) and fp32 sums.
 *
 * SPLIT 1: one TF32 product a b, for `precision: tf32` and `bf16` (the
 * matmuls there are TF32 or BF16 already). SPLIT 3: each fp32 operand split
 * into a TF32 head and a TF32 tail, x = hi + lo, and a b = ah bh + ah bl +
 * al bh (the tails' product dropped): three products, errors of the order of
 * fp32 rounding, not TF32's.
 *
 * A block of 4 warps takes 64 rows (queries; keys in bwd_kv) of one pair
 * (b, h), a warp 16 of them, and walks tiles of 64 of the other side, staged
 * row-major in shared memory. A warp's scores for its 16 rows against a tile
 * are 8 m16n8 accumulators; the weights made from them (a_ij, ds_ij) feed the
 * next products straight from those registers: an accumulator holds columns
 * 2t and 2t + 1 of a row (t = lane % 4), an A fragment columns t and t + 4, so
 * the next product's inner index runs over the 8 columns in the order 0, 2,
 * 4, 6, 1, 3, 5, 7 and its B fragment is read in that order too. Row strides
 * of the tiles (FS = F + 4, VS = 4 mod 16) put the 32 lanes' reads on 32
 * banks.
 *
 * zk_poly_mma_fwd<F, DV, T, HI, SPLIT>: o, and z = d + eps, as zk_poly_fwd.
 * zk_poly_mma_bwd_q<F, DV, T, HI, SPLIT, LOAD>: from the forward's o and z,
 *   dn_i and dd_i (into stats[BH][T][DV + 1], poly_attention.cu's layout)
 *   and dq_i.
 * zk_poly_mma_bwd_kv<..., LOAD>: dk_j and dv_j from stats, without atomics.
 * F must be a multiple of 8; DV is padded to DVP, a multiple of 8. Dynamic
 * shared memory: zk_poly_mma_smem<F, DV, LOAD>(part) bytes, part 0 forward,
 * 1 bwd_q, 2 bwd_kv; the emitter mirrors it. Blocks take the tiles with the
 * most work first, as in poly_attention_tiled.cu.
 *
 * Loads. A tile at a time, the products waited on memory (tc1 at L 512, DV
 * 42: 6.07 ms against the fp32 tiles' 4.90, session 8 device run 4). The
 * forward issues the next tile's global loads into registers before this
 * tile's products (zk_pm_next; 3.05 ms, run 5). The backward's LOAD, the
 * emitter's choice: 1, the same, up to 16 value floats (DV 5: 3.37 against
 * 3.75 ms); 2, past that, cp.async copies of the next tile into a second
 * buffer, which cost no registers where the loads ahead into registers cost
 * more occupancy than they hid (DV 42: 10.13 against 8.22 ms; by cp.async
 * 7.07, run 8); 0, a tile at a time (for measuring). The forward by
 * cp.async into a second buffer (tried) measured slower for tc1 (L 512: DV
 * 5 1.20 against 0.93 ms, DV 42 2.62 against 2.37; session 9, device run 2).
 *
 * The walk. Per 8 columns of the other side's tile a warp issues 2 (F 16)
 * products for the scores and NV, or NV + 2, for the rest; what else it
 * issues is what bounds it. So the tiles are staged as TF32 once
 * (zk_pm_bfrag_of), not converted by every warp at every read; the diagonal
 * tile is a compile-time case of the walk (zk_pm_bool), which skips the
 * 8-column groups wholly past (or before) the warp's rows, and the other
 * tiles carry no causal test; and the wrappers' register bounds are the
 * emitter's, per kernel (pm_bounds). Against session 8 (tc1, B 512, H 12,
 * forward / backward ms): L 512, DV 5 1.025 / 3.330 to 0.928 / 2.496; DV 42
 * 3.043 / 7.069 to 2.374 / 6.874; L 2048, DV 5 12.80 / 39.96 to 10.83 /
 * 30.50 (session 9, device run 3). One struct staging the key tiles for
 * both the forward and bwd_q (tried, with the forward's cp.async option)
 * made ptxas choose other registers and measured 3 to 6% slower (L 512, DV
 * 5: 0.977 / 2.572 ms; run 6).
 */
#ifndef ZK_POLY_ATTENTION_MMA_CU
#define ZK_POLY_ATTENTION_MMA_CU

#define ZK_PM_TILE 64
#define ZK_PM_NT 128

/* A bool as a type, to make the walks' diagonal case a compile-time one. */
template <bool B> struct zk_pm_bool {
  static constexpr bool value = B;
};

template <int F, int DV> struct zk_pm_shape {
  static constexpr int DVP = (DV + 7) / 8 * 8;                  /* value width, padded */
  static constexpr int FS = F + 4;                             /* q, k rows in shared memory */
  static constexpr int VS = DVP + 4 + (DVP % 16 == 8 ? 8 : 0); /* v, dn rows: 4 mod 16 */
};

template <int F, int DV, int LOAD>
__host__ __device__ constexpr int zk_poly_mma_smem(int part) {
  return 4 * (part == 0 ? ZK_PM_TILE * (zk_pm_shape<F, DV>::FS + zk_pm_shape<F, DV>::VS)
              : part == 1
                  ? ZK_PM_TILE * ((LOAD == 2 ? 2 : 1) * (zk_pm_shape<F, DV>::FS + zk_pm_shape<F, DV>::VS) +
                                  zk_pm_shape<F, DV>::VS) +
                        ZK_PM_TILE
                  : (LOAD == 2 ? 2 : 1) * (ZK_PM_TILE * (zk_pm_shape<F, DV>::FS + zk_pm_shape<F, DV>::VS) + ZK_PM_TILE));
}

/* zk_cp_async4, zk_cp_async_commit, zk_cp_async_wait, zk_tf32, zk_tf32f, zk_mma_tf32: common.cu. */

/* An operand fragment of N fp32 values as TF32 heads and, for SPLIT 3, tails. */
template <int N, int SPLIT> struct zk_pm_frag {
  unsigned hi[N], lo[N];
  static __device__ __forceinline__ zk_pm_frag of(const float (&x)[N]) {
    zk_pm_frag f;
#pragma unroll
    for (int i = 0; i < N; i++) {
      f.hi[i] = zk_tf32(x[i]);
      f.lo[i] = SPLIT == 3 ? zk_tf32(x[i] - __int_as_float((int)f.hi[i])) : 0u;
    }
    return f;
  }
  /* x already TF32 (a tile staged rounded, SPLIT 1): its bits as they are */
  static __device__ __forceinline__ zk_pm_frag bits(const float (&x)[N]) {
    zk_pm_frag f;
#pragma unroll
    for (int i = 0; i < N; i++) f.hi[i] = (unsigned)__float_as_int(x[i]), f.lo[i] = 0u;
    return f;
  }
};

/* d += a b in SPLIT products (the small ones first). */
template <int SPLIT>
__device__ __forceinline__ void zk_pm_mma(float (&d)[4], const zk_pm_frag<4, SPLIT> &a, const zk_pm_frag<2, SPLIT> &b) {
  if (SPLIT == 3) {
    zk_mma_tf32(d, a.lo, b.hi);
    zk_mma_tf32(d, a.hi, b.lo);
  }
  zk_mma_tf32(d, a.hi, b.hi);
}

/* The A fragment of rows r0 + {g, g + 8}, columns c0 + {t, t + 4} of a
 * row-major tile with rows S floats apart. */
template <int S, int SPLIT>
__device__ __forceinline__ zk_pm_frag<4, SPLIT> zk_pm_afrag(const float *sh, int r0, int c0) {
  const int lane = (int)threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  float x[4] = {sh[(r0 + g) * S + c0 + t], sh[(r0 + g + 8) * S + c0 + t], sh[(r0 + g) * S + c0 + t + 4],
                sh[(r0 + g + 8) * S + c0 + t + 4]};
  return zk_pm_frag<4, SPLIT>::of(x);
}

/* A B fragment's two values read from a walked tile. RND (SPLIT 1, LOAD 0 or
 * 1): the tile holds TF32 values already, rounded once where it was staged
 * (zk_pm_load, zk_pm_next::put), so the 4 warps reading each value twice
 * convert nothing. Otherwise it holds fp32 values, rounded or split here:
 * SPLIT 3, and LOAD 2, whose cp.async copies cannot round (rounding them in
 * place after they land measured slower: tc1 backward at L 512, DV 42, 7.32
 * against 6.87 ms, session 9 device run 3). */
template <int SPLIT, bool RND>
__device__ __forceinline__ zk_pm_frag<2, SPLIT> zk_pm_bfrag_of(const float (&x)[2]) {
  if constexpr (SPLIT == 1 && RND) return zk_pm_frag<2, SPLIT>::bits(x);
  else return zk_pm_frag<2, SPLIT>::of(x);
}

/* The B fragment B[k][n] = sh[n0 + n][c0 + k] (the tile's rows as columns):
 * for a product against the tile's rows n0 .. n0 + 7 over columns c0 .. c0 + 7. */
template <int S, int SPLIT, bool RND>
__device__ __forceinline__ zk_pm_frag<2, SPLIT> zk_pm_bfrag_t(const float *sh, int n0, int c0) {
  const int lane = (int)threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  float x[2] = {sh[(n0 + g) * S + c0 + t], sh[(n0 + g) * S + c0 + t + 4]};
  return zk_pm_bfrag_of<SPLIT, RND>(x);
}

/* The B fragment over tile rows m0 .. m0 + 7 in the accumulators' order
 * (inner index t: row m0 + 2t, t + 4: row m0 + 2t + 1), columns c0 .. c0 + 7. */
template <int S, int SPLIT, bool RND>
__device__ __forceinline__ zk_pm_frag<2, SPLIT> zk_pm_bfrag(const float *sh, int m0, int c0) {
  const int lane = (int)threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  float x[2] = {sh[(m0 + 2 * t) * S + c0 + g], sh[(m0 + 2 * t + 1) * S + c0 + g]};
  return zk_pm_bfrag_of<SPLIT, RND>(x);
}

/* An accumulator's values as the A fragment of the next product (columns in
 * the order 0, 2, 4, 6, 1, 3, 5, 7). */
template <int SPLIT>
__device__ __forceinline__ zk_pm_frag<4, SPLIT> zk_pm_cfrag(const float (&c)[4]) {
  float x[4] = {c[0], c[2], c[1], c[3]};
  return zk_pm_frag<4, SPLIT>::of(x);
}

/* Rows [r0, r0 + 64) of a [T, W] slice (rows LD floats apart) into
 * sh[64][S], scaled by mul (and rounded to TF32 with RND): zeros past T and
 * in columns W .. WP - 1. The elements are zk_tile64's (common.cu), read 8
 * at a time before they are stored. */
template <int W, int WP, int S, int T, int LD, bool RND = false>
__device__ __forceinline__ void zk_pm_load(float *sh, const float *__restrict__ src, int r0, float mul) {
  static_assert(ZK_PM_NT == 128 && ZK_PM_TILE == 64, "zk_tile64's geometry");
  zk_tile64_copy<W, WP, T, LD>(src, r0, [&](int r, int c, float x) {
    sh[r * S + c] = RND ? zk_tf32f(x * mul) : x * mul;
  });
}

/* zk_pm_load (unscaled) by cp.async: the copies are in flight when it returns. */
template <int W, int WP, int S, int T, int LD>
__device__ __forceinline__ void zk_pm_load_async(float *sh, const float *__restrict__ src, int r0) {
  using TL = zk_tile64<WP>;
  const TL tl;
  const float *p = src + (zk_i64)(r0 + tl.row0) * LD + tl.col0;
  float *d = sh + tl.row0 * S + tl.col0;
#pragma unroll
  for (int k = 0; k < TL::N; k++) {
    bool ok = tl.template ok<W, T>(k, r0);
    zk_cp_async4(d + TL::dr(k) * S + TL::dc(k), ok ? p + TL::dr(k) * LD + TL::dc(k) : src, ok);
  }
}

/* A thread's share of rows [r0, r0 + 64) of a [T, W] slice, held in registers
 * from fetch to put (zk_pm_load's elements, WP columns a row), so that the
 * next tile's global loads are in flight while this one's products run. */
template <int W, int WP, int T, int LD> struct zk_pm_next {
  using TL = zk_tile64<WP>;
  static constexpr int N = TL::N;
  float x[N > 0 ? N : 1]; /* WP 0: unused (no prefetch) */
  __device__ __forceinline__ void fetch(const float *__restrict__ src, int r0) {
    const TL tl;
    const float *p = src + (zk_i64)(r0 + tl.row0) * LD + tl.col0;
#pragma unroll
    for (int k = 0; k < N; k++) x[k] = tl.template ok<W, T>(k, r0) ? p[TL::dr(k) * LD + TL::dc(k)] : 0.0f;
  }
  template <int S, bool RND> __device__ __forceinline__ void put(float *sh, float mul) const {
    const TL tl;
    float *d = sh + tl.row0 * S + tl.col0;
#pragma unroll
    for (int k = 0; k < N; k++) d[TL::dr(k) * S + TL::dc(k)] = RND ? zk_tf32f(x[k] * mul) : x[k] * mul;
  }
};

template <int F, int DV, int T, int HI, int SPLIT>
__device__ __forceinline__ void zk_poly_mma_fwd(const float *__restrict__ q, const float *__restrict__ k,
                                                const float *__restrict__ v, float *__restrict__ o,
                                                float *__restrict__ z, float c0, float c1, float c2, float scale,
                                                float eps) {
  using SH = zk_pm_shape<F, DV>;
  constexpr int NTILE = (T + ZK_PM_TILE - 1) / ZK_PM_TILE, DVP = SH::DVP, FS = SH::FS, VS = SH::VS;
  constexpr int LQ = ZK_HEAD_LD(F, ZK_HQ(HI)), LV = ZK_HEAD_LD(DV, ZK_HV(HI)), NF = F / 8, NV = DVP / 8;
  static_assert(F % 8 == 0, "F must be a multiple of 8");
  constexpr bool RND = SPLIT == 1; /* the walked tiles staged as TF32 (zk_pm_bfrag_of) */
  extern __shared__ float zk_pm_sh[];
  float *ks = zk_pm_sh, *vs = ks + ZK_PM_TILE * FS;
  const int BH = (int)gridDim.x / NTILE, bh = (int)blockIdx.x % BH;
  const int tile = NTILE - 1 - (int)blockIdx.x / BH, i0 = tile * ZK_PM_TILE;
  const float *qb = q + zk_head_slice<F, T, ZK_HQ(HI)>(bh), *kb = k + zk_head_slice<F, T, ZK_HQ(HI)>(bh);
  const float *vb = v + zk_head_slice<DV, T, ZK_HV(HI)>(bh);
  float *ob = o + zk_head_slice<DV, T, ZK_HV(HI)>(bh), *zb = z + (zk_i64)bh * T;
  const int w = (int)threadIdx.x >> 5, lane = (int)threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int r0 = 16 * w; /* the warp's rows in the tile */

  /* the warp's q rows as A fragments, through the k tile's buffer */
  zk_pm_load<F, F, FS, T, LQ>(ks, qb, i0, scale);
  __syncthreads();
  zk_pm_frag<4, SPLIT> qa[NF];
#pragma unroll
  for (int f = 0; f < NF; f++) qa[f] = zk_pm_afrag<FS, SPLIT>(ks, r0, 8 * f);
  float acc[NV][4], den_lo = 0.0f, den_hi = 0.0f; /* rows g, g + 8 (scalars: the walk captures them) */
#pragma unroll
  for (int n = 0; n < NV; n++)
#pragma unroll
    for (int e = 0; e < 4; e++) acc[n][e] = 0.0f;

  zk_pm_next<F, F, T, LQ> kn;
  zk_pm_next<DV, DVP, T, LV> vn;
  kn.fetch(kb, 0);
  vn.fetch(vb, 0);
  for (int kt = 0; kt <= tile; kt++) {
    __syncthreads(); /* the last tile's products are done with ks, vs */
    kn.template put<FS, RND>(ks, 1.0f);
    vn.template put<VS, RND>(vs, 1.0f);
    __syncthreads();
    if (kt < tile) {
      kn.fetch(kb, (kt + 1) * ZK_PM_TILE);
      vn.fetch(vb, (kt + 1) * ZK_PM_TILE);
    }
    /* the walk, the causal mask a compile-time choice (diag: the diagonal tile) */
    auto walk = [&, ks, vs](auto diag_c) {
      constexpr bool diag = decltype(diag_c)::value;
#pragma unroll
      for (int j = 0; j < 8; j++) {
        if (diag && 8 * j > r0 + 15) continue; /* keys past the warp's last row (warp-uniform) */
        float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int f = 0; f < NF; f++) zk_pm_mma<SPLIT>(s, qa[f], zk_pm_bfrag_t<FS, SPLIT, RND>(ks, 8 * j, 8 * f));
#pragma unroll
        for (int e = 0; e < 4; e++) {
          float a = c0 + s[e] * (c1 + c2 * s[e]);
          if (diag && 8 * j + 2 * t + (e & 1) > r0 + g + 8 * (e >> 1)) a = 0.0f; /* causal: j <= i */
          if (e < 2) den_lo += a;
          else den_hi += a;
          s[e] = a;
        }
        zk_pm_frag<4, SPLIT> af = zk_pm_cfrag<SPLIT>(s);
#pragma unroll
        for (int n = 0; n < NV; n++) zk_pm_mma<SPLIT>(acc[n], af, zk_pm_bfrag<VS, SPLIT, RND>(vs, 8 * j, 8 * n));
      }
    };
    if (kt == tile) walk(zk_pm_bool<true>{});
    else walk(zk_pm_bool<false>{});
  }
  /* a row's sum over its 4 lanes */
  float den[2] = {den_lo, den_hi};
#pragma unroll
  for (int r = 0; r < 2; r++) {
    den[r] += __shfl_xor_sync(ZK_FULL_MASK, den[r], 1);
    den[r] += __shfl_xor_sync(ZK_FULL_MASK, den[r], 2);
  }
#pragma unroll
  for (int r = 0; r < 2; r++) {
    int qi = i0 + r0 + g + 8 * r;
    if (qi >= T) continue;
    float zi = den[r] + eps, inv = 1.0f / zi;
#pragma unroll
    for (int n = 0; n < NV; n++)
#pragma unroll
      for (int e = 0; e < 2; e++) {
        int col = 8 * n + 2 * t + e;
        if (col < DV) ob[(zk_i64)qi * LV + col] = acc[n][2 * r + e] * inv;
      }
    if (t == 0) zb[qi] = zi;
  }
}

template <int F, int DV, int T, int HI, int SPLIT, int LOAD>
__device__ __forceinline__ void zk_poly_mma_bwd_q(const float *__restrict__ dout, const float *__restrict__ q,
                                                  const float *__restrict__ k, const float *__restrict__ v,
                                                  const float *__restrict__ o, const float *__restrict__ z,
                                                  float *__restrict__ dq, float *__restrict__ stats, float c0,
                                                  float c1, float c2, float scale) {
  using SH = zk_pm_shape<F, DV>;
  constexpr int NTILE = (T + ZK_PM_TILE - 1) / ZK_PM_TILE, DVP = SH::DVP, FS = SH::FS, VS = SH::VS;
  constexpr int LQ = ZK_HEAD_LD(F, ZK_HQ(HI)), LV = ZK_HEAD_LD(DV, ZK_HV(HI)), NF = F / 8, NV = DVP / 8;
  static_assert(F % 8 == 0, "F must be a multiple of 8");
  constexpr bool RND = SPLIT == 1 && LOAD != 2; /* the walked tiles staged as TF32 (zk_pm_bfrag_of) */
  extern __shared__ float zk_pm_sh[];
  float *ks = zk_pm_sh, *vs = ks + ZK_PM_TILE * FS, *dns = vs + ZK_PM_TILE * VS, *dd = dns + ZK_PM_TILE * VS;
  float *ks1 = dd + ZK_PM_TILE, *vs1 = ks1 + ZK_PM_TILE * FS; /* LOAD 2's second buffers */
  constexpr bool PF = LOAD == 1;
  const int BH = (int)gridDim.x / NTILE, bh = (int)blockIdx.x % BH;
  const int tile = NTILE - 1 - (int)blockIdx.x / BH, i0 = tile * ZK_PM_TILE;
  const float *qb = q + zk_head_slice<F, T, ZK_HQ(HI)>(bh), *kb = k + zk_head_slice<F, T, ZK_HQ(HI)>(bh);
  const float *vb = v + zk_head_slice<DV, T, ZK_HV(HI)>(bh), *dob = dout + zk_head_slice<DV, T, ZK_HV(HI)>(bh);
  const float *obb = o + zk_head_slice<DV, T, ZK_HV(HI)>(bh), *zb = z + (zk_i64)bh * T;
  float *dqb = dq + zk_head_slice<F, T, ZK_HQ(HI)>(bh), *st = stats + (zk_i64)bh * T * (DV + 1);
  const int w = (int)threadIdx.x >> 5, lane = (int)threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int r0 = 16 * w;

  /* dn_i = do_i / z_i (into dns and stats), dd_i = -(do_i . o_i) / z_i; the
   * q rows go through the k tile's buffer */
  zk_pm_load<F, F, FS, T, LQ>(ks, qb, i0, scale);
  zk_pm_load<DV, DVP, VS, T, LV>(dns, dob, i0, 1.0f);
  __syncthreads();
  zk_poly_dn_stats<DV, ZK_PM_TILE, ZK_PM_NT, T, LV>([&](int r, int c) { return &dns[r * VS + c]; }, dd, obb, zb,
                                                     st, i0);
  zk_pm_frag<4, SPLIT> qa[NF], na[NV];
#pragma unroll
  for (int f = 0; f < NF; f++) qa[f] = zk_pm_afrag<FS, SPLIT>(ks, r0, 8 * f);
#pragma unroll
  for (int n = 0; n < NV; n++) na[n] = zk_pm_afrag<VS, SPLIT>(dns, r0, 8 * n);
  const float dd_lo = dd[r0 + g], dd_hi = dd[r0 + g + 8];
  float dqa[NF][4];
#pragma unroll
  for (int f = 0; f < NF; f++)
#pragma unroll
    for (int e = 0; e < 4; e++) dqa[f][e] = 0.0f;

  zk_pm_next<F, PF ? F : 0, T, LQ> kn;
  zk_pm_next<DV, PF ? DVP : 0, T, LV> vn;
  auto issue = [&](int kt) { /* LOAD 2: tile kt into buffers kt % 2 */
    zk_pm_load_async<F, F, FS, T, LQ>(kt & 1 ? ks1 : ks, kb, kt * ZK_PM_TILE);
    zk_pm_load_async<DV, DVP, VS, T, LV>(kt & 1 ? vs1 : vs, vb, kt * ZK_PM_TILE);
    zk_cp_async_commit();
  };
  if (PF) {
    kn.fetch(kb, 0);
    vn.fetch(vb, 0);
  }
  if (LOAD == 2) {
    __syncthreads(); /* every warp has its q fragments out of ks */
    issue(0);
  }
  for (int kt = 0; kt <= tile; kt++) {
    const float *kc = ks, *vc = vs;
    if (LOAD == 2) {
      if (kt < tile) {
        issue(kt + 1);
        zk_cp_async_wait<1>();
      } else {
        zk_cp_async_wait<0>();
      }
      kc = kt & 1 ? ks1 : ks, vc = kt & 1 ? vs1 : vs;
      __syncthreads();
    } else {
      __syncthreads(); /* the last tile's products are done with ks, vs (and the q rows) */
      if (PF) {
        kn.template put<FS, RND>(ks, 1.0f);
        vn.template put<VS, RND>(vs, 1.0f);
      } else {
        zk_pm_load<F, F, FS, T, LQ, RND>(ks, kb, kt * ZK_PM_TILE, 1.0f);
        zk_pm_load<DV, DVP, VS, T, LV, RND>(vs, vb, kt * ZK_PM_TILE, 1.0f);
      }
      __syncthreads();
      if (PF && kt < tile) {
        kn.fetch(kb, (kt + 1) * ZK_PM_TILE);
        vn.fetch(vb, (kt + 1) * ZK_PM_TILE);
      }
    }
    /* the walk, the causal mask a compile-time choice (diag: the diagonal tile) */
    auto walk = [&, kc, vc](auto diag_c) {
      constexpr bool diag = decltype(diag_c)::value;
#pragma unroll
      for (int j = 0; j < 8; j++) {
        if (diag && 8 * j > r0 + 15) continue; /* keys past the warp's last row (warp-uniform) */
        float s[4] = {0.0f, 0.0f, 0.0f, 0.0f}, da[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int f = 0; f < NF; f++) zk_pm_mma<SPLIT>(s, qa[f], zk_pm_bfrag_t<FS, SPLIT, RND>(kc, 8 * j, 8 * f));
#pragma unroll
        for (int n = 0; n < NV; n++) zk_pm_mma<SPLIT>(da, na[n], zk_pm_bfrag_t<VS, SPLIT, RND>(vc, 8 * j, 8 * n));
#pragma unroll
        for (int e = 0; e < 4; e++) {
          float gr = (da[e] + (e < 2 ? dd_lo : dd_hi)) * (c1 + 2.0f * c2 * s[e]);
          if (diag && 8 * j + 2 * t + (e & 1) > r0 + g + 8 * (e >> 1)) gr = 0.0f;
          s[e] = gr;
        }
        zk_pm_frag<4, SPLIT> gf = zk_pm_cfrag<SPLIT>(s);
#pragma unroll
        for (int f = 0; f < NF; f++) zk_pm_mma<SPLIT>(dqa[f], gf, zk_pm_bfrag<FS, SPLIT, RND>(kc, 8 * j, 8 * f));
      }
    };
    if (kt == tile) walk(zk_pm_bool<true>{});
    else walk(zk_pm_bool<false>{});
    if (LOAD == 2) __syncthreads(); /* the products are done with buffers kt % 2 */
  }
#pragma unroll
  for (int r = 0; r < 2; r++) {
    int qi = i0 + r0 + g + 8 * r;
    if (qi >= T) continue;
#pragma unroll
    for (int f = 0; f < NF; f++)
#pragma unroll
      for (int e = 0; e < 2; e++) dqb[(zk_i64)qi * LQ + 8 * f + 2 * t + e] = dqa[f][2 * r + e] * scale;
  }
}

template <int F, int DV, int T, int HI, int SPLIT, int LOAD>
__device__ __forceinline__ void zk_poly_mma_bwd_kv(const float *__restrict__ q, const float *__restrict__ k,
                                                   const float *__restrict__ v, const float *__restrict__ stats,
                                                   float *__restrict__ dk, float *__restrict__ dv, float c0,
                                                   float c1, float c2, float scale) {
  using SH = zk_pm_shape<F, DV>;
  constexpr int NTILE = (T + ZK_PM_TILE - 1) / ZK_PM_TILE, DVP = SH::DVP, FS = SH::FS, VS = SH::VS;
  constexpr int LQ = ZK_HEAD_LD(F, ZK_HQ(HI)), LV = ZK_HEAD_LD(DV, ZK_HV(HI)), NF = F / 8, NV = DVP / 8;
  static_assert(F % 8 == 0, "F must be a multiple of 8");
  constexpr bool RND = SPLIT == 1 && LOAD != 2; /* the walked tiles staged as TF32 (zk_pm_bfrag_of) */
  extern __shared__ float zk_pm_sh[];
  float *qs = zk_pm_sh, *ns = qs + ZK_PM_TILE * FS, *dd = ns + ZK_PM_TILE * VS;
  float *qs1 = dd + ZK_PM_TILE, *ns1 = qs1 + ZK_PM_TILE * FS, *dd1 = ns1 + ZK_PM_TILE * VS; /* LOAD 2 */
  constexpr bool PF = LOAD == 1;
  const int BH = (int)gridDim.x / NTILE, bh = (int)blockIdx.x % BH;
  const int tile = (int)blockIdx.x / BH, j0 = tile * ZK_PM_TILE;
  const float *qb = q + zk_head_slice<F, T, ZK_HQ(HI)>(bh), *kb = k + zk_head_slice<F, T, ZK_HQ(HI)>(bh);
  const float *vb = v + zk_head_slice<DV, T, ZK_HV(HI)>(bh), *sb = stats + (zk_i64)bh * T * (DV + 1);
  float *dkb = dk + zk_head_slice<F, T, ZK_HQ(HI)>(bh), *dvb = dv + zk_head_slice<DV, T, ZK_HV(HI)>(bh);
  const int w = (int)threadIdx.x >> 5, lane = (int)threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int r0 = 16 * w; /* the warp's keys in the tile */

  /* the warp's k and v rows as A fragments, through the tiles' buffers */
  zk_pm_load<F, F, FS, T, LQ>(qs, kb, j0, 1.0f);
  zk_pm_load<DV, DVP, VS, T, LV>(ns, vb, j0, 1.0f);
  __syncthreads();
  zk_pm_frag<4, SPLIT> ka[NF], va[NV];
#pragma unroll
  for (int f = 0; f < NF; f++) ka[f] = zk_pm_afrag<FS, SPLIT>(qs, r0, 8 * f);
#pragma unroll
  for (int n = 0; n < NV; n++) va[n] = zk_pm_afrag<VS, SPLIT>(ns, r0, 8 * n);
  float dva[NV][4], dka[NF][4];
#pragma unroll
  for (int n = 0; n < NV; n++)
#pragma unroll
    for (int e = 0; e < 4; e++) dva[n][e] = 0.0f;
#pragma unroll
  for (int f = 0; f < NF; f++)
#pragma unroll
    for (int e = 0; e < 4; e++) dka[f][e] = 0.0f;

  zk_pm_next<F, PF ? F : 0, T, LQ> qn;
  zk_pm_next<DV, PF ? DVP : 0, T, DV + 1> nn;
  float ddn = 0.0f;
  auto fetch = [&](int i0) {
    qn.fetch(qb, i0);
    nn.fetch(sb, i0);
    int i = i0 + (int)threadIdx.x;
    ddn = threadIdx.x < ZK_PM_TILE && i < T ? sb[(zk_i64)i * (DV + 1) + DV] : 0.0f;
  };
  auto issue = [&](int qt) { /* LOAD 2: tile qt into buffers (qt - tile) % 2, q unscaled */
    int b = (qt - tile) & 1, i = qt * ZK_PM_TILE + (int)threadIdx.x;
    zk_pm_load_async<F, F, FS, T, LQ>(b ? qs1 : qs, qb, qt * ZK_PM_TILE);
    zk_pm_load_async<DV, DVP, VS, T, DV + 1>(b ? ns1 : ns, sb, qt * ZK_PM_TILE);
    if (threadIdx.x < ZK_PM_TILE) zk_cp_async4((b ? dd1 : dd) + threadIdx.x, sb + (zk_i64)i * (DV + 1) + DV, i < T);
    zk_cp_async_commit();
  };
  if (PF) fetch(tile * ZK_PM_TILE);
  if (LOAD == 2) {
    __syncthreads(); /* every warp has its k and v fragments out of qs, ns */
    issue(tile);
  }
  for (int qt = tile; qt < NTILE; qt++) {
    const float *qc = qs, *nc = ns, *dc = dd;
    if (LOAD == 2) {
      if (qt + 1 < NTILE) {
        issue(qt + 1);
        zk_cp_async_wait<1>();
      } else {
        zk_cp_async_wait<0>();
      }
      if ((qt - tile) & 1) qc = qs1, nc = ns1, dc = dd1;
      __syncthreads();
    } else {
      __syncthreads(); /* the last tile's products are done with qs, ns, dd */
      if (PF) {
        qn.template put<FS, RND>(qs, scale); /* scale q_i once here */
        nn.template put<VS, RND>(ns, 1.0f);
      } else {
        zk_pm_load<F, F, FS, T, LQ, RND>(qs, qb, qt * ZK_PM_TILE, scale);
        zk_pm_load<DV, DVP, VS, T, DV + 1, RND>(ns, sb, qt * ZK_PM_TILE, 1.0f);
        int i = qt * ZK_PM_TILE + (int)threadIdx.x;
        ddn = threadIdx.x < ZK_PM_TILE && i < T ? sb[(zk_i64)i * (DV + 1) + DV] : 0.0f;
      }
      if (threadIdx.x < ZK_PM_TILE) dd[threadIdx.x] = ddn;
      __syncthreads();
      if (PF && qt + 1 < NTILE) fetch((qt + 1) * ZK_PM_TILE);
    }
    /* the walk, the causal mask a compile-time choice (diag: the diagonal tile) */
    auto walk = [&, qc, nc, dc](auto diag_c) {
      constexpr bool diag = decltype(diag_c)::value;
#pragma unroll
      for (int j = 0; j < 8; j++) {
        if (diag && 8 * j + 7 < r0) continue; /* queries before the warp's first key (warp-uniform) */
        float s[4] = {0.0f, 0.0f, 0.0f, 0.0f}, da[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int f = 0; f < NF; f++) zk_pm_mma<SPLIT>(s, ka[f], zk_pm_bfrag_t<FS, SPLIT, RND>(qc, 8 * j, 8 * f));
#pragma unroll
        for (int n = 0; n < NV; n++) zk_pm_mma<SPLIT>(da, va[n], zk_pm_bfrag_t<VS, SPLIT, RND>(nc, 8 * j, 8 * n));
#pragma unroll
        for (int e = 0; e < 4; e++) { /* s becomes a_ij, da ds_ij */
          int col = 8 * j + 2 * t + (e & 1);
          float x = LOAD == 2 ? s[e] * scale : s[e]; /* LOAD 2 keeps q unscaled */
          float gr = (da[e] + dc[col]) * (c1 + 2.0f * c2 * x), a = c0 + x * (c1 + c2 * x);
          if (diag && col < r0 + g + 8 * (e >> 1)) a = gr = 0.0f; /* causal: i >= j */
          s[e] = a;
          da[e] = gr;
        }
        zk_pm_frag<4, SPLIT> af = zk_pm_cfrag<SPLIT>(s), gf = zk_pm_cfrag<SPLIT>(da);
#pragma unroll
        for (int n = 0; n < NV; n++) zk_pm_mma<SPLIT>(dva[n], af, zk_pm_bfrag<VS, SPLIT, RND>(nc, 8 * j, 8 * n));
#pragma unroll
        for (int f = 0; f < NF; f++) zk_pm_mma<SPLIT>(dka[f], gf, zk_pm_bfrag<FS, SPLIT, RND>(qc, 8 * j, 8 * f));
      }
    };
    if (qt == tile) walk(zk_pm_bool<true>{});
    else walk(zk_pm_bool<false>{});
    if (LOAD == 2) __syncthreads(); /* the products are done with buffers (qt - tile) % 2 */
  }
#pragma unroll
  for (int r = 0; r < 2; r++) {
    int jj = j0 + r0 + g + 8 * r;
    if (jj >= T) continue;
#pragma unroll
    for (int f = 0; f < NF; f++)
#pragma unroll
      for (int e = 0; e < 2; e++) dkb[(zk_i64)jj * LQ + 8 * f + 2 * t + e] = dka[f][2 * r + e] * (LOAD == 2 ? scale : 1.0f);
#pragma unroll
    for (int n = 0; n < NV; n++)
#pragma unroll
      for (int e = 0; e < 2; e++) {
        int col = 8 * n + 2 * t + e;
        if (col < DV) dvb[(zk_i64)jj * LV + col] = dva[n][2 * r + e];
      }
  }
}

#endif /* ZK_POLY_ATTENTION_MMA_CU */
