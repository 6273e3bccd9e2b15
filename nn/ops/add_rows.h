// Per-sample broadcast add (the DiT's position embedding). CPU reference; CUDA launcher (kernel: nn/add_rows.cu).
#pragma once
#include <cstddef>

#include "core/cuda_context.h"  // empty without CUDA

namespace mue::cpu {

// per-sample broadcast add: out[b,t,:] = x[b,t,:] + v[t,:] (position embedding)
template <class T>
void add_rows(T* x, const T* v, int B, int Tn, int D) {
  for (int b = 0; b < B; ++b)
    for (size_t k = 0; k < size_t(Tn) * D; ++k) x[size_t(b) * Tn * D + k] += v[k];
}

}  // namespace mue::cpu

#ifdef MUE_HAVE_CUDA
namespace mue::cuda {

// x[b,t,:] += v[t,:]
void add_rows(Context& ctx, bf16* x, const bf16* v, int B, int Tn, int D);

}  // namespace mue::cuda
#endif
