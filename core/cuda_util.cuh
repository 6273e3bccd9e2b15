// Small shared pieces of the CUDA path (only included by .cu files): bf16 pointer casts, error checks that turn
// a failed CUDA / cuBLAS call into a one-line mue::Error, launch-size helpers and warp / block reductions.
#pragma once
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <unordered_map>

#include "core/dtype.h"
#include "core/error.h"

namespace mue::cuda::detail {

using bf = __nv_bfloat16;
inline const bf* B(const bf16* p) { return reinterpret_cast<const bf*>(p); }
inline bf* B(bf16* p) { return reinterpret_cast<bf*>(p); }

template <class... Args>
inline void check(cudaError_t e, const Args&... what) {
  if (e != cudaSuccess) {
    (void)cudaGetLastError();  // clear a non-sticky error so later calls report their own
    fail("CUDA error in ", what..., ": ", cudaGetErrorString(e));
  }
}
template <class... Args>
inline void check_cublas(cublasStatus_t s, const Args&... what) {
  if (s != CUBLAS_STATUS_SUCCESS) fail("cuBLAS error in ", what..., ": ", cublasGetStatusString(s));
}
// After a kernel launch: a bad launch configuration shows up here; faults inside kernels show at the next sync.
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel, " launch"); }

// Blocks for a grid-stride loop over n elements (capped: the loop covers the rest).
inline unsigned grid_for(size_t n, int threads, size_t cap = 8192) {
  size_t g = (n + size_t(threads) - 1) / size_t(threads);
  return unsigned(g < cap ? g : cap);
}
// 8 bf16 as one 16-byte vector (rows whose length is a multiple of 8 are read and written this way), and
// its conversion to and from 8 floats.
union Vec8 {
  uint4 u;
  __nv_bfloat162 h[4];
};
__device__ __forceinline__ void unpack8(const uint4& u, float (&f)[8]) {
  const Vec8 v{u};
  #pragma unroll
  for (int k = 0; k < 4; ++k) {
    const float2 p = __bfloat1622float2(v.h[k]);
    f[2 * k] = p.x, f[2 * k + 1] = p.y;
  }
}
__device__ __forceinline__ uint4 pack8(const float (&f)[8]) {
  Vec8 v;
  #pragma unroll
  for (int k = 0; k < 4; ++k) v.h[k] = __floats2bfloat162_rn(f[2 * k], f[2 * k + 1]);
  return v.u;
}
// W consecutive bf16 as floats: W = 8 is one 16-byte vector (rows with a length % 8 == 0), W = 1 a scalar.
template <int W>
__device__ __forceinline__ void load_w(const __nv_bfloat16* p, float (&f)[W]) {
  if constexpr (W == 8) unpack8(*reinterpret_cast<const uint4*>(p), f);
  else f[0] = __bfloat162float(*p);
}
template <int W>
__device__ __forceinline__ void store_w(__nv_bfloat16* p, const float (&f)[W]) {
  if constexpr (W == 8) *reinterpret_cast<uint4*>(p) = pack8(f);
  else *p = __float2bfloat16(f[0]);
}

// True when every pointer is 16-byte aligned (the vector kernels' precondition; activations always are,
// parameter views are as long as every tensor before them has a size that is a multiple of 8).
template <class... P>
inline bool aligned16(const P*... p) {
  return ((reinterpret_cast<uintptr_t>(p) % 16 == 0) && ...);
}
// Streaming multiprocessors of the current device (asked once).
inline int sm_count() {
  static const int n = [] {
    int dev = 0, v = 0;
    check(cudaGetDevice(&dev), "cudaGetDevice");
    check(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute(SM count)");
    return v;
  }();
  return n;
}
// The most dynamic shared memory one block may opt in to (asked once).
inline int max_smem_optin() {
  static const int n = [] {
    int dev = 0, v = 0;
    check(cudaGetDevice(&dev), "cudaGetDevice");
    check(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev),
          "cudaDeviceGetAttribute(MaxSharedMemoryPerBlockOptin)");
    return v;
  }();
  return n;
}
// Raises a kernel's dynamic shared-memory limit to `bytes` (once per kernel and size, not on every launch).
inline void allow_smem(const void* kernel, size_t bytes, const char* name) {
  static std::unordered_map<const void*, size_t> done;
  size_t& d = done[kernel];
  if (d >= bytes) return;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)),
        "cudaFuncSetAttribute(", name, ")");
  d = bytes;
}

// Threads for a one-block-per-row kernel over rows of length D (a multiple of 32).
inline int threads_for_row(int D) { return D >= 1024 ? 1024 : D >= 512 ? 512 : D >= 256 ? 256 : D >= 128 ? 128 : 64; }

struct SumOp {
  template <class T>
  __device__ T operator()(T a, T b) const { return a + b; }
};
struct MaxOp {
  template <class T>
  __device__ T operator()(T a, T b) const { return a > b ? a : b; }
};

template <class T, class Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Reduction over the whole block (blockDim.x a multiple of 32, every thread calls it); every thread gets the
// result. Safe to call several times in a row: it syncs before reusing its shared buffer.
template <class T, class Op>
__device__ __forceinline__ T block_reduce(T v, Op op, T identity) {
  __shared__ T buf[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_reduce(v, op);
  __syncthreads();
  if (lane == 0) buf[warp] = v;
  __syncthreads();
  return warp_reduce(lane < nwarps ? buf[lane] : identity, op);
}

}  // namespace mue::cuda::detail
