// Pretraining a language model from scratch (worker/lm/pretrain.h) on a small generated text:
// the directory is a checkpoint that opens like a user's, the tokenizer trained on the text
// round-trips it, training lowers the held-out loss, the same seed gives the same files, and bad
// options leave nothing behind. Also the tokenizer trainer alone.
#include "worker/lm/pretrain.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "tests/testing/fixtures.h"
#include "worker/lm/checkpoint.h"
#include "worker/lm/llama.h"
#include "worker/lm/tokenizer.h"

namespace fedlora::worker::lm {
namespace {

namespace fs = std::filesystem;

// Sentences of a tiny grammar: learnable structure, so a model trained on it must beat its
// initial loss on held-out sentences by a wide margin.
std::vector<std::string> GrammarDocuments(size_t n, uint64_t seed) {
  const std::vector<std::string> subjects = {"the cat", "a dog", "the old man", "my sister", "the bird", "a child"};
  const std::vector<std::string> verbs = {"sees", "likes", "follows", "paints", "finds", "calls"};
  const std::vector<std::string> objects = {"the river", "a red ball", "the garden", "an apple", "the moon", "a song"};
  const std::vector<std::string> ends = {"at night.", "every day.", "in the rain.", "with joy.", "again."};
  std::mt19937_64 rng(seed);
  std::vector<std::string> docs;
  for (size_t i = 0; i < n; ++i) {
    std::string doc;
    const size_t sentences = 1 + rng() % 3;
    for (size_t s = 0; s < sentences; ++s) {
      if (s > 0) doc += ' ';
      std::string subject = subjects[rng() % subjects.size()];
      subject[0] = static_cast<char>(std::toupper(subject[0]));
      doc += subject + " " + verbs[rng() % verbs.size()] + " " + objects[rng() % objects.size()] + " " +
             ends[rng() % ends.size()];
    }
    docs.push_back(doc);
  }
  return docs;
}

using testing::ReadFile;

class PretrainTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("fedlora_pretrain_test_" + std::to_string(getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  static LmPretrainOptions TinyOptions() {
    LmPretrainOptions o;
    o.shape = *LmShapeNamed("tiny");
    o.seq_len = 32;
    o.batch_size = 8;
    o.steps = 60;
    o.warmup_steps = 5;
    o.lr = 5e-3f;
    o.held_out_fraction = 0.1;
    o.eval_every = 0;
    o.seed = 3;
    return o;
  }
  fs::path dir_;
};

TEST_F(PretrainTest, WritesACheckpointThatOpensAndLearns) {
  const auto docs = GrammarDocuments(600, 1);
  std::vector<std::string> phases;
  uint64_t last_step = 0;
  const auto report = PretrainLanguageModel(docs, (dir_ / "model").string(), TinyOptions(),
                                            [&](const LmPretrainProgress& p) {
                                              if (phases.empty() || phases.back() != p.phase) phases.push_back(p.phase);
                                              if (p.phase == "train") last_step = p.step;
                                            });
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_EQ(phases, (std::vector<std::string>{"tokenizer", "encode", "train", "done"}));
  EXPECT_EQ(last_step, 60u);
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json",
                        "fedlora_pretrain.json"}) {
    EXPECT_TRUE(fs::is_regular_file(dir_ / "model" / f)) << f;
  }
  EXPECT_FALSE(fs::exists(dir_ / "model.partial"));
  EXPECT_FALSE(fs::exists(dir_ / "model" / "model.safetensors.new"));
  // The grammar's text supports fewer pieces than asked for; the model has as many.
  EXPECT_LT(report->vocab_size, 512);
  EXPECT_GE(report->vocab_size, 300);
  // The held-out loss fell well below the initial one (ln V for a uniform guess).
  EXPECT_GT(report->base_held_out_loss, std::log(static_cast<double>(report->vocab_size)) - 0.5);
  EXPECT_LT(report->held_out_loss, report->base_held_out_loss - 2.0)
      << "initial " << report->base_held_out_loss << ", trained " << report->held_out_loss;
  EXPECT_EQ(report->train_documents + report->held_out_documents, docs.size());
  EXPECT_EQ(report->held_out_documents, 60u);

