// Token embedding: out[n, :] = wte[tok[n], :]; the backward adds dout's rows back into dwte.
// CPU reference; CUDA launchers (kernels: nn/embedding.cu).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "core/cuda_context.h"  // empty without CUDA

namespace mue::cpu {

// embedding: out[n,:] = wte[tok[n],:]; wte has `rows` rows (the backward's dwte too), tok[n] in [0, rows)
template <class T>
void embedding_forward(const int32_t* tok, const T* wte, T* out, int N, int D) {
  for (int n = 0; n < N; ++n) std::copy(wte + size_t(tok[n]) * D, wte + size_t(tok[n] + 1) * D, out + size_t(n) * D);
}
template <class T>
void embedding_backward(const int32_t* tok, const T* dout, T* dwte, int N, int D, int /*rows*/) {
  for (int n = 0; n < N; ++n)
    for (int i = 0; i < D; ++i) dwte[size_t(tok[n]) * D + i] += dout[size_t(n) * D + i];
}

}  // namespace mue::cpu

#ifdef MUE_HAVE_CUDA
namespace mue::cuda {

// out[n, :] = wte[tok[n], :]
void embedding_forward(Context& ctx, const int32_t* tok, const bf16* wte, bf16* out, int N, int D);
// dwte[tok[n], :] += dout[n, :] over n in order (no atomics: the same bits on every run); dwte [rows, D]
void embedding_backward(Context& ctx, const int32_t* tok, const bf16* dout, float* dwte, int N, int D, int rows);

}  // namespace mue::cuda
#endif
