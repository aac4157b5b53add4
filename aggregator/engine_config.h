// The engine's settings as a stored value and as text. Every version's record holds the
// EngineSettings table (schema/store.fbs) of the options that made it, so that `fedlora replay`
// knows which settings made each version; stores written before 2026-12-06 hold the same as
// canonical `fedlora aggregator` flags instead. The text form (every field, defaults included,
// numbers printed so they read back bit for bit) is what a what-if replay changes some flags
// of, and what `fedlora log` shows; parsing it lives with the flag definitions (ops/flags.h).
// The client-level DP noise seed is secret and never part of either (it is in the server state).
// Thread safety: pure functions.
#pragma once

#include <string>

#include "aggregator/engine.h"

namespace fedlora::aggregator {

// "--method fedavg --mode fedbuff --buffer-size 6 ...", one space between tokens, no quoting
// needed (no value contains a space).
std::string EngineConfigFlags(const EngineOptions& options);

// The stored form of `options`: every field, the staleness exponent resolved to its value.
codec::EngineSettings EngineSettingsOf(const EngineOptions& options);
// The options a stored EngineSettings describes (exactly: EngineSettingsOf of the result equals
// `settings`). Errors: kInvalidArgument (an unknown method, optimizer or staleness function, a
// hyperparameter the method does not have or a choice it does not offer).
Result<EngineOptions> EngineOptionsOf(const codec::EngineSettings& settings);
// A version's recorded settings as canonical flags: from its settings table, else the flags of
// a store from before the table, else "" (a store older still). Errors: EngineOptionsOf's.
Result<std::string> RecordedConfig(const codec::VersionInfo& info);

}  // namespace fedlora::aggregator
