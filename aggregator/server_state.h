// Everything besides the global that aggregation carries from one version to the next: the
// server optimizer's moments, the client-level DP noise seed, AS-LoRA's per-module scores and
// the privacy ledger. The aggregator commits it with every version in the same atomic write
// (storage::VersionCommit::server_state; the ledger goes into the VersionRecord), so a restart
// resumes the exact trajectory and a replay rebuilds it bit for bit.
// Thread safety: plain values and pure functions.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "aggregator/server_optimizer.h"
#include "schema/adapter.h"
#include "schema/codec.h"
#include "schema/status.h"

namespace fedlora::aggregator {

// Versions first..last (inclusive) that a rollback undid.
struct RolledBack {
  uint64_t first = 0;
  uint64_t last = 0;
  bool operator==(const RolledBack&) const = default;
};

struct ServerState {
  uint64_t version = 0;                     // the global version it belongs to (as decoded)
  ServerOptimizerState optimizer;           // Adam's moments (empty for sgd)
  std::optional<uint64_t> noise_seed;       // client-level DP: the server's secret noise seed
  std::vector<codec::FactorScore> factors;  // AS-LoRA: one per LoRA module, Fisher included
  std::vector<RolledBack> rolled_back;      // updates trained from these versions are dropped
  // The privacy ledger after the version. Restored from the latest VersionRecord, where it is
  // stored; EncodeServerState leaves it out.
  std::optional<codec::PrivacyLedger> ledger;

  // Nothing EncodeServerState would have to store.
  bool empty() const { return optimizer.empty() && !noise_seed && factors.empty() && rolled_back.empty(); }
};

// Stored form (store.fbs ServerState, identifier "FLS1"); `version` is the global version the
// state belongs to.
codec::Bytes EncodeServerState(std::string_view adapter_id, const AdapterSpec& spec, uint64_t version,
                               const ServerState& state);
// Errors: kDataLoss (unreadable bytes, or moments/Fisher proxies not matching `spec`).
// The ledger is left empty: read it from the version's record.
Result<ServerState> DecodeServerState(std::span<const std::byte> bytes, const AdapterSpec& spec);

}  // namespace fedlora::aggregator
