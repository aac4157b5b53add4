// The server's half of differential privacy (docs/privacy.md):
//  - PrivacyLedger keeps what has been spent: client-level DP (one Gaussian mechanism per noised
//    server step, q = 1: no sampling amplification is claimed for asynchronous arrivals) and,
//    per worker, record-level DP-SGD as each logged update reports it. Its snapshot is stored
//    with every version, and a restarted aggregator restores it from the latest one.
//  - SeededGaussian: the server's noise, a pure function of (secret seed, version, draw index),
//    so a replay of the log reproduces every noised version bit for bit.
// Thread safety: one thread at a time.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <string>

#include "aggregator/accountant.h"
#include "schema/codec.h"
#include "schema/status.h"

namespace fedlora::aggregator {

// Client-level DP of FedBuff and the synchronous baseline (DP-FedBuff): every client's
// contribution to one server step is clipped to L2 norm `clip`, N(0, (noise_multiplier *
// clip)^2) is added to every coordinate the step may move, and the sum is divided by the fixed
// buffer size.
struct ClientDpOptions {
  double noise_multiplier = 0;    // z; 0: client-level DP is off
  double clip = 1.0;              // C
  double budget = 0;              // epsilon at which training stops; 0: no budget
  std::optional<uint64_t> seed;   // noise seed; unset: the stored one, else a fresh random one
};

// Errors: kInvalidArgument naming the option.
Status ValidateClientDp(const ClientDpOptions& options, double delta);

class PrivacyLedger {
 public:
  // `delta` of every epsilon it reports. Errors: kFailedPrecondition (a stored ledger computed
  // at other Renyi orders), kInvalidArgument (malformed stored ledger).
  static Result<PrivacyLedger> Create(double delta, const ClientDpOptions& client,
                                      const std::optional<codec::PrivacyLedger>& stored);

  // A logged update of `client_id`: composes its record-level DP report (none: the worker's
  // data is not protected, and its ledger says so). Errors: kInvalidArgument (a report with
  // a sampling rate outside [0, 1], or a negative or non-finite noise multiplier; nothing is
  // composed).
  Status AccountUpdate(const std::string& client_id, const std::optional<codec::DpReport>& report);

  // One noised server step at the configured noise multiplier.
  void AccountServerStep();
  // Whether one more noised server step keeps client-level epsilon within the budget (always
  // true without a budget or without client-level DP).
  bool CanAffordServerStep() const;
  double client_epsilon() const { return client_epsilon_; }
  uint64_t server_steps() const { return client_steps_; }

  // What is stored with a version; nullopt while nothing has been accounted and client-level DP
  // is off.
  std::optional<codec::PrivacyLedger> Snapshot() const;

 private:
  PrivacyLedger(double delta, ClientDpOptions client) : delta_(delta), client_(client) {}
  double EpsilonOf(const privacy::RdpAccountant& acc) const;

  struct Worker {
    privacy::RdpAccountant acc;
    codec::WorkerPrivacy info;
  };
  double delta_;
  ClientDpOptions client_;
  bool client_seen_ = false;  // client-level DP is or was on for this adapter
  privacy::RdpAccountant client_acc_;
  uint64_t client_steps_ = 0;
  double client_epsilon_ = 0;
  double last_noise_multiplier_ = 0;
  std::map<std::string, Worker> workers_;
};

// Standard normal draws from mt19937_64 seeded by (seed, version), by the Box-Muller
// transform written out here: the sequence does not depend on a standard library's
// distributions.
class SeededGaussian {
 public:
  SeededGaussian(uint64_t seed, uint64_t version);
  double Next();

 private:
  std::mt19937_64 rng_;
  double spare_ = 0;
  bool has_spare_ = false;
};

// A fresh secret seed from the operating system's entropy source.
uint64_t RandomSeed();

}  // namespace fedlora::aggregator
