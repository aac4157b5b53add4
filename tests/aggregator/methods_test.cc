// The server half of each method: what the engine folds, exactly, and what it refuses.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <optional>
#include <random>

#include "aggregator/engine.h"
#include "aggregator/methods/lowrank.h"
#include "schema/validate.h"
#include "tests/testing/engine_harness.h"
#include "tests/testing/fixtures.h"

namespace fedlora::aggregator {
namespace {

using testing::AsUpdate;
namespace lowrank = methods::lowrank;
using Harness = testing::EngineHarness;

// One LoRA module "m" with A rx5 and B 6xr (rank 4 unless given), a dense "head.bias" (3), and
// with `residual` the module's 6x5 residual (flora --flora-merge exact) last.
AdapterSpec Rank4Spec(bool residual = false, uint32_t rank = 4) {
  AdapterSpec spec;
  spec.model = "test";
  spec.rank = rank;
  spec.alpha = 8;
  spec.target_modules = {"m"};
  spec.tensors = {{"m.lora_A", {rank, 5}, TensorRole::kLoraA},
                  {"m.lora_B", {6, rank}, TensorRole::kLoraB},
                  {"head.bias", {3}, TensorRole::kDense}};
  if (residual) spec.tensors.push_back({"m.lora_residual", {6, 5}, TensorRole::kLoraResidual});
  return spec;
}

// A random, B zero (as a fresh LoRA adapter), head zero.
AdapterState FreshState(const AdapterSpec& spec, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(-0.5f, 0.5f);
  AdapterState s;
  for (const auto& t : spec.tensors) {
    DenseTensor d{t.name, t.shape, std::vector<float>(t.numel(), 0.0f)};
    if (t.role == TensorRole::kLoraA) {
      for (float& v : d.values) v = dist(rng);
    }
    s.tensors.push_back(std::move(d));
  }
  return s;
}

std::vector<float> RandomValues(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

codec::Bytes Update(const std::string& id, const std::string& client, uint64_t base, uint64_t samples,
                    const std::vector<codec::EncodedTensor>& tensors) {
  codec::UpdateHeader h;
  h.update_id = id;
  h.client_id = client;
  h.adapter_id = "default";
  h.base_version = base;
  h.num_samples = samples;
  return codec::BuildUpdate(h, tensors);
}


EngineOptions Options(std::string_view method, uint32_t k) {
  EngineOptions o;
  o.mode = wire::Mode::FedBuff;
  o.buffer_size = k;
  o.method = testing::Choose(method);
  o.staleness.fn = StalenessFn::kConstant;
  return o;
}

// B A (6 x 5) of a state in Rank4Spec's layout, plus its residual R when it has one.
std::vector<double> ProductOf(const AdapterState& s) {
  const uint32_t rank = s.tensors[0].shape[0];
  lowrank::Factors f{6, 5, rank, {}, {}};
  f.a.assign(s.tensors[0].values.begin(), s.tensors[0].values.end());
  f.b.assign(s.tensors[1].values.begin(), s.tensors[1].values.end());
  std::vector<double> p = lowrank::Product(f);
  if (s.tensors.size() > 3) {
    for (size_t i = 0; i < p.size(); ++i) p[i] += s.tensors[3].values[i];
  }
  return p;
}

TEST(MethodsTest, FfaAggregationIsTheWeightedMeanOfTheClientsProducts) {
  const AdapterSpec spec = Rank4Spec();
  const AdapterState x0 = FreshState(spec, 1);
  Harness h(Options("ffa", 2), spec, x0);
  const auto d1 = RandomValues(24, 2), d2 = RandomValues(24, 3);
  EXPECT_FALSE(h.Feed(Update("u1", "c1", 0, 30, {{"m.lora_B", {6, 4}, wire::Encoding::Dense, {}, d1}})));
  ASSERT_TRUE(h.Feed(Update("u2", "c2", 0, 10, {{"m.lora_B", {6, 4}, wire::Encoding::Dense, {}, d2}})));
  // Each client's model is (B0 + d_k) A0: the weighted mean of those products.
  AdapterState c1 = x0, c2 = x0;
  for (size_t i = 0; i < 24; ++i) {
    c1.tensors[1].values[i] += d1[i];
    c2.tensors[1].values[i] += d2[i];
  }
  const auto p1 = ProductOf(c1), p2 = ProductOf(c2), got = ProductOf(h.engine().state());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], 0.75 * p1[i] + 0.25 * p2[i], 1e-5);
  EXPECT_EQ(h.engine().state().tensors[0].values, x0.tensors[0].values);  // A never moves
}

TEST(MethodsTest, EachMethodDropsUploadsThatBreakItsExactness) {
  const AdapterSpec spec = Rank4Spec();
  const codec::EncodedTensor a{"m.lora_A", {4, 5}, wire::Encoding::Dense, {}, RandomValues(20, 4)};
  const codec::EncodedTensor b{"m.lora_B", {6, 4}, wire::Encoding::Dense, {}, RandomValues(24, 5)};
  const codec::EncodedTensor b_slice{"m.lora_B", {6, 4}, wire::Encoding::RankSlice, {0, 1}, RandomValues(12, 6)};
  const codec::EncodedTensor head{"head.bias", {3}, wire::Encoding::Dense, {}, {1, 2, 3}};
  struct Case {
    std::string_view method;
    std::vector<codec::EncodedTensor> tensors;
    std::string reason;
  };
  const std::vector<Case> cases = {
      {"ffa", {a, head}, "ffa keeps lora_A frozen"},
      {"fedsa", {a, b}, "fedsa shares lora_A only"},
      {"lora-a2", {a, b}, "one factor per phase"},
      {"flora", {b, head}, "needs both factors"},
      {"flora", {a, b_slice}, "different ranks"},
  };
  for (const auto& c : cases) {
    const AdapterSpec s = Rank4Spec(c.method == "flora");
    Harness h(Options(c.method, 1), s, FreshState(s, 1));
    EXPECT_FALSE(h.Feed(Update("bad", "c1", 0, 10, c.tensors))) << c.method;
    auto v = h.Feed(Update("good", "c1", 0, 10, {head}));
    ASSERT_TRUE(v) << c.method;
    ASSERT_EQ(v->dropped.size(), 1u);
    EXPECT_NE(v->dropped[0].reason.find(c.reason), std::string::npos) << v->dropped[0].reason;
    EXPECT_EQ(v->method, c.method);
  }
}

TEST(MethodsTest, SparseAndRankSliceUpdatesMoveOnlyWhatTheyCarry) {
  const AdapterSpec spec = Rank4Spec();
  const AdapterState x0 = FreshState(spec, 1);
  Harness h(Options("flasc", 2), spec, x0);
  h.Feed(Update("u1", "c1", 0, 10, {{"m.lora_A", {4, 5}, wire::Encoding::Sparse, {3, 17}, {1.0f, 2.0f}}}));
  h.Feed(Update("u2", "c2", 0, 30, {{"m.lora_B", {6, 4}, wire::Encoding::RankSlice, {2},
                                     {1, 2, 3, 4, 5, 6}}}));
  const AdapterState& x = h.engine().state();
  for (size_t i = 0; i < 20; ++i) {
    const float expected = x0.tensors[0].values[i] + (i == 3 ? 0.25f : i == 17 ? 0.5f : 0.0f);
    EXPECT_FLOAT_EQ(x.tensors[0].values[i], expected) << i;
  }
  for (size_t row = 0; row < 6; ++row) {
    for (size_t r = 0; r < 4; ++r) {
      const float expected = r == 2 ? 0.75f * static_cast<float>(row + 1) : 0.0f;
      EXPECT_FLOAT_EQ(x.tensors[1].values[row * 4 + r], expected) << row << "," << r;
    }
  }
}

TEST(MethodsTest, FloraFoldsHeterogeneousRanksExactlyInProductSpace) {
  const AdapterSpec spec = Rank4Spec(/*residual=*/true);
  AdapterState x0 = FreshState(spec, 1);
  Harness h(Options("flora", 2), spec, x0);
  // Client 1 holds rank 1 (rank slice {0}), client 2 rank 2 ({0, 1}); B starts at zero.
  const auto a1 = RandomValues(5, 7), b1 = RandomValues(6, 8);
  const auto a2 = RandomValues(10, 9), b2 = RandomValues(12, 10);
  h.Feed(Update("u1", "c1", 0, 10, {{"m.lora_A", {4, 5}, wire::Encoding::RankSlice, {0}, a1},
                                    {"m.lora_B", {6, 4}, wire::Encoding::RankSlice, {0}, b1}}));
  ASSERT_TRUE(h.Feed(Update("u2", "c2", 0, 30, {{"m.lora_A", {4, 5}, wire::Encoding::RankSlice, {0, 1}, a2},
                                                {"m.lora_B", {6, 4}, wire::Encoding::RankSlice, {0, 1}, b2}})));
  // Expected: sum_k p_k (B'_k A'_k - B_k A_k) with B_k = 0, A'_k = A0[S_k] + dA_k, B'_k = dB_k.
  auto client_product = [&](const std::vector<uint32_t>& ranks, const std::vector<float>& da,
                            const std::vector<float>& db) {
    lowrank::Factors f{6, 5, static_cast<uint32_t>(ranks.size()), {}, {}};
    for (size_t j = 0; j < ranks.size(); ++j) {
      for (size_t c = 0; c < 5; ++c) f.a.push_back(x0.tensors[0].values[ranks[j] * 5 + c] + da[j * 5 + c]);
    }
    f.b.assign(db.begin(), db.end());  // d x |ranks| row-major, as sent
    return lowrank::Product(f);
  };
  const auto p1 = client_product({0}, a1, b1), p2 = client_product({0, 1}, a2, b2);
  const auto got = ProductOf(h.engine().state());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], 0.25 * p1[i] + 0.75 * p2[i], 1e-5) << i;
}

