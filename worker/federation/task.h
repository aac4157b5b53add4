// The tasks, wired for a federation (fedlora::federation): which data, which split, which model, and the pieces
// every role needs from them (the frozen base, version 0 of the adapter, each client's shard,
// the evaluator of a global).
//   image: Fashion-MNIST classification with a base fedlora pretrains (vit-tiny or mlp);
//   lm-finetune (also "lm"): next-token fine-tuning of a Llama-family checkpoint directory
//          (--base, else fedlora's own) on text files, tokenized with the checkpoint's
//          tokenizer; a client's shard is drawn from the sources (files) by the same non-IID
//          partitions as the image classes.
//   text-classify: the same checkpoint as a sequence classifier (worker/lm/llama.h) of
//          WordNet's glosses into their 45 lexicographer classes; the partitions deal the
//          glosses out by class.
// This header is LibTorch-free so that only worker/federation/task.cc pays LibTorch's compile time.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "aggregator/aggregator.h"
#include "schema/status.h"
#include "worker/data.h"
#include "worker/lm/packaged_text.h"
#include "worker/lm/text_corpus.h"

namespace fedlora::federation {

// How `fedlora pretrain --task lm` (and `run` when the lm task has no --base) makes fedlora's
// own language model (worker/lm/pretrain.h).
struct LmPretrainFlags {
  std::string size = "small";       // worker::lm::LmShapeNamed
  uint64_t steps = 0;               // 0: the size's default
  uint64_t seed = 1;
  std::string text;                 // the dictd dictionary it learns from (empty: Debian's dict-gcide)
  size_t max_documents = 0;         // 0: every entry
  // Overrides of the size's shape (0: the size's).
  int64_t hidden = 0, layers = 0, vocab = 0;
};

struct TaskOptions {
  std::string task = "image";       // "image", "lm-finetune" (also "lm") or "text-classify"
  // image
  std::string data_dir = worker::kDefaultFashionMnistDir;
  std::string arch = "vit-tiny";    // base model: "vit-tiny" or "mlp"
  // lm
  std::string base;                 // the checkpoint directory (config.json, safetensors, tokenizer.model);
                                    // empty: fedlora's own, <store>/base/fedlora-lm, made if missing
  LmPretrainFlags pretrain;         // how fedlora's own is made
  std::vector<std::string> text = {worker::lm::kDefaultTextDir};  // files or directories (one source per file)
  uint32_t seq_len = 128;           // tokens per example at most (BOS included)
  uint32_t examples_per_source = 0; // 0: every example of every source (text-classify: of every class)
  double test_fraction = 0.1;       // of each source (class), held out for evaluation
  // text-classify
  std::string wordnet_dir = worker::lm::kDefaultWordNetDir;  // Debian's wordnet-base
  // both
  std::vector<std::string> target_modules;  // LoRA targets (empty: the model's default)
  uint32_t rank = 8;                // LoRA rank
  float lora_alpha = 16.0f;         // LoRA scale alpha / r
  uint64_t lora_seed = 1;           // seed of every client's identical A initialisation
  bool full = false;                // no LoRA: every base parameter is trained (method "full")
  bool lora_residual = false;       // LoRA modules keep a residual (flora --flora-merge exact)
  int num_clients = 6;              // clients the private data is split across
  double dirichlet_alpha = 0.5;     // non-IID strength: 0.5 mild, 0.1 strong, 0.01 extreme
  uint64_t partition_seed = 11;
  std::string partition = "dirichlet";  // or "pathological"
  int classes_per_client = 2;           // pathological split
};

// <store>/base/<arch>.pt
std::string BasePath(const std::string& store_dir, const std::string& arch);

// The tasks over a language-model checkpoint: "lm", "lm-finetune" and "text-classify".
bool IsLanguageTask(const TaskOptions& task);
// "text-classify".
bool IsTextClassification(const TaskOptions& task);

// The task an adapter of `spec` belongs to: "image", "lm" (a language model's adapter) or
// "text-classify" (one with a classification head).
std::string TaskOfSpec(const AdapterSpec& spec);

// The tasks `--task` accepts, for flag checks and messages.
inline const std::vector<std::string> kTaskNames = {"image", "lm", "lm-finetune", "text-classify"};

// <store>/base/fedlora-lm: the language model fedlora makes when no --base is given.
std::string OwnLanguageModelPath(const std::string& store_dir);

// The base a task fine-tunes: an image task's pretrained file (<store>/base/<arch>.pt), or a
// language-model task's checkpoint directory (--base, else OwnLanguageModelPath). Errors:
// kInvalidArgument (an unknown task).
Result<std::string> TaskBase(const TaskOptions& task, const std::string& store_dir);

// A task's data: what the clients' shards index, and the held-out examples evaluation uses.
struct TaskData {
  std::shared_ptr<const worker::Dataset> train;
  std::shared_ptr<const worker::Dataset> test;
  std::vector<std::vector<size_t>> shards;  // per client, indices into *train
  std::string unit;                         // what an example is, for messages ("images", "text examples")
};
// `progress(done, total)` while text files are read (optional). Errors: those of the loaders
// (missing data, tokenizer, empty corpus) and of the partitions.
Result<TaskData> LoadTaskData(const TaskOptions& task, const std::function<void(size_t, size_t)>& progress = {});

// The headline figure of an evaluation: "accuracy 0.8123" (image, text-classify) or
// "perplexity 23.41 (next-token accuracy 0.3120)".
std::string DescribeEval(const TaskOptions& task, double accuracy, double loss);

// Pretrains the base into `base_path` unless it exists (epochs 0: the default): the image
// model, or for the lm task without --base fedlora's own language model (task.pretrain; a
// user's checkpoint is never made). `progress(epoch, epochs, loss)` after each epoch (language
// model: each step). Returns true when it pretrained.
Result<bool> EnsureBase(const TaskOptions& task, const std::string& base_path, uint32_t epochs,
                        const std::function<void(uint32_t, uint32_t, double)>& progress);

// Why a role cannot start without `base` and what makes it: kFailedPrecondition naming the
// `fedlora pretrain` command (image, or fedlora's own language model) or the missing checkpoint.
Status MissingBase(const TaskOptions& task, const std::string& base, const std::string& store_dir);

// Makes fedlora's own language model into `out_dir` from the dictionary text of `flags`.
// `progress(step, steps, loss)` while it trains. Errors: kNotFound (dict-gcide is not installed,
// naming the package), kAlreadyExists, those of worker::lm::PretrainLanguageModel.
Status PretrainLanguageBase(const LmPretrainFlags& flags, const std::string& out_dir,
                            const std::function<void(uint32_t, uint32_t, double)>& progress);

// Version 0: the base's head, LoRA A from the shared seed, LoRA B zero. `base_path` is
// TaskBase's.
Result<aggregator::InitialAdapter> MakeInitialAdapter(const TaskOptions& task, const std::string& base_path);

// Evaluates a global on the first `max_samples` test examples (0: all). The returned callable
// owns its own model and must be called from one thread at a time.
Result<aggregator::Evaluator> MakeEvaluator(const std::string& base_path,
                                            std::shared_ptr<const worker::Dataset> test,
                                            size_t max_samples);

// Every client's shard of the private training split of Fashion-MNIST (deterministic in `task`).
Result<std::vector<std::vector<size_t>>> ClientShards(const worker::Dataset& train, const TaskOptions& task);

// A client's accuracy on its own label mix (image classes or text sources): sum_c p(c) acc(c),
// p the label distribution of
// train[shard] and acc the per-class test accuracy of the model it would use. Any other
// per-class figure mixes the same way (the mean loss per class gives a client's mean loss).
double MixAccuracy(const worker::Dataset& train, const std::vector<size_t>& shard,
                   const std::vector<double>& class_accuracy);

// Intra-op threads of LibTorch for this process.
void SetTorchThreads(int threads);

}  // namespace fedlora::federation
