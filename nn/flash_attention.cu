// Fused (flash-style) multi-head attention, forward and backward, on qkv [B, T, 3, H, hd] (RoPE applied by
// the op before it) -> out [B, T, H, hd]. No [T, T] matrix ever reaches memory: scores live in shared memory
// one 64 x 64 tile at a time, the softmax is computed online, and the forward keeps only the log-sum-exp
// lse [B, H, T] (fp32) for the backward. bf16 operands on the tensor cores (WMMA 16x16x16), fp32 accumulate.
//
// Forward (one block = 64 queries of one (b, h); 4 warps x 16 queries): for each 64-key tile (causal: up to
// the diagonal) S = scale Q K^T, running max m and sum l per row, O = O exp(m_old - m_new) + P V.
//   FLOPs 4 B H T^2 hd (x 1/2 causal); traffic: Q, O once, K, V once per query tile (from L2 mostly).
// Backward, deterministic (no atomics), three launches:
// Streamed tiles are double-buffered: cp.async brings tile i + 1 while tile i is computed.
//   1. delta[t] = dO[t] . O[t]                                         read 2 B T D bf16
//   2. per 64-key tile (4 warps x 16 keys): for each query tile, P^T = exp(scale K Q^T - lse),
//      dV += P^T dO, dP^T = V dO^T, dS^T = P^T (dP^T - delta), dK += scale dS^T Q
//   3. per 64-query tile: for each key tile, recompute P, dP = dO V^T, dS, dQ += scale dS K
//   FLOPs 2 (QK^T) + 2 (dO V^T) + 3 (dV, dK, dQ) products of 2 B H T^2 hd each (x 1/2 causal).
// head dims 16, 32, 64, 128 (others, or MUE_FLASH_ATTENTION=0, use the materialized path of nn/attention.cu).
#include <mma.h>

#include <cstdlib>

#include "core/cuda_util.cuh"
#include "nn/ops_cuda.h"

namespace mue::cuda {

using namespace detail;
using namespace nvcuda;

namespace {
constexpr int kTile = 64;         // queries and keys per tile
constexpr int kWarps = 4;         // 16 rows per warp
constexpr int kThreads = kWarps * 32;

template <int HD>
struct Tiles {
  static constexpr int ld = HD + 8;  // bf16 tiles padded (ldm a multiple of 8, fewer bank conflicts)
  static constexpr int fw = HD > kTile ? HD : kTile;  // width of a warp's fp32 buffer
};

// rows [t0, t0 + 64) of part `part` (0 q, 1 k, 2 v) of head h, or of a [B, T, H, hd] tensor when part < 0,
// into a padded smem tile; rows beyond T are zero.
template <int HD>
__device__ void load_tile(bf* dst, const bf* base, int b, int t0, int T, int H, int h, int part) {
  constexpr int vec = HD / 8;  // 16-byte vectors per row
  const size_t D = size_t(H) * HD;
  for (int i = threadIdx.x; i < kTile * vec; i += kThreads) {
    const int r = i / vec, c = (i % vec) * 8, t = t0 + r;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (t < T) {
      const size_t row = part < 0 ? (size_t(b) * T + t) * D : ((size_t(b) * T + t) * 3 + part) * D;
      v = *reinterpret_cast<const uint4*>(base + row + size_t(h) * HD + c);
    }
    *reinterpret_cast<uint4*>(dst + r * Tiles<HD>::ld + c) = v;
  }
}

// The same with cp.async (16 bytes per copy, zero-filled beyond T): completes at cp_async_wait.
template <int HD>
__device__ void load_tile_async(bf* dst, const bf* base, int b, int t0, int T, int H, int h, int part) {
  constexpr int vec = HD / 8;
  const size_t D = size_t(H) * HD;
  for (int i = threadIdx.x; i < kTile * vec; i += kThreads) {
    const int r = i / vec, c = (i % vec) * 8, t = t0 + r;
    const size_t row = part < 0 ? (size_t(b) * T + min(t, T - 1)) * D : ((size_t(b) * T + min(t, T - 1)) * 3 + part) * D;
    const unsigned d = unsigned(__cvta_generic_to_shared(dst + r * Tiles<HD>::ld + c));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(base + row + size_t(h) * HD + c),
                 "r"(t < T ? 16 : 0));
  }
}
__device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ inline void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, bf, wmma::row_major>;

// out[16 x 64] (fp32, ld 64) = A[16 x HD] B[64 x HD]^T: A as this warp's fragments, B row-major bf16 in smem.
template <int HD>
__device__ void warp_abt(const FragA (&a)[HD / 16], const bf* Bm, float* out) {
  constexpr int ld = Tiles<HD>::ld;
  for (int n = 0; n < kTile / 16; ++n) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
    wmma::fill_fragment(c, 0.f);
    for (int k = 0; k < HD / 16; ++k) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, bf, wmma::col_major> bfr;  // B^T: column n of B^T = row n of B
      wmma::load_matrix_sync(bfr, Bm + n * 16 * ld + k * 16, ld);
      wmma::mma_sync(c, a[k], bfr, c);
    }
    wmma::store_matrix_sync(out + n * 16, c, kTile, wmma::mem_row_major);
  }
}
// This warp's 16 rows of a padded smem tile as A fragments.
template <int HD>
__device__ void load_rows(FragA (&a)[HD / 16], const bf* tile) {
  for (int k = 0; k < HD / 16; ++k) wmma::load_matrix_sync(a[k], tile + (threadIdx.x >> 5) * 16 * Tiles<HD>::ld + k * 16, Tiles<HD>::ld);
}

