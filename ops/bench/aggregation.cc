// Aggregation cost per server step at the LoRA shapes of a 7B model: AS-LoRA (the weighted mean
// of each module's active factor, plus its scores) against SVD-based product aggregation
// (method flora: FLoRA stacking re-factorised by a truncated SVD, FlexLoRA-style). Both run
// through the real Engine on the same buffer size, with random updates of the right shapes.
// Prints a table and writes JSON. Usage: fedlora_bench_aggregation [--layers 32] [--dim 4096]
// [--rank 16] [--clients 6] [--json FILE]
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <chrono>
#include <map>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "aggregator/engine.h"
#include "schema/codec.h"

namespace {

using Clock = std::chrono::steady_clock;
using namespace fedlora;

AdapterSpec Spec(uint32_t layers, uint32_t dim, uint32_t rank) {
  AdapterSpec spec;
  spec.model = "7b-shapes";
  spec.rank = rank;
  spec.alpha = 2.0f * static_cast<float>(rank);
  for (uint32_t l = 0; l < layers; ++l) {
    for (const char* p : {"q_proj", "k_proj", "v_proj", "o_proj"}) {
      const std::string m = fmt::format("layers.{}.self_attn.{}", l, p);
      spec.target_modules.push_back(m);
      spec.tensors.push_back({m + ".lora_A", {rank, dim}, TensorRole::kLoraA});
      spec.tensors.push_back({m + ".lora_B", {dim, rank}, TensorRole::kLoraB});
    }
  }
  return spec;
}

AdapterState Initial(const AdapterSpec& spec, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 0.01f);
  AdapterState s;
  for (const auto& t : spec.tensors) {
    DenseTensor d{t.name, t.shape, std::vector<float>(t.numel())};
    if (t.role == TensorRole::kLoraA) {
      for (float& v : d.values) v = normal(rng);
    }
    s.tensors.push_back(std::move(d));
  }
  return s;
}

// An update of client k from version `base`: both factors (flora) or B only (as-lora warm-up).
codec::Bytes Update(const AdapterSpec& spec, int k, uint64_t base, bool b_only, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 1e-3f);
  std::vector<codec::EncodedTensor> tensors;
  for (const auto& t : spec.tensors) {
    if (b_only && t.role != TensorRole::kLoraB) continue;
    codec::EncodedTensor e{t.name, t.shape, wire::Encoding::Dense, {}, std::vector<float>(t.numel())};
    for (float& v : e.values) v = normal(rng);
    tensors.push_back(std::move(e));
  }
  codec::UpdateHeader h{fmt::format("c{}-{}", k, base), fmt::format("c{}", k), "bench", base, 100, 20, 0.5f, {}};
  return codec::BuildUpdate(h, tensors);
}

// Seconds to fold `clients` updates into one new version, for each of `versions` versions.
std::vector<double> Measure(const AdapterSpec& spec, Method method, int clients, int versions, uint64_t seed) {
  std::mt19937_64 rng(seed);
  aggregator::EngineOptions o;
  o.mode = wire::Mode::FedBuff;
  o.buffer_size = static_cast<uint32_t>(clients);
  o.method.method = method;
  o.method.as_warmup = 1000;  // B throughout: every step folds one factor per module
  auto engine = aggregator::Engine::Create(o, "bench", spec, Initial(spec, rng), 0, 0, nullptr);
  if (!engine.ok()) throw std::runtime_error(engine.status().ToString());
  std::vector<double> seconds;
  uint64_t seq = 1;
  for (int v = 0; v < versions; ++v) {
    std::vector<codec::Bytes> updates;
    for (int k = 0; k < clients; ++k) updates.push_back(Update(spec, k, (*engine)->version(), method == Method::kAsLora, rng));
    const auto t0 = Clock::now();
    for (const auto& u : updates) {
      auto r = (*engine)->Consume(seq++, *wire::GetEnvelope(u.data())->body_as_Update());
      if (!r.ok()) throw std::runtime_error(r.status().ToString());
      if (!r->has_value() && &u == &updates.back()) throw std::runtime_error("no version made");
    }
    seconds.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return seconds;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Aggregation cost per server step at 7B LoRA shapes: as-lora against SVD-based flora"};
  uint32_t layers = 32, dim = 4096, rank = 16;
  int clients = 6, versions = 2;
  std::string json_path;
  std::vector<std::string> methods = {"as-lora", "flora"};
  app.add_option("--methods", methods, "Methods to measure (as-lora, flora)")->capture_default_str();
  app.add_option("--layers", layers, "Transformer layers (4 LoRA projections each)")->capture_default_str();
  app.add_option("--dim", dim, "Hidden size d (projections are d x d)")->capture_default_str();
  app.add_option("--rank", rank, "LoRA rank r")->capture_default_str();
  app.add_option("--clients", clients, "Updates per server step (FedBuff K)")->capture_default_str();
  app.add_option("--versions", versions, "Server steps measured per method")->capture_default_str();
  app.add_option("--json", json_path, "Also write the figures here");
  CLI11_PARSE(app, argc, argv);
  const AdapterSpec spec = Spec(layers, dim, rank);
  fmt::print("{} modules of {}x{} at rank {}, {} updates per step\n", spec.tensors.size() / 2, dim, dim, rank, clients);
  nlohmann::json out = {{"layers", layers}, {"dim", dim}, {"rank", rank}, {"clients", clients}};
  std::map<std::string, double> best;
  for (const std::string& name : methods) {
    const auto parsed = ParseMethod(name);
    if (!parsed.ok() || (*parsed != Method::kAsLora && *parsed != Method::kFlora)) {
      fmt::print(stderr, "--methods takes as-lora and flora, not '{}'\n", name);
      return 2;
    }
    const Method method = *parsed;
    fmt::print("measuring {} ...\n", name);
    std::fflush(stdout);
    const auto seconds = Measure(spec, method, clients, versions, 7);
    best[name] = *std::min_element(seconds.begin(), seconds.end());
    out[name] = seconds;
    fmt::print("  {:<8} seconds per server step: {:.3f}\n", name, fmt::join(seconds, ", "));
  }
  if (best.size() < 2) {
    if (!json_path.empty()) std::ofstream(json_path) << out.dump(2) << "\n";
    return 0;
  }
  const double ratio = best["flora"] / best["as-lora"];
  fmt::print("\nSVD-based (flora) / as-lora, best step each: {:.1f}x ({:.2f} s vs {:.3f} s)\n", ratio, best["flora"],
             best["as-lora"]);
  out["ratio"] = ratio;
  if (!json_path.empty()) std::ofstream(json_path) << out.dump(2) << "\n";
  return 0;
}
