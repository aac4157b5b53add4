// CURVE end to end with the real command line: `fedlora keygen` makes the keys, the broker runs
// with --curve-secret and --allow, the aggregator and `fedlora loadgen` connect with --key and
// --broker-key. A listed worker key publishes and its updates become versions; an unlisted key
// and a plaintext client get nothing in; plaintext beyond loopback is refused at start.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>

#include "tests/testing/fixtures.h"
#include "tests/testing/process.h"
#include "tests/testing/running_broker.h"

namespace fedlora {
namespace {

using nlohmann::json;
using testing::Process;
using testing::Quote;
using testing::RunCapture;
using testing::WaitUntil;

constexpr const char* kBinary = FEDLORA_BINARY;

std::string Shell(const std::string& command, int* rc) { return RunCapture(command + " 2>&1", rc); }

// The public key keygen printed.
std::string Keygen(const std::string& prefix, const std::string& name) {
  int rc = -1;
  const std::string out = Shell(std::string(kBinary) + " keygen --out " + Quote(prefix) + " --name " + name, &rc);
  EXPECT_EQ(rc, 0) << out;
  std::smatch m;
  EXPECT_TRUE(std::regex_search(out, m, std::regex(R"(public key (\S{40}))"))) << out;
  return m.size() > 1 ? m[1].str() : "";
}

// Waits until the aggregator has folded five updates into version 1, then stops it and the broker.
void StopAfterVersionOne(Process& aggregator, Process& broker) {
  ASSERT_TRUE(WaitUntil([&] { return aggregator.Output().find("version=1 updates=5") != std::string::npos; },
                        std::chrono::seconds(60)))
      << aggregator.Output();
  aggregator.Signal(SIGTERM);
  ASSERT_TRUE(aggregator.Wait(std::chrono::seconds(20)));
  broker.Signal(SIGTERM);
  ASSERT_TRUE(broker.Wait(std::chrono::seconds(20)));
}

// Five updates from one plaintext loadgen client, all acknowledged; then as above.
void PublishFiveThenStopAfterVersionOne(const std::string& frontend, Process& aggregator, Process& broker) {
  int rc = -1;
  const std::string load = std::string(kBinary) + " loadgen --json --broker " + frontend +
                           " --clients 1 --updates 5 --duration 60 --timeout-ms 500 2>/dev/null";
  const json j = json::parse(RunCapture(load, &rc), nullptr, false);
  EXPECT_EQ(rc, 0);
  EXPECT_EQ(j.value("acked", 0), 5) << j.dump();
  ASSERT_NO_FATAL_FAILURE(StopAfterVersionOne(aggregator, broker));
}

TEST(SecurityCli, OnlyListedKeysPublishAndPlaintextStaysOut) {
  testing::TempDir dir;
  const std::string store = dir.path("store");
  int rc = -1;
  std::string out = Shell(std::string(kBinary) + " pretrain --arch mlp --epochs 1 --store " + Quote(store), &rc);
  ASSERT_EQ(rc, 0) << out;

  Keygen(dir.path("broker"), "broker");
  const std::string worker_key = Keygen(dir.path("sec-0"), "sec-0");
  const std::string aggregator_key = Keygen(dir.path("agg"), "agg");
  Keygen(dir.path("intruder"), "sec-0");  // claims a listed name, with a key nobody listed
  out = Shell(std::string(kBinary) + " keygen --out " + Quote(dir.path("sec-0")), &rc);
  EXPECT_EQ(rc, 2) << "keygen must never overwrite a key: " << out;
  std::ofstream(dir.path("allow.txt")) << "# role name public-key\nworker sec-0 " << worker_key << "\naggregator agg "
                                       << aggregator_key << "\n";

  Process broker({kBinary, "broker", "--store", store, "--frontend", "tcp://127.0.0.1:*", "--backend",
                  "tcp://127.0.0.1:*", "--announce", "tcp://127.0.0.1:*", "--curve-secret", dir.path("broker.key"),
                  "--allow", dir.path("allow.txt")},
                 dir.path("broker.out"));
  const auto bound = testing::WaitForBroker(broker);
  ASSERT_TRUE(bound);
  const std::string frontend = bound->frontend, backend = bound->backend;
  Process aggregator({kBinary, "aggregator", "--store", store, "--broker", backend, "--arch", "mlp", "--buffer-size",
                      "5", "--eval-every", "0", "--broker-key", dir.path("broker.pub"), "--key", dir.path("agg.key")},
                     dir.path("aggregator.out"));

  auto loadgen = [&](const std::vector<std::string>& extra) {
    std::string cmd = std::string(kBinary) + " loadgen --json --broker " + frontend +
                      " --client-prefix sec --clients 1 --timeout-ms 500";
    for (const auto& e : extra) cmd += " " + e;
    int code = -1;
    const std::string o = RunCapture(cmd + " 2>/dev/null", &code);
    EXPECT_EQ(code, 0) << cmd << "\n" << o;
    json j = json::parse(o, nullptr, false);
    EXPECT_TRUE(j.is_object()) << o;
    return j;
  };
  const std::string keys = " --broker-key " + Quote(dir.path("broker.pub")) + " --key ";
  const json listed = loadgen({"--updates 5 --duration 60" + keys + Quote(dir.path("sec-0.key"))});
  EXPECT_EQ(listed["acked"], 5) << listed.dump();
  const json intruder = loadgen({"--updates 5 --duration 3" + keys + Quote(dir.path("intruder.key"))});
  EXPECT_EQ(intruder["acked"], 0) << intruder.dump();
  const json plaintext = loadgen({"--updates 5 --duration 3"});
  EXPECT_EQ(plaintext["acked"], 0) << plaintext.dump();

  // The aggregator, itself authenticated, folded the five listed updates into version 1.
  ASSERT_NO_FATAL_FAILURE(StopAfterVersionOne(aggregator, broker));
  EXPECT_NE(broker.Output().find("refused connection"), std::string::npos) << "the intruder's key was not refused";
  EXPECT_NE(broker.Output().find("updates logged=5 "), std::string::npos) << broker.Output();

  // Plaintext on an address other machines can reach is refused unless asked for.
  out = Shell(std::string(kBinary) + " broker --store " + Quote(dir.path("open")) + " --frontend tcp://0.0.0.0:0", &rc);
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(out.find("--curve-secret"), std::string::npos) << out;
}

// Without CURVE: an aggregator secret (issue 21). `keygen --secret` writes one; a broker given it
// admits on its aggregator socket only a process that presents it, so an aggregator without it
// never subscribes (nothing it could be sent is sent), and one with it folds as usual.
TEST(SecurityCli, AnAggregatorSecretKeepsOtherProcessesOffTheAggregatorSocket) {
  testing::TempDir dir;
  const std::string store = dir.path("store");
  int rc = -1;
  std::string out = Shell(std::string(kBinary) + " pretrain --arch mlp --epochs 1 --store " + Quote(store), &rc);
  ASSERT_EQ(rc, 0) << out;
  const std::string secret = dir.path("agg.secret");
  out = Shell(std::string(kBinary) + " keygen --secret " + Quote(secret), &rc);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_EQ(std::filesystem::status(secret).permissions() & std::filesystem::perms::group_all,
            std::filesystem::perms::none)
      << "the secret file is readable by others";
  out = Shell(std::string(kBinary) + " keygen --secret " + Quote(secret), &rc);
  EXPECT_EQ(rc, 2) << "keygen overwrote a secret: " << out;

  Process broker({kBinary, "broker", "--store", store, "--frontend", "tcp://127.0.0.1:*", "--backend",
                  "tcp://127.0.0.1:*", "--announce", "tcp://127.0.0.1:*", "--aggregator-secret", secret},
                 dir.path("broker.out"));
  const auto bound = testing::WaitForBroker(broker);
  ASSERT_TRUE(bound);
  // Without the secret: the handshake fails, so the broker never hears from it.
  Process stranger({kBinary, "aggregator", "--store", store, "--broker", bound->backend, "--arch", "mlp",
                    "--buffer-size", "5", "--eval-every", "0"},
                   dir.path("stranger.out"));
  ASSERT_TRUE(WaitUntil([&] { return stranger.Output().find("silent") != std::string::npos; },
                        std::chrono::seconds(60)))
      << "the aggregator without the secret was answered:\n" << stranger.Output();
  stranger.Signal(SIGTERM);
  ASSERT_TRUE(stranger.Wait(std::chrono::seconds(20)));
  Process aggregator({kBinary, "aggregator", "--store", store, "--broker", bound->backend, "--arch", "mlp",
                      "--buffer-size", "5", "--eval-every", "0", "--aggregator-secret", secret},
                     dir.path("aggregator.out"));
  ASSERT_NO_FATAL_FAILURE(PublishFiveThenStopAfterVersionOne(bound->frontend, aggregator, broker));
  EXPECT_NE(broker.Output().find("aggregators must present the secret"), std::string::npos) << broker.Output();
}

// Issue 21: one Credit from any process that reached the aggregator socket took an adapter no
// live aggregator held. Without CURVE and without --aggregator-secret, the broker now asks for
// its store's own secret (made at start, mode 0600): the Credit of a process that lacks it is
// never read, and an aggregator given the same --store finds the secret by itself.
TEST(SecurityCli, WithoutCurveOrASecretTheBrokerAsksForItsStoresOwnSecret) {
  testing::TempDir dir;
  const std::string store = dir.path("store");
  int rc = -1;
  std::string out = Shell(std::string(kBinary) + " pretrain --arch mlp --epochs 1 --store " + Quote(store), &rc);
  ASSERT_EQ(rc, 0) << out;
  Process broker({kBinary, "broker", "--store", store, "--frontend", "tcp://127.0.0.1:*", "--backend",
                  "tcp://127.0.0.1:*", "--announce", "tcp://127.0.0.1:*"},
                 dir.path("broker.out"));
  const auto bound = testing::WaitForBroker(broker);
  ASSERT_TRUE(bound);
  const std::string secret = store + "/aggregator.secret";
  ASSERT_TRUE(std::filesystem::exists(secret)) << broker.Output();
  EXPECT_EQ(std::filesystem::status(secret).permissions() & (std::filesystem::perms::group_all | std::filesystem::perms::others_all),
            std::filesystem::perms::none);
  EXPECT_NE(broker.Output().find("aggregators must present the secret in " + secret), std::string::npos)
      << broker.Output();

  // The theft of the report: a subscribing Credit and a heartbeat, from a peer without the secret.
  testing::Peer thief(bound->backend);
  thief.Send(codec::BuildCredit("default", 1, 50, /*resubscribe=*/true));
  thief.Send(codec::BuildHeartbeat(0));
  // (Before, the heartbeat alone was answered at once.) Its handshake fails, so nothing is read.
  EXPECT_EQ(thief.Reply(std::chrono::milliseconds(3000)), nullptr) << "the broker answered a peer without the secret";

  Process aggregator({kBinary, "aggregator", "--store", store, "--broker", bound->backend, "--arch", "mlp",
                      "--buffer-size", "5", "--eval-every", "0"},
                     dir.path("aggregator.out"));
  ASSERT_NO_FATAL_FAILURE(PublishFiveThenStopAfterVersionOne(bound->frontend, aggregator, broker));
}

}  // namespace
}  // namespace fedlora
