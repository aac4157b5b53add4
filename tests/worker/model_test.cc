#include "worker/model.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "tests/testing/fixtures.h"
#include "worker/data.h"
#include "worker/train.h"

namespace fedlora::worker {
namespace {

namespace fs = std::filesystem;

using fedlora::testing::TempDir;

std::unique_ptr<Model> MakeModel(const std::string& arch, uint64_t lora_seed = 1,
                                 uint64_t init_seed = 0) {
  ModelOptions options;
  options.arch = arch;
  options.lora_seed = lora_seed;
  options.init_seed = init_seed;
  Result<std::unique_ptr<Model>> model = Model::Create(options);
  EXPECT_TRUE(model.ok()) << model.status().ToString();
  return model.ok() ? std::move(model).value() : nullptr;
}

// Deterministic uint8 images [n, 28, 28].
torch::Tensor RandomImages(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  torch::Tensor images = torch::empty({n, kImageRows, kImageCols}, torch::kUInt8);
  uint8_t* p = images.data_ptr<uint8_t>();
  for (int64_t i = 0; i < images.numel(); ++i) p[i] = static_cast<uint8_t>(rng() & 0xff);
  return images;
}

// An adapter state with every value drawn at random, in `model`'s layout.
AdapterState RandomAdapter(const Model& model, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(-0.5f, 0.5f);
  AdapterState state = model.ExportAdapter();
  for (auto& t : state.tensors) {
    for (float& v : t.values) v = dist(rng);
  }
  return state;
}

// A linearly separable dataset: class c lights up band c of the image (4 rows per class
// among the first 4 classes), plus noise.
Dataset SeparableData(size_t n, uint64_t seed) {
  constexpr int kClasses = 4;
  std::mt19937_64 rng(seed);
  Dataset data;
  data.images.resize(n * kImagePixels);
  for (size_t i = 0; i < n; ++i) {
    const int label = static_cast<int>(i % kClasses);
    data.labels.push_back(static_cast<uint8_t>(label));
    for (int p = 0; p < kImagePixels; ++p) {
      const int row = p / kImageCols;
      const bool lit = row >= 4 + 5 * label && row < 8 + 5 * label;
      data.images[i * kImagePixels + static_cast<size_t>(p)] =
          static_cast<uint8_t>((lit ? 180 : 0) + rng() % 60);
    }
  }
  return data;
}

std::vector<size_t> Range(size_t n) {
  std::vector<size_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = i;
  return v;
}

bool SameAdapter(const AdapterState& a, const AdapterState& b) {
  if (a.tensors.size() != b.tensors.size()) return false;
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    if (a.tensors[i].name != b.tensors[i].name || a.tensors[i].values != b.tensors[i].values) {
      return false;
    }
  }
  return true;
}

const DenseTensor& TensorNamed(const AdapterState& state, const std::string& name) {
  for (const auto& t : state.tensors) {
    if (t.name == name) return t;
  }
  ADD_FAILURE() << "no tensor " << name;
  static const DenseTensor kEmpty;
  return kEmpty;
}

TEST(ModelCreateTest, RejectsUnknownArchTargetAndZeroRank) {
  ModelOptions options;
  options.arch = "resnet";
  EXPECT_EQ(Model::Create(options).status().code(), Code::kInvalidArgument);
  options.arch = "mlp";
  options.lora_rank = 0;
  EXPECT_EQ(Model::Create(options).status().code(), Code::kInvalidArgument);
  options.lora_rank = 4;
  options.target_modules = {"fc1", "blocks.0.attn.q"};
  EXPECT_EQ(Model::Create(options).status().code(), Code::kInvalidArgument);
}

TEST(ModelSpecTest, MlpListsLoraPairsThenHeadInOrder) {
  ModelOptions options;
  options.arch = "mlp";
  options.lora_rank = 4;
  options.lora_alpha = 8;
  options.lora_seed = 9;
  auto model = Model::Create(options);
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  const AdapterSpec& spec = (*model)->Spec();
  EXPECT_EQ(spec.model, "mlp");
  EXPECT_EQ(spec.rank, 4u);
  EXPECT_EQ(spec.alpha, 8.0f);
  EXPECT_EQ(spec.seed, 9u);
  EXPECT_EQ(spec.target_modules, (std::vector<std::string>{"fc1", "fc2"}));
  struct Expected {
    const char* name;
    std::vector<uint32_t> shape;
    TensorRole role;
  };
  const std::vector<Expected> expected = {
      {"fc1.lora_A", {4, 784}, TensorRole::kLoraA}, {"fc1.lora_B", {128, 4}, TensorRole::kLoraB},
      {"fc2.lora_A", {4, 128}, TensorRole::kLoraA}, {"fc2.lora_B", {64, 4}, TensorRole::kLoraB},
      {"head.weight", {10, 64}, TensorRole::kDense}, {"head.bias", {10}, TensorRole::kDense},
  };
  ASSERT_EQ(spec.tensors.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(spec.tensors[i].name, expected[i].name);
    EXPECT_EQ(spec.tensors[i].shape, expected[i].shape) << expected[i].name;
    EXPECT_EQ(spec.tensors[i].role, expected[i].role) << expected[i].name;
  }
}

TEST(ModelSpecTest, VitTinyListsEveryBlockProjectionThenHead) {
  auto model = MakeModel("vit-tiny");
  ASSERT_NE(model, nullptr);
  const AdapterSpec& spec = model->Spec();
  EXPECT_EQ(spec.model, "vit-tiny");
  ASSERT_GE(spec.target_modules.size(), 12u);
  ASSERT_EQ(spec.target_modules.size() % 6, 0u);
  const size_t depth = spec.target_modules.size() / 6;
  std::vector<std::string> names;
  std::vector<std::vector<uint32_t>> shapes;
  for (size_t b = 0; b < depth; ++b) {
    for (const char* m : {"attn.q", "attn.k", "attn.v", "attn.o"}) {
      const std::string module = "blocks." + std::to_string(b) + "." + m;
      EXPECT_EQ(spec.target_modules[names.size() / 2], module);
      names.push_back(module + ".lora_A");
      shapes.push_back({8, 64});
      names.push_back(module + ".lora_B");
      shapes.push_back({64, 8});
    }
    const std::string prefix = "blocks." + std::to_string(b) + ".mlp.";
    names.push_back(prefix + "fc1.lora_A");
    shapes.push_back({8, 64});
    names.push_back(prefix + "fc1.lora_B");
    shapes.push_back({128, 8});
    names.push_back(prefix + "fc2.lora_A");
    shapes.push_back({8, 128});
    names.push_back(prefix + "fc2.lora_B");
    shapes.push_back({64, 8});
  }
  names.push_back("head.weight");
  shapes.push_back({10, 64});
  names.push_back("head.bias");
  shapes.push_back({10});
  ASSERT_EQ(spec.tensors.size(), names.size());
  for (size_t i = 0; i < names.size(); ++i) {
    EXPECT_EQ(spec.tensors[i].name, names[i]);
    EXPECT_EQ(spec.tensors[i].shape, shapes[i]) << names[i];
  }
  // A few hundred thousand values at most in the whole model; the adapter is a fraction.
  EXPECT_LT(spec.numel(), 40000u);
}

TEST(ModelSpecTest, TargetModulesRestrictTheLoraPairs) {
  ModelOptions options;
  options.arch = "vit-tiny";
  options.target_modules = {"blocks.1.mlp.fc2", "blocks.0.attn.v"};
  auto model = Model::Create(options);
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  const AdapterSpec& spec = (*model)->Spec();
  // Canonical order, whatever the order of the option.
  EXPECT_EQ(spec.target_modules, (std::vector<std::string>{"blocks.0.attn.v", "blocks.1.mlp.fc2"}));
  ASSERT_EQ(spec.tensors.size(), 6u);
  EXPECT_EQ(spec.tensors[0].name, "blocks.0.attn.v.lora_A");
  EXPECT_EQ(spec.tensors[3].name, "blocks.1.mlp.fc2.lora_B");
  EXPECT_EQ(spec.tensors[4].name, "head.weight");
}

TEST(ModelForwardTest, AcceptsUint8AndNormalisedFloatImages) {
  for (const char* arch : {"mlp", "vit-tiny"}) {
    auto model = MakeModel(arch);
    ASSERT_NE(model, nullptr);
    torch::NoGradGuard no_grad;
    const torch::Tensor images = RandomImages(3, 1);
    const torch::Tensor logits = model->Forward(images);
    EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{3, 10})) << arch;
    const torch::Tensor normalised =
        ((images.to(torch::kFloat) / 255.0 - 0.2860) / 0.3530).reshape({3, 1, 28, 28});
    EXPECT_TRUE(torch::allclose(model->Forward(normalised), logits, 1e-4, 1e-5)) << arch;
  }
}

