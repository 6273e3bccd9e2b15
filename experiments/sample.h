// `mue sample RUN.h5`: rebuild the run's DiT from the config stored in its log, load its checkpoint, and draw
// a class-conditional grid with the Euler sampler.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace mue {

struct SampleOptions {
  std::string run, out;
  int per_class = 8, steps = 0;  // 0: the run's image.sample_steps
  double guidance = -1;          // < 0: the run's image.guidance
  uint64_t seed = 1;
  std::string device = "auto";
};

// Returns the images [classes * per_class, C, S, S] (row c of the grid is class c) and writes the PNG.
std::vector<double> sample_grid(const SampleOptions& o);

}  // namespace mue
