// Resume: a run killed mid-way and started again with the same command continues from its checkpoint and ends
// with the very losses of a run that was never stopped (CPU, bit for bit); checkpoints of another config are
// refused; a half-written checkpoint never replaces the last whole one.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <hdf5.h>
#include <nlohmann/json.hpp>

#include "core/h5.h"
#include "core/h5log.h"
#include "data/images.h"
#include "data/prepare_images.h"
#include "experiments/checkpoint.h"
#include "experiments/run_timing.h"
#ifdef MUE_HAVE_CUDA
#include "core/cuda_context.h"
#endif
#include "tests/catch.h"
#include "tests/fixtures.h"

using namespace mue;
using mue::test::TempDir;
namespace fs = std::filesystem;

namespace {

std::vector<std::string> tiny(const TempDir& d, const std::string& tok, const std::string& extra) {
  std::vector<std::string> a = {"model.vocab=97", "model.vocab_pad=128", "model.d_model=32", "model.n_heads=2",
                                "model.seq_len=16", "ffn.hidden=64", "train.batch=4", "train.steps=1500",
                                "train.log_every=10", "train.eval_every=500", "train.eval_batches=2",
                                "train.device=cpu", "train.diverge_factor=4", "out.checkpoint_every=100",
                                "data.tokens=" + tok, "out.dir=" + d.path.string()};
  if (!extra.empty()) a.push_back(extra);
  return a;
}

int run_cli(const std::vector<std::string>& args, const std::string& out) {
  std::string cmd = "OMP_NUM_THREADS=1 " + std::string(MUE_BINARY);
  for (auto& a : args) cmd += " '" + a + "'";
  cmd += " > " + out + " 2>&1";
  const int st = std::system(cmd.c_str());
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

// `mue train ARGS` in a child, killed with `sig` once its run file shows at least `step` steps.
void train_and_kill(const std::vector<std::string>& args, const std::string& run, int step, int sig) {
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    std::freopen("/dev/null", "w", stdout), std::freopen("/dev/null", "w", stderr);
    ::setenv("OMP_NUM_THREADS", "1", 1);
    std::vector<std::string> all = {MUE_BINARY};
    all.insert(all.end(), args.begin(), args.end());
    std::vector<char*> av;
    for (auto& a : all) av.push_back(a.data());
    av.push_back(nullptr);
    ::execv(MUE_BINARY, av.data());
    ::_exit(127);
  }
  set_read_locking(false);
  double seen = 0;
  for (int i = 0; i < 6000 && seen < step; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    try {
      const auto s = read_doubles(run, "train/step");
      if (!s.empty()) seen = s.back();
    } catch (const Error&) {
    }
  }
  ::kill(pid, sig);
  int st = 0;
  ::waitpid(pid, &st, 0);
  set_read_locking(true);
  REQUIRE(seen >= step);
}

void check_resumes_bit_for_bit(const std::string& extra, const std::string& device = "") {
  TempDir d("resume");
  const std::string tok = mue::test::make_toy_tokens(d);
  std::vector<std::string> whole = {"train", "name=whole"}, cut = {"train", "name=cut"};
  for (auto& a : tiny(d, tok, extra)) whole.push_back(a), cut.push_back(a);
  if (!device.empty()) whole.push_back(device), cut.push_back(device);  // after tiny's train.device=cpu: wins
  REQUIRE(run_cli(whole, d / "whole.out") == 0);

  train_and_kill(cut, d / "cut.h5", 230, SIGKILL);  // killed outright: no status written, file says running
  CHECK(read_string_attr(d / "cut.h5", "status").value() != "completed");
  const uint64_t at = checkpoint_step(d / "cut.ckpt");
  CHECK(at >= 200);
  CHECK(at % 100 == 0);
  // A half-written checkpoint (killed while writing) is a stray .tmp: the last whole one stays.
  std::ofstream(d / "cut.ckpt.tmp") << "MUECKPT1";
  REQUIRE(run_cli(cut, d / "cut.out") == 0);
  std::ifstream in(d / "cut.out");
  const std::string out((std::istreambuf_iterator<char>(in)), {});
  INFO(out);
  CHECK(out.find("resuming") != std::string::npos);
  CHECK(read_double_attr(d / "cut.h5", "resumed_at_step").value() == double(at));
  CHECK(read_string_attr(d / "cut.h5", "status").value() == "completed");
  // Its /timing is the resuming process's own: the steps after the checkpoint, not the killed process's.
  const RunTiming resumed = RunTiming::read(d / "cut.h5").value(), whole_timing = RunTiming::read(d / "whole.h5").value();
  CHECK(resumed.count(Phase::steps) == double(1500 - at - 1));
  CHECK(whole_timing.count(Phase::steps) == 1499);
  CHECK(resumed.count(Phase::eval) == double(3 - at / 500));
  for (const char* ds : {"train/step", "train/loss", "train/grad_norm", "train/lr", "val/step", "val/loss"}) {
    INFO(ds);
    CHECK(read_doubles(d / "cut.h5", ds) == read_doubles(d / "whole.h5", ds));  // bit for bit
  }
  if (extra.find("moe") != std::string::npos) {
    CHECK(read_doubles(d / "cut.h5", "router/entropy") == read_doubles(d / "whole.h5", "router/entropy"));
    CHECK(read_doubles(d / "cut.h5", "router/load") == read_doubles(d / "whole.h5", "router/load"));
  }
}

// A tiny mnist-layout package (10 classes of 12 28x28 images of simple stripes) prepared into d/img.h5.
std::string toy_images(const TempDir& d) {
  const fs::path root = d.path / "mnist";
  fs::create_directories(root / "src" / "digits");
  for (int c = 0; c < 10; ++c) {
    std::ofstream o(root / "src" / "digits" / (std::to_string(c) + ".json"));
    o << "{\"data\": [";
    for (int i = 0; i < 12; ++i)
      for (int p = 0; p < 784; ++p) o << ((i || p) ? "," : "") << ((p / 28 + c + i) % 10 < 5 ? 1 : 0);
    o << "]}";
  }
  ImagePrepOptions opt;
  opt.kind = "mnist", opt.source_dir = root.string(), opt.out = d / "img.h5";
  prepare_images(opt);
  return opt.out;
}

}  // namespace