TEST(ModelAdapterTest, FreshAdapterLeavesTheBaseOutputUnchanged) {
  for (const char* arch : {"mlp", "vit-tiny"}) {
    auto model = MakeModel(arch);
    ASSERT_NE(model, nullptr);
    torch::NoGradGuard no_grad;
    const torch::Tensor images = RandomImages(4, 2);
    const torch::Tensor with_adapter = model->Forward(images);
    ASSERT_TRUE(model->SetPretraining(true).ok());  // LoRA path off: the bare base
    const torch::Tensor base = model->Forward(images);
    EXPECT_TRUE(torch::equal(with_adapter, base)) << arch;

    // And the adapter is live once B is not zero.
    ASSERT_TRUE(model->SetPretraining(false).ok());
    ASSERT_TRUE(model->LoadAdapter(RandomAdapter(*model, 3)).ok());
    EXPECT_FALSE(torch::allclose(model->Forward(images), base)) << arch;
  }
}

TEST(ModelAdapterTest, LoraAIsIdenticalForTheSameSeedAndDiffersForAnother) {
  for (const char* arch : {"mlp", "vit-tiny"}) {
    const AdapterState a = MakeModel(arch, 5)->ExportAdapter();
    const AdapterState b = MakeModel(arch, 5)->ExportAdapter();
    const AdapterState c = MakeModel(arch, 6)->ExportAdapter();
    EXPECT_TRUE(SameAdapter(a, b)) << arch;
    const std::string first_a = a.tensors[0].name;
    ASSERT_EQ(MakeModel(arch)->Spec().tensors[0].role, TensorRole::kLoraA);
    EXPECT_NE(TensorNamed(a, first_a).values, TensorNamed(c, first_a).values) << arch;
    for (size_t i = 0; i < a.tensors.size(); ++i) {
      const auto& t = a.tensors[i];
      if (t.name.ends_with(".lora_B")) {
        EXPECT_TRUE(std::all_of(t.values.begin(), t.values.end(), [](float v) { return v == 0; }))
            << t.name;
      }
      if (t.name.ends_with(".lora_A")) {
        const bool nonzero =
            std::any_of(t.values.begin(), t.values.end(), [](float v) { return v != 0; });
        EXPECT_TRUE(nonzero) << t.name;
        // Different modules get different A even with one seed.
        if (i + 2 < a.tensors.size() && a.tensors[i + 2].name.ends_with(".lora_A") &&
            a.tensors[i + 2].values.size() == t.values.size()) {
          EXPECT_NE(a.tensors[i + 2].values, t.values) << t.name;
        }
      }
    }
  }
}

