// cuBLAS's default against cuBLASLt's heuristic algorithms on nn/matmul.cu's three GEMMs (nn/ops/matmul_algos.h).
// The default is matmul.cu itself (matmul_forward, matmul_backward with dx or dw only); each Lt descriptor states
// the product matmul.cu hands cublasGemmEx (same operands, transposes, leading dimensions and output type), so
// that an algorithm found faster here is one matmul.cu could run through cublasLtMatmul; the output difference
// against the default checks that (the GPU test asks for bf16 rounding at most). Each Lt output buffer is
// poisoned (NaN) before the algorithm runs, so one that writes nothing cannot pass.
#include <algorithm>
#include <cstdio>
#include <cmath>
#include <cublasLt.h>

#include "core/cuda_util.cuh"
#include "core/rng.h"
#include "nn/ops/matmul.h"
#include "nn/ops/matmul_algos.h"

namespace mue::cuda {

using namespace detail;

namespace {
constexpr int kMaxAlgos = 64;

__global__ void fill_uniform_kernel(bf* p, size_t n, uint64_t stream) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    p[i] = __float2bfloat16(float(rng_uniform(1, stream, i) * 2 - 1));
}

inline bf16* bf16p(bf* p) { return reinterpret_cast<bf16*>(p); }

// One product C = op(A) op(B) (column-major, as cuBLAS sees matmul.cu's row-major buffers).
struct Gemm {
  const char* name;
  cublasOperation_t ta, tb;
  int m, n, k, lda, ldb, ldc;
  const void *A, *B;
  void* C;
  cudaDataType_t ctype;
  size_t c_elems() const { return size_t(ldc) * n; }
};

struct LtLayouts {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  explicit LtLayouts(const Gemm& g) {
    check_cublas(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
    check_cublas(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &g.ta, sizeof(g.ta)), "TRANSA");
    check_cublas(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &g.tb, sizeof(g.tb)), "TRANSB");
    // stored shapes: op(A) is m x k, op(B) k x n
    const bool ta = g.ta == CUBLAS_OP_T, tb = g.tb == CUBLAS_OP_T;
    check_cublas(cublasLtMatrixLayoutCreate(&a, CUDA_R_16BF, ta ? g.k : g.m, ta ? g.m : g.k, g.lda), "layout A");
    check_cublas(cublasLtMatrixLayoutCreate(&b, CUDA_R_16BF, tb ? g.n : g.k, tb ? g.k : g.n, g.ldb), "layout B");
    check_cublas(cublasLtMatrixLayoutCreate(&c, g.ctype, g.m, g.n, g.ldc), "layout C");
  }
  ~LtLayouts() {
    cublasLtMatrixLayoutDestroy(c), cublasLtMatrixLayoutDestroy(b), cublasLtMatrixLayoutDestroy(a);
    cublasLtMatmulDescDestroy(op);
  }
};

std::string describe(const cublasLtMatmulHeuristicResult_t& r) {
  const cublasLtMatmulAlgo_t& algo = r.algo;
  int32_t id = 0, splitk = 1;
  uint32_t tile = 0, reduction = 0, swizzle = 0, stages = 0, custom = 0;
  uint16_t inner = 0, cluster = 0;
  cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof(id), nullptr);
  cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof(tile), nullptr);
  cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof(splitk), nullptr);
  cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &reduction, sizeof(reduction),
                                       nullptr);
  cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, &swizzle, sizeof(swizzle), nullptr);
  cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof(stages), nullptr);
  cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION, &custom, sizeof(custom), nullptr);
  cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_INNER_SHAPE_ID, &inner, sizeof(inner), nullptr);
  cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &cluster, sizeof(cluster),
                                       nullptr);
  char s[200];
  std::snprintf(s, sizeof(s), "lt id %d tile %u stages %u split-k %d red %u swz %u custom %u inner %u cluster %u ws %zu",
                id, tile, stages, splitk, reduction, swizzle, custom, unsigned(inner), unsigned(cluster),
                r.workspaceSize);
  return s;
}

// Median ms of `reps` launches of run() after 3 untimed ones; an event pair around each.
template <class Run>
double median_ms(Context& ctx, int reps, Run run) {
  for (int i = 0; i < 3; ++i) run();
  std::vector<cudaEvent_t> ev(2 * size_t(reps));
  for (auto& e : ev) check(cudaEventCreate(&e), "cudaEventCreate");
  for (int i = 0; i < reps; ++i) {
    check(cudaEventRecord(ev[2 * i], ctx.stream), "cudaEventRecord");
    run();
    check(cudaEventRecord(ev[2 * i + 1], ctx.stream), "cudaEventRecord");
  }
  check(cudaEventSynchronize(ev.back()), "cudaEventSynchronize");
  std::vector<double> ms(reps);
  for (int i = 0; i < reps; ++i) {
    float t = 0;
    check(cudaEventElapsedTime(&t, ev[2 * i], ev[2 * i + 1]), "cudaEventElapsedTime");
    ms[i] = t;
  }
  for (auto& e : ev) cudaEventDestroy(e);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// The output as doubles on the host (bf16 or fp32).
std::vector<double> host_output(const Gemm& g) {
  const size_t n = g.c_elems();
  std::vector<double> out(n);
  if (g.ctype == CUDA_R_32F) {
    std::vector<float> h(n);
    copy_to_host(h.data(), g.C, n * sizeof(float));
    std::copy(h.begin(), h.end(), out.begin());
  } else {
    std::vector<bf> h(n);
    copy_to_host(h.data(), g.C, n * sizeof(bf));
    for (size_t i = 0; i < n; ++i) out[i] = __bfloat162float(h[i]);
  }
  return out;
}
}  // namespace

