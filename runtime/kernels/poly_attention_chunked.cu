/* poly_attention_chunked.cu: causal polynomial attention (ReBased, Based) and
 * its backward in the chunked linear form, for long sequences (ops.def; the
 * quadratic tiled form is poly_attention.cu, and compiler/codegen_intrinsics.c
 * chooses between them).
 *
 * Shapes: q, k, dq, dk [B, H, T, F]; v, o, do, dv [B, H, T, DV]; BH = B H;
 * or, with HI = H > 0 (layout 1, heads interleaved, ops.def), q, k, dq, dk
 * [B, T, H*F] and v, o, do, dv [B, T, H*DV], a pair's rows H F (H DV) floats
 * apart (zk_head_slice, ZK_HEAD_LD in common.cu); with HI = -H (layout 2)
 * q, k, dq, dk alone. The scratch (stats) keeps its own layout [BH][T][DV + 1]
 * in all three.
 *   s_ij = scale q_i.k_j, a_ij = c0 + c1 s_ij + c2 s_ij^2 for j <= i,
 *   o_i = n_i / (d_i + eps) with n_i = sum_j a_ij v_j, d_i = sum_j a_ij.
 *
 * The feature map. With q~ = scale q, a_ij = phq(q~_i).phk(k_j) where, over the
 * features d = (a, b) of one list,
 *   const  (if c0 != 0): phq = c0,                 phk = 1
 *   linear (if c1 != 0): phq = c1 q~_a,            phk = k_a            (F of them)
 *   quad   (if c2 != 0): phq = c2 w_ab q~_a q~_b,  phk = k_a k_b, a <= b (F (F + 1) / 2)
 * with w_ab = 1 on the diagonal and 2 off it (the symmetric square of q~.k).
 * The coefficients sit on the query side only, so negative ones need no square
 * root. Rows of q~ and k carry a 1 at index F, so every feature is x_a x_b:
 * const is (F, F), linear (a, F). D = 136 features for ReBased (c = 0, 0, 1),
 * 153 for Based (1, 1, 1/2), F = 16. K0, K1, K2 say which groups exist.
 *
 * The chunks. T splits into chunks of C rows. Inside a chunk the quadratic form
 * gives the pairs j <= i of that chunk; the chunks before it come through the
 * state S = sum_j phk(k_j) v'_j^T (D x W) with v'_j = [v_j, 1]: its last
 * column is z = sum_j phk(k_j), the denominator's state. So
 *   n_i = phq(q~_i)^T S[:, v] + intra, d_i = phq(q~_i).z + intra.
 *
 * Backward, with g_i = [dn_i, dd_i], dn_i = do_i / (d_i + eps),
 * dd_i = -(do_i . n_i) / (d_i + eps)^2 (so da_ij = g_i . v'_j), and
 * ds_ij = da_ij (c1 + 2 c2 s_ij):
 *   dq_i = scale (J_phq(q~_i)^T S g_i + sum_{j <= i, same chunk} ds_ij k_j)
 *   dk_j = J_phk(k_j)^T R v'_j + sum_{i >= j, same chunk} ds_ij q~_i
 *   dv_j = R[:, v]^T phk(k_j) + sum_{i >= j, same chunk} a_ij dn_i
 * where R = sum_{i in later chunks} phq(q~_i) g_i^T, a state swept backwards.
 * J^T u for u over the features is sum_d u_d d(x_a x_b)/dx times the
 * coefficient: x_b into slot a, x_a into slot b (slot F is thrown away).
 *
 * Kernels: one block of NT threads per pair (grid BH), walking its chunks in
 * order; the state lives in shared memory (D rows of SW floats, about 27 KB
 * for DV 42), the chunk's rows of q~, k (F + 1 wide), v' (SW wide) beside it,
 * all in dynamic shared memory (zk_poly_chunked_smem gives the bytes).
 *   zk_poly_chunked_fwd: per chunk, the outputs (and z_i = d_i + eps, z[BH][T])
 *     from S and the intra pairs, then S += the chunk's keys.
 *   zk_poly_chunked_bwd_q: the same walk recomputes n_i, d_i, forms g_i (kept in
 *     scratch: stats[BH][T][DV + 1], as the quadratic form's) and dq_i.
 *   zk_poly_chunked_bwd_kv: walks the chunks from the last with R; dk_j, dv_j.
 * Thread layout in a chunk: thread x takes row x % C and part x / C of the
 * NP = NT / C parts (each warp one part, so shared reads of the state are
 * broadcasts): part p owns value columns [p WQ, p WQ + WQ), WQ = ceil(DV / NP)
 * (no padding of DV to a power of two: at most NP - 1 spare columns; with 8 or
 * more, VEC, WQ and the row stride SW are rounded up to multiples of 4 and
 * rows are read 16 bytes at a time), the features d % NP == p for dq, dk
 * (their index pairs from small tables, so the loops over features are not
 * unrolled: NVRTC time) and the intra partners j % NP == p; parts meet through
 * shared memory. At narrow widths (not VEC) the outputs n_i, d_i and dv_j are
 * split the same way, by features and partners, over all columns, and added
 * over the parts after a barrier (zk_pc_row_out). Column ZC = NP WQ holds the
 * ones (z, dd). State updates: thread x takes features d of x % D (NUB = NT /
 * D column blocks of UB columns), or, for wide states, three features and a
 * block of columns (zk_pc_update). All sums are fp32.
 *
 * Faster later (needs a GPU to measure): at wide widths, the outputs split by
 * features as at narrow ones (the partial sums would need 50 KB of shared
 * memory at DV 42); tensor cores (tf32) for the state products. Not faster:
 * the chunk's weights a_ij made once into shared memory (part p those of the
 * keys j % NP == p) instead of by every part, at DV 42: forward 28.38 against
 * 28.52 ms, backward 95.42 against 86.92 (zoorun bench --poly, L 2048,
 * .gpu/s14run9.sh).
 */
