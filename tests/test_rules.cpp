// The transfer rules (optim/rules.*) against tables worked by hand, plus the invariances Complete-muE rests on.
// Every expected number below is written out as arithmetic on literals, never through the rules' own helpers.
#include <algorithm>
#include <cmath>

#include "optim/rules.h"
#include "tests/catch.h"

using namespace mue;

namespace {

// The dense proxy every rule transfers from: d = 64, L = 2, head dim 32, FFN width 256.
ModelConfig reference() {
  ModelConfig c;
  c.vocab = 100, c.vocab_pad = 128, c.d_model = 64, c.n_layers = 2, c.n_heads = 2, c.ffn_hidden = 256, c.seq_len = 16;
  return c;
}
ModelConfig dense(int d, int heads, int L, int H) {
  ModelConfig c = reference();
  c.d_model = d, c.n_heads = heads, c.n_layers = L, c.ffn_hidden = H;
  return c;
}
// An NeAa MoE with experts of width h (granularity already applied), optional shared experts.
ModelConfig moe(int d, int heads, int L, int N, int a, int h, int shared = 0, int shared_hidden = 0) {
  ModelConfig c = dense(d, heads, L, 256);
  c.ffn.type = "moe", c.ffn.experts = N, c.ffn.active = a, c.ffn.expert_hidden = h;
  c.ffn.shared = shared, c.ffn.shared_hidden = shared_hidden;
  return c;
}
Hyper tuned() {
  Hyper hp;
  hp.lr = 0.01, hp.wd = 0.1, hp.init_std = 0.02, hp.emb_init_std = 0.5, hp.eps = 1e-8;
  return hp;
}
const ParamRow& R(const ParamTable& t, const std::string& n) { return t.row(n); }

// Every per-row number the trainer reads, plus the table's scalars, compared row by row.
void check_same_values(const ParamTable& a, const ParamTable& b) {
  REQUIRE(a.rows.size() == b.rows.size());
  for (size_t i = 0; i < a.rows.size(); ++i) {
    INFO(a.rule << " vs " << b.rule << ": " << a.rows[i].tensor.name);
    CHECK(a.rows[i].tensor.name == b.rows[i].tensor.name);
    CHECK(a.rows[i].init == b.rows[i].init);
    CHECK(a.rows[i].init_std == Approx(b.rows[i].init_std).epsilon(1e-12));
    CHECK(a.rows[i].multiplier == Approx(b.rows[i].multiplier).epsilon(1e-12));
    CHECK(a.rows[i].lr == Approx(b.rows[i].lr).epsilon(1e-12));
    CHECK(a.rows[i].wd == Approx(b.rows[i].wd).epsilon(1e-12));
    CHECK(a.rows[i].eps == Approx(b.rows[i].eps).epsilon(1e-12));
  }
  CHECK(a.attn_scale == Approx(b.attn_scale).epsilon(1e-12));
  CHECK(a.branch_multiplier == Approx(b.branch_multiplier).epsilon(1e-12));
  CHECK(a.route_scale == Approx(b.route_scale).epsilon(1e-12));
}

}  // namespace

TEST_CASE("rule_names lists every rule; format_table shows the factors", "[rules]") {
  const auto n = rule_names();
  for (const char* r : {"sp", "mup", "completep", "complete-mue", "jiang-dmft", "mup-moe", "mup-total-width",
                        "mup-no-route-scale"}) {
    INFO(r);
    CHECK(std::find(n.begin(), n.end(), r) != n.end());
  }
  ModelConfig tgt = moe(64, 2, 2, 64, 8, 128);
  const std::string s = format_table(make_param_table("complete-mue", tgt, reference(), tuned()));
  CHECK_THAT(s, HasText("rule complete-mue") && HasText("route scale 8") && HasText("layers.*.moe.experts.proj") &&
                    HasText("mult c=d/H_a=0.0625"));
  CHECK_THROWS_WITH(make_param_table("complete-mu", tgt, reference(), tuned()),
                    HasText("unknown rule") && HasText("complete-mue") && HasText("jiang-dmft"));
}

