// The CUDA diffusion-transformer ops of nn/ops/ (silu, modulate, gated_residual, add_rows, mse), forward and
// backward, against their CPU reference run in double on the same bf16-rounded inputs. Overwrite outputs are poisoned (0xFF bytes:
// NaN in bf16 and fp32) first, so an unwritten element can never pass; accumulate outputs start from random
// values and the accumulated increment is compared, and the mod chunks an op must not touch are checked to be
// bit-for-bit unchanged. Tolerance on ||out - ref|| / ||ref||: 1e-2 for bf16 outputs, 1e-4 for the fp32 loss
// sum. Skips without a GPU.
#ifdef MUE_HAVE_CUDA
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "core/rng.h"
#include "nn/ops/add_rows.h"
#include "nn/ops/gated_residual.h"
#include "nn/ops/modulate.h"
#include "nn/ops/mse.h"
#include "nn/ops/silu.h"
#include "tests/catch.h"

#include "tests/cuda_check.h"

namespace {

// mod [B, M*D] split into the chunks in `chunks` (the ones the op writes) and all the others.
V chunks_of(const V& mod, int B, int D, int M, const std::vector<int>& chunks, bool keep) {
  V out;
  for (int b = 0; b < B; ++b)
    for (int c = 0; c < M; ++c) {
      bool in = false;
      for (int k : chunks) in = in || k == c;
      if (in == keep)
        out.insert(out.end(), mod.begin() + (size_t(b) * M + c) * D, mod.begin() + (size_t(b) * M + c + 1) * D);
    }
  return out;
}

struct Shape {
  int B, Tn, D, M;
};
// Every combination of B in {1, 3}, Tn in {1, 49, 196}, D in {32, 96, 384}, M in {2, 6}.
std::vector<Shape> all_shapes() {
  std::vector<Shape> s;
  for (int B : {1, 3})
    for (int Tn : {1, 49, 196})
      for (int D : {32, 96, 384})
        for (int M : {2, 6}) s.push_back({B, Tn, D, M});
  return s;
}

}  // namespace