// FLoRA's sum is exact over any number of commits: what the rank-r factors cannot hold stays in
// the module's residual, so B A + R is sum_t (B'_t A'_t - B_t A_t) however many rank-r changes
// pile up (FedBuff, and FedAsync's product-space mix). With --flora-merge truncate the
// remainder is dropped at each commit and the product drifts from the sum, which is what the
// residual is for.
TEST(MethodsTest, FloraStaysExactAcrossCommitsWithItsResidual) {
  for (const wire::Mode mode : {wire::Mode::FedBuff, wire::Mode::FedAsync}) {
    for (const std::string merge : {"exact", "truncate"}) {
      const AdapterSpec spec = Rank4Spec(merge == "exact", /*rank=*/2);
      const AdapterState x0 = FreshState(spec, 11);
      // FedBuff: two clients' changes per commit (their sum has rank 2r); FedAsync: one, mixed.
      const size_t k = mode == wire::Mode::FedBuff ? 2 : 1;
      EngineOptions o = Options("flora", static_cast<uint32_t>(k));
      o.mode = mode;
      o.fedasync_alpha = 0.5;
      ASSERT_TRUE(methods::SetParams(o.method.params(), {{"flora-merge", merge}}).ok());
      Harness h(o, spec, x0);
      std::vector<double> want = ProductOf(x0);  // zero: B starts at zero
      double worst = 0;
      for (uint64_t t = 0; t < 6; ++t) {
        const AdapterState x = h.engine().state();
        std::optional<codec::VersionInfo> made;
        for (size_t c = 0; c < k; ++c) {
          const auto da = RandomValues(10, 100 + 10 * t + c), db = RandomValues(12, 200 + 10 * t + c);
          // The client's change in product space: (B + dB)(A + dA) - B A, from version t.
          AdapterState end = x;
          for (size_t i = 0; i < 10; ++i) end.tensors[0].values[i] += da[i];
          for (size_t i = 0; i < 12; ++i) end.tensors[1].values[i] += db[i];
          if (end.tensors.size() > 3) std::fill(end.tensors[3].values.begin(), end.tensors[3].values.end(), 0.0f);
          AdapterState start = x;
          if (start.tensors.size() > 3) std::fill(start.tensors[3].values.begin(), start.tensors[3].values.end(), 0.0f);
          const auto pe = ProductOf(end), ps = ProductOf(start);
          // Equal data weights: 1/k each in FedBuff; FedAsync at staleness 0 mixes with alpha.
          const double step = mode == wire::Mode::FedAsync ? 0.5 : 1.0 / static_cast<double>(k);
          for (size_t i = 0; i < want.size(); ++i) want[i] += step * (pe[i] - ps[i]);
          made = h.Feed(Update(fmt::format("u{}-{}", t, c), fmt::format("c{}", c), t, 10,
                               {{"m.lora_A", {2, 5}, wire::Encoding::Dense, {}, da},
                                {"m.lora_B", {6, 2}, wire::Encoding::Dense, {}, db}}));
        }
        ASSERT_TRUE(made);
        const auto got = ProductOf(h.engine().state());
        for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(got[i] - want[i]));
      }
      if (merge == "exact") {
        EXPECT_LT(worst, 1e-4) << wire::EnumNameMode(mode);
      } else {
        EXPECT_GT(worst, 0.1) << wire::EnumNameMode(mode) << ": truncation should lose the remainder";
      }
    }
  }
}

