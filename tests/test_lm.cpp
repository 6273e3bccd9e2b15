// The whole LM: gradient of the loss w.r.t. every parameter against finite differences (double), and a tiny
// model overfitting one batch (float, the path `train` runs on the CPU).
#include <omp.h>

#include <algorithm>
#include <memory>

#include "core/kernel_variants.h"
#include "nn/lm.h"
#include "optim/adamw.h"
#include "optim/rules.h"
#include "tests/catch.h"
#include "tests/gradcheck.h"

using namespace mue;
using namespace mue::test;

namespace {
ModelConfig tiny_config() {
  ModelConfig c;
  c.vocab = 11, c.vocab_pad = 13, c.d_model = 8, c.n_layers = 2, c.n_heads = 2, c.ffn_hidden = 12, c.seq_len = 5;
  c.rope_theta = 50;
  return c;
}
std::vector<int32_t> random_tokens(size_t n, int vocab, uint64_t seed) {
  std::vector<int32_t> t(n);
  for (size_t i = 0; i < n; ++i) t[i] = int32_t(rng_index(seed, 5, i, uint64_t(vocab)));
  return t;
}
}  // namespace

// sp: the head in one chunk, its gradient computed again in backward(); mup: the head in chunks of 3 rows (the
// last one ragged) with its gradient taken in the forward (forward(..., true)).
// completep and complete-mue: a reference of half the depth gives the residual branches m = L_ref/L = 0.5, and
// complete-mue's down-projection carries c = d/H = 2/3, so the backward must carry every forward multiplier.
TEST_CASE("LM gradient matches finite differences for every tensor (sp, mup, completep, complete-mue, QK-norm)", "[lm]") {
  for (auto [rule, qk_norm] : {std::pair{"sp", false}, std::pair{"mup", false}, std::pair{"mup", true},
                               std::pair{"completep", false}, std::pair{"complete-mue", true}}) {
    INFO("rule " << rule << ", qk_norm " << qk_norm);
    ModelConfig c = tiny_config();
    c.qk_norm = qk_norm;
    ModelConfig ref = c;
    ref.d_model = 4, ref.n_heads = 1, ref.ffn_hidden = 6, ref.n_layers = 1;  // non-trivial multipliers
    Hyper hp;
    hp.init_std = 0.5, hp.emb_init_std = 1.0;  // large enough that every path carries signal
    ParamTable table = make_param_table(rule, c, ref, hp);
    if (std::string(rule).starts_with("complete")) {
      REQUIRE(table.forward_alpha("layers.0.attn.proj") == Approx(0.5));
      REQUIRE(table.forward_alpha("layers.1.ffn.proj") == Approx(rule == std::string("completep") ? 0.5 : 0.5 * 8 / 12.0));
    }
    CpuBackend<double> be;
    const int B = 2;
    LM<CpuBackend<double>> model(c, table, be, B);
    model.init_weights(3);
    // Norm weights start at 1; perturb them so their gradients are generic.
    for (auto& p : model.params())
      if (p.row.tensor.role == TensorRole::norm) {
        auto v = model.host_values(p);
        for (size_t i = 0; i < v.size(); ++i) v[i] += 0.3 * rng_normal(9, 9, i);
        model.set_values(p, v);
      }
    auto x = random_tokens(B * c.seq_len, c.vocab, 1), y = random_tokens(B * c.seq_len, c.vocab, 2);
    const bool chunked = std::string(rule) == "mup" && !qk_norm;
    if (chunked) {
      REQUIRE((B * c.seq_len) % 3 != 0);
      model.set_head_rows(3);
    }
    model.zero_grad();
    const double l0 = model.forward(x.data(), y.data(), chunked);
    REQUIRE(std::isfinite(l0));
    model.backward();
    for (auto& p : model.params()) {
      INFO("tensor " << p.row.tensor.name);
      std::vector<double> analytic = model.host_grads(p), v = model.host_values(p);
      auto loss = [&] { model.set_values(p, v); return model.forward(x.data(), y.data()); };
      std::vector<double> numeric = numeric_grad(v, loss);
      model.set_values(p, v);
      if (p.row.tensor.name == "embed.wte" || p.row.tensor.name == "head.w") {
        // padding rows of the head and unused embedding rows have exactly zero gradient
        double n2 = 0;
        for (double g : numeric) n2 += g * g;
        REQUIRE(n2 > 0);
      }
      CHECK(rel_error(analytic, numeric) < 1e-6);
    }
  }
}

