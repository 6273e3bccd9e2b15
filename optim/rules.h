// Parameterization rules: (reference model, target model, hyperparameters tuned at the reference) -> ParamTable.
// Each factor is a small named function so a rule can be read, tested and corrected in one place.
#pragma once
#include <string>
#include <vector>

#include "nn/models.h"
#include "nn/param_table.h"

namespace mue {

// Hyperparameters as tuned on the reference (dense proxy) model.
struct Hyper {
  double lr = 3e-3;            // Adam learning rate of hidden matrices at the reference
  double wd = 0.0;             // AdamW weight decay (PyTorch convention: p -= lr * wd * p)
  double init_std = 0.02;      // std of hidden matrices (and head) at the reference fan-in
  double emb_init_std = 0.02;  // std of the token embedding
  double eps = 1e-8;           // Adam epsilon
  // Run size of the reference (where lr/wd were tuned) and of the target, for the rules with batch-size and
  // duration factors (complete-mue). Only the ratios target/reference are used; 0 means "same as the other"
  // (factor 1), so leaving them unset turns those factors off.
  double batch_tokens = 0, ref_batch_tokens = 0;  // tokens per optimizer step (batch * seq_len)
  double steps = 0, ref_steps = 0;                // optimizer steps of the run
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

// CompleteP (Dey et al. 2025, arXiv 2505.01618, Table 1 with alpha = 1): residual-branch multiplier L_ref / L.
double completep_branch_multiplier(int n_layers, int n_layers_ref);
// CompleteP Adam eps of tensors inside the residual blocks (hidden matrices, their norms): eps * (d_ref/d) * (L_ref/L).
double completep_block_eps(double eps_ref, int d, int d_ref, int n_layers, int n_layers_ref);
// CompleteP Adam eps of the embedding, the unembedding and the final norm: eps * d_ref/d.
double completep_outer_eps(double eps_ref, int d, int d_ref);
// Weight decay (PyTorch convention, decay per step = lr * wd) that keeps the per-step decay lr_ref * wd_ref,
// i.e. the AdamW timescale 1/(lr*wd), when a tensor's LR is lr instead of lr_ref (CompleteP: wd * m_N on hidden).
double timescale_preserving_wd(double wd_ref, double lr_ref, double lr);

// Complete-muE (Peng et al. 2026, arXiv 2605.23893).
// Active width H_a of a target's FFN: a*h + shared*shared_hidden for MoE (gates r*g ~ 1, shared gate 1), H for dense.
int mue_active_width(const ModelConfig& c);
// Total width N*h + shared*shared_hidden for MoE, H for dense (what the non-transferable mup-total-width uses).
int mue_total_width(const ModelConfig& c);
// Bridge I / II down-projection forward multiplier c = d / H_a (absolute, see rules.cpp).
double mue_down_multiplier(int d, int width);
// Bridge I / II down-projection init std sqrt(H_a / d) * sigma_down_star.
double mue_down_init_std(double sigma_down_star, int d, int width);
// Normalised route scale r = a (number of activated experts; a = N for a Dense MoE).
double mue_route_scale(int active);
// Adam square-root batch rule (Malladi et al. 2022): lr * sqrt(B / B_ref); factor 1 when either size is 0.
double sqrt_batch_lr(double lr_ref, double batch, double batch_ref);
// Duration rule: keep the AdamW timescale 1/(lr*wd) a fixed fraction of the run's T steps:
// wd = wd_ref * (lr_ref / lr) * (T_ref / T); the T factor is 1 when either T is 0.
double duration_wd(double wd_ref, double lr_ref, double lr, double steps, double steps_ref);

// Jiang, Bordelon, Pehlevan, Hanin (arXiv 2601.20205, section 3 / Table 1), relative to the reference:
// mean-field down-projection init std ∝ sqrt(d)/m: sigma * sqrt(d/d_ref) * (m_ref/m).
double jiang_down_init_std(double sigma_ref, int d, int d_ref, int m, int m_ref);
// Down-projection Adam LR ∝ 1/m (m = its fan-in, the FFN / expert hidden width): lr * m_ref / m.
double jiang_down_lr(double lr_ref, int m, int m_ref);
// Router init std ∝ d^-gamma with their default gamma = 1: sigma * d_ref / d.
double jiang_router_init_std(double sigma_ref, int d, int d_ref);

// Małaśnicki et al. (arXiv 2508.09752): the router has a finite fan-out (N experts), so muP treats it as an
// output ("readout") layer (Tensor Programs V, Table 3, Adam): init std ∝ 1/fan_in: sigma * d_ref / d.
double mup_readout_init_std(double sigma_ref, int d, int d_ref);

// Human-readable table (one line per tensor) for `transfer` and the run's stdout.
std::string format_table(const ParamTable& t, bool collapse_layers = true);

}  // namespace mue