TEST_CASE("QK-norm gains are in-block norm rows under every rule; the other rows do not change", "[rules]") {
  for (const std::string& rule : rule_names()) {
    INFO(rule);
    ModelConfig tgt = moe(128, 4, 4, 64, 8, 64), ref = reference();
    const ParamTable off = make_param_table(rule, tgt, ref, tuned());
    tgt.qk_norm = ref.qk_norm = true;
    ParamTable on = make_param_table(rule, tgt, ref, tuned());
    for (int l = 0; l < tgt.n_layers; ++l) {
      const std::string p = "layers." + std::to_string(l) + ".";
      const ParamRow &q = R(on, p + "attn.qk_norm.w"), &n = R(on, p + "attn_norm.w");
      CHECK(q.tensor.rows == 2);
      CHECK(q.tensor.cols == 32);
      CHECK(q.init == "ones");
      CHECK(q.wd == 0.0);
      CHECK(q.lr == Approx(n.lr).epsilon(1e-12));
      CHECK(q.eps == Approx(n.eps).epsilon(1e-12));
    }
    std::erase_if(on.rows, [](const ParamRow& r) { return r.tensor.kind == "attn.qk_norm.w"; });
    on.rule = off.rule;
    check_same_values(on, off);
  }
}

TEST_CASE("every rule except the complete-mue family is the proxy's own sp table at the reference", "[rules]") {
  const ModelConfig ref = reference();
  const ParamTable sp = make_param_table("sp", ref, ref, tuned());
  for (const char* rule : {"mup", "completep", "jiang-dmft", "mup-moe"}) {
    INFO(rule);
    check_same_values(make_param_table(rule, ref, ref, tuned()), sp);
  }
  // sp's hidden rows at the reference: std 0.02, lr 0.01, wd 0.1, eps 1e-8 (nothing rescaled)
  CHECK(R(sp, "layers.0.ffn.proj").init_std == Approx(0.02));
  CHECK(R(sp, "layers.0.ffn.proj").lr == Approx(0.01));
}

TEST_CASE("complete-mue at the reference: the absolute c = d/H on the proxy's down-projection only", "[rules]") {
  // The paper's c = d/H_a carries no reference quantity, so the dense proxy itself runs with c = 64/256 and
  // std sqrt(256/64) * 0.02 = 0.04 (see rules.cpp); every other row is the sp row.
  const ModelConfig ref = reference();
  const ParamTable sp = make_param_table("sp", ref, ref, tuned());
  for (const char* rule : {"complete-mue", "mup-total-width", "mup-no-route-scale"}) {
    INFO(rule);
    const ParamTable t = make_param_table(rule, ref, ref, tuned());
    REQUIRE(t.rows.size() == sp.rows.size());
    for (size_t i = 0; i < t.rows.size(); ++i) {
      INFO(t.rows[i].tensor.name);
      const bool down = t.rows[i].tensor.kind == "ffn.proj";
      CHECK(t.rows[i].init_std == Approx(down ? 0.04 : sp.rows[i].init_std));
      CHECK(t.rows[i].multiplier == Approx(down ? 0.25 : sp.rows[i].multiplier));
      CHECK(t.rows[i].lr == Approx(sp.rows[i].lr));
      CHECK(t.rows[i].wd == Approx(sp.rows[i].wd));
      CHECK(t.rows[i].eps == Approx(sp.rows[i].eps));
    }
    CHECK(t.branch_multiplier == 1.0);
    CHECK(t.route_scale == 1.0);  // dense: no router
  }
}

