// CUDA versions of the MoE data-movement ops of moe/moe_cpu.h (same semantics; bf16 activations, fp32 math).
#pragma once
#ifdef MUE_HAVE_CUDA
#include <cstdint>

#include "moe/router_dims.h"
#include "nn/ops_cuda.h"

namespace mue::cuda {

// Router forward on the device (moe/router.cu): scores [N,E] fp32, idx [N,a], gates [N,a], the dispatch rows
// src_token / slot_row [N*a], and plan [E+5]: expert offsets, then balance loss, z loss, mean entropy and logits
// RMS as float bits (the only thing the host reads back). E <= 1024.
void router_forward(Context& ctx, const RouterDims& d, const bf16* logits, float* scores, int32_t* idx, bf16* gates,
                    int32_t* src_token, int32_t* slot_row, int32_t* plan);
// dlogits [N,E] (overwritten) from the gate gradients, the balance loss (via plan's counts) and the z loss.
void router_backward(Context& ctx, const RouterDims& d, const bf16* dgates, const bf16* logits, const float* scores,
                     const int32_t* idx, const int32_t* plan, bf16* dlogits);

// xp[r] = x[src_token[r]]
void permute_rows(Context& ctx, const bf16* x, const int32_t* src_token, bf16* xp, int rows, int D);
// dx[n] += sum_k dxp[slot_row[n*a+k]]   (gathered per token: no atomics, deterministic)
void unpermute_add(Context& ctx, const bf16* dxp, const int32_t* slot_row, bf16* dx, int N, int a, int D);
// out[n] = sum_k yp[slot_row[n*a+k]]   (the combine: the gates are already in yp)
void combine_forward(Context& ctx, const bf16* yp, const int32_t* slot_row, bf16* out, int N, int a, int D);
// The experts' SwiGLU with the gate folded in (moe/gate_swiglu.cu; see cpu::gate_swiglu_forward): per assignment
// i, row r = slot_row[i]: hsw[r] = gates[i] * silu(x) * y with hfc[r] = (x | y), h each.
void gate_swiglu_forward(Context& ctx, const bf16* hfc, const bf16* gates, const int32_t* slot_row, bf16* hsw, int N,
                         int a, int h);
// Its backward: dhfc[r] (overwritten) and dgates[i] = dhsw[r] . (silu(x) * y).
void gate_swiglu_backward(Context& ctx, const bf16* dhsw, const bf16* hfc, const bf16* gates, const int32_t* slot_row,
                          bf16* dhfc, bf16* dgates, int N, int a, int h);

}  // namespace mue::cuda
#endif

#ifdef MUE_HAVE_CUDA
namespace mue::cuda {
// Expert GEMMs over contiguous row blocks (rows = off[E] in all): y_e = alpha x_e W_e^T, W_e = w + e*Out*In;
// backward dx_e = alpha dy_e W_e, dW_e += alpha dy_e^T x_e (or, accumulate false, dW_e = that: zero for an
// expert without rows). With In, Out multiples of 8 and the offsets on the
// device (off_dev) and 16-byte aligned matrices, our grouped GEMM kernel runs and the host offsets `off` are not
// read; otherwise cuBLAS does (one cublasGemmGroupedBatchedEx over the non-empty experts, or one cublasGemmEx
// each for operands off a 16-byte boundary), with `off`, or when it is null the offsets read from off_dev.
void expert_matmul_forward(Context& ctx, const bf16* x, const bf16* w, bf16* y, const int32_t* off,
                           const int32_t* off_dev, int rows, int E, int In, int Out, float alpha);
void expert_matmul_backward(Context& ctx, const bf16* dy, const bf16* x, const bf16* w, bf16* dx, float* dw,
                            const int32_t* off, const int32_t* off_dev, int rows, int E, int In, int Out,
                            float alpha, bool accumulate = true);
bool expert_gemm_kernel_fits(int In, int Out);
// Tile configurations compiled for the grouped kernel; the kernel variant expert_tile=r,w picks the row kernels'
// and the dW kernel's (core/kernel_variants.h; the default: tile_choice in expert_matmul.cu).
int expert_tile_configs();
}  // namespace mue::cuda
#endif