TEST_CASE("scratch arena: rewound users overlap, the allocation covers the largest; a model's FFN scratch is one layer's",
          "[lm]") {
  Arena a;
  for (int pass = 0; pass < 2; ++pass) {
    a.rewind();
    double* first = a.take<double>(100);  // 800 bytes
    a.rewind();
    double* second = a.take<double>(10);
    float* third = a.take<float>(300);  // at 256 + 1200 = 1456 bytes: the largest user
    if (pass == 0) {
      CHECK((first == nullptr && second == nullptr && third == nullptr));
      a.allocate(false);
      CHECK(a.bytes() == 1456);
      continue;
    }
    CHECK(first == second);  // both users start at offset 0
    CHECK(reinterpret_cast<char*>(third) == reinterpret_cast<char*>(first) + 256);
  }
  // Each layer's dense FFN keeps fc and sw [N, 3H] for its backward; dfc and dsw [N, 3H] (scratch) exist once:
  // adding a layer adds its own activations and not another scratch.
  ModelConfig c = tiny_config();
  c.ffn_hidden = 400;  // so that the FFN's buffers dominate the difference
  CpuBackend<double> be;
  auto bytes = [&](int layers) {
    ModelConfig m = c;
    m.n_layers = layers;
    return LM<CpuBackend<double>>(m, make_param_table("mup", m, m, Hyper{}), be, 2).activation_bytes();
  };
  const size_t N = 2 * c.seq_len, per_layer = bytes(3) - bytes(2);
  CHECK(bytes(4) - bytes(3) == per_layer);
  CHECK(per_layer >= N * 3 * 400 * sizeof(double));      // fc, sw of the new layer
  CHECK(per_layer < 2 * N * 3 * 400 * sizeof(double));   // not also a second dfc, dsw
}

TEST_CASE("LM head in chunks: loss and gradients do not depend on the chunking or on when the head's gradient is taken", "[lm]") {
  ModelConfig c = tiny_config();
  ParamTable table = make_param_table("mup", c, c, Hyper{});
  CpuBackend<double> be;
  const int B = 3;
  LM<CpuBackend<double>> model(c, table, be, B);
  model.init_weights(5);
  auto x = random_tokens(B * c.seq_len, c.vocab, 3), y = random_tokens(B * c.seq_len, c.vocab, 4);
  std::vector<std::vector<double>> ref;
  double lref = 0;
  for (int rows : {model.head_rows(), 1, 5})
    for (bool fused : {false, true}) {
      INFO("head rows " << rows << ", gradient in the forward " << fused);
      model.set_head_rows(rows);
      model.zero_grad();
      const double l = model.forward(x.data(), y.data(), fused);
      model.backward();
      if (ref.empty()) {
        lref = l;
        for (auto& p : model.params()) ref.push_back(model.host_grads(p));
        continue;
      }
      CHECK(std::abs(l - lref) < 1e-12 * std::abs(lref));
      for (size_t i = 0; i < ref.size(); ++i) CHECK(rel_error(model.host_grads(model.params()[i]), ref[i]) < 1e-12);
    }
  CHECK_THROWS(model.set_head_rows(model.head_rows() + 1000000));
}

