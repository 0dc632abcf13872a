/* poly_attention.cu: causal polynomial attention (ReBased, Based) and its
 * backward, in the quadratic tiled form (ops.def).
 *
 * Shapes: q, k, dq, dk [B, H, T, F]; v, o, do, dv [B, H, T, DV]; BH = B H;
 * or, with HI = H > 0 (layout 1, heads interleaved, ops.def), q, k, dq, dk
 * [B, T, H*F] and v, o, do, dv [B, T, H*DV]: a pair's rows are then H F (H DV)
 * floats apart instead of F (DV), from ((b T) H + h) F (zk_head_slice and
 * ZK_HEAD_LD in common.cu); nothing else changes. HI = -H (layout 2)
 * interleaves q, k, dq, dk alone (ZK_HQ, ZK_HV in common.cu).
 *   s_ij = scale q_i.k_j, a_ij = c0 + c1 s_ij + c2 s_ij^2 for j <= i,
 *   o_i = n_i / (d_i + eps) with n_i = sum_j a_ij v_j, d_i = sum_j a_ij.
 * Constants: F (feature width, 16 in the shipped models), DV (value width: 2,
 * 5, 10, 21, 42, ... no power-of-two assumption), BQ (tile: queries per block =
 * keys per shared-memory tile = threads per block, 64), T, HI (0, H in
 * layout 1, -H in layout 2); c0, c1, c2, scale, eps are float arguments (literals in the
 * wrapper, folded by the compiler).
 *
 * Launch geometry (all three): grid BH * ceil(T / (R BQ)) blocks of BQ threads;
 * block x takes pair bh = x / ntiles and tile x % ntiles. One thread per R rows
 * (queries, or keys in the dk/dv kernel); their F and DV vectors live in registers
 * (loops over F and DV are unrolled from the constants), the other side's tile
 * sits in shared memory, its rows padded to a multiple of 4 floats (16-byte
 * loads), and every thread reads the same element (broadcast). All sums are
 * fp32. Static shared memory: BQ (F + DV + 8) floats at most, 15 KB for DV 42.
 *
 * zk_poly_fwd<F, DV, BQ, R, T, HI, NB>: thread i walks the key tiles 0 .. its
 *   own (each read with NB loads a thread in flight), accumulating n_i and d_i; o_i = n_i / (d_i + eps), and z_i = d_i + eps
 *   into z[BH][T] (in either layout) for the backward.
 *
 * Backward, for y_i = n_i / (d_i + eps):
 *   dn_i = do_i / (d_i + eps), dd_i = -(do_i . y_i) / (d_i + eps),
 *   da_ij = dn_i . v_j + dd_i, ds_ij = da_ij (c1 + 2 c2 s_ij),
 *   dq_i = scale sum_j ds_ij k_j, dk_j = scale sum_i ds_ij q_i,
 *   dv_j = sum_i a_ij dn_i.
 * zk_poly_bwd_q<F, DV, BQ, R, T, HI, SAVED>: per query: dn_i and dd_i, then a
 *   walk over the keys for dq_i. SAVED (the forward's o and z given): dn_i =
 *   do_i / z_i, dd_i = -(do_i . o_i) / z_i straight away. Otherwise a first
 *   walk over the keys recomputes n_i, d_i, and the second runs from the last
 *   key tile back (the tile left in shared memory is not reloaded). SAVED
 *   drops a third of the backward's work. dn_i and dd_i go into scratch:
 *   stats[BH][T][DV + 1] (in either layout).
 * zk_poly_bwd_kv<F, DV, BQ, R, T, HI>: per key j: walks the query tiles from its own
 *   to the last, with q, dn, dd of each tile in shared memory; gives dk_j, dv_j
 *   without atomics.
 *
 * Long sequences take the chunked linear form instead (the 136-wide symmetric
 * feature state of F = 16): poly_attention_chunked.cu; the choice is
 * zoo_cuda_poly_form's (codegen_cuda.h).
 */
#ifndef ZK_POLY_ATTENTION_CU
#define ZK_POLY_ATTENTION_CU

