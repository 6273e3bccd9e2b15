// SwiGLU: out = silu(gate) * up. CPU reference; CUDA launchers (kernels: nn/swiglu.cu).
#pragma once
#include <cmath>
#include <cstddef>

#include "core/cuda_context.h"  // empty without CUDA

namespace mue::cpu {

// SwiGLU: in [N, 2H] = (gate | up), out = silu(gate) * up
template <class T>
void swiglu_forward(const T* in, T* out, int N, int H) {
  for (int n = 0; n < N; ++n)
    for (int j = 0; j < H; ++j) {
      T g = in[size_t(n) * 2 * H + j], u = in[size_t(n) * 2 * H + H + j];
      out[size_t(n) * H + j] = g / (T(1) + std::exp(-g)) * u;
    }
}
template <class T>
void swiglu_backward(const T* dout, const T* in, T* din, int N, int H) {
  for (int n = 0; n < N; ++n)
    for (int j = 0; j < H; ++j) {
      T g = in[size_t(n) * 2 * H + j], u = in[size_t(n) * 2 * H + H + j], d = dout[size_t(n) * H + j];
      T sig = T(1) / (T(1) + std::exp(-g));
      din[size_t(n) * 2 * H + j] = d * u * sig * (T(1) + g * (T(1) - sig));
      din[size_t(n) * 2 * H + H + j] = d * g * sig;
    }
}

}  // namespace mue::cpu

#ifdef MUE_HAVE_CUDA
namespace mue::cuda {

// SwiGLU: in [N, 2H] holds (gate | up); out[N, H] = silu(gate) * up.
void swiglu_forward(Context& ctx, const bf16* in, bf16* out, int N, int H);
void swiglu_backward(Context& ctx, const bf16* dout, const bf16* in, bf16* din, int N, int H);

}  // namespace mue::cuda
#endif
