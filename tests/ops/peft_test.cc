#include "ops/peft.h"

#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "tests/testing/fixtures.h"

namespace fedlora::ops {
namespace {

// A hand-built safetensors file around `header` with `data_bytes` zero bytes of data.
std::string File(const nlohmann::json& header, size_t data_bytes) {
  const std::string json = header.dump();
  std::string out(8, '\0');
  const uint64_t n = json.size();
  std::memcpy(out.data(), &n, 8);
  return out + json + std::string(data_bytes, '\0');
}

TEST(Safetensors, RoundTripsTensorsAndMetadataWithAnAlignedDataStart) {
  const AdapterState s = testing::FilledState(testing::SmallSpec(), 0.5f);
  const std::string bytes = EncodeSafetensors({{"x", &s.tensors[0]}, {"y", &s.tensors[3]}}, {{"k", "v"}});
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ((8 + n) % 8, 0u);
  auto file = DecodeSafetensors(bytes);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  ASSERT_EQ(file->tensors.size(), 2u);
  EXPECT_EQ(file->tensors[0].shape, s.tensors[0].shape);
  EXPECT_EQ(file->tensors[0].values, s.tensors[0].values);
  EXPECT_EQ(file->tensors[1].values, s.tensors[3].values);
  EXPECT_EQ(file->metadata.at("k"), "v");
}

TEST(Safetensors, RefusesMalformedFiles) {
  const nlohmann::json two = {{"a", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {0, 8}}}},
                              {"b", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {8, 16}}}}};
  EXPECT_TRUE(DecodeSafetensors(File(two, 16)).ok());
  EXPECT_FALSE(DecodeSafetensors(File(two, 24)).ok()) << "unused trailing bytes";
  EXPECT_FALSE(DecodeSafetensors(File(two, 12)).ok()) << "offsets past the data";
  nlohmann::json overlap = two;
  overlap["b"]["data_offsets"] = {4, 12};
  EXPECT_FALSE(DecodeSafetensors(File(overlap, 16)).ok()) << "overlap";
  nlohmann::json half = two;
  half["a"]["dtype"] = "F16";
  auto r = DecodeSafetensors(File(half, 16));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("F32"), std::string::npos);
  nlohmann::json wrong_size = two;
  wrong_size["a"]["shape"] = {3};
  EXPECT_FALSE(DecodeSafetensors(File(wrong_size, 16)).ok()) << "shape and offsets disagree";
  std::string huge(8, '\xff');
  EXPECT_FALSE(DecodeSafetensors(huge).ok()) << "header length beyond the file";
  EXPECT_FALSE(DecodeSafetensors("abc").ok());
}

TEST(Peft, WritesAndReadsBackTheSameAdapterAndRefusesFullModels) {
  testing::TempDir dir;
  PeftAdapter a{testing::SmallSpec(), testing::FilledState(testing::SmallSpec(), 0.25f), {{"fedlora.version", "3"}}};
  ASSERT_TRUE(WritePeft(dir.path("p"), a).ok());
  EXPECT_EQ(WritePeft(dir.path("p"), a).code(), Code::kAlreadyExists);
  auto back = ReadPeft(dir.path("p"));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  ASSERT_EQ(back->spec.tensors.size(), a.spec.tensors.size());
  for (size_t i = 0; i < a.spec.tensors.size(); ++i) {
    EXPECT_EQ(back->spec.tensors[i].name, a.spec.tensors[i].name);
    EXPECT_EQ(back->spec.tensors[i].role, a.spec.tensors[i].role);
    EXPECT_EQ(back->state.tensors[i].values, a.state.tensors[i].values);
  }
  EXPECT_EQ(back->spec.rank, a.spec.rank);
  EXPECT_EQ(back->spec.alpha, a.spec.alpha);
  EXPECT_EQ(back->metadata.at("fedlora.version"), "3");

  PeftAdapter full = a;
  full.spec.rank = 0;
  for (auto& t : full.spec.tensors) t.role = TensorRole::kDense;
  EXPECT_EQ(WritePeft(dir.path("full"), full).code(), Code::kFailedPrecondition);
}

}  // namespace
}  // namespace fedlora::ops
