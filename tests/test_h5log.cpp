#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/h5log.h"
#include "tests/catch.h"
#include "tests/fixtures.h"

namespace {

namespace fs = std::filesystem;

// A fresh folder per test under the system temp dir, removed at the end.
using mue::test::TempDir;
using mue::test::error_of;

}  // namespace

TEST_CASE("run log round-trips attributes, param table, columns and rows", "[h5]") {
  TempDir tmp("roundtrip");
  const std::string path = tmp.file("run.h5");
  const std::string config = "{\n  \"model\": {\"d\": 128},\n  \"name\": \"caf\xc3\xa9\"\n}";
  const std::vector<mue::ParamTableRow> table = {
      {"embed.weight", "50257x768", "normal", 0.02, 1.0, 3e-3, 0.0, 1e-8, 1.0},
      {"blocks.0.ffn.w1", "768x3072", "normal", 0.0360844, 0.5, 1.5e-3, 0.1, 1e-8, 0.25},
      {"ln_f.gain", "768", "ones", 0.0, 1.0, 3e-3, 0.0, 1e-12, 1.0},
  };
  constexpr int kTrain = 2500;
  auto train_loss = [](int i) { return 10.0 / (1.0 + 0.01 * i) + 1e-13 * i; };
  {
    mue::RunLog log = mue::RunLog::create(path);
    CHECK(log.is_open());
    log.set_attr("config", config);
    log.set_attr("rule", "mup");
    log.set_attr("status", std::string("running"));
    log.set_attr("git_commit", std::string("abc1234"));
    log.set_attr("device", std::string("cpu"));
    log.set_attr("started", std::string("2024-05-01T12:00:00Z"));
    log.set_attr("finished", std::string(""));
    log.set_attr("seed", 17.0);
    log.write_param_table(table, {{"attn_scale", 0.125}, {"route_scale", 8.0}});
    CHECK_THROWS_AS(log.write_param_table(table), mue::Error);
    for (int i = 0; i < kTrain; ++i) {
      log.append("train", {{"step", i + 1}, {"tokens", (i + 1) * 4096.0}, {"loss", train_loss(i)},
                           {"lr", 1e-3 * (i + 1) / kTrain}, {"grad_norm", 0.5 + i * 1e-4},
                           {"tok_per_s", 12345.5}, {"wall_s", 0.25 * i}});
      if ((i + 1) % 1000 == 0) log.append("/val/", {{"step", i + 1}, {"loss", 3.0 - i * 1e-4}});
      if (i < 5) log.append_row("router/load", {0.1 * i, 0.2, 0.3, 0.4 - 0.1 * i});
      if (i % 500 == 0) log.flush();
    }
    log.set_attr("status", std::string("completed"));        // replaced in place
    log.set_attr("finished", std::string("2024-05-01T13:00:00Z"));
    log.set_attr("seed", std::string("seventeen"));          // type change: double -> string
    log.set_attr("loss_scale", 1024.0);
    log.set_attr("loss_scale", 2048.0);
    log.close();
    CHECK_FALSE(log.is_open());
    log.close();  // idempotent
    CHECK_THROWS_WITH(log.flush(), HasText("after close()"));
  }
  REQUIRE(mue::is_hdf5(path));
  CHECK(mue::read_string_attr(path, "config") == config);
  CHECK(mue::read_string_attr(path, "rule") == "mup");
  CHECK(mue::read_string_attr(path, "status") == "completed");
  CHECK(mue::read_string_attr(path, "git_commit") == "abc1234");
  CHECK(mue::read_string_attr(path, "device") == "cpu");
  CHECK(mue::read_string_attr(path, "started") == "2024-05-01T12:00:00Z");
  CHECK(mue::read_string_attr(path, "finished") == "2024-05-01T13:00:00Z");
  CHECK(mue::read_string_attr(path, "seed") == "seventeen");
  CHECK(mue::read_double_attr(path, "loss_scale") == 2048.0);
  CHECK_FALSE(mue::read_string_attr(path, "no_such_attr").has_value());
  CHECK_THROWS_WITH(mue::read_string_attr(path, "loss_scale"), HasText("is not a string"));

  // param_table: equal-length columns.
  CHECK(mue::list_datasets(path, "param_table") ==
        std::vector<std::string>{"eps", "forward_alpha", "init", "init_std", "lr", "multiplier", "name", "shape",
                                 "wd"});
  CHECK(mue::read_doubles(path, "param_table/forward_alpha") == std::vector<double>{1.0, 0.25, 1.0});
  CHECK(mue::read_double_attr(path, "param_table/attn_scale") == 0.125);
  CHECK(mue::read_double_attr(path, "param_table/route_scale") == 8.0);
  CHECK_FALSE(mue::read_double_attr(path, "param_table/branch_multiplier").has_value());
  CHECK_FALSE(mue::read_double_attr(path, "no_such_group/x").has_value());
  std::vector<std::string> names, shapes, inits;
  std::vector<double> init_std, mult, lr, wd, eps;
  for (const auto& r : table) {
    names.push_back(r.name), shapes.push_back(r.shape), inits.push_back(r.init);
    init_std.push_back(r.init_std), mult.push_back(r.multiplier), lr.push_back(r.lr), wd.push_back(r.wd),
        eps.push_back(r.eps);
  }
  CHECK(mue::read_strings(path, "param_table/name") == names);
  CHECK(mue::read_strings(path, "/param_table/shape") == shapes);
  CHECK(mue::read_strings(path, "param_table/init") == inits);
  CHECK(mue::read_doubles(path, "param_table/init_std") == init_std);
  CHECK(mue::read_doubles(path, "param_table/multiplier") == mult);
  CHECK(mue::read_doubles(path, "param_table/lr") == lr);
  CHECK(mue::read_doubles(path, "param_table/wd") == wd);
  CHECK(mue::read_doubles(path, "param_table/eps") == eps);

  // train: 2500 rows across three 1024-row chunks, compared exactly.
  CHECK(mue::list_datasets(path, "/train") ==
        std::vector<std::string>{"grad_norm", "loss", "lr", "step", "tok_per_s", "tokens", "wall_s"});
  const auto step = mue::read_doubles(path, "train/step");
  const auto loss = mue::read_doubles(path, "train/loss");
  const auto lrs = mue::read_doubles(path, "train/lr");
  const auto wall = mue::read_doubles(path, "train/wall_s");
  REQUIRE(step.size() == size_t(kTrain));
  REQUIRE(loss.size() == size_t(kTrain));
  for (const char* col : {"tokens", "lr", "grad_norm", "tok_per_s", "wall_s"})
    CHECK(mue::read_doubles(path, std::string("train/") + col).size() == size_t(kTrain));
  int bad = 0;
  for (int i = 0; i < kTrain; ++i) {
    bad += step[i] != i + 1;
    bad += loss[i] != train_loss(i);
    bad += lrs[i] != 1e-3 * (i + 1) / kTrain;
    bad += wall[i] != 0.25 * i;
  }
  CHECK(bad == 0);
  CHECK(mue::dataset_shape(path, "train/loss") == std::vector<uint64_t>{uint64_t(kTrain)});

  CHECK(mue::read_doubles(path, "val/step") == std::vector<double>{1000, 2000});
  CHECK(mue::read_doubles(path, "val/loss") == std::vector<double>{3.0 - 999 * 1e-4, 3.0 - 1999 * 1e-4});

  // 2-D rows.
  CHECK(mue::dataset_shape(path, "router/load") == std::vector<uint64_t>{5, 4});
  std::vector<double> want;
  for (int i = 0; i < 5; ++i)
    for (double v : {0.1 * i, 0.2, 0.3, 0.4 - 0.1 * i}) want.push_back(v);
  CHECK(mue::read_doubles(path, "router/load") == want);

  CHECK(mue::list_datasets(path, "/") == std::vector<std::string>{});  // only groups at the root
  CHECK_THROWS_WITH(mue::read_doubles(path, "train/nope"), HasText("no dataset 'train/nope'"));
  CHECK_THROWS_WITH(mue::read_doubles(path, "nogroup/x/y"), HasText(path));
  CHECK_THROWS_WITH(mue::read_doubles(path, "param_table/name"), HasText("not numeric"));
  CHECK_THROWS_WITH(mue::read_strings(path, "train/loss"), HasText("not a string dataset"));
  CHECK_THROWS_WITH(mue::list_datasets(path, "nogroup"), HasText("no group 'nogroup'"));
}

