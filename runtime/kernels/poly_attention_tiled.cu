/* poly_attention_tiled.cu: the quadratic form of causal polynomial attention
 * (poly_attention.cu states the maths) tiled in two levels, as a GEMM is, for
 * value widths where poly_attention.cu's one-row-a-thread kernels run out of
 * registers: there a thread keeps all DV of its row's accumulators, so wide
 * values leave it one row, and each float it reads from shared memory feeds
 * one multiply-add.
 *
 * Here a block of 128 threads takes a tile of 64 queries against tiles of 64
 * keys (the same pair (b, h), either layout of poly_attention.cu), in phases:
 *   scores: the 64 x 64 scores as a rank-F update, each thread 4 queries x 8
 *     keys (a warp: 4 query groups g x 8 key groups h; a thread's keys are 4
 *     at 4 h and 4 at 32 + 4 h, so that 8 lanes' 16-byte reads cover 128
 *     contiguous bytes), reading F-major tiles qT[F][64] and kT[F][64];
 *     in the backward also the rank-DV update of dn_i . v_j;
 *   values: products with the weights of the scores phase, which go through
 *     shared memory: a thread takes 4 rows and DVT = ceil(DV / 8) value
 *     columns, reading weights 4 at a time and value columns transposed,
 *     [DVP][64], 4 keys at a time. Its rows here are g + 16 i and its
 *     columns h + 8 c (zk_pt_role), not the scores phase's 4 g + i: a
 *     warp's weight reads then fall on 4 adjacent rows and its value reads
 *     on 8 adjacent rows, each a 16-byte piece of other banks, where rows 4
 *     apart (and columns DVT apart) met two to a bank;
 * so each 16-byte read from shared memory feeds 8 to 32 multiply-adds. Tiles
 * are [rows][LD] with LD = 68 floats: rows stay 16-byte aligned and adjacent
 * rows fall on other banks. All sums are fp32, in another order than
 * poly_attention.cu's; results agree to rounding.
 *
 * Session 16 on the H200 (B 512, H 12, L 512, DV 42, forward + backward ms):
 * 4.89 + 15.07 before; 4.27 + 12.83 with zk_pt_load_t's loads, 3.27 + 11.49
 * with the value phases' rows and columns (.gpu/s16run3.sh); 2.95 + 11.25 with
 * the lanes paired (zk_pt_role, s16run7.sh); 2.95 + 10.41 with the backward's
 * rank loops unrolled in full (zk_pt_rank, s16run12.sh).
 *
 * Blocks take the tiles with the most key (query) tiles to walk first:
 * block x works on pair x % BH and tile NTILE - 1 - x / BH (forward, dq), or
 * x / BH (dk, dv).
 *
 * zk_poly_tiled_fwd<F, DV, T, HI>: o, and z = d + eps, as zk_poly_fwd.
 * zk_poly_tiled_bwd_q<F, DV, T, HI>: from the forward's o and z, dn_i, dd_i
 *   (into stats[BH][T][DV + 1], poly_attention.cu's layout) and dq_i.
 * zk_poly_tiled_bwd_kv<F, DV, T, HI>: dk_j, dv_j from stats, without atomics.
 * F must be a multiple of 8 (the dq and dk phases give a thread F / 8
 * features). Dynamic shared memory: zk_poly_tiled_smem<F, DV>(part) bytes,
 * part 0 forward, 1 bwd_q, 2 bwd_kv; the emitter mirrors it.
 */
#ifndef ZK_POLY_ATTENTION_TILED_CU
#define ZK_POLY_ATTENTION_TILED_CU

#define ZK_PT_TILE 64 /* queries and keys a tile */
#define ZK_PT_NT 128  /* threads a block */
#define ZK_PT_LD 68   /* floats a shared-memory tile row */

template <int DV> struct zk_pt_cols {
  static constexpr int DVT = (DV + 7) / 8; /* value columns a thread */
  static constexpr int DVP = 8 * DVT;     /* padded value width */
};

