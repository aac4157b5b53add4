#include "worker/lm/tokenizer.h"

#include <dlfcn.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <mutex>
#include <optional>
#include <sstream>
#include <type_traits>

#ifndef FEDLORA_SENTENCEPIECE_MODULE
#error "worker/lm/tokenizer.cc needs -DFEDLORA_SENTENCEPIECE_MODULE=\"/path/to/libfedlora_sentencepiece.so\""
#endif

namespace fedlora::worker::lm {
namespace {

// The functions of worker/lm/sentencepiece_module.cc, loaded once per process with
// RTLD_LOCAL | RTLD_DEEPBIND (see that file: libsentencepiece cannot be linked beside LibTorch).
// FEDLORA_SENTENCEPIECE_MODULE in the environment overrides the module's path.
struct SpmApi {
  void* (*load)(const char*, size_t, char*, size_t);
  void (*free)(void*);
  int (*pieces)(const void*);
  int (*bos)(const void*);
  int (*eos)(const void*);
  int (*unk)(const void*);
  int (*piece_to_id)(const void*, const char*, size_t);
  int (*encode)(const void*, const char*, size_t, void (*)(void*, const int*, size_t), void*);
  int (*decode)(const void*, const int*, size_t, void (*)(void*, const char*, size_t), void*);
  void (*piece)(const void*, int, void (*)(void*, const char*, size_t), void*);
  int (*train)(const char* const*, const char* const*, size_t, const char* const*, const size_t*, size_t, unsigned,
               void (*)(void*, const char*, size_t), void*, char*, size_t);
};

Result<const SpmApi*> LoadSpmApi() {
  static std::once_flag once;
  static SpmApi api;
  static Status status;
  std::call_once(once, [] {
    const char* env = std::getenv("FEDLORA_SENTENCEPIECE_MODULE");
    const std::string path = env != nullptr && *env != '\0' ? env : FEDLORA_SENTENCEPIECE_MODULE;
    void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (lib == nullptr) {
      status = Unavailable(fmt::format("cannot load the SentencePiece module '{}': {}", path, dlerror()));
      return;
    }
    auto get = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
      if (fn == nullptr && status.ok()) status = Unavailable(fmt::format("'{}' lacks {}", path, name));
    };
    get(api.load, "fedlora_spm_load");
    get(api.free, "fedlora_spm_free");
    get(api.pieces, "fedlora_spm_pieces");
    get(api.bos, "fedlora_spm_bos");
    get(api.eos, "fedlora_spm_eos");
    get(api.unk, "fedlora_spm_unk");
    get(api.piece_to_id, "fedlora_spm_piece_to_id");
    get(api.encode, "fedlora_spm_encode");
    get(api.decode, "fedlora_spm_decode");
    get(api.piece, "fedlora_spm_piece");
    get(api.train, "fedlora_spm_train");
  });
  if (!status.ok()) return status;
  return &api;
}

}  // namespace

// A loaded SentencePiece model behind the module's C interface.
class SentencePieceModel {
 public:
  static Result<std::unique_ptr<SentencePieceModel>> Load(std::string_view bytes, std::string* error) {
    ASSIGN_OR_RETURN(const SpmApi* api, LoadSpmApi());
    char err[512] = {0};
    void* handle = api->load(bytes.data(), bytes.size(), err, sizeof(err));
    if (handle == nullptr) {
      *error = err;
      return std::unique_ptr<SentencePieceModel>();
    }
    return std::unique_ptr<SentencePieceModel>(new SentencePieceModel(api, handle));
  }
  ~SentencePieceModel() { api_->free(handle_); }

  int GetPieceSize() const { return api_->pieces(handle_); }
  int bos_id() const { return api_->bos(handle_); }
  int eos_id() const { return api_->eos(handle_); }
  int unk_id() const { return api_->unk(handle_); }
  int PieceToId(std::string_view piece) const { return api_->piece_to_id(handle_, piece.data(), piece.size()); }
  std::string IdToPiece(int id) const {
    std::string out;
    api_->piece(handle_, id, &AppendText, &out);
    return out;
  }
  bool Encode(std::string_view text, std::vector<int>* ids) const {
    return api_->encode(handle_, text.data(), text.size(), &AppendIds, ids) == 0;
  }
  bool Decode(const std::vector<int>& ids, std::string* text) const {
    return api_->decode(handle_, ids.data(), ids.size(), &AppendText, text) == 0;
  }

