#include "aggregator/engine.h"
#include "aggregator/methods/flasc.h"

#include <gtest/gtest.h>

#include <map>

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


EngineOptions FedBuff(uint32_t k) {
  EngineOptions o;
  o.mode = wire::Mode::FedBuff;
  o.buffer_size = k;
  return o;
}

TEST(EngineTest, FedBuffWaitsForKUpdatesThenAppliesTheSampleWeightedMean) {
  EngineHarness h(FedBuff(2));
  const AdapterState x0 = h.engine().state();
  const AdapterState d1 = ConstantState(SmallSpec(), 1.0f);
  const AdapterState d2 = ConstantState(SmallSpec(), 5.0f);
  EXPECT_FALSE(h.Feed(MakeUpdate("u1", "c1", 0, d1, /*samples=*/10)));
  EXPECT_EQ(h.engine().buffered(), 1u);
  EXPECT_EQ(h.engine().version(), 0u);
  auto v = h.Feed(MakeUpdate("u2", "c2", 0, d2, /*samples=*/30));
  ASSERT_TRUE(v);
  EXPECT_EQ(v->version, 1u);
  EXPECT_EQ(v->parent_version, 0u);
  EXPECT_EQ(v->consumed_seq, 2u);
  // (10 * 1 + 30 * 5) / 40 = 4
  for (size_t t = 0; t < x0.tensors.size(); ++t) {
    for (size_t i = 0; i < x0.tensors[t].values.size(); ++i) {
      EXPECT_NEAR(h.engine().state().tensors[t].values[i], x0.tensors[t].values[i] + 4.0f, 1e-5);
    }
  }
  ASSERT_EQ(v->applied.size(), 2u);
  EXPECT_NEAR(v->applied[0].weight, 0.25, 1e-6);
  EXPECT_NEAR(v->applied[1].weight, 0.75, 1e-6);
  EXPECT_EQ(v->applied[1].client_id, "c2");
  EXPECT_EQ(v->content_hash, ToHex(HashAdapter(h.engine().state())));
}

// p_k = n_k / sum n weighs by each client's data (its shard), not by the examples of one local
// run (the same steps x batch for every client); the run's examples stay in the lineage.
TEST(EngineTest, FedBuffWeighsByShardSizeAndKeepsTheRunsExamplesInTheLineage) {
  EngineHarness h(FedBuff(2));
  const AdapterState x0 = h.engine().state();
  EXPECT_FALSE(h.Feed(MakeUpdate("u1", "c1", 0, ConstantState(SmallSpec(), 1.0f), 640, "default", 1000)));
  auto v = h.Feed(MakeUpdate("u2", "c2", 0, ConstantState(SmallSpec(), 5.0f), 640, "default", 3000));
  ASSERT_TRUE(v);
  // (1000 * 1 + 3000 * 5) / 4000 = 4, where equal run sizes would give 3.
  EXPECT_NEAR(h.engine().state().tensors[0].values[0], x0.tensors[0].values[0] + 4.0f, 1e-5);
  EXPECT_NEAR(v->applied[0].weight, 0.25, 1e-6);
  EXPECT_EQ(v->applied[0].num_samples, 640u);
}

// FedAsync mixes with alpha = 0.9 unless told otherwise (Xie et al.; our spec).
TEST(EngineTest, FedAsyncMixesWithTheSpecsAlphaByDefault) {
  EngineOptions o;
  o.mode = wire::Mode::FedAsync;
  EngineHarness h(o);
  const float x0 = h.engine().state().tensors[2].values[1];
  ASSERT_TRUE(h.Feed(MakeUpdate("u1", "c1", 0, ConstantState(SmallSpec(), 2.0f))));
  EXPECT_NEAR(h.engine().state().tensors[2].values[1], x0 + 0.9f * 2.0f, 1e-5);
}

