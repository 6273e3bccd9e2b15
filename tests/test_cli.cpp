// End to end through the library and the `mue` program: a tiny run writes a complete HDF5 log; bad input gets a
// one-line error and a non-zero exit and never touches an existing result.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/h5log.h"
#include "core/png_grid.h"
#include "core/version.h"
#include "data/tokens.h"
#include "experiments/bench.h"
#include "experiments/trainer.h"
#include "optim/rules.h"
#include "tests/catch.h"
#include "tests/fixtures.h"

using namespace mue;
using mue::test::TempDir;
namespace fs = std::filesystem;

namespace {
struct Result {
  int rc;
  std::string err;
};
Result run_mue(const std::string& args) {
  std::string errfile = "/tmp/mue_cli_err_" + std::to_string(::getpid());
  std::string cmd = std::string(MUE_BINARY) + " " + args + " > /dev/null 2> " + errfile;
  int st = std::system(cmd.c_str());
  std::ifstream in(errfile);
  std::string err((std::istreambuf_iterator<char>(in)), {});
  std::remove(errfile.c_str());
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, err};
}

// `mue ARGS` fails (non-zero exit) with one line on stderr that contains `expect`.
struct BadInput {
  std::string args, expect;
};
void expect_one_line_errors(const std::vector<BadInput>& cases) {
  for (const auto& c : cases) {
    INFO("mue " << c.args);
    Result r = run_mue(c.args);
    CHECK(r.rc != 0);
    CHECK(r.err.find(c.expect) != std::string::npos);
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);  // one line
    CHECK(r.err.find("[json.exception") == std::string::npos);  // our words, not the JSON library's
  }
}

std::string tiny_args(const TempDir& d, const std::string& tok) {
  return "model.vocab=97 model.vocab_pad=128 model.d_model=32 model.n_heads=2 model.seq_len=16 ffn.hidden=64 "
         "train.batch=4 train.steps=30 train.log_every=10 train.eval_every=15 train.eval_batches=2 "
         "train.device=cpu data.tokens=" + tok + " out.dir=" + d.path.string();
}
}  // namespace

TEST_CASE("train: a tiny run writes a complete, readable HDF5 log and learns", "[cli]") {
  TempDir d("cli");
  std::string tok = mue::test::make_toy_tokens(d);
  RunConfig c = resolve_config("", {"name=tiny", "model.vocab=97", "model.vocab_pad=128", "model.d_model=32",
                                    "model.n_heads=2", "model.seq_len=16", "ffn.hidden=64", "train.batch=8",
                                    "train.steps=60", "train.log_every=10", "train.eval_every=30",
                                    "train.eval_batches=2", "train.device=cpu", "hp.lr=0.01",
                                    "data.tokens=" + tok, "out.dir=" + d.path.string()});
  RunResult r = train_run(c, false);
  CHECK(r.status == "completed");
  CHECK(r.final_val_loss < 0.7 * std::log(97.0));
  const std::string f = d / "tiny.h5";
  CHECK(read_string_attr(f, "status").value() == "completed");
  CHECK(read_string_attr(f, "rule").value() == "mup");
  CHECK(read_string_attr(f, "git_commit").value() == git_commit());
  CHECK(read_string_attr(f, "device").value() == "cpu");
  CHECK(!read_string_attr(f, "finished").value().empty());
  CHECK(json::parse(read_string_attr(f, "config").value())["train"]["steps"] == 60);
  for (const char* ds : {"step", "tokens", "loss", "lr", "grad_norm", "tok_per_s", "wall_s"})
    CHECK(read_doubles(f, std::string("train/") + ds).size() == 6);
  CHECK(read_doubles(f, "val/loss").size() == 2);
  CHECK(read_doubles(f, "val/step") == std::vector<double>{30, 60});
  auto names = read_strings(f, "param_table/name");
  CHECK(names.size() == lm_tensors(c.model).size());
  CHECK(names.front() == "embed.wte");
  CHECK(read_doubles(f, "param_table/lr").size() == names.size());
  // The table-wide scalars, and the multiplier the forward applies (mup: no branch multiplier, so the same).
  CHECK(read_double_attr(f, "param_table/attn_scale").value() == Approx(make_param_table("mup", c.model, c.reference,
                                                                                         c.hp).attn_scale));
  CHECK(read_double_attr(f, "param_table/branch_multiplier").value() == 1.0);
  CHECK(read_double_attr(f, "param_table/route_scale").value() == 1.0);
  CHECK(!read_double_attr(f, "param_table/no_such_scalar"));
  CHECK(read_doubles(f, "param_table/forward_alpha") == read_doubles(f, "param_table/multiplier"));

  SECTION("a completed run is not overwritten unless asked") {
    auto before = fs::last_write_time(f);
    CHECK_THROWS_WITH(train_run(c, false), HasText("holds a completed run"));
    CHECK(fs::last_write_time(f) == before);
  }
  SECTION("an unreadable (empty or truncated) run file is replaced only with out.overwrite=true") {
    for (uintmax_t size : {96, 0}) {  // truncated, then empty: what a run killed while creating its file leaves
      fs::resize_file(f, size);
      CHECK_THROWS_WITH(train_run(c, false), HasText("cannot be read (a run killed while writing it?)"));
      CHECK(fs::file_size(f) == size);
    }
    c.overwrite = true;
    CHECK(train_run(c, false).status == "completed");
    CHECK(read_string_attr(f, "status").value() == "completed");
  }
}

