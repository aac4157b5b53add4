// `fedlora run --task lm`: a real federation (broker, aggregator and workers on loopback)
// fine-tuning a Llama-family checkpoint in the Hugging Face layout on text files, under every
// method in FedBuff, FedAsync and sync, and with both kinds of differential privacy. The
// checkpoint and its SentencePiece tokenizer come from the reference tool
// (tests/lm/reference/hf_checkpoint.py); the text is written here, three sources of different
// vocabulary so that the non-IID split has something to split.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "tests/testing/fixtures.h"
#include "tests/testing/process.h"
#include "tests/testing/python.h"

namespace fedlora {
namespace {

using nlohmann::json;
using testing::Quote;
using testing::RunCapture;
using testing::RunPython;
using testing::ReferenceTool;

constexpr const char* kBinary = FEDLORA_BINARY;

// Paragraphs of seeded sentences over a source's own words.
void WriteSource(const std::string& path, const std::vector<std::string>& words, uint64_t seed, int paragraphs) {
  std::mt19937_64 rng(seed);
  std::ofstream out(path);
  for (int p = 0; p < paragraphs; ++p) {
    for (int w = 0; w < 14; ++w) out << (w ? " " : "") << words[rng() % words.size()];
    out << ".\n\n";
  }
}

class LmRun : public ::testing::TestWithParam<std::tuple<std::string, std::string, std::string>> {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    std::filesystem::create_directories(dir_->path("text"));
    WriteSource(dir_->path("text/sea"), {"the", "sea", "wave", "ship", "salt", "wind", "sails", "blue", "deep"}, 1, 60);
    WriteSource(dir_->path("text/wood"), {"the", "oak", "leaf", "bark", "moss", "fern", "green", "root", "owl"}, 2, 60);
    WriteSource(dir_->path("text/town"), {"a", "street", "shop", "bell", "bread", "market", "door", "lamp"}, 3, 60);
    std::ofstream all(dir_->path("all.txt"));
    for (const char* s : {"sea", "wood", "town"}) all << std::ifstream(dir_->path(std::string("text/") + s)).rdbuf();
    all.close();
    // One interpreter for both: importing torch is most of the cost.
    auto made = testing::RunReferenceToolBatch(
        "hf_checkpoint.py",
        {{"train-tokenizer", "--text", dir_->path("all.txt"), "--vocab", "320", "--out", dir_->path("tokenizer.model")},
         {"make", "--out", dir_->path("ckpt"), "--arch", "llama", "--hidden", "32", "--layers", "2", "--heads", "4",
          "--kv-heads", "2", "--intermediate", "48", "--vocab", "320", "--seed", "5", "--tie", "1", "--dtype", "F32",
          "--std", "0.3", "--tokenizer-model", dir_->path("tokenizer.model")}});
    ASSERT_TRUE(made.ok()) << made.status().ToString();
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }

  // Runs the federation to version `versions` and returns the summary.
  static json Run(const std::string& name, const std::string& flags, int versions, std::string* out,
                  int local_steps = 4) {
    const std::string store = dir_->path(name);
    int rc = -1;
    *out = RunCapture(std::string(kBinary) + " run --task lm --base " + Quote(dir_->path("ckpt")) + " --text " +
                          Quote(dir_->path("text")) + " --seq-len 24 --workers 3 --speeds 1 --local-steps " + std::to_string(local_steps) +
                          " --batch-size 8 --lr 0.01 --eval-every 1 --buffer-size 3 --duration 240 --max-versions " +
                          std::to_string(versions) + " " + flags + " --store " + Quote(store) + " --summary " +
                          Quote(store + "/summary.json") + " 2>&1",
                      &rc);
    EXPECT_EQ(rc, 0) << *out;
    std::ifstream in(store + "/summary.json");
    return json::parse(in, nullptr, false);
  }

