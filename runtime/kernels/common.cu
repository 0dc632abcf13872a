/* common.cu: helpers shared by zoo's hand-written CUDA kernels.
 *
 * compiler/codegen_intrinsics.c pastes this once at the top of a module, before
 * any other file of runtime/kernels/ (they all assume it). It is guarded, so a
 * second paste is harmless. Nothing here depends on a shape.
 *
 * Conventions of the kernel files:
 *   - each file defines __device__ templates zk_<op>_<part><CONSTANTS>(...) whose
 *     template arguments are the shape constants (all sizes are known when the
 *     module is generated); the emitter instantiates them from a small
 *     extern "C" __global__ wrapper named zoo_<op>_<part>_<uid>;
 *   - tensors are row-major and contiguous, fp32 (i32 for ids and targets);
 *     element offsets are computed in 64 bits;
 *   - sums are in fp32 unless the file says otherwise, in a fixed order (no
 *     atomics) except where a file says it scatters with atomicAdd;
 *   - aligned shared arrays are written `__align__(16) __shared__ float x[N]`
 *     (attribute first), which also compiles as host C++ where __shared__ is
 *     `static` and __align__ is alignas (the CPU emulator of tests/emu.c).
 */
#ifndef ZK_COMMON_CU
#define ZK_COMMON_CU

#define ZK_NEG_INF (__int_as_float(0xff800000))
#define ZK_LOG2E 1.44269504088896341f /* exp(x) = exp2(x ZK_LOG2E) */
#define ZK_FULL_MASK 0xffffffffu

typedef long long zk_i64;

/* Two and four floats read or written at once (8- and 16-byte shared and
 * global accesses); like CUDA's float2 and float4, defined here so the
 * kernels need nothing else. */
struct __align__(8) zk_f2 {
  float x, y;
};
struct __align__(16) zk_f4 {
  float x, y, z, w;
};

/* A loader of the row kernels that take one (zk_layernorm_fwd): element e of
 * a tensor in memory. A fused kernel passes a lambda in its place. */
struct zk_load {
  const float *__restrict__ p;
  __device__ __forceinline__ float operator()(zk_i64 e) const { return p[e]; }
};

/* A storer of the row kernels that take one (zk_layernorm_bwd_rows): element
 * e of a tensor in memory gets v. A fused kernel passes a lambda in its place
 * (the row op's epilogue: the elementwise group computed at e from v). */
struct zk_store {
  float *__restrict__ p;
  __device__ __forceinline__ void operator()(zk_i64 e, float v) const { p[e] = v; }
};

/* Element e of a tile read WP floats a row from rows r0, r0 + 1, ... of a
 * [T, W] slice whose rows are LD floats apart: zero past row T and in columns
 * W .. WP - 1 (the padding). poly_attention.cu's one-row kernels' tile
 * loads read through it. */
template <int W, int WP, int T, int LD>
__device__ __forceinline__ float zk_slice_get(const float *__restrict__ src, int r0, int e) {
  int r = e / WP, c = e - r * WP;
  return r0 + r < T && c < W ? src[(zk_i64)(r0 + r) * LD + c] : 0.0f;
}

/* The 128 threads' share of a tile of 64 rows by WP columns (WP a multiple
 * of 8) as the tiled and tensor-core poly_attention kernels move one: a warp
 * takes 4 rows by 8 columns at a time, so thread (warp w, lane l) takes the
 * elements k < N = WP / 2 at row row0 + dr(k), column col0 + dc(k), with
 * row0 = 4 w + l / 8, col0 = l % 8: offsets known at compile time once k is
 * unrolled (element e = threadIdx.x + 128 k at row e / WP cost a division
 * and its bookkeeping an element). ok(k, r0): whether the element lies in a
 * [T, W] slice's rows from r0 (false past row T and in columns W .. WP - 1). */