 private:
  SentencePieceModel(const SpmApi* api, void* handle) : api_(api), handle_(handle) {}
  static void AppendText(void* ctx, const char* text, size_t n) { static_cast<std::string*>(ctx)->append(text, n); }
  static void AppendIds(void* ctx, const int* ids, size_t n) {
    static_cast<std::vector<int>*>(ctx)->insert(static_cast<std::vector<int>*>(ctx)->end(), ids, ids + n);
  }
  const SpmApi* api_;
  void* handle_;
};

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kModelFile = "tokenizer.model";
constexpr const char* kFastTokenizerFile = "tokenizer.json";
constexpr const char* kConfigFile = "config.json";
constexpr const char* kTokenizerConfigFile = "tokenizer_config.json";

bool IsFile(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

Result<std::string> ReadFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) return IoError(fmt::format("cannot read '{}'", p.string()));
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return IoError(fmt::format("error reading '{}'", p.string()));
  return ss.str();
}

// The parsed JSON object of P, or nullopt when P does not exist.
Result<std::optional<json>> ReadJsonObject(const fs::path& p) {
  if (!IsFile(p)) return std::optional<json>();
  ASSIGN_OR_RETURN(std::string text, ReadFile(p));
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return DataLoss(fmt::format("'{}' is not valid JSON", p.string()));
  if (!j.is_object()) return DataLoss(fmt::format("'{}' is not a JSON object", p.string()));
  return std::optional<json>(std::move(j));
}

// Broken invariant: Encode/Decode only fail on an unloaded model or out-of-range ids, both
// excluded by construction.
[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "fedlora tokenizer: SentencePiece %s failed\n", what);
  std::abort();
}

Status CheckId(int64_t id, int vocab, const fs::path& file, std::string_view field) {
  if (id < 0 || id >= vocab) {
    return InvalidArgument(fmt::format("'{}' field {}: id {} is outside the tokenizer's vocabulary [0, {})",
                                       file.string(), field, id, vocab));
  }
  return Status::Ok();
}

// config.json's `FIELD` (bos_token_id / eos_token_id): nullopt when absent or null, else the
// ids (one, or for a list when ALLOW_LIST, each entry), all checked against the vocabulary.
Result<std::optional<std::vector<int32_t>>> IdsFromConfig(const json& config, std::string_view field,
                                                          bool allow_list, int vocab, const fs::path& file) {
  const auto it = config.find(field);
  if (it == config.end() || it->is_null()) return std::optional<std::vector<int32_t>>();
  std::vector<int32_t> ids;
  auto add = [&](const json& v) -> Status {
    if (!v.is_number_integer()) {
      return InvalidArgument(fmt::format("'{}' field {}: expected an integer token id, got {}",
                                         file.string(), field, v.dump()));
    }
    const int64_t id = v.get<int64_t>();
    RETURN_IF_ERROR(CheckId(id, vocab, file, field));
    ids.push_back(static_cast<int32_t>(id));
    return Status::Ok();
  };
  if (it->is_array() && allow_list) {
    if (it->empty()) return InvalidArgument(fmt::format("'{}' field {}: empty list", file.string(), field));
    for (const json& v : *it) RETURN_IF_ERROR(add(v));
  } else {
    RETURN_IF_ERROR(add(*it));
  }
  return std::optional<std::vector<int32_t>>(std::move(ids));
}

