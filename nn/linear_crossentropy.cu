// The LM head's loss and backward from its logits L [R, Vp] (= alpha x W^T, bf16, from the forward GEMM) without
// dlogits in memory: dlogits = dloss (softmax - onehot) are formed from L as the kernels read it, so the logits
// cross HBM twice (read by each pass) instead of four times (read and dlogits written by the cross-entropy,
// dlogits read by both backward GEMMs). mma.sync m16n8k16, bf16 in, fp32 accumulate; no atomics.
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
// logits come from HBM, not L2, and one tile in flight per block leaves the passes waiting on memory).
// Columns V..Vp-1 (padding) count as -inf in the softmax and get no gradient. A target outside [0, V) gives a NaN
// loss, a NaN dx row and NaN in dW, as the cross-entropy kernels' NaN dlogits row would.
#include <algorithm>

#include "core/kernel_variants.h"
#include "nn/flash_attention.cuh"
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
  // This split's state of rows row0 + g, + 8: (m, l) once (from the first column group), o at its columns.
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

template <int DC, int W, int S>
__global__ void __launch_bounds__(32 * W, W == 4 ? 0 : 2)
    lce_dw_kernel(const bf* logits, const int32_t* targets, const float* lse, const bf* x, float* dw, int R, int D,
                  int V, int Vp, float dloss, float alpha, bool accumulate) {
  using Smem = DwSmem<DC, W, S>;
  extern __shared__ __align__(16) char smem_raw[];
  const int c0 = blockIdx.x * DC, v0 = blockIdx.y * Smem::cols, wp = threadIdx.x >> 5, l = threadIdx.x & 31;
  const auto ltile = [&](int st) { return reinterpret_cast<bf*>(smem_raw + st * Smem::stage); };
  const auto xtile = [&](int st) { return ltile(st) + Smem::ltile; };
  const auto lse_s = [&](int st) { return reinterpret_cast<float*>(xtile(st) + Smem::xtile); };
  const auto tgt_s = [&](int st) { return reinterpret_cast<int32_t*>(lse_s(st) + kTile); };
  const auto load = [&](int st, int t0) {
    load_tile_async<Smem::cols, kTile, 32 * W>(ltile(st), HeadRows{logits + v0, size_t(Vp)}, t0, R);
    load_tile_async<DC, kTile, 32 * W>(xtile(st), HeadRows{x + c0, size_t(D)}, t0, R);
    if (threadIdx.x < kTile) {  // rows past R: lse 0 and target 0 meet zero-filled logits and x rows (no effect)
      const int t = t0 + threadIdx.x, tc = min(t, R - 1);
      cp_async4(lse_s(st) + threadIdx.x, lse + tc, t < R);
      cp_async4(tgt_s(st) + threadIdx.x, targets + tc, t < R);
    }
  };
  float acc[DC / 8][4] = {};
  const int g = l >> 2, q = l & 3, vw = v0 + 16 * wp;  // this warp's 16 vocabulary rows of dW
  stream_stages<S>(0, R, load, [&](int, int st) {
    const bf* lt = ltile(st);
    const float* ls = lse_s(st);
    const int32_t* ts = tgt_s(st);
    #pragma unroll
    for (int k = 0; k < kTile / 16; ++k) {
      // A = G^T [16 vocabulary x 16 rows]: the logits tile read transposed; a[j] holds vocabulary row
      // g + 8 (j & 1), logit rows 16 k + 2 q + 8 (j >> 1) and + 1.
      uint32_t a[4];
      ldsm_x4_trans(a, lt + (16 * k + (l & 7) + (l >> 4) * 8) * Tiles<Smem::cols>::ld + 16 * wp + ((l >> 3) & 1) * 8);
      #pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int v = vw + g + 8 * (j & 1), t = 16 * k + 2 * q + 8 * (j >> 1);
        const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&a[j]));
        a[j] = pack_bf16(dlogit(f.x, ls[t], v, V, ts[t], dloss), dlogit(f.y, ls[t + 1], v, V, ts[t + 1], dloss));
      }
      pm_kstep<DC>(acc, a, xtile(st), k);
    }
  });
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
void launch(Context& ctx, const bf* logits, const int32_t* targets, const bf* x, const bf* w, float* losses, bf* dx,
            float* dw, int R, int D, int V, int Vp, float alpha, float dloss, bool accumulate) {
  using DxS = DxSmem<DC, W, S>;
  using DwS = DwSmem<DC, W, S>;
  const auto dx_kernel = lce_dx_partial_kernel<DC, W, S>;
  const auto dw_kernel = lce_dw_kernel<DC, W, S>;
  const int groups = D / DC, row_tiles = (R + DxS::rows - 1) / DxS::rows, col_tiles = Vp / kTile;
  allow_smem(reinterpret_cast<const void*>(dx_kernel), DxS::bytes, "lce_dx_partial_kernel");
  // Vocabulary splits: as many blocks as fit at once, each split whole tiles (a second, partial wave of blocks
  // would take as long as the first).
  static const int per_sm = [&] {
    int n = 0;
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, dx_kernel, 32 * W, DxS::bytes),
          "cudaOccupancyMaxActiveBlocksPerMultiprocessor(lce_dx_partial_kernel)");
    return std::max(1, n);
  }();
  const int want = std::max(1, per_sm * sm_count() / (groups * row_tiles));
  const int split_tiles = (col_tiles + std::min(want, col_tiles) - 1) / std::min(want, col_tiles);
  const int splits = (col_tiles + split_tiles - 1) / split_tiles;
  char* scratch = static_cast<char*>(
      ctx.scratch(5, sizeof(float) * (size_t(splits) * R * D + 2 * size_t(splits) * R + R)));
  float* o_part = reinterpret_cast<float*>(scratch);
  float2* ml_part = reinterpret_cast<float2*>(o_part + size_t(splits) * R * D);
  float* lse = reinterpret_cast<float*>(ml_part + size_t(splits) * R);

  dx_kernel<<<dim3(groups, row_tiles, splits), 32 * W, DxS::bytes, ctx.stream>>>(logits, w, o_part, ml_part, R, D, V,
                                                                                 Vp, split_tiles * kTile);
  check_launch("lce_dx_partial_kernel");
  constexpr int kRowsPerBlock = 8;
  lce_combine_kernel<<<(R + kRowsPerBlock - 1) / kRowsPerBlock, 32 * kRowsPerBlock, 0, ctx.stream>>>(
      o_part, ml_part, logits, targets, w, losses, lse, dx, R, D, V, Vp, splits, alpha * dloss);
  check_launch("lce_combine_kernel");
  if (!dw) return;
  allow_smem(reinterpret_cast<const void*>(dw_kernel), DwS::bytes, "lce_dw_kernel");
  dw_kernel<<<dim3(groups, Vp / DwS::cols), 32 * W, DwS::bytes, ctx.stream>>>(logits, targets, lse, x, dw, R, D, V,
                                                                              Vp, dloss, alpha, accumulate);
  check_launch("lce_dw_kernel");
}

