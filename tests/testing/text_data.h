// The invariants every text Dataset (worker/data.h) holds, checked by the tests of its loaders.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>

#include "worker/data.h"

namespace fedlora::testing {

// offsets bracket the tokens in order, no images, a class name per label and labels in range.
inline void ExpectWellFormedText(const worker::Dataset& data) {
  ASSERT_TRUE(data.is_text());
  ASSERT_EQ(data.offsets.size(), data.size() + 1);
  EXPECT_EQ(data.offsets.front(), 0u);
  EXPECT_EQ(data.offsets.back(), data.tokens.size());
  EXPECT_TRUE(std::is_sorted(data.offsets.begin(), data.offsets.end()));
  EXPECT_TRUE(data.images.empty());
  EXPECT_EQ(data.class_names.size(), static_cast<size_t>(data.num_classes));
  for (uint8_t label : data.labels) EXPECT_LT(label, data.num_classes);
}

}  // namespace fedlora::testing
