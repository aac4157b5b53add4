#include "schema/hash.h"

#include <sodium.h>

#include <cstdlib>

namespace fedlora {
namespace {

struct Blake2b {
  crypto_generichash_state state;
  Blake2b() {
    // sodium_init is idempotent and thread-safe; generichash itself needs no global state,
    // but calling it keeps libsodium's CPU feature detection (and so its speed) in effect.
    if (sodium_init() < 0) std::abort();
    crypto_generichash_init(&state, nullptr, 0, 16);
  }
  void Update(const void* data, size_t n) {
    crypto_generichash_update(&state, static_cast<const unsigned char*>(data), n);
  }
  Digest128 Final() {
    Digest128 out;
    crypto_generichash_final(&state, out.data(), out.size());
    return out;
  }
};

}  // namespace

Digest128 HashBytes(std::span<const std::byte> bytes) {
  Blake2b h;
  h.Update(bytes.data(), bytes.size());
  return h.Final();
}

Digest128 HashAdapter(const AdapterState& state) {
  Blake2b h;
  for (const auto& t : state.tensors) {
    const uint64_t name_len = t.name.size();
    h.Update(&name_len, sizeof(name_len));
    h.Update(t.name.data(), t.name.size());
    const uint64_t rank = t.shape.size();
    h.Update(&rank, sizeof(rank));
    h.Update(t.shape.data(), t.shape.size() * sizeof(uint32_t));
    h.Update(t.values.data(), t.values.size() * sizeof(float));
  }
  return h.Final();
}

std::string ToHex(std::span<const uint8_t> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string s;
  s.reserve(bytes.size() * 2);
  for (uint8_t b : bytes) {
    s.push_back(kDigits[b >> 4]);
    s.push_back(kDigits[b & 15]);
  }
  return s;
}

}  // namespace fedlora
