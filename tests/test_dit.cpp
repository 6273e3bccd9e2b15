// The diffusion transformer on the CPU: every new op and the whole DiT against finite differences (double),
// adaLN-Zero blocks are the identity at init, patchify round trip.
#include "experiments/device_step.h"
#include "moe/moe_layer.h"
#include "nn/dit.h"
#include "optim/adamw.h"
#include "optim/rules.h"
#include "tests/catch.h"
#include "tests/gradcheck.h"

using namespace mue;
using namespace mue::test;
using V = std::vector<double>;

TEST_CASE("patchify and unpatchify are inverse permutations", "[dit]") {
  const int B = 2, C = 3, S = 6, p = 2;
  V img = randn(B * C * S * S, 61), tok(img.size()), back(img.size());
  cpu::patchify(img.data(), tok.data(), B, C, S, p);
  cpu::unpatchify(tok.data(), back.data(), B, C, S, p);
  CHECK(back == img);
  // patch (gy=1, gx=2) of image 1, channel 2, pixel (1, 0)
  CHECK(tok[(size_t(1) * 9 + 1 * 3 + 2) * 12 + (2 * 2 + 1) * 2 + 0] == img[((1 * 3 + 2) * 6 + 3) * 6 + 4]);
}

TEST_CASE("DiT ops: silu, modulate, gated residual, mse against finite differences", "[dit]") {
  const int B = 2, Tn = 3, D = 4, M = 3;
  SECTION("silu") {
    V x = randn(10, 62, 2.0), y(10), R = randn(10, 63), dx(10);
    auto loss = [&] { cpu::silu_forward(x.data(), y.data(), 10); return dot(y, R); };
    cpu::silu_backward(R.data(), x.data(), dx.data(), 10);
    CHECK(rel_error(dx, numeric_grad(x, loss)) < 1e-6);
  }
  SECTION("modulate") {
    V x = randn(B * Tn * D, 64), mod = randn(B * M * D, 65), R = randn(B * Tn * D, 66), y(B * Tn * D), rstd(B * Tn);
    auto loss = [&] {
      cpu::modulate_forward(x.data(), mod.data(), y.data(), rstd.data(), B, Tn, D, M, 2, 0, 1e-6);
      return dot(y, R);
    };
    loss();
    V dx(x.size(), 0.0), dmod(mod.size(), 0.0);
    cpu::modulate_backward(R.data(), x.data(), mod.data(), rstd.data(), dx.data(), dmod.data(), B, Tn, D, M, 2, 0);
    CHECK(rel_error(dx, numeric_grad(x, loss)) < 1e-6);
    CHECK(rel_error(dmod, numeric_grad(mod, loss)) < 1e-6);
  }
  SECTION("gated residual") {
    V x = randn(B * Tn * D, 67), y = randn(B * Tn * D, 68), mod = randn(B * M * D, 69), R = randn(B * Tn * D, 70),
      out(x.size());
    auto loss = [&] {
      cpu::gated_residual_forward(out.data(), x.data(), y.data(), mod.data(), B, Tn, D, M, 1);
      return dot(out, R);
    };
    V dy(y.size()), dmod(mod.size(), 0.0);
    cpu::gated_residual_backward(R.data(), y.data(), mod.data(), dy.data(), dmod.data(), B, Tn, D, M, 1);
    CHECK(rel_error(dy, numeric_grad(y, loss)) < 1e-6);
    CHECK(rel_error(dmod, numeric_grad(mod, loss)) < 1e-6);
    CHECK(rel_error(R, numeric_grad(x, loss)) < 1e-6);  // x passes through: the model adds dout to dx itself
  }
  SECTION("mse") {
    V p = randn(12, 71), t = randn(12, 72), d(12);
    auto loss = [&] { return cpu::mse_forward(p.data(), t.data(), 12); };
    cpu::mse_backward(p.data(), t.data(), d.data(), 12);
    CHECK(rel_error(d, numeric_grad(p, loss)) < 1e-6);
  }
}

