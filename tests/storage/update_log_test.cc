#include "storage/update_log.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include <fmt/format.h>

#include "tests/testing/disk.h"
#include "tests/testing/fixtures.h"

namespace fedlora::storage {
namespace {

std::span<const std::byte> B(const std::string& s) { return {reinterpret_cast<const std::byte*>(s.data()), s.size()}; }

std::unique_ptr<UpdateLog> OpenLog(const std::string& path, bool read_only = false) {
  UpdateLogOptions o;
  o.path = path;
  o.read_only = read_only;
  o.min_blob_size = 16;  // exercise blob files with small values
  auto log = UpdateLog::Open(o);
  EXPECT_TRUE(log.ok()) << log.status().ToString();
  return log.ok() ? std::move(*log) : nullptr;
}

TEST(UpdateLogTest, AssignsIncreasingSequenceNumbersPerAdapter) {
  testing::TempDir dir;
  auto log = OpenLog(dir.path("log"));
  const std::string a = "payload-a-0123456789", b = "payload-b-0123456789", c = "payload-c-0123456789";
  std::vector<LogAppend> items = {{"x", "c1", "u1", B(a), std::nullopt}, {"y", "c1", "u2", B(b), std::nullopt}, {"x", "c2", "u1", B(c), std::nullopt}};
  auto results = log->AppendBatch(items);
  ASSERT_EQ(results.size(), 3u);
  EXPECT_EQ(results[0]->seq, 1u);
  EXPECT_EQ(results[1]->seq, 1u);  // adapter y has its own sequence
  EXPECT_EQ(results[2]->seq, 2u);
  EXPECT_EQ(log->LastSeq("x"), 2u);
  EXPECT_EQ(log->LastSeq("y"), 1u);
  EXPECT_EQ(log->LastSeq("z"), 0u);
  auto read = log->Read("x", 1, 10, 1 << 20);
  ASSERT_TRUE(read.ok());
  ASSERT_EQ(read->size(), 2u);
  EXPECT_EQ((*read)[0].bytes, a);
  EXPECT_EQ((*read)[1].bytes, c);
}

TEST(UpdateLogTest, RetriedPublishIsLoggedOnce) {
  testing::TempDir dir;
  auto log = OpenLog(dir.path("log"));
  const std::string bytes = "the same update bytes";
  LogAppend item{"x", "c1", "u1", B(bytes), std::nullopt};
  auto first = log->AppendBatch({&item, 1});
  auto retry = log->AppendBatch({&item, 1});
  ASSERT_TRUE(first[0].ok());
  ASSERT_TRUE(retry[0].ok());
  EXPECT_FALSE(first[0]->duplicate);
  EXPECT_TRUE(retry[0]->duplicate);
  EXPECT_EQ(first[0]->seq, retry[0]->seq);
  EXPECT_EQ(log->LastSeq("x"), 1u);
}

TEST(UpdateLogTest, RetryWithinOneBatchIsLoggedOnce) {
  testing::TempDir dir;
  auto log = OpenLog(dir.path("log"));
  const std::string bytes = "racing retry";
  std::vector<LogAppend> items = {{"x", "c1", "u1", B(bytes), std::nullopt}, {"x", "c1", "u1", B(bytes), std::nullopt}};
  auto r = log->AppendBatch(items);
  EXPECT_EQ(r[0]->seq, 1u);
  EXPECT_TRUE(r[1]->duplicate);
  EXPECT_EQ(r[1]->seq, 1u);
  EXPECT_EQ(log->LastSeq("x"), 1u);
}

TEST(UpdateLogTest, ReusedIdWithDifferentContentIsRejected) {
  testing::TempDir dir;
  auto log = OpenLog(dir.path("log"));
  const std::string one = "first content", two = "other content";
  LogAppend a{"x", "c1", "u1", B(one), std::nullopt};
  LogAppend b{"x", "c1", "u1", B(two), std::nullopt};
  ASSERT_TRUE(log->AppendBatch({&a, 1})[0].ok());
  auto r = log->AppendBatch({&b, 1});
  EXPECT_EQ(r[0].status().code(), Code::kAlreadyExists);
  EXPECT_EQ(log->LastSeq("x"), 1u);
}

TEST(UpdateLogTest, SameUpdateIdFromAnotherClientIsADifferentUpdate) {
  testing::TempDir dir;
  auto log = OpenLog(dir.path("log"));
  const std::string bytes = "x";
  std::vector<LogAppend> items = {{"x", "c1", "u1", B(bytes), std::nullopt}, {"x", "c2", "u1", B(bytes), std::nullopt}};
  auto r = log->AppendBatch(items);
  EXPECT_FALSE(r[1]->duplicate);
  EXPECT_EQ(r[1]->seq, 2u);
}

TEST(UpdateLogTest, RecordsAndIdempotencySurviveReopen) {
  testing::TempDir dir;
  const std::string bytes = "durable update";
  {
    auto log = OpenLog(dir.path("log"));
    std::vector<LogAppend> items = {{"x", "c1", "u1", B(bytes), std::nullopt}, {"x", "c1", "u2", B(bytes), std::nullopt}};
    log->AppendBatch(items);
  }
  auto log = OpenLog(dir.path("log"));
  EXPECT_EQ(log->LastSeq("x"), 2u);
  LogAppend retry{"x", "c1", "u2", B(bytes), std::nullopt};
  auto r = log->AppendBatch({&retry, 1});
  EXPECT_TRUE(r[0]->duplicate);
  EXPECT_EQ(r[0]->seq, 2u);
  LogAppend fresh{"x", "c1", "u3", B(bytes), std::nullopt};
  EXPECT_EQ(log->AppendBatch({&fresh, 1})[0]->seq, 3u);
  EXPECT_EQ(log->Adapters(), std::vector<std::string>{"x"});
}

TEST(UpdateLogTest, ReadRespectsCountAndByteLimits) {
  testing::TempDir dir;
  auto log = OpenLog(dir.path("log"));
  const std::string bytes(100, 'z');
  std::vector<std::string> ids;
  for (int i = 0; i < 10; ++i) ids.push_back("u" + std::to_string(i));
  std::vector<LogAppend> items;
  for (const auto& id : ids) items.push_back({"x", "c", id, B(bytes), std::nullopt});
  log->AppendBatch(items);
  EXPECT_EQ(log->Read("x", 3, 4, 1 << 20)->size(), 4u);
  EXPECT_EQ(log->Read("x", 3, 4, 1 << 20)->front().seq, 3u);
  EXPECT_EQ(log->Read("x", 1, 100, 250)->size(), 2u);
  EXPECT_EQ(log->Read("x", 1, 100, 10)->size(), 1u);  // always at least one
  EXPECT_TRUE(log->Read("x", 11, 100, 1 << 20)->empty());
}

TEST(UpdateLogTest, ReadOnlyOpenSeesRecordsAndRefusesAppends) {
  testing::TempDir dir;
  const std::string bytes = "record";
  {
    auto log = OpenLog(dir.path("log"));
    LogAppend a{"x", "c", "u", B(bytes), std::nullopt};
    log->AppendBatch({&a, 1});
  }
  auto ro = OpenLog(dir.path("log"), true);
  EXPECT_EQ(ro->LastSeq("x"), 1u);
  LogAppend b{"x", "c", "v", B(bytes), std::nullopt};
  EXPECT_EQ(ro->AppendBatch({&b, 1})[0].status().code(), Code::kFailedPrecondition);
}

TEST(UpdateLogTest, ReadOnlyOpenOfMissingStoreIsNotFound) {
  testing::TempDir dir;
  UpdateLogOptions o;
  o.path = dir.path("nothing-here");
  o.read_only = true;
  EXPECT_EQ(UpdateLog::Open(o).status().code(), Code::kNotFound);
}

// Issue 21: a lost log directory came back as an empty log, indistinguishable from the one the
// aggregator had consumed. A log has an identity now, made once and kept with it.
TEST(UpdateLogTest, HasAnIdentityThatItKeepsAndALostLogDoesNot) {
  testing::TempDir dir;
  std::string id;
  {
    auto log = OpenLog(dir.path("log"));
    id = log->Id();
    LogAppend a{"x", "c", "u", B(std::string("record")), std::nullopt};
    log->AppendBatch({&a, 1});
  }
  ASSERT_EQ(id.size(), 32u);
  EXPECT_EQ(id.find_first_not_of("0123456789abcdef"), std::string::npos) << id;
  EXPECT_EQ(OpenLog(dir.path("log"))->Id(), id);
  EXPECT_EQ(OpenLog(dir.path("log"), true)->Id(), id);
  EXPECT_NE(OpenLog(dir.path("other"))->Id(), id);
  std::filesystem::remove_all(dir.path("log"));
  const std::string again = OpenLog(dir.path("log"))->Id();
  EXPECT_EQ(again.size(), 32u);
  EXPECT_NE(again, id) << "a log made afresh where one was lost took the lost one's identity";
}

// Issue 21: a broker started on a store whose CURRENT file was missing created a new database
// over the remains. It is refused now, saying so, and the directory is left as it was.
TEST(UpdateLogTest, AStoreWithoutItsCurrentFileIsRefusedAndLeftAsItWas) {
  testing::TempDir dir;
  const std::string path = dir.path("log");
  {
    auto log = OpenLog(path);
    LogAppend a{"x", "c", "u", B(std::string("record")), std::nullopt};
    log->AppendBatch({&a, 1});
  }
  ASSERT_TRUE(std::filesystem::remove(path + "/CURRENT"));
  std::vector<std::string> before;
  for (const auto& e : std::filesystem::directory_iterator(path)) before.push_back(e.path().filename().string());
  std::sort(before.begin(), before.end());
  UpdateLogOptions o;
  o.path = path;
  auto opened = UpdateLog::Open(o);
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.status().code(), Code::kDataLoss);
  EXPECT_NE(opened.status().message().find("no CURRENT file"), std::string::npos) << opened.status().ToString();
  EXPECT_NE(opened.status().message().find("Nothing was changed"), std::string::npos);
  std::vector<std::string> after;
  for (const auto& e : std::filesystem::directory_iterator(path)) after.push_back(e.path().filename().string());
  std::sort(after.begin(), after.end());
  EXPECT_EQ(after, before);
  // An empty directory is a new log, as before.
  EXPECT_NE(OpenLog(dir.path("empty")), nullptr);
}

// Issue 21: a log whose write-ahead log lost its tail opened cleanly and handed out the lost
// sequence numbers again (74 of 120 acknowledged updates were skipped by the aggregator). The
// heads file says what was acknowledged, so the open is refused, with how many are gone and how
// to go on. The image is taken while the log is open, as a power cut would leave it: every
// record is still only in the write-ahead log.
TEST(UpdateLogTest, AWriteAheadLogThatLostItsTailIsFoundOnOpenWithHowManyWereLost) {
  testing::TempDir dir;
  const std::filesystem::path live = dir.path("live"), image = dir.path("image");
  {
    auto log = OpenLog(live.string());
    for (int i = 1; i <= 40; ++i) {
      const std::string record(200, static_cast<char>('a' + i % 26));
      LogAppend a{"x", "c", "u" + std::to_string(i), B(record), std::nullopt};
      auto appended = log->AppendBatch({&a, 1});
      ASSERT_TRUE(appended[0].ok()) << appended[0].status().ToString();
      ASSERT_EQ(appended[0]->seq, static_cast<uint64_t>(i));
    }
    std::filesystem::copy(live, image, std::filesystem::copy_options::recursive);
  }
  std::filesystem::path wal;
  for (const auto& e : std::filesystem::directory_iterator(image)) {
    if (e.path().extension() == ".log" && (wal.empty() || e.path() > wal)) wal = e.path();
  }
  ASSERT_FALSE(wal.empty());
  std::filesystem::resize_file(wal, std::filesystem::file_size(wal) * 2 / 3);

  UpdateLogOptions o;
  o.path = image.string();
  auto refused = UpdateLog::Open(o);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), Code::kDataLoss);
  const std::string why = refused.status().message();
  EXPECT_NE(why.find("acknowledged (seq "), std::string::npos) << why;
  EXPECT_NE(why.find("--accept-lost-log-tail"), std::string::npos) << why;
  // Inspection still opens it, and the check says the same.
  uint64_t head = 0;
  {
    auto reader = OpenLog(image.string(), /*read_only=*/true);
    head = reader->LastSeq("x");
    EXPECT_LT(head, 40u);
    EXPECT_EQ(reader->CheckAcknowledged().code(), Code::kDataLoss);
  }
  EXPECT_NE(why.find(fmt::format("lost {} acknowledged updates", 40 - head)), std::string::npos) << why;
  EXPECT_NE(why.find(fmt::format("the log ends at {}", head)), std::string::npos) << why;

  // Asked to, it goes on from what it holds; the loss it accepted is kept for the caller to say.
  o.accept_lost_tail = true;
  {
    auto accepted = UpdateLog::Open(o);
    ASSERT_TRUE(accepted.ok()) << accepted.status().ToString();
    EXPECT_EQ((*accepted)->AcceptedLoss().code(), Code::kDataLoss);
    LogAppend a{"x", "c", "after", B(std::string("record")), std::nullopt};
    auto appended = (*accepted)->AppendBatch({&a, 1});
    ASSERT_TRUE(appended[0].ok()) << appended[0].status().ToString();
    EXPECT_EQ(appended[0]->seq, head + 1);
  }
  // From then on, the log is whole again.
  auto again = OpenLog(image.string());
  ASSERT_NE(again, nullptr);
  EXPECT_TRUE(again->CheckAcknowledged().ok());
  EXPECT_TRUE(again->AcceptedLoss().ok());
  // The untouched log was never in doubt.
  EXPECT_TRUE(OpenLog(live.string())->CheckAcknowledged().ok());
}