TEST_CASE("run log columns stay equal length when a row leaves one out", "[h5]") {
  TempDir tmp("ragged");
  const std::string path = tmp.file("r.h5");
  {
    auto log = mue::RunLog::create(path);
    log.append("g", {{"a", 1}, {"b", 2}});
    log.append("g", {{"a", 3}});                      // b -> NaN
    log.append("g", {{"a", 5}, {"b", 6}, {"c", 7}});  // c new: NaN for rows 0, 1
    CHECK_THROWS_WITH(log.append("g", {{"a", 1}, {"a", 2}}), HasText("twice"));
    CHECK_THROWS_WITH(log.append("g", {{"x/y", 1}}), HasText("bad column name"));
    CHECK_THROWS_AS(log.append("", {{"a", 1}}), mue::Error);
    CHECK_THROWS_AS(log.append("g", {}), mue::Error);
  }  // destructor closes
  CHECK(mue::read_doubles(path, "g/a") == std::vector<double>{1, 3, 5});
  const auto b = mue::read_doubles(path, "g/b"), c = mue::read_doubles(path, "g/c");
  REQUIRE(b.size() == 3);
  REQUIRE(c.size() == 3);
  CHECK((b[0] == 2 && std::isnan(b[1]) && b[2] == 6));
  CHECK((std::isnan(c[0]) && std::isnan(c[1]) && c[2] == 7));
}

