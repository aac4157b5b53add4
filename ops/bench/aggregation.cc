// Aggregation cost per server step at the LoRA shapes of a 7B model: AS-LoRA (the weighted mean
// of each module's active factor, plus its scores) against SVD-based product aggregation
// (method flora: FLoRA stacking re-factorised by a truncated SVD, FlexLoRA-style). Both run
// through the real Engine on the same buffer size, with random updates of the right shapes.
// Prints a table and writes JSON. Usage: fedlora_bench_aggregation [--layers 32] [--dim 4096]
// [--rank 16] [--clients 6] [--json FILE]
//
// With --fold it measures instead what one update costs to fold into the buffered sum, per
// method, at ranks 8..64 (ops/bench/fold): the time of Engine::Consume for an update that does
// not close a step (validation, weighting, the accumulate) against memcpy of the update's tensor
// bytes in the same run, the memory-bandwidth bound.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <new>
#include <cmath>
#include <chrono>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "aggregator/engine.h"
#include "aggregator/methods/registry.h"
#include "schema/codec.h"
#include "schema/validate.h"
#include "ops/bench/lora7b.h"

// Every operator new of this process, counted, so that --fold can report the allocations made
// while an update is folded (the aligned forms are left to the library; nothing on the fold path
// asks for over-aligned memory).
std::atomic<uint64_t> g_allocations{0};

// GCC cannot see that the replaced operator new below allocates with malloc, and warns that
// free() meets a pointer from operator new.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