#ifndef ZK_POLY_ATTENTION_CHUNKED_CU
#define ZK_POLY_ATTENTION_CHUNKED_CU

/* The layout's constants (see the header comment). */
template <int F, int DV, int C, int NT, bool K0, bool K1, bool K2>
struct zk_pc_shape {
  static constexpr int NP = NT / C;
  static constexpr int WQ0 = (DV + NP - 1) / NP;
  /* VEC (a part's columns 8 or more): WQ and SW multiples of 4, so that rows of
   * the state and of value-like tiles are read 16 bytes at a time */
  static constexpr bool VEC = WQ0 >= 8;
  static constexpr int WQ = VEC ? (WQ0 + 3) / 4 * 4 : WQ0;
  static constexpr int ZC = NP * WQ;
  static constexpr int WS = ZC + 1;
  static constexpr int D = (K0 ? 1 : 0) + (K1 ? F : 0) + (K2 ? F * (F + 1) / 2 : 0);
  static constexpr int NUB = NT / D > 0 ? NT / D : 1;
  static constexpr int UB = (WS + NUB - 1) / NUB;
  static constexpr int SW = VEC ? (NUB * UB + 3) / 4 * 4 : NUB * UB; /* row stride of states and value-like tiles */
  static constexpr int FP = F + 1;              /* row stride of q~ and k tiles: a 1 at F */
  static constexpr int TBL = (2 * D + 3) / 4 * 4; /* the feature tables' floats (what follows stays aligned) */
  /* narrow (!VEC) outputs: each part's sums over its share of the features and
   * keys, all WS columns, [NP][WS][C] (zk_pc_row_out); the backward's red2 holds
   * them too, so its rows are RW = max(FP, WS) wide there */
  static constexpr int RED = VEC ? 0 : NP * WS * C;
  static constexpr int RW = VEC || FP >= WS ? FP : WS;
};

/* acc[0 .. N) += s p[0 .. N), p 16-byte aligned when VEC (the same sums). */
template <int N, bool VEC>
__device__ __forceinline__ void zk_pc_axpy(float (&acc)[N], float s, const float *p) {
  if constexpr (VEC && N % 4 == 0) {
#pragma unroll
    for (int w = 0; w < N; w += 4) {
      zk_f4 v = *reinterpret_cast<const zk_f4 *>(p + w);
      acc[w] += s * v.x, acc[w + 1] += s * v.y, acc[w + 2] += s * v.z, acc[w + 3] += s * v.w;
    }
  } else {
#pragma unroll
    for (int w = 0; w < N; w++) acc[w] += s * p[w];
  }
}

/* sum over w < N of p[w] g[w] in order of w, onto u; p 16-byte aligned when VEC. */
template <int N, bool VEC>
__device__ __forceinline__ float zk_pc_dot(float u, const float *p, const float *g) {
  constexpr int N4 = VEC ? N / 4 * 4 : 0;
#pragma unroll
  for (int w = 0; w < N4; w += 4) {
    zk_f4 v = *reinterpret_cast<const zk_f4 *>(p + w);
    u += v.x * g[w], u += v.y * g[w + 1], u += v.z * g[w + 2], u += v.w * g[w + 3];
  }
#pragma unroll
  for (int w = N4; w < N; w++) u += p[w] * g[w];
  return u;
}

/* Column col of row `row` added over the NP parts' partial sums, in order of
 * the part: red[p][W][C] (the narrow outputs' scratch). */
template <int NP, int W, int C>
__device__ __forceinline__ float zk_pc_parts_sum(const float *red, int col, int row) {
  float x = 0.0f;
#pragma unroll
  for (int p = 0; p < NP; p++) x += red[(p * W + col) * C + row];
  return x;
}

