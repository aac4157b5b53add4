// Every federation method by name. Adding a method is its own .h/.cc in this folder plus one
// line in registry.cc.
// Thread safety: the registry is built once, on first use, and never changes.
#pragma once

#include <span>
#include <string_view>

#include "aggregator/methods/method.h"

namespace fedlora::methods {

// In the order --help lists them.
std::span<const Method* const> AllMethods();
// Errors: kInvalidArgument listing the registered names.
Result<const Method*> FindMethod(std::string_view name);

}  // namespace fedlora::methods
