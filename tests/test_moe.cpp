// MoE: router, dispatch/combine and the whole layer against finite differences (double), identities that pin
// the semantics down (N = a = 1 is the dense SwiGLU; a = N is the gate-weighted sum of all experts), the
// balance loss by hand, and an MoE LM overfitting one batch.
#include "experiments/device_step.h"
#include "moe/moe_layer.h"
#include "optim/adamw.h"
#include "optim/rules.h"
#include "tests/catch.h"
#include "tests/gradcheck.h"

using namespace mue;
using namespace mue::test;
using V = std::vector<double>;

TEST_CASE("top-k: per group, ties to the lower index", "[moe]") {
  V s = {0.1, 0.3, 0.3, 0.2, /* row 2 */ 0.5, 0.1, 0.2, 0.2};
  std::vector<int32_t> idx(4);
  cpu::topk_select(s.data(), idx.data(), 2, 4, 2, 1);
  CHECK(idx == std::vector<int32_t>{1, 2, 0, 2});
  cpu::topk_select(s.data(), idx.data(), 2, 4, 2, 2);  // one from {0,1}, one from {2,3}
  CHECK(idx == std::vector<int32_t>{1, 2, 0, 2});
  V t = {0.4, 0.3, 0.1, 0.2};
  std::vector<int32_t> one(2);
  cpu::topk_select(t.data(), one.data(), 1, 4, 2, 2);
  CHECK(one == std::vector<int32_t>{0, 3});
  cpu::topk_select(t.data(), one.data(), 1, 4, 2, 1);  // ungrouped, the same row takes the two largest
  CHECK(one == std::vector<int32_t>{0, 1});
}

TEST_CASE("router: gates, and backward through scores (softmax and sigmoid) with aux terms", "[moe]") {
  const int N = 3, E = 5, a = 2;
  for (bool sigmoid : {false, true}) {
    INFO("sigmoid " << sigmoid);
    V logits = randn(N * E, 21, 1.5), R = randn(N * a, 22), Xs = randn(N * E, 23), Xl = randn(N * E, 24);
    V scores(N * E), gates(N * a);
    std::vector<int32_t> idx(N * a);
    const double r = 2.0;
    cpu::router_forward(logits.data(), scores.data(), idx.data(), gates.data(), N, E, a, 1, sigmoid, r);
    for (int n = 0; n < N; ++n) CHECK(gates[n * a] + gates[n * a + 1] == Approx(r));  // r * (sum of g = 1)
    const std::vector<int32_t> chosen = idx;
    // loss = R.gates + Xs.scores + Xl.logits, with the expert choice held fixed
    auto loss = [&] {
      cpu::router_forward(logits.data(), scores.data(), idx.data(), gates.data(), N, E, a, 1, sigmoid, r);
      REQUIRE(idx == chosen);
      return dot(R, gates) + dot(Xs, scores) + dot(Xl, logits);
    };
    loss();
    V dl(N * E);
    cpu::router_backward(R.data(), Xs.data(), Xl.data(), scores.data(), idx.data(), dl.data(), N, E, a, sigmoid, r);
    CHECK(rel_error(dl, numeric_grad(logits, loss)) < 1e-6);
  }
}