TEST_CASE("LM: a step's first write of each gradient replaces the arena's old values (lazy zero_grad)", "[lm]") {
  for (bool fused : {false, true}) {
    INFO("head's gradient in the forward " << fused);
    ModelConfig c = tiny_config();
    c.qk_norm = true;  // its weights' gradient is a sum over rows (zeroed before the op adds)
    CpuBackend<double> be;
    LM<CpuBackend<double>> model(c, make_param_table("mup", c, c, Hyper{}), be, 2);
    model.init_weights(8);
    model.set_head_rows(3);  // chunks: the head's gradient is overwritten once, then added to
    auto x = random_tokens(2 * c.seq_len, c.vocab, 5), y = random_tokens(2 * c.seq_len, c.vocab, 6);
    check_stale_grads_replaced(model, [&] {
      model.zero_grad();
      model.forward(x.data(), y.data(), fused);
      model.backward();
    });
  }
  SECTION("eager_zero_grad=1 (memset, every write adds) gives the same gradients bit for bit") {
    ModelConfig c = tiny_config();
    auto x = random_tokens(2 * c.seq_len, c.vocab, 5), y = random_tokens(2 * c.seq_len, c.vocab, 6);
    std::vector<std::vector<double>> grads[2];
    for (int eager : {0, 1}) {
      const ScopedKernelVariants variant(eager ? "eager_zero_grad=1" : "eager_zero_grad=0");  // read at build
      CpuBackend<double> be;
      LM<CpuBackend<double>> model(c, make_param_table("mup", c, c, Hyper{}), be, 2);
      model.init_weights(8);
      model.set_head_rows(3);
      for (int step = 0; step < 2; ++step) {  // the second step starts from the first one's gradients
        model.zero_grad();
        model.forward(x.data(), y.data());
        model.backward();
      }
      for (auto& p : model.params()) grads[eager].push_back(model.host_grads(p));
    }
    CHECK(grads[0] == grads[1]);
  }
}

TEST_CASE("tiny LM overfits one fixed batch (loss falls by >= 90%)", "[lm]") {
  ModelConfig c;
  c.vocab = 64, c.vocab_pad = 64, c.d_model = 32, c.n_layers = 2, c.n_heads = 2, c.ffn_hidden = 64, c.seq_len = 16;
  Hyper hp;
  hp.lr = 1e-2;
  ParamTable table = make_param_table("sp", c, c, hp);
  CpuBackend<float> be;
  LM<CpuBackend<float>> model(c, table, be, 4);
  model.init_weights(1);
  auto x = random_tokens(4 * 16, 64, 11), y = random_tokens(4 * 16, 64, 12);
  AdamWConfig opt;
  AdamW<CpuBackend<float>> adam(model, opt);
  double first = 0, last = 0;
  for (int step = 0; step < 150; ++step) {
    model.zero_grad();
    last = model.forward(x.data(), y.data());
    if (step == 0) first = last;
    model.backward();
    adam.update(step + 1, 1.0);
  }
  INFO("first " << first << " last " << last);
  CHECK(first == Approx(std::log(64.0)).margin(0.2));
  CHECK(last < 0.1 * first);
}

// ZeRO-1's optimizer: AdamWs that each own a share of the packed arena (cut inside tensors), fed the sum of their
// shares' squared norms, update the model exactly as one AdamW over all of it. Clip is off: the summed norm
// differs from one sum over the arena by rounding (checked to 1e-12), and the update must not depend on it.
TEST_CASE("AdamW over shares of the arena (ZeRO-1) updates bit for bit as one AdamW over all", "[lm][optim]") {
  ModelConfig c = tiny_config();
  const ParamTable table = make_param_table("mup", c, c, Hyper{});
  CpuBackend<float> be_whole, be_split;
  LM<CpuBackend<float>> whole(c, table, be_whole, 2), split(c, table, be_split, 2);
  whole.init_weights(3), split.init_weights(3);
  const size_t n = whole.n_params();
  AdamWConfig cfg;
  cfg.grad_clip = 0;
  AdamW<CpuBackend<float>> one(whole, cfg);
  std::vector<std::unique_ptr<AdamW<CpuBackend<float>>>> shares;
  const size_t cuts[] = {0, n / 3 + 1, 2 * n / 3 + 2, n};
  int inside = 0;  // cuts that split a tensor between two shares
  for (size_t cut : {cuts[1], cuts[2]})
    inside += std::none_of(one.segments().begin(), one.segments().end(), [&](const AdamSegment& g) { return g.end == cut; });
  REQUIRE(inside == 2);
  for (int r = 0; r < 3; ++r) shares.push_back(std::make_unique<AdamW<CpuBackend<float>>>(split, cfg, OwnedRange{cuts[r], cuts[r + 1]}));
  size_t state = 0;
  for (auto& a : shares) state += a->state_bytes();
  CHECK(state == one.state_bytes());
  CHECK(shares[1]->state_bytes() == 2 * sizeof(float) * (cuts[2] - cuts[1]));
  auto x = random_tokens(2 * c.seq_len, c.vocab, 5), y = random_tokens(2 * c.seq_len, c.vocab, 6);
  for (int step = 0; step < 4; ++step) {
    const StepIn in = adamw_step_in(cfg, step, 1.0);
    whole.zero_grad(), split.zero_grad();
    *one.loss_out() = whole.forward(x.data(), y.data());
    const double loss = split.forward(x.data(), y.data());
    whole.backward(), split.backward();
    one.set_step_in(in);
    one.update_dev();
    double norm_sq = 0;
    for (auto& a : shares) a->set_step_in(in), *a->loss_out() = loss, a->grad_norm_sq_dev(), norm_sq += *a->norm_sq_out();
    CHECK(norm_sq == Approx(*one.norm_sq_out()).epsilon(1e-12));
    for (auto& a : shares) *a->norm_sq_out() = norm_sq, a->update_owned_dev();
    for (size_t i = 0; i < whole.params().size(); ++i) {
      INFO("step " << step << " tensor " << whole.P(i).row.tensor.name);
      REQUIRE(whole.host_values(whole.P(i)) == split.host_values(split.P(i)));
    }
  }
  // A share's moments reload from whole-tensor arrays (a checkpoint's): the owned part of each tensor.
  const size_t t = 1, first = whole.P(t).value - whole.P(0).value, cnt = whole.P(t).row.tensor.size();
  std::vector<float> m(cnt), v(cnt);
  for (size_t k = 0; k < cnt; ++k) m[k] = float(first + k), v[k] = -float(first + k);
  for (auto& a : shares) a->load_moments(t, m.data(), v.data());
  for (auto& a : shares)
    for (size_t e = std::max(first, a->owned().begin); e < std::min(first + cnt, a->owned().end); ++e)
      REQUIRE((a->m_owned()[e - a->owned().begin] == float(e) && a->v_owned()[e - a->owned().begin] == -float(e)));
}

