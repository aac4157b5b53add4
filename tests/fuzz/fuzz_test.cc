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

}  // namespace
}  // namespace fedlora::fuzz