TEST_CASE("train: the run file says how idle CPU threads waited (OMP_WAIT_POLICY) and its kernel variants", "[cli]") {
  TempDir d("cli");
  std::string tok = mue::test::make_toy_tokens(d);
  const std::string args = tiny_args(d, tok) + " train.steps=2 train.eval_every=2 > /dev/null 2>&1";
  CHECK(std::system(("env -u OMP_WAIT_POLICY -u MUE_KERNEL_VARIANTS " + std::string(MUE_BINARY) + " train name=unset " +
                     args).c_str()) == 0);
  CHECK(read_string_attr(d / "unset.h5", "omp_wait_policy").value() == "");
  CHECK(read_string_attr(d / "unset.h5", "kernel_variants").value() == "");
  CHECK(std::system(("env OMP_WAIT_POLICY=passive MUE_KERNEL_VARIANTS=fused_head=0 " + std::string(MUE_BINARY) +
                     " train name=passive " + args).c_str()) == 0);
  CHECK(read_string_attr(d / "passive.h5", "omp_wait_policy").value() == "passive");
  CHECK(read_string_attr(d / "passive.h5", "kernel_variants").value() == "fused_head=0");
}

TEST_CASE("train with an MoE FFN logs router statistics", "[cli][moe]") {
  TempDir d("cli");
  std::string tok = mue::test::make_toy_tokens(d);
  RunConfig c = resolve_config("", {"name=moe", "model.vocab=97", "model.vocab_pad=128", "model.d_model=32",
                                    "model.n_heads=2", "model.seq_len=16", "ffn.type=moe", "ffn.shape=8e2a",
                                    "ffn.expert_hidden=16", "train.batch=4", "train.steps=20", "train.log_every=10",
                                    "train.eval_every=20", "train.eval_batches=1", "train.device=cpu",
                                    "data.tokens=" + tok, "out.dir=" + d.path.string()});
  RunResult r = train_run(c, false);
  CHECK(r.status == "completed");
  const std::string f = d / "moe.h5";
  CHECK(read_doubles(f, "router/layer").size() == 2 * 2);  // 2 log rows x 2 layers
  CHECK(read_doubles(f, "router/entropy").size() == 4);
  auto load = read_doubles(f, "router/load");  // [4, 8] flattened
  REQUIRE(load.size() == 4 * 8);
  double s = 0;
  for (int e = 0; e < 8; ++e) s += load[e];
  CHECK(s == Approx(1.0));
  const auto max_load = read_doubles(f, "router/max_load"), min_load = read_doubles(f, "router/min_load");
  REQUIRE(max_load.size() == 4);
  REQUIRE(min_load.size() == 4);
  for (int r = 0; r < 4; ++r) {
    CHECK(max_load[r] == *std::max_element(load.begin() + 8 * r, load.begin() + 8 * r + 8));
    CHECK(min_load[r] == *std::min_element(load.begin() + 8 * r, load.begin() + 8 * r + 8));
  }
}