TEST_CASE("completep: mup plus depth, worked by hand at 4x width and 4x depth", "[rules]") {
  const ModelConfig ref = reference(), tgt = dense(256, 4, 8, 1024);  // m_N = 4, m_L = 4, head dim 64
  const ParamTable t = make_param_table("completep", tgt, ref, tuned());
  CHECK(t.branch_multiplier == Approx(2.0 / 8.0));
  CHECK(t.attn_scale == Approx(1 / std::sqrt(32.0) * 32.0 / 64.0));
  // hidden matrices: lr 0.01 * 64/256, std 0.02 * sqrt(64/256), wd 0.1 * 4 (lr*wd kept), eps 1e-8 / 4 / 4
  for (const char* n : {"layers.0.attn.qkv", "layers.7.attn.proj", "layers.3.ffn.fc", "layers.3.ffn.proj"}) {
    INFO(n);
    CHECK(R(t, n).lr == Approx(0.0025));
    CHECK(R(t, n).init_std == Approx(0.01));
    CHECK(R(t, n).wd == Approx(0.4));
    CHECK(R(t, n).eps == Approx(6.25e-10));
    CHECK(R(t, n).multiplier == 1.0);
  }
  // residual outputs carry the branch multiplier 1/4, the qkv does not
  CHECK(t.forward_alpha("layers.0.attn.proj") == Approx(0.25));
  CHECK(t.forward_alpha("layers.0.ffn.proj") == Approx(0.25));
  CHECK(t.forward_alpha("layers.0.attn.qkv") == Approx(1.0));
  // norms in the blocks: lr unchanged, no wd, eps with the block factor 1/16
  CHECK(R(t, "layers.5.attn_norm.w").lr == Approx(0.01));
  CHECK(R(t, "layers.5.attn_norm.w").wd == 0.0);
  CHECK(R(t, "layers.5.ffn_norm.w").eps == Approx(6.25e-10));
  // outside the blocks: eps 1e-8 / 4, lr unchanged; head multiplier 64/256 with its init constant
  CHECK(R(t, "embed.wte").lr == Approx(0.01));
  CHECK(R(t, "embed.wte").init_std == Approx(0.5));
  CHECK(R(t, "embed.wte").wd == Approx(0.1));
  CHECK(R(t, "embed.wte").eps == Approx(2.5e-9));
  CHECK(R(t, "final_norm.w").eps == Approx(2.5e-9));
  CHECK(R(t, "final_norm.w").wd == 0.0);
  CHECK(R(t, "head.w").multiplier == Approx(0.25));
  CHECK(R(t, "head.w").init_std == Approx(0.02));
  CHECK(R(t, "head.w").lr == Approx(0.01));
  CHECK(R(t, "head.w").eps == Approx(2.5e-9));

  // depth only (d = 64, L = 16): hidden lr and std unchanged, branch 2/16, eps 1e-8 * 2/16
  const ParamTable deep = make_param_table("completep", dense(64, 2, 16, 256), ref, tuned());
  CHECK(deep.branch_multiplier == Approx(0.125));
  CHECK(R(deep, "layers.15.attn.qkv").lr == Approx(0.01));
  CHECK(R(deep, "layers.15.attn.qkv").init_std == Approx(0.02));
  CHECK(R(deep, "layers.15.attn.qkv").wd == Approx(0.1));
  CHECK(R(deep, "layers.15.attn.qkv").eps == Approx(1.25e-9));
  CHECK(R(deep, "embed.wte").eps == Approx(1e-8));
}