template <int F, int DV>
__host__ __device__ constexpr int zk_poly_tiled_smem(int part) {
  return 4 * (part == 0   ? (2 * F + zk_pt_cols<DV>::DVP + ZK_PT_TILE) * ZK_PT_LD
              : part == 1 ? (2 * F + 2 * zk_pt_cols<DV>::DVP + ZK_PT_TILE) * ZK_PT_LD + ZK_PT_TILE
                          : (2 * F + 2 * zk_pt_cols<DV>::DVP + 2 * ZK_PT_TILE) * ZK_PT_LD + ZK_PT_TILE);
}

/* Rows [r0, r0 + 64) of a [T, W] slice with rows LD floats apart, transposed
 * into sh[WP][ZK_PT_LD] (sh[c][r]), scaled by mul; zeros past T and for
 * columns W .. WP - 1. The elements are zk_tile64's, read 8 at a time
 * before they are stored: a warp's 4 rows by 8 columns land at banks 4 c + r,
 * none twice (32 columns of one row met four to a bank). */
template <int W, int WP, int T, int LD>
__device__ __forceinline__ void zk_pt_load_t(float *sh, const float *__restrict__ src, int r0, float mul) {
  static_assert(ZK_PT_NT == 128 && ZK_PT_TILE == 64, "zk_tile64's geometry");
  zk_tile64_copy<W, WP, T, LD>(src, r0, [&](int r, int c, float x) { sh[c * ZK_PT_LD + r] = x * mul; });
}

/* The thread's roles: in the scores phases rows (queries, or keys in bwd_kv)
 * 4 g .. 4 g + 3 of the tile and the other side's 8 columns 4 h + {0..3} and
 * 32 + 4 h + {0..3}; in the value phases rows arow(i) = g + 16 i and value
 * (or feature) columns h + 8 c.
 *
 * Lane l of warp w has g = 4 w + (l & 1) + 2 (l >> 4) and h = (l >> 1) & 7.
 * Shared memory returns one register a lane a cycle, so a 16-byte read costs
 * a warp 4 passes (wavefronts), but 2 where lanes l and l ^ 1, or l and l ^ 2,
 * read the same address (Nsight Compute at L 128, DV 42, session 16: 3.3
 * wavefronts a read with g = 4 w + l / 8, h = l % 8). Every read here
 * depends on g alone (lanes l ^ 2 agree) or on h alone (lanes l ^ 1 agree),
 * so each costs 2: the forward's wavefronts fell from 50.9 to 31.3 million
 * there, and at L 512, DV 42 the forward from 3.27 to 2.95 ms, the backward
 * from 11.49 to 11.25 (.gpu/s16run7.sh). */
struct zk_pt_role {
  int g, h;
  __device__ __forceinline__ zk_pt_role()
      : g(((int)threadIdx.x >> 5) * 4 + ((int)threadIdx.x & 1) + 2 * (((int)threadIdx.x & 31) >> 4)),
        h(((int)threadIdx.x >> 1) & 7) {}
  __device__ __forceinline__ int col(int j) const { return j < 4 ? 4 * h + j : 28 + 4 * h + j; }
  __device__ __forceinline__ int arow(int i) const { return g + 16 * i; }
  __device__ __forceinline__ int acol(int c) const { return h + 8 * c; }
};

/* acc[i][j] += sum over n < N of a[n][4 g + i] b[n][col(j)], a and b
 * [N][ZK_PT_LD] tiles: a rank-N update of the thread's 4 x 8 block, its loop
 * unrolled U times. The backward unrolls its two in full, the forward by 4:
 * at L 512, DV 42 the backward then took 10.41 ms against 11.24
 * (.gpu/s16run12.sh), the forward unrolled in full 3.06 against 2.95
 * (s16run11.sh; the value phase's loop unrolled in full as well slowed both). */
