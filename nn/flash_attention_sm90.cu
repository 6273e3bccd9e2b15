// Flash attention on Hopper (sm_90a), head dims 64 and 128: the algorithm of nn/flash_attention.cu (online
// softmax forward keeping lse; deterministic backward in two launches, dQ per query block and dK/dV per key
// block, each recomputing P) with warpgroup products. A block is two warpgroups (256 threads); each owns 64 rows
// of the block's 128 own rows (queries, or keys for dK/dV) and computes on them with wgmma.mma_async:
//   scores        S[64 x N] = A B^T    both operands in shared memory, K-major (A: own rows, B: streamed rows)
//   accumulation  C[64 x HD] += P M    P from registers (the scores' accumulator rounded to bf16 is the register
//                                       A-fragment layout), M a streamed tile read N-major (its rows are k)
// Tiles of rows x HD live in shared memory 128-byte swizzled in 64-column blocks (core/wgmma.cuh), one layout
// that serves as K-major (rows = M or N) and as N-major (rows = K) operand; cp.async fills them (rows past T as
// zeros), streamed tiles double-buffered through flash::stream_tiles.
//   forward: per 128 queries, 128-key tiles: S = Q K^T, online softmax, O += P V         (2 products)
//   dQ:      per 128 queries, 64-key tiles:  S = Q K^T, dP = dO V^T, dS, dQ += dS K     (3)
//   dK, dV:  per 128 keys, 64-query tiles:   S^T = K Q^T, dP^T = V dO^T, dV += P^T dO, dK += dS^T Q   (4)
// FLOPs and traffic as the mma.sync kernels (2 B H T^2 hd per product, x 1/2 causal); in the backward kernels a
// warpgroup skips a streamed tile that the causal mask hides from all its rows.
#include "core/kernel_variants.h"
#include "nn/flash_attention_sm90.cuh"

