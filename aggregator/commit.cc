#include "aggregator/commit.h"

#include <fmt/format.h>

#include "aggregator/engine_config.h"
#include "aggregator/server_state.h"

namespace fedlora::aggregator {

Result<std::shared_ptr<const std::string>> CommitVersion(storage::AdapterStore& store, const EngineOptions& options,
                                                         const Engine* engine, codec::VersionInfo& info,
                                                         const AdapterSpec& spec, const AdapterState& state,
                                                         bool final) {
  info.config = EngineConfigFlags(options);
  codec::GlobalInfo g{info.adapter_id, info.version,
                      info.content_hash, info.consumed_seq,
                      options.mode,      final,
                      engine != nullptr ? engine->method_state() : MethodStateAt(options.method, spec.rank, info.version)};
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
                                codec::AsBytes(record), codec::AsBytes(server_state)}));
  return std::make_shared<const std::string>(reinterpret_cast<const char*>(global.data()), global.size());
}

Result<ResumedEngine> ResumeEngine(storage::AdapterStore& store, const EngineOptions& options,
                                   const std::string& adapter_id, Engine::BaseLookup base_lookup) {
  ASSIGN_OR_RETURN(std::optional<storage::Cursor> cursor, store.GetCursor(adapter_id));
  if (!cursor) return NotFound(fmt::format("the store has no adapter '{}'", adapter_id));
  ASSIGN_OR_RETURN(codec::DecodedGlobal current, storage::ReadVersion(store, adapter_id, cursor->version));
  if (current.info.method.method != options.method.method) {
    return FailedPrecondition(fmt::format("adapter '{}' is trained with method '{}', not '{}': use that method or another store",
                                          adapter_id,
                                          MethodName(current.info.method.method), MethodName(options.method.method)));
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
