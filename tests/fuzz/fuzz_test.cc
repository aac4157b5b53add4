// The fuzz target's invariants on the seed corpus and on a fixed set of mutations of it, in
// every build (ops/fuzz runs the open-ended, coverage-guided search with libFuzzer).
#include <gtest/gtest.h>

#include <random>

#include "tests/fuzz/wire_target.h"

namespace fedlora::fuzz {
namespace {

using Buffer = std::vector<std::byte>;

std::span<const std::byte> View(const codec::Bytes& b) {
  return {reinterpret_cast<const std::byte*>(b.data()), b.size()};
}

TEST(WireFuzz, EverySeedIsValidAndPassesTheInvariants) {
  const auto seeds = SeedMessages();
  ASSERT_GE(seeds.size(), 13u);
  for (const auto& [name, bytes] : seeds) {
    const bool record = name == "version-record";
    EXPECT_EQ(record ? codec::VerifyVersionRecord(View(bytes)).ok() : codec::VerifyEnvelope(View(bytes)).ok(), true)
        << name;
    const Status s = CheckInput(View(bytes));
    EXPECT_TRUE(s.ok()) << name << ": " << s.ToString();
  }
}

// Truncations at every length, then bit flips, byte overwrites, insertions and deletions from a
// fixed seed: the same 30,000-odd inputs on every run.
TEST(WireFuzz, MutatedSeedsNeverBreakAnInvariant) {
  std::mt19937 rng(20261122);
  size_t inputs = 0, accepted_updates = 0, refused = 0;
  for (const auto& [name, message] : SeedMessages()) {
    const auto bytes = View(message);
    const Buffer seed(bytes.begin(), bytes.end());
    std::vector<Buffer> cases;
    for (size_t n = 0; n < seed.size(); ++n) cases.emplace_back(seed.begin(), seed.begin() + n);
    for (int i = 0; i < 2000; ++i) {
      Buffer b = seed;
      const int edits = 1 + static_cast<int>(rng() % 4);
      for (int e = 0; e < edits && !b.empty(); ++e) {
        const size_t at = rng() % b.size();
        switch (rng() % 4) {
          case 0:
            b[at] ^= static_cast<std::byte>(1u << (rng() % 8));
            break;
          case 1: {
            static constexpr uint8_t kInteresting[] = {0x00, 0x01, 0x7f, 0x80, 0xff, 0xfe};
            b[at] = static_cast<std::byte>(kInteresting[rng() % sizeof(kInteresting)]);
            break;
          }
          case 2:
            b.insert(b.begin() + static_cast<ptrdiff_t>(at), static_cast<std::byte>(rng() & 0xff));
            break;
          default:
            b.erase(b.begin() + static_cast<ptrdiff_t>(at));
        }
      }
      cases.push_back(std::move(b));
    }
    for (const auto& c : cases) {
      ++inputs;
      const Status s = CheckInput(c);
      ASSERT_TRUE(s.ok()) << name << " mutated (" << c.size() << " bytes): " << s.ToString();
      auto env = codec::VerifyEnvelope(c);
      if (!env.ok()) {
        ++refused;
      } else if ((*env)->body_type() == wire::Body::Update) {
        accepted_updates++;
      }
    }
  }
  // The mutations reach both sides: some still verify as updates, many are refused.
  EXPECT_GT(accepted_updates, 100u);
  EXPECT_GT(refused, 1000u);
  std::printf("%zu inputs: %zu verified updates, %zu refused envelopes\n", inputs, accepted_updates, refused);
}

// Found by `ops/fuzz` in its first CI run: a Deliver whose seqs vector passes the FlatBuffers
// verifier (which checks only the 4-byte length prefix) with its 8-byte elements at 4 mod 8, so
// reading them was a misaligned load (UBSan). The envelope check now refuses it.
TEST(WireFuzz, MisalignedEightByteVectorIsRefused) {
  alignas(8) static const uint8_t kInput[] = {
    0x14, 0x00, 0x00, 0x00, 0x46, 0x4c, 0x52, 0x31, 0x00, 0x00, 0x0a, 0x00, 0x0e, 0x00, 0x00, 0x00,
    0x07, 0x00, 0x08, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, 0x10, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x0a, 0x00, 0x18, 0x00, 0x04, 0x00, 0x08, 0x00, 0x0c, 0x00, 0x0a, 0x00, 0x00, 0x00,
    0x34, 0x00, 0x00, 0x00, 0x0c, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x03, 0x00, 0x00, 0x00, 0x73, 0x6c, 0x74, 0x00, 0x10, 0x00, 0x1c, 0x00, 0x14, 0x00, 0x04, 0x00,
    0x08, 0x00, 0x00, 0x00, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x65, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x75, 0x39, 0x00,
    0x00, 0x02, 0x00, 0x00, 0x06, 0x10, 0x00, 0x00, 0x08, 0x00, 0x0c, 0x00, 0x00, 0x00, 0x1c, 0x00,
    0x10, 0x00, 0x14, 0x00, 0x18, 0x00, 0x14, 0x00, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0x2c, 0x00,
    0x00, 0x00, 0x1c, 0x00, 0x65, 0x66, 0x61, 0x75, 0x6c, 0x74, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00,
    0x68, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0xb0, 0xff, 0xff, 0xff, 0x14, 0x00, 0x00, 0x00,
    0x18, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x24, 0x00, 0x00, 0x00, 0x2c, 0x00,
  };
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(kInput), sizeof(kInput));
  auto env = codec::VerifyEnvelope(bytes);
  ASSERT_FALSE(env.ok());
  EXPECT_NE(env.status().message().find("aligned"), std::string::npos) << env.status().ToString();
  EXPECT_TRUE(CheckInput(bytes).ok());
}

}  // namespace
}  // namespace fedlora::fuzz