void* operator new(std::size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return operator new(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
#pragma GCC diagnostic pop

namespace {

using Clock = std::chrono::steady_clock;
using namespace fedlora;
using namespace fedlora::bench;

// Minor page faults of this process so far (a page touched for the first time since it was
// mapped: what a freshly allocated large buffer costs on first write).
uint64_t MinorFaults() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<uint64_t>(u.ru_minflt);
}

// An update of client k from version `base` carrying the tensors `uploads` selects, dense.
codec::Bytes Update(const AdapterSpec& spec, int k, uint64_t base, const std::vector<bool>& uploads,
                    std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 1e-3f);
  std::vector<codec::EncodedTensor> tensors;
  for (size_t i = 0; i < spec.tensors.size(); ++i) {
    const auto& t = spec.tensors[i];
    if (!uploads[i]) continue;
    codec::EncodedTensor e{t.name, t.shape, wire::Encoding::Dense, {}, std::vector<float>(t.numel())};
    for (float& v : e.values) v = normal(rng);
    tensors.push_back(std::move(e));
  }
  codec::UpdateHeader h{fmt::format("c{}-{}", k, base), fmt::format("c{}", k), "bench", base, 100, 20, 0.5f, {}, 100, {}};
  return codec::BuildUpdate(h, tensors);
}

// Seconds to fold `clients` updates into one new version, for each of `versions` versions.
std::vector<double> Measure(const AdapterSpec& spec, const aggregator::EngineOptions& o, int versions, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const int clients = static_cast<int>(o.buffer_size);
  auto engine = aggregator::Engine::Create(o, "bench", spec, Initial(spec, rng), 0, 0, nullptr);
  if (!engine.ok()) throw std::runtime_error(engine.status().ToString());
  std::vector<double> seconds;
  uint64_t seq = 1;
  for (int v = 0; v < versions; ++v) {
    std::vector<codec::Bytes> updates;
    const std::vector<bool> uploads = Plan(spec, **engine, o.method.method()).uploads;
    for (int k = 0; k < clients; ++k) updates.push_back(Update(spec, k, (*engine)->version(), uploads, rng));
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

struct FoldFigure {
  double validate_us = 0;  // median ValidateUpdate alone (the part of Consume that reads it first)
  double fold_us = 0;    // median Consume of one update
  double memcpy_us = 0;  // median memcpy of its tensor bytes
  size_t bytes = 0;
  uint64_t faults = 0;       // median minor page faults during one Consume (the first, which sizes the sum, included)
  uint64_t allocations = 0;  // median operator-new calls during one Consume
};

FoldFigure MeasureFold(const AdapterSpec& spec, aggregator::EngineOptions o, int updates, bool warm_up) {
  o.mode = wire::Mode::FedBuff;
  o.buffer_size = static_cast<uint32_t>(updates) + 1;  // never closes a step
  std::mt19937_64 rng(7);
  // The updates are all trained from version 0, which the methods that need an update's base
  // (hetlora, flora) look up once the warm-up step has made version 1.
  const auto initial = std::make_shared<const AdapterState>(Initial(spec, rng));
  const aggregator::Engine::BaseLookup lookup = [initial](uint64_t version) -> Result<std::shared_ptr<const AdapterState>> {
    if (version != 0) return NotFound(fmt::format("no version {} in the benchmark", version));
    return initial;
  };
  auto engine = aggregator::Engine::Create(o, "bench", spec, *initial, 0, 0, lookup);
  if (!engine.ok()) throw std::runtime_error(engine.status().ToString());
  const methods::TrainPlan plan = Plan(spec, **engine, o.method.method());
  const float density = (*engine)->method_state().upload_density;
  std::vector<double> fold, copy, validate;
  std::vector<uint64_t> faults, allocations;
  FoldFigure f;
  // Steady state: one whole step first, so that what a method keeps between steps has been
  // allocated once, as in a running aggregator. Not for flora, whose step (a truncated SVD of
  // every module's stacked factors, about 3 minutes at r = 16) would dominate the run: its
  // figures are those of a first step.
  for (uint32_t k = 0; warm_up && k < o.buffer_size; ++k) {
    const codec::Bytes u = MethodUpdate(spec, plan, density, static_cast<int>(k) + updates, 0);
    auto r = (*engine)->Consume(k + 1, *wire::GetEnvelope(u.data())->body_as_Update());
    if (!r.ok()) throw std::runtime_error(r.status().ToString());
    if (r->has_value() != (k + 1 == o.buffer_size)) throw std::runtime_error("the warm-up step did not close");
  }
  const uint64_t first_seq = warm_up ? o.buffer_size + 1 : 1;
  for (int k = 0; k < updates; ++k) {
    const codec::Bytes u = MethodUpdate(spec, plan, density, k, 0);
    const auto& update = *wire::GetEnvelope(u.data())->body_as_Update();
    f.bytes = TensorBytes(update);
    // The validation pass alone, on a copy of the update somewhere else in memory (so the timed
    // Consume below does not find it in cache).
    {
      const std::vector<uint8_t> other(u.data(), u.data() + u.size());
      const auto& copy_of = *wire::GetEnvelope(other.data())->body_as_Update();
      const auto v0 = Clock::now();
      if (!ValidateUpdate(copy_of, spec, 0).ok()) throw std::runtime_error("invalid update");
      validate.push_back(std::chrono::duration<double, std::micro>(Clock::now() - v0).count());
    }
    const uint64_t faults0 = MinorFaults(), allocations0 = g_allocations.load();
    auto t0 = Clock::now();
    auto r = (*engine)->Consume(first_seq + static_cast<uint64_t>(k), update);
    fold.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    faults.push_back(MinorFaults() - faults0);
    allocations.push_back(g_allocations.load() - allocations0);
    if (!r.ok()) throw std::runtime_error(r.status().ToString());
    if (r->has_value()) throw std::runtime_error("a step closed; the buffer should hold every update");
    // The bound: the same number of bytes copied between two buffers already in memory.
    std::vector<char> src(f.bytes, 1), dst(f.bytes, 0);
    t0 = Clock::now();
    std::memcpy(dst.data(), src.data(), f.bytes);
    copy.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    if (dst[f.bytes / 2] != 1) throw std::runtime_error("memcpy");  // keeps the copy observable
  }
  std::sort(validate.begin(), validate.end());
  f.validate_us = validate[validate.size() / 2];
  std::sort(fold.begin(), fold.end());
  std::sort(copy.begin(), copy.end());
  f.fold_us = fold[fold.size() / 2];
  f.memcpy_us = copy[copy.size() / 2];
  std::sort(faults.begin(), faults.end());
  std::sort(allocations.begin(), allocations.end());
  f.faults = faults[faults.size() / 2];
  f.allocations = allocations[allocations.size() / 2];
  return f;
}

int Fold(uint32_t layers, uint32_t dim, const std::vector<uint32_t>& ranks, std::vector<std::string> methods,
         int updates, const std::string& json_path) {
  if (methods.empty() || (methods.size() == 2 && methods[0] == "as-lora" && methods[1] == "flora")) {
    methods = {"fedavg", "ffa", "fedsa", "flasc", "hetlora", "as-lora"};
  }
  nlohmann::json out = nlohmann::json::array();
  fmt::print("fold of one update into the buffered sum: {} layers x 4 projections of {}x{}, median of {} updates\n",
             layers, dim, dim, updates);
  fmt::print("{:>5} {:<9} {:>10} {:>10} {:>11} {:>10} {:>9} {:>7} {:>13} {:>7} {:>7}\n", "rank", "method", "MiB",
             "fold us", "validate us", "memcpy us", "fold GB/s", "ratio", "w/o validate", "faults", "allocs");
  for (uint32_t rank : ranks) {
    const AdapterSpec spec = Spec(layers, dim, rank);
    for (const auto& name : methods) {
      auto o = Options(name);
      if (!o.ok() || o->method.method().full_model()) {
        fmt::print(stderr, "--fold measures the LoRA methods, not '{}'\n", name);
        return 2;
      }
      const FoldFigure f = MeasureFold(spec, *o, updates, name != "flora");
      const double ratio = f.fold_us / f.memcpy_us;
      fmt::print("{:>5} {:<9} {:>10.1f} {:>10.0f} {:>11.0f} {:>10.0f} {:>9.2f} {:>7.2f} {:>13.2f} {:>7} {:>7}\n", rank,
                 name, f.bytes / 1048576.0, f.fold_us, f.validate_us, f.memcpy_us, f.bytes / f.fold_us / 1e3, ratio,
                 (f.fold_us - f.validate_us) / f.memcpy_us, f.faults, f.allocations);
      std::fflush(stdout);
      out.push_back({{"rank", rank}, {"method", name}, {"bytes", f.bytes}, {"fold_us", f.fold_us},
                     {"memcpy_us", f.memcpy_us}, {"ratio", ratio},
                     {"validate_us", f.validate_us}, {"faults", f.faults}, {"allocations", f.allocations}});
    }
  }
  if (!json_path.empty()) std::ofstream(json_path) << out.dump(2) << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Aggregation cost per server step at 7B LoRA shapes: as-lora against SVD-based flora"};
  uint32_t layers = 32, dim = 4096, rank = 16;
  int clients = 6, versions = 2;
  std::string json_path;
  std::vector<std::string> methods = {"as-lora", "flora"};
  app.add_option("--methods", methods, "Methods to measure; the ratio is reported when as-lora and flora are both measured")->capture_default_str();
  app.add_option("--layers", layers, "Transformer layers (4 LoRA projections each)")->capture_default_str();
  app.add_option("--dim", dim, "Hidden size d (projections are d x d)")->capture_default_str();
  app.add_option("--rank", rank, "LoRA rank r")->capture_default_str();
  app.add_option("--clients", clients, "Updates per server step (FedBuff K)")->capture_default_str();
  app.add_option("--versions", versions, "Server steps measured per method")->capture_default_str();
  app.add_option("--json", json_path, "Also write the figures here");
  bool fold = false;
  std::vector<uint32_t> ranks = {8, 16, 32, 64};
  int updates = 5;
  app.add_flag("--fold", fold,
               "Measure one update's fold into the buffered sum per method (fedavg, ffa, fedsa, flasc, hetlora, "
               "as-lora) against memcpy of its bytes, at --ranks");
  app.add_option("--ranks", ranks, "--fold: LoRA ranks")->capture_default_str();
  app.add_option("--updates", updates, "--fold: updates folded per method and rank (the median is reported)")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (fold) return Fold(layers, dim, ranks, app.count("--methods") ? methods : std::vector<std::string>{}, updates,
                        json_path);
  const AdapterSpec spec = Spec(layers, dim, rank);
  fmt::print("{} modules of {}x{} at rank {}, {} updates per step\n", spec.tensors.size() / 2, dim, dim, rank, clients);
  nlohmann::json out = {{"layers", layers}, {"dim", dim}, {"rank", rank}, {"clients", clients}};
  std::map<std::string, double> best;
  for (const std::string& name : methods) {
    auto o = Options(name);
    if (!o.ok() || o->method.method().full_model()) {
      fmt::print(stderr, "--methods takes the LoRA methods, not '{}'\n", name);
      return 2;
    }
    o->mode = wire::Mode::FedBuff;
    o->buffer_size = static_cast<uint32_t>(clients);
    fmt::print("measuring {} ...\n", name);
    std::fflush(stdout);
    const auto seconds = Measure(spec, *o, versions, 7);
    best[name] = *std::min_element(seconds.begin(), seconds.end());
    out[name] = seconds;
    fmt::print("  {:<8} seconds per server step: {:.3f}\n", name, fmt::join(seconds, ", "));
  }
  if (!best.count("flora") || !best.count("as-lora")) {
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
