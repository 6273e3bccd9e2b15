// Fused (flash-style) multi-head attention, forward and backward, on qkv [B, T, 3, H, hd] (RoPE applied by
// the op before it) -> out [B, T, H, hd]. No [T, T] matrix ever reaches memory: each warp keeps its 16 x 64 tile
// of scores in registers (mma.sync m16n8k16 accumulators), the softmax is computed online on those registers,
// and the forward keeps only the log-sum-exp lse [B, H, T] (fp32) for the backward. bf16 operands, fp32
// accumulate; shared-memory tiles are padded to hd + 8 columns so that ldmatrix is free of bank conflicts.
//
// Forward (one block = 64 queries of one (b, h); 4 warps x 16 queries): for each 64-key tile (causal: up to
// the diagonal) S = scale Q K^T, running max m and sum l per row, O = O exp(m_old - m_new) + P V.
//   FLOPs 4 B H T^2 hd (x 1/2 causal); traffic: Q, O once, K, V once per query tile (from L2 mostly).
// Only tiles that cross the diagonal or the end of the sequence run the masking code; the forward keeps its
// queries' mma fragments in registers; the dK/dV kernel stages the streamed rows' lse and delta in shared memory
// (read per element from global memory, they stalled it on L2 latency).
// Backward, deterministic (no atomics), two launches:
//   1. per 64-query tile: delta[t] = dO[t] . O[t] of its rows (written for launch 2); for each key tile,
//      recompute P, dP = dO V^T, dS = P (dP - delta), dQ += scale dS K
//   2. per 64-key tile (4 warps x 16 keys): for each query tile, P^T = exp(scale K Q^T - lse),
//      dV += P^T dO, dP^T = V dO^T, dS^T = P^T (dP^T - delta), dK += scale dS^T Q
//   FLOPs 2 (QK^T) + 2 (dO V^T) + 3 (dV, dK, dQ) products of 2 B H T^2 hd each (x 1/2 causal); delta reads O once.
// Streamed tiles are double-buffered: cp.async brings tile i + 1 while tile i is computed.
// head dims 16, 32, 64, 128 (others use the materialized path of nn/attention.cu); on head dims 64 and 128 the
// wgmma kernels of nn/flash_attention_sm90.cu run instead (kernel variant flash_sm90=0: these; core/kernel_variants.h).
#include <cstdint>
#include <initializer_list>

#include "nn/flash_attention.cuh"

