// Fused (flash-style) multi-head attention, forward and backward, on qkv [B, T, 3, H, hd] (RoPE applied by
// the op before it) -> out [B, T, H, hd]. No [T, T] matrix ever reaches memory: each warp keeps its 16 x 64 tile
// of scores in registers (mma.sync m16n8k16 accumulators), the softmax is computed online on those registers,
// and the forward keeps only the log-sum-exp lse [B, H, T] (fp32) for the backward. bf16 operands, fp32
// accumulate; shared-memory tiles are padded to hd + 8 columns so that ldmatrix is free of bank conflicts.
//
// Forward (one block = 64 queries of one (b, h); 4 warps x 16 queries): for each 64-key tile (causal: up to
// the diagonal) S = scale Q K^T, running max m and sum l per row, O = O exp(m_old - m_new) + P V.
//   FLOPs 4 B H T^2 hd (x 1/2 causal); traffic: Q, O once, K, V once per query tile (from L2 mostly).
// Backward, deterministic (no atomics), three launches:
//   1. delta[t] = dO[t] . O[t]                                         read 2 B T D bf16
//   2. per 64-key tile (4 warps x 16 keys): for each query tile, P^T = exp(scale K Q^T - lse),
//      dV += P^T dO, dP^T = V dO^T, dS^T = P^T (dP^T - delta), dK += scale dS^T Q
//   3. per 64-query tile: for each key tile, recompute P, dP = dO V^T, dS, dQ += scale dS K
//   FLOPs 2 (QK^T) + 2 (dO V^T) + 3 (dV, dK, dQ) products of 2 B H T^2 hd each (x 1/2 causal).
// Streamed tiles are double-buffered: cp.async brings tile i + 1 while tile i is computed.
// head dims 16, 32, 64, 128 (others, or MUE_FLASH_ATTENTION=0, use the materialized path of nn/attention.cu).
#include <cstdlib>

#include "core/cuda_util.cuh"
#include "core/mma.cuh"
#include "nn/ops_cuda.h"
#include "nn/rope.cuh"

