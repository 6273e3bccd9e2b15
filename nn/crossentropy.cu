// Softmax cross-entropy over the first V of Vp logit columns (columns V..Vp-1 are padding). One block per row,
// fp32 math. The forward makes one pass (online max and sum of exp per thread, two block reductions); the
// backward recovers the row's logsumexp from the forward's loss (lse = loss + logit[target]) and makes one
// read-write pass, in place when dlogits == logits. Rows are read as 16-byte vectors of 8 bf16 when Vp % 8 == 0.
//   forward traffic: read N V bf16, write N fp32; backward: read N V bf16, write N Vp bf16.
// Training calls crossentropy_forward_backward: one kernel that reads each row once into shared memory
// (cp.async), reduces it there and writes dlogits, so the logits cross HBM once each way (read N Vp, write N Vp)
// instead of twice read and once written.
#include "core/cuda_util.cuh"
#include "core/mma.cuh"
#include "nn/ops/crossentropy.h"

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

// dloss * (softmax_j - [j == target]) for j < V, 0 for the padding columns; lse NaN for a bad target.
__device__ inline float crossentropy_grad(int j, float x, float lse, int V, int tg, float dloss) {
  return j < V ? dloss * (__expf(x - lse) - (j == tg ? 1.f : 0.f)) : 0.f;
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
  const auto grad = [&](int j, float x) { return crossentropy_grad(j, x, lse, V, tg, dloss); };
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

// Forward and backward of one row per block, the row held in shared memory (Vp bf16, Vp % 8 == 0):
// losses[n] as crossentropy_forward_kernel, dlogits[n] as crossentropy_backward_kernel (may alias logits: the
// whole row is in shared memory before anything is written).
constexpr int kFusedThreads = 512;
__global__ void __launch_bounds__(kFusedThreads) crossentropy_fused_kernel(const bf* logits, const int32_t* targets,
                                                                           float* losses, bf* dlogits, int V, int Vp,
                                                                           float dloss) {
  extern __shared__ __align__(16) uint4 row[];
  const size_t n = blockIdx.x;
  const uint4* lv = reinterpret_cast<const uint4*>(logits + n * Vp);
  const int nv = Vp / 8;
  for (int i = threadIdx.x; i < nv; i += kFusedThreads) cp_async16(row + i, lv + i, true);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();  // the scalar tail below reads vectors that other threads copied
  const bf* rb = reinterpret_cast<const bf*>(row);
  float m = -INFINITY, s = 0.f;
  for (int i = threadIdx.x; i < V / 8; i += kFusedThreads) online_add8(m, s, row[i]);
  for (int j = V / 8 * 8 + threadIdx.x; j < V; j += kFusedThreads) online_add(m, s, __bfloat162float(rb[j]));
  const float M = block_reduce(m, MaxOp{}, -INFINITY);
  const float S = block_reduce(m == -INFINITY ? 0.f : s * __expf(m - M), SumOp{}, 0.f);
  const int tg = targets[n];
  const bool ok = tg >= 0 && tg < V;
  const float lse = ok ? M + logf(S) : NAN;
  if (threadIdx.x == 0) losses[n] = ok ? lse - __bfloat162float(rb[tg]) : NAN;
  uint4* dv = reinterpret_cast<uint4*>(dlogits + n * Vp);
  for (int i = threadIdx.x; i < nv; i += kFusedThreads) {
    float x[8];
    unpack8(row[i], x);
    #pragma unroll
    for (int k = 0; k < 8; ++k) x[k] = crossentropy_grad(8 * i + k, x[k], lse, V, tg, dloss);
    dv[i] = pack8(x);
  }
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

void crossentropy_forward_backward(Context& ctx, const bf16* logits, const int32_t* targets, float* losses,
                                   bf16* dlogits, int N, int V, int Vp, float dloss) {
  if (N <= 0) return;
  MUE_CHECK(V > 0 && V <= Vp, "crossentropy_forward_backward: need 0 < V <= Vp, got V = ", V, ", Vp = ", Vp);
  const size_t smem = size_t(Vp) * sizeof(bf);
  // (+256: block_reduce's static shared buffer)
  if (Vp % 8 != 0 || !aligned16(logits, dlogits) || smem + 256 > size_t(max_smem_optin())) {
    crossentropy_forward(ctx, logits, targets, losses, N, V, Vp);
    return crossentropy_backward(ctx, logits, targets, losses, dlogits, N, V, Vp, dloss);
  }
  allow_smem(reinterpret_cast<const void*>(crossentropy_fused_kernel), smem, "crossentropy_fused_kernel");
  crossentropy_fused_kernel<<<N, kFusedThreads, smem, ctx.stream>>>(B(logits), targets, losses, B(dlogits), V, Vp,
                                                                     dloss);
  check_launch("crossentropy_fused_kernel");
}

}  // namespace mue::cuda
