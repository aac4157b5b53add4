// A C interface to Debian's libsentencepiece, built as its own shared module and loaded by
// worker/lm/tokenizer.cc with dlopen(RTLD_LOCAL | RTLD_DEEPBIND). Why: libsentencepiece.so
// exports the protobuf-lite it bundles; linked into a process that also loads LibTorch's
// libprotobuf.so, those symbols take over libprotobuf's own and the process crashes at start-up.
// Loaded locally and deep-bound, the module and its libsentencepiece resolve to their own
// copies and nothing of theirs enters the global scope.
// Thread safety: a loaded model is immutable; every call but load/free may run concurrently.
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstddef>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

extern "C" {

using fedlora_spm_ids_sink = void (*)(void* ctx, const int* ids, size_t n);
using fedlora_spm_text_sink = void (*)(void* ctx, const char* text, size_t n);

// The model from its serialized bytes, or null with the reason in err (NUL-terminated).
void* fedlora_spm_load(const char* data, size_t size, char* err, size_t err_size) {
  auto sp = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const auto status = sp->LoadFromSerializedProto(std::string_view(data, size));
  if (!status.ok()) {
    if (err_size > 0) {
      std::strncpy(err, status.ToString().c_str(), err_size - 1);
      err[err_size - 1] = '\0';
    }
    return nullptr;
  }
  return sp.release();
}

void fedlora_spm_free(void* model) { delete static_cast<sentencepiece::SentencePieceProcessor*>(model); }

static const sentencepiece::SentencePieceProcessor& Sp(const void* model) {
  return *static_cast<const sentencepiece::SentencePieceProcessor*>(model);
}

int fedlora_spm_pieces(const void* model) { return Sp(model).GetPieceSize(); }
int fedlora_spm_bos(const void* model) { return Sp(model).bos_id(); }
int fedlora_spm_eos(const void* model) { return Sp(model).eos_id(); }
int fedlora_spm_unk(const void* model) { return Sp(model).unk_id(); }
int fedlora_spm_piece_to_id(const void* model, const char* piece, size_t n) {
  return Sp(model).PieceToId(std::string_view(piece, n));
}

// 0 on success.
int fedlora_spm_encode(const void* model, const char* text, size_t n, fedlora_spm_ids_sink sink, void* ctx) {
  std::vector<int> ids;
  if (!Sp(model).Encode(std::string_view(text, n), &ids).ok()) return 1;
  sink(ctx, ids.data(), ids.size());
  return 0;
}

int fedlora_spm_decode(const void* model, const int* ids, size_t n, fedlora_spm_text_sink sink, void* ctx) {
  std::string text;
  if (!Sp(model).Decode(std::vector<int>(ids, ids + n), &text).ok()) return 1;
  sink(ctx, text.data(), text.size());
  return 0;
}

void fedlora_spm_piece(const void* model, int id, fedlora_spm_text_sink sink, void* ctx) {
  const std::string& piece = Sp(model).IdToPiece(id);
  sink(ctx, piece.data(), piece.size());
}

// Feeds SentencePiece's trainer from an array of (pointer, length) sentences.
namespace {
class ArrayIterator final : public sentencepiece::SentenceIterator {
 public:
  ArrayIterator(const char* const* texts, const size_t* lengths, size_t n) : texts_(texts), lengths_(lengths), n_(n) {
    Load();
  }
  bool done() const override { return i_ >= n_; }
  void Next() override {
    ++i_;
    Load();
  }
  const std::string& value() const override { return value_; }
  sentencepiece::util::Status status() const override { return sentencepiece::util::Status(); }

 private:
  void Load() {
    if (i_ < n_) value_.assign(texts_[i_], lengths_[i_]);
  }
  const char* const* texts_;
  const size_t* lengths_;
  size_t n_;
  size_t i_ = 0;
  std::string value_;
};
}  // namespace

// Trains a model on n sentences with the trainer's flags as n_args key/value pairs, the
// sampling seed `seed`; the serialized model goes to `sink` (the flag "minloglevel" quiets the
// trainer's log on stderr). 0 on success, else 1 with the reason in err.
int fedlora_spm_train(const char* const* keys, const char* const* values, size_t n_args, const char* const* texts,
                      const size_t* lengths, size_t n, unsigned seed, fedlora_spm_text_sink sink, void* ctx,
                      char* err, size_t err_size) {
  std::unordered_map<std::string, std::string> args;
  for (size_t i = 0; i < n_args; ++i) args[keys[i]] = values[i];
  sentencepiece::SetRandomGeneratorSeed(seed);
  ArrayIterator it(texts, lengths, n);
  std::string model;
  const auto status = sentencepiece::SentencePieceTrainer::Train(args, &it, &model);
  if (!status.ok()) {
    if (err_size > 0) {
      std::strncpy(err, status.ToString().c_str(), err_size - 1);
      err[err_size - 1] = '\0';
    }
    return 1;
  }
  sink(ctx, model.data(), model.size());
  return 0;
}

}  // extern "C"