template <int DC>
void launch_variant(int variant, Context& ctx, const bf* logits, const int32_t* targets, const bf* x, const bf* w,
                    float* losses, bf* dx, float* dw, int R, int D, int V, int Vp, float alpha, float dloss,
                    bool accumulate) {
  if (variant == 2 && Vp % DwSmem<DC, 8, 3>::cols == 0)  // dW's blocks of 128 vocabulary rows tile Vp
    launch<DC, 8, 3>(ctx, logits, targets, x, w, losses, dx, dw, R, D, V, Vp, alpha, dloss, accumulate);
  else
    launch<DC, 4, 2>(ctx, logits, targets, x, w, losses, dx, dw, R, D, V, Vp, alpha, dloss, accumulate);
}
}  // namespace

bool linear_crossentropy_fused(int D, int Vp) {
  const int v = kernel_variants().fused_head;
  // Off by default: on an H100 both shapes took longer than the unfused path at d = 128, 256 and 768
  // (bench/RESULTS.md, 2026-12-07).
  if (v != 1 && v != 2) return false;
  return D > 0 && D % 64 == 0 && (D <= 128 || D % 128 == 0) && Vp > 0 && Vp % kTile == 0;
}

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
  const int v = kernel_variants().fused_head;
  if (D == 64)
    launch_variant<64>(v, ctx, B(logits), targets, B(x), B(w), losses, B(dx), dw, N, D, V, Vp, alpha, dloss,
                       accumulate);
  else
    launch_variant<128>(v, ctx, B(logits), targets, B(x), B(w), losses, B(dx), dw, N, D, V, Vp, alpha, dloss,
                        accumulate);
}

}  // namespace mue::cuda
