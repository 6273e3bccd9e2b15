// RMSNorm (y = x * rstd * w), alone or fused after the residual add, and its backward. CPU reference; CUDA
// launchers (kernels: nn/rmsnorm.cu). rmsnorm_backward's dx accumulates: it always lands on the residual stream.
#pragma once
#include <cmath>
#include <cstddef>

#include "core/cuda_context.h"  // empty without CUDA
#include "nn/ops/residual.h"

namespace mue::cpu {

// RMSNorm: y = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps)
template <class T>
void rmsnorm_forward(const T* x, const T* w, T* y, T* rstd, int N, int D, double eps) {
  for (int n = 0; n < N; ++n) {
    const T* xr = x + size_t(n) * D;
    T ss = 0;
    for (int i = 0; i < D; ++i) ss += xr[i] * xr[i];
    T r = T(1) / std::sqrt(ss / T(D) + T(eps));
    rstd[n] = r;
    for (int i = 0; i < D; ++i) y[size_t(n) * D + i] = xr[i] * r * w[i];
  }
}
// dx += rstd * (w*dy - xhat * mean(xhat * w*dy)),  dw += sum_n dy * xhat
template <class T>
void rmsnorm_backward(const T* dy, const T* x, const T* w, const T* rstd, T* dx, T* dw, int N, int D) {
  for (int n = 0; n < N; ++n) {
    const T* xr = x + size_t(n) * D;
    const T* g = dy + size_t(n) * D;
    T r = rstd[n], dot = 0;
    for (int i = 0; i < D; ++i) dot += g[i] * w[i] * xr[i] * r;
    dot /= T(D);
    for (int i = 0; i < D; ++i) {
      T xhat = xr[i] * r;
      dw[i] += g[i] * xhat;
      dx[size_t(n) * D + i] += r * (g[i] * w[i] - xhat * dot);
    }
  }
}
// sum = a + b (may alias a or b), then y, rstd = rmsnorm(sum): the residual add and the next norm (one pass on CUDA).
template <class T>
void residual_rmsnorm_forward(T* sum, const T* a, const T* b, const T* w, T* y, T* rstd, int N, int D, double eps) {
  residual_forward(sum, a, b, size_t(N) * D);
  rmsnorm_forward(sum, w, y, rstd, N, D, eps);
}

}  // namespace mue::cpu

#ifdef MUE_HAVE_CUDA
namespace mue::cuda {

// y = x / rms(x) * w, rstd[n] = 1/sqrt(mean(x^2) + eps)
void rmsnorm_forward(Context& ctx, const bf16* x, const bf16* w, bf16* y, float* rstd, int N, int D, float eps);
// sum = a + b (bf16, may alias a or b), then y, rstd = rmsnorm(sum): the residual add and the next norm in one
// pass, with the same bits as residual_forward followed by rmsnorm_forward.
void residual_rmsnorm_forward(Context& ctx, bf16* sum, const bf16* a, const bf16* b, const bf16* w, bf16* y,
                              float* rstd, int N, int D, float eps);
// dx += d/dx, dw += d/dw
void rmsnorm_backward(Context& ctx, const bf16* dy, const bf16* x, const bf16* w, const float* rstd, bf16* dx,
                      float* dw, int N, int D);

// out[j] += sum over p of part[p, j] (part [parts, cols] fp32), in a fixed order: how the norms' backwards add
// their per-block weight-gradient partials without atomics.
void add_column_sums(Context& ctx, const float* part, float* out, int parts, int cols);

}  // namespace mue::cuda
#endif
