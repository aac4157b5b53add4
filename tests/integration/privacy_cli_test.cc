// `fedlora privacy` from the outside: the accountant's answers and its refusals.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tests/testing/process.h"

namespace fedlora {
namespace {

using nlohmann::json;
using testing::RunCapture;

constexpr const char* kBinary = FEDLORA_BINARY;

TEST(PrivacyCli, EpsilonOfANoiseMultiplierAndNoiseForATargetEpsilon) {
  int rc = -1;
  // Opacus's published case (accountants_test.py): q 0.04, sigma 1.5, 2250 steps -> 7.32911117143.
  std::string out = RunCapture(std::string(kBinary) +
                                   " privacy -q 0.04 --noise-multiplier 1.5 --steps 2250 --delta 1e-5 --json 2>&1",
                               &rc);
  ASSERT_EQ(rc, 0) << out;
  json j = json::parse(out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << out;
  EXPECT_NEAR(j["epsilon"].get<double>(), 7.32911117143, 1e-6);

  out = RunCapture(std::string(kBinary) + " privacy -q 0.04 --epsilon 7.32911117143 --steps 2250 --json 2>&1", &rc);
  ASSERT_EQ(rc, 0) << out;
  j = json::parse(out, nullptr, false);
  EXPECT_NEAR(j["noise_multiplier"].get<double>(), 1.5, 1e-4);
  EXPECT_LE(j["epsilon"].get<double>(), 7.32911117143);

  out = RunCapture(std::string(kBinary) + " privacy -q 0.04 --steps 10 2>&1", &rc);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("give --noise-multiplier or --epsilon"), std::string::npos) << out;
  out = RunCapture(std::string(kBinary) + " privacy -q 1 --steps 1000000000 --epsilon 0.001 --delta 1e-10 2>&1", &rc);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("out of reach"), std::string::npos) << out;
}

}  // namespace
}  // namespace fedlora
