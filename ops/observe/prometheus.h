// Prometheus text exposition format (version 0.0.4), written by hand: one HELP and TYPE line per
// family, then its samples. Label values are escaped; names are the caller's constants.
// Thread safety: a plain value.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

namespace fedlora::prometheus {

inline constexpr std::string_view kContentType = "text/plain; version=0.0.4; charset=utf-8";

using Labels = std::initializer_list<std::pair<std::string_view, std::string_view>>;

class Writer {
 public:
  // Starts a family; `type` is "counter", "gauge" or "histogram".
  void Family(std::string_view name, std::string_view type, std::string_view help);
  // One sample of the current family (a histogram's samples carry their _bucket/_sum/_count
  // suffix in `name`).
  void Sample(std::string_view name, double value, Labels labels = {});
  // A whole single-sample family.
  void Counter(std::string_view name, std::string_view help, double value);
  void Gauge(std::string_view name, std::string_view help, double value);

  const std::string& text() const { return out_; }

 private:
  std::string out_;
};

// Process-wide gauges every /metrics carries: resident memory and the start time.
void WriteProcessMetrics(Writer& w);

}  // namespace fedlora::prometheus
