// Where a run's time goes: the run file's /timing (phases that cover the run and add up to its total, the counts
// of steps, evaluations and checkpoints), the line `train` prints and `mue show` prints, a sweep's mean.
#include <sys/wait.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "core/h5log.h"
#include "experiments/cpu_load.h"
#include "experiments/run_config.h"
#include "experiments/run_timing.h"
#include "experiments/show.h"
#include "experiments/trainer.h"
#include "tests/catch.h"
#include "tests/fixtures.h"

using namespace mue;
using mue::test::TempDir;
using mue::test::shown;
using mue::test::tiny_moe_run;

namespace {

// stdout and stderr of a shell command, and its exit status.
std::pair<int, std::string> run_shell(const std::string& cmd) {
  const std::string out = "/tmp/mue_timing_out_" + std::to_string(::getpid());
  const int st = std::system((cmd + " > " + out + " 2>&1").c_str());
  std::ifstream in(out);
  std::string text((std::istreambuf_iterator<char>(in)), {});
  std::remove(out.c_str());
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, text};
}

}  // namespace

TEST_CASE("timing: a finished run's /timing covers the run, phase by phase, and adds up to its total", "[timing]") {
  TempDir d("timing");
  const std::string tok = mue::test::make_toy_tokens(d);
  RunConfig c = resolve_config("", tiny_moe_run(d, tok, "r"));
  c.checkpoint = true;
  const auto t0 = std::chrono::steady_clock::now();
  REQUIRE(train_run(c, false).status == "completed");
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  const std::optional<RunTiming> t = RunTiming::read(d / "r.h5");
  REQUIRE(t);
  double sum = 0;
  for (int i = 0; i < kPhaseCount; ++i) {
    const Phase p = Phase(i);
    INFO(phase_name(p));
    CHECK(std::isfinite((*t)[p]));
    CHECK((*t)[p] >= 0);
    sum += (*t)[p];
  }
  // Every moment is charged to one phase, once: the sum is the total (to rounding), itself within the call.
  CHECK(sum <= t->total + 1e-6);
  CHECK(sum >= t->total - 1e-6);
  CHECK(t->total > 0);
  CHECK(t->total <= wall);
  // The phases that do work here took time; the CPU has no graph to capture.
  for (Phase p : {Phase::model, Phase::file, Phase::first_step, Phase::steps, Phase::eval, Phase::checkpoint}) {
    INFO(phase_name(p));
    CHECK((*t)[p] > 0);
  }
  CHECK((*t)[Phase::capture] == 0);
  CHECK(t->count(Phase::steps) == 29);  // the first step is its own phase
  CHECK(t->count(Phase::eval) == 2);
  CHECK(t->count(Phase::checkpoint) == 2);
  CHECK(t->count(Phase::capture) == 0);
  CHECK(std::isnan(t->before_main));  // train_run called without main: the process's start is unknown
  CHECK(t->setup() == Approx((*t)[Phase::config] + (*t)[Phase::checks] + (*t)[Phase::data] + (*t)[Phase::context] +
                             (*t)[Phase::model] + (*t)[Phase::file]));

  // `mue show` prints the very line, and the numbers under "timing" in JSON.
  const std::string text = shown(d / "r.h5", false);
  INFO(text);
  CHECK(text.find("  " + t->line() + "\n") != std::string::npos);
  CHECK(t->line().find(", eval ") != std::string::npos);
  const auto j = nlohmann::json::parse(shown(d / "r.h5", true));
  CHECK(j["timing"]["total"].get<double>() == t->total);
  CHECK(j["timing"]["eval_count"].get<double>() == 2);
  CHECK(j["timing"]["before_main"].is_null());
}

TEST_CASE("timing: the process's start is main's mark, taken by one run only", "[timing]") {
  TempDir d("timing");
  const std::string tok = mue::test::make_toy_tokens(d);
  mark_process_start();
  std::this_thread::sleep_for(std::chrono::milliseconds(60));  // stands for main's argument and config parsing
  REQUIRE(train_run(resolve_config("", tiny_moe_run(d, tok, "first")), false).status == "completed");
  REQUIRE(train_run(resolve_config("", tiny_moe_run(d, tok, "second")), false).status == "completed");
  const RunTiming first = RunTiming::read(d / "first.h5").value(), second = RunTiming::read(d / "second.h5").value();
  CHECK(first[Phase::config] >= 0.06);
  CHECK(std::isfinite(first.before_main));
  CHECK(first.before_main >= 0);
  CHECK(second[Phase::config] < 0.06);  // counted from its own call, not from the mark again
  CHECK(std::isnan(second.before_main));
}

