#include "aggregator/staleness.h"

#include <gtest/gtest.h>

#include <cmath>

namespace fedlora::aggregator {
namespace {

TEST(StalenessTest, ConstantIsAlwaysOne) {
  StalenessOptions o;
  o.fn = StalenessFn::kConstant;
  EXPECT_DOUBLE_EQ(StalenessWeight(o, 0), 1.0);
  EXPECT_DOUBLE_EQ(StalenessWeight(o, 1000), 1.0);
}

TEST(StalenessTest, PolynomialIsInverseRootOfTauPlusOne) {
  StalenessOptions o{StalenessFn::kPolynomial, 0.5};
  EXPECT_DOUBLE_EQ(StalenessWeight(o, 0), 1.0);
  EXPECT_DOUBLE_EQ(StalenessWeight(o, 3), 0.5);
  EXPECT_NEAR(StalenessWeight(o, 8), 1.0 / 3.0, 1e-12);
  o.a = 1.0;
  EXPECT_DOUBLE_EQ(StalenessWeight(o, 4), 0.2);
}

TEST(StalenessTest, HingeKeepsFullWeightUpToB) {
  StalenessOptions o{StalenessFn::kHinge, 10, 4};
  EXPECT_DOUBLE_EQ(StalenessWeight(o, 0), 1.0);
  EXPECT_DOUBLE_EQ(StalenessWeight(o, 4), 1.0);
  EXPECT_DOUBLE_EQ(StalenessWeight(o, 5), 1.0 / 11.0);
  EXPECT_DOUBLE_EQ(StalenessWeight(o, 6), 1.0 / 21.0);
}

// FedAsync's hinge has slope a = 10 by default, not the polynomial exponent's 0.5 (which would
// weigh an update of staleness 5 at 0.67 instead of 0.09).
TEST(StalenessTest, EachFunctionHasItsOwnDefaultParameter) {
  StalenessOptions hinge;
  hinge.fn = StalenessFn::kHinge;
  EXPECT_DOUBLE_EQ(StalenessA(hinge), 10.0);
  EXPECT_DOUBLE_EQ(StalenessWeight(hinge, 5), 1.0 / 11.0);
  StalenessOptions poly;
  EXPECT_DOUBLE_EQ(StalenessA(poly), 0.5);
  EXPECT_DOUBLE_EQ(StalenessWeight(poly, 3), 0.5);
  hinge.a = 0.5;  // an explicit slope is kept
  EXPECT_NEAR(StalenessWeight(hinge, 5), 1.0 / 1.5, 1e-12);
}

TEST(StalenessTest, WeightNeverIncreasesWithStaleness) {
  for (auto fn : {StalenessFn::kConstant, StalenessFn::kPolynomial, StalenessFn::kHinge}) {
    StalenessOptions o{fn, fn == StalenessFn::kHinge ? 10.0 : 0.5, 4};
    for (uint64_t t = 0; t < 50; ++t) EXPECT_LE(StalenessWeight(o, t + 1), StalenessWeight(o, t));
  }
}

TEST(StalenessTest, ParsesNamesAndRejectsUnknown) {
  EXPECT_EQ(*ParseStalenessFn("hinge"), StalenessFn::kHinge);
  EXPECT_EQ(ParseStalenessFn("linear").status().code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace fedlora::aggregator
