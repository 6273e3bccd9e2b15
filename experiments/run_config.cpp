#include "experiments/run_config.h"

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <climits>
#include <cmath>
#include <cstdio>
#include <set>
#include <sstream>

namespace mue {

// The defaults are the built-in job: a small dense LM on the linux-doc token file, a few minutes on 2 CPU cores.
// Each entry: key, default, help. Kept in one list so --help and the README cannot drift from the code.
namespace {
struct KeyDoc {
  const char* key;
  const char* help;
};
const KeyDoc kDocs[] = {
    {"name", "run name; the log goes to out.dir/NAME.h5"},
    {"task", "lm (language model) | flow (class-conditional DiT, rectified flow)"},
    {"model.vocab", "vocabulary size used by the loss (GPT-2: 50257)"},
    {"model.vocab_pad", "embedding/head rows, >= vocab (padded for speed: 50304)"},
    {"model.d_model", "residual width d"},
    {"model.n_layers", "depth L"},
    {"model.n_heads", "attention heads (d_model must be divisible)"},
    {"model.seq_len", "context length T"},
    {"model.rope_theta", "RoPE base"},
    {"model.norm_eps", "RMSNorm epsilon"},
    {"model.qk_norm", "RMSNorm over each head's q and k (learned gains [2, head dim]) before RoPE and attention"},
    {"ffn.type", "dense | moe"},
    {"ffn.hidden", "dense SwiGLU hidden width H"},
    {"ffn.shape", "MoE shape name NeAa, e.g. \"64e8a\" (sets ffn.experts and ffn.active)"},
    {"ffn.experts", "MoE: total experts N (before granularity)"},
    {"ffn.active", "MoE: activated experts a per token (before granularity)"},
    {"ffn.expert_hidden", "MoE: expert SwiGLU width h (before granularity)"},
    {"ffn.granularity", "MoE: g splits each expert into g of width h/g (N*g experts, a*g active)"},
    {"ffn.shared", "MoE: shared experts (every token, gate 1)"},
    {"ffn.shared_hidden", "MoE: width of each shared expert"},
    {"ffn.groups", "MoE: group-balanced routing, active/groups experts from each of G groups"},
    {"ffn.score", "MoE: router scores softmax | sigmoid"},
    {"ffn.balance_coef", "MoE: switch load-balancing loss coefficient"},
    {"ffn.z_coef", "MoE: router z-loss coefficient"},
    {"image.channels", "flow: image channels"},
    {"image.size", "flow: image side S"},
    {"image.patch", "flow: patch side p (tokens = (S/p)^2)"},
    {"image.classes", "flow: classes (one more, the null class, is added for guidance)"},
    {"image.time_freq", "flow: sinusoidal timestep features"},
    {"image.label_dropout", "flow: probability a label is replaced by the null class"},
    {"image.eval_t", "flow: held-out loss at these t values with fixed noise"},
    {"image.sample_steps", "flow: Euler steps of the sampler"},
    {"image.guidance", "flow: classifier-free guidance scale of the sampler (1 = off)"},
    {"reference.d_model", "reference (tuned proxy) width; null = same as model"},
    {"reference.n_layers", "reference depth; null = same as model"},
    {"reference.n_heads", "reference heads; null = same as model"},
    {"reference.ffn_hidden", "reference (dense proxy) FFN width H; null = the model's ffn.hidden, also for an MoE model, whose experts are scaled against it"},
    {"reference.batch", "reference sequences (images) per step; null = train.batch"},
    {"reference.steps", "reference steps; null = train.steps"},
    {"rule", "parameterization rule: sp | mup | completep | complete-mue | jiang-dmft | mup-moe | mup-total-width | mup-no-route-scale"},
    {"hp.lr", "Adam LR tuned at the reference"},
    {"hp.wd", "AdamW weight decay (PyTorch convention) tuned at the reference"},
    {"hp.init_std", "hidden-matrix init std at the reference fan-in"},
    {"hp.emb_init_std", "token-embedding init std"},
    {"hp.eps", "Adam epsilon"},
    {"optim.beta1", "Adam beta1"},
    {"optim.beta2", "Adam beta2"},
    {"optim.grad_clip", "global grad-norm clip (<= 0: off)"},
    {"optim.schedule", "constant | cosine (linear warmup + cosine) | wsd (warmup-stable-decay)"},
    {"optim.warmup", "warmup steps"},
    {"optim.min_lr_factor", "LR floor as a fraction of the peak: wsd's last step; cosine's end, one step after the last (as PyTorch's CosineAnnealingLR)"},
    {"optim.decay_fraction", "wsd: fraction of steps spent decaying"},
    {"train.batch", "sequences per step (tokens per step = batch * seq_len)"},
    {"train.steps", "optimizer steps"},
    {"train.seed", "seed of the initial weights"},
    {"train.data_seed", "seed of the batch order (same for every point of a sweep)"},
    {"train.log_every", "steps between progress lines and /train rows"},
    {"train.eval_every", "steps between validation evaluations (and at the end)"},
    {"train.eval_batches", "validation batches per evaluation (fixed windows)"},
    {"train.device", "auto | cpu | cuda"},
    {"train.diverge_factor", "mark diverged when loss > factor x initial loss after warmup (0: off, else above 1; NaN/inf always)"},
    {"train.cuda_graph", "on CUDA: record the training step once as a CUDA graph and replay it (false: op by op)"},
    {"train.zero", "data parallel: 0 = every rank keeps the whole optimizer state; 1 = ZeRO-1, each rank keeps and "
                   "updates its share of the Adam moments"},
    {"train.bucket_mb", "data parallel, zero=0: MiB of gradients per all-reduce, each started during the backward "
                        "once its gradients are final (0: one all-reduce after the backward)"},
    {"data.tokens", "token file made by `mue tokenize` (task lm)"},
    {"data.images", "image file made by `mue prepare-images` (task flow)"},
    {"out.dir", "folder for run files"},
    {"out.overwrite", "replace an existing completed run of the same name"},
    {"out.checkpoint", "write out.dir/NAME.ckpt at every evaluation (null: only for task flow, which `sample` needs)"},
    {"out.checkpoint_every", "also write NAME.ckpt every this many steps (0: not by steps)"},
    {"out.checkpoint_minutes", "also write NAME.ckpt once this many minutes have passed since the last (0: never)"},
    {"out.resume", "a killed or failed run with a checkpoint continues from it (false: start over)"},
};
}  // namespace

json default_config() {
  return json::parse(R"({
    "name": "default",
    "task": "lm",
    "model": {"vocab": 50257, "vocab_pad": 50304, "d_model": 64, "n_layers": 2, "n_heads": 2,
              "seq_len": 64, "rope_theta": 10000.0, "norm_eps": 1e-5,
              "qk_norm": false},
    "ffn": {"type": "dense", "hidden": 256, "shape": null, "experts": 8, "active": 2, "expert_hidden": 64,
            "granularity": 1, "shared": 0, "shared_hidden": 0, "groups": 1, "score": "softmax",
            "balance_coef": 0.01, "z_coef": 0.0},
    "reference": {"d_model": null, "n_layers": null, "n_heads": null, "ffn_hidden": null, "batch": null,
                  "steps": null},
    "image": {"channels": 1, "size": 28, "patch": 2, "classes": 10, "time_freq": 256, "label_dropout": 0.1,
              "eval_t": [0.1, 0.3, 0.5, 0.7, 0.9], "sample_steps": 50, "guidance": 1.5},
    "rule": "mup",
    "hp": {"lr": 0.01, "wd": 0.0, "init_std": 0.02, "emb_init_std": 0.02, "eps": 1e-8},
    "optim": {"beta1": 0.9, "beta2": 0.95, "grad_clip": 1.0, "schedule": "cosine", "warmup": 20,
              "min_lr_factor": 0.1, "decay_fraction": 0.2},
    "train": {"batch": 8, "steps": 150, "seed": 1, "data_seed": 1, "log_every": 10, "eval_every": 50,
              "eval_batches": 8, "device": "auto", "diverge_factor": 0.0, "cuda_graph": true,
              "zero": 0, "bucket_mb": 25},
    "data": {"tokens": "data-cache/linux-doc.tok", "images": "data-cache/fashion-mnist.h5"},
    "out": {"dir": "runs", "overwrite": false, "checkpoint": null, "checkpoint_every": 0, "checkpoint_minutes": 10,
            "resume": true}
  })");
}

