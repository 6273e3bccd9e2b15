#include "experiments/coord_check.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>

#include "core/h5log.h"
#include "core/version.h"
#include "experiments/run_config.h"
#include "experiments/trainer.h"
#include "moe/moe_layer.h"

namespace mue {

std::vector<CoordPoint> width_points(const ModelConfig& base, const std::vector<int>& widths) {
  std::vector<CoordPoint> pts;
  for (int d : widths) {
    ModelConfig m = base;
    const double f = double(d) / base.d_model;
    m.d_model = d;
    m.n_heads = std::max(1, d / base.head_dim());
    m.ffn_hidden = std::max(1, int(std::lround(base.ffn_hidden * f)));
    m.ffn.expert_hidden = std::max(1, int(std::lround(base.ffn.expert_hidden * f)));
    m.ffn.shared_hidden = int(std::lround(base.ffn.shared_hidden * f));
    m.validate();
    pts.push_back({"d=" + std::to_string(d), double(d), m});
  }
  // The x axis is the width; a slope needs two different ones.
  MUE_CHECK(std::any_of(pts.begin(), pts.end(), [&](const CoordPoint& p) { return p.x != pts[0].x; }),
            "coord-check --widths needs at least two different widths (the x axis)");
  return pts;
}

std::vector<CoordPoint> shape_points(const ModelConfig& base, const std::vector<std::string>& shapes) {
  std::vector<CoordPoint> pts;
  for (const auto& s : shapes) {
    ModelConfig m = base;
    int n = 0, a = 0;
    parse_shape(s, n, a);
    m.ffn.type = "moe", m.ffn.experts = n, m.ffn.active = a;
    m.validate();
    pts.push_back({s, double(a), m});
  }
  // The x axis is the number of activated experts; a slope needs two different ones.
  MUE_CHECK(std::any_of(pts.begin(), pts.end(), [&](const CoordPoint& p) { return p.x != pts[0].x; }),
            "coord-check --shapes needs shapes with at least two different activated-expert counts (the x axis)");
  return pts;
}

namespace {
double rms(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x * x;
  return v.empty() ? 0 : std::sqrt(s / double(v.size()));
}
double rms_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += (a[i] - b[i]) * (a[i] - b[i]);
  return a.empty() ? 0 : std::sqrt(s / double(a.size()));
}
}  // namespace

std::vector<CoordRow> coord_check(const std::vector<CoordPoint>& points, const std::string& rule,
                                  const ModelConfig& reference, const Hyper& hp, const AdamWConfig& opt, int steps,
                                  int batch, uint64_t seed) {
  MUE_CHECK(!points.empty() && steps > 0 && batch > 0, "coord-check needs points, steps > 0 and batch > 0");
  std::vector<CoordRow> rows;
  for (size_t pi = 0; pi < points.size(); ++pi) {
    const ModelConfig& m = points[pi].model;
    const ParamTable table = make_param_table(rule, m, reference, hp);
    CpuBackend<float> be;
    LM<CpuBackend<float>> model(m, table, be, batch, make_ffn<CpuBackend<float>>);
    model.init_weights(seed);
    AdamW<CpuBackend<float>> adam(model, opt);
    const int N = batch * m.seq_len;
    std::vector<int32_t> x(N), y(N);  // one fixed batch of random tokens, the same for every point
    for (int i = 0; i < N; ++i) x[i] = int32_t(rng_index(seed, 77, i, m.vocab)), y[i] = int32_t(rng_index(seed, 78, i, m.vocab));
    std::map<std::string, std::vector<double>> at0;
    for (int step = 0; step <= steps; ++step) {
      model.zero_grad();
      model.forward(x.data(), y.data());
      for (auto& [name, v] : model.probe()) {
        if (step == 0) at0[name] = v;
        CoordRow r;
        r.point = int(pi), r.step = step;
        if (name == "logits") r.quantity = "logits";
        else {
          r.layer = std::stoi(name.substr(7));
          r.quantity = name.substr(name.rfind('.') + 1);
        }
        r.rms = rms(v), r.delta_rms = rms_diff(v, at0[name]);
        rows.push_back(r);
      }
      for (int l = 0; l < m.n_layers; ++l)
        if (const BranchStats* st = model.ffn_stats(l)) {
          CoordRow r;
          r.point = int(pi), r.step = step, r.layer = l, r.quantity = "router_logits", r.rms = st->logits_rms;
          rows.push_back(r);
        }
      if (step == steps) break;
      model.backward();
      adam.update(step + 1, 1.0);
    }
  }
  return rows;
}

double loglog_slope(const std::vector<double>& x, const std::vector<double>& y) {
  const size_t n = x.size();
  MUE_CHECK(n >= 2 && y.size() == n, "a slope needs two or more points");
  double mx = 0, my = 0;
  for (size_t i = 0; i < n; ++i) mx += std::log(x[i]) / n, my += std::log(y[i]) / n;
  double sxy = 0, sxx = 0;
  for (size_t i = 0; i < n; ++i) {
    const double dx = std::log(x[i]) - mx;
    sxy += dx * (std::log(y[i]) - my), sxx += dx * dx;
  }
  return sxy / sxx;
}

double coord_slope(const std::vector<CoordPoint>& points, const std::vector<CoordRow>& rows,
                   const std::string& quantity, int step, bool delta) {
  std::vector<double> xs, ys;
  for (size_t p = 0; p < points.size(); ++p) {
    double sum = 0;
    int n = 0;
    for (const auto& r : rows)
      if (r.point == int(p) && r.step == step && r.quantity == quantity) sum += delta ? r.delta_rms : r.rms, ++n;
    MUE_CHECK(n > 0, "no coord-check rows for ", quantity, " at step ", step);
    xs.push_back(points[p].x), ys.push_back(sum / n);
  }
  return loglog_slope(xs, ys);
}

bool is_coord_file(const std::string& path) {
  try {
    return is_hdf5(path) && !list_datasets(path, "coord/points").empty();
  } catch (const Error&) {
    return false;
  }
}

void write_coord_file(const std::string& path, const std::vector<CoordPoint>& points, const std::vector<CoordRow>& rows,
                      const std::string& rule, const json& config) {
  RunLog log = RunLog::create(path);
  log.set_attr("config", config.dump(2));
  log.set_attr("rule", rule);
  log.set_attr("status", std::string("completed"));
  log.set_attr("git_commit", std::string(git_commit()));
  log.set_attr("device", std::string("cpu"));
  log.set_attr("started", utc_now_iso());
  log.set_attr("finished", utc_now_iso());
  json labels = json::array();
  for (const auto& p : points) labels.push_back(p.label);
  log.set_attr("points", labels.dump());
  for (const auto& p : points) {  // experts and active are 0 for a dense FFN
    const bool moe = p.model.ffn.moe();
    log.append("coord/points", {{"x", p.x}, {"d_model", double(p.model.d_model)},
                                {"experts", moe ? double(p.model.ffn.experts) : 0.0},
                                {"active", moe ? double(p.model.ffn.active) : 0.0}});
  }
  for (const auto& r : rows)
    log.append("coord/" + r.quantity, {{"point", r.point}, {"x", points[r.point].x}, {"step", r.step},
                                       {"layer", r.layer}, {"rms", r.rms}, {"delta_rms", r.delta_rms}});
  log.close();
}

}  // namespace mue