TEST(ModelAdapterTest, ExportLoadRoundTripReproducesValuesAndOutputs) {
  auto source = MakeModel("mlp");
  auto target = MakeModel("mlp");
  const AdapterState state = RandomAdapter(*source, 7);
  ASSERT_TRUE(source->LoadAdapter(state).ok());
  EXPECT_TRUE(SameAdapter(source->ExportAdapter(), state));
  ASSERT_TRUE(target->LoadAdapter(source->ExportAdapter()).ok());
  EXPECT_TRUE(SameAdapter(target->ExportAdapter(), state));
  torch::NoGradGuard no_grad;
  const torch::Tensor images = RandomImages(5, 8);
  EXPECT_TRUE(torch::equal(source->Forward(images), target->Forward(images)));
}

TEST(ModelAdapterTest, LoadAdapterRejectsMismatchesAndLeavesTheModelUnchanged) {
  auto model = MakeModel("mlp");
  ASSERT_TRUE(model->LoadAdapter(RandomAdapter(*model, 1)).ok());
  const AdapterState before = model->ExportAdapter();

  // Wrong shape on the last tensor: the earlier, valid tensors must not be written either.
  AdapterState bad_shape = RandomAdapter(*model, 2);
  bad_shape.tensors.back().shape = {11};
  bad_shape.tensors.back().values.resize(11);
  Status status = model->LoadAdapter(bad_shape);
  EXPECT_EQ(status.code(), Code::kInvalidArgument) << status.ToString();
  EXPECT_TRUE(SameAdapter(model->ExportAdapter(), before));

  AdapterState bad_name = RandomAdapter(*model, 3);
  bad_name.tensors[0].name = "fc9.lora_A";
  EXPECT_EQ(model->LoadAdapter(bad_name).code(), Code::kInvalidArgument);

  AdapterState missing = RandomAdapter(*model, 4);
  missing.tensors.pop_back();
  EXPECT_EQ(model->LoadAdapter(missing).code(), Code::kInvalidArgument);

  AdapterState not_finite = RandomAdapter(*model, 5);
  not_finite.tensors.back().values[0] = std::nanf("");
  EXPECT_EQ(model->LoadAdapter(not_finite).code(), Code::kInvalidArgument);

  EXPECT_TRUE(SameAdapter(model->ExportAdapter(), before));
}

