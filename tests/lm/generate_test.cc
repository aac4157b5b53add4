// Generation with the key/value cache (LlamaModel::ForwardCached, worker/lm/generate.h) against
// the model's own full forward pass: a prompt run in one call and continued token by token
// gives Forward's logits over the whole sequence (grouped-query attention, Mistral's sliding
// window, left padding in a batch, a non-zero LoRA adapter); greedy generation is the repeated
// argmax of Forward; sampling is reproducible from its seed; EOS and the position limit stop
// it; Score's NLLs are -log_softmax of Forward at the next tokens. Small random checkpoints and
// a SentencePiece tokenizer come from tests/lm/reference/hf_checkpoint.py (Debian's python3-torch).
#include "worker/lm/generate.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "tests/testing/fixtures.h"
#include "tests/lm/lm_testing.h"
#include "tests/testing/python.h"
#include "worker/lm/checkpoint.h"
#include "worker/lm/llama.h"
#include "worker/lm/tokenizer.h"

namespace fedlora::worker::lm {
namespace {

namespace fs = std::filesystem;
using ::fedlora::testing::ReferenceTool;
using ::fedlora::testing::RunReferenceToolBatch;
using ::fedlora::testing::TempDir;

constexpr int kVocab = 400;  // tokenizer pieces = model vocabulary
constexpr int64_t kShortMaxPositions = 16;

constexpr const char* kTrainingText =
    "Federated learning trains a shared model across many clients without moving their data.\n"
    "Each client fine-tunes small low-rank adapters and sends only those updates to the server.\n"
    "The quick brown fox jumps over the lazy dog while the farmer watches from the gate.\n"
    "In 2024 the river rose by 37 centimetres, and the council met on 12 March to discuss it.\n"
    "She ordered a café crème and a brûlée, then read a story about a façade in Zürich.\n"
    "The weather today is sunny with a light breeze, perfect for a walk along the harbour.\n"
    "Tokenizers split text into pieces; rare characters fall back to raw bytes.\n";

constexpr const char* kPrompt = "The quick brown fox";
constexpr const char* kScoredText =
    "Each client fine-tunes small adapters; the server folds their updates into a shared model. "
    "The river rose in March, and the farmer watched the lazy dog from the gate.";

// One tokenizer and the checkpoints every test reads, made once per suite.
class GenerateTest : public ::testing::Test {
 protected:
  struct Suite {
    Status status;
    std::unique_ptr<TempDir> dir;
    std::string llama;    // GQA, untied, with the tokenizer
    std::string mistral;  // sliding window 4, with the tokenizer
    std::string qwen2;    // q/k/v biases, tied
    std::string short_context;  // max_position_embeddings kShortMaxPositions, with the tokenizer
  };
  static inline Suite* suite_ = nullptr;

  static void SetUpTestSuite() {
    suite_ = new Suite;
    suite_->dir = std::make_unique<TempDir>();
    const std::string text = suite_->dir->path("train.txt");
    const std::string model = suite_->dir->path("tokenizer.model");
    std::ofstream(text, std::ios::binary) << kTrainingText;
    suite_->llama = suite_->dir->path("llama");
    suite_->mistral = suite_->dir->path("mistral");
    suite_->qwen2 = suite_->dir->path("qwen2");
    suite_->short_context = suite_->dir->path("short");
    auto make = [&](const std::string& out, std::vector<std::string> args) {
      std::vector<std::string> all = {"make", "--out", out, "--vocab", std::to_string(kVocab), "--seed", "5",
                                      "--dtype", "F32", "--std", "0.05"};
      all.insert(all.end(), args.begin(), args.end());
      return all;
    };
    // One interpreter for the tokenizer and every checkpoint: importing torch is most of the cost.
    auto made = RunReferenceToolBatch(
        "hf_checkpoint.py",
        {{"train-tokenizer", "--text", text, "--vocab", std::to_string(kVocab), "--out", model},
         make(suite_->llama, {"--arch", "llama", "--hidden", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2",
                              "--intermediate", "96", "--tie", "0", "--tokenizer-model", model}),
         make(suite_->mistral, {"--arch", "mistral", "--hidden", "64", "--layers", "2", "--heads", "4", "--kv-heads",
                                "2", "--intermediate", "64", "--tie", "0", "--sliding-window", "4", "--tokenizer-model",
                                model}),
         make(suite_->qwen2, {"--arch", "qwen2", "--hidden", "48", "--layers", "2", "--heads", "6", "--kv-heads", "2",
                              "--intermediate", "80", "--tie", "1"}),
         make(suite_->short_context, {"--arch", "llama", "--hidden", "32", "--layers", "1", "--heads", "2",
                                      "--kv-heads", "1", "--intermediate", "48", "--tie", "1", "--max-pos",
                                      std::to_string(kShortMaxPositions), "--tokenizer-model", model})});
    if (!made.ok()) suite_->status = made.status();
  }
  static void TearDownTestSuite() {
    delete suite_;
    suite_ = nullptr;
  }
  void SetUp() override { ASSERT_TRUE(suite_->status.ok()) << suite_->status.ToString(); }