// The dense fold runs in blocks of 16 values and a remainder: every element, in either, gets
// exactly acc + w * d (the same float operations as one element at a time, so versions stay
// bit-identical across builds and replays), including with Adam's carried-element mask.
TEST(EngineTest, DenseFoldIsExactInBlocksAndRemainder) {
  AdapterSpec spec;
  spec.model = "fold";
  spec.rank = 1;
  spec.target_modules = {"m"};
  spec.tensors = {{"m.lora_A", {1, 37}, TensorRole::kLoraA},
                  {"m.lora_B", {16, 1}, TensorRole::kLoraB},
                  {"head", {5}, TensorRole::kDense}};
  for (const bool adam : {false, true}) {
    SCOPED_TRACE(adam ? "adam" : "sgd");
    EngineOptions o = FedBuff(2);
    if (adam) {
      o.server_optimizer.kind = ServerOptimizerKind::kAdam;
      o.server_lr = 1e-3;
    }
    const AdapterState x0 = FilledState(spec, 0.25f);
    EngineHarness h(o, spec, x0);
    AdapterState d1 = x0, d2 = x0;
    for (size_t t = 0; t < spec.tensors.size(); ++t) {
      for (size_t i = 0; i < d1.tensors[t].values.size(); ++i) {
        d1.tensors[t].values[i] = 0.001f * static_cast<float>(i + 1) + 0.1f * static_cast<float>(t);
        d2.tensors[t].values[i] = -0.003f * static_cast<float>(i) + 0.07f;
      }
    }
    h.Feed(MakeUpdate("u1", "c1", 0, d1, /*samples=*/3));
    ASSERT_TRUE(h.Feed(MakeUpdate("u2", "c2", 0, d2, /*samples=*/7)));
    for (size_t t = 0; t < spec.tensors.size(); ++t) {
      for (size_t i = 0; i < x0.tensors[t].values.size(); ++i) {
        float acc = 0.0f;
        acc += 3.0f * d1.tensors[t].values[i];
        acc += 7.0f * d2.tensors[t].values[i];
        const float mean = static_cast<float>(acc / 10.0);
        const float got = h.engine().state().tensors[t].values[i];
        if (adam) {
          // Adam's first step moves every carried element by about lr in the sign of the mean.
          EXPECT_NEAR(got - x0.tensors[t].values[i], mean > 0 ? 1e-3f : (mean < 0 ? -1e-3f : 0.0f), 1e-4)
              << t << "," << i;
        } else {
          EXPECT_NEAR(got, x0.tensors[t].values[i] + mean, 1e-6) << t << "," << i;
        }
      }
    }
  }
}

TEST(EngineTest, FedBuffDownWeightsStaleUpdatesAndRecordsStaleness) {
  EngineOptions o = FedBuff(1);
  o.staleness = {StalenessFn::kPolynomial, 0.5, 4, 20};
  EngineHarness h(o);
  h.Feed(MakeUpdate("u1", "c1", 0, ConstantState(SmallSpec(), 0.0f)));  // v1, no change
  h.Feed(MakeUpdate("u2", "c1", 1, ConstantState(SmallSpec(), 0.0f)));  // v2
  h.Feed(MakeUpdate("u3", "c1", 2, ConstantState(SmallSpec(), 0.0f)));  // v3
  const float before = h.engine().state().tensors[0].values[0];
  auto v = h.Feed(MakeUpdate("u4", "c2", 0, ConstantState(SmallSpec(), 2.0f)));  // tau = 3
  ASSERT_TRUE(v);
  EXPECT_EQ(v->applied[0].staleness, 3u);
  EXPECT_EQ(v->max_staleness, 3u);
  EXPECT_FLOAT_EQ(v->mean_staleness, 3.0f);
  EXPECT_NEAR(h.engine().state().tensors[0].values[0], before + 2.0f * 0.5f, 1e-6);  // s(3) = 1/2
}

