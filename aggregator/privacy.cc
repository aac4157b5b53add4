#include "aggregator/privacy.h"

#include <fmt/format.h>

#include <cmath>
#include <limits>
#include <numbers>

#include "schema/hash.h"

namespace fedlora::aggregator {

Status ValidateClientDp(const ClientDpOptions& o, double delta) {
  if (!(delta > 0 && delta < 1)) return InvalidArgument("DP delta must be in (0, 1)");
  if (!(o.noise_multiplier >= 0) || !std::isfinite(o.noise_multiplier)) {
    return InvalidArgument("client-level DP noise multiplier must be >= 0");
  }
  if (!(o.clip > 0) || !std::isfinite(o.clip)) return InvalidArgument("client-level DP clip norm must be positive");
  if (!(o.budget >= 0) || !std::isfinite(o.budget)) return InvalidArgument("client-level DP budget must be >= 0");
  if (o.budget > 0 && o.noise_multiplier == 0) {
    return InvalidArgument("a client-level DP budget needs a noise multiplier (--client-dp-noise)");
  }
  return Status::Ok();
}

Result<PrivacyLedger> PrivacyLedger::Create(double delta, const ClientDpOptions& client,
                                            const std::optional<codec::PrivacyLedger>& stored) {
  PrivacyLedger ledger(delta, client);
  ledger.client_seen_ = client.noise_multiplier > 0;
  ledger.last_noise_multiplier_ = client.noise_multiplier;
  if (!stored) return ledger;
  if (stored->orders != privacy::DefaultOrders()) {
    return FailedPrecondition("the stored privacy ledger was computed at other Renyi orders than this build's");
  }
  if (const auto& c = stored->client) {
    RETURN_IF_ERROR(ledger.client_acc_.Restore(c->rdp).WithContext("stored client-level ledger"));
    ledger.client_seen_ = true;
    ledger.client_steps_ = c->steps;
    if (client.noise_multiplier == 0) ledger.last_noise_multiplier_ = c->noise_multiplier;
    ledger.client_epsilon_ = ledger.EpsilonOf(ledger.client_acc_);
  }
  for (const auto& w : stored->workers) {
    Worker worker;
    RETURN_IF_ERROR(worker.acc.Restore(w.rdp).WithContext(fmt::format("stored ledger of worker '{}'", w.client_id)));
    worker.info = w;
    ledger.workers_[w.client_id] = std::move(worker);
  }
  return ledger;
}

double PrivacyLedger::EpsilonOf(const privacy::RdpAccountant& acc) const {
  auto eps = acc.Epsilon(delta_);
  return eps.ok() ? eps->epsilon : std::numeric_limits<double>::infinity();
}

Status PrivacyLedger::AccountUpdate(const std::string& client_id, const std::optional<codec::DpReport>& report) {
  if (report) {
    const bool q_ok = report->sample_rate >= 0 && report->sample_rate <= 1;
    const bool sigma_ok = report->noise_multiplier >= 0 && std::isfinite(report->noise_multiplier);
    if (!q_ok || !sigma_ok) {
      return InvalidArgument(fmt::format("DP report of '{}' is malformed (sampling rate {}, noise multiplier {})",
                                         client_id, report->sample_rate, report->noise_multiplier));
    }
  }
  Worker& w = workers_[client_id];
  w.info.client_id = client_id;
  if (!report) {
    // Only workers that ever reported DP have a ledger worth keeping; a worker that never did
    // is simply not private and is left out.
    if (w.info.updates == 0) {
      workers_.erase(client_id);
      return Status::Ok();
    }
    ++w.info.non_private_updates;
    return Status::Ok();
  }
  RETURN_IF_ERROR(w.acc.Compose(report->sample_rate, report->noise_multiplier, report->steps));
  ++w.info.updates;
  w.info.steps += report->steps;
  w.info.noise_multiplier = report->noise_multiplier;
  w.info.sample_rate = report->sample_rate;
  w.info.epsilon = EpsilonOf(w.acc);
  w.info.rdp = w.acc.rdp();
  return Status::Ok();
}

void PrivacyLedger::AccountServerStep() {
  // Validated options: a positive, finite noise multiplier composes without error.
  (void)client_acc_.Compose(1.0, client_.noise_multiplier, 1);
  client_seen_ = true;
  last_noise_multiplier_ = client_.noise_multiplier;
  ++client_steps_;
  client_epsilon_ = EpsilonOf(client_acc_);
}

bool PrivacyLedger::CanAffordServerStep() const {
  if (client_.budget <= 0 || client_.noise_multiplier <= 0) return true;
  privacy::RdpAccountant next = client_acc_;
  (void)next.Compose(1.0, client_.noise_multiplier, 1);
  return EpsilonOf(next) <= client_.budget;
}

std::optional<codec::PrivacyLedger> PrivacyLedger::Snapshot() const {
  if (!client_seen_ && workers_.empty()) return std::nullopt;
  codec::PrivacyLedger out;
  out.delta = delta_;
  out.orders = privacy::DefaultOrders();
  if (client_seen_) {
    out.client = codec::ClientPrivacy{last_noise_multiplier_, client_.clip, client_steps_, client_epsilon_,
                                      client_.budget, client_acc_.rdp()};
  }
  for (const auto& [id, w] : workers_) out.workers.push_back(w.info);
  return out;
}

SeededGaussian::SeededGaussian(uint64_t seed, uint64_t version) : rng_(SplitMix64(seed ^ SplitMix64(version))) {}

double SeededGaussian::Next() {
  if (has_spare_) {
    has_spare_ = false;
    return spare_;
  }
  // u1 in (0, 1] (log is finite), u2 in [0, 1), each from the top 53 bits of one draw.
  const double u1 = (static_cast<double>(rng_() >> 11) + 1.0) * 0x1.0p-53;
  const double u2 = static_cast<double>(rng_() >> 11) * 0x1.0p-53;
  const double radius = std::sqrt(-2.0 * std::log(u1));
  const double angle = 2.0 * std::numbers::pi * u2;
  spare_ = radius * std::sin(angle);
  has_spare_ = true;
  return radius * std::cos(angle);
}

uint64_t RandomSeed() {
  std::random_device device;
  return (static_cast<uint64_t>(device()) << 32) ^ static_cast<uint64_t>(device());
}

}  // namespace fedlora::aggregator
