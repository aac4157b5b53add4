#include "worker/model.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <string_view>
#include <utility>

#include "worker/data.h"
#include "worker/lm/llama.h"
#include "worker/lora_linear.h"

namespace fedlora::worker {
namespace {

// Fashion-MNIST pixel statistics (after scaling to [0, 1]).
constexpr double kPixelMean = 0.2860;
constexpr double kPixelStd = 0.3530;

// vit-tiny geometry: 7x7 patches of a 28x28 image.
constexpr int64_t kPatch = 7;
constexpr int64_t kPatchesPerSide = kImageRows / kPatch;  // 4
constexpr int64_t kNumPatches = kPatchesPerSide * kPatchesPerSide;
constexpr int64_t kPatchPixels = kPatch * kPatch;
constexpr int64_t kVitDim = 64;
constexpr int64_t kVitHeads = 4;
constexpr int64_t kVitMlpDim = 128;
constexpr int kVitDepth = 2;
// Std of the cls token and positional embedding at initialisation (as in ViT).
constexpr double kEmbeddingInitStd = 0.02;

// mlp geometry.
constexpr int64_t kMlpHidden1 = 128;
constexpr int64_t kMlpHidden2 = 64;

constexpr const char* kArchVitTiny = "vit-tiny";
constexpr const char* kArchMlp = "mlp";
// Keys of the base file (torch::serialize archive).
constexpr const char* kBaseArchKey = "fedlora_arch";
constexpr const char* kBaseNamesKey = "fedlora_names";
constexpr int64_t kBaseFormatVersion = 1;
constexpr const char* kBaseFormatKey = "fedlora_format";

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

bool IsLoraTensorName(std::string_view name) {
  return EndsWith(name, ".lora_A") || EndsWith(name, ".lora_B");
}

std::vector<uint32_t> ShapeOf(const torch::Tensor& t) {
  std::vector<uint32_t> shape;
  for (int64_t d : t.sizes()) shape.push_back(static_cast<uint32_t>(d));
  return shape;
}

// What a network needs to tell the Model wrapper: how to run and which layer is the head.
class NetImpl : public torch::nn::Module {
 public:
  // x: float [N, 28, 28], normalised. Returns logits [N, 10].
  virtual torch::Tensor forward(const torch::Tensor& x) = 0;
  virtual LoraLinear& head() = 0;
};

// Everything a network is built from besides its geometry.
struct LoraConfig {
  const std::set<std::string>* targets;  // full module names that carry LoRA
  int64_t rank;
  double scale;
  bool residual;  // LoRA layers keep a residual

  int64_t RankFor(const std::string& name) const { return targets->count(name) ? rank : 0; }
};

class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(const std::string& prefix, const LoraConfig& lora) {
    auto make = [&](const char* name) {
      return register_module(name, LoraLinear(kVitDim, kVitDim,
                                              lora.RankFor(fmt::format("{}.{}", prefix, name)),
                                              lora.scale, lora.residual));
    };
    q = make("q");
    k = make("k");
    v = make("v");
    o = make("o");
  }

  torch::Tensor forward(const torch::Tensor& x) {
    const int64_t n = x.size(0);
    const int64_t t = x.size(1);
    constexpr int64_t kHeadDim = kVitDim / kVitHeads;
    auto split_heads = [&](const torch::Tensor& y) {
      return y.view({n, t, kVitHeads, kHeadDim}).transpose(1, 2);  // [N, H, T, Dh]
    };
    torch::Tensor qh = split_heads(q(x));
    torch::Tensor kh = split_heads(k(x));
    torch::Tensor vh = split_heads(v(x));
    torch::Tensor att =
        torch::matmul(qh, kh.transpose(-2, -1)) * (1.0 / std::sqrt(static_cast<double>(kHeadDim)));
    torch::Tensor y = torch::matmul(att.softmax(-1), vh);  // [N, H, T, Dh]
    return o(y.transpose(1, 2).reshape({n, t, kVitDim}));
  }