std::vector<GemmTiming> time_matmul_algos(Context& ctx, int N, int In, int Out, int max_algos, int reps) {
  MUE_CHECK(N > 0 && In > 0 && Out > 0 && max_algos >= 0 && max_algos <= kMaxAlgos && reps > 0,
            "time_matmul_algos: bad shape or counts (at most ", kMaxAlgos, " algorithms)");
  const size_t nx = size_t(N) * In, nw = size_t(Out) * In, ny = size_t(N) * Out;
  bf* x = static_cast<bf*>(device_alloc(nx * sizeof(bf)));
  bf* w = static_cast<bf*>(device_alloc(nw * sizeof(bf)));
  bf* dy = static_cast<bf*>(device_alloc(ny * sizeof(bf)));
  bf* y = static_cast<bf*>(device_alloc(ny * sizeof(bf)));
  bf* dx = static_cast<bf*>(device_alloc(nx * sizeof(bf)));
  float* dw = static_cast<float*>(device_alloc(nw * sizeof(float)));
  const size_t ws_bytes = size_t(32) << 20;
  void* ws = device_alloc(ws_bytes);
  bf* const inputs[3] = {x, w, dy};
  const size_t sizes[3] = {nx, nw, ny};
  for (int i = 0; i < 3; ++i) {
    fill_uniform_kernel<<<grid_for(sizes[i], 256), 256, 0, ctx.stream>>>(inputs[i], sizes[i], uint64_t(i + 1));
    check_launch("fill_uniform_kernel");
  }
  // matmul.cu's three calls, as it makes them
  const Gemm gemms[] = {
      {"forward", CUBLAS_OP_T, CUBLAS_OP_N, Out, N, In, In, In, Out, w, x, y, CUDA_R_16BF},
      {"dx", CUBLAS_OP_N, CUBLAS_OP_N, In, N, Out, In, Out, In, w, dy, dx, CUDA_R_16BF},
      {"dw", CUBLAS_OP_N, CUBLAS_OP_T, In, Out, N, In, Out, In, x, dy, dw, CUDA_R_32F},
  };
  cublasLtHandle_t lt = nullptr;
  check_cublas(cublasLtCreate(&lt), "cublasLtCreate");
  cublasLtMatmulPreference_t pref = nullptr;
  check_cublas(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
  check_cublas(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes,
                                                    sizeof(ws_bytes)),
               "workspace preference");
  const float one = 1.f, zero = 0.f;
  std::vector<GemmTiming> out;
  for (const Gemm& g : gemms) {
    GemmTiming def{g.name, kGemmDefault};
    const std::string which = g.name;
    const auto run_default = [&] {  // matmul.cu's own call
      if (which == "forward") matmul_forward(ctx, bf16p(x), bf16p(w), bf16p(y), N, In, Out, 1.f);
      if (which == "dx") matmul_backward(ctx, bf16p(dy), bf16p(x), bf16p(w), bf16p(dx), nullptr, N, In, Out, 1.f);
      if (which == "dw") matmul_backward(ctx, bf16p(dy), bf16p(x), bf16p(w), nullptr, dw, N, In, Out, 1.f, false);
    };
    def.ms = median_ms(ctx, reps, run_default);
    check(cudaStreamSynchronize(ctx.stream), "sync");
    const std::vector<double> ref = host_output(g);
    for (double v : ref) def.max_abs_out = std::isnan(v) ? NAN : std::max(def.max_abs_out, std::abs(v));
    out.push_back(def);
    LtLayouts L(g);
    // (a fixed array: nvcc 13.0's front end fails on a std::vector of this struct)
    cublasLtMatmulHeuristicResult_t res[kMaxAlgos] = {};
    int found = 0;
    if (max_algos > 0) {
      const cublasStatus_t st =
          cublasLtMatmulAlgoGetHeuristic(lt, L.op, L.a, L.b, L.c, L.c, pref, max_algos, res, &found);
      if (st != CUBLAS_STATUS_SUCCESS) {  // a row that says so, not silence
        GemmTiming t{g.name, std::string("lt heuristic refused: ") + cublasGetStatusString(st)};
        t.ok = false;
        out.push_back(t);
        found = 0;
      }
    }
    for (int i = 0; i < found; ++i) {
      GemmTiming t{g.name, describe(res[i])};
      t.max_abs_out = def.max_abs_out;
      check(cudaMemsetAsync(g.C, 0xFF, g.c_elems() * (g.ctype == CUDA_R_32F ? 4 : 2), ctx.stream), "poison");
      const auto run_lt = [&] {
        return cublasLtMatmul(lt, L.op, &one, g.A, L.a, g.B, L.b, &zero, g.C, L.c, g.C, L.c, &res[i].algo, ws,
                              ws_bytes, ctx.stream);
      };
      if (res[i].state != CUBLAS_STATUS_SUCCESS || run_lt() != CUBLAS_STATUS_SUCCESS) {
        t.ok = false;
        out.push_back(t);
        continue;
      }
      t.ms = median_ms(ctx, reps, [&] { check_cublas(run_lt(), "cublasLtMatmul(", g.name, ")"); });
      check(cudaStreamSynchronize(ctx.stream), "sync");
      const std::vector<double> o = host_output(g);
      for (size_t e = 0; e < o.size(); ++e) {
        const double d = std::abs(o[e] - ref[e]);
        if (!(d <= t.max_abs_diff)) t.max_abs_diff = d;  // NaN (an element not written) sticks
      }
      out.push_back(t);
    }
  }
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtDestroy(lt);
  void* const buffers[7] = {x, w, dy, y, dx, dw, ws};
  for (void* p : buffers) device_free(p);
  return out;
}

}  // namespace mue::cuda