/* Width of a shared-memory row holding w floats: a multiple of 4, so that
 * rows are 16-byte aligned and a thread reads them with 16-byte loads. */
#define ZK_POLY_PAD(w) (((w) + 3) / 4 * 4)

/* Loads rows [r0, r0 + BQ) of a [T, W] slice whose rows are LD floats apart
 * into sh[BQ][ZK_POLY_PAD(W)] (zeros past T and in the padding), scaled by
 * mul. All BQ threads of the block take part (blockDim.x = BQ), each with
 * up to NBMAX loads in flight at once. The forward takes its NB (the
 * emitter's poly_fwd_batch); the backward kernels, whose registers are full
 * (ptxas spills at DV 5 and 42 with 8), one at a time. */
template <int W, int BQ, int T, int LD, int NBMAX = 1>
__device__ __forceinline__ void zk_poly_load_tile(float *sh, const float *__restrict__ src, int r0,
                                                  float mul) {
  constexpr int WP = ZK_POLY_PAD(W);
  if constexpr (NBMAX == 1) {
    for (int e = threadIdx.x; e < BQ * WP; e += BQ) {
      int r = e / WP, c = e - r * WP;
      sh[e] = (r0 + r < T && c < W) ? src[(zk_i64)(r0 + r) * LD + c] * mul : 0.0f;
    }
  } else {
    zk_tile_copy<BQ * WP, BQ, NBMAX, float>(
        [&](int e) { return zk_slice_get<W, WP, T, LD>(src, r0, e); },
        [&](int e, float x) { sh[e] = x * mul; });
  }
}

/* Row i of a [T, W] slice whose rows are LD floats apart, times mul, into
 * registers (zeros when !ok); and registers times mul into row i. Each thread
 * moves a row of its own, so a warp's 32 rows are LD floats apart: read or
 * written a float at a time, each instruction touches 32 sectors, and F of
 * them filled the L1 (Nsight Compute at rebased 32/48: the forward's L1 73%
 * busy, 7.5 of 32 bytes a sector used). Where W and LD are multiples of 4, a
 * row moves in 16-byte pieces: a quarter of the instructions, the same values.
 * The slices are then 16-byte aligned: every tensor starts 256 bytes into its
 * memory (plan.h; a reshape shares its input's start) and a pair's slice
 * starts a multiple of W or of LD floats after it. A check of the pointer's
 * alignment in the kernel kept both forms of the loads and took 154 registers
 * where the forward had 124 (rebased 64 / 128: 6 blocks an SM instead of 8,
 * and the forward 0.155 ms against 0.149 before either change). */
template <int W, int LD>
__device__ __forceinline__ void zk_poly_get_row(float (&x)[W], const float *__restrict__ base, int i, bool ok,
                                                float mul) {
  const float *p = base + (zk_i64)i * LD;
  if constexpr (W % 4 == 0 && LD % 4 == 0) {
#pragma unroll
    for (int w = 0; w < W; w += 4) {
      zk_f4 v = ok ? *reinterpret_cast<const zk_f4 *>(p + w) : zk_f4{0.0f, 0.0f, 0.0f, 0.0f};
      x[w] = v.x * mul, x[w + 1] = v.y * mul, x[w + 2] = v.z * mul, x[w + 3] = v.w * mul;
    }
    return;
  }
#pragma unroll
  for (int w = 0; w < W; w++) x[w] = ok ? p[w] * mul : 0.0f;
}

template <int W, int LD>
__device__ __forceinline__ void zk_poly_put_row(float *__restrict__ base, int i, const float (&x)[W], float mul) {
  float *p = base + (zk_i64)i * LD;
  if constexpr (W % 4 == 0 && LD % 4 == 0) {
#pragma unroll
    for (int w = 0; w < W; w += 4)
      *reinterpret_cast<zk_f4 *>(p + w) = zk_f4{x[w] * mul, x[w + 1] * mul, x[w + 2] * mul, x[w + 3] * mul};
    return;
  }
#pragma unroll
  for (int w = 0; w < W; w++) p[w] = x[w] * mul;
}