  LoraLinear q{nullptr}, k{nullptr}, v{nullptr}, o{nullptr};
};
TORCH_MODULE(Attention);

class FeedForwardImpl : public torch::nn::Module {
 public:
  FeedForwardImpl(const std::string& prefix, const LoraConfig& lora) {
    const std::string fc1_name = prefix + ".fc1";
    const std::string fc2_name = prefix + ".fc2";
    fc1 = register_module("fc1", LoraLinear(kVitDim, kVitMlpDim, lora.RankFor(fc1_name), lora.scale, lora.residual));
    fc2 = register_module("fc2", LoraLinear(kVitMlpDim, kVitDim, lora.RankFor(fc2_name), lora.scale, lora.residual));
  }

  torch::Tensor forward(const torch::Tensor& x) {
    return fc2(torch::gelu(fc1(x)));
  }

  LoraLinear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(FeedForward);

// Pre-LN transformer block.
class BlockImpl : public torch::nn::Module {
 public:
  BlockImpl(const std::string& prefix, const LoraConfig& lora) {
    norm1 = register_module("norm1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({kVitDim})));
    attn = register_module("attn", Attention(prefix + ".attn", lora));
    norm2 = register_module("norm2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({kVitDim})));
    mlp = register_module("mlp", FeedForward(prefix + ".mlp", lora));
  }

  torch::Tensor forward(torch::Tensor x) {
    x = x + attn(norm1(x));
    return x + mlp(norm2(x));
  }

  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr};
  Attention attn{nullptr};
  FeedForward mlp{nullptr};
};
TORCH_MODULE(Block);

class VitTinyImpl : public NetImpl {
 public:
  explicit VitTinyImpl(const LoraConfig& lora) {
    patch_embed_ = register_module("patch_embed", LoraLinear(kPatchPixels, kVitDim, 0, 1.0, false));
    cls_token_ = register_parameter("cls_token", torch::zeros({1, 1, kVitDim}));
    pos_embed_ = register_parameter("pos_embed", torch::zeros({1, kNumPatches + 1, kVitDim}));
    blocks_ = register_module("blocks", torch::nn::ModuleList());
    for (int i = 0; i < kVitDepth; ++i) {
      blocks_->push_back(Block(fmt::format("blocks.{}", i), lora));
    }
    norm_ = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({kVitDim})));
    head_ = register_module("head", LoraLinear(kVitDim, kNumClasses, 0, 1.0, false));
  }

  torch::Tensor forward(const torch::Tensor& x) override {
    const int64_t n = x.size(0);
    // [N, 28, 28] -> [N, 4, 7, 4, 7] -> [N, 4, 4, 7, 7] -> [N, 16, 49], patches in raster order.
    torch::Tensor patches = x.reshape({n, kPatchesPerSide, kPatch, kPatchesPerSide, kPatch})
                                .permute({0, 1, 3, 2, 4})
                                .reshape({n, kNumPatches, kPatchPixels});
    torch::Tensor tokens = patch_embed_(patches);
    tokens = torch::cat({cls_token_.expand({n, 1, kVitDim}), tokens}, 1) + pos_embed_;
    for (const auto& block : *blocks_) tokens = block->as<BlockImpl>()->forward(tokens);
    tokens = norm_(tokens);
    return head_(tokens.select(1, 0));
  }

  LoraLinear& head() override { return head_; }

  // The non-LoraLinear parameters that need a seeded initialisation.
  void ResetEmbeddings(uint64_t seed) {
    torch::NoGradGuard no_grad;
    // Uniform with the same std as N(0, 0.02): bound = std * sqrt(3).
    const double bound = kEmbeddingInitStd * std::sqrt(3.0);
    cls_token_.copy_(SeededUniform(cls_token_.sizes().vec(), bound, DeriveSeed(seed, "cls_token")));
    pos_embed_.copy_(SeededUniform(pos_embed_.sizes().vec(), bound, DeriveSeed(seed, "pos_embed")));
  }

