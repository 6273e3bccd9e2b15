// Per-sample broadcast add (position embedding): x[b,t,:] += v[t,:].
#include "core/cuda_util.cuh"
#include "nn/ops/add_rows.h"

namespace mue::cuda {

using namespace detail;

namespace {
// x[k] += v[k mod (Tn*D)] over k < B*Tn*D   traffic: read B*Tn*D + Tn*D (v, cached across b), write B*Tn*D bf16
__global__ void add_rows_kernel(bf* x, const bf* v, size_t TD, size_t total) {
  for (size_t k = blockIdx.x * size_t(blockDim.x) + threadIdx.x; k < total; k += size_t(gridDim.x) * blockDim.x)
    x[k] = __float2bfloat16(__bfloat162float(x[k]) + __bfloat162float(v[k % TD]));
}
}  // namespace

void add_rows(Context& ctx, bf16* x, const bf16* v, int B_, int Tn, int D) {
  if (B_ <= 0 || Tn <= 0 || D <= 0) return;
  const size_t TD = size_t(Tn) * size_t(D), total = size_t(B_) * TD;
  add_rows_kernel<<<grid_for(total, 256), 256, 0, ctx.stream>>>(B(x), B(v), TD, total);
  check_launch("add_rows_kernel");
}

}  // namespace mue::cuda