  // Opened as any checkpoint is, it scores the held-out loss it recorded.
  const auto checkpoint = Checkpoint::Open((dir_ / "model").string());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status().ToString();
  EXPECT_EQ((*checkpoint)->config().architecture, "LlamaForCausalLM");
  EXPECT_EQ((*checkpoint)->config().vocab_size, report->vocab_size);
  EXPECT_TRUE((*checkpoint)->config().tie_word_embeddings);
  const auto tokenizer = Tokenizer::Load((dir_ / "model").string());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status().ToString();
  EXPECT_EQ((*tokenizer)->bos_id(), 1);
  EXPECT_EQ((*tokenizer)->eos_id(), 2);
  EXPECT_EQ((*tokenizer)->Decode((*tokenizer)->Encode(docs[0], true, false)), docs[0]);
  const auto record = nlohmann::json::parse(ReadFile(dir_ / "model" / "fedlora_pretrain.json"));
  EXPECT_DOUBLE_EQ(record.at("held_out_loss").get<double>(), report->held_out_loss);
  EXPECT_EQ(record.at("parameters").get<int64_t>(), report->parameters);

  // The trained model predicts the grammar: after "The cat sees the", "river" or "moon" or
  // "garden" beats an unrelated piece of the vocabulary.
  LlamaOptions lo;
  auto model = LlamaModel::Create(*checkpoint, lo);
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  const std::vector<int32_t> ids = (*tokenizer)->Encode("The cat sees the", true, false);
  torch::Tensor input = torch::tensor(std::vector<int64_t>(ids.begin(), ids.end())).unsqueeze(0);
  const torch::Tensor logp = torch::log_softmax((*model)->Forward(input).select(1, input.size(1) - 1), -1).squeeze(0);
  const auto whole = (*tokenizer)->Encode("The cat sees the river", true, false);
  ASSERT_GT(whole.size(), ids.size());
  const int32_t river = whole[ids.size()];  // the first piece of " river"
  EXPECT_GT(logp[river].item<float>(), -std::log(static_cast<double>(report->vocab_size)) + 1.0);
}

TEST_F(PretrainTest, SameSeedSameFiles) {
  const auto docs = GrammarDocuments(300, 2);
  LmPretrainOptions o = TinyOptions();
  o.steps = 10;
  ASSERT_TRUE(PretrainLanguageModel(docs, (dir_ / "a").string(), o).ok());
  ASSERT_TRUE(PretrainLanguageModel(docs, (dir_ / "b").string(), o).ok());
  for (const char* f : {"model.safetensors", "tokenizer.model", "config.json", "fedlora_pretrain.json"}) {
    EXPECT_EQ(ReadFile(dir_ / "a" / f), ReadFile(dir_ / "b" / f)) << f;
  }
  o.seed = 4;
  ASSERT_TRUE(PretrainLanguageModel(docs, (dir_ / "c").string(), o).ok());
  EXPECT_NE(ReadFile(dir_ / "a" / "model.safetensors"), ReadFile(dir_ / "c" / "model.safetensors"));
}

TEST_F(PretrainTest, RefusesBadInputsAndLeavesNothing) {
  const auto docs = GrammarDocuments(300, 2);
  const std::string out = (dir_ / "m").string();
  auto bad = [&](LmPretrainOptions o, const std::vector<std::string>& d, Code code, const std::string& text) {
    const auto r = PretrainLanguageModel(d, out, o);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), code) << r.status().ToString();
    EXPECT_NE(r.status().message().find(text), std::string::npos) << r.status().ToString();
    EXPECT_FALSE(fs::exists(out));
    EXPECT_FALSE(fs::exists(out + ".partial"));
  };
  LmPretrainOptions o = TinyOptions();
  o.shape.num_heads = 3;
  bad(o, docs, Code::kInvalidArgument, "heads");
  o = TinyOptions();
  o.seq_len = 1000;
  bad(o, docs, Code::kInvalidArgument, "sequence length");
  o = TinyOptions();
  o.shape.vocab_size = 100;
  bad(o, docs, Code::kInvalidArgument, "vocabulary");
  o = TinyOptions();
  bad(o, {"one short document"}, Code::kInvalidArgument, "too few");
  o = TinyOptions();
  o.batch_size = 100000;
  bad(o, docs, Code::kInvalidArgument, "windows");
  fs::create_directories(out);
  const auto r = PretrainLanguageModel(docs, out, TinyOptions());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kAlreadyExists);
  EXPECT_TRUE(fs::is_empty(out));
}

TEST(TrainSentencePieceTest, DeterministicAndRoundTrips) {
  const auto docs = GrammarDocuments(200, 5);
  SentencePieceTrainOptions o;
  o.vocab_size = 320;
  const auto a = TrainSentencePiece(docs, o);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  const auto b = TrainSentencePiece(docs, o);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*a, *b);
  o.vocab_size = 100;
  EXPECT_EQ(TrainSentencePiece(docs, o).status().code(), Code::kInvalidArgument);
  o.vocab_size = 320;
  EXPECT_EQ(TrainSentencePiece({}, o).status().code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace fedlora::worker::lm