/* The scores q_i . k_j are one chain of F fused multiply-adds. Four
 * interleaved partial sums measured slower on the H200 (session 6, device
 * run 11, zoorun bench --profile): rebased 128/512 26.02 against 25.72 ms a
 * step, the forward 1.015 against 0.97 ms; the small cells the same within
 * 0.01 ms. The kernels are not waiting on that chain. */

/* Register blocking (all three kernels): a block of BQ threads takes R slabs
 * of BQ rows, rows tile R BQ + r BQ + threadIdx.x for r < R, so each element
 * read from shared memory feeds R rows, and the R dot products are independent
 * chains. The other side's tiles are BQ rows; for slab r a tile is whole (every
 * pair causal), diagonal (masked per pair) or skipped, the same for the whole
 * block.
 *
 * Passes: a walk over one shared tile is split by kind, with the kinds known
 * at compile time (the pass templates take the row range [RA, RB) of whole
 * slabs and the diagonal slab RD, or -1), so whole tiles carry no causal test
 * and skipped slabs no branch. On the diagonal tile a warp stops at its own
 * last row (queries: keys past (threadIdx.x | 31) are masked for the whole
 * warp; keys: queries before threadIdx.x & ~31), which leaves a quarter of a
 * 64-tile's pairs undone; the whole slabs walk the rest of that tile alone.
 * zk_poly_slab_switch turns the block-uniform diagonal slab index into the
 * template argument (R <= 4 cases). */
template <int V> struct zk_poly_const {
  static constexpr int value = V;
};

template <int BQ>
__device__ __forceinline__ int zk_poly_warp_end() {
  int e = ((int)threadIdx.x | 31) + 1;
  return e < BQ ? e : BQ;
}

template <int R, int RD, typename Fn>
__device__ __forceinline__ void zk_poly_slab_switch(int rd, const Fn &fn) {
  if constexpr (RD + 1 < R) {
    if (rd != RD) {
      zk_poly_slab_switch<R, RD + 1>(rd, fn);
      return;
    }
  }
  fn(zk_poly_const<RD>());
}

/* Query-side pass over keys jj in [j0, j1) of the tile in ks, vs.
 * MODE 0: n_i, d_i into acc, acc1 (forward and bwd_q's first walk).
 * MODE 1: dq_i into dqi, with acc = dn_i, acc1 = dd_i.
 * This walk and zk_poly_kvpass's are unrolled twice: once or 4 times measured
 * the same or slower (.gpu/s16run13.sh, ms a step: Based 128 / 512 23.82-23.84
 * and 23.85-23.86 against 23.78-23.79; Based 64 / 128 2.34 and 2.40 against
 * 2.34; rebased 32 / 48 0.88 and 0.88 against 0.87). */
template <int F, int DV, int BQ, int R, int MODE, int RA, int RB, int RD>
__device__ __forceinline__ void zk_poly_qpass(const float *ks, const float *vs, int j0, int j1,
                                              const float (&qi)[R][F], float (&acc)[R][DV],
                                              float (&acc1)[R], float (&dqi)[R][F], float c0,
                                              float c1, float c2) {
  constexpr int FP = ZK_POLY_PAD(F), DVP = ZK_POLY_PAD(DV);
  const int me = (int)threadIdx.x;
#pragma unroll 2
  for (int jj = j0; jj < j1; jj++) {
    float kv[F], vv[DV];
#pragma unroll
    for (int f = 0; f < F; f++) kv[f] = ks[jj * FP + f];
#pragma unroll
    for (int e = 0; e < DV; e++) vv[e] = vs[jj * DVP + e];
#pragma unroll
    for (int r = 0; r < R; r++) {
      if ((r < RA || r >= RB) && r != RD) continue; /* compile-time after unrolling */
      float s = 0.0f;
#pragma unroll
      for (int f = 0; f < F; f++) s += qi[r][f] * kv[f];
      if (MODE == 0) {
        float a = c0 + s * (c1 + c2 * s);
        if (r == RD && jj > me) a = 0.0f; /* causal: j <= i */
        acc1[r] += a;
#pragma unroll
        for (int e = 0; e < DV; e++) acc[r][e] += a * vv[e];
      } else {
        float da = acc1[r];
#pragma unroll
        for (int e = 0; e < DV; e++) da += acc[r][e] * vv[e];
        float ds = da * (c1 + 2.0f * c2 * s);
        if (r == RD && jj > me) ds = 0.0f;
#pragma unroll
        for (int f = 0; f < F; f++) dqi[r][f] += ds * kv[f];
      }
    }
  }
}