TEST_CASE("resume: a killed DiT run continues from its checkpoint, bit for bit", "[resume]") {
  TempDir d("resume");
  const std::string img = toy_images(d);
  std::vector<std::string> common = {"task=flow", "model.d_model=32", "model.n_heads=2", "model.n_layers=1",
                                     "ffn.hidden=64", "image.patch=7", "train.batch=8", "train.steps=1200",
                                     "train.log_every=10", "train.eval_every=400", "train.eval_batches=1",
                                     "train.device=cpu", "out.checkpoint=false", "out.checkpoint_every=100",
                                     "data.images=" + img, "out.dir=" + d.path.string()};
  std::vector<std::string> whole = {"train", "name=whole"}, cut = {"train", "name=cut"};
  for (auto& a : common) whole.push_back(a), cut.push_back(a);
  REQUIRE(run_cli(whole, d / "whole.out") == 0);
  train_and_kill(cut, d / "cut.h5", 230, SIGKILL);
  REQUIRE(run_cli(cut, d / "cut.out") == 0);
  CHECK(read_double_attr(d / "cut.h5", "resumed_at_step").value() >= 200);
  for (const char* ds : {"train/step", "train/loss", "val/loss"}) {
    INFO(ds);
    CHECK(read_doubles(d / "cut.h5", ds) == read_doubles(d / "whole.h5", ds));
  }
}

TEST_CASE("resume: a killed dense LM run continues from its checkpoint, bit for bit", "[resume]") {
  check_resumes_bit_for_bit("");
}

TEST_CASE("resume: a killed MoE LM run continues from its checkpoint, bit for bit", "[resume]") {
  check_resumes_bit_for_bit("ffn.type=moe");
}

