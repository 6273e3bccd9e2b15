// The experts' SwiGLU with the router's gate folded in (see cpu::gate_swiglu_forward): 4 to 32 lanes per
// assignment i = (n, k) (as many as its row has vectors), its row r = slot_row[i] of the expert rows, lanes over
// 16-byte vectors of 8 (h % 8 == 0 and aligned), else over scalars; fp32 math.
//   forward  hsw[r] = g_i * silu(x) * y, hfc[r] = (x | y)             traffic: read 2*R*h, write R*h bf16
//   backward dhfc[r] from dhsw[r]; dgates[i] = dhsw[r] . silu(x) * y  traffic: read 3*R*h, write 2*R*h bf16
// With the gate here the combine is a plain sum and its backward a plain gather, instead of a pass that reads
// the expert outputs again for the gates' gradient.
#include <type_traits>

#include "core/cuda_util.cuh"
#include "core/kernel_variants.h"
#include "moe/ops/gate_swiglu.h"

namespace mue::cuda {

namespace {
using namespace detail;

constexpr int kWarps = 8;  // warps per block

// kLanes lanes per assignment (32 / kLanes assignments per warp), so that a row of fewer than 32 vectors (h = 128:
// 16) does not leave lanes idle; lanes_for(h / W) picks it.
template <int W, int kLanes>
__global__ void gate_swiglu_forward_kernel(const bf* hfc, const bf* gates, const int32_t* slot_row, bf* hsw, int R,
                                           int h) {
  const int lane = threadIdx.x & 31, sub = lane % kLanes;
  const int i = (blockIdx.x * kWarps + (threadIdx.x >> 5)) * (32 / kLanes) + lane / kLanes;
  if (i >= R) return;
  const size_t r = size_t(slot_row[i]);
  const float g = __bfloat162float(gates[i]);
  const bf* in = hfc + r * 2 * h;
  for (int j = sub * W; j < h; j += kLanes * W) {
    float x[W], y[W];
    load_w<W>(in + j, x), load_w<W>(in + h + j, y);
    #pragma unroll
    for (int e = 0; e < W; ++e) x[e] = g * (x[e] / (1.f + __expf(-x[e])) * y[e]);
    store_w<W>(hsw + r * h + j, x);
  }
}

template <int W, int kLanes>
__global__ void gate_swiglu_backward_kernel(const bf* dhsw, const bf* hfc, const bf* gates, const int32_t* slot_row,
                                            bf* dhfc, bf* dgates, int R, int h) {
  const int lane = threadIdx.x & 31, sub = lane % kLanes;
  const int i = (blockIdx.x * kWarps + (threadIdx.x >> 5)) * (32 / kLanes) + lane / kLanes;
  if (i >= R) return;  // whole groups leave together: the shuffles below involve only this assignment's lanes
  const size_t r = size_t(slot_row[i]);
  const float g = __bfloat162float(gates[i]);
  const bf* in = hfc + r * 2 * h;
  float dot = 0.f;
  for (int j = sub * W; j < h; j += kLanes * W) {
    float x[W], y[W], d[W];
    load_w<W>(in + j, x), load_w<W>(in + h + j, y), load_w<W>(dhsw + r * h + j, d);
    #pragma unroll
    for (int e = 0; e < W; ++e) {
      const float sig = 1.f / (1.f + __expf(-x[e])), silu = x[e] * sig;
      dot += d[e] * silu * y[e];
      const float dx = g * d[e] * y[e] * sig * (1.f + x[e] * (1.f - sig));
      y[e] = g * d[e] * silu, x[e] = dx;
    }
    store_w<W>(dhfc + r * 2 * h + j, x), store_w<W>(dhfc + r * 2 * h + h + j, y);
  }
  const unsigned group = kLanes == 32 ? 0xffffffffu : ((1u << kLanes) - 1) << (lane / kLanes * kLanes);
  #pragma unroll
  for (int o = kLanes / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(group, dot, o);
  if (sub == 0) dgates[i] = __float2bfloat16(dot);
}

// Lanes per assignment: the smallest power of two from 4 to 32 that covers the row's `vectors` (h = 128: 16,
// two rows a warp, where a warp per assignment would leave half of it idle; h = 256: 32); the kernel variant
// gate_lanes = 4, 8, 16 or 32 forces one, for measuring and testing. The kernels loop over any row.
int lanes_for(int vectors) {
  if (const int forced = kernel_variants().gate_lanes) return forced;
  int lanes = 4;
  while (lanes < 32 && lanes < vectors) lanes *= 2;
  return lanes;
}
// Calls f(std::integral_constant<int, lanes>) for the compile-time lanes.
template <class F>
void with_lanes(int lanes, F f) {
  switch (lanes) {
    case 4: return f(std::integral_constant<int, 4>{});
    case 8: return f(std::integral_constant<int, 8>{});
    case 16: return f(std::integral_constant<int, 16>{});
    default: return f(std::integral_constant<int, 32>{});
  }
}
unsigned assignment_blocks(int R, int lanes) {
  const int per_block = kWarps * (32 / lanes);
  return unsigned((R + per_block - 1) / per_block);
}
}  // namespace

void gate_swiglu_forward(Context& ctx, const bf16* hfc, const bf16* gates, const int32_t* slot_row, bf16* hsw, int N,
                         int a, int h) {
  const int R = N * a;
  if (R == 0 || h <= 0) return;
  const bool vec = h % 8 == 0 && aligned16(hfc, hsw);
  const int lanes = lanes_for(vec ? h / 8 : h);
  with_lanes(lanes, [&](auto L) {
    if (vec)
      gate_swiglu_forward_kernel<8, L()><<<assignment_blocks(R, L()), kWarps * 32, 0, ctx.stream>>>(
          B(hfc), B(gates), slot_row, B(hsw), R, h);
    else
      gate_swiglu_forward_kernel<1, L()><<<assignment_blocks(R, L()), kWarps * 32, 0, ctx.stream>>>(
          B(hfc), B(gates), slot_row, B(hsw), R, h);
  });
  check_launch("gate_swiglu_forward_kernel");
}

void gate_swiglu_backward(Context& ctx, const bf16* dhsw, const bf16* hfc, const bf16* gates, const int32_t* slot_row,
                          bf16* dhfc, bf16* dgates, int N, int a, int h) {
  const int R = N * a;
  if (R == 0 || h <= 0) return;
  const bool vec = h % 8 == 0 && aligned16(dhsw, hfc, dhfc);
  const int lanes = lanes_for(vec ? h / 8 : h);
  with_lanes(lanes, [&](auto L) {
    if (vec)
      gate_swiglu_backward_kernel<8, L()><<<assignment_blocks(R, L()), kWarps * 32, 0, ctx.stream>>>(
          B(dhsw), B(hfc), B(gates), slot_row, B(dhfc), B(dgates), R, h);
    else
      gate_swiglu_backward_kernel<1, L()><<<assignment_blocks(R, L()), kWarps * 32, 0, ctx.stream>>>(
          B(dhsw), B(hfc), B(gates), slot_row, B(dhfc), B(dgates), R, h);
  });
  check_launch("gate_swiglu_backward_kernel");
}

}  // namespace mue::cuda
