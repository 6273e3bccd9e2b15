// Multi-head attention on the packed qkv. CPU reference (probabilities materialized); CUDA launchers
// (kernels: nn/flash_attention.cu, nn/flash_attention_sm90.cu, and nn/attention.cu for the materialized path).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

#include "core/cuda_context.h"  // empty without CUDA
#include "nn/ops/rope.h"

namespace mue::cpu {

// attention on qkv [B, T, 3, H, hd]: out[b,t,h,:] = sum_s P[b,h,t,s] v[b,s,h,:],
// P = softmax_s(scale * q.k) over s <= t when causal; probs [B, H, T, T] saved (masked entries 0).
template <class T>
void attention_forward(const T* qkv, T* out, T* probs, int B, int T_, int H, int hd, double scale, bool causal) {
  const int D = H * hd;
  auto q = [&](int b, int t, int h) { return qkv + (size_t(b) * T_ + t) * 3 * D + size_t(h) * hd; };
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int t = 0; t < T_; ++t) {
        T* P = probs + ((size_t(b) * H + h) * T_ + t) * T_;
        int smax = causal ? t : T_ - 1;
        T mx = -INFINITY;
        for (int s = 0; s <= smax; ++s) {
          const T *qp = q(b, t, h), *kp = q(b, s, h) + D;
          T dot = 0;
          for (int i = 0; i < hd; ++i) dot += qp[i] * kp[i];
          P[s] = dot * T(scale);
          mx = std::max(mx, P[s]);
        }
        T sum = 0;
        for (int s = 0; s <= smax; ++s) sum += (P[s] = std::exp(P[s] - mx));
        for (int s = 0; s <= smax; ++s) P[s] /= sum;
        for (int s = smax + 1; s < T_; ++s) P[s] = 0;
        T* o = out + (size_t(b) * T_ + t) * D + size_t(h) * hd;
        std::fill(o, o + hd, T(0));
        for (int s = 0; s <= smax; ++s) {
          const T* vp = q(b, s, h) + 2 * D;
          for (int i = 0; i < hd; ++i) o[i] += P[s] * vp[i];
        }
      }
}
// dP = dout.v ; dS = P * (dP - sum_s P dP) ; dq = scale * dS k ; dk = scale * dS^T q ; dv = P^T dout
template <class T>
void attention_backward(const T* dout, const T* qkv, const T* probs, T* dqkv, int B, int T_, int H, int hd,
                        double scale, bool causal) {
  const int D = H * hd;
  std::fill(dqkv, dqkv + size_t(B) * T_ * 3 * D, T(0));
  auto at = [&](const T* base, int b, int t, int part, int h) {
    return base + (size_t(b) * T_ + t) * 3 * D + size_t(part) * D + size_t(h) * hd;
  };
  auto atw = [&](T* base, int b, int t, int part, int h) {
    return base + (size_t(b) * T_ + t) * 3 * D + size_t(part) * D + size_t(h) * hd;
  };
  // (b, h) slices of dqkv are disjoint, so they run in parallel.
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      std::vector<T> dP(T_);
      for (int t = 0; t < T_; ++t) {
        const T* P = probs + ((size_t(b) * H + h) * T_ + t) * T_;
        const T* go = dout + (size_t(b) * T_ + t) * D + size_t(h) * hd;
        int smax = causal ? t : T_ - 1;
        T pdp = 0;
        for (int s = 0; s <= smax; ++s) {
          const T* vp = at(qkv, b, s, 2, h);
          T d = 0;
          for (int i = 0; i < hd; ++i) d += go[i] * vp[i];
          dP[s] = d;
          pdp += P[s] * d;
          T* dv = atw(dqkv, b, s, 2, h);
          for (int i = 0; i < hd; ++i) dv[i] += P[s] * go[i];
        }
        const T* qp = at(qkv, b, t, 0, h);
        T* dq = atw(dqkv, b, t, 0, h);
        for (int s = 0; s <= smax; ++s) {
          T ds = P[s] * (dP[s] - pdp) * T(scale);
          const T* kp = at(qkv, b, s, 1, h);
          T* dk = atw(dqkv, b, s, 1, h);
          for (int i = 0; i < hd; ++i) {
            dq[i] += ds * kp[i];
            dk[i] += ds * qp[i];
          }
        }
      }
    }
}

// As the models call it: `out` (which the CUDA kernels read) unused here, and with rope_theta > 0 d(q, k) rotated
// back by RoPE (the CUDA kernels fuse this rotation into their stores).
template <class T>
void attention_backward(const T* dout, const T* qkv, const T* /*out*/, const T* probs, T* dqkv, int B, int T_, int H,
                        int hd, double scale, bool causal, double rope_theta) {
  attention_backward(dout, qkv, probs, dqkv, B, T_, H, hd, scale, causal);
  if (rope_theta > 0) rope_backward(dqkv, B, T_, H, hd, rope_theta);
}

}  // namespace mue::cpu

#ifdef MUE_HAVE_CUDA
namespace mue::cuda {

// Multi-head attention on qkv [B, T, 3, H, hd] (RoPE already applied): out [B, T, H*hd]. scale multiplies q.k.
// Fused flash kernels (nn/flash_attention.cu) for head dims 16/32/64/128: `state` is the log-sum-exp
// [B, H, T] fp32; other head dims fall back to the materialized path, whose state is the bf16 probs
// [B, H, T, T]. attention_state_floats says how many floats the state takes.
bool flash_attention_enabled(int hd);
// Whether head dim hd runs the Hopper (wgmma) kernels: 64 and 128, unless the kernel variant flash_sm90=0
// (core/kernel_variants.h; read at every call).
bool flash_sm90_enabled(int hd);
size_t attention_state_floats(int B, int T, int H, int hd);
void attention_forward(Context& ctx, const bf16* qkv, bf16* out, float* state, int B, int T, int H, int hd,
                       float scale, bool causal);
// dqkv (overwritten) from dout, the saved qkv, the forward's out and its state. rope_theta > 0: qkv was rotated
// by RoPE of that base after the projection, and dq, dk come back rotated back (rope_backward fused: the flash
// kernels rotate as they store).
void attention_backward(Context& ctx, const bf16* dout, const bf16* qkv, const bf16* out, const float* state,
                        bf16* dqkv, int B, int T, int H, int hd, float scale, bool causal, float rope_theta = 0.f);
// The materialized path: probs [B, H, T, T] bf16 (masked entries 0) saved for the backward.
void attention_materialized_forward(Context& ctx, const bf16* qkv, bf16* out, bf16* probs, int B, int T, int H,
                                    int hd, float scale, bool causal);
void attention_materialized_backward(Context& ctx, const bf16* dout, const bf16* qkv, const bf16* probs,
                                     bf16* dqkv, int B, int T, int H, int hd, float scale, bool causal);

}  // namespace mue::cuda
#endif