namespace mue::cuda {

using namespace detail;
using namespace flash;

namespace {
constexpr int kTile = 64;         // queries and keys per tile
constexpr int kWarps = 4;         // 16 rows per warp
constexpr int kThreads = kWarps * 32;

static_assert(kTile == kStreamRows && kThreads == kStreamThreads, "the shared tile helpers' sizes");
// The block's own tile, loaded before anything is streamed (waits for its copies).
template <int HD>
__device__ void load_tile(bf* dst, HeadRows src, int t0, int T) {
  load_tile_async<HD>(dst, src, t0, T);
  cp_async_commit();
  cp_async_wait<0>();
}

// A 16 x 64 tile of scores: 8 accumulators of 8 columns each.
using ScoreTile = float[kTile / 8][4];
// c += A_k B_k^T for one 16-wide k step: A_k a fragment, B a padded 64 x HD smem tile.
template <int HD>
__device__ void abt_kstep(ScoreTile& c, const uint32_t (&af)[4], const bf* b, int k) {
  constexpr int ld = Tiles<HD>::ld;
  const int l = threadIdx.x & 31;
  #pragma unroll
  for (int n = 0; n < kTile / 16; ++n) {  // B rows 16n..16n+15: b0, b1 of column tile 2n, then of 2n + 1
    uint32_t bfr[4];
    ldsm_x4(bfr, b + (16 * n + (l & 7) + (l >> 4) * 8) * ld + k * 16 + ((l >> 3) & 1) * 8);
    mma_bf16(c[2 * n], af, bfr[0], bfr[1]);
    mma_bf16(c[2 * n + 1], af, bfr[2], bfr[3]);
  }
}
__device__ inline void zero(ScoreTile& c) {
  #pragma unroll
  for (int n = 0; n < kTile / 8; ++n) c[n][0] = c[n][1] = c[n][2] = c[n][3] = 0.f;
}
// c = A B^T with A given as fragments held in registers (the forward's queries: the same for every key tile).
template <int HD>
__device__ void warp_abt(ScoreTile& c, const AFrags<HD>& af, const bf* b) {
  zero(c);
  #pragma unroll
  for (int k = 0; k < HD / 16; ++k) abt_kstep<HD>(c, af[k], b, k);
}
// c = A B^T with A the 16 rows of a padded smem tile starting at `a` (loaded per k step: fewer live registers).
template <int HD>
__device__ void warp_abt(ScoreTile& c, const bf* a, const bf* b) {
  const int l = threadIdx.x & 31;
  zero(c);
  #pragma unroll
  for (int k = 0; k < HD / 16; ++k) {
    uint32_t af[4];
    ldsm_x4(af, a + (l & 15) * Tiles<HD>::ld + k * 16 + (l >> 4) * 8);
    abt_kstep<HD>(c, af, b, k);
  }
}

// Shared-memory layout: the block's own tiles own(0 .. Own-1); two stages of streamed tile pairs a(s), b(s); with
// RowFloats (dK/dV) two stages of 2 x 64 per-row floats after them (the streamed rows' lse and delta).
template <int HD, int Own, bool RowFloats = false>
struct Smem {
  static constexpr size_t tile = size_t(kTile) * Tiles<HD>::ld;
  static constexpr size_t bytes = (Own + 4) * tile * sizeof(bf) + (RowFloats ? 4 * kTile * sizeof(float) : 0);
  bf* tiles;
  __device__ bf* own(int i) const { return tiles + i * tile; }
  __device__ bf* a(int s) const { return tiles + (Own + 2 * s) * tile; }
  __device__ bf* b(int s) const { return tiles + (Own + 1 + 2 * s) * tile; }
  __device__ float* row_floats(int s) const {
    return reinterpret_cast<float*>(tiles + (Own + 4) * tile) + 2 * kTile * s;
  }
  __device__ explicit Smem(char* base) : tiles(reinterpret_cast<bf*>(base)) {}
};

// Register budgets at head dim 64: 3 blocks per SM for dK/dV (168 registers; one more costs a third of its
// blocks), 4 for dQ (128). Other head dims take what they need (0: no minimum).
constexpr int min_blocks_at_64(int hd, int blocks) { return hd == 64 ? blocks : 0; }

template <int HD>
__global__ void __launch_bounds__(kThreads) flash_forward_kernel(const bf* qkv, bf* out, float* lse, int T, int H,
                                                                 float scale, bool causal) {
  extern __shared__ __align__(16) char smem_raw[];
  Smem<HD, 1> sm(smem_raw);
  // Heaviest (causal: last) query tiles first, so that the short ones fill the tail.
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kTile, h = blockIdx.y, b = blockIdx.z, w = threadIdx.x >> 5;
  load_tile<HD>(sm.own(0), qkv_rows(qkv, b, T, H, h, HD, 0), q0, T);
  __syncthreads();
  AFrags<HD> qf;  // this warp's 16 queries, kept in registers for every key tile
  load_a<HD>(qf, sm.own(0) + w * 16 * Tiles<HD>::ld);
  const int row0 = q0 + w * 16;  // this warp's first query
  const float sl2 = scale * kLog2e;  // scores in log2 units
  OnlineSoftmax<HD> softmax;
  const int kend = causal ? min(T, q0 + kTile) : T;
  const HeadRows krows = qkv_rows(qkv, b, T, H, h, HD, 1), vrows = qkv_rows(qkv, b, T, H, h, HD, 2);
  const auto load_kv = [&](int st, int r0) {
    load_tile_async<HD>(sm.a(st), krows, r0, T), load_tile_async<HD>(sm.b(st), vrows, r0, T);
  };
  stream_tiles<kTile>(0, kend, load_kv, [&](int k0, int st) {
    ScoreTile s;
    warp_abt<HD>(s, qf, sm.a(st));
    softmax.tile(s, row0, k0, T, causal, sl2);
    warp_pm<HD>(softmax.o, s, sm.b(st));
  });
  softmax.finish(row0, T, lse + (size_t(b) * H + h) * T, out + (size_t(b) * T * H + h) * HD, size_t(H) * HD);
}

// dK, dV for 64 keys (each warp 16 keys: rows of the K and V tiles own(0), own(1)); Q and dO stream through,
// with the lse and delta of their rows (staged in shared memory by cp.async, not read per element).
template <int HD>
__global__ void __launch_bounds__(kThreads, min_blocks_at_64(HD, 3))
    flash_dkdv_kernel(const bf* qkv, const bf* dout, const float* lse, const float* delta, bf* dqkv, int T, int H,
                      float scale, bool causal, bool rope, float log2_theta) {
  extern __shared__ __align__(16) char smem_raw[];
  Smem<HD, 2, true> sm(smem_raw);
  const int k0 = blockIdx.x * kTile, h = blockIdx.y, b = blockIdx.z, w = threadIdx.x >> 5;
  load_tile_async<HD>(sm.own(0), qkv_rows(qkv, b, T, H, h, HD, 1), k0, T);
  load_tile<HD>(sm.own(1), qkv_rows(qkv, b, T, H, h, HD, 2), k0, T);
  const bf* kw = sm.own(0) + w * 16 * Tiles<HD>::ld;
  const bf* vw = sm.own(1) + w * 16 * Tiles<HD>::ld;
  const int key0 = k0 + w * 16;  // this warp's first key
  const float sl2 = scale * kLog2e;
  float dk[HD / 8][4] = {}, dv[HD / 8][4] = {};
  const float* lse_bh = lse + (size_t(b) * H + h) * T;
  const float* delta_bh = delta + (size_t(b) * H + h) * T;
  const HeadRows qrows = qkv_rows(qkv, b, T, H, h, HD, 0), dorows = head_rows(dout, b, T, H, h, HD);
  const auto load_q_do = [&](int st, int r0) {
    load_tile_async<HD>(sm.a(st), qrows, r0, T), load_tile_async<HD>(sm.b(st), dorows, r0, T);
    const int i = threadIdx.x & (kTile - 1), t = min(r0 + i, T - 1);  // threads 0-63: lse, 64-127: delta
    cp_async4(sm.row_floats(st) + threadIdx.x, (threadIdx.x < kTile ? lse_bh : delta_bh) + t, r0 + i < T);
  };
  stream_tiles<kTile>(causal ? k0 : 0, T, load_q_do, [&](int q0, int st) {
    const bf *qt = sm.a(st), *dot = sm.b(st);
    const float *lse_t = sm.row_floats(st), *delta_t = lse_t + kTile;
    ScoreTile p;  // S^T [16 keys x 64 queries] = K_w Q^T, then P^T = exp(scale S^T - lse[q])
    warp_abt<HD>(p, kw, qt);
    if (q0 + kTile > T || (causal && q0 < key0 + 16)) mask_scores(p, key0, q0, T, causal, true);
    #pragma unroll
    for (int n = 0; n < kTile / 8; ++n)
      #pragma unroll
      for (int e = 0; e < 4; ++e) p[n][e] = exp2f(fmaf(p[n][e], sl2, -lse_t[frag_col(n, e)] * kLog2e));
    warp_pm<HD>(dv, p, dot);  // dV += P^T dO
    ScoreTile ds;             // dP^T = V_w dO^T, then dS^T = P^T (dP^T - delta[q])
    warp_abt<HD>(ds, vw, dot);
    #pragma unroll
    for (int n = 0; n < kTile / 8; ++n)
      #pragma unroll
      for (int e = 0; e < 4; ++e) ds[n][e] = p[n][e] * (ds[n][e] - delta_t[frag_col(n, e)]);
    warp_pm<HD>(dk, ds, qt);  // dK += dS^T Q
  });
  const size_t D = size_t(H) * HD;
  bf* base = dqkv + size_t(b) * T * 3 * D + size_t(h) * HD;
  store_rows<HD>(base + D, 3 * D, key0, T, dk, scale, rope, log2_theta);
  store_rows<HD>(base + 2 * D, 3 * D, key0, T, dv, 1.f);
}

// dQ for 64 queries (each warp 16 queries: rows of the Q and dO tiles own(0), own(1)); K and V stream through.
template <int HD>
__global__ void __launch_bounds__(kThreads, min_blocks_at_64(HD, 4))
    flash_dq_kernel(const bf* qkv, const bf* dout, const bf* out, const float* lse, float* delta, bf* dqkv, int T,
                    int H, float scale, bool causal, bool rope, float log2_theta) {
  extern __shared__ __align__(16) char smem_raw[];
  Smem<HD, 2> sm(smem_raw);
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kTile, h = blockIdx.y, b = blockIdx.z, w = threadIdx.x >> 5;
  load_tile_async<HD>(sm.own(0), qkv_rows(qkv, b, T, H, h, HD, 0), q0, T);
  load_tile<HD>(sm.own(1), head_rows(dout, b, T, H, h, HD), q0, T);
  const bf* qw = sm.own(0) + w * 16 * Tiles<HD>::ld;
  const bf* dow = sm.own(1) + w * 16 * Tiles<HD>::ld;
  const int row0 = q0 + w * 16;
  const float sl2 = scale * kLog2e;
  float* delta_bh = delta + (size_t(b) * H + h) * T;
  warp_delta<HD>(dout, out, delta_bh, b, T, H, h, row0);
  float lq[2], dlt[2];  // lse (log2 units) and delta of rows g, g + 8 (rows beyond T: never stored)
  #pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int t = row0 + frag_row(2 * i);
    lq[i] = lse[(size_t(b) * H + h) * T + min(t, T - 1)] * kLog2e, dlt[i] = t < T ? delta_bh[t] : 0.f;
  }
  float dq[HD / 8][4] = {};
  const int kend = causal ? min(T, q0 + kTile) : T;
  const HeadRows krows = qkv_rows(qkv, b, T, H, h, HD, 1), vrows = qkv_rows(qkv, b, T, H, h, HD, 2);
  const auto load_kv = [&](int st, int r0) {
    load_tile_async<HD>(sm.a(st), krows, r0, T), load_tile_async<HD>(sm.b(st), vrows, r0, T);
  };
  stream_tiles<kTile>(0, kend, load_kv, [&](int k0, int st) {
    const bf *kt = sm.a(st), *vt = sm.b(st);
    ScoreTile p;  // S = Q_w K^T, then P
    warp_abt<HD>(p, qw, kt);
    if (k0 + kTile > T || (causal && k0 + kTile - 1 > row0)) mask_scores(p, row0, k0, T, causal, false);
    #pragma unroll
    for (int n = 0; n < kTile / 8; ++n)
      #pragma unroll
      for (int e = 0; e < 4; ++e) p[n][e] = exp2f(fmaf(p[n][e], sl2, -lq[e >> 1]));
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
void flash_forward_hd(Context& ctx, const bf* qkv, bf* out, float* lse, int batch, int T, int H, float scale,
                      bool causal) {
  const size_t smem = Smem<HD, 1>::bytes;
  allow_smem(reinterpret_cast<const void*>(flash_forward_kernel<HD>), smem, "flash_forward_kernel");
  MUE_CHECK(H <= 65535 && batch <= 65535, "flash attention: heads (", H, ") and batch (", batch,
            ") must each be at most 65535");
  const dim3 grid((T + kTile - 1) / kTile, H, batch);
  flash_forward_kernel<HD><<<grid, kThreads, smem, ctx.stream>>>(qkv, out, lse, T, H, scale, causal);
  check_launch("flash_forward_kernel");
}

template <int HD>
void flash_backward_hd(Context& ctx, const bf* dout, const bf* qkv, const bf* out, const float* lse, bf* dqkv,
                       int batch, int T, int H, float scale, bool causal, bool rope, float log2_theta) {
  float* delta = static_cast<float*>(ctx.scratch(0, sizeof(float) * size_t(batch) * H * T));
  MUE_CHECK(H <= 65535 && batch <= 65535, "flash attention: heads (", H, ") and batch (", batch,
            ") must each be at most 65535");
  const dim3 grid((T + kTile - 1) / kTile, H, batch);
  const size_t smem_dq = Smem<HD, 2>::bytes, smem = Smem<HD, 2, true>::bytes;
  allow_smem(reinterpret_cast<const void*>(flash_dq_kernel<HD>), smem_dq, "flash_dq_kernel");
  flash_dq_kernel<HD><<<grid, kThreads, smem_dq, ctx.stream>>>(qkv, dout, out, lse, delta, dqkv, T, H, scale,
                                                                    causal, rope, log2_theta);
  check_launch("flash_dq_kernel");
  allow_smem(reinterpret_cast<const void*>(flash_dkdv_kernel<HD>), smem, "flash_dkdv_kernel");
  flash_dkdv_kernel<HD><<<grid, kThreads, smem, ctx.stream>>>(qkv, dout, lse, delta, dqkv, T, H, scale, causal,
                                                                   rope, log2_theta);
  check_launch("flash_dkdv_kernel");
}
}  // namespace

bool flash_attention_enabled(int hd) { return hd == 16 || hd == 32 || hd == 64 || hd == 128; }

size_t attention_state_floats(int batch, int T, int H, int hd) {
  const size_t rows = size_t(batch) * H * T;
  return flash_attention_enabled(hd) ? rows : (rows * T + 1) / 2;  // lse, or the bf16 probs of the fallback
}

// The fused kernels' preconditions: 16-byte vectors (cp.async and uint4 loads) and a positive scale (the
// forward takes the row maximum before scaling; masked scores are -inf times the scale).
static void check_flash_inputs(float scale, std::initializer_list<const void*> ptrs) {
  MUE_CHECK(scale > 0.f, "flash attention: the score scale must be positive, got ", scale);
  for (const void* p : ptrs)
    MUE_CHECK(reinterpret_cast<uintptr_t>(p) % 16 == 0, "flash attention: operands must be 16-byte aligned");
}

void attention_forward(Context& ctx, const bf16* qkv, bf16* out, float* state, int batch, int T, int H, int hd,
                       float scale, bool causal) {
  if (batch <= 0 || T <= 0 || H <= 0 || hd <= 0) return;
  if (flash_attention_enabled(hd)) check_flash_inputs(scale, {qkv, out});
  if (flash_attention_enabled(hd) && flash_sm90_enabled(hd))
    return flash_sm90_forward(ctx, B(qkv), B(out), state, batch, T, H, hd, scale, causal);
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
  if (flash_attention_enabled(hd)) check_flash_inputs(scale, {dout, qkv, out, dqkv});
  const bool rope = rope_theta > 0.f;
  const float l2t = rope ? log2f(rope_theta) : 0.f;
  const auto flash = [&](auto run) {
    run(ctx, B(dout), B(qkv), B(out), state, B(dqkv), batch, T, H, scale, causal, rope, l2t);
  };
  if (flash_attention_enabled(hd) && flash_sm90_enabled(hd))
    return flash_sm90_backward(ctx, B(dout), B(qkv), B(out), state, B(dqkv), batch, T, H, hd, scale, causal, rope,
                               l2t);
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
