// The server step of FedBuff and sync: Adam/AdamW arithmetic, laziness (frozen factors stay
// frozen), and that the moments committed with a version resume the exact trajectory.
#include "aggregator/server_optimizer.h"

#include <gtest/gtest.h>

#include <cmath>

#include "aggregator/engine.h"
#include "schema/hash.h"
#include "tests/testing/engine_harness.h"
#include "tests/testing/fixtures.h"

namespace fedlora::aggregator {
namespace {

using testing::ConstantState;
using testing::EngineHarness;
using testing::FilledState;
using testing::MakeUpdate;
using testing::SmallSpec;

EngineOptions AdamOptions(ServerOptimizerKind kind, uint32_t k, double lr = 0.01) {
  EngineOptions o;
  o.mode = wire::Mode::FedBuff;
  o.buffer_size = k;
  o.server_lr = lr;
  o.server_optimizer.kind = kind;
  o.staleness.fn = StalenessFn::kConstant;
  return o;
}

// One tensor of SmallSpec, the rest absent.
codec::Bytes OneTensorUpdate(const std::string& id, uint64_t base, size_t tensor, float value) {
  const AdapterSpec spec = SmallSpec();
  codec::UpdateHeader h;
  h.update_id = id;
  h.client_id = "c-" + id;
  h.adapter_id = "default";
  h.base_version = base;
  h.num_samples = 10;
  const auto& t = spec.tensors[tensor];
  return codec::BuildUpdate(h, {{t.name, t.shape, wire::Encoding::Dense, {}, std::vector<float>(t.numel(), value)}});
}

TEST(ServerOptimizerTest, AdamStepsAreTheBiasCorrectedMomentRatio) {
  const double lr = 0.01, b1 = 0.9, b2 = 0.999, eps = 1e-8;
  EngineHarness h(AdamOptions(ServerOptimizerKind::kAdam, 2, lr));
  const AdapterState x0 = h.engine().state();
  // Step 1: mean delta g1 = (10 * 1 + 30 * 5) / 40 = 4. Step 2: g2 = -2.
  h.Feed(MakeUpdate("u1", "c1", 0, ConstantState(SmallSpec(), 1.0f), 10));
  auto v1 = h.Feed(MakeUpdate("u2", "c2", 0, ConstantState(SmallSpec(), 5.0f), 30));
  ASSERT_TRUE(v1);
  // Lineage: each update's share of the mean g (Adam's lr does not scale it).
  ASSERT_EQ(v1->applied.size(), 2u);
  EXPECT_NEAR(v1->applied[0].weight, 0.25, 1e-6);
  EXPECT_NEAR(v1->applied[1].weight, 0.75, 1e-6);
  // First Adam step: m^ = g, v^ = g^2, so every element moves by lr * g / (|g| + eps) ~ lr.
  const double step1 = lr * 4.0 / (4.0 + eps);
  EXPECT_NEAR(h.engine().state().tensors[2].values[3], x0.tensors[2].values[3] + step1, 1e-6);
  h.Feed(MakeUpdate("u3", "c1", 1, ConstantState(SmallSpec(), -2.0f), 10));
  ASSERT_TRUE(h.Feed(MakeUpdate("u4", "c2", 1, ConstantState(SmallSpec(), -2.0f), 10)));
  const double m = b1 * (1 - b1) * 4.0 + (1 - b1) * -2.0;
  const double v = b2 * (1 - b2) * 16.0 + (1 - b2) * 4.0;
  const double step2 = lr * (m / (1 - b1 * b1)) / (std::sqrt(v / (1 - b2 * b2)) + eps);
  for (size_t t = 0; t < x0.tensors.size(); ++t) {
    for (size_t i = 0; i < x0.tensors[t].values.size(); ++i) {
      EXPECT_NEAR(h.engine().state().tensors[t].values[i], x0.tensors[t].values[i] + step1 + step2, 1e-6);
    }
  }
  const ServerOptimizerState& s = h.engine().server_state();
  EXPECT_EQ(s.optimizer, "adam");
  EXPECT_EQ(s.version, 2u);
  EXPECT_EQ(s.steps, (std::vector<uint64_t>{2, 2, 2, 2}));
  EXPECT_NEAR(s.m[0][0], m, 1e-6);
  EXPECT_NEAR(s.v[3][1], v, 1e-6);
}

TEST(ServerOptimizerTest, AdamWDecaysCarriedElementsOnly) {
  const double lr = 0.1;
  EngineOptions o = AdamOptions(ServerOptimizerKind::kAdamW, 1, lr);
  o.server_optimizer.weight_decay = 0.5;
  EngineHarness h(o, FilledState(SmallSpec(), 2.0f));
  const AdapterState x0 = h.engine().state();
  ASSERT_TRUE(h.Feed(OneTensorUpdate("u1", 0, 2, 0.0f)));  // head.weight, zero delta
  for (size_t i = 0; i < x0.tensors[2].values.size(); ++i) {
    // g = 0: no Adam move, only the decay x <- x - lr wd x.
    EXPECT_NEAR(h.engine().state().tensors[2].values[i], x0.tensors[2].values[i] * (1 - lr * 0.5), 1e-6);
  }
  EXPECT_EQ(h.engine().state().tensors[0].values, x0.tensors[0].values);
  EXPECT_EQ(h.engine().state().tensors[3].values, x0.tensors[3].values);
}

TEST(ServerOptimizerTest, LazyAdamLeavesAFactorNoUpdateCarriedWhereItIs) {
  // An A-only step after a B-only step: dense Adam would keep moving B by its momentum;
  // lazy Adam leaves it exactly where the B step put it (LoRA-A2's frozen phase stays frozen).
  EngineHarness h(AdamOptions(ServerOptimizerKind::kAdam, 1));
  ASSERT_TRUE(h.Feed(OneTensorUpdate("u1", 0, 1, 0.3f)));  // m.lora_B
  const AdapterState after_b = h.engine().state();
  ASSERT_TRUE(h.Feed(OneTensorUpdate("u2", 1, 0, -0.2f)));  // m.lora_A
  EXPECT_EQ(h.engine().state().tensors[1].values, after_b.tensors[1].values);
  EXPECT_NE(h.engine().state().tensors[0].values, after_b.tensors[0].values);
  EXPECT_EQ(h.engine().server_state().steps, (std::vector<uint64_t>{1, 1, 0, 0}));
  EXPECT_GT(std::abs(h.engine().server_state().m[1][0]), 0.0f);  // B's momentum is kept for later
}

TEST(ServerOptimizerTest, RestartFromCommittedMomentsFollowsTheSameTrajectory) {
  std::vector<codec::Bytes> log;
  for (int i = 0; i < 12; ++i) {
    log.push_back(MakeUpdate("u" + std::to_string(i), "c" + std::to_string(i % 3), i / 2,
                             FilledState(SmallSpec(), 0.37f * static_cast<float>(i % 5) - 0.8f), 7 + i));
  }
  const EngineOptions o = AdamOptions(ServerOptimizerKind::kAdamW, 2);
  EngineHarness straight(o);
  std::vector<std::string> hashes;
  for (const auto& u : log) {
    if (auto v = straight.Feed(u)) hashes.push_back(v->content_hash);
  }
  ASSERT_EQ(hashes.size(), 6u);

  // Stop after version 3, keep only what a commit stores (global, moments through their
  // stored encoding), and continue in a new engine.
  EngineHarness first(o);
  for (size_t i = 0; i < 6; ++i) first.Feed(log[i]);
  ASSERT_EQ(first.engine().version(), 3u);
  const codec::Bytes stored =
      EncodeServerState("default", SmallSpec(), 3, first.engine().saved_state());
  auto moments = DecodeServerState(codec::AsBytes(stored), SmallSpec());
  ASSERT_TRUE(moments.ok()) << moments.status().ToString();
  auto resumed = Engine::Create(o, "default", SmallSpec(), first.engine().state(), 3, 6,
                                [&](uint64_t v) { return Result<std::shared_ptr<const AdapterState>>(
                                                      std::make_shared<const AdapterState>(first.version(v))); },
                                std::move(*moments));
  ASSERT_TRUE(resumed.ok()) << resumed.status().ToString();
  std::vector<std::string> resumed_hashes(hashes.begin(), hashes.begin() + 3);
  for (size_t i = 6; i < log.size(); ++i) {
    auto v = (*resumed)->Consume(i + 1, testing::AsUpdate(log[i]));
    ASSERT_TRUE(v.ok());
    if (*v) resumed_hashes.push_back((*v)->content_hash);
  }
  EXPECT_EQ(resumed_hashes, hashes);

  // Fresh moments instead of the stored ones: a different trajectory (what the store prevents).
  auto forgetful = Engine::Create(o, "default", SmallSpec(), first.engine().state(), 3, 6, nullptr,
                                  ServerState{});
  EXPECT_EQ(forgetful.status().code(), Code::kFailedPrecondition);
}

TEST(ServerOptimizerTest, MomentsOfAnotherOptimizerOrVersionAreRefused) {
  EngineHarness h(AdamOptions(ServerOptimizerKind::kAdam, 1));
  ASSERT_TRUE(h.Feed(OneTensorUpdate("u1", 0, 2, 0.5f)));
  const ServerOptimizerState adam = h.engine().server_state();
  const AdapterState x1 = h.engine().state();
  auto create = [&](ServerOptimizerKind kind, uint64_t version, ServerOptimizerState s) {
    return Engine::Create(AdamOptions(kind, 1), "default", SmallSpec(), x1, version, 1, nullptr,
                          [&] {
                            ServerState st;
                            st.optimizer = std::move(s);
                            return st;
                          }())
        .status()
        .code();
  };
  EXPECT_EQ(create(ServerOptimizerKind::kAdam, 1, adam), Code::kOk);
  EXPECT_EQ(create(ServerOptimizerKind::kAdamW, 1, adam), Code::kFailedPrecondition);
  EXPECT_EQ(create(ServerOptimizerKind::kSgd, 1, adam), Code::kFailedPrecondition);
  EXPECT_EQ(create(ServerOptimizerKind::kAdam, 2, adam), Code::kFailedPrecondition);
  EXPECT_EQ(create(ServerOptimizerKind::kAdam, 1, {}), Code::kFailedPrecondition);
  EXPECT_EQ(create(ServerOptimizerKind::kAdam, 0, {}), Code::kOk);  // version 0: fresh moments
  EXPECT_EQ(create(ServerOptimizerKind::kSgd, 1, {}), Code::kOk);

  // Stored bytes that do not match the spec are data loss, not a silent reset.
  AdapterSpec other = SmallSpec();
  other.tensors[3].shape = {3};
  const codec::Bytes stored = EncodeServerState("default", SmallSpec(), 1, [&] {
    ServerState st;
    st.optimizer = adam;
    return st;
  }());
  EXPECT_EQ(DecodeServerState(codec::AsBytes(stored), other).status().code(), Code::kDataLoss);
  const std::string junk = "not a server state at all";
  EXPECT_EQ(DecodeServerState({reinterpret_cast<const std::byte*>(junk.data()), junk.size()}, SmallSpec())
                .status()
                .code(),
            Code::kDataLoss);
}

TEST(ServerOptimizerTest, OptionsOutsideFedBuffSyncOrElementwiseMethodsAreRefused) {
  EngineOptions o = AdamOptions(ServerOptimizerKind::kAdam, 2);
  EXPECT_TRUE(ValidateEngineOptions(o).ok());
  o.mode = wire::Mode::Sync;
  EXPECT_TRUE(ValidateEngineOptions(o).ok());
  o.mode = wire::Mode::FedAsync;
  EXPECT_EQ(ValidateEngineOptions(o).code(), Code::kInvalidArgument);
  o = AdamOptions(ServerOptimizerKind::kAdamW, 2);
  o.method = testing::Choose("flora");
  EXPECT_EQ(ValidateEngineOptions(o).code(), Code::kInvalidArgument);
  o = AdamOptions(ServerOptimizerKind::kAdam, 2);
  o.server_optimizer.beta2 = 1.0;
  EXPECT_EQ(ValidateEngineOptions(o).code(), Code::kInvalidArgument);
  EXPECT_EQ(ParseServerOptimizer("lamb").status().code(), Code::kInvalidArgument);
  EXPECT_EQ(*ParseServerOptimizer("adamw"), ServerOptimizerKind::kAdamW);
  EXPECT_EQ(DefaultServerLr(ServerOptimizerKind::kSgd), 1.0);
  EXPECT_EQ(DefaultServerLr(ServerOptimizerKind::kAdam), 1e-3);
}

}  // namespace
}  // namespace fedlora::aggregator