  static std::unique_ptr<LlamaModel> Load(const std::string& dir, LlamaOptions options = {}) {
    return LoadTestModel(dir, options);
  }
  static std::unique_ptr<Tokenizer> LoadTokenizer(const std::string& dir) {
    auto tok = Tokenizer::Load(dir);
    EXPECT_TRUE(tok.ok()) << tok.status().ToString();
    return tok.ok() ? std::move(*tok) : nullptr;
  }
};


torch::Tensor Ids(const std::vector<int64_t>& ids) { return torch::tensor(ids, torch::kLong).unsqueeze(0); }

std::vector<int64_t> Wide(const std::vector<int32_t>& ids) { return {ids.begin(), ids.end()}; }

// Random ids in [1, vocab).
std::vector<int64_t> RandomIds(size_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int64_t> ids(n);
  for (auto& id : ids) id = 1 + static_cast<int64_t>(rng() % static_cast<uint64_t>(vocab - 1));
  return ids;
}

// ForwardCached over a prompt, then a chunk, then token by token, against Forward over the
// whole sequence; then the same for a batch with a left-padded row.
void ExpectCachedMatchesForward(LlamaModel& model, const std::string& what) {
  torch::NoGradGuard no_grad;
  const int64_t vocab = model.config().vocab_size;
  const std::vector<int64_t> seq = RandomIds(13, vocab, 17);
  const auto total = static_cast<int64_t>(seq.size());
  const torch::Tensor full = model.Forward(Ids(seq), {})[0];  // [T, V]
  {
    KvCache cache;
    std::vector<torch::Tensor> parts;
    const torch::Tensor ids = Ids(seq);
    parts.push_back(model.ForwardCached(ids.narrow(1, 0, 5), {}, cache)[0]);
    EXPECT_EQ(cache.length(), 5) << what;
    parts.push_back(model.ForwardCached(ids.narrow(1, 5, 3), {}, cache)[0]);
    for (int64_t t = 8; t < total; ++t) parts.push_back(model.ForwardCached(ids.narrow(1, t, 1), {}, cache)[0]);
    const torch::Tensor cached = torch::cat(parts, 0);
    ASSERT_EQ(cached.sizes(), full.sizes()) << what;
    EXPECT_LT(MaxDiff(cached, full), 1e-4) << what;
    EXPECT_EQ(cache.length(), total) << what;
    EXPECT_EQ(cache.count.item<int64_t>(), total) << what;
    ASSERT_EQ(cache.keys.size(), static_cast<size_t>(model.config().num_layers)) << what;
    EXPECT_EQ(cache.keys[0].sizes(),
              (std::vector<int64_t>{1, model.config().num_kv_heads, total, model.config().head_dim}))
        << what;
    // A wrong batch size is refused and leaves the cache as it was.
    EXPECT_THROW(model.ForwardCached(torch::ones({2, 1}, torch::kLong), {}, cache), c10::Error) << what;
    EXPECT_EQ(cache.length(), total) << what;
  }
  {
    // Row 0: a 4-token prompt left-padded to 7; row 1: a 7-token prompt. Then 6 tokens each,
    // one step at a time. Forward over the padded whole must agree on every real position.
    const int64_t prompt = 7, steps = 6, short_prompt = 4;
    const std::vector<int64_t> a = RandomIds(static_cast<size_t>(short_prompt + steps), vocab, 23);
    const std::vector<int64_t> b = RandomIds(static_cast<size_t>(prompt + steps), vocab, 29);
    torch::Tensor ids = torch::zeros({2, prompt + steps}, torch::kLong);
    torch::Tensor mask = torch::ones({2, prompt + steps}, torch::kLong);
    mask[0].narrow(0, 0, prompt - short_prompt).fill_(0);
    ids[0].narrow(0, prompt - short_prompt, short_prompt + steps).copy_(torch::tensor(a, torch::kLong));
    ids[1].copy_(torch::tensor(b, torch::kLong));
    const torch::Tensor whole = model.Forward(ids, mask);
    KvCache cache;
    std::vector<torch::Tensor> parts;
    parts.push_back(model.ForwardCached(ids.narrow(1, 0, prompt), mask.narrow(1, 0, prompt), cache));
    for (int64_t t = prompt; t < prompt + steps; ++t) {
      parts.push_back(model.ForwardCached(ids.narrow(1, t, 1), {}, cache));
    }
    const torch::Tensor cached = torch::cat(parts, 1);
    ASSERT_EQ(cached.sizes(), whole.sizes()) << what;
    const int64_t pad = prompt - short_prompt;
    EXPECT_LT(MaxDiff(cached[0].narrow(0, pad, short_prompt + steps), whole[0].narrow(0, pad, short_prompt + steps)),
              1e-4)
        << what << ", left-padded row";
    EXPECT_LT(MaxDiff(cached[1], whole[1]), 1e-4) << what << ", full row";
    // The padded row alone, unpadded, gives the same logits: padding shifts no position.
    const torch::Tensor alone = model.Forward(Ids(a), {})[0];
    EXPECT_LT(MaxDiff(cached[0].narrow(0, pad, short_prompt + steps), alone), 1e-4) << what << ", row 0 alone";
    EXPECT_EQ(cache.count[0].item<int64_t>(), short_prompt + steps) << what;
    EXPECT_EQ(cache.count[1].item<int64_t>(), prompt + steps) << what;
  }
}

TEST_F(GenerateTest, CachedForwardMatchesTheFullForwardForEachArchitecture) {
  for (const auto& [name, dir] : {std::pair<std::string, std::string>{"llama-gqa", suite_->llama},
                                  {"mistral-window-4", suite_->mistral},
                                  {"qwen2-bias", suite_->qwen2}}) {
    auto model = Load(dir);
    ASSERT_NE(model, nullptr) << name;
    ExpectCachedMatchesForward(*model, name);
  }
}

TEST_F(GenerateTest, CachedForwardMatchesTheFullForwardWithANonZeroAdapter) {
  for (const auto& [name, dir] : {std::pair<std::string, std::string>{"llama-gqa", suite_->llama},
                                  {"mistral-window-4", suite_->mistral}}) {
    LlamaOptions options;
    options.lora_rank = 4;
    options.lora_alpha = 8;
    options.target_modules = kLoraTargets;
    auto model = Load(dir, options);
    ASSERT_NE(model, nullptr) << name;
    RandomizeAdapter(*model, 3);
    ExpectCachedMatchesForward(*model, name + " + LoRA");
    // The adapter is seen: its logits are not the bare base's.
    auto bare = Load(dir, options);
    ASSERT_NE(bare, nullptr);
    torch::NoGradGuard no_grad;
    const torch::Tensor ids = Ids(RandomIds(6, model->config().vocab_size, 5));
    KvCache a, b;
    EXPECT_GT(MaxDiff(model->ForwardCached(ids, {}, a), bare->ForwardCached(ids, {}, b)), 1e-3) << name;
  }
}

TEST_F(GenerateTest, GreedyGenerationIsTheRepeatedArgmaxOfTheFullForward) {
  for (const std::string& dir : {suite_->llama, suite_->mistral}) {
    auto model = Load(dir);
    auto tok = LoadTokenizer(dir);
    ASSERT_TRUE(model && tok);
    SamplingOptions o;
    o.max_new_tokens = 20;
    o.stop_at_eos = false;
    std::string streamed;
    auto g = Generate(*model, *tok, kPrompt, o, [&](std::string_view piece) { streamed += piece; });
    ASSERT_TRUE(g.ok()) << g.status().ToString();
    EXPECT_EQ(g->prompt_ids, tok->Encode(kPrompt, true, false));
    ASSERT_EQ(g->new_ids.size(), 20u);
    EXPECT_EQ(g->stop_reason, "max_new_tokens");
    EXPECT_EQ(g->text, tok->Decode(g->new_ids));
    EXPECT_EQ(streamed, g->text);
    torch::NoGradGuard no_grad;
    std::vector<int64_t> ids = Wide(g->prompt_ids);
    for (size_t k = 0; k < g->new_ids.size(); ++k) {
      const torch::Tensor logits = model->Forward(Ids(ids), {})[0];
      const int64_t next = logits[static_cast<int64_t>(ids.size()) - 1].argmax().item<int64_t>();
      ASSERT_EQ(g->new_ids[k], next) << dir << ", token " << k;
      ids.push_back(next);
    }
  }
}

TEST_F(GenerateTest, SamplingIsReproducibleFromItsSeedAndATinyNucleusIsGreedy) {
  auto model = Load(suite_->llama);
  auto tok = LoadTokenizer(suite_->llama);
  ASSERT_TRUE(model && tok);
  SamplingOptions o;
  o.max_new_tokens = 16;
  o.stop_at_eos = false;
  o.temperature = 1.0;
  o.seed = 42;
  auto a = Generate(*model, *tok, kPrompt, o);
  auto b = Generate(*model, *tok, kPrompt, o);
  o.seed = 43;
  auto c = Generate(*model, *tok, kPrompt, o);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(a->new_ids, b->new_ids);
  EXPECT_EQ(a->text, b->text);
  EXPECT_NE(a->new_ids, c->new_ids);

  SamplingOptions greedy;
  greedy.max_new_tokens = 16;
  greedy.stop_at_eos = false;
  auto want = Generate(*model, *tok, kPrompt, greedy);
  ASSERT_TRUE(want.ok());
  o.top_p = 1e-9;
  for (uint64_t seed : {1u, 2u, 3u}) {
    o.seed = seed;
    auto nucleus = Generate(*model, *tok, kPrompt, o);
    ASSERT_TRUE(nucleus.ok());
    EXPECT_EQ(nucleus->new_ids, want->new_ids) << "seed " << seed;
  }
}

TEST_F(GenerateTest, SampleTokenDrawsFromTheRenormalisedNucleus) {
  // p = 0.5, 0.3, 0.15, 0.05: top_p 0.7 keeps ids 0 and 1 (0.5 < 0.7 <= 0.8), renormalised
  // to 0.625 / 0.375.
  const torch::Tensor logits = torch::tensor({0.5, 0.3, 0.15, 0.05}, torch::kFloat).log();
  SamplingOptions o;
  o.temperature = 1;
  o.top_p = 0.7;
  std::mt19937_64 rng(9);
  std::vector<int> counts(4, 0);
  constexpr int kDraws = 4000;
  for (int i = 0; i < kDraws; ++i) {
    auto id = SampleToken(logits, o, rng);
    ASSERT_TRUE(id.ok()) << id.status().ToString();
    ++counts[static_cast<size_t>(*id)];
  }
  EXPECT_EQ(counts[2] + counts[3], 0);
  EXPECT_NEAR(counts[0] / static_cast<double>(kDraws), 0.625, 0.04);
  // The whole distribution: every id comes up, in proportion.
  o.top_p = 1;
  counts.assign(4, 0);
  for (int i = 0; i < kDraws; ++i) ++counts[static_cast<size_t>(*SampleToken(logits, o, rng))];
  EXPECT_NEAR(counts[1] / static_cast<double>(kDraws), 0.3, 0.04);
  EXPECT_NEAR(counts[3] / static_cast<double>(kDraws), 0.05, 0.02);
  // Greedy takes the argmax and leaves the generator alone.
  o.temperature = 0;
  std::mt19937_64 before = rng;
  EXPECT_EQ(*SampleToken(logits, o, rng), 0);
  EXPECT_EQ(rng, before);
  // A non-finite logit is an error, not a draw.
  const torch::Tensor bad = torch::tensor({0.0f, std::numeric_limits<float>::quiet_NaN()});
  EXPECT_EQ(SampleToken(bad, o, rng).status().code(), Code::kInternal);
}

TEST_F(GenerateTest, GenerationStopsAtEos) {
  auto model = Load(suite_->llama);
  auto tok = LoadTokenizer(suite_->llama);
  ASSERT_TRUE(model && tok);
  SamplingOptions o;
  o.max_new_tokens = 12;
  o.stop_at_eos = false;
  auto free_run = Generate(*model, *tok, kPrompt, o);
  ASSERT_TRUE(free_run.ok());
  // Make the k-th greedy token (one that does not come earlier) the EOS of a tokenizer copy.
  size_t k = 1;
  while (k < free_run->new_ids.size() &&
         std::find(free_run->new_ids.begin(), free_run->new_ids.begin() + static_cast<ptrdiff_t>(k),
                   free_run->new_ids[k]) != free_run->new_ids.begin() + static_cast<ptrdiff_t>(k)) {
    ++k;
  }
  ASSERT_LT(k, free_run->new_ids.size());
  const int32_t eos = free_run->new_ids[k];
  ASSERT_NE(eos, tok->bos_id());
  const std::string copy = suite_->dir->path("eos-" + std::to_string(eos));
  fs::create_directories(copy);
  for (const char* file : {"tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"}) {
    fs::copy_file(suite_->llama + "/" + file, copy + "/" + file, fs::copy_options::overwrite_existing);
  }
  std::ifstream in(suite_->llama + "/config.json");
  nlohmann::json config = nlohmann::json::parse(in);
  config["eos_token_id"] = eos;
  std::ofstream(copy + "/config.json") << config.dump(2);
  auto eos_tok = LoadTokenizer(copy);
  ASSERT_NE(eos_tok, nullptr);
  ASSERT_EQ(eos_tok->eos_id(), eos);

  o.stop_at_eos = true;
  std::string streamed;
  auto stopped = Generate(*model, *eos_tok, kPrompt, o, [&](std::string_view piece) { streamed += piece; });
  ASSERT_TRUE(stopped.ok()) << stopped.status().ToString();
  EXPECT_EQ(stopped->stop_reason, "eos");
  EXPECT_EQ(stopped->new_ids,
            std::vector<int32_t>(free_run->new_ids.begin(), free_run->new_ids.begin() + static_cast<ptrdiff_t>(k + 1)));
  EXPECT_EQ(stopped->text, eos_tok->Decode(stopped->new_ids));
  EXPECT_EQ(streamed, stopped->text);
  // Without stop_at_eos it runs on past it.
  o.stop_at_eos = false;
  auto on = Generate(*model, *eos_tok, kPrompt, o);
  ASSERT_TRUE(on.ok());
  EXPECT_EQ(on->new_ids, free_run->new_ids);
  EXPECT_EQ(on->stop_reason, "max_new_tokens");
}

TEST_F(GenerateTest, GenerationStopsAtTheModelsPositionLimit) {
  auto model = Load(suite_->short_context);
  auto tok = LoadTokenizer(suite_->short_context);
  ASSERT_TRUE(model && tok);
  SamplingOptions o;
  o.max_new_tokens = 100;
  o.stop_at_eos = false;
  auto g = Generate(*model, *tok, kPrompt, o);
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_EQ(g->stop_reason, "max_position_embeddings");
  EXPECT_EQ(static_cast<int64_t>(g->prompt_ids.size() + g->new_ids.size()), kShortMaxPositions);
  // An empty prompt starts from BOS alone.
  auto from_bos = Generate(*model, *tok, "", o);
  ASSERT_TRUE(from_bos.ok()) << from_bos.status().ToString();
  EXPECT_EQ(from_bos->prompt_ids, std::vector<int32_t>{tok->bos_id()});
  EXPECT_EQ(static_cast<int64_t>(from_bos->new_ids.size()), kShortMaxPositions - 1);
  // A prompt that fills the context leaves no room.
  std::string long_prompt;
  for (int i = 0; i < 20; ++i) long_prompt += "the river rose ";
  auto too_long = Generate(*model, *tok, long_prompt, o);
  EXPECT_EQ(too_long.status().code(), Code::kInvalidArgument);
  EXPECT_NE(too_long.status().message().find("max_position_embeddings"), std::string::npos)
      << too_long.status().ToString();
}

TEST_F(GenerateTest, BadSamplingOptionsAreRefused) {
  auto model = Load(suite_->short_context);
  auto tok = LoadTokenizer(suite_->short_context);
  ASSERT_TRUE(model && tok);
  struct Case {
    std::string what;
    SamplingOptions o;
  };
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  const std::vector<Case> cases = {
      {"max_new_tokens", {.max_new_tokens = 0}},
      {"temperature", {.temperature = -0.5}},
      {"temperature", {.temperature = nan}},
      {"temperature", {.temperature = inf}},
      {"top_p", {.temperature = 1, .top_p = 0}},
      {"top_p", {.temperature = 1, .top_p = 1.5}},
      {"top_p", {.temperature = 1, .top_p = nan}},
      {"top_p", {.top_p = -1}},
  };
  for (const auto& c : cases) {
    auto g = Generate(*model, *tok, kPrompt, c.o);
    ASSERT_FALSE(g.ok()) << c.what;
    EXPECT_EQ(g.status().code(), Code::kInvalidArgument) << g.status().ToString();
    EXPECT_NE(g.status().message().find(c.what), std::string::npos) << g.status().ToString();
    EXPECT_EQ(ValidateSampling(c.o).code(), Code::kInvalidArgument) << c.what;
  }
  EXPECT_TRUE(ValidateSampling({}).ok());
}

// Score's NLLs against -log_softmax of Forward over each window [BOS] + up to
// max_position_embeddings - 1 tokens of the text.
void ExpectScoreMatchesForward(LlamaModel& model, const Tokenizer& tok, const std::string& text,
                               size_t want_windows, const std::string& what) {
  auto score = Score(model, tok, text);
  ASSERT_TRUE(score.ok()) << what << ": " << score.status().ToString();
  const std::vector<int32_t> ids = tok.Encode(text, false, false);
  ASSERT_EQ(score->tokens.size(), ids.size()) << what;
  const size_t span = static_cast<size_t>(model.config().max_positions) - 1;
  size_t windows = 0;
  double sum = 0;
  torch::NoGradGuard no_grad;
  for (size_t first = 0; first < ids.size(); first += span, ++windows) {
    std::vector<int64_t> window = {tok.bos_id()};
    for (size_t i = first; i < std::min(ids.size(), first + span); ++i) window.push_back(ids[i]);
    const torch::Tensor logp = torch::log_softmax(model.Forward(Ids(window), {})[0], -1);
    for (size_t j = 1; j < window.size(); ++j) {
      const TokenScore& got = score->tokens[first + j - 1];
      EXPECT_EQ(got.id, window[j]) << what;
      EXPECT_EQ(got.piece, tok.Piece(got.id)) << what;
      const double want = -logp[static_cast<int64_t>(j) - 1][window[j]].item<double>();
      EXPECT_NEAR(got.nll, want, 1e-4) << what << ", token " << first + j - 1;
      sum += got.nll;
    }
  }
  EXPECT_EQ(windows, want_windows) << what;
  EXPECT_NEAR(score->mean_nll, sum / static_cast<double>(ids.size()), 1e-9) << what;
  EXPECT_NEAR(score->perplexity, std::exp(score->mean_nll), 1e-9 * score->perplexity) << what;
}

TEST_F(GenerateTest, ScoreGivesTheNllOfEachTokenAndThePerplexity) {
  {
    auto model = Load(suite_->llama);
    auto tok = LoadTokenizer(suite_->llama);
    ASSERT_TRUE(model && tok);
    ExpectScoreMatchesForward(*model, *tok, kScoredText, 1, "one window");
    EXPECT_EQ(Score(*model, *tok, "").status().code(), Code::kInvalidArgument);
  }
  {
    auto model = Load(suite_->short_context);
    auto tok = LoadTokenizer(suite_->short_context);
    ASSERT_TRUE(model && tok);
    const size_t n = tok->Encode(kScoredText, false, false).size();
    ASSERT_GT(n, 2 * static_cast<size_t>(kShortMaxPositions));
    const size_t span = kShortMaxPositions - 1;
    ExpectScoreMatchesForward(*model, *tok, kScoredText, (n + span - 1) / span, "windows");
  }
}

}  // namespace
}  // namespace fedlora::worker::lm
