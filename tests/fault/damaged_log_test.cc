// Issue 21: a broker started on a log whose write-ahead log had lost its tail served it as if
// whole and handed the lost sequence numbers to new updates; `fedlora log` read it with exit 0.
// Here a running broker's log is copied as a power cut would leave it (every record still only
// in the write-ahead log), the copy's write-ahead log is cut, and the commands are run on it.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "tests/testing/fixtures.h"
#include "tests/testing/process.h"
#include "tests/testing/running_broker.h"

namespace fedlora {
namespace {

using testing::Peer;
using testing::Process;
using testing::Quote;
using testing::RunCapture;
using testing::WaitUntil;

constexpr const char* kBinary = FEDLORA_BINARY;

TEST(DamagedLogTest, ABrokerAndTheLogCommandSayHowManyAcknowledgedUpdatesTheLogLost) {
  testing::TempDir dir;
  const std::string store = dir.path("store"), image = dir.path("image");
  {
    Process broker({kBinary, "broker", "--store", store, "--frontend", "tcp://127.0.0.1:*", "--backend",
                    "tcp://127.0.0.1:*", "--announce", "tcp://127.0.0.1:*"},
                   dir.path("broker.out"));
    const auto bound = testing::WaitForBroker(broker);
    ASSERT_TRUE(bound);
    Peer worker(bound->frontend);
    auto secret = security::ReadSecretFile(store + "/aggregator.secret");
    ASSERT_TRUE(secret.ok()) << secret.status().ToString();
    ASSERT_TRUE(testing::RegisterSmallAdapter(bound->backend, bound->frontend, *secret));
    for (int i = 1; i <= 60; ++i) {
      worker.Send(testing::MakeUpdate("u" + std::to_string(i), "w1", 0, testing::FilledState(testing::SmallSpec(), 0.1f)));
      const auto* e = worker.Reply();
      ASSERT_TRUE(e && e->body_type() == wire::Body::Ack) << i;
    }
    std::filesystem::copy(store, image, std::filesystem::copy_options::recursive);
    broker.Signal(SIGKILL);
    broker.Wait(std::chrono::seconds(10));
  }
  std::filesystem::path wal;
  for (const auto& e : std::filesystem::directory_iterator(image + "/log")) {
    if (e.path().extension() == ".log" && (wal.empty() || e.path() > wal)) wal = e.path();
  }
  ASSERT_FALSE(wal.empty());
  std::filesystem::resize_file(wal, std::filesystem::file_size(wal) / 2);

  int rc = -1;
  std::string out = RunCapture(std::string(kBinary) + " log --store " + Quote(image) + " 2>&1", &rc);
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(out.find("acknowledged updates from its end"), std::string::npos) << out;

  out = RunCapture(std::string(kBinary) + " broker --store " + Quote(image) +
                       " --frontend tcp://127.0.0.1:0 --backend tcp://127.0.0.1:0 --announce tcp://127.0.0.1:0 2>&1",
                   &rc);
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(out.find("--accept-lost-log-tail"), std::string::npos) << out;

  Process accepted({kBinary, "broker", "--store", image, "--frontend", "tcp://127.0.0.1:*", "--backend",
                    "tcp://127.0.0.1:*", "--announce", "tcp://127.0.0.1:*", "--accept-lost-log-tail"},
                   dir.path("accepted.out"));
  ASSERT_TRUE(testing::WaitForBroker(accepted));
  EXPECT_NE(accepted.Output().find("going on, as asked"), std::string::npos) << accepted.Output();
  accepted.Signal(SIGTERM);
  ASSERT_TRUE(accepted.Wait(std::chrono::seconds(20)));
  // From then on the log is whole again.
  out = RunCapture(std::string(kBinary) + " log --store " + Quote(image) + " 2>&1", &rc);
  EXPECT_EQ(rc, 0) << out;
}

}  // namespace
}  // namespace fedlora
