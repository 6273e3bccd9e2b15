// The default job (scripts/quickstart.sh): its two sweep specs form a transfer experiment, the vocabulary cap
// (scripts/cap_vocab.py) maps tokens as documented, and transfer_table.py --curves prints loss per LR, the fitted
// optimum and its shift from the proxy. The Python parts need a python3 with numpy and h5py.
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>

#include "data/tokens.h"
#include "experiments/run_config.h"
#include "experiments/sweep.h"
#include "tests/catch.h"
#include "tests/fixtures.h"

namespace fs = std::filesystem;
using namespace mue;
using namespace mue::test;
using ojson = nlohmann::ordered_json;

namespace {

const fs::path kSource = MUE_SOURCE_DIR;

struct Out {
  int rc;
  std::string text;
};

// Runs a shell command, stdout and stderr together.
Out shell(const std::string& cmd) {
  std::string text;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  REQUIRE(p);
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) text.append(buf, n);
  const int st = ::pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, text};
}

// The python3 the quickstart would use (the distribution's first), or "" when none has numpy and h5py.
std::string python_with_numpy() {
  for (const char* py : {"/usr/bin/python3", "python3"})
    if (shell(std::string("command -v ") + py + " >/dev/null && " + py + " -c 'import numpy, h5py'").rc == 0) return py;
  return "";
}

std::string axis_values(const SweepSpec& s, const std::string& key) {
  for (auto& [k, v] : s.axes)
    if (k == key) return ojson(v).dump();
  return "";
}

}  // namespace

TEST_CASE("quickstart: the specs are a dense proxy and MoE shapes on one LR grid under complete-mue", "[quickstart]") {
  const fs::path dir = kSource / "experiments/sweeps/quickstart";
  SweepSpec proxy = load_sweep_spec((dir / "quickstart-proxy.json").string());
  SweepSpec moe = load_sweep_spec((dir / "quickstart-moe.json").string());
  for (const SweepSpec* s : {&proxy, &moe}) {
    INFO(s->name);
    CHECK(s->out_dir == "runs/quickstart");  // scripts/quickstart.sh reads the indexes there
    CHECK(!s->comment.empty());
    CHECK(axis_values(*s, "rule") == R"(["complete-mue"])");
    CHECK_NOTHROW(validate_points(*s, expand_grid(*s), false));
  }
  // The same LR grid, wide enough for a fitted optimum inside it (>= 4 points, octaves apart).
  const std::string grid = axis_values(proxy, "hp.lr");
  CHECK(grid == axis_values(moe, "hp.lr"));
  CHECK(ojson::parse(grid).size() >= 4);
  CHECK(axis_values(moe, "ffn.shape") == R"(["8e2a","8e8a"])");

  std::vector<SweepPoint> pp = expand_grid(proxy), mp = expand_grid(moe);
  const RunConfig p = resolve_config(proxy.base, pp.front().overrides);
  CHECK(p.model.ffn.type == "dense");
  std::set<std::string> shapes;
  for (auto& pt : mp) {
    const RunConfig m = resolve_config(moe.base, pt.overrides);
    shapes.insert(std::to_string(m.model.ffn.experts) + "e" + std::to_string(m.model.ffn.active) + "a");
    CHECK(m.model.ffn.type == "moe");
    // Transferred from the proxy: the reference is the proxy's FFN, and everything but the FFN and LR is equal.
    CHECK(m.reference.ffn_hidden == p.model.ffn_hidden);
    CHECK(m.model.d_model == p.model.d_model);
    CHECK(m.model.n_layers == p.model.n_layers);
    CHECK(m.model.seq_len == p.model.seq_len);
    CHECK(m.model.vocab == p.model.vocab);
    CHECK(m.train.batch == p.train.batch);
    CHECK(m.train.steps == p.train.steps);
    CHECK(m.data_tokens == p.data_tokens);
  }
  CHECK(shapes == std::set<std::string>{"8e2a", "8e8a"});
  // The vocabulary cap the script writes (data-cache/linux-doc-v4096.tok) is the one the models read.
  CHECK(p.data_tokens == "data-cache/linux-doc-v4096.tok");
  CHECK(p.model.vocab == 4096);
  const std::string script = [] {
    std::ifstream in(kSource / "scripts/quickstart.sh");
    return std::string((std::istreambuf_iterator<char>(in)), {});
  }();
  CHECK_THAT(script, HasText("--out data-cache/linux-doc.tok"));
  CHECK_THAT(script, HasText("cap_vocab.py data-cache/linux-doc.tok data-cache/linux-doc-v4096.tok --vocab 4096"));
}

