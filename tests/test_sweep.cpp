// Sweeps: grid expansion, spec errors, rank striding, the committed specs in experiments/sweeps/, and end to end
// through the `mue sweep` program (each point a child `mue train` process): index file, resume, restart of an
// interrupted point, a child killed with SIGKILL, divergence, SIGINT, --deadline, and run slots shared by sweeps
// (--slots).
#include <fcntl.h>
#include <hdf5.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "core/h5log.h"
#include "core/error.h"
#include "core/rng.h"
#include "data/tokens.h"
#include "experiments/run_config.h"
#include "experiments/sweep.h"
#include "tests/catch.h"
#include "tests/fixtures.h"

using namespace mue;
namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;
using mue::test::TempDir;

namespace {
ojson tiny_spec(const TempDir& d, const std::string& tok, const std::string& name) {
  ojson ov = ojson::array();
  for (const char* s : {"model.vocab=97", "model.vocab_pad=128", "model.d_model=32", "model.n_heads=2",
                        "model.seq_len=16", "ffn.hidden=64", "train.batch=4", "train.steps=20", "train.log_every=10",
                        "train.eval_every=10", "train.eval_batches=1", "train.device=cpu", "optim.warmup=2"})
    ov.push_back(s);
  ov.push_back("data.tokens=" + tok);
  return {{"name", name}, {"overrides", ov}, {"out_dir", d / "runs"}};
}

std::string write_spec(const TempDir& d, const ojson& j, const std::string& file = "spec.json") {
  std::ofstream(d / file) << j.dump(2);
  return d / file;
}

struct Res {
  int rc;
  std::string out;
};
Res run_sweep_cli(const std::string& args, const std::string& env = "") {
  std::string of = "/tmp/mue_sweep_out_" + std::to_string(::getpid());
  std::string cmd = "OMP_NUM_THREADS=1 " + env + " " + std::string(MUE_BINARY) + " sweep " + args + " > " + of + " 2>&1";
  int st = std::system(cmd.c_str());
  std::ifstream in(of);
  std::string out((std::istreambuf_iterator<char>(in)), {});
  std::remove(of.c_str());
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

std::string status_of(const std::string& f) { return read_string_attr(f, "status").value_or("?"); }

std::string file_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

// `mue sweep SPEC` in a child process (stdout and stderr to d/sweep.out); returns its pid.
pid_t start_sweep_process(const TempDir& d, const std::string& spec) {
  pid_t pid = ::fork();
  if (pid == 0) {
    ::setenv("OMP_NUM_THREADS", "1", 1);
    int fd = ::open((d / "sweep.out").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1), ::dup2(fd, 2);
    ::execl(MUE_BINARY, "mue", "sweep", spec.c_str(), (char*)nullptr);
    ::_exit(127);
  }
  return pid;
}

// The processes whose parent is `parent` (from /proc/PID/stat: "pid (comm) state ppid ...").
std::vector<pid_t> children_of(pid_t parent) {
  std::vector<pid_t> kids;
  std::error_code ec;
  for (fs::directory_iterator it("/proc", ec), end; !ec && it != end; it.increment(ec)) {
    const std::string pid = it->path().filename();
    if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
    const std::string stat = file_text("/proc/" + pid + "/stat");  // empty if the process is gone
    const size_t paren = stat.rfind(')');
    if (paren == std::string::npos) continue;
    std::istringstream fields(stat.substr(paren + 1));
    char state = 0;
    pid_t ppid = 0;
    if (fields >> state >> ppid && ppid == parent) kids.push_back(pid_t(std::stol(pid)));
  }
  return kids;
}
}  // namespace

TEST_CASE("sweep: grid expands in the file's axis order with stable names", "[sweep]") {
  ojson j = ojson::parse(R"({"name": "g", "axes": {"rule": ["sp", "mup"], "hp.lr": [0.001, 0.5, 2],
                              "ffn.shape": ["64e2a"]}, "out_dir": "o"})");
  SweepSpec s = parse_sweep_spec(j, "");
  REQUIRE(s.axes.size() == 3);
  CHECK(s.axes[0].first == "rule");  // file order, not sorted
  auto pts = expand_grid(s);
  REQUIRE(pts.size() == 6);
  CHECK(pts[0].name == "g-0000-rule-sp_lr-0.001_shape-64e2a");
  CHECK(pts[1].name == "g-0001-rule-sp_lr-0.5_shape-64e2a");
  CHECK(pts[3].name == "g-0003-rule-mup_lr-0.001_shape-64e2a");
  CHECK(pts[5].coords[0].second == "mup");
  CHECK(pts[5].coords[1].second == 2);
  for (auto& p : pts) {
    CHECK(p.overrides.back() == "out.dir=o");
    for (char c : p.name) CHECK((std::isalnum((unsigned char)c) || c == '.' || c == '_' || c == '-'));
  }
  CHECK(pts[4].overrides[0] == "rule=\"mup\"");
  CHECK(pts[4].overrides[1] == "hp.lr=0.5");
  // No axes: one point.
  CHECK(expand_grid(parse_sweep_spec(ojson::parse(R"({"name": "one"})"), "")).size() == 1);
}

TEST_CASE("sweep: the seed axis sets both seeds of a replicate", "[sweep]") {
  SweepSpec s = parse_sweep_spec(ojson::parse(R"({"name": "r", "axes": {"seed": [1, 7], "hp.lr": [0.01]}})"), "");
  auto pts = expand_grid(s);
  REQUIRE(pts.size() == 2);
  CHECK(pts[1].name == "r-0001-seed-7_lr-0.01");
  auto has = [](const SweepPoint& p, const std::string& o) {
    return std::find(p.overrides.begin(), p.overrides.end(), o) != p.overrides.end();
  };
  CHECK(has(pts[1], "train.seed=7"));
  CHECK(has(pts[1], "train.data_seed=7"));
  CHECK(!has(pts[1], "seed=7"));
  const RunConfig c = resolve_config("", pts[1].overrides);
  CHECK(c.train.seed == 7);
  CHECK(c.train.data_seed == 7);
  for (const char* bad : {R"({"name": "r", "axes": {"seed": [1.5]}})", R"({"name": "r", "axes": {"seed": [-1]}})",
                          R"({"name": "r", "axes": {"seed": ["a"]}})"}) {
    try {
      parse_sweep_spec(ojson::parse(bad), "");
      FAIL("accepted " << bad);
    } catch (const Error& e) {
      CHECK(std::string(e.what()).find("sweep axis 'seed' takes integers") != std::string::npos);
    }
  }
}