TEST_CASE("initial weights: the table's draw of each index, on any number of threads", "[lm]") {
  ModelConfig c = tiny_config();
  c.vocab = 500, c.vocab_pad = 512, c.d_model = 64, c.n_heads = 4, c.ffn_hidden = 256;  // tensors split among threads
  const ParamTable t = make_param_table("sp", c, c, Hyper{});
  CpuBackend<float> be1, be4;
  LM<CpuBackend<float>> one(c, t, be1, 1), four(c, t, be4, 1);
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  one.init_weights(9);
  omp_set_num_threads(4);
  four.init_weights(9);
  omp_set_num_threads(threads);
  size_t split = 0;  // tensors large enough to be shared out
  for (size_t i = 0; i < one.params().size(); ++i) {
    const auto& p = one.P(i);
    INFO(p.row.tensor.name);
    const std::vector<double> w = one.host_values(p);
    CHECK(w == four.host_values(four.P(i)));  // bit for bit
    const uint64_t stream = hash_name(p.row.tensor.name.c_str());
    for (size_t k = 0; k < w.size(); k += 97)
      CHECK(w[k] == (p.row.init == "ones"    ? 1.0
                     : p.row.init == "zeros" ? 0.0
                                             : double(float(p.row.init_std * rng_normal(9, stream, k)))));
    split += w.size() > (size_t(1) << 14);
  }
  CHECK(split >= 2);
}

TEST_CASE("same seed gives the same initial weights in float and double", "[lm]") {
  ModelConfig c = tiny_config();
  ParamTable t = make_param_table("sp", c, c, Hyper{});
  CpuBackend<float> bf;
  CpuBackend<double> bd;
  LM<CpuBackend<float>> mf(c, t, bf, 1);
  LM<CpuBackend<double>> md(c, t, bd, 1);
  mf.init_weights(42), md.init_weights(42);
  for (size_t i = 0; i < mf.params().size(); ++i) {
    auto a = mf.host_values(mf.P(i)), b = md.host_values(md.P(i));
    CHECK(rel_error(a, b) < 1e-7);
  }
  // and the drawn std matches the table's
  auto w = md.host_values(md.P(2));  // layers.0.attn.qkv
  double ss = 0;
  for (double v : w) ss += v * v;
  CHECK(std::sqrt(ss / w.size()) == Approx(md.P(2).row.init_std).epsilon(0.15));
}
