// Checks shared by the fault tests: what publishers were told (an --ack-log of JSON lines)
// against what the broker logged (`fedlora log --json`), and what the aggregator consumed
// (`fedlora history --json`) against the log.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

namespace fedlora::testing {

struct AckCount {
  size_t acked = 0;
  size_t duplicates = 0;  // acknowledged as a resend of an update already logged
};

// Every acknowledged update is in the log exactly once, at the sequence number acknowledged.
inline AckCount ExpectAckedExactlyOnce(const nlohmann::json& log, const std::string& ack_log_path) {
  std::map<std::string, uint64_t> seq_of;
  for (const auto& r : log) {
    const std::string key = r["client_id"].get<std::string>() + "/" + r["update_id"].get<std::string>();
    EXPECT_TRUE(seq_of.emplace(key, r["seq"].get<uint64_t>()).second) << "logged twice: " << key;
  }
  AckCount count;
  std::ifstream in(ack_log_path);
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    const auto a = nlohmann::json::parse(line);
    const std::string key = a["client_id"].get<std::string>() + "/" + a["update_id"].get<std::string>();
    auto it = seq_of.find(key);
    EXPECT_TRUE(it != seq_of.end()) << "acknowledged but not in the log: " << key;
    if (it != seq_of.end()) {
      EXPECT_EQ(it->second, a["seq"].get<uint64_t>()) << key;
    }
    ++count.acked;
    count.duplicates += a["duplicate"].get<bool>();
  }
  return count;
}

// Versions run 0..N, and every log record up to the last consumed one was folded into or
// dropped by exactly one version. Returns the last consumed sequence number.
inline uint64_t ExpectEveryRecordConsumedOnce(const nlohmann::json& history) {
  std::map<uint64_t, int> consumed;
  for (size_t v = 0; v < history.size(); ++v) {
    EXPECT_EQ(history[v]["version"].get<uint64_t>(), v);
    for (const auto& a : history[v]["applied"]) consumed[a["seq"].get<uint64_t>()]++;
    for (const auto& d : history[v]["dropped_updates"]) consumed[d["seq"].get<uint64_t>()]++;
  }
  const uint64_t last_consumed = history.empty() ? 0 : history.back()["consumed_seq"].get<uint64_t>();
  for (uint64_t seq = 1; seq <= last_consumed; ++seq) {
    EXPECT_EQ(consumed[seq], 1) << "log record " << seq << " consumed " << consumed[seq] << " times";
  }
  EXPECT_EQ(consumed.size(), last_consumed);
  return last_consumed;
}

}  // namespace fedlora::testing
