#include "aggregator/methods/registry.h"

#include <fmt/format.h>

#include <vector>

// One line per method, in the order --help lists them: NAME stands for `const Method&
// NAMEMethod()`, defined in the method's own .cc file.
#define FEDLORA_METHODS(X) \
  X(FedAvg)                \
  X(Ffa)                   \
  X(Flasc)                 \
  X(LoraA2)                \
  X(SaFedLora)             \
  X(HetLora)               \
  X(Flora)                 \
  X(FedSa)                 \
  X(AsLora)                \
  X(Full)

namespace fedlora::methods {

#define FEDLORA_DECLARE(name) const Method& name##Method();
FEDLORA_METHODS(FEDLORA_DECLARE)
#undef FEDLORA_DECLARE

std::span<const Method* const> AllMethods() {
#define FEDLORA_ENTRY(name) &name##Method(),
  static const std::vector<const Method*> methods = {FEDLORA_METHODS(FEDLORA_ENTRY)};
#undef FEDLORA_ENTRY
  return methods;
}

Result<const Method*> FindMethod(std::string_view name) {
  for (const Method* m : AllMethods()) {
    if (m->name() == name) return m;
  }
  std::vector<std::string_view> known;
  for (const Method* m : AllMethods()) known.push_back(m->name());
  return InvalidArgument(fmt::format("unknown method '{}' (available: {})", name, fmt::join(known, ", ")));
}

}  // namespace fedlora::methods
