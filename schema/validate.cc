#include "schema/validate.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <vector>

namespace fedlora {

Status ValidateId(std::string_view what, std::string_view id, size_t max_length) {
  if (id.empty()) return InvalidArgument(fmt::format("{} is empty", what));
  if (id.size() > max_length) {
    return InvalidArgument(fmt::format("{} is {} characters long, the limit is {}", what, id.size(), max_length));
  }
  for (char c : id) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-' || c == ':';
    if (!ok) {
      return InvalidArgument(fmt::format("{} contains the byte 0x{:02x}; allowed: A-Z a-z 0-9 . _ : -",
                                         what, static_cast<uint8_t>(c)));
    }
  }
  return Status::Ok();
}

namespace {

// Checks that `values` are finite; names the first offender.
Status CheckFinite(std::string_view name, std::span<const float> values) {
  // A float is NaN or infinite exactly when its exponent bits are all ones. The block loop
  // has no early exit, so the compiler vectorises it (every update passes through here on
  // the broker's I/O thread); only a block with a bad value is searched for the index.
  // (The inner loop's trip count is a constant: at -O2 GCC vectorises only loops that need no
  // scalar remainder; the last partial block takes the plain loop.)
  constexpr uint32_t kExponent = 0x7f800000u;
  constexpr size_t kBlock = 1024;
  const auto non_finite = [](float v) { return static_cast<uint32_t>((std::bit_cast<uint32_t>(v) & kExponent) == kExponent); };
  for (size_t start = 0; start < values.size(); start += kBlock) {
    const size_t end = std::min(values.size(), start + kBlock);
    uint32_t bad = 0;
    if (end - start == kBlock) {
      const float* block = values.data() + start;
      for (size_t i = 0; i < kBlock; ++i) bad |= non_finite(block[i]);
    } else {
      for (size_t i = start; i < end; ++i) bad |= non_finite(values[i]);
    }
    if (bad == 0) continue;
    for (size_t i = start; i < end; ++i) {
      if (!std::isfinite(values[i])) {
        return InvalidArgument(fmt::format("tensor '{}' has a non-finite value at index {}", name, i));
      }
    }
  }
  return Status::Ok();
}

// Strictly increasing and below `limit`.
Status CheckIndexList(std::string_view name, std::string_view what, std::span<const uint32_t> list,
                      uint64_t limit) {
  for (size_t i = 0; i < list.size(); ++i) {
    if (list[i] >= limit) {
      return InvalidArgument(fmt::format("tensor '{}': {} {} at position {} is out of range (limit {})",
                                         name, what, list[i], i, limit));
    }
    if (i > 0 && list[i] <= list[i - 1]) {
      return InvalidArgument(fmt::format("tensor '{}': {} are not strictly increasing at position {} ({} after {})",
                                         name, what, i, list[i], list[i - 1]));
    }
  }
  return Status::Ok();
}

}  // namespace