namespace mue::cuda {

using namespace detail;
using namespace flash;

namespace {
using namespace flash90;

// The forward's shared memory: the queries, then two stages of a key and a value tile.
template <int HD, int BN_>
struct ForwardSmem {
  static constexpr int BN = BN_;
  using Own = SwTile<kOwn, HD>;
  using St = SwTile<BN, HD>;
  static constexpr size_t bytes = Own::bytes + 4 * St::bytes + 1024;
};

template <int HD, int BN_, int kMinBlocks, bool kPP>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    flash_forward_sm90_kernel(const bf* qkv, bf* out, float* lse, int T, int H, float scale, bool causal) {
  using S = ForwardSmem<HD, BN_>;
  constexpr int BN = S::BN;
  extern __shared__ __align__(16) char smem_raw[];
  char* qt = aligned_smem(smem_raw);
  const auto kt = [&](int st) { return qt + S::Own::bytes + st * 2 * S::St::bytes; };
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kOwn, h = blockIdx.y, b = blockIdx.z;
  const int g = threadIdx.x >> 7, w = (threadIdx.x >> 5) & 3;
  S::Own::load(qt, qkv_rows(qkv, b, T, H, h, HD, 0), q0, T);
  cp_async_commit();  // waited for with the first streamed tile
  const int row0 = q0 + 64 * g + 16 * w;  // this warp's first query
  const float sl2 = scale * kLog2e;
  OnlineSoftmax<HD> softmax;
  const int kend = causal ? min(T, q0 + kOwn) : T;
  const HeadRows krows = qkv_rows(qkv, b, T, H, h, HD, 1), vrows = qkv_rows(qkv, b, T, H, h, HD, 2);
  const auto load_kv = [&](int st, int r0) {
    S::St::load(kt(st), krows, r0, T), S::St::load(kt(st) + S::St::bytes, vrows, r0, T);
  };
  float s[BN / 8][4];
  const PingPong<kPP> pp{g};
  pp.start();
  stream_tiles<BN, true>(0, kend, load_kv, [&](int k0, int st) {
    issue_scores<BN, HD>(s, qt, 64 * g, kt(st), pp);
    wait_all();
    fence_registers(flat(s));
    softmax.tile(s, row0, k0, T, causal, sl2);
    accumulate_pm<BN, HD>(softmax.o, s, kt(st) + S::St::bytes, pp);
  });
  pp.finish();
  softmax.finish(row0, T, lse + (size_t(b) * H + h) * T, out + (size_t(b) * T * H + h) * HD, size_t(H) * HD);
}

// The backward kernels' shared memory: two own tiles, two stages of two streamed 64-row tiles, and (dK/dV) two
// stages of the streamed rows' lse and delta.
template <int HD, int BN_ = 64>
struct BackwardSmem {
  static constexpr int BN = BN_;
  using Own = SwTile<kOwn, HD>;
  using St = SwTile<BN, HD>;
  static constexpr size_t bytes = 2 * Own::bytes + 4 * St::bytes + 4 * BN * sizeof(float) + 1024;
  char* base;
  __device__ char* own(int i) const { return base + i * Own::bytes; }
  __device__ char* a(int st) const { return base + 2 * Own::bytes + 2 * st * St::bytes; }
  __device__ char* b(int st) const { return a(st) + St::bytes; }
  __device__ float* row_floats(int st) const {
    return reinterpret_cast<float*>(base + 2 * Own::bytes + 4 * St::bytes) + 2 * BN * st;
  }
};

// dQ for 128 queries (warpgroup g: rows 64 g ..); K and V stream through in 64-row tiles.
template <int HD>
__global__ void __launch_bounds__(kThreads) flash_dq_sm90_kernel(const bf* qkv, const bf* dout, const bf* out,
                                                                 const float* lse, float* delta, bf* dqkv, int T,
                                                                 int H, float scale, bool causal, bool rope,
                                                                 float log2_theta) {
  using S = BackwardSmem<HD>;
  constexpr int BN = S::BN;
  extern __shared__ __align__(16) char smem_raw[];
  const S sm{aligned_smem(smem_raw)};
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kOwn, h = blockIdx.y, b = blockIdx.z;
  const int g = threadIdx.x >> 7, w = (threadIdx.x >> 5) & 3;
  S::Own::load(sm.own(0), qkv_rows(qkv, b, T, H, h, HD, 0), q0, T);
  S::Own::load(sm.own(1), head_rows(dout, b, T, H, h, HD), q0, T);
  cp_async_commit();
  const int row0 = q0 + 64 * g + 16 * w;
  const float sl2 = scale * kLog2e;
  float* delta_bh = delta + (size_t(b) * H + h) * T;
  warp_delta<HD>(dout, out, delta_bh, b, T, H, h, row0);
  float lq[2], dlt[2];
  #pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int t = row0 + frag_row(2 * i);
    lq[i] = lse[(size_t(b) * H + h) * T + min(t, T - 1)] * kLog2e, dlt[i] = t < T ? delta_bh[t] : 0.f;
  }
  float dq[HD / 8][4] = {};
  float p[BN / 8][4], ds[BN / 8][4];
  const int kend = causal ? min(T, q0 + kOwn) : T;
  const HeadRows krows = qkv_rows(qkv, b, T, H, h, HD, 1), vrows = qkv_rows(qkv, b, T, H, h, HD, 2);
  const auto load_kv = [&](int st, int r0) {
    S::St::load(sm.a(st), krows, r0, T), S::St::load(sm.b(st), vrows, r0, T);
  };
  stream_tiles<BN, true>(0, kend, load_kv, [&](int k0, int st) {
    if (causal && k0 > q0 + 64 * g + 63) return;  // every key after every query of this warpgroup
    issue_scores<BN, HD>(p, sm.own(0), 64 * g, sm.a(st));   // S = Q K^T
    issue_scores<BN, HD>(ds, sm.own(1), 64 * g, sm.b(st));  // dP = dO V^T
    wait_all();
    fence_registers(flat(p)), fence_registers(flat(ds));
    if (k0 + BN > T || (causal && k0 + BN - 1 > row0)) mask_scores(p, row0, k0, T, causal, false);
    #pragma unroll
    for (int n = 0; n < BN / 8; ++n)
      #pragma unroll
      for (int e = 0; e < 4; ++e) {
        p[n][e] = exp2f(fmaf(p[n][e], sl2, -lq[e >> 1]));
        ds[n][e] = p[n][e] * (ds[n][e] - dlt[e >> 1]);
      }
    accumulate_pm<BN, HD>(dq, ds, sm.a(st));  // dQ += dS K
  });
  store_rows<HD>(dqkv + size_t(b) * T * 3 * H * HD + size_t(h) * HD, 3 * size_t(H) * HD, row0, T, dq, scale, rope,
                 log2_theta);
}

// dK, dV for 128 keys (warpgroup g: keys 64 g ..); Q and dO stream through in 64-row tiles with their rows' lse
// and delta (staged in shared memory by cp.async).
template <int HD, int BN_, int kMinBlocks, bool kPP>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    flash_dkdv_sm90_kernel(const bf* qkv, const bf* dout, const float* lse, const float* delta, bf* dqkv, int T,
                           int H, float scale, bool causal, bool rope, float log2_theta) {
  using S = BackwardSmem<HD, BN_>;
  constexpr int BN = S::BN;
  extern __shared__ __align__(16) char smem_raw[];
  const S sm{aligned_smem(smem_raw)};
  const int k0 = blockIdx.x * kOwn, h = blockIdx.y, b = blockIdx.z;
  const int g = threadIdx.x >> 7, w = (threadIdx.x >> 5) & 3;
  S::Own::load(sm.own(0), qkv_rows(qkv, b, T, H, h, HD, 1), k0, T);
  S::Own::load(sm.own(1), qkv_rows(qkv, b, T, H, h, HD, 2), k0, T);
  cp_async_commit();
  const int key0 = k0 + 64 * g + 16 * w;  // this warp's first key
  const float sl2 = scale * kLog2e;
  float dk[HD / 8][4] = {}, dv[HD / 8][4] = {};
  float p[BN / 8][4], ds[BN / 8][4];
  const float* lse_bh = lse + (size_t(b) * H + h) * T;
  const float* delta_bh = delta + (size_t(b) * H + h) * T;
  const HeadRows qrows = qkv_rows(qkv, b, T, H, h, HD, 0), dorows = head_rows(dout, b, T, H, h, HD);
  const auto load_q_do = [&](int st, int r0) {
    S::St::load(sm.a(st), qrows, r0, T), S::St::load(sm.b(st), dorows, r0, T);
    if (threadIdx.x < 2 * BN) {  // threads 0-63: lse, 64-127: delta
      const int i = threadIdx.x & (BN - 1), t = min(r0 + i, T - 1);
      cp_async4(sm.row_floats(st) + threadIdx.x, (threadIdx.x < BN ? lse_bh : delta_bh) + t, r0 + i < T);
    }
  };
  const PingPong<kPP> pp{g};
  pp.start();
  stream_tiles<BN, true>(causal ? k0 : 0, T, load_q_do, [&](int q0, int st) {
    if (causal && q0 + BN - 1 < k0 + 64 * g) {  // every query before every key of this warpgroup
      pp.turn(), pp.pass(), pp.turn(), pp.pass();  // its two turns, without products
      return;
    }
    const float *lse_t = sm.row_floats(st), *delta_t = lse_t + BN;
    pp.turn();
    issue_scores<BN, HD>(p, sm.own(0), 64 * g, sm.a(st));   // S^T = K Q^T
    issue_scores<BN, HD>(ds, sm.own(1), 64 * g, sm.b(st));  // dP^T = V dO^T
    pp.pass();
    wait_all();
    fence_registers(flat(p)), fence_registers(flat(ds));
    if (q0 + BN > T || (causal && q0 < key0 + 16)) mask_scores(p, key0, q0, T, causal, true);
    #pragma unroll
    for (int n = 0; n < BN / 8; ++n)
      #pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = frag_col(n, e);
        p[n][e] = exp2f(fmaf(p[n][e], sl2, -lse_t[c] * kLog2e));
        ds[n][e] = p[n][e] * (ds[n][e] - delta_t[c]);
      }
    uint32_t ap[BN / 16][4], ads[BN / 16][4];
    to_frags<BN>(ap, p), to_frags<BN>(ads, ds);
    fence_u32(ap), fence_u32(ads);
    fence_registers(flat(dv)), fence_registers(flat(dk));
    pp.turn();
    wgmma_fence();
    issue_pm<BN, HD>(dv, ap, sm.b(st));   // dV += P^T dO
    issue_pm<BN, HD>(dk, ads, sm.a(st));  // dK += dS^T Q
    wgmma_commit();
    pp.pass();
    wait_all();
    fence_registers(flat(dv)), fence_registers(flat(dk));
    fence_u32(ap), fence_u32(ads);
  });
  pp.finish();
  const size_t D = size_t(H) * HD;
  bf* base = dqkv + size_t(b) * T * 3 * D + size_t(h) * HD;
  store_rows<HD>(base + D, 3 * D, key0, T, dk, scale, rope, log2_theta);
  store_rows<HD>(base + 2 * D, 3 * D, key0, T, dv, 1.f);
}