// tokenizer_config.json's `FIELD` (bos_token / eos_token): nullopt when absent or null, else
// the id of the piece it names ("<s>", or {"content": "<s>", ...} as transformers' AddedToken).
Result<std::optional<int32_t>> IdFromTokenizerConfig(const json& config, std::string_view field,
                                                     const SentencePieceModel& sp,
                                                     const fs::path& file) {
  const auto it = config.find(field);
  if (it == config.end() || it->is_null()) return std::optional<int32_t>();
  const json* piece = &*it;
  if (it->is_object()) {
    const auto content = it->find("content");
    if (content == it->end()) {
      return InvalidArgument(fmt::format("'{}' field {}: object without \"content\"", file.string(), field));
    }
    piece = &*content;
  }
  if (!piece->is_string()) {
    return InvalidArgument(fmt::format("'{}' field {}: expected a token string, got {}", file.string(), field,
                                       it->dump()));
  }
  const std::string& text = piece->get_ref<const std::string&>();
  const int id = sp.PieceToId(text);  // unknown pieces map to unk_id()
  if (id < 0 || id >= sp.GetPieceSize() || (id == sp.unk_id() && sp.IdToPiece(id) != text)) {
    return InvalidArgument(fmt::format("'{}' field {}: token '{}' is not in the SentencePiece vocabulary",
                                       file.string(), field, text));
  }
  return std::optional<int32_t>(id);
}

}  // namespace

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

Result<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& dir) {
  const fs::path root(dir);
  const fs::path model_path = root / kModelFile;
  if (!IsFile(model_path)) {
    if (IsFile(root / kFastTokenizerFile)) {
      return Unimplemented(fmt::format(
          "'{}' has only a Hugging Face fast tokenizer ({}, e.g. byte-level BPE); fedlora reads "
          "SentencePiece {} files",
          dir, kFastTokenizerFile, kModelFile));
    }
    std::error_code ec;
    if (!fs::is_directory(root, ec)) return NotFound(fmt::format("checkpoint directory '{}' does not exist", dir));
    return NotFound(fmt::format("'{}' not found (and no {} either)", model_path.string(), kFastTokenizerFile));
  }

  auto tok = std::unique_ptr<Tokenizer>(new Tokenizer());
  ASSIGN_OR_RETURN(std::string serialized, ReadFile(model_path));
  std::string error;
  ASSIGN_OR_RETURN(tok->sp_, SentencePieceModel::Load(serialized, &error));
  if (tok->sp_ == nullptr) {
    return DataLoss(fmt::format("'{}' is not a valid SentencePiece model: {}", model_path.string(), error));
  }
  const int vocab = tok->sp_->GetPieceSize();
  if (vocab <= 0) return DataLoss(fmt::format("'{}' has no pieces", model_path.string()));

  const fs::path config_path = root / kConfigFile;
  const fs::path tok_config_path = root / kTokenizerConfigFile;
  ASSIGN_OR_RETURN(std::optional<json> config, ReadJsonObject(config_path));
  ASSIGN_OR_RETURN(std::optional<json> tok_config, ReadJsonObject(tok_config_path));

  std::optional<std::vector<int32_t>> bos, eos;
  if (config) {
    ASSIGN_OR_RETURN(bos, IdsFromConfig(*config, "bos_token_id", /*allow_list=*/false, vocab, config_path));
    ASSIGN_OR_RETURN(eos, IdsFromConfig(*config, "eos_token_id", /*allow_list=*/true, vocab, config_path));
  }
  if (tok_config) {
    if (!bos) {
      ASSIGN_OR_RETURN(std::optional<int32_t> id, IdFromTokenizerConfig(*tok_config, "bos_token", *tok->sp_,
                                                                       tok_config_path));
      if (id) bos = std::vector<int32_t>{*id};
    }
    if (!eos) {
      ASSIGN_OR_RETURN(std::optional<int32_t> id, IdFromTokenizerConfig(*tok_config, "eos_token", *tok->sp_,
                                                                       tok_config_path));
      if (id) eos = std::vector<int32_t>{*id};
    }
    if (const auto it = tok_config->find("add_bos_token"); it != tok_config->end() && !it->is_null()) {
      if (!it->is_boolean()) {
        return InvalidArgument(fmt::format("'{}' field add_bos_token: expected true or false, got {}",
                                           tok_config_path.string(), it->dump()));
      }
      tok->add_bos_ = it->get<bool>();
    }
  }
  // The model's own ids are -1 when it defines none; then no id is added or skipped.
  tok->bos_id_ = bos ? bos->front() : tok->sp_->bos_id();
  if (eos) {
    tok->eos_ids_ = std::move(*eos);
  } else if (tok->sp_->eos_id() >= 0) {
    tok->eos_ids_ = {tok->sp_->eos_id()};
  }
  return tok;
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool add_bos, bool add_eos) const {
  std::vector<int> pieces;
  if (!sp_->Encode(text, &pieces)) Die("Encode");
  std::vector<int32_t> ids;
  ids.reserve(pieces.size() + 2);
  if (add_bos && bos_id_ >= 0) ids.push_back(bos_id_);
  ids.insert(ids.end(), pieces.begin(), pieces.end());
  if (add_eos && eos_id() >= 0) ids.push_back(eos_id());
  return ids;
}

