// Where a store directory keeps its parts: the update log and the adapter store.
#pragma once

#include <string>

namespace fedlora::storage {

struct StoreLayout {
  std::string dir = "fedlora-data";
  std::string log() const { return dir + "/log"; }
  std::string adapters() const { return dir + "/adapters"; }
  // Without CURVE, the secret the broker asks of aggregators unless given another (mode 0600).
  std::string aggregator_secret() const { return dir + "/aggregator.secret"; }
};

}  // namespace fedlora::storage