template <int N, int U>
__device__ __forceinline__ void zk_pt_rank(float (&acc)[4][8], const float *a, const float *b,
                                           const zk_pt_role &ro) {
#pragma unroll(U)
  for (int n = 0; n < N; n++) {
    zk_f4 x = *(const zk_f4 *)&a[n * ZK_PT_LD + 4 * ro.g];
    zk_f4 y0 = *(const zk_f4 *)&b[n * ZK_PT_LD + 4 * ro.h];
    zk_f4 y1 = *(const zk_f4 *)&b[n * ZK_PT_LD + 32 + 4 * ro.h];
    float xv[4] = {x.x, x.y, x.z, x.w}, yv[8] = {y0.x, y0.y, y0.z, y0.w, y1.x, y1.y, y1.z, y1.w};
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
      for (int j = 0; j < 8; j++) acc[i][j] = fmaf(xv[i], yv[j], acc[i][j]);
  }
}

/* Writes the thread's 4 x 8 block w into tile sh[64][ZK_PT_LD] at rows 4 g + i,
 * columns col(j). */
__device__ __forceinline__ void zk_pt_store(float *sh, const float (&w)[4][8], const zk_pt_role &ro) {
#pragma unroll
  for (int i = 0; i < 4; i++) {
    float *row = sh + (4 * ro.g + i) * ZK_PT_LD;
    *(zk_f4 *)&row[4 * ro.h] = zk_f4{w[i][0], w[i][1], w[i][2], w[i][3]};
    *(zk_f4 *)&row[32 + 4 * ro.h] = zk_f4{w[i][4], w[i][5], w[i][6], w[i][7]};
  }
}

/* acc[i][c] += sum over m < 64 of w[arow(i)][m] x[h + 8 c][m] for c < NC:
 * w a [64][ZK_PT_LD] tile of weights, x a transposed [.][ZK_PT_LD] tile. */
template <int NC>
__device__ __forceinline__ void zk_pt_apply(float (&acc)[4][NC], const float *w, const float *x,
                                            const zk_pt_role &ro) {
#pragma unroll 2
  for (int m = 0; m < ZK_PT_TILE; m += 4) {
    zk_f4 wr[4];
#pragma unroll
    for (int i = 0; i < 4; i++) wr[i] = *(const zk_f4 *)&w[ro.arow(i) * ZK_PT_LD + m];
#pragma unroll
    for (int c = 0; c < NC; c++) {
      zk_f4 xr = *(const zk_f4 *)&x[ro.acol(c) * ZK_PT_LD + m];
#pragma unroll
      for (int i = 0; i < 4; i++) {
        float s = acc[i][c];
        s = fmaf(wr[i].x, xr.x, s);
        s = fmaf(wr[i].y, xr.y, s);
        s = fmaf(wr[i].z, xr.z, s);
        acc[i][c] = fmaf(wr[i].w, xr.w, s);
      }
    }
  }
}

/* The backward's two rank updates of a 4 x 8 block, from zero: s from the F
 * rows of a1, b1, da from the DVP rows of a2, b2 (zk_pt_rank's operands). */
template <int F, int DVP>
__device__ __forceinline__ void zk_pt_scores(float (&s)[4][8], float (&da)[4][8], const float *a1,
                                             const float *b1, const float *a2, const float *b2,
                                             const zk_pt_role &ro) {
#pragma unroll
  for (int i = 0; i < 4; i++)
#pragma unroll
    for (int j = 0; j < 8; j++) s[i][j] = da[i][j] = 0.0f;
  zk_pt_rank<F, F>(s, a1, b1, ro);
  zk_pt_rank<DVP, DVP>(da, a2, b2, ro);
}

