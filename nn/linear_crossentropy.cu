// The LM head's loss and backward from its logits L [R, Vp] (= alpha x W^T, bf16, from the forward GEMM) without
// dlogits in memory: dlogits = dloss (softmax - onehot) are formed from L as the kernels read it, so the logits
// cross HBM twice (read by each pass) instead of four times (read and dlogits written by the cross-entropy,
// dlogits read by both backward GEMMs). bf16 in, fp32 accumulate (mma.sync m16n8k16, or wgmma on Hopper); no
// atomics.
//
// 1. lce_dx_partial_kernel, per 16 W rows x one vocabulary split x DC columns of D (W warps x 16 rows): for each
//    64-column tile, the logits tile as scores, online max and sum of exp per row (nn/flash_attention.cuh's
//    OnlineSoftmax, base 2), o += P W_tile (P unnormalized, rounded to bf16). Writes o and (m, l) per split.
//    That is flash attention's forward with the scores read instead of computed (Q K^T = L, V = W).
//    Traffic: L once; W once per block of rows (from L2). FLOPs 2 R Vp D.
// 2. lce_combine_kernel, a warp per row: merges the splits in order: lse, loss = lse - L[target] and
//    dx = alpha dloss (sum_v softmax_v W_v - W_target) (the one-hot part exact, from W itself).
// 3. lce_dw_kernel, per 16 W vocabulary rows x DC columns: over all rows in 64-row tiles, G^T = dloss (exp(L - lse)
//    - onehot)^T (bf16, the values the cross-entropy kernel would have stored) times x: dW (+)= alpha G^T x.
//    Traffic: L once; x once per block of vocabulary rows (from L2). FLOPs 2 R Vp D.
// Shapes (kernel variant fused_head): 1: blocks of W = 4 warps, tiles double-buffered (as flash attention's);
// 2: W = 8 warps (half the L2 reads of W and x) and three stages (two tiles in flight while one is computed: the
// logits come from HBM, not L2, and one tile in flight per block leaves the passes waiting on memory); 3: wgmma
// on Hopper (namespace hopper below), the default at D = 128 where Vp tiles by 128 (fused_variant); 4: 3 with the
// dW pass's rows split to fill whole waves (dw_row_splits) and the splits' partial dW summed in order; 5: 4 with
// the dW pass's products issued k step by k step, overlapping the next fragments' exponentials.
// bench/RESULTS.md has what each measured.
// Columns V..Vp-1 (padding) count as -inf in the softmax and get no gradient. A target outside [0, V) gives a NaN
// loss, a NaN dx row and NaN in dW, as the cross-entropy kernels' NaN dlogits row would.
#include <algorithm>
#include <cmath>

#include "core/kernel_variants.h"
#include "nn/flash_attention_sm90.cuh"
#include "nn/ops/crossentropy.h"
#include "nn/ops/linear_crossentropy.h"
#include "nn/ops/matmul.h"