TEST_CASE("diverging run stops and is marked diverged", "[cli]") {
  TempDir d("cli");
  std::string tok = mue::test::make_toy_tokens(d);
  RunConfig c = resolve_config("", {"name=boom", "model.vocab=97", "model.vocab_pad=128", "model.d_model=32",
                                    "model.n_heads=2", "model.seq_len=16", "ffn.hidden=64", "train.batch=4",
                                    "train.steps=40", "train.device=cpu", "rule=sp", "hp.lr=3", "optim.warmup=0",
                                    "optim.grad_clip=0", "train.diverge_factor=1.5",
                                    "data.tokens=" + tok, "out.dir=" + d.path.string()});
  RunResult r = train_run(c, false);
  CHECK(r.status == "diverged");
  CHECK(r.steps_done < 40);
  CHECK(read_string_attr(d / "boom.h5", "status").value() == "diverged");
}

TEST_CASE("the mue program: bad input gives one line and a non-zero exit", "[cli]") {
  TempDir d("cli");
  std::string tok = mue::test::make_toy_tokens(d);
  std::string base = tiny_args(d, tok);
  // A good run first, so the overwrite case has something to protect.
  REQUIRE(run_mue("train name=keep " + base).rc == 0);
  const std::string kept = d / "keep.h5";
  fs::create_directories(d / "folder-run.h5");  // a folder where a run file would go
  auto before = fs::last_write_time(kept);
  // A truncated token file.
  std::string trunc = d / "trunc.tok";
  fs::copy_file(tok, trunc);
  fs::resize_file(trunc, fs::file_size(tok) / 2);
  std::string cfg_unknown = d / "unknown.json";
  std::ofstream(cfg_unknown) << R"({"model": {"d_modle": 64}})";
  std::string cfg_null_name = d / "null-name.json";
  std::ofstream(cfg_null_name) << R"({"name": null})";
  std::string cfg_bad = d / "bad.json";
  std::ofstream(cfg_bad) << R"({"model": {"d_model": 64)";
  std::string cfg_dup = d / "dup.json";
  std::ofstream(cfg_dup) << R"({"model": {"d_model": 64}, "model": {"n_layers": 1}})";
  std::string cfg_dup_inner = d / "dup-inner.json";
  std::ofstream(cfg_dup_inner) << R"({"model": {"d_model": 64, "n_layers": 1, "d_model": 32}, "train": {"d_model": 1}})";
  std::string spec_dup = d / "spec-dup.json";
  std::ofstream(spec_dup) << R"({"name": "s", "axes": {"hp.lr": [0.1]}, "axes": {"hp.lr": [0.2]}})";
  std::string spec_ok = d / "spec-ok.json";
  std::ofstream(spec_ok) << R"({"name": "s", "axes": {"hp.lr": [0.1]}})";
  std::string spec_bad = d / "spec-bad.json";
  std::ofstream(spec_bad) << R"({"name": "s",, })";

  std::vector<BadInput> cases = {
      {"train " + cfg_unknown, "unknown config key 'model.d_modle'"},
      {"train " + cfg_bad, "malformed JSON"},
      {"train " + base + " model.n_layers=100000000", "the model needs about"},
      {"bench small-dense --device cpu model.n_layers=100000000", "the model needs about"},
      {"train " + cfg_dup, "duplicate key 'model' in '" + cfg_dup + "'"},
      {"train " + cfg_dup_inner, "duplicate key 'd_model'"},
      {"train " + d.path.string(), "is a directory, not a JSON file"},
      {"train " + base + R"( 'model={"d_model": 64, "d_model": 32}')", "duplicate key 'd_model' in override 'model="},
      {"sweep " + spec_dup, "duplicate key 'axes' in sweep spec"},
      {"sweep " + spec_bad, "malformed JSON in sweep spec"},
      {"sweep " + d.path.string(), "is a directory, not a JSON file"},
      {"train /nonexistent/x.json", "cannot open config file"},
      {"train " + base + " model.n_heads=3", "not divisible by model.n_heads"},
      {"train " + base + " ffn.type=moe ffn.shape=8e9a", "ffn.active (9) exceeds ffn.experts (8)"},
      {"train " + base + " ffn.type=moe ffn.shape=8e3a ffn.groups=2", "not divisible by ffn.groups"},
      {"train " + base + " ffn.type=moe ffn.expert_hidden=30 ffn.granularity=4", "not divisible by ffn.granularity"},
      {"train " + base + " ffn.type=moe ffn.shape=eight", "not of the form NeAa"},
      {"train " + base + " data.tokens=/nonexistent.tok", "/nonexistent.tok"},
      {"train " + base + " data.tokens=" + trunc, "truncated"},
      {"train " + base + " out.dir=/proc/mue_cannot_write", "/proc/mue_cannot_write"},
      {"train name=keep " + base, "holds a completed run"},
      {"train " + base + " rule=xp", "unknown rule 'xp'"},
      {"train " + base + " train.stepz=3", "unknown config key 'train.stepz'"},
      {"frobnicate", "unknown command 'frobnicate'"},
      {"bench no-such-preset --device cpu", "unknown bench preset 'no-such-preset'"},
      {"bench small-dense --device cpu --profile", "bench --profile needs the CUDA device"},
      {"bench small-dense --device cpu --head-gemms", "bench --head-gemms times cuBLAS on a GPU; the device here is cpu"},
      {"bench small-dense --head-gemms --profile", "--head-gemms and --profile are separate runs"},
      {"bench small-dense --head-gemms --steps 5", "--steps is for the training-step bench"},
      {"bench dit-dense --device cpu --head-gemms", "dit-dense is not a language model"},
      {"bench small-dense --device cpu model.d_modle=64", "unknown config key 'model.d_modle'"},
      {"sweep " + base, "sweep needs --lr"},
      {"train " + base + " --fast", "unknown option '--fast'"},
      {"train " + base + " train.seed=4294967297", "'train.seed' = 4294967297 is out of range"},
      {"train " + base + " train.seed=-3", "train.seed and train.data_seed must be >= 0"},
      {"train " + base + " ffn.type=moe ffn.shape=4294967304e2a", "not of the form NeAa"},
      {"train " + base + " ffn.type=moe ffn.shape=64e8", "'ffn.shape' has the wrong type (number)"},
      {"train " + base + " model.norm_eps=-1", "model.norm_eps must be positive"},
      {"train " + cfg_null_name + " " + base, "config key 'name' must be a string, got null"},
      {"train " + base + " model=null", "config key 'model' must be an object, got null"},
      {"train " + base + " hp.lr=1e999", "override 'hp.lr=1e999'"},
      {"train " + base + " out.checkpoint=yes", "'out.checkpoint' must be true, false or null"},
      {"train " + base + " task=flow image.eval_t=[]", "image.eval_t must list at least one t"},
      {"train " + base + " train.batch=500", "fewer than one evaluation batch"},
      {"sample /nonexistent.h5", "run file '/nonexistent.h5' does not exist"},
      {"sample /nonexistent.h5 --steps -5", "option --steps must be an integer in [1, "},
      {"sample /nonexistent.h5 --guidance nan", "bad number 'nan' in --guidance"},
      {"sample /nonexistent.h5 --device bogus", "option --device must be auto, cpu or cuda"},
      {"sample /nonexistent.h5 --seed 2 --seed 3", "option --seed given twice"},
      {"tokenize --val-fraction 1", "option --val-fraction must be"},
      {"coord-check " + base + " --shapes 4e2a,8e2a", "at least two different activated-expert counts"},
      {"coord-check " + base + " --widths 32", "--widths needs at least two different widths"},
      {"coord-check " + base + " --widths 32,32", "--widths needs at least two different widths"},
      {"coord-check " + base + " task=flow --widths 32,64", "coord-check runs language models (task lm)"},
      {"show /nonexistent-a.h5 /nonexistent-b.h5", "show takes one PATH; more than one given"},
      {"transfer a.json b.json c.json", "transfer takes at most two config files (REF.json TARGET.json)"},
      {"transfer rule=sp --rule mup", "transfer: the rule given twice (--rule mup and rule=sp); give one"},
      {"train " + base + " ffn.type=moe ffn.shape=8e2a ffn.experts=4", "ffn.shape 8e2a and ffn.experts 4 disagree"},
      {"train " + base + " task=flow image.time_freq=3", "image.time_freq must be positive and even, got 3"},
      {"train " + base + " image.guidance=-1", "image.guidance must be in [0, 1e6]"},
      {"transfer " + base + " reference.d_model=96 reference.n_heads=5",
       "reference.d_model (96) is not divisible by reference.n_heads (5)"},
      {"train " + base + " reference.d_model=0", "reference sizes must be positive"},
      {"train " + base + " data.tokens=" + d.path.string(), " is a directory, not a token file"},
      {"train " + base + " name=folder-run", "is a directory where the run file goes; not touching it"},
      {"train " + base + " train.diverge_factor=0.5", "train.diverge_factor must be 0 (off) or a factor above 1"},
      {"train " + base + " train.diverge_factor=-1", "train.diverge_factor must be 0 (off) or a factor above 1"},
      {"sweep " + base + " --lr nan", "bad number 'nan' in --lr"},
      {"sweep " + base + " --lr 0x10", "bad number '0x10' in --lr"},
      {"sweep " + base + " --lr 1e999", "--lr: a learning rate must be a positive number"},
      {"sweep " + base + " --lr 0.01,-0.1", "--lr: a learning rate must be a positive number"},
      {"bench " + spec_ok + " --device cpu", "is a sweep spec (it has 'axes'), not a run config"},
      {"sweep " + spec_ok + " --lr 0.1", "is a sweep spec (it has 'axes'), not a run config"},
  };
  expect_one_line_errors(cases);
  CHECK(fs::last_write_time(kept) == before);
  CHECK(read_string_attr(kept, "status").value() == "completed");
}

