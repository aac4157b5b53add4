// The small federation the worker/federation tests run: the mlp image task, three workers of
// equal speed, four local steps, every version evaluated on 200 test images.
#pragma once

#include <string>

#include "worker/federation/embedded.h"

namespace fedlora::federation {

inline EmbeddedOptions SmallImageRun(const std::string& store) {
  EmbeddedOptions o;
  o.store.dir = store;
  o.task.arch = "mlp";
  o.task.num_clients = 3;
  o.speeds = {1};
  o.training.steps = 4;
  o.eval_every = 1;
  o.eval_samples = 200;
  o.duration_s = 240;
  return o;
}

}  // namespace fedlora::federation
