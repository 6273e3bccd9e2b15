// The LM head's loss and backward from its logits: softmax cross-entropy of logits = alpha x W^T, then
// dx = alpha dlogits W and dW (+)= alpha dlogits^T x with dlogits = dloss (softmax - onehot), as training needs
// them. CPU reference: the two ops it replaces (crossentropy_forward_backward into the logits, matmul_backward).
// CUDA (nn/linear_crossentropy.cu): dlogits never reach memory; the kernels form them from the logits as they
// read them.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/cuda_context.h"  // empty without CUDA

#ifndef __CUDACC__
#include "nn/ops/crossentropy.h"
#include "nn/ops/matmul.h"

namespace mue::cpu {

// logits [N, Vp] (alpha x W^T; columns V..Vp-1 padding) are overwritten with dlogits; losses [N] as
// crossentropy_forward; dx [N, D] = alpha dlogits W; dw [Vp, D] += (accumulate) or = alpha dlogits^T x.
template <class T>
void linear_crossentropy_backward(T* logits, const int32_t* targets, const T* x, const T* w, T* losses, T* dx, T* dw,
                                  int N, int D, int V, int Vp, double alpha, double dloss, bool accumulate = true) {
  crossentropy_forward_backward(logits, targets, losses, logits, N, V, Vp, dloss);
  matmul_backward(logits, x, w, dx, dw, N, D, Vp, alpha, accumulate);
}

}  // namespace mue::cpu
#endif

#ifdef MUE_HAVE_CUDA
namespace mue::cuda {

// As the CPU reference; dx is required. The logits are scratch: their contents afterwards are unspecified (the
// unfused path writes dlogits into them). Shapes the fused kernels take (D a multiple of 64, at most 128 or a
// multiple of 128; Vp a multiple of 64; 16-byte aligned rows) run without dlogits in memory, by default at D = 128
// and with the kernel variant fused_head=1-4 at all of them: losses and dx by one pass over the logits (online
// softmax, partial sums per vocabulary split, combined in a fixed order), dW by a second. Otherwise
// crossentropy_forward_backward and cuBLAS.
void linear_crossentropy_backward(Context& ctx, bf16* logits, const int32_t* targets, const bf16* x, const bf16* w,
                                  float* losses, bf16* dx, float* dw, int N, int D, int V, int Vp, float alpha,
                                  float dloss, bool accumulate = true);
// Whether the call above takes the fused kernels for these sizes (the shapes above and the current variant).
bool linear_crossentropy_fused(int D, int Vp);

}  // namespace mue::cuda
#endif
