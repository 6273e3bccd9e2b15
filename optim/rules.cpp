#include "optim/rules.h"

#include <cmath>
#include <cstdio>
#include <map>
#include <sstream>

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

namespace {

// The fan-in the reference (dense proxy) model has for the tensor playing this tensor's part: down-projections
// (dense or expert) read the reference's FFN width, everything else reads its residual width.
int reference_fan_in(const TensorSpec& t, const ModelConfig& ref) {
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
  for (const auto& s : lm_tensors(tgt)) t.rows.push_back(base_row(s, reference_fan_in(s, ref), hp));
  return t;
}

ParamTable rule_mup(const ModelConfig& tgt, const ModelConfig& ref, const Hyper& hp) {
  ParamTable t;
  t.attn_scale = mup_attention_scale(tgt.head_dim(), ref.head_dim());
  for (const auto& s : lm_tensors(tgt)) {
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

using RuleFn = ParamTable (*)(const ModelConfig&, const ModelConfig&, const Hyper&);
const std::map<std::string, RuleFn>& rules() {
  static const std::map<std::string, RuleFn> m = {{"sp", rule_sp}, {"mup", rule_mup}};
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
  reference.validate();
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
  ParamTable t = it->second(target, reference, hp);
  t.rule = rule;
  return t;
}

std::string format_table(const ParamTable& t, bool collapse_layers) {
  std::ostringstream os;
  char line[512];
  std::snprintf(line, sizeof line, "rule %s: attention scale %.6g, residual branch multiplier %.6g\n", t.rule.c_str(),
                t.attn_scale, t.branch_multiplier);
  os << line;
  std::snprintf(line, sizeof line, "%-22s %-12s %-6s %10s %10s %10s %10s %9s  %s\n", "tensor", "shape", "init",
                "init_std", "mult", "lr", "wd", "eps", "factors");
  os << line;
  std::map<std::string, bool> seen;
  for (const auto& r : t.rows) {
    std::string name = r.tensor.name;
    if (collapse_layers && name.rfind("layers.", 0) == 0) {
      if (seen[r.tensor.kind]) continue;
      seen[r.tensor.kind] = true;
      name = "layers.*." + r.tensor.kind;
    }
    std::snprintf(line, sizeof line, "%-22s %-12s %-6s %10.4g %10.4g %10.4g %10.4g %9.2g  %s\n", name.c_str(),
                  r.tensor.shape().c_str(), r.init.c_str(), r.init_std, r.multiplier, r.lr, r.wd, r.eps, r.why.c_str());
    os << line;
  }
  return os.str();
}

}  // namespace mue
