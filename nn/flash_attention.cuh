// Device helpers shared by the flash-attention kernels (nn/flash_attention.cu: mma.sync, every head dim;
// nn/flash_attention_sm90.cu: wgmma, head dims 64 and 128): head rows of the packed qkv, the accumulator
// fragment layout (the mma.sync m16n8 one, which the wgmma m64nN accumulators repeat per warp), masking,
// stores with the transpose RoPE rotation, the double-buffered tile stream and delta = dO . O. Only included by
// .cu files.
#pragma once
#include "core/cuda_util.cuh"
#include "core/mma.cuh"
#include "core/wgmma.cuh"
#include "nn/ops/attention.h"
#include "nn/rope.cuh"

namespace mue::cuda::flash {

using namespace detail;

constexpr float kLog2e = 1.4426950408889634f;

// One head's rows: element (b, t, h, 0) of a [B, T, ...] tensor is head + t * stride.
struct HeadRows {
  const bf* head;
  size_t stride;
};
// q, k, v of head h in sequence b of qkv [B, T, 3, H, hd]; the same of a [B, T, H, hd] tensor.
__device__ inline HeadRows qkv_rows(const bf* qkv, int b, int T, int H, int h, int hd, int part) {
  const size_t D = size_t(H) * hd;
  return {qkv + size_t(b) * T * 3 * D + size_t(part) * D + size_t(h) * hd, 3 * D};
}
__device__ inline HeadRows head_rows(const bf* x, int b, int T, int H, int h, int hd) {
  const size_t D = size_t(H) * hd;
  return {x + size_t(b) * T * D + size_t(h) * hd, D};
}

// The mma.sync kernels' streamed tiles (nn/flash_attention.cu, nn/linear_crossentropy.cu): 64 rows, copied by a
// block of 128 threads into shared memory with rows HD + 8 bf16 apart (8 consecutive rows start on 8 different
// 16-byte bank groups, so ldmatrix runs without conflicts).
constexpr int kStreamRows = 64, kStreamThreads = 128;
template <int HD>
struct Tiles {
  static constexpr int ld = HD + 8;
};

// Rows [t0, t0 + ROWS) of `src` (HD columns each) into a padded smem tile with cp.async by a block of THREADS,
// rows beyond T zero-filled (completes at cp_async_wait). Each thread copies the same column of rows r, r + pass,
// ...: the index arithmetic is a few integer ops per 16 bytes.
template <int HD, int ROWS = kStreamRows, int THREADS = kStreamThreads>
__device__ void load_tile_async(bf* dst, HeadRows src, int t0, int T) {
  constexpr int vec = HD / 8, pass = THREADS / vec;  // 16-byte vectors per row; rows per pass of the block
  static_assert(THREADS % vec == 0 && ROWS % pass == 0);
  const int r = threadIdx.x / vec, c = (threadIdx.x % vec) * 8;
  #pragma unroll
  for (int i = 0; i < ROWS / pass; ++i) {
    const int t = t0 + r + i * pass;
    cp_async16(dst + (r + i * pass) * Tiles<HD>::ld + c, src.head + size_t(min(t, T - 1)) * src.stride + c, t < T);
  }
}

// A warp's 16 x HD left operand as mma A fragments (one per 16-wide k step), and their load from the 16 rows of a
// padded smem tile starting at `a`.
template <int HD>
using AFrags = uint32_t[HD / 16][4];
template <int HD>
__device__ void load_a(AFrags<HD>& af, const bf* a) {
  const int l = threadIdx.x & 31;
  #pragma unroll
  for (int k = 0; k < HD / 16; ++k) ldsm_x4(af[k], a + (l & 15) * Tiles<HD>::ld + k * 16 + (l >> 4) * 8);
}

// acc (16 x HD, HD / 8 accumulators) += A_k M_k for one 16-wide k step: af a warp's 16 x 16 A operand, M a padded
// smem tile of HD columns (rows 16 k .. 16 k + 15 of it), read transposed by ldmatrix.
template <int HD>
__device__ void pm_kstep(float (&acc)[HD / 8][4], const uint32_t (&af)[4], const bf* m, int k) {
  constexpr int ld = Tiles<HD>::ld;
  const int l = threadIdx.x & 31;
  #pragma unroll
  for (int n = 0; n < HD / 16; ++n) {  // M columns 16n..16n+15: b0, b1 of column tile 2n, then of 2n + 1
    uint32_t bfr[4];
    ldsm_x4_trans(bfr, m + (16 * k + (l & 7) + ((l >> 3) & 1) * 8) * ld + 16 * n + (l >> 4) * 8);
    mma_bf16(acc[2 * n], af, bfr[0], bfr[1]);
    mma_bf16(acc[2 * n + 1], af, bfr[2], bfr[3]);
  }
}
// acc += P M with P [16 x 8 NB] given in the accumulator layout (rounded to bf16 here; the accumulator layout of
// two adjacent column tiles is the A-operand layout of one 16-wide k step) and M a padded 8 NB x HD smem tile.
template <int HD, int NB>
__device__ void warp_pm(float (&acc)[HD / 8][4], const float (&p)[NB][4], const bf* m) {
  #pragma unroll
  for (int k = 0; k < NB / 2; ++k) {
    const uint32_t af[4] = {pack_bf16(p[2 * k][0], p[2 * k][1]), pack_bf16(p[2 * k][2], p[2 * k][3]),
                            pack_bf16(p[2 * k + 1][0], p[2 * k + 1][1]), pack_bf16(p[2 * k + 1][2], p[2 * k + 1][3])};
    pm_kstep<HD>(acc, af, m, k);
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

// Sets the masked scores of a tile (NB blocks of 8 columns) to -inf: column c (a key, or with `keys_are_rows` a query) beyond T, or
// causally a key after its query. Rows start at row0, columns at col0. Only called on tiles that cross the
// diagonal or the end of the sequence, so that the other tiles do no index arithmetic at all.
template <int NB>
__device__ inline void mask_scores(float (&s)[NB][4], int row0, int col0, int T, bool causal, bool keys_are_rows) {
  #pragma unroll
  for (int n = 0; n < NB; ++n)
    #pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int r = row0 + frag_row(e), c = col0 + frag_col(n, e);
      if (c >= T || (causal && (keys_are_rows ? r > c : c > r))) s[n][e] = -INFINITY;
    }
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

// The forward's running softmax state of a warp's rows g and g + 8: max m and sum l (base-2 units of the scaled
// scores), and the output accumulator o [16 x HD] of the mma.sync layout.
template <int HD>
struct OnlineSoftmax {
  float o[HD / 8][4] = {};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

  // One tile of scores s (NB blocks of 8 keys from k0; the warp's queries from row0), masked where needed and
  // turned into P = exp2(sl2 s - running max) in place; m and l updated and o rescaled.
  template <int NB>
  __device__ void tile(float (&s)[NB][4], int row0, int k0, int T, bool causal, float sl2) {
    if (k0 + 8 * NB > T || (causal && k0 + 8 * NB - 1 > row0)) mask_scores(s, row0, k0, T, causal, false);
    float mx[2] = {-INFINITY, -INFINITY};
    #pragma unroll
    for (int n = 0; n < NB; ++n)
      #pragma unroll
      for (int e = 0; e < 4; ++e) mx[e >> 1] = fmaxf(mx[e >> 1], s[n][e]);
    float base[2];
    #pragma unroll
    for (int i = 0; i < 2; ++i) {
      const float mn = fmaxf(m[i], quad_max(mx[i]) * sl2);
      base[i] = mn == -INFINITY ? 0.f : mn;  // a fully masked row so far: exp2(-inf - 0) = 0
      const float alpha = exp2f(m[i] - base[i]);
      l[i] *= alpha, m[i] = mn;
      #pragma unroll
      for (int n = 0; n < HD / 8; ++n) o[n][2 * i] *= alpha, o[n][2 * i + 1] *= alpha;
    }
    #pragma unroll
    for (int n = 0; n < NB; ++n)
      #pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[n][e] = exp2f(fmaf(s[n][e], sl2, -base[e >> 1]));
        l[e >> 1] += s[n][e];
      }
  }
  // Writes the lse of rows < T (lse_bh: this (b, h)'s [T]) and O = o / l as bf16 rows of out_head (stride).
  __device__ void finish(int row0, int T, float* lse_bh, bf* out_head, size_t stride) {
    float inv[2];
    #pragma unroll
    for (int i = 0; i < 2; ++i) {
      const float li = quad_sum(l[i]);
      inv[i] = li > 0.f ? 1.f / li : 0.f;
      const int t = row0 + frag_row(2 * i);
      if ((threadIdx.x & 3) == 0 && t < T) lse_bh[t] = (m[i] + log2f(li)) / kLog2e;
    }
    #pragma unroll
    for (int n = 0; n < HD / 8; ++n)
      #pragma unroll
      for (int e = 0; e < 4; ++e) o[n][e] *= inv[e >> 1];
    store_rows<HD>(out_head, stride, row0, T, o, 1.f);
  }
};

// Streams the kRows-row tiles starting at rows first, first + kRows, ... < end through the two stages, loading
// tile i + 1 (cp.async) while tile i is computed: load(stage, row0) issues the copies of one tile, body(row0,
// stage) computes on it. kAsyncProxy: the body reads the tiles with wgmma (the async proxy), so each thread
// fences its landed copies before the barrier.
template <int kRows, bool kAsyncProxy = false, class Load, class Body>
__device__ void stream_tiles(int first, int end, Load load, Body body) {
  const int n = (end - first + kRows - 1) / kRows;
  if (n <= 0) return;
  load(0, first);
  cp_async_commit();
  for (int i = 0; i < n; ++i) {
    const int s = i & 1;
    if (i + 1 < n) {
      load(1 - s, first + (i + 1) * kRows);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    if constexpr (kAsyncProxy) fence_proxy_async();
    __syncthreads();
    body(first + i * kRows, s);
    __syncthreads();  // before the next iteration's copies overwrite this stage
  }
}

// delta[t] = dO[t] . O[t] for this warp's 16 rows from row0 (rows < T): each row's HD / 8 vectors on as many
// adjacent lanes. The warp's lanes may read each other's delta afterwards.
template <int HD>
__device__ void warp_delta(const bf* dout, const bf* out, float* delta_bh, int b, int T, int H, int h, int row0) {
  constexpr int vec = HD / 8, rows_per_pass = 32 / vec;
  const int lane = threadIdx.x & 31;
  const HeadRows dor = head_rows(dout, b, T, H, h, HD), orow = head_rows(out, b, T, H, h, HD);
  #pragma unroll
  for (int p = 0; p < 16 / rows_per_pass; ++p) {
    const int t = row0 + p * rows_per_pass + lane / vec, c = (lane % vec) * 8;
    float s = 0.f;
    if (t < T) {
      float g[8], o[8];
      unpack8(*reinterpret_cast<const uint4*>(dor.head + size_t(t) * dor.stride + c), g);
      unpack8(*reinterpret_cast<const uint4*>(orow.head + size_t(t) * orow.stride + c), o);
      #pragma unroll
      for (int k = 0; k < 8; ++k) s += g[k] * o[k];
    }
    #pragma unroll
    for (int off = vec / 2; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane % vec == 0 && t < T) delta_bh[t] = s;
  }
  __syncwarp();
}

}  // namespace mue::cuda::flash

namespace mue::cuda {
// The wgmma kernels (nn/flash_attention_sm90.cu) for head dims 64 and 128, same arguments and results as the
// mma.sync ones (flash_sm90_enabled in nn/ops/attention.h says when they run).
void flash_sm90_forward(Context& ctx, const detail::bf* qkv, detail::bf* out, float* lse, int batch, int T, int H,
                        int hd, float scale, bool causal);
void flash_sm90_backward(Context& ctx, const detail::bf* dout, const detail::bf* qkv, const detail::bf* out,
                         const float* lse, detail::bf* dqkv, int batch, int T, int H, int hd, float scale, bool causal,
                         bool rope, float log2_theta);
}  // namespace mue::cuda
