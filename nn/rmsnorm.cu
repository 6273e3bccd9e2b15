// RMSNorm: y = x * rstd * w with rstd = 1/sqrt(mean(x^2) + eps); fp32 statistics, bf16 activations.
// Rows of D = 8k <= 1024 go through the warp-per-row kernels (the row stays in registers as 16-byte vectors);
// other widths through the block-per-row kernels.
#include "core/cuda_util.cuh"
#include "nn/ops/rmsnorm.h"

#include <algorithm>
#include <type_traits>

namespace mue::cuda {

using namespace detail;

namespace {
// One block per row: rstd[n] = 1/sqrt(mean(x^2)+eps), y = x*rstd*w
// traffic: read 2*N*D bf16 (x twice, the second time from L1/L2) + D (w), write N*D bf16 + N fp32
__global__ void rmsnorm_forward_kernel(const bf* x, const bf* w, bf* y, float* rstd, int D, float eps) {
  const size_t n = blockIdx.x;
  const bf* xr = x + n * D;
  float ss = 0.f;
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    const float v = __bfloat162float(xr[i]);
    ss += v * v;
  }
  ss = block_reduce(ss, SumOp{}, 0.f);
  const float r = rsqrtf(ss / float(D) + eps);
  if (threadIdx.x == 0) rstd[n] = r;
  for (int i = threadIdx.x; i < D; i += blockDim.x)
    y[n * D + i] = __float2bfloat16(__bfloat162float(xr[i]) * r * __bfloat162float(w[i]));
}

// Grid-stride over rows; per row: dot = mean(dy*w*xhat), dx += rstd*(dy*w - xhat*dot) (bf16 read-add-write).
// dw partial sums live in dynamic shared memory (D floats, thread i owns columns i, i+blockDim, ...); the block
// writes them as its row of dw_part, which add_column_sums adds to dw in a fixed order (no atomics: the same
// bits on every run).
// traffic: read 2*N*D (x, dy; read twice, second time cached) + N*D (dx) bf16, write N*D bf16 + gridDim.x * D fp32
__global__ void rmsnorm_backward_kernel(const bf* dy, const bf* x, const bf* w, const float* rstd, bf* dx,
                                        float* dw_out_part, int N, int D) {
  extern __shared__ float dw_part[];
  for (int i = threadIdx.x; i < D; i += blockDim.x) dw_part[i] = 0.f;
  for (int n = blockIdx.x; n < N; n += gridDim.x) {
    const bf* xr = x + size_t(n) * D;
    const bf* g = dy + size_t(n) * D;
    bf* dxr = dx + size_t(n) * D;
    const float r = rstd[n];
    float dot = 0.f;
    for (int i = threadIdx.x; i < D; i += blockDim.x)
      dot += __bfloat162float(g[i]) * __bfloat162float(w[i]) * __bfloat162float(xr[i]) * r;
    dot = block_reduce(dot, SumOp{}, 0.f) / float(D);
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
      const float gi = __bfloat162float(g[i]), xhat = __bfloat162float(xr[i]) * r;
      dw_part[i] += gi * xhat;
      const float d = r * (gi * __bfloat162float(w[i]) - xhat * dot);
      dxr[i] = __float2bfloat16(__bfloat162float(dxr[i]) + d);
    }
  }
  for (int i = threadIdx.x; i < D; i += blockDim.x) dw_out_part[size_t(blockIdx.x) * D + i] = dw_part[i];
}

// ---- one warp per row, D a multiple of 8 and at most 1024; kVec = ceil(D / 256) 16-byte vectors per lane ----
constexpr int kRowWarps = 8;  // rows (warps) per block
constexpr int kVecMaxD = 1024;

// With a residual input (res != nullptr): x = x + res first, written back as bf16 (x may be the sum's other
// operand's buffer or a new one: sum_out), and the norm taken of the rounded sum, as the separate residual add
// and norm would.
// traffic: read N*D bf16 + D, write N*D bf16 + N fp32 (each element once); with the residual, read and write
// N*D more
template <int kMaxVec>
__global__ void __launch_bounds__(kRowWarps * 32) rmsnorm_forward_vec_kernel(const bf* x, const bf* res, bf* sum_out,
                                                                             const bf* w, bf* y, float* rstd, int N,
                                                                             int D, float eps) {
  const int row = blockIdx.x * kRowWarps + (threadIdx.x >> 5), lane = threadIdx.x & 31, nv = D / 8;
  if (row >= N) return;
  const uint4* xr = reinterpret_cast<const uint4*>(x + size_t(row) * D);
  float v[kMaxVec][8], ss = 0.f;
  #pragma unroll
  for (int i = 0; i < kMaxVec; ++i)
    if (lane + 32 * i < nv) {
      uint4 u = xr[lane + 32 * i];
      if (res) {
        float a[8], b[8];
        unpack8(u, a), unpack8(reinterpret_cast<const uint4*>(res + size_t(row) * D)[lane + 32 * i], b);
        #pragma unroll
        for (int k = 0; k < 8; ++k) a[k] += b[k];
        u = pack8(a);
        reinterpret_cast<uint4*>(sum_out + size_t(row) * D)[lane + 32 * i] = u;
      }
      unpack8(u, v[i]);
      #pragma unroll
      for (int k = 0; k < 8; ++k) ss += v[i][k] * v[i][k];
    }
  const float r = rsqrtf(warp_reduce(ss, SumOp{}) / float(D) + eps);
  if (lane == 0) rstd[row] = r;
  uint4* yr = reinterpret_cast<uint4*>(y + size_t(row) * D);
  #pragma unroll
  for (int i = 0; i < kMaxVec; ++i)
    if (lane + 32 * i < nv) {
      float wv[8];
      unpack8(reinterpret_cast<const uint4*>(w)[lane + 32 * i], wv);
      #pragma unroll
      for (int k = 0; k < 8; ++k) v[i][k] *= r * wv[k];
      yr[lane + 32 * i] = pack8(v[i]);
    }
}