RunConfig resolve_config(const std::string& file, const std::vector<std::string>& overrides) {
  json cfg = default_config();
  if (!file.empty()) {
    const json user = load_json_file(file);
    // A sweep spec where a run config belongs: say so, rather than "unknown config key 'axes'".
    MUE_CHECK(!(user.is_object() && user.contains("axes")), "'", file,
              "' is a sweep spec (it has 'axes'), not a run config: run it with `mue sweep ", file, "`");
    merge_checked(cfg, user);
  }
  apply_overrides(cfg, overrides);
  return parse_config(cfg);
}

void parse_shape(const std::string& name, int& experts, int& active) {
  const char *p = name.data(), *end = name.data() + name.size();
  auto number = [&](int& out) {
    auto [next, ec] = std::from_chars(p, end, out);
    const bool ok = ec == std::errc() && next != p && *p != '-';
    p = next;
    return ok;
  };
  const bool ok = number(experts) && p < end && *p++ == 'e' && number(active) && p < end && *p++ == 'a' && p == end;
  MUE_CHECK(ok, "shape '", name, "' is not of the form NeAa with N, a positive 32-bit integers (e.g. 64e8a)");
}

RunConfig stored_config(const std::string& text, const std::string& where) {
  json cfg = default_config();
  try {
    merge_checked(cfg, json::parse(text));
    return parse_config(cfg);
  } catch (const json::exception& e) {
    fail("the config stored in '", where, "' is unreadable: ", e.what());
  } catch (const Error& e) {
    fail("the config stored in '", where, "': ", e.what());
  }
}