namespace mue::cuda {

using namespace detail;
using namespace flash;

namespace {
constexpr int kTile = kStreamRows;  // rows and vocabulary columns per tile
using ScoreTile = float[kTile / 8][4];

// Streams the tiles starting at first, first + kTile, ... < end through S stages: tiles i + 1 .. i + S - 1 load
// (cp.async) while tile i is computed. load(stage, start) issues one tile's copies, body(start, stage) computes.
// S = 2 is flash attention's stream_tiles; for S > 2 one barrier a tile: the stage a load overwrites was computed
// on in the previous iteration, before this one's barrier.
template <int S, class Load, class Body>
__device__ void stream_stages(int first, int end, Load load, Body body) {
  if constexpr (S == 2) {
    stream_tiles<kTile>(first, end, load, body);
  } else {
    const int n = (end - first + kTile - 1) / kTile;
    #pragma unroll
    for (int j = 0; j < S - 1; ++j) {
      if (j < n) load(j, first + j * kTile);
      cp_async_commit();  // empty groups too: the wait below counts groups
    }
    for (int i = 0; i < n; ++i) {
      cp_async_wait<S - 2>();  // tile i has landed (groups committed: S - 1 + i)
      __syncthreads();
      if (i + S - 1 < n) load((i + S - 1) % S, first + (i + S - 1) * kTile);
      cp_async_commit();
      body(first + i * kTile, i % S);
    }
    cp_async_wait<0>();
  }
}

// A split's state of a warp's rows row0 + g, + 8 (rows < R): (m, l) once (from the first column group), o at its
// columns c0 .. c0 + DC.
template <int DC>
__device__ void store_split(const OnlineSoftmax<DC>& sm, int row0, int c0, int split, float* o_part, float2* ml_part,
                            int R, int D) {
  const int q = threadIdx.x & 3;
  #pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int r = row0 + frag_row(2 * i);
    const float l = quad_sum(sm.l[i]);
    if (r >= R) continue;
    if (blockIdx.x == 0 && q == 0) ml_part[size_t(split) * R + r] = make_float2(sm.m[i], l);
    float* o = o_part + (size_t(split) * R + r) * D + c0;
    #pragma unroll
    for (int n = 0; n < DC / 8; ++n)
      *reinterpret_cast<float2*>(o + frag_col(n, 0)) = make_float2(sm.o[n][2 * i], sm.o[n][2 * i + 1]);
  }
}

template <int DC, int W, int S>
struct DxSmem {  // S stages of (logits tile [16 W x 64], W tile [64 x DC]), padded rows
  static constexpr int rows = 16 * W;
  static constexpr size_t ltile = size_t(rows) * Tiles<kTile>::ld, wtile = size_t(kTile) * Tiles<DC>::ld;
  static constexpr size_t bytes = S * (ltile + wtile) * sizeof(bf);
};

// A warp's 16 rows of a padded 64 x 64 logits tile (from row 16 w) as scores in the accumulator layout.
__device__ inline void load_scores(ScoreTile& s, const bf* tile, int w) {
  AFrags<kTile> af;  // k step k: af[k][0] row g, [1] row g + 8, [2], [3] the same rows 8 columns on
  load_a<kTile>(af, tile + 16 * w * Tiles<kTile>::ld);
  #pragma unroll
  for (int k = 0; k < kTile / 16; ++k) {
    #pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&af[k][j]));
      float* c = s[2 * k + (j >> 1)] + 2 * (j & 1);
      c[0] = f.x, c[1] = f.y;
    }
  }
}

// Launch bounds: 8 warps at two blocks an SM (128 registers); 4 warps as flash attention's (no minimum, which
// gives 128 and 96 registers at DC = 128 where a minimum of 4 blocks spilled).
template <int DC, int W, int S>
__global__ void __launch_bounds__(32 * W, W == 4 ? 0 : 2)
    lce_dx_partial_kernel(const bf* logits, const bf* w, float* o_part, float2* ml_part, int R, int D, int V, int Vp,
                          int split_cols) {
  using Smem = DxSmem<DC, W, S>;
  extern __shared__ __align__(16) char smem_raw[];
  bf* lt = reinterpret_cast<bf*>(smem_raw);
  bf* wt = lt + S * Smem::ltile;
  const int c0 = blockIdx.x * DC, r0 = blockIdx.y * Smem::rows, split = blockIdx.z, wp = threadIdx.x >> 5;
  const int v_begin = split * split_cols, v_end = min(Vp, v_begin + split_cols);
  const int row0 = r0 + 16 * wp;
  OnlineSoftmax<DC> sm;
  const auto load = [&](int st, int v0) {
    load_tile_async<kTile, Smem::rows, 32 * W>(lt + st * Smem::ltile, HeadRows{logits + v0, size_t(Vp)}, r0, R);
    load_tile_async<DC, kTile, 32 * W>(wt + st * Smem::wtile, HeadRows{w + c0, size_t(D)}, v0, Vp);
  };
  stream_stages<S>(v_begin, v_end, load, [&](int v0, int st) {
    ScoreTile s;
    load_scores(s, lt + st * Smem::ltile, wp);
    sm.tile(s, row0, v0, V, false, kLog2e);  // columns >= V masked
    warp_pm<DC>(sm.o, s, wt + st * Smem::wtile);
  });
  store_split(sm, row0, c0, split, o_part, ml_part, R, D);
}