  static testing::TempDir* dir_;
};
testing::TempDir* LmRun::dir_ = nullptr;

// Flags that make each method exercise its distinctive path within two versions.
std::string MethodFlags(const std::string& method) {
  if (method == "lora-a2") return " --phase-length 1 --rank-budget 1";
  if (method == "sa-fedlora") return " --initiating-versions 1 --heating-until 0 --cooling-until 1 --min-budget 2";
  if (method == "hetlora" || method == "flora") return " --ranks 2,4,8";
  if (method == "flasc") return " --upload-density 0.1 --download-density 0.5";
  return "";
}

TEST_P(LmRun, CommitsVersionsFoldingEveryUpdate) {
  const auto& [method, mode, privacy] = GetParam();
  std::string flags = "--method " + method + " --mode " + mode + MethodFlags(method);
  if (privacy == "record") flags += " --dp-noise 0.5 --dp-clip 1";
  if (privacy == "client") flags += " --client-dp-noise 0.3 --client-dp-clip 1";
  std::string out;
  const json summary = Run(method + "-" + mode + "-" + privacy, flags, 2, &out);
  ASSERT_FALSE(summary.is_discarded()) << out;
  EXPECT_EQ(summary["task"], "lm");
  EXPECT_EQ(summary["stop_reason"], "final version committed") << out;
  EXPECT_EQ(summary["final_version"], 2u);
  EXPECT_EQ(summary["method"], method);
  EXPECT_GE(summary["updates_folded"].get<uint64_t>(), 2u);
  EXPECT_EQ(summary["updates_dropped"].get<uint64_t>(), 0u) << out;
  // The summary reports the task's metric before and after.
  const double base = summary["base_perplexity"].get<double>(), final_ppl = summary["final_perplexity"].get<double>();
  EXPECT_TRUE(std::isfinite(base) && base > 1.0) << out;
  EXPECT_TRUE(std::isfinite(final_ppl) && final_ppl > 1.0) << out;
  EXPECT_NE(out.find("perplexity"), std::string::npos) << out;
  if (privacy == "record") {
    EXPECT_NE(out.find("record-level DP-SGD"), std::string::npos) << out;
  }
  if (privacy == "client") {
    EXPECT_NE(out.find("client-level DP"), std::string::npos) << out;
  }
}

std::vector<std::tuple<std::string, std::string, std::string>> Cases() {
  std::vector<std::tuple<std::string, std::string, std::string>> cases;
  for (const char* m : {"fedavg", "ffa", "flasc", "lora-a2", "sa-fedlora", "hetlora", "flora", "fedsa", "as-lora", "full"}) {
    cases.emplace_back(m, "fedbuff", "none");
  }
  cases.emplace_back("fedavg", "fedasync", "none");
  cases.emplace_back("fedavg", "sync", "none");
  cases.emplace_back("fedavg", "fedbuff", "record");
  cases.emplace_back("fedavg", "fedbuff", "client");
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Methods, LmRun, ::testing::ValuesIn(Cases()), [](const auto& info) {
  std::string name = std::get<0>(info.param) + "_" + std::get<1>(info.param) + "_" + std::get<2>(info.param);
  for (char& c : name) {
    if (c == '-') c = '_';
  }
  return name;
});

// Long enough to learn: the perplexity on held-out text falls well below the random base's.
TEST_F(LmRun, FineTuningLowersTheHeldOutPerplexity) {
  std::string out;
  const json summary = Run("learn", "--method fedavg --mode fedbuff", 8, &out, /*local_steps=*/10);
  ASSERT_FALSE(summary.is_discarded()) << out;
  EXPECT_LT(summary["final_perplexity"].get<double>(), 0.7 * summary["base_perplexity"].get<double>()) << out;
  EXPECT_GT(summary["final_accuracy"].get<double>(), summary["base_accuracy"].get<double>()) << out;
}

// The adapter a run trained, exported for PEFT, merged into the base by the independent
// reference (llama_reference.py merge-peft): the merged model scores a text exactly as fedlora
// scores it with base + adapter; imported back, the adapter scores it the same again.
TEST_F(LmRun, AnExportedAdapterMergedByTheReferenceScoresTheSameAndImportsBack) {
  std::string out;
  const json summary = Run("export", "--method fedavg --mode fedbuff --target-modules q_proj,v_proj,o_proj,down_proj",
                           3, &out);
  ASSERT_FALSE(summary.is_discarded()) << out;
  const std::string store = dir_->path("export"), ckpt = dir_->path("ckpt");
  int rc = -1;
  out = RunCapture(std::string(kBinary) + " export --store " + Quote(store) + " --base " + Quote(ckpt) + " --out " +
                       Quote(dir_->path("peft")) + " 2>&1",
                   &rc);
  ASSERT_EQ(rc, 0) << out;
  std::ifstream config_file(dir_->path("peft/adapter_config.json"));
  const json config = json::parse(config_file, nullptr, false);
  EXPECT_EQ(config["peft_type"], "LORA");
  EXPECT_EQ(config["task_type"], "CAUSAL_LM");
  EXPECT_EQ(config["base_model_name_or_path"], std::filesystem::absolute(ckpt).lexically_normal().string());
  EXPECT_EQ(config["target_modules"], json({"q_proj", "v_proj", "o_proj", "down_proj"}));
  auto merged = RunPython({ReferenceTool("llama_reference.py"), "merge-peft", "--model", ckpt, "--adapter",
                           dir_->path("peft"), "--out", dir_->path("merged")});
  ASSERT_TRUE(merged.ok()) << merged.status().ToString();

  std::ofstream(dir_->path("score.txt")) << "the sea wave ship salt wind sails blue deep.\n";
  const auto score = [&](const std::string& args) {
    int code = -1;
    const std::string text =
        RunCapture(std::string(kBinary) + " score " + args + " --text " + Quote(dir_->path("score.txt")) + " --json", &code);
    EXPECT_EQ(code, 0) << text;
    return json::parse(text, nullptr, false);
  };
  const json trained = score("--base " + Quote(ckpt) + " --store " + Quote(store));
  const json bare = score("--base " + Quote(ckpt));
  const json reference = score("--base " + Quote(dir_->path("merged")));
  ASSERT_FALSE(trained.is_discarded() || bare.is_discarded() || reference.is_discarded());
  ASSERT_EQ(trained["tokens"].size(), reference["tokens"].size());
  EXPECT_GT(std::abs(trained["mean_nll"].get<double>() - bare["mean_nll"].get<double>()), 1e-2)
      << "the adapter must change the scores for the comparison to mean anything";
  for (size_t i = 0; i < trained["tokens"].size(); ++i) {
    EXPECT_NEAR(trained["tokens"][i]["nll"].get<double>(), reference["tokens"][i]["nll"].get<double>(), 1e-3) << i;
  }

  out = RunCapture(std::string(kBinary) + " import --in " + Quote(dir_->path("peft")) + " --adapter imported --store " +
                       Quote(dir_->path("imported")) + " 2>&1",
                   &rc);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("LlamaForCausalLM"), std::string::npos) << out;  // the architecture recorded at export
  const json imported = score("--base " + Quote(ckpt) + " --store " + Quote(dir_->path("imported")) + " --adapter imported");
  ASSERT_FALSE(imported.is_discarded());
  EXPECT_DOUBLE_EQ(imported["mean_nll"].get<double>(), trained["mean_nll"].get<double>());
}

