// Expert GEMMs of the MoE layer on contiguous row blocks (tokens already permuted by expert), expert e owning
// rows off[e] .. off[e + 1]. Layout conventions as in nn/matmul.cu: x [rows, In], w [E, Out, In], y [rows, Out].
//
// When In and Out are multiples of 8, one hand-written grouped GEMM kernel per product reads the offsets on the
// device (nothing about the routing has to reach the host). Two families of tile configurations:
//  - Hopper (WgmmaCfg): bf16 operands in 128-byte-swizzled shared-memory tiles, read by wgmma.mma_async (A
//    M-major or B N-major where the operand is not K-contiguous); two warpgroups of 64 x BN. The tiles come
//    through a cp.async ring, or (TmaCfg, the default) from the tensor copy engine driven by a third warpgroup.
//  - mma.sync (TileCfg): padded tiles, ldmatrix (transposing where needed) and mma.sync m16n8k16.
// Both accumulate in fp32; k steps of 64.
//   forward  y_e  = alpha x_e W_e^T     (M = rows of e, N = Out, K = In)   one block per (row tile, col tile)
//   backward dx_e = alpha dy_e W_e      (M = rows of e, N = In,  K = Out)  likewise
//            dW_e += alpha dy_e^T x_e   (M = Out, N = In, K = rows of e)   one block per (tile, expert), fp32
// Row tiles of all experts are numbered one after another (a small kernel maps each to its expert); the grid
// covers rows / 128 + E of them (block = row tile * column tiles + column tile, so that the blocks sharing a
// row tile run together and read it from L2), and a block past the last one returns at once. Traffic: each
// operand tile is read once per output tile that needs it (x, dy rows: N / BN times; W_e: once per row tile of e).
// Other widths go through cuBLAS (cublasGemmGroupedBatchedEx over the non-empty experts, with the pointer
// arrays written by a kernel; one cublasGemmEx per expert for operands off a 16-byte boundary), which needs host
// offsets.
#include <algorithm>
#include <vector>

#include <cub/block/block_scan.cuh>
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled

#include "core/cuda_util.cuh"
#include "core/kernel_variants.h"
#include "core/mma.cuh"
#include "core/wgmma.cuh"
#include "moe/ops/expert_matmul.h"

