#include "ops/observe/percentile.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace fedlora::observe {
namespace {

std::vector<double> OneTo(int n) {
  std::vector<double> v(n);
  std::iota(v.begin(), v.end(), 1.0);
  return v;
}

TEST(Percentile, NearestRankOfOneToHundred) {
  const std::vector<double> v = OneTo(100);
  EXPECT_EQ(Percentile(v, 0.50), 50);
  EXPECT_EQ(Percentile(v, 0.99), 99);
  EXPECT_EQ(Percentile(v, 0.0), 1);
  EXPECT_EQ(Percentile(v, 1.0), 100);
  EXPECT_EQ(Percentile(v, 0.01), 1);
  EXPECT_EQ(Percentile(v, 0.011), 2);  // a rank begun is the next rank
  EXPECT_EQ(Percentile(v, 0.995), 100);
}

// 0.07 * 100, 0.14 * 100 and 0.55 * 100 come out a hair above 7, 14 and 55 in binary; a plain
// ceil would answer 8, 15 and 56.
TEST(Percentile, InexactProductsKeepTheirRank) {
  const std::vector<double> v = OneTo(100);
  EXPECT_EQ(Percentile(v, 0.07), 7);
  EXPECT_EQ(Percentile(v, 0.14), 14);
  EXPECT_EQ(Percentile(v, 0.55), 55);
  EXPECT_EQ(Percentile(OneTo(10), 0.9), 9);
  EXPECT_EQ(Percentile(OneTo(10), 0.91), 10);
}

TEST(Percentile, SingleElementIsEveryPercentile) {
  for (double p : {0.0, 0.01, 0.5, 0.99, 1.0}) EXPECT_EQ(Percentile(std::vector<double>{42.5}, p), 42.5) << p;
}

TEST(Percentile, UnsortedInputWithDuplicates) {
  const std::vector<double> v = {5, 1, 4, 2, 3, 2};  // sorted: 1 2 2 3 4 5
  EXPECT_EQ(Percentile(v, 0.5), 2);                  // rank 3
  EXPECT_EQ(Percentile(v, 0.51), 3);                 // rank 4
  EXPECT_EQ(Percentile(v, 0.99), 5);
  EXPECT_EQ(Percentile(v, 0.0), 1);
  EXPECT_EQ(v, (std::vector<double>{5, 1, 4, 2, 3, 2}));  // the caller's copy is untouched
}

TEST(Percentile, EmptyIsZeroAndOutOfRangeIsClamped) {
  EXPECT_EQ(Percentile({}, 0.5), 0);
  EXPECT_EQ(Percentile(std::vector<double>(), 0.99), 0);
  const std::vector<double> v = OneTo(10);
  EXPECT_EQ(Percentile(v, -1), 1);
  EXPECT_EQ(Percentile(v, 2), 10);
  EXPECT_EQ(Percentile(v, std::numeric_limits<double>::quiet_NaN()), 1);
}

}  // namespace
}  // namespace fedlora::observe
