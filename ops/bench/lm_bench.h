// Helpers shared by the language-model benchmarks (lm_train.cc, lm_load.cc): the process's
// memory figures from /proc/self/status, random token data in a worker::Dataset, and parameter
// counts of a checkpoint. Header-only; include from ops/bench only.
#pragma once

#include <sys/resource.h>

#include <cstdint>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "worker/data.h"
#include "worker/lm/checkpoint.h"

namespace fedlora::bench {

// A field of /proc/self/status in bytes ("VmHWM", "VmRSS", "RssAnon", "RssFile"), or -1.
inline int64_t ProcStatusBytes(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, field.size() + 1, field + ":") != 0) continue;
    return std::stoll(line.substr(field.size() + 1)) * 1024;  // "  1234 kB"
  }
  return -1;
}

// getrusage's ru_maxrss (kilobytes on Linux) in bytes: the peak resident set of the process.
inline int64_t MaxRssBytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<int64_t>(u.ru_maxrss) * 1024;
}

// Resets VmHWM to the current RSS (Linux >= 4.0), so that a later VmHWM is the peak of what
// follows. Returns false where the kernel refuses.
inline bool ResetPeakRss() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
  out.flush();
  return out.good();
}

// `count` sequences of exactly `length` token ids drawn uniformly from [0, vocab) with a seeded
// mt19937_64: a text Dataset (one label) whose batches need no padding.
inline worker::Dataset RandomTokens(size_t count, size_t length, int64_t vocab, uint64_t seed) {
  worker::Dataset d;
  d.num_classes = 1;
  d.labels.assign(count, 0);
  d.tokens.resize(count * length);
  d.offsets.resize(count + 1);
  std::mt19937_64 rng(seed);
  for (auto& t : d.tokens) t = static_cast<int32_t>(rng() % static_cast<uint64_t>(vocab));
  for (size_t i = 0; i <= count; ++i) d.offsets[i] = i * length;
  return d;
}

// Parameters of the base model a checkpoint of `config` holds (a tied lm_head counted once).
inline int64_t BaseParameters(const worker::lm::LlamaConfig& config) {
  int64_t n = 0;
  for (const auto& [name, shape] : worker::lm::ExpectedWeights(config)) {
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    n += numel;
  }
  return n;
}

}  // namespace fedlora::bench