TEST(ModelBaseTest, SaveLoadRoundTripGivesIdenticalOutputs) {
  for (const char* arch : {"mlp", "vit-tiny"}) {
    TempDir dir;
    auto source = MakeModel(arch, 1, /*init_seed=*/11);
    auto target = MakeModel(arch, 1, /*init_seed=*/12);
    torch::NoGradGuard no_grad;
    const torch::Tensor images = RandomImages(4, 9);
    ASSERT_FALSE(torch::allclose(source->Forward(images), target->Forward(images))) << arch;
    const std::string path = dir.path("base.pt");
    ASSERT_TRUE(source->SaveBase(path).ok());
    const Status status = target->LoadBase(path);
    ASSERT_TRUE(status.ok()) << status.ToString();
    EXPECT_TRUE(torch::equal(source->Forward(images), target->Forward(images))) << arch;
  }
}

TEST(ModelBaseTest, LoadBaseRejectsWrongArchMissingAndCorruptFiles) {
  TempDir dir;
  auto mlp = MakeModel("mlp");
  auto vit = MakeModel("vit-tiny");
  ASSERT_TRUE(mlp->SaveBase(dir.path("mlp.pt")).ok());
  torch::NoGradGuard no_grad;
  const torch::Tensor images = RandomImages(2, 10);
  const torch::Tensor before = vit->Forward(images);

  EXPECT_EQ(vit->LoadBase(dir.path("mlp.pt")).code(), Code::kInvalidArgument);
  EXPECT_EQ(vit->LoadBase(dir.path("absent.pt")).code(), Code::kNotFound);
  {
    std::ofstream out(dir.path("garbage.pt"), std::ios::binary);
    out << "this is not a zip archive";
  }
  EXPECT_EQ(vit->LoadBase(dir.path("garbage.pt")).code(), Code::kDataLoss);
  EXPECT_TRUE(torch::equal(vit->Forward(images), before));
}

