// Update encodings (Sparse, RankSlice) and their validation; method names, schedules and the
// method state a global carries.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "schema/codec.h"
#include "schema/method.h"
#include "schema/validate.h"
#include "tests/testing/fixtures.h"

namespace fedlora {
namespace {

using testing::AsUpdate;
using testing::SmallSpec;

codec::UpdateHeader Header() {
  codec::UpdateHeader h;
  h.update_id = "u1";
  h.client_id = "c1";
  h.adapter_id = "default";
  h.num_samples = 10;
  return h;
}

// SmallSpec: m.lora_A 2x3, m.lora_B 4x2, head.weight 2x4, head.bias 2.
codec::EncodedTensor Sparse(std::string name, std::vector<uint32_t> shape, std::vector<uint32_t> idx,
                            std::vector<float> values) {
  return {std::move(name), std::move(shape), wire::Encoding::Sparse, std::move(idx), std::move(values)};
}
codec::EncodedTensor Slice(std::string name, std::vector<uint32_t> shape, std::vector<uint32_t> ranks,
                           std::vector<float> values) {
  return {std::move(name), std::move(shape), wire::Encoding::RankSlice, std::move(ranks), std::move(values)};
}

Status Validate(const std::vector<codec::EncodedTensor>& tensors) {
  const codec::Bytes bytes = codec::BuildUpdate(Header(), tensors);
  auto env = codec::VerifyEnvelope(codec::AsBytes(bytes));
  if (!env.ok()) return env.status();
  return ValidateUpdate(*(*env)->body_as_Update(), SmallSpec(), 0);
}

TEST(EncodingTest, SparseAndRankSliceUpdatesRoundTripAndValidate) {
  const std::vector<codec::EncodedTensor> tensors = {
      Sparse("head.weight", {2, 4}, {0, 5, 7}, {1.5f, -2.0f, 3.0f}),
      Slice("m.lora_A", {2, 3}, {1}, {0.1f, 0.2f, 0.3f}),
      Slice("m.lora_B", {4, 2}, {0}, {1, 2, 3, 4}),
  };
  const codec::Bytes bytes = codec::BuildUpdate(Header(), tensors);
  const wire::Update& u = AsUpdate(bytes);
  ASSERT_EQ(u.tensors()->size(), 3u);
  const auto* sparse = u.tensors()->Get(0);
  EXPECT_EQ(sparse->encoding(), wire::Encoding::Sparse);
  EXPECT_EQ(std::vector<uint32_t>(codec::Indices(*sparse).begin(), codec::Indices(*sparse).end()),
            (std::vector<uint32_t>{0, 5, 7}));
  const auto* slice = u.tensors()->Get(1);
  EXPECT_EQ(slice->encoding(), wire::Encoding::RankSlice);
  EXPECT_EQ(codec::Ranks(*slice).size(), 1u);
  EXPECT_EQ(codec::DenseValues(*slice).size(), 3u);
  EXPECT_TRUE(ValidateUpdate(u, SmallSpec(), 0).ok()) << ValidateUpdate(u, SmallSpec(), 0).ToString();
}

TEST(EncodingTest, SparseIndicesMustBeStrictlyIncreasingInRangeAndMatchTheValues) {
  Status s = Validate({Sparse("head.weight", {2, 4}, {3, 1}, {1, 2})});
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.message().find("strictly increasing"), std::string::npos) << s.message();
  s = Validate({Sparse("head.weight", {2, 4}, {1, 1}, {1, 2})});
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  s = Validate({Sparse("head.weight", {2, 4}, {8}, {1})});
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.message().find("out of range"), std::string::npos) << s.message();
  s = Validate({Sparse("head.weight", {2, 4}, {1, 2}, {1})});
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.message().find("2 indices but 1 values"), std::string::npos) << s.message();
  s = Validate({Sparse("head.weight", {2, 4}, {2}, {std::numeric_limits<float>::quiet_NaN()})});
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.message().find("non-finite"), std::string::npos) << s.message();
}

TEST(EncodingTest, RankSlicesAreOnlyForLoraFactorsWithValidRanksAndFullSlices) {
  Status s = Validate({Slice("head.weight", {2, 4}, {0}, {1, 2})});
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.message().find("not a LoRA factor"), std::string::npos) << s.message();
  s = Validate({Slice("m.lora_A", {2, 3}, {2}, {1, 2, 3})});  // rank 2 of a rank-2 adapter
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  s = Validate({Slice("m.lora_B", {4, 2}, {1, 0}, {1, 2, 3, 4, 5, 6, 7, 8})});
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  s = Validate({Slice("m.lora_B", {4, 2}, {1}, {1, 2, 3})});  // a column of B has 4 values
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.message().find("need 4"), std::string::npos) << s.message();
  EXPECT_TRUE(Validate({Slice("m.lora_B", {4, 2}, {0, 1}, {1, 2, 3, 4, 5, 6, 7, 8})}).ok());
}

