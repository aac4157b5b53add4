// `fedlora compare`: runs several methods on the same task, seeds, partition, worker speeds and
// time budget (one `fedlora run` process each, so no run can disturb another's state), then
// reads every run's store and writes a table (Markdown and JSON) and a plot of test accuracy
// against uploaded bytes (SVG); with --dp-epsilons, once per DP-SGD budget, and a table and a
// plot of accuracy against the budget.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "aggregator/methods/registry.h"
#include "ops/commands.h"
#include "ops/flags.h"
#include "ops/observe/plot.h"
#include "worker/federation/compare.h"


namespace fedlora::ops {
namespace {

namespace fs = std::filesystem;

using federation::MethodResult;

// Accuracy against uploaded bytes, log-scaled x, one line per method.
std::string Plot(const std::vector<MethodResult>& results, double target, const std::string& title) {
  observe::plot::Figure fig;
  fig.title = title;
  fig.x.label = "uploaded bytes (log scale)";
  fig.x.log = true;
  fig.x.format = [](double b) { return HumanBytes(b); };
  fig.y.label = "test accuracy";
  fig.y.step = 0.05;
  fig.y.format = [](double a) { return fmt::format("{:.2f}", a); };
  fig.y_rule = {target, fmt::format("target {:.2f}", target)};
  for (const auto& r : results) {
    observe::plot::Series s;
    s.name = r.method;
    for (const auto& p : r.curve) s.points.emplace_back(p.bytes, p.accuracy);
    fig.series.push_back(std::move(s));
  }
  return observe::plot::LineChart(fig);
}

// "inf,8,3,1" -> {"inf", "8", "3", "1"}. Errors: kInvalidArgument (an entry neither inf nor a
// positive number, or none at all).
Result<std::vector<std::string>> ParseEpsilons(const std::string& text) {
  std::vector<std::string> out;
  for (size_t pos = 0; pos <= text.size();) {
    const size_t comma = std::min(text.find(',', pos), text.size());
    const std::string item = text.substr(pos, comma - pos);
    pos = comma + 1;
    if (item.empty()) continue;
    if (item != "inf") {
      char* end = nullptr;
      const double e = std::strtod(item.c_str(), &end);
      if (*end != '\0' || !(e > 0) || !std::isfinite(e)) {
        return InvalidArgument(fmt::format("--dp-epsilons: '{}' is neither inf nor a positive number", item));
      }
    }
    out.push_back(item);
  }
  if (out.empty()) return InvalidArgument("--dp-epsilons is empty");
  return out;
}

// Final accuracy per method and budget (with the versions and the most epsilon any worker
// spent) as Markdown, and as a plot of accuracy against the budgets in the order given.
std::pair<std::string, std::string> PrivacyTable(
    const std::vector<std::pair<std::string, std::vector<MethodResult>>>& passes, const std::string& title) {
  std::vector<std::string> methods;
  for (const auto& [eps, results] : passes) {
    for (const auto& r : results) {
      if (std::find(methods.begin(), methods.end(), r.method) == methods.end()) methods.push_back(r.method);
    }
  }
  auto label = [](const std::string& eps) { return eps == "inf" ? std::string("no DP") : "eps " + eps; };
  std::string table = "| method |";
  std::string rule = "| --- |";
  for (const auto& [eps, results] : passes) {
    table += " " + label(eps) + " |";
    rule += " --- |";
  }
  table += "\n" + rule + "\n";
  observe::plot::Figure fig;
  fig.title = title;
  fig.x.label = "record-level DP-SGD budget per worker";
  for (size_t i = 0; i < passes.size(); ++i) fig.x.categories.emplace_back(static_cast<double>(i), label(passes[i].first));
  fig.y.label = "final test accuracy";
  fig.y.format = [](double a) { return fmt::format("{:.2f}", a); };
  for (const std::string& m : methods) {
    table += "| " + m + " |";
    observe::plot::Series line;
    line.name = m;
    line.dots = true;
    for (size_t i = 0; i < passes.size(); ++i) {
      const MethodResult* r = nullptr;
      for (const auto& c : passes[i].second) {
        if (c.method == m) r = &c;
      }
      if (!r || !r->error.empty()) {
        table += r ? " failed |" : " - |";
        continue;
      }
      table += fmt::format(" {:.4f} ({} v{}) |", r->final_accuracy, r->final_version,
                           r->epsilon_spent >= 0 ? fmt::format(", spent {:.2f}", r->epsilon_spent) : "");
      line.points.emplace_back(static_cast<double>(i), r->final_accuracy);
    }
    table += "\n";
    fig.series.push_back(std::move(line));
  }
  return {table, observe::plot::LineChart(fig)};
}

}  // namespace

void RegisterCompare(CLI::App& app) {
  struct Flags {
    federation::CompareRequest request;  // the flags below bind to it, so its defaults are the flags'
    std::string out = "fedlora-compare";
    std::string methods;
    std::string dp_epsilons;
    std::vector<std::string> extra;
  };
  auto f = std::make_shared<Flags>();
  federation::CompareRequest& q = f->request;
  for (const methods::Method* m : methods::AllMethods()) f->methods += fmt::format("{}{}", f->methods.empty() ? "" : ",", m->name());
  auto* cmd = app.add_subcommand(
      "compare",
      "Run several methods on the same task, seeds, partition, worker speeds and time budget (one `fedlora run` "
      "each, in turn) and write a table and a plot of test accuracy against uploaded bytes. Arguments after `--` "
      "go to every run (e.g. -- --ranks 4,8,16 --mode sync).");
  cmd->add_option("--out", f->out, "Directory for the runs' stores, logs and the results")->capture_default_str();
  cmd->add_option("--methods", f->methods, "Comma-separated methods to run, in order")->capture_default_str();
  cmd->add_option("--duration", q.duration_s, "Seconds of federated training per method")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--target", q.target, "Accuracy whose first crossing reports the bytes uploaded until then")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  cmd->add_option("--workers", q.task.num_clients, "Workers per run")->check(CLI::Range(1, 256))->capture_default_str();
  cmd->add_option("--speeds", q.speeds, "Slowdown factors, assigned to workers in turn")->capture_default_str();
  cmd->add_option("--dirichlet", q.task.dirichlet_alpha, "Dirichlet alpha of the non-IID split")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--task", q.task.task,
                  "image (Fashion-MNIST) or text-classify (WordNet's glosses into 45 classes by a language model)")
      ->check(CLI::IsMember({"image", "text-classify"}))
      ->capture_default_str();
  cmd->add_option("--arch", q.task.arch, "image: base model, vit-tiny or mlp")
      ->check(CLI::IsMember({"vit-tiny", "mlp"}))
      ->capture_default_str();
  cmd->add_option("--data-dir", q.task.data_dir, "image: Fashion-MNIST IDX files")->capture_default_str();
  cmd->add_option("--base", q.task.base,
                  "text-classify: the checkpoint directory every run fine-tunes (default: fedlora's own, pretrained "
                  "once into <out>/base/fedlora-lm)");
  cmd->add_option("--examples-per-source", q.task.examples_per_source,
                  "text-classify: a seeded sample of N glosses of each class (0: all)")
      ->capture_default_str();
  cmd->add_option("--wordnet", q.task.wordnet_dir, "text-classify: the WordNet directory (Debian's wordnet-base)")
      ->capture_default_str();
  cmd->add_option("--eval-every", q.eval_every, "Evaluate every N versions (points of the curve)")->capture_default_str();
  cmd->add_option("--eval-samples", q.eval_samples, "Test examples per periodic evaluation (the final accuracy uses "
                                                     "the whole test split)")
      ->capture_default_str();
  cmd->add_option("--dp-epsilons", f->dp_epsilons,
                  "Run every method once per record-level DP-SGD budget in this list (e.g. inf,8,3,1; inf: no DP), "
                  "each budget in <out>/eps-E, and write a table and a plot of final accuracy against epsilon. "
                  "Give the DP-SGD step plan after -- (e.g. -- --dp-steps 400)");
  cmd->add_option("extra", f->extra, "Arguments passed to every `fedlora run` (after --)");
  cmd->callback([f] {
    InstallStopSignals();
    std::vector<std::string> methods;
    for (size_t pos = 0; pos <= f->methods.size();) {
      const size_t comma = std::min(f->methods.find(',', pos), f->methods.size());
      const std::string name = f->methods.substr(pos, comma - pos);
      if (!name.empty()) {
        if (auto m = methods::FindMethod(name); !m.ok()) Fail("compare", m.status(), 2);
        methods.push_back(name);
      }
      pos = comma + 1;
    }
    if (methods.empty()) Fail("compare", InvalidArgument("--methods is empty"), 2);
    std::vector<std::string> budgets;
    if (!f->dp_epsilons.empty()) {
      auto parsed = ParseEpsilons(f->dp_epsilons);
      if (!parsed.ok()) Fail("compare", parsed.status(), 2);
      budgets = std::move(*parsed);
    }
    std::error_code ec;
    const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    if (ec) Fail("compare", Internal("cannot find the fedlora executable: " + ec.message()));
    const fs::path out(f->out);
    fs::create_directories(out / "runs", ec);
    if (ec) Fail("compare", Unavailable(fmt::format("cannot create '{}': {}", f->out, ec.message())));

    // One frozen base for every run.
    federation::CompareRequest request = f->request;
    request.executable = exe.string();
    request.methods = methods;
    federation::CompareCallbacks callbacks;
    callbacks.interrupted = [] { return StopSignalled(); };
    if (isatty(STDOUT_FILENO)) {
      callbacks.running = [](const std::string& label, double seconds) {
        fmt::print("\r  {} ... {:.0f} s", label, seconds);
        std::fflush(stdout);
      };
    }
    callbacks.note = [](const std::string& line) {
      fmt::print("{}\n", line);
      std::fflush(stdout);
    };
    auto prepared = federation::PrepareBase(request, out.string(), callbacks);
    if (!prepared.ok()) Fail("compare", prepared.status(), prepared.status().code() == Code::kNotFound ? 2 : 1);
    if (isatty(STDOUT_FILENO)) fmt::print("\r");
    request.base = *prepared;
    const std::string& base = request.base;
    const bool text = IsTextClassification(request.task);

    const std::string model_name = text ? base : request.task.arch;
    fmt::print("comparing {} methods: {} s each, {} workers (speeds x{}), Dirichlet({}), {}; results in {}\n",
               methods.size(), request.duration_s, request.task.num_clients, request.speeds,
               request.task.dirichlet_alpha, model_name, f->out);
    std::fflush(stdout);

    // Every method once, with `extra` after the common flags, in <pass_out>/runs/<method>.
    callbacks.finished = [](const std::string& label, const MethodResult& r) {
      if (isatty(STDOUT_FILENO)) fmt::print("\r");
      if (r.error.empty()) {
        fmt::print("{}  final accuracy {:.4f}  {} per update  {} uploaded  {} versions\n", label, r.final_accuracy,
                   HumanBytes(r.BytesPerUpdate()), HumanBytes(static_cast<double>(r.bytes)), r.final_version);
      } else {
        fmt::print("{}  FAILED: {}\n", label, r.error);
      }
      std::fflush(stdout);
    };
    auto run_methods = [&](const fs::path& pass_out, const std::vector<std::string>& extra) {
      auto results = federation::RunMethods(request, pass_out.string(), extra, callbacks);
      if (!results.ok()) Fail("compare", results.status());
      return std::move(*results);
    };

    // The table (Markdown and JSON) and the plot of one pass, in `pass_out`.
    auto write_results = [&](const fs::path& pass_out, const std::vector<MethodResult>& results,
                             const std::vector<std::string>& extra) {
      auto find = [&](const std::string& name) -> const MethodResult* {
        for (const auto& r : results) {
          if (r.method == name && r.error.empty()) return &r;
        }
        return nullptr;
      };
      const MethodResult* fedavg = find("fedavg");
      const MethodResult* full = find("full");
      std::string table = fmt::format(
          "{}, {}, {} workers (speeds x{}), Dirichlet({}), {} s per method{}; final accuracy on {}; on clients' mix: "
          "the mean over clients of the accuracy on their own label mix (fedsa: with each client's own B); bytes are "
          "logged update bytes.\n\n"
          "| method | final accuracy | on clients' mix | vs fedavg | bytes / update | uploaded | fewer bytes / update than fedavg | "
          "than full | bytes to {:.2f} | updates | versions |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
          text ? "WordNet glosses (45 classes)" : "Fashion-MNIST", model_name, request.task.num_clients, request.speeds,
          request.task.dirichlet_alpha, request.duration_s, extra.empty() ? "" : ", run flags: " + fmt::format("{}", fmt::join(extra, " ")),
          text ? "the held-out glosses" : "the 10,000 test images", request.target);
      nlohmann::json json = nlohmann::json::array();
      for (const auto& r : results) {
        if (!r.error.empty()) {
          table += fmt::format("| {} | failed: {} | | | | | | | | | |\n", r.method, r.error);
          continue;
        }
        auto ratio = [&](const MethodResult* ref) {
          return ref && r.BytesPerUpdate() > 0 ? fmt::format("{:.1f}x", ref->BytesPerUpdate() / r.BytesPerUpdate()) : "-";
        };
        const std::string delta = fedavg ? fmt::format("{:+.1f} pt", 100.0 * (r.final_accuracy - fedavg->final_accuracy)) : "-";
        const std::string mix = r.client_accuracy >= 0 ? fmt::format("{:.4f}{}", r.client_accuracy, r.personal ? " (personal)" : "") : "-";
        table += fmt::format("| {} | {:.4f} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n", r.method, r.final_accuracy,
                             mix, delta, HumanBytes(r.BytesPerUpdate()), HumanBytes(static_cast<double>(r.bytes)),
                             ratio(fedavg), ratio(full), HumanBytes(r.bytes_to_target), r.updates, r.final_version);
        nlohmann::json curve = nlohmann::json::array();
        for (const auto& p : r.curve) curve.push_back({{"version", p.version}, {"bytes", p.bytes}, {"accuracy", p.accuracy}});
        json.push_back({{"method", r.method}, {"final_accuracy", r.final_accuracy}, {"client_accuracy", r.client_accuracy},
                        {"client_models", r.personal ? "personal" : "global"}, {"base_accuracy", r.base_accuracy},
                        {"updates", r.updates}, {"bytes", r.bytes}, {"bytes_per_update", r.BytesPerUpdate()},
                        {"bytes_to_target", r.bytes_to_target}, {"versions", r.final_version},
                        {"federated_seconds", r.seconds},
                        {"epsilon_spent", r.epsilon_spent >= 0 ? nlohmann::json(r.epsilon_spent) : nlohmann::json(nullptr)},
                        {"curve", curve}});
      }
      std::ofstream(pass_out / "results.md") << table;
      std::ofstream(pass_out / "results.json")
          << nlohmann::json{{"task", request.task.task}, {"target", request.target}, {"dirichlet", request.task.dirichlet_alpha},
                            {"duration_s", request.duration_s}, {"extra", extra}, {"methods", json}}
                 .dump(2)
          << "\n";
      std::ofstream(pass_out / "accuracy_vs_bytes.svg")
          << Plot(results, request.target, fmt::format("Test accuracy vs uploaded bytes, Dirichlet({})", request.task.dirichlet_alpha));
      fmt::print("\n{}\nwrote {}, {} and {}\n", table, (pass_out / "results.md").string(),
                 (pass_out / "results.json").string(), (pass_out / "accuracy_vs_bytes.svg").string());
      std::fflush(stdout);
    };

    if (budgets.empty()) {
      write_results(out, run_methods(out, f->extra), f->extra);
    } else {
      std::vector<std::pair<std::string, std::vector<MethodResult>>> passes;
      for (const std::string& eps : budgets) {
        if (StopSignalled()) break;
        fmt::print("\n{}\n", eps == "inf" ? "without DP" : "record-level DP-SGD at epsilon " + eps);
        std::vector<std::string> extra = f->extra;
        if (eps != "inf") extra.insert(extra.end(), {"--dp-epsilon", eps});
        const fs::path pass_out = out / ("eps-" + eps);
        fs::create_directories(pass_out / "runs", ec);
        auto results = run_methods(pass_out, extra);
        write_results(pass_out, results, extra);
        passes.emplace_back(eps, std::move(results));
      }
      const auto [table, svg] = PrivacyTable(passes, fmt::format("Final test accuracy vs the DP-SGD budget, Dirichlet({})",
                                                                 request.task.dirichlet_alpha));
      std::ofstream(out / "privacy.md") << table;
      std::ofstream(out / "accuracy_vs_epsilon.svg") << svg;
      fmt::print("\n{}\nwrote {} and {}\n", table, (out / "privacy.md").string(), (out / "accuracy_vs_epsilon.svg").string());
    }
    if (StopSignalled()) Fail("compare", Status(Code::kCancelled, "interrupted"));
  });
}

}  // namespace fedlora::ops
