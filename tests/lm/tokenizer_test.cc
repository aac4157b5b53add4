// Tokenizer against the Python reference (tests/lm/reference, Debian's python3-sentencepiece):
// a Llama-style SentencePiece model is trained once per suite, then every sample text must
// encode to the ids `llama_reference.py encode` prints and decode back to itself; the special
// ids follow config.json, then tokenizer_config.json, then the model; bad checkpoints get clear
// errors. A failing Python tool fails the tests (it never skips them).
#include "worker/lm/tokenizer.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/testing/fixtures.h"
#include "tests/testing/python.h"

namespace fedlora::worker::lm {
namespace {

namespace fs = std::filesystem;
using ::fedlora::testing::ReferenceTool;
using ::fedlora::testing::RunReferenceToolBatch;
using ::fedlora::testing::RunPython;
using ::fedlora::testing::TempDir;

constexpr int kVocab = 400;

// Varied English with accents and emoji; "☃", "中", "文", tab and newline never occur in it
// (the trainer reads line by line), so they can only be encoded through byte fallback.
constexpr const char* kTrainingText =
    "Hello there! The quick brown fox jumps over the lazy dog while the farmer watches.\n"
    "Federated learning trains a shared model across many clients without moving their data.\n"
    "Each client fine-tunes small low-rank adapters and sends only those updates to the server.\n"
    "In 2024 the river rose by 37 centimetres, and the council met on 12 March to discuss it.\n"
    "She ordered a café crème and a brûlée, then read a naïve story about a façade in Zürich.\n"
    "Señor Muñoz visited São Paulo, Kraków and Århus; the smörgåsbord was très bon.\n"
    "We celebrated with cake 🎂, balloons 🎈 and a big smile 🙂 - what a party 🎉!\n"
    "Questions? Answers! Quotes \"like this\" and 'this', parentheses (yes), brackets [no].\n"
    "The weather today is sunny with a light breeze, perfect for a walk along the harbour.\n"
    "Tokenizers split text into pieces; rare characters fall back to raw bytes.\n";

// Every sample round-trips through SentencePiece with this model (identity normalisation, no
// whitespace folding, byte fallback): Decode(Encode(t)) == t for all of them.
const std::vector<std::string>& Samples() {
  static const auto* samples = new std::vector<std::string>{
      "Hello world",
      "The quick brown fox jumps over the lazy dog.",
      "  leading and trailing spaces  ",
      "   ",
      "Café crème brûlée, naïve façade in Zürich",
      "Party time 🎉🙂",
      "Snowman ☃ and 中文",     // absent from training: byte-fallback pieces
      "tab\tand\nnewline",      // control characters: byte-fallback pieces too
      "In 2024 there were 365 days",
      "-starts with a dash",    // argparse would take "--text -x" for a flag; we pass --text=
      "",
  };
  return *samples;
}

constexpr size_t kCliSample = 6;  // "Snowman ☃ and 中文"

std::vector<int32_t> ParseIds(const std::string& line) {
  std::vector<int32_t> ids;
  std::istringstream in(line);
  for (int32_t id; in >> id;) ids.push_back(id);
  return ids;
}

void WriteFile(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary);
  out << content;
  ASSERT_TRUE(out.good()) << path;
}

using testing::ReadFile;

class TokenizerTest : public ::testing::Test {
 protected:
  struct Suite {
    Status status;
    std::unique_ptr<TempDir> dir;
    std::string model;       // the trained tokenizer.model
    std::string checkpoint;  // hf_checkpoint.py make --tokenizer-model: config.json & co.
    std::vector<std::vector<int32_t>> reference;  // python [bos] + sp.encode(text) + [eos], per sample
    std::vector<int32_t> cli_reference;           // `llama_reference.py encode` of Samples()[kCliSample]
  };
  static inline Suite* suite_ = nullptr;

