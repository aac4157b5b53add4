// A C interface to Debian's libsentencepiece, built as its own shared module and loaded by
// worker/lm/tokenizer.cc with dlopen(RTLD_LOCAL | RTLD_DEEPBIND). Why: libsentencepiece.so
// exports the protobuf-lite it bundles; linked into a process that also loads LibTorch's
// libprotobuf.so, those symbols take over libprotobuf's own and the process crashes at start-up.
// Loaded locally and deep-bound, the module and its libsentencepiece resolve to their own
// copies and nothing of theirs enters the global scope.
// Thread safety: a loaded model is immutable; every call but load/free may run concurrently.
#include <sentencepiece_processor.h>

#include <cstddef>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
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

}  // extern "C"
