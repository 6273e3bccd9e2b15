// QK-norm: RMSNorm over each head's q and k, the hd-long rows inside qkv [N, 3, H, hd], with gains w [2, hd]
// (row 0 for every q head, row 1 for every k head), and in the forward RoPE after it. Row r of the N*2H
// normalized rows is token r / 2H, slot j = r % 2H (q heads, then k heads); its pre-norm copy is pre[r*hd ..] and
// its statistic rstd[r]. Head dims 8..256 that are a power of two: a row is hd/8 lanes of 16-byte vectors
// (several rows per warp); other head dims <= 256: one warp per row, lanes over the columns, RoPE as its own op.
#include "core/cuda_util.cuh"
#include "nn/ops/qk_norm.h"
#include "nn/rope.cuh"

#include <algorithm>
#include <cmath>
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

// ---- 16-byte vectors: kLanes = hd / 8 lanes per row, 32 / kLanes rows per warp ----
constexpr int kVecThreads = 256;

template <int kLanes>
__device__ __forceinline__ float group_sum(float v) {  // over the kLanes lanes of one row
  #pragma unroll
  for (int o = kLanes / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// pre = x; x = rope(x * rstd * w) (rope when log2_theta > 0, position t = token % T; rounded to bf16 once).
// traffic: read 2*N*D bf16 + 2*hd, write 4*N*D bf16 (normalized and pre) + 2*N*H fp32
template <int kLanes>
__global__ void __launch_bounds__(kVecThreads) qk_norm_rope_forward_vec_kernel(bf* qkv, const bf* w, bf* pre,
                                                                                float* rstd, int rows, int T, int H,
                                                                                float eps, float log2_theta) {
  constexpr int hd = 8 * kLanes;
  const int idx = blockIdx.x * kVecThreads + threadIdx.x, row = idx / kLanes, v = idx % kLanes;
  // every lane of a row group stays for the shuffles; rows past the end load nothing and store nothing
  const bool live = row < rows;
  const int r = live ? row : rows - 1;
  uint4* x = reinterpret_cast<uint4*>(qkv + qk_row_offset(r, H, hd)) + v;
  float f[8], g[8];
  const uint4 xv = *x;
  unpack8(xv, f);
  float ss = 0.f;
  #pragma unroll
  for (int k = 0; k < 8; ++k) ss += f[k] * f[k];
  const float rs = rsqrtf(group_sum<kLanes>(ss) / float(hd) + eps);
  if (!live) return;
  if (v == 0) rstd[row] = rs;
  reinterpret_cast<uint4*>(pre + size_t(row) * hd)[v] = xv;
  unpack8(reinterpret_cast<const uint4*>(w + (row % (2 * H) >= H ? hd : 0))[v], g);
  #pragma unroll
  for (int k = 0; k < 8; ++k) f[k] *= rs * g[k];
  if (log2_theta > 0.f) {
    float c[4], s[4];
    rope_cos_sin4((row / (2 * H)) % T, v, hd, log2_theta, c, s);
    rope_rotate8(f, c, s, 1.f);
  }
  *x = pack8(f);
}

// In place on dq, dk (RoPE already rotated back): dx = rstd * (dy*w - xhat * mean(dy*w*xhat)), xhat = pre*rstd.
// Each thread sums dw over its rows for its 8 columns in registers (q and k apart); the block adds its row slots
// in a fixed order and writes one row of partials [2*hd] for add_column_sums: no atomics.
// traffic: read 2*N*D bf16 (dy) + 2*N*D bf16 (pre) + 2*N*H fp32, write 2*N*D bf16 + gridDim.x * 2*hd fp32
template <int kLanes>
__global__ void __launch_bounds__(kVecThreads) qk_norm_backward_vec_kernel(bf* dqkv, const bf* pre, const bf* w,
                                                                            const float* rstd, float* dw_part,
                                                                            int rows, int H) {
  constexpr int hd = 8 * kLanes, kSlots = kVecThreads / kLanes;  // rows a block holds at once
  __shared__ float dw_slots[kSlots][2][hd];
  const int slot = threadIdx.x / kLanes, v = threadIdx.x % kLanes;
  float wq[8], wk[8], dwq[8] = {}, dwk[8] = {};
  unpack8(reinterpret_cast<const uint4*>(w)[v], wq), unpack8(reinterpret_cast<const uint4*>(w + hd)[v], wk);
  // the loop bound is the same for a row group's lanes (they share the row), so the shuffles stay converged
  const int first = blockIdx.x * kSlots + slot, stride = gridDim.x * kSlots;
  const int iters = (rows + stride - 1) / stride;
  for (int it = 0; it < iters; ++it) {
    const int row = first + it * stride;
    const bool live = row < rows;
    const int r = live ? row : rows - 1;
    uint4* dy = reinterpret_cast<uint4*>(dqkv + qk_row_offset(r, H, hd)) + v;
    const bool is_k = r % (2 * H) >= H;
    const float rs = rstd[r];
    float gy[8], xh[8], dot = 0.f;
    unpack8(*dy, gy), unpack8(reinterpret_cast<const uint4*>(pre + size_t(r) * hd)[v], xh);
    #pragma unroll
    for (int k = 0; k < 8; ++k) {
      xh[k] *= rs;
      dot += gy[k] * (is_k ? wk[k] : wq[k]) * xh[k];
    }
    dot = group_sum<kLanes>(dot) / float(hd);
    if (!live) continue;
    float d[8];
    #pragma unroll
    for (int k = 0; k < 8; ++k) {
      if (is_k) dwk[k] += gy[k] * xh[k];
      else dwq[k] += gy[k] * xh[k];
      d[k] = rs * (gy[k] * (is_k ? wk[k] : wq[k]) - xh[k] * dot);
    }
    *dy = pack8(d);
  }
  #pragma unroll
  for (int k = 0; k < 8; ++k) dw_slots[slot][0][8 * v + k] = dwq[k], dw_slots[slot][1][8 * v + k] = dwk[k];
  __syncthreads();
  for (int j = threadIdx.x; j < 2 * hd; j += kVecThreads) {
    float sum = 0.f;
    for (int sl = 0; sl < kSlots; ++sl) sum += dw_slots[sl][j / hd][j % hd];
    dw_part[size_t(blockIdx.x) * 2 * hd + j] = sum;
  }
}

// Calls f(std::integral_constant<int, hd / 8>{}) when hd is a power of two in [8, 256] and the buffers allow
// 16-byte vectors; returns whether it did.
template <class F, class... P>
bool with_vector_lanes(int hd, F f, const P*... p) {
  if (!aligned16(p...)) return false;
  switch (hd) {
    case 8: return f(std::integral_constant<int, 1>{}), true;
    case 16: return f(std::integral_constant<int, 2>{}), true;
    case 32: return f(std::integral_constant<int, 4>{}), true;
    case 64: return f(std::integral_constant<int, 8>{}), true;
    case 128: return f(std::integral_constant<int, 16>{}), true;
    case 256: return f(std::integral_constant<int, 32>{}), true;
    default: return false;
  }
}

// ---- other head dims: one warp per row ----

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

void qk_norm_forward(Context& ctx, bf16* qkv, const bf16* w, bf16* pre, float* rstd, int batch, int T, int H, int hd,
                     float eps, float rope_theta) {
  const int rows = batch * T * 2 * H;
  if (rows <= 0) return;
  MUE_CHECK(hd <= kMaxHeadDim, "qk_norm on CUDA supports head dims up to ", kMaxHeadDim, ", got ", hd);
  const float log2_theta = rope_theta > 0.f ? log2f(rope_theta) : 0.f;
  const bool vec = with_vector_lanes(
      hd,
      [&](auto lanes) {
        const int blocks = int((size_t(rows) * lanes.value + kVecThreads - 1) / kVecThreads);
        qk_norm_rope_forward_vec_kernel<lanes.value><<<blocks, kVecThreads, 0, ctx.stream>>>(
            B(qkv), B(w), B(pre), rstd, rows, T, H, eps, log2_theta);
        check_launch("qk_norm_rope_forward_vec_kernel");
      },
      qkv, w, pre);
  if (vec) return;
  qk_norm_forward_kernel<<<(rows + kRowWarps - 1) / kRowWarps, kRowWarps * 32, 0, ctx.stream>>>(B(qkv), B(w), B(pre),
                                                                                             rstd, rows, H, hd, eps);
  check_launch("qk_norm_forward_kernel");
  if (rope_theta > 0.f) rope_forward(ctx, qkv, batch, T, H, hd, rope_theta);
}

void qk_norm_backward(Context& ctx, bf16* dqkv, const bf16* pre, const bf16* w, const float* rstd, float* dw, int N,
                      int H, int hd) {
  const int rows = N * 2 * H;
  if (rows <= 0) return;
  MUE_CHECK(hd <= kMaxHeadDim, "qk_norm on CUDA supports head dims up to ", kMaxHeadDim, ", got ", hd);
  const bool vec = with_vector_lanes(
      hd,
      [&](auto lanes) {
        constexpr int kSlots = kVecThreads / lanes.value;
        // about one wave of resident blocks; each then writes one row of dw partials
        const int grid = std::min((rows + kSlots - 1) / kSlots, 8 * sm_count());
        float* part = static_cast<float*>(ctx.scratch(4, sizeof(float) * size_t(grid) * 2 * hd));
        qk_norm_backward_vec_kernel<lanes.value><<<grid, kVecThreads, 0, ctx.stream>>>(B(dqkv), B(pre), B(w), rstd,
                                                                                      part, rows, H);
        check_launch("qk_norm_backward_vec_kernel");
        add_column_sums(ctx, part, dw, grid, 2 * hd);
      },
      dqkv, pre, w);
  if (vec) return;
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
