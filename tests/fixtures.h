// Test fixtures shared by the end-to-end tests: a temporary folder per test and a small learnable token file.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "data/tokens.h"
#include "experiments/show.h"

namespace mue::test {

// A fresh folder under the system temp dir (tag_pid_n), removed with everything in it at the end.
struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& tag) {
    static int n = 0;
    path = std::filesystem::temp_directory_path() / ("mue_" + tag + "_" + std::to_string(::getpid()) + "_" +
                                                     std::to_string(n++));
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string operator/(const std::string& f) const { return (path / f).string(); }
  std::string file(const std::string& f) const { return *this / f; }
};

// The message of the mue::Error that f throws, or "<no mue::Error>".
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no mue::Error>";
}

// What `mue show PATH [--json] [--rows N]` prints.
inline std::string shown(const std::string& path, bool json = false, int rows = 10) {
  std::FILE* f = std::tmpfile();
  MUE_CHECK(f, "cannot create a temporary file");
  struct Closer {
    std::FILE* f;
    ~Closer() { std::fclose(f); }
  } closer{f};
  show_file(path, json, rows, f);
  std::rewind(f);
  std::string s;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) s.append(buf, n);
  return s;
}

// The overrides of a tiny MoE LM run named `name` on the CPU, on the token file `tok`, into d: 30 steps, a log row
// every 10, evaluations at 15 and 30.
inline std::vector<std::string> tiny_moe_run(const TempDir& d, const std::string& tok, const std::string& name) {
  return {"name=" + name, "model.vocab=97", "model.vocab_pad=128", "model.d_model=32", "model.n_heads=2",
          "model.seq_len=16", "ffn.type=moe", "ffn.shape=4e2a", "ffn.expert_hidden=16", "train.batch=4",
          "train.steps=30", "train.log_every=10", "train.eval_every=15", "train.eval_batches=2", "train.device=cpu",
          "rule=complete-mue", "reference.ffn_hidden=64", "data.tokens=" + tok, "out.dir=" + d.path.string()};
}

// d/toy.tok with a learnable pattern: each token is (previous * 5 + 1) mod 97 most of the time; vocab 97.
inline std::string make_toy_tokens(const TempDir& d) {
  std::vector<uint16_t> train(20000), val(3000);
  uint16_t cur = 0;
  for (size_t i = 0; i < train.size() + val.size(); ++i) {
    cur = rng_uniform(3, 0, i) < 0.9 ? uint16_t((cur * 5 + 1) % 97) : uint16_t(rng_index(4, 0, i, 97));
    (i < train.size() ? train[i] : val[i - train.size()]) = cur;
  }
  std::string p = d / "toy.tok";
  write_token_file(p, train, val, R"({"corpus": "synthetic test"})", 97);
  return p;
}

}  // namespace mue::test