TEST_CASE("timing: a file without /timing has none; means skip what a run does not know", "[timing]") {
  TempDir d("timing");
  {
    RunLog log = RunLog::create(d / "old.h5");
    log.set_attr("status", std::string("completed"));
  }
  CHECK_FALSE(RunTiming::read(d / "old.h5"));
  RunTiming a, b;
  a[Phase::steps] = 2, b[Phase::steps] = 4, a.total = 3, b.total = 5;
  a.counts[size_t(Phase::eval)] = 1, b.counts[size_t(Phase::eval)] = 2;
  a.before_main = 0.1;  // b's is unknown (NaN)
  const RunTiming m = mean_timing({a, b});
  CHECK(m[Phase::steps] == 3);
  CHECK(m.total == 4);
  CHECK(m.count(Phase::eval) == 1.5);
  CHECK(m.before_main == Approx(0.1));
  CHECK(m.line().find("eval 0.00 (1.5)") != std::string::npos);
}

TEST_CASE("timing: mue train prints the line; a sweep prints the fixed cost; show gives the sweep's mean",
          "[timing][cli]") {
  TempDir d("timing");
  const std::string tok = mue::test::make_toy_tokens(d);
  std::string args;
  for (const auto& a : tiny_moe_run(d, tok, "cli")) args += " '" + a + "'";
  const auto [rc, out] = run_shell("OMP_NUM_THREADS=1 " + std::string(MUE_BINARY) + " train" + args);
  INFO(out);
  REQUIRE(rc == 0);
  const RunTiming t = RunTiming::read(d / "cli.h5").value();
  CHECK(out.find(t.line() + "\n") != std::string::npos);
  CHECK(std::isfinite(t.before_main));  // main marked the start and read the time before it
  CHECK(t.before_main >= 0);
  CHECK(t.before_main < 10);
  CHECK(t[Phase::config] > 0);

  const std::string spec = d / "spec.json";
  nlohmann::json j = {{"name", "s"}, {"out_dir", d / "runs"}, {"axes", {{"hp.lr", {0.01, 0.02}}}}};
  for (const auto& a : tiny_moe_run(d, tok, "x"))
    if (a.rfind("name=", 0) != 0 && a.rfind("out.dir=", 0) != 0) j["overrides"].push_back(a);
  std::ofstream(spec) << j.dump();
  const auto [src, sout] = run_shell("OMP_NUM_THREADS=1 " + std::string(MUE_BINARY) + " sweep " + spec);
  INFO(sout);
  REQUIRE(src == 0);
  CHECK(sout.find("sweep s: a point's process") != std::string::npos);
  CHECK(sout.find("(2 points): fixed cost") != std::string::npos);
  CHECK(sout.find("sweep s: mean time: setup") != std::string::npos);
  const std::string index = shown(d / "runs/s-index.h5", false);
  INFO(index);
  CHECK(index.find("mean of 2 finished points' time: setup") != std::string::npos);
  CHECK(nlohmann::json::parse(shown(d / "runs/s-index.h5", true))["timing_points"] == 2);
}

TEST_CASE("crowded CPU: the note names the free cores only when the threads outnumber them", "[cli]") {
  CHECK(mue::crowded_cpu_note(2, 2, 0.1).empty());   // idle: every thread has a core
  CHECK(mue::crowded_cpu_note(1, 2, 1.9).empty());   // one thread: nothing to wait for
  CHECK(mue::crowded_cpu_note(2, 2, -1).empty());    // unknown load
  CHECK(mue::crowded_cpu_note(4, 8, 3.0).empty());   // 5 free cores hold 4 threads
  const std::string one = mue::crowded_cpu_note(2, 2, 1.0);
  CHECK(one.find("OMP_NUM_THREADS=1 ") != std::string::npos);
  CHECK(one.find("about 1 of 2 cores") != std::string::npos);
  CHECK(mue::crowded_cpu_note(16, 16, 6.4).find("OMP_NUM_THREADS=10 ") != std::string::npos);
  CHECK(mue::crowded_cpu_note(2, 2, 2.0).find("OMP_NUM_THREADS=1 ") != std::string::npos);  // never 0
  const double busy = mue::busy_cores(std::chrono::milliseconds(20));
  CHECK(busy >= 0);  // Linux: /proc/stat is there
  CHECK(busy <= std::thread::hardware_concurrency() + 0.01);
}
