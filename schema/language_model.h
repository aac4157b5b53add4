// The language-model architectures fedlora reads and writes (Hugging Face `architectures`
// names) and PEFT's names for the modules LoRA can target: facts about the file formats, shared
// by the model code (worker/lm) and the PEFT files (storage/peft), which sits below it.
#pragma once

#include <algorithm>
#include <array>
#include <string>
#include <string_view>
#include <vector>

namespace fedlora {

inline constexpr const char* kSupportedArchitectures = "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM";
inline constexpr std::array<std::string_view, 3> kArchitectures = {"LlamaForCausalLM", "MistralForCausalLM",
                                                                   "Qwen2ForCausalLM"};

// Whether an adapter spec's `model` names one of them (else it is one of fedlora's own models).
inline bool IsLanguageModel(std::string_view model) {
  return std::find(kArchitectures.begin(), kArchitectures.end(), model) != kArchitectures.end();
}

// PEFT's module names that can carry LoRA, in PEFT's order (the first four in self_attn, the
// rest in mlp), and the default targets (PEFT's for Llama).
inline const std::vector<std::string> kLoraTargets = {"q_proj", "k_proj", "v_proj", "o_proj",
                                                      "gate_proj", "up_proj", "down_proj"};
inline const std::vector<std::string> kDefaultLoraTargets = {"q_proj", "v_proj"};

}  // namespace fedlora
