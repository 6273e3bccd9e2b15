// Config loading, overrides and the one-line errors for bad input.
#include <cstdio>
#include <fstream>

#include "experiments/run_config.h"
#include "tests/catch.h"

using namespace mue;

namespace {
std::string write_temp(const std::string& name, const std::string& text) {
  std::string p = "/tmp/mue_test_" + std::to_string(::getpid()) + "_" + name;
  std::ofstream(p) << text;
  return p;
}
}  // namespace

TEST_CASE("defaults resolve; file and overrides layer on top", "[config]") {
  RunConfig d = resolve_config("", {});
  CHECK(d.model.d_model == 64);
  CHECK(d.reference.d_model == d.model.d_model);  // null reference = the model itself
  CHECK(!d.model.qk_norm);
  CHECK(resolve_config("", {"model.qk_norm=true"}).model.qk_norm);
  std::string f = write_temp("a.json", R"({"model": {"d_model": 96, "n_heads": 3}, "hp": {"lr": 0.02}})");
  RunConfig c = resolve_config(f, {"hp.lr=0.05", "reference.d_model=48", "optim.schedule=wsd", "train.device=cpu"});
  CHECK(c.model.d_model == 96);
  CHECK(c.model.n_heads == 3);
  CHECK(c.hp.lr == 0.05);
  CHECK(c.reference.d_model == 48);
  CHECK(c.reference.n_heads == 3);
  CHECK(c.schedule.kind == "wsd");
  CHECK(c.schedule.total == c.train.steps);
  CHECK(c.raw["hp"]["lr"] == 0.05);
  std::remove(f.c_str());
}