namespace mue::cuda {

using namespace detail;

namespace {
// Up to kSize groups' pointers, passed by value as a kernel parameter (3 KiB, under the 4 KiB limit).
struct PointerChunk {
  static constexpr int kSize = 128;
  const void *a[kSize], *b[kSize];
  void* c[kSize];
  int first, count, groups;
};
__global__ void write_pointers_kernel(PointerChunk c, void** dev) {
  const int i = threadIdx.x;
  if (i >= c.count) return;
  dev[c.first + i] = const_cast<void*>(c.a[i]);
  dev[c.groups + c.first + i] = const_cast<void*>(c.b[i]);
  dev[2 * c.groups + c.first + i] = c.c[i];
}

// Non-empty experts' GEMMs C_e = alpha op(A_e) op(B_e) + beta C_e in one grouped call (or a loop).
struct Groups {
  std::vector<cublasOperation_t> ta, tb;
  std::vector<int> m, n, k, lda, ldb, ldc, size;
  std::vector<float> alpha, beta;
  std::vector<const void*> A, B;
  std::vector<void*> C;
  void add(cublasOperation_t a, cublasOperation_t b, int m_, int n_, int k_, const void* A_, int lda_, const void* B_,
           int ldb_, void* C_, int ldc_, float al, float be) {
    ta.push_back(a), tb.push_back(b), m.push_back(m_), n.push_back(n_), k.push_back(k_);
    A.push_back(A_), lda.push_back(lda_), B.push_back(B_), ldb.push_back(ldb_), C.push_back(C_), ldc.push_back(ldc_);
    alpha.push_back(al), beta.push_back(be), size.push_back(1);
  }
  void run(Context& ctx, cudaDataType_t ctype, const char* what) {
    const int G = int(m.size());
    if (G == 0) return;
    // The grouped call reads its pointers from device arrays and faults on operands off a 16-byte boundary
    // (seen on the H100 with W 2 bytes off), so those take the per-expert loop, where cuBLAS sees each pointer.
    bool aligned = true;
    for (int g = 0; g < G; ++g) aligned = aligned && aligned16(A[g], B[g], C[g]);
    if (aligned) {
      // Device copies of the pointer arrays (A, B, C back to back) in scratch slot 7, written by kernels that
      // take them as launch parameters: stream-ordered, no host sync, nothing on the host to keep alive.
      void** dev = static_cast<void**>(ctx.scratch(7, sizeof(void*) * 3 * G));
      for (int g0 = 0; g0 < G; g0 += PointerChunk::kSize) {
        PointerChunk c{};
        c.first = g0, c.count = std::min(PointerChunk::kSize, G - g0), c.groups = G;
        for (int i = 0; i < c.count; ++i) c.a[i] = A[g0 + i], c.b[i] = B[g0 + i], c.c[i] = C[g0 + i];
        write_pointers_kernel<<<1, PointerChunk::kSize, 0, ctx.stream>>>(c, dev);
        check_launch("write_pointers_kernel");
      }
      cublasStatus_t s = cublasGemmGroupedBatchedEx(
          ctx.cublas, ta.data(), tb.data(), m.data(), n.data(), k.data(), alpha.data(),
          reinterpret_cast<const void* const*>(dev), CUDA_R_16BF, lda.data(),
          reinterpret_cast<const void* const*>(dev + G), CUDA_R_16BF, ldb.data(), beta.data(), dev + 2 * G, ctype,
          ldc.data(), G, size.data(), CUBLAS_COMPUTE_32F);
      if (s == CUBLAS_STATUS_SUCCESS) return;
      if (s != CUBLAS_STATUS_NOT_SUPPORTED) check_cublas(s, "cublasGemmGroupedBatchedEx(", what, ")");
    }
    for (int g = 0; g < G; ++g)
      check_cublas(cublasGemmEx(ctx.cublas, ta[g], tb[g], m[g], n[g], k[g], &alpha[g], A[g], CUDA_R_16BF, lda[g], B[g],
                                CUDA_R_16BF, ldb[g], &beta[g], C[g], ctype, ldc[g], CUBLAS_COMPUTE_32F,
                                CUBLAS_GEMM_DEFAULT),
                   "cublasGemmEx(", what, ")");
  }
};

// ---- the grouped GEMM kernel ----
// A tile configuration: BM x BN output tiles, k steps of BK, kStages-deep cp.async pipeline, WM x WN warps (each
// owns a (BM / WM) x (BN / WN) piece). Several are compiled; the kernel variant expert_tile picks one for
// measuring them (core/kernel_variants.h).
template <int BM_, int BN_, int BK_, int kStages_, int WM_, int WN_>
struct TileCfg {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, kStages = kStages_, WM = WM_, WN = WN_;
  static constexpr int threads = 32 * WM * WN, warp_m = BM / WM, warp_n = BN / WN;
  static constexpr int MI = warp_m / 16, NJ = warp_n / 16;  // ldmatrix.x4 loads per k16 step: A, B
  static constexpr bool kWgmma = false, kTma = false;
  static_assert(warp_m % 16 == 0 && warp_n % 16 == 0 && BK % 16 == 0);
};
// A Hopper configuration: 128 x BN output tiles of two warpgroups, each 64 x BN (one wgmma m64nBNk16 per 16 of
// k), k steps of 64 through a kStages-deep ring of 128-byte-swizzled tiles (core/wgmma.cuh), filled by cp.async
// from the same threads, or (kTma) by the tensor copy engine from a third warpgroup (expert_tma_kernel).
template <int BN_, int kStages_, bool kTma_ = false, bool kPersistent_ = false>
struct WgmmaCfg {
  static constexpr int BM = 128, BN = BN_, BK = 64, kStages = kStages_, threads = kTma_ ? 384 : 256;
  static constexpr bool kWgmma = true, kTma = kTma_, kPersistent = kPersistent_;
  static_assert((BN == 128 || BN == 256) && kStages >= 3 && (kTma || !kPersistent));
};
template <int BN, int kStages, bool kPersistent = false>
using TmaCfg = WgmmaCfg<BN, kStages, true, kPersistent>;

// An operand tile of kRows rows of M or N in shared memory: K-major ([kRows][BK + 8]) or MN-major
// ([BK][kRows + 8]); the 16-byte pad keeps ldmatrix's eight row addresses on distinct banks.
template <bool kKMajor, int kRows, int BK, int kThreads>
struct OperandTile {
  static constexpr int ld = kKMajor ? BK + 8 : kRows + 8;
  static constexpr int elems = kKMajor ? kRows * (BK + 8) : BK * (kRows + 8);
  // cp.async of the tile at (mn0, k0) of a matrix with leading dimension ld_g: element (mn, k) at
  // base[mn * ld_g + k] (K-major) or base[k * ld_g + mn] (MN-major); beyond mn_end or k_end it is zero.
  __device__ static void load(bf* dst, const bf* base, int ld_g, int mn0, int mn_end, int k0, int k_end) {
    #pragma unroll
    for (int i = threadIdx.x; i < kRows * BK / 8; i += kThreads) {
      int mn, k, r, c;
      if constexpr (kKMajor) {
        r = i / (BK / 8), c = (i % (BK / 8)) * 8, mn = mn0 + r, k = k0 + c;
      } else {
        r = i / (kRows / 8), c = (i % (kRows / 8)) * 8, k = k0 + r, mn = mn0 + c;
      }
      const bool ok = mn < mn_end && k < k_end;
      const size_t off = kKMajor ? size_t(ok ? mn : 0) * ld_g + (ok ? k : 0) : size_t(ok ? k : 0) * ld_g + (ok ? mn : 0);
      cp_async16(dst + r * ld + c, base + off, ok);
    }
  }
};

// One GEMM problem of a block: C[M x N] (= or +=) alpha A[M x K] B[K x N]; A(m, k) at a[m * lda + k] when
// kAK (K-major) else a[k * lda + m]; B(k, n) at b[n * ldb + k] when kBK_ else b[k * ldb + n].
struct Problem {
  const bf *a, *b;
  void* c;
  int lda, ldb, ldc, M, N, K, m0, n0;
};

// One stage of a wgmma configuration: the A tile (128 x 64) and the B tile (BN x 64), bf16.
template <class Cfg>
constexpr int wgmma_stage_bytes() {
  return (Cfg::BM + Cfg::BN) * Cfg::BK * 2;
}
// The TMA kernel's bf16 output tile in shared memory: 128 rows at a pitch of BN + 8 elements.
template <class Cfg>
constexpr int kPitch = Cfg::BN + 8;
template <class Cfg>
constexpr int kStagingBytes = Cfg::BM * kPitch<Cfg> * 2;
template <class Cfg, bool kAK, bool kBKmaj>
constexpr size_t gemm_smem() {
  // + 1024: alignment; TMA: a full and an empty barrier per stage
  if constexpr (Cfg::kWgmma)
    return size_t(Cfg::kStages) * (wgmma_stage_bytes<Cfg>() + (Cfg::kTma ? 16 : 0)) +
           (Cfg::kPersistent ? kStagingBytes<Cfg> : 0) + 1024;
  else return size_t(Cfg::kStages) *
         (OperandTile<kAK, Cfg::BM, Cfg::BK, Cfg::threads>::elems + OperandTile<kBKmaj, Cfg::BN, Cfg::BK, Cfg::threads>::elems) *
         sizeof(bf);
}

// C(m, n), C(m, n + 1) of a block's problem (= bf16 or += fp32) when inside the matrix (N is a multiple of 8).
template <bool kAccumulate>
__device__ inline void store_pair(const Problem& p, int m, int n, float v0, float v1) {
  if (m >= p.M || n >= p.N) return;
  if constexpr (kAccumulate) {
    float2* c = reinterpret_cast<float2*>(static_cast<float*>(p.c) + size_t(m) * p.ldc + n);
    const float2 old = *c;
    *c = make_float2(old.x + v0, old.y + v1);
  } else {
    *reinterpret_cast<__nv_bfloat162*>(static_cast<bf*>(p.c) + size_t(m) * p.ldc + n) = __floats2bfloat162_rn(v0, v1);
  }
}

template <class Cfg, bool kAK, bool kBKmaj, bool kAccumulate>
__device__ void mma_tile(const Problem& p, float alpha, char* smem) {
  using TA = OperandTile<kAK, Cfg::BM, Cfg::BK, Cfg::threads>;
  using TB = OperandTile<kBKmaj, Cfg::BN, Cfg::BK, Cfg::threads>;
  constexpr int BK = Cfg::BK, kStages = Cfg::kStages, MI = Cfg::MI, NJ = Cfg::NJ;
  bf* sa = reinterpret_cast<bf*>(smem);
  bf* sb = sa + kStages * TA::elems;
  const int w = threadIdx.x >> 5, l = threadIdx.x & 31;
  const int wm = (w % Cfg::WM) * Cfg::warp_m, wn = (w / Cfg::WM) * Cfg::warp_n;
  float acc[MI][2 * NJ][4] = {};
  const int ktiles = (p.K + BK - 1) / BK;
  const auto load = [&](int kt) {
    const int st = kt % kStages;
    TA::load(sa + st * TA::elems, p.a, p.lda, p.m0, p.M, kt * BK, p.K);
    TB::load(sb + st * TB::elems, p.b, p.ldb, p.n0, p.N, kt * BK, p.K);
  };
  #pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < ktiles) load(s);
    cp_async_commit();
  }
  for (int kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // tile kt is in; every warp is done with the stage the next load overwrites
    if (kt + kStages - 1 < ktiles) load(kt + kStages - 1);
    cp_async_commit();
    const bf* ta = sa + (kt % kStages) * TA::elems;
    const bf* tb = sb + (kt % kStages) * TB::elems;
    #pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      uint32_t af[MI][4], bfr[NJ][4];
      #pragma unroll
      for (int i = 0; i < MI; ++i) {
        const int m = wm + 16 * i;
        if constexpr (kAK)
          ldsm_x4(af[i], ta + (m + (l & 15)) * TA::ld + 16 * kk + (l >> 4) * 8);
        else
          ldsm_x4_trans(af[i], ta + (16 * kk + (l & 7) + (l >> 4) * 8) * TA::ld + m + ((l >> 3) & 1) * 8);
      }
      #pragma unroll
      for (int j = 0; j < NJ; ++j) {  // columns wn + 16 j .. + 15: b0, b1 of column tile 2 j, then of 2 j + 1
        const int n = wn + 16 * j;
        if constexpr (kBKmaj)
          ldsm_x4(bfr[j], tb + (n + (l & 7) + (l >> 4) * 8) * TB::ld + 16 * kk + ((l >> 3) & 1) * 8);
        else
          ldsm_x4_trans(bfr[j], tb + (16 * kk + (l & 7) + ((l >> 3) & 1) * 8) * TB::ld + n + (l >> 4) * 8);
      }
      #pragma unroll
      for (int i = 0; i < MI; ++i)
        #pragma unroll
        for (int j = 0; j < 2 * NJ; ++j)
          mma_bf16(acc[i][j], af[i], bfr[j / 2][2 * (j % 2)], bfr[j / 2][2 * (j % 2) + 1]);
    }
  }
  cp_async_wait<0>();
  // Epilogue: row pairs (c[0], c[1]) and (c[2], c[3]) are adjacent columns (N is a multiple of 8).
  #pragma unroll
  for (int i = 0; i < MI; ++i)
    #pragma unroll
    for (int j = 0; j < 2 * NJ; ++j)
      #pragma unroll
      for (int h = 0; h < 2; ++h)
        store_pair<kAccumulate>(p, p.m0 + wm + 16 * i + (l >> 2) + 8 * h, p.n0 + wn + 8 * j + 2 * (l & 3),
                                alpha * acc[i][j][2 * h], alpha * acc[i][j][2 * h + 1]);
}

