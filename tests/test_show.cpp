// mue show: a run, a sweep index, a live run, a checkpoint, a coordinate-check file, and damaged files.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "core/error.h"
#include "core/h5log.h"
#include "experiments/run_config.h"
#include "experiments/show.h"
#include "experiments/sweep.h"
#include "experiments/trainer.h"
#include "tests/catch.h"
#include "tests/fixtures.h"

using namespace mue;
using mue::test::TempDir;
using mue::test::shown;
using mue::test::tiny_moe_run;

TEST_CASE("show: a run file's status, config, losses, parameter table and last rows", "[show]") {
  TempDir d("show");
  const std::string tok = mue::test::make_toy_tokens(d);
  RunConfig c = resolve_config("", tiny_moe_run(d, tok, "r"));
  c.checkpoint = true;
  RunResult r = train_run(c, false);
  REQUIRE(r.status == "completed");
  const std::string f = d / "r.h5";
  const std::string t = shown(f, false, 2);
  INFO(t);
  CHECK(t.find(f + ": run, status completed") == 0);
  CHECK(t.find("rule complete-mue") != std::string::npos);
  CHECK(t.find("MoE 4e2a h16; batch 4, 30 steps") != std::string::npos);
  CHECK(t.find("progress: step 30 of 30") != std::string::npos);
  char val[64];
  std::snprintf(val, sizeof val, "val loss:   last %.4f (step 30)", r.final_val_loss);
  CHECK(t.find(val) != std::string::npos);
  CHECK(t.find("layers.0.moe.experts.proj") != std::string::npos);
  CHECK(t.find("last 2 training rows") != std::string::npos);
  // --json: one object with the same numbers.
  auto j = nlohmann::json::parse(shown(f, true, 0));
  CHECK(j["kind"] == "run");
  CHECK(j["status"] == "completed");
  CHECK(j["config"]["train"]["steps"] == 30);
  CHECK(j["val_loss"]["last"].get<double>() == Approx(r.final_val_loss));
  CHECK(j["train_rows"].size() == 3);  // steps 10, 20, 30
  CHECK(j["param_table"].size() == read_strings(f, "param_table/name").size());
  // The checkpoint beside it.
  const std::string ck = shown(d / "r.ckpt");
  CHECK(ck.find("checkpoint at step 30") != std::string::npos);
  CHECK(ck.find("run file " + f) != std::string::npos);
}

TEST_CASE("show: a sweep index lists its points and the best point of each group", "[show]") {
  TempDir d("show");
  const std::string tok = mue::test::make_toy_tokens(d);
  nlohmann::ordered_json spec = {{"name", "s"}, {"out_dir", d / "runs"}};
  std::vector<std::string> ov = tiny_moe_run(d, tok, "x");
  ov.erase(ov.begin()), ov.pop_back();  // name and out.dir are the sweep's
  spec["overrides"] = ov;
  spec["axes"] = {{"ffn.shape", {"4e1a", "4e2a"}}, {"hp.lr", {0.003, 0.03}}};
  SweepSpec s = parse_sweep_spec(spec, "");
  auto pts = expand_grid(s);
  for (auto& p : pts) {
    RunConfig c = resolve_config("", p.overrides);
    REQUIRE(train_run(c, false).status == "completed");
  }
  write_sweep_index(s, pts);
  const std::string t = shown(sweep_index_path(s));
  INFO(t);
  CHECK(t.find("sweep index 's', 4 points (4 completed)") != std::string::npos);
  CHECK(t.find("ffn.shape=4e1a") != std::string::npos);
  CHECK(t.find("ffn.shape=4e2a") != std::string::npos);
  // The best point of each shape is the lower of its two final val losses.
  for (const char* shape : {"4e1a", "4e2a"}) {
    double lo = 1e9, at = 0;
    for (size_t i = 0; i < pts.size(); ++i) {
      if (pts[i].coords[0].second != shape) continue;
      const double v = read_point_result(d / ("runs/" + pts[i].name + ".h5")).final_val_loss;
      if (v < lo) lo = v, at = pts[i].coords[1].second.get<double>();
    }
    char want[128];
    std::snprintf(want, sizeof want, "%.4f at hp.lr=%g", lo, at);
    CHECK(t.find(want) != std::string::npos);
  }
  auto j = nlohmann::json::parse(shown(sweep_index_path(s), true));
  CHECK(j["kind"] == "sweep_index");
  CHECK(j["points"].size() == 4);
  CHECK(j["best_per_group"].size() == 2);
}

