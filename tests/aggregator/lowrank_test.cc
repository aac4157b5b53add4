// Exactness of the product-space algebra behind flora: stacking, the SVD of a product, and the
// truncated re-factorisation.
#include "aggregator/methods/lowrank.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

namespace fedlora::methods::lowrank {
namespace {

Factors RandomFactors(uint32_t rows, uint32_t cols, uint32_t rank, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(0.0, 1.0);
  Factors f{rows, cols, rank, {}, {}};
  f.b.resize(static_cast<size_t>(rows) * rank);
  f.a.resize(static_cast<size_t>(rank) * cols);
  for (double& x : f.b) x = dist(rng);
  for (double& x : f.a) x = dist(rng);
  return f;
}

double MaxAbsDiff(const std::vector<double>& x, const std::vector<double>& y) {
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::abs(x[i] - y[i]));
  return m;
}

double FrobeniusSq(const std::vector<double>& x) {
  double s = 0;
  for (double v : x) s += v * v;
  return s;
}

TEST(LowRankTest, StackingIsExactlyTheWeightedSumOfProductsWhateverTheRanks) {
  const Factors f1 = RandomFactors(7, 5, 1, 1), f2 = RandomFactors(7, 5, 3, 2), f3 = RandomFactors(7, 5, 4, 3);
  const std::vector<std::pair<double, const Factors*>> terms = {{0.5, &f1}, {0.3, &f2}, {0.2, &f3}};
  const Factors stacked = Stack(terms);
  EXPECT_EQ(stacked.rank, 8u);
  std::vector<double> expected(35, 0.0);
  for (const auto& [w, f] : terms) {
    const auto p = Product(*f);
    for (size_t i = 0; i < p.size(); ++i) expected[i] += w * p[i];
  }
  EXPECT_LT(MaxAbsDiff(Product(stacked), expected), 1e-12);
}

void ExpectSvdReconstructs(const Factors& f) {
  const Svd svd = ProductSvd(f);
  const auto p = Product(f);
  std::vector<double> rebuilt(p.size(), 0.0);
  for (size_t c = 0; c < svd.s.size(); ++c) {
    if (c > 0) {
      EXPECT_GE(svd.s[c - 1], svd.s[c]);
    }
    for (uint32_t i = 0; i < f.rows; ++i) {
      for (uint32_t j = 0; j < f.cols; ++j) {
        rebuilt[static_cast<size_t>(i) * f.cols + j] += svd.u[c * f.rows + i] * svd.s[c] * svd.v[c * f.cols + j];
      }
    }
    // Orthonormal singular vectors.
    for (size_t d = 0; d <= c; ++d) {
      double uu = 0, vv = 0;
      for (uint32_t i = 0; i < f.rows; ++i) uu += svd.u[c * f.rows + i] * svd.u[d * f.rows + i];
      for (uint32_t j = 0; j < f.cols; ++j) vv += svd.v[c * f.cols + j] * svd.v[d * f.cols + j];
      EXPECT_NEAR(uu, c == d ? 1.0 : 0.0, 1e-9);
      EXPECT_NEAR(vv, c == d ? 1.0 : 0.0, 1e-9);
    }
  }
  EXPECT_LT(MaxAbsDiff(rebuilt, p), 1e-9);
}

TEST(LowRankTest, SvdOfAProductReconstructsItOnTheDenseAndTheFactoredRoute) {
  ExpectSvdReconstructs(RandomFactors(6, 4, 9, 4));    // rank above the dims: dense route
  ExpectSvdReconstructs(RandomFactors(40, 30, 3, 5));  // thin: QR route
  // Dependent columns (the same factor twice with opposite signs cancels): numerical rank 2.
  const Factors f = RandomFactors(40, 30, 2, 6);
  const std::vector<std::pair<double, const Factors*>> terms = {{1.0, &f}, {1.0, &f}, {-0.5, &f}};
  const Factors stacked = Stack(terms);
  EXPECT_EQ(ProductSvd(stacked).s.size(), 2u);
  ExpectSvdReconstructs(stacked);
}

TEST(LowRankTest, RefactorIsTheBestRankRApproximation) {
  const Factors f = RandomFactors(12, 10, 6, 7);  // rank 6 product
  const auto p = Product(f);
  const Svd full = DenseSvd(p, 12, 10);
  ASSERT_EQ(full.s.size(), 6u);
  for (uint32_t r : {1u, 2u, 4u}) {
    const Factors g = Refactor(f, r, 0.5);
    ASSERT_EQ(g.rank, r);
    std::vector<double> residual = p;
    const auto q = Product(g);
    for (size_t i = 0; i < q.size(); ++i) residual[i] -= q[i];
    // Eckart-Young: the error of the best rank-r approximation is the tail of the spectrum.
    double tail = 0;
    for (size_t i = r; i < full.s.size(); ++i) tail += full.s[i] * full.s[i];
    EXPECT_NEAR(FrobeniusSq(residual), tail, 1e-9 * FrobeniusSq(p));
    // Any other rank-r factorisation does no better, e.g. the first r ranks of the input.
    Factors head{f.rows, f.cols, r, {}, {}};
    for (uint32_t i = 0; i < f.rows; ++i) {
      for (uint32_t l = 0; l < r; ++l) head.b.push_back(f.b[i * f.rank + l]);
    }
    head.a.assign(f.a.begin(), f.a.begin() + static_cast<ptrdiff_t>(r * f.cols));
    std::vector<double> other = p;
    const auto h = Product(head);
    for (size_t i = 0; i < h.size(); ++i) other[i] -= h[i];
    EXPECT_GE(FrobeniusSq(other), tail);
    // A's rows are orthogonal with the requested norm.
    for (uint32_t i = 0; i < r; ++i) {
      for (uint32_t k = 0; k <= i; ++k) {
        double dot = 0;
        for (uint32_t j = 0; j < f.cols; ++j) dot += g.a[i * f.cols + j] * g.a[k * f.cols + j];
        EXPECT_NEAR(dot, i == k ? 0.25 : 0.0, 1e-9);
      }
    }
  }
}

TEST(LowRankTest, RefactorOfARankDeficientProductKeepsATrainableOrthogonalA) {
  Factors zero{5, 4, 2, std::vector<double>(10, 0.0), std::vector<double>(8, 1.0)};
  const Factors g = Refactor(zero, 3, 0.6);
  for (double b : g.b) EXPECT_EQ(b, 0.0);
  for (uint32_t i = 0; i < 3; ++i) {
    for (uint32_t k = 0; k <= i; ++k) {
      double dot = 0;
      for (uint32_t j = 0; j < 4; ++j) dot += g.a[i * 4 + j] * g.a[k * 4 + j];
      EXPECT_NEAR(dot, i == k ? 0.36 : 0.0, 1e-12);
    }
  }
}

}  // namespace
}  // namespace fedlora::methods::lowrank