// A warp per row r: M = max of the splits' m, l = sum l_k 2^(m_k - M) (in split order), lse; losses[r] and
// lse_out[r] (NaN for a bad target), dx[r] = scale (sum_k o_k 2^(m_k - M) / l - W[target]).
__global__ void lce_combine_kernel(const float* o_part, const float2* ml_part, const bf* logits, const int32_t* targets,
                                   const bf* w, float* losses, float* lse_out, bf* dx, int R, int D, int V, int Vp,
                                   int splits, float scale) {
  const int r = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x & 31;
  if (r >= R) return;
  float M = -INFINITY;
  for (int k = 0; k < splits; ++k) M = fmaxf(M, ml_part[size_t(k) * R + r].x);
  float L = 0.f;
  for (int k = 0; k < splits; ++k) {
    const float2 ml = ml_part[size_t(k) * R + r];
    if (ml.x != -INFINITY) L += ml.y * exp2f(ml.x - M);
  }
  const int tg = targets[r];
  const bool ok = tg >= 0 && tg < V;
  const float lse = ok ? (M + log2f(L)) / kLog2e : NAN, inv = 1.f / L;
  if (lane == 0) {
    losses[r] = ok ? lse - __bfloat162float(logits[size_t(r) * Vp + tg]) : NAN;
    lse_out[r] = lse;
  }
  for (int c = 2 * lane; c < D; c += 64) {
    float a0 = 0.f, a1 = 0.f;
    for (int k = 0; k < splits; ++k) {
      const float2 ml = ml_part[size_t(k) * R + r];
      if (ml.x == -INFINITY) continue;
      const float f = exp2f(ml.x - M);
      const float2 o = *reinterpret_cast<const float2*>(o_part + (size_t(k) * R + r) * D + c);
      a0 += f * o.x, a1 += f * o.y;
    }
    float2 wt = make_float2(NAN, NAN);
    if (ok) wt = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(w + size_t(tg) * D + c));
    *reinterpret_cast<__nv_bfloat162*>(dx + size_t(r) * D + c) =
        __floats2bfloat162_rn(scale * (a0 * inv - wt.x), scale * (a1 * inv - wt.y));
  }
}

template <int DC, int W, int S>
struct DwSmem {  // S stages of (logits tile [64 rows x 16 W columns], x tile [64 x DC], the rows' lse, targets)
  static constexpr int cols = 16 * W;
  static constexpr size_t ltile = size_t(kTile) * Tiles<cols>::ld, xtile = size_t(kTile) * Tiles<DC>::ld;
  static constexpr size_t stage = (ltile + xtile) * sizeof(bf) + kTile * (sizeof(float) + sizeof(int32_t));
  static constexpr size_t bytes = S * stage;
  static_assert(stage % 16 == 0);
};

// dloss (softmax - onehot) of one logit: the cross-entropy kernel's formula (nn/crossentropy.cu), 0 for padding.
__device__ inline float dlogit(float x, float lse, int v, int V, int tg, float dloss) {
  return v < V ? dloss * (__expf(x - lse) - (v == tg ? 1.f : 0.f)) : 0.f;
}

// A = G^T [16 vocabulary x 16 rows], k step k of a warp's vocabulary rows vw .. vw + 15 (columns vw - v0 of the
// padded logits tile lt, COLS wide; ls, ts its rows' lse and targets): the tile read transposed, each logit
// turned into dloss (softmax - onehot) and rounded to bf16; a[j] holds vocabulary row g + 8 (j & 1), logit rows
// 16 k + 2 q + 8 (j >> 1) and + 1 (mma.sync's A layout, which wgmma's register A repeats per warp).
template <int COLS>
__device__ inline void gt_frag(uint32_t (&a)[4], const bf* lt, const float* ls, const int32_t* ts, int k, int vw,
                               int V, float dloss) {
  const int l = threadIdx.x & 31, g = l >> 2, q = l & 3, wp = threadIdx.x >> 5;
  ldsm_x4_trans(a, lt + (16 * k + (l & 7) + (l >> 4) * 8) * Tiles<COLS>::ld + 16 * wp +
                       ((l >> 3) & 1) * 8);
  #pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int v = vw + g + 8 * (j & 1), t = 16 * k + 2 * q + 8 * (j >> 1);
    const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&a[j]));
    a[j] = pack_bf16(dlogit(f.x, ls[t], v, V, ts[t], dloss), dlogit(f.y, ls[t + 1], v, V, ts[t + 1], dloss));
  }
}

// The lse and targets of rows [t0, t0 + 64) into smem with cp.async (the block's first 64 threads). Rows past R:
// lse 0 and target 0, which meet zero-filled logits and x rows (no effect).
__device__ inline void load_row_stats(float* lse_dst, int32_t* tgt_dst, const float* lse, const int32_t* targets,
                                      int t0, int R) {
  if (threadIdx.x >= kTile) return;
  const int t = t0 + threadIdx.x, tc = min(t, R - 1);
  cp_async4(lse_dst + threadIdx.x, lse + tc, t < R);
  cp_async4(tgt_dst + threadIdx.x, targets + tc, t < R);
}