TEST_CASE("show: a live run is read while it trains", "[show]") {
  TempDir d("show");
  const std::string tok = mue::test::make_toy_tokens(d);
  std::vector<std::string> args = {MUE_BINARY, "train"};
  for (auto& o : tiny_moe_run(d, tok, "live")) args.push_back(o);
  args.push_back("train.steps=1000000");
  args.push_back("train.log_every=5");
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    std::freopen("/dev/null", "w", stdout), std::freopen("/dev/null", "w", stderr);
    std::vector<char*> av;
    for (auto& a : args) av.push_back(a.data());
    av.push_back(nullptr);
    ::setenv("OMP_NUM_THREADS", "1", 1);
    ::execv(MUE_BINARY, av.data());
    ::_exit(127);
  }
  std::string t;
  const auto t0 = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    try {
      t = shown(d / "live.h5");
      if (t.find("progress: step 5 ") == std::string::npos && t.find("progress: step -") == std::string::npos) break;
    } catch (const Error&) {  // not created yet, or caught between two writes
    }
  }
  ::kill(pid, SIGTERM);
  int st = 0;
  ::waitpid(pid, &st, 0);
  INFO(t);
  CHECK(t.find("run, status running") != std::string::npos);
  CHECK(t.find("progress: step") != std::string::npos);
  CHECK(shown(d / "live.h5").find("run, status failed") != std::string::npos);  // stopped by the signal
}

TEST_CASE("show: damaged, foreign and missing files are one-line errors", "[show]") {
  TempDir d("show");
  const std::string tok = mue::test::make_toy_tokens(d);
  RunConfig c = resolve_config("", tiny_moe_run(d, tok, "r"));
  REQUIRE(train_run(c, false).status == "completed");
  {  // a truncated copy of the run file
    std::ifstream in(d / "r.h5", std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    std::ofstream(d / "cut.h5", std::ios::binary) << bytes.substr(0, 2000);
  }
  std::ofstream(d / "text.txt") << "hello";
  {
    RunLog other = RunLog::create(d / "other.h5");
    other.append("train", {{"step", 1}});
  }
  using mue::test::error_of;
  CHECK(error_of([&] { shown(d / "cut.h5"); }).find("cut.h5") != std::string::npos);
  CHECK(error_of([&] { shown(d / "text.txt"); }).find("is not a file mue wrote") != std::string::npos);
  std::ofstream(d / "results.json") << R"({"format": "mue-sweep-results/1"})";  // a results file of the figures
  CHECK(error_of([&] { shown(d / "results.json"); }).find("is JSON, not a run file, sweep index") != std::string::npos);
  CHECK(error_of([&] { shown(d / "other.h5"); }).find("not a mue run file, sweep index or coordinate-check file") !=
        std::string::npos);
  CHECK(error_of([&] { shown(d / "nothing.h5"); }).find("does not exist") != std::string::npos);
  CHECK(error_of([&] { shown(d.path.string()); }).find("is a directory") != std::string::npos);
  {  // a truncated checkpoint
    std::ofstream(d / "bad.ckpt", std::ios::binary) << std::string("MUECKPT1\x05\0\0\0\0\0\0\0", 16);
  }
  CHECK(error_of([&] { shown(d / "bad.ckpt"); }).find("truncated checkpoint") != std::string::npos);
}
