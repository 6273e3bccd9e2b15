// Rectified flow: batch construction, a tiny DiT memorising 16 images, the sampler's determinism, checkpoints.
#include <filesystem>

#include "experiments/checkpoint.h"
#include "experiments/flow.h"
#include "moe/moe_layer.h"
#include "optim/adamw.h"
#include "optim/rules.h"
#include "tests/catch.h"
#include "tests/gradcheck.h"

using namespace mue;
using namespace mue::test;

namespace {
ModelConfig small_dit() {
  ModelConfig c;
  c.task = "flow", c.d_model = 32, c.n_layers = 2, c.n_heads = 2, c.ffn_hidden = 64;
  c.image.channels = 1, c.image.size = 8, c.image.patch = 2, c.image.classes = 4, c.image.time_freq = 16;
  c.seq_len = 16;
  return c;
}
std::vector<float> images(int B, int npix, uint64_t seed) {
  std::vector<float> x(size_t(B) * npix);
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(std::tanh(rng_normal(seed, 1, i)));
  return x;
}
}  // namespace

TEST_CASE("flow batch: x_t interpolates, v = eps - x0, t in (0,1), label dropout", "[flow]") {
  const int B = 64, npix = 5;
  auto x0 = images(B, npix, 3);
  std::vector<int32_t> y(B, 2);
  FlowBatch fb = make_flow_batch(x0, y, B, npix, 7, 0, 0.5, 4);
  int dropped = 0;
  for (int b = 0; b < B; ++b) {
    CHECK(fb.t[b] > 0);
    CHECK(fb.t[b] < 1);
    dropped += fb.labels[b] == 4;
    for (int i = 0; i < npix; ++i) {
      const size_t k = size_t(b) * npix + i;
      const double eps = fb.v[k] + x0[k];
      CHECK(fb.xt[k] == Approx((1 - fb.t[b]) * x0[k] + fb.t[b] * eps));
    }
  }
  CHECK(dropped > 16);
  CHECK(dropped < 48);
  FlowBatch again = make_flow_batch(x0, y, B, npix, 7, 0, 0.5, 4);
  CHECK(again.xt == fb.xt);
  CHECK(again.labels == fb.labels);
}

TEST_CASE("tiny DiT memorises 16 images (loss falls by >= 80%)", "[flow]") {
  ModelConfig c = small_dit();
  Hyper hp;
  hp.lr = 3e-3;
  ParamTable t = make_param_table("mup", c, c, hp);
  CpuBackend<float> be;
  DiT<CpuBackend<float>> m(c, t, be, 16, make_ffn<CpuBackend<float>>);
  m.init_weights(1);
  auto x0 = images(16, 64, 5);
  std::vector<int32_t> y = {0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3};
  FlowBatch fb = make_flow_batch(x0, y, 16, 64, 9, 0, 0.0, 4);  // one fixed batch: memorisable
  AdamW<CpuBackend<float>> adam(m, AdamWConfig{});
  double first = 0, last = 0;
  for (int s = 0; s < 300; ++s) {
    m.zero_grad();
    last = m.forward(fb.xt.data(), fb.v.data(), fb.t.data(), fb.labels.data());
    if (s == 0) first = last;
    m.backward();
    adam.update(s + 1, 1.0);
  }
  INFO("first " << first << " last " << last);
  CHECK(last < 0.2 * first);
}

TEST_CASE("sampler is deterministic for a seed; checkpoints round-trip", "[flow]") {
  ModelConfig c = small_dit();
  c.ffn.type = "moe", c.ffn.experts = 4, c.ffn.active = 2, c.ffn.expert_hidden = 16;
  ParamTable t = make_param_table("mup", c, c, Hyper{});
  for (auto& r : t.rows)
    if (r.init == "zeros") r.init = "normal", r.init_std = 0.05;  // a non-trivial velocity field
  CpuBackend<double> be;
  DiT<CpuBackend<double>> m(c, t, be, 4, make_ffn<CpuBackend<double>>);
  m.init_weights(2);
  std::vector<int32_t> y = {0, 1, 2, 4};  // 4 = the null class
  auto a = flow_sample(m, y, 6, 2.0, 11), b = flow_sample(m, y, 6, 2.0, 11), d = flow_sample(m, y, 6, 2.0, 12);
  CHECK(a == b);
  CHECK(a != d);
  const std::string path = (std::filesystem::temp_directory_path() / ("mue_ckpt_" + std::to_string(::getpid()))).string();
  AdamW<CpuBackend<double>> adam(m, AdamWConfig{});
  save_checkpoint(m, adam, path, 17);
  DiT<CpuBackend<double>> m2(c, t, be, 4, make_ffn<CpuBackend<double>>);
  m2.init_weights(99);
  CHECK(load_checkpoint(m2, path) == 17);
  auto e = flow_sample(m2, y, 6, 2.0, 11);
  CHECK(rel_error(e, a) < 1e-6);  // checkpoints store fp32
  // a checkpoint of another shape is refused
  ModelConfig c3 = c;
  c3.d_model = 64, c3.n_heads = 4;
  ParamTable t3 = make_param_table("mup", c3, c, Hyper{});
  DiT<CpuBackend<double>> m3(c3, t3, be, 4, make_ffn<CpuBackend<double>>);
  CHECK_THROWS_WITH(load_checkpoint(m3, path), HasText("holds"));
  std::filesystem::resize_file(path, 100);
  CHECK_THROWS_WITH(load_checkpoint(m2, path), HasText("truncated"));
  std::filesystem::remove(path);
}