/* x[0 .. N) = p[0 .. N), p 16-byte aligned when VEC. */
template <int N, bool VEC>
__device__ __forceinline__ void zk_pc_get(float *x, const float *p) {
  constexpr int N4 = VEC ? N / 4 * 4 : 0;
#pragma unroll
  for (int w = 0; w < N4; w += 4) {
    zk_f4 v = *reinterpret_cast<const zk_f4 *>(p + w);
    x[w] = v.x, x[w + 1] = v.y, x[w + 2] = v.z, x[w + 3] = v.w;
  }
#pragma unroll
  for (int w = N4; w < N; w++) x[w] = p[w];
}

/* Dynamic shared memory in bytes of kernel part (0 fwd, 1 bwd_q, 2 bwd_kv). The
 * emitter computes the same figure and checks it with a static_assert. */
template <int F, int DV, int C, int NT, bool K0, bool K1, bool K2>
constexpr int zk_poly_chunked_smem(int part) {
  using L = zk_pc_shape<F, DV, C, NT, K0, K1, K2>;
  int common = L::D * L::SW + 2 * C * L::FP + C * L::SW + L::TBL; /* state, q~, k, v', tables */
  if (part == 0) return 4 * (common + L::RED);                                     /* red2 */
  if (part == 1) return 4 * (common + 2 * C * L::SW + C * L::NP + C * L::NP * L::RW); /* do, g, red, red2 */
  return 4 * (common + C * L::SW + C * L::NP * L::FP + (L::VEC ? 0 : L::NP * L::ZC * C)); /* g, red2, dvred */
}

/* Rows [r0, r0 + C) of a [T, F] slice (rows LD floats apart) into
 * sh[C][F + 1], times mul, a 1 at column F of every row, zeros past T. */
template <int F, int C, int NT, int T, int LD>
__device__ __forceinline__ void zk_pc_load_fk(float *sh, const float *__restrict__ src, int r0, float mul) {
  zk_tile_copy<C * (F + 1), NT, 8, float>( /* up to 8 loads a thread in flight */
      [&](int e) {
        int r = e / (F + 1), c = e - r * (F + 1);
        return c < F && r0 + r < T ? src[(zk_i64)(r0 + r) * LD + c] : 0.0f;
      },
      [&](int e, float x) { sh[e] = e % (F + 1) == F ? 1.0f : x * mul; });
}

/* Rows [r0, r0 + C) of a slice with rows SRCW floats apart into sh[C][SW]: columns c < DV from
 * the source; column ZC from ONES = 1 (a 1 on rows before T), 2 (source column
 * DV), else 0; zeros elsewhere and past T. */
template <int DV, int SRCW, int ZC, int SW, int C, int NT, int T, int ONES>
__device__ __forceinline__ void zk_pc_load_cols(float *sh, const float *__restrict__ src, int r0) {
  zk_tile_copy<C * SW, NT, 8, float>( /* up to 8 loads a thread in flight */
      [&](int e) {
        int r = e / SW, c = e - r * SW;
        float x = 0.0f;
        if (r0 + r < T) {
          if (c < DV) x = src[(zk_i64)(r0 + r) * SRCW + c];
          else if (c == ZC) x = ONES == 1 ? 1.0f : ONES == 2 ? src[(zk_i64)(r0 + r) * SRCW + DV] : 0.0f;
        }
        return x;
      },
      [&](int e, float x) { sh[e] = x; });
}

/* Feature tables, in the order of the header comment: fc[d] the query-side
 * coefficient, fab[d] = a | b << 8. */
template <int F, bool K0, bool K1, bool K2>
__device__ __forceinline__ void zk_pc_tables(float *fc, int *fab, float c0, float c1, float c2) {
  if (threadIdx.x != 0) return;
  int d = 0;
  if (K0) fc[d] = c0, fab[d++] = F | F << 8;
  if (K1)
    for (int a = 0; a < F; a++) fc[d] = c1, fab[d++] = a | F << 8;
  if (K2)
    for (int a = 0; a < F; a++)
      for (int b = a; b < F; b++) fc[d] = a == b ? c2 : 2.0f * c2, fab[d++] = a | b << 8;
}

/* st[d][0 .. SW) += w_d sum_{r < C} x[r][a_d] x[r][b_d] y[r][0 .. SW) for every
 * feature d, w_d = fc[d] when COEF (query side) else 1. x is a q~ or k tile,
 * y a value-like tile.
 *
 * Narrow states (SW < 24): thread x takes feature x % D and columns [x / D UB,
 * + UB), D NUB items. Wide ones: a thread takes G = 3 features at once, d = 3 g
 * .. 3 g + 2, and UW columns of each, in as many column blocks as the threads
 * allow (DV 42: 46 groups of 9 columns, 230 threads where the narrow form kept
 * 136 busy); each row's value elements feed 3 features (15 shared reads for 27
 * fused multiply-adds instead of 47 for 45). Every sum is still over r in
 * order, so the state has the same bits in either form. */
