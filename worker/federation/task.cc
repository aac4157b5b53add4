#include "worker/federation/task.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <random>

#include "worker/lm/checkpoint.h"
#include "worker/lm/llama.h"
#include "worker/lm/packaged_text.h"
#include "worker/lm/pretrain.h"
#include "worker/lm/text_corpus.h"
#include "worker/lm/tokenizer.h"
#include "worker/model.h"
#include "worker/train.h"

namespace fedlora::federation {

std::string BasePath(const std::string& store_dir, const std::string& arch) {
  return (std::filesystem::path(store_dir) / "base" / (arch + ".pt")).string();
}

bool IsLanguageTask(const TaskOptions& task) {
  return task.task == "lm" || task.task == "lm-finetune" || IsTextClassification(task);
}

bool IsTextClassification(const TaskOptions& task) { return task.task == "text-classify"; }

std::string TaskOfSpec(const AdapterSpec& spec) {
  if (!worker::IsLanguageModel(spec.model)) return "image";
  const bool classifier = std::any_of(spec.tensors.begin(), spec.tensors.end(),
                                      [](const TensorSpec& t) { return t.name == worker::lm::kClassifierHead; });
  return classifier ? "text-classify" : "lm";
}

std::string OwnLanguageModelPath(const std::string& store_dir) {
  return (std::filesystem::path(store_dir) / "base" / "fedlora-lm").string();
}

Result<std::string> TaskBase(const TaskOptions& task, const std::string& store_dir) {
  if (task.task == "image") return BasePath(store_dir, task.arch);
  if (!IsLanguageTask(task)) {
    return InvalidArgument(fmt::format("unknown task '{}' (image, lm-finetune, text-classify)", task.task));
  }
  if (task.base.empty()) return OwnLanguageModelPath(store_dir);
  return task.base;
}

Result<TaskData> LoadTaskData(const TaskOptions& task, const std::function<void(size_t, size_t)>& progress) {
  TaskData out;
  if (!IsLanguageTask(task)) {
    ASSIGN_OR_RETURN(worker::Dataset train, worker::LoadFashionMnist(task.data_dir, worker::Split::kTrain));
    ASSIGN_OR_RETURN(worker::Dataset test, worker::LoadFashionMnist(task.data_dir, worker::Split::kTest));
    ASSIGN_OR_RETURN(out.shards, ClientShards(train, task));
    out.train = std::make_shared<const worker::Dataset>(std::move(train));
    out.test = std::make_shared<const worker::Dataset>(std::move(test));
    out.unit = "images";
    return out;
  }
  if (task.num_clients <= 0) return InvalidArgument("number of clients must be positive");
  if (task.base.empty()) return InvalidArgument("the lm task's data needs its base checkpoint (TaskOptions::base)");
  const std::string& base = task.base;
  ASSIGN_OR_RETURN(std::unique_ptr<worker::lm::Tokenizer> tokenizer, worker::lm::Tokenizer::Load(base));
  worker::lm::TextCorpusOptions co;
  co.paths = task.text;
  co.max_tokens = task.seq_len;
  co.max_examples_per_source = task.examples_per_source;
  const worker::lm::Tokenizer& tok = *tokenizer;
  const worker::lm::TextEncoder encode = [&tok](std::string_view text) { return tok.Encode(text, tok.add_bos(), false); };
  worker::Dataset corpus;
  if (IsTextClassification(task)) {
    worker::lm::GlossOptions go;
    go.dir = task.wordnet_dir;
    go.max_tokens = task.seq_len;
    go.max_examples_per_class = task.examples_per_source;
    go.seed = task.partition_seed;
    ASSIGN_OR_RETURN(corpus, worker::lm::LoadWordNetGlosses(go, encode, progress));
  } else {
    ASSIGN_OR_RETURN(corpus, worker::lm::LoadTextCorpus(co, encode, progress));
  }
  worker::lm::TextSplit split = worker::lm::SplitHeldOut(corpus, task.test_fraction, task.partition_seed);
  if (IsTextClassification(task)) {
    // The test split in a seeded order, so that the first N examples a periodic evaluation
    // reads are a uniform sample of every class (the files hold the classes one after another).
    std::mt19937_64 rng(task.partition_seed ^ 0x7e57U);
    worker::SeededShuffle(split.test, rng);
  }
  if (split.test.empty() || split.train.empty()) {
    return InvalidArgument(fmt::format("the text holds {} examples: too few to hold some out for evaluation",
                                       corpus.size()));
  }
  if (task.partition == "pathological") {
    ASSIGN_OR_RETURN(out.shards, worker::PathologicalPartition(corpus, split.train, task.num_clients,
                                                               task.classes_per_client, task.partition_seed));
  } else if (task.partition == "dirichlet") {
    ASSIGN_OR_RETURN(out.shards, worker::DirichletPartition(corpus, split.train, task.num_clients,
                                                            task.dirichlet_alpha, task.partition_seed,
                                                            /*min_per_client=*/1));
  } else {
    return InvalidArgument(fmt::format("unknown partition '{}' (dirichlet, pathological)", task.partition));
  }
  out.test = std::make_shared<const worker::Dataset>(worker::lm::Subset(corpus, split.test));
  out.train = std::make_shared<const worker::Dataset>(std::move(corpus));
  out.unit = IsTextClassification(task) ? "glosses" : "text examples";
  return out;
}

std::string DescribeEval(const TaskOptions& task, double accuracy, double loss) {
  if (!IsLanguageTask(task) || IsTextClassification(task)) return fmt::format("accuracy {:.4f}", accuracy);
  return fmt::format("perplexity {:.3f} (next-token accuracy {:.4f})", std::exp(loss), accuracy);
}

Status MissingBase(const TaskOptions& task, const std::string& base, const std::string& store_dir) {
  if (!IsLanguageTask(task)) {
    return FailedPrecondition(fmt::format("no base model at '{}': run `fedlora pretrain --store {} --arch {}` first",
                                          base, store_dir, task.arch));
  }
  if (task.base.empty() || base == OwnLanguageModelPath(store_dir)) {
    return FailedPrecondition(fmt::format("no language model at '{}': run `fedlora pretrain --task lm --store {}` "
                                          "first (or give a checkpoint with --base DIR)",
                                          base, store_dir));
  }
  return FailedPrecondition(fmt::format("checkpoint directory '{}' does not exist", base));
}

Status PretrainLanguageBase(const LmPretrainFlags& flags, const std::string& out_dir,
                            const std::function<void(uint32_t, uint32_t, double)>& progress) {
  worker::lm::DictdOptions dictd;
  if (!flags.text.empty()) dictd.path = flags.text;
  dictd.max_entries = flags.max_documents;
  dictd.seed = flags.seed;
  ASSIGN_OR_RETURN(const std::vector<std::string> documents, worker::lm::ReadDictdDocuments(dictd));
  worker::lm::LmPretrainOptions po;
  ASSIGN_OR_RETURN(po.shape, worker::lm::LmShapeNamed(flags.size));
  if (flags.hidden > 0) {
    // The MLP keeps Llama's ratio (8/3, rounded up to a multiple of 16); heads of 48 to 64 dims.
    po.shape.intermediate_size = (flags.hidden * 8 / 3 + 15) / 16 * 16;
    po.shape.hidden_size = flags.hidden;
    po.shape.num_heads = po.shape.num_kv_heads = std::max<int64_t>(1, flags.hidden / 64);
  }
  if (flags.layers > 0) po.shape.num_layers = flags.layers;
  if (flags.vocab > 0) po.shape.vocab_size = flags.vocab;
  po.steps = flags.steps > 0 ? flags.steps : worker::lm::DefaultPretrainSteps(flags.size);
  po.seed = flags.seed;
  po.source = dictd.path;
  ASSIGN_OR_RETURN(auto report,
                   worker::lm::PretrainLanguageModel(documents, out_dir, po, [&](const worker::lm::LmPretrainProgress& p) {
                     if (progress && p.phase == "train") {
                       progress(static_cast<uint32_t>(p.step), static_cast<uint32_t>(p.steps), p.loss);
                     }
                   }));
  (void)report;
  return Status::Ok();
}

Result<bool> EnsureBase(const TaskOptions& task, const std::string& base_path, uint32_t epochs,
                        const std::function<void(uint32_t, uint32_t, double)>& progress) {
  if (std::filesystem::exists(base_path)) return false;
  if (IsLanguageTask(task)) {
    if (!task.base.empty()) return NotFound(fmt::format("checkpoint directory '{}' does not exist", base_path));
    RETURN_IF_ERROR(PretrainLanguageBase(task.pretrain, base_path, progress));
    return true;
  }
  worker::PretrainOptions po;
  po.model.arch = task.arch;
  po.data_dir = task.data_dir;
  po.out_path = base_path;
  if (epochs > 0) po.epochs = epochs;
  ASSIGN_OR_RETURN(auto report, worker::Pretrain(po, progress));
  (void)report;
  return true;
}

namespace {

worker::ModelOptions ModelFor(const TaskOptions& task) {
  worker::ModelOptions mo;
  mo.arch = task.arch;
  mo.target_modules = task.target_modules;
  mo.lora_rank = task.rank;
  mo.lora_alpha = task.lora_alpha;
  mo.lora_seed = task.lora_seed;
  mo.full = task.full;
  mo.lora_residual = task.lora_residual;
  if (IsTextClassification(task)) mo.num_classes = worker::lm::kWordNetLexFiles;
  return mo;
}


}  // namespace

Result<aggregator::InitialAdapter> MakeInitialAdapter(const TaskOptions& task, const std::string& base_path) {
  worker::ModelOptions mo = ModelFor(task);
  if (IsLanguageTask(task)) {
    ASSIGN_OR_RETURN(const worker::lm::LlamaConfig config, worker::lm::ReadConfig(base_path));
    mo.arch = config.architecture;
  }
  ASSIGN_OR_RETURN(auto model, worker::Model::Open(mo, base_path));
  return aggregator::InitialAdapter{model->Spec(), model->ExportAdapter()};
}

Result<aggregator::Evaluator> MakeEvaluator(const std::string& base_path,
                                            std::shared_ptr<const worker::Dataset> test,
                                            size_t max_samples) {
  if (!test || test->size() == 0) return InvalidArgument("evaluator needs a non-empty test set");
  // The model is rebuilt only when the spec changes (never, within one adapter).
  struct State {
    std::unique_ptr<worker::Model> model;
    AdapterSpec spec;
  };
  auto state = std::make_shared<State>();
  return aggregator::Evaluator(
      [state, base_path, test, max_samples](const AdapterSpec& spec,
                                            const AdapterState& adapter) -> Result<aggregator::EvalOutcome> {
        if (!state->model || state->spec.tensors.size() != spec.tensors.size() ||
            state->spec.model != spec.model || state->spec.rank != spec.rank) {
          ASSIGN_OR_RETURN(state->model, worker::Model::Open(worker::ModelOptions::ForSpec(spec), base_path));
          RETURN_IF_ERROR(state->model->CheckData(*test).WithContext("the evaluation data"));
          state->spec = spec;
        }
        RETURN_IF_ERROR(state->model->LoadAdapter(adapter));
        const worker::EvalResult r = worker::Evaluate(*state->model, *test, max_samples);
        aggregator::EvalOutcome out{r.accuracy, r.loss, r.samples, {}, {}};
        for (size_t c = 0; c < r.class_total.size(); ++c) {
          out.class_accuracy.push_back(r.class_total[c] ? static_cast<double>(r.class_correct[c]) / r.class_total[c] : 0.0);
          out.class_loss.push_back(r.class_total[c] ? r.class_loss_sum[c] / static_cast<double>(r.class_total[c]) : 0.0);
        }
        return out;
      });
}

Result<std::vector<std::vector<size_t>>> ClientShards(const worker::Dataset& train, const TaskOptions& task) {
  if (task.num_clients <= 0) return InvalidArgument("number of clients must be positive");
  const worker::PublicSplit split = worker::SplitPublic(train, worker::PublicSplitOptions{});
  if (task.partition == "pathological") {
    return worker::PathologicalPartition(train, split.private_indices, task.num_clients, task.classes_per_client,
                                         task.partition_seed);
  }
  if (task.partition != "dirichlet") {
    return InvalidArgument(fmt::format("unknown partition '{}' (dirichlet, pathological)", task.partition));
  }
  return worker::DirichletPartition(train, split.private_indices, task.num_clients, task.dirichlet_alpha,
                                    task.partition_seed);
}

double MixAccuracy(const worker::Dataset& train, const std::vector<size_t>& shard,
                   const std::vector<double>& class_accuracy) {
  if (shard.empty()) return 0;
  double sum = 0;
  for (size_t i : shard) {
    const size_t label = train.labels[i];
    if (label < class_accuracy.size()) sum += class_accuracy[label];
  }
  return sum / static_cast<double>(shard.size());
}

void SetTorchThreads(int threads) {
  at::set_num_threads(threads);
  try {
    at::set_num_interop_threads(1);  // allowed once per process, before any inter-op work
  } catch (const c10::Error&) {
  }
}

}  // namespace fedlora::federation