// out[16 x HD] (fp32, ld fw) = P[16 x 64] M[64 x HD]; P row-major bf16 (ld 64 + 8), M row-major (ld Tiles::ld).
template <int HD>
__device__ void warp_pm(const bf* P, const bf* M, float* out) {
  constexpr int ld = Tiles<HD>::ld;
  constexpr int ldp = kTile + 8;
  for (int n = 0; n < HD / 16; ++n) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
    wmma::fill_fragment(c, 0.f);
    for (int k = 0; k < kTile / 16; ++k) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, bf, wmma::row_major> a;
      wmma::load_matrix_sync(a, P + k * 16, ldp);
      wmma::fragment<wmma::matrix_b, 16, 16, 16, bf, wmma::row_major> bfr;
      wmma::load_matrix_sync(bfr, M + k * 16 * ld + n * 16, ld);
      wmma::mma_sync(c, a, bfr, c);
    }
    wmma::store_matrix_sync(out + n * 16, c, Tiles<HD>::fw, wmma::mem_row_major);
  }
}

// Shared-memory layout of all three kernels: five bf16 tiles (t(0) the block's own rows, t(1..2) and t(3..4)
// the two stages of streamed tiles; a second own tile may sit in t(1) until streaming starts), then per warp a
// bf16 [16 x 64] tile and an fp32 [16 x fw] buffer.
template <int HD>
struct Smem {
  static constexpr size_t tile = size_t(kTile) * Tiles<HD>::ld;
  static constexpr size_t ptile = 16 * (kTile + 8);
  static constexpr size_t bytes = 5 * tile * sizeof(bf) + kWarps * (ptile * sizeof(bf) + 16 * Tiles<HD>::fw * 4);
  bf *tiles, *p;
  float* f;
  __device__ bf* t(int i) const { return tiles + i * tile; }
  __device__ explicit Smem(char* base) {
    const int w = threadIdx.x >> 5;
    bf* b = reinterpret_cast<bf*>(base);
    tiles = b;
    p = b + 5 * tile + w * ptile;
    f = reinterpret_cast<float*>(base + 5 * tile * sizeof(bf) + kWarps * ptile * sizeof(bf)) + w * 16 * Tiles<HD>::fw;
  }
};

