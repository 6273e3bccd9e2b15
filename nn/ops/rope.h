// Rotary position embedding, in place on the q and k parts of qkv. CPU reference; CUDA launchers (kernels:
// nn/rope.cu; the device rotation in nn/rope.cuh, which the QK-norm and flash-attention kernels fuse).
#pragma once
#include <cmath>
#include <cstddef>

#include "core/cuda_context.h"  // empty without CUDA

namespace mue::cpu {

// RoPE, in place on the q and k parts of qkv [B, T, 3, H, hd]: pair (2i, 2i+1) of position t turns by
// t * theta^(-2i/hd). sign = +1 forward, -1 backward (the transpose of a rotation is the inverse rotation).
template <class T>
void rope_apply(T* qkv, int B, int T_, int H, int hd, double theta, int sign) {
  const int D = H * hd;
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T_; ++t)
      for (int i = 0; i < hd / 2; ++i) {
        double ang = t * std::pow(theta, -2.0 * i / hd);
        T c = T(std::cos(ang)), s = T(sign * std::sin(ang));
        for (int part = 0; part < 2; ++part)
          for (int h = 0; h < H; ++h) {
            T* p = qkv + (size_t(b) * T_ + t) * 3 * D + size_t(part) * D + size_t(h) * hd + 2 * i;
            T a = p[0], bb = p[1];
            p[0] = a * c - bb * s;
            p[1] = a * s + bb * c;
          }
      }
}
template <class T>
void rope_forward(T* qkv, int B, int T_, int H, int hd, double theta) { rope_apply(qkv, B, T_, H, hd, theta, +1); }
template <class T>
void rope_backward(T* dqkv, int B, int T_, int H, int hd, double theta) { rope_apply(dqkv, B, T_, H, hd, theta, -1); }

}  // namespace mue::cpu

#ifdef MUE_HAVE_CUDA
namespace mue::cuda {

// Rotary position embedding, in place on the q and k parts of qkv [B, T, 3, H, hd] (v untouched).
// Pairs (2i, 2i+1) of each head are rotated by angle t * theta^(-2i/hd).
void rope_forward(Context& ctx, bf16* qkv, int B, int T, int H, int hd, float theta);
// The transpose (inverse) rotation, in place on dq and dk.
void rope_backward(Context& ctx, bf16* dqkv, int B, int T, int H, int hd, float theta);

}  // namespace mue::cuda
#endif
