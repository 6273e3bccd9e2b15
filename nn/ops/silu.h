// SiLU: y = x * sigmoid(x). CPU reference; CUDA launchers (kernels: nn/silu.cu).
#pragma once
#include <cmath>
#include <cstddef>

#include "core/cuda_context.h"  // empty without CUDA

namespace mue::cpu {

// SiLU: y = x * sigmoid(x)
template <class T>
void silu_forward(const T* x, T* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = x[i] / (T(1) + std::exp(-x[i]));
}
template <class T>
void silu_backward(const T* dy, const T* x, T* dx, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const T s = T(1) / (T(1) + std::exp(-x[i]));
    dx[i] = dy[i] * s * (T(1) + x[i] * (T(1) - s));
  }
}

}  // namespace mue::cpu

#ifdef MUE_HAVE_CUDA
namespace mue::cuda {

void silu_forward(Context& ctx, const bf16* x, bf16* y, size_t n);
void silu_backward(Context& ctx, const bf16* dy, const bf16* x, bf16* dx, size_t n);  // dx overwritten

}  // namespace mue::cuda
#endif
