#include "storage/peft.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "tests/testing/fixtures.h"

namespace fedlora::storage {
namespace {

// A hand-built safetensors file around `header` with `data_bytes` zero bytes of data.
std::string File(const nlohmann::json& header, size_t data_bytes) {
  const std::string json = header.dump();
  std::string out(8, '\0');
  const uint64_t n = json.size();
  std::memcpy(out.data(), &n, 8);
  return out + json + std::string(data_bytes, '\0');
}

TEST(Safetensors, RoundTripsTensorsAndMetadataWithAnAlignedDataStart) {
  const AdapterState s = testing::FilledState(testing::SmallSpec(), 0.5f);
  const std::string bytes = EncodeSafetensors({{"x", &s.tensors[0]}, {"y", &s.tensors[3]}}, {{"k", "v"}});
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ((8 + n) % 8, 0u);
  auto file = DecodeSafetensors(bytes);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  ASSERT_EQ(file->tensors.size(), 2u);
  EXPECT_EQ(file->tensors[0].shape, s.tensors[0].shape);
  EXPECT_EQ(file->tensors[0].values, s.tensors[0].values);
  EXPECT_EQ(file->tensors[1].values, s.tensors[3].values);
  EXPECT_EQ(file->metadata.at("k"), "v");
}

TEST(Safetensors, RefusesMalformedFiles) {
  const nlohmann::json two = {{"a", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {0, 8}}}},
                              {"b", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {8, 16}}}}};
  EXPECT_TRUE(DecodeSafetensors(File(two, 16)).ok());
  EXPECT_FALSE(DecodeSafetensors(File(two, 24)).ok()) << "unused trailing bytes";
  EXPECT_FALSE(DecodeSafetensors(File(two, 12)).ok()) << "offsets past the data";
  nlohmann::json overlap = two;
  overlap["b"]["data_offsets"] = {4, 12};
  EXPECT_FALSE(DecodeSafetensors(File(overlap, 16)).ok()) << "overlap";
  nlohmann::json half = two;
  half["a"]["dtype"] = "F16";  // a well-formed F16 tensor: adapters are F32 only
  half["a"]["data_offsets"] = {0, 4};
  half["b"]["data_offsets"] = {4, 12};
  auto r = DecodeSafetensors(File(half, 12));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("F32"), std::string::npos);
  nlohmann::json wrong_size = two;
  wrong_size["a"]["shape"] = {3};
  EXPECT_FALSE(DecodeSafetensors(File(wrong_size, 16)).ok()) << "shape and offsets disagree";
  std::string huge(8, '\xff');
  EXPECT_FALSE(DecodeSafetensors(huge).ok()) << "header length beyond the file";
  EXPECT_FALSE(DecodeSafetensors("abc").ok());
}

TEST(Peft, WritesAndReadsBackTheSameAdapterAndRefusesFullModels) {
  testing::TempDir dir;
  PeftAdapter a{testing::SmallSpec(), testing::FilledState(testing::SmallSpec(), 0.25f), {{"fedlora.version", "3"}}, {}};
  ASSERT_TRUE(WritePeft(dir.path("p"), a).ok());
  EXPECT_EQ(WritePeft(dir.path("p"), a).code(), Code::kAlreadyExists);
  auto back = ReadPeft(dir.path("p"));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  ASSERT_EQ(back->spec.tensors.size(), a.spec.tensors.size());
  for (size_t i = 0; i < a.spec.tensors.size(); ++i) {
    EXPECT_EQ(back->spec.tensors[i].name, a.spec.tensors[i].name);
    EXPECT_EQ(back->spec.tensors[i].role, a.spec.tensors[i].role);
    EXPECT_EQ(back->state.tensors[i].values, a.state.tensors[i].values);
  }
  EXPECT_EQ(back->spec.rank, a.spec.rank);
  EXPECT_EQ(back->spec.alpha, a.spec.alpha);
  EXPECT_EQ(back->metadata.at("fedlora.version"), "3");

  PeftAdapter full = a;
  full.spec.rank = 0;
  for (auto& t : full.spec.tensors) t.role = TensorRole::kDense;
  EXPECT_EQ(WritePeft(dir.path("full"), full).code(), Code::kFailedPrecondition);
}

