// Language-model load cost: what it takes fedlora to open a Hugging Face checkpoint and run it,
// against reading the same bytes from disk. One process per measurement (ops/bench/lm-load
// runs them, cold and warm, and takes the medians); each prints one JSON line.
//   --mode read: a plain read() loop over every weight file into a 4 MiB buffer (the disk's
//                and page cache's cost of the bytes);
//   --mode open: worker::Model::Open of the checkpoint (LoRA on the target modules) and one
//                forward of a short sequence: the time of both, a second forward (the compute
//                alone, pages already in), the resident set after each (VmRSS split into
//                anonymous and file pages), the peak (VmHWM and getrusage's ru_maxrss) against
//                the weight files' size, how much of the files the load paged in (mincore), and
//                the CPU time and page faults of the load and of the second forward;
//   --mode spec: the adapter's size, which is what the aggregator holds per copy of an LM
//                adapter, from config.json alone (no weight is read), as numel * 4 bytes.
// With --cold, every weight file is first dropped from the page cache (fdatasync, then
// posix_fadvise(POSIX_FADV_DONTNEED)), and the fraction still cached is reported (mincore):
// /proc/sys/vm/drop_caches is not used, as it empties the cache of every process.
// Usage: fedlora_bench_lm_load --model DIR --mode read|open|spec [--cold] [--threads 1]
//        [--rank 8] [--targets q_proj,v_proj] [--forward-tokens 16] [--json FILE]
#include <CLI/CLI.hpp>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>

#include "ops/bench/lm_bench.h"
#include "worker/client.h"
#include "worker/lm/checkpoint.h"
#include "worker/model.h"

namespace {

using Clock = std::chrono::steady_clock;
using namespace fedlora;
namespace fs = std::filesystem;

struct Flags {
  std::string model_dir;
  std::string mode = "open";
  bool cold = false;
  int threads = 1;
  uint32_t rank = worker::ModelOptions{}.lora_rank;
  float alpha = worker::ModelOptions{}.lora_alpha;
  std::vector<std::string> targets = worker::lm::kDefaultLoraTargets;
  // 16: LibTorch's oneDNN 1x1 convolution (Dense()) takes a per-row reference path below 16
  // rows, ~8x slower at 8 tokens than at 16 (measured, 2048 x 2048 weight, 1 thread).
  uint32_t forward_tokens = 16;
  std::string json_out;
};

[[noreturn]] void Fail(const std::string& what) {
  fmt::print(stderr, "fedlora_bench_lm_load: {}\n", what);
  std::exit(1);
}

double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
double Mib(int64_t bytes) { return static_cast<double>(bytes) / (1 << 20); }

// The checkpoint's weight files: the shards its index names, or model.safetensors.
std::vector<std::string> WeightFiles(const std::string& dir) {
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  if (!fs::exists(index)) return {(fs::path(dir) / "model.safetensors").string()};
  std::ifstream in(index);
  std::stringstream text;
  text << in.rdbuf();
  const auto j = nlohmann::json::parse(text.str(), nullptr, false);
  if (!j.is_object() || !j.contains("weight_map")) Fail(fmt::format("'{}' has no weight_map", index.string()));
  std::set<std::string> files;
  for (const auto& [name, file] : j["weight_map"].items()) files.insert(file.get<std::string>());
  std::vector<std::string> out;
  for (const auto& f : files) out.push_back((fs::path(dir) / f).string());
  return out;
}

int OpenOrFail(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) Fail(fmt::format("cannot open '{}': {}", path, std::strerror(errno)));
  return fd;
}

uint64_t FileBytes(const std::vector<std::string>& files) {
  uint64_t n = 0;
  for (const auto& f : files) n += fs::file_size(f);
  return n;
}

// Bytes of the files in the page cache (mincore over a mapping that touches nothing).
uint64_t CachedBytes(const std::vector<std::string>& files) {
  const auto page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  uint64_t cached = 0;
  for (const auto& path : files) {
    const int fd = OpenOrFail(path);
    const size_t size = fs::file_size(path);
    if (size == 0) {
      ::close(fd);
      continue;
    }
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) Fail(fmt::format("cannot map '{}': {}", path, std::strerror(errno)));
    std::vector<unsigned char> resident((size + page - 1) / page);
    if (::mincore(p, size, resident.data()) != 0) Fail(fmt::format("mincore '{}': {}", path, std::strerror(errno)));
    ::munmap(p, size);
    for (unsigned char r : resident) cached += (r & 1) ? page : 0;
  }
  return cached;
}

