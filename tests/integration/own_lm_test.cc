// fedlora's own language model end to end, as a fresh machine runs it: `fedlora pretrain --task
// lm` makes a (tiny) Llama and its tokenizer from Debian's dict-gcide into the store, and
// `fedlora run --task lm-finetune` without --base fine-tunes it federated on Debian's fortunes,
// split by category; the perplexity on the held-out fortunes falls, and replay evaluates on the
// same model without being told where it is; `run --task text-classify` fine-tunes the same
// model as a classifier of WordNet's glosses. Also the errors: no dictionary, no model for a role.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/testing/fixtures.h"
#include "tests/testing/process.h"

namespace fedlora {
namespace {

using nlohmann::json;
using testing::Quote;
using testing::RunCapture;

constexpr const char* kBinary = FEDLORA_BINARY;
constexpr const char* kGcide = "/usr/share/dictd/gcide.dict.dz";
constexpr const char* kFortunes = "/usr/share/games/fortunes";
constexpr const char* kWordNet = "/usr/share/wordnet";

bool Installed() { return std::filesystem::exists(kGcide) && std::filesystem::is_directory(kFortunes); }

TEST(OwnLanguageModel, PretrainThenFederatedFineTuneOnFortunes) {
  // ops/install-deps.sh installs both packages; without them this test cannot run at all.
  ASSERT_TRUE(Installed()) << "install the Debian packages dict-gcide and fortunes (ops/install-deps.sh)";
  testing::TempDir dir;
  const std::string store = dir.path("store");
  int rc = -1;
  std::string out = RunCapture(std::string(kBinary) + " pretrain --task lm --size tiny --steps 150 --max-documents 4000 --threads 1 "
                                                      "--store " + Quote(store) + " 2>&1",
                               &rc);
  ASSERT_EQ(rc, 0) << out;
  const std::string model = store + "/base/fedlora-lm";
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json",
                        "fedlora_pretrain.json"}) {
    EXPECT_TRUE(std::filesystem::is_regular_file(model + "/" + f)) << f;
  }
  EXPECT_NE(out.find("held-out perplexity"), std::string::npos) << out;
  std::ifstream rec(model + "/fedlora_pretrain.json");
  const json record = json::parse(rec);
  EXPECT_LT(record["held_out_perplexity"].get<double>(), 0.5 * record["initial_held_out_perplexity"].get<double>())
      << record.dump();
  // A second pretrain keeps the model.
  out = RunCapture(std::string(kBinary) + " pretrain --task lm --size tiny --store " + Quote(store) + " 2>&1", &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("already exists"), std::string::npos) << out;

  // Federated fine-tuning of that model on fortunes, every category a source, no --base.
  const std::string summary_path = dir.path("summary.json");
  out = RunCapture(std::string(kBinary) + " run --task lm-finetune --store " + Quote(store) +
                       " --examples-per-source 12 --seq-len 64 --workers 4 --speeds 1,2 --max-versions 12 "
                       "--duration 240 --method fedavg --mode fedbuff --buffer-size 2 --local-steps 6 --batch-size 8 "
                       "--lr 0.001 --eval-every 3 --summary " + Quote(summary_path) + " 2>&1",
                   &rc);
  ASSERT_EQ(rc, 0) << out;
  std::ifstream in(summary_path);
  const json summary = json::parse(in);
  EXPECT_GE(summary["final_version"].get<uint64_t>(), 12u) << out;
  const double base_ppl = summary["base_perplexity"].get<double>(), final_ppl = summary["final_perplexity"].get<double>();
  EXPECT_TRUE(std::isfinite(base_ppl) && base_ppl > 1.0) << out;
  EXPECT_LT(final_ppl, base_ppl) << out;
  // Each client's perplexity on its own category mix, from the global model's per-category losses.
  ASSERT_EQ(summary["client_perplexities"].size(), 4u) << summary.dump();
  for (const auto& p : summary["client_perplexities"]) {
    EXPECT_TRUE(std::isfinite(p.get<double>()) && p.get<double>() > 1.0) << summary.dump();
  }
  // Each category's held-out perplexity, base and final: every category with held-out text is
  // there, and the fine-tuning lowers their geometric mean (each category counted once, however
  // much text it has). How many categories fall is not asserted: with this test's 0.13M model and
  // a dozen examples per category it varied from 19 to 35 of 43 across runs (asynchronous order),
  // while the mean log ratio stayed between -0.04 and -0.09 at --lr 0.003 and 6 versions, and
  // -0.075 to -0.094 at the --lr 0.001 and 12 versions used here. The README's run of the default
  // model lowers all 43.
  const auto& sources = summary["source_perplexities"];
  ASSERT_GE(sources.size(), 2u) << summary.dump();
  double log_ratio = 0.0;
  for (const auto& [name, p] : sources.items()) {
    const double base = p["base"].get<double>(), final = p["final"].get<double>();
    ASSERT_TRUE(std::isfinite(base) && base > 1.0 && std::isfinite(final) && final > 1.0) << name;
    log_ratio += std::log(final / base);
  }
  EXPECT_LT(log_ratio / static_cast<double>(sources.size()), -0.02) << summary.dump();
  EXPECT_NE(out.find("perplexity fell on"), std::string::npos) << out;