TEST_CASE("sweep: bad specs are one-line errors before anything runs", "[sweep]") {
  auto err = [](const std::string& text) {
    try {
      SweepSpec s = parse_sweep_spec(ojson::parse(text), "");
      validate_points(s, expand_grid(s));
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(err(R"({"name": "x", "axis": {}})").find("unknown sweep spec key 'axis'") != std::string::npos);
  CHECK(err(R"({"axes": {}})").find("'name'") != std::string::npos);
  CHECK(err(R"({"name": "x", "axes": {"hp.lr": 0.1}})").find("non-empty list") != std::string::npos);
  CHECK(err(R"({"name": "x", "axes": {"hp.lrr": [0.1]}})").find("hp.lrr") != std::string::npos);
  CHECK(err(R"({"name": "x", "axes": {"rule": ["nope"]}})").find("sweep point 0") != std::string::npos);
  CHECK(err(R"({"name": "x", "base": "missing.json"})").find("not found") != std::string::npos);
  CHECK(err(R"({"name": "a b"})").find("[A-Za-z0-9._-]") != std::string::npos);
  CHECK(err(R"({"name": "x", "expected_h100_minutes": -1})").find("non-negative number") != std::string::npos);
  CHECK(err(R"({"name": "x", "expected_h100_minutes": "5"})").find("non-negative number") != std::string::npos);
  CHECK(err(R"({"name": "x", "comment": 3})").find("'comment' must be a string") != std::string::npos);
  CHECK(err(R"({"name": "x", "parallel": 100000})").find("'parallel' must be an integer in [1, 4096]") != std::string::npos);
  CHECK(err(R"({"name": "x", "parallel": 0})").find("'parallel' must be an integer in [1, 4096]") != std::string::npos);
  CHECK(err(R"({"name": "x", "axes": {"rule": [null]}})").find("sweep point 0") != std::string::npos);
  CHECK(err(R"({"name": "x", "axes": {"seed": [1, 2], "train.seed": [3]}})").find("sweep axes 'seed' and 'train.seed' conflict") != std::string::npos);
  // The data file is opened before any point runs.
  CHECK(err(R"({"name": "x", "overrides": ["data.tokens=/nonexistent.tok"]})").find("sweep point 0 (x-0000): token file /nonexistent.tok: cannot open") != std::string::npos);
  SweepSpec ok = parse_sweep_spec(ojson::parse(R"({"name": "x", "comment": "c", "expected_h100_minutes": 7.5})"), "");
  CHECK(ok.expected_h100_minutes == 7.5);
  CHECK(ok.comment == "c");
  CHECK(parse_sweep_spec(ojson::parse(R"({"name": "x"})"), "").expected_h100_minutes < 0);
  TempDir d("sweep");
  write_spec(d, ojson::parse(R"({"name": "x", "axes": {"hp.lrr": [0.1]}, "out_dir": ")" + (d / "r") + "\"}"));
  Res r = run_sweep_cli(d / "spec.json");
  CHECK(r.rc == 1);
  CHECK(r.out.find("hp.lrr") != std::string::npos);
  CHECK(!fs::exists(d / "r"));
}

TEST_CASE("sweep: rank striding takes index % size == rank", "[sweep]") {
  CHECK(rank_indices(5, 1, 2) == std::vector<int>{1, 3});
  CHECK(rank_indices(5, 0, 2) == std::vector<int>{0, 2, 4});
  CHECK(rank_indices(3, 0, 1) == std::vector<int>{0, 1, 2});
}

TEST_CASE("sweep: ranks come from the launcher's environment, as for mue train", "[sweep]") {
  TempDir d("sweep");
  ojson j = tiny_spec(d, mue::test::make_toy_tokens(d), "ranks");
  j["axes"] = ojson::parse(R"({"hp.lr": [0.001, 0.002, 0.004, 0.008, 0.016]})");
  const std::string spec = write_spec(d, j) + " --dry-run";
  // (environment, what the sweep says of its rank): Open MPI, MPICH's hydra, an srun job step, and a batch
  // script's own SLURM_NTASKS, which is not a launch (the script's one process runs every point).
  for (auto [env, want] : {std::pair{"OMPI_COMM_WORLD_RANK=1 OMPI_COMM_WORLD_SIZE=2", "rank 1/2 has 2,"},
                           std::pair{"PMI_RANK=0 PMI_SIZE=2", "rank 0/2 has 3,"},
                           std::pair{"SLURM_PROCID=2 SLURM_STEP_NUM_TASKS=3", "rank 2/3 has 1,"},
                           std::pair{"SLURM_PROCID=1 SLURM_NTASKS=2", "rank 0/1 has 5,"}}) {
    const Res r = run_sweep_cli(spec, env);
    INFO(env << ": " << r.out);
    CHECK(r.rc == 0);
    CHECK(r.out.find(want) != std::string::npos);
  }
  const Res r = run_sweep_cli(spec, "SLURM_PROCID=3 SLURM_STEP_NUM_TASKS=3");
  INFO(r.out);
  CHECK(r.rc == 1);
  CHECK(r.out.find("SLURM_PROCID=3 / SLURM_STEP_NUM_TASKS=3 is not a rank of a world size") != std::string::npos);
}

TEST_CASE("sweep: a 2x2 grid runs, indexes, resumes and restarts an interrupted point", "[sweep]") {
  TempDir d("sweep");
  std::string tok = mue::test::make_toy_tokens(d);
  ojson j = tiny_spec(d, tok, "grid");
  j["axes"] = ojson::parse(R"({"hp.lr": [0.01, 0.02], "rule": ["sp", "mup"]})");
  j["parallel"] = 2;
  std::string spec = write_spec(d, j);
  SweepSpec s = load_sweep_spec(spec);
  auto pts = expand_grid(s);
  REQUIRE(pts.size() == 4);

  // Rank 1 of 2 runs only points 1 and 3.
  Res r = run_sweep_cli(spec, "SLURM_PROCID=1 SLURM_STEP_NUM_TASKS=2");
  INFO(r.out);
  REQUIRE(r.rc == 0);
  CHECK(!fs::exists(d / ("runs/" + pts[0].name + ".h5")));
  CHECK(status_of(d / ("runs/" + pts[1].name + ".h5")) == "completed");
  CHECK(!fs::exists(d / ("runs/" + pts[2].name + ".h5")));

  r = run_sweep_cli(spec);
  INFO(r.out);
  REQUIRE(r.rc == 0);
  CHECK(r.out.find("2 done, 2 to run") != std::string::npos);
  const std::string idx = d / "runs/grid-index.h5";
  REQUIRE(is_hdf5(idx));
  CHECK(read_string_attr(idx, "name").value() == "grid");
  CHECK(ojson::parse(read_string_attr(idx, "spec").value())["axes"]["hp.lr"][1] == 0.02);
  CHECK(read_doubles(idx, "/summary/index") == std::vector<double>{0, 1, 2, 3});
  CHECK(read_doubles(idx, "/summary/hp.lr") == std::vector<double>{0.01, 0.01, 0.02, 0.02});
  CHECK(read_strings(idx, "/summary/rule") == std::vector<std::string>{"sp", "mup", "sp", "mup"});
  CHECK(read_strings(idx, "/summary/status") == std::vector<std::string>(4, "completed"));
  for (double x : read_doubles(idx, "/summary/final_val_loss")) CHECK((std::isfinite(x) && x > 0 && x < 6));
  for (double x : read_doubles(idx, "/summary/best_val_loss")) CHECK(std::isfinite(x));
  for (double x : read_doubles(idx, "/summary/final_train_loss")) CHECK(std::isfinite(x));
  CHECK(read_doubles(idx, "/summary/steps") == std::vector<double>(4, 20));
  // External links resolve to the run files.
  {
    hid_t f = H5Fopen(idx.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    REQUIRE(f >= 0);
    const std::string link = "/runs/" + pts[2].name + "/train/loss";
    CHECK(H5Lexists(f, ("/runs/" + pts[2].name).c_str(), H5P_DEFAULT) > 0);
    hid_t ds = H5Dopen2(f, link.c_str(), H5P_DEFAULT);
    CHECK(ds >= 0);
    if (ds >= 0) H5Dclose(ds);
    H5Fclose(f);
  }
  CHECK(fs::exists(d / ("runs/" + pts[0].name + ".log")));

  // Resume: nothing reruns, files untouched.
  std::vector<fs::file_time_type> mt;
  for (auto& p : pts) mt.push_back(fs::last_write_time(d / ("runs/" + p.name + ".h5")));
  r = run_sweep_cli(spec);
  REQUIRE(r.rc == 0);
  CHECK(r.out.find("4 done, 0 to run") != std::string::npos);
  for (size_t i = 0; i < pts.size(); ++i) CHECK(fs::last_write_time(d / ("runs/" + pts[i].name + ".h5")) == mt[i]);

  // A point whose run was killed (file says "running") restarts and completes; --lr shortcut style flags work.
  {
    RunLog log = RunLog::create(d / ("runs/" + pts[2].name + ".h5"));
    log.set_attr("status", std::string("running"));
  }
  r = run_sweep_cli(spec + " --parallel 1");
  INFO(r.out);
  REQUIRE(r.rc == 0);
  CHECK(r.out.find("3 done, 1 to run") != std::string::npos);
  CHECK(status_of(d / ("runs/" + pts[2].name + ".h5")) == "completed");
  CHECK(fs::last_write_time(d / ("runs/" + pts[0].name + ".h5")) == mt[0]);
  CHECK(read_strings(idx, "/summary/status") == std::vector<std::string>(4, "completed"));
}

// A sweep never overwrites what is not its own, nor takes another config's runs for its points: each case a
// one-line error before anything is written, every file left byte for byte.
TEST_CASE("sweep: another grid's index, another config's runs and foreign files are refused, untouched", "[sweep]") {
  TempDir d("sweep");
  const std::string tok = mue::test::make_toy_tokens(d);
  const std::string base = d / "base.json";
  std::ofstream(base) << R"({"train": {"steps": 20}})";
  ojson j = tiny_spec(d, tok, "own");
  j["overrides"].erase(std::find(j["overrides"].begin(), j["overrides"].end(), "train.steps=20"));
  j["base"] = base;
  j["axes"] = ojson::parse(R"({"hp.lr": [0.01, 0.02]})");
  const std::string spec = write_spec(d, j);
  REQUIRE(run_sweep_cli(spec).rc == 0);
  const auto pts = expand_grid(load_sweep_spec(spec));
  const std::string idx = d / "runs/own-index.h5", run0 = d / ("runs/" + pts[0].name + ".h5");
  const std::vector<std::string> files = {idx, run0, d / ("runs/" + pts[1].name + ".h5")};
  std::vector<std::string> before;
  auto refused = [&](const std::string& args, const std::string& why) {
    const Res r = run_sweep_cli(args);
    INFO(r.out);
    CHECK(r.rc != 0);
    CHECK(r.out.find("mue: error: ") != std::string::npos);
    CHECK(r.out.find(why) != std::string::npos);
    for (size_t i = 0; i < files.size(); ++i) CHECK(file_text(files[i]) == before[i]);
  };

  // The same grid with another comment and parallel is the same sweep: nothing to run, the runs untouched.
  const std::string run0_text = file_text(run0);
  ojson same = j;
  same["comment"] = "measured", same["parallel"] = 2;
  const Res again = run_sweep_cli(write_spec(d, same, "same.json"));
  INFO(again.out);
  CHECK(again.rc == 0);
  CHECK(again.out.find("2 done, 0 to run") != std::string::npos);
  CHECK(file_text(run0) == run0_text);
  for (auto& f : files) before.push_back(file_text(f));  // (the index was rewritten with the new comment)

  // Another grid in the same place: other axes, other overrides.
  ojson axes = j;
  axes["axes"] = ojson::parse(R"({"hp.lr": [0.04]})");
  refused(write_spec(d, axes, "axes.json"), "indexes another grid of sweep 'own' (its 'axes' differ)");
  ojson overrides = j;
  overrides["overrides"].push_back("train.log_every=5");
  refused(write_spec(d, overrides, "overrides.json"), "(its 'overrides' differ)");
  refused(write_spec(d, overrides, "overrides.json") + " --dry-run", "(its 'overrides' differ)");

  // The same spec over a changed base config: the runs belong to another config.
  std::ofstream(base) << R"({"train": {"steps": 30}})";
  refused(spec, "sweep point 0: '" + run0 + "' holds a completed run of another config (");
  refused(spec, "; train.steps is 20 there, 30 here)");  // (after reference.steps, which follows it)
  std::ofstream(base) << R"({"train": {"steps": 20}})";

  // Files that are not a sweep's own at its index path or a point's path.
  ojson other = j;
  other["name"] = "other";
  const std::string other_spec = write_spec(d, other, "other.json");
  const std::string other_idx = d / "runs/other-index.h5", other_run0 = d / ("runs/" + expand_grid(load_sweep_spec(other_spec))[0].name + ".h5");
  fs::copy_file(run0, other_idx);  // a run file where the index goes
  refused(other_spec, "'" + other_idx + "' exists and is not a sweep index; not overwriting it");
  CHECK(file_text(other_idx) == before[1]);
  fs::remove(other_idx);
  std::ofstream(other_idx) << "notes";
  refused(other_spec, "exists and is not a sweep index");
  CHECK(file_text(other_idx) == "notes");
  fs::remove(other_idx);
  {  // another sweep's index copied where this one's goes: the message names both sweeps
    ojson other_grid = other;
    other_grid["axes"] = ojson::parse(R"({"hp.lr": [0.04]})");
    fs::copy_file(idx, other_idx);
    refused(write_spec(d, other_grid, "other-grid.json"), "indexes another grid (sweep 'own', not 'other') (its 'axes' differ)");
    fs::remove(other_idx);
  }
  std::ofstream(other_run0) << "notes";  // a text file where a point's run goes
  refused(other_spec, "sweep point 0: '" + other_run0 + "' exists and is not a run file; not overwriting it");
  CHECK(file_text(other_run0) == "notes");
  CHECK(!fs::exists(other_idx));
  ojson in_file = j;  // an out_dir that is a file
  in_file["out_dir"] = base;
  refused(write_spec(d, in_file, "in-file.json") + " --dry-run", "sweep out_dir '" + base + "' exists and is not a folder");
}

TEST_CASE("sweep: a child killed with SIGKILL mid-run is restarted; finished runs are kept", "[sweep]") {
  // The 2x2 test above fakes a killed run by writing status "running"; here a real `mue train` child dies by SIGKILL.
  TempDir d("sweep");
  std::string tok = mue::test::make_toy_tokens(d);
  ojson j = tiny_spec(d, tok, "kill");
  j["overrides"].push_back("train.steps=400");  // long enough (~1 s on one core) to be killed mid-run
  j["overrides"].push_back("train.eval_every=400");
  j["axes"] = ojson::parse(R"({"hp.lr": [0.01, 0.02, 0.03]})");
  std::string spec = write_spec(d, j);
  auto pts = expand_grid(load_sweep_spec(spec));
  std::vector<std::string> run;
  for (auto& p : pts) run.push_back(d / ("runs/" + p.name + ".h5"));

  pid_t sweep = start_sweep_process(d, spec);
  REQUIRE(sweep > 0);
  // One child at a time: once point 0 has completed and point 1's file exists, the only child is point 1's.
  for (int i = 0; i < 2000 && !(read_point_result(run[0]).status == "completed" && fs::exists(run[1])); ++i)
    ::usleep(5000);
  std::vector<pid_t> kids = children_of(sweep);
  INFO(file_text(d / "sweep.out"));
  REQUIRE(kids.size() == 1);
  REQUIRE(::kill(kids[0], SIGKILL) == 0);
  int st = 0;
  REQUIRE(::waitpid(sweep, &st, 0) == sweep);
  const std::string out = file_text(d / "sweep.out");
  INFO(out);
  CHECK(WIFEXITED(st));
  CHECK(WEXITSTATUS(st) == 3);  // a point failed; the sweep went on
  CHECK(out.find("0001 hp.lr=0.02: failed (signal 9") != std::string::npos);
  CHECK(read_point_result(run[1]).status != "completed");
  CHECK(status_of(run[0]) == "completed");
  CHECK(status_of(run[2]) == "completed");
  const std::string idx = d / "runs/kill-index.h5";
  CHECK(read_strings(idx, "/summary/status")[1] != "completed");

  // Re-running the same command restarts only the killed point; the finished files are not touched.
  const std::vector<std::string> before = {file_text(run[0]), file_text(run[2])};
  const std::vector<fs::file_time_type> mtime = {fs::last_write_time(run[0]), fs::last_write_time(run[2])};
  Res r = run_sweep_cli(spec);
  INFO(r.out);
  INFO(file_text(d / ("runs/" + pts[1].name + ".log")));
  REQUIRE(r.rc == 0);
  CHECK(r.out.find("2 done, 1 to run") != std::string::npos);
  CHECK(status_of(run[1]) == "completed");
  CHECK(read_doubles(run[1], "/train/step").back() == 400);
  CHECK(fs::last_write_time(run[0]) == mtime[0]);
  CHECK(fs::last_write_time(run[2]) == mtime[1]);
  CHECK(file_text(run[0]) == before[0]);
  CHECK(file_text(run[2]) == before[1]);
  CHECK(read_strings(idx, "/summary/status") == std::vector<std::string>(3, "completed"));
}

TEST_CASE("sweep: a sweep killed with SIGKILL takes its children with it; a point in use is left alone", "[sweep]") {
  TempDir d("sweep");
  std::string tok = mue::test::make_toy_tokens(d);
  ojson j = tiny_spec(d, tok, "orphan");
  j["overrides"].push_back("train.steps=1000000");  // runs until stopped
  j["overrides"].push_back("train.eval_every=1000000");
  j["axes"] = ojson::parse(R"({"hp.lr": [0.01, 0.02]})");
  std::string spec = write_spec(d, j);
  auto pts = expand_grid(load_sweep_spec(spec));
  const std::string run0 = d / ("runs/" + pts[0].name + ".h5"), run1 = d / ("runs/" + pts[1].name + ".h5");

  pid_t sweep = start_sweep_process(d, spec);
  REQUIRE(sweep > 0);
  std::vector<pid_t> kids;
  for (int i = 0; i < 2000 && !(kids.size() == 1 && file_in_use(run0)); ++i) ::usleep(5000), kids = children_of(sweep);
  INFO(file_text(d / "sweep.out"));
  REQUIRE(kids.size() == 1);
  REQUIRE(::kill(sweep, SIGKILL) == 0);
  int st = 0;
  REQUIRE(::waitpid(sweep, &st, 0) == sweep);
  // The orphaned child got SIGTERM from the kernel (PR_SET_PDEATHSIG) and stops as failed.
  bool gone = false;
  for (int i = 0; i < 1000 && !gone; ++i) gone = ::kill(kids[0], 0) != 0, ::usleep(10000);
  CHECK(gone);
  CHECK(status_of(run0) == "failed");

  // A point whose file another process holds is skipped, its file untouched; the other points run.
  j["overrides"].push_back("train.steps=20");  // later overrides win: short runs now
  j["overrides"].push_back("train.eval_every=10");
  spec = write_spec(d, j);
  fs::remove(d / "runs/orphan-index.h5");  // another grid's index is never replaced: the user removes it
  {
    RunLog holder = RunLog::create(run0);  // e.g. a point still trained by a sweep started elsewhere
    holder.set_attr("status", "running");
    holder.flush();
    Res r = run_sweep_cli(spec);
    INFO(r.out);
    CHECK(r.rc == 0);
    CHECK(r.out.find("skip (in use by another process)") != std::string::npos);
    CHECK(r.out.find("1 point(s) in use by another process left alone") != std::string::npos);
    CHECK(status_of(run1) == "completed");
    // And `mue train` of that name is refused before it touches the file, even with out.overwrite=true.
    std::string args;
    for (auto& o : pts[0].overrides) args += " '" + o + "'";
    std::string cmd = std::string(MUE_BINARY) + " train" + args + " out.overwrite=true > " + (d / "t.out") + " 2>&1";
    CHECK(WEXITSTATUS(std::system(cmd.c_str())) != 0);
    CHECK(file_text(d / "t.out").find("is in use by another process") != std::string::npos);
    holder.append("train", {{"step", 7}});
  }
  CHECK(read_doubles(run0, "/train/step") == std::vector<double>{7});  // the holder's file, intact
}

TEST_CASE("sweep: CPU children share the cores and wait passively unless told otherwise", "[sweep]") {
  TempDir d("sweep");
  std::string tok = mue::test::make_toy_tokens(d);
  ojson j = tiny_spec(d, tok, "threads");
  j["axes"] = ojson::parse(R"({"hp.lr": [0.01, 0.02]})");
  std::string spec = write_spec(d, j);
  auto pts = expand_grid(load_sweep_spec(spec));
  const long cores = std::max(1L, ::sysconf(_SC_NPROCESSORS_ONLN));
  auto threads = [&](const std::string& env) {
    std::string cmd = "env -u OMP_NUM_THREADS -u OMP_WAIT_POLICY " + env + " " + std::string(MUE_BINARY) + " sweep " +
                      spec + " --parallel 2 > /dev/null 2>&1";
    REQUIRE(WEXITSTATUS(std::system(cmd.c_str())) == 0);
    const double t = read_double_attr(d / ("runs/" + pts[1].name + ".h5"), "cpu_threads").value();
    fs::remove_all(d / "runs");
    return t;
  };
  CHECK(threads("") == double(std::max(1L, cores / 2)));
  CHECK(threads("OMP_NUM_THREADS=3") == 3);  // the user's setting wins
}

TEST_CASE("sweep: every spec in experiments/sweeps/ loads, expands and validates", "[sweep]") {
  const fs::path dir = fs::path(MUE_SOURCE_DIR) / "experiments/sweeps";
  const std::set<std::string> two_seeds = {"dense-proxy-lm",    "act-experts-lm",    "total-experts-lm",
                                           "granularity-lm",    "group-balanced-lm", "width-lm", "shared-experts-lm",
                                           "expert-width-lm",   "batch-lm",          "dense-proxy-flow",
                                           "act-experts-flow",  "total-experts-flow"};
  std::set<std::string> names;
  for (auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() != ".json") continue;
    INFO(e.path().string());
    SweepSpec s = load_sweep_spec(e.path().string());
    names.insert(s.name);
    CHECK(s.name == e.path().stem().string());
    CHECK(s.out_dir == "runs/" + s.name);
    CHECK(s.expected_h100_minutes > 0);
    CHECK(!s.comment.empty());
    std::vector<SweepPoint> pts = expand_grid(s);
    CHECK(pts.size() <= 200);
    CHECK_NOTHROW(validate_points(s, pts, false));  // the data files need not exist here
    // complete-mue against at least one rival, on every spec.
    auto rule_axis = std::find_if(s.axes.begin(), s.axes.end(), [](auto& a) { return a.first == "rule"; });
    REQUIRE(rule_axis != s.axes.end());
    CHECK(rule_axis->second.size() >= 2);
    CHECK(std::count(rule_axis->second.begin(), rule_axis->second.end(), "complete-mue") == 1);
    // Comparable points (issue 23): every LM spec at >= 2000 steps of >= 8K tokens, every diffusion spec at
    // >= 2000 steps of >= 64 images; the proxies and the activated- and total-experts specs have two seeds.
    auto seed_axis = std::find_if(s.axes.begin(), s.axes.end(), [](auto& a) { return a.first == "seed"; });
    for (auto& p : pts) {
      RunConfig pc = resolve_config(s.base, p.overrides);
      CHECK(pc.train.steps >= 2000);
      if (pc.task == "lm") CHECK(int64_t(pc.train.batch) * pc.model.seq_len >= 8192);
      else CHECK(pc.train.batch >= 64);
    }
    CHECK((seed_axis != s.axes.end() && seed_axis->second.size() == 2) == bool(two_seeds.count(s.name)));
  }
  // One spec per figure type of the paper (spec section 4), LM and diffusion where the spec asks for both.
  for (const char* want : {"act-experts-lm", "act-experts-flow", "total-experts-lm", "total-experts-flow",
                           "granularity-lm", "shared-experts-lm", "group-balanced-lm", "width-lm", "expert-width-lm",
                           "batch-lm", "shape-fixed-hp-lm", "shape-fixed-hp-flow", "wd-lm", "dense-proxy-lm",
                           "dense-proxy-flow", "rivals-lm"})
    CHECK(names.count(want) == 1);
  // The sweep prints the spec's expected H100 time when it starts.
  Res r = run_sweep_cli((dir / "act-experts-lm.json").string() + " --dry-run");
  INFO(r.out);
  CHECK(r.rc == 0);
  CHECK(r.out.find("expects about 25 min for all 168 points on one H100") != std::string::npos);
}

TEST_CASE("sweep: a huge LR diverges while the others complete; --lr shortcut", "[sweep]") {
  TempDir d("sweep");
  std::string tok = mue::test::make_toy_tokens(d);
  ojson j = tiny_spec(d, tok, "div");
  j["overrides"].push_back("rule=sp");
  j["overrides"].push_back("train.diverge_factor=1.5");
  j["axes"] = ojson::parse(R"({"hp.lr": [0.01, 3]})");
  std::string spec = write_spec(d, j);
  Res r = run_sweep_cli(spec + " --parallel 2");
  INFO(r.out);
  REQUIRE(r.rc == 0);
  const std::string idx = d / "runs/div-index.h5";
  CHECK(read_strings(idx, "/summary/status") == std::vector<std::string>{"completed", "diverged"});
  // Diverged counts as done.
  r = run_sweep_cli(spec);
  CHECK(r.out.find("2 done, 0 to run") != std::string::npos);

  // The --lr shortcut is a one-axis grid named after the config's name.
  std::string args;
  for (auto& o : j["overrides"]) args += " " + o.get<std::string>();
  r = run_sweep_cli("--lr 0.01,0.02 name=quick out.dir=" + (d / "lr") + args);
  INFO(r.out);
  REQUIRE(r.rc == 0);
  CHECK(read_doubles(d / "lr/quick-index.h5", "/summary/hp.lr") == std::vector<double>{0.01, 0.02});
  CHECK(status_of(d / "lr/quick-0001-lr-0.02.h5") == "completed");
}

TEST_CASE("sweep: --only runs just the listed points; bad lists are one-line errors", "[sweep]") {
  TempDir d("sweep");
  std::string tok = mue::test::make_toy_tokens(d);
  ojson j = tiny_spec(d, tok, "only");
  j["axes"] = ojson::parse(R"({"hp.lr": [0.001, 0.002, 0.004, 0.008]})");
  std::string spec = write_spec(d, j);
  Res r = run_sweep_cli(spec + " --only 1,3-3");
  INFO(r.out);
  REQUIRE(r.rc == 0);
  CHECK(r.out.find("rank 0/1 has 2, 0 done, 2 to run") != std::string::npos);
  CHECK(read_strings(d / "runs/only-index.h5", "/summary/status") ==
        std::vector<std::string>{"missing", "completed", "missing", "completed"});
  r = run_sweep_cli(spec + " --only 0-1 --dry-run");
  CHECK(r.out.find("rank 0/1 has 2, 1 done, 1 to run") != std::string::npos);
  for (const char* bad : {"4", "2-1", "x", "1,,2", "-1"}) {
    r = run_sweep_cli(spec + " --only " + bad);
    INFO(bad << ": " << r.out);
    CHECK(r.rc != 0);
    CHECK(r.out.find("--only") != std::string::npos);
  }
}

TEST_CASE("sweep: SIGINT is forwarded to the running child, which stops as failed", "[sweep]") {
  TempDir d("sweep");
  std::string tok = mue::test::make_toy_tokens(d);
  ojson j = tiny_spec(d, tok, "sig");
  j["overrides"].push_back("train.steps=100000");
  j["axes"] = ojson::parse(R"({"hp.lr": [0.01, 0.02]})");
  std::string spec = write_spec(d, j);
  pid_t pid = start_sweep_process(d, spec);
  REQUIRE(pid > 0);
  const std::string run0 = d / "runs/sig-0000-lr-0.01.h5";
  for (int i = 0; i < 200 && !(fs::exists(run0) && fs::file_size(run0) > 0); ++i) ::usleep(20000);
  ::usleep(300000);
  ::kill(pid, SIGINT);
  int st = 0;
  ::waitpid(pid, &st, 0);
  INFO(file_text(d / "sweep.out"));
  CHECK(WIFEXITED(st));
  CHECK(WEXITSTATUS(st) == 130);
  CHECK(status_of(run0) == "failed");
  CHECK(!fs::exists(d / "runs/sig-0001-lr-0.02.h5"));  // never started
  CHECK(read_strings(d / "runs/sig-index.h5", "/summary/status") == std::vector<std::string>{"failed", "missing"});
}

// --deadline stops starting points once one is expected to end too late (estimated from the finished points),
// lets the running ones finish, leaves the rest "missing" in the index, and a later run picks them up.
TEST_CASE("sweep: --deadline starts no point expected to end late; a later run goes on", "[sweep]") {
  TempDir d("sweep");
  std::string tok = mue::test::make_toy_tokens(d);
  ojson j = tiny_spec(d, tok, "deadline");
  j["axes"] = ojson::parse(R"({"hp.lr": [0.001, 0.002, 0.004]})");
  std::string spec = write_spec(d, j);
  // With earlier points that took 1000 s (--estimates), a 60 s deadline starts none.
  std::ofstream(d / "earlier.json") << R"({"points": [{"coords": {"hp.lr": 0.5}, "status": "completed",
                                                      "timing": {"total": 1000}}]})";
  Res r0 = run_sweep_cli(spec + " --parallel 1 --deadline 60 --estimates " + (d / "earlier.json"));
  INFO(r0.out);
  REQUIRE(r0.rc == 0);
  CHECK(r0.out.find("--estimates " + (d / "earlier.json") + ": 1 timed points, of 1 of the 1 kinds of point here") !=
        std::string::npos);
  CHECK(r0.out.find("starting no more points at 0 s (the shortest left takes about 1000 s); 3 left") != std::string::npos);
  CHECK(r0.out.find("0 completed, 0 diverged, 0 failed, 0 skipped, 3 not started (--deadline)") != std::string::npos);
  r0 = run_sweep_cli(spec + " --estimates " + (d / "earlier.json"));
  CHECK(r0.rc != 0);
  CHECK(r0.out.find("--estimates gives --deadline its first estimates; it needs --deadline SECONDS") != std::string::npos);
  r0 = run_sweep_cli(spec + " --deadline 60 --estimates ''");
  CHECK(r0.rc != 0);
  CHECK(r0.out.find("--estimates needs a results file") != std::string::npos);
  r0 = run_sweep_cli(spec + " --deadline 60 --estimates " + (d / "absent.json"));
  CHECK(r0.rc != 0);
  CHECK(r0.out.find("--estimates: cannot open results file") != std::string::npos);
  // The first point starts (no estimate yet, the deadline not passed); it takes far longer than 50 ms (a process
  // that loads data and trains), so no second point is expected to end in time.
  Res r = run_sweep_cli(spec + " --parallel 1 --deadline 0.05");
  INFO(r.out);
  REQUIRE(r.rc == 0);
  CHECK(r.out.find("starting no more points") != std::string::npos);
  CHECK(r.out.find("1 completed, 0 diverged, 0 failed, 0 skipped, 2 not started (--deadline)") != std::string::npos);
  CHECK(read_strings(d / "runs/deadline-index.h5", "/summary/status") ==
        std::vector<std::string>{"completed", "missing", "missing"});
  r = run_sweep_cli(spec + " --parallel 1 --deadline 1e6");
  CHECK(r.rc == 0);
  CHECK(r.out.find("2 completed, 0 diverged, 0 failed, 1 skipped in") != std::string::npos);
  CHECK(read_strings(d / "runs/deadline-index.h5", "/summary/status") ==
        std::vector<std::string>{"completed", "completed", "completed"});
  for (const char* bad : {"0", "-3", "x"}) {
    r = run_sweep_cli(spec + " --deadline " + bad);
    INFO(bad << ": " << r.out);
    CHECK(r.rc != 0);
    CHECK(r.out.find("--deadline") != std::string::npos);
  }
}