// Warps stride over rows (x, dy and dx of a row are loaded together, kept as packed bf16 to hold few
// registers: three blocks per SM for D <= 768); each lane sums dw over its rows and columns in registers, the
// block adds its 8 warps in a fixed order and writes one row of dw partials, which rmsnorm_dw_reduce_kernel adds
// to dw in a fixed order: no atomics, the same bits on every run.
// traffic: read 3*N*D bf16 (x, dy, dx) + N fp32, write N*D bf16 + gridDim.x * D fp32
constexpr int backward_blocks_per_sm(int max_vec) { return max_vec >= 4 ? 2 : 3; }  // (as registers allow)
template <int kMaxVec>
__global__ void __launch_bounds__(kRowWarps * 32, backward_blocks_per_sm(kMaxVec))
    rmsnorm_backward_vec_kernel(const bf* dy, const bf* x, const bf* w, const float* rstd, bf* dx, float* dw_part,
                                int N, int D) {
  __shared__ float dw_warps[kRowWarps][kVecMaxD];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nv = D / 8;
  const uint4* wv = reinterpret_cast<const uint4*>(w);
  float dwp[kMaxVec][8] = {};
  for (int row = blockIdx.x * kRowWarps + warp; row < N; row += gridDim.x * kRowWarps) {
    const uint4* xr = reinterpret_cast<const uint4*>(x + size_t(row) * D);
    const uint4* gr = reinterpret_cast<const uint4*>(dy + size_t(row) * D);
    uint4* dxr = reinterpret_cast<uint4*>(dx + size_t(row) * D);
    uint4 xv[kMaxVec], gv[kMaxVec], dv[kMaxVec];
    #pragma unroll
    for (int i = 0; i < kMaxVec; ++i)
      if (lane + 32 * i < nv) xv[i] = xr[lane + 32 * i], gv[i] = gr[lane + 32 * i], dv[i] = dxr[lane + 32 * i];
    const float r = rstd[row];
    float dot = 0.f;
    #pragma unroll
    for (int i = 0; i < kMaxVec; ++i)
      if (lane + 32 * i < nv) {
        float xh[8], g[8], wi[8];
        unpack8(xv[i], xh), unpack8(gv[i], g), unpack8(wv[lane + 32 * i], wi);
        #pragma unroll
        for (int k = 0; k < 8; ++k) dot += g[k] * wi[k] * xh[k];
      }
    dot = warp_reduce(dot, SumOp{}) * r / float(D);
    #pragma unroll
    for (int i = 0; i < kMaxVec; ++i)
      if (lane + 32 * i < nv) {
        float xh[8], g[8], wi[8], d[8];
        unpack8(xv[i], xh), unpack8(gv[i], g), unpack8(wv[lane + 32 * i], wi), unpack8(dv[i], d);
        #pragma unroll
        for (int k = 0; k < 8; ++k) {
          xh[k] *= r;
          dwp[i][k] += g[k] * xh[k];
          d[k] += r * (g[k] * wi[k] - xh[k] * dot);
        }
        dxr[lane + 32 * i] = pack8(d);
      }
  }
  #pragma unroll
  for (int i = 0; i < kMaxVec; ++i)
    if (lane + 32 * i < nv)
      #pragma unroll
      for (int k = 0; k < 8; ++k) dw_warps[warp][8 * (lane + 32 * i) + k] = dwp[i][k];
  __syncthreads();
  for (int j = threadIdx.x; j < D; j += blockDim.x) {
    float sum = 0.f;
    #pragma unroll
    for (int v = 0; v < kRowWarps; ++v) sum += dw_warps[v][j];
    dw_part[size_t(blockIdx.x) * D + j] = sum;
  }
}