// A residual R (flora's exact remainder) adds to the layer at the global's scale: (B, A, R = B2 A)
// computes what (B + B2, A) does without one. It is part of the adapter (exported, loaded) but
// neither trains nor goes into the base file.
TEST(ModelAdapterTest, AResidualAddsToItsLayerAndNeverTrains) {
  ModelOptions options;
  options.arch = "mlp";
  options.lora_rank = 4;
  options.lora_residual = true;
  auto with = Model::Create(options);
  ASSERT_TRUE(with.ok()) << with.status().ToString();
  Model& model = **with;
  const AdapterSpec& spec = model.Spec();
  ASSERT_EQ(spec.Find("fc1.lora_residual"), 2);
  EXPECT_EQ(spec.tensors[2].role, TensorRole::kLoraResidual);
  EXPECT_EQ(spec.tensors[2].shape, (std::vector<uint32_t>{128, 784}));
  EXPECT_EQ(spec.tensors.size(), 8u);  // two modules of three, the head's two
  EXPECT_EQ(model.TrainableParameters().size(), 6u);

  options.lora_residual = false;
  auto plain = std::move(Model::Create(options)).value();
  AdapterState without = RandomAdapter(*plain, 3);
  AdapterState state = RandomAdapter(model, 3);
  for (const char* m : {"fc1", "fc2"}) {
    const int a = spec.Find(std::string(m) + ".lora_A"), b = spec.Find(std::string(m) + ".lora_B");
    const int r = spec.Find(std::string(m) + ".lora_residual");
    const torch::Tensor ta = torch::tensor(state.tensors[a].values).view({4, -1});
    const torch::Tensor tb = torch::tensor(state.tensors[b].values).view({-1, 4});
    const torch::Tensor b2 = torch::tensor(RandomAdapter(model, 9).tensors[b].values).view({-1, 4});
    const torch::Tensor residual = torch::mm(b2, ta).contiguous();
    state.tensors[r].values.assign(residual.data_ptr<float>(), residual.data_ptr<float>() + residual.numel());
    const torch::Tensor sum = (tb + b2).contiguous();
    for (auto& t : without.tensors) {
      if (t.name == std::string(m) + ".lora_A") t.values = state.tensors[a].values;
      if (t.name == std::string(m) + ".lora_B") t.values.assign(sum.data_ptr<float>(), sum.data_ptr<float>() + sum.numel());
    }
  }
  for (auto& t : without.tensors) {
    if (t.name.starts_with("head.")) t.values = TensorNamed(state, t.name).values;
  }
  ASSERT_TRUE(model.LoadAdapter(state).ok());
  ASSERT_TRUE(plain->LoadAdapter(without).ok());
  EXPECT_TRUE(SameAdapter(model.ExportAdapter(), state));
  const torch::Tensor images = RandomImages(5, 8);
  {
    torch::NoGradGuard no_grad;
    EXPECT_TRUE(torch::allclose(model.Forward(images), plain->Forward(images), 1e-4, 1e-4));
  }
  // Training moves the factors, never the residual.
  const Dataset data = SeparableData(16, 1);
  LocalTrainOptions train;
  train.steps = 2;
  train.batch_size = 4;
  train.lr = 1e-2f;
  ASSERT_TRUE(TrainLocal(model, data, Range(data.size()), train).ok());
  const AdapterState after = model.ExportAdapter();
  EXPECT_EQ(TensorNamed(after, "fc1.lora_residual").values, TensorNamed(state, "fc1.lora_residual").values);
  EXPECT_NE(TensorNamed(after, "fc1.lora_B").values, TensorNamed(state, "fc1.lora_B").values);
  // The base file holds no residual: a plain model loads it.
  TempDir dir;
  const std::string base = dir.path("base.pt");
  ASSERT_TRUE(model.SaveBase(base).ok());
  EXPECT_TRUE(plain->LoadBase(base).ok());
}

TEST(ModelTrainTest, FineTuningModeTrainsOnlyTheAdapter) {
  for (const char* arch : {"mlp", "vit-tiny"}) {
    auto model = MakeModel(arch, 1, 3);
    const std::vector<torch::Tensor> trainable = model->TrainableParameters();
    ASSERT_EQ(trainable.size(), model->Spec().tensors.size()) << arch;
    const AdapterState initial = model->ExportAdapter();

    const Dataset data = SeparableData(16, 1);
    LocalTrainOptions options;
    options.steps = 3;
    options.batch_size = 4;
    options.lr = 1e-2f;
    const LocalTrainResult result = *TrainLocal(*model, data, Range(data.size()), options);
    EXPECT_EQ(result.steps, 3u);
    EXPECT_EQ(result.samples, 12u);
    EXPECT_FALSE(result.stopped);
    EXPECT_FALSE(SameAdapter(model->ExportAdapter(), initial)) << arch;
    EXPECT_NE(TensorNamed(model->ExportAdapter(), model->Spec().tensors[1].name).values,
              TensorNamed(initial, model->Spec().tensors[1].name).values)
        << "lora_B of the first pair did not train";

    // A model with the same base seeded identically and the trained adapter loaded computes
    // bit-identical outputs only if training left every base tensor untouched.
    auto fresh = MakeModel(arch, 1, 3);
    ASSERT_TRUE(fresh->LoadAdapter(model->ExportAdapter()).ok());
    torch::NoGradGuard no_grad;
    model->Train(false);
    fresh->Train(false);
    const torch::Tensor images = RandomImages(6, 12);
    EXPECT_TRUE(torch::equal(model->Forward(images), fresh->Forward(images))) << arch;
  }
}