  static std::vector<std::string> LoraModules() {
    std::vector<std::string> names;
    for (int i = 0; i < kVitDepth; ++i) {
      for (const char* m : {"attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc1", "mlp.fc2"}) {
        names.push_back(fmt::format("blocks.{}.{}", i, m));
      }
    }
    return names;
  }

 private:
  LoraLinear patch_embed_{nullptr}, head_{nullptr};
  torch::Tensor cls_token_, pos_embed_;
  torch::nn::ModuleList blocks_{nullptr};
  torch::nn::LayerNorm norm_{nullptr};
};

class MlpNetImpl : public NetImpl {
 public:
  explicit MlpNetImpl(const LoraConfig& lora) {
    fc1_ = register_module("fc1", LoraLinear(kImagePixels, kMlpHidden1, lora.RankFor("fc1"), lora.scale, lora.residual));
    fc2_ = register_module("fc2", LoraLinear(kMlpHidden1, kMlpHidden2, lora.RankFor("fc2"), lora.scale, lora.residual));
    head_ = register_module("head", LoraLinear(kMlpHidden2, kNumClasses, 0, 1.0, false));
  }

  torch::Tensor forward(const torch::Tensor& x) override {
    torch::Tensor h = torch::relu(fc1_(x.reshape({x.size(0), kImagePixels})));
    h = torch::relu(fc2_(h));
    return head_(h);
  }

  LoraLinear& head() override { return head_; }

  static std::vector<std::string> LoraModules() { return {"fc1", "fc2"}; }

 private:
  LoraLinear fc1_{nullptr}, fc2_{nullptr}, head_{nullptr};
};

std::vector<std::string> LoraModulesOf(const std::string& arch) {
  return arch == kArchVitTiny ? VitTinyImpl::LoraModules() : MlpNetImpl::LoraModules();
}

// Wraps a network as a Model: keeps the adapter tensors in Spec() order and the base tensors
// (everything else) by name.
class TorchModel final : public Model {
 public:
  TorchModel(std::shared_ptr<NetImpl> net, AdapterSpec spec)
      : net_(std::move(net)), spec_(std::move(spec)) {
    for (const auto& item : net_->named_modules()) {
      if (auto* layer = item.value()->as<LoraLinearImpl>(); layer != nullptr && layer->has_lora()) {
        lora_layers_.push_back(layer);
      }
    }
    for (const auto& item : net_->named_parameters()) {
      if (!IsLoraTensorName(item.key()) && spec_.Find(item.key()) < 0) {
        base_only_params_.push_back(item.value());
      }
    }
    for (const auto& item : net_->named_parameters()) {
      if (!IsLoraTensorName(item.key())) base_tensors_.emplace_back(item.key(), item.value());
    }
    for (const auto& item : net_->named_buffers()) {
      if (!EndsWith(item.key(), ".lora_residual")) base_tensors_.emplace_back(item.key(), item.value());
    }
    const auto params = net_->named_parameters();
    const auto buffers = net_->named_buffers();
    for (const auto& t : spec_.tensors) {
      adapter_tensors_.push_back(t.role == TensorRole::kLoraResidual ? buffers[t.name] : params[t.name]);
    }
    // Which layer and which of its tensors each adapter tensor is (for per-example gradients).
    std::map<std::string, LoraLinearImpl*> layers;
    for (const auto& item : net_->named_modules()) {
      if (auto* layer = item.value()->as<LoraLinearImpl>(); layer != nullptr) layers[item.key()] = layer;
    }
    for (const auto& t : spec_.tensors) {
      TensorOwner owner;
      for (const auto& [suffix, part] :
           {std::pair<std::string_view, LinearPart>{".lora_A", LinearPart::kA},
            {".lora_B", LinearPart::kB}, {".weight", LinearPart::kWeight}, {".bias", LinearPart::kBias}}) {
        if (!EndsWith(t.name, suffix)) continue;
        const auto it = layers.find(t.name.substr(0, t.name.size() - suffix.size()));
        if (it == layers.end()) continue;
        // A base linear's weight/bias is an adapter tensor only in full fine-tuning; only the
        // head's (or a LoRA factor) has a per-example rule here.
        if ((part == LinearPart::kWeight || part == LinearPart::kBias) && it->second != net_->head().get()) continue;
        owner = {it->second, part};
      }
      owners_.push_back(owner);
    }
    (void)SetPretraining(false);
  }