template <int D, int SW, int NT>
struct zk_pc_update_shape {
  static constexpr bool WIDE = SW >= 24;
  static constexpr int G = WIDE ? 3 : 1;
  static constexpr int NG = (D + G - 1) / G;                  /* feature groups */
  static constexpr int NCB = WIDE ? (NT / NG > 0 ? NT / NG : 1) : 0;
  static constexpr int UW = WIDE ? (SW + NCB - 1) / NCB : 0;  /* columns a wide item takes */
};

template <int F, int DV, int C, int NT, bool K0, bool K1, bool K2, bool COEF>
__device__ __forceinline__ void zk_pc_update(float *st, const float *x, const float *y, const float *fc,
                                             const int *fab) {
  using L = zk_pc_shape<F, DV, C, NT, K0, K1, K2>;
  using U = zk_pc_update_shape<L::D, L::SW, NT>;
  if constexpr (U::WIDE) {
    for (int it = threadIdx.x; it < U::NG * U::NCB; it += NT) {
      int g = it % U::NG, u0 = it / U::NG * U::UW;
      int a[3], b[3];
#pragma unroll
      for (int q = 0; q < 3; q++) {
        int d = 3 * g + q < L::D ? 3 * g + q : L::D - 1; /* a last, partial group repeats a feature */
        a[q] = fab[d] & 255, b[q] = fab[d] >> 8;
      }
      float acc[3][U::UW];
#pragma unroll
      for (int q = 0; q < 3; q++)
#pragma unroll
        for (int u = 0; u < U::UW; u++) acc[q][u] = 0.0f;
#pragma unroll 2
      for (int r = 0; r < C; r++) {
        const float *xr = x + r * L::FP, *yr = y + r * L::SW + u0;
        float p[3], yv[U::UW];
#pragma unroll
        for (int q = 0; q < 3; q++) p[q] = xr[a[q]] * xr[b[q]];
#pragma unroll
        for (int u = 0; u < U::UW; u++) yv[u] = u0 + u < L::SW ? yr[u] : 0.0f;
#pragma unroll
        for (int q = 0; q < 3; q++)
#pragma unroll
          for (int u = 0; u < U::UW; u++) acc[q][u] += p[q] * yv[u];
      }
#pragma unroll
      for (int q = 0; q < 3; q++) {
        int d = 3 * g + q;
        if (d >= L::D) break;
        float w = COEF ? fc[d] : 1.0f;
        float *sd = st + d * L::SW + u0;
#pragma unroll
        for (int u = 0; u < U::UW; u++)
          if (u0 + u < L::SW) sd[u] += w * acc[q][u];
      }
    }
    return;
  }
  for (int it = threadIdx.x; it < L::D * L::NUB; it += NT) {
    int d = it % L::D, u0 = it / L::D * L::UB;
    int a = fab[d] & 255, b = fab[d] >> 8;
    float acc[L::UB];
#pragma unroll
    for (int u = 0; u < L::UB; u++) acc[u] = 0.0f;
#pragma unroll 4
    for (int r = 0; r < C; r++) {
      float p = x[r * L::FP + a] * x[r * L::FP + b];
      const float *yr = y + r * L::SW + u0;
#pragma unroll
      for (int u = 0; u < L::UB; u++) acc[u] += p * yr[u];
    }
    float w = COEF ? fc[d] : 1.0f;
    float *sd = st + d * L::SW + u0;
#pragma unroll
    for (int u = 0; u < L::UB; u++) sd[u] += w * acc[u];
  }
}

/* One row's numerator columns [cp, cp + WQ) and denominator (without eps) for
 * query row `row` of the chunk: from the state (unless first) and the intra
 * pairs j <= row. qi: q~_i with the 1 at F, in registers; qrow: the same row
 * in shared memory (read at the features' indices).
 *
 * Wide (VEC): each of the row's NP parts walks every feature and key for its
 * own WQ columns. Narrow: a part's few columns would not pay for the feature
 * products and the scores that every part made again (DV 5: 7 shared reads for
 * 3 fused multiply-adds a feature, and the 64 scores four times), so part p
 * takes the features d % NP == p and the keys j % NP == p for all WS columns
 * (the denominator's ones column among them), into red[p][w][row] (NP WS C
 * floats); after a barrier (every thread of the block calls this) each part
 * adds the NP sums of its columns in order of p. */
