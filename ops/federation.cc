#include "ops/federation.h"

#include <fmt/format.h>

#include <filesystem>

#include "worker/model.h"
#include "worker/train.h"

namespace fedlora::ops {

std::string BasePath(const std::string& store_dir, const std::string& arch) {
  return (std::filesystem::path(store_dir) / "base" / (arch + ".pt")).string();
}

Result<bool> EnsureBase(const TaskOptions& task, const std::string& base_path, uint32_t epochs,
                        const std::function<void(uint32_t, uint32_t, double)>& progress) {
  if (std::filesystem::exists(base_path)) return false;
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
  mo.lora_rank = task.rank;
  mo.lora_alpha = task.lora_alpha;
  mo.lora_seed = task.lora_seed;
  mo.full = task.full;
  mo.lora_residual = task.lora_residual;
  return mo;
}

worker::ModelOptions ModelFor(const AdapterSpec& spec) {
  worker::ModelOptions mo;
  mo.arch = spec.model;
  mo.lora_rank = spec.rank;
  mo.lora_alpha = spec.alpha;
  mo.lora_seed = spec.seed;
  mo.target_modules = spec.target_modules;
  mo.full = spec.rank == 0;
  mo.lora_residual = spec.has_residuals();
  return mo;
}

}  // namespace

Result<aggregator::InitialAdapter> MakeInitialAdapter(const TaskOptions& task, const std::string& base_path) {
  ASSIGN_OR_RETURN(auto model, worker::Model::Create(ModelFor(task)));
  RETURN_IF_ERROR(model->LoadBase(base_path).WithContext("load base model"));
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
          ASSIGN_OR_RETURN(state->model, worker::Model::Create(ModelFor(spec)));
          RETURN_IF_ERROR(state->model->LoadBase(base_path).WithContext("load base model"));
          state->spec = spec;
        }
        RETURN_IF_ERROR(state->model->LoadAdapter(adapter));
        const worker::EvalResult r = worker::Evaluate(*state->model, *test, max_samples);
        aggregator::EvalOutcome out{r.accuracy, r.loss, r.samples, {}};
        for (size_t c = 0; c < r.class_total.size(); ++c) {
          out.class_accuracy.push_back(r.class_total[c] ? static_cast<double>(r.class_correct[c]) / r.class_total[c] : 0.0);
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

}  // namespace fedlora::ops