TEST_CASE("ffn.shape: a disagreeing ffn.experts or ffn.active is refused; a dense FFN ignores the shape", "[config]") {
  auto error_of = [](const std::vector<std::string>& ov) {
    try {
      (void)resolve_config("", ov);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(error_of({"ffn.type=moe", "ffn.shape=16e4a", "ffn.experts=4"}).find("ffn.shape 16e4a and ffn.experts 4 disagree") !=
        std::string::npos);
  CHECK(error_of({"ffn.type=moe", "ffn.shape=16e4a", "ffn.active=3"}).find("ffn.shape 16e4a and ffn.active 3 disagree") !=
        std::string::npos);
  CHECK(error_of({"ffn.type=moe", "ffn.shape=16e4a", "ffn.experts=16", "ffn.active=4"}) == "no error");
  const RunConfig dense = resolve_config("", {"ffn.type=moe", "ffn.shape=64e8a", "ffn.type=dense", "ffn.hidden=96"});
  CHECK(dense.model.ffn.type == "dense");
  CHECK(dense.model.ffn_hidden == 96);
  // A stored config, normalized on resolving, is the same run as the config it came from.
  const RunConfig moe = resolve_config("", {"ffn.type=moe", "ffn.shape=16e4a", "ffn.granularity=2", "ffn.expert_hidden=8"});
  CHECK(config_differences(moe.raw, moe.raw).empty());
  json older = moe.raw;  // as a mue before train.bucket_mb wrote it, with the shape's keys as given
  older["train"].erase("bucket_mb");
  older["ffn"]["experts"] = 8, older["ffn"]["active"] = 2;
  CHECK(config_differences(moe.raw, older).empty());
  older["train"]["steps"] = 7;
  CHECK(config_differences(moe.raw, older) == std::vector<std::string>{"train.steps"});
}

TEST_CASE("the stored config is resolved: shape, null references and checkpoint spelled out, same run on re-parse", "[config]") {
  RunConfig c = resolve_config("", {"ffn.type=moe", "ffn.shape=16e4a", "ffn.granularity=2", "ffn.expert_hidden=8",
                                    "reference.n_layers=1", "train.batch=3", "train.steps=7"});
  CHECK(c.model.ffn.experts == 32);
  CHECK(c.model.ffn.active == 8);
  CHECK(c.raw["ffn"]["experts"] == 16);  // keys before granularity, as the config reads them
  CHECK(c.raw["ffn"]["active"] == 4);
  CHECK(c.raw["reference"]["d_model"] == c.model.d_model);
  CHECK(c.raw["reference"]["n_layers"] == 1);
  CHECK(c.raw["reference"]["ffn_hidden"] == c.model.ffn_hidden);
  CHECK(c.raw["reference"]["batch"] == 3);
  CHECK(c.raw["reference"]["steps"] == 7);
  CHECK(c.raw["out"]["checkpoint"] == false);
  RunConfig again = parse_config(c.raw);
  CHECK(again.raw == c.raw);
  CHECK(again.model.ffn.experts == 32);
  CHECK(again.model.ffn.expert_hidden == 4);
  CHECK(again.reference.n_layers == 1);
  CHECK(again.hp.ref_batch_tokens == c.hp.ref_batch_tokens);
}

TEST_CASE("bad configs give one clear line naming the problem", "[config]") {
  struct Case {
    std::string file_text;
    std::vector<std::string> overrides;
    std::string expect;
  };
  std::vector<Case> cases = {
      {R"({"model": {"dmodel": 64}})", {}, "unknown config key 'model.dmodel'"},
      {"", {"train.stepz=5"}, "unknown config key 'train.stepz'"},
      {R"({"model": {"d_model": 64,}})", {}, "malformed JSON"},
      {"", {"model.d_model=100", "model.n_heads=3"}, "not divisible by model.n_heads"},
      {"", {"model.rope_theta=0"}, "model.rope_theta must be positive"},
      {"", {"model.qk_norm=1"}, "'model.qk_norm' must be a boolean"},
      {"", {"model.d_model=\"big\""}, "'model.d_model' must be a number"},
      {"", {"model.d_model=64.5"}, "'model.d_model' must be an integer"},
      {"", {"rule=mu-p"}, "unknown rule 'mu-p'"},
      {"", {"optim.schedule=linear"}, "unknown schedule 'linear'"},
      {"", {"train.device=tpu"}, "train.device must be auto, cpu or cuda"},
      {"", {"train.zero=2"}, "train.zero must be 0 (every rank keeps the whole optimizer state) or 1"},
      {"", {"train.bucket_mb=-1"}, "train.bucket_mb must be >= 0"},
      {"", {"hp.lr=-1"}, "hp.lr must be positive"},
      {"", {"model.vocab_pad=100"}, "model.vocab_pad (100) must be >= model.vocab"},
      {"", {"model.vocab=0"}, "model.vocab must be positive, got 0"},
      {"", {"out.checkpoint_every=-1"}, "out.checkpoint_every and out.checkpoint_minutes must be >= 0"},
      {"", {"out.checkpoint_minutes=-0.5"}, "out.checkpoint_every and out.checkpoint_minutes must be >= 0"},
      {"", {"train.batch=0"}, "train.batch must be positive"},
      {"", {"optim.beta2=1.5"}, "optim.beta1 and optim.beta2 must be in [0, 1)"},
      {"", {"model"}, "not of the form key=value"},
      {"", {"model=3"}, "'model' must be an object"},
      {"[1, 2]", {}, "must be a JSON object"},
      {"", {"model.d_model=6", "model.n_heads=2"}, "must be even for RoPE"},
  };
  for (const auto& c : cases) {
    INFO("expect: " << c.expect);
    std::string f = c.file_text.empty() ? "" : write_temp("bad.json", c.file_text);
    CHECK_THROWS_WITH(resolve_config(f, c.overrides), HasText(c.expect));
    if (!f.empty()) std::remove(f.c_str());
  }
  CHECK_THROWS_WITH(resolve_config("/nonexistent/cfg.json", {}), HasText("cannot open config file '/nonexistent/cfg.json'"));
}

TEST_CASE("config help lists every default key", "[config]") {
  std::string h = config_keys_help();
  for (const char* k : {"model.d_model", "hp.lr", "train.steps", "optim.schedule", "data.tokens", "out.overwrite"})
    CHECK(h.find(k) != std::string::npos);
}

TEST_CASE("memory estimate: the LM's parameter count exactly, and absurd sizes refused before anything is built", "[config]") {
  for (auto ov : std::vector<std::vector<std::string>>{
           {"model.d_model=64", "model.n_layers=3", "ffn.hidden=96"},
           {"model.d_model=64", "model.n_heads=4", "model.qk_norm=true", "ffn.type=moe", "ffn.shape=16e4a",
            "ffn.expert_hidden=8", "ffn.granularity=2", "ffn.shared=1", "ffn.shared_hidden=24"}}) {
    RunConfig c = resolve_config("", ov);
    double exact = 0;
    for (auto& t : lm_tensors(c.model)) exact += double(t.rows) * t.cols;
    CHECK(estimate_memory(c).params == exact);
    CHECK(estimate_memory(c).state_bytes == 16 * exact);
  }
  // 10^8 layers: one line at once (the parameter table alone would not fit), whatever the device.
  for (const char* dev : {"train.device=cpu", "train.device=auto"})
    CHECK_THROWS_WITH(resolve_config("", {"model.n_layers=100000000", dev}), HasText("the model needs about") &&
                      HasText("more than this machine's"));
}
