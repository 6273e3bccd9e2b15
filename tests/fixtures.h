// Test fixtures shared by the end-to-end tests: a temporary folder per test and a small learnable token file.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "data/tokens.h"

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