// An operand tile of kRows rows of M or N by 64 of K in the 128-byte-swizzled layout that wgmma reads
// (core/wgmma.cuh): K-major, or MN-major in 64-wide blocks. load() copies the tile at (mn0, k0) as
// OperandTile::load does, zero beyond mn_end or k_end (multiples of 8 along the contiguous dimension).
template <bool kKMajor, int kRows, int kThreads>
struct SwizzledTile {
  static constexpr int bytes = kRows * 64 * 2;
  __device__ static void load(char* dst, const bf* base, int ld_g, int mn0, int mn_end, int k0, int k_end) {
    #pragma unroll
    for (int i = threadIdx.x; i < kRows * 8; i += kThreads) {
      int mn, k, r, c, block;
      if constexpr (kKMajor) {
        r = i / 8, c = i % 8, block = 0, mn = mn0 + r, k = k0 + 8 * c;
      } else {
        const int cm = i % (kRows / 8);  // 16-byte chunk along M/N
        r = i / (kRows / 8), c = cm % 8, block = cm / 8, k = k0 + r, mn = mn0 + 8 * cm;
      }
      const bool ok = mn < mn_end && k < k_end;
      const size_t off = kKMajor ? size_t(ok ? mn : 0) * ld_g + (ok ? k : 0) : size_t(ok ? k : 0) * ld_g + (ok ? mn : 0);
      cp_async16(dst + block * 8192 + r * 128 + ((c ^ (r & 7)) << 4), base + off, ok);
    }
  }
};

template <int BN, int kTA, int kTB>
__device__ inline void wgmma_k16(float (&d)[BN / 2], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  if constexpr (BN == 128) wgmma_m64n128k16<kTA, kTB>(d, desc_a, desc_b, accumulate);
  else wgmma_m64n256k16<kTA, kTB>(d, desc_a, desc_b, accumulate);
}

// The products of one k step of 64 for warpgroup-local A (sa: its 64 rows) and B (sb), committed as one group.
template <int BN, bool kAK, bool kBK>
__device__ inline void wgmma_stage(float (&acc)[BN / 2], const char* sa, const char* sb) {
  fence_registers(acc);
  wgmma_fence();
  #pragma unroll
  for (int k = 0; k < 4; ++k) {
    const uint64_t da = kAK ? wgmma_desc(sa + 32 * k, 16, 1024) : wgmma_desc(sa + 2048 * k, 8192, 1024);
    const uint64_t db = kBK ? wgmma_desc(sb + 32 * k, 16, 1024) : wgmma_desc(sb + 2048 * k, 8192, 1024);
    wgmma_k16<BN, kAK ? 0 : 1, kBK ? 0 : 1>(acc, da, db, 1);
  }
  wgmma_commit();
  fence_registers(acc);
}