// Where the next point would end too late, a later one of a shorter kind starts instead.
TEST_CASE("sweep: --deadline starts the points of a kind that fits where the next kind does not", "[sweep]") {
  TempDir d("sweep");
  std::string tok = mue::test::make_toy_tokens(d);
  ojson j = tiny_spec(d, tok, "fill");
  j["axes"] = ojson::parse(R"({"train.log_every": [10, 5], "hp.lr": [0.001, 0.002]})");
  std::string spec = write_spec(d, j);
  std::ofstream(d / "earlier.json") << R"({"points": [
    {"coords": {"train.log_every": 10, "hp.lr": 0.5}, "status": "completed", "timing": {"total": 1000}},
    {"coords": {"train.log_every": 5, "hp.lr": 0.5}, "status": "completed", "timing": {"total": 1}}]})";
  Res r = run_sweep_cli(spec + " --parallel 1 --deadline 600 --estimates " + (d / "earlier.json"));
  INFO(r.out);
  REQUIRE(r.rc == 0);
  CHECK(r.out.find("(the shortest left takes about 1000 s); 2 left for a later run") != std::string::npos);
  CHECK(r.out.find("2 completed, 0 diverged, 0 failed, 0 skipped, 2 not started (--deadline)") != std::string::npos);
  CHECK(read_strings(d / "runs/fill-index.h5", "/summary/status") ==
        std::vector<std::string>{"missing", "missing", "completed", "completed"});
}

