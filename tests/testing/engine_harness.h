// An aggregation Engine fed by hand: it remembers every committed state for FedAsync's and
// the product-space methods' base lookups.
#pragma once

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <optional>

#include "aggregator/engine.h"
#include "tests/testing/fixtures.h"

namespace fedlora::testing {

// The method registered under `name`, with its default hyperparameters.
inline methods::MethodChoice Choose(std::string_view name) {
  auto choice = methods::MethodChoice::Named(name);
  EXPECT_TRUE(choice.ok()) << choice.status().ToString();
  return choice.ok() ? *choice : methods::MethodChoice();
}

class EngineHarness {
 public:
  EngineHarness(aggregator::EngineOptions options, AdapterSpec spec, AdapterState initial) {
    versions_[0] = std::make_shared<const AdapterState>(initial);
    auto e = aggregator::Engine::Create(options, "default", std::move(spec), std::move(initial), 0, 0,
                                        [this](uint64_t v) -> Result<std::shared_ptr<const AdapterState>> {
                                          auto it = versions_.find(v);
                                          if (it == versions_.end()) return NotFound("no such version");
                                          return it->second;
                                        });
    EXPECT_TRUE(e.ok()) << e.status().ToString();
    engine_ = std::move(*e);
  }
  // SmallSpec() with FilledState(SmallSpec(), 1) unless given.
  explicit EngineHarness(aggregator::EngineOptions options, AdapterState initial = FilledState(SmallSpec(), 1.0f))
      : EngineHarness(std::move(options), SmallSpec(), std::move(initial)) {}

  // Consumes the next log record; returns the version it completed, if any.
  std::optional<codec::VersionInfo> Feed(const codec::Bytes& update) {
    auto r = engine_->Consume(engine_->next_seq(), AsUpdate(update));
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    if (r.ok() && *r) versions_[(*r)->version] = std::make_shared<const AdapterState>(engine_->state());
    return r.ok() ? *r : std::nullopt;
  }

  aggregator::Engine& engine() { return *engine_; }
  const AdapterState& version(uint64_t v) { return *versions_.at(v); }

 private:
  std::map<uint64_t, std::shared_ptr<const AdapterState>> versions_;
  std::unique_ptr<aggregator::Engine> engine_;
};

}  // namespace fedlora::testing