// gemm_tile for a WgmmaCfg: warpgroup g computes rows 64 g .. 64 g + 63 of the block's 128 x BN tile. Stages are
// refilled two k steps ahead: the stage written at step kt was last read by the products of step kt - 2, which
// every warpgroup has waited for (wgmma_wait<1> at the end of step kt - 1) before the barrier of step kt.
template <class Cfg, bool kAK, bool kBKmaj, bool kAccumulate>
__device__ void wgmma_tile(const Problem& p, float alpha, char* smem_raw) {
  using TA = SwizzledTile<kAK, Cfg::BM, Cfg::threads>;
  using TB = SwizzledTile<kBKmaj, Cfg::BN, Cfg::threads>;
  constexpr int kStages = Cfg::kStages, kStage = wgmma_stage_bytes<Cfg>(), BN = Cfg::BN;
  static_assert(TA::bytes + TB::bytes == kStage && TA::bytes == 2 * 8192);
  char* smem = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  const int g = threadIdx.x >> 7;
  float acc[BN / 2];
  #pragma unroll
  for (int i = 0; i < BN / 2; ++i) acc[i] = 0.f;
  const int ktiles = (p.K + 63) / 64;
  const auto load = [&](int kt) {
    char* st = smem + (kt % kStages) * kStage;
    TA::load(st, p.a, p.lda, p.m0, p.M, kt * 64, p.K);
    TB::load(st + TA::bytes, p.b, p.ldb, p.n0, p.N, kt * 64, p.K);
  };
  #pragma unroll
  for (int s = 0; s < kStages - 2; ++s) {
    if (s < ktiles) load(s);
    cp_async_commit();
  }
  for (int kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<kStages - 3>();
    fence_proxy_async();
    __syncthreads();
    if (kt + kStages - 2 < ktiles) load(kt + kStages - 2);
    cp_async_commit();
    const char* st = smem + (kt % kStages) * kStage;
    wgmma_stage<BN, kAK, kBKmaj>(acc, st + g * 8192, st + TA::bytes);  // this warpgroup's 64 rows of A, all of B
    wgmma_wait<1>();
  }
  wgmma_wait<0>();
  fence_registers(acc);
  cp_async_wait<0>();
  const int w = (threadIdx.x >> 5) & 3, l = threadIdx.x & 31;
  #pragma unroll
  for (int j = 0; j < BN / 8; ++j)
    #pragma unroll
    for (int h = 0; h < 2; ++h)
      store_pair<kAccumulate>(p, p.m0 + 64 * g + 16 * w + (l >> 2) + 8 * h, p.n0 + 8 * j + 2 * (l & 3),
                              alpha * acc[4 * j + 2 * h], alpha * acc[4 * j + 2 * h + 1]);
}

template <class Cfg, bool kAK, bool kBKmaj, bool kAccumulate>
__device__ void gemm_tile(const Problem& p, float alpha, char* smem) {
  if constexpr (Cfg::kWgmma) wgmma_tile<Cfg, kAK, kBKmaj, kAccumulate>(p, alpha, smem);
  else mma_tile<Cfg, kAK, kBKmaj, kAccumulate>(p, alpha, smem);
}

// map[t] = (expert, first row within the expert) of row tile t (bm rows), row tiles of all experts numbered in
// order; (-1, 0) past the last tile. One block of kMapThreads: the experts' first tiles (E + 1 ints in shared
// memory) by a block-wide scan, then every thread binary-searches its tiles. Run before each grouped launch, so
// that a GEMM block finds its work in one load.
constexpr int kMapThreads = 1024;
__global__ void row_tile_map_kernel(const int32_t* off, int E, int bm, int2* map, int bound) {
  extern __shared__ int first[];
  using Scan = cub::BlockScan<int, kMapThreads>;
  __shared__ typename Scan::TempStorage scan;
  int carry = 0;
  for (int e0 = 0; e0 < E; e0 += kMapThreads) {
    const int e = e0 + int(threadIdx.x);
    const int tiles = e < E ? (off[e + 1] - off[e] + bm - 1) / bm : 0;
    int before, total;
    Scan(scan).ExclusiveSum(tiles, before, total);
    if (e < E) first[e] = carry + before;
    carry += total;
    __syncthreads();  // the scan's storage is used again
  }
  if (threadIdx.x == 0) first[E] = carry;
  __syncthreads();
  for (int t = threadIdx.x; t < bound; t += blockDim.x) {
    if (t >= first[E]) {
      map[t] = make_int2(-1, 0);
      continue;
    }
    int lo = 0, hi = E - 1;  // the last expert whose first tile is <= t (empty experts share the next one's)
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (first[mid] <= t) lo = mid;
      else hi = mid - 1;
    }
    map[t] = make_int2(lo, (t - first[lo]) * bm);
  }
}

// c_e [rows of e x N] = alpha a_e [rows x K] W_e, both rows K-major, W_e = w + e K N:
//   forward  y_e  = alpha x_e W_e^T  (K = In,  N = Out): W_e [Out x In] is N x K, read K-major (kWK)
//   backward dx_e = alpha dy_e W_e   (K = Out, N = In):  W_e [Out x In] is K x N, read N-major
template <class Cfg, bool kWK>
__global__ void __launch_bounds__(Cfg::threads) expert_rows_kernel(const bf* a, const bf* w, bf* c,
                                                                    const int32_t* off, const int2* map, int K,
                                                                    int N, float alpha) {
  extern __shared__ __align__(16) char smem[];
  const int ncol = (N + Cfg::BN - 1) / Cfg::BN, tile = int(blockIdx.x) / ncol, col = int(blockIdx.x) % ncol;
  const int e = map[tile].x, row0 = map[tile].y;
  if (e < 0) return;
  const int r0 = off[e];
  const Problem p{a + size_t(r0) * K, w + size_t(e) * K * N, c + size_t(r0) * N, K, kWK ? K : N, N,
                  off[e + 1] - r0, N, K, row0, col * Cfg::BN};
  gemm_tile<Cfg, true, kWK, false>(p, alpha, smem);
}