TEST_CASE("run log flushed but never closed is readable and says running", "[h5]") {
  TempDir tmp("crash");
  const std::string path = tmp.file("crash.h5");
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {  // child: write, flush, die without closing anything
    try {
      auto log = mue::RunLog::create(path);
      log.set_attr("status", std::string("running"));
      log.set_attr("finished", std::string(""));
      log.write_param_table({{"w", "4x4", "zeros", 0.0, 1.0, 1e-3, 0.0, 1e-8}});
      for (int i = 0; i < 1500; ++i) {
        log.append("train", {{"step", i + 1}, {"loss", 1.0 / (i + 1)}});
        log.append_row("router/load", {double(i), double(-i)});
      }
      log.flush();
      ::_exit(0);
    } catch (...) {
      ::_exit(3);
    }
  }
  int st = 0;
  REQUIRE(::waitpid(pid, &st, 0) == pid);
  REQUIRE(WIFEXITED(st));
  REQUIRE(WEXITSTATUS(st) == 0);
  REQUIRE(mue::is_hdf5(path));
  CHECK(mue::read_string_attr(path, "status") == "running");
  CHECK(mue::read_string_attr(path, "finished") == "");
  CHECK(mue::read_strings(path, "param_table/init") == std::vector<std::string>{"zeros"});
  const auto step = mue::read_doubles(path, "train/step"), loss = mue::read_doubles(path, "train/loss");
  REQUIRE(step.size() == 1500);
  REQUIRE(loss.size() == 1500);
  int bad = 0;
  for (int i = 0; i < 1500; ++i) bad += step[i] != i + 1 || loss[i] != 1.0 / (i + 1);
  CHECK(bad == 0);
  CHECK(mue::dataset_shape(path, "router/load") == std::vector<uint64_t>{1500, 2});
  const auto load = mue::read_doubles(path, "router/load");
  CHECK(load[2 * 1499] == 1499.0);
  CHECK(load[2 * 1499 + 1] == -1499.0);
}

