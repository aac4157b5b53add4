// Text generation and scoring with a Llama-family model (worker/lm/llama.h) and its tokenizer
// (worker/lm/tokenizer.h).
//
// Generate runs the prompt once through LlamaModel::ForwardCached, then one token per step
// over the key/value cache, with the model's current adapter applied. Sampling is greedy
// (temperature 0) or from softmax(logits / temperature) cut to its nucleus (top_p: the
// smallest set of most probable tokens whose probability sums to at least top_p, ties broken
// by the lower id, renormalised), drawn with a std::mt19937_64 seeded with `seed` and the
// explicit mapping u = (x >> 11) * 2^-53, so the same seed gives the same tokens with any
// standard library.
//
// Score gives every token's negative log-likelihood under the model, in windows of at most
// max_position_embeddings tokens, each beginning with BOS (a tokenizer without BOS: each
// window after the first begins with the token before it, and the text's first token is not
// predicted).
//
// Include only from worker/ and ops/ translation units: it pulls in LibTorch.
// Thread safety: the model is used by one thread at a time (see LlamaModel).
#pragma once

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "schema/status.h"
#include "worker/lm/llama.h"
#include "worker/lm/tokenizer.h"

namespace fedlora::worker::lm {

struct SamplingOptions {
  uint32_t max_new_tokens = 64;  // at least 1
  double temperature = 0;        // 0: greedy (argmax); else finite and positive
  double top_p = 1.0;            // in (0, 1]; 1: the whole distribution
  uint64_t seed = 0;             // of the sampler (unused when greedy)
  bool stop_at_eos = true;       // stop after any of the tokenizer's eos_ids()
};

struct Generation {
  std::vector<int32_t> prompt_ids;  // as the model read them (BOS first when the tokenizer adds it)
  std::vector<int32_t> new_ids;     // generated, the EOS that stopped it included
  std::string text;                 // Decode(new_ids) (so without the EOS)
  // "eos" | "max_new_tokens" | "max_position_embeddings" (prompt and new tokens together
  // reached max_position_embeddings: they never exceed it)
  std::string stop_reason;
};

// Continues `prompt` (an empty prompt: from BOS alone). `on_text`, when given, receives the
// text as it is generated, in pieces whose concatenation is `text`: each piece is what
// Decode(new ids so far) adds to what was passed on, a trailing U+FFFD held back until the
// bytes after it show whether it is an unfinished multi-byte character.
// Errors: kInvalidArgument (options out of range; an empty prompt with a tokenizer without BOS;
// a prompt of max_position_embeddings tokens or more; token ids beyond the model's vocabulary);
// kInternal (LibTorch failed, or the model gave non-finite logits).
Result<Generation> Generate(LlamaModel& model, const Tokenizer& tok, std::string_view prompt,
                            const SamplingOptions& o, const std::function<void(std::string_view)>& on_text = {});

struct TokenScore {
  int32_t id = 0;
  std::string piece;  // Tokenizer::Piece(id)
  double nll = 0;     // -log p(id | the tokens before it in its window)
};

struct TextScore {
  std::vector<TokenScore> tokens;  // every predicted token, in order: all but the first (BOS)
  double mean_nll = 0;
  double perplexity = 0;           // exp(mean_nll)
};

// Scores `text`, tokenized without BOS / EOS. Errors: kInvalidArgument (no token to predict;
// token ids beyond the model's vocabulary; max_position_embeddings below 2); kInternal (LibTorch).
Result<TextScore> Score(LlamaModel& model, const Tokenizer& tok, std::string_view text);

// One draw from `logits` [vocab] (fp32, CPU) with the options' temperature and top_p, using
// `rng` only when temperature > 0. Exposed for tests. Errors: kInvalidArgument (options),
// kInternal (a non-finite logit).
Result<int32_t> SampleToken(const torch::Tensor& logits, const SamplingOptions& o, std::mt19937_64& rng);

// Checks a SamplingOptions. Errors: kInvalidArgument naming the field.
Status ValidateSampling(const SamplingOptions& o);

}  // namespace fedlora::worker::lm