TEST_CASE("sweep: --deadline expects a point to take as long as its configuration's finished ones", "[sweep]") {
  ojson j = ojson::parse(R"({"name": "e", "axes": {"seed": [1, 2], "ffn.shape": ["64e2a", "64e64a"],
                              "hp.lr": [0.001, 0.002]}, "out_dir": "o"})");
  auto pts = expand_grid(parse_sweep_spec(j, ""));
  REQUIRE(pts.size() == 8);  // seed 1: 64e2a at two LRs (0, 1), 64e64a (2, 3); seed 2: 4-7 likewise
  auto key = [&](int i) { return point_work_key(pts[size_t(i)].coords); };
  CHECK(key(0) == key(5));  // seed and LR leave the work alike
  CHECK(point_work_key({{"train.seed", ojson(3)}, {"train.data_seed", ojson(4)}, {"hp.wd", ojson(0.1)}}) == "");
  CHECK(key(0) != key(2));
  CHECK(expected_point_seconds({}, {}, pts[0]) == 0);  // nothing completed, nothing earlier: no estimate
  const PointSeconds done = {{key(0), 10.0}, {key(1), 12.0}, {key(2), 40.0}};
  CHECK(expected_point_seconds(done, {}, pts[5]) == Approx(11.0));  // seed 2, 64e2a: the 64e2a points' mean
  CHECK(expected_point_seconds(done, {}, pts[3]) == Approx(40.0));  // another LR of 64e64a
  j["axes"]["ffn.shape"].push_back("64e8a");
  auto more = expand_grid(parse_sweep_spec(j, ""));
  CHECK(expected_point_seconds(done, {}, more[4]) == Approx(62.0 / 3));  // 64e8a: none yet, the mean of all
  // Earlier points (--estimates) count where this sweep has none of the point's work, its own first.
  const PointSeconds earlier = {{point_work_key(more[4].coords), 90.0}, {key(0), 1000.0}};
  CHECK(expected_point_seconds(done, earlier, more[4]) == Approx(90.0));
  CHECK(expected_point_seconds(done, earlier, pts[0]) == Approx(11.0));
  CHECK(expected_point_seconds({}, earlier, pts[2]) == Approx(545.0));  // no 64e64a anywhere: the earlier ones' mean
  CHECK(expected_point_seconds({{key(2), 40.0}}, earlier, pts[0]) == Approx(1000.0));  // same work beats this sweep's
}