namespace mue::cuda {

using namespace detail;

namespace {
constexpr int kTile = 64;         // queries and keys per tile
constexpr int kWarps = 4;         // 16 rows per warp
constexpr int kThreads = kWarps * 32;
constexpr float kLog2e = 1.4426950408889634f;

template <int HD>
struct Tiles {
  static constexpr int ld = HD + 8;  // padded row: 8 consecutive rows start on 8 different 16-byte bank groups
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
    cp_async16(dst + r * Tiles<HD>::ld + c, base + row + size_t(h) * HD + c, t < T);
  }
}

// A 16 x 64 tile of scores: 8 accumulators of 8 columns each.
using ScoreTile = float[kTile / 8][4];

// c = A B^T with A the 16 rows of a padded smem tile starting at `a` (16 x HD) and B a padded 64 x HD smem tile.
template <int HD>
__device__ void warp_abt(ScoreTile& c, const bf* a, const bf* b) {
  constexpr int ld = Tiles<HD>::ld;
  const int l = threadIdx.x & 31;
  #pragma unroll
  for (int n = 0; n < kTile / 8; ++n) c[n][0] = c[n][1] = c[n][2] = c[n][3] = 0.f;
  #pragma unroll
  for (int k = 0; k < HD / 16; ++k) {
    uint32_t af[4];
    ldsm_x4(af, a + (l & 15) * ld + k * 16 + (l >> 4) * 8);
    #pragma unroll
    for (int n = 0; n < kTile / 16; ++n) {  // B rows 16n..16n+15: b0, b1 of column tile 2n, then of 2n + 1
      uint32_t bfr[4];
      ldsm_x4(bfr, b + (16 * n + (l & 7) + (l >> 4) * 8) * ld + k * 16 + ((l >> 3) & 1) * 8);
      mma_bf16(c[2 * n], af, bfr[0], bfr[1]);
      mma_bf16(c[2 * n + 1], af, bfr[2], bfr[3]);
    }
  }
}

// acc (16 x HD, HD / 8 accumulators) += P M with P [16 x 64] given as a score tile (rounded to bf16 here; the
// accumulator layout of two adjacent column tiles is the A-operand layout of one 16-wide k step) and M a padded
// 64 x HD smem tile, read transposed by ldmatrix.
template <int HD>
__device__ void warp_pm(float (&acc)[HD / 8][4], const ScoreTile& p, const bf* m) {
  constexpr int ld = Tiles<HD>::ld;
  const int l = threadIdx.x & 31;
  #pragma unroll
  for (int k = 0; k < kTile / 16; ++k) {
    const uint32_t af[4] = {pack_bf16(p[2 * k][0], p[2 * k][1]), pack_bf16(p[2 * k][2], p[2 * k][3]),
                            pack_bf16(p[2 * k + 1][0], p[2 * k + 1][1]), pack_bf16(p[2 * k + 1][2], p[2 * k + 1][3])};
    #pragma unroll
    for (int n = 0; n < HD / 16; ++n) {  // M columns 16n..16n+15: b0, b1 of column tile 2n, then of 2n + 1
      uint32_t bfr[4];
      ldsm_x4_trans(bfr, m + (16 * k + (l & 7) + ((l >> 3) & 1) * 8) * ld + 16 * n + (l >> 4) * 8);
      mma_bf16(acc[2 * n], af, bfr[0], bfr[1]);
      mma_bf16(acc[2 * n + 1], af, bfr[2], bfr[3]);
    }
  }
}

// Row (e / 2: 0 for g, 1 for g + 8) and column of accumulator element [n][e] within a 16 x 64 tile.
__device__ inline int frag_row(int e) { return ((threadIdx.x & 31) >> 2) + 8 * (e >> 1); }
__device__ inline int frag_col(int n, int e) { return 8 * n + 2 * (threadIdx.x & 3) + (e & 1); }
// Max / sum over the 4 lanes that share a row.
__device__ inline float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ inline float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// Writes a warp's 16 x HD accumulator (times `scale`) as bf16 rows of a [B, T, ...] tensor: row r of the tile
// goes to dst + (t0 + r) * stride, rows >= T are skipped. With `rope`, each row is first rotated back by RoPE of
// base 2^log2_theta (the transpose rotation of position t): a lane's two adjacent columns are one RoPE pair.
template <int HD>
__device__ void store_rows(bf* dst, size_t stride, int t0, int T, const float (&acc)[HD / 8][4], float scale,
                           bool rope = false, float log2_theta = 0.f) {
  #pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int t = t0 + frag_row(2 * half);
    if (t >= T) continue;
    #pragma unroll
    for (int n = 0; n < HD / 8; ++n) {
      float x0 = acc[n][2 * half] * scale, x1 = acc[n][2 * half + 1] * scale;
      if (rope) {
        float c, s;
        rope_cos_sin(t, frag_col(n, 0) / 2, HD, log2_theta, c, s);
        const float r0 = x0 * c + x1 * s, r1 = x1 * c - x0 * s;
        x0 = r0, x1 = r1;
      }
      *reinterpret_cast<__nv_bfloat162*>(dst + size_t(t) * stride + frag_col(n, 0)) = __floats2bfloat162_rn(x0, x1);
    }
  }
}

