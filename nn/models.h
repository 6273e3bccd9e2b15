// Every model's tensor list, by task: what the parameterization rules (optim/rules.cpp) see of the models.
#pragma once
#include <vector>

#include "nn/dit.h"
#include "nn/lm.h"

namespace mue {

inline std::vector<TensorSpec> model_tensors(const ModelConfig& c) {
  return c.task == "flow" ? dit_tensors(c) : lm_tensors(c);
}

}  // namespace mue