template <int WP> struct zk_tile64 {
  static_assert(WP % 8 == 0, "a tile's width must be a multiple of 8");
  static constexpr int N = WP / 2;
  int row0, col0;
  __device__ __forceinline__ zk_tile64()
      : row0(4 * ((int)threadIdx.x >> 5) + (((int)threadIdx.x & 31) >> 3)), col0((int)threadIdx.x & 7) {}
  static __device__ __forceinline__ constexpr int dr(int k) { return 16 * (k % 4); }
  static __device__ __forceinline__ constexpr int dc(int k) { return 8 * (k / 4); }
  template <int W, int T> __device__ __forceinline__ bool ok(int k, int r0) const {
    return (dc(k) + 7 < W || col0 + dc(k) < W) && (T % 64 == 0 || r0 + row0 + dr(k) < T);
  }
};

/* zk_tile64's elements of rows [r0, r0 + 64) of a [T, W] slice (rows LD
 * floats apart), read 8 at a time before they are stored: put(r, c, x) for
 * the element x at the tile's row r, column c (zero past row T and in
 * columns W .. WP - 1). r and c are the thread's offsets plus constants, so
 * the address put makes of them costs nothing at run time. */
template <int W, int WP, int T, int LD, typename Put>
__device__ __forceinline__ void zk_tile64_copy(const float *__restrict__ src, int r0, Put put) {
  using TL = zk_tile64<WP>;
  constexpr int B = 8;
  const TL tl;
  const float *p = src + (zk_i64)(r0 + tl.row0) * LD + tl.col0;
#pragma unroll
  for (int k0 = 0; k0 < TL::N; k0 += B) {
    float x[B];
#pragma unroll
    for (int u = 0; u < B; u++) {
      const int k = k0 + u;
      x[u] = k < TL::N && tl.template ok<W, T>(k, r0) ? p[TL::dr(k) * LD + TL::dc(k)] : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < B; u++) {
      const int k = k0 + u;
      if (k < TL::N) put(tl.row0 + TL::dr(k), tl.col0 + TL::dc(k), x[u]);
    }
  }
}

/* A tile copy by the NT threads of a block: element e < NE for e =
 * threadIdx.x + l NT, x = get(e) then put(e, x), in batches of up to NB of a
 * thread's elements whose gets are all issued before their puts: one memory
 * latency a batch instead of one an element, NB registers of T beside the
 * kernel's own. NB = 1 is the plain loop. */
template <int NE, int NT, int NB, typename T, typename Get, typename Put>
__device__ __forceinline__ void zk_tile_copy(Get get, Put put) {
  constexpr int NL = (NE + NT - 1) / NT, B = NL < NB ? NL : NB;
#pragma unroll 1
  for (int l0 = 0; l0 < NL; l0 += B) {
    T x[B];
#pragma unroll
    for (int u = 0; u < B; u++) {
      int e = threadIdx.x + (l0 + u) * NT;
      x[u] = l0 + u < NL && e < NE ? get(e) : T{};
    }
#pragma unroll
    for (int u = 0; u < B; u++) {
      int e = threadIdx.x + (l0 + u) * NT;
      if (l0 + u < NL && e < NE) put(e, x[u]);
    }
  }
}

/* Sum of v over the 32 lanes of a warp, in every lane. */
__device__ __forceinline__ float zk_warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(ZK_FULL_MASK, v, o);
  return v;
}

__device__ __forceinline__ int zk_warp_sum_int(int v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(ZK_FULL_MASK, v, o);
  return v;
}

/* Maximum of v over a warp, in every lane. */
__device__ __forceinline__ float zk_warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(ZK_FULL_MASK, v, o));
  return v;
}

/* Online logsumexp: (m, s) stands for log(s) + m, i.e. s = sum exp(x - m) over
 * the values seen. zk_lse_push adds one value x, zk_lse_merge another pair. An
 * empty pair is (-inf, 0). */
__device__ __forceinline__ void zk_lse_push(float &m, float &s, float x) {
  if (x > m) {
    s = s * expf(m - x) + 1.0f; /* m = -inf: expf(-inf) = 0 */
    m = x;
  } else if (m != ZK_NEG_INF) {
    s += expf(x - m);
  }
}

__device__ __forceinline__ void zk_lse_merge(float &m, float &s, float m2, float s2) {
  float mn = fmaxf(m, m2);
  if (mn == ZK_NEG_INF) return; /* both empty */
  s = s * expf(m - mn) + s2 * expf(m2 - mn);
  m = mn;
}