  static void SetUpTestSuite() {
    suite_ = new Suite;
    suite_->dir = std::make_unique<TempDir>();
    suite_->model = suite_->dir->path("tokenizer.model");
    suite_->checkpoint = suite_->dir->path("checkpoint");
    const std::string text = suite_->dir->path("train.txt");
    std::ofstream(text, std::ios::binary) << kTrainingText;

    auto trained = RunPython({ReferenceTool("hf_checkpoint.py"), "train-tokenizer", "--text", text, "--vocab",
                              std::to_string(kVocab), "--out", suite_->model});
    if (!trained.ok()) {
      suite_->status = trained.status();
      return;
    }
    // Each interpreter start costs about a second and a half (torch): the samples are encoded
    // in one interpreter through llama_reference.py's own main(), side by side with `make`
    // and with one plain command-line `encode` that vouches for the batch.
    auto make = std::async(std::launch::async, [] {
      return RunPython({ReferenceTool("hf_checkpoint.py"), "make", "--out", suite_->checkpoint, "--arch", "llama",
                        "--hidden", "8", "--layers", "1", "--heads", "2", "--kv-heads", "1", "--intermediate", "16",
                        "--vocab", std::to_string(kVocab), "--tie", "1", "--dtype", "F32", "--seed", "1",
                        "--tokenizer-model", suite_->model});
    });
    auto cli = std::async(std::launch::async, [] {
      return RunPython({ReferenceTool("llama_reference.py"), "encode", "--tokenizer", suite_->model,
                        "--text=" + Samples()[kCliSample]});
    });
    std::vector<std::vector<std::string>> invocations;
    for (const std::string& sample : Samples()) {
      // "--text=" keeps argparse from reading a sample that starts with '-' as a flag.
      invocations.push_back({"encode", "--tokenizer", suite_->model, "--text=" + sample, "--bos", "--eos"});
    }
    Result<std::vector<std::string>> batch = RunReferenceToolBatch("llama_reference.py", invocations);
    Result<std::string> cli_out = cli.get();
    Result<std::string> made = make.get();
    for (const Status& s : {batch.status(), cli_out.status(), made.status()}) {
      if (!s.ok()) {
        suite_->status = s;
        return;
      }
    }
    for (const std::string& line : *batch) suite_->reference.push_back(ParseIds(line));
    suite_->cli_reference = ParseIds(*cli_out);
  }

  static void TearDownTestSuite() {
    delete suite_;
    suite_ = nullptr;
  }

  void SetUp() override { ASSERT_TRUE(suite_->status.ok()) << "Python reference tool: " << suite_->status.ToString(); }

  // A fresh checkpoint directory holding a copy of the trained tokenizer.model.
  static std::string DirWithModel(const TempDir& tmp) {
    fs::copy_file(suite_->model, tmp.path("tokenizer.model"));
    return tmp.path();
  }

  static std::unique_ptr<Tokenizer> MustLoad(const std::string& dir) {
    auto tok = Tokenizer::Load(dir);
    EXPECT_TRUE(tok.ok()) << tok.status().ToString();
    return tok.ok() ? std::move(tok).value() : nullptr;
  }
};

TEST_F(TokenizerTest, EncodeMatchesPythonSentencePiece) {
  auto tok = MustLoad(DirWithModel(TempDir()));
  ASSERT_TRUE(tok);
  ASSERT_EQ(suite_->reference.size(), Samples().size());
  for (size_t i = 0; i < Samples().size(); ++i) {
    SCOPED_TRACE("text '" + Samples()[i] + "'");
    const std::vector<int32_t>& ref = suite_->reference[i];
    ASSERT_GE(ref.size(), 2u);
    EXPECT_EQ(tok->Encode(Samples()[i], false, false), std::vector<int32_t>(ref.begin() + 1, ref.end() - 1));
    EXPECT_EQ(tok->Encode(Samples()[i], true, true), ref);
  }
  // The plain command line (no --bos / --eos) agrees with the batched calls and with us.
  EXPECT_EQ(tok->Encode(Samples()[kCliSample], false, false), suite_->cli_reference);
}

TEST_F(TokenizerTest, DecodeInvertsEncode) {
  auto tok = MustLoad(DirWithModel(TempDir()));
  ASSERT_TRUE(tok);
  for (const std::string& text : Samples()) {
    SCOPED_TRACE("text '" + text + "'");
    EXPECT_EQ(tok->Decode(tok->Encode(text, false, false)), text);
    EXPECT_EQ(tok->Decode(tok->Encode(text, true, true)), text);  // bos / eos decode to nothing
  }
}

TEST_F(TokenizerTest, DummyPrefixMarksTheFirstWordAndKeepsExtraSpaces) {
  auto tok = MustLoad(DirWithModel(TempDir()));
  ASSERT_TRUE(tok);
  const std::string space = "\xe2\x96\x81";  // "▁"
  const std::vector<int32_t> word = tok->Encode("the", false, false);
  ASSERT_FALSE(word.empty());
  EXPECT_TRUE(tok->Piece(word.front()).starts_with(space)) << tok->Piece(word.front());
  // add_dummy_prefix adds exactly one "▁"; the text's own spaces stay (no whitespace folding).
  const std::vector<int32_t> spaces = tok->Encode("   ", false, false);
  std::string joined;
  for (int32_t id : spaces) joined += tok->Piece(id);
  EXPECT_EQ(joined, space + space + space + space);
}

TEST_F(TokenizerTest, UnseenCharactersUseBytePieces) {
  auto tok = MustLoad(DirWithModel(TempDir()));
  ASSERT_TRUE(tok);
  std::vector<std::string> pieces;
  for (int32_t id : tok->Encode("中", false, false)) pieces.push_back(tok->Piece(id));
  // U+4E2D is E4 B8 AD in UTF-8.
  EXPECT_EQ(pieces, (std::vector<std::string>{"\xe2\x96\x81", "<0xE4>", "<0xB8>", "<0xAD>"}));
  // A lone lead byte is not UTF-8: SentencePiece decodes it to U+FFFD.
  const int32_t lead = tok->Encode("中", false, false)[1];
  EXPECT_EQ(tok->Decode(std::vector<int32_t>{lead}), "\xef\xbf\xbd");
}

TEST_F(TokenizerTest, EmptyTextEncodesToOnlyRequestedSpecialIds) {
  auto tok = MustLoad(DirWithModel(TempDir()));
  ASSERT_TRUE(tok);
  EXPECT_TRUE(tok->Encode("", false, false).empty());
  EXPECT_EQ(tok->Encode("", true, false), std::vector<int32_t>{1});
  EXPECT_EQ(tok->Encode("", true, true), (std::vector<int32_t>{1, 2}));
  EXPECT_EQ(tok->Decode({}), "");
}

TEST_F(TokenizerTest, BareModelUsesItsOwnSpecialIds) {
  auto tok = MustLoad(DirWithModel(TempDir()));
  ASSERT_TRUE(tok);
  EXPECT_EQ(tok->vocab_size(), static_cast<size_t>(kVocab));
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->eos_ids(), std::vector<int32_t>{2});
  EXPECT_TRUE(tok->add_bos());
  EXPECT_EQ(tok->Piece(0), "<unk>");
  EXPECT_EQ(tok->Piece(1), "<s>");
  EXPECT_EQ(tok->Piece(2), "</s>");
  EXPECT_EQ(tok->Piece(kVocab), "");
  EXPECT_EQ(tok->Decode(std::vector<int32_t>{0}), " \xe2\x81\x87 ");  // SentencePiece's " ⁇ " for <unk>
  EXPECT_EQ(tok->Decode(std::vector<int32_t>{kVocab, -1}), "");      // ids past the vocabulary: nothing
}