TEST(MethodsTest, FloraNeedsAResidualAdapterExactlyWhenItMergesExactly) {
  const AdapterSpec plain = Rank4Spec(), residual = Rank4Spec(true);
  EXPECT_EQ(Engine::Create(Options("flora", 1), "default", plain, FreshState(plain, 1), 0, 0, {}).status().code(),
            Code::kInvalidArgument);
  EngineOptions truncate = Options("flora", 1);
  ASSERT_TRUE(methods::SetParams(truncate.method.params(), {{"flora-merge", "truncate"}}).ok());
  EXPECT_TRUE(Engine::Create(truncate, "default", plain, FreshState(plain, 1), 0, 0, {}).ok());
  EXPECT_EQ(Engine::Create(truncate, "default", residual, FreshState(residual, 1), 0, 0, {}).status().code(),
            Code::kInvalidArgument);
  EXPECT_EQ(Engine::Create(Options("fedavg", 1), "default", residual, FreshState(residual, 1), 0, 0, {}).status().code(),
            Code::kInvalidArgument);
  // An update never carries a residual.
  const codec::Bytes bad = Update("u1", "c1", 0, 10, {{"m.lora_residual", {6, 5}, wire::Encoding::Dense, {}, RandomValues(30, 1)}});
  EXPECT_EQ(ValidateUpdate(AsUpdate(bad), residual, 0).code(), Code::kInvalidArgument);
  // A residual must match its module's product shape and have a module.
  AdapterSpec misshapen = residual;
  misshapen.tensors[3].shape = {5, 6};
  EXPECT_EQ(methods::LoraLayout::Of(misshapen).status().code(), Code::kInvalidArgument);
  AdapterSpec orphan = residual;
  orphan.tensors[3].name = "n.lora_residual";
  EXPECT_EQ(methods::LoraLayout::Of(orphan).status().code(), Code::kInvalidArgument);
}