  Result<std::vector<torch::Tensor>> PerExampleGradients(const Batch& batch, torch::Tensor* losses) override {
    return worker::PerExampleGradients(spec_, owners_, adapter_tensors_, [&] { return Losses(batch); }, losses);
  }

  Status CheckData(const Dataset& data) const override {
    if (data.is_text() || data.images.size() != data.size() * static_cast<size_t>(kImagePixels)) {
      return InvalidArgument(fmt::format("'{}' classifies 28x28 images; the data holds {}", spec_.model,
                                         data.is_text() ? "text" : "a malformed image set"));
    }
    return Status::Ok();
  }

  // Copies the examples into a uint8 image batch [N, 28, 28] and int64 labels [N].
  Batch MakeBatch(const Dataset& data, const std::vector<size_t>& examples) const override {
    const auto n = static_cast<int64_t>(examples.size());
    Batch batch;
    batch.inputs = torch::empty({n, kImageRows, kImageCols}, torch::kUInt8);
    batch.targets = torch::empty({n}, torch::kLong);
    uint8_t* image_data = batch.inputs.data_ptr<uint8_t>();
    int64_t* label_data = batch.targets.data_ptr<int64_t>();
    for (size_t i = 0; i < examples.size(); ++i) {
      std::memcpy(image_data + i * kImagePixels, data.images.data() + examples[i] * kImagePixels, kImagePixels);
      label_data[i] = data.labels[examples[i]];
    }
    return batch;
  }

  torch::Tensor Losses(const Batch& batch) override {
    return torch::nn::functional::cross_entropy(
        Forward(batch.inputs), batch.targets, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
  }

  BatchScore Score(const Batch& batch) override {
    torch::NoGradGuard no_grad;
    return ClassificationScore(Forward(batch.inputs), batch.targets);
  }

  size_t EvalBatchSize() const override { return 1000; }

  torch::Tensor Forward(const torch::Tensor& images) override {
    TORCH_CHECK(images.numel() % kImagePixels == 0, "images must hold N x 784 pixels, got shape ",
                images.sizes());
    const int64_t n = images.numel() / kImagePixels;
    torch::Tensor x;
    if (images.scalar_type() == torch::kUInt8) {
      x = (images.to(torch::kFloat).div(255.0) - kPixelMean) / kPixelStd;
    } else {
      x = images.to(torch::kFloat);
    }
    return net_->forward(x.reshape({n, kImageRows, kImageCols}));
  }

  const AdapterSpec& Spec() const override { return spec_; }

  AdapterState ExportAdapter() const override {
    AdapterState state;
    for (size_t i = 0; i < spec_.tensors.size(); ++i) {
      torch::Tensor t = adapter_tensors_[i].detach().to(torch::kFloat).contiguous();
      DenseTensor dense;
      dense.name = spec_.tensors[i].name;
      dense.shape = spec_.tensors[i].shape;
      dense.values.assign(t.data_ptr<float>(), t.data_ptr<float>() + t.numel());
      state.tensors.push_back(std::move(dense));
    }
    return state;
  }

  Status LoadAdapter(const AdapterState& state) override {
    RETURN_IF_ERROR(CheckStateMatchesSpec(spec_, state));
    // Validate everything before the first write so that an error leaves the model unchanged.
    for (const auto& t : state.tensors) {
      if (!std::all_of(t.values.begin(), t.values.end(), [](float v) { return std::isfinite(v); })) {
        return InvalidArgument(fmt::format("tensor '{}' holds non-finite values", t.name));
      }
    }
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < state.tensors.size(); ++i) {
      const auto& t = state.tensors[i];
      // from_blob does not copy; copy_ below does, so the const_cast never writes.
      torch::Tensor src = torch::from_blob(const_cast<float*>(t.values.data()),
                                           adapter_tensors_[i].sizes(), torch::kFloat);
      adapter_tensors_[i].copy_(src);
    }
    return Status::Ok();
  }

