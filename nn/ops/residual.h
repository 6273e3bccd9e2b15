// Residual add: out = a + b. CPU reference; CUDA launcher (kernel: nn/residual.cu).
#pragma once
#include <cstddef>

#include "core/cuda_context.h"  // empty without CUDA

namespace mue::cpu {

// residual: out = a + b
template <class T>
void residual_forward(T* out, const T* a, const T* b, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

}  // namespace mue::cpu

#ifdef MUE_HAVE_CUDA
namespace mue::cuda {

// out = a + b (n elements)
void residual_forward(Context& ctx, bf16* out, const bf16* a, const bf16* b, size_t n);

}  // namespace mue::cuda
#endif