  // Replay finds the store's own model and evaluates on it.
  out = RunCapture(std::string(kBinary) + " replay --log " + Quote(store) + " --out " + Quote(dir.path("replayed")) +
                       " --examples-per-source 12 --seq-len 64 2>&1",
                   &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_EQ(out.find("not evaluated"), std::string::npos) << out;

  // generate and score use the store's own model when no --base is given.
  out = RunCapture(std::string(kBinary) + " generate --store " + Quote(store) +
                       " --prompt \"A fool\" --max-new-tokens 4 --threads 1 2>&1",
                   &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find(model), std::string::npos) << out;
  EXPECT_NE(out.find("version " + std::to_string(summary["final_version"].get<uint64_t>()) + " of adapter"),
            std::string::npos)
      << out;
  out = RunCapture(std::string(kBinary) + " generate --prompt x 2>&1", &rc);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("--base DIR"), std::string::npos) << out;

  // The same model as a classifier of WordNet's glosses into their 45 lexicographer classes,
  // split across workers by class.
  ASSERT_TRUE(std::filesystem::is_regular_file(std::string(kWordNet) + "/data.noun"))
      << "install the Debian package wordnet-base (ops/install-deps.sh)";
  const std::string classify_summary = dir.path("classify.json");
  out = RunCapture(std::string(kBinary) + " run --task text-classify --fresh --store " + Quote(store) +
                       " --examples-per-source 60 --dirichlet 100 --workers 4 --speeds 1,2 --max-versions 6 "
                       "--duration 240 --method fedavg --mode fedbuff --buffer-size 2 --local-steps 60 --batch-size 16 "
                       "--lr 0.005 --eval-every 3 --summary " + Quote(classify_summary) + " 2>&1",
                   &rc);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("WordNet's glosses"), std::string::npos) << out;
  std::ifstream cin(classify_summary);
  const json classify = json::parse(cin);
  EXPECT_EQ(classify["task"], "text-classify");
  EXPECT_TRUE(classify["base_perplexity"].is_null()) << classify.dump();
  EXPECT_GE(classify["final_version"].get<uint64_t>(), 6u) << out;
  // 45 classes: chance is 0.022. The tiny model of this test learns slowly (fedlora's default
  // model reaches 0.27 in five minutes, README.md), but within this budget the head and LoRA
  // must lower the held-out cross-entropy; the accuracy on 267 glosses (gains of 1 to 4 points
  // in this budget, a standard error of about 1) must not fall.
  const double base_acc = classify["base_accuracy"].get<double>(), final_acc = classify["final_accuracy"].get<double>();
  EXPECT_LT(classify["final_loss"].get<double>(), classify["base_loss"].get<double>() - 0.05) << out;
  EXPECT_GE(final_acc, base_acc) << out;
  ASSERT_EQ(classify["client_accuracies"].size(), 4u);
  for (const auto& a : classify["client_accuracies"]) EXPECT_GT(a.get<double>(), 0.0) << out;
  // Replay knows the adapter is a classifier and evaluates it on the glosses.
  out = RunCapture(std::string(kBinary) + " replay --log " + Quote(store) + " --out " + Quote(dir.path("replayed-cls")) +
                       " --examples-per-source 60 2>&1",
                   &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_EQ(out.find("not evaluated"), std::string::npos) << out;
}

TEST(OwnLanguageModel, ClearErrorsWithoutDictionaryOrModel) {
  testing::TempDir dir;
  int rc = 0;
  std::string out = RunCapture(std::string(kBinary) + " pretrain --task lm --size tiny --dict " +
                                   Quote(dir.path("none.dict.dz")) + " --store " + Quote(dir.path("s")) + " 2>&1",
                               &rc);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("dict-gcide"), std::string::npos) << out;
  EXPECT_FALSE(std::filesystem::exists(dir.path("s") + "/base/fedlora-lm"));
  out = RunCapture(std::string(kBinary) + " pretrain --task lm --size huge --store " + Quote(dir.path("s")) + " 2>&1",
                   &rc);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("tiny, small, base"), std::string::npos) << out;
  // A role does not make the model: it says which command does.
  out = RunCapture(std::string(kBinary) + " worker --index 0 --task lm-finetune --store " + Quote(dir.path("empty")) + " 2>&1",
                   &rc);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("fedlora pretrain --task lm"), std::string::npos) << out;
}

}  // namespace
}  // namespace fedlora
