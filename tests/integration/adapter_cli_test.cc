// Inspection and export on a real stored run (a short federation of the mlp model): `inspect
// --version`, `diff` and `lineage` against values computed here from the stored tensors and
// lineage; `export --format peft` read back by an independent Python reader
// (tests/integration/read_peft.py, standard library only); `import` rebuilding the same content
// hash; and clear refusals of bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "storage/adapter_store.h"
#include "storage/update_log.h"
#include "tests/testing/fixtures.h"
#include "tests/testing/process.h"
#include "tests/testing/samples.h"

namespace fedlora {
namespace {

using nlohmann::json;
using testing::Json;
using testing::Quote;
using testing::RunCapture;

constexpr const char* kBinary = FEDLORA_BINARY;
constexpr const char* kReader = FEDLORA_SOURCE_DIR "/tests/integration/read_peft.py";

class AdapterCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    store_ = dir_->path("run");
    int rc = -1;
    std::string out =
        RunCapture(std::string(kBinary) + " pretrain --arch mlp --epochs 1 --store " + Quote(store_) + " 2>&1", &rc);
    ASSERT_EQ(rc, 0) << out;
    out = RunCapture(std::string(kBinary) +
                         " run --arch mlp --workers 3 --speeds 1,2,4 --local-steps 4 --buffer-size 3 --max-versions 6 "
                         "--duration 240 --eval-every 0 --store " +
                         Quote(store_) + " 2>&1",
                     &rc);
    ASSERT_EQ(rc, 0) << out;
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  // The stored global of a version, read directly from the store.
  static codec::DecodedGlobal Global(uint64_t version) {
    storage::AdapterStoreOptions so;
    so.path = store_ + "/adapters";
    so.read_only = true;
    auto store = storage::AdapterStore::Open(so);
    EXPECT_TRUE(store.ok());
    auto g = storage::ReadVersion(**store, "default", version);
    EXPECT_TRUE(g.ok()) << g.status().ToString();
    return std::move(*g);
  }
  static const DenseTensor& Tensor(const codec::DecodedGlobal& g, const std::string& name) {
    return g.state.tensors.at(static_cast<size_t>(g.spec.Find(name)));
  }
  // (alpha / r) B A of a module, formed densely here (inspect uses exact low-rank algebra).
  static std::vector<double> DeltaW(const codec::DecodedGlobal& g, const std::string& module) {
    const auto& a = Tensor(g, module + ".lora_A");
    const auto& b = Tensor(g, module + ".lora_B");
    const size_t d = b.shape[0], r = b.shape[1], k = a.shape[1];
    const double scale = g.spec.alpha / g.spec.rank;
    std::vector<double> w(d * k, 0.0);
    for (size_t i = 0; i < d; ++i)
      for (size_t j = 0; j < r; ++j)
        for (size_t c = 0; c < k; ++c) w[i * k + c] += scale * b.values[i * r + j] * a.values[j * k + c];
    return w;
  }
  static double Distance(const std::vector<double>& x, const std::vector<double>& y) {
    double s = 0;
    for (size_t i = 0; i < x.size(); ++i) s += (x[i] - (y.empty() ? 0 : y[i])) * (x[i] - (y.empty() ? 0 : y[i]));
    return std::sqrt(s);
  }

