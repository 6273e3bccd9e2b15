// Every CUDA op of nn/ops/ (the LM's), forward and backward, against its CPU reference run in double
// on the same bf16-rounded inputs. Output buffers are poisoned (0xFF bytes: NaN in bf16 and in fp32) before the
// op runs, so an element the op fails to write can never pass; accumulate outputs start from random values and
// the accumulated increment is compared. Tolerance on ||out - ref|| / ||ref||: 1e-2 for bf16 outputs, tighter
// for outputs computed entirely in fp32. Skips without a GPU.
#ifdef MUE_HAVE_CUDA
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "core/kernel_variants.h"
#include "core/rng.h"
#include "nn/backend.h"
#include "nn/ops/attention.h"
#include "nn/ops/crossentropy.h"
#include "nn/ops/embedding.h"
#include "nn/ops/linear_crossentropy.h"
#include "nn/ops/matmul.h"
#include "nn/ops/matmul_algos.h"
#include "nn/ops/qk_norm.h"
#include "nn/ops/residual.h"
#include "nn/ops/rmsnorm.h"
#include "nn/ops/rope.h"
#include "nn/ops/swiglu.h"
#include "optim/adamw.h"
#include "experiments/trainer.h"
#include "tests/catch.h"

#include "tests/cuda_check.h"


TEST_CASE("whether the GPU is usable comes with the reason; train.device=cuda without one says why", "[cuda]") {
  const std::string why = cuda::gpu_unusable_reason();
  CHECK(cuda::gpu_available() == why.empty());
  if (cuda::gpu_available()) {
    CHECK(resolve_device("auto") == "cuda");
    CHECK(resolve_device("cuda") == "cuda");
  } else {
    CHECK(resolve_device("auto") == "cpu");
    CHECK_THROWS_WITH(resolve_device("cuda"), HasText("train.device=cuda but no usable CUDA GPU: " + why));
  }
  CHECK(resolve_device("cpu") == "cpu");
}