template <int F, int DV, int C, int NT, bool K0, bool K1, bool K2>
__device__ __forceinline__ void zk_pc_row_out(const float *st, const float *ks, const float *vs,
                                              const float *fc, const int *fab, const float *qrow,
                                              const float (&qi)[F + 1], int row, int cp, bool first,
                                              float c0, float c1, float c2,
                                              float (&acc)[zk_pc_shape<F, DV, C, NT, K0, K1, K2>::WQ],
                                              float &den, float *red) {
  using L = zk_pc_shape<F, DV, C, NT, K0, K1, K2>;
  if constexpr (!L::VEC) {
    const int part = (int)threadIdx.x / C;
    float pa[L::WS];
#pragma unroll
    for (int w = 0; w < L::WS; w++) pa[w] = 0.0f;
    if (!first)
      for (int d = part; d < L::D; d += L::NP) {
        int ab = fab[d];
        float ph = fc[d] * qrow[ab & 255] * qrow[ab >> 8];
        const float *sd = st + d * L::SW;
#pragma unroll
        for (int w = 0; w < L::WS; w++) pa[w] += ph * sd[w];
      }
#pragma unroll 2
    for (int j = part; j < C; j += L::NP) {
      const float *kj = ks + j * L::FP, *vj = vs + j * L::SW; /* vj[ZC]: 1 before T */
      float s = 0.0f;
#pragma unroll
      for (int f = 0; f < F; f++) s += qi[f] * kj[f];
      float a = c0 + s * (c1 + c2 * s);
      if (j > row) a = 0.0f; /* causal: j <= i */
#pragma unroll
      for (int w = 0; w < L::WS; w++) pa[w] += a * vj[w];
    }
#pragma unroll
    for (int w = 0; w < L::WS; w++) red[(part * L::WS + w) * C + row] = pa[w];
    __syncthreads();
#pragma unroll
    for (int w = 0; w < L::WQ; w++) acc[w] = zk_pc_parts_sum<L::NP, L::WS, C>(red, cp + w, row);
    den = zk_pc_parts_sum<L::NP, L::WS, C>(red, L::ZC, row);
    return;
  }
#pragma unroll
  for (int w = 0; w < L::WQ; w++) acc[w] = 0.0f;
  den = 0.0f;
  if (!first)
#pragma unroll 2
    for (int d = 0; d < L::D; d++) {
      int ab = fab[d];
      float ph = fc[d] * qrow[ab & 255] * qrow[ab >> 8];
      const float *sd = st + d * L::SW;
      den += ph * sd[L::ZC];
      zk_pc_axpy<L::WQ, L::VEC>(acc, ph, sd + cp);
    }
#pragma unroll 2
  for (int j = 0; j < C; j++) {
    const float *kj = ks + j * L::FP, *vj = vs + j * L::SW + cp;
    float s = 0.0f;
#pragma unroll
    for (int f = 0; f < F; f++) s += qi[f] * kj[f];
    float a = c0 + s * (c1 + c2 * s);
    if (j > row) a = 0.0f; /* causal: j <= i */
    den += a;
    zk_pc_axpy<L::WQ, L::VEC>(acc, a, vj);
  }
}

template <int F, int DV, int C, int NT, bool K0, bool K1, bool K2, int T, int HI>
__device__ __forceinline__ void zk_poly_chunked_fwd(const float *__restrict__ q, const float *__restrict__ k,
                                                    const float *__restrict__ v, float *__restrict__ o,
                                                    float *__restrict__ z, float c0, float c1, float c2,
                                                    float scale, float eps) {
  using L = zk_pc_shape<F, DV, C, NT, K0, K1, K2>;
  extern __shared__ float zk_pc_sh[];
  float *st = zk_pc_sh, *qs = st + L::D * L::SW, *ks = qs + C * L::FP, *vs = ks + C * L::FP;
  float *fc = vs + C * L::SW, *red2 = fc + L::TBL;
  int *fab = (int *)(fc + L::D);
  constexpr int LQ = ZK_HEAD_LD(F, ZK_HQ(HI)), LV = ZK_HEAD_LD(DV, ZK_HV(HI));
  int bh = blockIdx.x;
  const float *qb = q + zk_head_slice<F, T, ZK_HQ(HI)>(bh), *kb = k + zk_head_slice<F, T, ZK_HQ(HI)>(bh);
  const float *vb = v + zk_head_slice<DV, T, ZK_HV(HI)>(bh);
  float *ob = o + zk_head_slice<DV, T, ZK_HV(HI)>(bh), *zb = z + (zk_i64)bh * T;
  for (int e = threadIdx.x; e < L::D * L::SW; e += NT) st[e] = 0.0f;
  zk_pc_tables<F, K0, K1, K2>(fc, fab, c0, c1, c2);
  int row = threadIdx.x % C, cp = threadIdx.x / C * L::WQ;
  for (int r0 = 0; r0 < T; r0 += C) {
    __syncthreads();
    zk_pc_load_fk<F, C, NT, T, LQ>(qs, qb, r0, scale);
    zk_pc_load_fk<F, C, NT, T, LQ>(ks, kb, r0, 1.0f);
    zk_pc_load_cols<DV, LV, L::ZC, L::SW, C, NT, T, 1>(vs, vb, r0);
    __syncthreads();
    float qi[F + 1], acc[L::WQ], den;
#pragma unroll
    for (int f = 0; f <= F; f++) qi[f] = qs[row * L::FP + f];
    zk_pc_row_out<F, DV, C, NT, K0, K1, K2>(st, ks, vs, fc, fab, qs + row * L::FP, qi, row, cp, r0 == 0, c0, c1, c2, acc, den,
                                            red2);
    int i = r0 + row;
    if (i < T) {
      float zi = den + eps, inv = 1.0f / zi;
#pragma unroll
      for (int w = 0; w < L::WQ; w++)
        if (cp + w < DV) ob[(zk_i64)i * LV + cp + w] = acc[w] * inv;
      if (cp == 0) zb[i] = zi; /* every part has the whole d_i */
    }
    __syncthreads();
    if (r0 + C < T) zk_pc_update<F, DV, C, NT, K0, K1, K2, false>(st, ks, vs, fc, fab);
  }
}