// dW rows vw + g, + 8 at columns c0 .. c0 + DC: alpha acc, added to what is there with `accumulate`.
template <int DC>
__device__ void store_dw(const float (&acc)[DC / 8][4], float* dw, int vw, int c0, int D, float alpha, bool accumulate) {
  const int g = (threadIdx.x & 31) >> 2;
  #pragma unroll
  for (int i = 0; i < 2; ++i) {
    float* out = dw + size_t(vw + g + 8 * i) * D + c0;
    #pragma unroll
    for (int n = 0; n < DC / 8; ++n) {
      float2* p = reinterpret_cast<float2*>(out + frag_col(n, 0));
      float2 v = make_float2(alpha * acc[n][2 * i], alpha * acc[n][2 * i + 1]);
      if (accumulate) {
        const float2 old = *p;
        v.x += old.x, v.y += old.y;
      }
      *p = v;
    }
  }
}

template <int DC, int W, int S>
__global__ void __launch_bounds__(32 * W, W == 4 ? 0 : 2)
    lce_dw_kernel(const bf* logits, const int32_t* targets, const float* lse, const bf* x, float* dw, int R, int D,
                  int V, int Vp, float dloss, float alpha, bool accumulate) {
  using Smem = DwSmem<DC, W, S>;
  extern __shared__ __align__(16) char smem_raw[];
  const int c0 = blockIdx.x * DC, v0 = blockIdx.y * Smem::cols, wp = threadIdx.x >> 5;
  const auto ltile = [&](int st) { return reinterpret_cast<bf*>(smem_raw + st * Smem::stage); };
  const auto xtile = [&](int st) { return ltile(st) + Smem::ltile; };
  const auto lse_s = [&](int st) { return reinterpret_cast<float*>(xtile(st) + Smem::xtile); };
  const auto tgt_s = [&](int st) { return reinterpret_cast<int32_t*>(lse_s(st) + kTile); };
  const auto load = [&](int st, int t0) {
    load_tile_async<Smem::cols, kTile, 32 * W>(ltile(st), HeadRows{logits + v0, size_t(Vp)}, t0, R);
    load_tile_async<DC, kTile, 32 * W>(xtile(st), HeadRows{x + c0, size_t(D)}, t0, R);
    load_row_stats(lse_s(st), tgt_s(st), lse, targets, t0, R);
  };
  float acc[DC / 8][4] = {};
  const int vw = v0 + 16 * wp;  // this warp's 16 vocabulary rows of dW
  stream_stages<S>(0, R, load, [&](int, int st) {
    const bf* lt = ltile(st);
    const float* ls = lse_s(st);
    const int32_t* ts = tgt_s(st);
    #pragma unroll
    for (int k = 0; k < kTile / 16; ++k) {
      uint32_t a[4];
      gt_frag<Smem::cols>(a, lt, ls, ts, k, vw, V, dloss);
      pm_kstep<DC>(acc, a, xtile(st), k);
    }
  });
  store_dw<DC>(acc, dw, vw, c0, D, alpha, accumulate);
}

