// Client-level DP in the engine (clipping, noise, replay, restart), the privacy ledger, and
// AS-LoRA's server half.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <cmath>

#include "aggregator/engine.h"
#include "aggregator/methods/as_lora.h"
#include "aggregator/methods/factor_selection.h"
#include "aggregator/privacy.h"
#include "aggregator/accountant.h"
#include "tests/testing/engine_harness.h"
#include "tests/testing/fixtures.h"

namespace fedlora::aggregator {
namespace {

using methods::FactorSelector;
using methods::kFactorA;
using methods::kFactorB;

using testing::AsUpdate;
using testing::ConstantState;
using testing::EngineHarness;
using testing::FilledState;
using testing::MakeUpdate;
using testing::SmallSpec;

EngineOptions DpOptions(double z, double clip, uint32_t k, std::string_view method = "fedavg") {
  EngineOptions o;
  o.mode = wire::Mode::FedBuff;
  o.buffer_size = k;
  o.method = testing::Choose(method);
  o.staleness.fn = StalenessFn::kConstant;
  o.client_dp.noise_multiplier = z;
  o.client_dp.clip = clip;
  o.client_dp.seed = 77;
  return o;
}

// The change of every element from `before` to `after`, flattened in spec order.
std::vector<double> Step(const AdapterState& before, const AdapterState& after) {
  std::vector<double> d;
  for (size_t t = 0; t < before.tensors.size(); ++t) {
    for (size_t i = 0; i < before.tensors[t].values.size(); ++i) {
      d.push_back(static_cast<double>(after.tensors[t].values[i]) - before.tensors[t].values[i]);
    }
  }
  return d;
}

double Norm(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x * x;
  return std::sqrt(s);
}

codec::Bytes DpUpdate(const std::string& id, const std::string& client, uint64_t base, const AdapterState& delta,
                      std::optional<codec::DpReport> dp) {
  codec::UpdateHeader h;
  h.update_id = id;
  h.client_id = client;
  h.adapter_id = "default";
  h.base_version = base;
  h.num_samples = 10;
  h.local_steps = 5;
  h.dp = dp;
  return codec::BuildUpdate(h, delta);
}

TEST(ClientDpTest, EachClientsContributionIsClippedToC) {
  // Noise negligible next to the clip bound: the step is the clipped mean.
  const double clip = 0.5;
  EngineHarness h(DpOptions(1e-9, clip, 2));
  const AdapterState before = h.engine().state();
  const AdapterState huge = FilledState(SmallSpec(), 100.0f);
  ASSERT_FALSE(h.Feed(MakeUpdate("u1", "c1", 0, huge)));
  ASSERT_TRUE(h.Feed(MakeUpdate("u2", "c2", 0, huge)));
  // Two clients each clipped to norm C, same direction, divided by K = 2: norm C.
  EXPECT_NEAR(Norm(Step(before, h.engine().state())), clip, 1e-5);

  // One client twice in a buffer: its two updates are clipped together, so it still moves
  // the global by at most C / K.
  const AdapterState mid = h.engine().state();
  ASSERT_FALSE(h.Feed(MakeUpdate("u3", "c1", 1, huge)));
  ASSERT_TRUE(h.Feed(MakeUpdate("u4", "c1", 1, huge)));
  EXPECT_NEAR(Norm(Step(mid, h.engine().state())), clip / 2, 1e-5);

  // A small update is not scaled up.
  const AdapterState small_start = h.engine().state();
  const AdapterState small = ConstantState(SmallSpec(), 0.01f);  // norm 0.01 * sqrt(24) < C
  ASSERT_FALSE(h.Feed(MakeUpdate("u5", "c1", 2, small)));
  ASSERT_TRUE(h.Feed(MakeUpdate("u6", "c2", 2, small)));
  EXPECT_NEAR(Norm(Step(small_start, h.engine().state())), 0.01 * std::sqrt(24.0), 1e-5);
}

TEST(ClientDpTest, NoiseHasTheConfiguredStandardDeviation) {
  // All-zero updates: each step is noise / K. K = 2, z = 1.5, C = 0.4: std 0.3 per element.
  const double z = 1.5, clip = 0.4;
  EngineHarness h(DpOptions(z, clip, 2));
  const AdapterState zero = ConstantState(SmallSpec(), 0.0f);
  std::vector<double> draws;
  for (uint64_t v = 0; v < 400; ++v) {
    const AdapterState before = h.engine().state();
    ASSERT_FALSE(h.Feed(MakeUpdate(fmt::format("a{}", v), "c1", v, zero)));
    ASSERT_TRUE(h.Feed(MakeUpdate(fmt::format("b{}", v), "c2", v, zero)));
    const auto step = Step(before, h.engine().state());
    draws.insert(draws.end(), step.begin(), step.end());
  }
  double mean = 0, sq = 0;
  for (double x : draws) mean += x;
  mean /= static_cast<double>(draws.size());
  for (double x : draws) sq += (x - mean) * (x - mean);
  const double sd = std::sqrt(sq / static_cast<double>(draws.size() - 1));
  // 9,600 draws: the sample std is within 3% of the truth with overwhelming probability
  // (its relative standard error is ~0.7%), the mean within 4 standard errors of 0.
  const double expected = z * clip / 2;
  EXPECT_NEAR(sd, expected, 0.03 * expected);
  EXPECT_NEAR(mean, 0.0, 4 * expected / std::sqrt(static_cast<double>(draws.size())));
}

TEST(ClientDpTest, NoiseCoversOnlyWhatTheMethodMoves) {
  // FFA-LoRA keeps A frozen: no noise may land on it.
  EngineHarness h(DpOptions(2.0, 1.0, 1, "ffa"));
  const AdapterState before = h.engine().state();
  AdapterState delta = ConstantState(SmallSpec(), 0.0f);
  delta.tensors.erase(delta.tensors.begin());  // no A factor
  ASSERT_TRUE(h.Feed(MakeUpdate("u1", "c1", 0, delta)));
  EXPECT_EQ(h.engine().state().tensors[0].values, before.tensors[0].values);
  EXPECT_NE(h.engine().state().tensors[1].values, before.tensors[1].values);
}

TEST(ClientDpTest, NoiseIsAFunctionOfSeedAndVersion) {
  auto run = [](uint64_t seed) {
    EngineOptions o = DpOptions(1.0, 1.0, 2);
    o.client_dp.seed = seed;
    EngineHarness h(o);
    std::vector<std::string> hashes;
    const AdapterState delta = FilledState(SmallSpec(), 0.1f);
    for (uint64_t v = 0; v < 3; ++v) {
      h.Feed(MakeUpdate(fmt::format("a{}", v), "c1", v, delta));
      auto info = h.Feed(MakeUpdate(fmt::format("b{}", v), "c2", v, delta));
      hashes.push_back(info ? info->content_hash : "");
    }
    return hashes;
  };
  EXPECT_EQ(run(5), run(5));  // a replay of the same log reproduces every noised version
  EXPECT_NE(run(5), run(6));
}

TEST(ClientDpTest, RefusedWhereSensitivityIsUndefined) {
  EngineOptions o = DpOptions(1.0, 1.0, 2);
  o.mode = wire::Mode::FedAsync;
  EXPECT_EQ(ValidateEngineOptions(o).code(), Code::kInvalidArgument);
  EXPECT_EQ(ValidateEngineOptions(DpOptions(1.0, 1.0, 2, "flora")).code(), Code::kInvalidArgument);
  EXPECT_EQ(ValidateEngineOptions(DpOptions(1.0, 1.0, 2, "hetlora")).code(), Code::kInvalidArgument);
  EXPECT_EQ(ValidateEngineOptions(DpOptions(1.0, 0.0, 2)).code(), Code::kInvalidArgument);
  EngineOptions budget_without_noise = DpOptions(0.0, 1.0, 2);
  budget_without_noise.client_dp.budget = 3;
  EXPECT_EQ(ValidateEngineOptions(budget_without_noise).code(), Code::kInvalidArgument);
}

TEST(PrivacyLedgerTest, ClientLevelEpsilonIsTheComposedGaussianAndTheBudgetStopsIt) {
  const double z = 2.0;
  // Epsilon of n noised steps, the way the ledger must compute it.
  auto epsilon_of = [&](uint64_t n) {
    privacy::RdpAccountant acc;
    EXPECT_TRUE(acc.Compose(1.0, z, n).ok());
    return acc.Epsilon(1e-5)->epsilon;
  };
  EngineOptions o = DpOptions(z, 1.0, 1);
  o.client_dp.budget = (epsilon_of(3) + epsilon_of(4)) / 2;  // affords exactly 3 steps
  EngineHarness h(o);
  const AdapterState delta = FilledState(SmallSpec(), 0.1f);
  EXPECT_TRUE(h.engine().CanAffordStep());
  for (uint64_t v = 0; v < 3; ++v) {
    auto info = h.Feed(MakeUpdate(fmt::format("u{}", v), "c1", v, delta));
    ASSERT_TRUE(info);
    ASSERT_TRUE(info->privacy && info->privacy->client);
    EXPECT_EQ(info->privacy->client->steps, v + 1);
    EXPECT_NEAR(info->privacy->client->epsilon, epsilon_of(v + 1), 1e-12);
  }
  EXPECT_FALSE(h.engine().CanAffordStep());
}

TEST(PrivacyLedgerTest, WorkerLedgerComposesEveryLoggedReportAndDropsMalformedOnes) {
  EngineOptions o;
  o.buffer_size = 2;
  EngineHarness h(o);
  const AdapterState delta = FilledState(SmallSpec(), 0.1f);
  const codec::DpReport report{1.1, 0.01, 40, 1.0f};
  h.Feed(DpUpdate("u1", "w1", 0, delta, report));
  h.Feed(DpUpdate("u2", "w1", 5, delta, report));  // from the future: dropped, but it was released
  h.Feed(DpUpdate("u3", "w2", 0, delta, codec::DpReport{-1, 0.01, 40, 1.0f}));  // malformed: dropped
  auto info = h.Feed(DpUpdate("u4", "w3", 0, delta, std::nullopt));
  ASSERT_TRUE(info);
  EXPECT_EQ(info->applied.size(), 2u);  // u1 and u4
  ASSERT_EQ(info->dropped.size(), 2u);
  EXPECT_EQ(info->dropped[1].update_id, "u3");
  EXPECT_NE(info->dropped[1].reason.find("malformed"), std::string::npos);
  ASSERT_TRUE(info->privacy);
  ASSERT_EQ(info->privacy->workers.size(), 1u);  // w2's report is unusable; w3 never reported DP
  const auto& w1 = info->privacy->workers[0];
  EXPECT_EQ(w1.client_id, "w1");
  EXPECT_EQ(w1.updates, 2u);
  EXPECT_EQ(w1.steps, 80u);
  privacy::RdpAccountant acc;
  ASSERT_TRUE(acc.Compose(0.01, 1.1, 80).ok());
  EXPECT_NEAR(w1.epsilon, acc.Epsilon(1e-5)->epsilon, 1e-12);
}

TEST(PrivacyLedgerTest, SurvivesARestartThroughItsStoredForm) {
  EngineOptions o = DpOptions(1.3, 0.7, 2);
  const AdapterState delta = FilledState(SmallSpec(), 0.05f);
  const codec::DpReport report{0.9, 0.02, 20, 1.0f};
  std::vector<codec::Bytes> log;
  for (uint64_t v = 0; v < 5; ++v) {
    log.push_back(DpUpdate(fmt::format("a{}", v), "w1", v, delta, report));
    log.push_back(DpUpdate(fmt::format("b{}", v), "w2", v, delta, report));
  }
  EngineHarness straight(o);
  std::vector<codec::VersionInfo> infos;
  for (const auto& u : log) {
    if (auto info = straight.Feed(u)) infos.push_back(*info);
  }
  ASSERT_EQ(infos.size(), 5u);

  // Stop after version 2; keep only what the store keeps (record bytes, server state bytes).
  EngineHarness first(o);
  for (size_t i = 0; i < 4; ++i) first.Feed(log[i]);
  const codec::Bytes record = codec::BuildVersionRecord(infos[1]);
  const codec::Bytes state = EncodeServerState("default", SmallSpec(), 2, first.engine().saved_state());
  auto decoded = DecodeServerState(codec::AsBytes(state), SmallSpec());
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  decoded->ledger = codec::DecodeVersionRecord(**codec::VerifyVersionRecord(codec::AsBytes(record))).privacy;
  EngineOptions resumed_options = o;
  resumed_options.client_dp.seed.reset();  // the stored seed is used
  auto resumed = Engine::Create(resumed_options, "default", SmallSpec(), first.engine().state(), 2, 4, nullptr,
                                std::move(*decoded));
  ASSERT_TRUE(resumed.ok()) << resumed.status().ToString();
  for (size_t i = 4; i < log.size(); ++i) {
    auto info = (*resumed)->Consume(i + 1, AsUpdate(log[i]));
    ASSERT_TRUE(info.ok());
    if (!*info) continue;
    const auto& want = infos[(*info)->version - 1];
    EXPECT_EQ((*info)->content_hash, want.content_hash);  // same noise: the seed came back too
    EXPECT_EQ((*info)->privacy->client->epsilon, want.privacy->client->epsilon);
    EXPECT_EQ((*info)->privacy->client->steps, want.privacy->client->steps);
    EXPECT_EQ((*info)->privacy->workers[0].epsilon, want.privacy->workers[0].epsilon);
  }

  // Another explicit seed than the stored one is refused.
  auto decoded_again = DecodeServerState(codec::AsBytes(state), SmallSpec());
  EngineOptions other_seed = o;
  other_seed.client_dp.seed = 78;
  EXPECT_EQ(Engine::Create(other_seed, "default", SmallSpec(), first.engine().state(), 2, 4, nullptr,
                           std::move(*decoded_again))
                .status()
                .code(),
            Code::kFailedPrecondition);
}

// --- AS-LoRA ------------------------------------------------------------------------------

FactorSelector Selector(uint32_t warmup, double margin) {
  auto s = FactorSelector::Create({warmup, margin, 0.0, 1.0}, {"m"}, {2}, {2}, {});  // beta 0: no smoothing
  EXPECT_TRUE(s.ok());
  return std::move(*s);
}

TEST(FactorSelectionTest, WarmUpTrainsBThenTriesATheSwitchesOnlyPastTheMargin) {
  FactorSelector s = Selector(3, 0.2);
  const std::vector<float> big = {1.0f, 1.0f}, small = {0.1f, 0.1f};
  for (uint64_t v = 0; v < 3; ++v) {
    s.Choose(v);
    EXPECT_EQ(s.active(0), kFactorB) << "version " << v;
    s.Observe(0, kFactorB, small, 0.0);
  }
  s.Choose(3);  // warm-up over, A never observed: try it
  EXPECT_EQ(s.active(0), kFactorA);
  // S = ||g||^2 - 1/2 sum F g^2 with F = g^2 (beta 0): for g = (0.1, 0.1), S_B = 0.0199.
  EXPECT_NEAR(s.state()[0].score[kFactorB], 0.02 - 0.5 * 2e-4, 1e-9);
  // A scores just above B, but not by the margin: A stays (it is active).
  s.Observe(0, kFactorA, std::vector<float>{0.105f, 0.105f}, 0.0);
  s.Choose(4);
  EXPECT_EQ(s.active(0), kFactorA);
  // A's score falls below B's, but not by the margin: still A.
  s.Observe(0, kFactorA, std::vector<float>{0.095f, 0.095f}, 0.0);
  s.Choose(5);
  EXPECT_EQ(s.active(0), kFactorA);
  // Far below: B's (stale) score wins by more than 20%.
  s.Observe(0, kFactorA, std::vector<float>{0.05f, 0.05f}, 0.0);
  s.Choose(6);
  EXPECT_EQ(s.active(0), kFactorB);
  // A's remembered score (0.005) above B's new one, within 20%: B stays.
  s.Observe(0, kFactorB, std::vector<float>{0.047f, 0.047f}, 0.0);
  s.Choose(7);
  EXPECT_EQ(s.active(0), kFactorB);
  // Past the margin: back to A.
  s.Observe(0, kFactorB, std::vector<float>{0.01f, 0.01f}, 0.0);
  s.Choose(8);
  EXPECT_EQ(s.active(0), kFactorA);
}

TEST(FactorSelectionTest, KnownNoiseIsSubtractedFromTheGradientEnergy) {
  FactorSelector s = Selector(0, 0.1);
  // ||g||^2 = 0.08 of which 2 x 0.03 is the server's own noise: 0.02 left.
  s.Observe(0, kFactorB, std::vector<float>{0.2f, 0.2f}, 0.03);
  EXPECT_NEAR(s.state()[0].score[kFactorB], 0.02 - 0.5 * 2 * std::pow(0.04, 2), 1e-7);
}

TEST(AsLoraEngineTest, OnlyTheActiveFactorMovesAndBothFactorsAreRefused) {
  EngineOptions o;
  o.buffer_size = 1;
  o.method = testing::Choose("as-lora");
  o.method.params_as<methods::AsLoraParams>().warmup = 100;  // B throughout
  EngineHarness h(o);
  const AdapterState before = h.engine().state();
  EXPECT_TRUE(h.engine().method_state().active == std::vector<uint8_t>{0});
  // An update carrying both factors of a module is dropped as invalid.
  auto info = h.Feed(MakeUpdate("both", "c1", 0, FilledState(SmallSpec(), 0.1f)));
  EXPECT_FALSE(info);
  // An update carrying A while B is active (stale): only its head is folded.
  AdapterState a_only = FilledState(SmallSpec(), 0.1f);
  a_only.tensors.erase(a_only.tensors.begin() + 1);  // drop B
  info = h.Feed(MakeUpdate("a", "c1", 0, a_only));
  ASSERT_TRUE(info);
  EXPECT_EQ(info->dropped.size(), 1u);
  EXPECT_EQ(h.engine().state().tensors[0].values, before.tensors[0].values);  // A untouched
  EXPECT_NE(h.engine().state().tensors[2].values, before.tensors[2].values);  // head moved
  ASSERT_EQ(info->factors.size(), 1u);
  EXPECT_EQ(info->factors[0].module, "m");
  EXPECT_TRUE(info->factors[0].fisher[0].empty());  // records keep no Fisher proxies
}

// --as-score gradient: the clients' scores of both factors, weighted like their updates, pick the
// factor after the warm-up; a wrong number of scores is refused; client-level DP is refused.
TEST(AsLoraEngineTest, GradientScoresFromTheClientsPickTheFactor) {
  EngineOptions o;
  o.buffer_size = 2;
  o.method = testing::Choose("as-lora");
  auto& p = o.method.params_as<methods::AsLoraParams>();
  p.warmup = 1;
  p.beta = 0;  // no smoothing: the last step decides
  EngineHarness h(o);
  EXPECT_EQ(h.engine().method_state().probe_batches, 2u);  // workers are asked for scores
  AdapterState b_only = FilledState(SmallSpec(), 0.01f);
  b_only.tensors.erase(b_only.tensors.begin());  // drop A
  auto update = [&](const std::string& id, std::vector<float> scores, uint64_t samples) {
    codec::UpdateHeader hd{id, "c" + id, "default", h.engine().version(), samples, 5, 0.5f, {}, samples, scores};
    return codec::BuildUpdate(hd, b_only);
  };
  // B scores 1 and 3, A scores 4 and 0: weighted by shard size 1:3, B = 2.5 > A = 1: B stays.
  EXPECT_FALSE(h.Feed(update("1", {1.0f, 4.0f}, 10)));
  auto v = h.Feed(update("2", {3.0f, 0.0f}, 30));
  ASSERT_TRUE(v);
  EXPECT_NEAR(v->factors[0].score[methods::kFactorB], 2.5, 1e-6);
  EXPECT_NEAR(v->factors[0].score[methods::kFactorA], 1.0, 1e-6);
  EXPECT_EQ(h.engine().method_state().active, std::vector<uint8_t>{0});
  // Now A's scores win by more than the margin: A trains next.
  EXPECT_FALSE(h.Feed(update("3", {1.0f, 5.0f}, 10)));
  ASSERT_TRUE(h.Feed(update("4", {1.0f, 5.0f}, 10)));
  EXPECT_EQ(h.engine().method_state().active, std::vector<uint8_t>{1});
  // Three scores for one module: dropped as invalid.
  AdapterState a_only = FilledState(SmallSpec(), 0.01f);
  a_only.tensors.erase(a_only.tensors.begin() + 1);
  codec::UpdateHeader bad{"5", "c5", "default", h.engine().version(), 10, 5, 0.5f, {}, 10, {1.0f, 2.0f, 3.0f}};
  EXPECT_FALSE(h.Feed(codec::BuildUpdate(bad, a_only)));
  EXPECT_EQ(h.engine().buffered(), 0u);
  // Per-client scores are not covered by client-level DP.
  o.client_dp.noise_multiplier = 1.0;
  EXPECT_NE(ValidateEngineOptions(o).message().find("--as-score change"), std::string::npos);
  o.method.params_as<methods::AsLoraParams>().score = "change";
  EXPECT_TRUE(ValidateEngineOptions(o).ok());
}

}  // namespace
}  // namespace fedlora::aggregator
