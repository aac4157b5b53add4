// The settings every version records (aggregator/engine_config.h) are `fedlora aggregator`
// flags; replay reads them back with the command line's own parser (ops/flags.h).
#include <gtest/gtest.h>

#include "aggregator/engine_config.h"
#include "ops/flags.h"

namespace fedlora::ops {
namespace {

using aggregator::EngineConfigFlags;
using aggregator::EngineOptions;

// Every field away from its default, with values that have no short decimal form.
EngineOptions Unusual() {
  EngineOptions o;
  o.mode = wire::Mode::Sync;
  o.method.method = Method::kAsLora;
  o.method.download_density = 0.37f;
  o.method.upload_density = 0.123456789f;
  o.method.density_decay = 0.9f;
  o.method.decay_every = 7;
  o.method.phase_length = 3;
  o.method.a2_rank_budget = 2;
  o.method.a_lr_ratio = 1.0f / 3.0f;
  o.method.initiating_versions = 4;
  o.method.proximal_mu = 0.0125f;
  o.method.heating_until = 9;
  o.method.cooling_until = 33;
  o.method.min_budget = 3;
  o.method.max_budget = 6;
  o.method.probe_batches = 5;
  o.method.as_warmup = 2;
  o.method.as_margin = 0.07f;
  o.method.as_beta = 0.85f;
  o.buffer_size = 11;
  o.fedasync_alpha = 0.1 + 0.2;
  o.server_lr = 1.0 / 3.0;
  o.server_optimizer.kind = aggregator::ServerOptimizerKind::kAdamW;
  o.server_optimizer.beta1 = 0.8;
  o.server_optimizer.beta2 = 0.995;
  o.server_optimizer.eps = 3e-9;
  o.server_optimizer.weight_decay = 0.02;
  o.staleness = {aggregator::StalenessFn::kHinge, 7.5, 3, 12};
  o.round_size = 5;
  o.client_dp.noise_multiplier = 1.1;
  o.client_dp.clip = 0.7;
  o.client_dp.budget = 4.2;
  o.dp_delta = 1e-6;
  return o;
}

TEST(EngineConfigTest, RecordedSettingsReadBackBitForBit) {
  const EngineOptions o = Unusual();
  const std::string text = EngineConfigFlags(o);
  auto back = ParseEngineConfig(SplitFlags(text));
  ASSERT_TRUE(back.ok()) << back.status().ToString() << "\n" << text;
  EXPECT_EQ(EngineConfigFlags(*back), text);
  EXPECT_EQ(back->fedasync_alpha, o.fedasync_alpha);
  EXPECT_EQ(back->server_lr, o.server_lr);
  EXPECT_EQ(back->server_optimizer.eps, o.server_optimizer.eps);
  EXPECT_EQ(back->method.a_lr_ratio, o.method.a_lr_ratio);
  EXPECT_EQ(back->method.upload_density, o.method.upload_density);
  EXPECT_EQ(back->method.max_budget, 6u);
  EXPECT_EQ(back->staleness.fn, aggregator::StalenessFn::kHinge);
  EXPECT_EQ(back->mode, wire::Mode::Sync);
  EXPECT_EQ(back->client_dp.budget, 4.2);
  EXPECT_FALSE(back->client_dp.seed);  // the secret seed is never recorded
  // The defaults read back to themselves as well.
  auto defaults = ParseEngineConfig(SplitFlags(EngineConfigFlags(EngineOptions{})));
  ASSERT_TRUE(defaults.ok());
  EXPECT_EQ(EngineConfigFlags(*defaults), EngineConfigFlags(EngineOptions{}));
}

TEST(EngineConfigTest, EveryEngineFlagIsRecorded) {
  CLI::App app;
  EngineFlags flags;
  AddEngineFlags(&app, flags);
  const std::string text = EngineConfigFlags(EngineOptions{});
  for (const CLI::Option* opt : app.get_options()) {
    for (const std::string& name : opt->get_lnames()) {
      if (name == "client-dp-seed" || name == "help") continue;  // secret / not a setting
      EXPECT_NE(text.find("--" + name + " "), std::string::npos) << "--" << name << " is not recorded";
    }
  }
}

TEST(EngineConfigTest, LaterFlagsOverrideRecordedOnesAndBadOnesAreRefused) {
  auto what_if = ParseEngineConfig(SplitFlags(EngineConfigFlags(EngineOptions{}) + " --buffer-size 3 -K 4"));
  ASSERT_TRUE(what_if.ok()) << what_if.status().ToString();
  EXPECT_EQ(what_if->buffer_size, 4u);
  auto unknown = ParseEngineConfig({"--buffer-sise", "3"});
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().code(), Code::kInvalidArgument);
  EXPECT_FALSE(ParseEngineConfig({"--method", "fedprox"}).ok());
  EXPECT_FALSE(ParseEngineConfig({"--buffer-size", "0"}).ok());
}

TEST(EngineConfigTest, FlagFilesSplitAtWhitespaceWithComments) {
  EXPECT_EQ(SplitFlags("# what if K were 3\n--buffer-size 3\t--staleness hinge  # and hinge\n\n--max-staleness 4\n"),
            (std::vector<std::string>{"--buffer-size", "3", "--staleness", "hinge", "--max-staleness", "4"}));
}

}  // namespace
}  // namespace fedlora::ops
