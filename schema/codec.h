// The codec between fedlora's plain types (schema/adapter.h, Status) and the FlatBuffers
// wire/store encodings (schema/fedlora.fbs, schema/store.fbs). Nothing else in fedlora
// touches raw message bytes: every decode runs the FlatBuffers verifier first, checks the
// file identifier and the schema version, and only then hands out typed views.
//
// Views (const wire::X*) point into the caller's bytes and live as long as they do; dense
// tensor values are read in place as std::span<const float> (no copy).
// Thread safety: free functions over caller-owned data.
#pragma once

#include <flatbuffers/flatbuffers.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "schema/adapter.h"
#include "schema/fedlora_generated.h"
#include "schema/method.h"
#include "schema/status.h"
#include "schema/store_generated.h"

namespace fedlora::codec {

inline constexpr uint16_t kSchemaVersion = 1;
// Largest message a fedlora endpoint accepts from the network by default (a rank-64 adapter on
// the four attention projections of a 7B model is 256 MiB; the default task's updates ~60 KiB).
inline constexpr size_t kDefaultMaxMessageBytes = 256u << 20;
// The most one FlatBuffers buffer can hold (2 GiB - 1): the bound for bytes accepted already,
// such as stored versions and records and what the broker relays, which must always read back
// whatever limit let them in.
inline constexpr size_t kMaxBufferBytes = (size_t{1} << 31) - 1;

using Bytes = flatbuffers::DetachedBuffer;

inline std::span<const std::byte> AsBytes(const Bytes& b) {
  return {reinterpret_cast<const std::byte*>(b.data()), b.size()};
}
inline std::span<const std::byte> AsBytes(std::string_view s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}
inline std::string_view AsStringView(std::span<const std::byte> b) {
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}

// --- decoding -------------------------------------------------------------------------------

// Verifies that `bytes` hold a complete Envelope of a known schema version with a body.
// Errors: kResourceExhausted (larger than max_bytes), kInvalidArgument (not a fedlora
// message, wrong identifier, fails verification, no body), kFailedPrecondition (schema
// version newer than this build understands).
Result<const wire::Envelope*> VerifyEnvelope(std::span<const std::byte> bytes,
                                             size_t max_bytes = kDefaultMaxMessageBytes);

// Same for a stored VersionRecord. Errors: kDataLoss.
Result<const store::VersionRecord*> VerifyVersionRecord(std::span<const std::byte> bytes);

// Name of a body type for logs and errors ("Update", "Fetch", ...).
std::string_view BodyName(wire::Body type);

// The values of a tensor (all elements for Dense, the carried ones otherwise), in place.
// Empty span if the tensor has no values.
std::span<const float> DenseValues(const wire::Tensor& tensor);
// Sparse: the flat indices; RankSlice: the rank indices. In place; empty if absent.
std::span<const uint32_t> Indices(const wire::Tensor& tensor);
// An update's AS-LoRA factor scores (empty when it carries none).
std::span<const float> FactorScores(const wire::Update& update);
std::span<const uint32_t> Ranks(const wire::Tensor& tensor);
std::vector<uint32_t> Shape(const wire::Tensor& tensor);

AdapterSpec SpecFromWire(const wire::AdapterSpec* spec);

// Copies a GlobalAdapter's spec and dense tensors into plain types.
// Errors: kInvalidArgument (non-dense tensor, tensors not matching the spec).
struct GlobalInfo {
  std::string adapter_id;
  uint64_t version = 0;
  std::string content_hash;
  uint64_t consumed_seq = 0;
  wire::Mode mode = wire::Mode::FedBuff;
  bool final = false;
  MethodState method;
};
struct DecodedGlobal {
  GlobalInfo info;
  AdapterSpec spec;
  AdapterState state;
};
Result<DecodedGlobal> DecodeGlobal(const wire::GlobalAdapter& global);

// Copies an Update's dense tensors into an AdapterState (for tools and tests; the aggregator
// reads them in place). Errors: kInvalidArgument.
Result<AdapterState> DecodeUpdateTensors(const wire::Update& update);

// The Status an Error message carries.
Status StatusFromError(const wire::Error& error);

// --- encoding -------------------------------------------------------------------------------

// Record-level DP-SGD of one update (wire::DpReport).
struct DpReport {
  double noise_multiplier = 0;
  double sample_rate = 0;
  uint32_t steps = 0;
  float clip = 0;
};
std::optional<DpReport> DpReportOf(const wire::Update& update);

struct UpdateHeader {
  std::string update_id;
  std::string client_id;
  std::string adapter_id;
  uint64_t base_version = 0;
  uint64_t num_samples = 0;   // examples seen in the local run
  uint32_t local_steps = 0;
  float train_loss = 0;
  std::optional<DpReport> dp;  // set when the update was trained with record-level DP
  uint64_t shard_size = 0;     // examples in the client's data: the data weight n_k
  std::vector<float> factor_scores;  // as-lora: per LoRA module, the scores of B and A
};

// One tensor of an update in one of the update encodings (see Encoding in fedlora.fbs):
// Dense: values holds every element; Sparse: indices (flat, increasing) with one value each;
// RankSlice: indices are the rank indices, values the selected rows of A / columns of B.
struct EncodedTensor {
  std::string name;
  std::vector<uint32_t> shape;   // the full logical shape
  wire::Encoding encoding = wire::Encoding::Dense;
  std::vector<uint32_t> indices;
  std::vector<float> values;
};

// Dense update: every tensor of `delta` in full.
Bytes BuildUpdate(const UpdateHeader& header, const AdapterState& delta);
Bytes BuildUpdate(const UpdateHeader& header, const std::vector<EncodedTensor>& tensors);
Bytes BuildGlobal(const GlobalInfo& info, const AdapterSpec& spec, const AdapterState& state);
Bytes BuildHello(wire::Role role, std::string_view client_id);
Bytes BuildAck(std::string_view update_id, uint64_t seq, bool duplicate);
Bytes BuildError(const Status& status, std::string_view update_id = {},
                 uint32_t retry_after_ms = 0);
Bytes BuildCredit(std::string_view adapter_id, uint64_t next_seq, uint32_t window,
                  bool resubscribe, std::string_view log_id = {}, std::string_view consumed_hash = {});
Bytes BuildAnnounce(std::string_view adapter_id, uint64_t version, std::string_view content_hash,
                    bool final);
Bytes BuildFetch(std::string_view adapter_id, int64_t have_version);
Bytes BuildDeliver(std::string_view adapter_id, std::span<const uint64_t> seqs, uint64_t log_head,
                   std::string_view log_id = {});
Bytes BuildHeartbeat(uint64_t incarnation);

// Stored lineage of one version.
struct LineageItem {
  uint64_t seq = 0;
  std::string client_id;
  std::string update_id;
  uint64_t base_version = 0;
  uint32_t staleness = 0;
  float weight = 0;
  uint64_t num_samples = 0;
  float train_loss = 0;
};
struct DropItem {
  uint64_t seq = 0;
  std::string client_id;
  std::string update_id;
  uint64_t base_version = 0;
  uint32_t staleness = 0;
  std::string reason;
};
// The privacy ledger of a version (store.fbs PrivacyLedger).
struct ClientPrivacy {
  double noise_multiplier = 0;
  double clip = 0;
  uint64_t steps = 0;
  double epsilon = 0;
  double budget = 0;  // 0: none
  std::vector<double> rdp;
};
struct WorkerPrivacy {
  std::string client_id;
  uint32_t updates = 0;
  uint32_t non_private_updates = 0;
  uint64_t steps = 0;
  double noise_multiplier = 0;
  double sample_rate = 0;
  double epsilon = 0;
  std::vector<double> rdp;
};
struct PrivacyLedger {
  double delta = 0;
  std::vector<double> orders;
  std::optional<ClientPrivacy> client;
  std::vector<WorkerPrivacy> workers;  // sorted by client_id
};
// AS-LoRA's state of one module (store.fbs FactorScore); index 0 is B, 1 is A.
struct FactorScore {
  std::string module;
  uint8_t active = 0;
  bool seen[2] = {false, false};
  double score[2] = {0, 0};
  std::vector<float> fisher[2];
};
flatbuffers::Offset<store::FactorScore> BuildFactorScore(flatbuffers::FlatBufferBuilder& b, const FactorScore& f,
                                                         bool with_fisher);
FactorScore DecodeFactorScore(const store::FactorScore& f);

// store::EngineSettings as a value (the aggregator converts it to and from EngineOptions:
// aggregator/engine_config.h).
struct EngineSettings {
  struct Param {
    std::string name;
    double number = 0;
    std::optional<std::string> choice;
  };
  std::string method;
  std::vector<Param> params;
  wire::Mode mode = wire::Mode::FedBuff;
  uint32_t buffer_size = 0;
  double fedasync_alpha = 0;
  uint32_t round_size = 0;
  bool own_rank_scale = false;
  std::string server_optimizer;
  double server_lr = 0, server_beta1 = 0, server_beta2 = 0, server_eps = 0, server_weight_decay = 0;
  std::string staleness;
  double staleness_a = 0, staleness_b = 0;
  uint32_t max_staleness = 0;
  double client_dp_noise = 0, client_dp_clip = 0, client_dp_budget = 0, dp_delta = 0;
};

struct VersionInfo {
  std::string adapter_id;
  uint64_t version = 0;
  uint64_t parent_version = 0;
  uint64_t commit_unix_ms = 0;
  wire::Mode mode = wire::Mode::FedBuff;
  std::string method;
  uint64_t consumed_seq = 0;
  std::vector<LineageItem> applied;
  std::vector<DropItem> dropped;
  float mean_staleness = 0;
  uint32_t max_staleness = 0;
  float update_norm = 0;
  std::string content_hash;
  float test_accuracy = -1;
  float test_loss = -1;
  uint32_t eval_samples = 0;
  std::string server_optimizer = "sgd";
  std::optional<PrivacyLedger> privacy;  // absent: no DP so far
  std::vector<FactorScore> factors;      // AS-LoRA: the choice after this version (no Fisher)
  // The engine settings that made this version. Stores from before 2026-12-06 hold them as
  // canonical aggregator flags in `config` instead (empty in stores older still); read either
  // with aggregator::RecordedConfig.
  std::optional<EngineSettings> settings;
  std::string config;
  // Version 0 made by `fedlora branch` or `fedlora import`: e.g. "default@12 in data" or
  // "peft:<dir>"; a rollback: "rollback to version W"; empty otherwise.
  std::string origin;
  // A rollback (aggregator/rollback.h): the version whose tensors this one restores.
  std::optional<uint64_t> rollback_to;
};
Bytes BuildVersionRecord(const VersionInfo& info);
VersionInfo DecodeVersionRecord(const store::VersionRecord& record);

std::string_view ModeName(wire::Mode mode);  // "fedasync", "fedbuff", "sync"

}  // namespace fedlora::codec
