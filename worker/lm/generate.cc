#include "worker/lm/generate.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

namespace fedlora::worker::lm {
namespace {

// U+FFFD in UTF-8: what Decode makes of an unfinished multi-byte character.
constexpr std::string_view kReplacement = "\xEF\xBF\xBD";

Status CheckIds(const std::vector<int32_t>& ids, int64_t vocab, std::string_view what) {
  for (const int32_t id : ids) {
    if (id < 0 || id >= vocab) {
      return InvalidArgument(fmt::format("the {} holds token id {}, outside the model's vocabulary [0, {}): the "
                                         "tokenizer does not belong to this checkpoint",
                                         what, id, vocab));
    }
  }
  return Status::Ok();
}

torch::Tensor IdsTensor(const std::vector<int32_t>& ids) {
  std::vector<int64_t> wide(ids.begin(), ids.end());
  return torch::tensor(wide, torch::kLong).unsqueeze(0);  // [1, T]
}

// A uniform double in [0, 1) from the top 53 bits of one draw.
double UniformDouble(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

}  // namespace

Status ValidateSampling(const SamplingOptions& o) {
  if (o.max_new_tokens < 1) return InvalidArgument("max_new_tokens must be at least 1");
  if (!std::isfinite(o.temperature) || o.temperature < 0) {
    return InvalidArgument(fmt::format("temperature must be finite and >= 0 (0: greedy), got {}", o.temperature));
  }
  if (!(o.top_p > 0 && o.top_p <= 1)) return InvalidArgument(fmt::format("top_p must lie in (0, 1], got {}", o.top_p));
  return Status::Ok();
}

Result<int32_t> SampleToken(const torch::Tensor& logits_in, const SamplingOptions& o, std::mt19937_64& rng) {
  RETURN_IF_ERROR(ValidateSampling(o));
  const torch::Tensor logits = logits_in.detach().to(torch::kCPU, torch::kFloat).contiguous().reshape({-1});
  const size_t v = static_cast<size_t>(logits.numel());
  if (v == 0) return InvalidArgument("no logits to sample from");
  const float* z = logits.data_ptr<float>();
  size_t best = 0;
  for (size_t i = 0; i < v; ++i) {
    if (!std::isfinite(z[i])) return Internal(fmt::format("the model gave a non-finite logit ({}) for token {}", z[i], i));
    if (z[i] > z[best]) best = i;
  }
  if (o.temperature == 0) return static_cast<int32_t>(best);

  // softmax(z / T), unnormalised: the largest term is 1.
  std::vector<double> p(v);
  double sum = 0;
  for (size_t i = 0; i < v; ++i) {
    p[i] = std::exp((static_cast<double>(z[i]) - static_cast<double>(z[best])) / o.temperature);
    sum += p[i];
  }
  std::vector<int32_t> kept(v);
  std::iota(kept.begin(), kept.end(), 0);
  if (o.top_p < 1) {
    // The nucleus: most probable first (ties: lower id first), until the mass reaches top_p.
    std::sort(kept.begin(), kept.end(), [&](int32_t a, int32_t b) {
      const double pa = p[static_cast<size_t>(a)], pb = p[static_cast<size_t>(b)];
      return pa > pb || (pa == pb && a < b);
    });
    const double needed = o.top_p * sum;
    double mass = 0;
    size_t n = 0;
    while (n < v) {
      mass += p[static_cast<size_t>(kept[n])];
      ++n;
      if (mass >= needed) break;
    }
    kept.resize(n);
  }
  double total = 0;
  for (const int32_t id : kept) total += p[static_cast<size_t>(id)];
  const double target = UniformDouble(rng) * total;
  double acc = 0;
  for (const int32_t id : kept) {
    acc += p[static_cast<size_t>(id)];
    if (target < acc) return id;
  }
  return kept.back();  // rounding: target at the very end
}

Result<Generation> Generate(LlamaModel& model, const Tokenizer& tok, std::string_view prompt,
                            const SamplingOptions& o, const std::function<void(std::string_view)>& on_text) {
  RETURN_IF_ERROR(ValidateSampling(o));
  const LlamaConfig& c = model.config();
  Generation g;
  if (!prompt.empty()) g.prompt_ids = tok.Encode(prompt, tok.add_bos(), false);
  if (g.prompt_ids.empty()) {
    if (tok.bos_id() < 0) {
      return InvalidArgument("the prompt is empty (no tokens) and the tokenizer has no BOS token to start from");
    }
    g.prompt_ids = {tok.bos_id()};
  }
  if (g.prompt_ids.size() >= static_cast<size_t>(c.max_positions)) {
    return InvalidArgument(fmt::format("the prompt has {} tokens: the model's max_position_embeddings ({}) leaves no "
                                       "room for a new one",
                                       g.prompt_ids.size(), c.max_positions));
  }
  RETURN_IF_ERROR(CheckIds(g.prompt_ids, c.vocab_size, "prompt"));

  // Streaming: pass on what Decode(new ids) adds to what was passed on already.
  std::string emitted;
  auto emit = [&](bool last) {
    if (!on_text) return;
    const std::string full = tok.Decode(g.new_ids);
    size_t end = full.size();
    if (!last) {  // an unfinished multi-byte character decodes to U+FFFD until its last byte comes
      while (end >= kReplacement.size() && std::string_view(full).substr(end - kReplacement.size()) == kReplacement) {
        end -= kReplacement.size();
      }
    }
    if (end >= emitted.size() && std::string_view(full).substr(0, emitted.size()) == emitted) {
      if (end > emitted.size()) {
        on_text(std::string_view(full).substr(emitted.size(), end - emitted.size()));
        emitted = full.substr(0, end);
      }
      return;
    }
    if (!last) return;  // the text so far changed: wait for it to settle
    // Already passed on, so it cannot be taken back: pass on what follows the common prefix.
    const size_t common = static_cast<size_t>(
        std::mismatch(emitted.begin(), emitted.end(), full.begin(), full.end()).second - full.begin());
    if (common < full.size()) on_text(std::string_view(full).substr(common));
    emitted = full;
  };

  std::mt19937_64 rng(o.seed);
  try {
    KvCache cache;
    torch::Tensor logits = model.ForwardCached(IdsTensor(g.prompt_ids), {}, cache);  // [1, T, V]
    while (true) {
      ASSIGN_OR_RETURN(const int32_t next, SampleToken(logits[0][logits.size(1) - 1], o, rng));
      g.new_ids.push_back(next);
      emit(false);
      if (o.stop_at_eos && std::find(tok.eos_ids().begin(), tok.eos_ids().end(), next) != tok.eos_ids().end()) {
        g.stop_reason = "eos";
        break;
      }
      if (g.new_ids.size() >= o.max_new_tokens) {
        g.stop_reason = "max_new_tokens";
        break;
      }
      // Prompt and new tokens together never exceed max_position_embeddings.
      if (g.prompt_ids.size() + g.new_ids.size() >= static_cast<size_t>(c.max_positions)) {
        g.stop_reason = "max_position_embeddings";
        break;
      }
      logits = model.ForwardCached(torch::full({1, 1}, static_cast<int64_t>(next), torch::kLong), {}, cache);
    }
  } catch (const c10::Error& e) {
    return Internal(fmt::format("generating: {}", e.what_without_backtrace()));
  }
  emit(true);
  g.text = tok.Decode(g.new_ids);
  return g;
}

Result<TextScore> Score(LlamaModel& model, const Tokenizer& tok, std::string_view text) {
  const LlamaConfig& c = model.config();
  if (c.max_positions < 2) {
    return InvalidArgument(fmt::format("max_position_embeddings is {}: no window holds a token and its context",
                                       c.max_positions));
  }
  const std::vector<int32_t> ids = tok.Encode(text, false, false);
  RETURN_IF_ERROR(CheckIds(ids, c.vocab_size, "text"));
  const bool bos = tok.bos_id() >= 0;
  if (bos) RETURN_IF_ERROR(CheckIds({tok.bos_id()}, c.vocab_size, "tokenizer's BOS"));
  const size_t first_predicted = bos ? 0 : 1;  // the text's first token has no context without BOS
  if (ids.size() <= first_predicted) {
    return InvalidArgument(fmt::format("the text has {} tokens: nothing to score{}", ids.size(),
                                       bos ? "" : " (the tokenizer has no BOS, so the first token is context only)"));
  }
  const size_t span = static_cast<size_t>(c.max_positions) - 1;  // predicted tokens per window
  TextScore score;
  double sum = 0;
  torch::NoGradGuard no_grad;
  try {
    for (size_t first = first_predicted; first < ids.size();) {
      const size_t count = std::min(span, ids.size() - first);
      std::vector<int32_t> window;
      window.reserve(count + 1);
      window.push_back(bos ? tok.bos_id() : ids[first - 1]);
      window.insert(window.end(), ids.begin() + static_cast<ptrdiff_t>(first),
                    ids.begin() + static_cast<ptrdiff_t>(first + count));
      const torch::Tensor input = IdsTensor(window);
      const torch::Tensor logits = model.Forward(input, {})[0];  // [count + 1, V]
      const torch::Tensor targets = input[0].narrow(0, 1, static_cast<int64_t>(count));
      const torch::Tensor nll =
          -torch::log_softmax(logits.narrow(0, 0, static_cast<int64_t>(count)), -1).gather(1, targets.unsqueeze(1));
      const torch::Tensor values = nll.reshape({-1}).to(torch::kDouble).contiguous();
      const double* v = values.data_ptr<double>();
      for (size_t k = 0; k < count; ++k) {
        const int32_t id = ids[first + k];
        score.tokens.push_back({id, tok.Piece(id), v[k]});
        sum += v[k];
      }
      first += count;
    }
  } catch (const c10::Error& e) {
    return Internal(fmt::format("scoring: {}", e.what_without_backtrace()));
  }
  score.mean_nll = sum / static_cast<double>(score.tokens.size());
  score.perplexity = std::exp(score.mean_nll);
  return score;
}

}  // namespace fedlora::worker::lm
