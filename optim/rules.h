// Parameterization rules: (reference model, target model, hyperparameters tuned at the reference) -> ParamTable.
// Each factor is a small named function so a rule can be read, tested and corrected in one place.
#pragma once
#include <string>
#include <vector>

#include "nn/lm.h"
#include "nn/param_table.h"

namespace mue {

// Hyperparameters as tuned on the reference (dense proxy) model.
struct Hyper {
  double lr = 3e-3;            // Adam learning rate of hidden matrices at the reference
  double wd = 0.0;             // AdamW weight decay (PyTorch convention: p -= lr * wd * p)
  double init_std = 0.02;      // std of hidden matrices (and head) at the reference fan-in
  double emb_init_std = 0.02;  // std of the token embedding
  double eps = 1e-8;           // Adam epsilon
};

std::vector<std::string> rule_names();
// Throws with the list of known rules when `rule` is unknown.
ParamTable make_param_table(const std::string& rule, const ModelConfig& target, const ModelConfig& reference,
                            const Hyper& hp);

// ---- the factors (exposed for tests) ----
// Fan-in init: std ∝ 1/sqrt(fan_in), equal to sigma_ref at the reference fan-in.
double fan_in_init_std(double sigma_ref, int fan_in, int fan_in_ref);
// muP (Tensor Programs V, Table 3, Adam): hidden-matrix LR ∝ 1/fan_in, equal to lr_ref at the reference.
double mup_hidden_lr(double lr_ref, int fan_in, int fan_in_ref);
// muP output multiplier 1/rho_d = d_ref / d on the logits (the head keeps a width-independent init and LR).
double mup_output_multiplier(int d, int d_ref);
// muP attention scale: 1/d_head, normalised to 1/sqrt(d_head_ref) at the reference head dimension.
double mup_attention_scale(int head_dim, int head_dim_ref);
// SP attention scale 1/sqrt(d_head).
double sp_attention_scale(int head_dim);

// Human-readable table (one line per tensor) for `transfer` and the run's stdout.
std::string format_table(const ParamTable& t, bool collapse_layers = true);

}  // namespace mue