void check_grid(int batch, int H) {
  MUE_CHECK(H <= 65535 && batch <= 65535, "flash attention: heads (", H, ") and batch (", batch,
            ") must each be at most 65535");
}

// Tile variants (streamed rows, minimum blocks per SM, ping-pong) of head dim 64, picked by the kernel variant
// flash_sm90_tiles=f,b for measuring them (core/kernel_variants.h; the test runs each): forward f 0: (128, 1),
// 1: (64, 2: it takes 112 registers), 2: (128, 1, ping-pong), 3: (64, 2, ping-pong); dK/dV b 0: (64, 1),
// 1: (32, 2), 2: (32, 1), 3: (64, 1, ping-pong), 4: (32, 2, ping-pong). Head dim 128 always takes 0, 0.
// Default 1, 1: two blocks per SM gave the fastest forward and dK/dV; ping-pong gained nothing over the same
// tiles without it (bench/RESULTS.md). (Forward (64, 3) spills; a forward that issues the next tile's scores
// before the softmax got its wgmma serialized by ptxas.)
static_assert(KernelVariants::kFlashSm90ForwardTiles == 4 && KernelVariants::kFlashSm90DkdvTiles == 5,
              "the tile variants below and those core/kernel_variants.h accepts");
struct Sm90Tiles {
  int forward = 1, dkdv = 1;
};
Sm90Tiles sm90_tiles(int hd) {
  if (hd != 64) return Sm90Tiles{0, 0};
  Sm90Tiles t;
  const KernelVariants& v = kernel_variants();
  if (v.flash_sm90_forward >= 0) t.forward = v.flash_sm90_forward, t.dkdv = v.flash_sm90_dkdv;
  return t;
}

