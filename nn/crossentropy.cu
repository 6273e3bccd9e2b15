// Softmax cross-entropy over the first V of Vp logit columns (columns V..Vp-1 are padding). One block per row,
// fp32 math. The forward makes one pass (online max and sum of exp per thread, two block reductions); the
// backward recovers the row's logsumexp from the forward's loss (lse = loss + logit[target]) and makes one
// read-write pass, in place when dlogits == logits. Rows are read as 16-byte vectors of 8 bf16 when Vp % 8 == 0.
//   forward traffic: read N V bf16, write N fp32; backward: read N V bf16, write N Vp bf16.
#include "core/cuda_util.cuh"
#include "nn/ops_cuda.h"

namespace mue::cuda {

using namespace detail;

namespace {
constexpr int kThreads = 256;

// Online (max, sum of exp) of one more value, or of 8 values at once.
// A -inf value adds nothing (and must not meet m = -inf: exp(-inf - -inf) is NaN).
__device__ inline void online_add(float& m, float& s, float x) {
  if (x == -INFINITY) return;
  if (x > m) s *= __expf(m - x), m = x;
  s += __expf(x - m);
}
__device__ inline void online_add8(float& m, float& s, const uint4& v) {
  float x[8], vm = -INFINITY;
  unpack8(v, x);
  #pragma unroll
  for (int k = 0; k < 8; ++k) vm = fmaxf(vm, x[k]);
  if (vm == -INFINITY) return;
  if (vm > m) s *= __expf(m - vm), m = vm;
  #pragma unroll
  for (int k = 0; k < 8; ++k) s += __expf(x[k] - m);
}

// losses[n] = logsumexp(logits[n, :V]) - logits[n, target[n]] (NaN for a target outside [0, V))
template <bool kVec>
__global__ void __launch_bounds__(kThreads) crossentropy_forward_kernel(const bf* logits, const int32_t* targets,
                                                                        float* losses, int V, int Vp) {
  const size_t n = blockIdx.x;
  const bf* l = logits + n * Vp;
  float m = -INFINITY, s = 0.f;
  int j0 = 0;
  if constexpr (kVec) {
    const uint4* lv = reinterpret_cast<const uint4*>(l);
    for (int i = threadIdx.x; i < V / 8; i += kThreads) online_add8(m, s, lv[i]);
    j0 = V / 8 * 8;
  }
  for (int j = j0 + threadIdx.x; j < V; j += kThreads) online_add(m, s, __bfloat162float(l[j]));
  const float M = block_reduce(m, MaxOp{}, -INFINITY);
  s = block_reduce(m == -INFINITY ? 0.f : s * __expf(m - M), SumOp{}, 0.f);
  if (threadIdx.x == 0) {
    const int tg = targets[n];
    losses[n] = (tg >= 0 && tg < V) ? M + logf(s) - __bfloat162float(l[tg]) : NAN;
  }
}

// dlogits[n, j] = dloss * (softmax_j - [j == target]) for j < V, 0 for V <= j < Vp (NaN rows for a bad target,
// as their loss). In place is safe: the target's logit is read before a barrier, and every other element is
// read only by the thread that then overwrites it.
template <bool kVec>
__global__ void __launch_bounds__(kThreads) crossentropy_backward_kernel(const bf* logits, const int32_t* targets,
                                                                         const float* losses, bf* dlogits, int V,
                                                                         int Vp, float dloss) {
  __shared__ float lse_s;
  const size_t n = blockIdx.x;
  const bf* l = logits + n * Vp;
  bf* d = dlogits + n * Vp;
  const int tg = targets[n];
  if (threadIdx.x == 0) lse_s = (tg >= 0 && tg < V) ? losses[n] + __bfloat162float(l[tg]) : NAN;
  __syncthreads();
  const float lse = lse_s;
  const auto grad = [&](int j, float x) {
    return j < V ? dloss * (__expf(x - lse) - (j == tg ? 1.f : 0.f)) : 0.f;
  };
  int j0 = 0;
  if constexpr (kVec) {
    const uint4* lv = reinterpret_cast<const uint4*>(l);
    uint4* dv = reinterpret_cast<uint4*>(d);
    for (int i = threadIdx.x; i < Vp / 8; i += kThreads) {
      float x[8];
      unpack8(lv[i], x);
      #pragma unroll
      for (int k = 0; k < 8; ++k) x[k] = grad(8 * i + k, x[k]);
      dv[i] = pack8(x);
    }
    j0 = Vp;
  }
  for (int j = j0 + threadIdx.x; j < Vp; j += kThreads) d[j] = __float2bfloat16(grad(j, __bfloat162float(l[j])));
}
}  // namespace

void crossentropy_forward(Context& ctx, const bf16* logits, const int32_t* targets, float* losses, int N, int V,
                          int Vp) {
  if (N <= 0) return;
  MUE_CHECK(V > 0 && V <= Vp, "crossentropy_forward: need 0 < V <= Vp, got V = ", V, ", Vp = ", Vp);
  if (Vp % 8 == 0 && aligned16(logits))
    crossentropy_forward_kernel<true><<<N, kThreads, 0, ctx.stream>>>(B(logits), targets, losses, V, Vp);
  else
    crossentropy_forward_kernel<false><<<N, kThreads, 0, ctx.stream>>>(B(logits), targets, losses, V, Vp);
  check_launch("crossentropy_forward_kernel");
}

void crossentropy_backward(Context& ctx, const bf16* logits, const int32_t* targets, const float* losses,
                           bf16* dlogits, int N, int V, int Vp, float dloss) {
  if (N <= 0) return;
  MUE_CHECK(V > 0 && V <= Vp, "crossentropy_backward: need 0 < V <= Vp, got V = ", V, ", Vp = ", Vp);
  if (Vp % 8 == 0 && aligned16(logits, dlogits))
    crossentropy_backward_kernel<true>
        <<<N, kThreads, 0, ctx.stream>>>(B(logits), targets, losses, B(dlogits), V, Vp, dloss);
  else
    crossentropy_backward_kernel<false>
        <<<N, kThreads, 0, ctx.stream>>>(B(logits), targets, losses, B(dlogits), V, Vp, dloss);
  check_launch("crossentropy_backward_kernel");
}

}  // namespace mue::cuda