// dW_e += alpha dy_e^T x_e: A(m = out, k = row) = dy[row, out] (M-major), B(k = row, n = in) = x[row, in]
// (N-major); block (n tile, m tile, expert).
template <class Cfg>
__global__ void __launch_bounds__(Cfg::threads) expert_dw_kernel(const bf* dy, const bf* x, float* dw,
                                                                  const int32_t* off, int In, int Out, float alpha) {
  extern __shared__ __align__(16) char smem[];
  const int e = blockIdx.z, r0 = off[e], rows = off[e + 1] - r0;
  if (rows == 0) return;
  const Problem p{dy + size_t(r0) * Out, x + size_t(r0) * In, dw + size_t(e) * Out * In, Out, In, In,
                  Out, In, rows, int(blockIdx.y) * Cfg::BM, int(blockIdx.x) * Cfg::BN};
  gemm_tile<Cfg, false, false, true>(p, alpha, smem);
}

// ---- the warp-specialized TMA kernel (TmaCfg) ----
// Warpgroups 0 and 1 compute (as in wgmma_tile); warpgroup 2 gives up its registers and one of its threads
// feeds a kStages-deep ring with the tensor copy engine: full[s] completes when stage s has landed, empty[s] when
// all 8 computing warps have finished the products reading it. The copies fetch whole boxes whatever the
// expert's extent; what lies beyond it is harmless: rows of A past the expert's last row and columns of B past N
// only reach outputs that are not stored, and k beyond K meets zeros where the tensor ends there (columns of x or
// dy, rows past the last row); where it does not (dW: the next expert's rows of dy and x; dx: the next expert's
// rows of W), the computing warps zero those k rows before multiplying.
// A block works through output tiles blockIdx.x, + gridDim.x, ... of `tiles`: one each when the grid covers them
// all, several when persistent (kPersistent: one block per SM), where the copier runs ahead into the next tile
// while the computing warpgroups store the last one (from a shared-memory area of their own).
enum class ExpertGemm { forward, dx, dw };

// One output tile: rows r0 .. r0 + M of the expert's (permuted) rows, K deep, its corner (m0, n0).
struct ExpertTile {
  int e, r0, M, K, m0, n0;
};
// Tile t of the launch: 1 when it has work, 0 when it is empty (an expert without rows in dW), -1 past the last
// row tile (the row kernels number their tiles in order, so no later one has work either).
template <class Cfg, ExpertGemm kMode>
__device__ inline int expert_tile(int t, const int32_t* off, const int2* map, int K, int N, int M_dw,
                                  ExpertTile& tl) {
  const int ncol = (N + Cfg::BN - 1) / Cfg::BN;
  if constexpr (kMode == ExpertGemm::dw) {  // t = (expert * m tiles + m tile) * n tiles + n tile
    const int mt = (M_dw + Cfg::BM - 1) / Cfg::BM, mn = t % (mt * ncol);
    tl.e = t / (mt * ncol), tl.r0 = off[tl.e], tl.K = off[tl.e + 1] - tl.r0, tl.M = M_dw;
    tl.m0 = mn / ncol * Cfg::BM, tl.n0 = mn % ncol * Cfg::BN;
    return tl.K > 0;
  } else {  // t = row tile * column tiles + column tile
    const int2 rt = map[t / ncol];
    if (rt.x < 0) return -1;
    tl.e = rt.x, tl.r0 = off[tl.e], tl.M = off[tl.e + 1] - tl.r0, tl.K = K, tl.m0 = rt.y, tl.n0 = t % ncol * Cfg::BN;
    return 1;
  }
}

