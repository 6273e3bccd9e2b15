// Coordinate checks: under mup the activations and their updates stay flat across width (log-log slope ~ 0);
// under sp the updates grow with width. Also across MoE shapes at fixed width (complete-mue against the variant
// without route scale).
#include "experiments/coord_check.h"
#include "tests/catch.h"

using namespace mue;

namespace {
ModelConfig coord_base() {
  ModelConfig m;
  m.vocab = 64, m.vocab_pad = 64, m.d_model = 32, m.n_layers = 2, m.n_heads = 2, m.ffn_hidden = 64, m.seq_len = 16;
  return m;
}
// 4 steps at LR 1e-2 without clipping, batch 4, seed 1.
std::vector<CoordRow> run(const std::vector<CoordPoint>& pts, const std::string& rule, const ModelConfig& ref) {
  Hyper hp;
  hp.lr = 1e-2;
  AdamWConfig opt;
  opt.grad_clip = 0;
  return coord_check(pts, rule, ref, hp, opt, 4, 4, 1);
}
}  // namespace

TEST_CASE("coordinate check: mup and complete-mue flat in width, sp not", "[coord]") {
  ModelConfig base = coord_base();
  auto pts = width_points(base, {32, 64, 128, 256});
  auto mup = run(pts, "mup", base);
  auto sp = run(pts, "sp", base);
  for (const char* q : {"attn_out", "ffn_out", "block_out", "logits"}) {
    const double sm = coord_slope(pts, mup, q, 4, true), ss = coord_slope(pts, sp, q, 4, true);
    INFO(q << ": slope of the update RMS vs width, mup " << sm << ", sp " << ss);
    CHECK(std::abs(sm) < 0.2);
    CHECK(ss > 0.35);
  }
  auto cmue = run(pts, "complete-mue", base);
  for (const char* q : {"attn_out", "ffn_out", "block_out", "logits"}) {
    const double sc = coord_slope(pts, cmue, q, 4, true);
    INFO(q << ": slope of the update RMS vs width under complete-mue " << sc);
    CHECK(std::abs(sc) < 0.2);
  }
  for (const char* q : {"attn_out", "ffn_out", "block_out", "logits"}) {
    const double sm = coord_slope(pts, mup, q, 4, false);
    INFO(q << ": slope of the activation RMS vs width under mup " << sm);
    CHECK(std::abs(sm) < 0.2);
  }
}

// Across activated experts at fixed N and width: complete-mue (c = d/(a*h), r = a) keeps the FFN branch's
// output at init flat in a, and its updates fall far less than without the route scale (r = 1), where the
// branch shrinks like 1/a. (Its updates still fall as about a^-0.3 here: each expert's Adam step is less aligned
// with any one token's features when it serves more tokens of this small batch.)
TEST_CASE("coordinate check across MoE shapes: complete-mue flat in a at init, no route scale shrinks", "[coord][moe]") {
  ModelConfig base = coord_base();
  base.ffn.expert_hidden = 16;
  base.ffn.balance_coef = 0;
  auto pts = shape_points(base, {"16e2a", "16e4a", "16e8a", "16e16a"});
  auto cmue = run(pts, "complete-mue", base);
  auto nors = run(pts, "mup-no-route-scale", base);
  for (int step : {0, 1, 2, 3, 4}) {
    const double sc = coord_slope(pts, cmue, "ffn_out", step, false), sn = coord_slope(pts, nors, "ffn_out", step, false);
    INFO("step " << step << ": activation RMS of ffn_out vs a: complete-mue " << sc << ", no route scale " << sn);
    CHECK(sn < -0.9);
    if (step == 0) CHECK(std::abs(sc) < 0.1);
  }
  for (int step : {1, 2, 3, 4}) {
    const double sc = coord_slope(pts, cmue, "ffn_out", step, true), sn = coord_slope(pts, nors, "ffn_out", step, true);
    INFO("step " << step << ": update RMS of ffn_out vs a: complete-mue " << sc << ", no route scale " << sn);
    CHECK(sc > sn + 0.5);
  }
}
