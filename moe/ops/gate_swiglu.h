// The experts' SwiGLU with the router's gate folded in. CPU reference; CUDA launchers (kernels:
// moe/gate_swiglu.cu).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/cuda_context.h"  // empty without CUDA
#include "nn/ops/swiglu.h"

namespace mue::cpu {

// The experts' SwiGLU with the gate folded in: for assignment i = (n, k) and its row r = slot_row[i], hfc[r] =
// (x | y), h each: hsw[r] = gates[i] * silu(x) * y. An expert's output is linear in hsw, so scaling it before the
// down-projection gives the gate-weighted sum, and the combine becomes a plain sum (its backward a plain gather:
// no pass that reads the expert outputs again for the gates' gradient).
template <class T>
void gate_swiglu_forward(const T* hfc, const T* gates, const int32_t* slot_row, T* hsw, int N, int a, int h) {
  for (size_t i = 0; i < size_t(N) * a; ++i) {
    T* out = hsw + size_t(slot_row[i]) * h;
    swiglu_forward(hfc + size_t(slot_row[i]) * 2 * h, out, 1, h);
    for (int j = 0; j < h; ++j) out[j] *= gates[i];
  }
}
// Its backward, from dhsw: dhfc[r] (overwritten; the plain SwiGLU's backward of gates[i] * dhsw[r]) and dgates[i]
// = dhsw[r] . SwiGLU(hfc[r]).
template <class T>
void gate_swiglu_backward(const T* dhsw, const T* hfc, const T* gates, const int32_t* slot_row, T* dhfc, T* dgates,
                          int N, int a, int h) {
  std::vector<T> scaled(h), plain(h);
  for (size_t i = 0; i < size_t(N) * a; ++i) {
    const size_t r = size_t(slot_row[i]);
    const T* d = dhsw + r * h;
    swiglu_forward(hfc + r * 2 * h, plain.data(), 1, h);
    T dot = 0;
    for (int j = 0; j < h; ++j) dot += d[j] * plain[j], scaled[j] = gates[i] * d[j];
    swiglu_backward(scaled.data(), hfc + r * 2 * h, dhfc + r * 2 * h, 1, h);
    dgates[i] = dot;
  }
}

}  // namespace mue::cpu

#ifdef MUE_HAVE_CUDA
namespace mue::cuda {

// The experts' SwiGLU with the gate folded in (moe/gate_swiglu.cu; see cpu::gate_swiglu_forward): per assignment
// i, row r = slot_row[i]: hsw[r] = gates[i] * silu(x) * y with hfc[r] = (x | y), h each.
void gate_swiglu_forward(Context& ctx, const bf16* hfc, const bf16* gates, const int32_t* slot_row, bf16* hsw, int N,
                         int a, int h);
// Its backward: dhfc[r] (overwritten) and dgates[i] = dhsw[r] . (silu(x) * y).
void gate_swiglu_backward(Context& ctx, const bf16* dhsw, const bf16* hfc, const bf16* gates, const int32_t* slot_row,
                          bf16* dhfc, bf16* dgates, int N, int a, int h);

}  // namespace mue::cuda
#endif
