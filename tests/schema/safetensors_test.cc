// The safetensors reader: exact F16/BF16 widening, every malformed header refused before a
// byte of data is read, and files mapped rather than copied.
#include "schema/safetensors.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>

#include "tests/testing/fixtures.h"

namespace fedlora::safetensors {
namespace {

std::span<const std::byte> Bytes(const std::string& s) { return {reinterpret_cast<const std::byte*>(s.data()), s.size()}; }

// A file around a hand-written header with `data_bytes` zero bytes of data.
std::string File(const std::string& json, size_t data_bytes) {
  std::string out(8, '\0');
  const uint64_t n = json.size();
  std::memcpy(out.data(), &n, 8);
  return out + json + std::string(data_bytes, '\0');
}

float Half(uint16_t h) {
  float f = 0;
  EXPECT_TRUE(ToFloat(Dtype::kF16, reinterpret_cast<const std::byte*>(&h), 1, &f).ok());
  return f;
}

TEST(SafetensorsTest, WidensHalfPrecisionExactly) {
  EXPECT_EQ(Half(0x3c00), 1.0f);
  EXPECT_EQ(Half(0xc000), -2.0f);
  EXPECT_EQ(Half(0x7bff), 65504.0f);                 // largest normal
  EXPECT_EQ(Half(0x0400), std::ldexp(1.0f, -14));    // smallest normal
  EXPECT_EQ(Half(0x0001), std::ldexp(1.0f, -24));    // smallest subnormal
  EXPECT_EQ(Half(0x03ff), std::ldexp(1023.0f, -24)); // largest subnormal
  EXPECT_TRUE(std::signbit(Half(0x8000)) && Half(0x8000) == 0.0f);
  EXPECT_EQ(Half(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(Half(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(Half(0x7e00)));
  // Every finite half widens to a float that rounds back to it: compare with the float's
  // own value computed from the fields.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    if (exp == 0x1f) continue;
    const double magnitude = exp == 0 ? std::ldexp(static_cast<double>(mant), -24)
                                      : std::ldexp(1.0 + mant / 1024.0, static_cast<int>(exp) - 15);
    const double want = (h & 0x8000) ? -magnitude : magnitude;
    ASSERT_EQ(static_cast<double>(Half(static_cast<uint16_t>(h))), want) << std::hex << h;
  }
  const uint16_t bf[] = {0x3f80, 0xc0a0, 0x7f80};  // 1, -5, inf
  float out[3];
  ASSERT_TRUE(ToFloat(Dtype::kBF16, reinterpret_cast<const std::byte*>(bf), 3, out).ok());
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -5.0f);
  EXPECT_EQ(out[2], std::numeric_limits<float>::infinity());
  EXPECT_EQ(ToFloat(Dtype::kI64, nullptr, 0, out).code(), Code::kUnimplemented);
}

TEST(SafetensorsTest, ParsesDtypesShapesAndMetadataInDataOrder) {
  const std::string file = File(
      R"({"b":{"dtype":"BF16","shape":[2,2],"data_offsets":[4,12]},"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},)"
      R"("__metadata__":{"format":"pt"}})",
      12);
  auto h = ParseHeader(Bytes(file));
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  ASSERT_EQ(h->tensors.size(), 2u);
  EXPECT_EQ(h->tensors[0].name, "a");
  EXPECT_EQ(h->tensors[0].dtype, Dtype::kF16);
  EXPECT_EQ(h->tensors[1].shape, (std::vector<uint64_t>{2, 2}));
  EXPECT_EQ(h->metadata.at("format"), "pt");
  EXPECT_EQ(h->data_start, file.size() - 12);
  EXPECT_EQ(h->Find("b"), &h->tensors[1]);
  EXPECT_EQ(h->Find("c"), nullptr);
}

TEST(SafetensorsTest, RefusesEveryMalformedHeader) {
  struct Case {
    std::string json;
    size_t data;
    Code code;
    const char* why;
  };
  const std::vector<Case> cases = {
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 12, Code::kDataLoss, "unused bytes"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4, Code::kDataLoss, "offsets past the data"},
      {R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8, Code::kDataLoss, "shape and offsets disagree"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12,
       Code::kDataLoss, "overlap"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12, Code::kDataLoss, "gap"},
      {R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,0]}})", 0, Code::kDataLoss,
       "a shape whose size overflows"},
      {R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4, Code::kDataLoss, "negative dimension"},
      {R"({"a":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}})", 1, Code::kUnimplemented, "unknown dtype"},
      {R"({"a":{"dtype":"F32","shape":[1]}})", 4, Code::kDataLoss, "no offsets"},
      {R"({"__metadata__":{"k":1}})", 0, Code::kDataLoss, "metadata that is not a string"},
      {R"([1,2])", 0, Code::kDataLoss, "not an object"},
      {R"({"a":)", 0, Code::kDataLoss, "truncated JSON"},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(ParseHeader(Bytes(File(c.json, c.data))).status().code(), c.code) << c.why;
  }
  std::string huge(8, '\xff');
  EXPECT_EQ(ParseHeader(Bytes(huge)).status().code(), Code::kDataLoss) << "header length beyond the file";
  EXPECT_EQ(ParseHeader(Bytes("abc")).status().code(), Code::kDataLoss);
  // A file cut anywhere is refused.
  const float values[] = {1, 2, 3};
  const std::string whole = Encode({{"x", {3}, values}}, {{"k", "v"}});
  ASSERT_TRUE(ParseHeader(Bytes(whole)).ok());
  for (size_t cut = 0; cut < whole.size(); ++cut) {
    EXPECT_FALSE(ParseHeader(Bytes(whole.substr(0, cut))).ok()) << cut;
  }
}

TEST(SafetensorsTest, EncodedFilesMapBackWithTheirValues) {
  testing::TempDir dir;
  const float x[] = {1.5f, -2.0f, 3.25f, 0.0f};
  const float y[] = {7.0f};
  const std::string bytes = Encode({{"x", {2, 2}, x}, {"y", {}, y}}, {{"format", "pt"}});
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ((8 + n) % 8, 0u) << "data starts 8-byte aligned";
  const std::string path = dir.path("t.safetensors");
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  auto file = MappedFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  ASSERT_EQ(file->bytes().size(), bytes.size());
  auto h = ParseHeader(file->bytes());
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  const Entry* e = h->Find("x");
  ASSERT_NE(e, nullptr);
  float got[4];
  ASSERT_TRUE(ToFloat(e->dtype, file->bytes().data() + h->data_start + e->begin, 4, got).ok());
  EXPECT_EQ(std::vector<float>(got, got + 4), std::vector<float>(x, x + 4));
  EXPECT_EQ(h->Find("y")->shape, std::vector<uint64_t>{});
  EXPECT_EQ(MappedFile::Open(dir.path("none")).status().code(), Code::kNotFound);
  EXPECT_EQ(MappedFile::Open(dir.path()).status().code(), Code::kUnavailable) << "a directory";
}

}  // namespace
}  // namespace fedlora::safetensors
