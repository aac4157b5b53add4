// The method modules (aggregator/methods/): the registry, each method's hyperparameters, and
// the method state its server half hands workers at each version.
#include <gtest/gtest.h>

#include "aggregator/methods/flasc.h"
#include "aggregator/methods/hetlora.h"
#include "aggregator/methods/lora_a2.h"
#include "aggregator/methods/registry.h"
#include "aggregator/methods/sa_fedlora.h"
#include "tests/testing/samples.h"

namespace fedlora::methods {
namespace {

using testing::SmallSpec;

// A spec like SmallSpec of rank 8.
AdapterSpec RankEightSpec() {
  AdapterSpec spec = SmallSpec();
  spec.rank = 8;
  spec.tensors[0].shape = {8, 3};
  spec.tensors[1].shape = {4, 8};
  return spec;
}

MethodState StateAt(const MethodChoice& choice, uint64_t version) {
  const AdapterSpec spec = RankEightSpec();
  auto layout = LoraLayout::Of(spec);
  EXPECT_TRUE(layout.ok()) << layout.status().ToString();
  auto server = choice.method().Server(choice.params(), spec, *layout, {}, 0, {});
  EXPECT_TRUE(server.ok()) << server.status().ToString();
  return (*server)->StateAt(version);
}

TEST(MethodRegistryTest, EveryMethodIsFoundByItsNameAndUnknownNamesAreListed) {
  ASSERT_EQ(AllMethods().size(), 10u);
  for (const Method* m : AllMethods()) {
    auto found = FindMethod(m->name());
    ASSERT_TRUE(found.ok());
    EXPECT_EQ(*found, m);
    EXPECT_FALSE(m->summary().empty());
    auto choice = MethodChoice::Named(m->name());
    ASSERT_TRUE(choice.ok());
    EXPECT_EQ(StateAt(*choice, 0).method, m->name()) << m->name();
  }
  Status s = FindMethod("fedprox").status();
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.message().find("lora-a2"), std::string::npos) << s.message();
  EXPECT_EQ(MethodChoice().name(), "fedavg");
}

TEST(MethodParamsTest, FlagsPrintAndReadBackBitForBitAndBadValuesAreRefusedByName) {
  auto choice = MethodChoice::Named("flasc");
  ASSERT_TRUE(choice.ok());
  auto& p = choice->params_as<FlascParams>();
  p.upload_density = 0.1f + 1e-7f;
  p.decay_every = 7;
  const std::string text = ParamFlags(choice->params());
  EXPECT_EQ(text.find("--download-density 1 --upload-density "), 0u) << text;
  auto back = MethodChoice::Named("flasc");
  std::map<std::string, std::string, std::less<>> values;
  for (size_t pos = 0; pos < text.size();) {  // "--flag value ..." pairs
    const size_t space = text.find(' ', pos), next = text.find(' ', space + 1);
    values[text.substr(pos + 2, space - pos - 2)] = text.substr(space + 1, next - space - 1);
    pos = next == std::string::npos ? text.size() : next + 1;
  }
  ASSERT_TRUE(SetParams(back->params(), values).ok());
  EXPECT_EQ(back->params_as<FlascParams>().upload_density, p.upload_density);
  EXPECT_EQ(back->params_as<FlascParams>().decay_every, 7u);
  // Another method's flags are ignored; a bad number is refused with its flag.
  EXPECT_TRUE(SetParams(back->params(), {{"phase-length", "3"}}).ok());
  Status bad = SetParams(back->params(), {{"upload-density", "ten"}});
  EXPECT_EQ(bad.code(), Code::kInvalidArgument);
  EXPECT_NE(bad.message().find("--upload-density"), std::string::npos) << bad.message();
  auto het = MethodChoice::Named("hetlora");
  Status choice_bad = SetParams(het->params(), {{"hetlora-rule", "average"}});
  EXPECT_NE(choice_bad.message().find("paper, deltas"), std::string::npos) << choice_bad.message();
}

TEST(MethodParamsTest, InvalidSettingsAreRejectedByName) {
  auto flasc = MethodChoice::Named("flasc");
  flasc->params_as<FlascParams>().upload_density = 1.5f;
  EXPECT_NE(flasc->params().Validate().message().find("upload density"), std::string::npos);
  auto sa = MethodChoice::Named("sa-fedlora");
  sa->params_as<SaFedLoraParams>().cooling_until = 5;
  sa->params_as<SaFedLoraParams>().heating_until = 10;
  EXPECT_EQ(sa->params().Validate().code(), Code::kInvalidArgument);
  auto a2 = MethodChoice::Named("lora-a2");
  a2->params_as<LoraA2Params>().phase_length = 0;
  EXPECT_EQ(a2->params().Validate().code(), Code::kInvalidArgument);
}

TEST(SaFedLoraTest, BudgetHeatsThenCoolsAsACubicToTheMinimum) {
  SaFedLoraParams c;
  c.heating_until = 10;
  c.cooling_until = 30;
  c.min_budget = 2;
  EXPECT_EQ(AnnealedBudget(c, 8, 0), 8u);
  EXPECT_EQ(AnnealedBudget(c, 8, 9), 8u);
  EXPECT_EQ(AnnealedBudget(c, 8, 10), 8u);
  // Halfway: 2 + 6 * 0.5^3 = 2.75 -> 3.
  EXPECT_EQ(AnnealedBudget(c, 8, 20), 3u);
  EXPECT_EQ(AnnealedBudget(c, 8, 30), 2u);
  EXPECT_EQ(AnnealedBudget(c, 8, 1000), 2u);
  uint32_t last = 8;
  for (uint64_t v = 0; v < 40; ++v) {
    EXPECT_LE(AnnealedBudget(c, 8, v), last);
    last = AnnealedBudget(c, 8, v);
  }
  // The proximal term only in the initiating stage.
  auto choice = MethodChoice::Named("sa-fedlora");
  choice->params_as<SaFedLoraParams>().initiating_versions = 5;
  EXPECT_GT(StateAt(*choice, 4).proximal_mu, 0.0f);
  EXPECT_EQ(StateAt(*choice, 5).proximal_mu, 0.0f);
}

TEST(LoraA2Test, PhaseFlipsEveryPhaseLengthStartingWithB) {
  auto choice = MethodChoice::Named("lora-a2");
  choice->params_as<LoraA2Params>().phase_length = 3;
  EXPECT_EQ(StateAt(*choice, 0).phase, 0);
  EXPECT_EQ(StateAt(*choice, 2).phase, 0);
  EXPECT_EQ(StateAt(*choice, 3).phase, 1);
  EXPECT_EQ(StateAt(*choice, 6).phase, 0);
  EXPECT_EQ(StateAt(*choice, 0).rank_budget, 1u);
}

TEST(FlascTest, DensitiesDecayByVersion) {
  auto choice = MethodChoice::Named("flasc");
  auto& c = choice->params_as<FlascParams>();
  c.upload_density = 0.2f;
  c.download_density = 0.5f;
  c.density_decay = 0.5f;
  c.decay_every = 10;
  EXPECT_FLOAT_EQ(StateAt(*choice, 9).upload_density, 0.2f);
  EXPECT_FLOAT_EQ(StateAt(*choice, 10).upload_density, 0.1f);
  EXPECT_FLOAT_EQ(StateAt(*choice, 25).download_density, 0.125f);
  EXPECT_FLOAT_EQ(StateAt(*choice, 25).density_scale, 0.25f);
}

TEST(HetLoraTest, ThePaperRuleHandsWorkersItsPruningSettingsAndTheDeltasRuleNone) {
  auto paper = MethodChoice::Named("hetlora");
  paper->params_as<HetLoraParams>().prune_lambda = 0.5f;
  EXPECT_FLOAT_EQ(StateAt(*paper, 3).prune_lambda, 0.5f);
  EXPECT_FLOAT_EQ(StateAt(*paper, 3).prune_gamma, 0.9f);
  auto deltas = MethodChoice::Named("hetlora");
  deltas->params_as<HetLoraParams>().rule = "deltas";
  EXPECT_EQ(StateAt(*deltas, 3).prune_lambda, 0.0f);
  paper->params_as<HetLoraParams>().prune_gamma = 1.0f;
  EXPECT_EQ(paper->params().Validate().code(), Code::kInvalidArgument);
}

TEST(LoraLayoutTest, PairsFactorsInSpecOrderAndRefusesAnUnpairedOrMisrankedFactor) {
  auto layout = LoraLayout::Of(RankEightSpec());
  ASSERT_TRUE(layout.ok());
  ASSERT_EQ(layout->modules().size(), 1u);
  EXPECT_EQ(layout->modules()[0].name, "m");
  EXPECT_EQ(layout->modules()[0].rows, 4u);
  EXPECT_EQ(layout->modules()[0].cols, 3u);
  EXPECT_EQ(layout->module_of(2), -1);
  AdapterSpec lone = RankEightSpec();
  lone.tensors.erase(lone.tensors.begin() + 1);
  EXPECT_NE(LoraLayout::Of(lone).status().message().find("lacks one of its factors"), std::string::npos);
  AdapterSpec misranked = RankEightSpec();
  misranked.tensors[0].shape = {4, 3};
  EXPECT_NE(LoraLayout::Of(misranked).status().message().find("has rank 4"), std::string::npos);
}

}  // namespace
}  // namespace fedlora::methods
