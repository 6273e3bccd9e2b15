// The per-run parameterization table: one row per tensor, plus the few scalars that are not tied to one tensor.
// Rules in optim/ compute it; nn/ only reads it (forward multipliers, init), the optimizer reads lr/wd/eps.
// Nothing else in the code scales anything.
#pragma once
#include <string>
#include <vector>

#include "core/error.h"

namespace mue {

// What a tensor is, for the rules: they scale by role and fan-in, never by name.
enum class TensorRole { embedding, hidden, norm, head, router };
inline const char* role_name(TensorRole r) {
  switch (r) {
    case TensorRole::embedding: return "embedding";
    case TensorRole::hidden: return "hidden";
    case TensorRole::norm: return "norm";
    case TensorRole::head: return "head";
    case TensorRole::router: return "router";
  }
  return "?";
}

// A model's tensor as the model declares it: name "layers.3.attn.qkv", kind "attn.qkv" (name without the layer),
// shape rows x cols (a vector has rows = 1), fan_in = cols for matrices.
struct TensorSpec {
  std::string name, kind;
  int rows = 1, cols = 1;
  TensorRole role = TensorRole::hidden;
  bool residual_output = false;  // writes into the residual stream (attn.proj, ffn.proj): gets the branch multiplier
  std::string zero_init;         // non-empty: the model starts this tensor at zero, for this reason (e.g. "adaLN-Zero")
  size_t size() const { return size_t(rows) * cols; }
  int fan_in() const { return cols; }
  std::string shape() const { return rows == 1 ? std::to_string(cols) : std::to_string(rows) + "x" + std::to_string(cols); }
};

// The name of layer l's tensor of a kind: "layers.<l>.<kind>".
inline std::string layer_tensor_name(int layer, const std::string& kind) {
  return "layers." + std::to_string(layer) + "." + kind;
}

struct ParamRow {
  TensorSpec tensor;
  std::string init = "normal";  // normal | ones | zeros (zeros wherever the tensor declares a zero init)
  double init_std = 0, multiplier = 1, lr = 0, wd = 0, eps = 1e-8;
  std::string why;  // which factors the rule applied, for `transfer` and the log
};

struct ParamTable {
  std::string rule;
  std::vector<ParamRow> rows;
  double attn_scale = 0;         // multiplies q.k in attention (1/sqrt(hd) in SP, ~1/hd in muP)
  double branch_multiplier = 1;  // residual-branch multiplier m (CompleteP's L*/L); folded into *_proj alpha
  double route_scale = 1;        // MoE: gates g (summing to 1 over the chosen experts) are multiplied by r

  const ParamRow& row(const std::string& name) const {
    for (const auto& r : rows)
      if (r.tensor.name == name) return r;
    fail("parameter table has no tensor '", name, "'");
  }
  // The alpha a linear layer's forward uses: its multiplier, times the branch multiplier on residual outputs.
  double forward_alpha(const ParamRow& r) const {
    return r.multiplier * (r.tensor.residual_output ? branch_multiplier : 1.0);
  }
  double forward_alpha(const std::string& name) const { return forward_alpha(row(name)); }
};

}  // namespace mue