// Shared-memory layout of all three kernels: five bf16 tiles, t(0) the block's own rows, t(1..2) and t(3..4)
// the two stages of streamed tiles (a second own tile sits in t(5) in the backward kernels).
template <int HD>
struct Smem {
  static constexpr size_t tile = size_t(kTile) * Tiles<HD>::ld;
  static constexpr size_t bytes = 6 * tile * sizeof(bf);
  bf* tiles;
  __device__ bf* t(int i) const { return tiles + i * tile; }
  __device__ explicit Smem(char* base) : tiles(reinterpret_cast<bf*>(base)) {}
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

template <int HD>
__global__ void __launch_bounds__(kThreads) flash_forward_kernel(const bf* qkv, bf* out, float* lse, int T, int H,
                                                                 float scale, bool causal) {
  extern __shared__ __align__(16) char smem_raw[];
  Smem<HD> sm(smem_raw);
  // Heaviest (causal: last) query tiles first, so that the short ones fill the tail.
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kTile, h = blockIdx.y, b = blockIdx.z, w = threadIdx.x >> 5;
  load_tile<HD>(sm.t(0), qkv, b, q0, T, H, h, 0);
  const bf* qw = sm.t(0) + w * 16 * Tiles<HD>::ld;
  const int row0 = q0 + w * 16;  // this warp's first query
  const float sl2 = scale * kLog2e;  // scores in log2 units
  float o[HD / 8][4] = {};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};  // per row g, g + 8; l summed over this lane's columns
  const int kend = causal ? min(T, q0 + kTile) : T;
  const auto load_kv = [&](bf* kt, bf* vt, int r0) {
    load_tile_async<HD>(kt, qkv, b, r0, T, H, h, 1), load_tile_async<HD>(vt, qkv, b, r0, T, H, h, 2);
  };
  stream_tiles<HD>(sm, 0, kend, load_kv, [&](int k0, const bf* kt, const bf* vt) {
    ScoreTile s;
    warp_abt<HD>(s, qw, kt);
    const bool edge = k0 + kTile > T || (causal && k0 + kTile - 1 > row0);
    float mx[2] = {-INFINITY, -INFINITY};
    #pragma unroll
    for (int n = 0; n < kTile / 8; ++n)
      #pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = k0 + frag_col(n, e);
        s[n][e] = edge && (key >= T || (causal && key > row0 + frag_row(e))) ? -INFINITY : s[n][e] * sl2;
        mx[e >> 1] = fmaxf(mx[e >> 1], s[n][e]);
      }
    float base[2];
    #pragma unroll
    for (int i = 0; i < 2; ++i) {
      const float mn = fmaxf(m[i], quad_max(mx[i]));
      base[i] = mn == -INFINITY ? 0.f : mn;  // a fully masked row so far: exp2(-inf - 0) = 0
      const float alpha = exp2f(m[i] - base[i]);
      l[i] *= alpha, m[i] = mn;
      #pragma unroll
      for (int n = 0; n < HD / 8; ++n) o[n][2 * i] *= alpha, o[n][2 * i + 1] *= alpha;
    }
    #pragma unroll
    for (int n = 0; n < kTile / 8; ++n)
      #pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[n][e] = exp2f(s[n][e] - base[e >> 1]);
        l[e >> 1] += s[n][e];
      }
    warp_pm<HD>(o, s, vt);
  });
  float inv[2];
  #pragma unroll
  for (int i = 0; i < 2; ++i) {
    const float li = quad_sum(l[i]);
    inv[i] = li > 0.f ? 1.f / li : 0.f;
    const int t = row0 + frag_row(2 * i);
    if ((threadIdx.x & 3) == 0 && t < T) lse[(size_t(b) * H + h) * T + t] = (m[i] + log2f(li)) / kLog2e;
  }
  #pragma unroll
  for (int n = 0; n < HD / 8; ++n)
    #pragma unroll
    for (int e = 0; e < 4; ++e) o[n][e] *= inv[e >> 1];
  store_rows<HD>(out + (size_t(b) * T * H + h) * HD, size_t(H) * HD, row0, T, o, 1.f);
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

