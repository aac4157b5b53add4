// Language-model LoRA fine-tuning rate: tokens/s of one worker's local training of a
// Llama-family checkpoint, through the product's own code (worker::Model::Open and
// worker::TrainLocal, the function a worker's local round calls): the base frozen, LoRA pairs
// on the target modules trainable, runs of --steps-per-run steps each with a fresh Adam, and
// batches of random token sequences of exactly --seq-len tokens (no padding) drawn from a
// seeded pool. One process measures one figure; ops/bench/lm-train alternates it with the
// PyTorch reference (lm_train.py) and takes the medians, and ops/bench/lm-load runs it on a
// 1B checkpoint.
// Tokens/s = batch * seq_len * steps / elapsed, over the timed steps after the warmup.
// Usage: fedlora_bench_lm_train --model DIR [--batch-size 4] [--seq-len 128] [--threads 1]
//        [--rank 8] [--alpha 16] [--targets q_proj,v_proj] [--warmup 3] [--steps 20] [--json FILE]
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>

#include "ops/bench/lm_bench.h"
#include "ops/bench/train_steps.h"
#include "worker/client.h"
#include "worker/data.h"
#include "worker/lm/checkpoint.h"
#include "worker/model.h"
#include "worker/train.h"

namespace {

using Clock = std::chrono::steady_clock;
using namespace fedlora;

struct Flags {
  std::string model_dir;
  uint32_t batch_size = 4;
  uint32_t seq_len = 128;
  int threads = 1;
  uint32_t rank = worker::ModelOptions{}.lora_rank;
  float alpha = worker::ModelOptions{}.lora_alpha;
  std::vector<std::string> targets = worker::lm::kDefaultLoraTargets;
  float lr = worker::LocalTrainOptions{}.lr;
  uint32_t steps_per_run = worker::LocalTrainOptions{}.steps;
  uint32_t warmup = 3;
  uint32_t steps = 20;
  uint32_t pool = 256;
  uint64_t seed = 1;
  std::string json_out;
};

[[noreturn]] void Fail(const Status& s) {
  fmt::print(stderr, "fedlora_bench_lm_train: {}\n", s.ToString());
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
  CLI::App app{"LoRA fine-tuning tokens/s of a Llama-family checkpoint (worker::TrainLocal)"};
  Flags f;
  app.add_option("--model", f.model_dir, "Hugging Face checkpoint directory")->required();
  app.add_option("--batch-size", f.batch_size, "Sequences per step")->check(CLI::Range(1, 65536))->capture_default_str();
  app.add_option("--seq-len", f.seq_len, "Tokens per sequence (all real, no padding)")
      ->check(CLI::Range(2, 1 << 20))
      ->capture_default_str();
  app.add_option("--threads", f.threads, "LibTorch intra-op threads")->check(CLI::Range(1, 256))->capture_default_str();
  app.add_option("--rank", f.rank, "LoRA rank")->check(CLI::Range(1, 1024))->capture_default_str();
  app.add_option("--alpha", f.alpha, "LoRA alpha (scale alpha / rank)")->capture_default_str();
  app.add_option("--targets", f.targets, "LoRA target modules (PEFT's names)")->delimiter(',')->capture_default_str();
  app.add_option("--lr", f.lr, "Adam learning rate")->capture_default_str();
  app.add_option("--steps-per-run", f.steps_per_run, "Steps per local run (a fresh Adam each, as in the worker)")
      ->check(CLI::Range(1, 1000000))
      ->capture_default_str();
  app.add_option("--warmup", f.warmup, "Untimed steps first")->capture_default_str();
  app.add_option("--steps", f.steps, "Timed steps")->check(CLI::Range(1, 100000000))->capture_default_str();
  app.add_option("--pool", f.pool, "Random sequences the batches are drawn from")
      ->check(CLI::Range(1, 1 << 24))
      ->capture_default_str();
  app.add_option("--seed", f.seed, "Seed of the token pool")->capture_default_str();
  app.add_option("--json", f.json_out, "Also write the result as JSON here");
  CLI11_PARSE(app, argc, argv);

  // As federation::SetTorchThreads, which `fedlora run` calls with 1 for its in-process workers.
  at::set_num_threads(f.threads);
  at::set_num_interop_threads(1);

  auto config = worker::lm::ReadConfig(f.model_dir);
  if (!config.ok()) Fail(config.status());
  worker::ModelOptions mo;
  mo.arch = config->architecture;
  mo.lora_rank = f.rank;
  mo.lora_alpha = f.alpha;
  mo.target_modules = f.targets;
  const auto open_started = Clock::now();
  auto model = worker::Model::Open(mo, f.model_dir);
  if (!model.ok()) Fail(model.status());
  const double open_seconds = std::chrono::duration<double>(Clock::now() - open_started).count();
  const int64_t trainable = bench::Numel((*model)->TrainableParameters());
  const int64_t total = bench::BaseParameters(*config) + static_cast<int64_t>((*model)->Spec().numel());

  const worker::Dataset data = bench::RandomTokens(f.pool, f.seq_len, config->vocab_size, f.seed);
  std::vector<size_t> indices(data.size());
  std::iota(indices.begin(), indices.end(), size_t{0});

  uint64_t seed = 1;
  Train(**model, data, indices, f, f.warmup, seed);
  const auto started = Clock::now();
  const std::clock_t cpu_started = std::clock();
  rusage usage_started{};
  getrusage(RUSAGE_SELF, &usage_started);
  const double loss = Train(**model, data, indices, f, f.steps, seed);
  const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
  // CPU time of the whole process (all its threads): steadier than wall time on a shared
  // machine, where other jobs take turns on the cores.
  const double cpu_seconds = static_cast<double>(std::clock() - cpu_started) / CLOCKS_PER_SEC;
  // Of which in the kernel (page faults, mostly), and the minor page faults.
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  const double sys_seconds = static_cast<double>(usage.ru_stime.tv_sec - usage_started.ru_stime.tv_sec) +
                             1e-6 * static_cast<double>(usage.ru_stime.tv_usec - usage_started.ru_stime.tv_usec);
  const double faults = static_cast<double>(usage.ru_minflt - usage_started.ru_minflt);
  const double tokens = static_cast<double>(f.batch_size) * f.seq_len * f.steps;

  nlohmann::json out = {{"side", "c++"},
                        {"arch", config->architecture},
                        {"hidden", config->hidden_size},
                        {"layers", config->num_layers},
                        {"heads", config->num_heads},
                        {"kv_heads", config->num_kv_heads},
                        {"intermediate", config->intermediate_size},
                        {"vocab", config->vocab_size},
                        {"threads", f.threads},
                        {"batch", f.batch_size},
                        {"seq_len", f.seq_len},
                        {"rank", f.rank},
                        {"targets", f.targets},
                        {"warmup", f.warmup},
                        {"steps", f.steps},
                        {"seconds", seconds},
                        {"tokens_per_s", tokens / seconds},
                        {"steps_per_s", f.steps / seconds},
                        {"cpu_ms_per_step", 1e3 * cpu_seconds / f.steps},
                        {"sys_ms_per_step", 1e3 * sys_seconds / f.steps},
                        {"minor_faults_per_step", faults / f.steps},
                        {"params_total", total},
                        {"params_trainable", trainable},
                        {"open_s", open_seconds},
                        {"peak_rss_mib", static_cast<double>(bench::MaxRssBytes()) / (1 << 20)},
                        {"last_run_loss", loss}};
  fmt::print("{}\n", out.dump());
  if (!f.json_out.empty()) std::ofstream(f.json_out) << out.dump(2) << "\n";
  return 0;
}
