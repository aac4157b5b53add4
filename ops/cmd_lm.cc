// `fedlora generate` (continue a prompt) and `fedlora score` (per-token NLL and perplexity of a
// text) with a language-model checkpoint directory (--base), bare or with a stored adapter
// version (--store, --adapter, --version) applied. See worker/lm/generate.h.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <thread>

#include "ops/commands.h"
#include "worker/federation/task.h"
#include "ops/flags.h"
#include "storage/reader.h"
#include "worker/lm/checkpoint.h"
#include "worker/lm/generate.h"
#include "worker/lm/llama.h"
#include "worker/lm/tokenizer.h"
#include "worker/model.h"

namespace fedlora::ops {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// What a command runs on: the checkpoint, and optionally a stored adapter version.
struct ModelFlags {
  std::string base;
  std::optional<std::string> store;
  std::optional<std::string> adapter;
  std::optional<std::string> version;
  int threads = 0;
};

void AddModelFlags(CLI::App* cmd, ModelFlags& f) {
  cmd->add_option("--base", f.base,
                  "Checkpoint directory (config.json, safetensors weights, tokenizer.model); default with --store: "
                  "fedlora's own language model there (<store>/base/fedlora-lm)");
  cmd->add_option("--store", f.store, "Store directory holding the adapter to apply (default: none, the bare base)");
  cmd->add_option("--adapter", f.adapter, "Adapter id in --store (default: \"default\")");
  cmd->add_option("--version", f.version, "Version of the adapter, a number or a tag (default: the latest)");
  cmd->add_option("--threads", f.threads, "LibTorch threads (0: one per core)")->capture_default_str();
}

struct Loaded {
  std::unique_ptr<worker::Model> model;
  worker::lm::LlamaModel* llama = nullptr;  // model, as what it is
  std::unique_ptr<worker::lm::Tokenizer> tokenizer;
  std::string architecture;
  std::optional<std::string> store, adapter;
  std::optional<uint64_t> version;
};

// config.json's architecture, without mapping the weights.
Result<std::string> CheckpointArchitecture(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return NotFound(fmt::format("--base '{}' is not a directory", dir));
  const std::string path = (fs::path(dir) / "config.json").string();
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound(fmt::format("'{}' is not a checkpoint directory: it has no readable config.json", dir));
  std::stringstream text;
  text << in.rdbuf();
  ASSIGN_OR_RETURN(const worker::lm::LlamaConfig config, worker::lm::ParseConfig(text.str(), path));
  return config.architecture;
}

// Opens the model (with the adapter version applied when --store is given) and the tokenizer;
// Fail()s with a clear error otherwise. Without --base, f.base becomes the store's own model.
Loaded Load(std::string_view command, ModelFlags& f) {
  if (!f.store && (f.adapter || f.version)) {
    Fail(command, InvalidArgument("--adapter and --version name an adapter in a store: give --store too"), 2);
  }
  if (f.base.empty()) {
    if (!f.store) {
      Fail(command, InvalidArgument("give the checkpoint with --base DIR (or --store, whose own language model is used)"),
           2);
    }
    f.base = OwnLanguageModelPath(*f.store);
  }
  SetTorchThreads(f.threads > 0 ? f.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  Loaded out;
  auto arch = CheckpointArchitecture(f.base);
  if (!arch.ok()) Fail(command, arch.status(), arch.status().code() == Code::kNotFound ? 2 : 1);
  out.architecture = *arch;

  worker::ModelOptions mo;  // bare: the default LoRA, whose B is zero, leaves the base's outputs
  mo.arch = out.architecture;
  std::optional<AdapterState> state;
  if (f.store) {
    StoreLayout layout;
    layout.dir = *f.store;
    out.store = *f.store;
    out.adapter = f.adapter.value_or("default");
    auto stored = storage::StoredAdapter::Open(layout, *out.adapter);
    if (!stored.ok()) Fail(command, stored.status(), stored.status().code() == Code::kNotFound ? 2 : 1);
    uint64_t version = stored->cursor().version;
    if (f.version) {
      auto v = storage::ResolveVersion(layout, *out.adapter, *f.version);
      if (!v.ok()) Fail(command, v.status(), 2);
      version = *v;
    }
    auto global = stored->Global(version);
    if (!global.ok()) Fail(command, global.status(), global.status().code() == Code::kNotFound ? 2 : 1);
    const AdapterSpec& spec = global->spec;
    if (spec.model != out.architecture) {
      Fail(command,
           InvalidArgument(fmt::format("version {} of adapter '{}' in '{}' is for a {}, and the checkpoint '{}' is a {}",
                                       version, *out.adapter, *f.store, spec.model.empty() ? "(none)" : spec.model,
                                       f.base, out.architecture)),
           2);
    }
    mo = worker::ModelOptions::ForSpec(spec);
    out.version = version;
    state = std::move(global->state);
  }
  auto model = worker::Model::Open(mo, f.base);
  if (!model.ok()) Fail(command, model.status());
  out.model = std::move(*model);
  out.llama = dynamic_cast<worker::lm::LlamaModel*>(out.model.get());
  if (out.llama == nullptr) {
    Fail(command, Internal(fmt::format("the model of '{}' is not a Llama-family model", f.base)));
  }
  if (state) {
    if (Status s = out.model->LoadAdapter(*state); !s.ok()) {
      Fail(command, s.WithContext(fmt::format("loading version {} of adapter '{}'", *out.version, *out.adapter)));
    }
  }
  auto tokenizer = worker::lm::Tokenizer::Load(f.base);
  if (!tokenizer.ok()) Fail(command, tokenizer.status());
  out.tokenizer = std::move(*tokenizer);
  return out;
}

json OptionalJson(const std::optional<std::string>& v) { return v ? json(*v) : json(nullptr); }
json OptionalJson(const std::optional<uint64_t>& v) { return v ? json(*v) : json(nullptr); }

// Prints a JSON object on one line; text that is not valid UTF-8 is replaced, never refused.
void PrintJson(const json& j) {
  fmt::print("{}\n", j.dump(-1, ' ', false, json::error_handler_t::replace));
}

// A piece for a terminal line: control characters as \xNN.
std::string Printable(std::string_view piece) {
  std::string out;
  for (const char ch : piece) {
    const auto u = static_cast<unsigned char>(ch);
    if (u < 0x20 || u == 0x7f) {
      out += fmt::format("\\x{:02x}", u);
    } else {
      out += ch;
    }
  }
  return out;
}

std::string Describe(const Loaded& m, const std::string& base) {
  if (!m.version) return fmt::format("{} '{}' (bare base)", m.architecture, base);
  return fmt::format("{} '{}' + version {} of adapter '{}' in '{}'", m.architecture, base, *m.version, *m.adapter,
                     *m.store);
}

Result<std::string> ReadText(const std::string& path) {
  std::stringstream ss;
  if (path == "-") {
    ss << std::cin.rdbuf();
    if (std::cin.bad()) return IoError("error reading the text from stdin");
    return ss.str();
  }
  std::error_code ec;
  if (!fs::exists(path, ec)) return NotFound(fmt::format("--text '{}' does not exist", path));
  if (fs::is_directory(path, ec)) return InvalidArgument(fmt::format("--text '{}' is a directory, not a file", path));
  std::ifstream in(path, std::ios::binary);
  if (!in) return IoError(fmt::format("cannot open --text '{}' for reading", path));
  ss << in.rdbuf();
  if (in.bad()) return IoError(fmt::format("error reading --text '{}'", path));
  return ss.str();
}

}  // namespace

void RegisterGenerate(CLI::App& app) {
  struct Flags {
    ModelFlags model;
    std::string prompt;
    worker::lm::SamplingOptions sampling;
    bool ignore_eos = false;
    bool json = false;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = app.add_subcommand(
      "generate", "Continue a prompt with a language-model checkpoint (--base), bare or with a stored adapter version "
                  "applied (--store, --adapter, --version); the text streams to stdout as it is generated");
  AddModelFlags(cmd, f->model);
  cmd->add_option("--prompt", f->prompt, "Text to continue (empty: start from BOS alone)");
  cmd->add_option("--max-new-tokens", f->sampling.max_new_tokens, "Tokens to generate at most")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--temperature", f->sampling.temperature, "Sampling temperature (0: greedy)")->capture_default_str();
  cmd->add_option("--top-p", f->sampling.top_p, "Nucleus sampling: keep the most probable tokens up to this mass, in (0, 1]")
      ->capture_default_str();
  cmd->add_option("--seed", f->sampling.seed, "Seed of the sampler")->capture_default_str();
  cmd->add_flag("--ignore-eos", f->ignore_eos, "Do not stop at the end-of-sequence token");
  cmd->add_flag("--json", f->json, "Print one JSON object at the end instead of streaming the text");
  cmd->callback([f] {
    f->sampling.stop_at_eos = !f->ignore_eos;
    if (Status s = worker::lm::ValidateSampling(f->sampling); !s.ok()) Fail("generate", s, 2);
    Loaded m = Load("generate", f->model);
    std::function<void(std::string_view)> stream;
    if (!f->json) {
      stream = [](std::string_view piece) {
        std::fwrite(piece.data(), 1, piece.size(), stdout);
        std::fflush(stdout);
      };
    }
    const auto start = std::chrono::steady_clock::now();
    auto g = worker::lm::Generate(*m.llama, *m.tokenizer, f->prompt, f->sampling, stream);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!g.ok()) {
      if (!f->json) std::fputc('\n', stdout);
      Fail("generate", g.status(), g.status().code() == Code::kInvalidArgument ? 2 : 1);
    }
    const double rate = seconds > 0 ? static_cast<double>(g->new_ids.size()) / seconds : 0.0;
    if (f->json) {
      PrintJson({{"prompt", f->prompt},
                 {"text", g->text},
                 {"prompt_tokens", g->prompt_ids.size()},
                 {"new_tokens", g->new_ids.size()},
                 {"stop_reason", g->stop_reason},
                 {"seconds", seconds},
                 {"tokens_per_second", rate},
                 {"base", f->model.base},
                 {"store", OptionalJson(m.store)},
                 {"adapter", OptionalJson(m.adapter)},
                 {"version", OptionalJson(m.version)}});
      return;
    }
    fmt::print("\n");
    std::fflush(stdout);
    fmt::print(stderr, "generate: {} tokens after a {}-token prompt in {:.2f} s ({:.1f} tokens/s), stopped by {}; {}\n",
               g->new_ids.size(), g->prompt_ids.size(), seconds, rate, g->stop_reason, Describe(m, f->model.base));
  });
}

void RegisterScore(CLI::App& app) {
  struct Flags {
    ModelFlags model;
    std::string text;
    bool json = false;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = app.add_subcommand(
      "score", "Per-token negative log-likelihood and perplexity of a text under a language-model checkpoint "
               "(--base), bare or with a stored adapter version applied (--store, --adapter, --version)");
  AddModelFlags(cmd, f->model);
  cmd->add_option("--text", f->text, "File holding the text (UTF-8; '-': stdin)")->required();
  cmd->add_flag("--json", f->json, "Print one JSON object");
  cmd->callback([f] {
    auto text = ReadText(f->text);
    if (!text.ok()) Fail("score", text.status(), 2);
    Loaded m = Load("score", f->model);
    auto score = worker::lm::Score(*m.llama, *m.tokenizer, *text);
    if (!score.ok()) Fail("score", score.status(), score.status().code() == Code::kInvalidArgument ? 2 : 1);
    if (f->json) {
      json tokens = json::array();
      for (const auto& t : score->tokens) tokens.push_back({{"id", t.id}, {"piece", t.piece}, {"nll", t.nll}});
      PrintJson({{"tokens", std::move(tokens)},
                 {"mean_nll", score->mean_nll},
                 {"perplexity", score->perplexity},
                 {"token_count", score->tokens.size()},
                 {"base", f->model.base},
                 {"store", OptionalJson(m.store)},
                 {"adapter", OptionalJson(m.adapter)},
                 {"version", OptionalJson(m.version)}});
      return;
    }
    size_t width = 5;
    std::vector<std::string> pieces;
    pieces.reserve(score->tokens.size());
    for (const auto& t : score->tokens) {
      pieces.push_back(Printable(t.piece));
      width = std::max(width, pieces.back().size());
    }
    fmt::print("score: {} tokens of {} under {}\n", score->tokens.size(), f->text == "-" ? "stdin" : f->text,
               Describe(m, f->model.base));
    fmt::print("{:>6}  {:<{}}  {:>9}\n", "index", "piece", width, "nll");
    for (size_t i = 0; i < score->tokens.size(); ++i) {
      fmt::print("{:>6}  {:<{}}  {:>9.4f}\n", i, pieces[i], width, score->tokens[i].nll);
    }
    fmt::print("perplexity {:.4f} (mean NLL {:.4f} over {} tokens)\n", score->perplexity, score->mean_nll,
               score->tokens.size());
  });
}

}  // namespace fedlora::ops
