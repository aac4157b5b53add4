#include "worker/data.h"

#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <string>
#include <vector>

#include "tests/testing/fixtures.h"

namespace fedlora::worker {
namespace {

namespace fs = std::filesystem;

using fedlora::testing::TempDir;

void PutBigEndian(std::vector<uint8_t>& out, uint32_t v) {
  out.push_back(static_cast<uint8_t>(v >> 24));
  out.push_back(static_cast<uint8_t>(v >> 16));
  out.push_back(static_cast<uint8_t>(v >> 8));
  out.push_back(static_cast<uint8_t>(v));
}

std::vector<uint8_t> ImageIdx(const std::vector<uint8_t>& pixels, uint32_t count) {
  std::vector<uint8_t> bytes;
  PutBigEndian(bytes, 0x00000803);
  PutBigEndian(bytes, count);
  PutBigEndian(bytes, kImageRows);
  PutBigEndian(bytes, kImageCols);
  bytes.insert(bytes.end(), pixels.begin(), pixels.end());
  return bytes;
}

std::vector<uint8_t> LabelIdx(const std::vector<uint8_t>& labels) {
  std::vector<uint8_t> bytes;
  PutBigEndian(bytes, 0x00000801);
  PutBigEndian(bytes, static_cast<uint32_t>(labels.size()));
  bytes.insert(bytes.end(), labels.begin(), labels.end());
  return bytes;
}

void WriteRaw(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

void WriteGz(const std::string& path, const std::vector<uint8_t>& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr) << path;
  ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())),
            static_cast<int>(bytes.size()));
  ASSERT_EQ(gzclose(f), Z_OK);
}

// Three images whose pixels encode their position, so that a reader's layout bugs show.
struct SmallIdx {
  std::vector<uint8_t> pixels;
  std::vector<uint8_t> labels = {3, 0, 9};
  SmallIdx() {
    pixels.resize(labels.size() * kImagePixels);
    for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<uint8_t>(i * 7 % 251);
  }
};

TEST(LoadIdxTest, ReadsRawFiles) {
  TempDir dir;
  SmallIdx idx;
  WriteRaw(dir.path("images"), ImageIdx(idx.pixels, 3));
  WriteRaw(dir.path("labels"), LabelIdx(idx.labels));
  Result<Dataset> data = LoadIdx(dir.path("images"), dir.path("labels"));
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  EXPECT_EQ(data->size(), 3u);
  EXPECT_EQ(data->images, idx.pixels);
  EXPECT_EQ(data->labels, idx.labels);
}

TEST(LoadIdxTest, ReadsGzipFiles) {
  TempDir dir;
  SmallIdx idx;
  WriteGz(dir.path("images.gz"), ImageIdx(idx.pixels, 3));
  WriteGz(dir.path("labels.gz"), LabelIdx(idx.labels));
  Result<Dataset> data = LoadIdx(dir.path("images.gz"), dir.path("labels.gz"));
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  EXPECT_EQ(data->images, idx.pixels);
  EXPECT_EQ(data->labels, idx.labels);
}

TEST(LoadIdxTest, BadMagicIsDataLoss) {
  TempDir dir;
  SmallIdx idx;
  // An image file where a label file belongs.
  WriteRaw(dir.path("images"), ImageIdx(idx.pixels, 3));
  Result<Dataset> data = LoadIdx(dir.path("images"), dir.path("images"));
  ASSERT_FALSE(data.ok());
  EXPECT_EQ(data.status().code(), Code::kDataLoss) << data.status().ToString();
}

TEST(LoadIdxTest, TruncatedPayloadIsDataLoss) {
  TempDir dir;
  SmallIdx idx;
  std::vector<uint8_t> images = ImageIdx(idx.pixels, 3);
  images.resize(images.size() - 100);
  WriteGz(dir.path("images.gz"), images);
  WriteRaw(dir.path("labels"), LabelIdx(idx.labels));
  Result<Dataset> data = LoadIdx(dir.path("images.gz"), dir.path("labels"));
  ASSERT_FALSE(data.ok());
  EXPECT_EQ(data.status().code(), Code::kDataLoss) << data.status().ToString();
}

TEST(LoadIdxTest, TruncatedHeaderIsDataLoss) {
  TempDir dir;
  SmallIdx idx;
  WriteRaw(dir.path("images"), ImageIdx(idx.pixels, 3));
  WriteRaw(dir.path("labels"), {0x00, 0x00, 0x08});
  Result<Dataset> data = LoadIdx(dir.path("images"), dir.path("labels"));
  ASSERT_FALSE(data.ok());
  EXPECT_EQ(data.status().code(), Code::kDataLoss) << data.status().ToString();
}

