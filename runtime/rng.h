/* rng.h: the counter-based generator behind dropout, identical on every backend.
 *
 * A uniform float in [0, 1) is a pure function of (seed, stream, index): no state,
 * so the CPU reference, a CUDA kernel and the backward pass all draw the same mask.
 * The mixer is SplitMix64's finaliser over a combination of the three counters.
 * This header is plain C99 that NVRTC also compiles (runtime/cuda.c pastes it into
 * generated sources), so keep it free of includes and host-only code.
 */
#ifndef ZOO_RNG_H
#define ZOO_RNG_H

#ifdef __CUDACC_RTC__
#define ZOO_RNG_FN __device__ __forceinline__
typedef unsigned long long zoo_u64;
#else
#define ZOO_RNG_FN static inline
typedef unsigned long long zoo_u64;
#endif

ZOO_RNG_FN zoo_u64 zoo_rng_mix(zoo_u64 z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

ZOO_RNG_FN float zoo_rng_uniform(zoo_u64 seed, zoo_u64 stream, zoo_u64 index) {
  zoo_u64 z = zoo_rng_mix(seed + 0x9e3779b97f4a7c15ULL * (stream + 1));
  z = zoo_rng_mix(z ^ (index * 0xd1b54a32d192ed03ULL));
  return (float)(z >> 40) * (1.0f / 16777216.0f); /* 24 bits: exact in float */
}

#endif