TEST_CASE("dispatch: permutation and un-permutation are inverse; combine; gate_swiglu backward", "[moe]") {
  const int N = 6, E = 4, a = 2, D = 3;
  std::vector<int32_t> idx = {0, 3, 3, 1, 0, 1, 2, 3, 3, 0, 1, 0};
  std::vector<int32_t> off(E + 1), src(N * a), slot(N * a);
  cpu::dispatch_plan(idx.data(), N, a, E, off.data(), src.data(), slot.data());
  CHECK(off == std::vector<int32_t>{0, 4, 7, 8, 12});
  for (int i = 0; i < N * a; ++i) {
    CHECK(src[slot[i]] == i / a);                                    // the row of (n,k) holds token n
    CHECK(slot[i] >= off[idx[i]]);
    CHECK(slot[i] < off[idx[i] + 1]);  // ... inside expert idx's block
  }
  V x = randn(N * D, 31), xp(N * a * D), back(N * D, 0.0);
  cpu::permute_rows(x.data(), src.data(), xp.data(), N * a, D);
  cpu::unpermute_add(xp.data(), slot.data(), back.data(), N, a, D);
  for (int i = 0; i < N * D; ++i) CHECK(back[i] == Approx(a * x[i]));  // each token was sent a times
  // combine: out[n] = sum_k yp[slot[n*a+k]] (the gates are inside yp), overwriting out
  V yp = randn(N * a * D, 32), out(N * D, 7.0);
  cpu::combine_forward(yp.data(), slot.data(), out.data(), N, a, D);
  for (int n = 0; n < N; ++n)
    for (int j = 0; j < D; ++j) {
      double want = 0;
      for (int k = 0; k < a; ++k) want += yp[size_t(slot[n * a + k]) * D + j];
      CHECK(out[n * D + j] == Approx(want));
    }
  // gate_swiglu: hsw[row(i)] = g_i * silu(x) * y; gradients w.r.t. hfc and the gates
  const int h = 5;
  V hfc = randn(N * a * 2 * h, 35), g = randn(N * a, 36), Rh = randn(N * a * h, 37), hsw(N * a * h);
  auto loss = [&] {
    cpu::gate_swiglu_forward(hfc.data(), g.data(), slot.data(), hsw.data(), N, a, h);
    return dot(hsw, Rh);
  };
  V dhfc(hfc.size()), dg(g.size());
  cpu::gate_swiglu_backward(Rh.data(), hfc.data(), g.data(), slot.data(), dhfc.data(), dg.data(), N, a, h);
  CHECK(rel_error(dhfc, numeric_grad(hfc, loss)) < 1e-6);
  CHECK(rel_error(dg, numeric_grad(g, loss)) < 1e-6);
  V plain(N * a * h);  // ... which is the gate times the plain SwiGLU of the row
  cpu::swiglu_forward(hfc.data(), plain.data(), N * a, h);
  loss();
  for (int i = 0; i < N * a; ++i)
    for (int j = 0; j < h; ++j) CHECK(hsw[size_t(slot[i]) * h + j] == Approx(g[i] * plain[size_t(slot[i]) * h + j]));
}

TEST_CASE("balance loss matches a hand computation", "[moe]") {
  // N=2 tokens, E=2 experts, a=1. Scores row 0 = (0.7, 0.3) -> expert 0; row 1 = (0.4, 0.6) -> expert 1.
  // f = (1/2, 1/2), P = (0.55, 0.45); loss = coef * E * sum f P = 0.01 * 2 * 0.5 = 0.01.
  V s = {0.7, 0.3, 0.4, 0.6};
  std::vector<int32_t> idx = {0, 1};
  double load[2];
  V ds(4);
  CHECK(cpu::balance_loss(s.data(), idx.data(), 2, 2, 1, 0.01, ds.data(), load) == Approx(0.01));
  CHECK(load[0] == 0.5);
  CHECK(ds[0] == Approx(0.01 * 2 * 0.5 / 2));
  // N=3, E=3, a=2 with uneven loads: assignments {0,1}, {0,2}, {0,1}: f = (3/6, 2/6, 1/6);
  // P = ((0.5+0.6+0.45)/3, (0.3+0.1+0.35)/3, (0.2+0.3+0.2)/3) = (1.55/3, 0.25, 0.7/3);
  // loss = 0.01 * 3 * (0.5*1.55/3 + 0.25/3 + 0.7/18); dscores[n,e] = 0.01 * 3 * f_e / 3 = 0.01 f_e.
  V s3 = {0.5, 0.3, 0.2, 0.6, 0.1, 0.3, 0.45, 0.35, 0.2};
  std::vector<int32_t> i3 = {0, 1, 0, 2, 0, 1};
  double load3[3];
  V ds3(9);
  CHECK(cpu::balance_loss(s3.data(), i3.data(), 3, 3, 2, 0.01, ds3.data(), load3) ==
        Approx(0.03 * (0.5 * 1.55 / 3 + 0.25 / 3 + 0.7 / 18)));
  CHECK(load3[0] == Approx(0.5));
  CHECK(load3[1] == Approx(1.0 / 3));
  CHECK(load3[2] == Approx(1.0 / 6));
  for (int n = 0; n < 3; ++n) {
    CHECK(ds3[n * 3 + 0] == Approx(0.005));
    CHECK(ds3[n * 3 + 1] == Approx(0.01 / 3));
    CHECK(ds3[n * 3 + 2] == Approx(0.01 / 6));
  }
  // All tokens on expert 0 with scores (1, 0): f = (1, 0), P = (1, 0): loss = coef * E.
  V s2 = {1, 0, 1, 0};
  std::vector<int32_t> i2 = {0, 0};
  CHECK(cpu::balance_loss(s2.data(), i2.data(), 2, 2, 1, 0.01, (double*)nullptr, nullptr) == Approx(0.02));
}