/* The merged (m, s) of a warp, in every lane. */
__device__ __forceinline__ void zk_warp_lse(float &m, float &s) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    float m2 = __shfl_xor_sync(ZK_FULL_MASK, m, o);
    float s2 = __shfl_xor_sync(ZK_FULL_MASK, s, o);
    zk_lse_merge(m, s, m2, s2);
  }
}

/* Argmax pairs: the larger value wins, a tie goes to the smaller index, so a
 * merge of per-lane first maxima gives the row's first maximum (as the CPU's
 * `if (x[j] > x[best])` scan). */
__device__ __forceinline__ void zk_argmax_merge(float &v, int &i, float v2, int i2) {
  if (v2 > v || (v2 == v && i2 < i)) {
    v = v2;
    i = i2;
  }
}

__device__ __forceinline__ void zk_warp_argmax(float &v, int &i) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    float v2 = __shfl_xor_sync(ZK_FULL_MASK, v, o);
    int i2 = __shfl_xor_sync(ZK_FULL_MASK, i, o);
    zk_argmax_merge(v, i, v2, i2);
  }
}

/* Sum of v over the block (blockDim.x a multiple of 32, at most 1024), returned
 * to every thread. sh: 32 floats of shared memory. Every thread must call it. */
__device__ __forceinline__ float zk_block_sum(float v, float *sh) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = zk_warp_sum(v);
  __syncthreads(); /* sh may still be read by a previous call */
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  v = lane < nw ? sh[lane] : 0.0f;
  return zk_warp_sum(v);
}

__device__ __forceinline__ int zk_block_sum_int(int v, int *sh) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = zk_warp_sum_int(v);
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  v = lane < nw ? sh[lane] : 0;
  return zk_warp_sum_int(v);
}

/* Exclusive prefix sum of v over the block in thread order (blockDim.x a
 * multiple of 32, at most 1024): a scan within each warp, then one over the
 * warps' totals. *total gets the block's sum. sh: 33 ints of shared memory.
 * Every thread must call it. */
__device__ __forceinline__ int zk_block_exscan_int(int v, int *sh, int *total) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  int inc = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    int y = __shfl_up_sync(ZK_FULL_MASK, inc, o);
    if (lane >= o) inc += y;
  }
  __syncthreads(); /* sh may still be read by a previous call */
  if (lane == 31) sh[warp] = inc;
  __syncthreads();
  if (warp == 0) {
    int t = lane < nw ? sh[lane] : 0, w = t;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      int y = __shfl_up_sync(ZK_FULL_MASK, w, o);
      if (lane >= o) w += y;
    }
    if (lane < nw) sh[lane] = w - t; /* the warps' offsets */
    if (lane == 31) sh[32] = w;
  }
  __syncthreads();
  *total = sh[32];
  return sh[warp] + inc - v;
}

/* Parameter gradients that are sums over rows (the *_bwd kernels): each of
 * the P blocks writes a row of M partial sums to part [P][M], and out0[m] =
 * sum_p part[p][m] for m < M0, out1[m - M0] for the rest (out1 may be null
 * when M0 == M). Deterministic either way. Two ways to add them up:
 *
 * zk_finish_partials<P, M, M0>, at the end of the kernel (every thread must
 * call it): each block fences its partials and counts itself on `counter` (a
 * ZOO_ARG_COUNTER); the last one adds the rows up, 32 columns at a time with
 * warp k taking rows k, k + 8, ... and the warps' sums added in warp order,
 * and puts the counter back to zero. No second launch, but one block reads all
 * of part: the emitter uses it when P M is small.
 * zk_sum_partials<P, M, M0>, a kernel of its own, grid ceil(M / 32) blocks of
 * 256 threads: each block adds up 32 columns as the last block above does (the
 * same order, so the same bits), the blocks side by side. */
/* Columns [m0, m0 + 32) of the P rows of part added up: warp k takes rows
 * k, k + 8, ... in order, their loads issued ZK_PARTIALS_BATCH at a time
 * before the additions (the sum is a chain; the loads need not be), then
 * warp 0 adds the warps' sums in warp order; 256 threads. */