template <class Cfg, ExpertGemm kMode>
__global__ void __launch_bounds__(384, 1)
    expert_tma_kernel(const __grid_constant__ CUtensorMap tm_a, const __grid_constant__ CUtensorMap tm_b, void* c,
                      const int32_t* off, const int2* map, int K, int N, int M_dw, float alpha, int tiles,
                      bool dw_overwrite) {
  constexpr int BM = Cfg::BM, BN = Cfg::BN, kStages = Cfg::kStages, kStage = wgmma_stage_bytes<Cfg>();
  constexpr bool kDw = kMode == ExpertGemm::dw, kAK = !kDw, kBK = kMode == ExpertGemm::forward;
  extern __shared__ __align__(16) char smem_raw[];
  char* smem = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  char* staging = Cfg::kPersistent ? smem + kStages * kStage : smem;  // the bf16 output tile
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + kStages * kStage + (Cfg::kPersistent ? kStagingBytes<Cfg> : 0));
  uint64_t* empty = full + kStages;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) mbar_init(&full[s], 1), mbar_init(&empty[s], 8);
    mbar_init_fence();
  }
  __syncthreads();
  ExpertTile tl;
  if (threadIdx.x >= 256) {  // the copying warpgroup
    setmaxnreg_dec<40>();    // 40 x 128 + 232 x 256 registers: the 168 x 384 of the launch
    if (threadIdx.x != 256) return;
    int it = 0;  // k steps issued so far, over all tiles: stage it % kStages, its use number it / kStages
    for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
      const int has = expert_tile<Cfg, kMode>(t, off, map, K, N, M_dw, tl);
      if (has < 0) break;
      for (int kt = 0; has && kt < (tl.K + 63) / 64; ++kt, ++it) {
        const int s = it % kStages;
        if (it >= kStages) mbar_wait(&empty[s], (it / kStages - 1) & 1);
        mbar_arrive_expect_tx(&full[s], kStage);
        char* sa = smem + s * kStage;
        char* sb = sa + BM * 64 * 2;
        const int k0 = 64 * kt;
        if constexpr (kDw) {  // A = dy (M-major), B = x (N-major): 64 x 64 boxes at (column, row)
          for (int b = 0; b < BM / 64; ++b) tma_load_2d(sa + b * 8192, &tm_a, tl.m0 + 64 * b, tl.r0 + k0, &full[s]);
          for (int b = 0; b < BN / 64; ++b) tma_load_2d(sb + b * 8192, &tm_b, tl.n0 + 64 * b, tl.r0 + k0, &full[s]);
        } else {
          tma_load_2d(sa, &tm_a, k0, tl.r0 + tl.m0, &full[s]);  // A = x or dy rows (K-major), one 64 x 128 box
          if constexpr (kBK) {
            tma_load_2d(sb, &tm_b, k0, tl.e * N + tl.n0, &full[s]);  // W_e rows n (K-major), one 64 x BN box
          } else {
            for (int b = 0; b < BN / 64; ++b)  // W_e rows k, columns n (N-major)
              tma_load_2d(sb + b * 8192, &tm_b, tl.n0 + 64 * b, tl.e * K + k0, &full[s]);
          }
        }
      }
    }
    return;
  }
  setmaxnreg_inc<232>();
  const int g = threadIdx.x >> 7, w = (threadIdx.x >> 5) & 3, l = threadIdx.x & 31;
  int it = 0;  // k steps consumed so far, as the copier counts them
  for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
    const int has = expert_tile<Cfg, kMode>(t, off, map, K, N, M_dw, tl);
    if (has < 0) break;
    if (!has && !dw_overwrite) continue;  // (overwriting dW, an expert without rows stores its zeros)
    float acc[BN / 2];
    #pragma unroll
    for (int i = 0; i < BN / 2; ++i) acc[i] = 0.f;
    const int ktiles = (tl.K + 63) / 64;
    for (int kt = 0; kt < ktiles; ++kt, ++it) {
      const int s = it % kStages;
      mbar_wait(&full[s], (it / kStages) & 1);
      char* sa = smem + s * kStage + g * 8192;  // this warpgroup's 64 rows of A
      char* sb = smem + s * kStage + BM * 64 * 2;
      if constexpr (kMode != ExpertGemm::forward) {
        // A last k step reaching past the expert's k extent read the next expert's k rows: its token rows (dW:
        // both operands) or its weight rows (dx: W_e+1 in B, against zero columns of dy). Zero them, so that an
        // Inf or NaN there cannot reach this expert through 0 x Inf.
        const int valid = tl.K - 64 * kt;
        if (valid < 64) {
          const auto zero_rows = [&](char* block) {  // k rows valid .. 63 of a 64-row MN-major block
            for (int i = (threadIdx.x & 127) + valid * 8; i < 64 * 8; i += 128)
              *reinterpret_cast<uint4*>(block + i * 16) = make_uint4(0, 0, 0, 0);
          };
          if constexpr (kDw) zero_rows(sa);
          for (int b = g; b < BN / 64; b += 2) zero_rows(sb + b * 8192);  // the warpgroups share B: half each
          fence_proxy_async();
          named_barrier(1, 256);
        }
      }
      wgmma_stage<BN, kAK, kBK>(acc, sa, sb);
      wgmma_wait<1>();
      if (kt > 0 && l == 0) mbar_arrive(&empty[(it - 1) % kStages]);
    }
    wgmma_wait<0>();
    fence_registers(acc);
    if (ktiles > 0 && l == 0) mbar_arrive(&empty[(it - 1) % kStages]);  // the tile's last stage (the copier may wait)
    const int m_first = tl.m0 + 64 * g;  // this warpgroup's first output row
    if constexpr (kDw) {
      float* dw = static_cast<float*>(c) + size_t(tl.e) * tl.M * N;
      #pragma unroll
      for (int j = 0; j < BN / 8; ++j)
        #pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int m = m_first + 16 * w + (l >> 2) + 8 * h, n = tl.n0 + 8 * j + 2 * (l & 3);
          if (m >= tl.M || n >= N) continue;
          float2* out = reinterpret_cast<float2*>(dw + size_t(m) * N + n);
          float2 v = make_float2(alpha * acc[4 * j + 2 * h], alpha * acc[4 * j + 2 * h + 1]);
          if (!dw_overwrite) {  // uniform over the launch
            const float2 old = *out;
            v.x += old.x, v.y += old.y;
          }
          *out = v;
        }
    } else {
      // bf16 output through shared memory, so that each row leaves in 16-byte pieces: the warpgroup's 64 x BN
      // tile at a pitch of BN + 8 elements (the pad puts a warp's 32 pair writes on 32 banks). Persistent: the
      // warpgroup's own area, free once all its threads have stored the last tile; else the stages, free once
      // both warpgroups are done with them.
      if constexpr (Cfg::kPersistent) named_barrier(2 + g, 128);
      else named_barrier(1, 256);
      bf* st = reinterpret_cast<bf*>(staging) + g * 64 * kPitch<Cfg>;
      #pragma unroll
      for (int j = 0; j < BN / 8; ++j)
        #pragma unroll
        for (int h = 0; h < 2; ++h)
          *reinterpret_cast<__nv_bfloat162*>(st + (16 * w + (l >> 2) + 8 * h) * kPitch<Cfg> + 8 * j + 2 * (l & 3)) =
              __floats2bfloat162_rn(alpha * acc[4 * j + 2 * h], alpha * acc[4 * j + 2 * h + 1]);
      named_barrier(2 + g, 128);
      bf* out = static_cast<bf*>(c) + size_t(tl.r0) * N;
      for (int i = threadIdx.x & 127; i < 64 * BN / 8; i += 128) {
        const int r = i / (BN / 8), n = tl.n0 + 8 * (i % (BN / 8)), m = m_first + r;
        if (m < tl.M && n < N)
          *reinterpret_cast<uint4*>(out + size_t(m) * N + n) =
              *reinterpret_cast<const uint4*>(st + r * kPitch<Cfg> + n - tl.n0);
      }
    }
  }
}

// The row-tile map of the offsets (in scratch slot 6) for row tiles of bm, and its length: rows / bm + E bounds
// the tile count.
const int2* row_tile_map(Context& ctx, const int32_t* off_dev, int rows, int E, int bm, unsigned& bound) {
  bound = unsigned((rows + bm - 1) / bm + E);
  int2* map = static_cast<int2*>(ctx.scratch(6, sizeof(int2) * bound));
  const size_t smem = sizeof(int) * (size_t(E) + 1);
  if (smem > 48 * 1024) allow_smem(reinterpret_cast<const void*>(row_tile_map_kernel), smem, "row_tile_map_kernel");
  row_tile_map_kernel<<<1, kMapThreads, smem, ctx.stream>>>(off_dev, E, bm, map, int(bound));
  check_launch("row_tile_map_kernel");
  return map;
}

// A tensor map over a row-major bf16 array [outer x inner] (inner a multiple of 8, base 16-byte aligned) with
// boxes of 64 (inner) x box_outer and the 128-byte swizzle; outside the array the copies deliver zeros. The map
// is passed by value to the kernel, so a captured CUDA graph keeps it.
CUtensorMap tensor_map(const void* base, int inner, int outer, int box_outer) {
  static const auto encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult q{};
    check(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q),
               "cudaGetDriverEntryPointByVersion(cuTensorMapEncodeTiled)");
    MUE_CHECK(fn && q == cudaDriverEntryPointSuccess, "the CUDA driver has no cuTensorMapEncodeTiled");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  CUtensorMap m;
  const cuuint64_t dims[2] = {cuuint64_t(inner), cuuint64_t(outer)}, strides[1] = {cuuint64_t(inner) * 2};
  const cuuint32_t box[2] = {64, cuuint32_t(box_outer)}, unit[2] = {1, 1};
  const CUresult r = encode(&m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(base), dims, strides, box, unit,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  MUE_CHECK(r == CUDA_SUCCESS, "cuTensorMapEncodeTiled failed (CUresult ", int(r), ") for a ", outer, " x ", inner,
            " bf16 array");
  return m;
}