TEST(EngineTest, FedAsyncMixesFreshUpdateWithAlpha) {
  EngineOptions o;
  o.mode = wire::Mode::FedAsync;
  o.fedasync_alpha = 0.5;
  EngineHarness h(o);
  const float x0 = h.engine().state().tensors[2].values[1];
  auto v = h.Feed(MakeUpdate("u1", "c1", 0, ConstantState(SmallSpec(), 2.0f)));
  ASSERT_TRUE(v);
  EXPECT_EQ(v->version, 1u);
  // (1 - a) x + a (x + d) = x + a d
  EXPECT_NEAR(h.engine().state().tensors[2].values[1], x0 + 1.0f, 1e-6);
}

TEST(EngineTest, FedAsyncMixesStaleUpdateAgainstItsBaseVersion) {
  EngineOptions o;
  o.mode = wire::Mode::FedAsync;
  o.fedasync_alpha = 0.5;
  o.staleness.fn = StalenessFn::kConstant;
  EngineHarness h(o);
  h.Feed(MakeUpdate("u1", "c1", 0, ConstantState(SmallSpec(), 4.0f)));  // v1 = x0 + 2
  const float x_base = h.version(0).tensors[0].values[0];
  const float x_now = h.engine().state().tensors[0].values[0];
  h.Feed(MakeUpdate("u2", "c2", 0, ConstantState(SmallSpec(), 1.0f)));  // tau = 1, base v0
  EXPECT_NEAR(h.engine().state().tensors[0].values[0], 0.5f * x_now + 0.5f * (x_base + 1.0f), 1e-6);
}

TEST(EngineTest, FedAsyncLeavesTensorsTheUpdateDoesNotCarry) {
  EngineOptions o;
  o.mode = wire::Mode::FedAsync;
  EngineHarness h(o);
  const AdapterState before = h.engine().state();
  AdapterState only_b = ConstantState(SmallSpec(), 1.0f);
  only_b.tensors = {only_b.tensors[1]};
  ASSERT_TRUE(h.Feed(MakeUpdate("u1", "c1", 0, only_b)));
  EXPECT_EQ(h.engine().state().tensors[0].values, before.tensors[0].values);
  EXPECT_NE(h.engine().state().tensors[1].values, before.tensors[1].values);
}

TEST(EngineTest, UpdatesPastMaxStalenessAreDroppedAndRecorded) {
  EngineOptions o = FedBuff(1);
  o.staleness.max_staleness = 1;
  EngineHarness h(o);
  h.Feed(MakeUpdate("u1", "c1", 0, ConstantState(SmallSpec(), 0.1f)));  // v1
  h.Feed(MakeUpdate("u2", "c1", 1, ConstantState(SmallSpec(), 0.1f)));  // v2
  const AdapterState before = h.engine().state();
  EXPECT_FALSE(h.Feed(MakeUpdate("late", "slow", 0, ConstantState(SmallSpec(), 9.0f))));  // tau 2
  EXPECT_EQ(h.engine().state().tensors[0].values, before.tensors[0].values);
  auto v = h.Feed(MakeUpdate("u3", "c1", 2, ConstantState(SmallSpec(), 0.1f)));
  ASSERT_TRUE(v);
  ASSERT_EQ(v->dropped.size(), 1u);
  EXPECT_EQ(v->dropped[0].update_id, "late");
  EXPECT_EQ(v->dropped[0].reason, "max-staleness");
  EXPECT_EQ(v->dropped[0].staleness, 2u);
  EXPECT_EQ(v->dropped[0].seq, 3u);
  EXPECT_EQ(v->consumed_seq, 4u);
}

TEST(EngineTest, UpdateFromTheFutureIsDropped) {
  EngineHarness h(FedBuff(1));
  EXPECT_FALSE(h.Feed(MakeUpdate("u1", "c1", 5, ConstantState(SmallSpec(), 1.0f))));
  auto v = h.Feed(MakeUpdate("u2", "c1", 0, ConstantState(SmallSpec(), 1.0f)));
  ASSERT_TRUE(v);
  EXPECT_EQ(v->dropped.at(0).reason, "future-base");
}

