// The packaged-text readers of the language-model task (no LibTorch, no tokenizer): WordNet data
// files and dictd dictionaries written to a scratch directory are read back, through a fake
// encoder (BOS id 1, then one id per whitespace-separated word) for WordNet, and the examples,
// labels, samples, documents and errors checked; likewise the pure parsers (synset lines,
// dictd base64, GCIDE markup). Two tests read the real Debian packages when installed.
#include "worker/lm/packaged_text.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "tests/testing/fixtures.h"
#include "tests/testing/text_data.h"
#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace fedlora::worker::lm {
namespace {

namespace fs = std::filesystem;

constexpr int32_t kBos = 1;

// BOS, then one id per whitespace-separated word (ids from 2, in order of first sight); Decode
// turns ids back into words joined by single spaces.
class WordEncoder {
 public:
  std::vector<int32_t> Encode(std::string_view text) {
    std::vector<int32_t> ids = {kBos};
    size_t i = 0;
    while (i < text.size()) {
      if (std::isspace(static_cast<unsigned char>(text[i]))) {
        ++i;
        continue;
      }
      size_t end = i;
      while (end < text.size() && !std::isspace(static_cast<unsigned char>(text[end]))) ++end;
      const std::string word(text.substr(i, end - i));
      auto [it, inserted] = ids_.try_emplace(word, static_cast<int32_t>(words_.size()) + 2);
      if (inserted) words_.push_back(word);
      ids.push_back(it->second);
      i = end;
    }
    return ids;
  }

  std::string Decode(const std::vector<int32_t>& ids) const {
    std::string text;
    for (int32_t id : ids) {
      if (id == kBos) continue;
      if (!text.empty()) text += ' ';
      text += words_.at(static_cast<size_t>(id - 2));
    }
    return text;
  }

  TextEncoder AsEncoder() {
    return [this](std::string_view text) { return Encode(text); };
  }

 private:
  std::map<std::string, int32_t> ids_;
  std::vector<std::string> words_;
};

// A unique scratch directory under the system's temporary directory, removed afterwards.
using ScratchDir = testing::TempDir;

// Writes `content` gzip-compressed to `sub` of `dir` and returns its path.
std::string WriteGzip(const ScratchDir& dir, const std::string& sub, std::string_view content) {
  const fs::path file = dir.path(sub);
  fs::create_directories(file.parent_path());
  gzFile gz = gzopen(file.string().c_str(), "wb9");
  EXPECT_NE(gz, nullptr) << file;
  if (gz == nullptr) return file.string();
  EXPECT_EQ(gzwrite(gz, content.data(), static_cast<unsigned>(content.size())), static_cast<int>(content.size()));
  EXPECT_EQ(gzclose(gz), Z_OK);
  return file.string();
}

// The licence header of a WordNet data file (lines starting with two spaces), shortened.
constexpr std::string_view kLicence =
    "  1 This software and database is being provided to you, the LICENSEE, by  \n"
    "  2 Princeton University under the following license. | not a synset  \n"
    "  3   \n";

// A synset line of lexicographer file `lex` whose gloss is `gloss`.
std::string SynsetLine(int offset, int lex, char type, std::string_view word,
                       std::string_view gloss) {
  return fmt::format("{:08d} {:02d} {} 01 {} 0 001 @ 00001740 n 0000 | {}  \n", offset, lex, type,
                     word, gloss);
}

// A small WordNet directory: 3 noun, 2 verb, 2 adjective and 1 adverb synsets.
void WriteSmallWordNet(const ScratchDir& dir) {
  dir.Write("wn/data.noun",
            std::string(kLicence) +
                SynsetLine(1740, 3, 'n', "entity", "that which is perceived or known") +
                SynsetLine(1930, 18, 'n', "person",
                           "a human being; \"there was too much for one person to do\"") +
                SynsetLine(2137, 5, 'n', "dog",
                           "a member of the genus Canis; \"the dog barked all night\"; \"woof\""));
  dir.Write("wn/data.verb",
            std::string(kLicence) +
                SynsetLine(100, 29, 'v', "breathe", "draw air into, and expel out of, the lungs") +
                SynsetLine(200, 38, 'v', "run",
                           "move fast by using one's feet;\"Don't run--you'll be out of breath\""));
  dir.Write("wn/data.adj",
            std::string(kLicence) + SynsetLine(10, 0, 'a', "able", "usually followed by `to'") +
                SynsetLine(20, 44, 'a', "baked", "cooked in an oven; dry; \"baked goods\""));
  dir.Write("wn/data.adv", std::string(kLicence) +
                               SynsetLine(30, 2, 'r', "barely", "only a very short time before"));
}

GlossOptions OptionsFor(const ScratchDir& dir) {
  GlossOptions options;
  options.dir = dir.path("wn");
  options.max_tokens = 1000;
  options.min_tokens = 1;
  return options;
}

std::vector<int32_t> ExampleIds(const Dataset& data, size_t i) {
  return {data.tokens.begin() + static_cast<std::ptrdiff_t>(data.offsets[i]),
          data.tokens.begin() + static_cast<std::ptrdiff_t>(data.offsets[i + 1])};
}

std::vector<std::string> AllTexts(const Dataset& data, const WordEncoder& encoder) {
  std::vector<std::string> texts;
  for (size_t i = 0; i < data.size(); ++i) texts.push_back(encoder.Decode(ExampleIds(data, i)));
  return texts;
}

void ExpectWellFormed(const Dataset& data) {
  testing::ExpectWellFormedText(data);
  EXPECT_EQ(data.num_classes, 45);
}

// ---------------------------------------------------------------------------------------------
// WordNet

TEST(WordNetTest, DefaultsAndLexNames) {
  const GlossOptions options;
  EXPECT_EQ(options.dir, "/usr/share/wordnet");
  EXPECT_EQ(options.max_tokens, 64u);
  EXPECT_EQ(options.min_tokens, 2u);
  EXPECT_EQ(options.max_examples_per_class, 0u);
  EXPECT_EQ(options.seed, 1u);
  EXPECT_FALSE(options.examples);

  ASSERT_EQ(kWordNetLexNames.size(), 45u);
  EXPECT_EQ(kWordNetLexNames[0], "adj.all");
  EXPECT_EQ(kWordNetLexNames[2], "adv.all");
  EXPECT_EQ(kWordNetLexNames[3], "noun.Tops");
  EXPECT_EQ(kWordNetLexNames[18], "noun.person");
  EXPECT_EQ(kWordNetLexNames[28], "noun.time");
  EXPECT_EQ(kWordNetLexNames[29], "verb.body");
  EXPECT_EQ(kWordNetLexNames[43], "verb.weather");
  EXPECT_EQ(kWordNetLexNames[44], "adj.ppl");
  const std::set<std::string_view> distinct(kWordNetLexNames.begin(), kWordNetLexNames.end());
  EXPECT_EQ(distinct.size(), 45u);
}

TEST(WordNetTest, ParseSynsetLine) {
  auto parsed = ParseSynsetLine(
      "00217593 04 n 01 kill 1 002 @ 00217014 n 0000 + 00355365 v 0101 | the destruction of an "
      "enemy plane or ship or tank or missile; \"the pilot reported two kills during the "
      "mission\"  \r");
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->first, 4);
  EXPECT_EQ(parsed->second,
            "the destruction of an enemy plane or ship or tank or missile; \"the pilot reported "
            "two kills during the mission\"");

