// Tokenizer turns text into the token ids of a Llama-family Hugging Face checkpoint and back,
// using the checkpoint's SentencePiece model (DIR/tokenizer.model) as LlamaTokenizer does with
// legacy=True: Encode gives exactly Python's `sp.encode(text)` (the model's own normaliser,
// add_dummy_prefix "▁" and byte fallback included), with the BOS / EOS ids added on request.
// Checkpoints that ship only a fast tokenizer (tokenizer.json, e.g. byte-level BPE) are
// refused: fedlora reads SentencePiece models only.
//
// Special ids come, field by field, from the first of:
//   1. DIR/config.json `bos_token_id` / `eos_token_id` (an integer; eos may be a list, whose
//      first entry is eos_id() and all of whose entries are eos_ids());
//   2. DIR/tokenizer_config.json `bos_token` / `eos_token` (a piece string, or an object with
//      "content"), looked up in the SentencePiece vocabulary;
//   3. the SentencePiece model's own bos / eos ids (-1 when the model defines none).
// A null or missing field falls through to the next source. `add_bos_token` comes from
// tokenizer_config.json (default true, as LlamaTokenizer).
//
// Thread safety: immutable after Load(); every method is const and may be called from any
// number of threads at once (SentencePieceProcessor's Encode/Decode are const and keep no
// per-call state in the processor).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "schema/status.h"

namespace fedlora::worker::lm {

// Debian's libsentencepiece behind a module loaded in isolation (worker/lm/sentencepiece_module.cc).
class SentencePieceModel;

class Tokenizer {
 public:
  // Reads the tokenizer of checkpoint directory DIR. Errors:
  //   kNotFound       DIR has neither tokenizer.model nor tokenizer.json (names the path);
  //   kUnimplemented  DIR has only tokenizer.json (a Hugging Face fast tokenizer);
  //   kDataLoss       tokenizer.model, config.json or tokenizer_config.json cannot be parsed
  //                   (names the file);
  //   kInvalidArgument a special-token field has the wrong type, names a piece that is not in
  //                   the vocabulary, or an id outside [0, vocab_size()) (names file and field);
  //   kUnavailable    a file exists but cannot be read.
  static Result<std::unique_ptr<Tokenizer>> Load(const std::string& dir);

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // The SentencePiece ids of TEXT (UTF-8), with bos_id() first when ADD_BOS and eos_id() last
  // when ADD_EOS (each only when that id is defined, i.e. not -1). Empty text gives no ids.
  std::vector<int32_t> Encode(std::string_view text, bool add_bos, bool add_eos) const;

  // The text of IDS. bos_id(), every eos_ids() entry and the model's control pieces decode to
  // nothing; so do ids outside the vocabulary (a model whose embedding is padded past the
  // tokenizer can sample them). Byte-fallback pieces are reassembled into UTF-8, a byte
  // sequence that is not valid UTF-8 becomes U+FFFD, and the unknown piece becomes " ⁇ ", as
  // SentencePiece does. The "▁" that add_dummy_prefix put before the first piece is dropped.
  std::string Decode(std::span<const int32_t> ids) const;

  // The vocabulary entry of ID ("▁the", "<0x0A>", "<s>"); empty for an id outside the vocabulary.
  std::string Piece(int32_t id) const;

  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_ids_.empty() ? -1 : eos_ids_.front(); }
  // Every id that ends generation (Llama 3 style configs list several); empty when none.
  const std::vector<int32_t>& eos_ids() const { return eos_ids_; }
  // Whether the checkpoint's tokenizer adds BOS by default (tokenizer_config.json add_bos_token).
  bool add_bos() const { return add_bos_; }
  // The number of SentencePiece pieces (may be smaller than config.json's vocab_size).
  size_t vocab_size() const;

 private:
  Tokenizer();

  std::unique_ptr<SentencePieceModel> sp_;
  int32_t bos_id_ = -1;
  std::vector<int32_t> eos_ids_;
  bool add_bos_ = true;
};

struct SentencePieceTrainOptions {
  int vocab_size = 4096;
  uint64_t seed = 1;
  bool quiet = true;  // no trainer log on stderr
};

// Trains a SentencePiece BPE tokenizer in Llama's conventions on `sentences` (one training
// sentence each: a document or a paragraph): unk 0, <s> 1, </s> 2, no pad, byte fallback (any
// text encodes, none to unk), digits split, identity normalisation, a "▁" dummy prefix, and
// returns the serialized model (tokenizer.model's bytes), which Tokenizer loads. Runs on one
// thread, so the model is a function of (sentences, options). Sentences longer than 16,384
// bytes are skipped by the trainer. A text too small for `vocab_size` pieces gets fewer (every
// merge it supports). Errors: kInvalidArgument (a vocabulary below 300 pieces, no sentences,
// or the trainer's own refusal),
// kUnavailable (the SentencePiece module cannot be loaded).
Result<std::string> TrainSentencePiece(const std::vector<std::string>& sentences,
                                       const SentencePieceTrainOptions& options);

}  // namespace fedlora::worker::lm