template <int F, int DV, int T, int HI>
__device__ __forceinline__ void zk_poly_tiled_fwd(const float *__restrict__ q, const float *__restrict__ k,
                                                  const float *__restrict__ v, float *__restrict__ o,
                                                  float *__restrict__ z, float c0, float c1, float c2,
                                                  float scale, float eps) {
  constexpr int NTILE = (T + ZK_PT_TILE - 1) / ZK_PT_TILE, LD = ZK_PT_LD;
  constexpr int DVT = zk_pt_cols<DV>::DVT, DVP = zk_pt_cols<DV>::DVP;
  constexpr int LQ = ZK_HEAD_LD(F, ZK_HQ(HI)), LV = ZK_HEAD_LD(DV, ZK_HV(HI));
  extern __shared__ float zk_pt_sh[];
  float *qT = zk_pt_sh, *kT = qT + F * LD, *vT = kT + F * LD, *as = vT + DVP * LD;
  const int BH = (int)gridDim.x / NTILE, bh = (int)blockIdx.x % BH;
  const int tile = NTILE - 1 - (int)blockIdx.x / BH, i0 = tile * ZK_PT_TILE;
  const float *qb = q + zk_head_slice<F, T, ZK_HQ(HI)>(bh), *kb = k + zk_head_slice<F, T, ZK_HQ(HI)>(bh);
  const float *vb = v + zk_head_slice<DV, T, ZK_HV(HI)>(bh);
  float *ob = o + zk_head_slice<DV, T, ZK_HV(HI)>(bh), *zb = z + (zk_i64)bh * T;
  const zk_pt_role ro;

  zk_pt_load_t<F, F, T, LQ>(qT, qb, i0, scale);
  float acc[4][DVT], den[4];
#pragma unroll
  for (int i = 0; i < 4; i++) {
    den[i] = 0.0f;
#pragma unroll
    for (int c = 0; c < DVT; c++) acc[i][c] = 0.0f;
  }
  for (int kt = 0; kt <= tile; kt++) {
    __syncthreads(); /* the last tile's value phase is done with kT, vT, as */
    zk_pt_load_t<F, F, T, LQ>(kT, kb, kt * ZK_PT_TILE, 1.0f);
    zk_pt_load_t<DV, DVP, T, LV>(vT, vb, kt * ZK_PT_TILE, 1.0f);
    __syncthreads();
    float w[4][8];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
      for (int j = 0; j < 8; j++) w[i][j] = 0.0f;
    zk_pt_rank<F, 4>(w, qT, kT, ro);
    const bool diag = kt == tile;
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
      for (int j = 0; j < 8; j++) {
        float s = w[i][j], a = c0 + s * (c1 + c2 * s);
        if (diag && ro.col(j) > 4 * ro.g + i) a = 0.0f; /* causal: j <= i */
        den[i] += a;
        w[i][j] = a;
      }
    zk_pt_store(as, w, ro);
    __syncthreads();
    zk_pt_apply<DVT>(acc, as, vT, ro);
  }
  /* the row sums over the 8 lanes of the same rows 4 g + i (lanes l ^ 2,
   * l ^ 4, l ^ 8), then through shared memory to the value phase's rows */
#pragma unroll
  for (int i = 0; i < 4; i++) {
    den[i] += __shfl_xor_sync(ZK_FULL_MASK, den[i], 2);
    den[i] += __shfl_xor_sync(ZK_FULL_MASK, den[i], 4);
    den[i] += __shfl_xor_sync(ZK_FULL_MASK, den[i], 8);
  }
  __syncthreads(); /* every thread is done with as */
  if (ro.h == 0)
#pragma unroll
    for (int i = 0; i < 4; i++) as[4 * ro.g + i] = den[i];
  __syncthreads();
#pragma unroll
  for (int i = 0; i < 4; i++) {
    int qi = i0 + ro.arow(i);
    if (qi >= T) continue;
    float zi = as[ro.arow(i)] + eps, inv = 1.0f / zi;
#pragma unroll
    for (int c = 0; c < DVT; c++) {
      int col = ro.acol(c);
      if (col < DV) ob[(zk_i64)qi * LV + col] = acc[i][c] * inv;
    }
    if (ro.h == 0) zb[qi] = zi;
  }
}