TEST_CASE("fixed embeddings: 2-D sin-cos positions and timestep features, by hand", "[dit]") {
  // G = 2, D = 8: two frequencies per axis and function, 1 and 10000^(-1/2) = 0.01; row of (gy, gx) = (1, 0).
  const std::vector<double> e = cpu::sincos_2d(2, 8);
  REQUIRE(e.size() == 4 * 8);
  const double want[8] = {std::sin(1.0), std::sin(0.01), std::cos(1.0), std::cos(0.01), 0, 0, 1, 1};
  for (int i = 0; i < 8; ++i) CHECK(e[2 * 8 + i] == Approx(want[i]).margin(1e-15));
  for (int i = 0; i < 8; ++i) CHECK(e[i] == (i % 4 < 2 ? 0.0 : 1.0));  // (0, 0): sines 0, cosines 1
  // t = 0.5, F = 4: angles 1000 * 0.5 * (1, 0.01) = (500, 5); cosines first, then sines.
  const double t = 0.5;
  double f[4];
  cpu::timestep_features(&t, f, 1, 4);
  CHECK(f[0] == Approx(std::cos(500.0)));
  CHECK(f[1] == Approx(std::cos(5.0)));
  CHECK(f[2] == Approx(std::sin(500.0)));
  CHECK(f[3] == Approx(std::sin(5.0)));
}

namespace {
ModelConfig tiny_dit(bool moe) {
  ModelConfig c;
  c.task = "flow", c.d_model = 8, c.n_layers = 2, c.n_heads = 2, c.ffn_hidden = 12;
  c.image.channels = 1, c.image.size = 4, c.image.patch = 2, c.image.classes = 3, c.image.time_freq = 6;
  c.seq_len = 4;
  if (moe) c.ffn.type = "moe", c.ffn.experts = 3, c.ffn.active = 2, c.ffn.expert_hidden = 4;
  return c;
}
}  // namespace

// The complete-mue case has a reference of half the depth: branch multiplier 0.5, experts' c = d/(a*h) = 2/3, r = a.
TEST_CASE("DiT gradient matches finite differences for every tensor (dense and MoE FFN, QK-norm, complete-mue)", "[dit]") {
  for (auto [moe, qk_norm, rule] : {std::tuple{false, false, "mup"}, std::tuple{true, false, "mup"},
                                    std::tuple{false, true, "mup"}, std::tuple{true, false, "complete-mue"}}) {
    INFO("moe " << moe << ", qk_norm " << qk_norm << ", rule " << rule);
    ModelConfig c = tiny_dit(moe);
    c.qk_norm = qk_norm;
    Hyper hp;
    hp.init_std = 0.5, hp.emb_init_std = 1.0;
    if (std::string(rule) == "complete-mue") c.ffn.expert_hidden = 6;  // c = d/(a*h) = 2/3
    ModelConfig ref = c;
    ref.n_layers = c.n_layers / 2;
    ParamTable t = make_param_table(rule, c, ref, hp);
    if (std::string(rule) == "complete-mue") {
      REQUIRE(t.route_scale == 2);
      REQUIRE(t.forward_alpha("layers.1.moe.experts.proj") == Approx(0.5 * 8.0 / (2 * 6)));
      REQUIRE(t.forward_alpha("layers.1.attn.proj") == Approx(0.5));
    }
    for (auto& r : t.rows) r.init = "normal", r.init_std = r.init_std > 0 ? r.init_std : 0.3;  // no zero inits here
    CpuBackend<double> be;
    const int B = 2;
    DiT<CpuBackend<double>> m(c, t, be, B, make_ffn<CpuBackend<double>>);
    m.init_weights(3);
    V x = randn(B * 16, 81), v = randn(B * 16, 82), tt = {0.3, 0.8};
    std::vector<int32_t> y = {1, 3};  // 3 = null class
    auto total = [&] { return m.forward(x.data(), v.data(), tt.data(), y.data()) + m.aux_loss(); };
    m.zero_grad();
    total();
    m.backward();
    for (auto& p : m.params()) {
      INFO("tensor " << p.row.tensor.name);
      V g = m.host_grads(p), w = m.host_values(p);
      auto loss = [&] { m.set_values(p, w); return total(); };
      V num = numeric_grad(w, loss);
      m.set_values(p, w);
      CHECK(rel_error(g, num) < 1e-6);
    }
  }
}

TEST_CASE("DiT: a step's first write of each gradient replaces the arena's old values (lazy zero_grad)", "[dit]") {
  ModelConfig c = tiny_dit(true);
  c.qk_norm = true;
  ParamTable t = make_param_table("mup", c, c, Hyper{});
  for (auto& r : t.rows) r.init = "normal", r.init_std = r.init_std > 0 ? r.init_std : 0.3;
  CpuBackend<double> be;
  DiT<CpuBackend<double>> m(c, t, be, 2, make_ffn<CpuBackend<double>>);
  m.init_weights(5);
  V x = randn(2 * 16, 83), v = randn(2 * 16, 84), tt = {0.2, 0.9};
  std::vector<int32_t> y = {0, 3};
  check_stale_grads_replaced(m, [&] {
    m.zero_grad();
    m.forward(x.data(), v.data(), tt.data(), y.data());
    m.aux_loss();
    m.backward();
  });
}

