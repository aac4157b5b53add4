// The RDP accountant: closed forms where they exist, the integer and fractional series
// agreeing where they meet, composition, the tight conversion, and the noise search.
#include "aggregator/accountant.h"

#include <gtest/gtest.h>

#include <cmath>

namespace fedlora::privacy {
namespace {

TEST(AccountantTest, FullBatchIsThePlainGaussianMechanism) {
  for (double alpha : {1.5, 2.0, 7.3, 32.0}) {
    EXPECT_DOUBLE_EQ(SubsampledGaussianRdp(1.0, 2.0, alpha), alpha / 8.0);
  }
  EXPECT_EQ(SubsampledGaussianRdp(0.0, 1.0, 4.0), 0.0);
  EXPECT_TRUE(std::isinf(SubsampledGaussianRdp(0.1, 0.0, 4.0)));
}

TEST(AccountantTest, OrderTwoMatchesItsClosedForm) {
  // alpha = 2: A = (1 - q)^2 + 2 q (1 - q) + q^2 e^(1/sigma^2) = 1 + q^2 (e^(1/sigma^2) - 1).
  for (double q : {0.01, 0.2, 0.7}) {
    for (double sigma : {0.8, 1.1, 4.0}) {
      EXPECT_NEAR(SubsampledGaussianRdp(q, sigma, 2.0), std::log1p(q * q * std::expm1(1 / (sigma * sigma))), 1e-12)
          << q << " " << sigma;
    }
  }
}

TEST(AccountantTest, FractionalSeriesMeetsTheIntegerSumAtIntegerOrders) {
  // The fractional path near an integer order must agree with the exact binomial sum there.
  for (double q : {0.004, 0.05, 0.3}) {
    for (double sigma : {0.7, 1.0, 3.0}) {
      for (int alpha : {2, 3, 8, 20}) {
        const double exact = SubsampledGaussianRdp(q, sigma, alpha);
        const double below = SubsampledGaussianRdp(q, sigma, alpha - 1e-7);
        EXPECT_NEAR(below, exact, 1e-5 * std::max(exact, 1e-6)) << q << " " << sigma << " " << alpha;
      }
    }
  }
}

TEST(AccountantTest, RdpGrowsWithOrderAndSamplingAndFallsWithNoise) {
  double last = 0;
  for (double alpha : DefaultOrders()) {
    const double r = SubsampledGaussianRdp(0.01, 1.1, alpha);
    EXPECT_GE(r, last - 1e-12) << alpha;
    last = r;
  }
  EXPECT_LT(SubsampledGaussianRdp(0.01, 1.1, 8), SubsampledGaussianRdp(0.02, 1.1, 8));
  EXPECT_LT(SubsampledGaussianRdp(0.01, 1.5, 8), SubsampledGaussianRdp(0.01, 1.1, 8));
  // Subsampling amplifies: never worse than the full-batch mechanism.
  EXPECT_LT(SubsampledGaussianRdp(0.5, 1.1, 8), SubsampledGaussianRdp(1.0, 1.1, 8));
}

TEST(AccountantTest, CompositionAddsRdpOrderByOrder) {
  RdpAccountant once, split;
  ASSERT_TRUE(once.Compose(0.02, 1.3, 1000).ok());
  ASSERT_TRUE(split.Compose(0.02, 1.3, 400).ok());
  ASSERT_TRUE(split.Compose(0.02, 1.3, 600).ok());
  for (size_t i = 0; i < once.rdp().size(); ++i) EXPECT_NEAR(once.rdp()[i], split.rdp()[i], 1e-9 * once.rdp()[i]);
  EXPECT_NEAR(once.Epsilon(1e-5)->epsilon, split.Epsilon(1e-5)->epsilon, 1e-9);
  RdpAccountant restored;
  ASSERT_TRUE(restored.Restore(once.rdp()).ok());
  EXPECT_EQ(restored.Epsilon(1e-5)->epsilon, once.Epsilon(1e-5)->epsilon);
  EXPECT_EQ(restored.Restore({1.0, 2.0}).code(), Code::kInvalidArgument);
}

TEST(AccountantTest, TightConversionOfTheGaussianMechanism) {
  // One Gaussian mechanism, sigma = 1, delta = 1e-5, order a: eps(a) = a/2 + log((a-1)/a) -
  // (log delta + log a)/(a - 1); the accountant takes the best of its orders.
  RdpAccountant a;
  ASSERT_TRUE(a.Compose(1.0, 1.0, 1).ok());
  auto e = a.Epsilon(1e-5);
  ASSERT_TRUE(e.ok());
  double best = INFINITY;
  for (double alpha : DefaultOrders()) {
    best = std::min(best, alpha / 2 + std::log((alpha - 1) / alpha) - (std::log(1e-5) + std::log(alpha)) / (alpha - 1));
  }
  EXPECT_NEAR(e->epsilon, best, 1e-12);
  EXPECT_GT(e->order, 1.0);
  EXPECT_EQ(a.Epsilon(0).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(a.Compose(1.5, 1.0).code(), Code::kInvalidArgument);
  RdpAccountant none;
  EXPECT_EQ(none.Epsilon(1e-5)->epsilon, 0.0);  // nothing released yet
}

TEST(AccountantTest, NoiseForEpsilonIsTheSmallestNoiseWithinTheTarget) {
  for (double target : {1.0, 3.0, 8.0}) {
    auto sigma = NoiseForEpsilon(0.01, 2000, target, 1e-5);
    ASSERT_TRUE(sigma.ok()) << sigma.status().ToString();
    RdpAccountant at, below;
    ASSERT_TRUE(at.Compose(0.01, *sigma, 2000).ok());
    ASSERT_TRUE(below.Compose(0.01, *sigma * (1 - 1e-4), 2000).ok());
    EXPECT_LE(at.Epsilon(1e-5)->epsilon, target);
    EXPECT_GT(below.Epsilon(1e-5)->epsilon, target);
  }
  EXPECT_EQ(NoiseForEpsilon(0.01, 100, 0, 1e-5).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(NoiseForEpsilon(1.0, 1000000000, 1e-3, 1e-10).status().code(), Code::kOutOfRange);
}

// Published values of well-known DP libraries (all with the tight conversion):

// Opacus, opacus/tests/accountants_test.py, AccountingTest.test_rdp_accountant: q = 0.04,
// sigma = 1.5, int(90 / 0.04) = 2250 steps, delta 1e-5, orders 1.1..10.9 and 12..63 (ours):
// assertAlmostEqual(epsilon, 7.32911117143).
TEST(AccountantTest, MatchesOpacusRdpAccountantTest) {
  RdpAccountant a;
  ASSERT_TRUE(a.Compose(0.04, 1.5, 2250).ok());
  EXPECT_NEAR(a.Epsilon(1e-5)->epsilon, 7.32911117143, 1e-7);
}

// TensorFlow Privacy, tensorflow_privacy/privacy/analysis/compute_dp_sgd_privacy_test.py,
// test_compute_dp_sgd_privacy, over its orders [1.25, 1.5, ..., 4.5] + 5..63 + [128, 256, 512]:
//   ('Test0', n 60000, batch 150, sigma 1.3, 15 epochs, delta 1e-5, 0.7242234026109595, order 19)
//   ('Test1', n 100000, batch 100, sigma 1.0, 30 epochs, delta 1e-7, 1.4154988495444845, order 13)
TEST(AccountantTest, MatchesTensorFlowPrivacyDpSgdTest) {
  std::vector<double> orders = {1.25, 1.5, 1.75, 2., 2.25, 2.5, 3., 3.5, 4., 4.5};
  for (int a = 5; a < 64; ++a) orders.push_back(a);
  for (double a : {128.0, 256.0, 512.0}) orders.push_back(a);
  struct Case {
    double q, sigma;
    uint64_t steps;
    double delta, epsilon, order;
  };
  for (const Case& c : {Case{150.0 / 60000, 1.3, 6000, 1e-5, 0.7242234026109595, 19},
                        Case{100.0 / 100000, 1.0, 30000, 1e-7, 1.4154988495444845, 13}}) {
    std::vector<double> rdp;
    for (double a : orders) rdp.push_back(static_cast<double>(c.steps) * SubsampledGaussianRdp(c.q, c.sigma, a));
    auto e = EpsilonFromRdp(orders, rdp, c.delta);
    ASSERT_TRUE(e.ok());
    EXPECT_NEAR(e->epsilon, c.epsilon, 1e-7) << c.q;
    EXPECT_EQ(e->order, c.order) << c.q;
  }
}

// TensorFlow Privacy rdp_accountant_test.py test_compute_rdp_sequence and dp_accounting
// rdp_privacy_accountant_test.py test_compute_rdp_poisson_sampled_gaussian (rtol 1e-4):
// q 0.01, sigma 2.5, 50 steps, orders [1.5, 2.5, 5, 50, 100] ->
// [6.5007e-04, 1.0854e-03, 2.1808e-03, 2.3846e-02, 1.6742e+02].
// autodp test/test_dp_sgd_poisson_sampling_add_remove.py, values produced by TensorFlow
// Privacy at one step, q 0.05, sigma 1: order 1.25 -> 0.002485316298319207, 4.5 ->
// 0.01437879709925404, 64 -> 28.95671642051658.
TEST(AccountantTest, MatchesPublishedRdpValues) {
  const std::vector<std::pair<double, double>> sequence = {
      {1.5, 6.5007e-04}, {2.5, 1.0854e-03}, {5, 2.1808e-03}, {50, 2.3846e-02}, {100, 1.6742e+02}};
  for (const auto& [order, expected] : sequence) {
    EXPECT_NEAR(50 * SubsampledGaussianRdp(0.01, 2.5, order), expected, 1e-4 * expected) << order;
  }
  EXPECT_NEAR(SubsampledGaussianRdp(0.05, 1.0, 1.25), 0.002485316298319207, 1e-9 * 0.0025);
  EXPECT_NEAR(SubsampledGaussianRdp(0.05, 1.0, 4.5), 0.01437879709925404, 1e-9 * 0.0144);
  EXPECT_NEAR(SubsampledGaussianRdp(0.05, 1.0, 64), 28.95671642051658, 1e-9 * 29);
}

// dp_accounting test_compute_epsilon_delta_pure_dp: RDP 1.1 at orders 2..32, delta 1e-5 ->
// assertAlmostEqual(epsilon, 1.32783806176), optimal order 32.
TEST(AccountantTest, MatchesDpAccountingConversionTest) {
  std::vector<double> orders, rdp;
  for (int a = 2; a <= 32; ++a) {
    orders.push_back(a);
    rdp.push_back(1.1);
  }
  auto e = EpsilonFromRdp(orders, rdp, 1e-5);
  ASSERT_TRUE(e.ok());
  EXPECT_NEAR(e->epsilon, 1.32783806176, 1e-10);
  EXPECT_EQ(e->order, 32);
}

}  // namespace
}  // namespace fedlora::privacy
