#include "schema/adapter.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace fedlora {

size_t NumElements(const std::vector<uint32_t>& shape) {
  size_t n = 1;
  for (uint32_t d : shape) n *= d;
  return n;
}

size_t TensorSpec::numel() const { return NumElements(shape); }

size_t AdapterSpec::numel() const {
  size_t n = 0;
  for (const auto& t : tensors) n += t.numel();
  return n;
}

int AdapterSpec::Find(std::string_view name, size_t hint) const {
  if (hint < tensors.size() && tensors[hint].name == name) return static_cast<int>(hint);
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (tensors[i].name == name) return static_cast<int>(i);
  }
  return -1;
}

size_t AdapterState::numel() const {
  size_t n = 0;
  for (const auto& t : tensors) n += t.values.size();
  return n;
}

bool AdapterSpec::has_residuals() const {
  for (const auto& t : tensors) {
    if (t.role == TensorRole::kLoraResidual) return true;
  }
  return false;
}

Status CheckStateMatchesSpec(const AdapterSpec& spec, const AdapterState& state) {
  if (spec.tensors.size() != state.tensors.size()) {
    return InvalidArgument(fmt::format("adapter has {} tensors, spec has {}", state.tensors.size(),
                                       spec.tensors.size()));
  }
  for (size_t i = 0; i < spec.tensors.size(); ++i) {
    const auto& s = spec.tensors[i];
    const auto& t = state.tensors[i];
    if (s.name != t.name) {
      return InvalidArgument(fmt::format("tensor {} is '{}', spec expects '{}'", i, t.name, s.name));
    }
    if (s.shape != t.shape) {
      return InvalidArgument(fmt::format("tensor '{}' has shape [{}], spec expects [{}]", t.name,
                                         fmt::join(t.shape, ","), fmt::join(s.shape, ",")));
    }
    if (t.values.size() != s.numel()) {
      return InvalidArgument(fmt::format("tensor '{}' has {} values, shape needs {}", t.name,
                                         t.values.size(), s.numel()));
    }
  }
  return Status::Ok();
}

}  // namespace fedlora
