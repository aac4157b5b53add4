// Child processes for integration tests: start a command with its output in a file, signal
// it, wait for it with a deadline. Everything is bounded in time; nothing here sleeps to
// synchronise except polling with a deadline.
#pragma once

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "ops/process/child.h"

namespace fedlora::testing {

// A `fedlora` (or any) process of a test, on ops/process/child.h: output appended to a file,
// SIGKILLed and reaped if still running when the test ends.
class Process {
 public:
  Process(std::vector<std::string> args, std::string output_path) : output_path_(output_path) {
    process::ChildOptions o;
    o.args = std::move(args);
    o.output_path = std::move(output_path);
    auto child = process::Child::Start(std::move(o));
    if (child.ok()) {
      child_ = std::move(*child);
    } else {
      ADD_FAILURE() << "cannot start a process: " << child.status().ToString();
    }
  }
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  bool running() const { return child_ && child_->running(); }
  pid_t pid() const { return child_ ? child_->pid() : -1; }
  void Signal(int sig) {
    if (child_) child_->Signal(sig);
  }
  // The exit status (as from waitpid), or nullopt if still running at the deadline.
  std::optional<int> Wait(std::chrono::milliseconds timeout) {
    return child_ ? child_->Wait(timeout) : std::optional<int>(127 << 8);
  }
  std::string Output() const {
    std::ifstream in(output_path_);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

 private:
  std::string output_path_;
  std::unique_ptr<process::Child> child_;
};

// Polls `ready` until it returns true or the deadline passes.
inline bool WaitUntil(const std::function<bool()>& ready, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (ready()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return ready();
}

// A "Vm..." field of /proc/<pid>/status in KiB (VmRSS: now, VmHWM: the peak), or 0.
inline uint64_t ProcStatusKib(pid_t pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(field + ":", 0) == 0) return std::stoull(line.substr(field.size() + 1));
  }
  return 0;
}

// Runs a command to completion and returns its stdout (stderr goes to the test's stderr).
// Single-quotes a path for a shell command line (paths here never contain quotes).
inline std::string Quote(const std::string& s) { return "'" + s + "'"; }

inline std::string RunCapture(const std::string& command, int* exit_code = nullptr) {
  std::string out;
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) return out;
  char buf[4096];
  size_t n = 0;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) out.append(buf, n);
  const int status = pclose(pipe);
  if (exit_code) *exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

// Runs a command that prints JSON on stdout (its stderr is dropped), expects `expect_rc`, and
// parses the output (discarded JSON on a parse failure, which is also a test failure).
inline nlohmann::json Json(const std::string& command, int expect_rc = 0) {
  int rc = -1;
  const std::string out = RunCapture(command + " 2>/dev/null", &rc);
  EXPECT_EQ(rc, expect_rc) << command << "\n" << out;
  nlohmann::json j = nlohmann::json::parse(out, nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << command << "\n" << out;
  return j;
}

struct BrokerAddresses {
  std::string frontend, backend, announce;
};

// The endpoints a `fedlora broker` process printed once it bound them, or nullopt after
// `timeout` (the broker's output then goes into the test's failure message).
inline std::optional<BrokerAddresses> WaitForBroker(const Process& broker,
                                                    std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
  const std::regex endpoints(R"(frontend=(\S+) backend=(\S+) announce=(\S+))");
  std::optional<BrokerAddresses> found;
  WaitUntil([&] {
    const std::string text = broker.Output();
    std::smatch m;
    if (std::regex_search(text, m, endpoints)) found = BrokerAddresses{m[1], m[2], m[3]};
    return found.has_value();
  }, timeout);
  EXPECT_TRUE(found) << "the broker never said where it listens:\n" << broker.Output();
  return found;
}

}  // namespace fedlora::testing