template <int F, int DV, int T, int HI>
__device__ __forceinline__ void zk_poly_tiled_bwd_q(const float *__restrict__ dout, const float *__restrict__ q,
                                                    const float *__restrict__ k, const float *__restrict__ v,
                                                    const float *__restrict__ o, const float *__restrict__ z,
                                                    float *__restrict__ dq, float *__restrict__ stats, float c0,
                                                    float c1, float c2, float scale) {
  constexpr int NTILE = (T + ZK_PT_TILE - 1) / ZK_PT_TILE, LD = ZK_PT_LD;
  constexpr int DVP = zk_pt_cols<DV>::DVP, FT = F / 8;
  constexpr int LQ = ZK_HEAD_LD(F, ZK_HQ(HI)), LV = ZK_HEAD_LD(DV, ZK_HV(HI));
  static_assert(F % 8 == 0, "F must be a multiple of 8");
  extern __shared__ float zk_pt_sh[];
  float *qT = zk_pt_sh, *dnT = qT + F * LD, *kT = dnT + DVP * LD, *vT = kT + F * LD;
  float *ds = vT + DVP * LD, *dd = ds + ZK_PT_TILE * LD;
  const int BH = (int)gridDim.x / NTILE, bh = (int)blockIdx.x % BH;
  const int tile = NTILE - 1 - (int)blockIdx.x / BH, i0 = tile * ZK_PT_TILE;
  const float *qb = q + zk_head_slice<F, T, ZK_HQ(HI)>(bh), *kb = k + zk_head_slice<F, T, ZK_HQ(HI)>(bh);
  const float *vb = v + zk_head_slice<DV, T, ZK_HV(HI)>(bh), *dob = dout + zk_head_slice<DV, T, ZK_HV(HI)>(bh);
  const float *obb = o + zk_head_slice<DV, T, ZK_HV(HI)>(bh), *zb = z + (zk_i64)bh * T;
  float *dqb = dq + zk_head_slice<F, T, ZK_HQ(HI)>(bh), *st = stats + (zk_i64)bh * T * (DV + 1);
  const zk_pt_role ro;

  zk_pt_load_t<F, F, T, LQ>(qT, qb, i0, scale);
  /* dn_i = do_i / z_i into dnT (and stats), then dd_i = -(do_i . o_i) / z_i */
  zk_pt_load_t<DV, DVP, T, LV>(dnT, dob, i0, 1.0f);
  __syncthreads();
  zk_poly_dn_stats<DV, ZK_PT_TILE, ZK_PT_NT, T, LV>([&](int r, int c) { return &dnT[c * LD + r]; }, dd, obb, zb,
                                                     st, i0);
  float ddi[4], dqa[4][FT];
#pragma unroll
  for (int i = 0; i < 4; i++) {
    ddi[i] = dd[4 * ro.g + i];
#pragma unroll
    for (int f = 0; f < FT; f++) dqa[i][f] = 0.0f;
  }
  for (int kt = 0; kt <= tile; kt++) {
    __syncthreads(); /* the last tile's dq phase is done with kT, ds */
    zk_pt_load_t<F, F, T, LQ>(kT, kb, kt * ZK_PT_TILE, 1.0f);
    zk_pt_load_t<DV, DVP, T, LV>(vT, vb, kt * ZK_PT_TILE, 1.0f);
    __syncthreads();
    float s[4][8], da[4][8];
    zk_pt_scores<F, DVP>(s, da, qT, kT, dnT, vT, ro);
    const bool diag = kt == tile;
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
      for (int j = 0; j < 8; j++) {
        float g = (da[i][j] + ddi[i]) * (c1 + 2.0f * c2 * s[i][j]);
        if (diag && ro.col(j) > 4 * ro.g + i) g = 0.0f;
        s[i][j] = g;
      }
    zk_pt_store(ds, s, ro);
    __syncthreads();
    zk_pt_apply<FT>(dqa, ds, kT, ro);
  }
#pragma unroll
  for (int i = 0; i < 4; i++) {
    int qi = i0 + ro.arow(i);
    if (qi >= T) continue;
#pragma unroll
    for (int f = 0; f < FT; f++) dqb[(zk_i64)qi * LQ + ro.acol(f)] = dqa[i][f] * scale;
  }
}

