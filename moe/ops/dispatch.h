// Token dispatch of the MoE layer: the plan that sorts the (token, slot) assignments by expert, the rows
// permuted to it and back, and the combine (a plain sum: the gates are applied in moe/ops/gate_swiglu.h). CPU reference;
// CUDA launchers (kernels: moe/dispatch.cu; the plan itself is built by moe/router.cu).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/cuda_context.h"  // empty without CUDA

namespace mue::cpu {

// Counting sort of the N*a (token, slot) assignments by expert.
// offsets [E+1]: expert e owns permuted rows [offsets[e], offsets[e+1]);
// src_token [N*a]: the token of each permuted row; slot_row [N*a]: the permuted row of assignment (n, k).
// Within an expert, rows keep token order (stable), so the layout is deterministic.
inline void dispatch_plan(const int32_t* idx, int N, int a, int E, int32_t* offsets, int32_t* src_token,
                          int32_t* slot_row) {
  std::vector<int32_t> count(E + 1, 0);
  for (int i = 0; i < N * a; ++i) ++count[idx[i] + 1];
  for (int e = 0; e < E; ++e) count[e + 1] += count[e];
  std::copy(count.begin(), count.end(), offsets);
  for (int i = 0; i < N * a; ++i) {
    const int32_t row = count[idx[i]]++;
    src_token[row] = i / a;
    slot_row[i] = row;
  }
}

// xp[r] = x[src_token[r]]
template <class T>
void permute_rows(const T* x, const int32_t* src_token, T* xp, int rows, int D) {
  for (int r = 0; r < rows; ++r) std::copy(x + size_t(src_token[r]) * D, x + size_t(src_token[r] + 1) * D, xp + size_t(r) * D);
}
// The transpose, gathered per token so it needs no atomics: dx[n] += sum_k dxp[slot_row[n*a+k]]
template <class T>
void unpermute_add(const T* dxp, const int32_t* slot_row, T* dx, int N, int a, int D) {
  for (int n = 0; n < N; ++n)
    for (int k = 0; k < a; ++k) {
      const T* src = dxp + size_t(slot_row[size_t(n) * a + k]) * D;
      for (int i = 0; i < D; ++i) dx[size_t(n) * D + i] += src[i];
    }
}

// out[n] = sum_k yp[slot_row[n*a+k]]   (overwrites out; the gates are already in yp, see gate_swiglu_forward)
template <class T>
void combine_forward(const T* yp, const int32_t* slot_row, T* out, int N, int a, int D) {
  std::fill(out, out + size_t(N) * D, T(0));
  unpermute_add(yp, slot_row, out, N, a, D);
}
// The combine's backward: dyp[r] = dout[src_token[r]] (the gates' part is in gate_swiglu_backward).
template <class T>
void combine_backward(const T* dout, const int32_t* src_token, T* dyp, int rows, int D) {
  permute_rows(dout, src_token, dyp, rows, D);
}

}  // namespace mue::cpu

#ifdef MUE_HAVE_CUDA
namespace mue::cuda {

// xp[r] = x[src_token[r]]
void permute_rows(Context& ctx, const bf16* x, const int32_t* src_token, bf16* xp, int rows, int D);
// dx[n] += sum_k dxp[slot_row[n*a+k]]   (gathered per token: no atomics, deterministic)
void unpermute_add(Context& ctx, const bf16* dxp, const int32_t* slot_row, bf16* dx, int N, int a, int D);
// out[n] = sum_k yp[slot_row[n*a+k]]   (the combine: the gates are already in yp)
void combine_forward(Context& ctx, const bf16* yp, const int32_t* slot_row, bf16* out, int N, int a, int D);
// dyp[r] = dout[src_token[r]]   (the combine's backward: a permute)
inline void combine_backward(Context& ctx, const bf16* dout, const int32_t* src_token, bf16* dyp, int rows, int D) {
  permute_rows(ctx, dout, src_token, dyp, rows, D);
}

}  // namespace mue::cuda
#endif
