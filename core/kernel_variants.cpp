#include "core/kernel_variants.h"

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <set>
#include <string_view>
#include <utility>

#include "core/error.h"

namespace mue {

namespace {

// The whole of `s` as an int, or false.
bool parse_int(std::string_view s, int& out) {
  const char* end = s.data() + s.size();
  const auto r = std::from_chars(s.data(), end, out);
  return !s.empty() && r.ec == std::errc() && r.ptr == end;
}

// "a,b" with a in [0, na) and b in [0, nb), or false.
bool parse_pair(std::string_view s, int na, int nb, int& a, int& b) {
  const size_t comma = s.find(',');
  return comma != std::string_view::npos && parse_int(s.substr(0, comma), a) && parse_int(s.substr(comma + 1), b) &&
         a >= 0 && a < na && b >= 0 && b < nb;
}

const KernelVariants*& scoped_slot() {
  static const KernelVariants* scoped = nullptr;
  return scoped;
}

KernelVariants from_environment() {
  // The variables MUE_KERNEL_VARIANTS replaced: silently ignoring one would time the default under its name.
  static constexpr std::pair<const char*, const char*> kReplaced[] = {
      {"MUE_FLASH_SM90", "flash_sm90=0"},         {"MUE_FLASH_SM90_TILES", "flash_sm90_tiles=f,b"},
      {"MUE_EXPERT_TILE", "expert_tile=r,w"},     {"MUE_EXPERT_GRID", "expert_grid=n"},
      {"MUE_GATHER_ROWS", "gather_rows=n"},       {"MUE_GATE_LANES", "gate_lanes=n"},
      {"MUE_EAGER_ZERO_GRAD", "eager_zero_grad=1"}};
  for (const auto& [name, item] : kReplaced)
    MUE_CHECK(!std::getenv(name), name, " is no longer read: set MUE_KERNEL_VARIANTS=\"", item,
              "\" instead (core/kernel_variants.h)");
  for (const char* name : {"MUE_FLASH_ATTENTION", "MUE_GROUPED_GEMM"})
    MUE_CHECK(!std::getenv(name), name, " is no longer read: that variant lost and was removed (bench/RESULTS.md)");
  const char* spec = std::getenv("MUE_KERNEL_VARIANTS");
  return spec ? parse_kernel_variants(spec, "MUE_KERNEL_VARIANTS") : KernelVariants{};
}

}  // namespace

KernelVariants parse_kernel_variants(const std::string& spec, const std::string& source) {
  KernelVariants v;
  std::set<std::string, std::less<>> seen;
  size_t i = 0;
  while (i < spec.size()) {
    const size_t end = std::min(spec.find_first_of(" \t;", i), spec.size());
    const std::string_view item = std::string_view(spec).substr(i, end - i);
    i = end + 1;
    if (item.empty()) continue;
    const size_t eq = item.find('=');
    MUE_CHECK(eq != std::string_view::npos, source, ": \"", item, "\" is not key=value");
    const std::string_view key = item.substr(0, eq), value = item.substr(eq + 1);
    MUE_CHECK(seen.insert(std::string(key)).second, source, ": ", key, " is given twice");
    int n = 0;
    if (key == "flash_sm90") {
      MUE_CHECK(value == "0" || value == "1", source, ": flash_sm90 must be 0 or 1, got \"", value, "\"");
      v.flash_sm90 = value == "1";
    } else if (key == "flash_sm90_tiles") {
      MUE_CHECK(parse_pair(value, KernelVariants::kFlashSm90ForwardTiles, KernelVariants::kFlashSm90DkdvTiles,
                           v.flash_sm90_forward, v.flash_sm90_dkdv),
                source, ": flash_sm90_tiles must be \"f,b\" with f in [0, ", KernelVariants::kFlashSm90ForwardTiles,
                "), b in [0, ", KernelVariants::kFlashSm90DkdvTiles, "), got \"", value, "\"");
    } else if (key == "expert_tile") {
      MUE_CHECK(parse_pair(value, KernelVariants::kExpertTileConfigs, KernelVariants::kExpertTileConfigs,
                           v.expert_tile_rows, v.expert_tile_dw),
                source, ": expert_tile must be \"r,w\" with r, w in [0, ", KernelVariants::kExpertTileConfigs,
                "), got \"", value, "\"");
    } else if (key == "expert_grid") {
      MUE_CHECK(parse_int(value, n) && n > 0, source, ": expert_grid must be a positive block count, got \"", value,
                "\"");
      v.expert_grid = n;
    } else if (key == "gather_rows") {
      MUE_CHECK(parse_int(value, n) && (n == 1 || n == 2 || n == 4 || n == 8), source,
                ": gather_rows must be 1, 2, 4 or 8, got \"", value, "\"");
      v.gather_rows = n;
    } else if (key == "gate_lanes") {
      MUE_CHECK(value == "fit" || (parse_int(value, n) && (n == 4 || n == 8 || n == 16 || n == 32)), source,
                ": gate_lanes must be 4, 8, 16, 32 or fit, got \"", value, "\"");
      v.gate_lanes = value == "fit" ? 0 : n;
    } else if (key == "fused_head") {
      MUE_CHECK(value.size() == 1 && value[0] >= '0' && value[0] <= '5', source,
                ": fused_head must be 0, 1, 2, 3, 4 or 5, got \"", value, "\"");
      v.fused_head = value[0] - '0';
    } else if (key == "eager_zero_grad") {
      MUE_CHECK(value == "0" || value == "1", source, ": eager_zero_grad must be 0 or 1, got \"", value, "\"");
      v.eager_zero_grad = value == "1";
    } else {
      fail(source, ": unknown kernel variant \"", key,
           "\" (known: flash_sm90, flash_sm90_tiles, expert_tile, expert_grid, gather_rows, gate_lanes, "
           "fused_head, eager_zero_grad)");
    }
  }
  return v;
}

const KernelVariants& kernel_variants() {
  if (const KernelVariants* scoped = scoped_slot()) return *scoped;
  static const KernelVariants from_env = from_environment();
  return from_env;
}

ScopedKernelVariants::ScopedKernelVariants(const KernelVariants& v) : mine_(v), previous_(scoped_slot()) {
  scoped_slot() = &mine_;
}
ScopedKernelVariants::ScopedKernelVariants(const std::string& spec)
    : ScopedKernelVariants(parse_kernel_variants(spec)) {}
ScopedKernelVariants::~ScopedKernelVariants() { scoped_slot() = previous_; }

}  // namespace mue
