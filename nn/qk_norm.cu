// QK-norm: RMSNorm over each head's q and k, the hd-long rows inside qkv [N, 3, H, hd], with gains w [2, hd]
// (row 0 for every q head, row 1 for every k head). Row r of the N*2H normalized rows is token r / 2H, slot
// j = r % 2H (q heads, then k heads); its pre-norm copy is pre[r*hd ..] and its statistic rstd[r].
// One warp per row, lanes over the columns (hd <= 256).
#include "core/cuda_util.cuh"
#include "nn/ops_cuda.h"

#include <algorithm>
#include <type_traits>

namespace mue::cuda {

using namespace detail;

namespace {
constexpr int kRowWarps = 8;  // rows (warps) per block
constexpr int kMaxHeadDim = 256;

__device__ __forceinline__ size_t qk_row_offset(int row, int H, int hd) {
  const int twoH = 2 * H;
  return size_t(row / twoH) * 3 * H * hd + size_t(row % twoH) * hd;
}

// In place: pre = x, x = x * rstd * w.
// traffic: read 2*N*D bf16 (q, k; the second read from L1) + 2*hd, write 4*N*D bf16 (normalized and pre) + 2*N*H fp32
__global__ void __launch_bounds__(kRowWarps * 32)
    qk_norm_forward_kernel(bf* qkv, const bf* w, bf* pre, float* rstd, int rows, int H, int hd, float eps) {
  const int row = blockIdx.x * kRowWarps + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (row >= rows) return;
  bf* x = qkv + qk_row_offset(row, H, hd);
  bf* p = pre + size_t(row) * hd;
  const bf* g = w + (row % (2 * H) >= H ? hd : 0);
  float ss = 0.f;
  for (int i = lane; i < hd; i += 32) {
    const float v = __bfloat162float(x[i]);
    ss += v * v;
  }
  const float r = rsqrtf(warp_reduce(ss, SumOp{}) / float(hd) + eps);
  if (lane == 0) rstd[row] = r;
  for (int i = lane; i < hd; i += 32) {
    const bf v = x[i];
    p[i] = v;
    x[i] = __float2bfloat16(__bfloat162float(v) * r * __bfloat162float(g[i]));
  }
}

// In place on dq, dk: dx = rstd * (dy*w - xhat * mean(dy*w*xhat)), xhat = pre * rstd. Each lane sums dw over
// its rows and columns in registers (q and k apart), the block adds its warps in a fixed order and writes one
// row of partials [2*hd], which add_column_sums adds to dw in a fixed order: no atomics.
// traffic: read 2*N*D bf16 (dy) + 2*N*D bf16 (pre) + 2*N*H fp32, write 2*N*D bf16 + gridDim.x * 2*hd fp32
template <int kCols>  // ceil(hd / 32): columns per lane
__global__ void __launch_bounds__(kRowWarps * 32)
    qk_norm_backward_kernel(bf* dqkv, const bf* pre, const bf* w, const float* rstd, float* dw_part, int rows,
                            int H, int hd) {
  __shared__ float dw_warps[kRowWarps][2][kCols * 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float dwq[kCols] = {}, dwk[kCols] = {};
  for (int row = blockIdx.x * kRowWarps + warp; row < rows; row += gridDim.x * kRowWarps) {
    bf* dy = dqkv + qk_row_offset(row, H, hd);
    const bf* x = pre + size_t(row) * hd;
    const bool is_k = row % (2 * H) >= H;
    const bf* g = w + (is_k ? hd : 0);
    const float r = rstd[row];
    float gy[kCols], xh[kCols], wi[kCols], dot = 0.f;
    #pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const int i = lane + 32 * c;
      gy[c] = i < hd ? __bfloat162float(dy[i]) : 0.f;
      xh[c] = i < hd ? __bfloat162float(x[i]) * r : 0.f;
      wi[c] = i < hd ? __bfloat162float(g[i]) : 0.f;
      dot += gy[c] * wi[c] * xh[c];
    }
    dot = warp_reduce(dot, SumOp{}) / float(hd);
    #pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const int i = lane + 32 * c;
      if (is_k) dwk[c] += gy[c] * xh[c];
      else dwq[c] += gy[c] * xh[c];
      if (i < hd) dy[i] = __float2bfloat16(r * (gy[c] * wi[c] - xh[c] * dot));
    }
  }
  #pragma unroll
  for (int c = 0; c < kCols; ++c) dw_warps[warp][0][lane + 32 * c] = dwq[c], dw_warps[warp][1][lane + 32 * c] = dwk[c];
  __syncthreads();
  for (int j = threadIdx.x; j < 2 * hd; j += blockDim.x) {
    const int part = j / hd, i = j % hd;
    float sum = 0.f;
    #pragma unroll
    for (int v = 0; v < kRowWarps; ++v) sum += dw_warps[v][part][i];
    dw_part[size_t(blockIdx.x) * 2 * hd + j] = sum;
  }
}
}  // namespace

void qk_norm_forward(Context& ctx, bf16* qkv, const bf16* w, bf16* pre, float* rstd, int N, int H, int hd, float eps) {
  const int rows = N * 2 * H;
  if (rows <= 0) return;
  MUE_CHECK(hd <= kMaxHeadDim, "qk_norm on CUDA supports head dims up to ", kMaxHeadDim, ", got ", hd);
  qk_norm_forward_kernel<<<(rows + kRowWarps - 1) / kRowWarps, kRowWarps * 32, 0, ctx.stream>>>(B(qkv), B(w), B(pre),
                                                                                             rstd, rows, H, hd, eps);
  check_launch("qk_norm_forward_kernel");
}

void qk_norm_backward(Context& ctx, bf16* dqkv, const bf16* pre, const bf16* w, const float* rstd, float* dw, int N,
                      int H, int hd) {
  const int rows = N * 2 * H;
  if (rows <= 0) return;
  MUE_CHECK(hd <= kMaxHeadDim, "qk_norm on CUDA supports head dims up to ", kMaxHeadDim, ", got ", hd);
  const auto launch = [&](auto cols) {
    // one wave of resident blocks; each then writes one row of dw partials
    const int grid = std::min((rows + kRowWarps - 1) / kRowWarps, 4 * sm_count());
    float* part = static_cast<float*>(ctx.scratch(4, sizeof(float) * size_t(grid) * 2 * hd));
    qk_norm_backward_kernel<cols.value><<<grid, kRowWarps * 32, 0, ctx.stream>>>(B(dqkv), B(pre), B(w), rstd, part,
                                                                                rows, H, hd);
    check_launch("qk_norm_backward_kernel");
    add_column_sums(ctx, part, dw, grid, 2 * hd);
  };
  const int cols = (hd + 31) / 32;
  if (cols <= 1) launch(std::integral_constant<int, 1>{});
  else if (cols <= 2) launch(std::integral_constant<int, 2>{});
  else if (cols <= 4) launch(std::integral_constant<int, 4>{});
  else launch(std::integral_constant<int, 8>{});
}

}  // namespace mue::cuda