TEST_CASE("CUDA context, memory helpers and casts", "[cuda]") {
  if (!cuda::gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cuda::Context ctx;
  CHECK(!ctx.device_name().empty());
  void* s1 = ctx.scratch(0, 1000);
  CHECK(s1 != nullptr);
  CHECK(ctx.scratch(0, 10) == s1);  // grow-only: a smaller request keeps the buffer

  // mue's own device memory (what bench compares with PyTorch's max_memory_allocated): each buffer counted
  // while held, the peak kept after it is freed.
  const size_t held0 = cuda::allocated_bytes();
  void* big = cuda::device_alloc(size_t(3) << 20);
  CHECK(cuda::allocated_bytes() == held0 + (size_t(3) << 20));
  CHECK(cuda::peak_allocated_bytes() >= held0 + (size_t(3) << 20));
  cuda::device_free(big);
  CHECK(cuda::allocated_bytes() == held0);
  CHECK(cuda::peak_allocated_bytes() >= held0 + (size_t(3) << 20));
  ctx.scratch(1, size_t(1) << 20);  // a scratch slot counts too (grown with 1/8 headroom)
  CHECK(cuda::allocated_bytes() == held0 + (size_t(1) << 20) + (size_t(1) << 17));

  const size_t n = 1001;
  V x = randn_f32(n, 3.0);
  x[0] = 1.0 + 1.0 / 256;  // a tie: round to even
  x[1] = 1e-40;            // subnormal
  Dev dx = put_f32(x);
  Dev dh = poisoned(n * sizeof(bf16));
  cuda::cast_f32_to_bf16(ctx, dx.f(), dh.h(), n);
  ctx.synchronize();
  std::vector<bf16> h(n);
  cuda::copy_to_host(h.data(), dh.p, n * sizeof(bf16));
  size_t mismatches = 0;
  for (size_t k = 0; k < n; ++k) mismatches += h[k].bits != float_to_bf16(float(x[k])).bits;
  CHECK(mismatches == 0);

  Dev df = poisoned(n * sizeof(float));
  cuda::cast_bf16_to_f32(ctx, dh.h(), df.f(), n);
  V back = get_f32(ctx, df, n);
  V want(n);
  for (size_t k = 0; k < n; ++k) want[k] = bf16_to_float(h[k]);
  CHECK(rel_err(back, want) == 0.0);

  cuda::memset_zero(ctx, df.p, df.bytes);
  CHECK(rel_err(get_f32(ctx, df, n), V(n, 0.0)) == 0.0);
}

TEST_CASE("CUDA embedding forward and backward (repeated tokens)", "[cuda]") {
  if (!cuda::gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cuda::Context ctx;
  for (int D : {72, 1000}) {
    INFO("D = " << D);
    const int N = 37, vocab = 50;
    I tok = rand_index(N, vocab);
    V wte = randn_bf16(size_t(vocab) * D);
    Dev dtok = put_i32(tok), dwte = put_bf16(wte), dout = poisoned(size_t(N) * D * sizeof(bf16));
    cuda::embedding_forward(ctx, dtok.i(), dwte.h(), dout.h(), N, D);
    V ref(size_t(N) * D);
    cpu::embedding_forward(tok.data(), wte.data(), ref.data(), N, D);
    expect_close(get_bf16(ctx, dout, ref.size()), ref, 0.0, "embedding out (an exact copy)");

    // Backward: tokens from a vocabulary of 5, so rows repeat many times; dwte starts from random values.
    const int small = 5;
    I tok2 = rand_index(N, small);
    V g = randn_bf16(size_t(N) * D), dw0 = randn_f32(size_t(small) * D);
    Dev dtok2 = put_i32(tok2), dg = put_bf16(g), ddw = put_f32(dw0);
    cuda::embedding_backward(ctx, dtok2.i(), dg.h(), ddw.f(), N, D, small);
    V dw = dw0;
    cpu::embedding_backward(tok2.data(), g.data(), dw.data(), N, D, small);
    expect_close(minus(get_f32(ctx, ddw, dw.size()), dw0), minus(dw, dw0), 1e-5, "dwte increment");
  }
  // The same bits on every run: 16,461 rows into 7 tokens (fp32 atomics would add each row's 2,350 values in a
  // different order each time), over a 4,000-row table whose other rows must stay as they were, bit for bit.
  // Blocks of 10 to 15 rows here (fewer than 64: the table is small for the SMs, or D wide), the hit rows in
  // different blocks, the last block partial.
  for (int D : {128, 768, 1000}) {
    INFO("D = " << D);
    const int N = 16384 + 77, rows = 4000;
    I tok = rand_index(N, 7);
    for (int32_t& t : tok) t = t * 571 + 29;  // rows 29, 600, ..., 3455
    V g = randn_bf16(size_t(N) * D), dw0 = randn_f32(size_t(rows) * D);
    Dev dtok = put_i32(tok), dg = put_bf16(g);
    std::vector<V> runs;
    for (int run = 0; run < 4; ++run) {
      Dev ddw = put_f32(dw0);
      cuda::embedding_backward(ctx, dtok.i(), dg.h(), ddw.f(), N, D, rows);
      runs.push_back(get_f32(ctx, ddw, dw0.size()));
    }
    for (int run = 1; run < 4; ++run) CHECK(runs[run] == runs[0]);
    V dw = dw0;
    cpu::embedding_backward(tok.data(), g.data(), dw.data(), N, D, rows);
    expect_close(minus(runs[0], dw0), minus(dw, dw0), 1e-4, "dwte increment (many repeats)");
    std::vector<bool> hit(rows, false);
    for (int32_t t : tok) hit[t] = true;
    size_t untouched = 0, untouched_equal = 0;
    for (int r = 0; r < rows; ++r)
      if (!hit[r])
        for (int i = 0; i < D; ++i) ++untouched, untouched_equal += runs[0][size_t(r) * D + i] == dw0[size_t(r) * D + i];
    CHECK(untouched == size_t(rows - 7) * D);
    CHECK(untouched_equal == untouched);
  }
}

TEST_CASE("CUDA rmsnorm forward and backward", "[cuda]") {
  if (!cuda::gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cuda::Context ctx;
  // 768, 256, 1024, 520 and 72 take the warp-per-row kernels (520, 72: rows of vectors that do not fill the
  // warp's lanes evenly; 5000 rows: more than the backward's warps, so each warp sums dw over several rows),
  // 97 and 13000 the block-per-row ones (3000 x 97: several rows a block); 13000 needs more than 48 KB of shared
  // memory in the backward.
  for (auto [N, D] : {std::pair{37, 97}, std::pair{3000, 97}, std::pair{37, 768}, std::pair{3000, 256}, std::pair{9, 1024},
                      std::pair{5000, 520}, std::pair{5000, 72}, std::pair{5, 13000}}) {
    INFO("N = " << N << ", D = " << D);
    const size_t ND = size_t(N) * D;
    const double eps = 1e-5;
    V x = randn_bf16(ND, 2.0), w = randn_bf16(D, 0.1, 1.0);
    Dev dx = put_bf16(x), dw = put_bf16(w), dy = poisoned(ND * sizeof(bf16)), drs = poisoned(N * sizeof(float));
    cuda::rmsnorm_forward(ctx, dx.h(), dw.h(), dy.h(), drs.f(), N, D, float(eps));
    V y(ND), rstd(N);
    cpu::rmsnorm_forward(x.data(), w.data(), y.data(), rstd.data(), N, D, eps);
    expect_close(get_bf16(ctx, dy, ND), y, kTolBf16, "rmsnorm y");
    expect_close(get_f32(ctx, drs, N), rstd, 1e-5, "rmsnorm rstd");

    // The residual add fused into the norm: the same bits as residual_forward then rmsnorm_forward, with the sum
    // written in place (over a) and out of place.
    {
      const V res = randn_bf16(ND);
      Dev dres = put_bf16(res), s1 = put_bf16(x), y1 = poisoned(ND * sizeof(bf16)), r1 = poisoned(N * sizeof(float));
      cuda::residual_forward(ctx, s1.h(), s1.h(), dres.h(), ND);
      cuda::rmsnorm_forward(ctx, s1.h(), dw.h(), y1.h(), r1.f(), N, D, float(eps));
      Dev s2 = put_bf16(x), y2 = poisoned(ND * sizeof(bf16)), r2 = poisoned(N * sizeof(float));
      cuda::residual_rmsnorm_forward(ctx, s2.h(), s2.h(), dres.h(), dw.h(), y2.h(), r2.f(), N, D, float(eps));
      Dev s3 = poisoned(ND * sizeof(bf16)), y3 = poisoned(ND * sizeof(bf16)), r3 = poisoned(N * sizeof(float));
      cuda::residual_rmsnorm_forward(ctx, s3.h(), dx.h(), dres.h(), dw.h(), y3.h(), r3.f(), N, D, float(eps));
      const V sum = get_bf16(ctx, s1, ND), y_sep = get_bf16(ctx, y1, ND), r_sep = get_f32(ctx, r1, N);
      CHECK(rel_err(get_bf16(ctx, s2, ND), sum) == 0.0);
      CHECK(rel_err(get_bf16(ctx, y2, ND), y_sep) == 0.0);
      CHECK(rel_err(get_f32(ctx, r2, N), r_sep) == 0.0);
      CHECK(rel_err(get_bf16(ctx, s3, ND), sum) == 0.0);
      CHECK(rel_err(get_bf16(ctx, y3, ND), y_sep) == 0.0);
      CHECK(rel_err(get_f32(ctx, r3, N), r_sep) == 0.0);
      V cy(ND), cr(N);
      cpu::rmsnorm_forward(sum.data(), w.data(), cy.data(), cr.data(), N, D, eps);
      expect_close(y_sep, cy, kTolBf16, "residual + rmsnorm y");
    }

    // Backward: both dx (bf16, residual stream) and dw (fp32) accumulate.
    V g = randn_bf16(ND), dx0 = randn_bf16(ND, 0.5), dw0 = randn_f32(D);
    V rs(N);
    for (int n = 0; n < N; ++n) rs[n] = float(rstd[n]);
    Dev dg = put_bf16(g), drs2 = put_f32(rs), ddx = put_bf16(dx0), ddw = put_f32(dw0);
    cuda::rmsnorm_backward(ctx, dg.h(), dx.h(), dw.h(), drs2.f(), ddx.h(), ddw.f(), N, D);
    V rdx = dx0, rdw = dw0;
    cpu::rmsnorm_backward(g.data(), x.data(), w.data(), rs.data(), rdx.data(), rdw.data(), N, D);
    expect_close(minus(get_bf16(ctx, ddx, ND), dx0), minus(rdx, dx0), kTolBf16, "rmsnorm dx increment");
    expect_close(minus(get_f32(ctx, ddw, D), dw0), minus(rdw, dw0), 1e-4, "rmsnorm dw increment");
    {  // both backwards sum dw without atomics: the same bits again
      Dev ddx2 = put_bf16(dx0), ddw2 = put_f32(dw0);
      cuda::rmsnorm_backward(ctx, dg.h(), dx.h(), dw.h(), drs2.f(), ddx2.h(), ddw2.f(), N, D);
      CHECK(rel_err(get_f32(ctx, ddw2, D), get_f32(ctx, ddw, D)) == 0.0);
      CHECK(rel_err(get_bf16(ctx, ddx2, ND), get_bf16(ctx, ddx, ND)) == 0.0);
    }
  }
}

TEST_CASE("CUDA matmul forward and backward (odd sizes, alpha)", "[cuda]") {
  if (!cuda::gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cuda::Context ctx;
  struct Case {
    int N, In, Out;
    double alpha;
  };
  for (Case c : {Case{37, 24, 40, 0.7}, Case{64, 128, 96, 1.0}, Case{1, 7, 3, -2.0}, Case{130, 33, 257, 0.125}}) {
    INFO("N = " << c.N << ", In = " << c.In << ", Out = " << c.Out << ", alpha = " << c.alpha);
    const size_t nx = size_t(c.N) * c.In, nw = size_t(c.Out) * c.In, ny = size_t(c.N) * c.Out;
    V x = randn_bf16(nx), w = randn_bf16(nw, 0.2);
    Dev dx = put_bf16(x), dw = put_bf16(w), dy = poisoned(ny * sizeof(bf16));
    cuda::matmul_forward(ctx, dx.h(), dw.h(), dy.h(), c.N, c.In, c.Out, float(c.alpha));
    V y(ny);
    cpu::matmul_forward(x.data(), w.data(), y.data(), c.N, c.In, c.Out, c.alpha);
    expect_close(get_bf16(ctx, dy, ny), y, kTolBf16, "matmul y");

    V g = randn_bf16(ny), gw0 = randn_f32(nw);
    Dev dg = put_bf16(g), dgx = poisoned(nx * sizeof(bf16)), dgw = put_f32(gw0);
    cuda::matmul_backward(ctx, dg.h(), dx.h(), dw.h(), dgx.h(), dgw.f(), c.N, c.In, c.Out, float(c.alpha));
    V gx(nx), gw = gw0;
    cpu::matmul_backward(g.data(), x.data(), w.data(), gx.data(), gw.data(), c.N, c.In, c.Out, c.alpha);
    expect_close(get_bf16(ctx, dgx, nx), gx, kTolBf16, "matmul dx");
    expect_close(minus(get_f32(ctx, dgw, nw), gw0), minus(gw, gw0), 1e-4, "matmul dw increment");

    // dx == nullptr: only dw, which accumulates a second increment.
    cuda::matmul_backward(ctx, dg.h(), dx.h(), dw.h(), nullptr, dgw.f(), c.N, c.In, c.Out, float(c.alpha));
    V gw2 = gw;
    cpu::matmul_backward<double>(g.data(), x.data(), w.data(), nullptr, gw2.data(), c.N, c.In, c.Out, c.alpha);
    expect_close(minus(get_f32(ctx, dgw, nw), gw0), minus(gw2, gw0), 1e-4, "matmul dw after two backwards");

    // accumulate = false (a step's first write of a gradient): dw = the increment, over a poisoned dw.
    Dev dgw3 = poisoned(nw * sizeof(float));
    cuda::matmul_backward(ctx, dg.h(), dx.h(), dw.h(), nullptr, dgw3.f(), c.N, c.In, c.Out, float(c.alpha), false);
    V gw3(nw, std::nan(""));
    cpu::matmul_backward<double>(g.data(), x.data(), w.data(), nullptr, gw3.data(), c.N, c.In, c.Out, c.alpha, false);
    expect_close(get_f32(ctx, dgw3, nw), gw3, 1e-4, "matmul dw overwritten");
  }
}

TEST_CASE("CUDA matmul algorithms: cuBLASLt's descriptors state matmul.cu's products", "[cuda]") {
  if (!cuda::gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cuda::Context ctx;
  const auto t = cuda::time_matmul_algos(ctx, 256, 64, 520, 4, 2);
  // Per GEMM the default first, then the Lt algorithms; an algorithm that computes another product (a wrong
  // transpose or leading dimension) differs from the default by about the outputs' size, one that computes the
  // same product by accumulation order and the output's rounding (one bf16 step of the largest outputs: at most
  // 2^-7 of the largest).
  int defaults = 0;
  std::map<std::string, int> lt_ok;
  for (size_t i = 0; i < t.size(); ++i) {
    INFO(t[i].gemm << ": " << t[i].algo);
    if (t[i].algo == cuda::kGemmDefault) {
      ++defaults;
      CHECK(t[i].ms > 0);
      CHECK(t[i].max_abs_out > 1);
      CHECK(t[i].gemm == std::vector<std::string>{"forward", "dx", "dw"}[defaults - 1]);
      continue;
    }
    REQUIRE(defaults > 0);
    CHECK(t[i].gemm == t[i - 1].gemm);
    if (!t[i].ok) continue;
    ++lt_ok[t[i].gemm];
    CHECK(t[i].ms > 0);
    CHECK(t[i].max_abs_diff <= t[i].max_abs_out / 128);  // NaN (an element not written) fails too
  }
  CHECK(defaults == 3);
  // Each product has at least one algorithm that runs: a descriptor cuBLASLt refuses (a wrong shape or leading
  // dimension) cannot hide behind the other two.
  CHECK(lt_ok["forward"] >= 1);
  CHECK(lt_ok["dx"] >= 1);
  CHECK(lt_ok["dw"] >= 1);
}

TEST_CASE("CUDA residual add", "[cuda]") {
  if (!cuda::gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cuda::Context ctx;
  for (const size_t n : {size_t(100003), size_t(100000)}) {  // scalar kernel; 16-byte vector kernel (n % 8 == 0)
    INFO("n = " << n);
    V a = randn_bf16(n), b = randn_bf16(n);
    Dev da = put_bf16(a), db = put_bf16(b), dout = poisoned(n * sizeof(bf16));
    cuda::residual_forward(ctx, dout.h(), da.h(), db.h(), n);
    V ref(n);
    cpu::residual_forward(ref.data(), a.data(), b.data(), n);
    expect_close(get_bf16(ctx, dout, n), ref, kTolBf16, "residual out");
    cuda::residual_forward(ctx, da.h(), da.h(), db.h(), n);  // in place
    expect_close(get_bf16(ctx, da, n), ref, kTolBf16, "residual in place");
  }
}

TEST_CASE("CUDA qk_norm forward and backward", "[cuda]") {
  if (!cuda::gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cuda::Context ctx;
  const double eps = 1e-5;
  // hd 6 and 40: one warp per row (columns that do not fill the lanes evenly) and RoPE as its own op; 8 to 256:
  // 16-byte vectors with RoPE fused (1 to 32 lanes per row); 1000 tokens: more rows than the backward's slots.
  struct Case {
    int B, T, H, hd;
    double theta;
  };
  for (const Case c : {Case{1, 7, 3, 6, 10000.0}, Case{4, 250, 4, 64, 10000.0}, Case{3, 100, 2, 128, 0.0},
                       Case{2, 25, 5, 40, 10000.0}, Case{1, 20, 2, 256, 10000.0}, Case{2, 9, 3, 8, 100.0},
                       Case{1, 33, 2, 16, 0.0}, Case{2, 17, 3, 32, 500.0}}) {
    const int N = c.B * c.T, H = c.H, hd = c.hd;
    INFO("B = " << c.B << ", T = " << c.T << ", H = " << H << ", hd = " << hd << ", rope theta = " << c.theta);
    const size_t D = size_t(H) * hd, n = size_t(N) * 3 * D;
    const V qkv = randn_bf16(n, 2.0), w = randn_bf16(2 * hd, 0.1, 1.0);
    Dev d = put_bf16(qkv), dw = put_bf16(w), dpre = poisoned(size_t(N) * 2 * D * sizeof(bf16)),
        drs = poisoned(size_t(N) * 2 * H * sizeof(float));
    cuda::qk_norm_forward(ctx, d.h(), dw.h(), dpre.h(), drs.f(), c.B, c.T, H, hd, float(eps), float(c.theta));
    V ref = qkv, pre(size_t(N) * 2 * D), rstd(size_t(N) * 2 * H);
    cpu::qk_norm_forward(ref.data(), w.data(), pre.data(), rstd.data(), N, H, hd, eps);
    if (c.theta > 0) cpu::rope_forward(ref.data(), c.B, c.T, H, hd, c.theta);
    const V out = get_bf16(ctx, d, n);
    expect_close(part(out, 3 * D, 0, 2 * D), part(ref, 3 * D, 0, 2 * D), kTolBf16, "qk_norm (+ rope) q, k");
    expect_close(part(out, 3 * D, 2 * D, D), part(qkv, 3 * D, 2 * D, D), 0.0, "qk_norm v (untouched)");
    expect_close(get_bf16(ctx, dpre, pre.size()), pre, 0.0, "qk_norm pre");
    expect_close(get_f32(ctx, drs, rstd.size()), rstd, 1e-5, "qk_norm rstd");

    // Backward: dq, dk replaced in place, dv untouched, dw accumulates (fixed order: the same bits twice).
    V rs(rstd.size());
    for (size_t i = 0; i < rs.size(); ++i) rs[i] = float(rstd[i]);
    const V g = randn_bf16(n), dw0 = randn_f32(2 * hd);
    Dev dg = put_bf16(g), drs2 = put_f32(rs), ddw = put_f32(dw0);
    cuda::qk_norm_backward(ctx, dg.h(), dpre.h(), dw.h(), drs2.f(), ddw.f(), N, H, hd);
    V rg = g, rdw = dw0;
    cpu::qk_norm_backward(rg.data(), pre.data(), w.data(), rs.data(), rdw.data(), N, H, hd);
    const V gout = get_bf16(ctx, dg, n), dw1 = get_f32(ctx, ddw, 2 * hd);
    expect_close(part(gout, 3 * D, 0, 2 * D), part(rg, 3 * D, 0, 2 * D), kTolBf16, "qk_norm dq, dk");
    expect_close(part(gout, 3 * D, 2 * D, D), part(g, 3 * D, 2 * D, D), 0.0, "qk_norm dv (untouched)");
    expect_close(minus(dw1, dw0), minus(rdw, dw0), 1e-4, "qk_norm dw increment");
    Dev dg2 = put_bf16(g), ddw2 = put_f32(dw0);
    cuda::qk_norm_backward(ctx, dg2.h(), dpre.h(), dw.h(), drs2.f(), ddw2.f(), N, H, hd);
    CHECK(rel_err(get_f32(ctx, ddw2, 2 * hd), dw1) == 0.0);
  }
  // Head dims above 256: a one-line error before any launch, both ways.
  Dev big = poisoned(size_t(3) * 512 * sizeof(bf16)), wbig = poisoned(2 * 512 * sizeof(bf16)),
      pbig = poisoned(size_t(2) * 512 * sizeof(bf16)), rbig = poisoned(2 * sizeof(float)), dwbig = poisoned(2 * 512 * 4);
  CHECK_THROWS_WITH(cuda::qk_norm_forward(ctx, big.h(), wbig.h(), pbig.h(), rbig.f(), 1, 1, 1, 512, 1e-5f, 0.f),
                    HasText("head dims up to 256"));
  CHECK_THROWS_WITH(cuda::qk_norm_backward(ctx, big.h(), pbig.h(), wbig.h(), rbig.f(), dwbig.f(), 1, 1, 512),
                    HasText("head dims up to 256"));
}

TEST_CASE("CUDA rope forward and backward", "[cuda]") {
  if (!cuda::gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cuda::Context ctx;
  const int B = 2, T = 37, H = 3;
  const double theta = 10000.0;
  for (int hd : {6, 16, 64}) {  // 6: the scalar kernel; 16, 64: the vector kernel
    INFO("hd = " << hd);
    const size_t D = size_t(H) * hd, n = size_t(B) * T * 3 * D;
    for (int dir = 0; dir < 2; ++dir) {
      INFO((dir == 0 ? "forward" : "backward"));
      V qkv = randn_bf16(n);
      Dev d = put_bf16(qkv);
      V ref = qkv;
      if (dir == 0) {
        cuda::rope_forward(ctx, d.h(), B, T, H, hd, float(theta));
        cpu::rope_forward(ref.data(), B, T, H, hd, theta);
      } else {
        cuda::rope_backward(ctx, d.h(), B, T, H, hd, float(theta));
        cpu::rope_backward(ref.data(), B, T, H, hd, theta);
      }
      V out = get_bf16(ctx, d, n);
      expect_close(part(out, 3 * D, 0, D), part(ref, 3 * D, 0, D), kTolBf16, "rope q");
      expect_close(part(out, 3 * D, D, D), part(ref, 3 * D, D, D), kTolBf16, "rope k");
      expect_close(part(out, 3 * D, 2 * D, D), part(qkv, 3 * D, 2 * D, D), 0.0, "rope v (untouched)");
    }
  }
}

TEST_CASE("CUDA materialized attention forward and backward (causal and bidirectional)", "[cuda]") {
  if (!cuda::gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cuda::Context ctx;
  const int B = 2, H = 3;
  for (bool causal : {true, false})
    for (int T : {1, 7, 64, 130})
      for (int hd : {16, 64}) {
        INFO("causal = " << causal << ", T = " << T << ", hd = " << hd);
        const size_t D = size_t(H) * hd, nqkv = size_t(B) * T * 3 * D, nout = size_t(B) * T * D;
        const size_t np = size_t(B) * H * T * T;
        const double scale = 1.0 / std::sqrt(double(hd));
        // Covers every scratch buffer the attention ops take (slots 0..3, at most 4 T^2 + 8 hd T bytes per (b, h)).
        const size_t scratch_bytes = np * 4 + size_t(B) * H * T * hd * 8;
        poison_scratch(ctx, 4, scratch_bytes);
        V qkv = randn_bf16(nqkv);
        Dev dqkv_in = put_bf16(qkv), dout = poisoned(nout * sizeof(bf16)), dprobs = poisoned(np * sizeof(bf16));
        cuda::attention_materialized_forward(ctx, dqkv_in.h(), dout.h(), dprobs.h(), B, T, H, hd, float(scale), causal);
        V out(nout), probs(np);
        cpu::attention_forward(qkv.data(), out.data(), probs.data(), B, T, H, hd, scale, causal);
        V gprobs = get_bf16(ctx, dprobs, np);
        expect_close(get_bf16(ctx, dout, nout), out, kTolBf16, "attention out");
        expect_close(gprobs, probs, kTolBf16, "attention probs");
        if (causal) {
          size_t nonzero_masked = 0;
          for (size_t r = 0; r < size_t(B) * H * T; ++r)
            for (int s = int(r % T) + 1; s < T; ++s) nonzero_masked += gprobs[r * T + s] != 0.0;
          CHECK(nonzero_masked == 0);
        }

        // Backward from the bf16-rounded probs that both sides get.
        V pin(np);
        for (size_t k = 0; k < np; ++k) pin[k] = round_bf16(probs[k]);
        V g = randn_bf16(nout);
        Dev dg = put_bf16(g), dpin = put_bf16(pin), ddqkv = poisoned(nqkv * sizeof(bf16));
        poison_scratch(ctx, 4, scratch_bytes);
        cuda::attention_materialized_backward(ctx, dg.h(), dqkv_in.h(), dpin.h(), ddqkv.h(), B, T, H, hd, float(scale), causal);
        V dqkv(nqkv);
        cpu::attention_backward(g.data(), qkv.data(), pin.data(), dqkv.data(), B, T, H, hd, scale, causal);
        V got = get_bf16(ctx, ddqkv, nqkv);
        expect_close(part(got, 3 * D, 0, D), part(dqkv, 3 * D, 0, D), kTolBf16, "attention dq");
        expect_close(part(got, 3 * D, D, D), part(dqkv, 3 * D, D, D), kTolBf16, "attention dk");
        expect_close(part(got, 3 * D, 2 * D, D), part(dqkv, 3 * D, 2 * D, D), kTolBf16, "attention dv");
      }
}

// The fused kernels: out, lse and dq/dk/dv against the CPU reference in double, for several lengths (odd ones,
// one shorter than a tile, several tiles with a ragged last one) and every head dim they cover.
TEST_CASE("CUDA flash attention forward and backward (causal and bidirectional)", "[cuda]") {
  if (!cuda::gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cuda::Context ctx;
  const int B = 2, H = 3;
  // Head dims 64 and 128 run the wgmma kernels (nn/flash_attention_sm90.cu; at 64 each tile variant,
  // flash_sm90_tiles) and, with the kernel variant flash_sm90=0, the mma.sync ones; 16 and 32 only the latter.
  struct Case {
    int hd;
    bool sm90;
    const char* tiles;
  };
  const Case cases[] = {{16, false, "0,0"}, {32, false, "0,0"}, {64, true, "0,0"}, {64, true, "1,1"},
                        {64, true, "1,2"},  {64, true, "2,3"},  {64, true, "3,4"},  {64, false, "0,0"},
                        {128, true, "0,0"}, {128, false, "0,0"}};
  for (bool causal : {true, false})
    for (int T : {1, 7, 64, 130, 257, 300})
      for (const Case cs : cases) {
        const int hd = cs.hd;
        const std::string variant = std::string(cs.sm90 ? "" : "flash_sm90=0 ") + "flash_sm90_tiles=" + cs.tiles;
        const ScopedKernelVariants scoped(variant);
        INFO("causal = " << causal << ", T = " << T << ", hd = " << hd << ", wgmma kernels = " << cs.sm90
                         << ", kernel variants: " << variant);
        REQUIRE(cuda::flash_attention_enabled(hd));
        REQUIRE(cuda::flash_sm90_enabled(hd) == cs.sm90);
        const size_t D = size_t(H) * hd, nqkv = size_t(B) * T * 3 * D, nout = size_t(B) * T * D;
        const size_t np = size_t(B) * H * T * T, nrows = size_t(B) * H * T;
        REQUIRE(cuda::attention_state_floats(B, T, H, hd) == nrows);
        const double scale = 1.0 / std::sqrt(double(hd));
        V qkv = randn_bf16(nqkv, 1.5);
        Dev dqkv_in = put_bf16(qkv), dout = poisoned(nout * sizeof(bf16)), dlse = poisoned(nrows * sizeof(float));
        cuda::attention_forward(ctx, dqkv_in.h(), dout.h(), static_cast<float*>(dlse.p), B, T, H, hd, float(scale),
                                causal);
        V out(nout), probs(np);
        cpu::attention_forward(qkv.data(), out.data(), probs.data(), B, T, H, hd, scale, causal);
        const V gout = get_bf16(ctx, dout, nout);
        expect_close(gout, out, kTolBf16, "flash attention out");
        // lse[b, h, t] = log sum_s exp(scale q.k_s) over the visible keys
        V lse(nrows);
        for (int b = 0; b < B; ++b)
          for (int h = 0; h < H; ++h)
            for (int t = 0; t < T; ++t) {
              const double* q = qkv.data() + (size_t(b) * T + t) * 3 * D + size_t(h) * hd;
              double mx = -INFINITY;
              std::vector<double> sc;
              for (int s2 = 0; s2 < (causal ? t + 1 : T); ++s2) {
                const double* k = qkv.data() + (size_t(b) * T + s2) * 3 * D + D + size_t(h) * hd;
                double dot = 0;
                for (int i = 0; i < hd; ++i) dot += q[i] * k[i];
                sc.push_back(dot * scale), mx = std::max(mx, dot * scale);
              }
              double z = 0;
              for (double v : sc) z += std::exp(v - mx);
              lse[(size_t(b) * H + h) * T + t] = mx + std::log(z);
            }
        expect_close(get_f32(ctx, dlse, nrows), lse, 1e-4, "flash attention lse");

        V g = randn_bf16(nout);
        Dev dg = put_bf16(g), ddqkv = poisoned(nqkv * sizeof(bf16));
        cuda::attention_backward(ctx, dg.h(), dqkv_in.h(), dout.h(), static_cast<float*>(dlse.p), ddqkv.h(), B, T, H,
                                 hd, float(scale), causal);
        V dqkv(nqkv);
        cpu::attention_backward(g.data(), qkv.data(), probs.data(), dqkv.data(), B, T, H, hd, scale, causal);
        V got = get_bf16(ctx, ddqkv, nqkv);
        expect_close(part(got, 3 * D, 0, D), part(dqkv, 3 * D, 0, D), kTolBf16, "flash attention dq");
        expect_close(part(got, 3 * D, D, D), part(dqkv, 3 * D, D, D), kTolBf16, "flash attention dk");
        expect_close(part(got, 3 * D, 2 * D, D), part(dqkv, 3 * D, 2 * D, D), kTolBf16, "flash attention dv");
        if (T > 64 && T % 64 != 0) {  // the ragged last tile (of 64 or 128 rows) on its own
          const int t0 = T / 64 * 64;
          expect_close(token_rows_from(gout, B, T, D, t0), token_rows_from(out, B, T, D, t0), kTolBf16,
                       "flash attention out, last tile");
          for (int k = 0; k < 3; ++k)
            expect_close(token_rows_from(part(got, 3 * D, k * D, D), B, T, D, t0),
                         token_rows_from(part(dqkv, 3 * D, k * D, D), B, T, D, t0), kTolBf16,
                         "flash attention dq / dk / dv, last tile");
        }

        // With RoPE's backward fused into the stores: dq and dk rotated back, dv the same.
        const double theta = 500.0;  // small base: large angles at every pair
        ddqkv.poison();
        cuda::attention_backward(ctx, dg.h(), dqkv_in.h(), dout.h(), static_cast<float*>(dlse.p), ddqkv.h(), B, T, H,
                                 hd, float(scale), causal, float(theta));
        cpu::rope_backward(dqkv.data(), B, T, H, hd, theta);
        got = get_bf16(ctx, ddqkv, nqkv);
        expect_close(part(got, 3 * D, 0, D), part(dqkv, 3 * D, 0, D), kTolBf16, "flash attention dq, RoPE fused");
        expect_close(part(got, 3 * D, D, D), part(dqkv, 3 * D, D, D), kTolBf16, "flash attention dk, RoPE fused");
        expect_close(part(got, 3 * D, 2 * D, D), part(dqkv, 3 * D, 2 * D, D), kTolBf16, "flash attention dv, RoPE");
      }
  // Preconditions of the fused kernels are one-line errors, not wrong numbers.
  const int T = 64, hd = 64;
  Dev q = put_bf16(randn_bf16(size_t(B) * T * 3 * H * hd)), o = poisoned(size_t(B) * T * H * hd * sizeof(bf16) + 16),
      st = poisoned(size_t(B) * H * T * sizeof(float));
  CHECK_THROWS_WITH(cuda::attention_forward(ctx, q.h(), o.h(), static_cast<float*>(st.p), B, T, H, hd, 0.f, true),
                    HasText("score scale must be positive"));
  bf16* misaligned = reinterpret_cast<bf16*>(reinterpret_cast<char*>(o.p) + 2);
  CHECK_THROWS_WITH(cuda::attention_forward(ctx, q.h(), misaligned, static_cast<float*>(st.p), B, T, H, hd, 0.125f,
                                            true),
                    HasText("16-byte aligned"));
  // (Malformed flash_sm90_tiles values: the CPU test of core/kernel_variants.h.)
}

TEST_CASE("CUDA swiglu forward and backward", "[cuda]") {
  if (!cuda::gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cuda::Context ctx;
  // scalar kernel, vector kernel; 4400 x 1024: more vectors than the grid's threads (grid-stride loop taken)
  for (auto [N, H] : {std::pair{37, 100}, std::pair{37, 104}, std::pair{3000, 256}, std::pair{4400, 1024}}) {
    INFO("N = " << N << ", H = " << H);
    const size_t nin = size_t(N) * 2 * H, nout = size_t(N) * H;
    V in = randn_bf16(nin, 2.0), g = randn_bf16(nout);
    Dev din = put_bf16(in), dout = poisoned(nout * sizeof(bf16));
    cuda::swiglu_forward(ctx, din.h(), dout.h(), N, H);
    V out(nout);
    cpu::swiglu_forward(in.data(), out.data(), N, H);
    expect_close(get_bf16(ctx, dout, nout), out, kTolBf16, "swiglu out");

    Dev dg = put_bf16(g), dgin = poisoned(nin * sizeof(bf16));
    cuda::swiglu_backward(ctx, dg.h(), din.h(), dgin.h(), N, H);
    V gin(nin);
    cpu::swiglu_backward(g.data(), in.data(), gin.data(), N, H);
    V got = get_bf16(ctx, dgin, nin);
    expect_close(part(got, 2 * H, 0, H), part(gin, 2 * H, 0, H), kTolBf16, "swiglu dgate");
    expect_close(part(got, 2 * H, H, H), part(gin, 2 * H, H, H), kTolBf16, "swiglu dup");
  }
}

TEST_CASE("CUDA crossentropy forward and backward (padded vocabulary)", "[cuda]") {
  if (!cuda::gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cuda::Context ctx;
  // (64, 50257, 50304): GPT-2's vocabulary, vectors plus a scalar tail of V % 8 = 1.
  for (auto [N, Vv, Vp] : {std::tuple{9, 1000, 1024}, std::tuple{4, 777, 777}, std::tuple{3, 5, 64},
                           std::tuple{64, 50257, 50304}}) {
    INFO("N = " << N << ", V = " << Vv << ", Vp = " << Vp);
    const size_t n = size_t(N) * Vp;
    V logits = randn_bf16(n, 3.0);
    // Large values in the padding: any use of them would wreck the result.
    for (int r = 0; r < N; ++r)
      for (int j = Vv; j < Vp; ++j) logits[size_t(r) * Vp + j] = 50.0;
    I tgt = rand_index(N, Vv);
    tgt[0] = Vv - 1;
    Dev dl = put_bf16(logits), dt = put_i32(tgt), dloss = poisoned(N * sizeof(float));
    cuda::crossentropy_forward(ctx, dl.h(), dt.i(), dloss.f(), N, Vv, Vp);
    V loss(N);
    cpu::crossentropy_forward(logits.data(), tgt.data(), loss.data(), N, Vv, Vp);
    expect_close(get_f32(ctx, dloss, N), loss, 1e-5, "crossentropy losses");

    const double dl_scale = 0.37;
    Dev dd = poisoned(n * sizeof(bf16));
    cuda::crossentropy_backward(ctx, dl.h(), dt.i(), dloss.f(), dd.h(), N, Vv, Vp, float(dl_scale));
    V d(n);
    cpu::crossentropy_backward(logits.data(), tgt.data(), loss.data(), d.data(), N, Vv, Vp, dl_scale);
    V got = get_bf16(ctx, dd, n);
    expect_close(got, d, kTolBf16, "crossentropy dlogits");
    const auto pad_nonzero = [&](const V& dlogits) {  // gradient entries in the padding columns that are not 0
      size_t count = 0;
      for (int r = 0; r < N; ++r)
        for (int j = Vv; j < Vp; ++j) count += dlogits[size_t(r) * Vp + j] != 0.0;
      return count;
    };
    CHECK(pad_nonzero(got) == 0);
    // The softmax part alone (target columns and padding left out): at V = 50257 it is about 13% of ||d||, too
    // little for the whole tensor's norm to see an error confined to it.
    const auto off_target = [&](const V& dlogits) {
      V s;
      for (int r = 0; r < N; ++r)
        for (int j = 0; j < Vv; ++j)
          if (j != tgt[r]) s.push_back(dlogits[size_t(r) * Vp + j]);
      return s;
    };
    expect_close(off_target(got), off_target(d), kTolBf16, "crossentropy dlogits, off-target entries");

    // In place (dlogits aliasing logits) gives the same bits.
    cuda::crossentropy_backward(ctx, dl.h(), dt.i(), dloss.f(), dl.h(), N, Vv, Vp, float(dl_scale));
    CHECK(rel_err(get_bf16(ctx, dl, n), got) == 0.0);

    // Forward and backward in one kernel (training's path; Vp = 777 takes the two kernels): the same against
    // the CPU, out of place and in place.
    Dev fl = put_bf16(logits), floss = poisoned(N * sizeof(float)), fd = poisoned(n * sizeof(bf16));
    cuda::crossentropy_forward_backward(ctx, fl.h(), dt.i(), floss.f(), fd.h(), N, Vv, Vp, float(dl_scale));
    expect_close(get_f32(ctx, floss, N), loss, 1e-5, "fused crossentropy losses");
    const V fused = get_bf16(ctx, fd, n);
    expect_close(fused, d, kTolBf16, "fused crossentropy dlogits");
    expect_close(off_target(fused), off_target(d), kTolBf16, "fused crossentropy dlogits, off-target entries");
    CHECK(pad_nonzero(fused) == 0);
    cuda::crossentropy_forward_backward(ctx, fl.h(), dt.i(), floss.f(), fl.h(), N, Vv, Vp, float(dl_scale));
    CHECK(rel_err(get_bf16(ctx, fl, n), fused) == 0.0);
  }
}

TEST_CASE("CUDA linear cross-entropy: the fused kernels by default only at d = 128, with whole 128-column tiles",
          "[cuda]") {
  // Which path a shape takes is decided on the host (no GPU needed): by default the Hopper kernels where they were
  // measured faster (bench/RESULTS.md), the variant's choice otherwise.
  {
    const ScopedKernelVariants scope("");
    CHECK(cuda::linear_crossentropy_fused(128, 50304));
    CHECK(!cuda::linear_crossentropy_fused(128, 50240));  // 785 tiles of 64: dW would take the slower mma.sync pass
    CHECK(!cuda::linear_crossentropy_fused(64, 50304));
    CHECK(!cuda::linear_crossentropy_fused(256, 50304));
    CHECK(!cuda::linear_crossentropy_fused(768, 50304));
  }
  {
    const ScopedKernelVariants scope("fused_head=0");
    CHECK(!cuda::linear_crossentropy_fused(128, 50304));
  }
  for (const char* on : {"fused_head=1", "fused_head=2", "fused_head=3", "fused_head=4", "fused_head=5"}) {
    const ScopedKernelVariants scope(on);
    CHECK(cuda::linear_crossentropy_fused(64, 50240));
    CHECK(cuda::linear_crossentropy_fused(768, 50304));
    CHECK(!cuda::linear_crossentropy_fused(32, 50304));   // d not a multiple of 64
    CHECK(!cuda::linear_crossentropy_fused(192, 50304));  // over 128 and not a multiple of 128
    CHECK(!cuda::linear_crossentropy_fused(128, 777));    // not whole 64-column tiles
  }
}

TEST_CASE("CUDA linear cross-entropy backward: losses, dx and dW from the logits, fused and not", "[cuda]") {
  if (!cuda::gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cuda::Context ctx;
  struct Case {
    int N, D, V, Vp;
    bool fused;  // the fused kernels take this shape (else the cross-entropy kernel and cuBLAS)
  };
  // Rows not a multiple of 64; GPT-2's vocabulary (one 64-row tile: hundreds of vocabulary splits); D = 256 (two
  // column groups); a vocabulary of 2 tiles with its padding in the second, and one whose second tile (a split of
  // its own) is all padding; no padding; rows enough for one split; D = 768 (six column groups; fused only under
  // fused_head=1-5); D = 32 and Vp = 777 (the fallback). Under fused_head=2-5, Vp = 3008 (not a multiple of
  // 128) takes the dW kernel of fused_head=1. Under 4 and 5 the dW pass's rows split where its blocks leave a wave
  // emptier (on an H100's 264 slots: 34000 rows x 128 in four, 300 x 1024 in three of two tiles, 100 x 512 and
  // 70 x 768 in two; GPT-2's 64 rows and 37 rows: one tile, no split).
  for (Case c : {Case{300, 64, 1000, 1024, true}, Case{64, 128, 50257, 50304, true}, Case{200, 256, 3000, 3008, true},
                 Case{37, 128, 70, 128, true}, Case{37, 128, 60, 128, true}, Case{100, 64, 512, 512, true},
                 Case{34000, 64, 100, 128, true}, Case{70, 768, 500, 512, true}, Case{45, 32, 100, 128, false},
                 Case{20, 64, 777, 777, false}}) {
    INFO("N = " << c.N << ", D = " << c.D << ", V = " << c.V << ", Vp = " << c.Vp);
    const size_t nx = size_t(c.N) * c.D, nw = size_t(c.Vp) * c.D, nl = size_t(c.N) * c.Vp;
    const double alpha = 0.7, dloss = 0.37;
    V x = randn_bf16(nx), w = randn_bf16(nw, 0.2);
    Dev dxin = put_bf16(x), dwt = put_bf16(w), dlog = poisoned(nl * sizeof(bf16));
    cuda::matmul_forward(ctx, dxin.h(), dwt.h(), dlog.h(), c.N, c.D, c.Vp, float(alpha));
    V logits = get_bf16(ctx, dlog, nl);
    for (int r = 0; r < c.N; ++r)  // large values in the padding: any use of them would wreck the result
      for (int j = c.V; j < c.Vp; ++j) logits[size_t(r) * c.Vp + j] = 50.0;
    I tgt = rand_index(c.N, c.V);
    tgt[0] = c.V - 1, tgt[c.N - 1] = 0;
    V ref_logits = logits, loss(c.N), gx(nx), gw0 = randn_f32(nw), gw = gw0;
    cpu::linear_crossentropy_backward(ref_logits.data(), tgt.data(), x.data(), w.data(), loss.data(), gx.data(),
                                      gw.data(), c.N, c.D, c.V, c.Vp, alpha, dloss);
    V gw_new(nw, std::nan(""));
    ref_logits = logits;
    cpu::linear_crossentropy_backward(ref_logits.data(), tgt.data(), x.data(), w.data(), loss.data(), gx.data(),
                                      gw_new.data(), c.N, c.D, c.V, c.Vp, alpha, dloss, false);
    // The one-hot parts of dx and dW (alpha dloss (-W[target]), alpha dloss (-onehot^T x)): they dominate both
    // norms at large V, so each result's softmax part is also compared alone. Its tolerance allows for the one-hot
    // part's own rounding: bf16 dlogits hold dloss (p - 1) at the target to 2^-9 relative (the unfused path and
    // the dW pass), and the bf16 dx another 2^-9 of it: up to about 2^-8 of the one-hot part's norm lands in the
    // softmax part. Compared where that leaves a tolerance of at most 0.1 (all but GPT-2's vocabulary here).
    V onehot_dx(nx), onehot_dw(nw);
    for (int r = 0; r < c.N; ++r)
      for (int d = 0; d < c.D; ++d) {
        onehot_dx[size_t(r) * c.D + d] = -alpha * dloss * w[size_t(tgt[r]) * c.D + d];
        onehot_dw[size_t(tgt[r]) * c.D + d] -= alpha * dloss * x[size_t(r) * c.D + d];
      }
    const auto softmax_part = [](const V& g, const V& onehot) { return minus(g, onehot); };
    const auto norm = [](const V& v) {
      double s2 = 0;
      for (double e : v) s2 += e * e;
      return std::sqrt(s2);
    };
    const double tol_dx_soft = kTolBf16 + std::ldexp(norm(onehot_dx), -8) / norm(softmax_part(gx, onehot_dx));
    const double tol_dw_soft = kTolBf16 + std::ldexp(norm(onehot_dw), -8) / norm(softmax_part(minus(gw, gw0), onehot_dw));
    const size_t scratch_bytes = sizeof(float) * (size_t(c.N) * c.D * 8 + 3 * size_t(c.N)) + (16 << 20);
    Dev dt = put_i32(tgt);
    V dw_of_4;  // fused_head=5 computes the same products in the same order as 4: the same bits
    for (const char* variant :
         {"fused_head=1", "fused_head=2", "fused_head=3", "fused_head=4", "fused_head=5", "fused_head=0"}) {
      const ScopedKernelVariants scope(variant);
      const bool fused = c.fused && std::string(variant) != "fused_head=0";
      INFO(variant << (fused ? ": fused kernels" : ": cross-entropy kernel and cuBLAS"));
      CHECK(cuda::linear_crossentropy_fused(c.D, c.Vp) == fused);
      // Scratch poisoned before every call (the vocabulary splits' partial sums live there; at least 8 splits' worth).
      poison_scratch(ctx, 8, scratch_bytes);
      Dev l1 = put_bf16(logits), dls = poisoned(c.N * sizeof(float)), dgx = poisoned(nx * sizeof(bf16)),
          dgw = put_f32(gw0);
      cuda::linear_crossentropy_backward(ctx, l1.h(), dt.i(), dxin.h(), dwt.h(), dls.f(), dgx.h(), dgw.f(), c.N, c.D,
                                         c.V, c.Vp, float(alpha), float(dloss));
      expect_close(get_f32(ctx, dls, c.N), loss, 1e-5, "losses");
      const V got_dx = get_bf16(ctx, dgx, nx), got_inc = minus(get_f32(ctx, dgw, nw), gw0);
      expect_close(got_dx, gx, kTolBf16, "dx");
      if (tol_dx_soft <= 0.1)
        expect_close(softmax_part(got_dx, onehot_dx), softmax_part(gx, onehot_dx), tol_dx_soft, "dx, softmax part");
      expect_close(got_inc, minus(gw, gw0), kTolBf16, "dW increment");
      if (tol_dw_soft <= 0.1)
        expect_close(softmax_part(got_inc, onehot_dw), softmax_part(minus(gw, gw0), onehot_dw), tol_dw_soft,
                     "dW increment, softmax part");
      // accumulate = false (a step's first write of the head's gradient): dW is the increment, over a poisoned dW;
      // and the same call again gives the same bits.
      V first_dw;
      for (int rep = 0; rep < 2; ++rep) {
        poison_scratch(ctx, 8, scratch_bytes);
        Dev l2 = put_bf16(logits), dgx2 = poisoned(nx * sizeof(bf16)), dgw2 = poisoned(nw * sizeof(float));
        cuda::linear_crossentropy_backward(ctx, l2.h(), dt.i(), dxin.h(), dwt.h(), dls.f(), dgx2.h(), dgw2.f(), c.N,
                                           c.D, c.V, c.Vp, float(alpha), float(dloss), false);
        const V gwp = get_f32(ctx, dgw2, nw), gxp = get_bf16(ctx, dgx2, nx);
        expect_close(gwp, gw_new, kTolBf16, "dW overwritten");
        expect_close(gxp, gx, kTolBf16, "dx again");
        CHECK(rel_err(gxp, got_dx) == 0.0);
        if (rep == 0) first_dw = gwp;
        else CHECK(rel_err(gwp, first_dw) == 0.0);
      }
      const V& gwp = first_dw;
      if (std::string(variant) == "fused_head=4") dw_of_4 = gwp;
      if (std::string(variant) == "fused_head=5") CHECK(rel_err(gwp, dw_of_4) == 0.0);
      size_t pad_nonzero = 0;  // the padding rows' gradient (no logit of theirs counts) is exactly 0
      for (size_t i = size_t(c.V) * c.D; i < nw; ++i) pad_nonzero += gwp[i] != 0.0;
      CHECK(pad_nonzero == 0);
      // A target outside the vocabulary: that row's loss and dx are NaN, as the cross-entropy kernels make them.
      I bad = tgt;
      bad[1] = c.V;
      Dev l3 = put_bf16(logits), dbad = put_i32(bad), dgw3 = poisoned(nw * sizeof(float));
      cuda::linear_crossentropy_backward(ctx, l3.h(), dbad.i(), dxin.h(), dwt.h(), dls.f(), dgx.h(), dgw3.f(), c.N,
                                         c.D, c.V, c.Vp, float(alpha), float(dloss), false);
      const V bl = get_f32(ctx, dls, c.N), bx = get_bf16(ctx, dgx, nx), bw = get_f32(ctx, dgw3, nw);
      CHECK(count_nonfinite(part(bw, nw, 0, size_t(c.V) * c.D)) == size_t(c.V) * c.D);  // every vocabulary row NaN
      CHECK(count_nonfinite(part(bw, nw, size_t(c.V) * c.D, nw - size_t(c.V) * c.D)) == 0);  // padding rows 0
      CHECK(std::isnan(bl[1]));
      CHECK(std::isfinite(bl[0]));
      CHECK(count_nonfinite(part(bx, nx, size_t(c.D), size_t(c.D))) == size_t(c.D));  // row 1
      CHECK(count_nonfinite(part(bx, nx, 0, size_t(c.D))) == 0);  // row 0
    }
  }
}

TEST_CASE("CUDA sum_squares_to: the sum of squares in double, the same bits on every call", "[cuda]") {
  if (!cuda::gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cuda::Context ctx;
  for (size_t n : {size_t(1), size_t(1000), size_t(3000017)}) {
    INFO("n = " << n);
    V g = randn_f32(n);
    Dev dg = put_f32(g), dout(sizeof(double));
    double* out = static_cast<double*>(dout.p);
    auto run = [&] {
      double s = 0;
      cuda::sum_squares_to(ctx, dg.f(), n, out);
      ctx.synchronize();
      cuda::copy_to_host(&s, out, sizeof(double));
      return s;
    };
    const double first = run();
    for (int rep = 0; rep < 5; ++rep) {
      const double again = run();
      CHECK(std::memcmp(&again, &first, sizeof(double)) == 0);
    }
    std::vector<float> h(g.begin(), g.end());
    const double want = cpu::sum_squares(h.data(), n);
    CHECK(std::abs(first - want) <= 1e-12 * want);
  }
}

TEST_CASE("CUDA adamw step", "[cuda]") {
  if (!cuda::gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cuda::Context ctx;
  const size_t n = 10007;
  const double lr = 1e-3, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1, gs = 0.5;
  for (int t : {1, 5}) {
    for (bool shadow : {true, false}) {
      INFO("t = " << t << ", shadow = " << shadow);
      V p = randn_f32(n), g = randn_f32(n), m = randn_f32(n, 0.1), v = randn_f32(n, 0.1);
      for (auto& x : v) x = float(x * x);
      const V p0 = p;
      Dev dp = put_f32(p), dg = put_f32(g), dm = put_f32(m), dv = put_f32(v);
      Dev dh = poisoned(n * sizeof(bf16));
      cuda::adamw_step(ctx, dp.f(), dg.f(), dm.f(), dv.f(), shadow ? dh.h() : nullptr, n, float(lr), float(b1),
                       float(b2), float(eps), float(wd), t, float(gs));
      cpu::adamw_step(p.data(), g.data(), m.data(), v.data(), n, lr, b1, b2, eps, wd, t, gs);
      V gp = get_f32(ctx, dp, n);
      expect_close(gp, p, 1e-5, "adamw p");
      // The step itself (~lr) against fp32 rounding of p (~6e-8 |p|).
      expect_close(minus(gp, p0), minus(p, p0), 1e-3, "adamw p increment");
      expect_close(get_f32(ctx, dm, n), m, 1e-5, "adamw m");
      expect_close(get_f32(ctx, dv, n), v, 1e-5, "adamw v");
      if (shadow) {
        V want(n);
        for (size_t k = 0; k < n; ++k) want[k] = round_bf16(float(gp[k]));
        expect_close(get_bf16(ctx, dh, n), want, 0.0, "adamw bf16 shadow (= bf16(p))");
      }
    }
  }
}

TEST_CASE("CUDA adamw over all tensors in one launch equals one launch per tensor", "[cuda]") {
  if (!cuda::gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cuda::Context ctx;
  // Tensors of odd sizes (one of a single element) with their own lr, wd and eps, packed one after another.
  const std::vector<size_t> sizes = {7, 1, 1000, 33, 4097};
  const double b1 = 0.9, b2 = 0.95, gs = 0.7, lr_factor = 0.37;
  std::vector<cuda::AdamWSegment> segs;
  size_t n = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    n += sizes[i];
    segs.push_back({n, 1e-3 * double(i + 1), float(0.05 * double(i)), float(1e-8 * double(i + 1))});
  }
  Dev dsegs(segs.size() * sizeof(cuda::AdamWSegment));
  cuda::copy_to_device(dsegs.p, segs.data(), segs.size() * sizeof(cuda::AdamWSegment));
  for (int t : {1, 4}) {
    INFO("t = " << t);
    V p = randn_f32(n), g = randn_f32(n), m = randn_f32(n, 0.1), v = randn_f32(n, 0.1);
    for (auto& x : v) x = float(x * x);
    Dev ap = put_f32(p), ag = put_f32(g), am = put_f32(m), av = put_f32(v), ah = poisoned(n * sizeof(bf16));
    Dev bp = put_f32(p), bg = put_f32(g), bm = put_f32(m), bv = put_f32(v), bh = poisoned(n * sizeof(bf16));
    size_t begin = 0;
    for (const auto& sg : segs) {  // the reference: one launch per tensor, lr rounded on the host
      const size_t k = begin, len = sg.end - begin;
      cuda::adamw_step(ctx, ap.f() + k, ag.f() + k, am.f() + k, av.f() + k, ah.h() + k, len,
                       float(sg.lr_base * lr_factor), float(b1), float(b2), sg.eps, sg.wd, t, float(gs));
      begin = sg.end;
    }
    cuda::adamw_step_all(ctx, bp.f(), bg.f(), bm.f(), bv.f(), bh.h(), n,
                         static_cast<const cuda::AdamWSegment*>(dsegs.p), int(segs.size()), lr_factor, float(b1),
                         float(b2), t, float(gs));
    // Same arithmetic in the same order: equal to the bit.
    expect_close(get_f32(ctx, bp, n), get_f32(ctx, ap, n), 0.0, "adamw_all p");
    expect_close(get_f32(ctx, bm, n), get_f32(ctx, am, n), 0.0, "adamw_all m");
    expect_close(get_f32(ctx, bv, n), get_f32(ctx, av, n), 0.0, "adamw_all v");
    expect_close(get_bf16(ctx, bh, n), get_bf16(ctx, ah, n), 0.0, "adamw_all bf16 shadow");
    // Arrays one float off a 16-byte boundary take the one-element-per-thread path: the same bits again.
    V p1(1, 0.0), g1(1, 0.0), m1(1, 0.0), v1(1, 0.0);
    p1.insert(p1.end(), p.begin(), p.end()), g1.insert(g1.end(), g.begin(), g.end());
    m1.insert(m1.end(), m.begin(), m.end()), v1.insert(v1.end(), v.begin(), v.end());
    Dev cp = put_f32(p1), cg = put_f32(g1), cm = put_f32(m1), cv = put_f32(v1);
    cuda::adamw_step_all(ctx, cp.f() + 1, cg.f() + 1, cm.f() + 1, cv.f() + 1, nullptr, n,
                         static_cast<const cuda::AdamWSegment*>(dsegs.p), int(segs.size()), lr_factor, float(b1),
                         float(b2), t, float(gs));
    const V cpv = get_f32(ctx, cp, n + 1), cmv = get_f32(ctx, cm, n + 1);
    expect_close(V(cpv.begin() + 1, cpv.end()), get_f32(ctx, ap, n), 0.0, "adamw_all p, unaligned");
    expect_close(V(cmv.begin() + 1, cmv.end()), get_f32(ctx, am, n), 0.0, "adamw_all m, unaligned");
  }
}

TEST_CASE("CUDA step scalars: grad norm, loss mean, divergence and AdamW read on the device", "[cuda]") {
  if (!cuda::gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  CudaBackend be;
  // The optimizer's kernels over a segment table of odd tensor sizes (for the AdamW part below).
  const std::vector<size_t> sizes = {7, 1, 1000, 33, 4097};
  std::vector<AdamSegment> segs;
  size_t m = 0;
  for (size_t i = 0; i < sizes.size(); ++i) m += sizes[i], segs.push_back({m, 1e-3 * double(i + 1), 0.05 * double(i), 1e-8});
  AdamWKernels<CudaBackend> k(be, segs);
  // Squared norm: double, deterministic (the same bits twice), against the host sum in double.
  const size_t n = 3000017;
  V g = randn_f32(n);
  Dev dg = put_f32(g);
  k.reset_step_out();
  k.grad_norm_sq(dg.f(), n);
  const double nsq = k.read_step_out().norm_sq;
  k.grad_norm_sq(dg.f(), n);
  CHECK(k.read_step_out().norm_sq == nsq);
  std::vector<float> h(g.begin(), g.end());
  CHECK(std::abs(nsq - cpu::sum_squares(h.data(), n)) <= 1e-12 * nsq);
  k.reset_step_out();
  k.grad_norm_sq(dg.f() + 1, n - 1);  // not 16-byte aligned: the scalar path
  const double nsq1 = k.read_step_out().norm_sq;
  CHECK(std::abs(nsq1 - cpu::sum_squares(h.data() + 1, n - 1)) <= 1e-12 * nsq1);
  CHECK(nsq1 != nsq);
  // Mean loss of 1000 rows.
  V losses = randn_f32(1000);
  Dev dl = put_f32(losses);
  be.loss_mean(dl.f(), 1000, k.loss_out());
  double want = 0;
  for (double x : losses) want += float(x);
  want /= 1000;
  CHECK(std::abs(k.read_step_out().loss - want) <= 1e-12 * std::abs(want) + 1e-15);
  // Divergence: the first step over the bound is kept, later ones do not replace it.
  StepIn in;
  in.step = 4, in.loss_bound = want - 1.0;
  k.set_step_in(in);
  k.track_divergence();
  in.step = 5;
  k.set_step_in(in);
  k.track_divergence();
  StepOut o = k.read_step_out();
  CHECK(o.first_bad == 4);
  CHECK(o.bad_loss == o.loss);

  // AdamW from the device scalars equals the host-scalar launch with the same clip scale, to the bit.
  V p = randn_f32(m), gr = randn_f32(m), mm = randn_f32(m, 0.1), vv = randn_f32(m, 0.1);
  for (auto& x : vv) x = float(x * x);
  Dev ap = put_f32(p), ag = put_f32(gr), am = put_f32(mm), av = put_f32(vv), ah = poisoned(m * sizeof(bf16));
  Dev bp = put_f32(p), bg = put_f32(gr), bm = put_f32(mm), bv = put_f32(vv), bh = poisoned(m * sizeof(bf16));
  StepIn s;
  s.lr_factor = 0.37, s.t = 3, s.clip = 1.0;
  k.set_step_in(s);
  k.grad_norm_sq(bg.f(), m);
  const double gsq = k.read_step_out().norm_sq;
  REQUIRE(std::sqrt(gsq) > s.clip);  // clipping is on
  k.step(ap.f(), ag.f(), am.f(), av.f(), ah.h(), s.lr_factor, s.beta1, s.beta2, s.t, clip_scale(gsq, s.clip));
  k.step_dev(bp.f(), bg.f(), bm.f(), bv.f(), bh.h());
  expect_close(get_f32(be.ctx, bp, m), get_f32(be.ctx, ap, m), 0.0, "adamw_dev p");
  expect_close(get_f32(be.ctx, bm, m), get_f32(be.ctx, am, m), 0.0, "adamw_dev m");
  expect_close(get_f32(be.ctx, bv, m), get_f32(be.ctx, av, m), 0.0, "adamw_dev v");
  expect_close(get_bf16(be.ctx, bh, m), get_bf16(be.ctx, ah, m), 0.0, "adamw_dev bf16 shadow");
  // A non-finite norm leaves everything untouched.
  V bad = gr;
  bad[17] = std::numeric_limits<double>::quiet_NaN();
  Dev cp = put_f32(p), cg = put_f32(bad), cm = put_f32(mm), cv = put_f32(vv);
  k.grad_norm_sq(cg.f(), m);
  k.step_dev(cp.f(), cg.f(), cm.f(), cv.f(), nullptr);
  CHECK_FALSE(std::isfinite(k.read_step_out().norm_sq));
  expect_close(get_f32(be.ctx, cp, m), p, 0.0, "params after a NaN gradient");
}

#endif  // MUE_HAVE_CUDA