Status ValidateTensorValues(const wire::Tensor& t, const TensorSpec& ts) {
  const std::string_view name = ts.name;
  const auto values = codec::DenseValues(t);
  switch (t.encoding()) {
    case wire::Encoding::Dense:
      if (values.size() != ts.numel()) {
        return InvalidArgument(fmt::format("tensor '{}' has {} values, its shape needs {}", name,
                                           values.size(), ts.numel()));
      }
      break;
    case wire::Encoding::Sparse: {
      const auto indices = codec::Indices(t);
      if (t.ranks() != nullptr) return InvalidArgument(fmt::format("sparse tensor '{}' carries ranks", name));
      if (indices.size() != values.size()) {
        return InvalidArgument(fmt::format("sparse tensor '{}' has {} indices but {} values", name,
                                           indices.size(), values.size()));
      }
      RETURN_IF_ERROR(CheckIndexList(name, "indices", indices, ts.numel()));
      break;
    }
    case wire::Encoding::RankSlice: {
      if (ts.role == TensorRole::kDense || ts.shape.size() != 2) {
        return InvalidArgument(fmt::format("tensor '{}' is not a LoRA factor and cannot be sent as rank slices", name));
      }
      if (t.indices() != nullptr) return InvalidArgument(fmt::format("rank-slice tensor '{}' carries indices", name));
      const auto ranks = codec::Ranks(t);
      // A is r x k (rank = rows), B is d x r (rank = columns).
      const bool is_a = ts.role == TensorRole::kLoraA;
      const uint32_t rank = is_a ? ts.shape[0] : ts.shape[1];
      const uint64_t per_rank = is_a ? ts.shape[1] : ts.shape[0];
      RETURN_IF_ERROR(CheckIndexList(name, "ranks", ranks, rank));
      if (values.size() != ranks.size() * per_rank) {
        return InvalidArgument(fmt::format("rank-slice tensor '{}' has {} values; {} ranks of {} need {}", name,
                                           values.size(), ranks.size(), per_rank, ranks.size() * per_rank));
      }
      break;
    }
    default:
      return Unimplemented(fmt::format("tensor '{}' uses encoding {}; this broker accepts Dense, Sparse "
                                       "and RankSlice", name, wire::EnumNameEncoding(t.encoding())));
  }
  return CheckFinite(name, values);
}

Status ValidateUpdate(const wire::Update& update, const AdapterSpec& spec, uint64_t latest_version,
                      const ValidationLimits& limits) {
  RETURN_IF_ERROR(ValidateId("update_id", update.update_id()->string_view(), limits.max_id_length));
  RETURN_IF_ERROR(ValidateId("client_id", update.client_id()->string_view(), limits.max_id_length));
  if (update.num_samples() == 0) return InvalidArgument("num_samples must be positive");
  if (update.base_version() > latest_version) {
    return InvalidArgument(fmt::format("base_version {} is newer than the latest version {}",
                                       update.base_version(), latest_version));
  }
  if (!std::isfinite(update.train_loss())) return InvalidArgument("train_loss is not finite");
  for (float f : codec::FactorScores(update)) {
    if (!std::isfinite(f)) return InvalidArgument("a factor score is not finite");
  }
  const auto* tensors = update.tensors();
  if (tensors == nullptr || tensors->size() == 0) return InvalidArgument("update carries no tensors");
  std::vector<bool> seen(spec.tensors.size(), false);
  double sum_squares = 0;
  size_t next = 0;  // where the next tensor usually is: updates list them in the spec's order
  for (const auto* t : *tensors) {
    const std::string_view name = t->name()->string_view();
    const int idx = spec.Find(name, next);
    if (idx < 0) {
      return InvalidArgument(fmt::format("tensor '{}' is not part of the adapter", name));
    }
    if (seen[idx]) return InvalidArgument(fmt::format("tensor '{}' appears twice", name));
    seen[idx] = true;
    next = static_cast<size_t>(idx) + 1;
    const auto& ts = spec.tensors[idx];
    if (ts.role == TensorRole::kLoraResidual) {
      return InvalidArgument(fmt::format("tensor '{}' is a residual the aggregator keeps; updates never carry it", name));
    }
    const auto* shape = t->shape();
    if (shape == nullptr || !std::equal(shape->begin(), shape->end(), ts.shape.begin(), ts.shape.end())) {
      return InvalidArgument(fmt::format("tensor '{}' has shape [{}], the adapter expects [{}]", name,
                                         fmt::join(codec::Shape(*t), ","), fmt::join(ts.shape, ",")));
    }
    RETURN_IF_ERROR(ValidateTensorValues(*t, ts));
    if (limits.max_update_norm > 0) {
      for (float v : codec::DenseValues(*t)) sum_squares += static_cast<double>(v) * v;
    }
  }
  if (limits.max_update_norm > 0 && std::sqrt(sum_squares) > limits.max_update_norm) {
    return InvalidArgument(fmt::format("update norm {:.6g} exceeds the broker's bound {:.6g} (--max-update-norm)",
                                       std::sqrt(sum_squares), limits.max_update_norm));
  }
  return Status::Ok();
}

}  // namespace fedlora
