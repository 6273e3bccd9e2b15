// CUDA versions of the MoE data-movement ops of moe/moe_cpu.h (same semantics; bf16 activations, fp32 math).
#pragma once
#ifdef MUE_HAVE_CUDA
#include <cstdint>

#include "nn/ops_cuda.h"

namespace mue::cuda {

// xp[r] = x[src_token[r]]
void permute_rows(Context& ctx, const bf16* x, const int32_t* src_token, bf16* xp, int rows, int D);
// dx[n] += sum_k dxp[slot_row[n*a+k]]   (gathered per token: no atomics, deterministic)
void unpermute_add(Context& ctx, const bf16* dxp, const int32_t* slot_row, bf16* dx, int N, int a, int D);
// out[n] = sum_k gates[n,k] yp[slot_row[n*a+k]]
void combine_forward(Context& ctx, const bf16* yp, const int32_t* slot_row, const bf16* gates, bf16* out, int N, int a,
                     int D);
// dyp[row(n,k)] = gates[n,k] dout[n]; dgates[n,k] = dout[n] . yp[row(n,k)]
void combine_backward(Context& ctx, const bf16* dout, const bf16* yp, const int32_t* slot_row, const bf16* gates,
                      bf16* dyp, bf16* dgates, int N, int a, int D);

}  // namespace mue::cuda
#endif
