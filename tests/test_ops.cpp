// Every CPU op: backward against central finite differences in double, forward against a naive reference.
#include <complex>

#include "nn/ops/attention.h"
#include "nn/ops/crossentropy.h"
#include "nn/ops/embedding.h"
#include "nn/ops/matmul.h"
#include "nn/ops/qk_norm.h"
#include "nn/ops/residual.h"
#include "nn/ops/rmsnorm.h"
#include "nn/ops/rope.h"
#include "nn/ops/swiglu.h"
#include "tests/catch.h"
#include "tests/gradcheck.h"

using namespace mue;
using namespace mue::test;
using V = std::vector<double>;

namespace {
constexpr double kTol = 1e-6;  // relative error of analytic vs numeric gradients
}

TEST_CASE("matmul: forward vs naive loops, backward vs finite differences", "[ops]") {
  const int N = 5, In = 7, Out = 3;
  const double alpha = 0.37;
  V x = randn(N * In, 1), w = randn(Out * In, 2), R = randn(N * Out, 3), y(N * Out);
  cpu::matmul_forward(x.data(), w.data(), y.data(), N, In, Out, alpha);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < Out; ++o) {
      double s = 0;
      for (int i = 0; i < In; ++i) s += x[n * In + i] * w[o * In + i];
      REQUIRE(y[n * Out + o] == Approx(alpha * s).epsilon(1e-12));
    }
  auto loss = [&] { cpu::matmul_forward(x.data(), w.data(), y.data(), N, In, Out, alpha); return dot(y, R); };
  V dx(N * In), dw(Out * In, 0.5);  // dw starts non-zero: gradients accumulate
  V dw0 = dw;
  cpu::matmul_backward(R.data(), x.data(), w.data(), dx.data(), dw.data(), N, In, Out, alpha);
  for (size_t i = 0; i < dw.size(); ++i) dw[i] -= dw0[i];
  CHECK(rel_error(dx, numeric_grad(x, loss)) < kTol);
  CHECK(rel_error(dw, numeric_grad(w, loss)) < kTol);
}

TEST_CASE("embedding: gather and scatter-add with repeated tokens", "[ops]") {
  const int N = 6, D = 4, Vocab = 5;
  std::vector<int32_t> tok = {1, 3, 1, 0, 4, 1};
  V wte = randn(Vocab * D, 4), R = randn(N * D, 5), out(N * D);
  cpu::embedding_forward(tok.data(), wte.data(), out.data(), N, D);
  for (int n = 0; n < N; ++n)
    for (int i = 0; i < D; ++i) REQUIRE(out[n * D + i] == wte[tok[n] * D + i]);
  auto loss = [&] { cpu::embedding_forward(tok.data(), wte.data(), out.data(), N, D); return dot(out, R); };
  V dwte(Vocab * D, 0.0);
  cpu::embedding_backward(tok.data(), R.data(), dwte.data(), N, D, Vocab);
  CHECK(rel_error(dwte, numeric_grad(wte, loss)) < kTol);
}

TEST_CASE("rmsnorm: forward vs naive, backward vs finite differences", "[ops]") {
  const int N = 4, D = 6;
  V x = randn(N * D, 6), w = randn(D, 7), R = randn(N * D, 8), y(N * D), rstd(N);
  cpu::rmsnorm_forward(x.data(), w.data(), y.data(), rstd.data(), N, D, 1e-5);
  for (int n = 0; n < N; ++n) {
    double ms = 0;
    for (int i = 0; i < D; ++i) ms += x[n * D + i] * x[n * D + i] / D;
    for (int i = 0; i < D; ++i) REQUIRE(y[n * D + i] == Approx(x[n * D + i] * w[i] / std::sqrt(ms + 1e-5)).epsilon(1e-12));
  }
  auto loss = [&] { cpu::rmsnorm_forward(x.data(), w.data(), y.data(), rstd.data(), N, D, 1e-5); return dot(y, R); };
  loss();
  V dx(N * D, 0.25), dw(D, 0.0);
  cpu::rmsnorm_backward(R.data(), x.data(), w.data(), rstd.data(), dx.data(), dw.data(), N, D);
  for (auto& v : dx) v -= 0.25;  // dx accumulates onto the residual stream
  CHECK(rel_error(dx, numeric_grad(x, loss)) < kTol);
  CHECK(rel_error(dw, numeric_grad(w, loss)) < kTol);
}

