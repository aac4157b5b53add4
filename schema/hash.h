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

// SplitMix64's finaliser: a well-mixed 64-bit value of x, for deriving seeds (not for security).
constexpr uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace fedlora