// dK, dV for 64 keys (each warp 16 keys: rows of the K and V tiles in t(0), t(5)); Q and dO stream through.
template <int HD>
__global__ void __launch_bounds__(kThreads) flash_dkdv_kernel(const bf* qkv, const bf* dout, const float* lse,
                                                              const float* delta, bf* dqkv, int T, int H,
                                                              float scale, bool causal, bool rope,
                                                              float log2_theta) {
  extern __shared__ __align__(16) char smem_raw[];
  Smem<HD> sm(smem_raw);
  const int k0 = blockIdx.x * kTile, h = blockIdx.y, b = blockIdx.z, w = threadIdx.x >> 5;
  load_tile<HD>(sm.t(0), qkv, b, k0, T, H, h, 1);
  load_tile<HD>(sm.t(5), qkv, b, k0, T, H, h, 2);
  const bf* kw = sm.t(0) + w * 16 * Tiles<HD>::ld;
  const bf* vw = sm.t(5) + w * 16 * Tiles<HD>::ld;
  const int key0 = k0 + w * 16;  // this warp's first key
  const float sl2 = scale * kLog2e;
  float dk[HD / 8][4] = {}, dv[HD / 8][4] = {};
  const float* lse_bh = lse + (size_t(b) * H + h) * T;
  const float* delta_bh = delta + (size_t(b) * H + h) * T;
  const auto load_q_do = [&](bf* qt, bf* dot, int r0) {
    load_tile_async<HD>(qt, qkv, b, r0, T, H, h, 0), load_tile_async<HD>(dot, dout, b, r0, T, H, h, -1);
  };
  stream_tiles<HD>(sm, causal ? k0 : 0, T, load_q_do, [&](int q0, const bf* qt, const bf* dot) {
    ScoreTile p;  // S^T [16 keys x 64 queries] = K_w Q^T, then P^T = exp(scale S^T - lse[q])
    warp_abt<HD>(p, kw, qt);
    const bool edge = q0 + kTile > T || (causal && q0 < key0 + 16);
    #pragma unroll
    for (int n = 0; n < kTile / 8; ++n)
      #pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int q = q0 + frag_col(n, e);
        const bool masked = edge && (q >= T || (causal && key0 + frag_row(e) > q));
        p[n][e] = masked ? 0.f : exp2f(p[n][e] * sl2 - lse_bh[min(q, T - 1)] * kLog2e);
      }
    warp_pm<HD>(dv, p, dot);  // dV += P^T dO
    ScoreTile ds;             // dP^T = V_w dO^T, then dS^T = P^T (dP^T - delta[q])
    warp_abt<HD>(ds, vw, dot);
    #pragma unroll
    for (int n = 0; n < kTile / 8; ++n)
      #pragma unroll
      for (int e = 0; e < 4; ++e) ds[n][e] = p[n][e] * (ds[n][e] - delta_bh[min(q0 + frag_col(n, e), T - 1)]);
    warp_pm<HD>(dk, ds, qt);  // dK += dS^T Q
  });
  const size_t D = size_t(H) * HD;
  bf* base = dqkv + size_t(b) * T * 3 * D + size_t(h) * HD;
  store_rows<HD>(base + D, 3 * D, key0, T, dk, scale, rope, log2_theta);
  store_rows<HD>(base + 2 * D, 3 * D, key0, T, dv, 1.f);
}

// dQ for 64 queries (each warp 16 queries: rows of the Q and dO tiles in t(0), t(5)); K and V stream through.
template <int HD>
__global__ void __launch_bounds__(kThreads) flash_dq_kernel(const bf* qkv, const bf* dout, const float* lse,
                                                            const float* delta, bf* dqkv, int T, int H, float scale,
                                                            bool causal, bool rope, float log2_theta) {
  extern __shared__ __align__(16) char smem_raw[];
  Smem<HD> sm(smem_raw);
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kTile, h = blockIdx.y, b = blockIdx.z, w = threadIdx.x >> 5;
  load_tile<HD>(sm.t(0), qkv, b, q0, T, H, h, 0);
  load_tile<HD>(sm.t(5), dout, b, q0, T, H, h, -1);
  const bf* qw = sm.t(0) + w * 16 * Tiles<HD>::ld;
  const bf* dow = sm.t(5) + w * 16 * Tiles<HD>::ld;
  const int row0 = q0 + w * 16;
  const float sl2 = scale * kLog2e;
  float lq[2], dlt[2];  // lse (log2 units) and delta of rows g, g + 8
  #pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int t = min(row0 + frag_row(2 * i), T - 1);
    lq[i] = lse[(size_t(b) * H + h) * T + t] * kLog2e, dlt[i] = delta[(size_t(b) * H + h) * T + t];
  }
  float dq[HD / 8][4] = {};
  const int kend = causal ? min(T, q0 + kTile) : T;
  const auto load_kv = [&](bf* kt, bf* vt, int r0) {
    load_tile_async<HD>(kt, qkv, b, r0, T, H, h, 1), load_tile_async<HD>(vt, qkv, b, r0, T, H, h, 2);
  };
  stream_tiles<HD>(sm, 0, kend, load_kv, [&](int k0, const bf* kt, const bf* vt) {
    ScoreTile p;  // S = Q_w K^T, then P
    warp_abt<HD>(p, qw, kt);
    const bool edge = k0 + kTile > T || (causal && k0 + kTile - 1 > row0);
    #pragma unroll
    for (int n = 0; n < kTile / 8; ++n)
      #pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = k0 + frag_col(n, e);
        const bool masked = edge && (key >= T || (causal && key > row0 + frag_row(e)));
        p[n][e] = masked ? 0.f : exp2f(p[n][e] * sl2 - lq[e >> 1]);
      }
    ScoreTile ds;  // dP = dO_w V^T, then dS = P (dP - delta)
    warp_abt<HD>(ds, dow, vt);
    #pragma unroll
    for (int n = 0; n < kTile / 8; ++n)
      #pragma unroll
      for (int e = 0; e < 4; ++e) ds[n][e] = p[n][e] * (ds[n][e] - dlt[e >> 1]);
    warp_pm<HD>(dq, ds, kt);  // dQ += dS K
  });
  store_rows<HD>(dqkv + size_t(b) * T * 3 * H * HD + size_t(h) * HD, 3 * size_t(H) * HD, row0, T, dq, scale,
                 rope, log2_theta);
}