TEST_CASE("complete-mue: Bridge II at fixed N, worked by hand", "[rules]") {
  const ModelConfig ref = reference();
  // 64e8a, h = 128, d = 64: H_a = 8 * 128 = 1024, c = 64/1024, std sqrt(1024/64) * 0.02 = 0.08, r = 8
  const ParamTable t = make_param_table("complete-mue", moe(64, 2, 2, 64, 8, 128), ref, tuned());
  CHECK(t.route_scale == 8.0);
  CHECK(R(t, "layers.1.moe.experts.proj").multiplier == Approx(0.0625));
  CHECK(R(t, "layers.1.moe.experts.proj").init_std == Approx(0.08));
  CHECK(R(t, "layers.1.moe.experts.proj").lr == Approx(0.01));  // the global eta, no a/N factor
  CHECK(R(t, "layers.1.moe.experts.proj").wd == Approx(0.1));   // the global lambda
  CHECK(R(t, "layers.1.moe.experts.proj").eps == Approx(1e-8));
  CHECK(t.forward_alpha("layers.1.moe.experts.proj") == Approx(0.0625));
  // router and up-projections: fan-in d = d_ref, so the reference's values
  CHECK(R(t, "layers.0.moe.router").init_std == Approx(0.02));
  CHECK(R(t, "layers.0.moe.router").lr == Approx(0.01));
  CHECK(R(t, "layers.0.moe.experts.fc").init_std == Approx(0.02));
  CHECK(R(t, "layers.0.moe.experts.fc").lr == Approx(0.01));
  CHECK(R(t, "layers.0.moe.experts.fc").multiplier == 1.0);

  // 64e2a, same h: H_a = 256 -> c = 0.25, std 0.04, r = 2; eta, lambda unchanged (Bridge II)
  const ParamTable t2 = make_param_table("complete-mue", moe(64, 2, 2, 64, 2, 128), ref, tuned());
  CHECK(t2.route_scale == 2.0);
  CHECK(R(t2, "layers.0.moe.experts.proj").multiplier == Approx(0.25));
  CHECK(R(t2, "layers.0.moe.experts.proj").init_std == Approx(0.04));
  CHECK(R(t2, "layers.0.moe.experts.proj").lr == Approx(0.01));
  CHECK(R(t2, "layers.0.moe.experts.proj").wd == Approx(0.1));
}

TEST_CASE("complete-mue: width and depth as completep, batch and duration factors", "[rules]") {
  const ModelConfig ref = reference();
  // d = 256, L = 8, 64e8a with h = 256: H_a = 2048, c = 256/2048 = 0.125,
  // std = sqrt(2048/256) * 0.02 * sqrt(64/256) = sqrt(8) * 0.01, lr 0.01 * 64/256, wd 0.1 * 4, eps 1e-8/16
  const ParamTable t = make_param_table("complete-mue", moe(256, 4, 8, 64, 8, 256), ref, tuned());
  const ParamRow& p = R(t, "layers.7.moe.experts.proj");
  CHECK(p.multiplier == Approx(0.125));
  CHECK(p.init_std == Approx(0.028284271247461905));
  CHECK(p.lr == Approx(0.0025));
  CHECK(p.wd == Approx(0.4));
  CHECK(p.eps == Approx(6.25e-10));
  CHECK(t.branch_multiplier == Approx(0.25));
  CHECK(t.forward_alpha("layers.7.moe.experts.proj") == Approx(0.125 * 0.25));
  CHECK(t.route_scale == 8.0);
  CHECK(R(t, "layers.0.moe.router").init_std == Approx(0.01));
  CHECK(R(t, "layers.0.moe.router").lr == Approx(0.0025));
  CHECK(R(t, "layers.0.moe.router").wd == Approx(0.4));
  CHECK(R(t, "head.w").multiplier == Approx(0.25));
  CHECK(t.attn_scale == Approx(0.5 / std::sqrt(32.0)));

  SECTION("batch 4x and run 2x longer") {
    Hyper hp = tuned();
    hp.batch_tokens = 4096, hp.ref_batch_tokens = 1024, hp.steps = 2000, hp.ref_steps = 1000;
    // eta = 0.01 * sqrt(4) = 0.02; lambda = 0.1 * (0.01/0.02) * (1000/2000) = 0.025
    // (timescale 1/(eta*lambda) = 2000 steps: the same fraction of the run as 1000 of 1000)
    const ParamTable b = make_param_table("complete-mue", moe(64, 2, 2, 64, 8, 128), ref, hp);
    CHECK(R(b, "embed.wte").lr == Approx(0.02));
    CHECK(R(b, "embed.wte").wd == Approx(0.025));
    CHECK(R(b, "layers.0.attn.qkv").lr == Approx(0.02));
    CHECK(R(b, "layers.0.attn.qkv").wd == Approx(0.025));
    CHECK(R(b, "layers.0.attn_norm.w").lr == Approx(0.02));
    CHECK(R(b, "layers.0.attn_norm.w").wd == 0.0);
    CHECK(R(b, "layers.0.moe.experts.proj").lr == Approx(0.02));
    CHECK(R(b, "layers.0.moe.experts.proj").wd == Approx(0.025));
    CHECK(R(b, "layers.0.moe.experts.proj").init_std == Approx(0.08));  // init is not a batch quantity
    CHECK(R(b, "head.w").lr == Approx(0.02));
    CHECK_THAT(format_table(b), HasText("lr*sqrt(B/B_ref)=2"));
  }
  SECTION("batch 4x at the same number of steps") {
    Hyper hp = tuned();
    hp.batch_tokens = 4096, hp.ref_batch_tokens = 1024;  // steps unset: factor 1
    const ParamTable b = make_param_table("complete-mue", moe(64, 2, 2, 64, 8, 128), ref, hp);
    CHECK(R(b, "layers.0.attn.qkv").lr == Approx(0.02));
    CHECK(R(b, "layers.0.attn.qkv").wd == Approx(0.05));  // 0.1 * 0.01/0.02
  }
  SECTION("unset reference batch or steps mean 'same as the target'") {
    Hyper hp = tuned();
    hp.batch_tokens = 4096, hp.steps = 2000;
    const ParamTable b = make_param_table("complete-mue", moe(64, 2, 2, 64, 8, 128), ref, hp);
    CHECK(R(b, "layers.0.attn.qkv").lr == Approx(0.01));
    CHECK(R(b, "layers.0.attn.qkv").wd == Approx(0.1));
  }
}

