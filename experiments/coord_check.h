// Coordinate check (the microsoft/mup habit): train a few steps at several widths or MoE shapes under one rule
// and record, per layer and step, the RMS of activations and of their change since initialisation (what the
// updates did, ΔW·x), plus the router logits. Under a correct rule these stay flat across widths and shapes.
#pragma once
#include <string>
#include <vector>

#include "experiments/run_config.h"

namespace mue {

struct CoordPoint {
  std::string label;  // "d=256" or "64e8a"
  double x = 0;       // the abscissa of the plot: width, or activated experts
  ModelConfig model;
};

struct CoordRow {
  int point = 0, step = 0, layer = -1;  // layer -1: the whole model (logits)
  std::string quantity;                  // attn_out, ffn_out, block_out, logits, router_logits
  double rms = 0, delta_rms = 0;         // RMS of the activation, and of (activation - activation at step 0)
};

// Points along width: d in widths, heads = d / head_dim of the base, ffn widths scaled with d.
std::vector<CoordPoint> width_points(const ModelConfig& base, const std::vector<int>& widths);
// Points along MoE shapes "NeAa" at the base width (x = a).
std::vector<CoordPoint> shape_points(const ModelConfig& base, const std::vector<std::string>& shapes);

// Runs the check on the CPU (float) on a fixed synthetic batch; the reference of every point is `reference`.
std::vector<CoordRow> coord_check(const std::vector<CoordPoint>& points, const std::string& rule,
                                  const ModelConfig& reference, const Hyper& hp, const AdamWConfig& opt, int steps,
                                  int batch, uint64_t seed);

// Least-squares slope of log(y) against log(x).
double loglog_slope(const std::vector<double>& x, const std::vector<double>& y);
// Slope across points of `quantity` at `step`, averaged over layers.
double coord_slope(const std::vector<CoordPoint>& points, const std::vector<CoordRow>& rows,
                   const std::string& quantity, int step, bool delta);

// Whether `path` is a coordinate-check file (it has /coord/points), which no other command may replace.
bool is_coord_file(const std::string& path);
void write_coord_file(const std::string& path, const std::vector<CoordPoint>& points, const std::vector<CoordRow>& rows,
                      const std::string& rule, const json& config);

}  // namespace mue
