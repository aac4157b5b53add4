#include "aggregator/commit.h"

#include <fmt/format.h>

#include <chrono>

#include "aggregator/engine_config.h"
#include "aggregator/server_state.h"
#include "schema/hash.h"

namespace fedlora::aggregator {

Result<std::shared_ptr<const std::string>> CommitVersion(storage::AdapterStore& store, const EngineOptions& options,
                                                         const Engine* engine, codec::VersionInfo& info,
                                                         const AdapterSpec& spec, const AdapterState& state,
                                                         bool final, std::string_view log_id,
                                                         std::string_view consumed_hash) {
  info.settings = EngineSettingsOf(options);
  info.config.clear();  // the flags text of older stores; the table replaces it
  MethodState method_state;
  if (engine != nullptr) {
    method_state = engine->method_state();
  } else {
    ASSIGN_OR_RETURN(method_state, MethodStateOf(options, spec, info.version));
  }
  codec::GlobalInfo g{info.adapter_id, info.version, info.content_hash, info.consumed_seq,
                      options.mode,    final,        std::move(method_state)};
  codec::Bytes global = codec::BuildGlobal(g, spec, state);
  codec::Bytes record = codec::BuildVersionRecord(info);
  // Adam's moments, the noise seed, AS-LoRA's scores and the ledger belong to the version:
  // same atomic write (version 0 has none yet).
  codec::Bytes server_state;
  if (engine != nullptr) {
    const ServerState saved = engine->saved_state();
    if (!saved.empty()) server_state = EncodeServerState(info.adapter_id, spec, info.version, saved);
  }
  RETURN_IF_ERROR(store.Commit({info.adapter_id, info.version, info.consumed_seq, codec::AsBytes(global),
                                codec::AsBytes(record), codec::AsBytes(server_state), log_id, consumed_hash}));
  return std::make_shared<const std::string>(reinterpret_cast<const char*>(global.data()), global.size());
}

uint64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void FillVersionZero(codec::VersionInfo& info, const std::string& adapter_id, const EngineOptions& options,
                     const AdapterState& state) {
  info.adapter_id = adapter_id;
  info.version = 0;
  info.mode = options.mode;
  info.method = std::string(options.method.name());
  info.server_optimizer = std::string(ServerOptimizerName(options.server_optimizer.kind));
  info.content_hash = ToHex(HashAdapter(state));
}

Result<std::shared_ptr<const AdapterState>> VersionCache::Get(uint64_t version) {
  for (auto it = entries_.begin(); it != entries_.end(); ++it) {
    if (it->first == version) {
      entries_.splice(entries_.begin(), entries_, it);
      return it->second;
    }
  }
  ASSIGN_OR_RETURN(codec::DecodedGlobal decoded, storage::ReadVersion(store_, adapter_id_, version));
  auto state = std::make_shared<const AdapterState>(std::move(decoded.state));
  entries_.emplace_front(version, state);
  if (entries_.size() > capacity_) entries_.pop_back();
  return state;
}

Result<ResumedEngine> ResumeEngine(storage::AdapterStore& store, const EngineOptions& options,
                                   const std::string& adapter_id, Engine::BaseLookup base_lookup) {
  ASSIGN_OR_RETURN(std::optional<storage::Cursor> cursor, store.GetCursor(adapter_id));
  if (!cursor) return NotFound(fmt::format("the store has no adapter '{}'", adapter_id));
  ASSIGN_OR_RETURN(codec::DecodedGlobal current, storage::ReadVersion(store, adapter_id, cursor->version));
  if (current.info.method.method != options.method.name()) {
    return FailedPrecondition(fmt::format("adapter '{}' is trained with method '{}', not '{}': use that method or another store",
                                          adapter_id, current.info.method.method, options.method.name()));
  }
  ServerState server_state;
  ASSIGN_OR_RETURN(std::optional<std::string> stored_state, store.GetServerState(adapter_id));
  if (stored_state) {
    ASSIGN_OR_RETURN(server_state, DecodeServerState(codec::AsBytes(*stored_state), current.spec));
  }
  // The privacy ledger lives in the version's record.
  ASSIGN_OR_RETURN(codec::VersionInfo latest, storage::ReadVersionInfo(store, adapter_id, cursor->version));
  server_state.ledger = std::move(latest.privacy);
  ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine,
                   Engine::Create(options, adapter_id, std::move(current.spec), std::move(current.state),
                                  cursor->version, cursor->consumed_seq, std::move(base_lookup),
                                  std::move(server_state)));
  return ResumedEngine{std::move(engine), current.info.final};
}

}  // namespace fedlora::aggregator
