#include "worker/federation/roles.h"

#include <fmt/format.h>

#include <filesystem>

namespace fedlora::federation {

Result<std::unique_ptr<aggregator::Aggregator>> MakeAggregatorRole(AggregatorRole role) {
  const auto& method = role.options.engine.method.method();
  role.task.full = method.full_model();
  role.task.lora_residual = method.KeepsResiduals(role.options.engine.method.params());
  ASSIGN_OR_RETURN(const std::string base, TaskBase(role.task, role.store.dir));
  if (!std::filesystem::exists(base)) return MissingBase(role.task, base, role.store.dir);
  const bool lm = IsLanguageTask(role.task);
  if (lm) role.task.base = base;
  auto& o = role.options;
  o.store_path = role.store.adapters();
  ASSIGN_OR_RETURN(o.initial, MakeInitialAdapter(role.task, base));
  std::shared_ptr<const worker::Dataset> test;
  if (lm) {
    ASSIGN_OR_RETURN(TaskData data, LoadTaskData(role.task));  // the held-out text: the workers' split, same flags
    test = data.test;
  } else {
    ASSIGN_OR_RETURN(worker::Dataset images, worker::LoadFashionMnist(role.task.data_dir, worker::Split::kTest));
    test = std::make_shared<const worker::Dataset>(std::move(images));
  }
  ASSIGN_OR_RETURN(o.evaluate, MakeEvaluator(base, test, role.eval_samples));
  return aggregator::Aggregator::Create(std::move(o));
}

Result<MadeWorker> MakeWorkerRole(WorkerRole role) {
  const bool lm = IsLanguageTask(role.task);
  if (lm) role.task.base = role.base;
  std::string base = role.base;
  if (base.empty() || lm) {
    ASSIGN_OR_RETURN(base, TaskBase(role.task, role.store.dir));
  }
  if (!std::filesystem::exists(base)) return MissingBase(role.task, base, role.store.dir);
  if (lm) role.task.base = base;
  if (role.index < 0 || role.index >= role.task.num_clients) {
    return InvalidArgument(fmt::format("--index {} is outside 0..{} (--clients {})", role.index,
                                       role.task.num_clients - 1, role.task.num_clients));
  }
  ASSIGN_OR_RETURN(TaskData data, LoadTaskData(role.task));
  MadeWorker out;
  out.shard_size = data.shards[static_cast<size_t>(role.index)].size();
  role.options.base_path = base;
  ASSIGN_OR_RETURN(out.worker, worker::Worker::Create(std::move(role.options), data.train,
                                                      std::move(data.shards[static_cast<size_t>(role.index)])));
  return out;
}

}  // namespace fedlora::federation
