#include "worker/lm/pretrain.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>

#include "schema/safetensors.h"
#include "worker/data.h"
#include "worker/lm/checkpoint.h"
#include "worker/lm/llama.h"
#include "worker/lm/tokenizer.h"
#include "worker/train.h"

namespace fedlora::worker::lm {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

Status WriteFile(const fs::path& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) return IoError(fmt::format("cannot write '{}'", path.string()));
  return Status::Ok();
}

Status CheckShape(const LmShape& s) {
  if (s.vocab_size < 300 || s.hidden_size < 8 || s.intermediate_size < 1 || s.num_layers < 1 || s.num_heads < 1 ||
      s.num_kv_heads < 1 || s.max_positions < 2) {
    return InvalidArgument(fmt::format("model shape out of range: vocabulary {} (>= 300), hidden {} (>= 8), "
                                       "intermediate {}, layers {}, heads {}, key/value heads {}, positions {}",
                                       s.vocab_size, s.hidden_size, s.intermediate_size, s.num_layers, s.num_heads,
                                       s.num_kv_heads, s.max_positions));
  }
  if (s.hidden_size % s.num_heads != 0 || (s.hidden_size / s.num_heads) % 2 != 0) {
    return InvalidArgument(fmt::format("hidden size {} must split into {} heads of an even size", s.hidden_size,
                                       s.num_heads));
  }
  if (s.num_heads % s.num_kv_heads != 0) {
    return InvalidArgument(fmt::format("{} heads do not group over {} key/value heads", s.num_heads, s.num_kv_heads));
  }
  return Status::Ok();
}

json ConfigJson(const LmShape& s) {
  return json{{"architectures", {"LlamaForCausalLM"}},
              {"model_type", "llama"},
              {"vocab_size", s.vocab_size},
              {"hidden_size", s.hidden_size},
              {"intermediate_size", s.intermediate_size},
              {"num_hidden_layers", s.num_layers},
              {"num_attention_heads", s.num_heads},
              {"num_key_value_heads", s.num_kv_heads},
              {"max_position_embeddings", s.max_positions},
              {"hidden_act", "silu"},
              {"rms_norm_eps", 1e-5},
              {"rope_theta", 10000.0},
              {"tie_word_embeddings", s.tie_word_embeddings},
              {"attention_bias", false},
              {"initializer_range", 0.02},
              {"bos_token_id", 1},
              {"eos_token_id", 2},
              {"torch_dtype", "float32"}};
}

json TokenizerConfigJson(const LmShape& s) {
  return json{{"tokenizer_class", "LlamaTokenizer"}, {"bos_token", "<s>"},   {"eos_token", "</s>"},
              {"unk_token", "<unk>"},                {"add_bos_token", true}, {"add_eos_token", false},
              {"legacy", true},                      {"model_max_length", s.max_positions}};
}

// Windows of `seq_len` tokens cut from the documents' <s> ids </s> stream, as a text Dataset.
Dataset Windows(const std::vector<std::vector<int32_t>>& docs, uint32_t seq_len, size_t max_windows) {
  Dataset out;
  out.num_classes = 1;
  out.class_names = {"text"};
  out.offsets.push_back(0);
  std::vector<int32_t> pending;
  for (const auto& ids : docs) {
    pending.push_back(1);
    pending.insert(pending.end(), ids.begin(), ids.end());
    pending.push_back(2);
    size_t at = 0;
    while (pending.size() - at >= seq_len && out.size() < max_windows) {
      out.tokens.insert(out.tokens.end(), pending.begin() + static_cast<long>(at),
                        pending.begin() + static_cast<long>(at + seq_len));
      out.offsets.push_back(out.tokens.size());
      out.labels.push_back(0);
      at += seq_len;
    }
    pending.erase(pending.begin(), pending.begin() + static_cast<long>(at));
    if (out.size() >= max_windows) break;
  }
  return out;
}

// Mean NLL per predicted token of `data` (no gradients).
double HeldOutLoss(Model& model, const Dataset& data) {
  const EvalResult r = Evaluate(model, data);
  return r.loss;
}

}  // namespace

int64_t LmShape::Parameters() const {
  const int64_t h = hidden_size, d = h / std::max<int64_t>(1, num_heads), kv = num_kv_heads * d;
  const int64_t layer = 2 * h + h * h /*q*/ + 2 * kv * h /*k, v*/ + h * h /*o*/ + 3 * intermediate_size * h;
  return vocab_size * h * (tie_word_embeddings ? 1 : 2) + num_layers * layer + h;
}