namespace {
ModelConfig tiny_moe(int experts, int active, int h, int groups = 1, int shared = 0) {
  ModelConfig c;
  c.vocab = 11, c.vocab_pad = 12, c.d_model = 8, c.n_layers = 2, c.n_heads = 2, c.ffn_hidden = 12, c.seq_len = 4;
  c.ffn.type = "moe", c.ffn.experts = experts, c.ffn.active = active, c.ffn.expert_hidden = h;
  c.ffn.groups = groups, c.ffn.shared = shared, c.ffn.shared_hidden = shared ? 4 : 0;
  c.ffn.balance_coef = 0.05, c.ffn.z_coef = 0.01;
  return c;
}
std::vector<int32_t> toks(size_t n, int vocab, uint64_t seed) {
  std::vector<int32_t> t(n);
  for (size_t i = 0; i < n; ++i) t[i] = int32_t(rng_index(seed, 1, i, vocab));
  return t;
}
using DLM = LM<CpuBackend<double>>;
}  // namespace

// The complete-mue cases take a reference of half the depth, so the table has branch multiplier 0.5, expert and
// shared down-projections c = d/H_a and route scale r = a: every forward multiplier is in the gradient.
TEST_CASE("MoE LM gradient matches finite differences (softmax/sigmoid, groups, shared experts, complete-mue)", "[moe]") {
  struct Case { int E, a, G, shared; bool sigmoid; const char* rule; };
  for (Case k : {Case{4, 2, 1, 0, false, "mup"}, Case{4, 2, 2, 1, true, "mup"}, Case{3, 3, 1, 0, false, "mup"},
                 Case{4, 2, 1, 1, false, "complete-mue"}, Case{4, 2, 2, 0, true, "complete-mue"}}) {
    INFO("E " << k.E << " a " << k.a << " G " << k.G << " shared " << k.shared << " sigmoid " << k.sigmoid
              << " rule " << k.rule);
    ModelConfig c = tiny_moe(k.E, k.a, 6, k.G, k.shared);
    c.ffn.sigmoid = k.sigmoid;
    Hyper hp;
    hp.init_std = 0.5, hp.emb_init_std = 1.0;
    ModelConfig ref = c;
    ref.n_layers = c.n_layers / 2;
    ParamTable t = make_param_table(k.rule, c, ref, hp);
    if (std::string(k.rule) == "mup") {
      t.route_scale = 1.5;
    } else {
      REQUIRE(t.route_scale == k.a);
      REQUIRE(t.forward_alpha("layers.0.moe.experts.proj") == Approx(0.5 * 8.0 / (k.a * 6 + k.shared * 4)));
    }
    CpuBackend<double> be;
    DLM m(c, t, be, 2, make_ffn<CpuBackend<double>>);
    m.init_weights(4);
    auto x = toks(8, c.vocab, 1), y = toks(8, c.vocab, 2);
    auto total = [&] { double l = m.forward(x.data(), y.data()); return l + m.aux_loss(); };
    m.zero_grad();
    total();
    REQUIRE(m.aux_loss() > 0);
    m.backward();
    for (auto& p : m.params()) {
      INFO("tensor " << p.row.tensor.name);
      V g = m.host_grads(p), v = m.host_values(p);
      auto loss = [&] { m.set_values(p, v); return total(); };
      V num = numeric_grad(v, loss, 1e-6);
      m.set_values(p, v);
      CHECK(rel_error(g, num) < 1e-6);
    }
  }
}