TEST_CASE("complete-mue invariances: capacity, granularity, Dense MoE vs dense FFN, shared experts", "[rules]") {
  const ModelConfig ref = reference();
  const Hyper hp = tuned();
  SECTION("capacity cancels: 64e8a and 128e8a at equal h give the same values on every row") {
    const ParamTable a = make_param_table("complete-mue", moe(64, 2, 2, 64, 8, 128), ref, hp);
    const ParamTable b = make_param_table("complete-mue", moe(64, 2, 2, 128, 8, 128), ref, hp);
    check_same_values(a, b);  // names and values; only the router / expert tensor sizes differ
    CHECK(a.row("layers.0.moe.router").tensor.rows == 64);
    CHECK(b.row("layers.0.moe.router").tensor.rows == 128);
    CHECK(a.route_scale == 8.0);
  }
  SECTION("granularity keeps c: 64e8a h=128 vs 128e16a h=64 (H_a = 1024 both)") {
    const ParamTable a = make_param_table("complete-mue", moe(64, 2, 2, 64, 8, 128), ref, hp);
    const ParamTable g = make_param_table("complete-mue", moe(64, 2, 2, 128, 16, 64), ref, hp);
    CHECK(R(g, "layers.0.moe.experts.proj").multiplier == Approx(0.0625));
    CHECK(R(g, "layers.0.moe.experts.proj").multiplier == Approx(R(a, "layers.0.moe.experts.proj").multiplier));
    CHECK(R(g, "layers.0.moe.experts.proj").init_std == Approx(0.08));
    CHECK(R(g, "layers.0.moe.experts.proj").lr == Approx(0.01));
    CHECK(g.route_scale == 16.0);  // r = a after granularity
  }
  SECTION("Dense MoE 8e8a (r = N = 8) and a dense FFN of width 8*128: the same c and down-projection std") {
    const ParamTable m = make_param_table("complete-mue", moe(64, 2, 2, 8, 8, 128), ref, hp);
    const ParamTable f = make_param_table("complete-mue", dense(64, 2, 2, 1024), ref, hp);
    CHECK(m.route_scale == 8.0);
    CHECK(R(m, "layers.0.moe.experts.proj").multiplier == Approx(0.0625));
    CHECK(R(f, "layers.0.ffn.proj").multiplier == Approx(0.0625));
    CHECK(R(f, "layers.0.ffn.proj").init_std == Approx(R(m, "layers.0.moe.experts.proj").init_std));
    CHECK(R(f, "layers.0.ffn.proj").lr == Approx(R(m, "layers.0.moe.experts.proj").lr));
  }
  SECTION("shared experts add to the active width with gate 1") {
    // 64e8a h=64 plus one shared expert of 512: H_a = 512 + 512 = 1024 -> c = 0.0625 on both projections
    const ParamTable s = make_param_table("complete-mue", moe(64, 2, 2, 64, 8, 64, 1, 512), ref, hp);
    CHECK(R(s, "layers.0.moe.experts.proj").multiplier == Approx(0.0625));
    CHECK(R(s, "layers.0.moe.shared.proj").multiplier == Approx(0.0625));
    CHECK(R(s, "layers.0.moe.shared.proj").init_std == Approx(0.08));
    CHECK(R(s, "layers.0.moe.shared.fc").init_std == Approx(0.02));
    CHECK(s.route_scale == 8.0);
  }
  SECTION("group-balanced routing changes nothing") {
    ModelConfig g = moe(64, 2, 2, 64, 8, 128);
    g.ffn.groups = 4;
    check_same_values(make_param_table("complete-mue", g, ref, hp),
                      make_param_table("complete-mue", moe(64, 2, 2, 64, 8, 128), ref, hp));
  }
}