// `fedlora log` reads a live log: what the broker acknowledges after the reader opened it is
// not in the reader's view, and is not a loss.
TEST(UpdateLogTest, AReaderOfALiveLogDoesNotTakeLaterRecordsForLostOnes) {
  testing::TempDir dir;
  auto writer = OpenLog(dir.path("log"));
  const auto append = [&](int from, int to) {
    for (int i = from; i <= to; ++i) {
      LogAppend a{"x", "c", "u" + std::to_string(i), B(std::string("record")), std::nullopt};
      ASSERT_TRUE(writer->AppendBatch({&a, 1})[0].ok());
    }
  };
  append(1, 5);
  auto reader = OpenLog(dir.path("log"), /*read_only=*/true);
  append(6, 10);
  EXPECT_EQ(reader->LastSeq("x"), 5u);
  EXPECT_TRUE(reader->CheckAcknowledged().ok()) << reader->CheckAcknowledged().ToString();
}

// A log directory whose RocksDB files are all gone, its heads file left: refused, not made afresh.
TEST(UpdateLogTest, ALogWhoseFilesAreGoneIsRefusedWhereItsHeadsRemain) {
  testing::TempDir dir;
  const std::filesystem::path path = dir.path("log");
  {
    auto log = OpenLog(path.string());
    LogAppend a{"x", "c", "u", B(std::string("record")), std::nullopt};
    log->AppendBatch({&a, 1});
  }
  for (const auto& e : std::filesystem::directory_iterator(path)) {
    if (e.path().filename() != kHeadsFile) std::filesystem::remove_all(e.path());
  }
  UpdateLogOptions o;
  o.path = path.string();
  auto refused = UpdateLog::Open(o);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), Code::kDataLoss);
  EXPECT_NE(refused.status().message().find("has lost its files"), std::string::npos) << refused.status().ToString();
  EXPECT_FALSE(std::filesystem::exists(path / "CURRENT")) << "a new log was made over the lost one";
}

