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
#include "ops/flags.h"
#include "worker/federation/stored_model.h"
#include "worker/lm/generate.h"
#include "worker/lm/tokenizer.h"

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

// The model a command runs on (federation::OpenStoredModel), with the thread count set first.
federation::StoredModel Load(std::string_view command, const ModelFlags& f) {
  SetTorchThreads(f.threads > 0 ? f.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  auto m = federation::OpenStoredModel({f.base, f.store, f.adapter, f.version});
  if (!m.ok()) {
    const Code c = m.status().code();
    Fail(command, m.status(), c == Code::kInvalidArgument || c == Code::kNotFound ? 2 : 1);
  }
  return std::move(*m);
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
    federation::StoredModel m = Load("generate", f->model);
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
                 {"base", m.base},
                 {"store", OptionalJson(m.store)},
                 {"adapter", OptionalJson(m.adapter)},
                 {"version", OptionalJson(m.version)}});
      return;
    }
    fmt::print("\n");
    std::fflush(stdout);
    fmt::print(stderr, "generate: {} tokens after a {}-token prompt in {:.2f} s ({:.1f} tokens/s), stopped by {}; {}\n",
               g->new_ids.size(), g->prompt_ids.size(), seconds, rate, g->stop_reason, m.Describe());
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
    federation::StoredModel m = Load("score", f->model);
    auto score = worker::lm::Score(*m.llama, *m.tokenizer, *text);
    if (!score.ok()) Fail("score", score.status(), score.status().code() == Code::kInvalidArgument ? 2 : 1);
    if (f->json) {
      json tokens = json::array();
      for (const auto& t : score->tokens) tokens.push_back({{"id", t.id}, {"piece", t.piece}, {"nll", t.nll}});
      PrintJson({{"tokens", std::move(tokens)},
                 {"mean_nll", score->mean_nll},
                 {"perplexity", score->perplexity},
                 {"token_count", score->tokens.size()},
                 {"base", m.base},
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
               m.Describe());
    fmt::print("{:>6}  {:<{}}  {:>9}\n", "index", "piece", width, "nll");
    for (size_t i = 0; i < score->tokens.size(); ++i) {
      fmt::print("{:>6}  {:<{}}  {:>9.4f}\n", i, pieces[i], width, score->tokens[i].nll);
    }
    fmt::print("perplexity {:.4f} (mean NLL {:.4f} over {} tokens)\n", score->perplexity, score->mean_nll,
               score->tokens.size());
  });
}

}  // namespace fedlora::ops