// flora's residual goes out merged: a module with a non-zero residual is its exact product
// B A + R at its own rank (rank_pattern), its alpha scaled so that PEFT's alpha_m / r_m is the
// adapter's alpha / r; a module whose residual is zero goes out as its factors. fedlora does not
// import per-module ranks, and says so.
TEST(Peft, MergesEachNonZeroResidualIntoItsModuleAtItsOwnRank) {
  AdapterSpec spec;
  spec.model = "test";
  spec.rank = 2;
  spec.alpha = 4;
  spec.target_modules = {"m", "n"};
  spec.tensors = {{"m.lora_A", {2, 5}, TensorRole::kLoraA},    {"m.lora_B", {6, 2}, TensorRole::kLoraB},
                  {"m.lora_residual", {6, 5}, TensorRole::kLoraResidual},
                  {"n.lora_A", {2, 3}, TensorRole::kLoraA},    {"n.lora_B", {4, 2}, TensorRole::kLoraB},
                  {"n.lora_residual", {4, 3}, TensorRole::kLoraResidual}};
  AdapterState state;
  uint32_t seed = 1;
  for (const auto& t : spec.tensors) {
    DenseTensor d{t.name, t.shape, std::vector<float>(t.numel())};
    for (float& v : d.values) v = t.name == "n.lora_residual" ? 0.0f : static_cast<float>((seed = seed * 1103515245u + 12345u) >> 16) / 65536.0f - 0.5f;
    state.tensors.push_back(std::move(d));
  }
  testing::TempDir dir;
  ASSERT_TRUE(WritePeft(dir.path("p"), {spec, state, {}, {}}).ok());
  std::ifstream in(dir.path("p") + "/adapter_config.json");
  const nlohmann::json config = nlohmann::json::parse(in);
  EXPECT_EQ(config["rank_pattern"], (nlohmann::json{{"m", 5}}));
  EXPECT_EQ(config["alpha_pattern"], (nlohmann::json{{"m", 10.0}}));
  std::ifstream wf(dir.path("p") + "/adapter_model.safetensors", std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(wf)), std::istreambuf_iterator<char>());
  auto file = DecodeSafetensors(bytes);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  ASSERT_EQ(file->tensors.size(), 4u);  // no residual goes out on its own
  std::map<std::string, const DenseTensor*> by;
  for (const auto& t : file->tensors) by[t.name] = &t;
  const DenseTensor& am = *by.at("base_model.model.m.lora_A.weight");
  const DenseTensor& bm = *by.at("base_model.model.m.lora_B.weight");
  ASSERT_EQ(am.shape, (std::vector<uint32_t>{5, 5}));
  ASSERT_EQ(bm.shape, (std::vector<uint32_t>{6, 5}));
  for (size_t i = 0; i < 6; ++i) {
    for (size_t j = 0; j < 5; ++j) {
      double want = state.tensors[2].values[i * 5 + j], got = 0;
      for (size_t l = 0; l < 2; ++l) want += double{state.tensors[1].values[i * 2 + l]} * state.tensors[0].values[l * 5 + j];
      for (size_t l = 0; l < 5; ++l) got += double{bm.values[i * 5 + l]} * am.values[l * 5 + j];
      EXPECT_NEAR((10.0 / 5) * got, (4.0 / 2) * want, 1e-5) << i << "," << j;
    }
  }
  EXPECT_EQ(by.at("base_model.model.n.lora_A.weight")->values, state.tensors[3].values);
  EXPECT_EQ(by.at("base_model.model.n.lora_B.weight")->values, state.tensors[4].values);
  auto back = ReadPeft(dir.path("p"));
  ASSERT_FALSE(back.ok());
  EXPECT_EQ(back.status().code(), Code::kUnimplemented);
  EXPECT_NE(back.status().message().find("rank_pattern"), std::string::npos) << back.status().ToString();
}

// A language model's adapter goes out as PEFT's CAUSAL_LM with its base, and one PEFT wrote
// (no fedlora metadata, keys in any order) comes back in fedlora's model order: layer by
// layer (10 after 9), PEFT's module order within a layer, A before B.
TEST(Peft, LanguageModelAdaptersAreCausalLmAndComeBackInModelOrder) {
  testing::TempDir dir;
  AdapterSpec spec;
  spec.model = "LlamaForCausalLM";
  spec.rank = 2;
  spec.alpha = 4;
  spec.target_modules = {"q_proj", "down_proj"};
  for (int layer : {0, 9, 10}) {
    for (const char* m : {"self_attn.q_proj", "mlp.down_proj"}) {
      const std::string module = "model.layers." + std::to_string(layer) + "." + m;
      spec.tensors.push_back({module + ".lora_A", {2, 8}, TensorRole::kLoraA});
      spec.tensors.push_back({module + ".lora_B", {8, 2}, TensorRole::kLoraB});
    }
  }
  const AdapterState state = testing::FilledState(spec, 0.5f);
  PeftAdapter a{spec, state, {}, "/models/tiny-llama"};
  ASSERT_TRUE(WritePeft(dir.path("lm"), a).ok());
  std::ifstream in(dir.path("lm") + "/adapter_config.json");
  const nlohmann::json config = nlohmann::json::parse(in);
  EXPECT_EQ(config["task_type"], "CAUSAL_LM");
  EXPECT_EQ(config["base_model_name_or_path"], "/models/tiny-llama");
  EXPECT_EQ(config["target_modules"], nlohmann::json({"q_proj", "down_proj"}));
  auto back = ReadPeft(dir.path("lm"));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->base_model, "/models/tiny-llama");
  EXPECT_EQ(back->spec.model, "LlamaForCausalLM");

  // The same tensors as PEFT writes them: sorted keys, no metadata.
  std::vector<std::pair<std::string, const DenseTensor*>> sorted;
  for (size_t i = 0; i < spec.tensors.size(); ++i) {
    sorted.emplace_back("base_model.model." + spec.tensors[i].name + ".weight", &state.tensors[i]);
  }
  std::sort(sorted.begin(), sorted.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
  const auto first = [&](const std::string& layer) {
    return std::find_if(sorted.begin(), sorted.end(), [&](const auto& e) { return e.first.find(layer) != std::string::npos; });
  };
  ASSERT_LT(first("layers.10."), first("layers.9.")) << "the file's order puts layer 10 before 9";
  std::filesystem::create_directories(dir.path("foreign"));
  std::ofstream(dir.path("foreign") + "/adapter_model.safetensors", std::ios::binary) << EncodeSafetensors(sorted, {});
  std::ofstream(dir.path("foreign") + "/adapter_config.json") << config.dump();
  auto foreign = ReadPeft(dir.path("foreign"));
  ASSERT_TRUE(foreign.ok()) << foreign.status().ToString();
  EXPECT_EQ(foreign->spec.model, "unknown");
  ASSERT_EQ(foreign->spec.tensors.size(), spec.tensors.size());
  for (size_t i = 0; i < spec.tensors.size(); ++i) {
    EXPECT_EQ(foreign->spec.tensors[i].name, spec.tensors[i].name) << i;
    EXPECT_EQ(foreign->state.tensors[i].values, state.tensors[i].values) << i;
  }
}

}  // namespace
}  // namespace fedlora::storage
