// The settings every version records (aggregator/engine_config.h): a FlatBuffers table, and as
// `fedlora aggregator` flags (what older stores recorded, and what a what-if replay changes),
// which replay reads back with the same flag definitions `fedlora aggregator` parses
// (aggregator/engine_flags.h).
#include <gtest/gtest.h>

#include <algorithm>

#include "aggregator/engine_config.h"
#include "aggregator/engine_flags.h"
#include "aggregator/methods/as_lora.h"
#include "aggregator/methods/hetlora.h"
#include "aggregator/methods/registry.h"
#include "schema/codec.h"

namespace fedlora::aggregator {
namespace {


// Every field away from its default, with values that have no short decimal form.
EngineOptions Unusual() {
  EngineOptions o;
  o.mode = wire::Mode::Sync;
  o.method = *methods::MethodChoice::Named("as-lora");
  auto& as = o.method.params_as<methods::AsLoraParams>();
  as.warmup = 2;
  as.margin = 0.07f;
  as.beta = 0.85f + 1e-7f;
  as.score = "change";  // with client-level DP (below)
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
  o.own_rank_scale = true;
  o.client_dp.noise_multiplier = 1.1;
  o.client_dp.clip = 0.7;
  o.client_dp.budget = 4.2;
  o.dp_delta = 1e-6;
  return o;
}

TEST(EngineConfigTest, RecordedSettingsReadBackBitForBit) {
  const EngineOptions o = Unusual();
  const auto& as = o.method.params_as<methods::AsLoraParams>();
  const std::string text = EngineConfigFlags(o);
  auto back = ParseEngineConfig(SplitFlags(text));
  ASSERT_TRUE(back.ok()) << back.status().ToString() << "\n" << text;
  EXPECT_EQ(EngineConfigFlags(*back), text);
  EXPECT_EQ(back->fedasync_alpha, o.fedasync_alpha);
  EXPECT_EQ(back->server_lr, o.server_lr);
  EXPECT_EQ(back->server_optimizer.eps, o.server_optimizer.eps);
  EXPECT_EQ(back->method.name(), "as-lora");
  EXPECT_EQ(back->method.params_as<methods::AsLoraParams>().beta, as.beta);
  EXPECT_EQ(back->method.params_as<methods::AsLoraParams>().warmup, 2u);
  EXPECT_EQ(back->staleness.fn, aggregator::StalenessFn::kHinge);
  EXPECT_EQ(back->mode, wire::Mode::Sync);
  EXPECT_EQ(back->client_dp.budget, 4.2);
  EXPECT_TRUE(back->own_rank_scale);
  EXPECT_FALSE(back->client_dp.seed);  // the secret seed is never recorded
  // The defaults read back to themselves as well.
  auto defaults = ParseEngineConfig(SplitFlags(EngineConfigFlags(EngineOptions{})));
  ASSERT_TRUE(defaults.ok());
  EXPECT_EQ(EngineConfigFlags(*defaults), EngineConfigFlags(EngineOptions{}));
}

// Versions record the settings as a FlatBuffers table (schema/store.fbs EngineSettings): through
// a version record and back they are the same options, bit for bit, for every method.
TEST(EngineConfigTest, TheStoredSettingsTableReadsBackBitForBit) {
  std::vector<EngineOptions> cases = {Unusual(), EngineOptions{}};
  for (const methods::Method* m : methods::AllMethods()) {
    EngineOptions o;
    o.method = *methods::MethodChoice::Named(m->name());
    cases.push_back(o);
  }
  for (const EngineOptions& o : cases) {
    codec::VersionInfo info;
    info.adapter_id = "a";
    info.version = 3;
    info.settings = aggregator::EngineSettingsOf(o);
    const codec::Bytes record = codec::BuildVersionRecord(info);
    const codec::VersionInfo decoded =
        codec::DecodeVersionRecord(*flatbuffers::GetRoot<store::VersionRecord>(record.data()));
    ASSERT_TRUE(decoded.settings.has_value()) << o.method.name();
    EXPECT_TRUE(decoded.config.empty());
    auto back = RecordedEngineOptions(decoded);
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_EQ(EngineConfigFlags(*back), EngineConfigFlags(o)) << o.method.name();
    EXPECT_EQ(back->server_lr, o.server_lr);
    EXPECT_EQ(back->fedasync_alpha, o.fedasync_alpha);
    EXPECT_EQ(back->staleness.fn, o.staleness.fn);
    EXPECT_FALSE(back->client_dp.seed);
    auto text = aggregator::RecordedConfig(decoded);
    ASSERT_TRUE(text.ok());
    EXPECT_EQ(*text, EngineConfigFlags(o));
  }
  const auto& as = cases[0].method.params_as<methods::AsLoraParams>();
  auto back = aggregator::EngineOptionsOf(aggregator::EngineSettingsOf(cases[0]));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->method.params_as<methods::AsLoraParams>().beta, as.beta);
  EXPECT_EQ(back->method.params_as<methods::AsLoraParams>().score, "change");
}

// A record from before the table holds the flags text, and still reads; one older still has
// neither and says so; a table naming what this build does not know is refused, not guessed.
TEST(EngineConfigTest, OlderRecordsAndUnknownSettingsAreReadOrRefused) {
  codec::VersionInfo legacy;
  legacy.config = EngineConfigFlags(Unusual());
  auto back = RecordedEngineOptions(legacy);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(EngineConfigFlags(*back), legacy.config);
  EXPECT_EQ(RecordedEngineOptions(codec::VersionInfo{}).status().code(), Code::kNotFound);
  auto settings = aggregator::EngineSettingsOf(Unusual());
  settings.method = "fedfuture";
  EXPECT_EQ(aggregator::EngineOptionsOf(settings).status().code(), Code::kInvalidArgument);
  settings = aggregator::EngineSettingsOf(Unusual());
  settings.params.push_back({"no-such-knob", 1, std::nullopt});
  EXPECT_EQ(aggregator::EngineOptionsOf(settings).status().code(), Code::kInvalidArgument);
  settings = aggregator::EngineSettingsOf(Unusual());
  for (auto& p : settings.params) {
    if (p.choice) p.choice = "no-such-choice";
  }
  EXPECT_EQ(aggregator::EngineOptionsOf(settings).status().code(), Code::kInvalidArgument);
  settings = aggregator::EngineSettingsOf(Unusual());
  settings.staleness = "exponential";
  EXPECT_EQ(aggregator::EngineOptionsOf(settings).status().code(), Code::kInvalidArgument);
}

// Every flag is recorded: the engine's always, a method's hyperparameters with that method.
TEST(EngineConfigTest, EveryEngineFlagIsRecorded) {
  CLI::App app;
  EngineFlags flags;
  AddEngineFlags(&app, flags);
  std::vector<std::string> texts;
  for (const methods::Method* m : methods::AllMethods()) {
    EngineOptions o;
    o.method = *methods::MethodChoice::Named(m->name());
    texts.push_back(EngineConfigFlags(o));
  }
  for (const CLI::Option* opt : app.get_options()) {
    for (const std::string& name : opt->get_lnames()) {
      if (name == "client-dp-seed" || name == "help") continue;  // secret / not a setting
      const bool recorded = std::any_of(texts.begin(), texts.end(), [&](const std::string& text) {
        return text.find("--" + name + " ") != std::string::npos;
      });
      EXPECT_TRUE(recorded) << "--" << name << " is not recorded";
    }
  }
  // Another method's hyperparameters are not.
  EXPECT_EQ(texts[0].find("--upload-density"), std::string::npos) << texts[0];
}

// A hyperparameter added after versions first recorded their settings reads back as those
// versions ran: hetlora settings from before --hetlora-rule replay with the rule they had; a
// what-if that switches a store to hetlora gets today's default.
TEST(EngineConfigTest, RecordedSettingsThatPredateAHyperparameterKeepTheValueTheyRanWith) {
  auto old_as_lora = ParseEngineConfig(SplitFlags("--method as-lora --as-warmup 5"));
  ASSERT_TRUE(old_as_lora.ok()) << old_as_lora.status().ToString();
  EXPECT_EQ(old_as_lora->method.params_as<methods::AsLoraParams>().score, "change");
  const std::string old_hetlora = "--method hetlora --mode fedbuff --buffer-size 3";
  auto legacy = ParseEngineConfig(SplitFlags(old_hetlora));
  ASSERT_TRUE(legacy.ok()) << legacy.status().ToString();
  EXPECT_EQ(legacy->method.params_as<methods::HetLoraParams>().rule, "deltas");
  auto explicit_rule = ParseEngineConfig(SplitFlags(old_hetlora + " --hetlora-rule paper"));
  EXPECT_EQ(explicit_rule->method.params_as<methods::HetLoraParams>().rule, "paper");
  auto switched = ParseEngineConfig(SplitFlags("--method fedavg --buffer-size 3 --method hetlora"));
  ASSERT_TRUE(switched.ok()) << switched.status().ToString();
  EXPECT_EQ(switched->method.params_as<methods::HetLoraParams>().rule, "paper");
  EngineOptions today;
  today.method = *methods::MethodChoice::Named("hetlora");
  EXPECT_NE(EngineConfigFlags(today).find("--hetlora-rule paper"), std::string::npos);
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

TEST(EngineConfigTest, HingeWithoutASlopeGetsFedAsyncsAndRecordsIt) {
  auto hinge = ParseEngineConfig({"--staleness", "hinge"});
  ASSERT_TRUE(hinge.ok()) << hinge.status().ToString();
  EXPECT_DOUBLE_EQ(aggregator::StalenessWeight(hinge->staleness, 5), 1.0 / 11.0);
  EXPECT_NE(EngineConfigFlags(*hinge).find("--staleness-a 10 "), std::string::npos);
  auto poly = ParseEngineConfig({});
  EXPECT_NE(EngineConfigFlags(*poly).find("--staleness-a 0.5 "), std::string::npos);
  // Settings recorded with an explicit slope keep it.
  auto recorded = ParseEngineConfig({"--staleness", "hinge", "--staleness-a", "0.5"});
  EXPECT_DOUBLE_EQ(aggregator::StalenessA(recorded->staleness), 0.5);
}

TEST(EngineConfigTest, FlagFilesSplitAtWhitespaceWithComments) {
  EXPECT_EQ(SplitFlags("# what if K were 3\n--buffer-size 3\t--staleness hinge  # and hinge\n\n--max-staleness 4\n"),
            (std::vector<std::string>{"--buffer-size", "3", "--staleness", "hinge", "--max-staleness", "4"}));
}

}  // namespace
}  // namespace fedlora::aggregator
