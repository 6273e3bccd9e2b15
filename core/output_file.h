// Output paths: a command replaces an existing file only when it is one of that command's own outputs (or empty),
// so that a mistyped --out never destroys a run, a checkpoint or a data set.
#pragma once
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>

#include "core/error.h"

namespace mue {

// Whether the file at `path` begins with the bytes `magic`.
inline bool file_starts_with(const std::string& path, std::string_view magic) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return false;
  std::string head(magic.size(), '\0');
  const bool ok = std::fread(head.data(), 1, head.size(), f) == head.size() && head == magic;
  std::fclose(f);
  return ok;
}

// Fails (one line) unless `path` is absent, empty, or `own_kind(path)` says it is `what` (an earlier output of
// the same kind, which may be replaced).
template <class Pred>
void check_replaceable(const std::string& path, const char* what, Pred own_kind) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(path, ec)) return;
  MUE_CHECK(fs::is_regular_file(path, ec), "output '", path, "' exists and is not a regular file");
  if (fs::file_size(path, ec) == 0) return;
  MUE_CHECK(own_kind(path), "output '", path, "' exists and is not ", what, "; not overwriting it");
}

}  // namespace mue