/* The query side's walk over one key tile kt (loaded in ks, vs): slabs
 * r > kt - slab0 whole, slab kt - slab0 diagonal. */
template <int F, int DV, int BQ, int R, int MODE, int T>
__device__ __forceinline__ void zk_poly_qtile(const float *ks, const float *vs, int kt, int rd,
                                              const float (&qi)[R][F], float (&acc)[R][DV],
                                              float (&acc1)[R], float (&dqi)[R][F], float c0,
                                              float c1, float c2) {
  /* keys past T (the zeros of a last tile that T does not fill) are not walked */
  int kend = T - kt * BQ < BQ ? T - kt * BQ : BQ;
  if (rd < 0) {
    zk_poly_qpass<F, DV, BQ, R, MODE, 0, R, -1>(ks, vs, 0, kend, qi, acc, acc1, dqi, c0, c1, c2);
    return;
  }
  zk_poly_slab_switch<R, 0>(rd, [&](auto c) {
    constexpr int RD = decltype(c)::value;
    int je = zk_poly_warp_end<BQ>();
    je = je < kend ? je : kend;
    zk_poly_qpass<F, DV, BQ, R, MODE, RD + 1, R, RD>(ks, vs, 0, je, qi, acc, acc1, dqi, c0, c1, c2);
    if (RD + 1 < R)
      zk_poly_qpass<F, DV, BQ, R, MODE, RD + 1, R, -1>(ks, vs, je, kend, qi, acc, acc1, dqi, c0, c1,
                                                       c2);
  });
}

template <int F, int DV, int BQ, int R, int T, int HI, int NB = 1>
__device__ __forceinline__ void zk_poly_fwd(const float *__restrict__ q,
                                            const float *__restrict__ k,
                                            const float *__restrict__ v, float *__restrict__ o,
                                            float *__restrict__ z, float c0, float c1, float c2,
                                            float scale, float eps) {
  constexpr int QT = BQ * R, NTILE = (T + QT - 1) / QT;
  constexpr int FP = ZK_POLY_PAD(F), DVP = ZK_POLY_PAD(DV);
  constexpr int LQ = ZK_HEAD_LD(F, ZK_HQ(HI)), LV = ZK_HEAD_LD(DV, ZK_HV(HI));
  __align__(16) __shared__ float ks[BQ * FP];
  __align__(16) __shared__ float vs[BQ * DVP];
  int bh = blockIdx.x / NTILE, tile = blockIdx.x % NTILE;
  const float *qb = q + zk_head_slice<F, T, ZK_HQ(HI)>(bh), *kb = k + zk_head_slice<F, T, ZK_HQ(HI)>(bh);
  const float *vb = v + zk_head_slice<DV, T, ZK_HV(HI)>(bh);
  float *ob = o + zk_head_slice<DV, T, ZK_HV(HI)>(bh), *zb = z + (zk_i64)bh * T;

  float qi[R][F], num[R][DV], den[R], unused[R][F];
#pragma unroll
  for (int r = 0; r < R; r++) {
    int i = tile * QT + r * BQ + threadIdx.x;
    zk_poly_get_row<F, LQ>(qi[r], qb, i, i < T, scale);
#pragma unroll
    for (int e = 0; e < DV; e++) num[r][e] = 0.0f;
    den[r] = 0.0f;
  }
  int slab0 = tile * R; /* slab r covers key tile slab0 + r */
  int nkt = slab0 + R < (T + BQ - 1) / BQ ? slab0 + R : (T + BQ - 1) / BQ;
  for (int kt = 0; kt < nkt; kt++) {
    __syncthreads();
    zk_poly_load_tile<F, BQ, T, LQ, NB>(ks, kb, kt * BQ, 1.0f);
    zk_poly_load_tile<DV, BQ, T, LV, NB>(vs, vb, kt * BQ, 1.0f);
    __syncthreads();
    zk_poly_qtile<F, DV, BQ, R, 0, T>(ks, vs, kt, kt - slab0, qi, num, den, unused, c0, c1, c2);
  }
#pragma unroll
  for (int r = 0; r < R; r++) {
    int i = tile * QT + r * BQ + threadIdx.x;
    if (i < T) {
      float zi = den[r] + eps, inv = 1.0f / zi;
#pragma unroll
      for (int e = 0; e < DV; e++) ob[(zk_i64)i * LV + e] = num[r][e] * inv;
      zb[i] = zi;
    }
  }
}