// --estimates reads a results file's completed points with timings; numbers match as numbers (1.0 == 1).
TEST_CASE("sweep: --estimates takes a results file's point times; a bad file is one line", "[sweep]") {
  TempDir d("sweep");
  const ojson results = ojson::parse(R"({"format": 1, "points": [
    {"coords": {"seed": 1.0, "ffn.shape": "64e2a", "train.batch": 32.0, "hp.lr": 0.001}, "status": "completed",
     "timing": {"total": 50.0, "before_main": 0.5}},
    {"coords": {"seed": 2.0, "ffn.shape": "64e2a", "train.batch": 32.0, "hp.lr": 0.002}, "status": "completed",
     "timing": {"total": 60.0}},
    {"coords": {"seed": 1.0, "ffn.shape": "64e2a", "train.batch": 32.0, "hp.lr": 0.004}, "status": "diverged",
     "timing": {"total": 5.0}},
    {"coords": {"seed": 1.0, "ffn.shape": "64e2a", "train.batch": 32.0, "hp.lr": 0.008}, "status": "completed"},
    {"coords": {"seed": 1.0, "ffn.shape": "64e64a", "train.batch": 32.0, "hp.lr": 0.001}, "status": "missing"}]})");
  std::ofstream(d / "r.json") << results.dump();
  const PointSeconds got = read_point_seconds(d / "r.json");
  REQUIRE(got.size() == 2);  // completed with a timing: the diverged, the untimed and the missing one left out
  CHECK(got[0].second == Approx(50.5));
  CHECK(got[1].second == Approx(60.0));
  ojson j = ojson::parse(R"({"name": "e", "axes": {"train.batch": [32], "ffn.shape": ["64e2a"], "seed": [1],
                              "hp.lr": [0.001]}, "out_dir": "o"})");
  const SweepPoint p = expand_grid(parse_sweep_spec(j, ""))[0];
  CHECK(point_work_key(p.coords) == got[0].first);  // integer axis values against the file's 32.0, other key order
  CHECK(expected_point_seconds({}, got, p) == Approx(55.25));
  // A value neither string nor number is written to the index (and results file) as its text: true as "true".
  const ojson flag = ojson::parse(R"({"name": "e", "axes": {"train.cuda_graph": [true]}, "out_dir": "o"})");
  CHECK(point_work_key(expand_grid(parse_sweep_spec(flag, ""))[0].coords) ==
        point_work_key({{"train.cuda_graph", ojson("true")}}));
  // A point whose status is not a string is no completed point, not an error.
  std::ofstream(d / "null.json") << R"({"points": [{"coords": {}, "status": null, "timing": {"total": 1}}]})";
  CHECK(read_point_seconds(d / "null.json").empty());

  std::ofstream(d / "not-results.json") << R"({"points": 3})";
  std::ofstream(d / "broken.json") << "{";
  fs::create_directories(d / "folder.json");
  for (const char* bad : {"absent.json", "not-results.json", "broken.json", "folder.json"}) {
    INFO(bad);
    try {
      read_point_seconds(d / bad);
      FAIL("no error");
    } catch (const std::exception& e) {
      const std::string what = e.what();
      CHECK(what.find("--estimates") != std::string::npos);
      CHECK(what.find(bad) != std::string::npos);
      CHECK(what.find('\n') == std::string::npos);
    }
  }
}