TEST_F(TokenizerTest, LoadsCheckpointWrittenByHfCheckpointTool) {
  auto tok = MustLoad(suite_->checkpoint);
  ASSERT_TRUE(tok);
  EXPECT_EQ(tok->vocab_size(), static_cast<size_t>(kVocab));
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_TRUE(tok->add_bos());
  EXPECT_EQ(tok->Encode(Samples()[0], true, true), suite_->reference[0]);
}

TEST_F(TokenizerTest, ConfigJsonIdsOverrideTheModel) {
  TempDir tmp;
  const std::string dir = DirWithModel(tmp);
  // tokenizer_config.json names other pieces; config.json wins.
  WriteFile(tmp.path("tokenizer_config.json"), R"({"bos_token": "<unk>", "eos_token": "<unk>"})");
  WriteFile(tmp.path("config.json"), R"({"bos_token_id": 5, "eos_token_id": [7, 2, 9], "vocab_size": 400})");
  auto tok = MustLoad(dir);
  ASSERT_TRUE(tok);
  EXPECT_EQ(tok->bos_id(), 5);
  EXPECT_EQ(tok->eos_id(), 7);
  EXPECT_EQ(tok->eos_ids(), (std::vector<int32_t>{7, 2, 9}));
  const std::vector<int32_t> plain = tok->Encode("hello", false, false);
  std::vector<int32_t> expected{5};
  expected.insert(expected.end(), plain.begin(), plain.end());
  expected.push_back(7);
  EXPECT_EQ(tok->Encode("hello", true, true), expected);
  // Every eos id is skipped by Decode, as is bos.
  std::vector<int32_t> with_specials = expected;
  with_specials.push_back(9);
  with_specials.push_back(2);
  EXPECT_EQ(tok->Decode(with_specials), "hello");
}

TEST_F(TokenizerTest, NullConfigIdsFallBackToTokenizerConfig) {
  TempDir tmp;
  const std::string dir = DirWithModel(tmp);
  auto probe = MustLoad(dir);
  ASSERT_TRUE(probe);
  const std::string eos_piece = probe->Piece(300);  // an ordinary piece, to tell the sources apart
  WriteFile(tmp.path("config.json"), R"({"bos_token_id": null, "vocab_size": 400})");
  WriteFile(tmp.path("tokenizer_config.json"),
            nlohmann::json{{"add_bos_token", false},
                           {"bos_token", {{"__type", "AddedToken"}, {"content", "<s>"}, {"lstrip", false}}},
                           {"eos_token", eos_piece}}
                .dump());
  auto tok = MustLoad(dir);
  ASSERT_TRUE(tok);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 300);
  EXPECT_EQ(tok->eos_ids(), std::vector<int32_t>{300});
  EXPECT_FALSE(tok->add_bos());
}

