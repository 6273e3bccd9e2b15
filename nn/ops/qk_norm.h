// QK-norm: every head's q and k RMS-normalized with learned gains (RoPE fused after it on CUDA). CPU
// reference; CUDA launchers (kernels: nn/qk_norm.cu).
#pragma once
#include <algorithm>
#include <cstddef>
#include <vector>

#include "core/cuda_context.h"  // empty without CUDA
#include "nn/ops/rmsnorm.h"
#include "nn/ops/rope.h"

namespace mue::cpu {

// QK-norm: each head's q and k (rows of hd inside qkv [N, 3, H, hd]) RMS-normalized in place with gains
// w [2, hd] (row 0 for every q head, row 1 for every k head); v untouched. The pre-norm q, k are saved in
// pre [N, 2, H, hd] and the statistics in rstd [N, 2H] (row r = n*2H + j: j < H is q head j, else k head j-H).
template <class T>
void qk_norm_forward(T* qkv, const T* w, T* pre, T* rstd, int N, int H, int hd, double eps) {
  const int D = H * hd;
  for (int n = 0; n < N; ++n)
    for (int j = 0; j < 2 * H; ++j) {
      T* x = qkv + size_t(n) * 3 * D + size_t(j) * hd;
      T* p = pre + (size_t(n) * 2 * H + j) * hd;
      std::copy(x, x + hd, p);
      rmsnorm_forward(p, w + (j / H) * hd, x, rstd + size_t(n) * 2 * H + j, 1, hd, eps);
    }
}
// As the models call it, on rows [B, T]: QK-norm, then RoPE when rope_theta > 0 (one kernel on CUDA).
template <class T>
void qk_norm_forward(T* qkv, const T* w, T* pre, T* rstd, int B, int T_, int H, int hd, double eps, double rope_theta) {
  qk_norm_forward(qkv, w, pre, rstd, B * T_, H, hd, eps);
  if (rope_theta > 0) rope_forward(qkv, B, T_, H, hd, rope_theta);
}
// In place on the q, k parts of dqkv: d(normalized q, k) in, d(pre-norm q, k) out (overwritten); dw accumulates.
template <class T>
void qk_norm_backward(T* dqkv, const T* pre, const T* w, const T* rstd, T* dw, int N, int H, int hd) {
  const int D = H * hd;
  std::vector<T> dy(hd);
  for (int n = 0; n < N; ++n)
    for (int j = 0; j < 2 * H; ++j) {
      T* g = dqkv + size_t(n) * 3 * D + size_t(j) * hd;
      std::copy(g, g + hd, dy.begin());
      std::fill(g, g + hd, T(0));
      const size_t r = size_t(n) * 2 * H + j;
      rmsnorm_backward(dy.data(), pre + r * hd, w + (j / H) * hd, rstd + r, g, dw + (j / H) * hd, 1, hd);
    }
}

}  // namespace mue::cpu

#ifdef MUE_HAVE_CUDA
namespace mue::cuda {

// QK-norm, in place on the q and k parts of qkv [B, T, 3, H, hd]: every head's q (k) RMS-normalized over hd with
// gains w[0, :] (w[1, :]), then rotated by RoPE when rope_theta > 0 (rope_forward fused); the pre-norm q, k saved
// in pre [B*T, 2, H, hd], rstd [B*T, 2H]. hd <= 256.
void qk_norm_forward(Context& ctx, bf16* qkv, const bf16* w, bf16* pre, float* rstd, int B, int T, int H, int hd,
                     float eps, float rope_theta);
// In place on dq, dk of dqkv (d of the normalized q, k in, RoPE already rotated back; d of the pre-norm q, k
// out); dw [2, hd] accumulates.
void qk_norm_backward(Context& ctx, bf16* dqkv, const bf16* pre, const bf16* w, const float* rstd, float* dw, int N,
                      int H, int hd);

}  // namespace mue::cuda
#endif
