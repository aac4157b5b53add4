// The engine's settings as text: the canonical `fedlora aggregator` flags that reproduce an
// EngineOptions exactly (every field, defaults included, numbers printed so they read back
// bit for bit). The aggregator records this string in every version's lineage, so that
// `fedlora replay` knows which settings made each version, and a what-if replay is those
// flags with some changed. Parsing lives with the flag definitions (ops/flags.h).
// The client-level DP noise seed is secret and never part of it (it is in the server state).
// Thread safety: pure functions.
#pragma once

#include <string>

#include "aggregator/engine.h"

namespace fedlora::aggregator {

// "--method fedavg --mode fedbuff --buffer-size 6 ...", one space between tokens, no quoting
// needed (no value contains a space).
std::string EngineConfigFlags(const EngineOptions& options);

}  // namespace fedlora::aggregator