// Hopper (fused_head=3): the same two passes with wgmma (nn/flash_attention_sm90.cuh), blocks of two warpgroups.
// The dx pass is flash attention's Hopper forward with the scores read: each warp's 16 rows of a padded 128 x 64
// logits tile into the accumulator layout (load_scores), the online softmax, then o += P W by wgmma with P from
// registers and a swizzled 64 x DC W tile. The dW pass forms G^T fragments as lce_dw_kernel does, 128 head rows
// a block, and multiplies them by a swizzled 64 x DC x tile by wgmma. Both double-buffered by cp.async.
namespace hopper {
using namespace flash90;

template <int DC>
struct DxSmem {  // two stages of (W tile, swizzled [64 x DC]; logits tile [128 x 64], padded rows)
  using Wt = SwTile<kTile, DC>;
  static constexpr size_t ltile = size_t(kOwn) * Tiles<kTile>::ld * sizeof(bf);
  static constexpr size_t stage = Wt::bytes + ltile, bytes = 2 * stage + 1024;
  static_assert(Wt::bytes % 1024 == 0 && stage % 1024 == 0);  // the swizzled tiles' alignment
};

template <int DC>
__global__ void __launch_bounds__(kThreads, 2)
    lce_dx_partial_kernel(const bf* logits, const bf* w, float* o_part, float2* ml_part, int R, int D, int V, int Vp,
                          int split_cols) {
  using Smem = DxSmem<DC>;
  extern __shared__ __align__(16) char smem_raw[];
  char* base = aligned_smem(smem_raw);
  const auto wt = [&](int st) { return base + st * Smem::stage; };
  const auto lt = [&](int st) { return reinterpret_cast<bf*>(wt(st) + Smem::Wt::bytes); };
  const int c0 = blockIdx.x * DC, r0 = blockIdx.y * kOwn, split = blockIdx.z, wp = threadIdx.x >> 5;
  const int v_begin = split * split_cols, v_end = min(Vp, v_begin + split_cols);
  const int row0 = r0 + 16 * wp;  // warpgroup g's warp w: rows 64 g + 16 w
  OnlineSoftmax<DC> sm;
  const auto load = [&](int st, int v0) {
    load_tile_async<kTile, kOwn, kThreads>(lt(st), HeadRows{logits + v0, size_t(Vp)}, r0, R);
    Smem::Wt::load(wt(st), HeadRows{w + c0, size_t(D)}, v0, Vp);
  };
  stream_tiles<kTile, true>(v_begin, v_end, load, [&](int v0, int st) {
    ScoreTile s;
    load_scores(s, lt(st), wp);
    sm.tile(s, row0, v0, V, false, kLog2e);  // columns >= V masked
    accumulate_pm<kTile, DC>(sm.o, s, wt(st));
  });
  store_split(sm, row0, c0, split, o_part, ml_part, R, D);
}

template <int DC>
struct DwSmem {  // two stages of (x tile, swizzled [64 x DC]; logits tile [64 x 128], padded rows; lse, targets)
  using Xt = SwTile<kTile, DC>;
  static constexpr size_t ltile = size_t(kTile) * Tiles<kOwn>::ld * sizeof(bf);
  static constexpr size_t stage = (Xt::bytes + ltile + kTile * (sizeof(float) + sizeof(int32_t)) + 1023) / 1024 * 1024;
  static constexpr size_t bytes = 2 * stage + 1024;
};

// Block z of the grid's third dimension takes rows [z split_rows, (z + 1) split_rows) and writes (or adds to) the
// [Vp x D] matrix at dw + z Vp D (the row splits of variants 4 and 5, summed by lce_dw_sum_kernel; one split: dW
// itself).
// kOverlap (variant 5): each k16 step's product is issued as soon as its fragment is formed, so that the next
// fragments' exponentials run while the tensor cores work (without it, all four first, then the products).
template <int DC, bool kOverlap>
__global__ void __launch_bounds__(kThreads, 2)
    lce_dw_kernel(const bf* logits, const int32_t* targets, const float* lse, const bf* x, float* dw, int R, int D,
                  int V, int Vp, float dloss, float alpha, bool accumulate, int split_rows) {
  using Smem = DwSmem<DC>;
  extern __shared__ __align__(16) char smem_raw[];
  char* base = aligned_smem(smem_raw);
  const auto xt = [&](int st) { return base + st * Smem::stage; };
  const auto lt = [&](int st) { return reinterpret_cast<bf*>(xt(st) + Smem::Xt::bytes); };
  const auto lse_s = [&](int st) { return reinterpret_cast<float*>(xt(st) + Smem::Xt::bytes + Smem::ltile); };
  const auto tgt_s = [&](int st) { return reinterpret_cast<int32_t*>(lse_s(st) + kTile); };
  const int c0 = blockIdx.x * DC, v0 = blockIdx.y * kOwn, wp = threadIdx.x >> 5;
  const auto load = [&](int st, int t0) {
    load_tile_async<kOwn, kTile, kThreads>(lt(st), HeadRows{logits + v0, size_t(Vp)}, t0, R);
    Smem::Xt::load(xt(st), HeadRows{x + c0, size_t(D)}, t0, R);
    load_row_stats(lse_s(st), tgt_s(st), lse, targets, t0, R);
  };
  float acc[DC / 8][4] = {};
  const int vw = v0 + 16 * wp;  // this warp's 16 vocabulary rows of dW
  const int t_begin = blockIdx.z * split_rows, t_end = min(R, t_begin + split_rows);
  stream_tiles<kTile, true>(t_begin, t_end, load, [&](int, int st) {
    uint32_t a[kTile / 16][4];
    if constexpr (kOverlap) {
      fence_registers(flat(acc));
      #pragma unroll
      for (int k = 0; k < kTile / 16; ++k) {
        gt_frag<kOwn>(a[k], lt(st), lse_s(st), tgt_s(st), k, vw, V, dloss);
        fence_u32(a);
        wgmma_fence();
        issue_pm_step<kTile, DC>(acc, a[k], xt(st), k);
        wgmma_commit();
      }
      wait_all();  // a's registers and the stage are free again
      fence_registers(flat(acc));
      fence_u32(a);
    } else {
      #pragma unroll
      for (int k = 0; k < kTile / 16; ++k) gt_frag<kOwn>(a[k], lt(st), lse_s(st), tgt_s(st), k, vw, V, dloss);
      accumulate_frags<kTile, DC>(acc, a, xt(st));
    }
  });
  store_dw<DC>(acc, dw + size_t(blockIdx.z) * Vp * D, vw, c0, D, alpha, accumulate);
}
}  // namespace hopper

