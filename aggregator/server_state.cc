#include "aggregator/server_state.h"

#include <fmt/format.h>

namespace fedlora::aggregator {

codec::Bytes EncodeServerState(std::string_view adapter_id, const AdapterSpec& spec, uint64_t version,
                               const ServerState& s) {
  const std::string_view optimizer_name = s.optimizer.empty() ? "sgd" : std::string_view(s.optimizer.optimizer);
  size_t floats = 0;
  for (const auto& m : s.optimizer.m) floats += 2 * m.size();
  for (const auto& f : s.factors) floats += f.fisher[0].size() + f.fisher[1].size();
  flatbuffers::FlatBufferBuilder b(1024 + 4 * floats);
  std::vector<flatbuffers::Offset<store::OptimizerTensor>> tensors;
  for (size_t t = 0; t < s.optimizer.steps.size(); ++t) {
    tensors.push_back(store::CreateOptimizerTensor(b, b.CreateString(spec.tensors[t].name), s.optimizer.steps[t],
                                                   b.CreateVector(s.optimizer.m[t]),
                                                   b.CreateVector(s.optimizer.v[t])));
  }
  std::vector<flatbuffers::Offset<store::FactorScore>> factors;
  for (const auto& f : s.factors) factors.push_back(codec::BuildFactorScore(b, f, true));
  std::vector<flatbuffers::Offset<store::VersionRange>> rolled_back;
  for (const auto& r : s.rolled_back) rolled_back.push_back(store::CreateVersionRange(b, r.first, r.last));
  auto root = store::CreateServerState(b, b.CreateString(adapter_id), version, b.CreateString(optimizer_name),
                                       b.CreateVector(tensors), s.noise_seed.has_value(), s.noise_seed.value_or(0),
                                       b.CreateVector(factors), rolled_back.empty() ? 0 : b.CreateVector(rolled_back));
  b.Finish(root, store::VersionRecordIdentifier());
  return b.Release();
}

Result<ServerState> DecodeServerState(std::span<const std::byte> bytes, const AdapterSpec& spec) {
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
  if (bytes.size() < 8 || !flatbuffers::BufferHasIdentifier(data, store::VersionRecordIdentifier())) {
    return DataLoss("stored server state has no FLS1 identifier");
  }
  flatbuffers::Verifier verifier(data, bytes.size());
  if (!verifier.VerifyBuffer<store::ServerState>(store::VersionRecordIdentifier())) {
    return DataLoss("stored server state fails verification");
  }
  const auto* root = flatbuffers::GetRoot<store::ServerState>(data);
  ServerState out;
  out.version = root->version();
  if (root->has_noise_seed()) out.noise_seed = root->noise_seed();
  if (root->factors()) {
    for (const auto* f : *root->factors()) out.factors.push_back(codec::DecodeFactorScore(*f));
  }
  if (root->rolled_back()) {
    for (const auto* r : *root->rolled_back()) {
      if (r->first() > r->last()) return DataLoss("stored server state has an empty rolled-back range");
      out.rolled_back.push_back({r->first(), r->last()});
    }
  }
  const auto* tensors = root->tensors();
  if (tensors == nullptr || tensors->size() == 0) return out;  // a stateless optimizer (sgd)
  ServerOptimizerState& s = out.optimizer;
  s.optimizer = root->optimizer() ? root->optimizer()->str() : "";
  s.version = root->version();
  if (tensors->size() != spec.tensors.size()) {
    return DataLoss(fmt::format("stored server optimizer state has {} tensors, the spec {}", tensors->size(),
                                spec.tensors.size()));
  }
  for (size_t t = 0; t < spec.tensors.size(); ++t) {
    const auto* e = tensors->Get(static_cast<flatbuffers::uoffset_t>(t));
    const size_t n = spec.tensors[t].numel();
    if (!e->name() || e->name()->string_view() != spec.tensors[t].name || !e->m() || !e->v() ||
        e->m()->size() != n || e->v()->size() != n) {
      return DataLoss(fmt::format("stored server optimizer moments of tensor {} do not match '{}'", t,
                                  spec.tensors[t].name));
    }
    s.steps.push_back(e->step());
    s.m.emplace_back(e->m()->begin(), e->m()->end());
    s.v.emplace_back(e->v()->begin(), e->v()->end());
  }
  return out;
}

}  // namespace fedlora::aggregator