TEST_CASE("adaLN-Zero: at init every block is the identity and the prediction is zero", "[dit]") {
  ModelConfig c = tiny_dit(false);
  ParamTable t = make_param_table("sp", c, c, Hyper{});
  int zeros = 0;
  for (const auto& r : t.rows) zeros += r.init == "zeros";
  CHECK(zeros == 2 + c.n_layers);  // final.ada, final.w and every block's ada.w
  CpuBackend<double> be;
  DiT<CpuBackend<double>> m(c, t, be, 2);
  m.init_weights(5);
  V x = randn(32, 83), v = randn(32, 84), tt = {0.1, 0.9};
  std::vector<int32_t> y = {0, 2};
  const double loss = m.forward(x.data(), v.data(), tt.data(), y.data());
  for (double p : m.prediction()) CHECK(p == 0.0);
  CHECK(loss == Approx(dot(v, v) / 32).epsilon(1e-12));  // v_hat = 0
  // The blocks themselves: with a non-zero output layer, a model of 1 block and one of 3 blocks that share every
  // other weight predict the same (each zero-gated block passes its input through), and not zero.
  ModelConfig c3 = c;
  c3.n_layers = 3, c.n_layers = 1;
  DiT<CpuBackend<double>> one(c, make_param_table("sp", c, c, Hyper{}), be, 2),
      three(c3, make_param_table("sp", c3, c3, Hyper{}), be, 2);
  one.init_weights(5), three.init_weights(6);
  for (auto& p : one.params()) {
    V w = one.host_values(p);
    if (p.row.tensor.name == "final.w") {
      w = randn(w.size(), 85);
      one.set_values(p, w);
    }
    for (auto& q : three.params())
      if (q.row.tensor.name == p.row.tensor.name) three.set_values(q, w);
  }
  one.forward(x.data(), v.data(), tt.data(), y.data());
  three.forward(x.data(), v.data(), tt.data(), y.data());
  const std::vector<double> p1 = one.prediction(), p3 = three.prediction();
  CHECK(dot(p1, p1) > 0);
  CHECK(rel_error(p3, p1) < 1e-12);
}

TEST_CASE("DiT device step (scalars on the backend) equals the host step, dense and MoE", "[dit][optim]") {
  for (bool moe : {false, true}) {
    INFO("moe " << moe);
    ModelConfig c = tiny_dit(moe);
    Hyper hp;
    hp.lr = 3e-2;
    ParamTable t = make_param_table("mup", c, c, hp);
    for (auto& r : t.rows) r.init = "normal", r.init_std = r.init_std > 0 ? r.init_std : 0.3;
    const int B = 2;
    CpuBackend<double> ba, bb;
    DiT<CpuBackend<double>> a(c, t, ba, B, make_ffn<CpuBackend<double>>), b(c, t, bb, B, make_ffn<CpuBackend<double>>);
    a.init_weights(3), b.init_weights(3);
    AdamWConfig opt;
    opt.grad_clip = 0.05;
    AdamW<CpuBackend<double>> adam_a(a, opt), adam_b(b, opt);
    adam_b.reset_step_out();
    DeviceStep<DiT<CpuBackend<double>>> step_b(b, adam_b, false);
    for (int step = 0; step < 3; ++step) {
      V x = randn(B * 16, 90 + step), v = randn(B * 16, 95 + step), tt = {0.2 + 0.1 * step, 0.7};
      std::vector<int32_t> y = {step % 3, 3};
      a.zero_grad();
      const double la = a.forward(x.data(), v.data(), tt.data(), y.data());
      a.backward();
      const StepStats st = adam_a.update(step + 1, 0.5);
      step_b.run(adamw_step_in(opt, step, 0.5), [&] { b.upload_batch(x.data(), v.data(), tt.data(), y.data()); });
      const StepOut o = adam_b.read_step_out();
      CHECK(o.loss == la);
      CHECK(std::sqrt(o.norm_sq) == st.grad_norm);
      CHECK(o.first_bad == -1);
      CHECK(b.aux_loss() == a.aux_loss());
      for (size_t i = 0; i < a.params().size(); ++i) {
        INFO("step " << step << ", " << a.P(i).row.tensor.name);
        CHECK(b.host_values(b.P(i)) == a.host_values(a.P(i)));
      }
    }
  }
}