  parsed = ParseSynsetLine("00000030 44 a 01 baked 0 000 |   cooked  ");
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->first, 44);
  EXPECT_EQ(parsed->second, "cooked");

  parsed = ParseSynsetLine("00000030 00 a 01 empty 0 000 |");
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->first, 0);
  EXPECT_EQ(parsed->second, "");
}

TEST(WordNetTest, ParseSynsetLineRejectsMalformedLines) {
  for (std::string_view line : {
           "00001740 03 n 01 entity 0 000 no bar here",
           "00001740 45 n 01 entity 0 000 | lex_filenum too large",
           "00001740 123 n 01 entity 0 000 | lex_filenum too large",
           "00001740 x3 n 01 entity 0 000 | lex_filenum not a number",
           "00001740 -1 n 01 entity 0 000 | negative",
           "00001740 | no lex_filenum",
           "| nothing before the bar",
           "offset 03 n 01 entity 0 000 | offset not a number",
       }) {
    const auto parsed = ParseSynsetLine(line);
    ASSERT_FALSE(parsed.ok()) << line;
    EXPECT_EQ(parsed.status().code(), Code::kDataLoss) << line;
  }
  EXPECT_NE(ParseSynsetLine("1 45 n | x").status().message().find("45"), std::string::npos);
  EXPECT_NE(ParseSynsetLine("1 03 n x").status().message().find("'|'"), std::string::npos);
}

TEST(WordNetTest, GlossDefinitionStopsAtTheFirstExampleQuote) {
  EXPECT_EQ(GlossDefinition("a human being; \"there was too much for one person to do\""),
            "a human being");
  EXPECT_EQ(GlossDefinition("causing a sharp taste;\"quinine is bitter\""),
            "causing a sharp taste");
  EXPECT_EQ(GlossDefinition("cooked in an oven; dry; \"baked goods\"; \"more\""),
            "cooked in an oven; dry");
  EXPECT_EQ(GlossDefinition("  no example at all; just two parts  "),
            "no example at all; just two parts");
  EXPECT_EQ(GlossDefinition("penetrating no deeper than the skin: \"skin-deep\""),
            "penetrating no deeper than the skin: \"skin-deep\"");
  EXPECT_EQ(GlossDefinition(""), "");
}

