#include "ops/process/child.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <thread>

namespace fedlora::process {

Result<std::unique_ptr<Child>> Child::Start(ChildOptions options) {
  if (options.args.empty()) return InvalidArgument("a child needs an executable");
  // Everything the child touches is prepared before fork: between fork and exec only
  // async-signal-safe calls are allowed, and the parent may have other threads.
  std::vector<char*> argv;
  for (std::string& a : options.args) argv.push_back(a.data());
  argv.push_back(nullptr);
  int out_fd = -1;
  if (!options.output_path.empty()) {
    out_fd = ::open(options.output_path.c_str(),
                    O_WRONLY | O_CREAT | O_CLOEXEC | (options.truncate_output ? O_TRUNC : O_APPEND), 0644);
    if (out_fd < 0) {
      return Unavailable(fmt::format("cannot open '{}' for {}'s output: {}", options.output_path, options.args[0],
                                     std::strerror(errno)));
    }
  }
  const int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  const pid_t parent = ::getpid();
  const bool die_with_parent = options.die_with_parent;
  const pid_t pid = ::fork();
  if (pid == 0) {
    if (die_with_parent) {
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (::getppid() != parent) ::_exit(1);  // the parent died before prctl
    }
    if (null_fd >= 0) ::dup2(null_fd, STDIN_FILENO);
    if (out_fd >= 0) {
      ::dup2(out_fd, STDOUT_FILENO);
      ::dup2(out_fd, STDERR_FILENO);
    }
    ::close_range(3, ~0u, 0);  // the parent's files and sockets are not the child's
    ::execv(argv[0], argv.data());
    const char msg[] = "exec failed\n";
    (void)!::write(STDERR_FILENO, msg, sizeof(msg) - 1);
    ::_exit(127);
  }
  const int fork_errno = errno;
  if (out_fd >= 0) ::close(out_fd);
  if (null_fd >= 0) ::close(null_fd);
  if (pid < 0) return Unavailable(fmt::format("fork for {}: {}", options.args[0], std::strerror(fork_errno)));
  return std::unique_ptr<Child>(new Child(pid, std::move(options.output_path)));
}

Child::~Child() {
  if (running()) {
    ::kill(pid_, SIGKILL);
    Wait(std::chrono::seconds(10));
  }
}

bool Child::running() const {
  if (status_) return false;
  int status = 0;
  if (::waitpid(pid_, &status, WNOHANG) == pid_) status_ = status;
  return !status_;
}

void Child::Signal(int sig) {
  if (running()) ::kill(pid_, sig);
}

std::optional<int> Child::Wait(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (running() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  running();
  return status_;
}

int Child::Stop(std::chrono::milliseconds grace) {
  Signal(SIGTERM);
  if (auto s = Wait(grace)) return *s;
  Signal(SIGKILL);
  while (!Wait(std::chrono::seconds(10))) {
  }
  return *status_;
}

std::string Child::Output() const {
  if (output_path_.empty()) return {};
  std::ifstream in(output_path_);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

int ExitCode(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status); }

}  // namespace fedlora::process