TEST_CASE("non-transferable baselines: mup-total-width and mup-no-route-scale", "[rules]") {
  const ModelConfig ref = reference();
  // total width 64*128 = 8192: c = 64/8192, std sqrt(8192/64) * 0.02 = sqrt(128) * 0.02; r = 8
  const ParamTable t = make_param_table("mup-total-width", moe(64, 2, 2, 64, 8, 128), ref, tuned());
  CHECK(R(t, "layers.0.moe.experts.proj").multiplier == Approx(1.0 / 128));
  CHECK(R(t, "layers.0.moe.experts.proj").init_std == Approx(0.22627416997969520));
  CHECK(t.route_scale == 8.0);
  CHECK_THAT(format_table(t), HasText("c=d/H_tot"));
  // doubling N at fixed a halves c: capacity does NOT cancel here (128*128 = 16384)
  const ParamTable t2 = make_param_table("mup-total-width", moe(64, 2, 2, 128, 8, 128), ref, tuned());
  CHECK(R(t2, "layers.0.moe.experts.proj").multiplier == Approx(1.0 / 256));

  // no route scale: complete-mue's c = 0.0625 and std 0.08, but r = 1
  const ParamTable n = make_param_table("mup-no-route-scale", moe(64, 2, 2, 64, 8, 128), ref, tuned());
  CHECK(R(n, "layers.0.moe.experts.proj").multiplier == Approx(0.0625));
  CHECK(R(n, "layers.0.moe.experts.proj").init_std == Approx(0.08));
  CHECK(n.route_scale == 1.0);
}

TEST_CASE("jiang-dmft: CompleteP plus mean-field down-projection and 1/d router, worked by hand", "[rules]") {
  const ModelConfig ref = reference();
  // d = 256, L = 8, 64e8a with h = 256 (m = m_ref = 256)
  const ParamTable t = make_param_table("jiang-dmft", moe(256, 4, 8, 64, 8, 256), ref, tuned());
  // down: std 0.02 * sqrt(256/64) * (256/256) = 0.04, lr 0.01 * 256/256, wd 0.1 * 0.01/0.01, eps 1e-8/16
  CHECK(R(t, "layers.2.moe.experts.proj").init_std == Approx(0.04));
  CHECK(R(t, "layers.2.moe.experts.proj").lr == Approx(0.01));
  CHECK(R(t, "layers.2.moe.experts.proj").wd == Approx(0.1));
  CHECK(R(t, "layers.2.moe.experts.proj").eps == Approx(6.25e-10));
  CHECK(R(t, "layers.2.moe.experts.proj").multiplier == 1.0);
  CHECK(t.forward_alpha("layers.2.moe.experts.proj") == Approx(0.25));  // 1/L branch only
  // router: std 0.02 * 64/256, lr 0.01 * 64/256, wd 0.1 * 4
  CHECK(R(t, "layers.2.moe.router").init_std == Approx(0.005));
  CHECK(R(t, "layers.2.moe.router").lr == Approx(0.0025));
  CHECK(R(t, "layers.2.moe.router").wd == Approx(0.4));
  // up-projection: fan-in d
  CHECK(R(t, "layers.2.moe.experts.fc").init_std == Approx(0.01));
  CHECK(R(t, "layers.2.moe.experts.fc").lr == Approx(0.0025));
  CHECK(t.route_scale == 1.0);
  CHECK(t.branch_multiplier == Approx(0.25));
  CHECK(t.attn_scale == Approx(0.5 / std::sqrt(32.0)));

  // expert width 64 at d = 64: down std 0.02 * 1 * 256/64 = 0.08, lr 0.01 * 4, wd 0.1 / 4
  const ParamTable n = make_param_table("jiang-dmft", moe(64, 2, 2, 64, 8, 64), ref, tuned());
  CHECK(R(n, "layers.0.moe.experts.proj").init_std == Approx(0.08));
  CHECK(R(n, "layers.0.moe.experts.proj").lr == Approx(0.04));
  CHECK(R(n, "layers.0.moe.experts.proj").wd == Approx(0.025));
  CHECK(R(n, "layers.0.moe.router").init_std == Approx(0.02));
  CHECK(n.branch_multiplier == 1.0);
}

