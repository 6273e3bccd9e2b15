// The kernel-variant registry (core/kernel_variants.h): its syntax, its one-line errors, scoping, and the
// environment variables it replaced.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/kernel_variants.h"
#include "tests/catch.h"

using namespace mue;

TEST_CASE("kernel variants: an empty spec is every kernel's default", "[variants]") {
  for (const char* spec : {"", " ", ";;", " \t "}) {
    const KernelVariants v = parse_kernel_variants(spec);
    CHECK(v.flash_sm90);
    CHECK(v.flash_sm90_forward == -1);
    CHECK(v.flash_sm90_dkdv == -1);
    CHECK(v.expert_tile_rows == -1);
    CHECK(v.expert_tile_dw == -1);
    CHECK(v.expert_grid == 0);
    CHECK(v.gather_rows == 0);
    CHECK(v.gate_lanes == 0);
    CHECK(v.fused_head == -1);
    CHECK(!v.eager_zero_grad);
  }
}

TEST_CASE("kernel variants: every key, separated by spaces or ';'", "[variants]") {
  const KernelVariants v = parse_kernel_variants(
      "flash_sm90=0 flash_sm90_tiles=3,4;expert_tile=11,0  expert_grid=3\tgather_rows=8;gate_lanes=16 "
      "fused_head=0 eager_zero_grad=1");
  CHECK(!v.flash_sm90);
  CHECK(v.flash_sm90_forward == 3);
  CHECK(v.flash_sm90_dkdv == 4);
  CHECK(v.expert_tile_rows == 11);
  CHECK(v.expert_tile_dw == 0);
  CHECK(v.expert_grid == 3);
  CHECK(v.gather_rows == 8);
  CHECK(v.gate_lanes == 16);
  CHECK(v.fused_head == 0);
  CHECK(parse_kernel_variants("fused_head=1").fused_head == 1);
  CHECK(parse_kernel_variants("fused_head=2").fused_head == 2);
  CHECK(parse_kernel_variants("fused_head=3").fused_head == 3);
  CHECK(parse_kernel_variants("fused_head=4").fused_head == 4);
  CHECK(parse_kernel_variants("fused_head=5").fused_head == 5);
  CHECK(v.eager_zero_grad);
  CHECK(!parse_kernel_variants("eager_zero_grad=0").eager_zero_grad);
  CHECK(parse_kernel_variants("flash_sm90=1").flash_sm90);
  CHECK(parse_kernel_variants("gate_lanes=fit").gate_lanes == 0);
  for (int n : {1, 2, 4, 8}) CHECK(parse_kernel_variants("gather_rows=" + std::to_string(n)).gather_rows == n);
  for (int n : {4, 8, 32}) CHECK(parse_kernel_variants("gate_lanes=" + std::to_string(n)).gate_lanes == n);
}

TEST_CASE("kernel variants: a bad item is a one-line error naming it", "[variants]") {
  const auto fails_with = [](const std::string& spec, const std::string& text) {
    INFO("spec: " << spec);
    CHECK_THROWS_WITH(parse_kernel_variants(spec, "MUE_KERNEL_VARIANTS"),
                      HasText("MUE_KERNEL_VARIANTS: ") && HasText(text));
  };
  const std::string past_last = std::to_string(KernelVariants::kExpertTileConfigs);
  const std::vector<std::string> bad_tiles = {past_last + ",0", "0," + past_last, "0", "a,b", "-1,0", "1,2,3", ""};
  for (const std::string& bad : bad_tiles) fails_with("expert_tile=" + bad, "expert_tile must be");
  for (const char* bad : {"0", "x", "-2", "3x", ""}) fails_with(std::string("expert_grid=") + bad, "expert_grid must be");
  for (const char* bad : {"4,0", "0,5", "-1,0", "x", "1"})
    fails_with(std::string("flash_sm90_tiles=") + bad, "flash_sm90_tiles must be");
  for (const char* bad : {"2", "yes", ""}) fails_with(std::string("flash_sm90=") + bad, "flash_sm90 must be 0 or 1");
  for (const char* bad : {"0", "3", "16", "x"}) fails_with(std::string("gather_rows=") + bad, "gather_rows must be");
  for (const char* bad : {"2", "64", "warp"}) fails_with(std::string("gate_lanes=") + bad, "gate_lanes must be");
  for (const char* bad : {"yes", "-1", "", "6", "12"})
    fails_with(std::string("fused_head=") + bad, "fused_head must be 0, 1, 2, 3, 4 or 5");
  for (const char* bad : {"yes", "2"}) fails_with(std::string("eager_zero_grad=") + bad, "eager_zero_grad must be 0 or 1");
  fails_with("expert_tiles=1,1", "unknown kernel variant \"expert_tiles\"");
  fails_with("gather_rows", "\"gather_rows\" is not key=value");
  fails_with("gather_rows=2 gather_rows=4", "gather_rows is given twice");
}

TEST_CASE("kernel variants: a scope replaces the current set and restores it", "[variants]") {
  const KernelVariants before = kernel_variants();
  {
    const ScopedKernelVariants outer("expert_tile=3,4");
    CHECK(kernel_variants().expert_tile_rows == 3);
    {
      const ScopedKernelVariants inner("gather_rows=2");
      CHECK(kernel_variants().gather_rows == 2);
      CHECK(kernel_variants().expert_tile_rows == -1);  // a scope is a whole set, not a patch on the outer one
    }
    CHECK(kernel_variants().expert_tile_rows == 3);
    CHECK(kernel_variants().gather_rows == 0);
  }
  CHECK(kernel_variants().expert_tile_rows == before.expert_tile_rows);
  CHECK(kernel_variants().gather_rows == before.gather_rows);
}

TEST_CASE("kernel variants: the replaced environment variables are refused by name", "[variants][cli]") {
  // In a child process, so that this process's registry (read once) is not touched; the config is bad too, so a
  // run that missed the variable stops at once with another message.
  const std::string mue = MUE_BINARY;
  struct Case {
    const char* env;
    const char* text;
  };
  for (const Case c : {Case{"MUE_EXPERT_TILE=10,9", "MUE_EXPERT_TILE is no longer read"},
                       Case{"MUE_GROUPED_GEMM=0", "MUE_GROUPED_GEMM is no longer read"},
                       Case{"MUE_EAGER_ZERO_GRAD=1", "MUE_EAGER_ZERO_GRAD is no longer read"},
                       Case{"MUE_KERNEL_VARIANTS=expert_tile=99,0", "MUE_KERNEL_VARIANTS: expert_tile must be"}}) {
    INFO(c.env);
    const std::string out = "/tmp/mue_test_variants_" + std::to_string(::getpid()) + ".txt";
    const std::string cmd = std::string("env ") + c.env + " " + mue + " train model.d_model=-1 > " + out + " 2>&1";
    CHECK(std::system(cmd.c_str()) != 0);
    std::string text;
    if (FILE* f = std::fopen(out.c_str(), "r")) {
      char buf[4096];
      while (size_t n = std::fread(buf, 1, sizeof buf, f)) text.append(buf, n);
      std::fclose(f);
    }
    std::remove(out.c_str());
    CHECK_THAT(text, HasText(c.text));
  }
}
