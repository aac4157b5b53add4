// Runs the project's Python reference tools (tests/lm/reference/*.py) from C++ tests with
// Debian's interpreter, /usr/bin/python3 (python3-torch, python3-sentencepiece; no PyPI).
// The arguments go to the interpreter as an argv array, never through a shell, so text with
// spaces, quotes or emoji needs no quoting. (argparse still reads a value that starts with '-'
// as a flag: pass such values as "--text=VALUE".)
//
// ReferenceTool() needs the compile definition FEDLORA_SOURCE_DIR, the absolute path of the
// repository root as a string literal (CMake: target_compile_definitions(<test> PRIVATE
// FEDLORA_SOURCE_DIR="${PROJECT_SOURCE_DIR}")).
//
// A tool that fails is an error (Result not ok), and tests must ASSERT on it, not skip: the
// reference tools are part of the test suite.
// Thread safety: RunPython may be called from several threads at once (posix_spawn, pipes
// opened close-on-exec, one waitpid per child).
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "schema/status.h"

extern char** environ;

#ifndef FEDLORA_SOURCE_DIR
#error "tests/testing/python.h needs -DFEDLORA_SOURCE_DIR=\"/path/to/repository\""
#endif

namespace fedlora::testing {

inline constexpr const char* kPython = "/usr/bin/python3";

// The absolute path of tests/lm/reference/NAME, e.g. ReferenceTool("hf_checkpoint.py").
inline std::string ReferenceTool(std::string_view name) {
  std::string path = FEDLORA_SOURCE_DIR;
  path += "/tests/lm/reference/";
  path += name;
  return path;
}

// Runs `/usr/bin/python3 -B ARGS...` (-B: no __pycache__ in the source tree) and returns its
// stdout. Errors: kInternal when the interpreter cannot be started, is killed by a signal or
// exits non-zero; the message has the command line, the exit status and the tool's stderr.
inline Result<std::string> RunPython(const std::vector<std::string>& args) {
  std::string command = std::string(kPython) + " -B";
  for (const auto& a : args) {  // for messages only; long arguments (scripts) are cut short
    command += " '" + (a.size() <= 120 ? a : a.substr(0, 60) + "...") + "'";
  }

  int out_pipe[2], err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0) return Internal(command + ": pipe: " + std::strerror(errno));
  if (pipe2(err_pipe, O_CLOEXEC) != 0) {
    close(out_pipe[0]);
    close(out_pipe[1]);
    return Internal(command + ": pipe: " + std::strerror(errno));
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  // dup2 clears close-on-exec on the target descriptor, so the child keeps only 1 and 2.
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, err_pipe[1], STDERR_FILENO);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);

  std::vector<std::string> argv_storage{kPython, "-B"};
  argv_storage.insert(argv_storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_storage) argv.push_back(a.data());
  argv.push_back(nullptr);

  pid_t pid = 0;
  const int spawn_error = posix_spawn(&pid, kPython, &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(out_pipe[1]);
  close(err_pipe[1]);
  if (spawn_error != 0) {
    close(out_pipe[0]);
    close(err_pipe[0]);
    return Internal(command + ": cannot start: " + std::strerror(spawn_error));
  }

  // Read both pipes together so that neither can fill up and block the child.
  std::string out, err;
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  std::string* sinks[2] = {&out, &err};
  int open_fds = 2;
  while (open_fds > 0) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      char buf[4096];
      const ssize_t n = read(fds[i].fd, buf, sizeof buf);
      if (n > 0) {
        sinks[i]->append(buf, static_cast<size_t>(n));
      } else if (n == 0 || errno != EINTR) {
        close(fds[i].fd);
        fds[i].fd = -1;  // poll ignores negative descriptors
        --open_fds;
      }
    }
  }
  for (const pollfd& f : fds) {
    if (f.fd >= 0) close(f.fd);
  }

  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return Internal(command + ": waitpid: " + std::strerror(errno));
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return out;
  const std::string how = WIFEXITED(status) ? "exit status " + std::to_string(WEXITSTATUS(status))
                                            : "signal " + std::to_string(WTERMSIG(status));
  return Internal(command + " failed (" + how + "):\n" + err);
}

// Runs several command lines of reference tool NAME in one interpreter, calling the tool's
// own `main(argv)` once per entry of INVOCATIONS (argv without the program name), and returns
// each call's stdout in order. The tools import torch, which costs about 1.5 s per interpreter;
// this pays it once. The first failing call ends the run: the Result is then an error as from
// RunPython (the tool's argparse / SystemExit message is in it).
inline Result<std::vector<std::string>> RunReferenceToolBatch(
    std::string_view name, const std::vector<std::vector<std::string>>& invocations) {
  // Each call's stdout goes back as "<byte count>\n<bytes>".
  static constexpr const char* kDriver = R"(import contextlib, importlib, io, os, sys
sys.dont_write_bytecode = True
tool = sys.argv[1]
sys.path.insert(0, os.path.dirname(tool))
module = importlib.import_module(os.path.splitext(os.path.basename(tool))[0])
rest = sys.argv[2:]
while rest:
    n = int(rest[0])
    args, rest = rest[1:1 + n], rest[1 + n:]
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        module.main(args)
    data = captured.getvalue().encode()
    sys.stdout.buffer.write(b"%d\n" % len(data) + data)
sys.stdout.buffer.flush()
)";
  std::vector<std::string> args{"-c", kDriver, ReferenceTool(name)};
  for (const auto& invocation : invocations) {
    args.push_back(std::to_string(invocation.size()));
    args.insert(args.end(), invocation.begin(), invocation.end());
  }
  ASSIGN_OR_RETURN(std::string out, RunPython(args));
  std::vector<std::string> outputs;
  size_t pos = 0;
  while (pos < out.size()) {
    const size_t newline = out.find('\n', pos);
    if (newline == std::string::npos) break;
    const size_t n = std::stoul(out.substr(pos, newline - pos));
    if (newline + 1 + n > out.size()) break;
    outputs.push_back(out.substr(newline + 1, n));
    pos = newline + 1 + n;
  }
  if (pos != out.size() || outputs.size() != invocations.size()) {
    return Internal("reference tool " + std::string(name) + ": garbled batch output:\n" + out);
  }
  return outputs;
}

}  // namespace fedlora::testing
