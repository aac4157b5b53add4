// Content hashes (BLAKE2b via libsodium). Used for the content hash of every adapter version
// (replay must reproduce it bit for bit) and to tell a retried update from a different update
// that reuses an id. Not a MAC: nothing here is keyed.
// Thread safety: free functions.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "schema/adapter.h"

namespace fedlora {

using Digest128 = std::array<uint8_t, 16>;

Digest128 HashBytes(std::span<const std::byte> bytes);

// Hash of an adapter's contents: every tensor's name, shape and fp32 values, in order.
// Independent of the version number, so equal contents hash equal.
Digest128 HashAdapter(const AdapterState& state);

std::string ToHex(std::span<const uint8_t> bytes);

}  // namespace fedlora
