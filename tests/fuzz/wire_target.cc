#include "tests/fuzz/wire_target.h"

#include <fmt/format.h>

#include <memory>

#include "aggregator/engine.h"
#include "schema/validate.h"
#include "tests/testing/samples.h"

namespace fedlora::fuzz {
namespace {

using testing::FilledState;
using testing::SmallSpec;

// Independent of ValidateTensorValues: every element an accepted tensor carries lands inside
// the tensor.
Status CheckCarriedWithinBounds(const wire::Tensor& t, const TensorSpec& spec) {
  const auto values = codec::DenseValues(t);
  const size_t numel = spec.numel();
  switch (t.encoding()) {
    case wire::Encoding::Dense:
      if (values.size() != numel) return Internal("accepted a dense tensor with the wrong value count");
      break;
    case wire::Encoding::Sparse: {
      const auto idx = codec::Indices(t);
      if (idx.size() != values.size()) return Internal("accepted sparse indices and values of different counts");
      for (uint32_t i : idx) {
        if (i >= numel) return Internal(fmt::format("accepted sparse index {} of a {}-element tensor", i, numel));
      }
      break;
    }
    case wire::Encoding::RankSlice: {
      if (spec.shape.size() != 2) return Internal("accepted rank slices of a non-matrix");
      const auto ranks = codec::Ranks(t);
      const uint32_t r = spec.role == TensorRole::kLoraA ? spec.shape[0] : spec.shape[1];
      const size_t per_rank = spec.role == TensorRole::kLoraA ? spec.shape[1] : spec.shape[0];
      for (uint32_t k : ranks) {
        if (k >= r) return Internal(fmt::format("accepted rank {} of a rank-{} factor", k, r));
      }
      if (values.size() != ranks.size() * per_rank) return Internal("accepted a rank slice of the wrong size");
      break;
    }
    default:
      return Internal("accepted an encoding the engine cannot read");
  }
  return Status::Ok();
}

Status CheckUpdate(const wire::Update& u) {
  static const AdapterSpec spec = SmallSpec();
  const Status valid = ValidateUpdate(u, spec, 0);
  if (!valid.ok()) {
    return valid.message().empty() ? Internal("an update was refused without a reason") : Status::Ok();
  }
  for (const auto* t : *u.tensors()) RETURN_IF_ERROR(CheckCarriedWithinBounds(*t, spec.tensors[spec.Find(t->name()->str())]));
  (void)codec::DpReportOf(u);
  RETURN_IF_ERROR(codec::DecodeUpdateTensors(u).status().code() == Code::kInternal
                      ? Internal("decoding an accepted update failed internally")
                      : Status::Ok());
  aggregator::EngineOptions options;
  options.buffer_size = 1;
  const AdapterState initial = FilledState(spec, 0.5f);
  auto engine = aggregator::Engine::Create(options, "default", spec, initial, 0, 0,
                                           [&](uint64_t) -> Result<std::shared_ptr<const AdapterState>> {
                                             return std::make_shared<const AdapterState>(initial);
                                           });
  if (!engine.ok()) return Internal("engine: " + engine.status().ToString());
  auto info = (*engine)->Consume(1, u);
  if (!info.ok()) return Internal("the engine failed on an accepted update: " + info.status().ToString());
  if (*info) {
    for (const auto& d : (*info)->dropped) {
      if (d.reason.empty()) return Internal("an accepted update was dropped without a reason");
    }
    if ((*info)->applied.size() + (*info)->dropped.size() != 1) return Internal("the update was not accounted for");
  }
  return Status::Ok();
}

Status CheckEnvelope(const wire::Envelope& e) {
  switch (e.body_type()) {
    case wire::Body::Update:
      return CheckUpdate(*e.body_as_Update());
    case wire::Body::GlobalAdapter: {
      auto g = codec::DecodeGlobal(*e.body_as_GlobalAdapter());
      if (!g.ok()) return g.status().message().empty() ? Internal("a global was refused without a reason") : Status::Ok();
      if (!CheckStateMatchesSpec(g->spec, g->state).ok()) return Internal("decoded a global that does not match its spec");
      return Status::Ok();
    }
    case wire::Body::Error:
      (void)codec::StatusFromError(*e.body_as_Error());
      return Status::Ok();
    case wire::Body::Deliver: {
      const auto* d = e.body_as_Deliver();
      uint64_t sum = d->log_head();
      if (d->seqs()) {
        for (uint64_t s : *d->seqs()) sum += s;
      }
      (void)sum;
      return Status::Ok();
    }
    default:
      return Status::Ok();  // the verifier vouches for every field of the small bodies
  }
}

}  // namespace

Status CheckInput(std::span<const std::byte> bytes) {
  auto env = codec::VerifyEnvelope(bytes, 1u << 20);
  if (env.ok()) {
    RETURN_IF_ERROR(CheckEnvelope(**env));
  } else if (env.status().message().empty()) {
    return Internal("a message was refused without a reason");
  }
  // The same bytes as a stored version record (read back from RocksDB by history and replay).
  auto record = codec::VerifyVersionRecord(bytes);
  if (record.ok()) {
    (void)codec::DecodeVersionRecord(**record);
  } else if (record.status().message().empty()) {
    return Internal("a version record was refused without a reason");
  }
  return Status::Ok();
}

std::vector<std::pair<std::string, codec::Bytes>> SeedMessages() {
  const AdapterSpec spec = SmallSpec();
  std::vector<std::pair<std::string, codec::Bytes>> seeds;
  seeds.emplace_back("update-dense", testing::MakeUpdate("u1", "c1", 0, FilledState(spec, 0.1f)));
  codec::UpdateHeader h{"u2", "c1", "default", 0, 10, 1, 0.5f, codec::DpReport{1.1, 0.01, 20, 1.0f}, 10, {}};
  seeds.emplace_back("update-sparse-dp",
                     codec::BuildUpdate(h, {{"head.weight", {2, 4}, wire::Encoding::Sparse, {1, 5, 7}, {0.1f, -0.2f, 0.3f}}}));
  h.update_id = "u3";
  h.dp.reset();
  seeds.emplace_back("update-rank-slices",
                     codec::BuildUpdate(h, {{"m.lora_A", {2, 3}, wire::Encoding::RankSlice, {1}, {0.1f, 0.2f, 0.3f}},
                                            {"m.lora_B", {4, 2}, wire::Encoding::RankSlice, {0}, {1, 2, 3, 4}}}));
  codec::GlobalInfo info{"default", 3, "hash", 7, wire::Mode::FedBuff, false, {}};
  seeds.emplace_back("global", codec::BuildGlobal(info, spec, FilledState(spec, 0)));
  seeds.emplace_back("hello", codec::BuildHello(wire::Role::Worker, "c1"));
  seeds.emplace_back("ack", codec::BuildAck("u1", 4, true));
  seeds.emplace_back("error", codec::BuildError(ResourceExhausted("retry later"), "u1", 250));
  seeds.emplace_back("credit", codec::BuildCredit("default", 5, 64, true));
  seeds.emplace_back("announce", codec::BuildAnnounce("default", 3, "hash", false));
  seeds.emplace_back("fetch", codec::BuildFetch("default", 2));
  const uint64_t seqs[] = {5, 6, 7};
  seeds.emplace_back("deliver", codec::BuildDeliver("default", seqs, 9));
  seeds.emplace_back("heartbeat", codec::BuildHeartbeat(42));
  codec::VersionInfo v;
  v.adapter_id = "default";
  v.version = 2;
  v.applied.push_back({3, "c1", "u1", 1, 1, 0.5f, 10, 0.4f});
  v.dropped.push_back({4, "c2", "u9", 0, 2, "stale"});
  seeds.emplace_back("version-record", codec::BuildVersionRecord(v));
  return seeds;
}

}  // namespace fedlora::fuzz
