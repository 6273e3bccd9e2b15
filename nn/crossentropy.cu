// Softmax cross-entropy over the first V of Vp logit columns (columns V..Vp-1 are padding). One block per row,
// fp32 math: an online (max, sum-of-exp) pass per thread, merged by two block reductions into logsumexp.
#include "core/cuda_util.cuh"
#include "nn/ops_cuda.h"

namespace mue::cuda {

using namespace detail;

namespace {
// logsumexp of l[0..V) for the calling block (every thread gets it).
__device__ float row_logsumexp(const bf* l, int V) {
  float m = -INFINITY, sum = 0.f;
  for (int j = threadIdx.x; j < V; j += blockDim.x) {
    const float x = __bfloat162float(l[j]);
    if (x > m) {
      sum *= expf(m - x);
      m = x;
    }
    sum += expf(x - m);
  }
  const float M = block_reduce(m, MaxOp{}, -INFINITY);
  sum = (m == -INFINITY) ? 0.f : sum * expf(m - M);
  sum = block_reduce(sum, SumOp{}, 0.f);
  return M + logf(sum);
}

// losses[n] = logsumexp(logits[n, :V]) - logits[n, target[n]] (NaN for a target outside [0, V))
// traffic: read N*V bf16, write N fp32
__global__ void crossentropy_forward_kernel(const bf* logits, const int32_t* targets, float* losses, int V, int Vp) {
  const size_t n = blockIdx.x;
  const bf* l = logits + n * Vp;
  const float lse = row_logsumexp(l, V);
  if (threadIdx.x == 0) {
    const int tg = targets[n];
    losses[n] = (tg >= 0 && tg < V) ? lse - __bfloat162float(l[tg]) : NAN;
  }
}

// dlogits[n, j] = dloss * (softmax_j - [j == target]) for j < V, 0 for V <= j < Vp. May run in place
// (dlogits == logits): the reduction's barriers separate all reads of the row from the writes, and in the
// write loop each thread reads only the element it then overwrites.
// traffic: read N*V bf16 (twice, the second time from cache), write N*Vp bf16
__global__ void crossentropy_backward_kernel(const bf* logits, const int32_t* targets, bf* dlogits, int V, int Vp,
                                             float dloss) {
  const size_t n = blockIdx.x;
  const bf* l = logits + n * Vp;
  bf* d = dlogits + n * Vp;
  const float lse = row_logsumexp(l, V);
  const int tg = targets[n];
  for (int j = threadIdx.x; j < Vp; j += blockDim.x) {
    float g = 0.f;
    if (j < V) g = dloss * (expf(__bfloat162float(l[j]) - lse) - (j == tg ? 1.f : 0.f));
    d[j] = __float2bfloat16(g);
  }
}
}  // namespace

void crossentropy_forward(Context& ctx, const bf16* logits, const int32_t* targets, float* losses, int N, int V,
                          int Vp) {
  if (N <= 0) return;
  MUE_CHECK(V > 0 && V <= Vp, "crossentropy_forward: need 0 < V <= Vp, got V = ", V, ", Vp = ", Vp);
  crossentropy_forward_kernel<<<N, 512, 0, ctx.stream>>>(B(logits), targets, losses, V, Vp);
  check_launch("crossentropy_forward_kernel");
}

void crossentropy_backward(Context& ctx, const bf16* logits, const int32_t* targets, bf16* dlogits, int N, int V,
                           int Vp, float dloss) {
  if (N <= 0) return;
  MUE_CHECK(V > 0 && V <= Vp, "crossentropy_backward: need 0 < V <= Vp, got V = ", V, ", Vp = ", Vp);
  crossentropy_backward_kernel<<<N, 512, 0, ctx.stream>>>(B(logits), targets, B(dlogits), V, Vp, dloss);
  check_launch("crossentropy_backward_kernel");
}

}  // namespace mue::cuda
