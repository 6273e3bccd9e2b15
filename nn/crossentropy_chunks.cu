// Cross-entropy over vocabulary chunks (nn/ops/crossentropy_chunks.h): one warp per row of a chunk [N, cols] of
// bf16 logits, 16-byte vectors when cols % 8 == 0. The chunk is meant to be in L2 (written by the GEMM just
// before), so these passes cost L2 bandwidth, not HBM.
//   stats: reads N cols bf16, reads and writes 3 N fp32; grad: reads and writes N cols bf16 in place.
#include "core/cuda_util.cuh"
#include "nn/ops/crossentropy_chunks.h"

namespace mue::cuda {

using namespace detail;

namespace {
constexpr int kRowsPerBlock = 8;  // warps of a 256-thread block, one row each

__device__ inline void online_merge(float& m, float& s, float x) {
  if (x == -INFINITY) return;
  if (x > m) s *= __expf(m - x), m = x;
  s += __expf(x - m);
}

template <bool kVec>
__global__ void __launch_bounds__(32 * kRowsPerBlock)
    crossentropy_chunk_stats_kernel(const bf* logits, const int32_t* targets, float* m_row, float* sum_row,
                                    float* target_row, int N, int cols, int v0) {
  const int n = blockIdx.x * kRowsPerBlock + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (n >= N) return;
  const bf* l = logits + size_t(n) * cols;
  float m = -INFINITY, s = 0.f;
  int j0 = 0;
  if constexpr (kVec) {
    const uint4* lv = reinterpret_cast<const uint4*>(l);
    for (int i = lane; i < cols / 8; i += 32) {
      float x[8];
      unpack8(lv[i], x);
      #pragma unroll
      for (int k = 0; k < 8; ++k) online_merge(m, s, x[k]);
    }
    j0 = cols / 8 * 8;
  }
  for (int j = j0 + lane; j < cols; j += 32) online_merge(m, s, __bfloat162float(l[j]));
  const float M = warp_reduce(m, MaxOp{});
  s = warp_reduce(m == -INFINITY ? 0.f : s * __expf(m - M), SumOp{});
  if (lane == 0) {
    const float m_old = v0 == 0 ? -INFINITY : m_row[n], s_old = v0 == 0 ? 0.f : sum_row[n];
    const float mx = fmaxf(m_old, M);
    // Each side's terms at the new max (a side with nothing yet: max -inf, sum 0, no term).
    sum_row[n] = (m_old == -INFINITY ? 0.f : s_old * __expf(m_old - mx)) + (M == -INFINITY ? 0.f : s * __expf(M - mx));
    m_row[n] = mx;
    const int j = targets[n] - v0;
    if (v0 == 0) target_row[n] = 0.f;
    if (j >= 0 && j < cols) target_row[n] = __bfloat162float(l[j]);
  }
}

__global__ void crossentropy_chunk_finish_kernel(const float* m, const float* sum, const float* target_logit,
                                                 const int32_t* targets, float* losses, float* lse, int N, int V) {
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  if (n >= N) return;
  const bool ok = targets[n] >= 0 && targets[n] < V;
  lse[n] = ok ? m[n] + logf(sum[n]) : NAN;
  losses[n] = lse[n] - target_logit[n];
}

template <bool kVec>
__global__ void __launch_bounds__(32 * kRowsPerBlock)
    crossentropy_chunk_grad_kernel(bf* logits, const int32_t* targets, const float* lse_row, int N, int cols, int v0,
                                   float dloss) {
  const int n = blockIdx.x * kRowsPerBlock + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (n >= N) return;
  bf* l = logits + size_t(n) * cols;
  const float lse = lse_row[n];
  const int tg = targets[n] - v0;  // the target's column within the chunk (any value: compared only)
  const auto grad = [&](int j, float x) { return dloss * (__expf(x - lse) - (j == tg ? 1.f : 0.f)); };
  int j0 = 0;
  if constexpr (kVec) {
    uint4* lv = reinterpret_cast<uint4*>(l);
    for (int i = lane; i < cols / 8; i += 32) {
      float x[8];
      unpack8(lv[i], x);
      #pragma unroll
      for (int k = 0; k < 8; ++k) x[k] = grad(8 * i + k, x[k]);
      lv[i] = pack8(x);
    }
    j0 = cols / 8 * 8;
  }
  for (int j = j0 + lane; j < cols; j += 32) l[j] = __float2bfloat16(grad(j, __bfloat162float(l[j])));
}

unsigned row_blocks(int N) { return unsigned((N + kRowsPerBlock - 1) / kRowsPerBlock); }
}  // namespace

void crossentropy_chunk_stats(Context& ctx, const bf16* logits, const int32_t* targets, float* m, float* sum,
                              float* target_logit, int N, int cols, int v0) {
  if (N <= 0 || cols <= 0) return;
  if (cols % 8 == 0 && aligned16(logits))
    crossentropy_chunk_stats_kernel<true>
        <<<row_blocks(N), 32 * kRowsPerBlock, 0, ctx.stream>>>(B(logits), targets, m, sum, target_logit, N, cols, v0);
  else
    crossentropy_chunk_stats_kernel<false>
        <<<row_blocks(N), 32 * kRowsPerBlock, 0, ctx.stream>>>(B(logits), targets, m, sum, target_logit, N, cols, v0);
  check_launch("crossentropy_chunk_stats_kernel");
}

void crossentropy_chunk_finish(Context& ctx, const float* m, const float* sum, const float* target_logit,
                               const int32_t* targets, float* losses, float* lse, int N, int V) {
  if (N <= 0) return;
  crossentropy_chunk_finish_kernel<<<unsigned((N + 255) / 256), 256, 0, ctx.stream>>>(m, sum, target_logit, targets,
                                                                                       losses, lse, N, V);
  check_launch("crossentropy_chunk_finish_kernel");
}

void crossentropy_chunk_grad(Context& ctx, bf16* logits, const int32_t* targets, const float* lse, int N, int cols,
                             int v0, float dloss) {
  if (N <= 0 || cols <= 0) return;
  if (cols % 8 == 0 && aligned16(logits))
    crossentropy_chunk_grad_kernel<true>
        <<<row_blocks(N), 32 * kRowsPerBlock, 0, ctx.stream>>>(B(logits), targets, lse, N, cols, v0, dloss);
  else
    crossentropy_chunk_grad_kernel<false>
        <<<row_blocks(N), 32 * kRowsPerBlock, 0, ctx.stream>>>(B(logits), targets, lse, N, cols, v0, dloss);
  check_launch("crossentropy_chunk_grad_kernel");
}

}  // namespace mue::cuda