TEST_CASE("qk_norm: each head's q and k normalized with its gains, v untouched; backward vs finite differences", "[ops]") {
  const int N = 3, H = 2, hd = 4, D = H * hd;
  const double eps = 1e-5;
  const V in = randn(N * 3 * D, 21), w = randn(2 * hd, 22), R = randn(N * 3 * D, 23);
  V qkv = in, pre(N * 2 * D), rstd(N * 2 * H);
  cpu::qk_norm_forward(qkv.data(), w.data(), pre.data(), rstd.data(), N, H, hd, eps);
  for (int n = 0; n < N; ++n)
    for (int part = 0; part < 3; ++part)
      for (int h = 0; h < H; ++h) {
        const size_t o = size_t(n) * 3 * D + part * D + h * hd;
        double ms = 0;
        for (int i = 0; i < hd; ++i) ms += in[o + i] * in[o + i] / hd;
        for (int i = 0; i < hd; ++i) {
          if (part == 2) {
            REQUIRE(qkv[o + i] == in[o + i]);
            continue;
          }
          REQUIRE(pre[(size_t(n) * 2 * H + part * H + h) * hd + i] == in[o + i]);
          REQUIRE(qkv[o + i] == Approx(in[o + i] / std::sqrt(ms + eps) * w[part * hd + i]).epsilon(1e-12));
        }
      }
  V x = in, wv = w;
  auto loss = [&] {
    qkv = x;
    cpu::qk_norm_forward(qkv.data(), wv.data(), pre.data(), rstd.data(), N, H, hd, eps);
    return dot(qkv, R);
  };
  loss();
  V dqkv = R, dw(2 * hd, 0.5);
  cpu::qk_norm_backward(dqkv.data(), pre.data(), wv.data(), rstd.data(), dw.data(), N, H, hd);
  for (auto& v : dw) v -= 0.5;  // dw accumulates
  CHECK(rel_error(dqkv, numeric_grad(x, loss)) < kTol);  // v's gradient passes through unchanged
  CHECK(rel_error(dw, numeric_grad(wv, loss)) < kTol);
}

TEST_CASE("rope: rotation matches complex multiplication; backward is its transpose", "[ops]") {
  const int B = 2, T = 5, H = 2, hd = 4, D = H * hd;
  const double theta = 100.0;
  V qkv = randn(B * T * 3 * D, 9), orig = qkv, R = randn(qkv.size(), 10);
  cpu::rope_forward(qkv.data(), B, T, H, hd, theta);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t)
      for (int part = 0; part < 3; ++part)
        for (int h = 0; h < H; ++h)
          for (int i = 0; i < hd / 2; ++i) {
            size_t o = (size_t(b) * T + t) * 3 * D + part * D + h * hd + 2 * i;
            std::complex<double> z(orig[o], orig[o + 1]);
            if (part < 2) z *= std::polar(1.0, t * std::pow(theta, -2.0 * i / hd));  // v is not rotated
            REQUIRE(qkv[o] == Approx(z.real()).margin(1e-12));
            REQUIRE(qkv[o + 1] == Approx(z.imag()).margin(1e-12));
          }
  V x = orig;
  auto loss = [&] { V y = x; cpu::rope_forward(y.data(), B, T, H, hd, theta); return dot(y, R); };
  V g = R;
  cpu::rope_backward(g.data(), B, T, H, hd, theta);
  CHECK(rel_error(g, numeric_grad(x, loss)) < kTol);
}

// Attention written the other way round: full score matrix with -inf masking, then softmax, per (b, h).
static V naive_attention(const V& qkv, int B, int T, int H, int hd, double scale, bool causal) {
  const int D = H * hd;
  V out(size_t(B) * T * D, 0.0);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      std::vector<V> S(T, V(T));
      for (int t = 0; t < T; ++t)
        for (int s = 0; s < T; ++s) {
          double d = 0;
          for (int i = 0; i < hd; ++i)
            d += qkv[(size_t(b) * T + t) * 3 * D + h * hd + i] * qkv[(size_t(b) * T + s) * 3 * D + D + h * hd + i];
          S[t][s] = causal && s > t ? -INFINITY : d * scale;
        }
      for (int t = 0; t < T; ++t) {
        double z = 0;
        for (int s = 0; s < T; ++s) z += std::exp(S[t][s]);
        for (int s = 0; s < T; ++s)
          for (int i = 0; i < hd; ++i)
            out[(size_t(b) * T + t) * D + h * hd + i] +=
                std::exp(S[t][s]) / z * qkv[(size_t(b) * T + s) * 3 * D + 2 * D + h * hd + i];
      }
    }
  return out;
}