namespace {
template <class X>
X get(const json& j, const char* section, const char* key) {
  const json& v = j.at(section).at(key);
  try {
    return v.get<X>();
  } catch (const json::exception&) {
    fail("config key '", section, ".", key, "' has the wrong type (", v.type_name(), ")");
  }
}
int get_int(const json& j, const char* section, const char* key) {
  const json& v = j.at(section).at(key);
  const double x = v.is_number() ? v.get<double>() : 0.5;
  MUE_CHECK(std::nearbyint(x) == x, "config key '", section, ".", key, "' must be an integer");
  MUE_CHECK(x >= INT_MIN && x <= INT_MAX, "config key '", section, ".", key, "' = ", v.dump(),
            " is out of range (32-bit integer)");
  return int(x);
}
// A top-level string key (name, task, rule).
std::string get_top_string(const json& j, const char* key) {
  const json& v = j.at(key);
  MUE_CHECK(v.is_string(), "config key '", key, "' must be a string, got ", v.type_name());
  return v.get<std::string>();
}

void parse_ffn(const json& j, FfnConfig& f) {
  f.type = get<std::string>(j, "ffn", "type");
  int experts = get_int(j, "ffn", "experts"), active = get_int(j, "ffn", "active");
  if (!j.at("ffn").at("shape").is_null()) {
    // The shape sets N and a; an explicit ffn.experts or ffn.active that disagrees is a conflict, not overridden.
    // (A dense FFN ignores every MoE key, the shape among them: `bench small-moe ffn.type=dense` is the dense twin.)
    const std::string shape = get<std::string>(j, "ffn", "shape");
    const json defaults = default_config();
    const json& d = defaults.at("ffn");
    int n = 0, a = 0;
    parse_shape(shape, n, a);
    MUE_CHECK(f.type != "moe" || experts == n || experts == d.at("experts").get<int>(), "ffn.shape ", shape, " and ffn.experts ",
              experts, " disagree; give one of them");
    MUE_CHECK(f.type != "moe" || active == a || active == d.at("active").get<int>(), "ffn.shape ", shape, " and ffn.active ", active,
              " disagree; give one of them");
    experts = n, active = a;
  }
  const int g = get_int(j, "ffn", "granularity"), h = get_int(j, "ffn", "expert_hidden");
  MUE_CHECK(g > 0, "ffn.granularity must be positive");
  MUE_CHECK(h % g == 0, "ffn.expert_hidden (", h, ") is not divisible by ffn.granularity (", g, ")");
  f.experts = experts * g, f.active = active * g, f.expert_hidden = h / g;
  f.shared = get_int(j, "ffn", "shared");
  f.shared_hidden = get_int(j, "ffn", "shared_hidden");
  f.groups = get_int(j, "ffn", "groups");
  const std::string score = get<std::string>(j, "ffn", "score");
  MUE_CHECK(score == "softmax" || score == "sigmoid", "ffn.score must be softmax or sigmoid, got '", score, "'");
  f.sigmoid = score == "sigmoid";
  f.balance_coef = get<double>(j, "ffn", "balance_coef");
  f.z_coef = get<double>(j, "ffn", "z_coef");
  f.validate();
}
}  // namespace