// Streams the 64-row tiles starting at rows first, first + 64, ... < end of two tensors through the two stages,
// loading tile i + 1 (cp.async) while tile i is computed: load(x, y, row0) issues the copies of one tile pair,
// body(row0, x, y) computes on it.
template <int HD, class Load, class Body>
__device__ void stream_tiles(Smem<HD>& sm, int first, int end, Load load, Body body) {
  const int n = (end - first + kTile - 1) / kTile;
  if (n <= 0) return;
  load(sm.t(1), sm.t(2), first);
  cp_async_commit();
  for (int i = 0; i < n; ++i) {
    const int s = i & 1;
    if (i + 1 < n) {
      load(sm.t(3 - 2 * s), sm.t(4 - 2 * s), first + (i + 1) * kTile);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    body(first + i * kTile, sm.t(1 + 2 * s), sm.t(2 + 2 * s));
    __syncthreads();  // before the next iteration's copies overwrite this stage
  }
}

// Each lane owns one row r = lane / 2 of a warp's 16 and half of its columns, visited in a rotated order so that
// the 32 lanes hit 32 different shared-memory banks at every step j (row strides are multiples of 32 words).
struct LaneCols {
  int r, half, rot;
  __device__ LaneCols() : r((threadIdx.x & 31) >> 1), half(threadIdx.x & 1), rot(r + 16 * half) {}
  __device__ int s(int j) const { return half * 32 + ((j + rot) & 31); }  // of a 64-wide score row
  template <int OC>
  __device__ int o(int j) const { return half * OC + ((j + rot) & (OC - 1)); }  // of a 2*OC-wide output row
};

// acc (this lane's HD/2 columns of its row) += (P M) over the warp: P [16 x 64] bf16 in the warp's p tile,
// M [64 x HD] row-major in smem; the product goes through the warp's fp32 buffer.
template <int HD>
__device__ void warp_pm_accumulate(const Smem<HD>& sm, const bf* M, const LaneCols& lc, float (&acc)[HD / 2]) {
  __syncwarp();
  warp_pm<HD>(sm.p, M, sm.f);
  __syncwarp();
  #pragma unroll
  for (int j = 0; j < HD / 2; ++j) acc[j] += sm.f[lc.r * Tiles<HD>::fw + lc.o<HD / 2>(j)];
  __syncwarp();
}

template <int HD>
__global__ void __launch_bounds__(kThreads) flash_forward_kernel(const bf* qkv, bf* out, float* lse, int T, int H,
                                                                 float scale, bool causal) {
  extern __shared__ __align__(16) char smem_raw[];
  Smem<HD> sm(smem_raw);
  const int q0 = blockIdx.x * kTile, h = blockIdx.y, b = blockIdx.z, w = threadIdx.x >> 5;
  load_tile<HD>(sm.t(0), qkv, b, q0, T, H, h, 0);
  __syncthreads();
  FragA qa[HD / 16];
  load_rows<HD>(qa, sm.t(0));
  const LaneCols lc;
  const int r = lc.r, t = q0 + w * 16 + r;
  constexpr int oc = HD / 2;  // output columns per lane
  float o[oc];
  #pragma unroll
  for (int j = 0; j < oc; ++j) o[j] = 0.f;
  float m = -INFINITY, l = 0.f;
  const int kend = causal ? min(T, q0 + kTile) : T;
  const auto load_kv = [&](bf* kt, bf* vt, int row0) {
    load_tile_async<HD>(kt, qkv, b, row0, T, H, h, 1), load_tile_async<HD>(vt, qkv, b, row0, T, H, h, 2);
  };
  stream_tiles<HD>(sm, 0, kend, load_kv, [&](int k0, const bf* kt, const bf* vt) {
    warp_abt<HD>(qa, kt, sm.f);
    __syncwarp();
    float s[32], mx = -INFINITY;
    #pragma unroll
    for (int j = 0; j < 32; ++j) {
      const int key = k0 + lc.s(j);
      const bool masked = key >= T || (causal && key > t);
      s[j] = masked ? -INFINITY : sm.f[r * kTile + lc.s(j)] * scale;
      mx = fmaxf(mx, s[j]);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    const float mn = fmaxf(m, mx);
    const float alpha = mn == -INFINITY ? 1.f : __expf(m - mn);
    float sum = 0.f;
    #pragma unroll
    for (int j = 0; j < 32; ++j) {
      const float p = mn == -INFINITY ? 0.f : __expf(s[j] - mn);
      sum += p;
      sm.p[r * (kTile + 8) + lc.s(j)] = __float2bfloat16(p);
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    l = l * alpha + sum, m = mn;
    #pragma unroll
    for (int j = 0; j < oc; ++j) o[j] *= alpha;
    warp_pm_accumulate<HD>(sm, vt, lc, o);
  });
  if (t < T) {
    const float inv = l > 0.f ? 1.f / l : 0.f;
    bf* dst = out + ((size_t(b) * T + t) * H + h) * HD;
    #pragma unroll
    for (int j = 0; j < oc; ++j) dst[lc.o<oc>(j)] = __float2bfloat16(o[j] * inv);
    if (lc.half == 0) lse[(size_t(b) * H + h) * T + t] = m + logf(l);
  }
}

// delta[b, h, t] = sum_i dO[b, t, h, i] O[b, t, h, i]   (one warp per (b, t, h) row)
__global__ void flash_delta_kernel(const bf* dout, const bf* out, float* delta, int B, int T, int H, int hd) {
  const size_t row = (size_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (row >= size_t(B) * T * H) return;
  float s = 0.f;
  for (int i = lane; i < hd; i += 32) s += __bfloat162float(dout[row * hd + i]) * __bfloat162float(out[row * hd + i]);
  s = warp_reduce(s, SumOp{});
  const int h = int(row % H);
  const size_t bt = row / H;
  const int t = int(bt % T);
  const size_t b = bt / T;
  if (lane == 0) delta[(b * H + h) * T + t] = s;
}

// dK, dV for 64 keys (each warp 16 keys; its K and V rows are the A operands).
template <int HD>
__global__ void __launch_bounds__(kThreads) flash_dkdv_kernel(const bf* qkv, const bf* dout, const float* lse,
                                                              const float* delta, bf* dqkv, int T, int H,
                                                              float scale, bool causal) {
  extern __shared__ __align__(16) char smem_raw[];
  Smem<HD> sm(smem_raw);
  // K and V pass through t(0) / t(1) into this warp's register fragments; then Q and dO stream through.
  const int k0 = blockIdx.x * kTile, h = blockIdx.y, b = blockIdx.z, w = threadIdx.x >> 5;
  load_tile<HD>(sm.t(0), qkv, b, k0, T, H, h, 1);
  load_tile<HD>(sm.t(1), qkv, b, k0, T, H, h, 2);
  __syncthreads();
  // This warp's 16 keys: K rows and V rows as matrix_a fragments (held for the whole loop).
  FragA ka[HD / 16], va[HD / 16];
  load_rows<HD>(ka, sm.t(0)), load_rows<HD>(va, sm.t(1));
  __syncthreads();  // t(1) is a streaming stage from here on
  const LaneCols lc;
  const int r = lc.r, key = k0 + w * 16 + r;
  constexpr int oc = HD / 2;
  float dk[oc], dv[oc];
  #pragma unroll
  for (int j = 0; j < oc; ++j) dk[j] = dv[j] = 0.f;
  const float* lse_bh = lse + (size_t(b) * H + h) * T;
  const float* delta_bh = delta + (size_t(b) * H + h) * T;
  const auto load_q_do = [&](bf* qt, bf* dot, int row0) {
    load_tile_async<HD>(qt, qkv, b, row0, T, H, h, 0), load_tile_async<HD>(dot, dout, b, row0, T, H, h, -1);
  };
  stream_tiles<HD>(sm, causal ? k0 : 0, T, load_q_do, [&](int q0, const bf* qt, const bf* dot) {
    warp_abt<HD>(ka, qt, sm.f);  // S^T [16 keys x 64 queries] = K_w Q^T
    __syncwarp();
    // P^T = exp(scale S^T - lse[q]), kept as fp32 in registers and as bf16 in the warp's p tile.
    float p[32];
    #pragma unroll
    for (int j = 0; j < 32; ++j) {
      const int q = q0 + lc.s(j);
      const bool masked = q >= T || key >= T || (causal && key > q);
      p[j] = masked ? 0.f : __expf(sm.f[r * kTile + lc.s(j)] * scale - lse_bh[q]);
      sm.p[r * (kTile + 8) + lc.s(j)] = __float2bfloat16(p[j]);
    }
    // dV += P^T dO
    warp_pm_accumulate<HD>(sm, dot, lc, dv);
    warp_abt<HD>(va, dot, sm.f);  // dP^T [16 x 64] = V_w dO^T
    __syncwarp();
    // dS^T = P^T (dP^T - delta[q])
    #pragma unroll
    for (int j = 0; j < 32; ++j) {
      const int q = min(q0 + lc.s(j), T - 1);
      const float ds = p[j] * (sm.f[r * kTile + lc.s(j)] - delta_bh[q]);
      sm.p[r * (kTile + 8) + lc.s(j)] = __float2bfloat16(ds);
    }
    // dK += scale dS^T Q
    warp_pm_accumulate<HD>(sm, qt, lc, dk);
  });
  if (key < T) {
    const size_t D = size_t(H) * HD;
    bf* row = dqkv + (size_t(b) * T + key) * 3 * D + size_t(h) * HD;
    #pragma unroll
    for (int j = 0; j < oc; ++j)
      row[D + lc.o<oc>(j)] = __float2bfloat16(dk[j] * scale), row[2 * D + lc.o<oc>(j)] = __float2bfloat16(dv[j]);
  }
}

// dQ for 64 queries (each warp 16 queries).
template <int HD>
__global__ void __launch_bounds__(kThreads) flash_dq_kernel(const bf* qkv, const bf* dout, const float* lse,
                                                            const float* delta, bf* dqkv, int T, int H, float scale,
                                                            bool causal) {
  extern __shared__ __align__(16) char smem_raw[];
  Smem<HD> sm(smem_raw);
  const int q0 = blockIdx.x * kTile, h = blockIdx.y, b = blockIdx.z, w = threadIdx.x >> 5;
  load_tile<HD>(sm.t(0), qkv, b, q0, T, H, h, 0);    // Q
  load_tile<HD>(sm.t(1), dout, b, q0, T, H, h, -1);  // dO
  __syncthreads();
  FragA qa[HD / 16], doa[HD / 16];
  load_rows<HD>(qa, sm.t(0)), load_rows<HD>(doa, sm.t(1));
  __syncthreads();  // t(1) is a streaming stage from here on
  const LaneCols lc;
  const int r = lc.r, q = q0 + w * 16 + r;
  const float lq = q < T ? lse[(size_t(b) * H + h) * T + q] : 0.f;
  const float dq_delta = q < T ? delta[(size_t(b) * H + h) * T + q] : 0.f;
  constexpr int oc = HD / 2;
  float dq[oc];
  #pragma unroll
  for (int j = 0; j < oc; ++j) dq[j] = 0.f;
  const int kend = causal ? min(T, q0 + kTile) : T;
  const auto load_kv = [&](bf* kt, bf* vt, int row0) {
    load_tile_async<HD>(kt, qkv, b, row0, T, H, h, 1), load_tile_async<HD>(vt, qkv, b, row0, T, H, h, 2);
  };
  stream_tiles<HD>(sm, 0, kend, load_kv, [&](int k0, const bf* kt, const bf* vt) {
    warp_abt<HD>(qa, kt, sm.f);  // S = Q_w K^T
    __syncwarp();
    float p[32];
    #pragma unroll
    for (int j = 0; j < 32; ++j) {
      const int key = k0 + lc.s(j);
      const bool masked = q >= T || key >= T || (causal && key > q);
      p[j] = masked ? 0.f : __expf(sm.f[r * kTile + lc.s(j)] * scale - lq);
    }
    __syncwarp();
    warp_abt<HD>(doa, vt, sm.f);  // dP = dO_w V^T
    __syncwarp();
    #pragma unroll
    for (int j = 0; j < 32; ++j)
      sm.p[r * (kTile + 8) + lc.s(j)] = __float2bfloat16(p[j] * (sm.f[r * kTile + lc.s(j)] - dq_delta));
    warp_pm_accumulate<HD>(sm, kt, lc, dq);  // dS K
  });
  if (q < T) {
    bf* row = dqkv + (size_t(b) * T + q) * 3 * size_t(H) * HD + size_t(h) * HD;
    #pragma unroll
    for (int j = 0; j < oc; ++j) row[lc.o<oc>(j)] = __float2bfloat16(dq[j] * scale);
  }
}

template <int HD>
void flash_forward_hd(Context& ctx, const bf* qkv, bf* out, float* lse, int batch, int T, int H, float scale, bool causal) {
  const size_t smem = Smem<HD>::bytes;
  check(cudaFuncSetAttribute(flash_forward_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)),
        "cudaFuncSetAttribute(flash_forward_kernel)");
  const dim3 grid((T + kTile - 1) / kTile, H, batch);
  flash_forward_kernel<HD><<<grid, kThreads, smem, ctx.stream>>>(qkv, out, lse, T, H, scale, causal);
  check_launch("flash_forward_kernel");
}

template <int HD>
void flash_backward_hd(Context& ctx, const bf* dout, const bf* qkv, const bf* out, const float* lse, bf* dqkv, int batch,
                       int T, int H, float scale, bool causal) {
  float* delta = static_cast<float*>(ctx.scratch(0, sizeof(float) * size_t(batch) * H * T));
  const size_t rows = size_t(batch) * T * H;
  flash_delta_kernel<<<unsigned((rows * 32 + 255) / 256), 256, 0, ctx.stream>>>(dout, out, delta, batch, T, H, HD);
  check_launch("flash_delta_kernel");
  const size_t smem = Smem<HD>::bytes;
  const dim3 grid((T + kTile - 1) / kTile, H, batch);
  check(cudaFuncSetAttribute(flash_dkdv_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)),
        "cudaFuncSetAttribute(flash_dkdv_kernel)");
  flash_dkdv_kernel<HD><<<grid, kThreads, smem, ctx.stream>>>(qkv, dout, lse, delta, dqkv, T, H, scale, causal);
  check_launch("flash_dkdv_kernel");
  check(cudaFuncSetAttribute(flash_dq_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)),
        "cudaFuncSetAttribute(flash_dq_kernel)");
  flash_dq_kernel<HD><<<grid, kThreads, smem, ctx.stream>>>(qkv, dout, lse, delta, dqkv, T, H, scale, causal);
  check_launch("flash_dq_kernel");
}
}  // namespace