TEST(WordNetTest, LoadsDefinitionsWithLexFileLabelsInFileOrder) {
  ScratchDir dir;
  WriteSmallWordNet(dir);
  WordEncoder encoder;
  std::vector<std::pair<size_t, size_t>> calls;
  auto data =
      LoadWordNetGlosses(OptionsFor(dir), encoder.AsEncoder(),
                         [&](size_t done, size_t total) { calls.emplace_back(done, total); });
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  ExpectWellFormed(*data);
  EXPECT_EQ(AllTexts(*data, encoder), (std::vector<std::string>{
                                          "that which is perceived or known",
                                          "a human being",
                                          "a member of the genus Canis",
                                          "draw air into, and expel out of, the lungs",
                                          "move fast by using one's feet",
                                          "usually followed by `to'",
                                          "cooked in an oven; dry",
                                          "only a very short time before",
                                      }));
  EXPECT_EQ(data->labels, (std::vector<uint8_t>{3, 18, 5, 29, 38, 0, 44, 2}));
  for (size_t i = 0; i < data->size(); ++i) EXPECT_EQ(ExampleIds(*data, i).front(), kBos);
  EXPECT_EQ(data->class_names,
            std::vector<std::string>(kWordNetLexNames.begin(), kWordNetLexNames.end()));
  EXPECT_EQ(calls, (std::vector<std::pair<size_t, size_t>>{{1, 4}, {2, 4}, {3, 4}, {4, 4}}));
}

TEST(WordNetTest, ExamplesOptionKeepsTheWholeGloss) {
  ScratchDir dir;
  WriteSmallWordNet(dir);
  WordEncoder encoder;
  GlossOptions options = OptionsFor(dir);
  options.examples = true;
  auto data = LoadWordNetGlosses(options, encoder.AsEncoder());
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  const std::vector<std::string> texts = AllTexts(*data, encoder);
  ASSERT_EQ(texts.size(), 8u);
  EXPECT_EQ(texts[1], "a human being; \"there was too much for one person to do\"");
  EXPECT_EQ(texts[2], "a member of the genus Canis; \"the dog barked all night\"; \"woof\"");
  EXPECT_EQ(texts[0], "that which is perceived or known");
}

TEST(WordNetTest, LongGlossesAreTruncatedAndShortOnesDropped) {
  ScratchDir dir;
  WriteSmallWordNet(dir);
  WordEncoder encoder;
  GlossOptions options = OptionsFor(dir);
  options.max_tokens = 4;  // BOS + 3 words
  options.min_tokens = 4;  // "a human being": BOS + 3 words, kept
  auto data = LoadWordNetGlosses(options, encoder.AsEncoder());
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  ExpectWellFormed(*data);
  // One truncated example per synset, never further windows.
  EXPECT_EQ(AllTexts(*data, encoder),
            (std::vector<std::string>{"that which is", "a human being", "a member of",
                                      "draw air into,", "move fast by", "usually followed by",
                                      "cooked in an", "only a very"}));
  for (size_t i = 0; i < data->size(); ++i) EXPECT_EQ(ExampleIds(*data, i).size(), 4u);

  options.max_tokens = 5;
  options.min_tokens = 5;  // drops "a human being" (4 ids)
  data = LoadWordNetGlosses(options, encoder.AsEncoder());
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  EXPECT_EQ(data->size(), 7u);
  EXPECT_EQ(data->labels, (std::vector<uint8_t>{3, 5, 29, 38, 0, 44, 2}));
}

// A directory with `per_class` numbered synsets in each of noun classes 5 and 18 and verb
// class 30, plus 3 in adverb class 2; every gloss is "<class> item <k>" with k counting up in
// file order. Glosses of class 18 whose k is a multiple of 4 are a single word (too short for
// min_tokens 3).
void WriteSamplingWordNet(const ScratchDir& dir, int per_class) {
  std::string noun(kLicence);
  std::string verb(kLicence);
  int offset = 1;
  for (int k = 0; k < per_class; ++k) {
    noun += SynsetLine(offset++, 5, 'n', "animal", fmt::format("animal item {}", k));
    noun += SynsetLine(offset++, 18, 'n', "person",
                       k % 4 == 0 ? std::string("short") : fmt::format("person item {}", k));
    verb += SynsetLine(offset++, 30, 'v', "change", fmt::format("change item {}", k));
  }
  dir.Write("wn/data.noun", noun);
  dir.Write("wn/data.verb", verb);
  dir.Write("wn/data.adj", kLicence);
  dir.Write("wn/data.adv", std::string(kLicence) + SynsetLine(1, 2, 'r', "a", "adverb item 0") +
                               SynsetLine(2, 2, 'r', "b", "adverb item 1") +
                               SynsetLine(3, 2, 'r', "c", "adverb item 2"));
}

// The examples of `label` as texts.
std::vector<std::string> TextsOf(const Dataset& data, const WordEncoder& encoder, uint8_t label) {
  std::vector<std::string> texts;
  for (size_t i = 0; i < data.size(); ++i) {
    if (data.labels[i] == label) texts.push_back(encoder.Decode(ExampleIds(data, i)));
  }
  return texts;
}

// The item numbers k of `texts` ("animal item 12" -> 12).
std::vector<int> Items(const std::vector<std::string>& texts) {
  std::vector<int> items;
  for (const std::string& text : texts) items.push_back(std::stoi(text.substr(text.rfind(' '))));
  return items;
}