TEST_CASE("mup-moe: muP with the router as a readout layer, worked by hand", "[rules]") {
  const ModelConfig ref = reference();
  // d = 256, L = 8 (no depth factor in this rule), 64e8a with h = 256
  const ParamTable t = make_param_table("mup-moe", moe(256, 4, 8, 64, 8, 256), ref, tuned());
  CHECK(R(t, "layers.0.moe.router").init_std == Approx(0.005));  // 0.02 * 64/256 (not sqrt)
  CHECK(R(t, "layers.0.moe.router").lr == Approx(0.0025));
  CHECK(R(t, "layers.0.moe.router").wd == Approx(0.1));
  CHECK(R(t, "layers.0.moe.experts.fc").init_std == Approx(0.01));
  CHECK(R(t, "layers.0.moe.experts.fc").lr == Approx(0.0025));
  CHECK(R(t, "layers.0.moe.experts.proj").init_std == Approx(0.02));  // fan-in 256 = H_ref
  CHECK(R(t, "layers.0.moe.experts.proj").lr == Approx(0.01));
  CHECK(R(t, "layers.0.moe.experts.proj").eps == Approx(1e-8));
  CHECK(t.branch_multiplier == 1.0);
  CHECK(t.route_scale == 1.0);
  CHECK(R(t, "head.w").multiplier == Approx(0.25));
  // at d = d_ref the router keeps the reference std
  const ParamTable s = make_param_table("mup-moe", moe(64, 2, 2, 64, 8, 64), ref, tuned());
  CHECK(R(s, "layers.0.moe.router").init_std == Approx(0.02));
  CHECK(R(s, "layers.0.moe.experts.proj").lr == Approx(0.04));  // mup: 0.01 * 256/64
}

