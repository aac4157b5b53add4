// A live status line for long commands: each Update() rewrites one terminal line in place (at
// most ten times a second); when stdout is not a terminal it prints nothing, so logs and pipes
// get only the command's real output.
// Thread safety: one thread.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <string_view>

#include <fmt/format.h>

namespace fedlora::ops {

class StatusLine {
 public:
  StatusLine() : enabled_(isatty(STDOUT_FILENO) == 1) {}
  ~StatusLine() { Clear(); }
  StatusLine(const StatusLine&) = delete;
  StatusLine& operator=(const StatusLine&) = delete;

  bool enabled() const { return enabled_; }

  void Update(std::string_view text, bool force = false) {
    if (!enabled_) return;
    const auto now = std::chrono::steady_clock::now();
    if (!force && shown_ && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    shown_ = true;
    fmt::print("\r\033[K{}", text);
    std::fflush(stdout);
  }

  // Leaves the last status on screen and moves to a new line.
  void Finish() {
    if (!enabled_ || !shown_) return;
    fmt::print("\n");
    std::fflush(stdout);
    shown_ = false;
  }

  // Removes the line (before printing ordinary output).
  void Clear() {
    if (!enabled_ || !shown_) return;
    fmt::print("\r\033[K");
    std::fflush(stdout);
    shown_ = false;
  }

 private:
  bool enabled_;
  bool shown_ = false;
  std::chrono::steady_clock::time_point last_{};
};

}  // namespace fedlora::ops
