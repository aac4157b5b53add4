// `fedlora compare` end to end on the mlp model: every method once per DP-SGD budget, each
// pass's table, JSON and accuracy-against-bytes plot, and the table and plot of accuracy against
// the budget, all read back.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>

#include "tests/testing/fixtures.h"
#include "tests/testing/process.h"

namespace fedlora {
namespace {

using nlohmann::json;
using testing::Quote;
using testing::ReadFile;
using testing::RunCapture;

constexpr const char* kBinary = FEDLORA_BINARY;

long DataPoints(const std::string& svg) {
  std::smatch m;
  return std::regex_search(svg, m, std::regex("data-points=\"(\\d+)\"")) ? std::stol(m[1]) : -1;
}

TEST(CompareCli, EveryMethodAtEveryBudgetWithTablesAndPlots) {
  testing::TempDir dir;
  const std::string out = dir.path("cmp");
  int rc = -1;
  const std::string log = RunCapture(
      std::string(kBinary) + " compare --arch mlp --methods fedavg,ffa --duration 120 --workers 3 --speeds 1 " +
          "--eval-every 1 --eval-samples 300 --dp-epsilons inf,3 --out " + Quote(out) +
          " -- --local-steps 4 --dp-steps 40 --max-versions 2 2>&1",
      &rc);
  ASSERT_EQ(rc, 0) << log;
  for (const std::string eps : {"inf", "3"}) {
    const std::string pass = out + "/eps-" + eps;
    const json results = json::parse(ReadFile(pass + "/results.json"), nullptr, false);
    ASSERT_FALSE(results.is_discarded()) << pass;
    ASSERT_EQ(results["methods"].size(), 2u) << results.dump();
    for (const auto& m : results["methods"]) {
      EXPECT_GE(m["final_accuracy"].get<double>(), 0.0);
      EXPECT_LE(m["final_accuracy"].get<double>(), 1.0);
      EXPECT_EQ(m["versions"], 2u);
      if (eps == "inf") {
        EXPECT_TRUE(m["epsilon_spent"].is_null()) << m.dump();
      } else {
        EXPECT_GT(m["epsilon_spent"].get<double>(), 0.0) << m.dump();
        EXPECT_LE(m["epsilon_spent"].get<double>(), 3.0 + 1e-9) << m.dump();
      }
      // Versions 1 and 2 are evaluated, and each has uploaded bytes behind it.
      EXPECT_EQ(m["curve"].size(), 3u) << m.dump();
    }
    const std::string table = ReadFile(pass + "/results.md");
    EXPECT_NE(table.find("| fedavg | "), std::string::npos) << table;
    EXPECT_NE(table.find("| ffa | "), std::string::npos) << table;
    // Two lines of two points each: version 0 uploaded nothing, which a log axis cannot show.
    EXPECT_EQ(DataPoints(ReadFile(pass + "/accuracy_vs_bytes.svg")), 4) << pass;
  }
  const std::string privacy = ReadFile(out + "/privacy.md");
  EXPECT_NE(privacy.find("| method | no DP | eps 3 |"), std::string::npos) << privacy;
  EXPECT_TRUE(std::regex_search(privacy, std::regex(R"(\| fedavg \| 0\.\d{4} \(2 v\) \| 0\.\d{4} \(2 v, spent [0-3]\.\d\d\) \|)")))
      << privacy;
  EXPECT_TRUE(std::regex_search(privacy, std::regex(R"(\| ffa \| 0\.\d{4} \(2 v\) \| 0\.\d{4} \(2 v, spent [0-3]\.\d\d\) \|)")))
      << privacy;
  const std::string svg = ReadFile(out + "/accuracy_vs_epsilon.svg");
  EXPECT_EQ(DataPoints(svg), 4) << svg;
  EXPECT_NE(svg.find(">no DP<"), std::string::npos);
  EXPECT_NE(svg.find(">eps 3<"), std::string::npos);

  // A budget that is not a number is refused before anything runs.
  const std::string bad = RunCapture(std::string(kBinary) + " compare --arch mlp --dp-epsilons inf,three --out " +
                                         Quote(dir.path("bad")) + " 2>&1",
                                     &rc);
  EXPECT_EQ(rc, 2) << bad;
  EXPECT_NE(bad.find("'three' is neither inf nor a positive number"), std::string::npos) << bad;
  EXPECT_FALSE(std::filesystem::exists(dir.path("bad/eps-inf")));
}

}  // namespace
}  // namespace fedlora
