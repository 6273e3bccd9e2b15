// Linear layer: y = alpha * x W^T, W [Out, In] row-major; dW accumulates unless asked to overwrite. CPU
// reference (Eigen); CUDA launchers (cuBLAS: nn/matmul.cu).
#pragma once
#include <cstddef>

#include "core/cuda_context.h"  // empty without CUDA

// nvcc compiles the launchers only: the Eigen reference stays out of the .cu translation units.
#ifndef __CUDACC__
#include "nn/ops/eigen_maps.h"

namespace mue::cpu {

// linear: y = alpha * x W^T
template <class T>
void matmul_forward(const T* x, const T* w, T* y, int N, int In, int Out, double alpha) {
  MatMap<T>(y, N, Out).noalias() = T(alpha) * (CMatMap<T>(x, N, In) * CMatMap<T>(w, Out, In).transpose());
}
// dx = alpha * dy W (skipped if dx == nullptr), dW += alpha * dy^T x
template <class T>
void matmul_backward(const T* dy, const T* x, const T* w, T* dx, T* dw, int N, int In, int Out, double alpha,
                     bool accumulate = true) {
  CMatMap<T> DY(dy, N, Out);
  if (dx) MatMap<T>(dx, N, In).noalias() = T(alpha) * (DY * CMatMap<T>(w, Out, In));
  if (accumulate) MatMap<T>(dw, Out, In).noalias() += T(alpha) * (DY.transpose() * CMatMap<T>(x, N, In));
  else MatMap<T>(dw, Out, In).noalias() = T(alpha) * (DY.transpose() * CMatMap<T>(x, N, In));
}

}  // namespace mue::cpu
#endif

#ifdef MUE_HAVE_CUDA
namespace mue::cuda {

// y[N,Out] = alpha * x[N,In] W[Out,In]^T   (cuBLAS, bf16 in, fp32 accumulate)
void matmul_forward(Context& ctx, const bf16* x, const bf16* w, bf16* y, int N, int In, int Out, float alpha);
// dx = alpha * dy W (skipped if dx == nullptr); dw += alpha * dy^T x (accumulate) or dw = alpha * dy^T x
// (skipped if dw == nullptr)
void matmul_backward(Context& ctx, const bf16* dy, const bf16* x, const bf16* w, bf16* dx, float* dw, int N,
                     int In, int Out, float alpha, bool accumulate = true);

}  // namespace mue::cuda
#endif
