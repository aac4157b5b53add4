// The broker's logger ("broker"), shared by its sources.
#pragma once

#include <spdlog/spdlog.h>

#include <memory>

namespace fedlora::broker {

inline std::shared_ptr<spdlog::logger> Log() {
  static auto logger = [] {
    auto l = spdlog::get("broker");
    return l ? l : spdlog::default_logger()->clone("broker");
  }();
  return logger;
}

}  // namespace fedlora::broker
