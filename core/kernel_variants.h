// Kernel variants, for measuring and testing them, in one place. Training runs each kernel's measured default
// (chosen in the kernel's own file, by shape); a variant set here replaces that default where it applies. The
// variants come from one environment variable, read once:
//
//   MUE_KERNEL_VARIANTS="key=value key=value ..."   (items separated by spaces or ';')
//
//   flash_sm90=0|1          0: head dims 64 and 128 on the mma.sync flash kernels (nn/flash_attention.cu)
//                           instead of the Hopper ones (nn/flash_attention_sm90.cu). Default 1.
//   flash_sm90_tiles=f,b    the Hopper kernels' tile variant at head dim 64: forward f in [0, 4), dK/dV b in
//                           [0, 5) (listed at sm90_tiles in nn/flash_attention_sm90.cu). Default 1,1.
//   expert_tile=r,w         the expert GEMMs' tile configuration of the row kernels (forward, dx) and of dW, each
//                           in [0, 12) (listed in moe/expert_matmul.cu). Default 10 (11 for outputs at most 128
//                           wide) and 9.
//   expert_grid=n           blocks of a persistent expert GEMM launch, n > 0 (tests: each block walks many
//                           tiles). Default one per SM.
//   gather_rows=1|2|4|8     rows per block of the MoE permutation (moe/dispatch.cu). Default by the row width.
//   gate_lanes=4|8|16|32|fit  lanes per assignment in the gate's SwiGLU (moe/gate_swiglu.cu). Default fit (by h).
//   fused_head=0|1|2|3|4|5  the LM head's loss and backward from its logits: 0: the cross-entropy kernel writes
//                           dlogits and cuBLAS takes the two backward GEMMs; 1-5: the fused kernels
//                           (nn/linear_crossentropy.cu; mma.sync in 1: blocks of 4 warps, two stages, 2: 8 warps,
//                           three; 3: wgmma, Hopper; 4: 3 with dW's rows split to fill whole waves; 5: 4 with dW's
//                           products issued k step by k step) wherever they take the shape. Default 3 at d = 128
//                           with Vp a multiple of 128, else 0: where 3 beat the unfused path; 4 and 5 gained 1-2%
//                           of the head's backward, nothing of the step (bench/RESULTS.md).
//   eager_zero_grad=0|1     1: a backward starts from a cleared gradient arena and every write adds (the older
//                           way; nn/param_store.h), instead of lazily zeroed gradients. Read when a model is built.
//
// Tests set variants in-process with ScopedKernelVariants (same syntax); scripts/gpu_check.sh (TILE_SWEEP) and
// scripts/attn_variants.sh time them. What each variant measured is in bench/RESULTS.md. The kernels read the
// current set at every launch (a captured CUDA graph keeps what it saw).
#pragma once
#include <string>

namespace mue {

struct KernelVariants {
  // How many variants the kernels compile (each kernel file static_asserts its count against these).
  static constexpr int kFlashSm90ForwardTiles = 4, kFlashSm90DkdvTiles = 5, kExpertTileConfigs = 12;

  bool flash_sm90 = true;
  int flash_sm90_forward = -1, flash_sm90_dkdv = -1;  // -1: the kernel's default
  int expert_tile_rows = -1, expert_tile_dw = -1;     // -1: the kernel's default
  int expert_grid = 0;                                // 0: one block per SM
  int gather_rows = 0;                                // 0: by the row width
  int gate_lanes = 0;                                 // 0: fit (by h)
  int fused_head = -1;                                // -1: the default (by d; nn/linear_crossentropy.cu)
  bool eager_zero_grad = false;
};

// The variants of `spec` (the syntax above); a bad item is a one-line mue::Error that starts with `source`.
KernelVariants parse_kernel_variants(const std::string& spec, const std::string& source = "kernel variants");

// The current variants: those of a live ScopedKernelVariants, else MUE_KERNEL_VARIANTS (parsed at the first
// call; the environment variables it replaced are an error naming it).
const KernelVariants& kernel_variants();

// Replaces the current variants until it goes out of scope (single-threaded use: tests, tools).
class ScopedKernelVariants {
 public:
  explicit ScopedKernelVariants(const KernelVariants& v);
  explicit ScopedKernelVariants(const std::string& spec);
  ~ScopedKernelVariants();
  ScopedKernelVariants(const ScopedKernelVariants&) = delete;
  ScopedKernelVariants& operator=(const ScopedKernelVariants&) = delete;

 private:
  KernelVariants mine_;
  const KernelVariants* previous_;
};

}  // namespace mue
