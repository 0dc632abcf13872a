/* wkv4.cu: RWKV v4's WKV recurrence and its backward (ops.def: wkv4, wkv4_bwd).
 *
 * Shapes: w, u, dw, du [C]; k, v, y, dy, dk, dv [B, T, C]. Constants T, C, BF16.
 * Each (b, c) pair is an independent scan along T: one thread per pair, 64-thread
 * blocks, grid ceil(B C / 64); consecutive threads take consecutive c, so every
 * load of a time step is coalesced. The scans carry their sums scaled by e^-o,
 * o the largest exponent so far (see runtime/cpu_wkv.c for the algebra), in fp32.
 * BF16 rounds y, and dy on entry plus every gradient, to bf16 (nearest even).
 *
 * zk_wkv4_fwd<T, C, BF16>(w, u, k, v, y, BC)
 *
 * zk_wkv4_bwd<T, C, BF16>(dy, w, u, k, v, dk, dv, part, keep, BC): a forward scan
 *   keeps y_t, 1 / D_t and m_t per step in keep[3][B T C] (den_t = D_t e^m_t) and
 *   leaves the pair's dd * d and du in part[b][2C] (at c and C + c); a backward
 *   scan then writes dk and dv.
 * zk_wkv4_sum<B, C, BF16>(part, dw, du): one thread per entry of [2C], the sum
 *   over b in order (deterministic). 256-thread blocks, grid ceil(2C / 256).
 * Scratch of the backward: part (2 B C floats) then keep (3 B T C floats).
 */
#ifndef ZK_WKV4_CU
#define ZK_WKV4_CU

/* x rounded to the nearest bf16 (ties to even) when R, as a float. */
template <bool R>
__device__ __forceinline__ float zk_wkv_round(float x) {
  if (!R) return x;
  unsigned u = (unsigned)__float_as_int(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return x;
  u += 0x7fffu + ((u >> 16) & 1u);
  return __int_as_float((int)(u & 0xffff0000u));
}

template <int T, int C, bool BF16>
__device__ __forceinline__ void zk_wkv4_fwd(const float *__restrict__ w, const float *__restrict__ u,
                                            const float *__restrict__ k, const float *__restrict__ v,
                                            float *__restrict__ y, zk_i64 BC) {
  zk_i64 id = (zk_i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (id >= BC) return;
  zk_i64 b = id / C;
  int c = (int)(id - b * C);
  float d = -expf(w[c]), uc = u[c];
  float p = 0.0f, q = 0.0f, o = ZK_NEG_INF;
  zk_i64 at = b * T * C + c;
  for (int t = 0; t < T; t++, at += C) {
    float kt = k[at], vt = v[at];
    float m = fmaxf(o, uc + kt), A = expf(o - m), E = expf(uc + kt - m);
    y[at] = zk_wkv_round<BF16>((A * p + E * vt) / (A * q + E));
    float no = fmaxf(o + d, kt), Ao = expf(o + d - no), Bk = expf(kt - no);
    p = Ao * p + Bk * vt;
    q = Ao * q + Bk;
    o = no;
  }
}

template <int T, int C, bool BF16>
__device__ __forceinline__ void zk_wkv4_bwd(const float *__restrict__ dy, const float *__restrict__ w,
                                            const float *__restrict__ u, const float *__restrict__ k,
                                            const float *__restrict__ v, float *__restrict__ dk,
                                            float *__restrict__ dv, float *__restrict__ part,
                                            float *__restrict__ keep, zk_i64 BC) {
  zk_i64 id = (zk_i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (id >= BC) return;
  zk_i64 b = id / C, N = BC * T;
  int c = (int)(id - b * C);
  float *ys = keep, *iden = keep + N, *ms = keep + 2 * N;
  float d = -expf(w[c]), uc = u[c];
  float p = 0.0f, q = 0.0f, o = ZK_NEG_INF, dp = 0.0f, dq = 0.0f, du = 0.0f, dd = 0.0f;
  zk_i64 at = b * T * C + c;
  for (int t = 0; t < T; t++, at += C) {
    float kt = k[at], vt = v[at], g = zk_wkv_round<BF16>(dy[at]);
    float m = fmaxf(o, uc + kt), A = expf(o - m), E = expf(uc + kt - m);
    float iv = 1.0f / (A * q + E), yt = (A * p + E * vt) * iv;
    ys[at] = yt, iden[at] = iv, ms[at] = m;
    du += g * E * (vt - yt) * iv;
    dd += g * A * (dp - dq * yt) * iv;
    float no = fmaxf(o + d, kt), Ao = expf(o + d - no), Bk = expf(kt - no);
    dp = Ao * (dp + p), dq = Ao * (dq + q);
    p = Ao * p + Bk * vt, q = Ao * q + Bk;
    o = no;
  }
  part[b * 2 * C + c] = dd * d;
  part[b * 2 * C + C + c] = du;
  float s = 0.0f, r = 0.0f, e = ZK_NEG_INF;
  for (int i = T - 1; i >= 0; i--) {
    at -= C;
    float ki = k[at], vi = v[at], yi = ys[at], mi = ms[at];
    float gi = zk_wkv_round<BF16>(dy[at]) * iden[at];
    float Ed = expf(uc + ki - mi), Es = expf(ki + e);
    dv[at] = zk_wkv_round<BF16>(gi * Ed + Es * s);
    dk[at] = zk_wkv_round<BF16>(gi * Ed * (vi - yi) + Es * (vi * s - r));
    float ne = fmaxf(e + d, -mi), Ae = expf(e + d - ne), Bg = expf(-mi - ne);
    s = Ae * s + Bg * gi;
    r = Ae * r + Bg * gi * yi;
    e = ne;
  }
}

template <int B, int C, bool BF16>
__device__ __forceinline__ void zk_wkv4_sum(const float *__restrict__ part, float *__restrict__ dw,
                                            float *__restrict__ du) {
  int m = blockIdx.x * blockDim.x + threadIdx.x;
  if (m >= 2 * C) return;
  float s = 0.0f;
  for (int b = 0; b < B; b++) s += part[(zk_i64)b * 2 * C + m];
  if (m < C) dw[m] = zk_wkv_round<BF16>(s);
  else du[m - C] = zk_wkv_round<BF16>(s);
}

#endif /* ZK_WKV4_CU */