TEST_CASE("attention: causal and bidirectional, forward vs naive, backward vs finite differences", "[ops]") {
  const int B = 2, T = 5, H = 2, hd = 3, D = H * hd;
  const double scale = 0.61;
  for (bool causal : {true, false}) {
    INFO("causal " << causal);
    V qkv = randn(B * T * 3 * D, causal ? 11 : 12), R = randn(B * T * D, 13), out(B * T * D), P(B * H * T * T);
    cpu::attention_forward(qkv.data(), out.data(), P.data(), B, T, H, hd, scale, causal);
    CHECK(rel_error(out, naive_attention(qkv, B, T, H, hd, scale, causal)) < 1e-13);
    auto loss = [&] { cpu::attention_forward(qkv.data(), out.data(), P.data(), B, T, H, hd, scale, causal); return dot(out, R); };
    loss();
    V dqkv(qkv.size(), 7.0);  // overwritten
    cpu::attention_backward(R.data(), qkv.data(), P.data(), dqkv.data(), B, T, H, hd, scale, causal);
    CHECK(rel_error(dqkv, numeric_grad(qkv, loss)) < kTol);
  }
}

TEST_CASE("swiglu: forward vs formula, backward vs finite differences", "[ops]") {
  const int N = 3, H = 4;
  V in = randn(N * 2 * H, 14, 2.0), R = randn(N * H, 15), out(N * H);
  cpu::swiglu_forward(in.data(), out.data(), N, H);
  for (int n = 0; n < N; ++n)
    for (int j = 0; j < H; ++j) {
      double g = in[n * 2 * H + j], u = in[n * 2 * H + H + j];
      REQUIRE(out[n * H + j] == Approx(g * u / (1 + std::exp(-g))).epsilon(1e-12));
    }
  auto loss = [&] { cpu::swiglu_forward(in.data(), out.data(), N, H); return dot(out, R); };
  V din(in.size());
  cpu::swiglu_backward(R.data(), in.data(), din.data(), N, H);
  CHECK(rel_error(din, numeric_grad(in, loss)) < kTol);
}

TEST_CASE("cross-entropy: padding columns ignored, backward vs finite differences", "[ops]") {
  const int N = 4, V_ = 5, Vp = 8;
  V logits = randn(N * Vp, 16, 3.0), losses(N);
  for (int n = 0; n < N; ++n)
    for (int j = V_; j < Vp; ++j) logits[n * Vp + j] = 1e3;  // would dominate if not ignored
  std::vector<int32_t> tgt = {0, 4, 2, 2};
  cpu::crossentropy_forward(logits.data(), tgt.data(), losses.data(), N, V_, Vp);
  for (int n = 0; n < N; ++n) {
    double z = 0;
    for (int j = 0; j < V_; ++j) z += std::exp(logits[n * Vp + j]);
    REQUIRE(losses[n] == Approx(-std::log(std::exp(logits[n * Vp + tgt[n]]) / z)).epsilon(1e-12));
  }
  auto loss = [&] {
    cpu::crossentropy_forward(logits.data(), tgt.data(), losses.data(), N, V_, Vp);
    double s = 0;
    for (double l : losses) s += l;
    return s / N;
  };
  V d(N * Vp);
  cpu::crossentropy_backward(logits.data(), tgt.data(), losses.data(), d.data(), N, V_, Vp, 1.0 / N);
  V num = numeric_grad(logits, loss);
  CHECK(rel_error(d, num) < kTol);
  for (int n = 0; n < N; ++n)
    for (int j = V_; j < Vp; ++j) CHECK(d[n * Vp + j] == 0.0);
}

TEST_CASE("residual add", "[ops]") {
  V a = randn(10, 17), b = randn(10, 18), out(10);
  cpu::residual_forward(out.data(), a.data(), b.data(), 10);
  for (int i = 0; i < 10; ++i) CHECK(out[i] == a[i] + b[i]);
}