template <int F, int DV, int BQ, int R, int T, int HI, bool SAVED, int NB = 1>
__device__ __forceinline__ void zk_poly_bwd_q(const float *__restrict__ dout,
                                              const float *__restrict__ q,
                                              const float *__restrict__ k,
                                              const float *__restrict__ v,
                                              const float *__restrict__ o,
                                              const float *__restrict__ z,
                                              float *__restrict__ dq, float *__restrict__ stats,
                                              float c0, float c1, float c2, float scale,
                                              float eps) {
  constexpr int QT = BQ * R, NTILE = (T + QT - 1) / QT;
  constexpr int FP = ZK_POLY_PAD(F), DVP = ZK_POLY_PAD(DV);
  constexpr int LQ = ZK_HEAD_LD(F, ZK_HQ(HI)), LV = ZK_HEAD_LD(DV, ZK_HV(HI));
  __align__(16) __shared__ float ks[BQ * FP];
  __align__(16) __shared__ float vs[BQ * DVP];
  int bh = blockIdx.x / NTILE, tile = blockIdx.x % NTILE;
  const float *qb = q + zk_head_slice<F, T, ZK_HQ(HI)>(bh), *kb = k + zk_head_slice<F, T, ZK_HQ(HI)>(bh);
  const float *vb = v + zk_head_slice<DV, T, ZK_HV(HI)>(bh), *dob = dout + zk_head_slice<DV, T, ZK_HV(HI)>(bh);
  float *dqb = dq + zk_head_slice<F, T, ZK_HQ(HI)>(bh);

  float qi[R][F], dn[R][DV], dd[R], dqi[R][F];
#pragma unroll
  for (int r = 0; r < R; r++) {
    int i = tile * QT + r * BQ + threadIdx.x;
    zk_poly_get_row<F, LQ>(qi[r], qb, i, i < T, scale);
#pragma unroll
    for (int f = 0; f < F; f++) dqi[r][f] = 0.0f;
#pragma unroll
    for (int e = 0; e < DV; e++) dn[r][e] = 0.0f; /* n_i during the first walk */
    dd[r] = 0.0f;                                  /* d_i during the first walk */
  }
  int slab0 = tile * R;
  int nkt = slab0 + R < (T + BQ - 1) / BQ ? slab0 + R : (T + BQ - 1) / BQ;

  if constexpr (SAVED) { /* dn_i, dd_i from the forward's o_i and z_i */
    const float *obb = o + zk_head_slice<DV, T, ZK_HV(HI)>(bh), *zb = z + (zk_i64)bh * T;
#pragma unroll
    for (int r = 0; r < R; r++) {
      int i = tile * QT + r * BQ + threadIdx.x;
      float inv = i < T ? 1.0f / zb[i] : 0.0f, doy = 0.0f;
#pragma unroll
      for (int e = 0; e < DV; e++) {
        float de = i < T ? dob[(zk_i64)i * LV + e] : 0.0f;
        doy += de * (i < T ? obb[(zk_i64)i * LV + e] : 0.0f);
        dn[r][e] = de * inv;
      }
      dd[r] = -doy * inv;
    }
  } else {
    /* first walk: n_i and d_i */
    for (int kt = 0; kt < nkt; kt++) {
      __syncthreads();
      zk_poly_load_tile<F, BQ, T, LQ, NB>(ks, kb, kt * BQ, 1.0f);
      zk_poly_load_tile<DV, BQ, T, LV, NB>(vs, vb, kt * BQ, 1.0f);
      __syncthreads();
      zk_poly_qtile<F, DV, BQ, R, 0, T>(ks, vs, kt, kt - slab0, qi, dn, dd, dqi, c0, c1, c2);
    }
    /* dn_i, dd_i */
#pragma unroll
    for (int r = 0; r < R; r++) {
      int i = tile * QT + r * BQ + threadIdx.x;
      float inv = 1.0f / (dd[r] + eps), doy = 0.0f;
#pragma unroll
      for (int e = 0; e < DV; e++) {
        float de = i < T ? dob[(zk_i64)i * LV + e] : 0.0f;
        doy += de * dn[r][e] * inv;
        dn[r][e] = de * inv;
      }
      dd[r] = -doy * inv;
    }
  }

  /* the walk for dq_i, from the last key tile back to the first, so that
   * without SAVED the tile still in shared memory is walked first without
   * reloading it */
  for (int kt = nkt - 1; kt >= 0; kt--) {
    if (SAVED || kt != nkt - 1) {
      __syncthreads();
      zk_poly_load_tile<F, BQ, T, LQ, NB>(ks, kb, kt * BQ, 1.0f);
      zk_poly_load_tile<DV, BQ, T, LV, NB>(vs, vb, kt * BQ, 1.0f);
      __syncthreads();
    }
    zk_poly_qtile<F, DV, BQ, R, 1, T>(ks, vs, kt, kt - slab0, qi, dn, dd, dqi, c0, c1, c2);
  }
#pragma unroll
  for (int r = 0; r < R; r++) {
    int i = tile * QT + r * BQ + threadIdx.x;
    if (i < T) {
      zk_poly_put_row<F, LQ>(dqb, i, dqi[r], scale);
      float *st = stats + ((zk_i64)bh * T + i) * (DV + 1);
#pragma unroll
      for (int e = 0; e < DV; e++) st[e] = dn[r][e];
      st[DV] = dd[r];
    }
  }
}

