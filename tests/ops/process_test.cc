// Child processes (ops/process/child.h): exit codes, output, stopping one that ignores SIGTERM,
// a program that cannot run, and nothing left behind when a Child is destroyed.
#include "ops/process/child.h"

#include <signal.h>
#include <sys/wait.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <filesystem>

namespace fedlora::process {
namespace {

std::string OutputPath(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("fedlora-process-test-" + std::to_string(::getpid()) + "-" + name))
      .string();
}

std::unique_ptr<Child> Start(std::vector<std::string> args, const std::string& out, bool truncate = true) {
  ChildOptions o;
  o.args = std::move(args);
  o.output_path = out;
  o.truncate_output = truncate;
  auto child = Child::Start(std::move(o));
  EXPECT_TRUE(child.ok()) << child.status().ToString();
  return child.ok() ? std::move(*child) : nullptr;
}

TEST(ChildTest, ReportsTheExitCodeAndKeepsTheOutput) {
  const std::string out = OutputPath("exit");
  auto child = Start({"/bin/sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"}, out);
  ASSERT_TRUE(child);
  auto status = child->Wait(std::chrono::seconds(10));
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(ExitCode(*status), 3);
  EXPECT_FALSE(child->running());
  EXPECT_EQ(child->Output(), "to-stdout\nto-stderr\n");
  // Appended, not truncated, when asked.
  auto again = Start({"/bin/sh", "-c", "echo more"}, out, /*truncate=*/false);
  ASSERT_TRUE(again && again->Wait(std::chrono::seconds(10)));
  EXPECT_EQ(again->Output(), "to-stdout\nto-stderr\nmore\n");
  std::filesystem::remove(out);
}

TEST(ChildTest, StopTermsThenKillsOneThatIgnoresTerm) {
  const std::string out = OutputPath("stop");
  auto polite = Start({"/bin/sleep", "30"}, out);
  ASSERT_TRUE(polite);
  EXPECT_TRUE(polite->running());
  EXPECT_EQ(ExitCode(polite->Stop(std::chrono::seconds(10))), 128 + SIGTERM);
  // `trap '' TERM` makes the shell ignore SIGTERM; `exec sleep` keeps that disposition.
  auto stubborn = Start({"/bin/sh", "-c", "trap '' TERM; echo ready; exec sleep 30"}, out);
  ASSERT_TRUE(stubborn);
  for (int i = 0; i < 500 && stubborn->Output().find("ready") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(ExitCode(stubborn->Stop(std::chrono::milliseconds(200))), 128 + SIGKILL);
  std::filesystem::remove(out);
}

TEST(ChildTest, AProgramThatCannotRunExits127AndBadArgumentsAreRefused) {
  const std::string out = OutputPath("missing");
  auto child = Start({"/nonexistent/program"}, out);
  ASSERT_TRUE(child);
  auto status = child->Wait(std::chrono::seconds(10));
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(ExitCode(*status), 127);
  EXPECT_NE(child->Output().find("exec failed"), std::string::npos);
  EXPECT_EQ(Child::Start({}).status().code(), Code::kInvalidArgument);
  ChildOptions unwritable;
  unwritable.args = {"/bin/true"};
  unwritable.output_path = "/nonexistent/dir/out";
  EXPECT_EQ(Child::Start(unwritable).status().code(), Code::kUnavailable);
  std::filesystem::remove(out);
}

TEST(ChildTest, ADestroyedChildLeavesNoProcessBehind) {
  const std::string out = OutputPath("destroy");
  pid_t pid = -1;
  {
    auto child = Start({"/bin/sleep", "30"}, out);
    ASSERT_TRUE(child);
    pid = child->pid();
    EXPECT_EQ(::kill(pid, 0), 0);
  }
  // Killed and reaped: the pid names no process (not even a zombie of ours).
  errno = 0;
  EXPECT_EQ(::kill(pid, 0), -1);
  EXPECT_EQ(errno, ESRCH);
  std::filesystem::remove(out);
}

}  // namespace
}  // namespace fedlora::process
