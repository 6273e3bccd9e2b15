// Counter-based RNG (Philox4x32-10, Salmon et al. 2011): the value at (key, counter) is a pure function, so the
// CPU and a CUDA kernel draw the same numbers for the same (seed, stream, index) with no state to carry around.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MUE_HD __host__ __device__ __forceinline__
#else
#define MUE_HD inline
#endif

namespace mue {

struct Philox4 {
  uint32_t v[4];
};

MUE_HD Philox4 philox4x32(uint64_t key, uint64_t counter_hi, uint64_t counter_lo) {
  uint32_t k0 = uint32_t(key), k1 = uint32_t(key >> 32);
  uint32_t c0 = uint32_t(counter_lo), c1 = uint32_t(counter_lo >> 32);
  uint32_t c2 = uint32_t(counter_hi), c3 = uint32_t(counter_hi >> 32);
  for (int r = 0; r < 10; ++r) {
    uint64_t p0 = uint64_t(0xD2511F53u) * c0, p1 = uint64_t(0xCD9E8D57u) * c2;
    uint32_t n0 = uint32_t(p1 >> 32) ^ c1 ^ k0, n1 = uint32_t(p1);
    uint32_t n2 = uint32_t(p0 >> 32) ^ c3 ^ k1, n3 = uint32_t(p0);
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += 0x9E3779B9u; k1 += 0xBB67AE85u;
  }
  return {{c0, c1, c2, c3}};
}

// Uniform in (0, 1), never 0 (safe for log).
MUE_HD double u32_to_unit(uint32_t a, uint32_t b) {
  uint64_t bits = (uint64_t(a) << 21) ^ uint64_t(b >> 11);  // 53 bits
  return (double(bits & ((1ull << 53) - 1)) + 0.5) * (1.0 / 9007199254740992.0);
}

// Standard normal number `index` of stream (seed, stream), by Box-Muller on one Philox block.
MUE_HD double rng_normal(uint64_t seed, uint64_t stream, uint64_t index) {
  Philox4 r = philox4x32(seed, stream, index);
  double u1 = u32_to_unit(r.v[0], r.v[1]), u2 = u32_to_unit(r.v[2], r.v[3]);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

MUE_HD double rng_uniform(uint64_t seed, uint64_t stream, uint64_t index) {
  Philox4 r = philox4x32(seed, stream, index);
  return u32_to_unit(r.v[0], r.v[1]);
}

// Uniform integer in [0, n), n > 0 (64-bit draw, modulo bias < 2^-32 for n < 2^32).
MUE_HD uint64_t rng_index(uint64_t seed, uint64_t stream, uint64_t index, uint64_t n) {
  Philox4 r = philox4x32(seed, stream, index);
  return ((uint64_t(r.v[0]) << 32) | r.v[1]) % n;
}

// Stable 64-bit hash of a string (FNV-1a), used to name RNG streams ("layer3.attn.qkv").
inline uint64_t hash_name(const char* s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; ++s) h = (h ^ uint8_t(*s)) * 1099511628211ull;
  return h;
}

}  // namespace mue