TEST_CASE("MoE LM: a step's first write of each gradient replaces old values, empty experts' included", "[moe]") {
  ModelConfig c = tiny_moe(16, 1, 6, 1, 1);  // 8 tokens, 16 experts: most get no rows; a shared expert too
  CpuBackend<double> be;
  DLM m(c, make_param_table("mup", c, c, Hyper{}), be, 2, make_ffn<CpuBackend<double>>);
  m.init_weights(6);
  auto x = toks(8, c.vocab, 3), y = toks(8, c.vocab, 4);
  check_stale_grads_replaced(m, [&] {
    m.zero_grad();
    m.forward(x.data(), y.data(), true);
    m.aux_loss();
    m.backward();
  });
  const auto load = m.ffn_stats(0)->load;
  REQUIRE(std::count(load.begin(), load.end(), 0.0) > 0);  // some experts were empty
}

TEST_CASE("MoE with N = a = 1 (r = 1) is the dense SwiGLU of the same weights", "[moe]") {
  ModelConfig dense = tiny_moe(1, 1, 12);
  dense.ffn = FfnConfig{};
  ModelConfig moe = tiny_moe(1, 1, 12);
  moe.ffn.balance_coef = 0, moe.ffn.z_coef = 0;
  CpuBackend<double> be;
  DLM d(dense, make_param_table("sp", dense, dense, Hyper{}), be, 2, make_ffn<CpuBackend<double>>);
  DLM m(moe, make_param_table("sp", moe, dense, Hyper{}), be, 2, make_ffn<CpuBackend<double>>);
  d.init_weights(3), m.init_weights(3);
  for (auto& p : m.params()) {
    std::string name = p.row.tensor.name;
    for (auto [from, to] : {std::pair{"moe.experts.fc", "ffn.fc"}, std::pair{"moe.experts.proj", "ffn.proj"}})
      if (auto i = name.find(from); i != std::string::npos) name = name.substr(0, i) + to;
    if (name.find("moe.router") != std::string::npos) continue;
    for (auto& q : d.params())
      if (q.row.tensor.name == name) m.set_values(p, d.host_values(q));
  }
  auto x = toks(8, 11, 5), y = toks(8, 11, 6);
  CHECK(m.forward(x.data(), y.data()) == Approx(d.forward(x.data(), y.data())).epsilon(1e-12));
}

TEST_CASE("Dense MoE (a = N) is the gate-weighted sum of all experts", "[moe]") {
  ModelConfig c = tiny_moe(3, 3, 4);
  ParamTable t = make_param_table("sp", c, c, Hyper{});
  t.route_scale = 3;  // r = N, as Complete-muE's Bridge I sets it
  const int N = 5, D = c.d_model, h = 4, E = 3;
  CpuBackend<double> be;
  DLM m(c, t, be, 1, make_ffn<CpuBackend<double>>);  // only for the parameter views
  m.init_weights(8);
  std::vector<ModelParam<CpuBackend<double>>> p(m.params().begin() + 5, m.params().begin() + 8);  // router, fc, proj
  Arena acts, scratch;
  for (int pass = 0; pass < 2; ++pass) {
    MoeFfn<CpuBackend<double>> layer(c.ffn, N, D, be, acts, scratch, {&p[0], &p[1], &p[2]}, t.route_scale);
    if (pass == 0) {
      acts.allocate(false), scratch.allocate(false);
      continue;
    }
    V x = randn(N * D, 40), out(N * D);
    layer.forward(x.data(), out.data());
    // by hand: scores = softmax(x Wr^T); out = sum_e r * s_e * (SwiGLU_e(x) W2_e^T)
    V logits(N * E), fc(2 * h), sw(h), y(D);
    cpu::matmul_forward(x.data(), p[0].value, logits.data(), N, D, E, p[0].alpha);
    for (int n = 0; n < N; ++n) {
      double z = 0;
      for (int e = 0; e < E; ++e) z += std::exp(logits[n * E + e]);
      V expect(D, 0.0);
      for (int e = 0; e < E; ++e) {
        cpu::matmul_forward(x.data() + n * D, p[1].value + e * 2 * h * D, fc.data(), 1, D, 2 * h, p[1].alpha);
        cpu::swiglu_forward(fc.data(), sw.data(), 1, h);
        cpu::matmul_forward(sw.data(), p[2].value + e * D * h, y.data(), 1, h, D, p[2].alpha);
        for (int i = 0; i < D; ++i) expect[i] += 3.0 * std::exp(logits[n * E + e]) / z * y[i];
      }
      for (int i = 0; i < D; ++i) CHECK(out[n * D + i] == Approx(expect[i]).epsilon(1e-12));
    }
  }
}

