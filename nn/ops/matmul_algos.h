// A timing tool, not on the training path: the three GEMMs of nn/matmul.cu at one shape, through cuBLAS's default
// (what training runs) and through each algorithm cuBLASLt's heuristic offers for the same product, to see what
// the default leaves on the table. `mue bench PRESET --head-gemms` runs it on the LM head's shape (issue 26: at
// the campaign's point the head's GEMMs are most of a step, bench/RESULTS.md).
#pragma once
#include <string>
#include <vector>

#include "core/cuda_context.h"  // empty without CUDA

#ifdef MUE_HAVE_CUDA
namespace mue::cuda {

inline constexpr const char* kGemmDefault = "cublasGemmEx default";  // GemmTiming::algo of matmul.cu's own call

struct GemmTiming {
  std::string gemm;         // forward (y = x W^T), dx (= dy W) or dw (= dy^T x, fp32)
  std::string algo;         // kGemmDefault or the cuBLASLt algorithm (id, tile, split-k, ...)
  double ms = 0;            // median over the timed launches, an event pair around each
  double max_abs_diff = 0;  // largest |output - the default's output| over the whole output
  double max_abs_out = 0;   // largest |output| of the default, for scale
  bool ok = true;           // false: cuBLASLt refused to run it (nothing timed)
};
// x [N, In], W [Out, In] (and dy [N, Out]) filled with fixed pseudo-random values in [-1, 1); alpha 1, dw with
// beta 0. For each GEMM the default first, then up to max_algos cuBLASLt algorithms; each launched 3 times
// untimed, then `reps` times timed.
std::vector<GemmTiming> time_matmul_algos(Context& ctx, int N, int In, int Out, int max_algos, int reps);

}  // namespace mue::cuda
#endif
