#include "schema/codec.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "schema/hash.h"
#include "schema/validate.h"
#include "tests/testing/fixtures.h"

namespace fedlora {
namespace {

using testing::FilledState;
using testing::MakeUpdate;
using testing::SmallSpec;

TEST(CodecTest, UpdateRoundTripsThroughVerifiedDecode) {
  const AdapterState delta = FilledState(SmallSpec(), 0.5f);
  const codec::Bytes bytes = MakeUpdate("u-1", "client-a", 7, delta, 42);
  auto env = codec::VerifyEnvelope(codec::AsBytes(bytes));
  ASSERT_TRUE(env.ok()) << env.status().ToString();
  ASSERT_EQ((*env)->body_type(), wire::Body::Update);
  const auto* u = (*env)->body_as_Update();
  EXPECT_EQ(u->update_id()->str(), "u-1");
  EXPECT_EQ(u->client_id()->str(), "client-a");
  EXPECT_EQ(u->base_version(), 7u);
  EXPECT_EQ(u->num_samples(), 42u);
  auto decoded = codec::DecodeUpdateTensors(*u);
  ASSERT_TRUE(decoded.ok());
  ASSERT_EQ(decoded->tensors.size(), delta.tensors.size());
  for (size_t t = 0; t < delta.tensors.size(); ++t) {
    EXPECT_EQ(decoded->tensors[t].name, delta.tensors[t].name);
    EXPECT_EQ(decoded->tensors[t].shape, delta.tensors[t].shape);
    EXPECT_EQ(decoded->tensors[t].values, delta.tensors[t].values);
  }
}

TEST(CodecTest, DenseValuesAreReadInPlace) {
  const codec::Bytes bytes = MakeUpdate("u-1", "c", 0, FilledState(SmallSpec(), 0));
  const auto& u = testing::AsUpdate(bytes);
  const auto values = codec::DenseValues(*u.tensors()->Get(0));
  const auto* begin = reinterpret_cast<const uint8_t*>(values.data());
  EXPECT_GE(begin, bytes.data());
  EXPECT_LT(begin, bytes.data() + bytes.size());
}

TEST(CodecTest, GlobalRoundTripKeepsSpecAndState) {
  const AdapterSpec spec = SmallSpec();
  const AdapterState state = FilledState(spec, 1.0f);
  codec::GlobalInfo info{"default", 12, "abc", 99, wire::Mode::Sync, true, {}};
  const codec::Bytes bytes = codec::BuildGlobal(info, spec, state);
  auto env = codec::VerifyEnvelope(codec::AsBytes(bytes));
  ASSERT_TRUE(env.ok());
  auto g = codec::DecodeGlobal(*(*env)->body_as_GlobalAdapter());
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_EQ(g->info.version, 12u);
  EXPECT_EQ(g->info.consumed_seq, 99u);
  EXPECT_EQ(g->info.mode, wire::Mode::Sync);
  EXPECT_TRUE(g->info.final);
  EXPECT_EQ(g->spec.rank, spec.rank);
  EXPECT_EQ(g->spec.seed, spec.seed);
  EXPECT_EQ(g->spec.target_modules, spec.target_modules);
  ASSERT_EQ(g->spec.tensors.size(), spec.tensors.size());
  EXPECT_EQ(g->spec.tensors[1].role, TensorRole::kLoraB);
  EXPECT_EQ(g->state.tensors[3].values, state.tensors[3].values);
}

TEST(CodecTest, VerifierRejectsRandomBytes) {
  std::string junk(200, '\0');
  for (size_t i = 0; i < junk.size(); ++i) junk[i] = static_cast<char>((i * 131 + 7) & 0xff);
  auto env = codec::VerifyEnvelope(codec::AsBytes(junk));
  EXPECT_EQ(env.status().code(), Code::kInvalidArgument);
}

TEST(CodecTest, VerifierRejectsWrongIdentifier) {
  codec::Bytes bytes = MakeUpdate("u", "c", 0, FilledState(SmallSpec(), 0));
  std::string copy(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  copy[4] = 'X';  // the identifier follows the 4-byte root offset
  auto env = codec::VerifyEnvelope(codec::AsBytes(copy));
  EXPECT_EQ(env.status().code(), Code::kInvalidArgument);
  EXPECT_NE(env.status().message().find("FLR1"), std::string::npos);
}

TEST(CodecTest, VerifierRejectsEveryTruncation) {
  codec::Bytes bytes = MakeUpdate("u", "c", 0, FilledState(SmallSpec(), 0));
  std::string full(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  for (size_t len = 0; len < full.size(); len += 7) {
    std::string cut = full.substr(0, len);
    EXPECT_FALSE(codec::VerifyEnvelope(codec::AsBytes(cut)).ok()) << "length " << len;
  }
}

TEST(CodecTest, VerifierRejectsCorruptedOffsets) {
  codec::Bytes bytes = MakeUpdate("u", "c", 0, FilledState(SmallSpec(), 0));
  std::string copy(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  copy[0] = static_cast<char>(0xff);  // root offset points far outside the buffer
  copy[1] = static_cast<char>(0xff);
  EXPECT_EQ(codec::VerifyEnvelope(codec::AsBytes(copy)).status().code(), Code::kInvalidArgument);
}

TEST(CodecTest, OversizeMessageIsRejectedBeforeDecoding) {
  codec::Bytes bytes = MakeUpdate("u", "c", 0, FilledState(SmallSpec(), 0));
  auto env = codec::VerifyEnvelope(codec::AsBytes(bytes), bytes.size() - 1);
  EXPECT_EQ(env.status().code(), Code::kResourceExhausted);
}

TEST(CodecTest, NewerSchemaVersionIsRefused) {
  flatbuffers::FlatBufferBuilder b;
  auto hello = wire::CreateHello(b, wire::Role::Worker, b.CreateString("c"));
  b.Finish(wire::CreateEnvelope(b, codec::kSchemaVersion + 1, wire::Body::Hello, hello.Union()),
           wire::EnvelopeIdentifier());
  auto env = codec::VerifyEnvelope({reinterpret_cast<const std::byte*>(b.GetBufferPointer()), b.GetSize()});
  EXPECT_EQ(env.status().code(), Code::kFailedPrecondition);
}

TEST(CodecTest, ErrorCarriesCodeAndReason) {
  codec::Bytes bytes = codec::BuildError(InvalidArgument("bad shape"), "u-9", 250);
  auto env = codec::VerifyEnvelope(codec::AsBytes(bytes));
  ASSERT_TRUE(env.ok());
  const auto* e = (*env)->body_as_Error();
  Status s = codec::StatusFromError(*e);
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_EQ(s.message(), "bad shape");
  EXPECT_EQ(e->update_id()->str(), "u-9");
  EXPECT_EQ(e->retry_after_ms(), 250u);
}

TEST(CodecTest, VersionRecordRoundTrips) {
  codec::VersionInfo v;
  v.adapter_id = "default";
  v.version = 5;
  v.parent_version = 4;
  v.consumed_seq = 77;
  v.applied = {{70, "c1", "u1", 3, 1, 0.25f, 32, 0.7f}, {77, "c2", "u2", 4, 0, 0.75f, 64, 0.6f}};
  v.dropped = {{71, "c3", "u3", 0, 25, "max-staleness"}};
  v.mean_staleness = 0.5f;
  v.max_staleness = 1;
  v.test_accuracy = 0.81f;
  v.content_hash = "00ff";
  codec::Bytes bytes = codec::BuildVersionRecord(v);
  auto rec = codec::VerifyVersionRecord(codec::AsBytes(bytes));
  ASSERT_TRUE(rec.ok());
  codec::VersionInfo back = codec::DecodeVersionRecord(**rec);
  EXPECT_EQ(back.version, 5u);
  EXPECT_EQ(back.consumed_seq, 77u);
  ASSERT_EQ(back.applied.size(), 2u);
  EXPECT_EQ(back.applied[1].client_id, "c2");
  EXPECT_FLOAT_EQ(back.applied[1].weight, 0.75f);
  ASSERT_EQ(back.dropped.size(), 1u);
  EXPECT_EQ(back.dropped[0].reason, "max-staleness");
  EXPECT_FLOAT_EQ(back.test_accuracy, 0.81f);
}

TEST(HashTest, AdapterHashDependsOnEveryValueAndNotOnVersion) {
  const AdapterSpec spec = SmallSpec();
  AdapterState a = FilledState(spec, 0);
  AdapterState b = a;
  EXPECT_EQ(HashAdapter(a), HashAdapter(b));
  b.tensors[2].values[3] = std::nextafter(b.tensors[2].values[3], 10.0f);
  EXPECT_NE(HashAdapter(a), HashAdapter(b));
  EXPECT_EQ(ToHex(HashAdapter(a)).size(), 32u);
}

class ValidateTest : public ::testing::Test {
 protected:
  Status Check(const AdapterState& delta, uint64_t base = 0, const std::string& client = "c") {
    bytes_ = MakeUpdate("u-1", client, base, delta);
    return ValidateUpdate(testing::AsUpdate(bytes_), spec_, /*latest_version=*/3);
  }
  AdapterSpec spec_ = SmallSpec();
  codec::Bytes bytes_;
};

TEST_F(ValidateTest, AcceptsAMatchingUpdate) { EXPECT_TRUE(Check(FilledState(spec_, 0)).ok()); }

TEST_F(ValidateTest, AcceptsASubsetOfTensors) {
  AdapterState only_b = FilledState(spec_, 0);
  only_b.tensors = {only_b.tensors[1]};
  EXPECT_TRUE(Check(only_b).ok());
}

TEST_F(ValidateTest, RejectsWrongShape) {
  AdapterState d = FilledState(spec_, 0);
  d.tensors[0].shape = {3, 2};
  Status s = Check(d);
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.message().find("m.lora_A"), std::string::npos) << s.message();
}

TEST_F(ValidateTest, RejectsValueCountThatDoesNotMatchShape) {
  AdapterState d = FilledState(spec_, 0);
  d.tensors[3].values.push_back(1);
  EXPECT_EQ(Check(d).code(), Code::kInvalidArgument);
}

TEST_F(ValidateTest, RejectsUnknownTensor) {
  AdapterState d = FilledState(spec_, 0);
  d.tensors[3].name = "other.bias";
  EXPECT_NE(Check(d).message().find("not part of the adapter"), std::string::npos);
}

TEST_F(ValidateTest, RejectsDuplicateTensor) {
  AdapterState d = FilledState(spec_, 0);
  d.tensors.push_back(d.tensors[0]);
  EXPECT_NE(Check(d).message().find("twice"), std::string::npos);
}

TEST_F(ValidateTest, RejectsNaNAndInfinity) {
  AdapterState d = FilledState(spec_, 0);
  d.tensors[1].values[2] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_NE(Check(d).message().find("non-finite"), std::string::npos);
  d = FilledState(spec_, 0);
  d.tensors[2].values[0] = std::numeric_limits<float>::infinity();
  EXPECT_EQ(Check(d).code(), Code::kInvalidArgument);
}

// The finite check runs in whole blocks of 1,024 values and a remainder: a bad value is found,
// at its index, wherever it falls.
TEST_F(ValidateTest, FindsANonFiniteValueInEveryBlockAndTheRemainder) {
  spec_.tensors = {{"w", {2500}, TensorRole::kDense}};
  for (const size_t at : {size_t{0}, size_t{1023}, size_t{1024}, size_t{2047}, size_t{2048}, size_t{2499}}) {
    for (const float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity()}) {
      AdapterState d = FilledState(spec_, 0.5f);
      d.tensors[0].values[at] = bad;
      const Status s = Check(d);
      EXPECT_NE(s.message().find("non-finite value at index " + std::to_string(at)), std::string::npos)
          << at << ": " << s.ToString();
    }
  }
  AdapterState d = FilledState(spec_, std::numeric_limits<float>::max());  // large is still finite
  d.tensors[0].values[7] = std::numeric_limits<float>::denorm_min();
  EXPECT_TRUE(Check(d).ok());
}

TEST_F(ValidateTest, RejectsBaseVersionFromTheFuture) {
  Status s = Check(FilledState(spec_, 0), /*base=*/4);
  EXPECT_NE(s.message().find("newer than the latest"), std::string::npos);
}

TEST_F(ValidateTest, RejectsBadClientId) {
  EXPECT_EQ(Check(FilledState(spec_, 0), 0, "bad id with spaces").code(), Code::kInvalidArgument);
  EXPECT_EQ(Check(FilledState(spec_, 0), 0, std::string(200, 'x')).code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace fedlora
