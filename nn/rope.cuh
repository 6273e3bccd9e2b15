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

}  // namespace mue::cuda::detail
