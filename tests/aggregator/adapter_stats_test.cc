// What a version holds (aggregator/methods/adapter_stats.h), on a module small enough to work
// out by hand: dW = (alpha / r) B A with B = [1, 0]^T, A = [3, 4] is [[3, 4], [0, 0]].
#include "aggregator/methods/adapter_stats.h"

#include <gtest/gtest.h>

namespace fedlora::methods {
namespace {

AdapterSpec Spec() {
  AdapterSpec spec;
  spec.rank = 1;
  spec.alpha = 1;
  spec.tensors = {{"m.lora_A", {1, 2}, TensorRole::kLoraA},
                  {"m.lora_B", {2, 1}, TensorRole::kLoraB},
                  {"head.weight", {2}, TensorRole::kDense}};
  return spec;
}

AdapterState State(float scale, std::vector<float> head) {
  return {{{"m.lora_A", {1, 2}, {3 * scale, 4 * scale}}, {"m.lora_B", {2, 1}, {1, 0}}, {"head.weight", {2}, head}}};
}

TEST(AdapterStatsTest, NormsSpectraSparsityAndChangeOfAModuleWorkedOutByHand) {
  const AdapterState one = State(1, {0, 2}), two = State(2, {0, 0});
  const AdapterStats alone = Describe(Spec(), one);
  ASSERT_EQ(alone.modules.size(), 1u);
  const ModuleStats& m = alone.modules[0];
  EXPECT_EQ(m.module, "m");
  EXPECT_EQ(m.rows, 2u);
  EXPECT_EQ(m.cols, 2u);
  EXPECT_EQ(m.rank, 1u);
  EXPECT_NEAR(m.norm, 5.0, 1e-9);
  ASSERT_EQ(m.singular_values.size(), 1u);
  EXPECT_NEAR(m.singular_values[0], 5.0, 1e-9);
  EXPECT_NEAR(m.effective_rank, 1.0, 1e-9);
  EXPECT_DOUBLE_EQ(m.zeros_b, 0.5);
  EXPECT_DOUBLE_EQ(m.zeros_a, 0.0);
  EXPECT_FALSE(m.change.has_value());
  ASSERT_EQ(alone.dense.size(), 1u);
  EXPECT_DOUBLE_EQ(alone.dense[0].norm, 2.0);
  EXPECT_DOUBLE_EQ(alone.dense[0].zeros, 0.5);
  // Against a version with twice the update: dW' - dW = dW, and they point the same way.
  const AdapterStats moved = Describe(Spec(), two, &one);
  ASSERT_TRUE(moved.modules[0].change.has_value());
  EXPECT_NEAR(*moved.modules[0].change, 5.0, 1e-9);
  ASSERT_TRUE(moved.modules[0].cosine.has_value());
  EXPECT_NEAR(*moved.modules[0].cosine, 1.0, 1e-9);
  EXPECT_DOUBLE_EQ(*moved.dense[0].change, 2.0);
}

}  // namespace
}  // namespace fedlora::methods
