// Gated residual of the DiT: out = x + gate[b] * y. CPU reference; CUDA launchers (kernels:
// nn/gated_residual.cu).
#pragma once
#include <cstddef>

#include "core/cuda_context.h"  // empty without CUDA

namespace mue::cpu {

// gated residual: out[b,t] = x[b,t] + gate[b] * y[b,t]; gate = chunk `igate` of mod
template <class T>
void gated_residual_forward(T* out, const T* x, const T* y, const T* mod, int B, int Tn, int D, int M, int igate) {
  for (int b = 0; b < B; ++b) {
    const T* g = mod + size_t(b) * M * D + size_t(igate) * D;
    for (int t = 0; t < Tn; ++t)
      for (int i = 0; i < D; ++i) {
        const size_t k = (size_t(b) * Tn + t) * D + i;
        out[k] = x[k] + g[i] * y[k];
      }
  }
}
// dy = gate * dout (overwrite); dmod[gate] += sum_t dout * y. (dx is dout itself: the residual path.)
template <class T>
void gated_residual_backward(const T* dout, const T* y, const T* mod, T* dy, T* dmod, int B, int Tn, int D, int M,
                             int igate) {
  for (int b = 0; b < B; ++b) {
    const T* g = mod + size_t(b) * M * D + size_t(igate) * D;
    T* dg = dmod + size_t(b) * M * D + size_t(igate) * D;
    for (int t = 0; t < Tn; ++t)
      for (int i = 0; i < D; ++i) {
        const size_t k = (size_t(b) * Tn + t) * D + i;
        dy[k] = g[i] * dout[k];
        dg[i] += dout[k] * y[k];
      }
  }
}

}  // namespace mue::cpu

#ifdef MUE_HAVE_CUDA
namespace mue::cuda {

// out[b,t] = x[b,t] + mod[b, igate] * y[b,t]   (out may alias x)
void gated_residual_forward(Context& ctx, bf16* out, const bf16* x, const bf16* y, const bf16* mod, int B, int Tn,
                            int D, int M, int igate);
// dy = mod[b, igate] * dout (overwrite); dmod[b, igate] += sum_t dout * y (accumulate)
void gated_residual_backward(Context& ctx, const bf16* dout, const bf16* y, const bf16* mod, bf16* dy, bf16* dmod,
                             int B, int Tn, int D, int M, int igate);

}  // namespace mue::cuda
#endif
