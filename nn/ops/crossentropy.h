// Softmax cross-entropy of the LM head. CPU reference (Eigen); CUDA launchers (kernels: nn/crossentropy.cu).
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "core/cuda_context.h"  // empty without CUDA

// nvcc compiles the launchers only: the Eigen reference stays out of the .cu translation units.
#ifndef __CUDACC__
#include "nn/ops/eigen_maps.h"

namespace mue::cpu {

// softmax cross-entropy over the first V of Vp columns
template <class T>
void crossentropy_forward(const T* logits, const int32_t* targets, T* losses, int N, int V, int Vp) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const auto l = CRowMap<T>(logits + size_t(n) * Vp, V);
    const T mx = l.maxCoeff(), sum = (l - mx).exp().sum();  // Eigen's exp is vectorized; std::exp is not
    losses[n] = std::log(sum) + mx - l[targets[n]];
  }
}
// dlogits = dloss * (softmax - onehot); padding columns get 0. dlogits may alias logits. Each row's logsumexp
// comes from the forward's loss: lse = loss + logit[target].
template <class T>
void crossentropy_backward(const T* logits, const int32_t* targets, const T* losses, T* dlogits, int N, int V, int Vp,
                           double dloss) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const int tg = targets[n];
    const T lse = losses[n] + logits[size_t(n) * Vp + tg];
    auto d = RowMap<T>(dlogits + size_t(n) * Vp, Vp);
    d.head(V) = T(dloss) * (CRowMap<T>(logits + size_t(n) * Vp, V) - lse).exp();  // d may alias the logits
    d[tg] -= T(dloss);
    d.tail(Vp - V).setZero();
  }
}
// Both, as training calls them (one pass on CUDA): losses, then dlogits (may alias logits).
template <class T>
void crossentropy_forward_backward(const T* logits, const int32_t* targets, T* losses, T* dlogits, int N, int V, int Vp,
                                   double dloss) {
  crossentropy_forward(logits, targets, losses, N, V, Vp);
  crossentropy_backward(logits, targets, losses, dlogits, N, V, Vp, dloss);
}

}  // namespace mue::cpu
#endif

#ifdef MUE_HAVE_CUDA
namespace mue::cuda {

// Softmax cross-entropy over the first V of Vp columns (padding columns ignored).
// losses[n] = logsumexp(logits[n, :V]) - logits[n, target[n]]  (fp32)
void crossentropy_forward(Context& ctx, const bf16* logits, const int32_t* targets, float* losses, int N, int V,
                          int Vp);
// dlogits = dloss * (softmax - onehot) on the first V columns, 0 on padding (dlogits may alias logits);
// `losses` are the forward's, from which each row's logsumexp is recovered.
void crossentropy_backward(Context& ctx, const bf16* logits, const int32_t* targets, const float* losses,
                           bf16* dlogits, int N, int V, int Vp, float dloss);
// Both at once, as training needs them: losses and dlogits (may alias logits), each row read from memory once.
void crossentropy_forward_backward(Context& ctx, const bf16* logits, const int32_t* targets, float* losses,
                                   bf16* dlogits, int N, int V, int Vp, float dloss);

}  // namespace mue::cuda
#endif