TEST(WordNetTest, PerClassSampleIsSeededCountedAndInFileOrder) {
  ScratchDir dir;
  WriteSamplingWordNet(dir, 40);
  GlossOptions options = OptionsFor(dir);
  options.min_tokens = 3;  // BOS + "short" is dropped
  options.max_examples_per_class = 10;
  options.seed = 42;

  WordEncoder encoder;
  auto first = LoadWordNetGlosses(options, encoder.AsEncoder());
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  ExpectWellFormed(*first);
  for (uint8_t label : {5, 18, 30}) {
    const std::vector<int> items = Items(TextsOf(*first, encoder, label));
    EXPECT_EQ(items.size(), 10u) << int{label};
    EXPECT_TRUE(std::is_sorted(items.begin(), items.end())) << int{label};
    EXPECT_EQ(std::set<int>(items.begin(), items.end()).size(), 10u) << int{label};
  }
  // Short glosses are skipped by the sample, not counted: class 18 still has 10, none short.
  for (const std::string& text : TextsOf(*first, encoder, 18)) EXPECT_NE(text, "short");
  // A class smaller than the limit keeps everything.
  EXPECT_EQ(TextsOf(*first, encoder, 2),
            (std::vector<std::string>{"adverb item 0", "adverb item 1", "adverb item 2"}));
  // Classes in file order: all noun examples, then verbs, then adverbs.
  EXPECT_EQ(first->size(), 33u);
  for (size_t i = 0; i < 20; ++i) EXPECT_TRUE(first->labels[i] == 5 || first->labels[i] == 18);
  for (size_t i = 20; i < 30; ++i) EXPECT_EQ(first->labels[i], 30);

  // The same seed gives the same sample; another seed another one.
  WordEncoder encoder2;
  auto again = LoadWordNetGlosses(options, encoder2.AsEncoder());
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(AllTexts(*again, encoder2), AllTexts(*first, encoder));
  EXPECT_EQ(again->labels, first->labels);

  options.seed = 43;
  auto other = LoadWordNetGlosses(options, encoder2.AsEncoder());
  ASSERT_TRUE(other.ok()) << other.status().ToString();
  EXPECT_NE(AllTexts(*other, encoder2), AllTexts(*first, encoder));
  EXPECT_EQ(other->size(), 33u);
}

TEST(WordNetTest, ClassSampleDoesNotDependOnOtherClasses) {
  WordEncoder encoder;
  GlossOptions options;
  options.max_tokens = 1000;
  options.min_tokens = 1;
  options.max_examples_per_class = 7;

  ScratchDir plain;
  WriteSamplingWordNet(plain, 40);
  options.dir = plain.path("wn");
  auto alone = LoadWordNetGlosses(options, encoder.AsEncoder());
  ASSERT_TRUE(alone.ok()) << alone.status().ToString();

  // The same class-5 synsets with synsets of other classes between and after them.
  ScratchDir busier;
  WriteSamplingWordNet(busier, 40);
  std::string noun(kLicence);
  for (int k = 0; k < 40; ++k) {
    noun += SynsetLine(2 * k, 7, 'n', "size", fmt::format("size item {}", k));
    noun += SynsetLine(2 * k + 1, 5, 'n', "animal", fmt::format("animal item {}", k));
  }
  busier.Write("wn/data.noun", noun);
  options.dir = busier.path("wn");
  auto crowded = LoadWordNetGlosses(options, encoder.AsEncoder());
  ASSERT_TRUE(crowded.ok()) << crowded.status().ToString();

  EXPECT_EQ(TextsOf(*alone, encoder, 5).size(), 7u);
  EXPECT_EQ(TextsOf(*crowded, encoder, 5), TextsOf(*alone, encoder, 5));
  EXPECT_EQ(TextsOf(*crowded, encoder, 7).size(), 7u);
  EXPECT_TRUE(TextsOf(*crowded, encoder, 18).empty());
  EXPECT_EQ(TextsOf(*crowded, encoder, 30), TextsOf(*alone, encoder, 30));
}

TEST(WordNetTest, MissingFilesNameThePackage) {
  ScratchDir dir;
  WordEncoder encoder;
  GlossOptions options = OptionsFor(dir);
  auto data = LoadWordNetGlosses(options, encoder.AsEncoder());
  ASSERT_FALSE(data.ok());
  EXPECT_EQ(data.status().code(), Code::kNotFound);
  EXPECT_NE(data.status().message().find(dir.path("wn")), std::string::npos);
  EXPECT_NE(data.status().message().find("wordnet-base"), std::string::npos);

  WriteSmallWordNet(dir);
  fs::remove(dir.path("wn/data.adv"));
  data = LoadWordNetGlosses(options, encoder.AsEncoder());
  ASSERT_FALSE(data.ok());
  EXPECT_EQ(data.status().code(), Code::kNotFound);
  EXPECT_NE(data.status().message().find("data.adv"), std::string::npos);
  EXPECT_NE(data.status().message().find("install the Debian package wordnet-base"),
            std::string::npos);
}

