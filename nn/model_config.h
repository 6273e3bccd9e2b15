// The shape of a model, as the run config gives it: the FFN of every block (dense SwiGLU or MoE), the image side
// of the diffusion transformer, and the transformer itself (task lm: nn/lm.h, task flow: nn/dit.h).
#pragma once
#include <cmath>
#include <string>

#include "core/error.h"

namespace mue {

// The FFN of every block: a dense SwiGLU of width `hidden`, or an MoE layer. For MoE the fields hold the final
// shape (granularity already applied: experts = N*g, active = a*g, expert_hidden = h/g).
struct FfnConfig {
  std::string type = "dense";  // dense | moe
  int experts = 8, active = 2, expert_hidden = 128;
  int shared = 0, shared_hidden = 0;  // shared experts (gate 1), each a SwiGLU of width shared_hidden
  int groups = 1;                     // group-balanced routing: active/groups experts from each group
  bool sigmoid = false;               // scores: softmax over experts (false) or sigmoid
  double balance_coef = 0.01, z_coef = 0.0;
  bool moe() const { return type == "moe"; }
  int active_width() const { return active * expert_hidden + shared * shared_hidden; }  // H_a
  void validate() const {
    MUE_CHECK(type == "dense" || type == "moe", "ffn.type must be dense or moe, got '", type, "'");
    if (!moe()) return;
    MUE_CHECK(experts > 0 && active > 0 && expert_hidden > 0, "ffn.experts, ffn.active and ffn.expert_hidden must be positive");
    MUE_CHECK(active <= experts, "ffn.active (", active, ") exceeds ffn.experts (", experts, ")");
    MUE_CHECK(groups > 0 && experts % groups == 0, "ffn.experts (", experts, ") is not divisible by ffn.groups (", groups, ")");
    MUE_CHECK(active % groups == 0, "ffn.active (", active, ") is not divisible by ffn.groups (", groups, ")");
    MUE_CHECK(shared >= 0 && (shared == 0 || shared_hidden > 0), "ffn.shared experts need ffn.shared_hidden > 0");
    MUE_CHECK(balance_coef >= 0 && z_coef >= 0, "ffn.balance_coef and ffn.z_coef must be >= 0");
  }
};

// The image side of the diffusion transformer (task "flow"); unused by the LM.
struct ImageConfig {
  int channels = 1, size = 28, patch = 2, classes = 10;
  int time_freq = 256;         // sinusoidal timestep features fed to the timestep MLP
  double label_dropout = 0.1;  // probability a training label is replaced by the null class (for CFG)
  int grid() const { return size / patch; }
  int patch_dim() const { return channels * patch * patch; }
  // The checks of a DiT of width d_model over seq_len patches.
  void validate(int d_model, int seq_len) const {
    MUE_CHECK(channels > 0, "image.channels must be positive, got ", channels);
    MUE_CHECK(size > 0 && patch > 0 && size % patch == 0,
              "image.size (", size, ") must be a positive multiple of image.patch (", patch, ")");
    MUE_CHECK(classes > 0, "image.classes must be positive, got ", classes);
    MUE_CHECK(time_freq > 0 && time_freq % 2 == 0, "image.time_freq must be positive and even, got ", time_freq);
    MUE_CHECK(d_model % 4 == 0, "model.d_model must be divisible by 4 for the 2-D position embedding");
    MUE_CHECK(label_dropout >= 0 && label_dropout <= 1, "image.label_dropout must be in [0, 1]");
    MUE_CHECK(seq_len == grid() * grid(), "internal: seq_len must be (size/patch)^2 for flow");
  }
};

struct ModelConfig {
  std::string task = "lm";  // lm | flow
  int vocab = 50257, vocab_pad = 50304;
  int d_model = 128, n_layers = 4, n_heads = 4, ffn_hidden = 512, seq_len = 256;
  double rope_theta = 10000, norm_eps = 1e-5;
  bool qk_norm = false;  // RMSNorm over each head's q and k (gains attn.qk_norm.w [2, hd]) before RoPE
  FfnConfig ffn;
  ImageConfig image;
  int head_dim() const { return d_model / n_heads; }
  // `name`: the config section the sizes came from, for the messages ("reference" for the dense proxy's).
  void validate(const char* name = "model") const {
    MUE_CHECK(task == "lm" || task == "flow", "unknown task '", task, "' (known: lm, flow)");
    if (task == "flow") image.validate(d_model, seq_len);
    MUE_CHECK(vocab > 0, name, ".vocab must be positive, got ", vocab);
    MUE_CHECK(vocab_pad >= vocab, name, ".vocab_pad (", vocab_pad, ") must be >= ", name, ".vocab (", vocab, ")");
    MUE_CHECK(d_model > 0 && n_layers > 0 && n_heads > 0 && ffn_hidden > 0 && seq_len > 0, name,
              " sizes must be positive");
    ffn.validate();
    MUE_CHECK(d_model % n_heads == 0, name, ".d_model (", d_model, ") is not divisible by ", name, ".n_heads (", n_heads,
              ")");
    MUE_CHECK(head_dim() % 2 == 0, "head dimension d_model/n_heads = ", head_dim(), " must be even for RoPE");
    MUE_CHECK(rope_theta > 0, name, ".rope_theta must be positive, got ", rope_theta);
    MUE_CHECK(norm_eps > 0 && std::isfinite(norm_eps), name, ".norm_eps must be positive, got ", norm_eps);
  }
};

}  // namespace mue
