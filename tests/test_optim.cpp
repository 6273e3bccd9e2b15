// AdamW against a step worked by hand, schedules, and the sp / mup tables at two widths.
#include "nn/backend.h"
#include "optim/adamw_ops.h"
#include "optim/rules.h"
#include "optim/schedule.h"
#include "tests/catch.h"

using namespace mue;

TEST_CASE("AdamW: two steps worked by hand", "[optim]") {
  // p=1, g=0.5, b1=0.9, b2=0.95, lr=0.1, wd=0.01, eps=1e-8.
  // step 1: m=0.05, v=0.0125, mhat=0.5, vhat=0.25, update=0.5/(0.5+1e-8); p = 1 - 0.1*(update + 0.01*1)
  // step 2 (g=0.5 again): m=0.095, v=0.024375, mhat=0.095/0.19=0.5, vhat=0.024375/0.0975=0.25, same update
  double p = 1, g = 0.5, m = 0, v = 0;
  cpu::adamw_step(&p, &g, &m, &v, 1, 0.1, 0.9, 0.95, 1e-8, 0.01, 1, 1.0);
  const double upd = 0.5 / (0.5 + 1e-8);
  const double p1 = 1 - 0.1 * (upd + 0.01);
  CHECK(m == Approx(0.05).epsilon(1e-14));
  CHECK(v == Approx(0.0125).epsilon(1e-14));
  CHECK(p == Approx(p1).epsilon(1e-14));
  cpu::adamw_step(&p, &g, &m, &v, 1, 0.1, 0.9, 0.95, 1e-8, 0.01, 2, 1.0);
  CHECK(m == Approx(0.095).epsilon(1e-14));
  CHECK(v == Approx(0.024375).epsilon(1e-14));
  CHECK(p == Approx(p1 - 0.1 * (upd + 0.01 * p1)).epsilon(1e-13));
  // grad_scale (clipping) scales g before the moments
  double p2 = 1, g2 = 4.0, m2 = 0, v2 = 0;
  cpu::adamw_step(&p2, &g2, &m2, &v2, 1, 0.1, 0.9, 0.95, 1e-8, 0.0, 1, 0.125);
  CHECK(m2 == Approx(0.05).epsilon(1e-14));
}

TEST_CASE("schedules: warmup, cosine end, wsd plateau and decay", "[optim]") {
  Schedule s;
  s.kind = "cosine", s.warmup = 10, s.total = 110, s.min_factor = 0.1;
  CHECK(s.factor(0) == Approx(0.1));
  CHECK(s.factor(9) == Approx(1.0));
  CHECK(s.factor(10) == Approx(1.0));
  CHECK(s.factor(60) == Approx(0.55));  // half way through the cosine
  CHECK(s.factor(110) == Approx(0.1));
  s.kind = "wsd", s.decay_fraction = 0.2;  // decay over the last 22 steps
  CHECK(s.factor(50) == Approx(1.0));
  CHECK(s.factor(87) == Approx(1.0));
  CHECK(s.factor(88) == Approx(1.0 - 0.9 / 22));
  CHECK(s.factor(109) == Approx(0.1));
  s.kind = "constant";
  CHECK(s.factor(100) == Approx(1.0));
  s.kind = "linear";
  CHECK_THROWS_WITH(s.validate(), HasText("unknown schedule 'linear'"));
}

namespace {
const ParamRow& row(const ParamTable& t, const std::string& n) { return t.row(n); }
}

TEST_CASE("sp and mup tables at two widths, values worked by hand", "[optim]") {
  ModelConfig ref;
  ref.vocab = 100, ref.vocab_pad = 128, ref.d_model = 64, ref.n_layers = 2, ref.n_heads = 2, ref.ffn_hidden = 256;
  ModelConfig tgt = ref;
  tgt.d_model = 256, tgt.n_heads = 4, tgt.ffn_hidden = 1024;  // rho_d = 4, head dim 64 vs 32
  Hyper hp;
  hp.lr = 0.01, hp.wd = 0.1, hp.init_std = 0.02, hp.emb_init_std = 0.5, hp.eps = 1e-8;

  SECTION("mup at the reference equals sp at the reference") {
    ParamTable a = make_param_table("mup", ref, ref, hp), b = make_param_table("sp", ref, ref, hp);
    REQUIRE(a.rows.size() == b.rows.size());
    for (size_t i = 0; i < a.rows.size(); ++i) {
      CHECK(a.rows[i].lr == Approx(b.rows[i].lr));
      CHECK(a.rows[i].init_std == Approx(b.rows[i].init_std));
      CHECK(a.rows[i].multiplier == Approx(b.rows[i].multiplier));
    }
    CHECK(a.attn_scale == Approx(1 / std::sqrt(32.0)));
  }
  SECTION("mup at 4x width") {
    ParamTable t = make_param_table("mup", tgt, ref, hp);
    // hidden, fan-in 256 vs 64: lr 0.01/4, std 0.02/2
    CHECK(row(t, "layers.1.attn.qkv").lr == Approx(0.0025));
    CHECK(row(t, "layers.1.attn.qkv").init_std == Approx(0.01));
    CHECK(row(t, "layers.0.attn.proj").lr == Approx(0.0025));
    // ffn.proj fan-in 1024 vs 256: same factors
    CHECK(row(t, "layers.0.ffn.proj").lr == Approx(0.0025));
    CHECK(row(t, "layers.0.ffn.proj").init_std == Approx(0.01));
    CHECK(row(t, "layers.0.ffn.fc").wd == Approx(0.1));
    // embedding and norms: width-independent; norms not decayed
    CHECK(row(t, "embed.wte").lr == Approx(0.01));
    CHECK(row(t, "embed.wte").init_std == Approx(0.5));
    CHECK(row(t, "final_norm.w").lr == Approx(0.01));
    CHECK(row(t, "final_norm.w").wd == 0.0);
    CHECK(row(t, "final_norm.w").init == "ones");
    // head: multiplier 1/4, init and lr constant
    CHECK(row(t, "head.w").multiplier == Approx(0.25));
    CHECK(row(t, "head.w").init_std == Approx(0.02));
    CHECK(row(t, "head.w").lr == Approx(0.01));
    // attention 1/d_head: 1/sqrt(32) * 32/64
    CHECK(t.attn_scale == Approx(0.5 / std::sqrt(32.0)));
    CHECK(t.forward_alpha("head.w") == Approx(0.25));
  }
  SECTION("sp at 4x width: fan-in init, one global lr") {
    ParamTable t = make_param_table("sp", tgt, ref, hp);
    CHECK(row(t, "layers.1.attn.qkv").lr == Approx(0.01));
    CHECK(row(t, "layers.1.attn.qkv").init_std == Approx(0.01));
    CHECK(row(t, "head.w").multiplier == 1.0);
    CHECK(row(t, "head.w").init_std == Approx(0.01));
    CHECK(t.attn_scale == Approx(1 / 8.0));
  }
  SECTION("unknown rule names the known ones") {
    CHECK_THROWS_WITH(make_param_table("mu-p", tgt, ref, hp), HasText("unknown rule 'mu-p'") &&
                                                                  HasText("mup"));
  }
}