TEST(WordNetTest, MalformedLineNamesFileAndLine) {
  ScratchDir dir;
  WriteSmallWordNet(dir);
  dir.Write("wn/data.verb", std::string(kLicence) +
                                SynsetLine(100, 29, 'v', "breathe", "draw air") +
                                "00000200 46 v 01 run 0 000 | lex_filenum out of range\n");
  WordEncoder encoder;
  auto data = LoadWordNetGlosses(OptionsFor(dir), encoder.AsEncoder());
  ASSERT_FALSE(data.ok());
  EXPECT_EQ(data.status().code(), Code::kDataLoss);
  EXPECT_NE(data.status().message().find("data.verb' line 5"), std::string::npos)
      << data.status().message();

  dir.Write("wn/data.adj", std::string(kLicence) + "00000010 00 a 01 able 0 000 no gloss\n");
  dir.Write("wn/data.verb", kLicence);
  data = LoadWordNetGlosses(OptionsFor(dir), encoder.AsEncoder());
  ASSERT_FALSE(data.ok());
  EXPECT_EQ(data.status().code(), Code::kDataLoss);
  EXPECT_NE(data.status().message().find("data.adj' line 4"), std::string::npos)
      << data.status().message();
}

TEST(WordNetTest, RejectsBadOptions) {
  ScratchDir dir;
  WriteSmallWordNet(dir);
  WordEncoder encoder;
  GlossOptions options = OptionsFor(dir);
  options.max_tokens = 1;
  options.min_tokens = 1;
  EXPECT_EQ(LoadWordNetGlosses(options, encoder.AsEncoder()).status().code(),
            Code::kInvalidArgument);
  options.max_tokens = 4;
  options.min_tokens = 5;
  EXPECT_EQ(LoadWordNetGlosses(options, encoder.AsEncoder()).status().code(),
            Code::kInvalidArgument);
  EXPECT_EQ(LoadWordNetGlosses(OptionsFor(dir), TextEncoder{}).status().code(),
            Code::kInvalidArgument);
  // Nothing long enough: an error, not an empty dataset.
  options.max_tokens = 100;
  options.min_tokens = 100;
  EXPECT_EQ(LoadWordNetGlosses(options, encoder.AsEncoder()).status().code(),
            Code::kInvalidArgument);
}

// ops/install-deps.sh installs the package: its absence is a failure, not a skip.
TEST(WordNetTest, RealWordNet) {
  ASSERT_TRUE(fs::is_directory(kDefaultWordNetDir)) << "install the Debian package wordnet-base (ops/install-deps.sh)";
  WordEncoder encoder;
  GlossOptions options;
  auto data = LoadWordNetGlosses(options, encoder.AsEncoder());
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  ExpectWellFormed(*data);
  std::vector<size_t> per_class(45, 0);
  for (uint8_t label : data->labels) ++per_class[label];
  for (size_t label = 0; label < 45; ++label) {
    EXPECT_GT(per_class[label], 0u) << kWordNetLexNames[label];
  }
  // WordNet 3.0 has 117,659 synsets; a handful of definitions may be too short.
  EXPECT_GT(data->size(), 115000u);
  EXPECT_LE(data->size(), 117659u);
  for (size_t i = 0; i < data->size(); ++i) {
    ASSERT_LE(data->offsets[i + 1] - data->offsets[i], options.max_tokens);
  }
  // The first noun synset.
  EXPECT_EQ(data->labels[0], 3);
  EXPECT_EQ(encoder.Decode(ExampleIds(*data, 0)),
            "that which is perceived or known or inferred to have its own distinct existence "
            "(living or nonliving)");
}

// ---------------------------------------------------------------------------------------------
// dictd

// dictd base64 of `value`, written independently of the decoder.
std::string Base64(uint64_t value) {
  static constexpr std::string_view kAlphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string digits;
  do {
    digits.insert(digits.begin(), kAlphabet[value % 64]);
    value /= 64;
  } while (value != 0);
  return digits;
}

TEST(DictdTest, DecodesBase64) {
  bool ok = false;
  EXPECT_EQ(DecodeDictdBase64("A", &ok), 0u);
  EXPECT_TRUE(ok);
  EXPECT_EQ(DecodeDictdBase64("B", &ok), 1u);
  EXPECT_EQ(DecodeDictdBase64("a", &ok), 26u);
  EXPECT_EQ(DecodeDictdBase64("0", &ok), 52u);
  EXPECT_EQ(DecodeDictdBase64("+", &ok), 62u);
  EXPECT_EQ(DecodeDictdBase64("/", &ok), 63u);
  EXPECT_EQ(DecodeDictdBase64("BA", &ok), 64u);
  // From gcide.index: "0<TAB>5I<TAB>Fz": '5' = 57, 'I' = 8, 'F' = 5, 'z' = 51.
  EXPECT_EQ(DecodeDictdBase64("5I", &ok), 57u * 64 + 8);  // 3656
  EXPECT_TRUE(ok);
  EXPECT_EQ(DecodeDictdBase64("Fz", &ok), 5u * 64 + 51);  // 371
  // "10<TAB>BNy": 1*4096 + 13*64 + 50.
  EXPECT_EQ(DecodeDictdBase64("BNy", &ok), 4096u + 13 * 64 + 50);  // 4978
  EXPECT_EQ(DecodeDictdBase64("AAB", &ok), 1u);                    // leading zeros
  // The largest 64-bit value: 'P' = 15 then ten '/' = 63.
  EXPECT_EQ(DecodeDictdBase64("P//////////", &ok), UINT64_MAX);
  EXPECT_TRUE(ok);
  EXPECT_EQ(DecodeDictdBase64("Kj", nullptr), 10u * 64 + 35);  // ok may be null

  for (std::string_view bad : {"", "=", "A-B", "5I\n", " 5I", "QAAAAAAAAAA", "////////////"}) {
    ok = true;
    EXPECT_EQ(DecodeDictdBase64(bad, &ok), 0u) << bad;
    EXPECT_FALSE(ok) << bad;
  }
  for (uint64_t value : {0ull, 63ull, 64ull, 4095ull, 4096ull, 39952321ull, 1ull << 40}) {
    EXPECT_EQ(DecodeDictdBase64(Base64(value), &ok), value);
    EXPECT_TRUE(ok);
  }
}

