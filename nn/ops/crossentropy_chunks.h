// Softmax cross-entropy of the LM head taken over chunks of vocabulary columns, so that the logits of one chunk
// (all N rows, `cols` columns from column v0) are all that exist at once: small enough to stay in L2 between the
// GEMM that writes them and the ops that read them (nn/lm.h, head_loss_by_vocab). The forward merges each chunk
// into a running (max, sum of exp) per row and picks the target's logit when it falls in the chunk; finish turns
// those into the losses and each row's logsumexp, from which the backward makes a chunk's dlogits in place.
// Targets outside [0, V) give NaN losses and NaN gradient rows, as crossentropy does.
// CPU reference; CUDA launchers (kernels: nn/crossentropy_chunks.cu).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "core/cuda_context.h"  // empty without CUDA

#ifndef __CUDACC__
namespace mue::cpu {

// Merges columns [v0, v0 + cols) (logits [N, cols]) into the running max m, sum of exp(x - m) and target logit
// of each row; v0 == 0 starts them afresh.
template <class T>
void crossentropy_chunk_stats(const T* logits, const int32_t* targets, T* m, T* sum, T* target_logit, int N,
                              int cols, int v0) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const T* l = logits + size_t(n) * cols;
    if (v0 == 0) m[n] = -std::numeric_limits<T>::infinity(), sum[n] = 0, target_logit[n] = 0;
    T mx = m[n];
    for (int j = 0; j < cols; ++j) mx = std::max(mx, l[j]);
    // The old terms at the new max, then the chunk's; a side whose max is -inf has no term (exp(-inf - -inf) is
    // NaN), as in the CUDA kernel.
    T s = m[n] == -std::numeric_limits<T>::infinity() ? T(0) : sum[n] * std::exp(m[n] - mx);
    if (mx != -std::numeric_limits<T>::infinity())
      for (int j = 0; j < cols; ++j) s += std::exp(l[j] - mx);
    m[n] = mx, sum[n] = s;
    const int j = targets[n] - v0;
    if (j >= 0 && j < cols) target_logit[n] = l[j];
  }
}
// losses = logsumexp - target logit and lse = logsumexp per row (NaN for a target outside [0, V)).
template <class T>
void crossentropy_chunk_finish(const T* m, const T* sum, const T* target_logit, const int32_t* targets, T* losses,
                               T* lse, int N, int V) {
  for (int n = 0; n < N; ++n) {
    const bool ok = targets[n] >= 0 && targets[n] < V;
    lse[n] = ok ? m[n] + std::log(sum[n]) : std::numeric_limits<T>::quiet_NaN();
    losses[n] = lse[n] - target_logit[n];
  }
}
// In place: logits [N, cols] of columns [v0, v0 + cols) become dloss * (softmax - onehot).
template <class T>
void crossentropy_chunk_grad(T* logits, const int32_t* targets, const T* lse, int N, int cols, int v0, double dloss) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    T* l = logits + size_t(n) * cols;
    for (int j = 0; j < cols; ++j) l[j] = T(dloss) * (std::exp(l[j] - lse[n]) - (v0 + j == targets[n] ? 1 : 0));
  }
}

}  // namespace mue::cpu
#endif

#ifdef MUE_HAVE_CUDA
namespace mue::cuda {

// As the CPU reference: bf16 logits, fp32 statistics.
void crossentropy_chunk_stats(Context& ctx, const bf16* logits, const int32_t* targets, float* m, float* sum,
                              float* target_logit, int N, int cols, int v0);
void crossentropy_chunk_finish(Context& ctx, const float* m, const float* sum, const float* target_logit,
                               const int32_t* targets, float* losses, float* lse, int N, int V);
void crossentropy_chunk_grad(Context& ctx, bf16* logits, const int32_t* targets, const float* lse, int N, int cols,
                             int v0, float dloss);

}  // namespace mue::cuda
#endif