// Without a sync there is no promise to check: an unsynced log keeps no heads file.
TEST(UpdateLogTest, AnUnsyncedLogKeepsNoHeads) {
  testing::TempDir dir;
  UpdateLogOptions o;
  o.path = dir.path("log");
  o.sync = false;
  auto log = UpdateLog::Open(o);
  ASSERT_TRUE(log.ok());
  LogAppend a{"x", "c", "u", B(std::string("record")), std::nullopt};
  (*log)->AppendBatch({&a, 1});
  EXPECT_FALSE(std::filesystem::exists(std::filesystem::path(o.path) / kHeadsFile));
}

TEST(UpdateLogTest, KeepsTheLatestGlobalPerAdapter) {
  testing::TempDir dir;
  const std::string g1 = "global-1", g2 = "global-2";
  {
    auto log = OpenLog(dir.path("log"));
    ASSERT_TRUE(log->PutGlobal("x", B(g1)).ok());
    ASSERT_TRUE(log->PutGlobal("x", B(g2)).ok());
    EXPECT_FALSE(log->GetGlobal("y")->has_value());
  }
  auto log = OpenLog(dir.path("log"));
  EXPECT_EQ(**log->GetGlobal("x"), g2);
  EXPECT_EQ(log->AdaptersWithGlobal(), std::vector<std::string>{"x"});
}