// Blocks of a persistent launch: one per SM, or the kernel variant expert_grid (tests use few, so that every
// block walks several tiles).
int persistent_blocks() {
  const int n = kernel_variants().expert_grid;
  return n > 0 ? n : sm_count();
}

// expert_tma_kernel over `tiles` output tiles: a block each, or one block per SM when persistent.
template <class Cfg, ExpertGemm kMode>
void launch_tma(Context& ctx, int tiles, const CUtensorMap& a, const CUtensorMap& b, void* c, const int32_t* off_dev,
                const int2* map, int K, int N, int M_dw, float alpha, bool dw_overwrite = false) {
  constexpr size_t smem = gemm_smem<Cfg, true, true>();
  static_assert(smem <= 232448, "over the H100's 227 KiB of shared memory per block");
  allow_smem(reinterpret_cast<const void*>(expert_tma_kernel<Cfg, kMode>), smem, "expert_tma_kernel");
  const int grid = Cfg::kPersistent ? std::min(tiles, persistent_blocks()) : tiles;
  expert_tma_kernel<Cfg, kMode><<<grid, Cfg::threads, smem, ctx.stream>>>(a, b, c, off_dev, map, K, N, M_dw, alpha,
                                                                           tiles, dw_overwrite);
  check_launch("expert_tma_kernel");
}

// expert_rows_kernel<Cfg, kWK> (or expert_tma_kernel) over the row tiles of all experts (see there for a, w, c,
// K, N).
template <class Cfg, bool kWK>
void launch_expert_rows(Context& ctx, const bf16* a, const bf16* w, bf16* c, const int32_t* off_dev, int rows, int E,
                        int K, int N, float alpha) {
  unsigned tiles;
  const int2* map = row_tile_map(ctx, off_dev, rows, E, Cfg::BM, tiles);
  const unsigned grid = tiles * unsigned((N + Cfg::BN - 1) / Cfg::BN);
  if constexpr (Cfg::kTma) {
    const CUtensorMap ta = tensor_map(a, K, rows, Cfg::BM);
    const CUtensorMap tb = kWK ? tensor_map(w, K, E * N, Cfg::BN) : tensor_map(w, N, E * K, 64);
    constexpr ExpertGemm kMode = kWK ? ExpertGemm::forward : ExpertGemm::dx;
    return launch_tma<Cfg, kMode>(ctx, int(grid), ta, tb, c, off_dev, map, K, N, 0, alpha);
  } else {
    constexpr size_t smem = gemm_smem<Cfg, true, kWK>();
    static_assert(smem <= 232448);
    allow_smem(reinterpret_cast<const void*>(expert_rows_kernel<Cfg, kWK>), smem, "expert_rows_kernel");
    expert_rows_kernel<Cfg, kWK><<<grid, Cfg::threads, smem, ctx.stream>>>(B(a), B(w), B(c), off_dev, map, K, N, alpha);
    check_launch("expert_rows_kernel");
  }
}

// dW_e += alpha dy_e^T x_e, or (accumulate false) dW_e = that, zero for an expert without rows: the TMA kernel
// stores instead of adding (no memset, no read of dW); the other configurations add to a zeroed dW.
template <class Cfg>
void launch_expert_dw(Context& ctx, const bf16* dy, const bf16* x, float* dw, const int32_t* off_dev, int rows, int E,
                      int In, int Out, float alpha, bool accumulate) {
  const dim3 grid((In + Cfg::BN - 1) / Cfg::BN, (Out + Cfg::BM - 1) / Cfg::BM, E);
  if constexpr (Cfg::kTma) {
    return launch_tma<Cfg, ExpertGemm::dw>(ctx, int(grid.x * grid.y * grid.z), tensor_map(dy, Out, rows, 64),
                                           tensor_map(x, In, rows, 64), dw, off_dev, nullptr, 0, In, Out, alpha,
                                           !accumulate);
  } else {
    if (!accumulate) memset_zero(ctx, dw, sizeof(float) * size_t(E) * Out * In);
    constexpr size_t smem = gemm_smem<Cfg, false, false>();
    static_assert(smem <= 232448);
    allow_smem(reinterpret_cast<const void*>(expert_dw_kernel<Cfg>), smem, "expert_dw_kernel");
    expert_dw_kernel<Cfg><<<grid, Cfg::threads, smem, ctx.stream>>>(B(dy), B(x), dw, off_dev, In, Out, alpha);
    check_launch("expert_dw_kernel");
  }
}

// The compiled configurations. 0: 128 x 128 x 64, 3 stages, 2 x 2 warps of 64 x 64.
using Tile0 = TileCfg<128, 128, 64, 3, 2, 2>;
using Tile1 = TileCfg<128, 128, 32, 4, 2, 4>;   // 8 warps of 64 x 32
using Tile2 = TileCfg<128, 64, 64, 4, 2, 2>;    // 4 warps of 64 x 32, narrow column tiles
using Tile3 = TileCfg<128, 128, 64, 3, 2, 4>;   // 8 warps of 64 x 32, deeper k steps
using Tile4 = TileCfg<64, 128, 64, 4, 2, 2>;    // 4 warps of 32 x 64: less padding on small experts
using Tile5 = WgmmaCfg<128, 4>;                // Hopper: 2 warpgroups of 64 x 128, 4 stages (1 block per SM)
using Tile6 = WgmmaCfg<256, 4>;                // Hopper: 2 warpgroups of 64 x 256
using Tile7 = WgmmaCfg<128, 3>;                // Hopper: 3 stages, 2 blocks per SM
using Tile8 = TmaCfg<256, 4>;                  // Hopper, TMA-fed by a third warpgroup: 64 x 256 per warpgroup
using Tile9 = TmaCfg<128, 6>;                  // 64 x 128 per warpgroup, 6 stages
using Tile10 = TmaCfg<256, 3, true>;           // as 8, persistent: one block per SM going through the tiles
using Tile11 = TmaCfg<128, 5, true>;           // as 9, persistent
constexpr int kTileConfigs = 12;