RunConfig parse_config(const json& j) {
  RunConfig c;
  c.raw = j;
  c.name = get_top_string(j, "name");
  MUE_CHECK(!c.name.empty() && c.name.find('/') == std::string::npos, "name must be non-empty without '/'");
  c.task = get_top_string(j, "task");
  MUE_CHECK(c.task == "lm" || c.task == "flow", "unknown task '", c.task, "' (known: lm, flow)");
  ModelConfig& m = c.model;
  m.task = c.task;
  m.vocab = get_int(j, "model", "vocab");
  m.vocab_pad = get_int(j, "model", "vocab_pad");
  m.d_model = get_int(j, "model", "d_model");
  m.n_layers = get_int(j, "model", "n_layers");
  m.n_heads = get_int(j, "model", "n_heads");
  m.ffn_hidden = get_int(j, "ffn", "hidden");
  parse_ffn(j, m.ffn);
  m.seq_len = get_int(j, "model", "seq_len");
  m.rope_theta = get<double>(j, "model", "rope_theta");
  m.norm_eps = get<double>(j, "model", "norm_eps");
  m.qk_norm = get<bool>(j, "model", "qk_norm");
  ImageConfig& im = m.image;
  im.channels = get_int(j, "image", "channels");
  im.size = get_int(j, "image", "size");
  im.patch = get_int(j, "image", "patch");
  im.classes = get_int(j, "image", "classes");
  im.time_freq = get_int(j, "image", "time_freq");
  im.label_dropout = get<double>(j, "image", "label_dropout");
  c.eval_t = get<std::vector<double>>(j, "image", "eval_t");
  for (double t : c.eval_t) MUE_CHECK(t > 0 && t < 1, "image.eval_t values must be in (0, 1)");
  MUE_CHECK(c.task != "flow" || !c.eval_t.empty(), "image.eval_t must list at least one t (the held-out loss)");
  c.sample_steps = get_int(j, "image", "sample_steps");
  c.guidance = get<double>(j, "image", "guidance");
  MUE_CHECK(c.sample_steps > 0, "image.sample_steps must be positive");
  MUE_CHECK(c.guidance >= 0 && c.guidance <= 1e6, "image.guidance must be in [0, 1e6] (as sample's --guidance), got ",
            c.guidance);
  if (m.task == "flow") {
    MUE_CHECK(im.patch > 0 && im.size % im.patch == 0, "image.size (", im.size, ") is not divisible by image.patch (",
              im.patch, ")");
    m.seq_len = im.grid() * im.grid();
    m.vocab = m.vocab_pad = 1;  // unused by the DiT
  }
  m.validate();
  c.reference = m;
  c.reference.ffn = FfnConfig{};  // the reference is the dense proxy
  const json& r = j.at("reference");
  if (!r.at("d_model").is_null()) c.reference.d_model = get_int(j, "reference", "d_model");
  if (!r.at("n_layers").is_null()) c.reference.n_layers = get_int(j, "reference", "n_layers");
  if (!r.at("n_heads").is_null()) c.reference.n_heads = get_int(j, "reference", "n_heads");
  if (!r.at("ffn_hidden").is_null()) c.reference.ffn_hidden = get_int(j, "reference", "ffn_hidden");
  c.reference.validate("reference");
  c.rule = get_top_string(j, "rule");
  c.hp.lr = get<double>(j, "hp", "lr");
  c.hp.wd = get<double>(j, "hp", "wd");
  c.hp.init_std = get<double>(j, "hp", "init_std");
  c.hp.emb_init_std = get<double>(j, "hp", "emb_init_std");
  c.hp.eps = get<double>(j, "hp", "eps");
  c.adamw.beta1 = get<double>(j, "optim", "beta1");
  c.adamw.beta2 = get<double>(j, "optim", "beta2");
  MUE_CHECK(c.adamw.beta1 >= 0 && c.adamw.beta1 < 1 && c.adamw.beta2 >= 0 && c.adamw.beta2 < 1,
            "optim.beta1 and optim.beta2 must be in [0, 1)");
  c.adamw.grad_clip = get<double>(j, "optim", "grad_clip");
  c.schedule.kind = get<std::string>(j, "optim", "schedule");
  c.schedule.warmup = get_int(j, "optim", "warmup");
  c.schedule.min_factor = get<double>(j, "optim", "min_lr_factor");
  c.schedule.decay_fraction = get<double>(j, "optim", "decay_fraction");
  TrainConfig& t = c.train;
  t.batch = get_int(j, "train", "batch");
  t.steps = get_int(j, "train", "steps");
  const int seed = get_int(j, "train", "seed"), data_seed = get_int(j, "train", "data_seed");
  MUE_CHECK(seed >= 0 && data_seed >= 0, "train.seed and train.data_seed must be >= 0");
  t.seed = uint64_t(seed), t.data_seed = uint64_t(data_seed);
  t.log_every = get_int(j, "train", "log_every");
  t.eval_every = get_int(j, "train", "eval_every");
  t.eval_batches = get_int(j, "train", "eval_batches");
  t.device = get<std::string>(j, "train", "device");
  t.diverge_factor = get<double>(j, "train", "diverge_factor");
  // A run diverges when its loss exceeds factor x its first loss: a factor at or below 1 would flag healthy runs.
  MUE_CHECK(t.diverge_factor == 0 || (std::isfinite(t.diverge_factor) && t.diverge_factor > 1),
            "train.diverge_factor must be 0 (off) or a factor above 1, got ", t.diverge_factor);
  t.cuda_graph = get<bool>(j, "train", "cuda_graph");
  t.zero = get_int(j, "train", "zero");
  t.bucket_mb = get<double>(j, "train", "bucket_mb");
  MUE_CHECK(t.batch > 0, "train.batch must be positive");
  MUE_CHECK(t.steps > 0, "train.steps must be positive");
  MUE_CHECK(t.log_every > 0 && t.eval_every > 0 && t.eval_batches > 0,
            "train.log_every, train.eval_every and train.eval_batches must be positive");
  MUE_CHECK(t.device == "auto" || t.device == "cpu" || t.device == "cuda", "train.device must be auto, cpu or cuda, got '",
            t.device, "'");
  MUE_CHECK(t.zero == 0 || t.zero == 1, "train.zero must be 0 (every rank keeps the whole optimizer state) or 1 "
            "(ZeRO-1: each rank its share), got ", t.zero);
  MUE_CHECK(t.bucket_mb >= 0 && std::isfinite(t.bucket_mb), "train.bucket_mb must be >= 0 (MiB; 0: one all-reduce "
            "after the backward), got ", t.bucket_mb);
  c.schedule.total = t.steps;
  c.schedule.validate();
  c.data_tokens = get<std::string>(j, "data", "tokens");
  c.data_images = get<std::string>(j, "data", "images");
  const json& rb = j.at("reference").at("batch");
  const json& rsteps = j.at("reference").at("steps");
  if (!rb.is_null()) MUE_CHECK(rb.is_number() && rb.get<double>() > 0, "reference.batch must be positive");
  if (!rsteps.is_null()) MUE_CHECK(rsteps.is_number() && rsteps.get<double>() > 0, "reference.steps must be positive");
  c.hp.batch_tokens = double(t.batch) * m.seq_len;
  c.hp.ref_batch_tokens = (rb.is_null() ? double(t.batch) : rb.get<double>()) * m.seq_len;
  c.hp.steps = t.steps;
  c.hp.ref_steps = rsteps.is_null() ? double(t.steps) : rsteps.get<double>();
  c.out_dir = get<std::string>(j, "out", "dir");
  c.overwrite = get<bool>(j, "out", "overwrite");
  const json& ck = j.at("out").at("checkpoint");
  MUE_CHECK(ck.is_null() || ck.is_boolean(), "config key 'out.checkpoint' must be true, false or null, got ", ck.dump());
  c.checkpoint = ck.is_null() ? c.task == "flow" : ck.get<bool>();
  c.checkpoint_every = get_int(j, "out", "checkpoint_every");
  c.checkpoint_minutes = get<double>(j, "out", "checkpoint_minutes");
  MUE_CHECK(c.checkpoint_every >= 0 && c.checkpoint_minutes >= 0 && std::isfinite(c.checkpoint_minutes),
            "out.checkpoint_every and out.checkpoint_minutes must be >= 0 (0: off)");
  c.resume = get<bool>(j, "out", "resume");
  // Absurd sizes stop here, before the table below (a row per tensor) is built: the host part of the estimate
  // (all of it for train.device=cpu); train and bench check again on the device they resolve.
  check_memory_fits(c, c.train.device);  // auto: as for a GPU, the smaller need (train checks the device it takes)
  make_param_table(c.rule, c.model, c.reference, c.hp);  // validates the rule name and hyperparameters now
  // The stored config says what ran: the shape's N and a (keys before granularity), the reference's values
  // where they were null, and whether checkpoints are written. Parsing it again gives the same run.
  if (!j.at("ffn").at("shape").is_null()) {
    const int g = get_int(j, "ffn", "granularity");
    c.raw["ffn"]["experts"] = m.ffn.experts / g, c.raw["ffn"]["active"] = m.ffn.active / g;
  }
  json& rr = c.raw["reference"];
  rr["d_model"] = c.reference.d_model, rr["n_layers"] = c.reference.n_layers, rr["n_heads"] = c.reference.n_heads;
  rr["ffn_hidden"] = c.reference.ffn_hidden;
  if (rb.is_null()) rr["batch"] = t.batch;
  if (rsteps.is_null()) rr["steps"] = t.steps;
  c.raw["out"]["checkpoint"] = c.checkpoint;
  return c;
}