template <int F, int DV, int C, int NT, bool K0, bool K1, bool K2, int T, int HI>
__device__ __forceinline__ void zk_poly_chunked_bwd_q(const float *__restrict__ dout, const float *__restrict__ q,
                                                      const float *__restrict__ k, const float *__restrict__ v,
                                                      float *__restrict__ dq, float *__restrict__ stats,
                                                      float c0, float c1, float c2, float scale, float eps) {
  using L = zk_pc_shape<F, DV, C, NT, K0, K1, K2>;
  extern __shared__ float zk_pc_sh[];
  float *st = zk_pc_sh, *qs = st + L::D * L::SW, *ks = qs + C * L::FP, *vs = ks + C * L::FP;
  float *fc = vs + C * L::SW;
  int *fab = (int *)(fc + L::D);
  float *dos = fc + L::TBL, *gs = dos + C * L::SW, *red = gs + C * L::SW, *red2 = red + C * L::NP;
  constexpr int LQ = ZK_HEAD_LD(F, ZK_HQ(HI)), LV = ZK_HEAD_LD(DV, ZK_HV(HI));
  int bh = blockIdx.x;
  const float *qb = q + zk_head_slice<F, T, ZK_HQ(HI)>(bh), *kb = k + zk_head_slice<F, T, ZK_HQ(HI)>(bh);
  const float *vb = v + zk_head_slice<DV, T, ZK_HV(HI)>(bh), *dob = dout + zk_head_slice<DV, T, ZK_HV(HI)>(bh);
  float *dqb = dq + zk_head_slice<F, T, ZK_HQ(HI)>(bh), *sb = stats + (zk_i64)bh * T * (DV + 1);
  for (int e = threadIdx.x; e < L::D * L::SW; e += NT) st[e] = 0.0f;
  zk_pc_tables<F, K0, K1, K2>(fc, fab, c0, c1, c2);
  int row = threadIdx.x % C, part = threadIdx.x / C, cp = part * L::WQ;
  for (int r0 = 0; r0 < T; r0 += C) {
    __syncthreads();
    zk_pc_load_fk<F, C, NT, T, LQ>(qs, qb, r0, scale);
    zk_pc_load_fk<F, C, NT, T, LQ>(ks, kb, r0, 1.0f);
    zk_pc_load_cols<DV, LV, L::ZC, L::SW, C, NT, T, 1>(vs, vb, r0);
    zk_pc_load_cols<DV, LV, L::ZC, L::SW, C, NT, T, 0>(dos, dob, r0);
    __syncthreads();
    /* n_i (this part's columns), d_i; do_i . n_i summed over the parts */
    float qi[F + 1], acc[L::WQ], den, dov[L::WQ];
#pragma unroll
    for (int f = 0; f <= F; f++) qi[f] = qs[row * L::FP + f];
    zk_pc_row_out<F, DV, C, NT, K0, K1, K2>(st, ks, vs, fc, fab, qs + row * L::FP, qi, row, cp, r0 == 0, c0, c1, c2, acc, den,
                                            red2);
    float pdot = 0.0f;
    zk_pc_get<L::WQ, L::VEC>(dov, dos + row * L::SW + cp);
#pragma unroll
    for (int w = 0; w < L::WQ; w++) pdot += dov[w] * acc[w];
    red[row * L::NP + part] = pdot;
    __syncthreads();
    /* g_i = [dn_i, dd_i], into shared memory and the scratch */
    float inv = 1.0f / (den + eps), tot = 0.0f;
    for (int p = 0; p < L::NP; p++) tot += red[row * L::NP + p];
    float dd = -tot * inv * inv;
    int i = r0 + row;
#pragma unroll
    for (int w = 0; w < L::WQ; w++) {
      gs[row * L::SW + cp + w] = dov[w] * inv;
      if (i < T && cp + w < DV) sb[(zk_i64)i * (DV + 1) + cp + w] = dov[w] * inv;
    }
    if (part == 0) {
      gs[row * L::SW + L::ZC] = dd;
      if (i < T) sb[(zk_i64)i * (DV + 1) + DV] = dd;
    }
    __syncthreads();
    /* dq~_i: features d % NP == part into this thread's slots of red2 (slot F
     * takes the 1's share and is ignored), then its intra partners */
    float g[L::WS], dqa[F];
    float *mine = red2 + (part * C + row) * L::FP;
    const float *qrow = qs + row * L::FP;
    zk_pc_get<L::WS, L::VEC>(g, gs + row * L::SW);
#pragma unroll
    for (int f = 0; f < F; f++) dqa[f] = 0.0f;
    for (int f = 0; f <= F; f++) mine[f] = 0.0f;
    if (r0 > 0)
      for (int d = part; d < L::D; d += L::NP) {
        const float *sd = st + d * L::SW;
        float u = zk_pc_dot<L::WS, L::VEC>(0.0f, sd, g);
        u *= fc[d];
        int a = fab[d] & 255, b = fab[d] >> 8;
        mine[a] += u * qrow[b];
        mine[b] += u * qrow[a];
      }
    for (int j = part; j < C; j += L::NP) {
      const float *kj = ks + j * L::FP, *vj = vs + j * L::SW;
      float s = 0.0f;
#pragma unroll
      for (int f = 0; f < F; f++) s += qi[f] * kj[f];
      float da = zk_pc_dot<L::WS, L::VEC>(0.0f, vj, g);
      float ds = j <= row ? da * (c1 + 2.0f * c2 * s) : 0.0f;
#pragma unroll
      for (int f = 0; f < F; f++) dqa[f] += ds * kj[f];
    }
#pragma unroll
    for (int f = 0; f < F; f++) mine[f] += dqa[f];
    __syncthreads();
    if (i < T)
      for (int f = part; f < F; f += L::NP) {
        float x = 0.0f;
        for (int p = 0; p < L::NP; p++) x += red2[(p * C + row) * L::FP + f];
        dqb[(zk_i64)i * LQ + f] = x * scale;
      }
    if (r0 + C < T) zk_pc_update<F, DV, C, NT, K0, K1, K2, false>(st, ks, vs, fc, fab);
  }
}