TEST_CASE("resume: a checkpoint of another config is refused; out.resume=false starts over", "[resume]") {
  TempDir d("resume");
  const std::string tok = mue::test::make_toy_tokens(d);
  std::vector<std::string> cut = {"train", "name=cut"};
  for (auto& a : tiny(d, tok, "")) cut.push_back(a);
  train_and_kill(cut, d / "cut.h5", 150, SIGTERM);  // stopped cleanly: status failed
  CHECK(read_string_attr(d / "cut.h5", "status").value() == "failed");
  // A clean stop checkpoints where it stopped, so a resume loses nothing.
  CHECK(double(checkpoint_step(d / "cut.ckpt")) == read_doubles(d / "cut.h5", "train/step").back());
  const std::string ckpt_before = [&] {
    std::ifstream in(d / "cut.ckpt", std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), {});
  }();
  std::vector<std::string> other = cut;
  other.push_back("train.batch=8");
  REQUIRE(run_cli(other, d / "other.out") != 0);
  std::ifstream in(d / "other.out");
  const std::string out((std::istreambuf_iterator<char>(in)), {});
  INFO(out);
  CHECK(out.find("belongs to a run of another config (") != std::string::npos);
  CHECK(std::count(out.begin(), out.end(), '\n') == 1);
  {
    std::ifstream now(d / "cut.ckpt", std::ios::binary);
    CHECK(std::string((std::istreambuf_iterator<char>(now)), {}) == ckpt_before);  // untouched
  }
  other.push_back("out.resume=false");
  other.push_back("train.steps=120");
  REQUIRE(run_cli(other, d / "fresh.out") == 0);
  CHECK(!read_double_attr(d / "cut.h5", "resumed_at_step"));
  CHECK(read_doubles(d / "cut.h5", "train/step").front() == 10);
}

// A run begun before a config key existed (here train.bucket_mb) resumes where
// this run leaves the key at its default, and is refused where it sets it otherwise.
TEST_CASE("resume: a run stored without a key added since resumes at the key's default", "[resume]") {
  TempDir d("resume");
  const std::string tok = mue::test::make_toy_tokens(d);
  std::vector<std::string> cut = {"train", "name=cut"};
  for (auto& a : tiny(d, tok, "")) cut.push_back(a);
  train_and_kill(cut, d / "cut.h5", 150, SIGTERM);
  {  // the stored config as an older mue wrote it: no train.bucket_mb
    const std::string f = d / "cut.h5";
    h5::Node file(h5::own(H5Fopen(f.c_str(), H5F_ACC_RDWR, H5P_DEFAULT), H5Fclose, "cannot open ", f), f);
    auto config = nlohmann::json::parse(file.string_attr("config").value());
    REQUIRE(config["train"].erase("bucket_mb") == 1);
    file.set_attr("config", config.dump());
  }
  std::vector<std::string> other = cut;
  other.push_back("train.bucket_mb=5");
  REQUIRE(run_cli(other, d / "other.out") != 0);
  std::ifstream in(d / "other.out");
  const std::string out((std::istreambuf_iterator<char>(in)), {});
  INFO(out);
  CHECK(out.find("(train.bucket_mb differs)") != std::string::npos);
  REQUIRE(run_cli(cut, d / "cut.out") == 0);
  CHECK(read_double_attr(d / "cut.h5", "resumed_at_step").value() > 0);
  CHECK(read_string_attr(d / "cut.h5", "status").value() == "completed");
}

TEST_CASE("resume: on the GPU with CUDA graphs, a killed MoE run continues bit for bit", "[resume][cuda]") {
#ifdef MUE_HAVE_CUDA
  if (!cuda::gpu_available()) {
    WARN("no GPU: skipped");
    return;
  }
  check_resumes_bit_for_bit("ffn.type=moe", "train.device=cuda");
#else
  WARN("built without CUDA: skipped");
#endif
}
