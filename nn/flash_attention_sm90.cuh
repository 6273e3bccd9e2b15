// The wgmma helpers of nn/flash_attention_sm90.cu, shared with the fused LM head's Hopper kernels
// (nn/linear_crossentropy.cu): 128-byte swizzled tiles and their descriptors, P M products with P from registers,
// the warpgroups' ping-pong. A block is two warpgroups (kThreads = 256). Only included by .cu files.
#pragma once
#include "nn/flash_attention.cuh"

namespace mue::cuda::flash90 {

using namespace detail;
using namespace flash;

constexpr int kOwn = 128;  // own rows per block: two warpgroups of 64
constexpr int kThreads = 256;

// A kRows x HD bf16 tile, 128-byte swizzled in HD / 64 blocks of 64 columns (kRows x 128 bytes each).
template <int kRows, int HD>
struct SwTile {
  static constexpr int block = kRows * 128, bytes = kRows * HD * 2;
  // cp.async of rows [t0, t0 + kRows) of src (rows >= T as zeros), by all threads of the block.
  __device__ static void load(char* dst, HeadRows src, int t0, int T) {
    constexpr int chunks = HD / 8;  // 16-byte chunks per row
    static_assert(kRows * chunks % kThreads == 0);
    #pragma unroll
    for (int j = 0; j < kRows * chunks / kThreads; ++j) {
      const int i = threadIdx.x + j * kThreads, r = i / chunks, c = i % chunks, t = t0 + r;
      cp_async16(dst + (c / 8) * block + r * 128 + (((c % 8) ^ (r & 7)) << 4),
                 src.head + size_t(min(t, T - 1)) * src.stride + c * 8, t < T);
    }
  }
  // As a K-major operand: rows row0 .. row0 + 63 (or all N rows) as M or N, the k16 step s of the columns.
  __device__ static uint64_t kmajor(const char* t, int row0, int s) {
    return wgmma_desc(t + (s / 4) * block + row0 * 128 + (s % 4) * 32, 16, 1024);
  }
  // As an N-major operand: rows are k (the k16 step s: rows 16 s ..), columns are N.
  __device__ static uint64_t nmajor(const char* t, int s) { return wgmma_desc(t + s * 2048, block, 1024); }
};

template <int NB>
__device__ inline float (&flat(float (&x)[NB][4]))[NB * 4] {
  return reinterpret_cast<float(&)[NB * 4]>(x);
}
template <int N>
__device__ inline void fence_u32(uint32_t (&v)[N][4]) {
  #pragma unroll
  for (int i = 0; i < N; ++i)
    #pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(v[i][j])::"memory");
}

// s[64 x N] = A B^T over HD, issued and committed (not waited for): A = rows row0 .. row0 + 63 of an own tile,
// B = a streamed tile of N rows.
// Ping-pong between the block's two warpgroups (the schedule of FlashAttention-3): a warpgroup issues products
// only in its turn (barrier 1 + g) and hands the turn over once they are issued, so that one warpgroup's
// softmax runs while the other's products do. Off: no barriers.
template <bool kOn>
struct PingPong {
  int g;
  __device__ void start() const {  // warpgroup 0 has the first turn
    if constexpr (kOn)
      if (g == 1) named_barrier_arrive(1, kThreads);
  }
  __device__ void turn() const {
    if constexpr (kOn) named_barrier(1 + g, kThreads);
  }
  __device__ void pass() const {
    if constexpr (kOn) named_barrier_arrive(2 - g, kThreads);
  }
  __device__ void finish() const {  // takes warpgroup 1's last hand-over
    if constexpr (kOn)
      if (g == 0) named_barrier(1, kThreads);
  }
};
using NoPingPong = PingPong<false>;

template <int N, int HD, bool kPP = false>
__device__ void issue_scores(float (&s)[N / 8][4], const char* a, int row0, const char* b,
                             PingPong<kPP> pp = {0}) {
  fence_registers(flat(s));
  pp.turn();
  wgmma_fence();
  #pragma unroll
  for (int k = 0; k < HD / 16; ++k) {
    const uint64_t da = SwTile<kOwn, HD>::kmajor(a, row0, k), db = SwTile<N, HD>::kmajor(b, 0, k);
    if constexpr (N == 32) wgmma_m64n32k16<0, 0>(flat(s), da, db, k > 0);
    else if constexpr (N == 64) wgmma_m64n64k16<0, 0>(flat(s), da, db, k > 0);
    else wgmma_m64n128k16<0, 0>(flat(s), da, db, k > 0);
  }
  wgmma_commit();
  pp.pass();
}
__device__ inline void wait_all() { wgmma_wait<0>(); }

// The A fragments of P [64 x K] (a score tile in registers) rounded to bf16: column blocks 2k, 2k + 1 are the
// fragment of k step k.
template <int K>
__device__ void to_frags(uint32_t (&a)[K / 16][4], const float (&p)[K / 8][4]) {
  #pragma unroll
  for (int k = 0; k < K / 16; ++k) {
    a[k][0] = pack_bf16(p[2 * k][0], p[2 * k][1]), a[k][1] = pack_bf16(p[2 * k][2], p[2 * k][3]);
    a[k][2] = pack_bf16(p[2 * k + 1][0], p[2 * k + 1][1]), a[k][3] = pack_bf16(p[2 * k + 1][2], p[2 * k + 1][3]);
  }
}
// Issues k16 step k of acc[64 x HD] += P M: a = P's fragment of that step, M a streamed K x HD tile.
template <int K, int HD>
__device__ void issue_pm_step(float (&acc)[HD / 8][4], const uint32_t (&a)[4], const char* m, int k) {
  if constexpr (HD == 64) wgmma_m64n64k16_rs<1>(flat(acc), a, SwTile<K, HD>::nmajor(m, k), 1);
  else wgmma_m64n128k16_rs<1>(flat(acc), a, SwTile<K, HD>::nmajor(m, k), 1);
}
// Issues acc[64 x HD] += P M, P as fragments (between wgmma_fence and the commit).
template <int K, int HD>
__device__ void issue_pm(float (&acc)[HD / 8][4], const uint32_t (&a)[K / 16][4], const char* m) {
  #pragma unroll
  for (int k = 0; k < K / 16; ++k) issue_pm_step<K, HD>(acc, a[k], m, k);
}
// acc += A M, A as fragments (a warpgroup's 64 x K), returning when the products are done (A's registers and the
// tile are free again).
template <int K, int HD, bool kPP = false>
__device__ void accumulate_frags(float (&acc)[HD / 8][4], uint32_t (&a)[K / 16][4], const char* m,
                                 PingPong<kPP> pp = {0}) {
  fence_u32(a);
  fence_registers(flat(acc));
  pp.turn();
  wgmma_fence();
  issue_pm<K, HD>(acc, a, m);
  wgmma_commit();
  pp.pass();
  wait_all();
  fence_registers(flat(acc));
  fence_u32(a);
}
// acc += P M, P a score tile in registers (rounded to bf16 fragments).
template <int K, int HD, bool kPP = false>
__device__ void accumulate_pm(float (&acc)[HD / 8][4], const float (&p)[K / 8][4], const char* m,
                              PingPong<kPP> pp = {0}) {
  uint32_t a[K / 16][4];
  to_frags<K>(a, p);
  accumulate_frags<K, HD>(acc, a, m, pp);
}

// Shared memory rounded up to the 1024-byte alignment of the swizzled tiles.
__device__ inline char* aligned_smem(char* raw) {
  return reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(raw) + 1023) & ~uintptr_t(1023));
}

}  // namespace mue::cuda::flash90
