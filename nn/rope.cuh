// The RoPE angle of pair i (elements 2i, 2i+1 of a head of width hd) at position t: t * theta^(-2i/hd), as
// cos and sin. One definition for the RoPE kernels and the attention backward that fuses the inverse rotation,
// so both round alike. Only included by .cu files.
#pragma once
#include "core/cuda_util.cuh"

namespace mue::cuda::detail {

__device__ inline void rope_cos_sin(int t, int i, int hd, float log2_theta, float& c, float& s) {
  const float inv_freq = exp2f(-2.f * float(i) / float(hd) * log2_theta);
  sincosf(float(t) * inv_freq, &s, &c);
}

// The angles of pairs 4v .. 4v + 3 (the 16-byte vector v of a head), and their rotation of the vector's values.
__device__ inline void rope_cos_sin4(int t, int v, int hd, float log2_theta, float (&c)[4], float (&s)[4]) {
  #pragma unroll
  for (int j = 0; j < 4; ++j) rope_cos_sin(t, 4 * v + j, hd, log2_theta, c[j], s[j]);
}
__device__ inline void rope_rotate8(float (&f)[8], const float (&c)[4], const float (&s)[4], float sign) {
  #pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float a = f[2 * j], b = f[2 * j + 1], sn = sign * s[j];
    f[2 * j] = a * c[j] - b * sn, f[2 * j + 1] = a * sn + b * c[j];
  }
}

}  // namespace mue::cuda::detail