static_assert(kTileConfigs == KernelVariants::kExpertTileConfigs, "the configurations core/kernel_variants.h accepts");

// The configurations of the row kernels (forward, backward dx) and of the dW kernel: the kernel variant
// expert_tile=r,w when set (read at every call, cheap next to a GEMM, so that tests can try them all), else 10
// (persistent) for the rows and 9 for dW, the fastest on the MoE presets (bench/RESULTS.md). TMA feeding is what
// made the Hopper kernels fast (the mma.sync and cp.async ones lose to it on every preset). Persistent blocks pay
// on the row kernels, whose tiles all cost the same; dW tiles vary with the expert's rows, where one block per
// tile balances better. The expert GEMM test runs 10 and 11 on 1 and 3 blocks (expert_grid), so that each block
// walks many tiles.
// By default a row GEMM at most 128 columns wide (small-moe's dx of the down-projection, N = h = 128) takes 11,
// whose 128-column tile does not compute a second, empty half.
struct TileChoice {
  int rows = 10, dw = 9;
};
TileChoice tile_choice(int n_out) {
  TileChoice t;
  if (n_out <= 128) t.rows = 11;
  const KernelVariants& v = kernel_variants();
  if (v.expert_tile_rows >= 0) t.rows = v.expert_tile_rows, t.dw = v.expert_tile_dw;
  return t;
}
template <class F>
void with_tile(int i, F f) {
  switch (i) {
    case 1: return f(Tile1{});
    case 2: return f(Tile2{});
    case 3: return f(Tile3{});
    case 4: return f(Tile4{});
    case 5: return f(Tile5{});
    case 6: return f(Tile6{});
    case 7: return f(Tile7{});
    case 8: return f(Tile8{});
    case 9: return f(Tile9{});
    case 10: return f(Tile10{});
    case 11: return f(Tile11{});
    default: return f(Tile0{});
  }
}
}  // namespace

int expert_tile_configs() { return kTileConfigs; }

bool expert_gemm_kernel_fits(int In, int Out) { return In % 8 == 0 && Out % 8 == 0; }

namespace {
// The offsets on the host for the cuBLAS path: `off` when the caller has them, else read from the device.
const int32_t* host_offsets(Context& ctx, const int32_t* off, const int32_t* off_dev, int E, std::vector<int32_t>& buf) {
  if (off) return off;
  MUE_CHECK(off_dev, "expert GEMM: no expert offsets, neither on the host nor on the device");
  buf.resize(size_t(E) + 1);
  ctx.synchronize();
  copy_to_host(buf.data(), off_dev, sizeof(int32_t) * buf.size());
  return buf.data();
}

}  // namespace

void expert_matmul_forward(Context& ctx, const bf16* x, const bf16* w, bf16* y, const int32_t* off,
                           const int32_t* off_dev, int rows, int E, int In, int Out, float alpha) {
  MUE_CHECK(In > 0 && Out > 0 && E > 0, "expert GEMM: In, Out and E must be positive, got ", In, ", ", Out, ", ", E);
  if (rows <= 0) return;
  if (off_dev && expert_gemm_kernel_fits(In, Out) && aligned16(x, w, y)) {
    return with_tile(tile_choice(Out).rows, [&](auto cfg) {
      launch_expert_rows<decltype(cfg), true>(ctx, x, w, y, off_dev, rows, E, In, Out, alpha);
    });
  }
  std::vector<int32_t> buf;
  off = host_offsets(ctx, off, off_dev, E, buf);
  Groups g;
  for (int e = 0; e < E; ++e)
    if (const int n = off[e + 1] - off[e])
      g.add(CUBLAS_OP_T, CUBLAS_OP_N, Out, n, In, w + size_t(e) * Out * In, In, x + size_t(off[e]) * In, In,
            y + size_t(off[e]) * Out, Out, alpha, 0.f);
  g.run(ctx, CUDA_R_16BF, "expert forward");
}

void expert_matmul_backward(Context& ctx, const bf16* dy, const bf16* x, const bf16* w, bf16* dx, float* dw,
                            const int32_t* off, const int32_t* off_dev, int rows, int E, int In, int Out,
                            float alpha, bool accumulate) {
  MUE_CHECK(In > 0 && Out > 0 && E > 0, "expert GEMM: In, Out and E must be positive, got ", In, ", ", Out, ", ", E);
  const auto zero_dw = [&] { memset_zero(ctx, dw, sizeof(float) * size_t(E) * Out * In); };
  if (rows <= 0) {
    if (!accumulate) zero_dw();
    return;
  }
  if (off_dev && expert_gemm_kernel_fits(In, Out) && aligned16(dy, x, w, dx, dw)) {
    const TileChoice tc = tile_choice(In);  // dx is In wide
    with_tile(tc.rows, [&](auto cfg) {
      launch_expert_rows<decltype(cfg), false>(ctx, dy, w, dx, off_dev, rows, E, Out, In, alpha);
    });
    return with_tile(tc.dw, [&](auto cfg) {
      launch_expert_dw<decltype(cfg)>(ctx, dy, x, dw, off_dev, rows, E, In, Out, alpha, accumulate);
    });
  }
  std::vector<int32_t> buf;
  off = host_offsets(ctx, off, off_dev, E, buf);
  if (!accumulate) zero_dw();  // the grouped call adds, and skips experts without rows
  Groups gdx, gdw;
  for (int e = 0; e < E; ++e)
    if (const int n = off[e + 1] - off[e]) {
      gdx.add(CUBLAS_OP_N, CUBLAS_OP_N, In, n, Out, w + size_t(e) * Out * In, In, dy + size_t(off[e]) * Out, Out,
              dx + size_t(off[e]) * In, In, alpha, 0.f);
      gdw.add(CUBLAS_OP_N, CUBLAS_OP_T, In, Out, n, x + size_t(off[e]) * In, In, dy + size_t(off[e]) * Out, Out,
              dw + size_t(e) * Out * In, In, alpha, 1.f);
    }
  gdx.run(ctx, CUDA_R_16BF, "expert backward dx");
  gdw.run(ctx, CUDA_R_32F, "expert backward dw");
}

}  // namespace mue::cuda