// dW = (accumulate ? dW : 0) + the row splits' partial dW in split order; n4 = Vp D / 4. Traffic: (splits + 1 or 2)
// x 4 Vp D bytes.
__global__ void lce_dw_sum_kernel(const float4* part, float4* dw, size_t n4, int splits, bool accumulate) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n4; i += size_t(gridDim.x) * blockDim.x) {
    float4 s = accumulate ? dw[i] : make_float4(0.f, 0.f, 0.f, 0.f);
    for (int z = 0; z < splits; ++z) {
      const float4 p = part[size_t(z) * n4 + i];
      s.x += p.x, s.y += p.y, s.z += p.z, s.w += p.w;
    }
    dw[i] = s;
  }
}

// Blocks of kernel `Kernel` that fit on an SM at once (asked of the runtime once per kernel).
template <auto Kernel>
int occupancy(int threads, size_t smem) {
  static const int n = [&] {
    allow_smem(reinterpret_cast<const void*>(Kernel), smem, "linear cross-entropy kernel");
    int blocks = 0;
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, Kernel, threads, smem),
          "cudaOccupancyMaxActiveBlocksPerMultiprocessor(linear cross-entropy kernel)");
    return std::max(1, blocks);
  }();
  return n;
}

// The dx pass's vocabulary splits and their scratch (slot 5): as many blocks as fit at once (per_sm an SM,
// `blocks` a split), each split whole 64-column tiles (a second, partial wave would take as long as the first).
// The slot starts with `dw_floats` for the dW pass's row splits (dw_part).
struct Splits {
  int count, cols;
  float* dw_part;
  float* o_part;
  float2* ml_part;
  float* lse;
};
Splits plan_splits(Context& ctx, int per_sm, int blocks, int R, int D, int Vp, size_t dw_floats) {
  const int col_tiles = Vp / kTile, want = std::min(std::max(1, per_sm * sm_count() / blocks), col_tiles);
  const int split_tiles = (col_tiles + want - 1) / want;
  Splits sp{(col_tiles + split_tiles - 1) / split_tiles, split_tiles * kTile, nullptr, nullptr, nullptr, nullptr};
  char* scratch = static_cast<char*>(
      ctx.scratch(5, sizeof(float) * (dw_floats + size_t(sp.count) * R * D + 2 * size_t(sp.count) * R + R)));
  sp.dw_part = reinterpret_cast<float*>(scratch);
  sp.o_part = sp.dw_part + dw_floats;  // dw_floats: a multiple of 4 (16-byte rows follow)
  sp.ml_part = reinterpret_cast<float2*>(sp.o_part + size_t(sp.count) * R * D);
  sp.lse = reinterpret_cast<float*>(sp.ml_part + size_t(sp.count) * R);
  return sp;
}