Result<LmShape> LmShapeNamed(const std::string& name) {
  // vocabulary, hidden, intermediate (8/3 hidden, rounded up to 16), layers, heads, key/value heads
  if (name == "tiny") return LmShape{512, 64, 176, 2, 2, 2, 256};  // 0.13M parameters: tests
  // small is the default: of the shapes ops/bench/lm-pretrain-sizes trains for about five
  // minutes, it reaches the lowest held-out bits per byte (docs/benchmarks.md).
  if (name == "small") return LmShape{2048, 128, 352, 2, 2, 2};    // 0.66M, 0.37 s a step on 2 cores
  if (name == "base") return LmShape{4096, 192, 512, 4, 4, 4};     // 2.56M, 1.75 s a step on 2 cores
  return InvalidArgument(fmt::format("unknown model size '{}' (known: {})", name, kLmSizes));
}

uint64_t DefaultPretrainSteps(const std::string& name) {
  // About five minutes of training on 2 idle cores at batch 16 x 128 tokens.
  if (name == "tiny") return 200;
  if (name == "small") return 800;
  if (name == "base") return 170;
  return 0;
}

Result<LmPretrainReport> PretrainLanguageModel(const std::vector<std::string>& documents, const std::string& out_dir,
                                               const LmPretrainOptions& o,
                                               const std::function<void(const LmPretrainProgress&)>& progress) {
  RETURN_IF_ERROR(CheckShape(o.shape));
  if (o.seq_len < 2 || o.seq_len > o.shape.max_positions) {
    return InvalidArgument(fmt::format("sequence length {} must lie in [2, {}] (max_position_embeddings)", o.seq_len,
                                       o.shape.max_positions));
  }
  if (o.batch_size == 0 || o.steps == 0) return InvalidArgument("batch size and steps must be positive");
  if (!(o.lr > 0) || !std::isfinite(o.lr) || !(o.min_lr_ratio >= 0 && o.min_lr_ratio <= 1) || !(o.weight_decay >= 0)) {
    return InvalidArgument(fmt::format("learning rate {} must be positive, min_lr_ratio {} in [0, 1], weight decay {} "
                                       ">= 0",
                                       o.lr, o.min_lr_ratio, o.weight_decay));
  }
  if (!(o.held_out_fraction > 0 && o.held_out_fraction < 1)) {
    return InvalidArgument(fmt::format("held-out fraction {} must lie in (0, 1)", o.held_out_fraction));
  }
  const fs::path out(out_dir);
  std::error_code ec;
  if (fs::exists(out, ec)) return AlreadyExists(fmt::format("'{}' already exists", out_dir));
  const fs::path partial = out.string() + ".partial";
  fs::remove_all(partial, ec);
  fs::create_directories(partial, ec);
  if (ec) return IoError(fmt::format("cannot create '{}': {}", partial.string(), ec.message()));
  // Nothing is left behind on error.
  struct Cleanup {
    fs::path dir;
    bool keep = false;
    ~Cleanup() {
      std::error_code e;
      if (!keep) fs::remove_all(dir, e);
    }
  } cleanup{partial};
  auto report_progress = [&](LmPretrainProgress p) {
    if (progress) progress(p);
  };

  // The seeded held-out documents.
  std::vector<size_t> order(documents.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::mt19937_64 rng(o.seed);
  SeededShuffle(order, rng);
  const auto held = static_cast<size_t>(std::llround(o.held_out_fraction * static_cast<double>(documents.size())));
  if (held == 0 || held >= documents.size()) {
    return InvalidArgument(fmt::format("{} documents are too few to hold {:.0f}% out", documents.size(),
                                       100 * o.held_out_fraction));
  }
  std::vector<size_t> held_idx(order.begin(), order.begin() + static_cast<long>(held));
  std::vector<size_t> train_idx(order.begin() + static_cast<long>(held), order.end());
  std::sort(held_idx.begin(), held_idx.end());
  std::sort(train_idx.begin(), train_idx.end());
  LmPretrainReport report;
  report.train_documents = train_idx.size();
  report.held_out_documents = held_idx.size();

  // 1. The tokenizer, on (a seeded sample of) the training documents.
  report_progress({"tokenizer", 0, o.steps, 0, std::nan(""), 0});
  const auto tok_start = Clock::now();
  {
    std::vector<size_t> sample = train_idx;
    if (sample.size() > o.tokenizer_documents) {
      std::mt19937_64 trng(o.seed ^ 0x746f6b656e697aULL);
      SeededShuffle(sample, trng);
      sample.resize(o.tokenizer_documents);
      std::sort(sample.begin(), sample.end());
    }
    std::vector<std::string> sentences;
    sentences.reserve(sample.size());
    for (size_t i : sample) sentences.push_back(documents[i]);
    SentencePieceTrainOptions to;
    to.vocab_size = static_cast<int>(o.shape.vocab_size);
    to.seed = o.seed;
    ASSIGN_OR_RETURN(const std::string model, TrainSentencePiece(sentences, to));
    RETURN_IF_ERROR(WriteFile(partial / "tokenizer.model", model));
  }
  report.tokenizer_seconds = std::chrono::duration<double>(Clock::now() - tok_start).count();
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, Tokenizer::Load(partial.string()));
  // A text too small for the vocabulary asked for gives fewer pieces: the model gets as many.
  LmShape shape = o.shape;
  shape.vocab_size = static_cast<int64_t>(tokenizer->vocab_size());
  report.parameters = shape.Parameters();
  report.vocab_size = shape.vocab_size;
  RETURN_IF_ERROR(WriteFile(partial / "config.json", ConfigJson(shape).dump(2) + "\n"));
  RETURN_IF_ERROR(WriteFile(partial / "tokenizer_config.json", TokenizerConfigJson(shape).dump(2) + "\n"));

  // 2. The text as windows.
  report_progress({"encode", 0, o.steps, 0, std::nan(""), 0});
  auto encode = [&](const std::vector<size_t>& idx) {
    std::vector<std::vector<int32_t>> ids;
    ids.reserve(idx.size());
    for (size_t i : idx) ids.push_back(tokenizer->Encode(documents[i], false, false));
    return ids;
  };
  const Dataset train = Windows(encode(train_idx), o.seq_len, std::numeric_limits<size_t>::max());
  const auto held_ids = encode(held_idx);
  const Dataset held_out = Windows(held_ids, o.seq_len, o.held_out_windows);
  {
    // Bytes per token of the held-out text: converts a loss per token into bits per byte,
    // which compares models with different tokenizers.
    uint64_t bytes = 0, tokens = 0;
    for (size_t k = 0; k < held_idx.size(); ++k) {
      bytes += documents[held_idx[k]].size() + 1;  // the document and its end
      tokens += held_ids[k].size() + 2;            // <s> ids </s>
    }
    report.held_out_bytes_per_token = static_cast<double>(bytes) / static_cast<double>(std::max<uint64_t>(1, tokens));
  }
  if (train.size() < o.batch_size || held_out.size() == 0) {
    return InvalidArgument(fmt::format("the text gives {} training and {} held-out windows of {} tokens: too few for "
                                       "batches of {}",
                                       train.size(), held_out.size(), o.seq_len, o.batch_size));
  }
  report.train_tokens = train.tokens.size();

  // 3. The initial weights, as a checkpoint the model opens like any other.
  try {
    torch::manual_seed(o.seed);
    LlamaConfig config;
    ASSIGN_OR_RETURN(config, ParseConfig(ConfigJson(shape).dump(), "the pretraining config"));
    std::vector<torch::Tensor> values;
    std::vector<safetensors::F32Tensor> tensors;
    for (const auto& [name, shape] : ExpectedWeights(config)) {
      const bool norm = shape.size() == 1;
      torch::Tensor t = norm ? torch::ones(shape) : torch::randn(shape) * 0.02;
      values.push_back(t.contiguous());
      std::vector<uint32_t> dims(shape.begin(), shape.end());
      tensors.push_back({name, dims, std::span<const float>(values.back().data_ptr<float>(), values.back().numel())});
    }
    RETURN_IF_ERROR(WriteFile(partial / "model.safetensors", safetensors::Encode(tensors, {{"format", "pt"}})));
  } catch (const c10::Error& e) {
    return Internal(fmt::format("initialising the model: {}", e.what_without_backtrace()));
  }

  // 4. Training, through full fine-tuning of that checkpoint.
  ASSIGN_OR_RETURN(std::shared_ptr<const Checkpoint> checkpoint, Checkpoint::Open(partial.string()));
  LlamaOptions lo;
  lo.full = true;
  lo.target_modules.clear();
  ASSIGN_OR_RETURN(std::unique_ptr<LlamaModel> model, LlamaModel::Create(checkpoint, lo));
  const AdapterSpec spec = model->Spec();
  std::vector<torch::Tensor> decay, no_decay;
  for (const torch::Tensor& p : model->TrainableParameters()) (p.dim() >= 2 ? decay : no_decay).push_back(p);
  const auto start = Clock::now();
  double held_loss = std::nan("");
  try {
    torch::optim::AdamWOptions defaults(o.lr);
    defaults.betas({0.9, 0.95}).eps(1e-8).weight_decay(o.weight_decay);
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(defaults));
    auto nd = std::make_unique<torch::optim::AdamWOptions>(defaults);
    nd->weight_decay(0);
    groups.emplace_back(no_decay, std::move(nd));
    torch::optim::AdamW optimizer(std::move(groups), defaults);
    report.base_held_out_loss = HeldOutLoss(*model, held_out);

    std::vector<size_t> epoch(train.size());
    size_t next = epoch.size();
    std::mt19937_64 brng(o.seed ^ 0x6261746368ULL);
    std::vector<double> recent;
    for (uint64_t step = 1; step <= o.steps; ++step) {
      const double warm = o.warmup_steps > 0 ? std::min(1.0, static_cast<double>(step) / o.warmup_steps) : 1.0;
      const double progress_frac = o.steps > o.warmup_steps
                                       ? std::clamp(static_cast<double>(step - std::min<uint64_t>(step, o.warmup_steps)) /
                                                        static_cast<double>(o.steps - o.warmup_steps),
                                                    0.0, 1.0)
                                       : 1.0;
      const double cosine = o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + std::cos(M_PI * progress_frac));
      const double lr = o.lr * warm * (step <= o.warmup_steps ? 1.0 : cosine);
      for (auto& g : optimizer.param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);

      std::vector<size_t> batch_idx;
      while (batch_idx.size() < o.batch_size) {
        if (next == epoch.size()) {
          for (size_t i = 0; i < epoch.size(); ++i) epoch[i] = i;
          SeededShuffle(epoch, brng);
          next = 0;
        }
        batch_idx.push_back(epoch[next++]);
      }
      const Batch batch = model->MakeBatch(train, batch_idx);
      optimizer.zero_grad();
      const torch::Tensor loss = model->Losses(batch).mean();
      loss.backward();
      torch::nn::utils::clip_grad_norm_(model->TrainableParameters(), 1.0);
      optimizer.step();
      const double value = loss.item<double>();
      if (!std::isfinite(value)) {
        return InvalidArgument(fmt::format("training diverged at step {} (loss {}); lower --lr", step, value));
      }
      recent.push_back(value);
      if (recent.size() > 50) recent.erase(recent.begin());
      if ((o.eval_every > 0 && step % o.eval_every == 0) || step == o.steps) held_loss = HeldOutLoss(*model, held_out);
      report_progress({"train", step, o.steps, value, held_loss,
                       std::chrono::duration<double>(Clock::now() - start).count()});
    }
    double sum = 0;
    for (double v : recent) sum += v;
    report.final_train_loss = sum / static_cast<double>(recent.size());
  } catch (const c10::Error& e) {
    return Internal(fmt::format("pretraining: {}", e.what_without_backtrace()));
  }
  report.train_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  report.held_out_loss = held_loss;
  report.tokens_seen = o.steps * o.batch_size * o.seq_len;
  report.epochs = static_cast<double>(report.tokens_seen) / static_cast<double>(report.train_tokens);

  // 5. The trained weights replace the initial ones; the record; the directory appears whole.
  {
    const AdapterState trained = model->ExportAdapter();
    std::vector<safetensors::F32Tensor> tensors;
    for (const auto& t : trained.tensors) tensors.push_back({t.name, t.shape, std::span<const float>(t.values)});
    const fs::path weights = partial / "model.safetensors";
    RETURN_IF_ERROR(WriteFile(partial / "model.safetensors.new", safetensors::Encode(tensors, {{"format", "pt"}})));
    model.reset();
    checkpoint.reset();
    fs::rename(partial / "model.safetensors.new", weights, ec);
    if (ec) return IoError(fmt::format("cannot rename into '{}': {}", weights.string(), ec.message()));
  }
  const json record = {
      {"made_by", "fedlora pretrain --task lm"},
      {"source", o.source},
      {"seed", o.seed},
      {"parameters", report.parameters},
      {"shape", ConfigJson(shape)},
      {"seq_len", o.seq_len},
      {"batch_size", o.batch_size},
      {"steps", o.steps},
      {"lr", o.lr},
      {"min_lr_ratio", o.min_lr_ratio},
      {"warmup_steps", o.warmup_steps},
      {"weight_decay", o.weight_decay},
      {"train_documents", report.train_documents},
      {"held_out_documents", report.held_out_documents},
      {"train_tokens", report.train_tokens},
      {"epochs", report.epochs},
      {"final_train_loss", report.final_train_loss},
      {"held_out_loss", report.held_out_loss},
      {"held_out_perplexity", std::exp(report.held_out_loss)},
      {"initial_held_out_perplexity", std::exp(report.base_held_out_loss)},
      {"held_out_bits_per_byte", report.held_out_loss / std::log(2.0) / report.held_out_bytes_per_token},
      {"torch_threads", at::get_num_threads()},
  };
  // Timings are not part of the record: the directory is a function of its inputs.
  RETURN_IF_ERROR(WriteFile(partial / "fedlora_pretrain.json", record.dump(2) + "\n"));
  fs::create_directories(out.parent_path().empty() ? fs::path(".") : out.parent_path(), ec);
  fs::rename(partial, out, ec);
  if (ec) return IoError(fmt::format("cannot rename '{}' to '{}': {}", partial.string(), out_dir, ec.message()));
  cleanup.keep = true;
  report_progress({"done", o.steps, o.steps, report.final_train_loss, report.held_out_loss,
                   report.train_seconds});
  return report;
}

}  // namespace fedlora::worker::lm