/* Key-side pass over queries ii in [i0, i1) of the tile in qs, sts: key slabs
 * [RA, RB) whole, slab RD diagonal (i >= j). */
template <int F, int DV, int BQ, int R, int RA, int RB, int RD>
__device__ __forceinline__ void zk_poly_kvpass(const float *qs, const float *sts, int i0, int i1,
                                               const float (&kj)[R][F], const float (&vj)[R][DV],
                                               float (&dkj)[R][F], float (&dvj)[R][DV], float c0,
                                               float c1, float c2) {
  constexpr int FP = ZK_POLY_PAD(F), SP = ZK_POLY_PAD(DV + 1);
  const int me = (int)threadIdx.x;
#pragma unroll 2
  for (int ii = i0; ii < i1; ii++) {
    float qv[F], sv[DV + 1];
#pragma unroll
    for (int f = 0; f < F; f++) qv[f] = qs[ii * FP + f];
#pragma unroll
    for (int e = 0; e <= DV; e++) sv[e] = sts[ii * SP + e];
#pragma unroll
    for (int r = 0; r < R; r++) {
      if ((r < RA || r >= RB) && r != RD) continue; /* compile-time after unrolling */
      float s = 0.0f, da = sv[DV];
#pragma unroll
      for (int f = 0; f < F; f++) s += qv[f] * kj[r][f];
#pragma unroll
      for (int e = 0; e < DV; e++) da += sv[e] * vj[r][e];
      float a = c0 + s * (c1 + c2 * s);
      float ds = da * (c1 + 2.0f * c2 * s);
      if (r == RD && ii < me) a = ds = 0.0f; /* causal: i >= j */
#pragma unroll
      for (int f = 0; f < F; f++) dkj[r][f] += ds * qv[f]; /* qv holds scale q_i */
#pragma unroll
      for (int e = 0; e < DV; e++) dvj[r][e] += a * sv[e];
    }
  }
}

/* Keys j = tile R BQ + r BQ + threadIdx.x; query tiles from slab r's own to
 * the last. */