// The dx pass (kernel variant `variant`) and the merge of its splits: losses, dx and the lse the dW pass reads
// (with the scratch that holds it, and dw_floats for the dW pass).
template <int DC>
Splits dx_pass(int variant, Context& ctx, const bf* logits, const int32_t* targets, const bf* w, float* losses, bf* dx,
               int R, int D, int V, int Vp, float alpha, float dloss, size_t dw_floats) {
  const auto run = [&](auto kernel, int threads, int rows, size_t smem, int per_sm) {
    const int groups = D / DC, row_tiles = (R + rows - 1) / rows;
    const Splits sp = plan_splits(ctx, per_sm, groups * row_tiles, R, D, Vp, dw_floats);
    allow_smem(reinterpret_cast<const void*>(kernel), smem, "lce_dx_partial_kernel");
    kernel<<<dim3(groups, row_tiles, sp.count), threads, smem, ctx.stream>>>(logits, w, sp.o_part, sp.ml_part, R, D,
                                                                             V, Vp, sp.cols);
    check_launch("lce_dx_partial_kernel");
    constexpr int kRowsPerBlock = 8;
    lce_combine_kernel<<<(R + kRowsPerBlock - 1) / kRowsPerBlock, 32 * kRowsPerBlock, 0, ctx.stream>>>(
        sp.o_part, sp.ml_part, logits, targets, w, losses, sp.lse, dx, R, D, V, Vp, sp.count, alpha * dloss);
    check_launch("lce_combine_kernel");
    return sp;
  };
  if (variant >= 3) {
    constexpr auto kernel = hopper::lce_dx_partial_kernel<DC>;
    constexpr size_t smem = hopper::DxSmem<DC>::bytes;
    return run(kernel, flash90::kThreads, flash90::kOwn, smem, occupancy<kernel>(flash90::kThreads, smem));
  }
  const auto mma = [&]<int W, int S>() {
    using Smem = DxSmem<DC, W, S>;
    constexpr auto kernel = lce_dx_partial_kernel<DC, W, S>;
    return run(kernel, 32 * W, Smem::rows, Smem::bytes, occupancy<kernel>(32 * W, Smem::bytes));
  };
  if (variant == 2) return mma.template operator()<8, 3>();
  return mma.template operator()<4, 2>();
}

// Row splits of the Hopper dW pass under variants 4 and 5: the fewest (1-4) that leave its last wave of `blocks` at
// most a tenth empty (`slots` blocks a wave), else the emptiest-last-wave's fewest; then as many as its whole
// 64-row tiles per split need (no empty split). The partial sums' extra traffic is not weighed against the tail
// it saves.
int dw_row_splits(int blocks, int slots, int R) {
  const int tiles = (R + kTile - 1) / kTile, most = std::clamp(tiles, 1, 4);
  int best = 1;
  double best_idle = 1e30;
  for (int r = 1; r <= most; ++r) {
    const double waves = double(blocks) * r / slots, idle = std::ceil(waves) / waves - 1;
    if (idle < best_idle) best = r, best_idle = idle;
    if (idle <= 0.1) break;
  }
  const int per_split = (tiles + best - 1) / best;
  return (tiles + per_split - 1) / per_split;
}

// The dW pass (kernel variant `variant`; the 128-row blocks of 2-5 where they tile Vp; under 4 and 5 the Hopper pass's
// rows in `row_splits` parts, each into dw_part, then summed into dW in order).
template <int DC>
void dw_pass(int variant, Context& ctx, const bf* logits, const int32_t* targets, const float* lse, const bf* x,
             float* dw, float* dw_part, int row_splits, int R, int D, int V, int Vp, float alpha, float dloss,
             bool accumulate) {
  const auto run = [&](auto kernel, int threads, int cols, size_t smem, const char* name) {
    allow_smem(reinterpret_cast<const void*>(kernel), smem, name);
    kernel<<<dim3(D / DC, Vp / cols), threads, smem, ctx.stream>>>(logits, targets, lse, x, dw, R, D, V, Vp, dloss,
                                                                   alpha, accumulate);
    check_launch(name);
  };
  const bool wide = Vp % 128 == 0;
  if (variant >= 3 && wide) {
    const auto kernel = variant == 5 ? hopper::lce_dw_kernel<DC, true> : hopper::lce_dw_kernel<DC, false>;
    constexpr size_t smem = hopper::DwSmem<DC>::bytes;
    allow_smem(reinterpret_cast<const void*>(kernel), smem, "lce_dw_kernel (hopper)");
    const int tiles = (R + kTile - 1) / kTile, split_rows = (tiles + row_splits - 1) / row_splits * kTile;
    const bool split = row_splits > 1;
    kernel<<<dim3(D / DC, Vp / flash90::kOwn, row_splits), flash90::kThreads, smem, ctx.stream>>>(
        logits, targets, lse, x, split ? dw_part : dw, R, D, V, Vp, dloss, alpha, split ? false : accumulate,
        split_rows);
    check_launch("lce_dw_kernel (hopper)");
    if (!split) return;
    const size_t n4 = size_t(Vp) * D / 4;
    lce_dw_sum_kernel<<<unsigned(std::min<size_t>((n4 + 255) / 256, 4 * size_t(sm_count()))), 256, 0, ctx.stream>>>(
        reinterpret_cast<const float4*>(dw_part), reinterpret_cast<float4*>(dw), n4, row_splits, accumulate);
    return check_launch("lce_dw_sum_kernel");
  }
  if (variant == 2 && wide)
    return run(lce_dw_kernel<DC, 8, 3>, 256, DwSmem<DC, 8, 3>::cols, DwSmem<DC, 8, 3>::bytes, "lce_dw_kernel");
  run(lce_dw_kernel<DC, 4, 2>, 128, DwSmem<DC, 4, 2>::cols, DwSmem<DC, 4, 2>::bytes, "lce_dw_kernel");
}