  static testing::TempDir* dir_;
  static std::string store_;
};
testing::TempDir* AdapterCli::dir_ = nullptr;
std::string AdapterCli::store_;

TEST_F(AdapterCli, InspectMatchesTheStoredTensorsAndLineage) {
  const json v = Json(std::string(kBinary) + " inspect --json --version 4 --store " + Quote(store_));
  const json history = Json(std::string(kBinary) + " history --json --store " + Quote(store_));
  ASSERT_TRUE(v.is_object());
  ASSERT_EQ(v["modules"].size(), 2u);  // fc1, fc2
  const auto g4 = Global(4), g3 = Global(3);
  for (const auto& m : v["modules"]) {
    const std::string module = m["module"];
    const auto w4 = DeltaW(g4, module), w3 = DeltaW(g3, module);
    EXPECT_NEAR(m["norm"].get<double>(), Distance(w4, {}), 1e-6 * Distance(w4, {})) << module;
    EXPECT_NEAR(m["change"].get<double>(), Distance(w4, w3), 1e-6 * Distance(w4, {})) << module;
    double sum_squares = 0, last = INFINITY;
    for (const auto& s : m["singular_values"]) {
      EXPECT_LE(s.get<double>(), last) << module << ": singular values must descend";
      last = s.get<double>();
      sum_squares += last * last;
    }
    EXPECT_NEAR(std::sqrt(sum_squares), m["norm"].get<double>(), 1e-6 * m["norm"].get<double>());
    EXPECT_LE(m["singular_values"].size(), g4.spec.rank);
    EXPECT_GE(m["effective_rank"].get<double>(), 1.0);
    EXPECT_LE(m["effective_rank"].get<double>(), g4.spec.rank);
  }
  // The lineage is the version's, update by update.
  ASSERT_EQ(v["lineage"]["applied"].size(), history[4]["applied"].size());
  for (size_t i = 0; i < v["lineage"]["applied"].size(); ++i) {
    EXPECT_EQ(v["lineage"]["applied"][i]["seq"], history[4]["applied"][i]["seq"]);
    EXPECT_EQ(v["lineage"]["applied"][i]["update_id"], history[4]["applied"][i]["update_id"]);
  }
  int rc = -1;
  const std::string text = RunCapture(std::string(kBinary) + " inspect --version 4 --store " + Quote(store_) + " 2>&1", &rc);
  EXPECT_EQ(rc, 0);
  EXPECT_NE(text.find("updates folded"), std::string::npos) << text;
  const std::string missing = RunCapture(std::string(kBinary) + " inspect --version 99 --store " + Quote(store_) + " 2>&1", &rc);
  EXPECT_EQ(rc, 1);
  EXPECT_NE(missing.find("versions 0..6"), std::string::npos) << missing;
}

TEST_F(AdapterCli, DiffAndLineageAgreeWithHistory) {
  const json history = Json(std::string(kBinary) + " history --json --store " + Quote(store_));
  const json d = Json(std::string(kBinary) + " diff 1 5 --json --store " + Quote(store_));
  size_t folded = 0;
  for (uint64_t v = 2; v <= 5; ++v) folded += history[v]["applied"].size();
  EXPECT_EQ(d["updates_folded"].get<size_t>(), folded);
  const auto g1 = Global(1), g5 = Global(5);
  for (const auto& m : d["modules"]) {
    const std::string module = m["module"];
    EXPECT_NEAR(m["change"].get<double>(), Distance(DeltaW(g5, module), DeltaW(g1, module)),
                1e-6 * Distance(DeltaW(g5, module), {}))
        << module;
  }
  const json a = history[3]["applied"][0];
  const json l = Json(std::string(kBinary) + " lineage --json --update " + a["update_id"].get<std::string>() +
                      " --store " + Quote(store_));
  ASSERT_EQ(l.size(), 1u);
  EXPECT_EQ(l[0]["version"], 3);
  EXPECT_EQ(l[0]["outcome"], "folded");
  EXPECT_EQ(l[0]["seq"], a["seq"]);
  EXPECT_EQ(l[0]["staleness"], a["staleness"]);
  int rc = -1;
  const std::string out =
      RunCapture(std::string(kBinary) + " lineage --update no-such-update --store " + Quote(store_) + " 2>&1", &rc);
  EXPECT_EQ(rc, 1);
  EXPECT_NE(out.find("not in any version"), std::string::npos) << out;
}

TEST_F(AdapterCli, ExportIsReadByAnIndependentReaderAndImportsBitForBit) {
  const std::string out = dir_->path("peft");
  int rc = -1;
  std::string text = RunCapture(std::string(kBinary) + " export --version 6 --format peft --out " + Quote(out) +
                                    " --store " + Quote(store_) + " 2>&1",
                                &rc);
  ASSERT_EQ(rc, 0) << text;
  const json read = Json(std::string("python3 ") + kReader + " " + Quote(out));
  ASSERT_TRUE(read.is_object());
  const auto g = Global(6);
  EXPECT_EQ(read["config"]["peft_type"], "LORA");
  EXPECT_EQ(read["config"]["r"], g.spec.rank);
  EXPECT_EQ(read["config"]["lora_alpha"].get<double>(), g.spec.alpha);
  EXPECT_EQ(read["config"]["target_modules"], json(g.spec.target_modules));
  EXPECT_EQ(read["metadata"]["fedlora.content_hash"], g.info.content_hash);
  ASSERT_EQ(read["tensors"].size(), g.spec.tensors.size());
  for (size_t i = 0; i < g.spec.tensors.size(); ++i) {
    const auto& t = g.spec.tensors[i];
    const std::string key =
        "base_model.model." + t.name + (t.role == TensorRole::kDense ? "" : ".weight");
    ASSERT_TRUE(read["tensors"].contains(key)) << key;
    const json& e = read["tensors"][key];
    EXPECT_EQ(e["shape"], json(t.shape)) << key;
    const auto& values = g.state.tensors[i].values;
    double sum = 0;
    for (float x : values) sum += x;
    EXPECT_NEAR(e["sum"].get<double>(), sum, 1e-9 + 1e-9 * std::abs(sum)) << key;
    for (size_t k = 0; k < e["first"].size(); ++k) EXPECT_EQ(e["first"][k].get<float>(), values[k]) << key;
  }
  // Never overwritten.
  text = RunCapture(std::string(kBinary) + " export --version 6 --out " + Quote(out) + " --store " + Quote(store_) + " 2>&1", &rc);
  EXPECT_EQ(rc, 2) << text;

  // Import into a fresh store: version 0 of the new adapter has the exported version's hash.
  const std::string other = dir_->path("other");
  text = RunCapture(std::string(kBinary) + " import --in " + Quote(out) + " --adapter imported --store " + Quote(other) + " 2>&1", &rc);
  ASSERT_EQ(rc, 0) << text;
  const json h = Json(std::string(kBinary) + " history --json --adapter imported --store " + Quote(other));
  ASSERT_EQ(h.size(), 1u);
  EXPECT_EQ(h[0]["content_hash"], g.info.content_hash);
  text = RunCapture(std::string(kBinary) + " import --in " + Quote(out) + " --adapter imported --store " + Quote(other) + " 2>&1", &rc);
  EXPECT_EQ(rc, 2) << "importing over an existing adapter must be refused: " << text;

  // A truncated checkpoint is refused with the file named.
  const std::string broken = dir_->path("broken");
  std::filesystem::create_directories(broken);
  std::filesystem::copy_file(out + "/adapter_config.json", broken + "/adapter_config.json");
  std::ifstream in(out + "/adapter_model.safetensors", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::ofstream(broken + "/adapter_model.safetensors", std::ios::binary) << bytes.substr(0, bytes.size() - 100);
  text = RunCapture(std::string(kBinary) + " import --in " + Quote(broken) + " --adapter b --store " + Quote(other) + " 2>&1", &rc);
  EXPECT_EQ(rc, 1) << text;
  EXPECT_NE(text.find("adapter_model.safetensors"), std::string::npos) << text;
}

TEST_F(AdapterCli, TagsNameVersionsAndABranchStartsFromOne) {
  int rc = -1;
  std::string text = RunCapture(std::string(kBinary) + " tag 2 early --store " + Quote(store_) + " 2>&1", &rc);
  ASSERT_EQ(rc, 0) << text;
  text = RunCapture(std::string(kBinary) + " tag 3 early --store " + Quote(store_) + " 2>&1", &rc);
  EXPECT_EQ(rc, 2) << "a tag never moves: " << text;
  text = RunCapture(std::string(kBinary) + " tag 4 42 --store " + Quote(store_) + " 2>&1", &rc);
  EXPECT_EQ(rc, 2) << "a numeric tag would shadow a version: " << text;
  const json history = Json(std::string(kBinary) + " history --json --store " + Quote(store_));
  const json by_tag = Json(std::string(kBinary) + " inspect --json --version early --store " + Quote(store_));
  EXPECT_EQ(by_tag["version"], 2);
  EXPECT_EQ(by_tag["content_hash"], history[2]["content_hash"]);

  const std::string other = dir_->path("branches");
  text = RunCapture(std::string(kBinary) + " branch --from early --name side --to-store " + Quote(other) +
                        " --store " + Quote(store_) + " 2>&1",
                    &rc);
  ASSERT_EQ(rc, 0) << text;
  const json side = Json(std::string(kBinary) + " history --json --adapter side --store " + Quote(other));
  ASSERT_EQ(side.size(), 1u);
  EXPECT_EQ(side[0]["content_hash"], history[2]["content_hash"]);
  EXPECT_EQ(side[0]["origin"].get<std::string>().rfind("default@2 in ", 0), 0u) << side[0].dump();
  EXPECT_EQ(side[0]["config"], history[2]["config"]) << "a branch keeps the settings it came from";
  // The source is untouched.
  EXPECT_EQ(Json(std::string(kBinary) + " history --json --store " + Quote(store_)).size(), history.size());
}

// Issue 21: `fedlora log` read a damaged log with exit 0, and replay failed without a reason.
// Beside the store that consumed it, a log that lost records or is another log is named so.
TEST_F(AdapterCli, LogAndReplaySayWhenTheLogIsNotTheOneTheStoreConsumed) {
  int rc = -1;
  const std::string out = RunCapture(std::string(kBinary) + " log --store " + Quote(store_) + " 2>&1", &rc);
  ASSERT_EQ(rc, 0) << "the run's own log is refused: " << out;
  // The log lost and made afresh: another identity, one record.
  const std::string copy = dir_->path("lost-log");
  std::filesystem::copy(store_, copy, std::filesystem::copy_options::recursive);
  std::filesystem::remove_all(copy + "/log");
  {
    storage::UpdateLogOptions lo;
    lo.path = copy + "/log";
    auto log = storage::UpdateLog::Open(lo);
    ASSERT_TRUE(log.ok()) << log.status().ToString();
    const std::string bytes = "a record";
    storage::LogAppend a{"default", "c", "u", {reinterpret_cast<const std::byte*>(bytes.data()), bytes.size()}, std::nullopt};
    ASSERT_TRUE((*log)->AppendBatch({&a, 1})[0].ok());
  }
  std::string said = RunCapture(std::string(kBinary) + " log --store " + Quote(copy) + " 2>&1", &rc);
  EXPECT_NE(rc, 0) << said;
  EXPECT_NE(said.find("is not the one the aggregator's store"), std::string::npos) << said;
  said = RunCapture(std::string(kBinary) + " replay --no-eval --log " + Quote(copy) + " --out " +
                        Quote(dir_->path("replay-of-lost")) + " 2>&1",
                    &rc);
  EXPECT_NE(rc, 0) << said;
  EXPECT_NE(said.find("is not the log the store"), std::string::npos) << said;
}

// A log that holds less than its store consumed (a truncated write-ahead log, an older copy):
// `fedlora log` lists what is there and exits non-zero, saying how much is missing.
TEST_F(AdapterCli, LogSaysWhenItEndsBeforeWhatTheStoreConsumed) {
  const std::string dir = dir_->path("short-log");
  std::string id;
  {
    storage::UpdateLogOptions lo;
    lo.path = dir + "/log";
    auto log = storage::UpdateLog::Open(lo);
    ASSERT_TRUE(log.ok()) << log.status().ToString();
    id = (*log)->Id();
    for (const std::string update : {"u1", "u2"}) {
      const codec::Bytes bytes = testing::MakeUpdate(update, "c1", 0, testing::FilledState(testing::SmallSpec(), 0.1f));
      storage::LogAppend a{"default", "c1", update, codec::AsBytes(bytes), std::nullopt};
      ASSERT_TRUE((*log)->AppendBatch({&a, 1})[0].ok());
    }
    storage::AdapterStoreOptions so;
    so.path = dir + "/adapters";
    auto store = storage::AdapterStore::Open(so);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    const std::string global = "version 0";
    ASSERT_TRUE((*store)->Commit({"default", 0, 5, codec::AsBytes(global), codec::AsBytes(global), {}, id}).ok());
  }
  int rc = -1;
  const std::string said = RunCapture(std::string(kBinary) + " log --store " + Quote(dir) + " 2>&1", &rc);
  EXPECT_NE(rc, 0) << said;
  EXPECT_NE(said.find("u2"), std::string::npos) << "the records were not listed first: " << said;
  EXPECT_NE(said.find("the log ends at seq 2, but the aggregator's store"), std::string::npos) << said;
  EXPECT_NE(said.find("3 acknowledged record(s) are missing"), std::string::npos) << said;
}

}  // namespace
}  // namespace fedlora