TEST(LoadIdxTest, CountMismatchIsDataLoss) {
  TempDir dir;
  SmallIdx idx;
  WriteRaw(dir.path("images"), ImageIdx(idx.pixels, 3));
  WriteRaw(dir.path("labels"), LabelIdx({1, 2}));
  Result<Dataset> data = LoadIdx(dir.path("images"), dir.path("labels"));
  ASSERT_FALSE(data.ok());
  EXPECT_EQ(data.status().code(), Code::kDataLoss) << data.status().ToString();
}

TEST(LoadIdxTest, LabelOutOfRangeIsDataLoss) {
  TempDir dir;
  SmallIdx idx;
  WriteRaw(dir.path("images"), ImageIdx(idx.pixels, 3));
  WriteRaw(dir.path("labels"), LabelIdx({1, 10, 2}));
  Result<Dataset> data = LoadIdx(dir.path("images"), dir.path("labels"));
  ASSERT_FALSE(data.ok());
  EXPECT_EQ(data.status().code(), Code::kDataLoss) << data.status().ToString();
}

TEST(LoadIdxTest, MissingFileIsNotFound) {
  TempDir dir;
  SmallIdx idx;
  WriteRaw(dir.path("labels"), LabelIdx(idx.labels));
  Result<Dataset> data = LoadIdx(dir.path("no-such-images"), dir.path("labels"));
  ASSERT_FALSE(data.ok());
  EXPECT_EQ(data.status().code(), Code::kNotFound) << data.status().ToString();
}

TEST(LoadFashionMnistTest, FindsGzipAndRawFilesByTheirStandardNames) {
  TempDir dir;
  SmallIdx idx;
  WriteGz(dir.path("train-images-idx3-ubyte.gz"), ImageIdx(idx.pixels, 3));
  WriteRaw(dir.path("train-labels-idx1-ubyte"), LabelIdx(idx.labels));
  const std::string root = fs::path(dir.path("x")).parent_path().string();
  Result<Dataset> train = LoadFashionMnist(root, Split::kTrain);
  ASSERT_TRUE(train.ok()) << train.status().ToString();
  EXPECT_EQ(train->labels, idx.labels);
  Result<Dataset> test = LoadFashionMnist(root, Split::kTest);
  ASSERT_FALSE(test.ok());
  EXPECT_EQ(test.status().code(), Code::kNotFound);
}

// A synthetic labelled set: `per_class` examples of every class, labels interleaved.
Dataset SyntheticLabels(size_t per_class) {
  Dataset data;
  for (size_t i = 0; i < per_class * kNumClasses; ++i) {
    data.labels.push_back(static_cast<uint8_t>(i % kNumClasses));
  }
  data.images.assign(data.labels.size() * kImagePixels, 0);
  return data;
}

std::vector<size_t> AllIndices(const Dataset& data) {
  std::vector<size_t> indices(data.size());
  std::iota(indices.begin(), indices.end(), size_t{0});
  return indices;
}

TEST(SplitPublicTest, IsDeterministicAndDrawsOnlyFromTheChosenClasses) {
  const Dataset data = SyntheticLabels(200);
  PublicSplitOptions options;
  options.classes = {0, 2, 5};
  options.fraction = 0.25;
  const PublicSplit a = SplitPublic(data, options);
  const PublicSplit b = SplitPublic(data, options);
  EXPECT_EQ(a.public_indices, b.public_indices);
  EXPECT_EQ(a.private_indices, b.private_indices);

  const std::vector<size_t> hist = ClassHistogram(data, a.public_indices);
  for (int c = 0; c < kNumClasses; ++c) {
    const bool chosen = c == 0 || c == 2 || c == 5;
    EXPECT_EQ(hist[static_cast<size_t>(c)], chosen ? 50u : 0u) << "class " << c;
  }
  // Public and private partition the data.
  std::vector<size_t> all = a.public_indices;
  all.insert(all.end(), a.private_indices.begin(), a.private_indices.end());
  std::sort(all.begin(), all.end());
  EXPECT_EQ(all, AllIndices(data));
}

TEST(SplitPublicTest, DifferentSeedPicksDifferentExamples) {
  const Dataset data = SyntheticLabels(200);
  PublicSplitOptions options;
  const PublicSplit a = SplitPublic(data, options);
  options.seed += 1;
  const PublicSplit b = SplitPublic(data, options);
  EXPECT_EQ(a.public_indices.size(), b.public_indices.size());
  EXPECT_NE(a.public_indices, b.public_indices);
}

TEST(DirichletPartitionTest, AssignsEveryIndexExactlyOnce) {
  const Dataset data = SyntheticLabels(300);
  std::vector<size_t> indices;
  for (size_t i = 0; i < data.size(); i += 2) indices.push_back(i);  // a subset, like the private split
  auto parts = DirichletPartition(data, indices, 6, 0.5, 11);
  ASSERT_TRUE(parts.ok()) << parts.status().ToString();
  ASSERT_EQ(parts->size(), 6u);
  std::vector<size_t> all;
  for (const auto& p : *parts) {
    EXPECT_GE(p.size(), 10u);
    all.insert(all.end(), p.begin(), p.end());
  }
  std::sort(all.begin(), all.end());
  EXPECT_EQ(all, indices);
}