TEST_F(TokenizerTest, EncodeIsSafeFromManyThreads) {
  auto tok = MustLoad(DirWithModel(TempDir()));
  ASSERT_TRUE(tok);
  std::vector<std::vector<int32_t>> expected;
  for (const std::string& text : Samples()) expected.push_back(tok->Encode(text, true, false));
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 50; ++round) {
        for (size_t i = 0; i < Samples().size(); ++i) {
          if (tok->Encode(Samples()[i], true, false) != expected[i]) ++mismatches[t];
          if (tok->Decode(expected[i]) != Samples()[i]) ++mismatches[t];
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches, std::vector<int>(4, 0));
}

TEST_F(TokenizerTest, MissingDirectoryIsNotFound) {
  TempDir tmp;
  const std::string dir = tmp.path("no-such-checkpoint");
  auto tok = Tokenizer::Load(dir);
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), Code::kNotFound);
  EXPECT_NE(tok.status().message().find(dir), std::string::npos) << tok.status().ToString();
}

TEST_F(TokenizerTest, DirectoryWithoutTokenizerIsNotFound) {
  TempDir tmp;
  WriteFile(tmp.path("config.json"), "{}");
  auto tok = Tokenizer::Load(tmp.path());
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), Code::kNotFound);
  EXPECT_NE(tok.status().message().find(tmp.path("tokenizer.model")), std::string::npos) << tok.status().ToString();
}

TEST_F(TokenizerTest, FastTokenizerOnlyIsUnimplemented) {
  TempDir tmp;
  WriteFile(tmp.path("tokenizer.json"), R"({"version": "1.0", "model": {"type": "BPE"}})");
  auto tok = Tokenizer::Load(tmp.path());
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), Code::kUnimplemented);
  EXPECT_NE(tok.status().message().find("tokenizer.json"), std::string::npos) << tok.status().ToString();
  EXPECT_NE(tok.status().message().find("tokenizer.model"), std::string::npos) << tok.status().ToString();
}

TEST_F(TokenizerTest, CorruptModelIsDataLoss) {
  const std::string model = ReadFile(suite_->model);
  for (const std::string& bytes : {std::string("this is not a sentencepiece model\n"),
                                   model.substr(0, model.size() / 2), std::string()}) {
    SCOPED_TRACE(std::to_string(bytes.size()) + " bytes");
    TempDir tmp;
    WriteFile(tmp.path("tokenizer.model"), bytes);
    auto tok = Tokenizer::Load(tmp.path());
    ASSERT_FALSE(tok.ok());
    EXPECT_EQ(tok.status().code(), Code::kDataLoss);
    EXPECT_NE(tok.status().message().find(tmp.path("tokenizer.model")), std::string::npos)
        << tok.status().ToString();
  }
}

TEST_F(TokenizerTest, EosIdOutsideVocabularyIsRejected) {
  for (const std::string eos : {"400", "-1", "[2, 400]"}) {
    SCOPED_TRACE("eos_token_id " + eos);
    TempDir tmp;
    const std::string dir = DirWithModel(tmp);
    WriteFile(tmp.path("config.json"), R"({"bos_token_id": 1, "eos_token_id": )" + eos + "}");
    auto tok = Tokenizer::Load(dir);
    ASSERT_FALSE(tok.ok());
    EXPECT_EQ(tok.status().code(), Code::kInvalidArgument);
    EXPECT_NE(tok.status().message().find(tmp.path("config.json")), std::string::npos) << tok.status().ToString();
    EXPECT_NE(tok.status().message().find("eos_token_id"), std::string::npos) << tok.status().ToString();
  }
}

TEST_F(TokenizerTest, UnknownSpecialTokenInTokenizerConfigIsRejected) {
  TempDir tmp;
  const std::string dir = DirWithModel(tmp);
  WriteFile(tmp.path("tokenizer_config.json"), R"({"eos_token": "<|im_end|>"})");
  auto tok = Tokenizer::Load(dir);
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), Code::kInvalidArgument);
  EXPECT_NE(tok.status().message().find("tokenizer_config.json"), std::string::npos) << tok.status().ToString();
  EXPECT_NE(tok.status().message().find("eos_token"), std::string::npos) << tok.status().ToString();
  EXPECT_NE(tok.status().message().find("<|im_end|>"), std::string::npos) << tok.status().ToString();
}

TEST_F(TokenizerTest, MalformedConfigJsonIsDataLoss) {
  TempDir tmp;
  const std::string dir = DirWithModel(tmp);
  WriteFile(tmp.path("config.json"), R"({"bos_token_id": 1,)");
  auto tok = Tokenizer::Load(dir);
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), Code::kDataLoss);
  EXPECT_NE(tok.status().message().find(tmp.path("config.json")), std::string::npos) << tok.status().ToString();
}

}  // namespace
}  // namespace fedlora::worker::lm