template <int DC>
void launch(int variant, Context& ctx, const bf* logits, const int32_t* targets, const bf* x, const bf* w,
            float* losses, bf* dx, float* dw, int R, int D, int V, int Vp, float alpha, float dloss,
            bool accumulate) {
  int row_splits = 1;
  if (variant >= 4 && dw && Vp % 128 == 0) {
    // Stands for <DC, true> too: the same shared memory, no more registers (ptxas: both 128 at DC = 128; at DC =
    // 64 false 128 and true 92: by registers two 256-thread blocks an SM either way, not three).
    constexpr auto kernel = hopper::lce_dw_kernel<DC, false>;
    const int slots = occupancy<kernel>(flash90::kThreads, hopper::DwSmem<DC>::bytes) * sm_count();
    row_splits = dw_row_splits((D / DC) * (Vp / flash90::kOwn), slots, R);
  }
  const size_t dw_floats = row_splits > 1 ? size_t(row_splits) * Vp * D : 0;
  const Splits sp = dx_pass<DC>(variant, ctx, logits, targets, w, losses, dx, R, D, V, Vp, alpha, dloss, dw_floats);
  if (dw)
    dw_pass<DC>(variant, ctx, logits, targets, sp.lse, x, dw, sp.dw_part, row_splits, R, D, V, Vp, alpha, dloss,
                accumulate);
}
}  // namespace

namespace {
// The fused kernels' variant for this shape: fused_head if set, else 3 (Hopper) at d = 128 with Vp a multiple of
// 128, the one shape where it beat the unfused path (bench/RESULTS.md; at d = 256 and 768 it lost, and with
// another Vp its dW pass would be variant 1's, slower), else 0.
int fused_variant(int D, int Vp) {
  const int v = kernel_variants().fused_head;
  const bool fits = D > 0 && D % 64 == 0 && (D <= 128 || D % 128 == 0) && Vp > 0 && Vp % kTile == 0;
  if (!fits) return 0;
  return v >= 0 ? v : (D == 128 && Vp % 128 == 0 ? 3 : 0);
}
}  // namespace

bool linear_crossentropy_fused(int D, int Vp) { return fused_variant(D, Vp) != 0; }

void linear_crossentropy_backward(Context& ctx, bf16* logits, const int32_t* targets, const bf16* x, const bf16* w,
                                  float* losses, bf16* dx, float* dw, int N, int D, int V, int Vp, float alpha,
                                  float dloss, bool accumulate) {
  if (N <= 0) {
    if (dw && !accumulate) memset_zero(ctx, dw, sizeof(float) * size_t(Vp) * D);
    return;
  }
  MUE_CHECK(V > 0 && V <= Vp, "linear_crossentropy_backward: need 0 < V <= Vp, got V = ", V, ", Vp = ", Vp);
  MUE_CHECK(dx, "linear_crossentropy_backward: dx is required");
  if (!linear_crossentropy_fused(D, Vp) || !aligned16(logits, x, w, dx, dw)) {
    crossentropy_forward_backward(ctx, logits, targets, losses, logits, N, V, Vp, dloss);
    return matmul_backward(ctx, logits, x, w, dx, dw, N, D, Vp, alpha, accumulate);
  }
  // Column groups of D itself up to 128, else of 128 (the groups' blocks read the same logits tiles at about the
  // same time, mostly from L2).
  const int v = fused_variant(D, Vp);
  if (D == 64)
    launch<64>(v, ctx, B(logits), targets, B(x), B(w), losses, B(dx), dw, N, D, V, Vp, alpha, dloss, accumulate);
  else
    launch<128>(v, ctx, B(logits), targets, B(x), B(w), losses, B(dx), dw, N, D, V, Vp, alpha, dloss, accumulate);
}

}  // namespace mue::cuda