template <int F, int DV, int BQ, int R, int T, int HI, int NB = 1>
__device__ __forceinline__ void zk_poly_bwd_kv(const float *__restrict__ q,
                                               const float *__restrict__ k,
                                               const float *__restrict__ v,
                                               const float *__restrict__ stats,
                                               float *__restrict__ dk, float *__restrict__ dv,
                                               float c0, float c1, float c2, float scale) {
  constexpr int QT = BQ * R, NTILE = (T + QT - 1) / QT, NT = (T + BQ - 1) / BQ;
  constexpr int FP = ZK_POLY_PAD(F), SP = ZK_POLY_PAD(DV + 1);
  constexpr int LQ = ZK_HEAD_LD(F, ZK_HQ(HI)), LV = ZK_HEAD_LD(DV, ZK_HV(HI));
  __align__(16) __shared__ float qs[BQ * FP];
  __align__(16) __shared__ float sts[BQ * SP];
  int bh = blockIdx.x / NTILE, tile = blockIdx.x % NTILE;
  const float *qb = q + zk_head_slice<F, T, ZK_HQ(HI)>(bh), *kb = k + zk_head_slice<F, T, ZK_HQ(HI)>(bh);
  const float *vb = v + zk_head_slice<DV, T, ZK_HV(HI)>(bh), *sb = stats + (zk_i64)bh * T * (DV + 1);
  float *dkb = dk + zk_head_slice<F, T, ZK_HQ(HI)>(bh), *dvb = dv + zk_head_slice<DV, T, ZK_HV(HI)>(bh);

  float kj[R][F], vj[R][DV], dkj[R][F], dvj[R][DV];
#pragma unroll
  for (int r = 0; r < R; r++) {
    int j = tile * QT + r * BQ + threadIdx.x;
    zk_poly_get_row<F, LQ>(kj[r], kb, j, j < T, 1.0f);
#pragma unroll
    for (int f = 0; f < F; f++) dkj[r][f] = 0.0f;
#pragma unroll
    for (int e = 0; e < DV; e++) {
      vj[r][e] = j < T ? vb[(zk_i64)j * LV + e] : 0.0f;
      dvj[r][e] = 0.0f;
    }
  }
  int slab0 = tile * R;
  for (int qt = slab0; qt < NT; qt++) {
    __syncthreads();
    zk_poly_load_tile<F, BQ, T, LQ, NB>(qs, qb, qt * BQ, scale); /* scale q_i once here */
    zk_poly_load_tile<DV + 1, BQ, T, DV + 1, NB>(sts, sb, qt * BQ, 1.0f);
    __syncthreads();
    int iend = T - qt * BQ < BQ ? T - qt * BQ : BQ;
    int rk = qt - slab0; /* slabs r < rk whole, slab rk diagonal, the rest skipped */
    if (rk >= R) {
      zk_poly_kvpass<F, DV, BQ, R, 0, R, -1>(qs, sts, 0, iend, kj, vj, dkj, dvj, c0, c1, c2);
      continue;
    }
    zk_poly_slab_switch<R, 0>(rk, [&](auto c) {
      constexpr int RK = decltype(c)::value;
      int ib = (int)threadIdx.x & ~31; /* the warp's first key: earlier queries are masked */
      ib = ib < iend ? ib : iend;
      if (RK > 0)
        zk_poly_kvpass<F, DV, BQ, R, 0, RK, -1>(qs, sts, 0, ib, kj, vj, dkj, dvj, c0, c1, c2);
      zk_poly_kvpass<F, DV, BQ, R, 0, RK, RK>(qs, sts, ib, iend, kj, vj, dkj, dvj, c0, c1, c2);
    });
  }
#pragma unroll
  for (int r = 0; r < R; r++) {
    int j = tile * QT + r * BQ + threadIdx.x;
    if (j < T) {
      zk_poly_put_row<F, LQ>(dkb, j, dkj[r], 1.0f);
#pragma unroll
      for (int e = 0; e < DV; e++) dvb[(zk_i64)j * LV + e] = dvj[r][e];
    }
  }
}

#endif /* ZK_POLY_ATTENTION_CU */
