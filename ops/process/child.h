// Child processes, the one way fedlora starts them: `fedlora compare` runs its federations, the
// ingest benchmark its peer servers, the integration and fault tests the roles. A child's
// stdout and stderr go to a file; it is signalled, waited for with a deadline, stopped (SIGTERM,
// then SIGKILL after a grace period), and killed and reaped if its Child is destroyed while it
// runs, so nothing is left behind.
// Thread safety: one thread per Child. Start may be called from several threads at once (only
// async-signal-safe calls run between fork and exec).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "schema/status.h"

namespace fedlora::process {

struct ChildOptions {
  std::vector<std::string> args;  // args[0] is the executable's path (no $PATH search)
  std::string output_path;        // stdout and stderr ("": inherited)
  bool truncate_output = false;   // else appended
  bool die_with_parent = false;   // SIGTERM when this process dies (a server must not linger)
};

class Child {
 public:
  // Errors: kInvalidArgument (no args), kUnavailable (the output file cannot be opened, fork
  // fails). An executable that cannot be run exits 127 with "exec failed" in its output.
  static Result<std::unique_ptr<Child>> Start(ChildOptions options);
  ~Child();
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  pid_t pid() const { return pid_; }
  // Whether it still runs (reaps it when it has exited).
  bool running() const;
  void Signal(int sig);
  // The wait status (as waitpid gives it) once it has exited, or nullopt at the deadline.
  std::optional<int> Wait(std::chrono::milliseconds timeout);
  // SIGTERM; SIGKILL if it is still there after `grace`. Returns the wait status.
  int Stop(std::chrono::milliseconds grace);
  // Its output file's contents ("" when inherited).
  std::string Output() const;
  const std::string& output_path() const { return output_path_; }

 private:
  Child(pid_t pid, std::string output_path) : pid_(pid), output_path_(std::move(output_path)) {}
  pid_t pid_;
  std::string output_path_;
  mutable std::optional<int> status_;  // set once reaped
};

// A wait status as a shell reports it: the exit code, or 128 + the signal that ended it.
int ExitCode(int wait_status);

}  // namespace fedlora::process