TEST_CASE("run log errors name the problem and the file", "[h5]") {
  TempDir tmp("errors");
  SECTION("missing folder") {
    const std::string bad = "/nonexistent_dir/x.h5";
    CHECK_THROWS_WITH(mue::RunLog::create(bad), HasText(bad) && HasText("does not exist"));
    const std::string nested = tmp.file("no/such/dir/run.h5");
    CHECK_THROWS_WITH(mue::RunLog::create(nested), HasText(nested));
  }
  SECTION("path is a folder") {
    CHECK_THROWS_WITH(mue::RunLog::create(tmp.path.string()), HasText(tmp.path.string()));
  }
  SECTION("append_row width mismatch") {
    const std::string path = tmp.file("w.h5");
    auto log = mue::RunLog::create(path);
    log.append_row("router/load", {1, 2, 3});
    const std::string msg = error_of([&] { log.append_row("router/load", {1, 2}); });
    CHECK_THAT(msg, HasText("router/load") && HasText("width 3") && HasText(path));
    CHECK_THROWS_AS(log.append_row("router/load", {}), mue::Error);
    log.append_row("/router/load/", {4, 5, 6});  // same dataset, still writable
    log.append("router", {{"step", 1}});
    CHECK_THROWS_WITH(log.append("router", {{"load", 1}}), HasText("2-D"));
    CHECK_THROWS_WITH(log.append_row("router/step", {1}), HasText("append() column"));
    log.close();
    CHECK(mue::read_doubles(path, "router/load") == std::vector<double>{1, 2, 3, 4, 5, 6});
  }
  SECTION("readers") {
    const std::string missing = tmp.file("missing.h5");
    CHECK_FALSE(mue::read_string_attr(missing, "status").has_value());
    CHECK_FALSE(mue::is_hdf5(missing));
    CHECK_THROWS_WITH(mue::read_doubles(missing, "train/loss"), HasText(missing) && HasText("does not exist"));

    const std::string text = tmp.file("notes.h5");
    std::ofstream(text) << "this is not HDF5\n";
    CHECK_FALSE(mue::is_hdf5(text));
    CHECK_FALSE(mue::is_hdf5(tmp.path.string()));
    const std::string msg = error_of([&] { mue::read_string_attr(text, "status"); });
    CHECK_THAT(msg, HasText(text) && HasText("is not an HDF5 file"));
    CHECK(msg.find('\n') == std::string::npos);
    CHECK_THROWS_WITH(mue::list_datasets(text, "/"), HasText("is not an HDF5 file"));
  }
  SECTION("create truncates an existing file") {
    const std::string path = tmp.file("t.h5");
    {
      auto log = mue::RunLog::create(path);
      log.set_attr("status", std::string("completed"));
      log.append("train", {{"loss", 1}});
    }
    {
      auto log = mue::RunLog::create(path);
      log.set_attr("status", std::string("running"));
    }
    CHECK(mue::read_string_attr(path, "status") == "running");
    CHECK_THROWS_WITH(mue::list_datasets(path, "train"), HasText("no group 'train'"));
  }
  SECTION("move-only handle") {
    const std::string path = tmp.file("m.h5");
    auto a = mue::RunLog::create(path);
    mue::RunLog b = std::move(a);
    CHECK_FALSE(a.is_open());
    CHECK_THROWS_WITH(a.flush(), HasText("moved-from"));
    b.append("val", {{"loss", 2.5}});
    b.close();
    CHECK(mue::read_doubles(path, "val/loss") == std::vector<double>{2.5});
  }
}

TEST_CASE("a second writer of a live run file is refused before it truncates anything", "[h5]") {
  TempDir d("h5");
  const std::string p = d / "live.h5";
  mue::RunLog first = mue::RunLog::create(p);
  first.set_attr("status", "running");
  first.append("train", {{"step", 1}, {"loss", 2.5}});
  first.flush();
  const auto size = std::filesystem::file_size(p);
  CHECK(mue::file_in_use(p));
  CHECK(error_of([&] { mue::RunLog::create(p); }).find("is in use by another process") != std::string::npos);
  CHECK(std::filesystem::file_size(p) == size);  // not truncated
  first.append("train", {{"step", 2}, {"loss", 2.0}});
  first.set_attr("status", "completed");
  first.close();
  CHECK(!mue::file_in_use(p));
  CHECK(mue::read_doubles(p, "train/step") == std::vector<double>{1, 2});
  CHECK(mue::read_string_attr(p, "status").value() == "completed");
  mue::RunLog again = mue::RunLog::create(p);  // free once the first writer closed
  again.close();
  CHECK(!mue::file_in_use(d / "nothing.h5"));
}
