#include "experiments/sample.h"

#include <filesystem>

#include "core/h5log.h"
#include "core/png_grid.h"
#include "experiments/checkpoint.h"
#include "experiments/flow.h"
#include "experiments/run_config.h"
#include "experiments/trainer.h"
#include "moe/moe_layer.h"

namespace mue {

std::vector<double> sample_grid(const SampleOptions& o) {
  MUE_CHECK(o.per_class > 0, "--per-class must be positive");
  MUE_CHECK(std::filesystem::is_regular_file(o.run), "run file '", o.run, "' does not exist or is not a file");
  auto cfg = read_string_attr(o.run, "config");
  MUE_CHECK(cfg, "'", o.run, "' has no config attribute (is it a mue run file?)");
  RunConfig c = stored_config(*cfg, o.run);
  MUE_CHECK(c.task == "flow", "'", o.run, "' is a ", c.task, " run; sample needs a flow run");
  const int K = o.per_class, classes = c.model.image.classes;
  const int steps = o.steps > 0 ? o.steps : c.sample_steps;
  const double w = o.guidance >= 0 ? o.guidance : c.guidance;
  std::vector<int32_t> labels;
  for (int k = 0; k < classes; ++k)
    for (int i = 0; i < K; ++i) labels.push_back(k);
  const ParamTable table = make_param_table(c.rule, c.model, c.reference, c.hp);
  const std::string ckpt = checkpoint_path(o.run);
  auto run = [&](auto& be) {
    using Backend = std::remove_reference_t<decltype(be)>;
    DiT<Backend> model(c.model, table, be, int(labels.size()), make_ffn<Backend>);
    load_checkpoint(model, ckpt);
    return flow_sample(model, labels, steps, w, o.seed);
  };
  std::vector<double> img;
#ifdef MUE_HAVE_CUDA
  if (resolve_device(o.device) == "cuda") {
    CudaBackend be;
    img = run(be);
  }
#endif
  if (img.empty()) {
    CpuBackend<float> be;
    img = run(be);
  }
  if (!o.out.empty())
    write_png_grid(o.out, std::vector<float>(img.begin(), img.end()), int(labels.size()), c.model.image.channels,
                   c.model.image.size, K);
  return img;
}

}  // namespace mue
