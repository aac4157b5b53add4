// `fedlora run`: the whole federation on this machine (broker, aggregator and heterogeneous
// workers on real loopback sockets, a real store), with progress and a summary; and
// `fedlora pretrain`, which builds the frozen base model.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <numeric>
#include <thread>

#include "broker/broker.h"
#include "ops/commands.h"
#include "ops/federation.h"
#include "ops/flags.h"
#include "ops/live.h"
#include "ops/progress.h"
#include "schema/transport/security.h"
#include "storage/adapter_store.h"
#include "worker/lm/pretrain.h"

namespace fedlora::ops {
namespace {

using Clock = std::chrono::steady_clock;

// What the aggregator has committed so far, as the progress line and the summary need it.
struct Progress {
  std::mutex mu;
  uint64_t version = 0;
  double last_accuracy = -1;
  double last_loss = -1;
  uint64_t last_accuracy_version = 0;
  uint64_t folded = 0;
  uint64_t dropped = 0;
  double staleness_sum = 0;
  uint32_t staleness_max = 0;

  void OnCommit(const codec::VersionInfo& v) {
    std::lock_guard lock(mu);
    version = v.version;
    if (v.test_accuracy >= 0) {
      last_accuracy = v.test_accuracy;
      last_loss = v.test_loss;
      last_accuracy_version = v.version;
    }
    folded += v.applied.size();
    dropped += v.dropped.size();
    for (const auto& a : v.applied) staleness_sum += a.staleness;
    staleness_max = std::max(staleness_max, v.max_staleness);
  }
};

// "1,1.5,2" -> {1, 1.5, 2}; throws std::invalid_argument on a non-number.
std::vector<double> ParseNumbers(const std::string& text) {
  std::vector<double> out;
  size_t pos = 0;
  while (pos <= text.size()) {
    const size_t comma = text.find(',', pos);
    const std::string item = text.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    if (!item.empty()) out.push_back(std::stod(item));
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
}

// The latest version of an adapter and its lineage, read like any tool would.
Result<std::pair<codec::DecodedGlobal, codec::VersionInfo>> LatestVersion(const std::string& path,
                                                                         const std::string& adapter) {
  storage::AdapterStoreOptions so;
  so.path = path;
  so.read_only = true;
  ASSIGN_OR_RETURN(auto store, storage::AdapterStore::Open(so));
  ASSIGN_OR_RETURN(auto cursor, store->GetCursor(adapter));
  if (!cursor) return NotFound("no version committed");
  ASSIGN_OR_RETURN(auto global, storage::ReadVersion(*store, adapter, cursor->version));
  ASSIGN_OR_RETURN(auto info, storage::ReadVersionInfo(*store, adapter, cursor->version));
  return std::make_pair(std::move(global), std::move(info));
}

// Pretraining progress on a live status line: the image base's epochs, or a language model's
// steps. When stdout is not a terminal, a language model's (minutes-long) pretraining prints
// one line per tenth of its steps.
std::function<void(uint32_t, uint32_t, double)> PretrainProgress(bool language_model) {
  auto line = std::make_shared<StatusLine>();
  return [line, language_model](uint32_t done, uint32_t total, double loss) {
    const std::string text =
        fmt::format("  pretrain {} {}/{}  loss {:.4f}", language_model ? "step" : "epoch", done, total, loss);
    if (!line->enabled()) {
      if (language_model && done * 10 / total != (done - 1) * 10 / total) fmt::print("{}\n", text);
      return;
    }
    line->Update(text, /*force=*/!language_model || done % 10 == 0 || done == total);
    if (done == total) line->Clear();
  };
}

// The record `fedlora pretrain --task lm` leaves in the checkpoint, as a line.
void PrintLanguageModelRecord(const std::string& dir) {
  std::ifstream in(std::filesystem::path(dir) / "fedlora_pretrain.json");
  const nlohmann::json record = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (record.is_discarded()) return;
  fmt::print("{} parameters, vocabulary {}, {} steps ({:.2f} epochs of {} tokens): held-out perplexity {:.1f} "
             "(untrained {:.1f}), {:.3f} bits per byte\n",
             record.value("parameters", 0), record["shape"].value("vocab_size", 0), record.value("steps", 0),
             record.value("epochs", 0.0), record.value("train_tokens", 0), record.value("held_out_perplexity", 0.0),
             record.value("initial_held_out_perplexity", 0.0), record.value("held_out_bits_per_byte", 0.0));
}

}  // namespace

void RegisterPretrain(CLI::App& app) {
  struct Flags {
    StoreLayout store;
    TaskOptions task;
    std::string out;
    bool force = false;
    uint32_t epochs = 0;
    int threads = 0;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = app.add_subcommand(
      "pretrain",
      "Build the frozen base model deterministically. image: from the public split of Fashion-MNIST (10% of the "
      "images of 7 of the 10 classes). lm: fedlora's own language model, a small Llama with a SentencePiece "
      "tokenizer trained on Debian's dict-gcide dictionary, written as a Hugging Face checkpoint directory");
  cmd->add_option("--task", f->task.task,
                  "image, or lm (the base of the lm-finetune and text-classify tasks; those names work too)")
      ->check(CLI::IsMember(kTaskNames))
      ->capture_default_str();
  cmd->add_option("--store", f->store.dir,
                  "Store directory; the base goes to <store>/base/<arch>.pt (image) or <store>/base/fedlora-lm/ (lm)")
      ->capture_default_str();
  cmd->add_option("--out", f->out, "Write the base here instead");
  cmd->add_flag("--force", f->force, "Rebuild even if it exists");
  cmd->add_option("--epochs", f->epochs, "image: training epochs over the public split (0: the default)");
  cmd->add_option("--data-dir", f->task.data_dir, "image: Fashion-MNIST IDX files")->capture_default_str();
  cmd->add_option("--arch", f->task.arch, "image: base model, vit-tiny or mlp")
      ->check(CLI::IsMember({"vit-tiny", "mlp"}))
      ->capture_default_str();
  cmd->add_option("--size", f->task.pretrain.size,
                  fmt::format("lm: model size ({}; see docs/benchmarks.md)", worker::lm::kLmSizes))
      ->capture_default_str();
  cmd->add_option("--steps", f->task.pretrain.steps, "lm: training steps of 16 windows of 128 tokens (0: the size's default)")
      ->capture_default_str();
  cmd->add_option("--seed", f->task.pretrain.seed, "lm: seed of the split, tokenizer sample, initialisation and batches")
      ->capture_default_str();
  cmd->add_option("--hidden", f->task.pretrain.hidden, "lm: hidden size instead of the size's (heads of 64 dims)");
  cmd->add_option("--layers", f->task.pretrain.layers, "lm: layers instead of the size's");
  cmd->add_option("--vocab", f->task.pretrain.vocab, "lm: tokenizer and embedding size instead of the size's");
  cmd->add_option("--dict", f->task.pretrain.text,
                  "lm: the dictd dictionary (.dict.dz) to learn from (default: Debian's dict-gcide)");
  cmd->add_option("--threads", f->threads,
                  "LibTorch threads (0: one per core). The files depend on it; so does speed: two processes each "
                  "using every core slow each other down many times over")
      ->check(CLI::Range(0, 1024))
      ->capture_default_str();
  cmd->add_option("--max-documents", f->task.pretrain.max_documents,
                  "lm: a seeded sample of this many dictionary entries (0: all)")
      ->capture_default_str();
  cmd->callback([f] {
    SetupLogging(false);
    SetTorchThreads(f->threads > 0 ? f->threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
    const bool lm = IsLanguageTask(f->task);
    const std::string out = !f->out.empty() ? f->out
                            : lm            ? OwnLanguageModelPath(f->store.dir)
                                            : BasePath(f->store.dir, f->task.arch);
    if (f->force) std::filesystem::remove_all(out);
    if (lm) {
      fmt::print("pretraining fedlora's {} language model into {}\n", f->task.pretrain.size, out);
    } else {
      fmt::print("pretraining the {} base into {}\n", f->task.arch, out);
    }
    const auto t0 = Clock::now();
    auto built = EnsureBase(f->task, out, f->epochs, PretrainProgress(lm));
    if (!built.ok()) Fail("pretrain", built.status());
    if (*built) {
      fmt::print("base model written to {} in {:.1f} s\n", out, std::chrono::duration<double>(Clock::now() - t0).count());
      if (lm) PrintLanguageModelRecord(out);
    } else {
      fmt::print("base model already exists at {} (use --force to rebuild)\n", out);
    }
  });
}

void RegisterRun(CLI::App& app) {
  struct Flags {
    StoreLayout store;
    TaskOptions task;
    EngineFlags engine;
    worker::WorkerTraining training;
    std::string speeds = "1,1.5,2,3,5,8";
    std::string ranks;
    std::string densities;
    std::string budgets;
    double duration_s = 300;
    uint64_t max_versions = 0;
    uint32_t eval_every = 10;
    size_t eval_samples = 2000;
    bool fresh = false;
    bool round_size_given = false;  // --round-size on the command line (else a round is every worker)
    bool verbose = false;
    std::string summary;
    std::string adapter = "default";
    std::string http;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = app.add_subcommand(
      "run", "Run the whole federation on this machine: broker, aggregator and heterogeneous workers on "
             "loopback sockets, with the store in --store. The image task pretrains its base model first if it is "
             "missing; the lm-finetune and text-classify tasks fine-tune the checkpoint directory given with --base, or "
             "fedlora's own language model, made first if missing.");
  cmd->add_option("--store", f->store.dir, "Store directory (log, adapters, base model)")->capture_default_str();
  cmd->add_option("--workers", f->task.num_clients, "Number of workers (one data shard each)")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  cmd->add_option("--speeds", f->speeds, "Slowdown factors, assigned to workers in turn")->capture_default_str();
  cmd->add_option("--duration", f->duration_s, "Stop after this many seconds of federated training")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--max-versions", f->max_versions, "Stop once this version is committed (0: no limit)")
      ->capture_default_str();
  cmd->add_option("--eval-every", f->eval_every, "Evaluate the global on the test set every N versions")
      ->capture_default_str();
  cmd->add_option("--eval-samples", f->eval_samples,
                  "Test examples per periodic evaluation (0: all; image: 10,000, lm: the held-out text); version 0 "
                  "and the final version are always evaluated on all of them")
      ->capture_default_str();
  cmd->add_option("--summary", f->summary, "Also write the summary as JSON to this file");
  cmd->add_flag("--fresh", f->fresh, "Delete the store's log and adapters first (the base model is kept)");
  cmd->add_flag("--verbose,-v", f->verbose, "Log every component's messages");
  cmd->add_option("--data-dir", f->task.data_dir, "image: Fashion-MNIST IDX files")->capture_default_str();
  cmd->add_option("--arch", f->task.arch, "image: base model, vit-tiny or mlp")
      ->check(CLI::IsMember({"vit-tiny", "mlp"}))
      ->capture_default_str();
  cmd->add_option("--base", f->task.base,
                  "lm: the Hugging Face checkpoint directory to fine-tune (config.json, model.safetensors or shards, "
                  "tokenizer.model); a Llama, Mistral or Qwen2 model. Default: fedlora's own, <store>/base/fedlora-lm, "
                  "pretrained first if missing (`fedlora pretrain --task lm`, about 5 minutes)");
  AddLanguageTaskFlags(cmd, f->task);
  cmd->add_option("--rank", f->task.rank, "LoRA rank")->check(CLI::Range(1, 256))->capture_default_str();
  cmd->add_option("--lora-alpha", f->task.lora_alpha, "LoRA alpha (scale alpha/r)")->capture_default_str();
  cmd->add_option("--dirichlet", f->task.dirichlet_alpha, "Dirichlet alpha of the non-IID split")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  AddPartitionFlags(cmd, f->task);
  cmd->add_option("--ranks", f->ranks,
                  "Per-worker LoRA ranks, assigned in turn (e.g. 4,8,16); the adapter's rank becomes the largest")
      ->capture_default_str();
  cmd->add_option("--upload-densities", f->densities, "flasc: per-worker upload densities, assigned in turn")
      ->capture_default_str();
  cmd->add_option("--rank-budgets", f->budgets, "lora-a2: per-worker ranks per module, assigned in turn")
      ->capture_default_str();
  AddHttpFlag(cmd, f->http,
              "/metrics (broker and aggregator), the dashboard and POST /api/rollback (from this machine only)");
  AddEngineFlags(cmd, f->engine);
  AddTrainingFlags(cmd, f->training, /*delta_flag=*/false);
  cmd->callback([f, cmd] {
    SetupLogging(f->verbose);
    InstallStopSignals();
    f->round_size_given = cmd->count("--round-size") > 0;
    if (Status s = ResolveEngineFlags(f->engine); !s.ok()) Fail("run", s, 2);
    f->training.dp.delta = f->engine.engine.dp_delta;
    if (f->training.dp.enabled() && f->engine.engine.method.method().full_model()) {
      Fail("run", InvalidArgument("record-level DP-SGD covers LoRA factors and the head; a full-model method trains every "
                                  "weight (use a LoRA method)"), 2);
    }
    f->task.full = f->engine.engine.method.method().full_model();
    f->task.lora_residual = f->engine.engine.method.method().KeepsResiduals(f->engine.engine.method.params());
    std::vector<double> ranks, densities, budgets;
    try {
      ranks = ParseNumbers(f->ranks);
      densities = ParseNumbers(f->densities);
      budgets = ParseNumbers(f->budgets);
    } catch (const std::exception&) {
      Fail("run", InvalidArgument("--ranks, --upload-densities and --rank-budgets take comma-separated numbers"), 2);
    }
    for (double r : ranks) {
      if (!(r >= 1 && r <= 256 && r == std::floor(r))) Fail("run", InvalidArgument(fmt::format("rank {} is not in 1..256", r)), 2);
    }
    if (!ranks.empty()) f->task.rank = static_cast<uint32_t>(*std::max_element(ranks.begin(), ranks.end()));
    for (double d : densities) {
      if (!(d > 0 && d <= 1)) Fail("run", InvalidArgument(fmt::format("upload density {} is not in (0, 1]", d)), 2);
    }
    for (double b : budgets) {
      if (!(b >= 1 && b == std::floor(b))) Fail("run", InvalidArgument(fmt::format("rank budget {} is not a positive integer", b)), 2);
    }
    std::vector<double> speeds;
    try {
      speeds = ParseNumbers(f->speeds);
    } catch (const std::exception&) {
      Fail("run", InvalidArgument("--speeds must be a comma-separated list of numbers, e.g. 1,2,4"), 2);
    }
    if (speeds.empty()) Fail("run", InvalidArgument("--speeds is empty"), 2);
    for (double s : speeds) {
      if (!(s >= 1.0)) Fail("run", InvalidArgument(fmt::format("speed factor {} is below 1", s)), 2);
    }
    if (f->engine.engine.mode == wire::Mode::Sync) {
      // A round is every worker unless --round-size says otherwise. Fewer makes each round
      // wait for the fastest N (the others' updates turn stale and are dropped); more could
      // never close a round.
      const auto workers = static_cast<uint32_t>(f->task.num_clients);
      if (!f->round_size_given) {
        f->engine.engine.round_size = workers;
      } else if (f->engine.engine.round_size > workers) {
        Fail("run", InvalidArgument(fmt::format("--round-size {} is more than the {} workers: no round could close",
                                                f->engine.engine.round_size, workers)),
             2);
      }
    }

    const auto started = Clock::now();
    if (f->fresh) {
      std::filesystem::remove_all(f->store.log());
      std::filesystem::remove_all(f->store.adapters());
      fmt::print("removed {} and {}\n", f->store.log(), f->store.adapters());
    }
    auto base_or = TaskBase(f->task, f->store.dir);
    if (!base_or.ok()) Fail("run", base_or.status(), 2);
    const std::string base = *base_or;
    const bool lm = IsLanguageTask(f->task);
    if (!std::filesystem::exists(base)) {
      if (lm && !f->task.base.empty()) Fail("run", MissingBase(f->task, base, f->store.dir), 2);
      fmt::print("no base model at {}: pretraining it (fedlora pretrain{})\n", base, lm ? " --task lm" : "");
      SetTorchThreads(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
      const auto t0 = Clock::now();
      auto built = EnsureBase(f->task, base, 0, PretrainProgress(lm));
      if (!built.ok()) Fail("run", built.status());
      fmt::print("base model ready in {:.1f} s\n",
                 std::chrono::duration<double>(Clock::now() - t0).count());
    }
    if (lm) f->task.base = base;
    // The headline metric: held-out perplexity (lm-finetune) or accuracy (image, text-classify).
    const bool perplexity = lm && !IsTextClassification(f->task);
    // Workers, aggregator and broker share the cores as threads; one intra-op thread each
    // keeps them from oversubscribing the machine.
    SetTorchThreads(1);
    worker::TuneAllocatorForTraining();  // most of this process's work is the workers' training

    if (IsTextClassification(f->task)) {
      fmt::print("reading and tokenizing WordNet's glosses ({})\n", f->task.wordnet_dir);
    } else if (lm) {
      fmt::print("reading and tokenizing the text ({})\n", fmt::join(f->task.text, ", "));
    }
    StatusLine reading;
    auto data = LoadTaskData(f->task, [&reading](size_t done, size_t total) {
      reading.Update(fmt::format("  tokenized {}/{} files", done, total));
    });
    reading.Clear();
    if (!data.ok()) Fail("run", data.status());
    auto shards = std::make_optional(std::move(data->shards));
    auto train_data = data->train;
    auto test_data = data->test;

    broker::BrokerOptions bo;
    bo.frontend = "tcp://127.0.0.1:*";
    bo.backend = "tcp://127.0.0.1:*";
    bo.announce = "tcp://127.0.0.1:*";
    bo.log_path = f->store.log();
    // Only this process's aggregator may subscribe: a fresh secret it alone knows.
    bo.aggregator_secret = security::GenerateSecret();
    auto broker = broker::Broker::Create(bo);
    if (!broker.ok()) Fail("run", broker.status());
    const auto endpoints = (*broker)->Endpoints();

    auto progress = std::make_shared<Progress>();
    aggregator::AggregatorOptions ao;
    ao.adapter_id = f->adapter;
    ao.broker = endpoints.backend;
    ao.secret = bo.aggregator_secret;
    ao.store_path = f->store.adapters();
    ao.engine = f->engine.engine;
    ao.max_versions = f->max_versions;
    ao.eval_every = f->eval_every;
    auto initial = MakeInitialAdapter(f->task, base);
    if (!initial.ok()) Fail("run", initial.status());
    const std::string initial_spec_model = initial->spec.model;
    ao.initial = std::move(*initial);
    auto eval = MakeEvaluator(base, test_data, f->eval_samples);
    if (!eval.ok()) Fail("run", eval.status());
    ao.evaluate = std::move(*eval);
    ao.on_commit = [progress](const codec::VersionInfo& v) { progress->OnCommit(v); };
    auto agg = aggregator::Aggregator::Create(std::move(ao));
    if (!agg.ok()) Fail("run", agg.status());
    const uint64_t start_version = (*agg)->Version();
    // Headline figures use the whole test set, whatever the periodic evaluations use.
    auto full_eval = MakeEvaluator(base, test_data, 0);
    if (!full_eval.ok()) Fail("run", full_eval.status());
    double base_accuracy = -1, base_loss = -1;
    std::vector<double> base_class_loss;
    {
      // A read-only handle beside the aggregator's: version 0 never changes once committed.
      storage::AdapterStoreOptions so;
      so.path = f->store.adapters();
      so.read_only = true;
      auto store = storage::AdapterStore::Open(so);
      if (!store.ok()) Fail("run", store.status());
      auto v0 = storage::ReadVersion(**store, f->adapter, 0);
      if (!v0.ok()) Fail("run", v0.status());
      auto r = (*full_eval)(v0->spec, v0->state);
      if (!r.ok()) Fail("run", r.status());
      base_accuracy = r->accuracy;
      base_loss = r->loss;
      base_class_loss = r->class_loss;
    }

    std::vector<std::unique_ptr<worker::Worker>> workers;
    for (int i = 0; i < f->task.num_clients; ++i) {
      worker::WorkerOptions wo;
      wo.client_id = fmt::format("worker-{}", i);
      wo.broker = endpoints.frontend;
      wo.announce = endpoints.announce;
      wo.adapter_id = f->adapter;
      wo.base_path = base;
      wo.training = f->training;
      wo.training.speed_factor = speeds[i % speeds.size()];
      if (!ranks.empty()) wo.heterogeneity.rank = static_cast<uint32_t>(ranks[i % ranks.size()]);
      if (!densities.empty()) wo.heterogeneity.upload_density = static_cast<float>(densities[i % densities.size()]);
      if (!budgets.empty()) wo.heterogeneity.rank_budget = static_cast<uint32_t>(budgets[i % budgets.size()]);
      wo.seed = static_cast<uint64_t>(i) + 1;
      auto w = worker::Worker::Create(std::move(wo), train_data, (*shards)[i]);
      if (!w.ok()) Fail("run", w.status());
      workers.push_back(std::move(*w));
    }

    const std::string split = f->task.partition == "pathological"
                                  ? fmt::format("pathological ({} classes each)", f->task.classes_per_client)
                                  : fmt::format("Dirichlet({})", f->task.dirichlet_alpha);
    fmt::print("federation: {} workers (speeds x{}{}), method {}, {} shards of {} private {}, mode {}",
               workers.size(), f->speeds, f->ranks.empty() ? "" : ", ranks " + f->ranks, f->engine.method, split, [&] {
                 size_t n = 0;
                 for (const auto& s : *shards) n += s.size();
                 return n;
               }(), data->unit, f->engine.mode);
    if (f->engine.engine.mode == wire::Mode::FedBuff) fmt::print(" (K={})", f->engine.engine.buffer_size);
    fmt::print(", store {}\n", f->store.dir);
    if (start_version > 0) fmt::print("resuming the stored run at version {}\n", start_version);
    if (lm) fmt::print("base model: {} ({})\n", base, initial_spec_model);
    fmt::print("version 0 (base) {} on the {} held-out {}\n", DescribeEval(f->task, base_accuracy, base_loss),
               test_data->size(), data->unit);
    std::unique_ptr<http::Server> http;
    if (!f->http.empty()) {
      auto served = ServeLive(f->http, {.broker = broker->get(), .aggregator = agg->get(), .store = f->store,
                                        .adapter = f->adapter});
      if (!served.ok()) Fail("run", served.status(), 2);
      http = std::move(*served);
      fmt::print("dashboard at http://{}/, metrics at http://{}/metrics\n", http->address(), http->address());
    }
    std::fflush(stdout);

    // Every component runs on its own thread; the first error stops them all.
    std::mutex err_mu;
    Status first_error;
    auto run_component = [&](auto* component, std::string what) {
      return std::jthread([&, component, what](std::stop_token stop) {
        Status s = component->Run(stop);
        if (!s.ok()) {
          std::lock_guard lock(err_mu);
          if (first_error.ok()) first_error = s.WithContext(what);
        }
      });
    };
    const auto fed_start = Clock::now();
    std::jthread broker_thread = run_component(broker->get(), "broker");
    std::jthread agg_thread = run_component(agg->get(), "aggregator");
    std::vector<std::jthread> worker_threads;
    for (size_t i = 0; i < workers.size(); ++i) {
      worker_threads.push_back(run_component(workers[i].get(), fmt::format("worker-{}", i)));
    }

    // A live status line on a terminal; nothing when stdout is a file or a pipe.
    StatusLine status;
    uint64_t last_folded = 0;
    auto last_report = fed_start;
    double rate = 0;
    const auto deadline = fed_start + std::chrono::duration<double>(f->duration_s);
    std::string stop_reason = "duration reached";
    while (true) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      const auto now = Clock::now();
      if (StopSignalled()) { stop_reason = "interrupted"; break; }
      if ((*agg)->Finished()) { stop_reason = "final version committed"; break; }
      if (std::all_of(workers.begin(), workers.end(), [](const auto& w) { return w->Stats().budget_spent.load(); })) {
        stop_reason = "every worker's privacy budget is spent";
        break;
      }
      {
        std::lock_guard lock(err_mu);
        if (!first_error.ok()) { stop_reason = "error"; break; }
      }
      if (now >= deadline) break;
      if (status.enabled() && now - last_report >= std::chrono::milliseconds(500)) {
        uint64_t bytes = 0;
        for (const auto& w : workers) bytes += w->Stats().bytes_uploaded.load();
        std::lock_guard lock(progress->mu);
        const double dt = std::chrono::duration<double>(now - last_report).count();
        // Updates folded per second, smoothed over a few seconds.
        rate = 0.8 * rate + 0.2 * (progress->folded - last_folded) / std::max(dt, 1e-9);
        last_folded = progress->folded;
        last_report = now;
        const std::string acc =
            progress->last_accuracy < 0 ? (perplexity ? "perplexity -" : "accuracy -")
            : perplexity ? fmt::format("perplexity {:.2f} (v{})", std::exp(progress->last_loss), progress->last_accuracy_version)
                 : fmt::format("accuracy {:.4f} (v{})", progress->last_accuracy, progress->last_accuracy_version);
        status.Update(fmt::format("[{:>4.0f}/{:.0f}s] version {}  {}  updates {} ({:.1f}/s)  staleness {:.2f}  "
                                  "dropped {}  uploaded {}",
                                  std::chrono::duration<double>(now - fed_start).count(), f->duration_s,
                                  progress->version, acc, progress->folded, rate,
                                  progress->folded ? progress->staleness_sum / progress->folded : 0.0,
                                  progress->dropped, HumanBytes(static_cast<double>(bytes))));
      }
    }
    status.Finish();
    for (auto& t : worker_threads) t.request_stop();
    worker_threads.clear();  // joins
    agg_thread.request_stop();
    agg_thread.join();
    broker_thread.request_stop();
    broker_thread.join();
    const double fed_seconds = std::chrono::duration<double>(Clock::now() - fed_start).count();
    if (!first_error.ok()) Fail("run", first_error);

    const auto& bs = (*broker)->Stats();
    uint64_t bytes = 0;
    for (const auto& w : workers) bytes += w->Stats().bytes_uploaded.load();
    http.reset();  // its handlers use the broker and the aggregator
    agg->reset();  // closes the store so the summary reads it like any tool would

    auto latest = LatestVersion(f->store.adapters(), f->adapter);
    if (!latest.ok()) Fail("run", latest.status());
    const codec::VersionInfo& last = latest->second;
    fmt::print("evaluating version {} on the whole test set...\n", last.version);
    std::fflush(stdout);
    auto final_r = (*full_eval)(latest->first.spec, latest->first.state);
    if (!final_r.ok()) Fail("run", final_r.status());
    const double final_accuracy = final_r->accuracy;
    const double final_loss = final_r->loss;
    // Each client's accuracy on its own label mix, with the model it would use: the global,
    // or under fedsa the global with the client's personal B factors.
    const bool personalised = f->engine.engine.method.method().personal();
    if (personalised) {
      fmt::print("evaluating each client's personal model (global A, its own B) on the test set...\n");
      std::fflush(stdout);
    }
    std::vector<double> client_accuracy, client_perplexity;
    for (size_t i = 0; i < workers.size(); ++i) {
      std::vector<double> per_class = final_r->class_accuracy, per_class_loss = final_r->class_loss;
      const auto factors = workers[i]->PersonalFactors();
      if (!factors.empty()) {
        AdapterState mine = latest->first.state;
        for (auto& t : mine.tensors) {
          auto it = factors.find(t.name);
          if (it != factors.end() && it->second.size() == t.values.size()) t.values = it->second;
        }
        auto r = (*full_eval)(latest->first.spec, mine);
        if (!r.ok()) Fail("run", r.status());
        per_class = r->class_accuracy;
        per_class_loss = r->class_loss;
      }
      client_accuracy.push_back(MixAccuracy(*train_data, (*shards)[i], per_class));
      if (perplexity) client_perplexity.push_back(std::exp(MixAccuracy(*train_data, (*shards)[i], per_class_loss)));
    }
    const double client_mean =
        client_accuracy.empty() ? 0.0
                                : std::accumulate(client_accuracy.begin(), client_accuracy.end(), 0.0) / client_accuracy.size();
    std::lock_guard lock(progress->mu);
    const double wall = std::chrono::duration<double>(Clock::now() - started).count();
    fmt::print("\nfedlora run: {} after {:.1f} s of federated training\n", stop_reason, fed_seconds);
    if (perplexity) {
      fmt::print("  {:<29}{}\n", "base (version 0)", DescribeEval(f->task, base_accuracy, base_loss));
      fmt::print("  {:<29}{}\n", fmt::format("final (version {})", last.version),
                 DescribeEval(f->task, final_accuracy, final_loss));
      fmt::print("  perplexity change            {:+.1f}%\n", 100.0 * (std::exp(final_loss - base_loss) - 1.0));
    } else {
      fmt::print("  base accuracy (version 0)    {}\n", base_accuracy >= 0 ? fmt::format("{:.4f}", base_accuracy) : "-");
      fmt::print("  final accuracy (version {})  {:.4f}", last.version, final_accuracy);
      if (base_accuracy >= 0) fmt::print("  ({:+.1f} points)", 100.0 * (final_accuracy - base_accuracy));
      fmt::print("\n");
    }
    // lm-finetune: each source's (category's) held-out perplexity, base and final.
    nlohmann::json source_perplexities = nlohmann::json::object();
    if (perplexity && base_class_loss.size() == final_r->class_loss.size()) {
      std::vector<size_t> held_out(final_r->class_loss.size(), 0);
      for (uint8_t label : test_data->labels)
        if (label < held_out.size()) ++held_out[label];
      size_t fell = 0, scored = 0;
      for (size_t c = 0; c < final_r->class_loss.size(); ++c) {
        if (held_out[c] == 0) continue;
        const std::string name = c < train_data->class_names.size() ? train_data->class_names[c] : std::to_string(c);
        source_perplexities[name] = {{"base", std::exp(base_class_loss[c])}, {"final", std::exp(final_r->class_loss[c])}};
        ++scored;
        if (final_r->class_loss[c] < base_class_loss[c]) ++fell;
      }
      if (scored > 0) fmt::print("  {:<29}perplexity fell on {} of {} sources' held-out text\n", "per source", fell, scored);
    }
    if (!client_perplexity.empty()) {
      fmt::print("  {:<29}perplexity mean {:.3f} (min {:.3f}, max {:.3f}; {})\n", "on each client's source mix",
                 std::accumulate(client_perplexity.begin(), client_perplexity.end(), 0.0) / client_perplexity.size(),
                 *std::min_element(client_perplexity.begin(), client_perplexity.end()),
                 *std::max_element(client_perplexity.begin(), client_perplexity.end()),
                 personalised ? "global A with each client's own B" : "the global model");
    }
    if (!client_accuracy.empty()) {
      fmt::print("  {:<29}{}mean {:.4f} (min {:.4f}, max {:.4f}; {})\n",
                 perplexity ? "" : "on each client's label mix", perplexity ? "next-token accuracy " : "", client_mean,
                 *std::min_element(client_accuracy.begin(), client_accuracy.end()),
                 *std::max_element(client_accuracy.begin(), client_accuracy.end()),
                 personalised ? "global A with each client's own B" : "the global model");
    }
    fmt::print("  latest version               {} ({} committed by this run)\n", last.version, last.version - start_version);
    fmt::print("  updates logged               {} (duplicates {}, rejected {})\n", bs.updates_logged.load(),
               bs.updates_duplicate.load(), bs.messages_rejected.load());
    fmt::print("  updates folded / dropped     {} / {}\n", progress->folded, progress->dropped);
    fmt::print("  bytes uploaded               {} ({} per update)\n", HumanBytes(static_cast<double>(bytes)),
               HumanBytes(bs.updates_logged ? static_cast<double>(bytes) / bs.updates_logged : 0.0));
    fmt::print("  staleness                    mean {:.2f}, max {}\n",
               progress->folded ? progress->staleness_sum / progress->folded : 0.0, progress->staleness_max);
    // The privacy ledger of the final version (what `fedlora history` shows per version).
    nlohmann::json privacy_json = nullptr;
    if (const auto& ledger = last.privacy) {
      privacy_json = {{"delta", ledger->delta}};
      if (const auto& c = ledger->client) {
        fmt::print("  client-level DP              epsilon {:.4g} (delta {:g}) after {} noised steps, z {:g}, C {:g}{}\n",
                   c->epsilon, ledger->delta, c->steps, c->noise_multiplier, c->clip,
                   c->budget > 0 ? fmt::format(", budget {:g}", c->budget) : "");
        privacy_json["client_epsilon"] = c->epsilon;
        privacy_json["client_noise_multiplier"] = c->noise_multiplier;
        privacy_json["server_steps"] = c->steps;
      }
      if (!ledger->workers.empty()) {
        double max_eps = 0;
        nlohmann::json per_worker = nlohmann::json::object();
        bool all_private = true;
        for (const auto& w : ledger->workers) {
          max_eps = std::max(max_eps, w.epsilon);
          all_private &= w.non_private_updates == 0;
          per_worker[w.client_id] = {{"epsilon", w.epsilon},     {"steps", w.steps},
                                     {"updates", w.updates},     {"noise_multiplier", w.noise_multiplier},
                                     {"sample_rate", w.sample_rate}, {"non_private_updates", w.non_private_updates}};
        }
        fmt::print("  record-level DP-SGD          epsilon at most {:.4g} per worker (delta {:g}; {} workers{})\n",
                   max_eps, ledger->delta, ledger->workers.size(),
                   all_private ? "" : "; some published updates without DP: their data is not protected");
        privacy_json["worker_epsilon_max"] = max_eps;
        privacy_json["workers"] = per_worker;
      }
    }
    fmt::print("  wall time                    {:.1f} s\n", wall);
    fmt::print("  store                        {} (see: fedlora history --store {})\n", f->store.dir, f->store.dir);
    if (!f->summary.empty()) {
      const nlohmann::json j = {
          {"task", f->task.task},
          {"method", f->engine.method},
          {"mode", f->engine.mode},
          {"server_optimizer", f->engine.server_optimizer},
          {"server_lr", f->engine.engine.server_lr},
          {"stop_reason", stop_reason},
          {"federated_seconds", fed_seconds},
          {"base_accuracy", base_accuracy},
          {"final_accuracy", final_accuracy},
          {"base_loss", base_loss},
          {"final_loss", final_loss},
          {"base_perplexity", perplexity ? nlohmann::json(std::exp(base_loss)) : nlohmann::json(nullptr)},
          {"final_perplexity", perplexity ? nlohmann::json(std::exp(final_loss)) : nlohmann::json(nullptr)},
          {"client_perplexities", client_perplexity},
          {"source_perplexities", source_perplexities},
          {"client_accuracy_mean", client_mean},
          {"client_accuracies", client_accuracy},
          {"client_models", personalised ? "personal" : "global"},
          {"final_version", last.version},
          {"versions_committed", last.version - start_version},
          {"updates_logged", bs.updates_logged.load()},
          {"updates_folded", progress->folded},
          {"updates_dropped", progress->dropped},
          {"bytes_uploaded", bytes},
          {"mean_staleness", progress->folded ? progress->staleness_sum / progress->folded : 0.0},
          {"max_staleness", progress->staleness_max},
          {"privacy", privacy_json},
      };
      std::ofstream out(f->summary);
      out << j.dump(2) << "\n";
      if (!out) Fail("run", Unavailable("cannot write --summary " + f->summary));
    }
  });
}

}  // namespace fedlora::ops
