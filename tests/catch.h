// One include for Catch2 v2 (Debian 12) and v3 (Ubuntu 24.04).
#pragma once
#if __has_include(<catch2/catch_test_macros.hpp>)
#include <catch2/catch_approx.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
using Catch::Approx;
// Substring matcher: ContainsSubstring in v3, Contains in v2.
inline auto HasText(const std::string& s) { return Catch::Matchers::ContainsSubstring(s); }
#else
#include <catch2/catch.hpp>
inline auto HasText(const std::string& s) { return Catch::Matchers::Contains(s); }
#endif
