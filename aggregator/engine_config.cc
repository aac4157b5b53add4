#include "aggregator/engine_config.h"

#include <fmt/format.h>

namespace fedlora::aggregator {
namespace {

class Flags {
 public:
  // fmt prints floating-point numbers as the shortest text that reads back to the same value.
  template <typename T>
  void Add(std::string_view name, const T& value) {
    if (!text_.empty()) text_ += ' ';
    text_ += fmt::format("--{} {}", name, value);
  }
  std::string Take() { return std::move(text_); }

 private:
  std::string text_;
};

}  // namespace

std::string EngineConfigFlags(const EngineOptions& o) {
  Flags f;
  f.Add("method", o.method.name());
  f.Add("mode", codec::ModeName(o.mode));
  f.Add("buffer-size", o.buffer_size);
  f.Add("fedasync-alpha", o.fedasync_alpha);
  f.Add("round-size", o.round_size);
  f.Add("rank-scale", o.own_rank_scale ? "own" : "global");
  f.Add("server-optimizer", ServerOptimizerName(o.server_optimizer.kind));
  f.Add("server-lr", o.server_lr);
  f.Add("server-beta1", o.server_optimizer.beta1);
  f.Add("server-beta2", o.server_optimizer.beta2);
  f.Add("server-eps", o.server_optimizer.eps);
  f.Add("server-weight-decay", o.server_optimizer.weight_decay);
  f.Add("staleness", StalenessFnName(o.staleness.fn));
  f.Add("staleness-a", StalenessA(o.staleness));
  f.Add("staleness-b", o.staleness.b);
  f.Add("max-staleness", o.staleness.max_staleness);
  f.Add("client-dp-noise", o.client_dp.noise_multiplier);
  f.Add("client-dp-clip", o.client_dp.clip);
  f.Add("client-dp-budget", o.client_dp.budget);
  f.Add("dp-delta", o.dp_delta);
  std::string text = f.Take();
  // The chosen method's hyperparameters (methods/method.h), in the method's order.
  if (std::string params = methods::ParamFlags(o.method.params()); !params.empty()) text += ' ' + params;
  return text;
}

}  // namespace fedlora::aggregator
