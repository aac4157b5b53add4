#include "ops/flags.h"

#include <fmt/format.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <csignal>
#include <thread>

#include "ops/commands.h"

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
  AddPartitionFlags(app, task);
}

void AddLanguageTaskFlags(CLI::App* app, TaskOptions& task) {
  app->add_option("--task", task.task,
                  "image: classify Fashion-MNIST with a base fedlora pretrains; lm-finetune (or lm): fine-tune a "
                  "language model on next tokens of --text; text-classify: fine-tune it as a classifier of WordNet's "
                  "glosses (--wordnet) into their 45 lexicographer classes. The language model is the checkpoint of "
                  "--base or, without it, fedlora's own (<store>/base/fedlora-lm, made by `fedlora pretrain --task lm` "
                  "when missing)")
      ->check(CLI::IsMember(kTaskNames))
      ->capture_default_str();
  AddTextFlags(app, task);
  app->add_option("--target-modules", task.target_modules,
                  "LoRA targets, comma-separated (lm: PEFT's names q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,"
                  "down_proj, default q_proj,v_proj; image: the model's module paths, default all)")
      ->delimiter(',');
}

void AddTextFlags(CLI::App* app, TaskOptions& task) {
  app->add_option("--text", task.text,
                  "lm: text files or directories (each file one source, the unit of the non-IID split; fortune "
                  "files split at '%' lines, other files at blank lines)")
      ->capture_default_str();
  app->add_option("--seq-len", task.seq_len, "lm: tokens per example at most (lm-finetune cuts longer texts into windows, text-classify truncates "
                  "longer glosses)")
      ->check(CLI::Range(2, 1 << 20))
      ->capture_default_str();
  app->add_option("--examples-per-source", task.examples_per_source,
                  "lm-finetune: use the first N examples of each source; text-classify: a seeded sample of N glosses "
                  "of each class (0: all)")
      ->capture_default_str();
  app->add_option("--wordnet", task.wordnet_dir,
                  "text-classify: the WordNet directory holding data.noun, data.verb, data.adj and data.adv (Debian's "
                  "wordnet-base)")
      ->capture_default_str();
}

void AddPartitionFlags(CLI::App* app, TaskOptions& task) {
  app->add_option("--partition", task.partition,
                  "Label split across clients: dirichlet (see --dirichlet) or pathological (each client holds "
                  "--classes-per-client label-sorted shards)")
      ->check(CLI::IsMember({"dirichlet", "pathological"}))
      ->capture_default_str();
  app->add_option("--classes-per-client", task.classes_per_client,
                  "Pathological split: shards (classes, or text sources) per client")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
}

void AddTrainingFlags(CLI::App* app, worker::WorkerTraining& t, bool delta_flag) {
  app->add_option("--local-steps", t.steps, "Optimizer steps per local run")->check(CLI::Range(1, 1000000))
      ->capture_default_str();
  app->add_option("--batch-size", t.batch_size, "Local batch size (DP-SGD: the expected Poisson batch size)")
      ->check(CLI::Range(1, 65536))
      ->capture_default_str();
  app->add_option("--lr", t.lr, "Local learning rate")->check(CLI::PositiveNumber)->capture_default_str();
  auto& dp = t.dp;
  app->add_option("--dp-noise", dp.noise_multiplier,
                  "Record-level DP-SGD: noise multiplier sigma of each worker's local training (0: off, or derived "
                  "from --dp-epsilon and --dp-steps)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app->add_option("--dp-epsilon", dp.epsilon,
                  "Record-level DP-SGD: epsilon budget of each worker's data; a worker stops before a local run "
                  "that would exceed it (0: none)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app->add_option("--dp-steps", dp.planned_steps,
                  "Record-level DP-SGD: DP-SGD steps the epsilon is planned for; without --dp-noise the noise is "
                  "the smallest that spends exactly --dp-epsilon over them")
      ->capture_default_str();
  app->add_option("--dp-clip", dp.clip, "Record-level DP-SGD: per-example L2 clip norm")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  if (delta_flag) {
    app->add_option("--dp-delta", dp.delta, "delta of the epsilon reported")
        ->check(CLI::Range(1e-300, 0.5))
        ->capture_default_str();
  }
}

namespace {
std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop.store(true); }
}  // namespace

void AddClientKeyFlags(CLI::App* app, ClientKeyFlags& flags) {
  app->add_option("--broker-key", flags.broker_key,
                  "The secured broker's public key file (its .pub from `fedlora keygen`); needs --key")
      ->check(CLI::ExistingFile);
  app->add_option("--key", flags.key, "This client's secret key file (.key from `fedlora keygen`); its public key "
                                      "must be in the broker's --allow list")
      ->check(CLI::ExistingFile);
}

void InstallStopSignals() {
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
}

void AddHttpFlag(CLI::App* app, std::string& address, std::string_view what) {
  app->add_option("--http", address,
                  fmt::format("Serve {} over HTTP on HOST:PORT (port 0 picks a free one; the address is printed). "
                              "Bind to 127.0.0.1 unless the network is trusted: the endpoint has no authentication",
                              what));
}

bool StopSignalled() { return g_stop.load(); }

Status RunUntilSignalled(const std::function<Status(std::stop_token)>& body) {
  InstallStopSignals();
  Status result;
  std::atomic<bool> done{false};
  std::jthread thread([&](std::stop_token stop) {
    result = body(stop);
    done = true;
  });
  // Signal handlers can only set a flag; check it a few times a second.
  while (!done && !StopSignalled()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  thread.request_stop();
  thread.join();
  return result;
}

void SetupLogging(bool verbose) {
  // Log lines go to stderr, so that stdout carries only results (--json output stays parseable).
  if (!spdlog::get("fedlora")) spdlog::set_default_logger(spdlog::stderr_color_mt("fedlora"));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ [%n] %v");
  spdlog::set_level(verbose ? spdlog::level::info : spdlog::level::warn);
}

void Fail(std::string_view command, const Status& status, int exit_code) {
  throw CommandError{std::string(command), status, exit_code};
}

int RunCommandLine(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const CommandError& e) {
    std::fflush(stdout);
    fmt::print(stderr, "fedlora {}: {}\n", e.command, e.status.ToString());
    return e.exit_code;
  }
  return 0;
}

std::string HumanBytes(double bytes) {
  if (bytes < 0) return "-";
  if (bytes >= 1e9) return fmt::format("{:.2f} GB", bytes / 1e9);
  if (bytes >= 1e6) return fmt::format("{:.1f} MB", bytes / 1e6);
  if (bytes >= 1e3) return fmt::format("{:.1f} KB", bytes / 1e3);
  return fmt::format("{:.0f} B", bytes);
}

}  // namespace fedlora::ops