TEST(ModelTrainTest, PretrainingModeTrainsTheBaseAndNotTheLora) {
  auto model = MakeModel("mlp");
  const size_t adapter_tensors = model->Spec().tensors.size();
  ASSERT_TRUE(model->SetPretraining(true).ok());
  // fc1 and fc2 weight + bias, head weight + bias.
  EXPECT_EQ(model->TrainableParameters().size(), 6u);
  const AdapterState initial = model->ExportAdapter();
  const Dataset data = SeparableData(16, 2);
  LocalTrainOptions options;
  options.steps = 3;
  options.batch_size = 4;
  options.lr = 1e-2f;
  ASSERT_TRUE(TrainLocal(*model, data, Range(data.size()), options).ok());
  const AdapterState after = model->ExportAdapter();
  for (size_t i = 0; i + 2 < adapter_tensors; ++i) {
    EXPECT_EQ(after.tensors[i].values, initial.tensors[i].values) << after.tensors[i].name;
  }
  EXPECT_NE(TensorNamed(after, "head.weight").values, TensorNamed(initial, "head.weight").values);
}

TEST(ModelTrainTest, TrainLocalReducesLossOnSeparableData) {
  auto model = MakeModel("mlp");
  const Dataset data = SeparableData(64, 3);
  const EvalResult before = Evaluate(*model, data);
  LocalTrainOptions options;
  options.steps = 30;
  options.batch_size = 16;
  const LocalTrainResult result = *TrainLocal(*model, data, Range(data.size()), options);
  EXPECT_EQ(result.steps, 30u);
  EXPECT_TRUE(std::isfinite(result.mean_loss));
  const EvalResult after = Evaluate(*model, data);
  EXPECT_LT(after.loss, before.loss * 0.5) << before.loss << " -> " << after.loss;
  EXPECT_GT(after.accuracy, 0.95);
}

TEST(ModelTrainTest, TrainLocalIsDeterministicForASeed) {
  const Dataset data = SeparableData(32, 4);
  LocalTrainOptions options;
  options.steps = 5;
  options.batch_size = 8;
  options.seed = 77;
  auto a = MakeModel("mlp");
  auto b = MakeModel("mlp");
  ASSERT_TRUE(TrainLocal(*a, data, Range(data.size()), options).ok());
  ASSERT_TRUE(TrainLocal(*b, data, Range(data.size()), options).ok());
  EXPECT_TRUE(SameAdapter(a->ExportAdapter(), b->ExportAdapter()));
  auto c = MakeModel("mlp");
  options.seed = 78;
  ASSERT_TRUE(TrainLocal(*c, data, Range(data.size()), options).ok());
  EXPECT_FALSE(SameAdapter(a->ExportAdapter(), c->ExportAdapter()));
}

TEST(ModelTrainTest, TrainLocalReturnsAtOnceWhenStopWasRequested) {
  auto model = MakeModel("mlp");
  const AdapterState initial = model->ExportAdapter();
  const Dataset data = SeparableData(8, 5);
  std::stop_source stop;
  stop.request_stop();
  const LocalTrainResult result =
      *TrainLocal(*model, data, Range(data.size()), LocalTrainOptions{}, stop.get_token());
  EXPECT_TRUE(result.stopped);
  EXPECT_EQ(result.steps, 0u);
  EXPECT_TRUE(SameAdapter(model->ExportAdapter(), initial));
}