// Each named factor on its own, so that a factor changed in one place fails here by name, not only through the
// tables above.
TEST_CASE("every rule factor, pinned by hand", "[rules]") {
  CHECK(fan_in_init_std(0.02, 512, 128) == Approx(0.01));            // 0.02 * sqrt(128/512)
  CHECK(mup_hidden_lr(0.01, 512, 128) == Approx(0.0025));            // 0.01 * 128/512
  CHECK(mup_output_multiplier(512, 128) == Approx(0.25));
  CHECK(mup_attention_scale(64, 16) == Approx(0.0625));              // 1/sqrt(16) * 16/64
  CHECK(mup_attention_scale(16, 16) == Approx(0.25));                // = SP at the reference head dim
  CHECK(sp_attention_scale(64) == Approx(0.125));
  CHECK(completep_branch_multiplier(8, 2) == Approx(0.25));
  CHECK(completep_block_eps(1e-8, 512, 128, 8, 2) == Approx(6.25e-10));  // 1e-8 * (1/4) * (1/4)
  CHECK(completep_outer_eps(1e-8, 512, 128) == Approx(2.5e-9));
  CHECK(timescale_preserving_wd(0.1, 0.01, 0.0025) == Approx(0.4));  // lr * wd stays 1e-3
  ModelConfig m = moe(64, 2, 2, 64, 8, 32, 1, 16);
  CHECK(mue_active_width(m) == 8 * 32 + 16);
  CHECK(mue_total_width(m) == 64 * 32 + 16);
  CHECK(mue_active_width(dense(64, 2, 2, 300)) == 300);
  CHECK(mue_total_width(dense(64, 2, 2, 300)) == 300);
  CHECK(mue_down_multiplier(128, 256) == Approx(0.5));
  CHECK(mue_down_init_std(0.02, 128, 512) == Approx(0.04));          // sqrt(512/128) * 0.02
  CHECK(mue_route_scale(8) == 8);
  CHECK(sqrt_batch_lr(0.01, 4096, 1024) == Approx(0.02));
  CHECK(sqrt_batch_lr(0.01, 0, 1024) == 0.01);                        // unset size: factor 1
  CHECK(duration_wd(0.1, 0.01, 0.02, 2000, 1000) == Approx(0.025));  // 0.1 * (0.01/0.02) * (1000/2000)
  CHECK(duration_wd(0.1, 0.01, 0.02, 0, 1000) == Approx(0.05));
  CHECK(jiang_down_init_std(0.02, 512, 128, 64, 256) == Approx(0.16));  // 0.02 * sqrt(4) * 256/64
  CHECK(jiang_down_lr(0.01, 64, 256) == Approx(0.04));
  CHECK(jiang_router_init_std(0.02, 512, 128) == Approx(0.005));
  CHECK(mup_readout_init_std(0.02, 512, 128) == Approx(0.005));
}

// The DiT's own rows under mup at twice the reference width: the patch and class embeddings and the timestep
// MLP's first layer (fixed fan-in: time_freq) keep their LR; the adaLN and hidden matrices are muP hidden
// matrices; the output layer is the head (multiplier d_ref/d), zero-initialised for adaLN-Zero.
TEST_CASE("DiT table under mup at twice the width, worked by hand", "[rules][dit]") {
  ModelConfig ref;
  ref.task = "flow", ref.d_model = 64, ref.n_layers = 1, ref.n_heads = 2, ref.ffn_hidden = 128, ref.seq_len = 196;
  ref.vocab = ref.vocab_pad = 1;
  ModelConfig tgt = ref;
  tgt.d_model = 128, tgt.n_heads = 4, tgt.ffn_hidden = 256;
  const Hyper hp = tuned();
  const ParamTable t = make_param_table("mup", tgt, ref, hp);
  for (const char* emb : {"patch.w", "class.emb"}) {
    INFO(emb);
    CHECK(R(t, emb).lr == Approx(0.01));
    CHECK(R(t, emb).init_std == Approx(0.5));  // emb_init_std
  }
  CHECK(R(t, "time.fc1").lr == Approx(0.01));
  CHECK(R(t, "time.fc1").init_std == Approx(0.02));
  for (const char* hidden : {"time.fc2", "layers.0.ada.w", "layers.0.attn.qkv", "layers.0.ffn.fc", "final.ada"}) {
    INFO(hidden);
    CHECK(R(t, hidden).lr == Approx(0.005));
    CHECK(R(t, hidden).multiplier == 1);
  }
  CHECK(R(t, "layers.0.attn.qkv").init_std == Approx(0.02 / std::sqrt(2.0)));
  CHECK(R(t, "layers.0.ffn.proj").lr == Approx(0.005));  // fan-in 256 against the reference's 128
  CHECK(R(t, "layers.0.ada.w").init == "zeros");
  CHECK(R(t, "final.ada").init == "zeros");
  CHECK(R(t, "final.w").init == "zeros");
  CHECK(R(t, "final.w").multiplier == Approx(0.5));
  CHECK(R(t, "final.w").lr == Approx(0.01));
  CHECK(t.attn_scale == Approx(1 / std::sqrt(32.0) * 32 / 32));  // head dim 32 at both widths
}