TEST(DictdTest, CleansGcideMarkup) {
  EXPECT_EQ(CleanGcideEntry("Abdomen \\Ab*do\"men\\, n. [L. abdomen (a word of uncertain\n"
                            "   etymol.): cf. F. abdomen.]\n"
                            "   1. (Anat.) The belly.\n"
                            "      [1913 Webster]\n"
                            "\n"
                            "   2. (Zool.) The posterior section of the body.\n"
                            "      [1913 Webster]\n"),
            "Abdomen, n. [L. abdomen (a word of uncertain etymol.): cf. F. abdomen.] 1. (Anat.) "
            "The belly.\n2. (Zool.) The posterior section of the body.");
  // Braces removed, content kept; usage labels stay; tags of several sources go.
  EXPECT_EQ(CleanGcideEntry("   {Abdominal ring} (Anat.), a fancied ringlike opening; -- called\n"
                            "      also {inguinal ring}. [Obs.]\n"
                            "      [WordNet 1.5 +PJC]\n"
                            "   [Obs.]\n"
                            "   [Webster 1913 Suppl. + WordNet 1.5]\n"
                            "   [Century Dict. 1906]\n"
                            "   [PJC]\n"
                            "   []\n"),
            "Abdominal ring (Anat.), a fancied ringlike opening; -- called also inguinal ring. "
            "[Obs.] [Obs.]");
  // A pronunciation wrapped onto the next line; one without a trailing comma.
  EXPECT_EQ(CleanGcideEntry("Adjusting plane \\Adjusting plane\\, Adjusting surface \\Adjusting\n"
                            "surface\\ (A[\"e]ronautics)\n"),
            "Adjusting plane, Adjusting surface (A[\"e]ronautics)");
  EXPECT_EQ(CleanGcideEntry("abdominousness \\abdominousness\\ n.\n   1. distension.\n\n"
                            "   Syn: paunchiness\n        [WordNet 1.5]\n"),
            "abdominousness n. 1. distension.\nSyn: paunchiness");
  // A lone backslash is dropped; a backslash two lines on does not close a pronunciation.
  EXPECT_EQ(CleanGcideEntry("a \\b c\nd\ne \\f\n"), "a b c d e f");
  // A source tag that starts or ends a line with text beside it; one inside a line stays.
  EXPECT_EQ(CleanGcideEntry("the end.\n   [1913 Webster] Abannation\n"), "the end. Abannation");
  EXPECT_EQ(CleanGcideEntry("Syn: AFL. [Webster 1913 Suppl.]\n\nnext [Obs.]\n"),
            "Syn: AFL.\nnext [Obs.]");
  EXPECT_EQ(CleanGcideEntry("(formerly Pteromus [1913 Webster]), a squirrel\n"),
            "(formerly Pteromus [1913 Webster]), a squirrel");
  EXPECT_EQ(CleanGcideEntry("x\n   [Century Dictionary 1906]  \n\n[1913 Webster] [PJC]\ny\n"),
            "x\ny");
  // Etymologies, a bracket that is not a tag, and numbers alone are kept.
  EXPECT_EQ(CleanGcideEntry("x\n[F.]\n[NL.]\n[1]\n[Written also {grey}.]\n"),
            "x [F.] [NL.] [1] [Written also grey.]");
  // Blocks: runs of blank lines are one break; whitespace collapses; CRLF; trimmed.
  EXPECT_EQ(CleanGcideEntry("\n\n  one\t two \r\n\r\n \n three  \n  four\n\n"),
            "one two\nthree four");
  EXPECT_EQ(CleanGcideEntry("[1913 Webster]\n\n"), "");
  EXPECT_EQ(CleanGcideEntry(""), "");
  // Windows-1252 bytes become UTF-8; valid UTF-8 stays.
  const std::string cp1252 = std::string("market\x92s fa\xe7") + "ade caf\xc3\xa9";
  const std::string utf8 = std::string("market\xe2\x80\x99s fa\xc3\xa7") + "ade caf\xc3\xa9";
  EXPECT_EQ(CleanGcideEntry(cp1252), utf8);
}

