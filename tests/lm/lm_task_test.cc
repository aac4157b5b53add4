// The language model as a worker::Model: next-token losses, evaluation sums, DP-SGD's
// per-example gradients, full fine-tuning over the mapped checkpoint, local training on text,
// and the refusals of data and options that do not fit. Checkpoints come from the reference
// tool (tests/lm/reference/hf_checkpoint.py).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "tests/testing/fixtures.h"
#include "tests/lm/lm_testing.h"
#include "tests/testing/python.h"
#include "worker/lm/llama.h"
#include "worker/train.h"

namespace fedlora::worker::lm {
namespace {

namespace fs = std::filesystem;
using testing::ReferenceTool;
using testing::RunPython;

std::string MakeCheckpoint(const testing::TempDir& dir, const std::string& name, std::vector<std::string> args = {}) {
  const std::string out = dir.path(name);
  std::vector<std::string> all = {ReferenceTool("hf_checkpoint.py"), "make", "--out", out, "--vocab", "64",
                                  "--seed", "3", "--arch", "llama", "--hidden", "32", "--layers", "2", "--heads",
                                  "4", "--kv-heads", "2", "--intermediate", "48", "--tie", "0", "--dtype", "F32"};
  all.insert(all.end(), args.begin(), args.end());
  auto r = RunPython(all);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return out;
}

std::unique_ptr<LlamaModel> Load(const std::string& dir, LlamaOptions options = {}) {
  return LoadTestModel(dir, options);
}

// A text dataset of the given token sequences, one label per sequence.
Dataset Text(const std::vector<std::vector<int32_t>>& sequences, std::vector<uint8_t> labels = {}) {
  Dataset d;
  d.offsets.push_back(0);
  for (size_t i = 0; i < sequences.size(); ++i) {
    d.tokens.insert(d.tokens.end(), sequences[i].begin(), sequences[i].end());
    d.offsets.push_back(d.tokens.size());
    d.labels.push_back(labels.empty() ? 0 : labels[i]);
  }
  d.num_classes = 1 + (labels.empty() ? 0 : *std::max_element(labels.begin(), labels.end()));
  return d;
}

const std::vector<std::vector<int32_t>> kSequences = {{1, 5, 9, 20, 17, 3, 44}, {1, 7, 2}, {1, 50, 4, 4, 4, 61, 12, 19, 2, 30}};

// Each example alone, without padding: the mean over t of -log p(x_{t+1} | x_{<=t}).
std::vector<double> NllByHand(LlamaModel& model, const std::vector<std::vector<int32_t>>& sequences) {
  torch::NoGradGuard no_grad;
  std::vector<double> out;
  for (const auto& s : sequences) {
    const torch::Tensor ids = torch::tensor(std::vector<int64_t>(s.begin(), s.end()), torch::kLong).unsqueeze(0);
    const torch::Tensor logp = torch::log_softmax(model.Forward(ids)[0], -1);
    double sum = 0;
    for (size_t t = 0; t + 1 < s.size(); ++t) sum -= logp[static_cast<int64_t>(t)][s[t + 1]].item<double>();
    out.push_back(sum / static_cast<double>(s.size() - 1));
  }
  return out;
}

std::string FileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

TEST(LmTaskTest, EachExamplesLossIsItsMeanNextTokenNllWhateverThePadding) {
  testing::TempDir dir;
  auto model = Load(MakeCheckpoint(dir, "m"));
  ASSERT_NE(model, nullptr);
  const Dataset data = Text(kSequences);
  ASSERT_TRUE(model->CheckData(data).ok());
  const Batch batch = model->MakeBatch(data, {0, 1, 2});
  ASSERT_EQ(batch.inputs.sizes(), (std::vector<int64_t>{3, 10}));
  EXPECT_EQ(batch.mask.sum().item<int64_t>(), 7 + 3 + 10);
  const std::vector<double> want = NllByHand(*model, kSequences);
  const torch::Tensor losses = model->Losses(batch);
  const BatchScore score = model->Score(batch);
  for (int64_t i = 0; i < 3; ++i) {
    EXPECT_NEAR(losses[i].item<double>(), want[static_cast<size_t>(i)], 1e-5) << i;
    EXPECT_EQ(score.count[i].item<double>(), static_cast<double>(kSequences[static_cast<size_t>(i)].size() - 1));
    EXPECT_NEAR(score.loss_sum[i].item<double>(), want[static_cast<size_t>(i)] * score.count[i].item<double>(), 1e-4);
    EXPECT_LE(score.correct[i].item<double>(), score.count[i].item<double>());
  }
  // Evaluate pools tokens: its loss is the token-weighted mean, its predictions the tokens.
  const EvalResult r = Evaluate(*model, data);
  EXPECT_EQ(r.predictions, 6u + 2u + 9u);
  EXPECT_NEAR(r.loss, (want[0] * 6 + want[1] * 2 + want[2] * 9) / 17.0, 1e-5);
  // A random model over 64 tokens is close to uniform: perplexity near the vocabulary size.
  EXPECT_GT(std::exp(r.loss), 20.0);
  EXPECT_LT(std::exp(r.loss), 200.0);
}

TEST(LmTaskTest, PerExampleGradientsEqualEachExamplesOwnBackward) {
  testing::TempDir dir;
  LlamaOptions options;
  options.lora_rank = 4;
  options.target_modules = {"q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"};
  auto model = Load(MakeCheckpoint(dir, "m"), options);
  ASSERT_NE(model, nullptr);
  // A non-zero B, so that A's gradient is not zero.
  AdapterState state = model->ExportAdapter();
  for (size_t t = 0; t < state.tensors.size(); ++t) {
    if (model->Spec().tensors[t].role != TensorRole::kLoraB) continue;
    for (size_t i = 0; i < state.tensors[t].values.size(); ++i) state.tensors[t].values[i] = 0.01f * ((i % 7) - 3.0f);
  }
  ASSERT_TRUE(model->LoadAdapter(state).ok());
  const Dataset data = Text(kSequences);
  torch::Tensor losses;
  auto per_example = model->PerExampleGradients(model->MakeBatch(data, {0, 1, 2}), &losses);
  ASSERT_TRUE(per_example.ok()) << per_example.status().ToString();
  std::vector<torch::Tensor> tensors = model->AdapterTensors();
  ASSERT_EQ(per_example->size(), tensors.size());
  for (int64_t i = 0; i < 3; ++i) {
    for (auto& t : tensors) t.mutable_grad() = torch::Tensor();
    model->Losses(model->MakeBatch(data, {static_cast<size_t>(i)})).sum().backward();
    for (size_t t = 0; t < tensors.size(); ++t) {
      ASSERT_TRUE((*per_example)[t].defined()) << model->Spec().tensors[t].name;
      const torch::Tensor want = tensors[t].grad();
      const torch::Tensor got = (*per_example)[t][i];
      EXPECT_GT(want.abs().max().item<double>(), 0.0) << model->Spec().tensors[t].name;
      EXPECT_LT((got - want).abs().max().item<double>(), 1e-5 + 1e-3 * want.abs().max().item<double>())
          << model->Spec().tensors[t].name << ", example " << i;
    }
  }
  EXPECT_EQ(losses.size(0), 3);
}

TEST(LmTaskTest, FullFineTuningTrainsEveryWeightAndNeverWritesTheCheckpoint) {
  testing::TempDir dir;
  const std::string ckpt = MakeCheckpoint(dir, "m");
  const std::string before = FileBytes(ckpt + "/model.safetensors");
  LlamaOptions options;
  options.full = true;
  auto model = Load(ckpt, options);
  ASSERT_NE(model, nullptr);
  const AdapterSpec& spec = model->Spec();
  EXPECT_EQ(spec.rank, 0u);
  EXPECT_TRUE(spec.target_modules.empty());
  const auto expected = ExpectedWeights(model->config());
  ASSERT_EQ(spec.tensors.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(spec.tensors[i].name, expected[i].first);
    EXPECT_EQ(spec.tensors[i].role, TensorRole::kDense);
  }
  EXPECT_EQ(model->TrainableParameters().size(), expected.size());
  const Dataset data = Text(kSequences);
  const double loss_before = Evaluate(*model, data).loss;
  const AdapterState start = model->ExportAdapter();
  LocalTrainOptions train;
  train.steps = 10;
  train.batch_size = 3;
  train.lr = 3e-3f;
  auto r = TrainLocal(*model, data, {0, 1, 2}, train);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_LT(Evaluate(*model, data).loss, loss_before - 0.5);
  const AdapterState end = model->ExportAdapter();
  for (size_t t = 0; t < end.tensors.size(); ++t) EXPECT_NE(end.tensors[t].values, start.tensors[t].values) << spec.tensors[t].name;
  // The F32 weights were trained in place over the private mapping: the file is untouched.
  EXPECT_EQ(FileBytes(ckpt + "/model.safetensors"), before);
  // DP-SGD has no per-example rule for dense weights.
  auto dp = model->PerExampleGradients(model->MakeBatch(data, {0}), nullptr);
  EXPECT_EQ(dp.status().code(), Code::kFailedPrecondition);
}

TEST(LmTaskTest, LocalTrainingOnTextLowersTheLossAndMovesOnlyTheAdapter) {
  testing::TempDir dir;
  // Weights of std 0.3, not 0.02: with the default the frozen lm_head bounds every logit near
  // 0.6, so no adapter could make a prediction confident.
  const std::string ckpt = MakeCheckpoint(dir, "m", {"--std", "0.3"});
  LlamaOptions options;
  options.target_modules = kLoraTargets;
  auto model = Load(ckpt, options);
  ASSERT_NE(model, nullptr);
  std::vector<std::vector<int32_t>> sequences;
  for (int i = 0; i < 12; ++i) sequences.push_back({1, 10, 11, 12, 13, 14, 15, static_cast<int32_t>(16 + i % 3)});
  const Dataset data = Text(sequences);
  std::vector<size_t> all(data.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  const double before = Evaluate(*model, data).loss;
  LocalTrainOptions train;
  train.steps = 30;
  train.batch_size = 4;
  train.lr = 1e-2f;
  auto r = TrainLocal(*model, data, all, train);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->steps, 30u);
  EXPECT_LT(Evaluate(*model, data).loss, before - 1.0);
  // DP-SGD on the same text, from the base: clipped, noised per-example gradients still learn.
  auto private_model = Load(ckpt, options);
  ASSERT_NE(private_model, nullptr);
  train.dp.noise_multiplier = 0.1;
  train.dp.clip = 1.0;
  train.dp.seed = 5;
  r = TrainLocal(*private_model, data, all, train);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->steps, 30u);
  EXPECT_LT(Evaluate(*private_model, data).loss, before - 0.5);
  // The base is the checkpoint's: a fresh model with this adapter computes the same logits.
  auto fresh = Load(ckpt, options);
  ASSERT_NE(fresh, nullptr);
  ASSERT_TRUE(fresh->LoadAdapter(model->ExportAdapter()).ok());
  torch::NoGradGuard no_grad;
  const Batch batch = model->MakeBatch(data, {0, 1});
  EXPECT_TRUE(torch::allclose(model->Forward(batch.inputs), fresh->Forward(batch.inputs), 1e-5, 1e-5));
}

// The classifier as a worker::Model: its head is an adapter tensor that ForSpec recognises,
// each example's loss is the cross-entropy of its label, DP-SGD's per-example gradients (LoRA
// factors and head) equal each example's own backward, and local training learns labels that
// only the tokens decide.
TEST(LmTaskTest, AClassifierLearnsLabelsAndGivesPerExampleGradients) {
  testing::TempDir dir;
  const std::string ckpt = MakeCheckpoint(dir, "m");
  LlamaOptions options;
  options.lora_rank = 4;
  options.target_modules = {"q_proj", "v_proj"};
  options.num_classes = 3;
  auto model = Load(ckpt, options);
  ASSERT_NE(model, nullptr);
  const ModelOptions reopened = ModelOptions::ForSpec(model->Spec());
  EXPECT_EQ(reopened.num_classes, 3u);
  LlamaOptions lm_options = options;
  lm_options.num_classes = 0;
  auto lm = Load(ckpt, lm_options);
  ASSERT_NE(lm, nullptr);
  EXPECT_EQ(ModelOptions::ForSpec(lm->Spec()).num_classes, 0u);
  EXPECT_EQ(model->Spec().tensors.size(), lm->Spec().tensors.size() + 1);

  // The label is the example's second token mod 3; the rest is noise.
  std::vector<std::vector<int32_t>> sequences;
  std::vector<uint8_t> labels;
  for (int i = 0; i < 24; ++i) {
    const int32_t key = 10 + i % 6;
    sequences.push_back({1, key, static_cast<int32_t>(20 + (7 * i) % 30), static_cast<int32_t>(40 + i % 5)});
    labels.push_back(static_cast<uint8_t>(key % 3));
  }
  sequences[0].push_back(60);  // uneven lengths: the batch is padded
  const Dataset data = Text(sequences, labels);
  ASSERT_TRUE(model->CheckData(data).ok());
  const Batch batch = model->MakeBatch(data, {0, 1, 2});
  ASSERT_TRUE(batch.targets.defined());
  EXPECT_EQ(batch.targets[1].item<int64_t>(), labels[1]);

  torch::Tensor losses;
  auto per_example = model->PerExampleGradients(batch, &losses);
  ASSERT_TRUE(per_example.ok()) << per_example.status().ToString();
  std::vector<torch::Tensor> tensors = model->AdapterTensors();
  for (int64_t i = 0; i < 3; ++i) {
    for (auto& t : tensors) t.mutable_grad() = torch::Tensor();
    const torch::Tensor alone = model->Losses(model->MakeBatch(data, {static_cast<size_t>(i)}));
    EXPECT_NEAR(alone.item<double>(), losses[i].item<double>(), 1e-5) << "padding changed example " << i;
    alone.sum().backward();
    for (size_t t = 0; t < tensors.size(); ++t) {
      if (model->Spec().tensors[t].role == TensorRole::kLoraA) continue;  // B is zero: A's gradient is zero
      const torch::Tensor want = tensors[t].grad();
      EXPECT_GT(want.abs().max().item<double>(), 0.0) << model->Spec().tensors[t].name;
      EXPECT_LT((want - (*per_example)[t][i]).abs().max().item<double>(), 1e-5 + 1e-3 * want.abs().max().item<double>())
          << model->Spec().tensors[t].name << ", example " << i;
    }
  }
  // The loss is the cross-entropy of the label.
  {
    torch::NoGradGuard no_grad;
    const torch::Tensor logits = model->Classify(batch.inputs, batch.mask);
    const torch::Tensor want = torch::nn::functional::cross_entropy(
        logits, batch.targets, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
    EXPECT_LT(MaxDiff(model->Losses(batch), want), 1e-6);
  }

  std::vector<size_t> all(data.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  const EvalResult before = Evaluate(*model, data);
  EXPECT_EQ(before.predictions, data.size());  // one prediction per example
  LocalTrainOptions train;
  train.steps = 60;
  train.batch_size = 8;
  train.lr = 2e-2f;
  auto r = TrainLocal(*model, data, all, train);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const EvalResult after = Evaluate(*model, data);
  EXPECT_LT(after.loss, before.loss - 0.5);
  EXPECT_GE(after.accuracy, 0.9) << "before " << before.accuracy;
  ASSERT_EQ(after.class_loss_sum.size(), 3u);
  double summed = 0;
  for (double l : after.class_loss_sum) summed += l;
  EXPECT_NEAR(summed / static_cast<double>(data.size()), after.loss, 1e-9);

  // Data that does not fit the head is refused.
  Dataset five = data;
  five.num_classes = 5;
  EXPECT_EQ(model->CheckData(five).code(), Code::kInvalidArgument);
  Dataset beyond = data;
  beyond.labels[2] = 3;
  const Status s = model->CheckData(beyond);
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.message().find("label 3"), std::string::npos) << s.ToString();
  EXPECT_THROW(lm->Classify(batch.inputs, batch.mask), c10::Error);
}

TEST(LmTaskTest, DataAndOptionsThatDoNotFitAreRefused) {
  testing::TempDir dir;
  const std::string ckpt = MakeCheckpoint(dir, "m");
  auto model = Load(ckpt);
  ASSERT_NE(model, nullptr);
  Dataset images;
  images.labels = {0, 1};
  images.images.assign(2 * 784, 0);
  EXPECT_EQ(model->CheckData(images).code(), Code::kInvalidArgument);
  const Status out_of_vocab = model->CheckData(Text({{1, 2, 64}}));
  EXPECT_EQ(out_of_vocab.code(), Code::kInvalidArgument);
  EXPECT_NE(out_of_vocab.message().find("vocabulary"), std::string::npos) << out_of_vocab.ToString();
  LocalTrainOptions train;
  EXPECT_EQ(TrainLocal(*model, images, {0, 1}, train).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(model->SetPretraining(true).code(), Code::kUnimplemented);
  EXPECT_EQ(model->SaveBase(dir.path("base.pt")).code(), Code::kUnimplemented);

  ModelOptions mo;
  mo.arch = "LlamaForCausalLM";
  EXPECT_EQ(Model::Create(mo).status().code(), Code::kInvalidArgument);
  auto opened = Model::Open(mo, ckpt);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  EXPECT_EQ((*opened)->Spec().model, "LlamaForCausalLM");
  EXPECT_EQ((*opened)->Spec().target_modules, (std::vector<std::string>{"q_proj", "v_proj"}));
  mo.arch = "Qwen2ForCausalLM";
  const auto wrong = Model::Open(mo, ckpt);
  EXPECT_EQ(wrong.status().code(), Code::kInvalidArgument);
  EXPECT_NE(wrong.status().message().find("LlamaForCausalLM"), std::string::npos) << wrong.status().ToString();
  mo.arch = "LlamaForCausalLM";
  EXPECT_EQ(Model::Open(mo, dir.path("missing")).status().code(), Code::kNotFound);
}

}  // namespace
}  // namespace fedlora::worker::lm