template <int HD, int BN, int kMinBlocks, bool kPP = false>
void forward_variant(Context& ctx, const bf* qkv, bf* out, float* lse, int batch, int T, int H, float scale,
                     bool causal) {
  constexpr size_t smem = ForwardSmem<HD, BN>::bytes;
  const auto kernel = flash_forward_sm90_kernel<HD, BN, kMinBlocks, kPP>;
  allow_smem(reinterpret_cast<const void*>(kernel), smem, "flash_forward_sm90_kernel");
  check_grid(batch, H);
  const dim3 grid((T + kOwn - 1) / kOwn, H, batch);
  kernel<<<grid, kThreads, smem, ctx.stream>>>(qkv, out, lse, T, H, scale, causal);
  check_launch("flash_forward_sm90_kernel");
}

template <int HD, int BN, int kMinBlocks, bool kPP = false>
void dkdv_variant(Context& ctx, const bf* dout, const bf* qkv, const float* lse, const float* delta, bf* dqkv,
                  int batch, int T, int H, float scale, bool causal, bool rope, float log2_theta) {
  constexpr size_t smem = BackwardSmem<HD, BN>::bytes;
  const auto kernel = flash_dkdv_sm90_kernel<HD, BN, kMinBlocks, kPP>;
  allow_smem(reinterpret_cast<const void*>(kernel), smem, "flash_dkdv_sm90_kernel");
  const dim3 grid((T + kOwn - 1) / kOwn, H, batch);
  kernel<<<grid, kThreads, smem, ctx.stream>>>(qkv, dout, lse, delta, dqkv, T, H, scale, causal, rope, log2_theta);
  check_launch("flash_dkdv_sm90_kernel");
}