std::string Tokenizer::Decode(std::span<const int32_t> ids) const {
  const int vocab = sp_->GetPieceSize();
  std::vector<int> kept;
  kept.reserve(ids.size());
  for (const int32_t id : ids) {
    if (id < 0 || id >= vocab || id == bos_id_) continue;
    if (std::find(eos_ids_.begin(), eos_ids_.end(), id) != eos_ids_.end()) continue;
    kept.push_back(id);
  }
  std::string text;
  if (!sp_->Decode(kept, &text)) Die("Decode");
  return text;
}

std::string Tokenizer::Piece(int32_t id) const {
  if (id < 0 || id >= sp_->GetPieceSize()) return {};
  return sp_->IdToPiece(id);
}

size_t Tokenizer::vocab_size() const { return static_cast<size_t>(sp_->GetPieceSize()); }

Result<std::string> TrainSentencePiece(const std::vector<std::string>& sentences,
                                       const SentencePieceTrainOptions& options) {
  if (options.vocab_size < 300) {
    return InvalidArgument(fmt::format("a SentencePiece vocabulary needs at least 300 pieces (the 256 byte pieces, the "
                                       "special ones and some merges), got {}",
                                       options.vocab_size));
  }
  if (sentences.empty()) return InvalidArgument("no text to train the tokenizer on");
  ASSIGN_OR_RETURN(const SpmApi* api, LoadSpmApi());
  // Llama's conventions: unk 0, <s> 1, </s> 2, no pad; BPE over bytes for anything unseen;
  // digits one by one; the text kept as written (no NFKC).
  const std::vector<std::pair<std::string, std::string>> args = {
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(options.vocab_size)},
      {"hard_vocab_limit", "false"},  // a small text gets the pieces it supports
      {"character_coverage", "0.9995"},
      {"byte_fallback", "true"},
      {"split_digits", "true"},
      {"normalization_rule_name", "identity"},
      {"add_dummy_prefix", "true"},
      {"remove_extra_whitespaces", "false"},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"max_sentence_length", "16384"},
      {"input_sentence_size", "0"},
      {"shuffle_input_sentence", "false"},
      {"num_threads", "1"},  // one thread: the merges do not depend on scheduling
      {"minloglevel", options.quiet ? "2" : "0"},
  };
  std::vector<const char*> keys, values;
  for (const auto& [k, v] : args) {
    keys.push_back(k.c_str());
    values.push_back(v.c_str());
  }
  std::vector<const char*> texts;
  std::vector<size_t> lengths;
  texts.reserve(sentences.size());
  lengths.reserve(sentences.size());
  for (const auto& s : sentences) {
    texts.push_back(s.data());
    lengths.push_back(s.size());
  }
  std::string model;
  char err[1024] = {0};
  const int rc = api->train(keys.data(), values.data(), keys.size(), texts.data(), lengths.data(), texts.size(),
                            static_cast<unsigned>(options.seed),
                            [](void* ctx, const char* text, size_t n) { static_cast<std::string*>(ctx)->assign(text, n); },
                            &model, err, sizeof(err));
  if (rc != 0) return InvalidArgument(fmt::format("training the SentencePiece tokenizer failed: {}", err));
  return model;
}

}  // namespace fedlora::worker::lm
