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
  const MethodConfig& m = o.method;
  f.Add("method", MethodName(m.method));
  f.Add("mode", codec::ModeName(o.mode));
  f.Add("buffer-size", o.buffer_size);
  f.Add("fedasync-alpha", o.fedasync_alpha);
  f.Add("round-size", o.round_size);
  f.Add("server-optimizer", ServerOptimizerName(o.server_optimizer.kind));
  f.Add("server-lr", o.server_lr);
  f.Add("server-beta1", o.server_optimizer.beta1);
  f.Add("server-beta2", o.server_optimizer.beta2);
  f.Add("server-eps", o.server_optimizer.eps);
  f.Add("server-weight-decay", o.server_optimizer.weight_decay);
  f.Add("staleness", StalenessFnName(o.staleness.fn));
  f.Add("staleness-a", o.staleness.a);
  f.Add("staleness-b", o.staleness.b);
  f.Add("max-staleness", o.staleness.max_staleness);
  f.Add("download-density", m.download_density);
  f.Add("upload-density", m.upload_density);
  f.Add("density-decay", m.density_decay);
  f.Add("decay-every", m.decay_every);
  f.Add("phase-length", m.phase_length);
  f.Add("rank-budget", m.a2_rank_budget);
  f.Add("a-lr-ratio", m.a_lr_ratio);
  f.Add("initiating-versions", m.initiating_versions);
  f.Add("proximal-mu", m.proximal_mu);
  f.Add("heating-until", m.heating_until);
  f.Add("cooling-until", m.cooling_until);
  f.Add("min-budget", m.min_budget);
  f.Add("max-budget", m.max_budget);
  f.Add("probe-batches", m.probe_batches);
  f.Add("as-warmup", m.as_warmup);
  f.Add("as-margin", m.as_margin);
  f.Add("as-beta", m.as_beta);
  f.Add("client-dp-noise", o.client_dp.noise_multiplier);
  f.Add("client-dp-clip", o.client_dp.clip);
  f.Add("client-dp-budget", o.client_dp.budget);
  f.Add("dp-delta", o.dp_delta);
  return f.Take();
}

}  // namespace fedlora::aggregator