// Every command that writes a file replaces only an earlier output of its own kind (a run of the same name that
// was killed or failed; a coordinate-check file with out.overwrite=true; a PNG, token file, image set or
// checkpoint): runs, indexes and data sets survive a mistyped name or --out byte for byte.
TEST_CASE("no command writes over a file that is not its own kind of output", "[cli]") {
  TempDir d("cli");
  std::string tok = mue::test::make_toy_tokens(d);
  std::string base = tiny_args(d, tok);
  REQUIRE(run_mue("train name=keep " + base).rc == 0);
  {
    RunLog div = RunLog::create(d / "div.h5");
    div.set_attr("status", "diverged");
    RunLog other = RunLog::create(d / "other.h5");  // an HDF5 file that is no run (an index, an image set ...)
    other.set_attr("kind", "something else");
  }
  std::ofstream(d / "fresh.ckpt") << "precious notes";
  REQUIRE(run_mue("coord-check " + base + " --widths 16,32 --steps 1 --out " + (d / "coord.h5")).rc == 0);
  const std::vector<std::string> files = {d / "keep.h5", d / "div.h5", d / "other.h5", d / "fresh.ckpt", tok,
                                          d / "coord.h5"};
  auto bytes = [](const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), {});
  };
  std::vector<std::string> before;
  for (const auto& f : files) before.push_back(bytes(f));

  const std::string keep = d / "keep.h5";
  std::vector<BadInput> cases = {
      {"train name=div " + base, "holds a diverged run"},
      {"train name=other " + base, "is an HDF5 file but not a mue run file"},
      {"train name=fresh out.checkpoint=true " + base, "is not a mue checkpoint"},
      {"coord-check " + base + " --widths 16,32 --out " + keep, "exists; choose another --out"},
      {"coord-check " + base + " out.overwrite=true --widths 16,32 --out " + keep, "is not a coordinate-check file"},
      {"prepare-images --source /nonexistent --out " + keep, "exists and is not a mue image set"},
      {"prepare-images --source /nonexistent --out " + tok, "exists and is not a mue image set"},
      {"train name=coord out.overwrite=true " + base, "is a coordinate-check file, not a run"},  // even so
  };
  expect_one_line_errors(cases);
  CHECK_THROWS_WITH(write_png_grid(keep, std::vector<float>(4, 0.f), 1, 1, 2, 1, 0), HasText("exists and is not a PNG image"));
  CHECK_THROWS_WITH(write_token_file(keep, std::vector<uint16_t>(4, 1), std::vector<uint16_t>(4, 1), "{}", 97),
                    HasText("exists and is not a mue token file"));
  for (size_t i = 0; i < files.size(); ++i) {
    INFO(files[i]);
    CHECK(bytes(files[i]) == before[i]);
  }
  CHECK(!fs::exists(d / "fresh.h5"));
  // Their own kind is replaced: a completed run with out.overwrite=true, a token file by a token file.
  CHECK(run_mue("train name=keep out.overwrite=true " + base).rc == 0);
  CHECK_NOTHROW(write_token_file(tok, std::vector<uint16_t>(40, 1), std::vector<uint16_t>(40, 2), "{}", 97));
}

