// Validation of a published update against the adapter it targets. The broker runs it on
// every update after the FlatBuffers verifier and before anything is logged, so the log only
// ever holds updates an aggregator can fold; the aggregator runs it again as a second line of
// defence (a log written by another tool, or a spec that changed).
// Thread safety: pure functions.
#pragma once

#include <cstdint>
#include <string_view>

#include "schema/adapter.h"
#include "schema/codec.h"
#include "schema/status.h"

namespace fedlora {

struct ValidationLimits {
  size_t max_id_length = 128;
  // > 0: refuse an update whose L2 norm over every value it carries is larger (a client that
  // diverged, or one trying to dominate the average). 0: no bound.
  double max_update_norm = 0;
};

// Checks identifiers (non-empty, bounded, printable, no NUL), that every tensor is one of
// the spec's (each at most once) with the spec's shape and valid values (see
// ValidateTensorValues), that num_samples > 0, that base_version is not newer than
// `latest_version`, and that the update's norm is within limits.max_update_norm. Errors: kInvalidArgument / kUnimplemented, with a reason naming the field.
Status ValidateUpdate(const wire::Update& update, const AdapterSpec& spec, uint64_t latest_version,
                      const ValidationLimits& limits = {});

// Checks one tensor's encoding against its spec: Dense carries one value per element; Sparse
// carries strictly increasing flat indices below numel with one value each; RankSlice is only
// for LoRA factors and carries strictly increasing ranks below r with a full row of A / column
// of B per rank. Every value must be finite. Q8 is kUnimplemented.
Status ValidateTensorValues(const wire::Tensor& tensor, const TensorSpec& spec);

// Identifier syntax shared by adapter, client and update ids: 1..max_length characters from
// [A-Za-z0-9._:-].
Status ValidateId(std::string_view what, std::string_view id, size_t max_length);

}  // namespace fedlora
