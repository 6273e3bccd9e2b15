// Token embedding lookup. Forward is a row gather, backward a scatter-add into the fp32 gradient.
#include <algorithm>

#include "core/cuda_util.cuh"
#include "nn/ops/embedding.h"

namespace mue::cuda {

using namespace detail;

namespace {
// One block per row n: out[n, :] = wte[tok[n], :]   traffic: read N*D, write N*D bf16
__global__ void embedding_forward_kernel(const int32_t* tok, const bf* wte, bf* out, int D) {
  const size_t n = blockIdx.x;
  const bf* src = wte + size_t(tok[n]) * D;
  bf* dst = out + n * D;
  for (int i = threadIdx.x; i < D; i += blockDim.x) dst[i] = src[i];
}

// Backward without atomics (fp32 atomics from many rows that share a token land in a different order each run):
// one block per R rows of dwte (R <= 64, R * D fp32 accumulators in shared memory) scans all N tokens in order,
// kThreads at a time, lists (in order, by warp ballots) the positions whose token falls in its rows, and adds
// those rows of dout to its accumulators one position after another (thread i owning columns i, i + kThreads,
// ...); at the end it adds each accumulator row that was hit to dwte. Each dwte row belongs to one block and its
// sum is taken in increasing n: the same bits on every run. (A token that fills much of the batch makes its
// block the last to finish: its adds are sequential. A stable sort of the positions by token, then fixed chunks
// of each token's run summed in a fixed order, would spread that work: not needed at GPT-2's vocabulary.)
// traffic: read N*D bf16 (dout) + (rows / R) * N int32 (tok, from L2), read-add-write (rows hit) * D fp32
constexpr int kThreads = 256, kWarps = kThreads / 32, kMaxRowsPerBlock = 64;
// shared accumulators per block: with the lists (2 KiB of static shared memory) under the 48 KiB a block gets
// without opting in
constexpr size_t kAccBytes = 40 * 1024;
// As many rows as the accumulators hold, but fewer where that would leave SMs idle (a small vocabulary).
int rows_per_block(int D, int rows) {
  const size_t fit = std::clamp<size_t>(kAccBytes / (sizeof(float) * size_t(D)), 1, kMaxRowsPerBlock);
  const size_t spread = std::max<size_t>(1, size_t(rows) / (2 * size_t(sm_count())));
  return int(std::min(fit, spread));
}

__global__ void __launch_bounds__(kThreads) embedding_backward_kernel(const int32_t* tok, const bf* dout,
                                                                      float* dwte, int N, int D, int rows, int R) {
  extern __shared__ float acc[];  // [R, D]
  __shared__ int hit_pos[kThreads], hit_row[kThreads], warp_hits[kWarps];
  __shared__ unsigned long long touched;  // bit r: row v0 + r was hit
  const int v0 = blockIdx.x * R, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int i = threadIdx.x; i < R * D; i += kThreads) acc[i] = 0.f;
  if (threadIdx.x == 0) touched = 0;
  __syncthreads();
  for (int base = 0; base < N; base += kThreads) {
    const int n = base + threadIdx.x;
    const int t = n < N ? tok[n] : -1;
    const bool hit = t >= v0 && t < v0 + R;
    const unsigned ballot = __ballot_sync(0xffffffffu, hit);
    if (lane == 0) warp_hits[warp] = __popc(ballot);
    __syncthreads();
    int before = 0, total = 0;
    #pragma unroll
    for (int w = 0; w < kWarps; ++w) before += w < warp ? warp_hits[w] : 0, total += warp_hits[w];
    if (hit) {
      const int k = before + __popc(ballot & ((1u << lane) - 1u));
      hit_pos[k] = n, hit_row[k] = t - v0;
      atomicOr(&touched, 1ull << (t - v0));  // a set of bits: the same result in any order
    }
    __syncthreads();
    // Column by column, the hits in order; kBatch rows of dout are loaded before they are added, so that a block
    // with many hits (a frequent token) waits for memory once per kBatch of them, not once per hit.
    constexpr int kBatch = 16;
    for (int i = threadIdx.x; i < D; i += kThreads) {
      int k = 0;
      for (; k + kBatch <= total; k += kBatch) {
        float x[kBatch];
        #pragma unroll
        for (int j = 0; j < kBatch; ++j) x[j] = __bfloat162float(dout[size_t(hit_pos[k + j]) * D + i]);
        #pragma unroll
        for (int j = 0; j < kBatch; ++j) acc[size_t(hit_row[k + j]) * D + i] += x[j];
      }
      for (; k < total; ++k) acc[size_t(hit_row[k]) * D + i] += __bfloat162float(dout[size_t(hit_pos[k]) * D + i]);
    }
    __syncthreads();  // before the next pass overwrites the lists
  }
  for (int r = 0; r < R && v0 + r < rows; ++r) {
    if (!((touched >> r) & 1ull)) continue;
    float* dst = dwte + size_t(v0 + r) * D;
    for (int i = threadIdx.x; i < D; i += kThreads) dst[i] += acc[size_t(r) * D + i];
  }
}
}  // namespace

void embedding_forward(Context& ctx, const int32_t* tok, const bf16* wte, bf16* out, int N, int D) {
  if (N <= 0 || D <= 0) return;
  embedding_forward_kernel<<<N, threads_for_row(D), 0, ctx.stream>>>(tok, B(wte), B(out), D);
  check_launch("embedding_forward_kernel");
}

void embedding_backward(Context& ctx, const int32_t* tok, const bf16* dout, float* dwte, int N, int D, int rows) {
  if (N <= 0 || D <= 0 || rows <= 0) return;
  MUE_CHECK(sizeof(float) * size_t(D) <= kAccBytes, "embedding_backward: width ", D, " above ",
            kAccBytes / sizeof(float), " (one row of shared accumulators)");
  const int R = rows_per_block(D, rows);
  embedding_backward_kernel<<<(rows + R - 1) / R, kThreads, sizeof(float) * size_t(R) * D, ctx.stream>>>(
      tok, B(dout), dwte, N, D, rows, R);
  check_launch("embedding_backward_kernel");
}

}  // namespace mue::cuda