bool flash_attention_enabled(int hd) {
  static const bool off = [] {
    const char* v = std::getenv("MUE_FLASH_ATTENTION");
    return v && v[0] == '0';
  }();
  return !off && (hd == 16 || hd == 32 || hd == 64 || hd == 128);
}

size_t attention_state_floats(int batch, int T, int H, int hd) {
  const size_t rows = size_t(batch) * H * T;
  return flash_attention_enabled(hd) ? rows : (rows * T + 1) / 2;  // lse, or the bf16 probs of the fallback
}

void attention_forward(Context& ctx, const bf16* qkv, bf16* out, float* state, int batch, int T, int H, int hd,
                       float scale, bool causal) {
  if (batch <= 0 || T <= 0 || H <= 0 || hd <= 0) return;
  switch (flash_attention_enabled(hd) ? hd : 0) {
    case 16: return flash_forward_hd<16>(ctx, B(qkv), B(out), state, batch, T, H, scale, causal);
    case 32: return flash_forward_hd<32>(ctx, B(qkv), B(out), state, batch, T, H, scale, causal);
    case 64: return flash_forward_hd<64>(ctx, B(qkv), B(out), state, batch, T, H, scale, causal);
    case 128: return flash_forward_hd<128>(ctx, B(qkv), B(out), state, batch, T, H, scale, causal);
  }
  attention_materialized_forward(ctx, qkv, out, reinterpret_cast<bf16*>(state), batch, T, H, hd, scale, causal);
}

void attention_backward(Context& ctx, const bf16* dout, const bf16* qkv, const bf16* out, const float* state,
                        bf16* dqkv, int batch, int T, int H, int hd, float scale, bool causal) {
  if (batch <= 0 || T <= 0 || H <= 0 || hd <= 0) return;
  switch (flash_attention_enabled(hd) ? hd : 0) {
    case 16: return flash_backward_hd<16>(ctx, B(dout), B(qkv), B(out), state, B(dqkv), batch, T, H, scale, causal);
    case 32: return flash_backward_hd<32>(ctx, B(dout), B(qkv), B(out), state, B(dqkv), batch, T, H, scale, causal);
    case 64: return flash_backward_hd<64>(ctx, B(dout), B(qkv), B(out), state, B(dqkv), batch, T, H, scale, causal);
    case 128: return flash_backward_hd<128>(ctx, B(dout), B(qkv), B(out), state, B(dqkv), batch, T, H, scale, causal);
  }
  attention_materialized_backward(ctx, dout, qkv, reinterpret_cast<const bf16*>(state), dqkv, batch, T, H, hd,
                                  scale, causal);
}

}  // namespace mue::cuda
