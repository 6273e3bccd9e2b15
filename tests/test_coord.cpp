// Coordinate checks: under mup the activations and their updates stay flat across width (log-log slope ~ 0);
// under sp the updates grow with width. Also across MoE shapes at fixed width.
#include "experiments/coord_check.h"
#include "tests/catch.h"

using namespace mue;

namespace {
ModelConfig coord_base() {
  ModelConfig m;
  m.vocab = 64, m.vocab_pad = 64, m.d_model = 32, m.n_layers = 2, m.n_heads = 2, m.ffn_hidden = 64, m.seq_len = 16;
  return m;
}
}  // namespace

TEST_CASE("coordinate check: mup and complete-mue flat in width, sp not", "[coord]") {
  ModelConfig base = coord_base();
  auto pts = width_points(base, {32, 64, 128, 256});
  Hyper hp;
  hp.lr = 1e-2;
  AdamWConfig opt;
  opt.grad_clip = 0;
  auto mup = coord_check(pts, "mup", base, hp, opt, 4, 4, 1);
  auto sp = coord_check(pts, "sp", base, hp, opt, 4, 4, 1);
  for (const char* q : {"attn_out", "ffn_out", "block_out", "logits"}) {
    const double sm = coord_slope(pts, mup, q, 4, true), ss = coord_slope(pts, sp, q, 4, true);
    INFO(q << ": slope of the update RMS vs width, mup " << sm << ", sp " << ss);
    CHECK(std::abs(sm) < 0.2);
    CHECK(ss > 0.35);
  }
  auto cmue = coord_check(pts, "complete-mue", base, hp, opt, 4, 4, 1);
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