TEST(DirichletPartitionTest, IsDeterministicForASeedAndDiffersAcrossSeeds) {
  const Dataset data = SyntheticLabels(300);
  const std::vector<size_t> indices = AllIndices(data);
  auto a = DirichletPartition(data, indices, 5, 0.3, 1);
  auto b = DirichletPartition(data, indices, 5, 0.3, 1);
  auto c = DirichletPartition(data, indices, 5, 0.3, 2);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(*a, *b);
  EXPECT_NE(*a, *c);
}

// Mean over clients of the largest class's share of the client's data.
double MeanMaxClassShare(const Dataset& data, const std::vector<std::vector<size_t>>& parts) {
  double sum = 0;
  for (const auto& p : parts) {
    const std::vector<size_t> hist = ClassHistogram(data, p);
    sum += static_cast<double>(*std::max_element(hist.begin(), hist.end())) /
           static_cast<double>(p.size());
  }
  return sum / static_cast<double>(parts.size());
}

TEST(DirichletPartitionTest, SmallerAlphaGivesMoreSkewedClients) {
  const Dataset data = SyntheticLabels(500);
  const std::vector<size_t> indices = AllIndices(data);
  auto skewed = DirichletPartition(data, indices, 8, 0.1, 3);
  auto mild = DirichletPartition(data, indices, 8, 100.0, 3);
  ASSERT_TRUE(skewed.ok() && mild.ok());
  const double skewed_share = MeanMaxClassShare(data, *skewed);
  const double mild_share = MeanMaxClassShare(data, *mild);
  // IID clients have a max-class share near 1/10; alpha 0.1 concentrates most of a client's
  // data in one or two classes.
  EXPECT_LT(mild_share, 0.2);
  EXPECT_GT(skewed_share, 0.4);
}

TEST(DirichletPartitionTest, TopsUpClientsBelowTheMinimum) {
  const Dataset data = SyntheticLabels(10);  // 100 examples
  auto parts = DirichletPartition(data, AllIndices(data), 9, 0.01, 5, 11);
  ASSERT_TRUE(parts.ok());
  size_t total = 0;
  for (const auto& p : *parts) {
    EXPECT_GE(p.size(), 11u);
    total += p.size();
  }
  EXPECT_EQ(total, 100u);
}

TEST(DirichletPartitionTest, RejectsInvalidArguments) {
  const Dataset data = SyntheticLabels(10);
  EXPECT_EQ(DirichletPartition(data, AllIndices(data), 0, 0.5, 1).status().code(),
            Code::kInvalidArgument);
  EXPECT_EQ(DirichletPartition(data, AllIndices(data), 3, 0.0, 1).status().code(),
            Code::kInvalidArgument);
  EXPECT_EQ(DirichletPartition(data, {data.size()}, 3, 0.5, 1).status().code(),
            Code::kInvalidArgument);
}

TEST(ClassHistogramTest, CountsLabelsOfTheGivenIndices) {
  const Dataset data = SyntheticLabels(3);
  const std::vector<size_t> hist = ClassHistogram(data, {0, 10, 20, 1, 9});
  EXPECT_EQ(hist, (std::vector<size_t>{3, 1, 0, 0, 0, 0, 0, 0, 0, 1}));
}

}  // namespace
}  // namespace fedlora::worker

namespace fedlora::worker {
namespace {

TEST(PathologicalPartitionTest, EachClientHoldsAboutItsShardsClassesAndEveryIndexLandsOnce) {
  Dataset data;
  for (int c = 0; c < kNumClasses; ++c) {
    for (int i = 0; i < 100; ++i) data.labels.push_back(static_cast<uint8_t>(c));
  }
  data.images.resize(data.labels.size() * kImagePixels);
  std::vector<size_t> all(data.labels.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  auto parts = PathologicalPartition(data, all, 5, 2, 3);
  ASSERT_TRUE(parts.ok()) << parts.status().ToString();
  ASSERT_EQ(parts->size(), 5u);
  std::vector<int> seen(all.size(), 0);
  for (const auto& p : *parts) {
    EXPECT_EQ(p.size(), 200u);
    size_t classes = 0;
    for (size_t n : ClassHistogram(data, p)) classes += n > 0;
    EXPECT_LE(classes, 2u);  // 10 shards of exactly one class each
    for (size_t i : p) ++seen[i];
  }
  EXPECT_TRUE(std::all_of(seen.begin(), seen.end(), [](int n) { return n == 1; }));
  auto again = PathologicalPartition(data, all, 5, 2, 3);
  EXPECT_EQ(*again, *parts);
  EXPECT_NE(*PathologicalPartition(data, all, 5, 2, 4), *parts);
  EXPECT_EQ(PathologicalPartition(data, all, 0, 2, 3).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(PathologicalPartition(data, {1, 2}, 5, 2, 3).status().code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace fedlora::worker