// A language model's stored run replays bit for bit from its log, and the replay evaluates
// on the checkpoint and the original's held-out text to the original's figure.
TEST_F(LmRun, AStoredRunReplaysBitForBitAndEvaluatesOnItsCheckpoint) {
  std::string out;
  const json summary = Run("replayed", "--method fedavg --mode fedbuff", 3, &out);
  ASSERT_FALSE(summary.is_discarded()) << out;
  int rc = -1;
  out = RunCapture(std::string(kBinary) + " replay --log " + Quote(dir_->path("replayed")) + " --out " +
                       Quote(dir_->path("replay-out")) + " --base " + Quote(dir_->path("ckpt")) + " --text " +
                       Quote(dir_->path("text")) + " --seq-len 24 --json 2>/dev/null",
                   &rc);
  ASSERT_EQ(rc, 0) << out;
  const json report = json::parse(out, nullptr, false);
  ASSERT_FALSE(report.is_discarded()) << out;
  EXPECT_EQ(report["last_version"], 3u);
  EXPECT_EQ(report["identical"], report["compared"]);
  EXPECT_TRUE(report["first_difference"].is_null());
  ASSERT_FALSE(report["last_accuracy"].is_null()) << out;
  EXPECT_NEAR(report["last_accuracy"].get<double>(), summary["final_accuracy"].get<double>(), 1e-6);
  // Without the checkpoint the replay still rebuilds every version, and says why it did not evaluate.
  out = RunCapture(std::string(kBinary) + " replay --log " + Quote(dir_->path("replayed")) + " --out " +
                       Quote(dir_->path("replay-bare")) + " 2>&1",
                   &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("give --base DIR"), std::string::npos) << out;
}

// A missing checkpoint, an image-only option or a checkpoint without a tokenizer: a clear
// error and a non-zero exit, nothing written.
TEST_F(LmRun, BadInputsAreRefusedClearly) {
  int rc = 0;
  // Without --base a role uses fedlora's own model of the store, and says how to make it.
  std::string out = RunCapture(std::string(kBinary) + " aggregator --task lm --store " + Quote(dir_->path("nobase")) + " 2>&1", &rc);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("fedlora pretrain --task lm"), std::string::npos) << out;
  EXPECT_NE(out.find("--base"), std::string::npos) << out;
  out = RunCapture(std::string(kBinary) + " run --task lm --base " + Quote(dir_->path("missing")) + " --store " +
                       Quote(dir_->path("missing-store")) + " 2>&1",
                   &rc);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find(dir_->path("missing")), std::string::npos) << out;
  std::filesystem::create_directories(dir_->path("notok"));
  for (const char* f : {"config.json", "model.safetensors"}) {
    std::filesystem::copy_file(dir_->path("ckpt") + "/" + f, dir_->path("notok") + "/" + f);
  }
  out = RunCapture(std::string(kBinary) + " run --task lm --base " + Quote(dir_->path("notok")) + " --text " +
                       Quote(dir_->path("text")) + " --store " + Quote(dir_->path("notok-store")) + " 2>&1",
                   &rc);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("tokenizer"), std::string::npos) << out;
}

}  // namespace
}  // namespace fedlora
