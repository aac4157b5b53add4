#include "schema/codec.h"

#include <fmt/format.h>

namespace fedlora::codec {

static_assert(static_cast<int>(wire::ErrorCode::Unauthenticated) ==
              static_cast<int>(Code::kUnauthenticated));
static_assert(static_cast<int>(wire::ErrorCode::InvalidArgument) ==
              static_cast<int>(Code::kInvalidArgument));
static_assert(static_cast<int>(wire::ErrorCode::ResourceExhausted) ==
              static_cast<int>(Code::kResourceExhausted));
static_assert(static_cast<int>(wire::TensorRole::LoraA) == static_cast<int>(TensorRole::kLoraA));
static_assert(static_cast<int>(wire::TensorRole::LoraB) == static_cast<int>(TensorRole::kLoraB));
static_assert(static_cast<int>(wire::TensorRole::Dense) == static_cast<int>(TensorRole::kDense));
static_assert(static_cast<int>(wire::TensorRole::LoraResidual) == static_cast<int>(TensorRole::kLoraResidual));

namespace {

// Nesting and table counts far above anything fedlora builds, far below what a hostile
// message would need to make verification expensive.
constexpr flatbuffers::uoffset_t kMaxDepth = 16;
constexpr flatbuffers::uoffset_t kMaxTables = 1'000'000;

flatbuffers::Offset<flatbuffers::Vector<uint32_t>> ShapeVec(flatbuffers::FlatBufferBuilder& b,
                                                           const std::vector<uint32_t>& shape) {
  return b.CreateVector(shape);
}

flatbuffers::Offset<wire::AdapterSpec> SpecToWire(flatbuffers::FlatBufferBuilder& b,
                                                 const AdapterSpec& spec) {
  std::vector<flatbuffers::Offset<wire::TensorSpec>> ts;
  ts.reserve(spec.tensors.size());
  for (const auto& t : spec.tensors) {
    ts.push_back(wire::CreateTensorSpec(b, b.CreateString(t.name), ShapeVec(b, t.shape),
                                        static_cast<wire::TensorRole>(t.role)));
  }
  return wire::CreateAdapterSpec(b, b.CreateString(spec.model), spec.rank, spec.alpha,
                                 b.CreateVectorOfStrings(spec.target_modules), spec.seed,
                                 b.CreateVector(ts));
}

flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<wire::Tensor>>> DenseTensors(
    flatbuffers::FlatBufferBuilder& b, const AdapterState& state) {
  std::vector<flatbuffers::Offset<wire::Tensor>> ts;
  ts.reserve(state.tensors.size());
  for (const auto& t : state.tensors) {
    auto name = b.CreateString(t.name);
    auto shape = ShapeVec(b, t.shape);
    auto values = b.CreateVector(t.values);
    wire::TensorBuilder tb(b);
    tb.add_name(name);
    tb.add_shape(shape);
    tb.add_encoding(wire::Encoding::Dense);
    tb.add_values(values);
    ts.push_back(tb.Finish());
  }
  return b.CreateVector(ts);
}

Bytes Finish(flatbuffers::FlatBufferBuilder& b, wire::Body type, flatbuffers::Offset<void> body) {
  auto env = wire::CreateEnvelope(b, kSchemaVersion, type, body);
  b.Finish(env, wire::EnvelopeIdentifier());
  return b.Release();
}

std::string Str(const flatbuffers::String* s) { return s ? s->str() : std::string(); }

// The FlatBuffers verifier checks a vector's length prefix for 4-byte alignment but not that
// 8-byte elements are 8-byte aligned; a builder always aligns them, so a misaligned vector is
// hand-made, and reading it would be a misaligned load (found by the fuzz target).
template <typename T>
bool ElementsAligned(const flatbuffers::Vector<T>* v) {
  return v == nullptr || reinterpret_cast<uintptr_t>(v->Data()) % alignof(T) == 0;
}

bool LedgerAligned(const store::PrivacyLedger* l) {
  if (l == nullptr) return true;
  if (!ElementsAligned(l->orders())) return false;
  if (l->client() && !ElementsAligned(l->client()->rdp())) return false;
  if (l->workers()) {
    for (const auto* w : *l->workers()) {
      if (!ElementsAligned(w->rdp())) return false;
    }
  }
  return true;
}

}  // namespace

Result<const wire::Envelope*> VerifyEnvelope(std::span<const std::byte> bytes, size_t max_bytes) {
  if (bytes.size() > max_bytes) {
    return ResourceExhausted(
        fmt::format("message of {} bytes exceeds the limit of {} bytes", bytes.size(), max_bytes));
  }
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
  if (bytes.size() < 8 || !flatbuffers::BufferHasIdentifier(data, wire::EnvelopeIdentifier())) {
    return InvalidArgument("not a fedlora message (file identifier FLR1 missing)");
  }
  flatbuffers::Verifier verifier(data, bytes.size(), kMaxDepth, kMaxTables);
  if (!wire::VerifyEnvelopeBuffer(verifier)) {
    return InvalidArgument("malformed message: FlatBuffers verification failed");
  }
  const wire::Envelope* env = wire::GetEnvelope(data);
  if (env->schema_version() > kSchemaVersion) {
    return FailedPrecondition(fmt::format("schema version {} is newer than supported version {}",
                                          env->schema_version(), kSchemaVersion));
  }
  if (env->schema_version() == 0) return InvalidArgument("schema version 0 is not valid");
  if (env->body_type() == wire::Body::NONE || env->body() == nullptr) {
    return InvalidArgument("message has no body");
  }
  if (env->body_type() == wire::Body::Deliver && !ElementsAligned(env->body_as_Deliver()->seqs())) {
    return InvalidArgument("malformed message: Deliver.seqs is not 8-byte aligned");
  }
  return env;
}

Result<const store::VersionRecord*> VerifyVersionRecord(std::span<const std::byte> bytes) {
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
  if (bytes.size() < 8 ||
      !flatbuffers::BufferHasIdentifier(data, store::VersionRecordIdentifier())) {
    return DataLoss("stored version record has no FLS1 identifier");
  }
  flatbuffers::Verifier verifier(data, bytes.size(), kMaxDepth, kMaxTables);
  if (!store::VerifyVersionRecordBuffer(verifier)) {
    return DataLoss("stored version record fails verification");
  }
  if (!LedgerAligned(store::GetVersionRecord(data)->privacy())) {
    return DataLoss("stored version record has a misaligned privacy vector");
  }
  return store::GetVersionRecord(data);
}

std::string_view BodyName(wire::Body type) {
  const char* name = wire::EnumNameBody(type);
  return name && *name ? name : "Unknown";
}

std::span<const float> DenseValues(const wire::Tensor& tensor) {
  const auto* v = tensor.values();
  if (v == nullptr) return {};
  return {v->data(), v->size()};
}

std::span<const float> FactorScores(const wire::Update& update) {
  const auto* v = update.factor_scores();
  if (v == nullptr) return {};
  return {v->data(), v->size()};
}

std::span<const uint32_t> Indices(const wire::Tensor& tensor) {
  const auto* v = tensor.indices();
  if (v == nullptr) return {};
  return {v->data(), v->size()};
}

std::span<const uint32_t> Ranks(const wire::Tensor& tensor) {
  const auto* v = tensor.ranks();
  if (v == nullptr) return {};
  return {v->data(), v->size()};
}

std::vector<uint32_t> Shape(const wire::Tensor& tensor) {
  std::vector<uint32_t> shape;
  if (tensor.shape()) shape.assign(tensor.shape()->begin(), tensor.shape()->end());
  return shape;
}

AdapterSpec SpecFromWire(const wire::AdapterSpec* spec) {
  AdapterSpec out;
  if (spec == nullptr) return out;
  out.model = Str(spec->model());
  out.rank = spec->rank();
  out.alpha = spec->alpha();
  out.seed = spec->seed();
  if (spec->target_modules()) {
    for (const auto* s : *spec->target_modules()) out.target_modules.push_back(Str(s));
  }
  if (spec->tensors()) {
    for (const auto* t : *spec->tensors()) {
      TensorSpec ts;
      ts.name = t->name()->str();
      if (t->shape()) ts.shape.assign(t->shape()->begin(), t->shape()->end());
      ts.role = static_cast<TensorRole>(t->role());
      out.tensors.push_back(std::move(ts));
    }
  }
  return out;
}

namespace {

Result<AdapterState> DenseState(
    const flatbuffers::Vector<flatbuffers::Offset<wire::Tensor>>* tensors) {
  AdapterState state;
  if (tensors == nullptr) return state;
  state.tensors.reserve(tensors->size());
  for (const auto* t : *tensors) {
    if (t->encoding() != wire::Encoding::Dense) {
      return InvalidArgument(fmt::format("tensor '{}' uses encoding {}, expected Dense",
                                         t->name()->str(), wire::EnumNameEncoding(t->encoding())));
    }
    DenseTensor d;
    d.name = t->name()->str();
    d.shape = Shape(*t);
    auto values = DenseValues(*t);
    d.values.assign(values.begin(), values.end());
    if (d.values.size() != NumElements(d.shape)) {
      return InvalidArgument(fmt::format("tensor '{}' has {} values for {} elements", d.name,
                                         d.values.size(), NumElements(d.shape)));
    }
    state.tensors.push_back(std::move(d));
  }
  return state;
}

}  // namespace

Result<DecodedGlobal> DecodeGlobal(const wire::GlobalAdapter& global) {
  DecodedGlobal out;
  out.info.adapter_id = global.adapter_id()->str();
  out.info.version = global.version();
  out.info.content_hash = Str(global.content_hash());
  out.info.consumed_seq = global.consumed_seq();
  out.info.mode = global.mode();
  out.info.final = global.final();
  if (const auto* m = global.method(); m != nullptr) {
    if (m->name() != nullptr) out.info.method.method = m->name()->str();
    out.info.method.download_density = m->download_density();
    out.info.method.upload_density = m->upload_density();
    out.info.method.phase = m->phase();
    out.info.method.a_lr_ratio = m->a_lr_ratio();
    out.info.method.rank_budget = m->rank_budget();
    out.info.method.probe_batches = m->probe_batches();
    out.info.method.proximal_mu = m->proximal_mu();
    out.info.method.density_scale = m->density_scale();
    out.info.method.prune_lambda = m->prune_lambda();
    out.info.method.prune_gamma = m->prune_gamma();
    out.info.method.own_rank_scale = m->own_rank_scale();
    if (m->active() != nullptr) out.info.method.active.assign(m->active()->begin(), m->active()->end());
  }
  out.spec = SpecFromWire(global.spec());
  ASSIGN_OR_RETURN(out.state, DenseState(global.tensors()));
  RETURN_IF_ERROR(CheckStateMatchesSpec(out.spec, out.state).WithContext("global adapter"));
  return out;
}

Result<AdapterState> DecodeUpdateTensors(const wire::Update& update) {
  return DenseState(update.tensors());
}

Status StatusFromError(const wire::Error& error) {
  auto code = static_cast<Code>(error.code());
  if (code == Code::kOk) code = Code::kUnknown;
  return {code, Str(error.reason())};
}

namespace {

flatbuffers::Offset<wire::DpReport> BuildDp(flatbuffers::FlatBufferBuilder& b, const std::optional<DpReport>& dp) {
  if (!dp) return 0;
  return wire::CreateDpReport(b, dp->noise_multiplier, dp->sample_rate, dp->steps, dp->clip);
}

}  // namespace

std::optional<DpReport> DpReportOf(const wire::Update& update) {
  const auto* dp = update.dp();
  if (dp == nullptr) return std::nullopt;
  return DpReport{dp->noise_multiplier(), dp->sample_rate(), dp->steps(), dp->clip()};
}

Bytes BuildUpdate(const UpdateHeader& h, const AdapterState& delta) {
  size_t bytes = 256;
  for (const auto& t : delta.tensors) bytes += t.values.size() * 4 + t.name.size() + 64;
  flatbuffers::FlatBufferBuilder b(bytes);
  auto tensors = DenseTensors(b, delta);
  auto update = wire::CreateUpdate(b, b.CreateString(h.update_id), b.CreateString(h.client_id),
                                   b.CreateString(h.adapter_id), h.base_version, h.num_samples,
                                   h.local_steps, h.train_loss, tensors, BuildDp(b, h.dp), h.shard_size,
                                   h.factor_scores.empty() ? 0 : b.CreateVector(h.factor_scores));
  return Finish(b, wire::Body::Update, update.Union());
}

Bytes BuildUpdate(const UpdateHeader& h, const std::vector<EncodedTensor>& tensors) {
  size_t bytes = 256;
  for (const auto& t : tensors) bytes += (t.values.size() + t.indices.size()) * 4 + t.name.size() + 64;
  flatbuffers::FlatBufferBuilder b(bytes);
  std::vector<flatbuffers::Offset<wire::Tensor>> ts;
  ts.reserve(tensors.size());
  for (const auto& t : tensors) {
    auto name = b.CreateString(t.name);
    auto shape = ShapeVec(b, t.shape);
    auto values = b.CreateVector(t.values);
    flatbuffers::Offset<flatbuffers::Vector<uint32_t>> indices, ranks;
    if (t.encoding == wire::Encoding::Sparse) indices = b.CreateVector(t.indices);
    if (t.encoding == wire::Encoding::RankSlice) ranks = b.CreateVector(t.indices);
    wire::TensorBuilder tb(b);
    tb.add_name(name);
    tb.add_shape(shape);
    tb.add_encoding(t.encoding);
    tb.add_values(values);
    if (!indices.IsNull()) tb.add_indices(indices);
    if (!ranks.IsNull()) tb.add_ranks(ranks);
    ts.push_back(tb.Finish());
  }
  auto tensor_vec = b.CreateVector(ts);
  auto update = wire::CreateUpdate(b, b.CreateString(h.update_id), b.CreateString(h.client_id),
                                   b.CreateString(h.adapter_id), h.base_version, h.num_samples,
                                   h.local_steps, h.train_loss, tensor_vec, BuildDp(b, h.dp), h.shard_size,
                                   h.factor_scores.empty() ? 0 : b.CreateVector(h.factor_scores));
  return Finish(b, wire::Body::Update, update.Union());
}

Bytes BuildGlobal(const GlobalInfo& info, const AdapterSpec& spec, const AdapterState& state) {
  flatbuffers::FlatBufferBuilder b(state.numel() * 4 + 4096);
  auto spec_off = SpecToWire(b, spec);
  auto tensors = DenseTensors(b, state);
  const MethodState& m = info.method;
  auto method = wire::CreateMethod(b, b.CreateString(m.method), m.download_density,
                                   m.upload_density, m.phase, m.a_lr_ratio, m.rank_budget,
                                   m.probe_batches, m.proximal_mu,
                                   m.active.empty() ? 0 : b.CreateVector(m.active), m.density_scale,
                                   m.prune_lambda, m.prune_gamma, m.own_rank_scale);
  auto g = wire::CreateGlobalAdapter(b, b.CreateString(info.adapter_id), info.version, spec_off,
                                     tensors, b.CreateString(info.content_hash),
                                     info.consumed_seq, info.mode, info.final, method);
  return Finish(b, wire::Body::GlobalAdapter, g.Union());
}

Bytes BuildHello(wire::Role role, std::string_view client_id) {
  flatbuffers::FlatBufferBuilder b(128);
  auto h = wire::CreateHello(b, role, b.CreateString(client_id),
                             b.CreateString(fmt::format("fedlora {}", kSchemaVersion)));
  return Finish(b, wire::Body::Hello, h.Union());
}

Bytes BuildAck(std::string_view update_id, uint64_t seq, bool duplicate) {
  flatbuffers::FlatBufferBuilder b(128);
  auto a = wire::CreateAck(b, b.CreateString(update_id), seq, duplicate);
  return Finish(b, wire::Body::Ack, a.Union());
}

Bytes BuildError(const Status& status, std::string_view update_id, uint32_t retry_after_ms) {
  flatbuffers::FlatBufferBuilder b(256);
  auto e = wire::CreateError(b, static_cast<wire::ErrorCode>(status.code()),
                             b.CreateString(status.message()), b.CreateString(update_id),
                             retry_after_ms);
  return Finish(b, wire::Body::Error, e.Union());
}

Bytes BuildCredit(std::string_view adapter_id, uint64_t next_seq, uint32_t window,
                  bool resubscribe, std::string_view log_id, std::string_view consumed_hash) {
  flatbuffers::FlatBufferBuilder b(192);
  auto id = b.CreateString(adapter_id);
  auto log = log_id.empty() ? 0 : b.CreateString(log_id);
  auto hash = consumed_hash.empty() ? 0 : b.CreateString(consumed_hash);
  auto c = wire::CreateCredit(b, id, next_seq, window, resubscribe, log, hash);
  return Finish(b, wire::Body::Credit, c.Union());
}

Bytes BuildAnnounce(std::string_view adapter_id, uint64_t version, std::string_view content_hash,
                    bool final) {
  flatbuffers::FlatBufferBuilder b(128);
  auto a = wire::CreateAnnounce(b, b.CreateString(adapter_id), version,
                                b.CreateString(content_hash), final);
  return Finish(b, wire::Body::Announce, a.Union());
}

Bytes BuildFetch(std::string_view adapter_id, int64_t have_version) {
  flatbuffers::FlatBufferBuilder b(128);
  auto f = wire::CreateFetch(b, b.CreateString(adapter_id), have_version);
  return Finish(b, wire::Body::Fetch, f.Union());
}

Bytes BuildHeartbeat(uint64_t incarnation) {
  flatbuffers::FlatBufferBuilder b(64);
  auto h = wire::CreateHeartbeat(b, incarnation);
  return Finish(b, wire::Body::Heartbeat, h.Union());
}

Bytes BuildDeliver(std::string_view adapter_id, std::span<const uint64_t> seqs,
                   uint64_t log_head, std::string_view log_id) {
  flatbuffers::FlatBufferBuilder b(160 + seqs.size() * 8);
  auto id = b.CreateString(adapter_id);
  auto sv = b.CreateVector(seqs.data(), seqs.size());
  auto log = log_id.empty() ? 0 : b.CreateString(log_id);
  auto d = wire::CreateDeliver(b, id, sv, log_head, log);
  return Finish(b, wire::Body::Deliver, d.Union());
}

Bytes BuildVersionRecord(const VersionInfo& v) {
  flatbuffers::FlatBufferBuilder b(512 + 96 * (v.applied.size() + v.dropped.size()));
  std::vector<flatbuffers::Offset<store::LineageEntry>> applied;
  for (const auto& a : v.applied) {
    applied.push_back(store::CreateLineageEntry(b, a.seq, b.CreateString(a.client_id),
                                                b.CreateString(a.update_id), a.base_version,
                                                a.staleness, a.weight, a.num_samples,
                                                a.train_loss));
  }
  std::vector<flatbuffers::Offset<store::DropEntry>> dropped;
  for (const auto& d : v.dropped) {
    dropped.push_back(store::CreateDropEntry(b, d.seq, b.CreateString(d.client_id),
                                             b.CreateString(d.update_id), d.base_version,
                                             d.staleness, b.CreateString(d.reason)));
  }
  flatbuffers::Offset<store::PrivacyLedger> privacy = 0;
  if (v.privacy) {
    const PrivacyLedger& l = *v.privacy;
    flatbuffers::Offset<store::ClientPrivacy> client = 0;
    if (l.client) {
      const ClientPrivacy& c = *l.client;
      client = store::CreateClientPrivacy(b, c.noise_multiplier, c.clip, c.steps, c.epsilon, c.budget,
                                          b.CreateVector(c.rdp));
    }
    std::vector<flatbuffers::Offset<store::WorkerPrivacy>> workers;
    for (const auto& w : l.workers) {
      workers.push_back(store::CreateWorkerPrivacy(b, b.CreateString(w.client_id), w.updates, w.non_private_updates,
                                                   w.steps, w.noise_multiplier, w.sample_rate, w.epsilon,
                                                   b.CreateVector(w.rdp)));
    }
    privacy = store::CreatePrivacyLedger(b, l.delta, b.CreateVector(l.orders), client, b.CreateVector(workers));
  }
  std::vector<flatbuffers::Offset<store::FactorScore>> factors;
  for (const auto& f : v.factors) factors.push_back(BuildFactorScore(b, f, false));
  flatbuffers::Offset<store::EngineSettings> settings = 0;
  if (v.settings) {
    const EngineSettings& s = *v.settings;
    std::vector<flatbuffers::Offset<store::MethodParam>> params;
    for (const auto& p : s.params) {
      params.push_back(store::CreateMethodParam(b, b.CreateString(p.name), p.number,
                                                p.choice ? b.CreateString(*p.choice) : 0));
    }
    settings = store::CreateEngineSettings(
        b, b.CreateString(s.method), b.CreateVector(params), s.mode, s.buffer_size, s.fedasync_alpha, s.round_size,
        s.own_rank_scale, b.CreateString(s.server_optimizer), s.server_lr, s.server_beta1, s.server_beta2,
        s.server_eps, s.server_weight_decay, b.CreateString(s.staleness), s.staleness_a, s.staleness_b,
        s.max_staleness, s.client_dp_noise, s.client_dp_clip, s.client_dp_budget, s.dp_delta);
  }
  auto rec = store::CreateVersionRecord(
      b, b.CreateString(v.adapter_id), v.version, v.parent_version, v.commit_unix_ms, v.mode,
      b.CreateString(v.method), v.consumed_seq, b.CreateVector(applied), b.CreateVector(dropped),
      v.mean_staleness, v.max_staleness, v.update_norm, b.CreateString(v.content_hash),
      v.test_accuracy, v.test_loss, v.eval_samples, b.CreateString(v.server_optimizer),
      privacy, factors.empty() ? 0 : b.CreateVector(factors), v.config.empty() ? 0 : b.CreateString(v.config),
      v.origin.empty() ? 0 : b.CreateString(v.origin), v.rollback_to.has_value(), v.rollback_to.value_or(0),
      settings);
  b.Finish(rec, store::VersionRecordIdentifier());
  return b.Release();
}

VersionInfo DecodeVersionRecord(const store::VersionRecord& r) {
  VersionInfo v;
  v.adapter_id = Str(r.adapter_id());
  v.version = r.version();
  v.parent_version = r.parent_version();
  v.commit_unix_ms = r.commit_unix_ms();
  v.mode = r.mode();
  v.method = Str(r.method());
  v.consumed_seq = r.consumed_seq();
  if (r.applied()) {
    for (const auto* a : *r.applied()) {
      v.applied.push_back({a->seq(), Str(a->client_id()), Str(a->update_id()), a->base_version(),
                           a->staleness(), a->weight(), a->num_samples(), a->train_loss()});
    }
  }
  if (r.dropped()) {
    for (const auto* d : *r.dropped()) {
      v.dropped.push_back({d->seq(), Str(d->client_id()), Str(d->update_id()), d->base_version(),
                           d->staleness(), Str(d->reason())});
    }
  }
  v.mean_staleness = r.mean_staleness();
  v.max_staleness = r.max_staleness();
  v.update_norm = r.update_norm();
  v.content_hash = Str(r.content_hash());
  v.test_accuracy = r.test_accuracy();
  v.test_loss = r.test_loss();
  v.eval_samples = r.eval_samples();
  v.server_optimizer = r.server_optimizer() ? Str(r.server_optimizer()) : "sgd";
  if (const auto* l = r.privacy(); l != nullptr) {
    PrivacyLedger ledger;
    ledger.delta = l->delta();
    if (l->orders()) ledger.orders.assign(l->orders()->begin(), l->orders()->end());
    if (const auto* c = l->client(); c != nullptr) {
      ClientPrivacy cp{c->noise_multiplier(), c->clip(), c->steps(), c->epsilon(), c->budget(), {}};
      if (c->rdp()) cp.rdp.assign(c->rdp()->begin(), c->rdp()->end());
      ledger.client = std::move(cp);
    }
    if (l->workers()) {
      for (const auto* w : *l->workers()) {
        WorkerPrivacy wp{Str(w->client_id()), w->updates(), w->non_private_updates(), w->steps(),
                         w->noise_multiplier(), w->sample_rate(), w->epsilon(), {}};
        if (w->rdp()) wp.rdp.assign(w->rdp()->begin(), w->rdp()->end());
        ledger.workers.push_back(std::move(wp));
      }
    }
    v.privacy = std::move(ledger);
  }
  if (r.factors()) {
    for (const auto* f : *r.factors()) v.factors.push_back(DecodeFactorScore(*f));
  }
  v.config = Str(r.config());
  if (const auto* s = r.settings(); s != nullptr) {
    EngineSettings e;
    e.method = Str(s->method());
    if (s->params()) {
      for (const auto* p : *s->params()) {
        e.params.push_back({Str(p->name()), p->number(),
                            p->choice() ? std::optional<std::string>(Str(p->choice())) : std::nullopt});
      }
    }
    e.mode = s->mode();
    e.buffer_size = s->buffer_size();
    e.fedasync_alpha = s->fedasync_alpha();
    e.round_size = s->round_size();
    e.own_rank_scale = s->own_rank_scale();
    e.server_optimizer = Str(s->server_optimizer());
    e.server_lr = s->server_lr();
    e.server_beta1 = s->server_beta1();
    e.server_beta2 = s->server_beta2();
    e.server_eps = s->server_eps();
    e.server_weight_decay = s->server_weight_decay();
    e.staleness = Str(s->staleness());
    e.staleness_a = s->staleness_a();
    e.staleness_b = s->staleness_b();
    e.max_staleness = s->max_staleness();
    e.client_dp_noise = s->client_dp_noise();
    e.client_dp_clip = s->client_dp_clip();
    e.client_dp_budget = s->client_dp_budget();
    e.dp_delta = s->dp_delta();
    v.settings = std::move(e);
  }
  v.origin = Str(r.origin());
  if (r.has_rollback_to()) v.rollback_to = r.rollback_to();
  return v;
}

flatbuffers::Offset<store::FactorScore> BuildFactorScore(flatbuffers::FlatBufferBuilder& b, const FactorScore& f,
                                                         bool with_fisher) {
  flatbuffers::Offset<flatbuffers::Vector<float>> fisher_b = 0, fisher_a = 0;
  if (with_fisher) {
    fisher_b = b.CreateVector(f.fisher[0]);
    fisher_a = b.CreateVector(f.fisher[1]);
  }
  return store::CreateFactorScore(b, b.CreateString(f.module), f.active, f.seen[0], f.seen[1], f.score[0],
                                  f.score[1], fisher_b, fisher_a);
}

FactorScore DecodeFactorScore(const store::FactorScore& f) {
  FactorScore out;
  out.module = Str(f.module_name());
  out.active = f.active();
  out.seen[0] = f.seen_b();
  out.seen[1] = f.seen_a();
  out.score[0] = f.score_b();
  out.score[1] = f.score_a();
  if (f.fisher_b()) out.fisher[0].assign(f.fisher_b()->begin(), f.fisher_b()->end());
  if (f.fisher_a()) out.fisher[1].assign(f.fisher_a()->begin(), f.fisher_a()->end());
  return out;
}

std::string_view ModeName(wire::Mode mode) {
  switch (mode) {
    case wire::Mode::FedAsync: return "fedasync";
    case wire::Mode::FedBuff: return "fedbuff";
    case wire::Mode::Sync: return "sync";
  }
  return "unknown";
}

}  // namespace fedlora::codec