// dw[j] += sum over p of part[p, j], in a fixed order: 32 columns per block, warp v sums rows v, v + 8, ...
// traffic: read parts * D fp32
__global__ void rmsnorm_dw_reduce_kernel(const float* part, float* dw, int parts, int D) {
  __shared__ float sums[kRowWarps][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, j = blockIdx.x * 32 + lane;
  float s = 0.f;
  if (j < D)
    for (int p = warp; p < parts; p += kRowWarps) s += part[size_t(p) * D + j];
  sums[warp][lane] = s;
  __syncthreads();
  if (warp == 0 && j < D) {
    float t = 0.f;
    #pragma unroll
    for (int v = 0; v < kRowWarps; ++v) t += sums[v][lane];
    dw[j] += t;
  }
}

bool rmsnorm_vec_ok(int D) { return D % 8 == 0 && D <= kVecMaxD; }
// Calls f(std::integral_constant<int, ceil(D / 256)>) (1 to 4): the vec kernels' 16-byte vectors per lane.
template <class F>
void with_vectors_per_lane(int D, F f) {
  switch ((D + 255) / 256) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    default: return f(std::integral_constant<int, 4>{});
  }
}
}  // namespace

void add_column_sums(Context& ctx, const float* part, float* out, int parts, int cols) {
  if (parts <= 0 || cols <= 0) return;
  rmsnorm_dw_reduce_kernel<<<(cols + 31) / 32, kRowWarps * 32, 0, ctx.stream>>>(part, out, parts, cols);
  check_launch("rmsnorm_dw_reduce_kernel");
}

void rmsnorm_forward(Context& ctx, const bf16* x, const bf16* w, bf16* y, float* rstd, int N, int D, float eps) {
  if (N <= 0 || D <= 0) return;
  if (rmsnorm_vec_ok(D) && aligned16(x, w, y)) {
    with_vectors_per_lane(D, [&](auto v) {
      rmsnorm_forward_vec_kernel<v.value><<<(N + kRowWarps - 1) / kRowWarps, kRowWarps * 32, 0, ctx.stream>>>(
          B(x), nullptr, nullptr, B(w), B(y), rstd, N, D, eps);
    });
    return check_launch("rmsnorm_forward_vec_kernel");
  }
  rmsnorm_forward_kernel<<<N, threads_for_row(D), 0, ctx.stream>>>(B(x), B(w), B(y), rstd, D, eps);
  check_launch("rmsnorm_forward_kernel");
}

void residual_rmsnorm_forward(Context& ctx, bf16* sum, const bf16* a, const bf16* b, const bf16* w, bf16* y,
                              float* rstd, int N, int D, float eps) {
  if (N <= 0 || D <= 0) return;
  if (rmsnorm_vec_ok(D) && aligned16(sum, a, b, w, y)) {
    with_vectors_per_lane(D, [&](auto v) {
      rmsnorm_forward_vec_kernel<v.value><<<(N + kRowWarps - 1) / kRowWarps, kRowWarps * 32, 0, ctx.stream>>>(
          B(a), B(b), B(sum), B(w), B(y), rstd, N, D, eps);
    });
    return check_launch("rmsnorm_forward_vec_kernel (residual)");
  }
  residual_forward(ctx, sum, a, b, size_t(N) * D);
  rmsnorm_forward(ctx, sum, w, y, rstd, N, D, eps);
}

void rmsnorm_backward(Context& ctx, const bf16* dy, const bf16* x, const bf16* w, const float* rstd, bf16* dx,
                      float* dw, int N, int D) {
  if (N <= 0 || D <= 0) return;
  if (rmsnorm_vec_ok(D) && aligned16(dy, x, w, dx)) {
    with_vectors_per_lane(D, [&](auto v) {
      // one wave of resident blocks; each then writes one row of dw partials
      const int grid = std::min((N + kRowWarps - 1) / kRowWarps, backward_blocks_per_sm(v.value) * sm_count());
      float* part = static_cast<float*>(ctx.scratch(4, sizeof(float) * size_t(grid) * D));
      rmsnorm_backward_vec_kernel<v.value><<<grid, kRowWarps * 32, 0, ctx.stream>>>(B(dy), B(x), B(w), rstd, B(dx),
                                                                                   part, N, D);
      check_launch("rmsnorm_backward_vec_kernel");
      add_column_sums(ctx, part, dw, grid, D);
    });
    return;
  }
  const size_t smem = size_t(D) * sizeof(float);
  if (smem > 48 * 1024) {
    // (+256: block_reduce's static shared buffer)
    MUE_CHECK(smem + 256 <= size_t(max_smem_optin()), "rmsnorm_backward: D = ", D, " needs ", smem,
              " bytes of shared memory, the device allows ", max_smem_optin());
    allow_smem(reinterpret_cast<const void*>(rmsnorm_backward_kernel), smem, "rmsnorm_backward_kernel");
  }
  // Enough blocks to fill the GPU; each then amortizes its row of dw partials over N / grid rows.
  const int grid = N < 1024 ? N : 1024;
  float* part = static_cast<float*>(ctx.scratch(4, sizeof(float) * size_t(grid) * D));
  rmsnorm_backward_kernel<<<grid, threads_for_row(D), smem, ctx.stream>>>(B(dy), B(x), B(w), rstd, B(dx), part, N,
                                                                           D);
  check_launch("rmsnorm_backward_kernel");
  add_column_sums(ctx, part, dw, grid, D);
}

}  // namespace mue::cuda