template <int F, int DV, int T, int HI>
__device__ __forceinline__ void zk_poly_tiled_bwd_kv(const float *__restrict__ q, const float *__restrict__ k,
                                                     const float *__restrict__ v,
                                                     const float *__restrict__ stats, float *__restrict__ dk,
                                                     float *__restrict__ dv, float c0, float c1, float c2,
                                                     float scale) {
  constexpr int NTILE = (T + ZK_PT_TILE - 1) / ZK_PT_TILE, LD = ZK_PT_LD;
  constexpr int DVT = zk_pt_cols<DV>::DVT, DVP = zk_pt_cols<DV>::DVP, FT = F / 8;
  constexpr int LQ = ZK_HEAD_LD(F, ZK_HQ(HI)), LV = ZK_HEAD_LD(DV, ZK_HV(HI));
  static_assert(F % 8 == 0, "F must be a multiple of 8");
  extern __shared__ float zk_pt_sh[];
  float *kT = zk_pt_sh, *vT = kT + F * LD, *qT = vT + DVP * LD, *dnT = qT + F * LD;
  float *as = dnT + DVP * LD, *ds = as + ZK_PT_TILE * LD, *dd = ds + ZK_PT_TILE * LD;
  const int BH = (int)gridDim.x / NTILE, bh = (int)blockIdx.x % BH;
  const int tile = (int)blockIdx.x / BH, j0 = tile * ZK_PT_TILE;
  const float *qb = q + zk_head_slice<F, T, ZK_HQ(HI)>(bh), *kb = k + zk_head_slice<F, T, ZK_HQ(HI)>(bh);
  const float *vb = v + zk_head_slice<DV, T, ZK_HV(HI)>(bh), *sb = stats + (zk_i64)bh * T * (DV + 1);
  float *dkb = dk + zk_head_slice<F, T, ZK_HQ(HI)>(bh), *dvb = dv + zk_head_slice<DV, T, ZK_HV(HI)>(bh);
  const zk_pt_role ro; /* rows: keys; columns: queries */

  zk_pt_load_t<F, F, T, LQ>(kT, kb, j0, 1.0f);
  zk_pt_load_t<DV, DVP, T, LV>(vT, vb, j0, 1.0f);
  float dva[4][DVT], dka[4][FT];
#pragma unroll
  for (int i = 0; i < 4; i++) {
#pragma unroll
    for (int c = 0; c < DVT; c++) dva[i][c] = 0.0f;
#pragma unroll
    for (int f = 0; f < FT; f++) dka[i][f] = 0.0f;
  }
  for (int qt = tile; qt < NTILE; qt++) {
    const int i0 = qt * ZK_PT_TILE;
    __syncthreads(); /* the last tile's value phase is done with qT, dnT, as, ds */
    zk_pt_load_t<F, F, T, LQ>(qT, qb, i0, scale); /* scale q_i once here */
    zk_pt_load_t<DV, DVP, T, DV + 1>(dnT, sb, i0, 1.0f);
    if (threadIdx.x < ZK_PT_TILE) {
      int i = i0 + (int)threadIdx.x;
      dd[threadIdx.x] = i < T ? sb[(zk_i64)i * (DV + 1) + DV] : 0.0f;
    }
    __syncthreads();
    float s[4][8], da[4][8];
    zk_pt_scores<F, DVP>(s, da, kT, qT, vT, dnT, ro);
    const bool diag = qt == tile;
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
      for (int j = 0; j < 8; j++) { /* da becomes a_ij, s ds_ij */
        float x = s[i][j], g = (da[i][j] + dd[ro.col(j)]) * (c1 + 2.0f * c2 * x);
        float w = c0 + x * (c1 + c2 * x);
        if (diag && ro.col(j) < 4 * ro.g + i) w = g = 0.0f; /* causal: i >= j */
        da[i][j] = w;
        s[i][j] = g;
      }
    zk_pt_store(as, da, ro);
    zk_pt_store(ds, s, ro);
    __syncthreads();
    zk_pt_apply<DVT>(dva, as, dnT, ro);
    zk_pt_apply<FT>(dka, ds, qT, ro);
  }
#pragma unroll
  for (int i = 0; i < 4; i++) {
    int j = j0 + ro.arow(i);
    if (j >= T) continue;
#pragma unroll
    for (int f = 0; f < FT; f++) dkb[(zk_i64)j * LQ + ro.acol(f)] = dka[i][f];
#pragma unroll
    for (int c = 0; c < DVT; c++) {
      int col = ro.acol(c);
      if (col < DV) dvb[(zk_i64)j * LV + col] = dva[i][c];
    }
  }
}

#endif /* ZK_POLY_ATTENTION_TILED_CU */