// --slots: a pool of flock'd files shared by sweeps (a campaign's overlapping sweeps run at most N points at once).
// flock locks of separately opened files conflict within one process too, so two pools here act as two sweeps.
TEST_CASE("sweep: run slots are held by one pool at a time and freed on release", "[sweep]") {
  TempDir d("sweep");
  const std::string dir = d / "slots";  // created by the first pool
  RunSlots a(dir, 2), b(dir, 2);
  CHECK(fs::is_regular_file(d / "slots/slot-1"));
  CHECK(a.acquire() == 0);
  CHECK(a.acquire() == 1);
  CHECK(a.acquire() == -1);
  CHECK(b.acquire() == -1);
  a.release(0);
  CHECK(b.acquire() == 0);
  CHECK(a.acquire() == -1);
  RunSlots c(dir, 3);  // a larger pool takes the slots the smaller ones never use
  CHECK(c.acquire() == 2);
  CHECK(c.acquire() == -1);
  RunSlots g(dir, 4);
  {
    RunSlots e(dir, 4);
    CHECK(e.acquire() == 3);
    CHECK(g.acquire() == -1);
  }  // a pool's end frees its slots, as a sweep's exit (or kill) does
  CHECK(g.acquire() == 3);

  std::ofstream(d / "file") << "x";
  const std::string what = mue::test::error_of([&] { RunSlots f(d / "file", 2); });
  CHECK(what.find("--slots: '" + (d / "file") + "' exists and is not a folder") != std::string::npos);
  CHECK(what.find('\n') == std::string::npos);
}

