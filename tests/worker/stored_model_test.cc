// What `fedlora generate` and `score` open (worker/federation/stored_model.h): the requests that
// cannot name a model are refused with what to give instead. (A checkpoint with a stored
// version applied is checked against the Python reference in tests/integration/lm_run_test.cc.)
#include "worker/federation/stored_model.h"

#include <gtest/gtest.h>

#include "tests/testing/fixtures.h"

namespace fedlora::federation {
namespace {

TEST(StoredModelTest, RequestsThatNameNoModelAreRefusedWithWhatToGive) {
  testing::TempDir dir;
  StoredModelRef versioned;
  versioned.base = dir.path();
  versioned.version = "3";
  auto r = OpenStoredModel(versioned);
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_NE(r.status().message().find("give --store too"), std::string::npos) << r.status().ToString();

  r = OpenStoredModel({});
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_NE(r.status().message().find("--base DIR"), std::string::npos) << r.status().ToString();

  StoredModelRef missing;
  missing.base = dir.path("no-such-checkpoint");
  r = OpenStoredModel(missing);
  EXPECT_EQ(r.status().code(), Code::kNotFound);
  EXPECT_NE(r.status().message().find("is not a directory"), std::string::npos) << r.status().ToString();

  StoredModelRef empty;
  empty.base = dir.path();
  r = OpenStoredModel(empty);
  EXPECT_EQ(r.status().code(), Code::kNotFound);
  EXPECT_NE(r.status().message().find("no readable config.json"), std::string::npos) << r.status().ToString();

  // Without --base, the store's own language model, which this store does not have.
  StoredModelRef own;
  own.store = dir.path("store");
  r = OpenStoredModel(own);
  EXPECT_EQ(r.status().code(), Code::kNotFound);
  EXPECT_NE(r.status().message().find("fedlora-lm"), std::string::npos) << r.status().ToString();
}

}  // namespace
}  // namespace fedlora::federation