TEST(MethodsTest, HetLoraWeighsEachUpdateByItsProductNorm) {
  const AdapterSpec spec = Rank4Spec();
  Harness h(Options("hetlora", 2), spec, FreshState(spec, 1));
  std::vector<float> small(24, 0.01f), large(24, 0.04f);
  h.Feed(Update("u1", "c1", 0, 10, {{"m.lora_B", {6, 4}, wire::Encoding::Dense, {}, small}}));
  auto v = h.Feed(Update("u2", "c2", 0, 10, {{"m.lora_B", {6, 4}, wire::Encoding::Dense, {}, large}}));
  ASSERT_TRUE(v);
  // Same data weight, products of norm ratio 4: weights 0.2 and 0.8.
  EXPECT_NEAR(v->applied[0].weight, 0.2f, 1e-5);
  EXPECT_NEAR(v->applied[1].weight, 0.8f, 1e-5);
  EXPECT_NEAR(h.engine().state().tensors[1].values[0], 0.2f * 0.01f + 0.8f * 0.04f, 1e-7);
}

// ||B A||_F of B (6 x r) and A (r x 5) row-major, the naive way.
double NaiveProductNorm(const std::vector<float>& b, const std::vector<float>& a, size_t r) {
  double sq = 0;
  for (size_t row = 0; row < 6; ++row) {
    for (size_t c = 0; c < 5; ++c) {
      double x = 0;
      for (size_t i = 0; i < r; ++i) x += static_cast<double>(b[row * r + i]) * a[i * 5 + c];
      sq += x * x;
    }
  }
  return std::sqrt(sq);
}