#define ZK_PARTIALS_BATCH 24
template <int P, int M, int M0>
__device__ __forceinline__ void zk_partials_cols(const float *__restrict__ part, int m0,
                                                 float *__restrict__ out0, float *__restrict__ out1,
                                                 float (*fin)[33]) {
  constexpr int NW = 8, R = P / NW, REM = P % NW; /* warp k: R rows, and one more when k < REM */
  constexpr int BATCH = R < ZK_PARTIALS_BATCH ? (R > 0 ? R : 1) : ZK_PARTIALS_BATCH;
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int m = m0 + lane < M ? m0 + lane : M - 1;
  const float *col = part + m + (zk_i64)warp * M;
  float s = 0.0f;
#pragma unroll
  for (int r0 = 0; r0 < R; r0 += BATCH) {
    float v[BATCH];
#pragma unroll
    for (int r = 0; r < BATCH; r++)
      if (r0 + r < R) v[r] = __ldcg(col + (zk_i64)(r0 + r) * NW * M);
#pragma unroll
    for (int r = 0; r < BATCH; r++)
      if (r0 + r < R) s += v[r];
  }
  if (REM > 0 && warp < REM) s += __ldcg(col + (zk_i64)R * NW * M);
  fin[warp][lane] = s;
  __syncthreads();
  if (warp == 0 && m0 + lane < M) {
    float t = 0.0f;
#pragma unroll
    for (int k = 0; k < NW; k++) t += fin[k][lane];
    if (m < M0) out0[m] = t;
    else out1[m - M0] = t;
  }
  __syncthreads();
}

template <int P, int M, int M0>
__device__ __forceinline__ void zk_finish_partials(const float *__restrict__ part,
                                                   float *__restrict__ out0,
                                                   float *__restrict__ out1,
                                                   unsigned *__restrict__ counter) {
  __shared__ bool zk_last;
  __shared__ float zk_fin[8][33];
  __threadfence(); /* this block's partials, visible before it is counted */
  __syncthreads();
  if (threadIdx.x == 0) zk_last = atomicAdd(counter, 1u) == P - 1;
  __syncthreads();
  if (!zk_last) return;
  __threadfence();
  for (int m0 = 0; m0 < M; m0 += 32) zk_partials_cols<P, M, M0>(part, m0, out0, out1, zk_fin);
  if (threadIdx.x == 0) *counter = 0;
}

template <int P, int M, int M0>
__device__ __forceinline__ void zk_sum_partials(const float *__restrict__ part,
                                                float *__restrict__ out0,
                                                float *__restrict__ out1) {
  __shared__ float zk_fin[8][33];
  zk_partials_cols<P, M, M0>(part, blockIdx.x * 32, out0, out1, zk_fin);
}

/* Attention operands, per (batch, head) pair bh = b H + h, a [T, W] slice:
 * with HI = 0 of [B, H, T, W], contiguous; with HI = H > 0 (heads
 * interleaved, poly_attention's layout 1 in ops.def) of [B, T, H*W], from
 * ((b T) H + h) W with rows H W floats apart. ZK_HEAD_LD is the row stride,
 * zk_head_slice where the slice starts.
 *   The poly_attention kernels take one HI for all their operands: 0 (layout
 * 0), H (layout 1, every operand interleaved) or -H (layout 2: q, k, dq, dk
 * interleaved, v, o, do, dv not). ZK_HQ(HI) and ZK_HV(HI) are then the HI of
 * the F-wide and of the DV-wide operands. */
#define ZK_HEAD_LD(W, HI) ((HI) > 0 ? (HI) * (W) : (W))
#define ZK_HQ(HI) ((HI) < 0 ? -(HI) : (HI))
#define ZK_HV(HI) ((HI) < 0 ? 0 : (HI))

template <int W, int T, int HI>
__device__ __forceinline__ zk_i64 zk_head_slice(int bh) {
  if (HI > 0) return ((zk_i64)(bh / HI) * T * HI + bh % HI) * W;
  return (zk_i64)bh * T * W;
}

/* poly_attention's backward in tiles (poly_attention_tiled.cu and
 * poly_attention_mma.cu): rows r < R of a shared tile holding do_i for i =
 * i0 + r (element c of row r at *at(r, c)) made into dn_i = do_i / z_i in
 * place, dd_i = -(do_i . o_i) / z_i into dd[r], and both into stats[i][DV +
 * 1] (the slice of the pair; rows i < T). Threads r < R take a row each; the
 * caller has synchronised the tile's loads. o is the pair's [T, DV] slice with
 * rows LV floats apart, z its [T]. */