// Writes back and drops every file's pages from the page cache.
void DropFromCache(const std::vector<std::string>& files) {
  for (const auto& path : files) {
    const int fd = OpenOrFail(path);
    if (::fdatasync(fd) != 0) Fail(fmt::format("fdatasync '{}': {}", path, std::strerror(errno)));
    if (const int err = ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED); err != 0) {
      Fail(fmt::format("posix_fadvise '{}': {}", path, std::strerror(err)));
    }
    ::close(fd);
  }
}

// CPU seconds (user, system) and page faults (major: read from disk) of the process so far.
struct Usage {
  double user = 0, system = 0;
  int64_t major_faults = 0, minor_faults = 0;
};
Usage UsageNow() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  auto seconds = [](const timeval& t) { return static_cast<double>(t.tv_sec) + 1e-6 * static_cast<double>(t.tv_usec); };
  return {seconds(u.ru_utime), seconds(u.ru_stime), u.ru_majflt, u.ru_minflt};
}
nlohmann::json UsageSince(const Usage& a) {
  const Usage b = UsageNow();
  return {{"user_s", b.user - a.user},
          {"system_s", b.system - a.system},
          {"major_faults", b.major_faults - a.major_faults},
          {"minor_faults", b.minor_faults - a.minor_faults}};
}

nlohmann::json Memory() {
  return {{"rss_mib", Mib(bench::ProcStatusBytes("VmRSS"))},
          {"rss_anon_mib", Mib(bench::ProcStatusBytes("RssAnon"))},
          {"rss_file_mib", Mib(bench::ProcStatusBytes("RssFile"))}};
}

// Adapter values of `config` with LoRA rank `rank` on `targets`, from the projection weights'
// shapes alone: r * (in + out) per targeted projection of every layer.
int64_t AdapterNumel(const worker::lm::LlamaConfig& config, uint32_t rank, const std::vector<std::string>& targets) {
  int64_t n = 0;
  for (const auto& [name, shape] : worker::lm::ExpectedWeights(config)) {
    for (const auto& t : targets) {
      if (shape.size() == 2 && name.ends_with("." + t + ".weight")) n += static_cast<int64_t>(rank) * (shape[0] + shape[1]);
    }
  }
  return n;
}

}  // namespace

