#include "schema/validate.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

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
  const auto* tensors = update.tensors();
  if (tensors == nullptr || tensors->size() == 0) return InvalidArgument("update carries no tensors");
  std::vector<bool> seen(spec.tensors.size(), false);
  for (const auto* t : *tensors) {
    const std::string name = t->name()->str();
    const int idx = spec.Find(name);
    if (idx < 0) {
      return InvalidArgument(fmt::format("tensor '{}' is not part of the adapter", name));
    }
    if (seen[idx]) return InvalidArgument(fmt::format("tensor '{}' appears twice", name));
    seen[idx] = true;
    const auto& ts = spec.tensors[idx];
    const auto shape = codec::Shape(*t);
    if (shape != ts.shape) {
      return InvalidArgument(fmt::format("tensor '{}' has shape [{}], the adapter expects [{}]", name,
                                         fmt::join(shape, ","), fmt::join(ts.shape, ",")));
    }
    if (t->encoding() != wire::Encoding::Dense) {
      return Unimplemented(fmt::format("tensor '{}' uses encoding {}; this broker accepts Dense",
                                       name, wire::EnumNameEncoding(t->encoding())));
    }
    const auto values = codec::DenseValues(*t);
    if (values.size() != ts.numel()) {
      return InvalidArgument(fmt::format("tensor '{}' has {} values, its shape needs {}", name,
                                         values.size(), ts.numel()));
    }
    for (size_t i = 0; i < values.size(); ++i) {
      if (!std::isfinite(values[i])) {
        return InvalidArgument(fmt::format("tensor '{}' has a non-finite value at index {}", name, i));
      }
    }
  }
  return Status::Ok();
}

}  // namespace fedlora