// HetLoRA as the paper defines it: a rank-2 client's factors are zero-padded to rank 4, so the
// global's ranks 2 and 3 are averaged with its zeros (shrinking by the other client's weight),
// and the weights are ||B_k A_k||_F / Z whatever the clients' data sizes. The rule of earlier
// fedlora ("deltas": an unsent rank keeps the global value, weights n_k ||B_k A_k||_F) stays
// available.
TEST(MethodsTest, HetLoraZeroPadsLowerRankFactorsAndWeighsByProductNormOnly) {
  const AdapterSpec spec = Rank4Spec();
  AdapterState x0 = FreshState(spec, 3);
  x0.tensors[1].values = RandomValues(24, 4);  // a trained B
  auto run = [&](const std::string& rule) {
    EngineOptions o = Options("hetlora", 2);
    ASSERT_TRUE(methods::SetParams(o.method.params(), {{"hetlora-rule", rule}}).ok());
    Harness h(o, spec, x0);
    // c1 trains rank 2 (slices 0 and 1, no change); c2 all four ranks (no change), 9x the data.
    const codec::EncodedTensor a2{"m.lora_A", {4, 5}, wire::Encoding::RankSlice, {0, 1}, std::vector<float>(10, 0.0f)};
    const codec::EncodedTensor b2{"m.lora_B", {6, 4}, wire::Encoding::RankSlice, {0, 1}, std::vector<float>(12, 0.0f)};
    const codec::EncodedTensor a4{"m.lora_A", {4, 5}, wire::Encoding::Dense, {}, std::vector<float>(20, 0.0f)};
    const codec::EncodedTensor b4{"m.lora_B", {6, 4}, wire::Encoding::Dense, {}, std::vector<float>(24, 0.0f)};
    EXPECT_FALSE(h.Feed(Update("u1", "c1", 0, 10, {a2, b2})));
    auto v = h.Feed(Update("u2", "c2", 0, 90, {a4, b4}));
    ASSERT_TRUE(v);
    std::vector<float> b_low(12), a_low(x0.tensors[0].values.begin(), x0.tensors[0].values.begin() + 10);
    for (size_t row = 0; row < 6; ++row) {
      for (size_t i = 0; i < 2; ++i) b_low[row * 2 + i] = x0.tensors[1].values[row * 4 + i];
    }
    const double s1 = NaiveProductNorm(b_low, a_low, 2), s2 = NaiveProductNorm(x0.tensors[1].values, x0.tensors[0].values, 4);
    const double n1 = rule == "paper" ? 1 : 10, n2 = rule == "paper" ? 1 : 90;
    const double p2 = n2 * s2 / (n1 * s1 + n2 * s2);
    EXPECT_NEAR(v->applied[1].weight, p2, 1e-5) << rule;
    const auto& b = h.engine().state().tensors[1].values;
    const auto& a = h.engine().state().tensors[0].values;
    for (size_t row = 0; row < 6; ++row) {
      for (size_t i = 0; i < 4; ++i) {
        const float old = x0.tensors[1].values[row * 4 + i];
        const float want = rule == "paper" && i >= 2 ? static_cast<float>(p2) * old : old;
        EXPECT_NEAR(b[row * 4 + i], want, 1e-5) << rule << " B row " << row << " rank " << i;
      }
    }
    for (size_t i = 10; i < 20; ++i) {
      const float old = x0.tensors[0].values[i];
      EXPECT_NEAR(a[i], rule == "paper" ? static_cast<float>(p2) * old : old, 1e-5) << rule << " A " << i;
    }
  };
  run("paper");
  run("deltas");
}

TEST(MethodsTest, FullFineTuningNeedsAnAdapterWithoutLoraAndLoraMethodsNeedLora) {
  const AdapterSpec lora = Rank4Spec();
  auto e = Engine::Create(Options("full", 1), "default", lora, FreshState(lora, 1), 0, 0, {});
  EXPECT_EQ(e.status().code(), Code::kInvalidArgument);
  AdapterSpec dense;
  dense.model = "test";
  dense.rank = 0;
  dense.tensors = {{"w", {2, 2}, TensorRole::kDense}};
  AdapterState s;
  s.tensors = {{"w", {2, 2}, {0, 0, 0, 0}}};
  EXPECT_TRUE(Engine::Create(Options("full", 1), "default", dense, s, 0, 0, {}).ok());
  EXPECT_EQ(Engine::Create(Options("fedavg", 1), "default", dense, s, 0, 0, {}).status().code(),
            Code::kInvalidArgument);
}

}  // namespace
}  // namespace fedlora::aggregator