TEST(ModelTrainTest, StopWakesASlowDeviceFromItsEmulatedDelay) {
  auto model = MakeModel("mlp");
  const Dataset data = SeparableData(8, 6);
  LocalTrainOptions options;
  options.steps = 3;
  options.batch_size = 4;
  options.speed_factor = 1e9;  // a delay of years after each step unless stop cuts it short
  std::stop_source stop;
  // Fires before the first step or during the first delay; either way TrainLocal must return.
  std::jthread stopper([&] { stop.request_stop(); });
  const LocalTrainResult result =
      *TrainLocal(*model, data, Range(data.size()), options, stop.get_token());
  EXPECT_TRUE(result.stopped);
  EXPECT_LE(result.steps, 1u);
}

TEST(EvaluateTest, CountsAtMostMaxSamples) {
  auto model = MakeModel("mlp");
  const Dataset data = SeparableData(24, 7);
  const EvalResult some = Evaluate(*model, data, 10);
  EXPECT_EQ(some.samples, 10u);
  const EvalResult all = Evaluate(*model, data);
  EXPECT_EQ(all.samples, 24u);
  EXPECT_GE(all.accuracy, 0.0);
  EXPECT_LE(all.accuracy, 1.0);
  EXPECT_GT(all.loss, 0.0);
}

TEST(EvaluateTest, PerClassCountsAddUpToTheLabelsAndTheAccuracy) {
  auto model = MakeModel("mlp");
  const Dataset data = SeparableData(2100, 3);  // three evaluation batches
  const EvalResult r = Evaluate(*model, data);
  ASSERT_EQ(r.class_total.size(), 10u);
  ASSERT_EQ(r.class_correct.size(), 10u);
  std::vector<size_t> labels(10, 0);
  for (uint8_t l : data.labels) ++labels[l];
  EXPECT_EQ(r.class_total, labels);
  size_t correct = 0;
  for (size_t c = 0; c < 10; ++c) {
    EXPECT_LE(r.class_correct[c], r.class_total[c]);
    correct += r.class_correct[c];
  }
  EXPECT_DOUBLE_EQ(r.accuracy, static_cast<double>(correct) / 2100.0);
}

// --- DP-SGD ----------------------------------------------------------------------------------

// The gradient of every adapter tensor, flattened in Spec() order (zeros where none).
std::vector<float> Gradients(Model& model) {
  std::vector<float> out;
  for (auto& t : model.AdapterTensors()) {
    torch::Tensor g = t.grad().defined() ? t.grad().contiguous() : torch::zeros_like(t);
    out.insert(out.end(), g.data_ptr<float>(), g.data_ptr<float>() + g.numel());
  }
  return out;
}

TEST(DpSgdTest, PerExampleGradientsEqualOneExampleAtATime) {
  for (const std::string arch : {"mlp", "vit-tiny"}) {
    auto model = MakeModel(arch);
    ASSERT_TRUE(model->LoadAdapter(RandomAdapter(*model, 3)).ok());  // B non-zero: A has a gradient
    model->Train(true);
    const torch::Tensor images = RandomImages(3, 4);
    const torch::Tensor labels = torch::tensor({1, 7, 3}, torch::kLong);
    torch::Tensor losses;
    auto per_example = model->PerExampleGradients(Batch{images, labels, {}}, &losses);
    ASSERT_TRUE(per_example.ok()) << per_example.status().ToString();
    auto tensors = model->AdapterTensors();
    for (int64_t n = 0; n < 3; ++n) {
      for (auto& t : tensors) {
        if (t.grad().defined()) t.mutable_grad().zero_();
      }
      torch::Tensor loss = torch::nn::functional::cross_entropy(model->Forward(images.slice(0, n, n + 1)),
                                                                labels.slice(0, n, n + 1));
      EXPECT_NEAR(losses[n].item<double>(), loss.item<double>(), 1e-5);
      loss.backward();
      for (size_t i = 0; i < tensors.size(); ++i) {
        const torch::Tensor mine = (*per_example)[i][n];
        const torch::Tensor reference = tensors[i].grad();
        const double scale = std::max(1e-3, reference.abs().max().item<double>());
        EXPECT_LT((mine - reference).abs().max().item<double>(), 1e-4 * scale)
            << arch << " " << model->Spec().tensors[i].name << " example " << n;
      }
    }
  }
}

