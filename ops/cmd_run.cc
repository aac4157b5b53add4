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
#include <nlohmann/json.hpp>
#include <numeric>
#include <thread>

#include "ops/commands.h"
#include "ops/flags.h"
#include "ops/live.h"
#include "ops/progress.h"
#include "worker/federation/embedded.h"
#include "worker/lm/pretrain.h"

namespace fedlora::ops {
namespace {

using Clock = std::chrono::steady_clock;

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

// The summary of a run, as `fedlora run` prints it.
void PrintRunSummary(const federation::EmbeddedOptions& o, const federation::Setup& setup,
                     const federation::RunSummary& r, double wall_s) {
  const bool perplexity = setup.perplexity;
  const codec::VersionInfo& last = r.last;
  fmt::print("\nfedlora run: {} after {:.1f} s of federated training\n", r.stop_reason, r.federated_seconds);
  if (perplexity) {
    fmt::print("  {:<29}{}\n", "base (version 0)", DescribeEval(o.task, setup.base_accuracy, setup.base_loss));
    fmt::print("  {:<29}{}\n", fmt::format("final (version {})", last.version),
               DescribeEval(o.task, r.final_accuracy, r.final_loss));
    fmt::print("  perplexity change            {:+.1f}%\n", 100.0 * (std::exp(r.final_loss - setup.base_loss) - 1.0));
  } else {
    fmt::print("  base accuracy (version 0)    {}\n",
               setup.base_accuracy >= 0 ? fmt::format("{:.4f}", setup.base_accuracy) : "-");
    fmt::print("  final accuracy (version {})  {:.4f}", last.version, r.final_accuracy);
    if (setup.base_accuracy >= 0) fmt::print("  ({:+.1f} points)", 100.0 * (r.final_accuracy - setup.base_accuracy));
    fmt::print("\n");
  }
  if (!r.sources.empty()) {
    const auto fell = std::count_if(r.sources.begin(), r.sources.end(), [](const auto& p) { return p.final < p.base; });
    fmt::print("  {:<29}perplexity fell on {} of {} sources' held-out text\n", "per source", fell, r.sources.size());
  }
  const std::string models = r.personalised ? "global A with each client's own B" : "the global model";
  if (!r.client_perplexities.empty()) {
    const auto& p = r.client_perplexities;
    fmt::print("  {:<29}perplexity mean {:.3f} (min {:.3f}, max {:.3f}; {})\n", "on each client's source mix",
               std::accumulate(p.begin(), p.end(), 0.0) / p.size(), *std::min_element(p.begin(), p.end()),
               *std::max_element(p.begin(), p.end()), models);
  }
  if (!r.client_accuracies.empty()) {
    const auto& a = r.client_accuracies;
    fmt::print("  {:<29}{}mean {:.4f} (min {:.4f}, max {:.4f}; {})\n", perplexity ? "" : "on each client's label mix",
               perplexity ? "next-token accuracy " : "", std::accumulate(a.begin(), a.end(), 0.0) / a.size(),
               *std::min_element(a.begin(), a.end()), *std::max_element(a.begin(), a.end()), models);
  }
  fmt::print("  latest version               {} ({} committed by this run)\n", last.version, r.versions_committed);
  fmt::print("  updates logged               {} (duplicates {}, rejected {})\n", r.updates_logged, r.updates_duplicate,
             r.messages_rejected);
  fmt::print("  updates folded / dropped     {} / {}\n", r.folded, r.dropped);
  fmt::print("  bytes uploaded               {} ({} per update)\n", HumanBytes(static_cast<double>(r.bytes_uploaded)),
             HumanBytes(r.updates_logged ? static_cast<double>(r.bytes_uploaded) / r.updates_logged : 0.0));
  fmt::print("  staleness                    mean {:.2f}, max {}\n", r.mean_staleness, r.max_staleness);
  // The privacy ledger of the final version (what `fedlora history` shows per version).
  if (const auto& ledger = last.privacy) {
    if (const auto& c = ledger->client) {
      fmt::print("  client-level DP              epsilon {:.4g} (delta {:g}) after {} noised steps, z {:g}, C {:g}{}\n",
                 c->epsilon, ledger->delta, c->steps, c->noise_multiplier, c->clip,
                 c->budget > 0 ? fmt::format(", budget {:g}", c->budget) : "");
    }
    if (!ledger->workers.empty()) {
      double max_eps = 0;
      bool all_private = true;
      for (const auto& w : ledger->workers) {
        max_eps = std::max(max_eps, w.epsilon);
        all_private &= w.non_private_updates == 0;
      }
      fmt::print("  record-level DP-SGD          epsilon at most {:.4g} per worker (delta {:g}; {} workers{})\n", max_eps,
                 ledger->delta, ledger->workers.size(),
                 all_private ? "" : "; some published updates without DP: their data is not protected");
    }
  }
  fmt::print("  wall time                    {:.1f} s\n", wall_s);
  fmt::print("  store                        {} (see: fedlora history --store {})\n", o.store.dir, o.store.dir);
}

// The summary as `run --summary FILE` writes it (compare and the benchmarks read it).
nlohmann::json RunSummaryJson(const federation::EmbeddedOptions& o, const EngineFlags& engine,
                              const federation::Setup& setup, const federation::RunSummary& r) {
  const bool perplexity = setup.perplexity;
  nlohmann::json sources = nlohmann::json::object();
  for (const auto& p : r.sources) sources[p.name] = {{"base", p.base}, {"final", p.final}};
  nlohmann::json privacy = nullptr;
  if (const auto& ledger = r.last.privacy) {
    privacy = {{"delta", ledger->delta}};
    if (const auto& c = ledger->client) {
      privacy["client_epsilon"] = c->epsilon;
      privacy["client_noise_multiplier"] = c->noise_multiplier;
      privacy["server_steps"] = c->steps;
    }
    if (!ledger->workers.empty()) {
      double max_eps = 0;
      nlohmann::json per_worker = nlohmann::json::object();
      for (const auto& w : ledger->workers) {
        max_eps = std::max(max_eps, w.epsilon);
        per_worker[w.client_id] = {{"epsilon", w.epsilon},         {"steps", w.steps},
                                   {"updates", w.updates},         {"noise_multiplier", w.noise_multiplier},
                                   {"sample_rate", w.sample_rate}, {"non_private_updates", w.non_private_updates}};
      }
      privacy["worker_epsilon_max"] = max_eps;
      privacy["workers"] = per_worker;
    }
  }
  const auto& a = r.client_accuracies;
  return {
      {"task", o.task.task},
      {"method", engine.method},
      {"mode", engine.mode},
      {"server_optimizer", engine.server_optimizer},
      {"server_lr", o.engine.server_lr},
      {"stop_reason", r.stop_reason},
      {"federated_seconds", r.federated_seconds},
      {"base_accuracy", setup.base_accuracy},
      {"final_accuracy", r.final_accuracy},
      {"base_loss", setup.base_loss},
      {"final_loss", r.final_loss},
      {"base_perplexity", perplexity ? nlohmann::json(std::exp(setup.base_loss)) : nlohmann::json(nullptr)},
      {"final_perplexity", perplexity ? nlohmann::json(std::exp(r.final_loss)) : nlohmann::json(nullptr)},
      {"client_perplexities", r.client_perplexities},
      {"source_perplexities", sources},
      {"client_accuracy_mean", a.empty() ? 0.0 : std::accumulate(a.begin(), a.end(), 0.0) / a.size()},
      {"client_accuracies", a},
      {"client_models", r.personalised ? "personal" : "global"},
      {"final_version", r.last.version},
      {"versions_committed", r.versions_committed},
      {"updates_logged", r.updates_logged},
      {"updates_folded", r.folded},
      {"updates_dropped", r.dropped},
      {"bytes_uploaded", r.bytes_uploaded},
      {"mean_staleness", r.mean_staleness},
      {"max_staleness", r.max_staleness},
      {"privacy", privacy},
  };
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
    federation::EmbeddedOptions options;  // the flags below bind to it, so its defaults are the flags'
    EngineFlags engine;
    std::string speeds;
    std::string ranks;
    std::string densities;
    std::string budgets;
    bool verbose = false;
    std::string summary;
    std::string http;
  };
  auto f = std::make_shared<Flags>();
  auto& o = f->options;
  f->speeds = fmt::format("{}", fmt::join(o.speeds, ","));
  auto* cmd = app.add_subcommand(
      "run", "Run the whole federation on this machine: broker, aggregator and heterogeneous workers on "
             "loopback sockets, with the store in --store. The image task pretrains its base model first if it is "
             "missing; the lm-finetune and text-classify tasks fine-tune the checkpoint directory given with --base, or "
             "fedlora's own language model, made first if missing.");
  cmd->add_option("--store", o.store.dir, "Store directory (log, adapters, base model)")->capture_default_str();
  cmd->add_option("--workers", o.task.num_clients, "Number of workers (one data shard each)")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  cmd->add_option("--speeds", f->speeds, "Slowdown factors, assigned to workers in turn")->capture_default_str();
  cmd->add_option("--duration", o.duration_s, "Stop after this many seconds of federated training")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--max-versions", o.max_versions, "Stop once this version is committed (0: no limit)")
      ->capture_default_str();
  cmd->add_option("--eval-every", o.eval_every, "Evaluate the global on the test set every N versions")
      ->capture_default_str();
  cmd->add_option("--eval-samples", o.eval_samples,
                  "Test examples per periodic evaluation (0: all; image: 10,000, lm: the held-out text); version 0 "
                  "and the final version are always evaluated on all of them")
      ->capture_default_str();
  cmd->add_option("--summary", f->summary, "Also write the summary as JSON to this file");
  cmd->add_flag("--fresh", o.fresh, "Delete the store's log and adapters first (the base model is kept)");
  cmd->add_flag("--verbose,-v", f->verbose, "Log every component's messages");
  cmd->add_option("--data-dir", o.task.data_dir, "image: Fashion-MNIST IDX files")->capture_default_str();
  cmd->add_option("--arch", o.task.arch, "image: base model, vit-tiny or mlp")
      ->check(CLI::IsMember({"vit-tiny", "mlp"}))
      ->capture_default_str();
  cmd->add_option("--base", o.task.base,
                  "lm: the Hugging Face checkpoint directory to fine-tune (config.json, model.safetensors or shards, "
                  "tokenizer.model); a Llama, Mistral or Qwen2 model. Default: fedlora's own, <store>/base/fedlora-lm, "
                  "pretrained first if missing (`fedlora pretrain --task lm`, about 5 minutes)");
  AddLanguageTaskFlags(cmd, o.task);
  cmd->add_option("--rank", o.task.rank, "LoRA rank")->check(CLI::Range(1, 256))->capture_default_str();
  cmd->add_option("--lora-alpha", o.task.lora_alpha, "LoRA alpha (scale alpha/r)")->capture_default_str();
  cmd->add_option("--dirichlet", o.task.dirichlet_alpha, "Dirichlet alpha of the non-IID split")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  AddPartitionFlags(cmd, o.task);
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
  AddTrainingFlags(cmd, o.training, /*delta_flag=*/false);
  cmd->callback([f, cmd] {
    SetupLogging(f->verbose);
    InstallStopSignals();
    if (Status s = ResolveEngineFlags(f->engine); !s.ok()) Fail("run", s, 2);
    federation::EmbeddedOptions o = f->options;
    o.engine = f->engine.engine;
    o.training.dp.delta = o.engine.dp_delta;
    try {
      o.speeds = ParseNumbers(f->speeds);
      for (double r : ParseNumbers(f->ranks)) {
        if (!(r >= 1 && r <= 256 && r == std::floor(r))) Fail("run", InvalidArgument(fmt::format("rank {} is not in 1..256", r)), 2);
        o.ranks.push_back(static_cast<uint32_t>(r));
      }
      for (double d : ParseNumbers(f->densities)) o.upload_densities.push_back(static_cast<float>(d));
      for (double b : ParseNumbers(f->budgets)) {
        if (!(b >= 1 && b == std::floor(b))) {
          Fail("run", InvalidArgument(fmt::format("rank budget {} is not a positive integer", b)), 2);
        }
        o.rank_budgets.push_back(static_cast<uint32_t>(b));
      }
    } catch (const std::exception&) {
      Fail("run", InvalidArgument("--speeds, --ranks, --upload-densities and --rank-budgets take comma-separated numbers"), 2);
    }
    // Under Sync a round is every worker unless --round-size says otherwise. Fewer makes each
    // round wait for the fastest N (the others' updates turn stale and are dropped).
    if (o.engine.mode == wire::Mode::Sync && cmd->count("--round-size") == 0) {
      o.engine.round_size = static_cast<uint32_t>(o.task.num_clients);
    }
    if (Status s = federation::CheckOptions(o); !s.ok()) Fail("run", s, 2);

    const auto started = Clock::now();
    const bool lm = IsLanguageTask(o.task);
    federation::SetupCallbacks setup_cb;
    setup_cb.note = [](const std::string& line) { fmt::print("{}\n", line); };
    setup_cb.pretrain_progress = PretrainProgress(lm);
    auto reading = std::make_shared<StatusLine>();
    setup_cb.reading_progress = [reading](size_t done, size_t total) {
      reading->Update(fmt::format("  tokenized {}/{} files", done, total));
      if (done == total) reading->Clear();
    };
    auto fed = federation::EmbeddedFederation::Create(o, setup_cb);
    reading->Clear();
    if (!fed.ok()) Fail("run", fed.status(), fed.status().code() == Code::kInvalidArgument ||
                                                    fed.status().code() == Code::kFailedPrecondition ? 2 : 1);
    const federation::Setup& setup = (*fed)->setup();
    const bool perplexity = setup.perplexity;

    const std::string split = o.task.partition == "pathological"
                                  ? fmt::format("pathological ({} classes each)", o.task.classes_per_client)
                                  : fmt::format("Dirichlet({})", o.task.dirichlet_alpha);
    fmt::print("federation: {} workers (speeds x{}{}), method {}, {} shards of {} private {}, mode {}",
               o.task.num_clients, f->speeds, f->ranks.empty() ? "" : ", ranks " + f->ranks, f->engine.method, split,
               setup.train_examples, setup.unit, f->engine.mode);
    if (o.engine.mode == wire::Mode::FedBuff) fmt::print(" (K={})", o.engine.buffer_size);
    fmt::print(", store {}\n", o.store.dir);
    if (setup.start_version > 0) fmt::print("resuming the stored run at version {}\n", setup.start_version);
    if (lm) fmt::print("base model: {} ({})\n", setup.base_path, setup.base_model);
    fmt::print("version 0 (base) {} on the {} held-out {}\n", DescribeEval(o.task, setup.base_accuracy, setup.base_loss),
               setup.test_examples, setup.unit);
    std::unique_ptr<http::Server> http;
    if (!f->http.empty()) {
      auto served = ServeLive(f->http, {.broker = &(*fed)->broker(), .aggregator = &(*fed)->aggregator(),
                                        .store = o.store, .adapter = o.adapter});
      if (!served.ok()) Fail("run", served.status(), 2);
      http = std::move(*served);
      fmt::print("dashboard at http://{}/, metrics at http://{}/metrics\n", http->address(), http->address());
    }
    std::fflush(stdout);

    // A live status line on a terminal; nothing when stdout is a file or a pipe.
    StatusLine status;
    uint64_t last_folded = 0;
    double last_elapsed = 0, rate = 0;
    auto on_tick = [&](const federation::LiveFigures& live) {
      if (!status.enabled()) return;
      // Updates folded per second, smoothed over a few seconds.
      const double dt = std::max(live.elapsed_s - last_elapsed, 1e-9);
      rate = 0.8 * rate + 0.2 * static_cast<double>(live.folded - last_folded) / dt;
      last_folded = live.folded;
      last_elapsed = live.elapsed_s;
      const std::string acc =
          live.last_accuracy < 0 ? (perplexity ? "perplexity -" : "accuracy -")
          : perplexity           ? fmt::format("perplexity {:.2f} (v{})", std::exp(live.last_loss), live.last_accuracy_version)
                                 : fmt::format("accuracy {:.4f} (v{})", live.last_accuracy, live.last_accuracy_version);
      status.Update(fmt::format("[{:>4.0f}/{:.0f}s] version {}  {}  updates {} ({:.1f}/s)  staleness {:.2f}  "
                                "dropped {}  uploaded {}",
                                live.elapsed_s, o.duration_s, live.version, acc, live.folded, rate, live.mean_staleness,
                                live.dropped, HumanBytes(static_cast<double>(live.bytes_uploaded))));
    };
    auto note = [&status](const std::string& line) {
      status.Finish();
      fmt::print("{}\n", line);
      std::fflush(stdout);
    };
    auto summary = (*fed)->Run([] { return StopSignalled(); }, on_tick, note);
    status.Finish();
    http.reset();  // its handlers use the broker and the aggregator
    if (!summary.ok()) Fail("run", summary.status());
    PrintRunSummary(o, setup, *summary, std::chrono::duration<double>(Clock::now() - started).count());
    if (!f->summary.empty()) {
      std::ofstream out(f->summary);
      out << RunSummaryJson(o, f->engine, setup, *summary).dump(2) << "\n";
      if (!out) Fail("run", Unavailable("cannot write --summary " + f->summary));
    }
  });
}

}  // namespace fedlora::ops
