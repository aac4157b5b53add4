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

TEST(MethodTest, TheGlobalCarriesTheMethodState) {
  codec::GlobalInfo info{"default", 7, "h", 3, wire::Mode::FedBuff, false, {}};
  info.method.method = "lora-a2";
  info.method.phase = 1;
  info.method.density_scale = 0.25f;
  info.method.rank_budget = 2;
  info.method.a_lr_ratio = 0.2f;
  info.method.probe_batches = 3;
  const AdapterState state = testing::FilledState(SmallSpec(), 1.0f);
  const codec::Bytes bytes = codec::BuildGlobal(info, SmallSpec(), state);
  auto decoded = codec::DecodeGlobal(*wire::GetEnvelope(bytes.data())->body_as_GlobalAdapter());
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->info.method.method, "lora-a2");
  EXPECT_FLOAT_EQ(decoded->info.method.density_scale, 0.25f);
  EXPECT_EQ(decoded->info.method.phase, 1);
  EXPECT_EQ(decoded->info.method.rank_budget, 2u);
  EXPECT_FLOAT_EQ(decoded->info.method.a_lr_ratio, 0.2f);
  EXPECT_EQ(decoded->info.method.probe_batches, 3u);
}

}  // namespace
}  // namespace fedlora
