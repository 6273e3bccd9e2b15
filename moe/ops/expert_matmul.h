// The experts' GEMMs over their contiguous row blocks. CPU reference (per-expert nn/ops/matmul.h); CUDA
// launchers (grouped GEMM kernels and their cuBLAS fallback: moe/expert_matmul.cu).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "core/cuda_context.h"  // empty without CUDA
#include "nn/ops/matmul.h"

// nvcc compiles the launchers only: the reference, on nn/ops/matmul.h's Eigen one, stays out of the .cu.
#ifndef __CUDACC__

namespace mue::cpu {

// Rows [off[e], off[e+1]) of x use expert e's weight w + e*Out*In.
// y_e = alpha x_e W_e^T;  backward: dx_e = alpha dy_e W_e (overwrite), dW_e += alpha dy_e^T x_e.
template <class T>
void expert_matmul_forward(const T* x, const T* w, T* y, const int32_t* off, int E, int In, int Out, double alpha) {
  for (int e = 0; e < E; ++e)
    if (const int n = off[e + 1] - off[e])
      matmul_forward(x + size_t(off[e]) * In, w + size_t(e) * Out * In, y + size_t(off[e]) * Out, n, In, Out, alpha);
}
template <class T>
void expert_matmul_backward(const T* dy, const T* x, const T* w, T* dx, T* dw, const int32_t* off, int E, int In,
                            int Out, double alpha, bool accumulate = true) {
  for (int e = 0; e < E; ++e) {
    T* dw_e = dw + size_t(e) * Out * In;
    if (const int n = off[e + 1] - off[e])
      matmul_backward(dy + size_t(off[e]) * Out, x + size_t(off[e]) * In, w + size_t(e) * Out * In,
                      dx + size_t(off[e]) * In, dw_e, n, In, Out, alpha, accumulate);
    else if (!accumulate)
      std::fill(dw_e, dw_e + size_t(Out) * In, T(0));  // an expert without rows: its gradient is zero
  }
}

// As the MoE layer calls them, with the CUDA launchers' arguments: the offsets on the host (off) are what the CPU
// reads; the device copy (off_dev) and the row count are the CUDA kernels'.
template <class T>
void expert_matmul_forward(const T* x, const T* w, T* y, const int32_t* off, const int32_t* /*off_dev*/, int /*rows*/,
                           int E, int In, int Out, double alpha) {
  expert_matmul_forward(x, w, y, off, E, In, Out, alpha);
}
template <class T>
void expert_matmul_backward(const T* dy, const T* x, const T* w, T* dx, T* dw, const int32_t* off,
                            const int32_t* /*off_dev*/, int /*rows*/, int E, int In, int Out, double alpha,
                            bool accumulate = true) {
  expert_matmul_backward(dy, x, w, dx, dw, off, E, In, Out, alpha, accumulate);
}

}  // namespace mue::cpu
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