TEST(DpSgdTest, FrozenTensorsHaveNoPerExampleGradient) {
  auto model = MakeModel("mlp");
  auto tensors = model->AdapterTensors();
  tensors[0].set_requires_grad(false);  // fc1.lora_A, as FFA-LoRA freezes it
  auto per_example = model->PerExampleGradients(Batch{RandomImages(2, 1), torch::tensor({0, 1}, torch::kLong), {}}, nullptr);
  ASSERT_TRUE(per_example.ok());
  EXPECT_FALSE((*per_example)[0].defined());
  EXPECT_TRUE((*per_example)[1].defined());
}

// A shard of 8 with batch size 8: q = 1, every example in every batch.
struct DpFixture {
  std::unique_ptr<Model> model = MakeModel("mlp");
  Dataset data = SeparableData(8, 11);
  DpFixture() { EXPECT_TRUE(model->LoadAdapter(RandomAdapter(*model, 5)).ok()); }
  std::vector<float> DpGradient(double sigma, double clip, uint64_t seed) {
    DpSgdOptions dp;
    dp.noise_multiplier = sigma;
    dp.clip = clip;
    dp.seed = seed;
    EXPECT_TRUE(AccumulateGradients(*model, data, Range(8), 1, 8, 1, dp).ok());
    return Gradients(*model);
  }
};

TEST(DpSgdTest, WithoutClippingOrNoiseItIsTheBatchMeanGradient) {
  DpFixture f;
  ASSERT_TRUE(AccumulateGradients(*f.model, f.data, Range(8), 1, 8, 1).ok());
  const std::vector<float> mean = Gradients(*f.model);
  const std::vector<float> dp = f.DpGradient(1e-12, 1e9, 3);
  ASSERT_EQ(dp.size(), mean.size());
  double max_abs = 0, max_diff = 0;
  for (size_t i = 0; i < dp.size(); ++i) {
    max_abs = std::max(max_abs, std::abs(static_cast<double>(mean[i])));
    max_diff = std::max(max_diff, std::abs(static_cast<double>(dp[i]) - mean[i]));
  }
  EXPECT_GT(max_abs, 1e-4);
  EXPECT_LT(max_diff, 1e-4 * max_abs);
}

TEST(DpSgdTest, EveryExampleIsClippedToC) {
  DpFixture f;
  const double clip = 1e-3;  // far below every example's gradient norm
  const std::vector<float> g = f.DpGradient(1e-12, clip, 3);
  double sq = 0;
  for (float x : g) sq += static_cast<double>(x) * x;
  // The mean of 8 vectors of norm C has norm at most C (and here close to it: the examples'
  // gradients point in broadly similar directions, so it is not ~0 either).
  EXPECT_LE(std::sqrt(sq), clip * (1 + 1e-4));
  EXPECT_GT(std::sqrt(sq), 0.1 * clip);
}

TEST(DpSgdTest, NoiseHasTheConfiguredStandardDeviation) {
  DpFixture f;
  const double sigma = 2.0, clip = 0.5;
  // Same batch (q = 1), different noise: the difference is (n1 - n2) / 8, std sqrt(2) sigma C / 8.
  const std::vector<float> a = f.DpGradient(sigma, clip, 1);
  const std::vector<float> b = f.DpGradient(sigma, clip, 2);
  double sq = 0;
  for (size_t i = 0; i < a.size(); ++i) sq += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
  const double sd = std::sqrt(sq / static_cast<double>(a.size()));
  const double expected = std::sqrt(2.0) * sigma * clip / 8;
  EXPECT_GT(a.size(), 9000u);  // mlp: ~9,500 adapter values
  EXPECT_NEAR(sd, expected, 0.03 * expected);
  // The same secret seed reproduces the same gradient (the worker draws a fresh one per run).
  EXPECT_EQ(f.DpGradient(sigma, clip, 1), a);
}

TEST(DpSgdTest, FullFineTuningHasNoPerExampleRule) {
  ModelOptions options;
  options.arch = "mlp";
  options.full = true;
  auto model = Model::Create(options);
  ASSERT_TRUE(model.ok());
  auto r = (*model)->PerExampleGradients(Batch{RandomImages(2, 1), torch::tensor({0, 1}, torch::kLong), {}}, nullptr);
  EXPECT_EQ(r.status().code(), Code::kFailedPrecondition);
}

}  // namespace
}  // namespace fedlora::worker