  void SetLoraScale(double scale) override {
    for (auto* layer : lora_layers_) layer->set_scale(scale);
  }

  Status SetPretraining(bool pretraining) override {
    for (auto& p : base_only_params_) p.set_requires_grad(pretraining);
    for (auto* layer : lora_layers_) {
      layer->set_lora_enabled(!pretraining);
      layer->lora_A.set_requires_grad(!pretraining);
      layer->lora_B.set_requires_grad(!pretraining);
    }
    // The head is part of the base (pretraining) and of the adapter (fine-tuning).
    net_->head()->weight.set_requires_grad(true);
    net_->head()->bias.set_requires_grad(true);
    return Status::Ok();
  }

  std::vector<torch::Tensor> AdapterTensors() override { return adapter_tensors_; }

  std::vector<torch::Tensor> TrainableParameters() override {
    std::vector<torch::Tensor> trainable;
    for (const auto& p : net_->parameters()) {
      if (p.requires_grad()) trainable.push_back(p);
    }
    return trainable;
  }

  Status SaveBase(const std::string& path) override {
    try {
      torch::serialize::OutputArchive archive;
      archive.write(kBaseFormatKey, c10::IValue(kBaseFormatVersion));
      archive.write(kBaseArchKey, c10::IValue(spec_.model));
      // Archive keys become TorchScript attribute names, which must not contain dots: the
      // tensors go under positional keys and their names in a separate list.
      c10::List<std::string> names;
      for (size_t i = 0; i < base_tensors_.size(); ++i) {
        names.push_back(base_tensors_[i].first);
        archive.write(fmt::format("t{}", i), base_tensors_[i].second.detach(), /*is_buffer=*/true);
      }
      archive.write(kBaseNamesKey, c10::IValue(names));
      archive.save_to(path);
    } catch (const c10::Error& e) {
      return Unavailable(fmt::format("cannot write base model '{}': {}", path, e.what_without_backtrace()));
    }
    return Status::Ok();
  }

  Status LoadBase(const std::string& path) override {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) {
      return NotFound(fmt::format("base model '{}' does not exist", path));
    }
    std::vector<torch::Tensor> loaded(base_tensors_.size());
    try {
      torch::serialize::InputArchive archive;
      archive.load_from(path);
      c10::IValue format, arch, names_value;
      if (!archive.try_read(kBaseFormatKey, format) || !format.isInt() ||
          !archive.try_read(kBaseArchKey, arch) || !arch.isString() ||
          !archive.try_read(kBaseNamesKey, names_value) || !names_value.isList()) {
        return DataLoss(fmt::format("'{}' is not a fedlora base model file", path));
      }
      if (format.toInt() != kBaseFormatVersion) {
        return DataLoss(fmt::format("'{}' has base format {}, expected {}", path, format.toInt(),
                                    kBaseFormatVersion));
      }
      if (arch.toStringRef() != spec_.model) {
        return InvalidArgument(fmt::format("'{}' holds a '{}' base, the model is '{}'", path,
                                           arch.toStringRef(), spec_.model));
      }
      const c10::List<c10::IValue> names = names_value.toList();
      for (size_t i = 0; i < names.size(); ++i) {
        const c10::IValue name = names.get(i);
        if (!name.isString()) return DataLoss(fmt::format("'{}': malformed tensor name list", path));
        const auto it = std::find_if(base_tensors_.begin(), base_tensors_.end(),
                                     [&](const auto& b) { return b.first == name.toStringRef(); });
        if (it == base_tensors_.end()) {
          return InvalidArgument(
              fmt::format("'{}' holds tensor '{}' that the model lacks", path, name.toStringRef()));
        }
        torch::Tensor t;
        if (!archive.try_read(fmt::format("t{}", i), t, /*is_buffer=*/true)) {
          return DataLoss(fmt::format("'{}' lacks the values of '{}'", path, name.toStringRef()));
        }
        if (!t.sizes().equals(it->second.sizes())) {
          return InvalidArgument(fmt::format("'{}': tensor '{}' has shape {}, the model needs {}",
                                             path, it->first, fmt::join(t.sizes(), "x"),
                                             fmt::join(it->second.sizes(), "x")));
        }
        loaded[static_cast<size_t>(it - base_tensors_.begin())] = t;
      }
    } catch (const c10::Error& e) {
      return DataLoss(fmt::format("cannot read base model '{}': {}", path, e.what_without_backtrace()));
    }
    for (size_t i = 0; i < loaded.size(); ++i) {
      if (!loaded[i].defined()) {
        return DataLoss(fmt::format("'{}' lacks tensor '{}'", path, base_tensors_[i].first));
      }
    }
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < loaded.size(); ++i) base_tensors_[i].second.copy_(loaded[i]);
    return Status::Ok();
  }

  void Train(bool on) override { net_->train(on); }

 private:
  std::shared_ptr<NetImpl> net_;
  AdapterSpec spec_;
  std::vector<TensorOwner> owners_;             // Spec() order; layers owned by net_
  std::vector<LoraLinearImpl*> lora_layers_;    // owned by net_
  std::vector<torch::Tensor> adapter_tensors_;  // Spec() order
  std::vector<torch::Tensor> base_only_params_;  // frozen while fine-tuning
  std::vector<std::pair<std::string, torch::Tensor>> base_tensors_;  // what SaveBase writes
};

}  // namespace