TEST_CASE("LM with an MoE FFN overfits one batch", "[moe]") {
  ModelConfig c;
  c.vocab = 64, c.vocab_pad = 64, c.d_model = 32, c.n_layers = 2, c.n_heads = 2, c.seq_len = 16;
  c.ffn.type = "moe", c.ffn.experts = 8, c.ffn.active = 2, c.ffn.expert_hidden = 32;
  Hyper hp;
  hp.lr = 1e-2;
  ParamTable t = make_param_table("sp", c, c, hp);
  CpuBackend<float> be;
  LM<CpuBackend<float>> m(c, t, be, 4, make_ffn<CpuBackend<float>>);
  m.init_weights(1);
  auto x = toks(64, 64, 11), y = toks(64, 64, 12);
  AdamW<CpuBackend<float>> adam(m, AdamWConfig{});
  double first = 0, last = 0;
  for (int s = 0; s < 150; ++s) {
    m.zero_grad();
    last = m.forward(x.data(), y.data());
    if (s == 0) first = last;
    m.backward();
    adam.update(s + 1, 1.0);
  }
  INFO("first " << first << " last " << last);
  CHECK(last < 0.1 * first);
  const BranchStats* st = m.ffn_stats(0);
  REQUIRE(st);
  double sum = 0;
  for (double f : st->load) sum += f;
  CHECK(sum == Approx(1.0));
  CHECK(st->entropy > 0);
}

TEST_CASE("device step (scalars on the backend) equals the host step: MoE LM, clipping, divergence", "[moe][optim]") {
  ModelConfig c = tiny_moe(4, 2, 8);
  Hyper hp;
  hp.lr = 3e-2;
  ParamTable t = make_param_table("mup", c, c, hp);
  const int B = 2, N = B * c.seq_len;
  CpuBackend<double> ba, bb;
  LM<CpuBackend<double>> a(c, t, ba, B, make_ffn<CpuBackend<double>>), b(c, t, bb, B, make_ffn<CpuBackend<double>>);
  a.init_weights(3), b.init_weights(3);
  AdamWConfig opt;
  opt.grad_clip = 0.05;  // small enough to clip
  std::vector<int32_t> x(N), y(N);
  AdamW<CpuBackend<double>> adam_a(a, opt), adam_b(b, opt);
  adam_b.reset_step_out();
  DeviceStep<LM<CpuBackend<double>>> step_b(b, adam_b, false);
  for (int step = 0; step < 4; ++step) {
    for (int i = 0; i < N; ++i) x[i] = int32_t((i * 7 + step) % c.vocab), y[i] = int32_t((i * 5 + 1) % c.vocab);
    a.zero_grad();
    const double la = a.forward(x.data(), y.data(), true);
    a.backward();
    const StepStats st = adam_a.update(step + 1, 0.5);
    StepIn in = adamw_step_in(opt, step, 0.5);
    in.loss_bound = step == 2 ? la - 1e-9 : INFINITY;  // step 2 counts as diverged
    step_b.run(in, [&] { b.upload_batch(x.data(), y.data()); });
    const StepOut o = adam_b.read_step_out();
    CHECK(o.loss == la);
    CHECK(std::sqrt(o.norm_sq) == st.grad_norm);
    CHECK(st.grad_norm > opt.grad_clip);
    CHECK(o.first_bad == (step < 2 ? -1 : 2));
    CHECK(b.aux_loss() == a.aux_loss());
    for (size_t i = 0; i < a.params().size(); ++i) {
      INFO("step " << step << ", " << a.P(i).row.tensor.name);
      CHECK(b.host_values(b.P(i)) == a.host_values(a.P(i)));  // the same arithmetic: equal to the bit
    }
  }
}
