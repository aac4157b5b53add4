// The text-corpus loader of the language-model task (no LibTorch, no tokenizer): files and
// directories written to a scratch directory are loaded through a fake encoder (BOS id 1, then
// each byte's value), and the examples, labels and class names checked; likewise the errors,
// the seeded held-out split and Subset.
#include "worker/lm/text_corpus.h"

#include <gtest/gtest.h>

#include "tests/testing/fixtures.h"
#include "tests/testing/text_data.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

namespace fedlora::worker::lm {
namespace {

namespace fs = std::filesystem;

constexpr int32_t kBos = 1;

// BOS, then one id per byte (its unsigned value).
std::vector<int32_t> FakeEncode(std::string_view text) {
  std::vector<int32_t> ids = {kBos};
  for (char c : text) ids.push_back(static_cast<unsigned char>(c));
  return ids;
}

// A unique scratch directory under the system's temporary directory, removed afterwards.
using ScratchDir = testing::TempDir;

std::vector<int32_t> ExampleIds(const Dataset& data, size_t i) {
  return {data.tokens.begin() + static_cast<std::ptrdiff_t>(data.offsets[i]),
          data.tokens.begin() + static_cast<std::ptrdiff_t>(data.offsets[i + 1])};
}

// Example i back to text (a leading BOS dropped).
std::string ExampleText(const Dataset& data, size_t i) {
  std::string text;
  const std::vector<int32_t> ids = ExampleIds(data, i);
  for (size_t k = 0; k < ids.size(); ++k) {
    if (k == 0 && ids[k] == kBos) continue;
    text.push_back(static_cast<char>(ids[k]));
  }
  return text;
}

std::vector<std::string> AllTexts(const Dataset& data) {
  std::vector<std::string> texts;
  for (size_t i = 0; i < data.size(); ++i) texts.push_back(ExampleText(data, i));
  return texts;
}

// Options reading `paths` that keep every non-empty document.
TextCorpusOptions KeepAll(std::vector<std::string> paths) {
  TextCorpusOptions options;
  options.paths = std::move(paths);
  options.min_tokens = 1;
  options.max_tokens = 1000;
  return options;
}

using testing::ExpectWellFormedText;

TEST(TextCorpusTest, DefaultOptions) {
  const TextCorpusOptions options;
  EXPECT_EQ(options.paths, std::vector<std::string>{"/usr/share/games/fortunes"});
  EXPECT_STREQ(kDefaultTextDir, "/usr/share/games/fortunes");
  EXPECT_EQ(options.max_tokens, 128u);
  EXPECT_EQ(options.min_tokens, 8u);
  EXPECT_EQ(options.max_examples_per_source, 0u);
}

TEST(TextCorpusTest, FortuneFormatEntriesAreDocuments) {
  ScratchDir dir;
  const std::string file = dir.Write(
      "jokes",
      "  first entry  \n%\nsecond\n\nstill the second entry\n%\n \n%\n%\nthird\n%\n");
  auto data = LoadTextCorpus(KeepAll({file}), FakeEncode);
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  ExpectWellFormedText(*data);
  // Blank lines do not split an entry; empty entries are skipped; entries are trimmed.
  EXPECT_EQ(AllTexts(*data), (std::vector<std::string>{
                                 "first entry", "second\n\nstill the second entry", "third"}));
  EXPECT_EQ(ExampleIds(*data, 0).front(), kBos);
  EXPECT_EQ(data->labels, (std::vector<uint8_t>{0, 0, 0}));
  EXPECT_EQ(data->num_classes, 1);
  EXPECT_EQ(data->class_names, std::vector<std::string>{"jokes"});
}

TEST(TextCorpusTest, FortuneFormatAcceptsCrlfAndKeepsPercentInsideLines) {
  ScratchDir dir;
  const std::string file = dir.Write("dos", "100% sure\r\n%\r\nnext one\r\n% not a separator\r\n");
  auto data = LoadTextCorpus(KeepAll({file}), FakeEncode);
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  EXPECT_EQ(AllTexts(*data),
            (std::vector<std::string>{"100% sure", "next one\r\n% not a separator"}));
}

TEST(TextCorpusTest, ParagraphFormatSplitsOnBlankLines) {
  ScratchDir dir;
  // No line is exactly "%", so "50 %" and "%%" do not make this a fortune file.
  const std::string file = dir.Write(
      "essay", "\n\n  alpha beta\ngamma 50 %\n\n\n \t \ndelta  \n%%\n\n\nepsilon\n\n");
  auto data = LoadTextCorpus(KeepAll({file}), FakeEncode);
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  ExpectWellFormedText(*data);
  EXPECT_EQ(AllTexts(*data),
            (std::vector<std::string>{"alpha beta\ngamma 50 %", "delta  \n%%", "epsilon"}));
  EXPECT_EQ(data->class_names, std::vector<std::string>{"essay"});
}

TEST(TextCorpusTest, ParagraphFileWithoutFinalNewline) {
  ScratchDir dir;
  const std::string file = dir.Write("tail", "one\n\ntwo");
  auto data = LoadTextCorpus(KeepAll({file}), FakeEncode);
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  EXPECT_EQ(AllTexts(*data), (std::vector<std::string>{"one", "two"}));
}

TEST(TextCorpusTest, DirectoryScanSkipsDottedHiddenAndSubdirectories) {
  ScratchDir dir;
  dir.Write("corpus/zeta", "zeta one\n%\nzeta two\n");
  dir.Write("corpus/alpha", "alpha text\n");
  dir.Write("corpus/mid", "mid text\n");
  dir.Write("corpus/alpha.dat", "dotted name\n");
  dir.Write("corpus/alpha.u8", "dotted name\n");
  dir.Write("corpus/.hidden", "hidden file\n");
  dir.Write("corpus/sub/inner", "in a subdirectory\n");
  std::vector<std::pair<size_t, size_t>> calls;
  auto data = LoadTextCorpus(KeepAll({dir.path("corpus")}), FakeEncode,
                             [&](size_t done, size_t total) { calls.emplace_back(done, total); });
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  ExpectWellFormedText(*data);
  EXPECT_EQ(data->class_names, (std::vector<std::string>{"alpha", "mid", "zeta"}));
  EXPECT_EQ(data->num_classes, 3);
  EXPECT_EQ(AllTexts(*data),
            (std::vector<std::string>{"alpha text", "mid text", "zeta one", "zeta two"}));
  EXPECT_EQ(data->labels, (std::vector<uint8_t>{0, 1, 2, 2}));
  EXPECT_EQ(calls, (std::vector<std::pair<size_t, size_t>>{{1, 3}, {2, 3}, {3, 3}}));
}

TEST(TextCorpusTest, FileGivenDirectlyIsAlwaysReadAndPathsKeepTheirOrder) {
  ScratchDir dir;
  const std::string dotted = dir.Write("notes.txt", "dotted file\n");
  const std::string hidden = dir.Write(".secret", "hidden file\n");
  dir.Write("more/b", "b text\n");
  dir.Write("more/a", "a text\n");
  auto data = LoadTextCorpus(KeepAll({dotted, dir.path("more"), hidden}), FakeEncode);
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  ExpectWellFormedText(*data);
  EXPECT_EQ(data->class_names, (std::vector<std::string>{"notes.txt", "a", "b", ".secret"}));
  EXPECT_EQ(AllTexts(*data),
            (std::vector<std::string>{"dotted file", "a text", "b text", "hidden file"}));
  EXPECT_EQ(data->labels, (std::vector<uint8_t>{0, 1, 2, 3}));
}

TEST(TextCorpusTest, LongDocumentsAreCutIntoWindows) {
  ScratchDir dir;
  const std::string body = "abcdefghijklmnopqrstuvwxy";  // 25 bytes: 26 ids with BOS
  const std::string file = dir.Write("long", body + "\n%\nshort\n");
  TextCorpusOptions options;
  options.paths = {file};
  options.max_tokens = 10;
  options.min_tokens = 4;
  auto data = LoadTextCorpus(options, FakeEncode);
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  ExpectWellFormedText(*data);
  // Windows [0, 10), [10, 20), [20, 26); only the first starts with BOS. "short" fits whole.
  ASSERT_EQ(data->size(), 4u);
  EXPECT_EQ(ExampleIds(*data, 0), FakeEncode(body.substr(0, 9)));
  EXPECT_EQ(ExampleText(*data, 1), body.substr(9, 10));
  EXPECT_EQ(ExampleIds(*data, 1).front(), static_cast<int32_t>('j'));
  EXPECT_EQ(ExampleText(*data, 2), body.substr(19));
  EXPECT_EQ(ExampleIds(*data, 2).size(), 6u);
  EXPECT_EQ(ExampleIds(*data, 3), FakeEncode("short"));

  // A 6-token tail and a 6-token document are dropped at min_tokens 7.
  options.min_tokens = 7;
  data = LoadTextCorpus(options, FakeEncode);
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  EXPECT_EQ(AllTexts(*data), (std::vector<std::string>{body.substr(0, 9), body.substr(9, 10)}));

  // A document of exactly max_tokens ids is one example.
  options.min_tokens = 1;
  options.max_tokens = 26;
  data = LoadTextCorpus(options, FakeEncode);
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  EXPECT_EQ(AllTexts(*data), (std::vector<std::string>{body, "short"}));
}

TEST(TextCorpusTest, MaxExamplesPerSourceKeepsTheFirst) {
  ScratchDir dir;
  dir.Write("src/a", "a1\n%\na2\n%\na3\n%\na4\n");
  dir.Write("src/b", "b1 is long\n%\nb2\n%\nb3\n");
  TextCorpusOptions options = KeepAll({dir.path("src")});
  options.max_examples_per_source = 2;
  options.max_tokens = 4;  // "b1 is long" gives windows "b1 ", "is l", "ong"
  auto data = LoadTextCorpus(options, FakeEncode);
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  ExpectWellFormedText(*data);
  EXPECT_EQ(AllTexts(*data), (std::vector<std::string>{"a1", "a2", "b1 ", "is l"}));
  EXPECT_EQ(data->labels, (std::vector<uint8_t>{0, 0, 1, 1}));
  EXPECT_EQ(data->num_classes, 2);
}

TEST(TextCorpusTest, MissingPathIsNotFoundAndNamesIt) {
  ScratchDir dir;
  const std::string good = dir.Write("good", "some text\n");
  const std::string missing = dir.path("no-such-file");
  auto data = LoadTextCorpus(KeepAll({good, missing}), FakeEncode);
  ASSERT_FALSE(data.ok());
  EXPECT_EQ(data.status().code(), Code::kNotFound);
  EXPECT_NE(data.status().message().find(missing), std::string::npos) << data.status().ToString();
}

TEST(TextCorpusTest, AtMost256Sources) {
  ScratchDir dir;
  for (int i = 0; i < 256; ++i) {
    dir.Write(fmt::format("many/s{:03}", i), fmt::format("text {}\n", i));
  }
  auto data = LoadTextCorpus(KeepAll({dir.path("many")}), FakeEncode);
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  EXPECT_EQ(data->num_classes, 256);
  EXPECT_EQ(data->labels.back(), 255);
  EXPECT_EQ(data->class_names.back(), "s255");
  EXPECT_EQ(ExampleText(*data, 255), "text 255");

  dir.Write("many/s256", "one too many\n");
  data = LoadTextCorpus(KeepAll({dir.path("many")}), FakeEncode);
  ASSERT_FALSE(data.ok());
  EXPECT_EQ(data.status().code(), Code::kInvalidArgument);
  EXPECT_NE(data.status().message().find("256"), std::string::npos) << data.status().ToString();
}

TEST(TextCorpusTest, BinaryFileGivenDirectlyIsDataLoss) {
  ScratchDir dir;
  const std::string nul = dir.Write("with-nul", std::string("text\0more\n", 10));
  const std::string latin1 = dir.Write("latin1", "caf\xe9\n");
  const std::string overlong = dir.Write("overlong", "slash \xc0\xaf\n");
  const std::string surrogate = dir.Write("surrogate", "x \xed\xa0\x80\n");
  const std::string truncated = dir.Write("truncated", "euro \xe2\x82");
  for (const std::string& file : {nul, latin1, overlong, surrogate, truncated}) {
    auto data = LoadTextCorpus(KeepAll({file}), FakeEncode);
    ASSERT_FALSE(data.ok()) << file;
    EXPECT_EQ(data.status().code(), Code::kDataLoss) << file;
    EXPECT_NE(data.status().message().find(file), std::string::npos) << data.status().ToString();
  }
  // Valid multi-byte UTF-8 is text.
  const std::string utf8 = dir.Write("utf8", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\n");
  auto data = LoadTextCorpus(KeepAll({utf8}), FakeEncode);
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  EXPECT_EQ(ExampleText(*data, 0), "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
}

TEST(TextCorpusTest, BinaryFileInDirectoryIsSkipped) {
  ScratchDir dir;
  dir.Write("mixed/binary", std::string("\x01\x02\0\x03", 4));
  dir.Write("mixed/latin1", "caf\xe9\n");
  dir.Write("mixed/text", "plain text\n");
  size_t last_total = 0;
  auto data = LoadTextCorpus(KeepAll({dir.path("mixed")}), FakeEncode,
                             [&](size_t, size_t total) { last_total = total; });
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  ExpectWellFormedText(*data);
  EXPECT_EQ(data->class_names, std::vector<std::string>{"text"});
  EXPECT_EQ(data->num_classes, 1);
  EXPECT_EQ(AllTexts(*data), std::vector<std::string>{"plain text"});
  EXPECT_EQ(last_total, 3u);  // skipped files still count as files done
}

TEST(TextCorpusTest, EmptyCorpusIsInvalidArgumentNamingThePaths) {
  ScratchDir dir;
  dir.Write("thin/empty", "");
  dir.Write("thin/short", "ab\n%\ncd\n");
  TextCorpusOptions options;
  options.paths = {dir.path("thin")};
  options.min_tokens = 4;
  auto data = LoadTextCorpus(options, FakeEncode);
  ASSERT_FALSE(data.ok());
  EXPECT_EQ(data.status().code(), Code::kInvalidArgument);
  EXPECT_NE(data.status().message().find(dir.path("thin")), std::string::npos)
      << data.status().ToString();

  fs::create_directories(dir.path("void"));
  options.paths = {dir.path("void")};
  data = LoadTextCorpus(options, FakeEncode);
  ASSERT_FALSE(data.ok());
  EXPECT_EQ(data.status().code(), Code::kInvalidArgument);
  EXPECT_NE(data.status().message().find(dir.path("void")), std::string::npos);

  options.paths = {};
  data = LoadTextCorpus(options, FakeEncode);
  ASSERT_FALSE(data.ok());
  EXPECT_EQ(data.status().code(), Code::kInvalidArgument);
}

TEST(TextCorpusTest, BadOptionsAreInvalidArgument) {
  ScratchDir dir;
  const std::string file = dir.Write("f", "some text here\n");
  TextCorpusOptions options = KeepAll({file});
  options.max_tokens = 1;
  options.min_tokens = 1;
  auto data = LoadTextCorpus(options, FakeEncode);
  ASSERT_FALSE(data.ok());
  EXPECT_EQ(data.status().code(), Code::kInvalidArgument);
  EXPECT_NE(data.status().message().find("max_tokens"), std::string::npos);

  options.max_tokens = 8;
  options.min_tokens = 9;
  data = LoadTextCorpus(options, FakeEncode);
  ASSERT_FALSE(data.ok());
  EXPECT_EQ(data.status().code(), Code::kInvalidArgument);
  EXPECT_NE(data.status().message().find("min_tokens"), std::string::npos);

  options.min_tokens = 8;
  data = LoadTextCorpus(options, TextEncoder{});
  ASSERT_FALSE(data.ok());
  EXPECT_EQ(data.status().code(), Code::kInvalidArgument);
}

TEST(TextCorpusTest, LoadsTheInstalledFortunes) {
  // ops/install-deps.sh installs Debian's `fortunes`: the lm task's default text.
  ASSERT_TRUE(fs::is_directory(kDefaultTextDir)) << kDefaultTextDir << " is not installed (apt-get install fortunes)";
  auto data = LoadTextCorpus(TextCorpusOptions{}, FakeEncode);
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  ExpectWellFormedText(*data);
  EXPECT_GT(data->num_classes, 0);
  EXPECT_LE(data->num_classes, 256);
  for (const std::string& name : data->class_names) {
    EXPECT_EQ(name.find('.'), std::string::npos) << name;
  }
  for (size_t i = 0; i < data->size(); ++i) {
    const size_t length = data->offsets[i + 1] - data->offsets[i];
    ASSERT_GE(length, 8u);
    ASSERT_LE(length, 128u);
  }
}

// A synthetic text dataset: `sizes[s]` examples of source s, example i being the ids {i}.
Dataset Synthetic(const std::vector<size_t>& sizes) {
  Dataset data;
  data.num_classes = static_cast<int>(sizes.size());
  data.offsets.push_back(0);
  for (size_t s = 0; s < sizes.size(); ++s) {
    data.class_names.push_back(fmt::format("source{}", s));
  }
  // Interleave the sources so that per-source grouping matters.
  std::vector<size_t> left = sizes;
  for (bool any = true; any;) {
    any = false;
    for (size_t s = 0; s < left.size(); ++s) {
      if (left[s] == 0) continue;
      --left[s];
      any = true;
      data.labels.push_back(static_cast<uint8_t>(s));
      data.tokens.push_back(static_cast<int32_t>(data.labels.size() - 1));
      data.offsets.push_back(data.tokens.size());
    }
  }
  return data;
}

std::vector<size_t> CountBySource(const Dataset& data, const std::vector<size_t>& indices) {
  std::vector<size_t> counts(static_cast<size_t>(data.num_classes), 0);
  for (size_t i : indices) ++counts[data.labels[i]];
  return counts;
}

TEST(TextCorpusTest, SplitHeldOutIsDeterministic) {
  const Dataset data = Synthetic({100, 60, 7});
  const TextSplit a = SplitHeldOut(data, 0.25, 42);
  const TextSplit b = SplitHeldOut(data, 0.25, 42);
  EXPECT_EQ(a.train, b.train);
  EXPECT_EQ(a.test, b.test);
  const TextSplit c = SplitHeldOut(data, 0.25, 43);
  EXPECT_NE(a.test, c.test);
  EXPECT_EQ(a.test.size(), c.test.size());
}

TEST(TextCorpusTest, SplitHeldOutIsStratifiedPerSource) {
  const Dataset data = Synthetic({10, 3, 2, 1, 0, 40});
  const TextSplit split = SplitHeldOut(data, 0.2, 7);
  // round(0.2 n), at least one where n >= 2: 2, round(0.6) = 1, max(0, 1) = 1, 0 (n = 1), 0, 8.
  EXPECT_EQ(CountBySource(data, split.test), (std::vector<size_t>{2, 1, 1, 0, 0, 8}));
  EXPECT_EQ(CountBySource(data, split.train), (std::vector<size_t>{8, 2, 1, 1, 0, 32}));

  const TextSplit none = SplitHeldOut(data, 0.0, 7);
  EXPECT_TRUE(none.test.empty());
  EXPECT_EQ(none.train.size(), data.size());
  const TextSplit all = SplitHeldOut(data, 1.0, 7);
  EXPECT_TRUE(all.train.empty());
  EXPECT_EQ(all.test.size(), data.size());
}

TEST(TextCorpusTest, SplitHeldOutOfOneSourceIgnoresTheOthers) {
  const Dataset small = Synthetic({30});
  const Dataset large = Synthetic({30, 50});
  // Source 0's examples are the even indices of `large` (for its first 60 entries).
  std::vector<size_t> small_test = SplitHeldOut(small, 0.3, 5).test;
  std::vector<size_t> large_test;
  for (size_t i : SplitHeldOut(large, 0.3, 5).test) {
    if (large.labels[i] == 0) large_test.push_back(i / 2);
  }
  EXPECT_EQ(small_test, large_test);
}

TEST(TextCorpusTest, SplitHeldOutIsDisjointAndCovering) {
  const Dataset data = Synthetic({17, 5, 33, 2});
  const TextSplit split = SplitHeldOut(data, 0.3, 11);
  EXPECT_TRUE(std::is_sorted(split.train.begin(), split.train.end()));
  EXPECT_TRUE(std::is_sorted(split.test.begin(), split.test.end()));
  std::vector<size_t> both;
  std::set_intersection(split.train.begin(), split.train.end(), split.test.begin(),
                        split.test.end(), std::back_inserter(both));
  EXPECT_TRUE(both.empty());
  std::vector<size_t> all;
  std::set_union(split.train.begin(), split.train.end(), split.test.begin(), split.test.end(),
                 std::back_inserter(all));
  std::vector<size_t> expected(data.size());
  for (size_t i = 0; i < expected.size(); ++i) expected[i] = i;
  EXPECT_EQ(all, expected);
}

TEST(TextCorpusTest, SubsetCarriesTheChosenExamples) {
  ScratchDir dir;
  dir.Write("sub/a", "first\n%\nsecond\n");
  dir.Write("sub/b", "third\n");
  auto data = LoadTextCorpus(KeepAll({dir.path("sub")}), FakeEncode);
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  ASSERT_EQ(data->size(), 3u);

  const Dataset subset = Subset(*data, {2, 0});
  ExpectWellFormedText(subset);
  EXPECT_EQ(subset.size(), 2u);
  EXPECT_EQ(AllTexts(subset), (std::vector<std::string>{"third", "first"}));
  EXPECT_EQ(subset.labels, (std::vector<uint8_t>{1, 0}));
  EXPECT_EQ(subset.offsets, (std::vector<size_t>{0, 6, 12}));
  EXPECT_EQ(subset.num_classes, 2);
  EXPECT_EQ(subset.class_names, (std::vector<std::string>{"a", "b"}));

  const Dataset empty = Subset(*data, {});
  EXPECT_EQ(empty.size(), 0u);
  EXPECT_TRUE(empty.is_text());
  EXPECT_TRUE(empty.tokens.empty());
  EXPECT_EQ(empty.class_names, data->class_names);
}

TEST(TextCorpusTest, SubsetOfAnImageDataset) {
  Dataset images;
  images.labels = {3, 7};
  images.images.resize(2 * kImagePixels);
  const auto pixels = static_cast<size_t>(kImagePixels);
  for (size_t p = 0; p < images.images.size(); ++p) images.images[p] = p < pixels ? 10 : 20;
  const Dataset subset = Subset(images, {1});
  EXPECT_FALSE(subset.is_text());
  EXPECT_EQ(subset.labels, std::vector<uint8_t>{7});
  ASSERT_EQ(subset.images.size(), pixels);
  EXPECT_TRUE(std::all_of(subset.images.begin(), subset.images.end(),
                          [](uint8_t v) { return v == 20; }));
  EXPECT_EQ(subset.num_classes, kNumClasses);
}

}  // namespace
}  // namespace fedlora::worker::lm
