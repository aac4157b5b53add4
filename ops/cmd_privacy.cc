// `fedlora privacy`: the accountant on its own, for planning a private run. Given the sampling
// rate and the number of steps, either the epsilon a noise multiplier spends or the noise
// multiplier a target epsilon needs.
#include <fmt/format.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <optional>

#include "ops/commands.h"
#include "aggregator/accountant.h"

namespace fedlora::ops {

void RegisterPrivacy(CLI::App& app) {
  struct Flags {
    double q = 1;
    uint64_t steps = 1;
    double delta = 1e-5;
    std::optional<double> sigma;
    std::optional<double> epsilon;
    bool json = false;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = app.add_subcommand(
      "privacy",
      "Renyi-DP accountant of the subsampled Gaussian mechanism (tight conversion to (epsilon, delta)): the epsilon "
      "that --noise-multiplier spends over --steps, or the smallest noise multiplier that stays within --epsilon. "
      "Client-level DP counts one step per server version with q = 1 unless sampling is assumed; record-level "
      "DP-SGD counts local steps with q = batch size / examples.");
  cmd->add_option("--sampling-rate,-q", f->q, "Probability that a record (or client) takes part in a step")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  cmd->add_option("--steps", f->steps, "Applications of the mechanism")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--delta", f->delta, "delta of the (epsilon, delta) guarantee")->capture_default_str();
  auto* sigma = cmd->add_option("--noise-multiplier", f->sigma, "Noise standard deviation over the clipping norm");
  auto* eps = cmd->add_option("--epsilon", f->epsilon, "Target epsilon: print the noise multiplier that reaches it");
  sigma->excludes(eps);
  cmd->add_flag("--json", f->json, "Print one JSON object");
  cmd->callback([f] {
    if (!f->sigma && !f->epsilon) Fail("privacy", InvalidArgument("give --noise-multiplier or --epsilon"), 2);
    if (!(f->delta > 0 && f->delta < 1)) Fail("privacy", InvalidArgument("--delta must be in (0, 1)"), 2);
    double sigma_value = 0;
    if (f->epsilon) {
      auto s = privacy::NoiseForEpsilon(f->q, f->steps, *f->epsilon, f->delta);
      if (!s.ok()) Fail("privacy", s.status());
      sigma_value = *s;
    } else {
      sigma_value = *f->sigma;
      if (!(sigma_value >= 0) || !std::isfinite(sigma_value)) {
        Fail("privacy", InvalidArgument("--noise-multiplier must be non-negative"), 2);
      }
    }
    privacy::RdpAccountant accountant;
    if (Status s = accountant.Compose(f->q, sigma_value, f->steps); !s.ok()) Fail("privacy", s, 2);
    auto e = accountant.Epsilon(f->delta);
    if (!e.ok()) Fail("privacy", e.status());
    if (f->json) {
      const nlohmann::json j = {{"sampling_rate", f->q},   {"steps", f->steps},     {"delta", f->delta},
                                {"noise_multiplier", sigma_value}, {"epsilon", e->epsilon}, {"order", e->order}};
      fmt::print("{}\n", j.dump());
      return;
    }
    if (f->epsilon) {
      fmt::print("noise multiplier {:.4f} keeps {} steps at q = {} within epsilon {} (spends {:.4f} at order {}), "
                 "delta {}\n",
                 sigma_value, f->steps, f->q, *f->epsilon, e->epsilon, e->order, f->delta);
    } else {
      fmt::print("epsilon {:.4f} (order {}) for {} steps at q = {} with noise multiplier {}, delta {}\n", e->epsilon,
                 e->order, f->steps, f->q, sigma_value, f->delta);
    }
  });
}

}  // namespace fedlora::ops