// Issue 21: with no file descriptor left (1,100 idle TCP connections under a 1,024 limit), the
// memtable switch cannot open a new WAL file; RocksDB then refuses every later write until its
// background error is cleared, and the broker never recovered after the connections closed.
// The log clears it itself once a write fails and the cause has gone. Runs in a child process:
// it lowers the process's file limit.
void ExhaustDescriptorsThenAppendAgain(const std::string& path) {
  auto log = OpenLog(path);
  if (!log) _exit(2);
  const std::string value(256u << 10, 'v');
  uint64_t n = 0;
  auto append = [&] {
    const std::string id = "u" + std::to_string(++n);
    std::vector<LogAppend> items = {{"a", "c1", id, B(value), std::nullopt}};
    return log->AppendBatch(items)[0];
  };
  if (!append().ok()) _exit(3);
  rlimit limit{};
  getrlimit(RLIMIT_NOFILE, &limit);
  limit.rlim_cur = std::min<rlim_t>(limit.rlim_cur, 256);
  setrlimit(RLIMIT_NOFILE, &limit);
  std::vector<int> held;
  for (int fd; (fd = open("/dev/null", O_RDONLY)) >= 0;) held.push_back(fd);
  Status failure;
  for (int i = 0; i < 2000 && failure.ok(); ++i) {  // 500 MiB at most; the memtables switch at 16 MiB
    auto r = append();
    if (!r.ok()) failure = r.status();
  }
  if (failure.ok()) {
    std::fprintf(stderr, "no append failed without file descriptors\n");
    _exit(4);
  }
  std::fprintf(stderr, "without descriptors: %s\n", failure.ToString().c_str());
  for (int fd : held) close(fd);
  for (int attempt = 0; attempt < 100; ++attempt) {
    auto r = append();
    if (r.ok()) {
      std::fprintf(stderr, "appended again after %d attempts\n", attempt + 1);
      _exit(0);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (attempt == 99) std::fprintf(stderr, "still failing: %s\n", r.status().ToString().c_str());
  }
  _exit(5);
}

TEST(UpdateLogDeathTest, AppendsAgainOnceFileDescriptorsReturn) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  testing::TempDir dir;
  EXPECT_EXIT(ExhaustDescriptorsThenAppendAgain(dir.path("log")), ::testing::ExitedWithCode(0), "appended again");
}

