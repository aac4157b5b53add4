#include "ops/observe/prometheus.h"

#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <fstream>

namespace fedlora::prometheus {
namespace {

void AppendEscaped(std::string& out, std::string_view value) {
  for (const char ch : value) {
    if (ch == '\\') {
      out += "\\\\";
    } else if (ch == '"') {
      out += "\\\"";
    } else if (ch == '\n') {
      out += "\\n";
    } else {
      out += ch;
    }
  }
}

void AppendValue(std::string& out, double value) {
  if (std::isnan(value)) {
    out += "NaN";
  } else if (std::isinf(value)) {
    out += value > 0 ? "+Inf" : "-Inf";
  } else if (value == std::floor(value) && std::fabs(value) < 1e15) {
    out += fmt::format("{}", static_cast<int64_t>(value));
  } else {
    out += fmt::format("{}", value);
  }
}

}  // namespace

void Writer::Family(std::string_view name, std::string_view type, std::string_view help) {
  out_ += fmt::format("# HELP {} ", name);
  for (const char ch : help) out_ += ch == '\n' ? ' ' : ch;
  out_ += fmt::format("\n# TYPE {} {}\n", name, type);
}

void Writer::Sample(std::string_view name, double value, Labels labels) {
  out_ += name;
  if (labels.size() > 0) {
    out_ += '{';
    bool first = true;
    for (const auto& [k, v] : labels) {
      if (!first) out_ += ',';
      first = false;
      out_ += k;
      out_ += "=\"";
      AppendEscaped(out_, v);
      out_ += '"';
    }
    out_ += '}';
  }
  out_ += ' ';
  AppendValue(out_, value);
  out_ += '\n';
}

void Writer::Counter(std::string_view name, std::string_view help, double value) {
  Family(name, "counter", help);
  Sample(name, value);
}

void Writer::Gauge(std::string_view name, std::string_view help, double value) {
  Family(name, "gauge", help);
  Sample(name, value);
}

namespace {
const double kStartUnixSeconds =
    std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}  // namespace

void WriteProcessMetrics(Writer& w) {
  long pages = 0, resident = 0;
  std::ifstream statm("/proc/self/statm");
  if (statm >> pages >> resident) {
    w.Gauge("fedlora_process_resident_memory_bytes", "Resident set size of this process",
            static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE)));
  }
  w.Gauge("fedlora_process_start_time_seconds", "Unix time this process started", kStartUnixSeconds);
}

}  // namespace fedlora::prometheus
