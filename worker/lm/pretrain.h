// A small Llama-architecture language model made from scratch on this machine, so that the
// text tasks run where no checkpoint can be downloaded: a SentencePiece tokenizer is trained on
// the text, a LlamaForCausalLM of the chosen shape is initialised from the seed (Hugging Face's
// rule: every matrix and the embeddings N(0, 0.02^2), norms 1), trained on next tokens with
// AdamW, and written as a Hugging Face checkpoint directory:
//   config.json, model.safetensors (F32), tokenizer.model, tokenizer_config.json,
//   fedlora_pretrain.json (how it was made and what it measured: the record behind the docs).
// From then on it is opened exactly as a user's checkpoint is (worker/lm/checkpoint.h).
//
// Text. The caller passes documents (e.g. worker/lm/packaged_text.h's dictionary entries). A
// seeded `held_out_fraction` of them is kept for the held-out perplexity and never trained on;
// the tokenizer is trained on (a seeded sample of) the others. Training documents are encoded
// as <s> ids </s>, concatenated and cut into windows of `seq_len` tokens; each step draws
// `batch_size` windows, in a seeded order that visits every window once per epoch.
//
// Schedule: linear warm-up to `lr` over `warmup_steps`, cosine decay to lr * min_lr_ratio at
// `steps`; AdamW (betas 0.9, 0.95) with weight decay on matrices only; gradients clipped to
// norm 1. The model is trained through worker/lm/llama.h's full fine-tuning mode, so
// pretraining and fine-tuning run the same forward pass.
//
// Deterministic: the same documents, options and LibTorch thread count give byte-identical
// files. The directory appears whole: it is written as OUT.partial and renamed.
//
// Include only from worker/ and ops/ translation units: it pulls in LibTorch.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "schema/status.h"

namespace fedlora::worker::lm {

// The model's sizes (config.json's fields).
struct LmShape {
  int64_t vocab_size = 4096;       // at most: a text too small for it gets the pieces it supports
  int64_t hidden_size = 256;
  int64_t intermediate_size = 688;
  int64_t num_layers = 4;
  int64_t num_heads = 4;
  int64_t num_kv_heads = 4;
  int64_t max_positions = 512;
  bool tie_word_embeddings = true;

  // Parameters of the model (tied embeddings counted once).
  int64_t Parameters() const;
};

// The named shapes of `fedlora pretrain --size`: "tiny" (tests: ~0.1M parameters, seconds),
// "small" and "base" (see docs/benchmarks.md for the measurements behind the default).
// Errors: kInvalidArgument naming the known sizes.
Result<LmShape> LmShapeNamed(const std::string& name);
inline constexpr const char* kLmSizes = "tiny, small, base";
// Training steps of a named size when none are given (about five minutes on 2 cores for the
// default size; see docs/benchmarks.md). 0 for an unknown name.
uint64_t DefaultPretrainSteps(const std::string& name);

struct LmPretrainOptions {
  LmShape shape;
  uint32_t seq_len = 128;            // tokens per training window
  uint32_t batch_size = 16;          // windows per step
  uint64_t steps = 1000;
  float lr = 2e-3f;                  // peak learning rate
  float min_lr_ratio = 0.1f;         // the cosine ends at lr * min_lr_ratio
  uint32_t warmup_steps = 50;
  float weight_decay = 0.1f;
  double held_out_fraction = 0.02;   // of the documents, never trained on
  size_t held_out_windows = 256;     // at most this many held-out windows are scored
  size_t tokenizer_documents = 100000;  // the tokenizer trains on at most this many documents
  uint64_t seed = 1;
  uint32_t eval_every = 250;         // steps between held-out evaluations (0: only at the end)
  std::string source;                // where the documents came from, for the record
};

struct LmPretrainReport {
  int64_t parameters = 0;
  int64_t vocab_size = 0;            // the tokenizer's pieces (at most shape.vocab_size)
  size_t train_documents = 0, held_out_documents = 0;
  uint64_t train_tokens = 0;         // tokens in the training windows (one epoch)
  uint64_t tokens_seen = 0;          // steps * batch_size * seq_len
  double epochs = 0;                 // tokens_seen / train_tokens
  double final_train_loss = 0;       // mean over the last 50 steps
  double held_out_loss = 0;          // mean NLL per held-out token; perplexity = exp
  double base_held_out_loss = 0;     // the same before training (initialised model)
  double held_out_bytes_per_token = 0;  // of the held-out text under this tokenizer (bits per byte = loss / ln 2 / this)
  double tokenizer_seconds = 0, train_seconds = 0;
};

// Progress: phase "tokenizer" (once, before training it), "encode" (once), "train" (every step:
// `step` of `steps`, `loss` the step's mean loss, `held_out_loss` the latest evaluation, NaN
// before the first), "done".
struct LmPretrainProgress {
  std::string phase;
  uint64_t step = 0, steps = 0;
  double loss = 0;
  double held_out_loss = 0;
  double seconds = 0;                // since training started
};

// Makes the model into `out_dir`, which must not exist (its parent is created). Errors:
// kInvalidArgument (bad options or shape, too few documents for a held-out part and a window,
// the tokenizer's refusal), kAlreadyExists (out_dir exists), kUnavailable / kInternal (files
// cannot be written, LibTorch failed). On error nothing is left at out_dir.
Result<LmPretrainReport> PretrainLanguageModel(const std::vector<std::string>& documents, const std::string& out_dir,
                                               const LmPretrainOptions& options,
                                               const std::function<void(const LmPretrainProgress&)>& progress = {});

}  // namespace fedlora::worker::lm