ModelOptions ModelOptions::ForSpec(const AdapterSpec& spec) {
  ModelOptions mo;
  mo.arch = spec.model;
  mo.lora_rank = spec.rank;
  mo.lora_alpha = spec.alpha;
  mo.lora_seed = spec.seed;
  mo.target_modules = spec.target_modules;
  mo.full = spec.rank == 0;
  mo.lora_residual = spec.has_residuals();
  if (IsLanguageModel(spec.model)) {
    for (const auto& t : spec.tensors) {
      if (t.name == lm::kClassifierHead && !t.shape.empty()) mo.num_classes = t.shape[0];
    }
  }
  return mo;
}

BatchScore ClassificationScore(const torch::Tensor& logits, const torch::Tensor& targets) {
  BatchScore score;
  score.loss_sum = torch::nn::functional::cross_entropy(
                       logits, targets, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone))
                       .to(torch::kDouble);
  score.correct = logits.argmax(1).eq(targets).to(torch::kDouble);
  score.count = torch::ones({logits.size(0)}, torch::kDouble);
  return score;
}

bool IsLanguageModel(const std::string& arch) {
  return fedlora::IsLanguageModel(arch);
}

Result<std::unique_ptr<Model>> Model::Open(const ModelOptions& options, const std::string& base) {
  if (!IsLanguageModel(options.arch)) {
    ASSIGN_OR_RETURN(std::unique_ptr<Model> model, Create(options));
    RETURN_IF_ERROR(model->LoadBase(base).WithContext("load base model"));
    return model;
  }
  ASSIGN_OR_RETURN(std::shared_ptr<const lm::Checkpoint> checkpoint, lm::Checkpoint::Open(base));
  if (checkpoint->config().architecture != options.arch) {
    return InvalidArgument(fmt::format("the checkpoint '{}' is a {}, the adapter is for a {}", base,
                                       checkpoint->config().architecture, options.arch));
  }
  lm::LlamaOptions lo;
  lo.lora_rank = options.lora_rank;
  lo.lora_alpha = options.lora_alpha;
  lo.lora_seed = options.lora_seed;
  if (!options.target_modules.empty()) lo.target_modules = options.target_modules;
  lo.lora_residual = options.lora_residual;
  lo.full = options.full;
  lo.num_classes = options.num_classes;
  ASSIGN_OR_RETURN(std::unique_ptr<lm::LlamaModel> model, lm::LlamaModel::Create(std::move(checkpoint), lo));
  return std::unique_ptr<Model>(std::move(model));
}