std::string config_keys_help() {
  json d = default_config();
  std::ostringstream os;
  for (const auto& k : kDocs) {
    std::string key = k.key;
    json v = d;
    for (size_t p = 0, q; p != std::string::npos; p = q == std::string::npos ? q : q + 1) {
      q = key.find('.', p);
      v = v.at(key.substr(p, q == std::string::npos ? q : q - p));
    }
    os << "  " << key << std::string(key.size() < 22 ? 22 - key.size() : 1, ' ') << v.dump() << "  " << k.help << "\n";
  }
  return os.str();
}

MemoryEstimate estimate_memory(const RunConfig& c) {
  const ModelConfig& m = c.model;
  const double D = m.d_model, L = m.n_layers, N = double(c.train.batch) * m.seq_len;
  const FfnConfig& f = m.ffn;
  // Per layer: attention (qkv, proj, norms) and the FFN; MoE counts every expert's weights, the active ones'
  // activations.
  double layer = 4 * D * D + 2 * D + (m.qk_norm ? 2.0 * m.head_dim() : 0.0), ffn_act = 3.0 * m.ffn_hidden;
  if (f.moe()) {
    const double Hs = double(f.shared) * f.shared_hidden;
    layer += f.experts * D + 3.0 * D * f.expert_hidden * f.experts + 3 * D * Hs;
    ffn_act = 3.0 * f.active_width() + double(f.active) * D + f.experts;
  } else {
    layer += 3 * D * m.ffn_hidden;
  }
  double outer = 0, head_act = 0;
  if (m.task == "lm") {
    outer = 2.0 * m.vocab_pad * D + D;
    head_act = std::min(N * m.vocab_pad, double(1 << 28));  // the logits exist a chunk of about 2^28 at a time
  } else {  // DiT: adaLN modulation per block, patch embedding, timestep MLP, class table, final layer
    const ImageConfig& im = m.image;
    const double patch = double(im.channels) * im.patch * im.patch;
    layer += 6 * D * (D + 1);
    outer = 2 * patch * D + double(im.time_freq) * D + D * D + (im.classes + 1) * D + 2 * D * (D + 1);
    head_act = N * patch;
  }
  MemoryEstimate e;
  e.params = L * layer + outer;
  e.state_bytes = 16 * e.params;  // value, gradient, Adam m and v in fp32
  // The CPU attention keeps its probabilities (batch x heads x T x T a layer); the GPU's flash attention does not.
  const double scores = double(c.train.batch) * m.n_heads * double(m.seq_len) * m.seq_len;
  e.activation_bytes = 4 * (N * L * (10 * D + ffn_act) + L * scores + head_act);
  return e;
}

