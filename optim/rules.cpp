#include "optim/rules.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <sstream>
#include <vector>

namespace mue {

double fan_in_init_std(double sigma_ref, int fan_in, int fan_in_ref) {
  return sigma_ref * std::sqrt(double(fan_in_ref) / fan_in);
}
double mup_hidden_lr(double lr_ref, int fan_in, int fan_in_ref) { return lr_ref * double(fan_in_ref) / fan_in; }
double mup_output_multiplier(int d, int d_ref) { return double(d_ref) / d; }
double mup_attention_scale(int head_dim, int head_dim_ref) {
  return 1.0 / std::sqrt(double(head_dim_ref)) * double(head_dim_ref) / head_dim;
}
double sp_attention_scale(int head_dim) { return 1.0 / std::sqrt(double(head_dim)); }

// ---- CompleteP: Dey et al. 2025, arXiv 2505.01618, Table 1, alpha = 1; the authors' reference code
// (EleutherAI/nanoGPT-mup, branch completep, configure_optimizers) spells out the per-group values:
// hidden LR eta/m_N * m_L^(alpha-1), hidden wd lambda*m_N, hidden & in-block-norm eps eps/m_N * m_L^-alpha,
// embedding / unembedding / final-norm eps eps/m_N, norm LR eta * m_L^(alpha-1) (= eta at alpha = 1).
double completep_branch_multiplier(int n_layers, int n_layers_ref) { return double(n_layers_ref) / n_layers; }
double completep_block_eps(double eps_ref, int d, int d_ref, int n_layers, int n_layers_ref) {
  return eps_ref * double(d_ref) / d * double(n_layers_ref) / n_layers;
}
double completep_outer_eps(double eps_ref, int d, int d_ref) { return eps_ref * double(d_ref) / d; }
double timescale_preserving_wd(double wd_ref, double lr_ref, double lr) { return wd_ref * lr_ref / lr; }

// ---- Complete-muE: Peng et al. 2026, arXiv 2605.23893 (Bridge I, Bridge II and their compositions).
int mue_active_width(const ModelConfig& c) { return c.ffn.moe() ? c.ffn.active_width() : c.ffn_hidden; }
int mue_total_width(const ModelConfig& c) {
  const FfnConfig& f = c.ffn;
  return f.moe() ? f.experts * f.expert_hidden + f.shared * f.shared_hidden : c.ffn_hidden;
}
double mue_down_multiplier(int d, int width) { return double(d) / width; }
double mue_down_init_std(double sigma_down_star, int d, int width) {
  return std::sqrt(double(width) / d) * sigma_down_star;
}
double mue_route_scale(int active) { return double(active); }
double sqrt_batch_lr(double lr_ref, double batch, double batch_ref) {
  if (batch <= 0 || batch_ref <= 0) return lr_ref;
  return lr_ref * std::sqrt(batch / batch_ref);
}
double duration_wd(double wd_ref, double lr_ref, double lr, double steps, double steps_ref) {
  const double t = (steps <= 0 || steps_ref <= 0) ? 1.0 : steps_ref / steps;
  return wd_ref * lr_ref / lr * t;
}

// ---- Jiang, Bordelon, Pehlevan, Hanin 2026, arXiv 2601.20205, section 3, Table 1 (n = d_model, m = expert
// hidden width): W_up std n^-1/2, LR 1/n; W_down std sqrt(n)/m ("mean-field", a factor sqrt(n/m) below fan-in),
// LR 1/m; router std n^-gamma (gamma = 1), LR 1/n. Written relative to the reference (base shapes), so the
// constants are the reference's tuned ones.
double jiang_down_init_std(double sigma_ref, int d, int d_ref, int m, int m_ref) {
  return sigma_ref * std::sqrt(double(d) / d_ref) * double(m_ref) / m;
}
double jiang_down_lr(double lr_ref, int m, int m_ref) { return lr_ref * double(m_ref) / m; }
double jiang_router_init_std(double sigma_ref, int d, int d_ref) { return sigma_ref * double(d_ref) / d; }

// ---- Małaśnicki et al. 2025, arXiv 2508.09752: router = muP output layer (finite fan-out N).
double mup_readout_init_std(double sigma_ref, int d, int d_ref) { return sigma_ref * double(d_ref) / d; }

namespace {

// The fan-in the reference (dense proxy) model has for the tensor playing this tensor's part: down-projections
// (dense or expert) read the reference's FFN width, everything else reads its residual width.
int reference_fan_in(const TensorSpec& t, const ModelConfig& ref) {
  if (t.kind == "time.fc1") return ref.image.time_freq;  // fixed feature width, never scaled
  if (t.kind == "ffn.proj" || t.kind == "moe.experts.proj" || t.kind == "moe.shared.proj") return ref.ffn_hidden;
  return ref.d_model;
}

std::string fmt(const char* f, double x) {
  char b[64];
  std::snprintf(b, sizeof b, f, x);
  return b;
}

// Rows every rule starts from: SP values at the reference hyperparameters.
ParamRow base_row(const TensorSpec& t, int ref_fan_in, const Hyper& hp) {
  ParamRow row;
  row.tensor = t;
  row.lr = hp.lr;
  row.eps = hp.eps;
  row.wd = t.role == TensorRole::norm ? 0.0 : hp.wd;  // norms are never decayed
  switch (t.role) {
    case TensorRole::norm:
      row.init = "ones";
      row.why = "norm: ones, no wd";
      break;
    case TensorRole::embedding:
      row.init_std = hp.emb_init_std;
      row.why = "emb std";
      break;
    case TensorRole::hidden:
    case TensorRole::router:
    case TensorRole::head:
      row.init_std = fan_in_init_std(hp.init_std, t.fan_in(), ref_fan_in);
      row.why = "std*sqrt(fan_in_ref/fan_in)=" + fmt("%.4g", std::sqrt(double(ref_fan_in) / t.fan_in()));
      break;
  }
  return row;
}

ParamTable rule_sp(const ModelConfig& tgt, const ModelConfig& ref, const Hyper& hp) {
  ParamTable t;
  t.attn_scale = sp_attention_scale(tgt.head_dim());
  for (const auto& s : model_tensors(tgt)) t.rows.push_back(base_row(s, reference_fan_in(s, ref), hp));
  return t;
}

ParamTable rule_mup(const ModelConfig& tgt, const ModelConfig& ref, const Hyper& hp) {
  ParamTable t;
  t.attn_scale = mup_attention_scale(tgt.head_dim(), ref.head_dim());
  for (const auto& s : model_tensors(tgt)) {
    const int rf = reference_fan_in(s, ref);
    ParamRow row = base_row(s, rf, hp);
    if (s.role == TensorRole::hidden || s.role == TensorRole::router) {  // router: a hidden matrix of fan-in d
      row.lr = mup_hidden_lr(hp.lr, s.fan_in(), rf);
      row.why += " lr*fan_in_ref/fan_in=" + fmt("%.4g", double(rf) / s.fan_in());
    } else if (s.role == TensorRole::head) {
      row.init_std = hp.init_std;  // width-independent init; the multiplier does the 1/d
      row.multiplier = mup_output_multiplier(tgt.d_model, ref.d_model);
      row.why = "head std const, mult d_ref/d=" + fmt("%.4g", row.multiplier);
    }
    t.rows.push_back(row);
  }
  return t;
}

bool is_down_projection(const TensorSpec& t) {
  return t.kind == "ffn.proj" || t.kind == "moe.experts.proj" || t.kind == "moe.shared.proj";
}
bool in_block(const TensorSpec& t) { return t.name.rfind("layers.", 0) == 0; }
bool is_matrix(const TensorSpec& t) { return t.role == TensorRole::hidden || t.role == TensorRole::router; }

// completep = mup + depth (alpha = 1): branch multiplier L_ref/L on every residual output (attn.proj and the FFN /
// MoE down-projections), hidden LR and init unchanged in depth, norms' LR unchanged, Adam eps scaled with the
// branch multiplier (and 1/m_N) inside the blocks and 1/m_N outside, hidden wd * m_N so that lr*wd is width-free.
ParamTable rule_completep(const ModelConfig& tgt, const ModelConfig& ref, const Hyper& hp) {
  ParamTable t = rule_mup(tgt, ref, hp);
  const int d = tgt.d_model, dr = ref.d_model, L = tgt.n_layers, Lr = ref.n_layers;
  t.branch_multiplier = completep_branch_multiplier(L, Lr);
  for (auto& r : t.rows) {
    if (in_block(r.tensor)) {
      r.eps = completep_block_eps(hp.eps, d, dr, L, Lr);
      r.why += " eps*(d_ref/d)(L_ref/L)=" + fmt("%.4g", r.eps / hp.eps);
    } else {
      r.eps = completep_outer_eps(hp.eps, d, dr);
      r.why += " eps*d_ref/d=" + fmt("%.4g", r.eps / hp.eps);
    }
    if (is_matrix(r.tensor)) {
      r.wd = timescale_preserving_wd(hp.wd, hp.lr, r.lr);
      r.why += " wd*lr_ref/lr=" + fmt("%.4g", hp.lr / r.lr);
    }
  }
  return t;
}

// Complete-muE, Peng et al. 2026 (arXiv 2605.23893), with its two named non-transferable variants.
//
// Reading of the paper (the spec's section 3 quotes its appendix: c = d/(a*h), sigma_down = sqrt(a*h/d) *
// sigma_down_star, r_a = a; we could only read the abstract, blog summary and the spec's quotation of the
// appendix, not the paper's tables themselves):
//  * c and sigma_down are ABSOLUTE: c = d / H_a at every shape, the dense reference included (there H_a = H, the
//    Bridge I endpoint "dense FFN"). The formula is written without any reference quantity, unlike the batch rule
//    which the paper writes with a ratio (rho_B). So at the reference shape complete-mue is NOT the sp/mup table:
//    ffn.proj carries c = d/H and std sqrt(H/d)*sigma; the dense proxy must be swept under complete-mue itself,
//    and it is that sweep's (lr, wd, init_std) that transfer. (Choice: the relative form c/c_ref would differ only
//    by the constant d_ref/H_ref on the down-projection's effective init and LR; both transfer the same way.)
//  * sigma_down_star: the reference's init_std, carried to width d by muP fan-in in d (sigma*sqrt(d_ref/d)), so
//    that the down-projection's output c * sigma_down * sqrt(H_a) = sqrt(d_ref)*sigma is free of H_a and of d.
//  * the down-projection's LR is the global muP LR in d (eta * d_ref/d), NOT 1/fan_in: with c = d/H_a its
//    effective update c*lr*H_a is H_a-free, which is Bridge II's "global eta and lambda stay those tuned on the
//    dense reference" (the first-order SDE corrections of the a/N token fraction cancel). Its wd keeps lr*wd.
//  * r = a (a = N for a Dense MoE), so r*g_i ~ 1 and the MoE output is c * (sum over H_a hidden units), exactly
//    a dense FFN of width H_a: Dense MoE (a = N, r = N) and a dense FFN of width N*h get the same c.
//  * capacity (N -> N' at fixed a): nothing depends on N. granularity (N, a, h) -> (gN, ga, h/g): H_a = a*h and
//    so c are unchanged, r = ga. shared experts add shared*shared_hidden to H_a with gate 1 and their proj gets the
//    same c. group-balanced routing changes neither H_a nor a: no factor.
//  * width d and depth L: as completep (mup + branch multiplier L_ref/L, eps, wd * m_N).
//  * batch: global eta * sqrt(B/B_ref) (Adam square-root rule, Malladi et al. 2022) on every tensor.
//  * duration: global lambda = lambda_ref * (eta_ref/eta) * (T_ref/T), i.e. the AdamW timescale 1/(eta*lambda)
//    is a fixed fraction of the run; every decayed tensor then gets wd with lr_row*wd_row = eta*lambda.
enum class MueVariant { paper, total_width, no_route_scale };

ParamTable complete_mue_table(const ModelConfig& tgt, const ModelConfig& ref, const Hyper& hp, MueVariant v) {
  Hyper g = hp;  // the global eta and lambda of this run
  g.lr = sqrt_batch_lr(hp.lr, hp.batch_tokens, hp.ref_batch_tokens);
  g.wd = duration_wd(hp.wd, hp.lr, g.lr, hp.steps, hp.ref_steps);
  ParamTable t = rule_completep(tgt, ref, g);
  const int d = tgt.d_model, dr = ref.d_model;
  const int width = v == MueVariant::total_width ? mue_total_width(tgt) : mue_active_width(tgt);
  const std::string wname = v == MueVariant::total_width ? "H_tot" : "H_a";
  const double c = mue_down_multiplier(d, width);
  std::string run_factors;
  if (g.lr != hp.lr) run_factors += " lr*sqrt(B/B_ref)=" + fmt("%.4g", g.lr / hp.lr);
  if (g.wd != hp.wd && hp.wd > 0) run_factors += " wd*(lr_ref/lr)(T_ref/T)=" + fmt("%.4g", g.wd / hp.wd);
  for (auto& r : t.rows) {
    if (is_down_projection(r.tensor)) {
      r.multiplier = c;
      r.init_std = mue_down_init_std(fan_in_init_std(g.init_std, d, dr), d, width);
      r.lr = mup_hidden_lr(g.lr, d, dr);
      r.wd = timescale_preserving_wd(g.wd, g.lr, r.lr);
      r.why = "mult c=d/" + wname + "=" + fmt("%.4g", c) + " std sqrt(" + wname + "/d)*sigma*sqrt(d_ref/d)=" +
              fmt("%.4g", r.init_std / g.init_std) + " lr*d_ref/d=" + fmt("%.4g", double(dr) / d) +
              " eps*(d_ref/d)(L_ref/L)=" + fmt("%.4g", r.eps / g.eps) + " wd*d/d_ref=" + fmt("%.4g", double(d) / dr);
    }
    r.why += run_factors;
  }
  t.route_scale = tgt.ffn.moe() && v != MueVariant::no_route_scale ? mue_route_scale(tgt.ffn.active) : 1.0;
  return t;
}

ParamTable rule_complete_mue(const ModelConfig& tgt, const ModelConfig& ref, const Hyper& hp) {
  return complete_mue_table(tgt, ref, hp, MueVariant::paper);
}
// Non-transferable baseline named by Complete-muE: muP on the total expert width N*h instead of the active one.
ParamTable rule_mup_total_width(const ModelConfig& tgt, const ModelConfig& ref, const Hyper& hp) {
  return complete_mue_table(tgt, ref, hp, MueVariant::total_width);
}
// Non-transferable baseline named by Complete-muE: no normalised route scale (r = 1), so the MoE output shrinks
// like 1/a against a dense FFN of width H_a.
ParamTable rule_mup_no_route_scale(const ModelConfig& tgt, const ModelConfig& ref, const Hyper& hp) {
  return complete_mue_table(tgt, ref, hp, MueVariant::no_route_scale);
}

// Jiang, Bordelon, Pehlevan, Hanin (arXiv 2601.20205), section 3 "Scaling recipe" / Table 1, written relative to
// the reference: CompleteP (alpha = 1, 1/L residual branches, attention 1/d_head) for width and depth, plus
//  * expert (and dense FFN) up-projection: fan-in std and LR ∝ 1/d (as mup);
//  * down-projection: mean-field std ∝ sqrt(d)/m, LR ∝ 1/m (m = its fan-in: expert / FFN hidden width);
//  * router: std ∝ d^-1 (their default gamma = 1), LR ∝ 1/d;
//  * gates: their MoE output is (1/a) sum_i g_i E_i, i.e. an average over the a active experts: route scale 1 with
//    our gates normalised to sum to 1;
//  * expert biases (their Scaling Rule 2: bias LR Theta(1), for aux-loss-free balancing): mue has no expert
//    biases, so no row;
//  * their scaling holds the sparsity a/N fixed; transfer across a/N is not claimed;
//  * Adam eps and wd: CompleteP's (their per-group eps exponents are not reproduced here).
ParamTable rule_jiang_dmft(const ModelConfig& tgt, const ModelConfig& ref, const Hyper& hp) {
  ParamTable t = rule_completep(tgt, ref, hp);
  const int d = tgt.d_model, dr = ref.d_model;
  for (auto& r : t.rows) {
    if (is_down_projection(r.tensor)) {
      const int m = r.tensor.fan_in(), mr = ref.ffn_hidden;
      r.init_std = jiang_down_init_std(hp.init_std, d, dr, m, mr);
      r.lr = jiang_down_lr(hp.lr, m, mr);
      r.wd = timescale_preserving_wd(hp.wd, hp.lr, r.lr);
      r.why = "std*sqrt(d/d_ref)*(m_ref/m)=" + fmt("%.4g", r.init_std / hp.init_std) +
              " lr*m_ref/m=" + fmt("%.4g", r.lr / hp.lr) + " eps*(d_ref/d)(L_ref/L)=" + fmt("%.4g", r.eps / hp.eps) +
              " wd*lr_ref/lr=" + fmt("%.4g", hp.lr / r.lr);
    } else if (r.tensor.role == TensorRole::router) {
      r.init_std = jiang_router_init_std(hp.init_std, d, dr);
      r.why = "std*d_ref/d=" + fmt("%.4g", r.init_std / hp.init_std) + " lr*d_ref/d=" + fmt("%.4g", r.lr / hp.lr) +
              " eps*(d_ref/d)(L_ref/L)=" + fmt("%.4g", r.eps / hp.eps) + " wd*lr_ref/lr=" + fmt("%.4g", hp.lr / r.lr);
    }
  }
  t.route_scale = 1;
  return t;
}

// Małaśnicki et al., mu-Parameterization for Mixture of Experts (arXiv 2508.09752): muP (no depth factor) with
// every expert matrix a hidden matrix (fan-in init, LR ∝ 1/fan_in) and the router, whose fan-out N does not grow
// with width, an output layer (Tensor Programs V Table 3, Adam: init std ∝ 1/fan_in, LR ∝ 1/fan_in). Standard
// gating (route scale 1). Transfer across width; the paper reports it breaks across granularity.
ParamTable rule_mup_moe(const ModelConfig& tgt, const ModelConfig& ref, const Hyper& hp) {
  ParamTable t = rule_mup(tgt, ref, hp);
  for (auto& r : t.rows)
    if (r.tensor.role == TensorRole::router) {
      r.init_std = mup_readout_init_std(hp.init_std, r.tensor.fan_in(), ref.d_model);
      r.why = "router as readout: std*d_ref/d=" + fmt("%.4g", r.init_std / hp.init_std) +
              " lr*d_ref/d=" + fmt("%.4g", r.lr / hp.lr);
    }
  t.route_scale = 1;
  return t;
}

using RuleFn = ParamTable (*)(const ModelConfig&, const ModelConfig&, const Hyper&);
const std::map<std::string, RuleFn>& rules() {
  static const std::map<std::string, RuleFn> m = {
      {"sp", rule_sp},
      {"mup", rule_mup},
      {"completep", rule_completep},
      {"complete-mue", rule_complete_mue},
      {"jiang-dmft", rule_jiang_dmft},
      {"mup-moe", rule_mup_moe},
      {"mup-total-width", rule_mup_total_width},
      {"mup-no-route-scale", rule_mup_no_route_scale},
  };
  return m;
}

}  // namespace

std::vector<std::string> rule_names() {
  std::vector<std::string> n;
  for (const auto& [k, v] : rules()) n.push_back(k);
  return n;
}

ParamTable make_param_table(const std::string& rule, const ModelConfig& target, const ModelConfig& reference,
                            const Hyper& hp) {
  target.validate();
  reference.validate("reference");
  auto it = rules().find(rule);
  if (it == rules().end()) {
    std::string known;
    for (const auto& n : rule_names()) known += (known.empty() ? "" : ", ") + n;
    fail("unknown rule '", rule, "' (known: ", known, ")");
  }
  MUE_CHECK(hp.lr > 0 && std::isfinite(hp.lr), "hp.lr must be positive, got ", hp.lr);
  MUE_CHECK(hp.wd >= 0, "hp.wd must be >= 0, got ", hp.wd);
  MUE_CHECK(hp.init_std >= 0 && hp.emb_init_std >= 0, "init std must be >= 0");
  MUE_CHECK(hp.eps > 0, "hp.eps must be positive, got ", hp.eps);
  MUE_CHECK(hp.batch_tokens >= 0 && hp.ref_batch_tokens >= 0 && hp.steps >= 0 && hp.ref_steps >= 0,
            "batch sizes and step counts given to the rules must be >= 0 (0: same as the other)");
  ParamTable t = it->second(target, reference, hp);
  t.rule = rule;
  for (auto& r : t.rows)  // what the model declares to start at zero does so under every rule
    if (!r.tensor.zero_init.empty()) r.init = "zeros", r.init_std = 0, r.why += "; zero init (" + r.tensor.zero_init + ")";
  return t;
}

std::string format_table(const ParamTable& t, bool collapse_layers) {
  std::ostringstream os;
  char line[512];
  std::snprintf(line, sizeof line, "rule %s: attention scale %.6g, residual branch multiplier %.6g, route scale %.6g\n",
                t.rule.c_str(), t.attn_scale, t.branch_multiplier, t.route_scale);
  os << line;
  std::map<std::string, bool> seen;
  std::vector<std::pair<std::string, const ParamRow*>> shown;  // (printed name, row)
  size_t width = 22;                                           // the name column fits the longest name
  for (const auto& r : t.rows) {
    std::string name = r.tensor.name;
    if (collapse_layers && name.rfind("layers.", 0) == 0) {
      if (seen[r.tensor.kind]) continue;
      seen[r.tensor.kind] = true;
      name = "layers.*." + r.tensor.kind;
    }
    width = std::max(width, name.size());
    shown.push_back({name, &r});
  }
  const int w = int(width);
  std::snprintf(line, sizeof line, "%-*s %-12s %-6s %10s %10s %10s %10s %9s  %s\n", w, "tensor", "shape", "init",
                "init_std", "mult", "lr", "wd", "eps", "factors");
  os << line;
  for (const auto& [name, r] : shown) {
    std::snprintf(line, sizeof line, "%-*s %-12s %-6s %10.4g %10.4g %10.4g %10.4g %9.2g  ", w, name.c_str(),
                  r->tensor.shape().c_str(), r->init.c_str(), r->init_std, r->multiplier, r->lr, r->wd, r->eps);
    os << line << r->why << "\n";  // the factors can be long: not through the fixed buffer
  }
  return os.str();
}

}  // namespace mue