int main(int argc, char** argv) {
  fedlora::worker::TuneAllocatorForTraining();  // as the worker command does
  CLI::App app{"Load time and memory of a Llama-family checkpoint in fedlora, against reading its bytes"};
  Flags f;
  app.add_option("--model", f.model_dir, "Hugging Face checkpoint directory")->required();
  app.add_option("--mode", f.mode, "read: read() the weight files; open: Model::Open + a forward; spec: adapter size")
      ->check(CLI::IsMember({"read", "open", "spec"}))
      ->capture_default_str();
  app.add_flag("--cold", f.cold, "Drop the weight files from the page cache first");
  app.add_option("--threads", f.threads, "LibTorch intra-op threads")->check(CLI::Range(1, 256))->capture_default_str();
  app.add_option("--rank", f.rank, "LoRA rank")->check(CLI::Range(1, 1024))->capture_default_str();
  app.add_option("--alpha", f.alpha, "LoRA alpha")->capture_default_str();
  app.add_option("--targets", f.targets, "LoRA target modules (PEFT's names)")->delimiter(',')->capture_default_str();
  app.add_option("--forward-tokens", f.forward_tokens, "Tokens of the sequence run after opening")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--json", f.json_out, "Also write the result as JSON here");
  CLI11_PARSE(app, argc, argv);
  at::set_num_threads(f.threads);
  at::set_num_interop_threads(1);

  auto config = worker::lm::ReadConfig(f.model_dir);
  if (!config.ok()) Fail(config.status().ToString());
  const int64_t adapter_numel = AdapterNumel(*config, f.rank, f.targets);
  nlohmann::json out = {{"mode", f.mode}, {"arch", config->architecture}, {"hidden", config->hidden_size},
                        {"layers", config->num_layers}, {"vocab", config->vocab_size}, {"rank", f.rank},
                        {"targets", f.targets}, {"threads", f.threads}};
  out["adapter_params"] = adapter_numel;
  out["adapter_bytes"] = adapter_numel * 4;  // fp32, as AdapterState holds it
  if (f.mode == "spec") {
    out["base_params"] = bench::BaseParameters(*config);
    fmt::print("{}\n", out.dump());
    if (!f.json_out.empty()) std::ofstream(f.json_out) << out.dump(2) << "\n";
    return 0;
  }

  const std::vector<std::string> files = WeightFiles(f.model_dir);
  const uint64_t file_bytes = FileBytes(files);
  out["cold"] = f.cold;
  out["file_bytes"] = file_bytes;
  if (f.cold) {
    DropFromCache(files);
    out["drop"] = "fdatasync + posix_fadvise(DONTNEED) per file";
  }
  out["cached_before"] = static_cast<double>(CachedBytes(files)) / static_cast<double>(file_bytes);
  out["memory_start"] = Memory();
  const int64_t rss_start = bench::ProcStatusBytes("VmRSS");

  if (f.mode == "read") {
    std::vector<char> buffer(4 << 20);
    uint64_t total = 0;
    const auto started = Clock::now();
    for (const auto& path : files) {
      const int fd = OpenOrFail(path);
      for (;;) {
        const ssize_t n = ::read(fd, buffer.data(), buffer.size());
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) Fail(fmt::format("read '{}': {}", path, std::strerror(errno)));
        if (n == 0) break;
        total += static_cast<uint64_t>(n);
      }
      ::close(fd);
    }
    const double seconds = Since(started);
    if (total != file_bytes) Fail(fmt::format("read {} bytes of {}", total, file_bytes));
    out["seconds"] = seconds;
    out["gb_per_s"] = static_cast<double>(total) / seconds / 1e9;
  } else {
    bench::ResetPeakRss();
    worker::ModelOptions mo;
    mo.arch = config->architecture;
    mo.lora_rank = f.rank;
    mo.lora_alpha = f.alpha;
    mo.target_modules = f.targets;
    const Usage usage_before_load = UsageNow();
    auto started = Clock::now();
    auto model = worker::Model::Open(mo, f.model_dir);
    if (!model.ok()) Fail(model.status().ToString());
    const double open_seconds = Since(started);
    out["open_usage"] = UsageSince(usage_before_load);
    out["memory_after_open"] = Memory();
    const Usage usage_before_forward = UsageNow();

    std::mt19937_64 rng(1);
    torch::Tensor ids = torch::empty({1, f.forward_tokens}, torch::kLong);
    for (int64_t i = 0; i < ids.numel(); ++i) {
      ids.data_ptr<int64_t>()[i] = static_cast<int64_t>(rng() % static_cast<uint64_t>(config->vocab_size));
    }
    torch::NoGradGuard no_grad;
    started = Clock::now();
    const double first = (*model)->Forward(ids).sum().item<double>();
    const double forward_seconds = Since(started);
    out["forward_usage"] = UsageSince(usage_before_forward);
    out["load_usage"] = UsageSince(usage_before_load);  // open + first forward
    out["memory_after_forward"] = Memory();
    const int64_t hwm = bench::ProcStatusBytes("VmHWM");
    const int64_t maxrss = bench::MaxRssBytes();
    const Usage usage_before_second = UsageNow();
    started = Clock::now();
    const double second = (*model)->Forward(ids).sum().item<double>();
    const double forward2_seconds = Since(started);
    out["forward2_usage"] = UsageSince(usage_before_second);
    out["logits_sum"] = {first, second};  // the two forwards' results, kept so that nothing is skipped

    out["open_s"] = open_seconds;
    out["forward_s"] = forward_seconds;
    out["seconds"] = open_seconds + forward_seconds;  // the load: open, then the first forward
    out["forward2_s"] = forward2_seconds;
    out["forward_tokens"] = f.forward_tokens;
    // Peak over the open and first forward (VmHWM, reset before the open) and over the whole
    // process (ru_maxrss, which includes LibTorch's start-up).
    out["peak_rss_mib"] = Mib(hwm);
    out["maxrss_mib"] = Mib(maxrss);
    out["peak_over_file"] = static_cast<double>(hwm) / static_cast<double>(file_bytes);
    out["peak_growth_over_file"] = static_cast<double>(hwm - rss_start) / static_cast<double>(file_bytes);
    out["cached_after"] = static_cast<double>(CachedBytes(files)) / static_cast<double>(file_bytes);
    // The computed adapter size must be the model's own.
    out["model_adapter_params"] = (*model)->Spec().numel();
    if (static_cast<int64_t>((*model)->Spec().numel()) != adapter_numel) {
      Fail(fmt::format("adapter of {} values computed from the config, the model has {}", adapter_numel,
                       (*model)->Spec().numel()));
    }
  }
  fmt::print("{}\n", out.dump());
  if (!f.json_out.empty()) std::ofstream(f.json_out) << out.dump(2) << "\n";
  return 0;
}