Result<std::unique_ptr<Model>> Model::Create(const ModelOptions& options) {
  if (IsLanguageModel(options.arch)) {
    return InvalidArgument(fmt::format("a {} is opened from its checkpoint directory (Model::Open)", options.arch));
  }
  if (options.arch != kArchVitTiny && options.arch != kArchMlp) {
    return InvalidArgument(fmt::format("unknown model architecture '{}' (expected '{}' or '{}')",
                                       options.arch, kArchVitTiny, kArchMlp));
  }
  if (options.lora_rank == 0 && !options.full) return InvalidArgument("LoRA rank must be positive");
  if (!(options.lora_alpha > 0) || !std::isfinite(options.lora_alpha)) {
    return InvalidArgument(fmt::format("LoRA alpha must be positive, got {}", options.lora_alpha));
  }
  const std::vector<std::string> candidates = LoraModulesOf(options.arch);
  std::set<std::string> targets;
  if (options.full) {
    if (!options.target_modules.empty()) return InvalidArgument("full fine-tuning takes no LoRA target modules");
  } else if (options.target_modules.empty()) {
    targets.insert(candidates.begin(), candidates.end());
  } else {
    for (const auto& name : options.target_modules) {
      if (std::find(candidates.begin(), candidates.end(), name) == candidates.end()) {
        return InvalidArgument(fmt::format("'{}' has no LoRA-capable module '{}' (known: {})",
                                           options.arch, name, fmt::join(candidates, ", ")));
      }
      targets.insert(name);
    }
  }

  try {
    const uint32_t rank = options.full ? 0 : options.lora_rank;
    if (options.full && options.lora_residual) return InvalidArgument("full fine-tuning keeps no LoRA residual");
    const LoraConfig lora{&targets, static_cast<int64_t>(rank),
                          rank == 0 ? 1.0 : static_cast<double>(options.lora_alpha) / rank, options.lora_residual};
    std::shared_ptr<NetImpl> net;
    if (options.arch == kArchVitTiny) {
      auto vit = std::make_shared<VitTinyImpl>(lora);
      vit->ResetEmbeddings(options.init_seed);
      net = vit;
    } else {
      net = std::make_shared<MlpNetImpl>(lora);
    }

    AdapterSpec spec;
    spec.model = options.arch;
    spec.rank = rank;
    spec.alpha = options.lora_alpha;
    spec.seed = options.lora_seed;
    for (const auto& item : net->named_modules()) {
      auto* layer = item.value()->as<LoraLinearImpl>();
      if (layer == nullptr) continue;
      layer->ResetBase(options.init_seed, item.key());
      if (!layer->has_lora()) continue;
      layer->ResetLora(options.lora_seed, item.key());
      spec.target_modules.push_back(item.key());
      spec.tensors.push_back({item.key() + ".lora_A", ShapeOf(layer->lora_A), TensorRole::kLoraA});
      spec.tensors.push_back({item.key() + ".lora_B", ShapeOf(layer->lora_B), TensorRole::kLoraB});
      if (layer->lora_residual.defined()) {
        spec.tensors.push_back(
            {item.key() + ".lora_residual", ShapeOf(layer->lora_residual), TensorRole::kLoraResidual});
      }
    }
    if (options.full) {
      for (const auto& item : net->named_parameters()) {
        spec.tensors.push_back({item.key(), ShapeOf(item.value()), TensorRole::kDense});
      }
    } else {
      spec.tensors.push_back({"head.weight", ShapeOf(net->head()->weight), TensorRole::kDense});
      spec.tensors.push_back({"head.bias", ShapeOf(net->head()->bias), TensorRole::kDense});
    }
    return std::unique_ptr<Model>(std::make_unique<TorchModel>(std::move(net), std::move(spec)));
  } catch (const c10::Error& e) {
    return Internal(fmt::format("building model '{}': {}", options.arch, e.what_without_backtrace()));
  }
}

}  // namespace fedlora::worker
