#include "ops/flags.h"

#include <spdlog/spdlog.h>

#include <atomic>
#include <csignal>

namespace fedlora::ops {

void AddTaskFlags(CLI::App* app, TaskOptions& task) {
  app->add_option("--data-dir", task.data_dir, "Fashion-MNIST IDX files (Debian package dataset-fashion-mnist)")
      ->capture_default_str();
  app->add_option("--arch", task.arch, "Base model: vit-tiny or mlp")
      ->check(CLI::IsMember({"vit-tiny", "mlp"}))
      ->capture_default_str();
  app->add_option("--rank", task.rank, "LoRA rank r")->check(CLI::Range(1, 256))->capture_default_str();
  app->add_option("--lora-alpha", task.lora_alpha, "LoRA alpha (scale alpha/r)")->capture_default_str();
  app->add_option("--lora-seed", task.lora_seed, "Seed of the shared LoRA A initialisation")->capture_default_str();
  app->add_option("--clients", task.num_clients, "Number of clients the private data is split across")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  app->add_option("--dirichlet", task.dirichlet_alpha, "Dirichlet alpha of the non-IID label split")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app->add_option("--partition-seed", task.partition_seed, "Seed of the data partition")->capture_default_str();
}

void AddEngineFlags(CLI::App* app, EngineFlags& f) {
  app->add_option("--mode", f.mode, "Aggregation: fedbuff, fedasync or sync (barrier baseline)")
      ->check(CLI::IsMember({"fedbuff", "fedasync", "sync"}))
      ->capture_default_str();
  app->add_option("--buffer-size,-K", f.engine.buffer_size, "FedBuff: updates per version")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  app->add_option("--fedasync-alpha", f.engine.fedasync_alpha, "FedAsync mixing weight")->capture_default_str();
  app->add_option("--server-lr", f.engine.server_lr, "Server step size of FedBuff and sync")->capture_default_str();
  app->add_option("--staleness", f.staleness, "Staleness weight: constant, polynomial, hinge")
      ->check(CLI::IsMember({"constant", "polynomial", "hinge"}))
      ->capture_default_str();
  app->add_option("--staleness-a", f.engine.staleness.a, "Polynomial exponent / hinge slope")->capture_default_str();
  app->add_option("--staleness-b", f.engine.staleness.b, "Hinge: staleness kept at full weight")->capture_default_str();
  app->add_option("--max-staleness", f.engine.staleness.max_staleness, "Drop updates staler than this")
      ->capture_default_str();
  app->add_option("--round-size", f.engine.round_size, "Sync mode: clients per round")->capture_default_str();
}

Status ResolveEngineFlags(EngineFlags& f) {
  if (f.mode == "fedbuff") {
    f.engine.mode = wire::Mode::FedBuff;
  } else if (f.mode == "fedasync") {
    f.engine.mode = wire::Mode::FedAsync;
  } else if (f.mode == "sync") {
    f.engine.mode = wire::Mode::Sync;
  } else {
    return InvalidArgument("unknown mode '" + f.mode + "' (fedbuff, fedasync, sync)");
  }
  ASSIGN_OR_RETURN(f.engine.staleness.fn, aggregator::ParseStalenessFn(f.staleness));
  return aggregator::ValidateEngineOptions(f.engine);
}

void AddTrainingFlags(CLI::App* app, worker::WorkerTraining& t) {
  app->add_option("--local-steps", t.steps, "Optimizer steps per local run")->check(CLI::Range(1, 1000000))
      ->capture_default_str();
  app->add_option("--batch-size", t.batch_size, "Local batch size")->check(CLI::Range(1, 65536))
      ->capture_default_str();
  app->add_option("--lr", t.lr, "Local learning rate")->check(CLI::PositiveNumber)->capture_default_str();
}

namespace {
std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop.store(true); }
}  // namespace

void InstallStopSignals() {
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
}

bool StopSignalled() { return g_stop.load(); }

void SetupLogging(bool verbose) {
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ [%n] %v");
  spdlog::set_level(verbose ? spdlog::level::info : spdlog::level::warn);
}

}  // namespace fedlora::ops
