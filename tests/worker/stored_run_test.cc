// What the library does with a stored run, without the command line: the replay of its log into
// a new store (worker/federation/replay_store.h: a reproduction bit for bit and evaluated, a
// what-if that parts from the original, the requests refused before anything is written), and
// its export as a PEFT checkpoint and import back (worker/federation/peft_files.h).
#include "worker/federation/replay_store.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "tests/testing/fixtures.h"
#include "tests/worker/small_run.h"
#include "worker/federation/compare.h"
#include "worker/federation/embedded.h"
#include "worker/federation/peft_files.h"

namespace fedlora::federation {
namespace {

// A stored mlp run of three versions, made once for the suite.
class StoredRun : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    EmbeddedOptions o = SmallImageRun(dir_->path("store"));
    o.max_versions = 3;
    auto built = EnsureBase(o.task, BasePath(o.store.dir, "mlp"), 1, {});
    ASSERT_TRUE(built.ok()) << built.status().ToString();
    auto fed = EmbeddedFederation::Create(o);
    ASSERT_TRUE(fed.ok()) << fed.status().ToString();
    auto summary = (*fed)->Run([] { return false; });
    ASSERT_TRUE(summary.ok()) << summary.status().ToString();
    ASSERT_EQ(summary->last.version, 3u);
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static ReplayRequest Request(const std::string& out) {
    ReplayRequest r;
    r.log = dir_->path("store");
    r.out = dir_->path(out);
    return r;
  }
  static testing::TempDir* dir_;
};
testing::TempDir* StoredRun::dir_ = nullptr;

TEST_F(StoredRun, AReproductionRebuildsEveryVersionAndIsEvaluated) {
  std::vector<uint64_t> versions;
  ReplayCallbacks cb;
  bool started = false;
  cb.starting = [&started](const ReplayOutcome& o) {
    started = true;
    EXPECT_GT(o.log_records, 0u);
    EXPECT_FALSE(o.what_if);
  };
  cb.on_version = [&versions](const aggregator::ReplayProgress& p) { versions.push_back(p.version); };
  auto o = ReplayStore(Request("again"), cb);
  ASSERT_TRUE(o.ok()) << o.status().ToString();
  EXPECT_TRUE(started);
  EXPECT_EQ(versions, (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_TRUE(o->verdict.ok()) << o->verdict.ToString();
  EXPECT_EQ(o->report.last.version, 3u);
  EXPECT_TRUE(o->report.final);
  EXPECT_EQ(o->report.compared, 4u);  // versions 0..3
  EXPECT_EQ(o->report.identical, 4u);
  EXPECT_FALSE(o->report.first_difference);
  // Evaluated on the store's own base and Fashion-MNIST's test split, like the original.
  ASSERT_TRUE(o->report.last_eval) << o->eval_note;
  EXPECT_TRUE(o->eval_note.empty());
  EXPECT_EQ(o->report.last_eval->samples, 200u);  // as many as the original's evaluations
  ASSERT_TRUE(o->original_eval);
  EXPECT_EQ(o->original_eval->version, 3u);
  EXPECT_TRUE(std::filesystem::is_directory(dir_->path("again/adapters")));
}

TEST_F(StoredRun, AWhatIfPartsFromTheOriginalWithoutAVerdict) {
  ReplayRequest r = Request("what-if");
  r.what_if = {"--buffer-size", "2"};
  r.evaluate = false;
  auto o = ReplayStore(r);
  ASSERT_TRUE(o.ok()) << o.status().ToString();
  EXPECT_TRUE(o->what_if);
  EXPECT_TRUE(o->verdict.ok()) << "a what-if is not held to the original";
  ASSERT_TRUE(o->report.first_difference);
  EXPECT_EQ(*o->report.first_difference, 1u);
  EXPECT_FALSE(o->report.last_eval);
  EXPECT_TRUE(o->eval_note.empty());
}

TEST_F(StoredRun, RequestsThatCannotBeCarriedOutWriteNothing) {
  ReplayRequest typo = Request("typo");
  typo.what_if = {"--buffer-sise", "2"};
  EXPECT_EQ(ReplayStore(typo).status().code(), Code::kInvalidArgument);
  EXPECT_FALSE(std::filesystem::exists(dir_->path("typo")));

  ReplayRequest occupied = Request("store");  // the original itself
  occupied.evaluate = false;
  auto refused = ReplayStore(occupied);
  EXPECT_EQ(refused.status().code(), Code::kAlreadyExists) << refused.status().ToString();

  ReplayRequest nowhere = Request("nowhere");
  nowhere.log = dir_->path("no-such-store");
  EXPECT_EQ(ReplayStore(nowhere).status().code(), Code::kNotFound);

  ReplayRequest other = Request("other");
  other.adapter = "no-such-adapter";
  auto none = ReplayStore(other);
  EXPECT_EQ(none.status().code(), Code::kNotFound);
  EXPECT_NE(none.status().message().find("no-such-adapter"), std::string::npos) << none.status().ToString();
  EXPECT_FALSE(std::filesystem::exists(dir_->path("other")));
}

TEST_F(StoredRun, WithoutTheBaseModelItReplaysAndSaysWhyItDidNotEvaluate) {
  ReplayRequest r = Request("no-base");
  r.base = dir_->path("missing.pt");
  auto o = ReplayStore(r);
  ASSERT_TRUE(o.ok()) << o.status().ToString();
  EXPECT_TRUE(o->verdict.ok());
  EXPECT_FALSE(o->report.last_eval);
  EXPECT_NE(o->eval_note.find("no base model at"), std::string::npos) << o->eval_note;
}

TEST_F(StoredRun, AVersionExportsAsPeftAndImportsBackAsVersionZeroWithTheSameHash) {
  const storage::StoreLayout store{dir_->path("store")};
  ExportRequest request;
  request.store = store;
  request.version = "2";
  request.out = dir_->path("peft-v2");
  auto exported = ExportPeftVersion(request);
  ASSERT_TRUE(exported.ok()) << exported.status().ToString();
  EXPECT_EQ(exported->version, 2u);
  EXPECT_GT(exported->modules, 0u);
  EXPECT_TRUE(std::filesystem::is_regular_file(request.out + "/adapter_model.safetensors"));
  EXPECT_TRUE(std::filesystem::is_regular_file(request.out + "/adapter_config.json"));
  EXPECT_EQ(ExportPeftVersion(request).status().code(), Code::kAlreadyExists) << "an export is never overwritten";

  ImportRequest in;
  in.in = request.out;
  in.store = storage::StoreLayout{dir_->path("imported")};
  in.adapter = "from-v2";
  in.sync = false;
  auto imported = ImportPeftAdapter(in);
  ASSERT_TRUE(imported.ok()) << imported.status().ToString();
  EXPECT_EQ(imported->content_hash, exported->global.info.content_hash);
  ASSERT_TRUE(imported->exported_hash);
  EXPECT_EQ(*imported->exported_hash, exported->global.info.content_hash);
  EXPECT_EQ(ImportPeftAdapter(in).status().code(), Code::kAlreadyExists);
  in.adapter = "not an id";
  EXPECT_EQ(ImportPeftAdapter(in).status().code(), Code::kInvalidArgument);

  ExportRequest missing = request;
  missing.version = "99";
  missing.out = dir_->path("peft-v99");
  EXPECT_EQ(ExportPeftVersion(missing).status().code(), Code::kNotFound);
  EXPECT_FALSE(std::filesystem::exists(missing.out));
  ExportRequest checked = request;
  checked.out = dir_->path("peft-checked");
  checked.base = dir_->path("no-checkpoint");
  EXPECT_EQ(ExportPeftVersion(checked).status().code(), Code::kNotFound) << "no checkpoint to check against";
  EXPECT_FALSE(std::filesystem::exists(checked.out));
}

// What `fedlora compare` plots for a run: every evaluated version with the bytes uploaded up to
// the log position it consumed.
TEST_F(StoredRun, ItsCurveHasEveryEvaluatedVersionAndTheBytesBehindIt) {
  auto curve = ReadCurve(dir_->path("store"), "default");
  ASSERT_TRUE(curve.ok()) << curve.status().ToString();
  ASSERT_EQ(curve->size(), 4u);  // versions 0..3, each evaluated
  EXPECT_EQ((*curve)[0].version, 0u);
  EXPECT_EQ((*curve)[0].bytes, 0.0);
  for (size_t i = 1; i < curve->size(); ++i) {
    EXPECT_EQ((*curve)[i].version, i);
    EXPECT_GT((*curve)[i].bytes, (*curve)[i - 1].bytes) << "each version folds new updates";
    EXPECT_GE((*curve)[i].accuracy, 0.0);
    EXPECT_LE((*curve)[i].accuracy, 1.0);
  }
  EXPECT_EQ(ReadCurve(dir_->path("no-such-store"), "default").status().code(), Code::kNotFound);
}

}  // namespace
}  // namespace fedlora::federation
