// The Llama-family decoder against an independent reference: small random checkpoints in the
// Hugging Face layout written by tests/lm/reference/hf_checkpoint.py (Debian's python3-torch),
// logits from tests/lm/reference/llama_reference.py (a forward written in Python from the
// architecture's definition), and PEFT adapters merged into the base by that reference. Also
// every bad checkpoint refused with a clear error.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "storage/peft.h"
#include "schema/safetensors.h"
#include "tests/testing/fixtures.h"
#include "tests/lm/lm_testing.h"
#include "tests/testing/python.h"
#include "worker/lm/checkpoint.h"
#include "worker/lm/llama.h"

namespace fedlora::worker::lm {
namespace {

namespace fs = std::filesystem;
using testing::ReferenceTool;
using testing::RunPython;

const std::vector<std::vector<int64_t>> kPrompts = {{1, 5, 9, 200, 17, 3}, {7}, {250, 4, 4, 4, 81, 66, 12, 19, 2, 101}};

// hf_checkpoint.py make with these extra arguments; returns the directory.
std::string MakeCheckpoint(const testing::TempDir& dir, const std::string& name, std::vector<std::string> args) {
  const std::string out = dir.path(name);
  std::vector<std::string> all = {ReferenceTool("hf_checkpoint.py"), "make", "--out", out, "--vocab", "256",
                                  "--seed", "7"};
  all.insert(all.end(), args.begin(), args.end());
  auto r = RunPython(all);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return out;
}

std::string IdsArg(const std::vector<std::vector<int64_t>>& prompts) {
  std::string s;
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (i) s += ';';
    for (size_t j = 0; j < prompts[i].size(); ++j) s += (j ? " " : "") + std::to_string(prompts[i][j]);
  }
  return s;
}

// The reference's logits of each prompt, [T_i, V].
std::vector<torch::Tensor> ReferenceLogits(const testing::TempDir& dir, const std::string& model) {
  const std::string out = dir.path("logits-" + fs::path(model).filename().string() + ".safetensors");
  auto r = RunPython({ReferenceTool("llama_reference.py"), "logits", "--model", model, "--ids", IdsArg(kPrompts), "--out", out});
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  auto file = safetensors::MappedFile::Open(out);
  EXPECT_TRUE(file.ok()) << file.status().ToString();
  if (!file.ok()) return {};
  auto header = safetensors::ParseHeader(file->bytes());
  EXPECT_TRUE(header.ok()) << header.status().ToString();
  std::vector<torch::Tensor> logits;
  for (size_t i = 0; i < kPrompts.size() && header.ok(); ++i) {
    const safetensors::Entry* e = header->Find("logits." + std::to_string(i));
    EXPECT_NE(e, nullptr);
    if (e == nullptr) break;
    torch::Tensor t = torch::empty({static_cast<int64_t>(e->shape[0]), static_cast<int64_t>(e->shape[1])});
    EXPECT_TRUE(safetensors::ToFloat(e->dtype, file->bytes().data() + header->data_start + e->begin, e->numel(),
                                     t.data_ptr<float>()).ok());
    logits.push_back(t);
  }
  return logits;
}

std::unique_ptr<LlamaModel> Load(const std::string& dir, LlamaOptions options = {}) {
  return LoadTestModel(dir, options);
}


// fedlora's logits of every prompt, alone and as one left-padded batch, against the reference's.
void ExpectMatchesReference(LlamaModel& model, const std::vector<torch::Tensor>& want, const std::string& what) {
  torch::NoGradGuard no_grad;
  ASSERT_EQ(want.size(), kPrompts.size()) << what;
  int64_t longest = 0;
  for (const auto& p : kPrompts) longest = std::max<int64_t>(longest, static_cast<int64_t>(p.size()));
  torch::Tensor ids = torch::zeros({static_cast<int64_t>(kPrompts.size()), longest}, torch::kLong);
  torch::Tensor mask = torch::zeros_like(ids);
  for (size_t i = 0; i < kPrompts.size(); ++i) {
    const int64_t t = static_cast<int64_t>(kPrompts[i].size());
    const torch::Tensor row = torch::tensor(kPrompts[i], torch::kLong);
    const torch::Tensor alone = model.Forward(row.unsqueeze(0))[0];
    ASSERT_EQ(alone.sizes(), want[i].sizes()) << what;
    EXPECT_LT(MaxDiff(alone, want[i]), 1e-4) << what << ", prompt " << i;
    ids[static_cast<int64_t>(i)].narrow(0, longest - t, t).copy_(row);
    mask[static_cast<int64_t>(i)].narrow(0, longest - t, t).fill_(1);
  }
  const torch::Tensor batch = model.Forward(ids, mask);
  for (size_t i = 0; i < kPrompts.size(); ++i) {
    const int64_t t = static_cast<int64_t>(kPrompts[i].size());
    EXPECT_LT(MaxDiff(batch[static_cast<int64_t>(i)].narrow(0, longest - t, t), want[i]), 1e-4)
        << what << ", prompt " << i << " left-padded in a batch";
  }
}

TEST(LlamaTest, LogitsMatchTheIndependentReferenceForEachArchitecture) {
  testing::TempDir dir;
  struct Case {
    std::string name;
    std::vector<std::string> args;
  };
  const std::vector<Case> cases = {
      {"llama-gqa-untied", {"--arch", "llama", "--hidden", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2",
                            "--intermediate", "96", "--tie", "0", "--dtype", "F32"}},
      {"qwen2-tied-bias", {"--arch", "qwen2", "--hidden", "48", "--layers", "2", "--heads", "6", "--kv-heads", "2",
                           "--intermediate", "80", "--tie", "1", "--dtype", "F32"}},
      {"mistral-window", {"--arch", "mistral", "--hidden", "64", "--layers", "2", "--heads", "4", "--kv-heads", "4",
                          "--intermediate", "64", "--tie", "0", "--dtype", "F32", "--sliding-window", "4"}},
      {"llama-sharded-headdim", {"--arch", "llama", "--hidden", "32", "--layers", "3", "--heads", "4", "--kv-heads", "1",
                                 "--intermediate", "64", "--tie", "1", "--dtype", "F32", "--head-dim", "16", "--shards",
                                 "3", "--rope-theta", "500000"}},
  };
  for (const auto& c : cases) {
    const std::string ckpt = MakeCheckpoint(dir, c.name, c.args);
    auto model = Load(ckpt);
    ASSERT_NE(model, nullptr) << c.name;
    ExpectMatchesReference(*model, ReferenceLogits(dir, ckpt), c.name);
  }
}

TEST(LlamaTest, HalfPrecisionFilesLoadToTheirF32OriginalsRounded) {
  testing::TempDir dir;
  const std::string f32 = MakeCheckpoint(dir, "f32", {"--arch", "llama", "--hidden", "32", "--layers", "1", "--heads", "2",
                                                      "--kv-heads", "1", "--intermediate", "48", "--tie", "0", "--dtype", "F32"});
  auto original = Checkpoint::Open(f32);
  ASSERT_TRUE(original.ok()) << original.status().ToString();
  for (const auto& [dtype, precision] : {std::pair<std::string, double>{"F16", 0x1.0p-11}, {"BF16", 0x1.0p-8}}) {
    const std::string half = dir.path(dtype);
    auto r = RunPython({ReferenceTool("hf_checkpoint.py"), "convert", "--in", f32, "--out", half, "--dtype", dtype});
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    auto converted = Checkpoint::Open(half);
    ASSERT_TRUE(converted.ok()) << converted.status().ToString();
    for (const auto& [name, shape] : ExpectedWeights((*original)->config())) {
      const WeightView* a = (*original)->Find(name);
      const WeightView* b = (*converted)->Find(name);
      ASSERT_TRUE(a && b) << name;
      EXPECT_EQ(safetensors::DtypeName(b->dtype), dtype);
      std::vector<float> va(a->numel), vb(b->numel);
      ASSERT_TRUE(safetensors::ToFloat(a->dtype, a->data, a->numel, va.data()).ok());
      ASSERT_TRUE(safetensors::ToFloat(b->dtype, b->data, b->numel, vb.data()).ok());
      for (size_t i = 0; i < va.size(); ++i) {
        // Round to nearest: within half a unit in the last place of the narrower format.
        ASSERT_LE(std::abs(va[i] - vb[i]), std::abs(va[i]) * precision + 1e-7) << dtype << " " << name << "[" << i << "]";
      }
    }
    auto model = Load(half);
    ASSERT_NE(model, nullptr);
    ExpectMatchesReference(*model, ReferenceLogits(dir, half), dtype);
  }
}

// An adapter trained anywhere in the model, written as PEFT, merged into the base weights by
// the reference (W += alpha / r B A), gives the logits fedlora computes with base + adapter.
TEST(LlamaTest, APeftExportMergedByTheReferenceGivesFedlorasLogits) {
  testing::TempDir dir;
  const std::string ckpt = MakeCheckpoint(dir, "base", {"--arch", "qwen2", "--hidden", "32", "--layers", "2", "--heads", "4",
                                                        "--kv-heads", "2", "--intermediate", "48", "--tie", "1",
                                                        "--dtype", "BF16"});
  LlamaOptions options;
  options.lora_rank = 4;
  options.lora_alpha = 8;
  options.target_modules = kLoraTargets;
  auto model = Load(ckpt, options);
  ASSERT_NE(model, nullptr);
  const AdapterSpec& spec = model->Spec();
  EXPECT_EQ(spec.tensors.size(), 2u * 7u * 2u);
  EXPECT_EQ(spec.tensors[0].name, "model.layers.0.self_attn.q_proj.lora_A");
  EXPECT_EQ(spec.tensors.back().name, "model.layers.1.mlp.down_proj.lora_B");
  const AdapterState state = RandomizeAdapter(*model, 3);
  const std::string adapter = dir.path("adapter");
  ASSERT_TRUE(storage::WritePeft(adapter, {spec, state, {}, {}}).ok());
  std::ifstream in(adapter + "/adapter_model.safetensors", std::ios::binary);
  std::stringstream bytes;
  bytes << in.rdbuf();
  auto file = storage::DecodeSafetensors(bytes.str());
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_EQ(file->tensors[0].name, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
  const std::string merged = dir.path("merged");
  auto r = RunPython({ReferenceTool("llama_reference.py"), "merge-peft", "--model", ckpt, "--adapter", adapter, "--out", merged});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ExpectMatchesReference(*model, ReferenceLogits(dir, merged), "base + adapter");
  // Without the adapter the logits differ: the comparison above sees the adapter.
  auto bare = Load(ckpt, options);
  ASSERT_NE(bare, nullptr);
  torch::NoGradGuard no_grad;
  const torch::Tensor ids = torch::tensor(kPrompts[0], torch::kLong).unsqueeze(0);
  EXPECT_GT(MaxDiff(bare->Forward(ids), model->Forward(ids)), 1e-3);
}

// A sequence classifier (LoRA and the head "score" trained), written as PEFT with task_type
// SEQ_CLS and run by the reference as transformers' LlamaForSequenceClassification, gives the
// class logits fedlora computes, with the batch padded on either side.
TEST(LlamaTest, AClassifiersPeftExportRunByTheReferenceGivesFedlorasClassLogits) {
  testing::TempDir dir;
  const std::string ckpt = MakeCheckpoint(dir, "base", {"--arch", "llama", "--hidden", "32", "--layers", "2", "--heads", "4",
                                                        "--kv-heads", "2", "--intermediate", "48", "--tie", "0",
                                                        "--dtype", "F32"});
  LlamaOptions options;
  options.lora_rank = 4;
  options.target_modules = {"q_proj", "v_proj", "down_proj"};
  options.num_classes = 5;
  auto model = Load(ckpt, options);
  ASSERT_NE(model, nullptr);
  EXPECT_EQ(model->num_classes(), 5);
  const AdapterSpec& spec = model->Spec();
  ASSERT_EQ(spec.tensors.back().name, kClassifierHead);
  EXPECT_EQ(spec.tensors.back().shape, (std::vector<uint32_t>{5, 32}));
  EXPECT_EQ(spec.tensors.back().role, TensorRole::kDense);
  const AdapterState state = RandomizeAdapter(*model, 5);
  const std::string adapter = dir.path("adapter");
  ASSERT_TRUE(storage::WritePeft(adapter, {spec, state, {}, {}}).ok());
  {
    std::ifstream in(adapter + "/adapter_config.json");
    std::stringstream config;
    config << in.rdbuf();
    EXPECT_NE(config.str().find("\"SEQ_CLS\""), std::string::npos) << config.str();
    EXPECT_NE(config.str().find("\"score\""), std::string::npos) << config.str();
  }
  for (const std::string pad : {"right", "left"}) {
    const std::string out = dir.path("classes-" + pad + ".safetensors");
    auto r = RunPython({ReferenceTool("llama_reference.py"), "classify", "--model", ckpt, "--adapter", adapter, "--ids",
                        IdsArg(kPrompts), "--out", out, "--pad", pad});
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    auto file = safetensors::MappedFile::Open(out);
    ASSERT_TRUE(file.ok()) << file.status().ToString();
    auto header = safetensors::ParseHeader(file->bytes());
    ASSERT_TRUE(header.ok()) << header.status().ToString();
    const safetensors::Entry* e = header->Find("logits");
    ASSERT_NE(e, nullptr);
    torch::Tensor want = torch::empty({3, 5}, torch::kFloat);
    ASSERT_TRUE(safetensors::ToFloat(e->dtype, file->bytes().data() + header->data_start + e->begin, e->numel(),
                                     want.data_ptr<float>())
                    .ok());
    // fedlora's batch, padded the same way (pad id 0 under the mask).
    const int64_t t = 10;
    torch::Tensor ids = torch::zeros({3, t}, torch::kLong), mask = torch::zeros({3, t}, torch::kLong);
    for (int64_t b = 0; b < 3; ++b) {
      const auto len = static_cast<int64_t>(kPrompts[b].size());
      const int64_t start = pad == "left" ? t - len : 0;
      ids[b].narrow(0, start, len).copy_(torch::tensor(kPrompts[b], torch::kLong));
      mask[b].narrow(0, start, len).fill_(1);
    }
    torch::NoGradGuard no_grad;
    const torch::Tensor got = model->Classify(ids, mask);
    EXPECT_LT(MaxDiff(got, want), 1e-4) << pad << "\n" << got << "\n" << want;
  }
  // The head matters: a fresh head gives other logits.
  auto fresh = Load(ckpt, options);
  ASSERT_NE(fresh, nullptr);
  torch::NoGradGuard no_grad;
  const torch::Tensor ids = torch::tensor(kPrompts[0], torch::kLong).unsqueeze(0);
  EXPECT_GT(MaxDiff(fresh->Classify(ids, {}), model->Classify(ids, {})), 1e-3);
}

TEST(LlamaTest, ConfigsOutsideTheSupportedFamilyAreRefusedWithWhatWasFound) {
  const std::string good = R"({"architectures":["LlamaForCausalLM"],"vocab_size":10,"hidden_size":8,"intermediate_size":16,
    "num_hidden_layers":1,"num_attention_heads":2})";
  auto c = ParseConfig(good, "config.json");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->num_kv_heads, 2);
  EXPECT_EQ(c->head_dim, 4);
  EXPECT_FALSE(c->tie_word_embeddings);
  struct Case {
    std::string json;
    Code code;
    std::string says;
  };
  const std::vector<Case> cases = {
      {R"({"architectures":["GPT2LMHeadModel"],"vocab_size":10})", Code::kUnimplemented, "GPT2LMHeadModel"},
      {R"({"vocab_size":10})", Code::kInvalidArgument, "architectures"},
      {R"({"architectures":["LlamaForCausalLM"],"vocab_size":10,"hidden_size":8,"intermediate_size":16,
          "num_hidden_layers":1,"num_attention_heads":2,"rope_scaling":{"type":"linear","factor":2}})",
       Code::kUnimplemented, "rope_scaling"},
      {R"({"architectures":["LlamaForCausalLM"],"vocab_size":10,"hidden_size":8,"intermediate_size":16,
          "num_hidden_layers":1,"num_attention_heads":2,"hidden_act":"gelu"})",
       Code::kUnimplemented, "gelu"},
      {R"({"architectures":["LlamaForCausalLM"],"vocab_size":10,"hidden_size":8,"intermediate_size":16,
          "num_hidden_layers":1,"num_attention_heads":3})",
       Code::kInvalidArgument, "multiple"},
      {R"({"architectures":["LlamaForCausalLM"],"vocab_size":10,"hidden_size":8,"intermediate_size":16,
          "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":3})",
       Code::kInvalidArgument, "num_key_value_heads"},
      {R"({"architectures":["LlamaForCausalLM"],"vocab_size":10,"hidden_size":8,"num_hidden_layers":1,
          "num_attention_heads":2})",
       Code::kInvalidArgument, "intermediate_size"},
      {R"({"architectures":["LlamaForCausalLM"],"vocab_size":10,"hidden_size":8,"intermediate_size":16,
          "num_hidden_layers":1,"num_attention_heads":2,"eos_token_id":12})",
       Code::kInvalidArgument, "eos_token_id"},
      {R"({"architectures":["Qwen2ForCausalLM"],"vocab_size":10,"hidden_size":8,"intermediate_size":16,
          "num_hidden_layers":1,"num_attention_heads":2,"use_sliding_window":true})",
       Code::kUnimplemented, "use_sliding_window"},
      {"not json", Code::kInvalidArgument, "JSON"},
  };
  for (const auto& k : cases) {
    auto r = ParseConfig(k.json, "config.json");
    ASSERT_FALSE(r.ok()) << k.says;
    EXPECT_EQ(r.status().code(), k.code) << r.status().ToString();
    EXPECT_NE(r.status().message().find(k.says), std::string::npos) << r.status().ToString();
  }
}