// Issue 21: a full disk must be an answer (RESOURCE_EXHAUSTED), never an abort, and the log
// must append again once space returns. Before the free-space reserve, RocksDB aborted on every
// round of this test, about a second after the first append that met the full disk. The log
// lives on a small tmpfs the test mounts (CI runs as root); deleting a filler file gives space
// back. Runs in a child process, so an abort inside RocksDB fails the test instead of ending
// the suite.
void FillTheDiskThenAppendAgain(const std::string& mount) {
  const std::string filler = mount + "/filler";
  if (!testing::FillLeaving(filler, kFreeSpaceReserve + (16u << 20))) _exit(2);
  UpdateLogOptions o;
  o.path = mount + "/log";
  o.sync = true;
  auto opened = UpdateLog::Open(o);
  if (!opened.ok()) _exit(3);
  auto& log = *opened;
  const std::string value(64u << 10, 'v');
  uint64_t n = 0;
  auto append = [&] {
    const std::string id = "u" + std::to_string(++n);
    std::vector<LogAppend> items = {{"a", "c1", id, B(value), std::nullopt}};
    return log->AppendBatch(items)[0];
  };
  int failures = 0;
  Status first;
  for (int i = 0; i < 4000 && failures < 200; ++i) {
    auto r = append();
    if (!r.ok()) {
      if (failures++ == 0) {
        first = r.status();

      }
    }
  }
  if (failures == 0) {
    std::fprintf(stderr, "the disk never filled\n");
    _exit(4);
  }
  std::fprintf(stderr, "full disk: %s\n", first.ToString().c_str());
  if (first.code() != Code::kResourceExhausted || first.message().find("is full") == std::string::npos) _exit(5);
  std::this_thread::sleep_for(std::chrono::seconds(2));  // RocksDB aborted within about a second
  std::filesystem::remove(filler);
  for (int attempt = 0; attempt < 200; ++attempt) {
    auto r = append();
    if (r.ok()) {
      std::fprintf(stderr, "appended again after %d attempts\n", attempt + 1);
      _exit(0);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (attempt == 199) std::fprintf(stderr, "still failing: %s\n", r.status().ToString().c_str());
  }
  _exit(6);
}

TEST(UpdateLogDeathTest, AFullDiskIsAnAnswerAndTheLogAppendsOnceSpaceReturns) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  testing::TempDir dir;
  const std::string mount = dir.path("tmpfs");
  testing::Tmpfs tmpfs(mount, "192m");
  ASSERT_TRUE(tmpfs.mounted()) << "this test mounts a tmpfs and needs root, as CI has: " << tmpfs.why_not();
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE(::testing::Message() << "round " << round);
    std::filesystem::remove_all(mount + "/log");
    std::filesystem::remove(mount + "/filler");
    EXPECT_EXIT(FillTheDiskThenAppendAgain(mount), ::testing::ExitedWithCode(0), "appended again");
  }
}

}  // namespace
}  // namespace fedlora::storage