// One dictd entry: its headword line and text.
struct Entry {
  std::string headword;
  std::string text;
};

// A .dict text and .index text for `entries` (in that order in the data) plus aliases
// (headword, index of the entry it points to), index lines in `order` (entry indices; aliases
// are given as negative numbers -1, -2, ...).
struct Dictionary {
  std::string data;
  std::string index;
};

Dictionary MakeDictionary(const std::vector<Entry>& entries,
                          const std::vector<std::pair<std::string, size_t>>& aliases,
                          const std::vector<int>& order) {
  Dictionary dict;
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  for (const Entry& entry : entries) {
    spans.emplace_back(dict.data.size(), entry.text.size());
    dict.data += entry.text;
  }
  for (int k : order) {
    const bool alias = k < 0;
    const std::string& headword = alias ? aliases[static_cast<size_t>(-k - 1)].first
                                        : entries[static_cast<size_t>(k)].headword;
    const size_t target =
        alias ? aliases[static_cast<size_t>(-k - 1)].second : static_cast<size_t>(k);
    dict.index += fmt::format("{}\t{}\t{}\n", headword, Base64(spans[target].first),
                              Base64(spans[target].second));
  }
  return dict;
}

// A small dictionary: two metadata entries, their 00-gcide-* alias, three words (one with an
// alias) and an entry that cleans to nothing.
Dictionary SmallDictionary() {
  const std::vector<Entry> entries = {
      {"00-database-short", "00-database-short\n   A test dictionary\n\n"},
      {"00-database-url", "00-database-url\n   https://example.org\n\n"},
      {"Abdicator",
       "Abdicator \\Ab\"di*ca`tor\\, n.\n   One who abdicates.\n   [1913 Webster]\n\n"},
      {"Abditive",
       "Abditive \\Ab\"di*tive\\, a. [L. abditivus.]\n   Having the quality of "
       "hiding. [R.] --Bailey.\n   [1913 Webster]\n\n"},
      {"Abdominal",
       "Abdominal \\Ab*dom\"i*nal\\, a.\n   1. Of or pertaining to the abdomen.\n"
       "      [1913 Webster]\n\n   {Abdominal ring} (Anat.), an opening.\n      [1913 "
       "Webster]\n\n"},
      {"Empty", "\\Empty\\\n   [PJC]\n\n"},
  };
  // Index order (sorted by headword as dictd does): metadata, aliases, then words.
  return MakeDictionary(entries, {{"00-gcide-short", 0}, {"abdominals", 4}},
                        {0, -1, 1, 2, 3, 4, -2, 5});
}

const std::vector<std::string> kSmallDocuments = {
    "Abdicator, n. One who abdicates.",
    "Abditive, a. [L. abditivus.] Having the quality of hiding. [R.] --Bailey.",
    "Abdominal, a. 1. Of or pertaining to the abdomen.\nAbdominal ring (Anat.), an opening.",
};

TEST(DictdTest, ReadsUncompressedDictionary) {
  ScratchDir dir;
  const Dictionary dict = SmallDictionary();
  DictdOptions options;
  options.path = dir.Write("test.dict", dict.data);
  dir.Write("test.index", dict.index);
  auto documents = ReadDictdDocuments(options);
  ASSERT_TRUE(documents.ok()) << documents.status().ToString();
  EXPECT_EQ(*documents, kSmallDocuments);
}

TEST(DictdTest, ReadsGzipCompressedDictionary) {
  ScratchDir dir;
  const Dictionary dict = SmallDictionary();
  DictdOptions options;
  options.path = WriteGzip(dir, "test.dict.dz", dict.data);
  dir.Write("test.index", dict.index);
  auto documents = ReadDictdDocuments(options);
  ASSERT_TRUE(documents.ok()) << documents.status().ToString();
  EXPECT_EQ(*documents, kSmallDocuments);
}