TEST(LlamaTest, EveryBadCheckpointGetsAClearError) {
  testing::TempDir dir;
  const std::string good = MakeCheckpoint(dir, "good", {"--arch", "llama", "--hidden", "32", "--layers", "2", "--heads", "2",
                                                        "--kv-heads", "2", "--intermediate", "48", "--tie", "0",
                                                        "--dtype", "F16"});
  ASSERT_TRUE(Checkpoint::Open(good).ok());
  auto copy = [&](const std::string& name) {
    const std::string to = dir.path(name);
    fs::copy(good, to, fs::copy_options::recursive);
    return to;
  };
  auto rewrite_config = [](const std::string& d, const std::string& from, const std::string& to) {
    std::ifstream in(d + "/config.json");
    std::stringstream ss;
    ss << in.rdbuf();
    std::string text = ss.str();
    const size_t at = text.find(from);
    ASSERT_NE(at, std::string::npos) << from;
    text.replace(at, from.size(), to);
    std::ofstream(d + "/config.json", std::ios::trunc) << text;
  };
  auto expect = [](const std::string& d, Code code, const std::string& says) {
    auto r = Checkpoint::Open(d);
    ASSERT_FALSE(r.ok()) << says;
    EXPECT_EQ(r.status().code(), code) << r.status().ToString();
    EXPECT_NE(r.status().message().find(says), std::string::npos) << r.status().ToString();
  };
  expect(dir.path("nowhere"), Code::kNotFound, "does not exist");
  {
    const std::string d = copy("no-config");
    fs::remove(d + "/config.json");
    expect(d, Code::kNotFound, "config.json");
  }
  {
    const std::string d = copy("no-weights");
    fs::remove(d + "/model.safetensors");
    expect(d, Code::kNotFound, "model.safetensors");
  }
  {
    const std::string d = copy("more-layers");
    rewrite_config(d, "\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3");
    expect(d, Code::kFailedPrecondition, "missing model.layers.2.input_layernorm.weight");
  }
  {
    const std::string d = copy("fewer-layers");
    rewrite_config(d, "\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1");
    expect(d, Code::kFailedPrecondition, "unexpected model.layers.1.");
  }
  {
    const std::string d = copy("misshapen");
    rewrite_config(d, "\"intermediate_size\": 48", "\"intermediate_size\": 40");
    expect(d, Code::kFailedPrecondition, "model.layers.0.mlp.gate_proj.weight is [48, 32], the config needs [40, 32]");
  }
  {
    const std::string d = copy("tied");
    rewrite_config(d, "\"tie_word_embeddings\": false", "\"tie_word_embeddings\": true");
    EXPECT_TRUE(Checkpoint::Open(d).ok()) << "a tied checkpoint may keep its lm_head copy";
  }
  {
    const std::string d = copy("gpt2");
    rewrite_config(d, "LlamaForCausalLM", "GPT2LMHeadModel");
    expect(d, Code::kUnimplemented, "GPT2LMHeadModel");
  }
  {
    const std::string d = copy("truncated");
    fs::resize_file(d + "/model.safetensors", 100);
    expect(d, Code::kDataLoss, "model.safetensors");
  }
  {
    const std::string d = copy("garbage-header");
    std::fstream f(d + "/model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(8);
    f.write("XXXX", 4);
    f.close();
    expect(d, Code::kDataLoss, "JSON");
  }
  {
    const std::string d = copy("sharded-missing");
    auto r = RunPython({ReferenceTool("hf_checkpoint.py"), "make", "--out", d + "-s", "--vocab", "256", "--seed", "7",
                        "--arch", "llama", "--hidden", "32", "--layers", "2", "--heads", "2", "--kv-heads", "2",
                        "--intermediate", "48", "--tie", "0", "--dtype", "F32", "--shards", "2"});
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    ASSERT_TRUE(Checkpoint::Open(d + "-s").ok());
    fs::remove(d + "-s/model-00002-of-00002.safetensors");
    expect(d + "-s", Code::kNotFound, "model-00002-of-00002.safetensors");
  }
  {
    const std::string d = copy("int8");
    // A tensor of a dtype the model cannot compute with.
    auto file = safetensors::MappedFile::Open(d + "/model.safetensors");
    ASSERT_TRUE(file.ok());
    std::string bytes(reinterpret_cast<const char*>(file->bytes().data()), file->bytes().size());
    const size_t at = bytes.find("\"F16\"");
    ASSERT_NE(at, std::string::npos);
    // F16 -> I16 keeps the element size, so only the dtype is wrong.
    bytes.replace(at, 5, "\"I16\"");
    std::ofstream(d + "/model.safetensors", std::ios::binary | std::ios::trunc) << bytes;
    expect(d, Code::kFailedPrecondition, "is I16");
  }
  EXPECT_EQ(LlamaModel::Create(*Checkpoint::Open(good), {.lora_rank = 4, .target_modules = {"qkv"}}).status().code(),
            Code::kInvalidArgument);
}

}  // namespace
}  // namespace fedlora::worker::lm