template <int HD>
void flash_forward_hd(Context& ctx, const bf* qkv, bf* out, float* lse, int batch, int T, int H, float scale, bool causal) {
  const size_t smem = Smem<HD>::bytes;
  allow_smem(reinterpret_cast<const void*>(flash_forward_kernel<HD>), smem, "flash_forward_kernel");
  MUE_CHECK(H <= 65535 && batch <= 65535, "flash attention: heads (", H, ") and batch (", batch,
            ") must each be at most 65535");
  const dim3 grid((T + kTile - 1) / kTile, H, batch);
  flash_forward_kernel<HD><<<grid, kThreads, smem, ctx.stream>>>(qkv, out, lse, T, H, scale, causal);
  check_launch("flash_forward_kernel");
}

template <int HD>
void flash_backward_hd(Context& ctx, const bf* dout, const bf* qkv, const bf* out, const float* lse, bf* dqkv, int batch,
                       int T, int H, float scale, bool causal, bool rope, float log2_theta) {
  float* delta = static_cast<float*>(ctx.scratch(0, sizeof(float) * size_t(batch) * H * T));
  const size_t rows = size_t(batch) * T * H;
  flash_delta_kernel<<<unsigned((rows * 32 + 255) / 256), 256, 0, ctx.stream>>>(dout, out, delta, batch, T, H, HD);
  check_launch("flash_delta_kernel");
  const size_t smem = Smem<HD>::bytes;
  MUE_CHECK(H <= 65535 && batch <= 65535, "flash attention: heads (", H, ") and batch (", batch,
            ") must each be at most 65535");
  const dim3 grid((T + kTile - 1) / kTile, H, batch);
  allow_smem(reinterpret_cast<const void*>(flash_dkdv_kernel<HD>), smem, "flash_dkdv_kernel");
  flash_dkdv_kernel<HD><<<grid, kThreads, smem, ctx.stream>>>(qkv, dout, lse, delta, dqkv, T, H, scale, causal,
                                                                   rope, log2_theta);
  check_launch("flash_dkdv_kernel");
  allow_smem(reinterpret_cast<const void*>(flash_dq_kernel<HD>), smem, "flash_dq_kernel");
  flash_dq_kernel<HD><<<grid, kThreads, smem, ctx.stream>>>(qkv, dout, lse, delta, dqkv, T, H, scale, causal,
                                                                 rope, log2_theta);
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
                        bf16* dqkv, int batch, int T, int H, int hd, float scale, bool causal, float rope_theta) {
  if (batch <= 0 || T <= 0 || H <= 0 || hd <= 0) return;
  const bool rope = rope_theta > 0.f;
  const float l2t = rope ? log2f(rope_theta) : 0.f;
  const auto flash = [&](auto run) {
    run(ctx, B(dout), B(qkv), B(out), state, B(dqkv), batch, T, H, scale, causal, rope, l2t);
  };
  switch (flash_attention_enabled(hd) ? hd : 0) {
    case 16: return flash(flash_backward_hd<16>);
    case 32: return flash(flash_backward_hd<32>);
    case 64: return flash(flash_backward_hd<64>);
    case 128: return flash(flash_backward_hd<128>);
  }
  attention_materialized_backward(ctx, dout, qkv, reinterpret_cast<const bf16*>(state), dqkv, batch, T, H, hd,
                                  scale, causal);
  if (rope) rope_backward(ctx, dqkv, batch, T, H, hd, rope_theta);
}

}  // namespace mue::cuda