TEST_CASE("CUDA silu forward and backward", "[cuda][dit]") {
  if (!cuda::gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cuda::Context ctx;
  for (size_t n : {size_t(1), size_t(32), size_t(3 * 49 * 96), size_t(100003)}) {
    INFO("n = " << n);
    V x = randn_bf16(n, 3.0);
    Dev dx = put_bf16(x), dy = poisoned(n * sizeof(bf16));
    cuda::silu_forward(ctx, dx.h(), dy.h(), n);
    V y(n);
    cpu::silu_forward(x.data(), y.data(), n);
    expect_close(get_bf16(ctx, dy, n), y, kTolBf16, "silu y");

    V g = randn_bf16(n);
    Dev dg = put_bf16(g), dgx = poisoned(n * sizeof(bf16));
    cuda::silu_backward(ctx, dg.h(), dx.h(), dgx.h(), n);
    V gx(n);
    cpu::silu_backward(g.data(), x.data(), gx.data(), n);
    expect_close(get_bf16(ctx, dgx, n), gx, kTolBf16, "silu dx");
  }
}

TEST_CASE("CUDA modulate forward and backward", "[cuda][dit]") {
  if (!cuda::gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cuda::Context ctx;
  int which = 0;
  for (Shape s : all_shapes()) {
    const auto [B, Tn, D, M] = s;
    // Vary the chunks: with M = 2 both orders; with M = 6 the DiT msa (0, 1) and mlp (3, 4) pairs, or reversed.
    const int ishift = M == 2 ? which % 2 : (which % 2 ? 3 : 1), iscale = M == 2 ? 1 - ishift : (which % 2 ? 4 : 5);
    ++which;
    INFO("B = " << B << ", Tn = " << Tn << ", D = " << D << ", M = " << M << ", shift chunk " << ishift
                << ", scale chunk " << iscale);
    const size_t N = size_t(B) * Tn, ND = N * D, nmod = size_t(B) * M * D;
    const double eps = 1e-6;
    V x = randn_bf16(ND, 2.0, 0.3), mod = randn_bf16(nmod, 0.5);
    Dev dx = put_bf16(x), dmod = put_bf16(mod), dy = poisoned(ND * sizeof(bf16)), drs = poisoned(N * sizeof(float));
    cuda::modulate_forward(ctx, dx.h(), dmod.h(), dy.h(), drs.f(), B, Tn, D, M, ishift, iscale, float(eps));
    V y(ND), rstd(N);
    cpu::modulate_forward(x.data(), mod.data(), y.data(), rstd.data(), B, Tn, D, M, ishift, iscale, eps);
    expect_close(get_bf16(ctx, dy, ND), y, kTolBf16, "modulate y");
    expect_close(get_f32(ctx, drs, N), rstd, 1e-5, "modulate rstd");

    // Backward: dx and dmod both accumulate; rstd is the reference's, rounded to fp32.
    V g = randn_bf16(ND), gx0 = randn_bf16(ND, 0.5), gmod0 = randn_bf16(nmod, 0.5);
    V rs(N);
    for (size_t n = 0; n < N; ++n) rs[n] = float(rstd[n]);
    Dev dg = put_bf16(g), drs2 = put_f32(rs), dgx = put_bf16(gx0), dgmod = put_bf16(gmod0);
    cuda::modulate_backward(ctx, dg.h(), dx.h(), dmod.h(), drs2.f(), dgx.h(), dgmod.h(), B, Tn, D, M, ishift, iscale);
    V gx = gx0, gmod = gmod0;
    cpu::modulate_backward(g.data(), x.data(), mod.data(), rs.data(), gx.data(), gmod.data(), B, Tn, D, M, ishift,
                           iscale);
    expect_close(minus(get_bf16(ctx, dgx, ND), gx0), minus(gx, gx0), kTolBf16, "modulate dx increment");
    const V out_mod = get_bf16(ctx, dgmod, nmod);
    expect_close(chunks_of(minus(out_mod, gmod0), B, D, M, {ishift}, true),
                 chunks_of(minus(gmod, gmod0), B, D, M, {ishift}, true), kTolBf16, "modulate dshift increment");
    expect_close(chunks_of(minus(out_mod, gmod0), B, D, M, {iscale}, true),
                 chunks_of(minus(gmod, gmod0), B, D, M, {iscale}, true), kTolBf16, "modulate dscale increment");
    expect_close(chunks_of(out_mod, B, D, M, {ishift, iscale}, false),
                 chunks_of(gmod0, B, D, M, {ishift, iscale}, false), 0.0, "modulate dmod other chunks (untouched)");
  }
}

TEST_CASE("CUDA gated residual forward and backward", "[cuda][dit]") {
  if (!cuda::gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cuda::Context ctx;
  int which = 0;
  for (Shape s : all_shapes()) {
    const auto [B, Tn, D, M] = s;
    const int igate = M == 2 ? which % 2 : (which % 2 ? 2 : 5);
    ++which;
    INFO("B = " << B << ", Tn = " << Tn << ", D = " << D << ", M = " << M << ", gate chunk " << igate);
    const size_t ND = size_t(B) * Tn * D, nmod = size_t(B) * M * D;
    V x = randn_bf16(ND), y = randn_bf16(ND), mod = randn_bf16(nmod, 0.5);
    Dev dx = put_bf16(x), dy = put_bf16(y), dmod = put_bf16(mod), dout = poisoned(ND * sizeof(bf16));
    cuda::gated_residual_forward(ctx, dout.h(), dx.h(), dy.h(), dmod.h(), B, Tn, D, M, igate);
    V out(ND);
    cpu::gated_residual_forward(out.data(), x.data(), y.data(), mod.data(), B, Tn, D, M, igate);
    expect_close(get_bf16(ctx, dout, ND), out, kTolBf16, "gated residual out");
    cuda::gated_residual_forward(ctx, dx.h(), dx.h(), dy.h(), dmod.h(), B, Tn, D, M, igate);  // in place
    expect_close(get_bf16(ctx, dx, ND), out, kTolBf16, "gated residual in place");

    // Backward: dy overwritten (poisoned first), dmod accumulates.
    V g = randn_bf16(ND), gmod0 = randn_bf16(nmod, 0.5);
    Dev dg = put_bf16(g), dgy = poisoned(ND * sizeof(bf16)), dgmod = put_bf16(gmod0);
    cuda::gated_residual_backward(ctx, dg.h(), dy.h(), dmod.h(), dgy.h(), dgmod.h(), B, Tn, D, M, igate);
    V gy(ND), gmod = gmod0;
    cpu::gated_residual_backward(g.data(), y.data(), mod.data(), gy.data(), gmod.data(), B, Tn, D, M, igate);
    expect_close(get_bf16(ctx, dgy, ND), gy, kTolBf16, "gated residual dy");
    const V out_mod = get_bf16(ctx, dgmod, nmod);
    expect_close(chunks_of(minus(out_mod, gmod0), B, D, M, {igate}, true),
                 chunks_of(minus(gmod, gmod0), B, D, M, {igate}, true), kTolBf16, "gated residual dgate increment");
    expect_close(chunks_of(out_mod, B, D, M, {igate}, false), chunks_of(gmod0, B, D, M, {igate}, false), 0.0,
                 "gated residual dmod other chunks (untouched)");
  }
}

TEST_CASE("CUDA add_rows (position embedding)", "[cuda][dit]") {
  if (!cuda::gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cuda::Context ctx;
  for (int B : {1, 3})
    for (int Tn : {1, 49, 196})
      for (int D : {32, 96, 384}) {
        INFO("B = " << B << ", Tn = " << Tn << ", D = " << D);
        const size_t TD = size_t(Tn) * D, ND = size_t(B) * TD;
        V x0 = randn_bf16(ND), v = randn_bf16(TD);
        Dev dx = put_bf16(x0), dv = put_bf16(v);
        cuda::add_rows(ctx, dx.h(), dv.h(), B, Tn, D);
        V x = x0;
        cpu::add_rows(x.data(), v.data(), B, Tn, D);
        expect_close(minus(get_bf16(ctx, dx, ND), x0), minus(x, x0), kTolBf16, "add_rows increment");
      }
}

TEST_CASE("CUDA mse mean and backward", "[cuda][dit]") {
  if (!cuda::gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  cuda::Context ctx;
  for (size_t n : {size_t(5), size_t(32), size_t(49 * 96), size_t(3 * 196 * 384), size_t(100003)}) {
    INFO("n = " << n);
    V pred = randn_bf16(n), target = randn_bf16(n, 0.7, 0.1);
    Dev dp = put_bf16(pred), dt = put_bf16(target);
    // The mean in double by one block: the CPU's value, and the same bits when called again.
    Dev dmean = poisoned(sizeof(double));
    double first = 0, second = 0;
    cuda::mse_mean(ctx, dp.h(), dt.h(), n, static_cast<double*>(dmean.p));
    ctx.synchronize();
    cuda::copy_to_host(&first, dmean.p, sizeof(double));
    cuda::mse_mean(ctx, dp.h(), dt.h(), n, static_cast<double*>(dmean.p));
    ctx.synchronize();
    cuda::copy_to_host(&second, dmean.p, sizeof(double));
    CHECK(first == Approx(cpu::mse_forward(pred.data(), target.data(), n)).epsilon(1e-9));
    CHECK(first == second);

    Dev dgp = poisoned(n * sizeof(bf16));
    cuda::mse_backward(ctx, dp.h(), dt.h(), dgp.h(), n);
    V gp(n);
    cpu::mse_backward(pred.data(), target.data(), gp.data(), n);
    expect_close(get_bf16(ctx, dgp, n), gp, kTolBf16, "mse dpred");
  }
}

#endif  // MUE_HAVE_CUDA