TEST_CASE("the commit of the build: taken when it was built, printed by mue --version", "[cli]") {
  const std::string out = "/tmp/mue_version_" + std::to_string(::getpid());
  REQUIRE(WEXITSTATUS(std::system((std::string(MUE_BINARY) + " --version > " + out).c_str())) == 0);
  std::ifstream in(out);
  std::string line;
  std::getline(in, line);
  std::remove(out.c_str());
  CHECK(line == std::string("mue ") + git_commit());
  // In a checkout, the build's commit is the checkout's HEAD (tests run on what was just built), unless the
  // build took MUE_SOURCE_COMMIT from its environment (cmake/git_commit.cmake): then that.
  const std::string head_file = out + "_head";
  if (const char* given = std::getenv("MUE_SOURCE_COMMIT"); given && *given) {
    CHECK(std::string(git_commit()) == given);
  } else if (std::system(("git -C " + std::string(MUE_SOURCE_DIR) + " rev-parse --short HEAD > " + head_file +
                   " 2> /dev/null").c_str()) == 0) {
    std::ifstream h(head_file);
    std::string head;
    std::getline(h, head);
    INFO("HEAD " << head << ", built from " << git_commit());
    CHECK(!head.empty());
    CHECK(std::string(git_commit()).rfind(head, 0) == 0);
  }
  std::remove(head_file.c_str());
}