template <int F, int DV, int C, int NT, bool K0, bool K1, bool K2, int T, int HI>
__device__ __forceinline__ void zk_poly_chunked_bwd_kv(const float *__restrict__ q, const float *__restrict__ k,
                                                       const float *__restrict__ v,
                                                       const float *__restrict__ stats, float *__restrict__ dk,
                                                       float *__restrict__ dv, float c0, float c1, float c2,
                                                       float scale) {
  using L = zk_pc_shape<F, DV, C, NT, K0, K1, K2>;
  extern __shared__ float zk_pc_sh[];
  float *rt = zk_pc_sh, *qs = rt + L::D * L::SW, *ks = qs + C * L::FP, *vs = ks + C * L::FP;
  float *fc = vs + C * L::SW;
  int *fab = (int *)(fc + L::D);
  float *gs = fc + L::TBL, *red2 = gs + C * L::SW, *dvred = red2 + C * L::NP * L::FP;
  constexpr int LQ = ZK_HEAD_LD(F, ZK_HQ(HI)), LV = ZK_HEAD_LD(DV, ZK_HV(HI));
  int bh = blockIdx.x;
  const float *qb = q + zk_head_slice<F, T, ZK_HQ(HI)>(bh), *kb = k + zk_head_slice<F, T, ZK_HQ(HI)>(bh);
  const float *vb = v + zk_head_slice<DV, T, ZK_HV(HI)>(bh), *sb = stats + (zk_i64)bh * T * (DV + 1);
  float *dkb = dk + zk_head_slice<F, T, ZK_HQ(HI)>(bh), *dvb = dv + zk_head_slice<DV, T, ZK_HV(HI)>(bh);
  for (int e = threadIdx.x; e < L::D * L::SW; e += NT) rt[e] = 0.0f;
  zk_pc_tables<F, K0, K1, K2>(fc, fab, c0, c1, c2);
  int row = threadIdx.x % C, part = threadIdx.x / C, cp = part * L::WQ;
  constexpr int LAST = (T - 1) / C * C;
  for (int r0 = LAST; r0 >= 0; r0 -= C) {
    __syncthreads();
    zk_pc_load_fk<F, C, NT, T, LQ>(qs, qb, r0, scale);
    zk_pc_load_fk<F, C, NT, T, LQ>(ks, kb, r0, 1.0f);
    zk_pc_load_cols<DV, LV, L::ZC, L::SW, C, NT, T, 1>(vs, vb, r0);
    zk_pc_load_cols<DV, DV + 1, L::ZC, L::SW, C, NT, T, 2>(gs, sb, r0);
    __syncthreads();
    float kj[F + 1], vj[L::WS];
#pragma unroll
    for (int f = 0; f <= F; f++) kj[f] = ks[row * L::FP + f];
    zk_pc_get<L::WS, L::VEC>(vj, vs + row * L::SW);
    bool last = r0 == LAST;
    const float *krow = ks + row * L::FP;
    int j = r0 + row;
    /* dk_j: features d % NP == part and queries i % NP == part into this
     * thread's slots of red2, added over the parts after the barrier */
    float dka[F];
    float *mine = red2 + (part * C + row) * L::FP;
#pragma unroll
    for (int f = 0; f < F; f++) dka[f] = 0.0f;
    for (int f = 0; f <= F; f++) mine[f] = 0.0f;
    if constexpr (!L::VEC) {
      /* narrow: dv_j too, over the same features and queries, all ZC columns
       * (as zk_pc_row_out): each state row and score serves both */
      float pv[L::ZC];
#pragma unroll
      for (int w = 0; w < L::ZC; w++) pv[w] = 0.0f;
      if (!last)
        for (int d = part; d < L::D; d += L::NP) {
          const float *rd = rt + d * L::SW;
          int a = fab[d] & 255, b = fab[d] >> 8;
          float ph = krow[a] * krow[b], r = 0.0f;
#pragma unroll
          for (int w = 0; w < L::WS; w++) {
            float x = rd[w];
            r += x * vj[w];
            if (w < L::ZC) pv[w] += ph * x;
          }
          mine[a] += r * krow[b];
          mine[b] += r * krow[a];
        }
      for (int ii = part; ii < C; ii += L::NP) {
        const float *qv = qs + ii * L::FP, *gv = gs + ii * L::SW;
        float s = 0.0f;
#pragma unroll
        for (int f = 0; f < F; f++) s += qv[f] * kj[f];
        float da = zk_pc_dot<L::WS, false>(0.0f, gv, vj);
        bool on = ii >= row; /* causal: i >= j */
        float a = on ? c0 + s * (c1 + c2 * s) : 0.0f;
        float ds = on ? da * (c1 + 2.0f * c2 * s) : 0.0f;
#pragma unroll
        for (int w = 0; w < L::ZC; w++) pv[w] += a * gv[w];
#pragma unroll
        for (int f = 0; f < F; f++) dka[f] += ds * qv[f]; /* qv holds q~_i */
      }
#pragma unroll
      for (int w = 0; w < L::ZC; w++) dvred[(part * L::ZC + w) * C + row] = pv[w];
    } else {
      /* wide: dv_j's columns of this part over every feature and query */
      float acc[L::WQ];
#pragma unroll
      for (int w = 0; w < L::WQ; w++) acc[w] = 0.0f;
      if (!last)
#pragma unroll 2
        for (int d = 0; d < L::D; d++) {
          int ab = fab[d];
          float ph = krow[ab & 255] * krow[ab >> 8];
          zk_pc_axpy<L::WQ, L::VEC>(acc, ph, rt + d * L::SW + cp);
        }
#pragma unroll 2
      for (int ii = 0; ii < C; ii++) {
        const float *qv = qs + ii * L::FP, *gv = gs + ii * L::SW + cp;
        float s = 0.0f;
#pragma unroll
        for (int f = 0; f < F; f++) s += qv[f] * kj[f];
        float a = c0 + s * (c1 + c2 * s);
        if (ii < row) a = 0.0f; /* causal: i >= j */
        zk_pc_axpy<L::WQ, L::VEC>(acc, a, gv);
      }
      if (j < T) {
#pragma unroll
        for (int w = 0; w < L::WQ; w++)
          if (cp + w < DV) dvb[(zk_i64)j * LV + cp + w] = acc[w];
      }
      if (!last)
        for (int d = part; d < L::D; d += L::NP) {
          const float *rd = rt + d * L::SW;
          float r = zk_pc_dot<L::WS, L::VEC>(0.0f, rd, vj);
          int a = fab[d] & 255, b = fab[d] >> 8;
          mine[a] += r * krow[b];
          mine[b] += r * krow[a];
        }
      for (int ii = part; ii < C; ii += L::NP) {
        const float *qv = qs + ii * L::FP, *gv = gs + ii * L::SW;
        float s = 0.0f;
#pragma unroll
        for (int f = 0; f < F; f++) s += qv[f] * kj[f];
        float da = zk_pc_dot<L::WS, L::VEC>(0.0f, gv, vj);
        float ds = ii >= row ? da * (c1 + 2.0f * c2 * s) : 0.0f;
#pragma unroll
        for (int f = 0; f < F; f++) dka[f] += ds * qv[f]; /* qv holds q~_i */
      }
    }
#pragma unroll
    for (int f = 0; f < F; f++) mine[f] += dka[f];
    __syncthreads();
    if (j < T) {
      for (int f = part; f < F; f += L::NP) {
        float x = 0.0f;
        for (int p = 0; p < L::NP; p++) x += red2[(p * C + row) * L::FP + f];
        dkb[(zk_i64)j * LQ + f] = x;
      }
      if constexpr (!L::VEC) {
#pragma unroll
        for (int w = 0; w < L::WQ; w++)
          if (cp + w < DV) dvb[(zk_i64)j * LV + cp + w] = zk_pc_parts_sum<L::NP, L::ZC, C>(dvred, cp + w, row);
      }
    }
    if (r0 > 0) zk_pc_update<F, DV, C, NT, K0, K1, K2, true>(rt, qs, gs, fc, fab);
  }
}

#endif /* ZK_POLY_ATTENTION_CHUNKED_CU */