TEST_CASE("quickstart: cap_vocab.py keeps the most frequent training tokens and maps the rest to one", "[quickstart]") {
  const std::string py = python_with_numpy();
  if (py.empty()) {
    WARN("no python3 with numpy and h5py: cap_vocab.py not tested");
    return;
  }
  TempDir d("capvocab");
  // Training counts: 7 x5, 3 x4, 9 x3, 1 and 2 once each (a tie, broken by id), 11 never.
  const std::vector<uint16_t> train = {7, 3, 9, 7, 3, 9, 7, 3, 9, 7, 3, 7, 2, 1};
  const std::vector<uint16_t> val = {9, 2, 7, 11, 3};
  write_token_file(d / "in.tok", train, val, R"({"corpus": "test"})", 12);
  const std::string cmd = py + " " + (kSource / "scripts/cap_vocab.py").string() + " " + (d / "in.tok") + " ";

  Out r = shell(cmd + (d / "out.tok") + " --vocab 4");
  INFO(r.text);
  REQUIRE(r.rc == 0);
  CHECK_THAT(r.text, HasText("vocabulary 4 (of 12)"));
  CHECK_THAT(r.text, HasText("40.0% of the validation tokens are the rare token"));  // 2 and 11 of 5
  TokenFile out = TokenFile::open(d / "out.tok");  // the C++ reader accepts it (layout, alignment, ids < vocab)
  CHECK(out.vocab_size() == 4);
  std::vector<uint16_t> out_train, out_val;
  for (uint64_t i = 0; i < out.n_train(); ++i) out_train.push_back(out.train_token(i));
  for (uint64_t i = 0; i < out.n_val(); ++i) out_val.push_back(out.val_token(i));
  // 7 -> 0, 3 -> 1, 9 -> 2, every other id -> 3 (the rare token).
  CHECK(out_train == std::vector<uint16_t>{0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 0, 3, 3});
  CHECK(out_val == std::vector<uint16_t>{2, 3, 0, 3, 1});
  const ojson src = ojson::parse(out.sources());
  CHECK(src["vocab_cap"]["kept_ids"] == ojson::parse("[7, 3, 9]"));
  CHECK(src["vocab_cap"]["rare_token"] == 3);
  CHECK(src["capped_from"]["sources"]["corpus"] == "test");

  // Bad input: one line naming the problem, and nothing written.
  r = shell(cmd + (d / "bad.tok") + " --vocab 13");
  CHECK(r.rc != 0);
  CHECK_THAT(r.text, HasText("--vocab 13: must be in 2 .. 12"));
  CHECK(!fs::exists(d / "bad.tok"));
  std::ofstream(d / "junk.tok") << "not a token file";
  r = shell(py + " " + (kSource / "scripts/cap_vocab.py").string() + " " + (d / "junk.tok") + " " + (d / "x.tok") +
            " --vocab 4");
  CHECK(r.rc != 0);
  CHECK_THAT(r.text, HasText("not a mue token file"));
}

TEST_CASE("quickstart: transfer_table.py --curves gives loss per LR, fitted optimum and shift from the proxy",
          "[quickstart]") {
  const std::string py = python_with_numpy();
  if (py.empty()) {
    WARN("no python3 with numpy and h5py: transfer_table.py --curves not tested");
    return;
  }
  TempDir d("curves");
  // Results files (results_bundle.py's format) whose losses are parabolas in log2 LR: the fit finds each vertex.
  auto results = [&](const std::string& name, const std::vector<std::pair<std::string, double>>& confs) {
    ojson pts = ojson::array();
    ojson axes = confs.front().first.empty() ? ojson{"rule", "hp.lr"} : ojson{"rule", "ffn.shape", "hp.lr"};
    for (auto& [shape, vertex] : confs)
      for (int k = -9; k <= -5; ++k) {
        ojson coords = {{"rule", "complete-mue"}, {"hp.lr", std::ldexp(1.0, k)}};
        if (!shape.empty()) coords["ffn.shape"] = shape;
        const double loss = (k - vertex) * (k - vertex) + 3.0;
        const bool diverged = shape == "8e8a" && k == -5;  // a gap at the grid's far end leaves the fit alone
        pts.push_back({{"index", pts.size()}, {"name", name + std::to_string(pts.size())}, {"coords", coords},
                       {"status", diverged ? "diverged" : "completed"}, {"final_train_loss", loss},
                       {"final_val_loss", diverged ? ojson(nullptr) : ojson(loss)}, {"best_val_loss", loss},
                       {"steps", 200}});
      }
    std::ofstream(d / (name + ".json")) << ojson{{"format", "mue-sweep-results/1"}, {"name", name}, {"axes", axes},
                                                 {"spec", ojson::object()}, {"points", pts}}.dump();
    return d / (name + ".json");
  };
  const std::string proxy = results("proxy", {{"", -7.0}});
  const std::string moe = results("moe", {{"8e2a", -6.6}, {"8e8a", -7.25}, {"64e64a", -9.5}});
  const Out r = shell(py + " " + (kSource / "experiments/figures/transfer_table.py").string() + " " + moe +
                      " --proxy " + proxy + " --curves");
  INFO(r.text);
  REQUIRE(r.rc == 0);
  CHECK_THAT(r.text, HasText("| rule | ffn.shape | LR 2^-9 | LR 2^-8 | LR 2^-7 | LR 2^-6 | LR 2^-5 | fitted optimum "
                             "| shift from proxy |"));
  CHECK_THAT(r.text, HasText("| complete-mue | dense proxy | 7.000 | 4.000 | 3.000* | 4.000 | 7.000 | 2^-7.00 | "
                             "0 (reference) |"));
  CHECK_THAT(r.text, HasText("| complete-mue | 8e2a | 8.760 | 4.960 | 3.160* | 3.360 | 5.560 | 2^-6.60 | "
                             "+0.40 octaves |"));
  CHECK_THAT(r.text, HasText("| complete-mue | 8e8a | 6.062 | 3.562 | 3.062* | 4.562 | diverged | 2^-7.25 | "
                             "-0.25 octaves |"));
  // Best point at the grid's edge: the grid value, flagged, and its shift is a bound, not a measurement.
  CHECK_THAT(r.text, HasText("| complete-mue | 64e64a | 3.250* | 5.250 | 9.250 | 15.250 | 23.250 | "
                             "2^-9.00 (low edge: extend the grid) | -2.00 octaves |"));
}
