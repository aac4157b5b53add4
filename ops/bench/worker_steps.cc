// Worker training step rate: optimizer steps/s of one worker's local training, through the
// product's own code (worker::Model::Create and worker::TrainLocal, the function a worker's
// local round calls), on real Fashion-MNIST batches with the base frozen and only the adapter
// (LoRA factors and head) trainable. One process measures one figure; ops/bench/worker-steps
// alternates it with the PyTorch reference (worker_steps.py) and takes the medians.
// Usage: fedlora_bench_worker_steps [--arch vit-tiny] [--batch-size 32] [--threads 1]
//        [--rank 8] [--warmup 40] [--steps 400] [--json FILE]
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>

#include "ops/bench/train_steps.h"
#include "worker/client.h"
#include "worker/data.h"
#include "worker/model.h"
#include "worker/train.h"

namespace {

using Clock = std::chrono::steady_clock;
using namespace fedlora;

struct Flags {
  std::string arch = "vit-tiny";
  uint32_t batch_size = worker::LocalTrainOptions{}.batch_size;
  int threads = 1;
  uint32_t rank = worker::ModelOptions{}.lora_rank;
  float alpha = worker::ModelOptions{}.lora_alpha;
  float lr = worker::LocalTrainOptions{}.lr;
  uint32_t steps_per_run = worker::LocalTrainOptions{}.steps;
  uint32_t warmup = 40;
  uint32_t steps = 400;
  std::string data_dir = worker::kDefaultFashionMnistDir;
  std::string json_out;
};

[[noreturn]] void Fail(const Status& s) {
  fmt::print(stderr, "fedlora_bench_worker_steps: {}\n", s.ToString());
  std::exit(1);
}

// Runs `steps` steps as the worker does (bench::TrainSteps); returns the last run's mean loss.
double Train(worker::Model& model, const worker::Dataset& data, const std::vector<size_t>& indices,
             const Flags& f, uint32_t steps, uint64_t& seed) {
  auto loss = bench::TrainSteps(model, data, indices, {f.steps_per_run, f.batch_size, f.lr}, steps, seed);
  if (!loss.ok()) Fail(loss.status());
  return *loss;
}

}  // namespace

int main(int argc, char** argv) {
  fedlora::worker::TuneAllocatorForTraining();  // as the worker command does
  CLI::App app{"Training steps/s of one fedlora worker (worker::TrainLocal) on Fashion-MNIST"};
  Flags f;
  app.add_option("--arch", f.arch, "Model: vit-tiny or mlp")
      ->check(CLI::IsMember({"vit-tiny", "mlp"}))
      ->capture_default_str();
  app.add_option("--batch-size", f.batch_size, "Local batch size")->check(CLI::Range(1, 65536))->capture_default_str();
  app.add_option("--threads", f.threads, "LibTorch intra-op threads")->check(CLI::Range(1, 256))->capture_default_str();
  app.add_option("--rank", f.rank, "LoRA rank")->check(CLI::Range(1, 1024))->capture_default_str();
  app.add_option("--alpha", f.alpha, "LoRA alpha (scale alpha / rank)")->capture_default_str();
  app.add_option("--lr", f.lr, "Adam learning rate")->capture_default_str();
  app.add_option("--steps-per-run", f.steps_per_run, "Steps per local run (a fresh Adam each, as in the worker)")
      ->check(CLI::Range(1, 1000000))
      ->capture_default_str();
  app.add_option("--warmup", f.warmup, "Untimed steps first")->capture_default_str();
  app.add_option("--steps", f.steps, "Timed steps")->check(CLI::Range(1, 100000000))->capture_default_str();
  app.add_option("--data-dir", f.data_dir, "Fashion-MNIST IDX files")->capture_default_str();
  app.add_option("--json", f.json_out, "Also write the result as JSON here");
  CLI11_PARSE(app, argc, argv);

  // As federation::SetTorchThreads, which `fedlora run` calls with 1 for its in-process workers.
  at::set_num_threads(f.threads);
  at::set_num_interop_threads(1);

  auto data = worker::LoadFashionMnist(f.data_dir, worker::Split::kTrain);
  if (!data.ok()) Fail(data.status());
  std::vector<size_t> indices(data->size());
  std::iota(indices.begin(), indices.end(), size_t{0});

  worker::ModelOptions mo;
  mo.arch = f.arch;
  mo.lora_rank = f.rank;
  mo.lora_alpha = f.alpha;
  auto model = worker::Model::Create(mo);
  if (!model.ok()) Fail(model.status());
  // The Model interface has no "all parameters": in pretraining mode every base weight and the
  // head train (LoRA frozen), so the total is those plus the LoRA factors.
  if (auto st = (*model)->SetPretraining(true); !st.ok()) Fail(st);
  int64_t total = bench::Numel((*model)->TrainableParameters());
  for (size_t i = 0; i < (*model)->Spec().tensors.size(); ++i) {
    if ((*model)->Spec().tensors[i].role != TensorRole::kDense) total += (*model)->AdapterTensors()[i].numel();
  }
  if (auto st = (*model)->SetPretraining(false); !st.ok()) Fail(st);
  const int64_t trainable = bench::Numel((*model)->TrainableParameters());

  uint64_t seed = 1;
  Train(**model, *data, indices, f, f.warmup, seed);
  const auto started = Clock::now();
  const std::clock_t cpu_started = std::clock();
  const double loss = Train(**model, *data, indices, f, f.steps, seed);
  const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
  // CPU time of the whole process (all its threads): steadier than wall time on a shared
  // machine, where other jobs take turns on the cores.
  const double cpu_seconds = static_cast<double>(std::clock() - cpu_started) / CLOCKS_PER_SEC;

  nlohmann::json out = {{"side", "c++"},
                        {"arch", f.arch},
                        {"batch_size", f.batch_size},
                        {"threads", f.threads},
                        {"rank", f.rank},
                        {"warmup", f.warmup},
                        {"steps", f.steps},
                        {"seconds", seconds},
                        {"steps_per_s", f.steps / seconds},
                        {"cpu_ms_per_step", 1e3 * cpu_seconds / f.steps},
                        {"params_total", total},
                        {"params_trainable", trainable},
                        {"last_run_loss", loss}};
  fmt::print("{}\n", out.dump());
  if (!f.json_out.empty()) std::ofstream(f.json_out) << out.dump(2) << "\n";
  return 0;
}