TEST(DictdTest, TruncatedGzipIsDataLoss) {
  ScratchDir dir;
  const Dictionary dict = SmallDictionary();
  std::string data;
  for (int k = 0; k < 200; ++k) data += dict.data;  // enough to compress to several blocks
  const std::string path = WriteGzip(dir, "full.dict.dz", data);
  std::ifstream in(path, std::ios::binary);
  std::string gz((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  DictdOptions options;
  options.path = dir.Write("cut.dict.dz", std::string_view(gz).substr(0, gz.size() / 2));
  dir.Write("cut.index", dict.index);
  auto documents = ReadDictdDocuments(options);
  ASSERT_FALSE(documents.ok());
  EXPECT_EQ(documents.status().code(), Code::kDataLoss) << documents.status().ToString();
  EXPECT_NE(documents.status().message().find("cut.dict.dz"), std::string::npos);
}

TEST(DictdTest, EntryBeyondTheDataIsDataLossNamingTheLine) {
  ScratchDir dir;
  const Dictionary dict = SmallDictionary();
  DictdOptions options;
  options.path = dir.Write("test.dict", dict.data);
  dir.Write("test.index",
            dict.index + fmt::format("Zebra\t{}\t{}\n", Base64(dict.data.size() - 3), Base64(4)));
  auto documents = ReadDictdDocuments(options);
  ASSERT_FALSE(documents.ok());
  EXPECT_EQ(documents.status().code(), Code::kDataLoss);
  EXPECT_NE(documents.status().message().find("test.index"), std::string::npos);
  EXPECT_NE(documents.status().message().find("line 9"), std::string::npos)
      << documents.status().message();
  EXPECT_NE(documents.status().message().find("Zebra"), std::string::npos);

  // Exactly up to the end is fine.
  dir.Write("test.index",
            dict.index + fmt::format("Zebra\t{}\t{}\n", Base64(dict.data.size() - 3), Base64(3)));
  EXPECT_TRUE(ReadDictdDocuments(options).ok());

  for (std::string_view bad : {"Zebra\tA\n", "Zebra\tA=\tB\n", "Zebra\tA\tB\tC\n"}) {
    dir.Write("test.index", dict.index + std::string(bad));
    documents = ReadDictdDocuments(options);
    ASSERT_FALSE(documents.ok()) << bad;
    EXPECT_EQ(documents.status().code(), Code::kDataLoss) << bad;
    EXPECT_NE(documents.status().message().find("line 9"), std::string::npos) << bad;
  }
}

TEST(DictdTest, MissingFilesNameThePackage) {
  ScratchDir dir;
  DictdOptions options;
  options.path = dir.path("gcide.dict.dz");
  auto documents = ReadDictdDocuments(options);
  ASSERT_FALSE(documents.ok());
  EXPECT_EQ(documents.status().code(), Code::kNotFound);
  EXPECT_NE(documents.status().message().find(options.path), std::string::npos);
  EXPECT_NE(documents.status().message().find("install the Debian package dict-gcide"),
            std::string::npos);

  // The data is there, the index is not.
  WriteGzip(dir, "gcide.dict.dz", SmallDictionary().data);
  documents = ReadDictdDocuments(options);
  ASSERT_FALSE(documents.ok());
  EXPECT_EQ(documents.status().code(), Code::kNotFound);
  EXPECT_NE(documents.status().message().find(dir.path("gcide.index")), std::string::npos);
  EXPECT_NE(documents.status().message().find("dict-gcide"), std::string::npos);

  options.path = dir.path("gcide.txt");
  EXPECT_EQ(ReadDictdDocuments(options).status().code(), Code::kInvalidArgument);
}

TEST(DictdTest, MaxEntriesIsASeededSampleInIndexOrder) {
  ScratchDir dir;
  std::vector<Entry> entries;
  std::vector<int> order;
  for (int k = 0; k < 50; ++k) {
    entries.push_back({fmt::format("word{:02d}", k),
                       fmt::format("word{:02d} \\w\\, n.\n   Meaning {}.\n\n", k, k)});
    order.push_back(k);
  }
  std::reverse(order.begin(), order.end());  // index order differs from data order
  const Dictionary dict = MakeDictionary(entries, {}, order);
  DictdOptions options;
  options.path = dir.Write("words.dict", dict.data);
  dir.Write("words.index", dict.index);

  auto all = ReadDictdDocuments(options);
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  ASSERT_EQ(all->size(), 50u);
  EXPECT_EQ(all->front(), "word49, n. Meaning 49.");
  EXPECT_EQ(all->back(), "word00, n. Meaning 0.");

  options.max_entries = 12;
  options.seed = 5;
  auto sample = ReadDictdDocuments(options);
  ASSERT_TRUE(sample.ok()) << sample.status().ToString();
  ASSERT_EQ(sample->size(), 12u);
  // A subsequence of the full list: distinct, in index order.
  size_t at = 0;
  for (const std::string& document : *sample) {
    while (at < all->size() && (*all)[at] != document) ++at;
    ASSERT_LT(at, all->size()) << document;
    ++at;
  }
  auto again = ReadDictdDocuments(options);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *sample);
  options.seed = 6;
  auto other = ReadDictdDocuments(options);
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(other->size(), 12u);
  EXPECT_NE(*other, *sample);

  options.max_entries = 500;  // more than there are: all of them
  auto more = ReadDictdDocuments(options);
  ASSERT_TRUE(more.ok());
  EXPECT_EQ(*more, *all);
}

TEST(DictdTest, RealGcide) {
  ASSERT_TRUE(fs::exists(kDefaultGcidePath)) << "install the Debian package dict-gcide (ops/install-deps.sh)";
  DictdOptions options;
  options.max_entries = 2000;
  auto documents = ReadDictdDocuments(options);
  ASSERT_TRUE(documents.ok()) << documents.status().ToString();
  EXPECT_GT(documents->size(), 1900u);
  for (const std::string& document : *documents) {
    EXPECT_EQ(document.find("[1913 Webster]"), std::string::npos) << document;
    EXPECT_EQ(document.find('{'), std::string::npos) << document;
    EXPECT_EQ(document.find('\\'), std::string::npos) << document;
  }
}

}  // namespace
}  // namespace fedlora::worker::lm