std::string format_memory(const MemoryEstimate& m) {
  char b[160];
  std::snprintf(b, sizeof b, "about %.3g M parameters, %.3g GiB of weights, gradients and Adam state, %.3g GiB of "
                "activations", m.params / 1e6, m.state_bytes / 1073741824.0, m.activation_bytes / 1073741824.0);
  return b;
}

void check_memory_fits(const RunConfig& c, const std::string& device) {
  const MemoryEstimate e = estimate_memory(c);
  const double page = double(::sysconf(_SC_PAGESIZE)), pages = double(::sysconf(_SC_PHYS_PAGES));
  const double host = page > 0 && pages > 0 ? page * pages : 0;
  // On the GPU the host still builds the parameter table (a row of strings per tensor) and stages the weights.
  const double host_need = device == "cpu" ? e.total() : 4 * e.params + 512.0 * (c.model.n_layers + 2) * 8;
  MUE_CHECK(host == 0 || host_need <= host, "the model needs ", format_memory(e), " (train.device=", device,
            "), more than this machine's ", host / 1073741824.0, " GiB of memory: make model.n_layers, d_model, "
            "the FFN or train.batch smaller");
}

std::vector<std::string> config_differences(const json& want, json stored) {
  try {  // normalized as `want` was (defaults, the shape's N and a, the reference's nulls spelled out)
    stored = stored_config(stored.dump(), "a run file").raw;
  } catch (const std::exception&) {  // a config this mue cannot parse: its keys, with defaults for the missing
    const json defaults = default_config();
    for (auto& [k, section] : defaults.items())
      if (section.is_object() && stored.contains(k) && stored[k].is_object())
        for (auto& [kk, v] : section.items())
          if (!stored[k].contains(kk)) stored[k][kk] = v;
  }
  std::vector<std::string> keys;
  for (auto& [k, v] : want.items()) {
    if (k == "out") continue;
    if (!stored.contains(k)) {
      keys.push_back(k);
      continue;
    }
    const json& old = stored[k];
    if (!v.is_object() || !old.is_object()) {
      if (old != v) keys.push_back(k);
      continue;
    }
    std::set<std::string> both;
    for (auto& [kk, vv] : v.items()) both.insert(kk);
    for (auto& [kk, vv] : old.items()) both.insert(kk);
    for (const auto& kk : both)
      if (!v.contains(kk) || !old.contains(kk) || old[kk] != v[kk]) keys.push_back(k + "." + kk);
  }
  return keys;
}

}  // namespace mue