TEST_CASE("transfer prints the table; --json parses", "[cli]") {
  std::string out = "/tmp/mue_transfer_" + std::to_string(::getpid());
  int st = std::system((std::string(MUE_BINARY) + " transfer model.d_model=256 model.n_heads=4 reference.d_model=64 --json > " + out).c_str());
  REQUIRE(WEXITSTATUS(st) == 0);
  std::ifstream in(out);
  json j = json::parse(in);
  std::remove(out.c_str());
  CHECK(j["rule"] == "mup");
  bool found = false;
  for (auto& r : j["rows"])
    if (r["name"] == "layers.0.attn.qkv") {
      found = true;
      CHECK(r["lr"].get<double>() == Approx(0.01 / 4));
    }
  CHECK(found);
  // REF.json TARGET.json --rule NAME: the reference's shape and hp become the target's reference
  std::string ref = out + "_ref.json", tgt = out + "_tgt.json";
  std::ofstream(ref) << R"({"model": {"d_model": 64, "n_heads": 2}, "ffn": {"hidden": 256}, "hp": {"lr": 0.02}})";
  std::ofstream(tgt) << R"({"model": {"d_model": 256, "n_heads": 4}, "ffn": {"hidden": 1024}})";
  st = std::system((std::string(MUE_BINARY) + " transfer " + ref + " " + tgt + " --rule mup --json > " + out).c_str());
  REQUIRE(WEXITSTATUS(st) == 0);
  std::string order = out + "_order";  // --rule before the files: its value is not taken for a file
  st = std::system((std::string(MUE_BINARY) + " transfer --rule mup " + ref + " " + tgt + " --json > " + order).c_str());
  REQUIRE(WEXITSTATUS(st) == 0);
  std::ifstream a(out), b(order);
  CHECK(std::string(std::istreambuf_iterator<char>(a), {}) == std::string(std::istreambuf_iterator<char>(b), {}));
  std::remove(order.c_str());
  std::ifstream in2(out);
  json k = json::parse(in2);
  for (auto& r : k["rows"])
    if (r["name"] == "layers.0.ffn.proj") CHECK(r["lr"].get<double>() == Approx(0.02 / 4));  // fan-in 1024 vs 256
  CHECK(k["route_scale"] == 1.0);
  // CompleteP at twice the depth: the residual outputs' forward_alpha carries the branch multiplier 1/2.
  st = std::system((std::string(MUE_BINARY) +
                    " transfer rule=completep model.n_layers=8 reference.n_layers=4 --json > " + out).c_str());
  REQUIRE(WEXITSTATUS(st) == 0);
  std::ifstream in3(out);
  json p = json::parse(in3);
  CHECK(p["branch_multiplier"].get<double>() == Approx(0.5));
  int residual_outputs = 0;
  for (auto& r : p["rows"])
    if (r["name"] == "layers.0.attn.proj" || r["name"] == "layers.0.ffn.proj") {
      ++residual_outputs;
      CHECK(r["forward_alpha"].get<double>() == Approx(0.5 * r["multiplier"].get<double>()));
    } else if (r["name"] == "layers.0.attn.qkv") {
      CHECK(r["forward_alpha"] == r["multiplier"]);
    }
  CHECK(residual_outputs == 2);
  // The text table's first line gives the target's FFN as it is: H when dense, the shape and H_a when MoE (where
  // ffn.hidden is unused).
  st = std::system((std::string(MUE_BINARY) + " transfer " + ref + " " + tgt + " --rule mup > " + out).c_str());
  REQUIRE(WEXITSTATUS(st) == 0);
  std::ifstream dense_text(out);
  CHECK(std::string(std::istreambuf_iterator<char>(dense_text), {}).rfind("target d=256 L=2 H=1024 heads=4;", 0) == 0);
  st = std::system((std::string(MUE_BINARY) + " transfer " + ref + " " + tgt +
                    " ffn.type=moe ffn.shape=16e4a ffn.expert_hidden=32 ffn.hidden=999 --rule mup > " + out).c_str());
  REQUIRE(WEXITSTATUS(st) == 0);
  std::ifstream moe_text(out);
  CHECK(std::string(std::istreambuf_iterator<char>(moe_text), {}).rfind("target d=256 L=2 16e4a h=32 H_a=128 heads=4;", 0) == 0);
  for (const auto& f : {out, ref, tgt}) std::remove(f.c_str());
}

TEST_CASE("bench: key=value overrides change the benched model", "[cli]") {
  const std::vector<std::string> tiny = {"model.d_model=32", "model.n_heads=2", "model.n_layers=1", "model.seq_len=16",
                                         "model.vocab=97", "model.vocab_pad=128", "ffn.hidden=64", "train.batch=2"};
  BenchResult a = run_bench("small-dense", 2, "cpu", false, tiny);
  std::vector<std::string> wider = tiny;
  wider[0] = "model.d_model=64";
  BenchResult b = run_bench("small-dense", 2, "cpu", false, wider);
  CHECK(a.steps == 2);
  CHECK(a.param_mib > 0);
  CHECK(b.param_mib > 1.5 * a.param_mib);
  CHECK(a.tok_per_s > 0);
}
