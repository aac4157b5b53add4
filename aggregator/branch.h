// `fedlora branch`: a new adapter whose version 0 is a stored version of another (its tensors and
// its method state), recorded with the source's settings, so that an aggregator trains it on
// from there with its own history.
#pragma once

#include <cstdint>
#include <string>

#include "schema/status.h"
#include "storage/layout.h"

namespace fedlora::aggregator {

struct BranchRequest {
  storage::StoreLayout from;        // the store holding the source
  std::string adapter = "default";  // the source adapter
  std::string version;              // the source version: a number or a tag
  storage::StoreLayout to;          // the store to create the branch in (may be `from`)
  std::string name;                 // the new adapter's id
  bool sync = true;                 // fsync the commit
};

struct BranchOutcome {
  uint64_t version = 0;             // the source version
  std::string content_hash;         // of the branch's version 0 (the source's tensors)
};

// Errors: kInvalidArgument (a name that is not an id; a bad version or tag), kNotFound (no such
// store, adapter or version), kAlreadyExists (the name is taken in `to`), kFailedPrecondition
// (the source recorded no settings), the store's (a running aggregator holds `to`: said so).
Result<BranchOutcome> BranchAdapter(const BranchRequest& request);

}  // namespace fedlora::aggregator