template <int DV, int R, int NT, int T, int LV, typename At>
__device__ __forceinline__ void zk_poly_dn_stats(At at, float *dd, const float *__restrict__ o,
                                                 const float *__restrict__ z, float *__restrict__ stats, int i0) {
  if (threadIdx.x < R) {
    int r = (int)threadIdx.x, i = i0 + r;
    float inv = i < T ? 1.0f / z[i] : 0.0f, doy = 0.0f;
    for (int c = 0; c < DV; c++) {
      float de = *at(r, c);
      doy += de * (i < T ? o[(zk_i64)i * LV + c] : 0.0f);
      *at(r, c) = de * inv;
    }
    dd[r] = -doy * inv;
  }
  __syncthreads();
  zk_tile_copy<R * (DV + 1), NT, 1, float>(
      [&](int e) {
        int r = e / (DV + 1), c = e - r * (DV + 1);
        return c < DV ? *at(r, c) : dd[r];
      },
      [&](int e, float x) {
        int r = e / (DV + 1);
        if (i0 + r < T) stats[(zk_i64)i0 * (DV + 1) + e] = x;
      });
}

/* Asynchronous copies to shared memory (poly_attention_mma.cu, linear_cross_entropy_tc.cu). */
/* One float from global to shared memory without a register (cp.async, 4
 * bytes; zero when !ok), and the group operations; on the CPU (the tests'
 * emulation) a plain copy. */
__device__ __forceinline__ void zk_cp_async4(float *dst, const float *src, bool ok) {
#if defined(__CUDA_ARCH__)
  unsigned d;
  asm volatile("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(d) : "l"(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src), "r"(ok ? 4 : 0) : "memory");
#else
  *dst = ok ? *src : 0.0f;
#endif
}
__device__ __forceinline__ void zk_cp_async_commit() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
/* Waits until at most N of this thread's groups are in flight. */
template <int N> __device__ __forceinline__ void zk_cp_async_wait() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

/* 16 bytes from global to shared memory by cp.async (both 16-byte aligned);
 * on the CPU a plain copy. */
__device__ __forceinline__ void zk_cp_async16(float *dst, const float *src) {
#if defined(__CUDA_ARCH__)
  unsigned d;
  asm volatile("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(d) : "l"(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src) : "memory");
#else
  dst[0] = src[0], dst[1] = src[1], dst[2] = src[2], dst[3] = src[3];
#endif
}

/* TF32 tensor-core products (poly_attention_mma.cu, linear_cross_entropy_tc.cu). */
/* x rounded to TF32 (to nearest, ties away from zero), as a .b32 register. */
__device__ __forceinline__ unsigned zk_tf32(float x) {
#if defined(__CUDA_ARCH__)
  unsigned r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
#else
  unsigned u = (unsigned)__float_as_int(x);
  if ((u & 0x7f800000u) != 0x7f800000u) u += 0x1000u;
  return u & 0xffffe000u;
#endif
}

/* x rounded to TF32, as a float (its low 13 bits zero). */
__device__ __forceinline__ float zk_tf32f(float x) { return __int_as_float((int)zk_tf32(x)); }

/* d += a b for one m16n8k8 tile, TF32 operands: with g = lane / 4, t = lane % 4,
 *   a = A[g][t], A[g + 8][t], A[g][t + 4], A[g + 8][t + 4];  b = B[t][g], B[t + 4][g];
 *   d = D[g][2t], D[g][2t + 1], D[g + 8][2t], D[g + 8][2t + 1].
 * Off the GPU, in the tests' emulation of kernels on the CPU, the emulator's
 * emu_mma_tf32 makes the same products. */
__device__ __forceinline__ void zk_mma_tf32(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
#if defined(__CUDA_ARCH__)
  asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
               "{%8, %9}, {%0, %1, %2, %3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  emu_mma_tf32(d, a, b); /* the CPU emulation's (tests/emu.c) */
#endif
}

#endif /* ZK_COMMON_CU */