// A sweep with --slots takes one per point; one whose slots other sweeps hold starts nothing and, at its
// --deadline, stops waiting with the usual line.
TEST_CASE("sweep: --slots runs a sweep's points in the shared slots; all held, it waits until --deadline", "[sweep]") {
  TempDir d("sweep");
  std::string tok = mue::test::make_toy_tokens(d);
  ojson j = tiny_spec(d, tok, "slots");
  j["axes"] = ojson::parse(R"({"hp.lr": [0.001, 0.002, 0.004]})");
  std::string spec = write_spec(d, j);
  Res r = run_sweep_cli(spec + " --parallel 2 --slots " + (d / "slots"));
  INFO(r.out);
  REQUIRE(r.rc == 0);
  CHECK(r.out.find("3 completed, 0 diverged, 0 failed, 0 skipped in") != std::string::npos);
  CHECK(fs::is_regular_file(d / "slots/slot-1"));
  CHECK(!fs::exists(d / "slots/slot-2"));

  fs::remove_all(d / "runs");
  RunSlots held(d / "slots", 2);
  REQUIRE(held.acquire() == 0);
  REQUIRE(held.acquire() == 1);
  r = run_sweep_cli(spec + " --parallel 2 --deadline 1 --slots " + (d / "slots"));
  INFO(r.out);
  REQUIRE(r.rc == 0);
  CHECK(r.out.find("sweep slots: waiting for a free run slot in " + (d / "slots") + " (0 running here)") !=
        std::string::npos);
  CHECK(r.out.find("--deadline 1 s: starting no more points at ") != std::string::npos);
  CHECK(r.out.find("0 completed, 0 diverged, 0 failed, 0 skipped, 3 not started (--deadline)") != std::string::npos);

  std::ofstream(d / "file") << "x";
  r = run_sweep_cli(spec + " --slots " + (d / "file"));
  CHECK(r.rc == 1);
  CHECK(r.out == "mue: error: --slots: '" + (d / "file") + "' exists and is not a folder\n");
  r = run_sweep_cli(spec + " --slots ''");
  CHECK(r.rc == 1);
  CHECK(r.out == "mue: error: --slots needs a folder (created if missing)\n");
  // the ranks of one mpirun would each open a pool on the folder and share its slots: refused in one line
  r = run_sweep_cli(spec + " --parallel 2 --slots " + (d / "slots"), "OMPI_COMM_WORLD_RANK=0 OMPI_COMM_WORLD_SIZE=2");
  CHECK(r.rc == 1);
  CHECK(r.out.find("mue: error: --slots: a sweep launched as 2 ranks") == 0);
  CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 1);
}

