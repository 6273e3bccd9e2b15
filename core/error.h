// Errors: every bad input becomes a mue::Error with one line naming the problem; the CLI prints it and exits 1.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace mue {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class... Args>
[[noreturn]] inline void fail(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  throw Error(os.str());
}

}  // namespace mue

#define MUE_CHECK(cond, ...)                  \
  do {                                        \
    if (!(cond)) ::mue::fail(__VA_ARGS__);    \
  } while (0)