TEST(EncodingTest, QuantisedTensorsAreUnimplemented) {
  codec::EncodedTensor q{"head.bias", {2}, wire::Encoding::Q8, {}, {}};
  EXPECT_EQ(Validate({q}).code(), Code::kUnimplemented);
}

TEST(MethodTest, EveryMethodNameParsesBackAndUnknownNamesAreListed) {
  for (Method m : kAllMethods) {
    auto parsed = ParseMethod(MethodName(m));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, m);
    EXPECT_FALSE(MethodSummary(m).empty());
  }
  Status s = ParseMethod("fedprox").status();
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.message().find("lora-a2"), std::string::npos) << s.message();
}

TEST(MethodTest, SaFedLoraBudgetHeatsThenCoolsAsACubicToTheMinimum) {
  MethodConfig c;
  c.method = Method::kSaFedLora;
  c.heating_until = 10;
  c.cooling_until = 30;
  c.min_budget = 2;
  EXPECT_EQ(AnnealedBudget(c, 8, 0), 8u);
  EXPECT_EQ(AnnealedBudget(c, 8, 9), 8u);
  EXPECT_EQ(AnnealedBudget(c, 8, 10), 8u);
  // Halfway: 2 + 6 * 0.5^3 = 2.75 -> 3.
  EXPECT_EQ(AnnealedBudget(c, 8, 20), 3u);
  EXPECT_EQ(AnnealedBudget(c, 8, 30), 2u);
  EXPECT_EQ(AnnealedBudget(c, 8, 1000), 2u);
  uint32_t last = 8;
  for (uint64_t v = 0; v < 40; ++v) {
    EXPECT_LE(AnnealedBudget(c, 8, v), last);
    last = AnnealedBudget(c, 8, v);
  }
  // The proximal term only in the initiating stage.
  c.initiating_versions = 5;
  EXPECT_GT(MethodStateAt(c, 8, 4).proximal_mu, 0.0f);
  EXPECT_EQ(MethodStateAt(c, 8, 5).proximal_mu, 0.0f);
}

TEST(MethodTest, LoraA2PhaseFlipsEveryPhaseLengthStartingWithB) {
  MethodConfig c;
  c.method = Method::kLoraA2;
  c.phase_length = 3;
  EXPECT_EQ(MethodStateAt(c, 8, 0).phase, 0);
  EXPECT_EQ(MethodStateAt(c, 8, 2).phase, 0);
  EXPECT_EQ(MethodStateAt(c, 8, 3).phase, 1);
  EXPECT_EQ(MethodStateAt(c, 8, 6).phase, 0);
  EXPECT_EQ(MethodStateAt(c, 8, 0).rank_budget, 1u);
}

TEST(MethodTest, FlascDensitiesDecayByVersion) {
  MethodConfig c;
  c.method = Method::kFlasc;
  c.upload_density = 0.2f;
  c.download_density = 0.5f;
  c.density_decay = 0.5f;
  c.decay_every = 10;
  EXPECT_FLOAT_EQ(MethodStateAt(c, 8, 9).upload_density, 0.2f);
  EXPECT_FLOAT_EQ(MethodStateAt(c, 8, 10).upload_density, 0.1f);
  EXPECT_FLOAT_EQ(MethodStateAt(c, 8, 25).download_density, 0.125f);
}

TEST(MethodTest, InvalidConfigurationsAreRejectedByName) {
  MethodConfig c;
  c.upload_density = 1.5f;
  EXPECT_NE(ValidateMethodConfig(c).message().find("upload density"), std::string::npos);
  c = {};
  c.cooling_until = 5;
  c.heating_until = 10;
  EXPECT_EQ(ValidateMethodConfig(c).code(), Code::kInvalidArgument);
  c = {};
  c.phase_length = 0;
  EXPECT_EQ(ValidateMethodConfig(c).code(), Code::kInvalidArgument);
}

TEST(MethodTest, TheGlobalCarriesTheMethodState) {
  codec::GlobalInfo info{"default", 7, "h", 3, wire::Mode::FedBuff, false, {}};
  info.method.method = Method::kLoraA2;
  info.method.phase = 1;
  info.method.rank_budget = 2;
  info.method.a_lr_ratio = 0.2f;
  info.method.probe_batches = 3;
  const AdapterState state = testing::FilledState(SmallSpec(), 1.0f);
  const codec::Bytes bytes = codec::BuildGlobal(info, SmallSpec(), state);
  auto decoded = codec::DecodeGlobal(*wire::GetEnvelope(bytes.data())->body_as_GlobalAdapter());
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->info.method.method, Method::kLoraA2);
  EXPECT_EQ(decoded->info.method.phase, 1);
  EXPECT_EQ(decoded->info.method.rank_budget, 2u);
  EXPECT_FLOAT_EQ(decoded->info.method.a_lr_ratio, 0.2f);
  EXPECT_EQ(decoded->info.method.probe_batches, 3u);
}

}  // namespace
}  // namespace fedlora