template <int HD>
void backward_hd(Context& ctx, const bf* dout, const bf* qkv, const bf* out, const float* lse, bf* dqkv, int batch,
                 int T, int H, float scale, bool causal, bool rope, float log2_theta, int variant) {
  float* delta = static_cast<float*>(ctx.scratch(0, sizeof(float) * size_t(batch) * H * T));
  check_grid(batch, H);
  const dim3 grid((T + kOwn - 1) / kOwn, H, batch);
  constexpr size_t smem = BackwardSmem<HD>::bytes;
  allow_smem(reinterpret_cast<const void*>(flash_dq_sm90_kernel<HD>), smem, "flash_dq_sm90_kernel");
  flash_dq_sm90_kernel<HD><<<grid, kThreads, smem, ctx.stream>>>(qkv, dout, out, lse, delta, dqkv, T, H, scale,
                                                                  causal, rope, log2_theta);
  check_launch("flash_dq_sm90_kernel");
  const auto run = [&](auto dkdv) { dkdv(ctx, dout, qkv, lse, delta, dqkv, batch, T, H, scale, causal, rope, log2_theta); };
  if constexpr (HD == 64) {
    if (variant == 1) return run(dkdv_variant<HD, 32, 2>);
    if (variant == 2) return run(dkdv_variant<HD, 32, 1>);
    if (variant == 3) return run(dkdv_variant<HD, 64, 1, true>);
    if (variant == 4) return run(dkdv_variant<HD, 32, 2, true>);
  }
  run(dkdv_variant<HD, 64, 1>);
}
}  // namespace

bool flash_sm90_enabled(int hd) { return kernel_variants().flash_sm90 && (hd == 64 || hd == 128); }

void flash_sm90_forward(Context& ctx, const bf* qkv, bf* out, float* lse, int batch, int T, int H, int hd,
                        float scale, bool causal) {
  const int f = sm90_tiles(hd).forward;
  if (hd == 128) forward_variant<128, 128, 1>(ctx, qkv, out, lse, batch, T, H, scale, causal);
  else if (f == 1) forward_variant<64, 64, 2>(ctx, qkv, out, lse, batch, T, H, scale, causal);
  else if (f == 2) forward_variant<64, 128, 1, true>(ctx, qkv, out, lse, batch, T, H, scale, causal);
  else if (f == 3) forward_variant<64, 64, 2, true>(ctx, qkv, out, lse, batch, T, H, scale, causal);
  else forward_variant<64, 128, 1>(ctx, qkv, out, lse, batch, T, H, scale, causal);
}

void flash_sm90_backward(Context& ctx, const bf* dout, const bf* qkv, const bf* out, const float* lse, bf* dqkv,
                         int batch, int T, int H, int hd, float scale, bool causal, bool rope, float log2_theta) {
  const int b = sm90_tiles(hd).dkdv;
  if (hd == 64) backward_hd<64>(ctx, dout, qkv, out, lse, dqkv, batch, T, H, scale, causal, rope, log2_theta, b);
  else backward_hd<128>(ctx, dout, qkv, out, lse, dqkv, batch, T, H, scale, causal, rope, log2_theta, b);
}

}  // namespace mue::cuda