TEST(EngineTest, UpdateNotMatchingTheSpecIsDroppedWithItsReason) {
  EngineHarness h(FedBuff(1));
  AdapterState bad = ConstantState(SmallSpec(), 1.0f);
  bad.tensors[0].shape = {6};
  EXPECT_FALSE(h.Feed(MakeUpdate("bad", "c1", 0, bad)));
  auto v = h.Feed(MakeUpdate("u2", "c1", 0, ConstantState(SmallSpec(), 1.0f)));
  ASSERT_TRUE(v);
  EXPECT_EQ(v->dropped.at(0).reason.rfind("invalid: ", 0), 0u) << v->dropped.at(0).reason;
}

TEST(EngineTest, SyncRoundTakesOneFreshUpdatePerClient) {
  EngineOptions o;
  o.mode = wire::Mode::Sync;
  o.round_size = 2;
  EngineHarness h(o);
  const float x0 = h.engine().state().tensors[0].values[0];
  EXPECT_FALSE(h.Feed(MakeUpdate("a1", "a", 0, ConstantState(SmallSpec(), 1.0f), 10)));
  EXPECT_FALSE(h.Feed(MakeUpdate("a2", "a", 0, ConstantState(SmallSpec(), 100.0f), 10)));  // repeat client
  auto v = h.Feed(MakeUpdate("b1", "b", 0, ConstantState(SmallSpec(), 3.0f), 30));
  ASSERT_TRUE(v);
  EXPECT_NEAR(h.engine().state().tensors[0].values[0], x0 + (10 * 1.0f + 30 * 3.0f) / 40.0f, 1e-5);
  ASSERT_EQ(v->dropped.size(), 1u);
  EXPECT_EQ(v->dropped[0].reason, "repeat-client-in-round");
  // An update trained on the previous round's version is stale in the new round.
  EXPECT_FALSE(h.Feed(MakeUpdate("a3", "a", 0, ConstantState(SmallSpec(), 1.0f))));
  h.Feed(MakeUpdate("a4", "a", 1, ConstantState(SmallSpec(), 1.0f)));
  auto v2 = h.Feed(MakeUpdate("b2", "b", 1, ConstantState(SmallSpec(), 1.0f)));
  ASSERT_TRUE(v2);
  EXPECT_EQ(v2->dropped.at(0).reason, "stale-round");
}

TEST(EngineTest, OutOfOrderRecordIsAnError) {
  EngineHarness h(FedBuff(1));
  codec::Bytes u = MakeUpdate("u1", "c1", 0, ConstantState(SmallSpec(), 1.0f));
  auto r = h.engine().Consume(2, testing::AsUpdate(u));
  EXPECT_EQ(r.status().code(), Code::kFailedPrecondition);
}

TEST(EngineTest, SameLogReplaysToBitIdenticalVersions) {
  std::vector<codec::Bytes> log;
  for (int i = 0; i < 12; ++i) {
    log.push_back(MakeUpdate("u" + std::to_string(i), "c" + std::to_string(i % 3), i / 4,
                             FilledState(SmallSpec(), 0.37f * static_cast<float>(i % 5) - 0.8f), 7 + i));
  }
  EngineOptions o = FedBuff(3);
  EngineHarness a(o), b(o);
  std::vector<std::string> hashes_a, hashes_b;
  for (const auto& u : log) {
    if (auto v = a.Feed(u)) hashes_a.push_back(v->content_hash);
    if (auto v = b.Feed(u)) hashes_b.push_back(v->content_hash);
  }
  EXPECT_EQ(hashes_a.size(), 4u);
  EXPECT_EQ(hashes_a, hashes_b);
}

TEST(EngineTest, RejectsInvalidOptions) {
  EngineOptions o = FedBuff(0);
  EXPECT_EQ(ValidateEngineOptions(o).code(), Code::kInvalidArgument);
  o = EngineOptions{};
  o.fedasync_alpha = 1.5;
  EXPECT_EQ(ValidateEngineOptions(o).code(), Code::kInvalidArgument);
  o = EngineOptions{};
  o.method = testing::Choose("flasc");
  o.method.params_as<methods::FlascParams>().upload_density = 0;
  EXPECT_EQ(ValidateEngineOptions(o).code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace fedlora::aggregator