// Several devices: slot k runs on device k % ndevices, so sweeps sharing the slots share the devices' balance.
TEST_CASE("sweep: with --slots, a point runs on its slot's device", "[sweep]") {
  TempDir d("sweep");
  std::string tok = mue::test::make_toy_tokens(d);
  ojson j = tiny_spec(d, tok, "dev");
  j["axes"] = ojson::parse(R"({"hp.lr": [0.001]})");
  SweepSpec s = load_sweep_spec(write_spec(d, j));
  std::ofstream(d / "fake-mue") << "#!/bin/sh\necho \"$CUDA_VISIBLE_DEVICES\" >> " + (d / "devices") + "\n";
  fs::permissions(d / "fake-mue", fs::perms::owner_all);
  SweepOptions o;
  o.parallel = 2;
  o.slots = d / "slots";
  o.exe = d / "fake-mue";
  const char* old = std::getenv("CUDA_VISIBLE_DEVICES");
  const std::string saved = old ? old : "";
  ::setenv("CUDA_VISIBLE_DEVICES", "5,7", 1);
  const int out = ::dup(1);  // the sweep's lines to a file, not the test's output
  const int f = ::open((d / "sweep.out").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::fflush(stdout);
  ::dup2(f, 1);
  {
    RunSlots other(d / "slots", 2);
    REQUIRE(other.acquire() == 0);  // another sweep's point on device 5: this one's goes to 7
    run_sweep(s, o);
    other.release(0);
    REQUIRE(other.acquire() == 0);
    REQUIRE(other.acquire() == 1);
    other.release(0);  // slot 0 (device 5) free, 1 held
    run_sweep(s, o);
  }
  std::fflush(stdout);
  ::dup2(out, 1), ::close(out), ::close(f);
  if (old) ::setenv("CUDA_VISIBLE_DEVICES", saved.c_str(), 1);
  else ::unsetenv("CUDA_VISIBLE_DEVICES");
  INFO(file_text(d / "sweep.out"));
  CHECK(file_text(d / "devices") == "7\n5\n");
}
