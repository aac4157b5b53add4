#include "aggregator/rollback.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include <cmath>

#include "aggregator/commit.h"
#include "aggregator/engine_flags.h"
#include "aggregator/server_state.h"
#include "ops/observe/http.h"
#include "storage/reader.h"
#include "schema/hash.h"

namespace fedlora::aggregator {

Result<PreparedRollback> PrepareRollback(storage::AdapterStore& store, const EngineOptions& options,
                                         const std::string& adapter_id, uint64_t to, Engine::BaseLookup base_lookup) {
  ASSIGN_OR_RETURN(std::optional<storage::Cursor> cursor, store.GetCursor(adapter_id));
  if (!cursor) return NotFound(fmt::format("the store has no adapter '{}'", adapter_id));
  const uint64_t current = cursor->version;
  if (to > current) {
    return NotFound(fmt::format("adapter '{}' has versions 0 to {}; there is no version {} to roll back to", adapter_id,
                                current, to));
  }
  ASSIGN_OR_RETURN(codec::DecodedGlobal latest, storage::ReadVersion(store, adapter_id, current));
  if (latest.info.final) {
    return FailedPrecondition(fmt::format("version {} of '{}' is final: a final adapter takes no more versions",
                                          current, adapter_id));
  }
  ASSIGN_OR_RETURN(codec::DecodedGlobal target, storage::ReadVersion(store, adapter_id, to));
  // Everything committed with version N, as a restarted aggregator would resume it.
  ServerState state;
  ASSIGN_OR_RETURN(std::optional<std::string> stored, store.GetServerState(adapter_id));
  if (stored) {
    ASSIGN_OR_RETURN(state, DecodeServerState(codec::AsBytes(*stored), latest.spec));
  }
  ASSIGN_OR_RETURN(codec::VersionInfo record, storage::ReadVersionInfo(store, adapter_id, current));
  state.ledger = std::move(record.privacy);
  state.version = current + 1;
  if (!state.optimizer.empty()) {
    state.optimizer.version = current + 1;
    for (size_t i = 0; i < state.optimizer.steps.size(); ++i) {
      state.optimizer.steps[i] = 0;
      std::fill(state.optimizer.m[i].begin(), state.optimizer.m[i].end(), 0.0f);
      std::fill(state.optimizer.v[i].begin(), state.optimizer.v[i].end(), 0.0f);
    }
  }
  if (to < current) state.rolled_back.push_back({to + 1, current});

  codec::VersionInfo info;
  info.adapter_id = adapter_id;
  info.version = current + 1;
  info.parent_version = current;
  info.mode = options.mode;
  info.method = std::string(options.method.name());
  info.server_optimizer = std::string(ServerOptimizerName(options.server_optimizer.kind));
  info.consumed_seq = cursor->consumed_seq;
  info.content_hash = ToHex(HashAdapter(target.state));
  // The norm of the change, as for any version: ||restored - version N||.
  double squares = 0;
  for (size_t t = 0; t < target.state.tensors.size() && t < latest.state.tensors.size(); ++t) {
    const auto& a = target.state.tensors[t].values;
    const auto& b = latest.state.tensors[t].values;
    for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
      const double d = static_cast<double>(a[i]) - b[i];
      squares += d * d;
    }
  }
  info.update_norm = static_cast<float>(std::sqrt(squares));
  info.rollback_to = to;
  info.origin = fmt::format("rollback to version {}", to);
  ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine,
                   Engine::Create(options, adapter_id, std::move(target.spec), std::move(target.state), current + 1,
                                  cursor->consumed_seq, std::move(base_lookup), std::move(state)));
  info.privacy = engine->ledger();
  for (auto f : engine->saved_state().factors) {
    f.fisher[0].clear();  // the record keeps the choice and scores, not the Fisher proxies
    f.fisher[1].clear();
    info.factors.push_back(std::move(f));
  }
  return PreparedRollback{std::move(engine), std::move(info)};
}

Result<RollbackOutcome> RollbackStoredAdapter(const storage::StoreLayout& layout, const std::string& adapter,
                                              const std::string& to_text) {
  auto stored = storage::StoredAdapter::Open(layout, adapter, /*writable=*/true);
  if (!stored.ok()) {
    if (stored.status().message().find("lock") != std::string::npos) {
      return FailedPrecondition(fmt::format(
          "{}: an aggregator holds the store; roll the live adapter back through it instead: fedlora rollback --to "
          "{} --aggregator HOST:PORT (its --http address)",
          layout.adapters(), to_text));
    }
    return stored.status();
  }
  ASSIGN_OR_RETURN(uint64_t to, storage::ResolveVersion(layout, adapter, to_text));
  const uint64_t current = stored->cursor().version;
  if (to > current) {
    return NotFound(fmt::format("adapter '{}' has versions 0 to {}; there is no version {} to roll back to", adapter,
                                current, to));
  }
  if (to == current) {
    return InvalidArgument(fmt::format("'{}' is at version {} already: roll back to an earlier version", adapter, to));
  }
  ASSIGN_OR_RETURN(codec::VersionInfo latest, stored->Record(current));
  auto options = RecordedEngineOptions(latest);
  if (options.status().code() == Code::kNotFound) {
    return FailedPrecondition(fmt::format("version {} recorded no settings (a store older than the record): roll back "
                                          "through a running aggregator instead",
                                          current));
  }
  if (!options.ok()) return options.status();
  VersionCache bases(stored->store(), adapter);
  ASSIGN_OR_RETURN(PreparedRollback prepared,
                   PrepareRollback(stored->store(), *options, adapter, to,
                                               [&bases](uint64_t v) { return bases.Get(v); }));
  prepared.info.commit_unix_ms = NowUnixMs();
  RETURN_IF_ERROR(CommitVersion(stored->store(), *options, prepared.engine.get(), prepared.info,
                                            prepared.engine->spec(), prepared.engine->state(), false)
                      .status());
  return RollbackOutcome{prepared.info.version, to, prepared.info.content_hash};
}

Result<RollbackOutcome> RollbackThroughAggregator(const std::string& address, const std::string& to_text) {
  ASSIGN_OR_RETURN(http::Response r, http::Fetch(address, "POST", "/api/rollback?to=" + http::UrlEncode(to_text)));
  const auto body = nlohmann::json::parse(r.body, nullptr, false);
  if (body.is_discarded()) return Unavailable(fmt::format("{} answered {} with no JSON body", address, r.status));
  if (r.status != 200) {
    const std::string message = body.value("error", r.body);
    switch (r.status) {
      case 400: return InvalidArgument(message);
      case 403: return PermissionDenied(message);
      case 404: return NotFound(message);
      case 409: return FailedPrecondition(message);
      default: return Unavailable(message);
    }
  }
  return RollbackOutcome{body.at("version").get<uint64_t>(), body.at("rollback_to").get<uint64_t>(),
                         body.at("content_hash").get<std::string>()};
}

}  // namespace fedlora::aggregator
