#include "worker/lm/packaged_text.h"

#include <fmt/format.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <random>
#include <system_error>
#include <unordered_set>

namespace fedlora::worker::lm {

const std::array<std::string_view, kWordNetLexFiles> kWordNetLexNames = {
    "adj.all",          "adj.pert",           "adv.all",
    "noun.Tops",        "noun.act",           "noun.animal",
    "noun.artifact",    "noun.attribute",     "noun.body",
    "noun.cognition",   "noun.communication", "noun.event",
    "noun.feeling",     "noun.food",          "noun.group",
    "noun.location",    "noun.motive",        "noun.object",
    "noun.person",      "noun.phenomenon",    "noun.plant",
    "noun.possession",  "noun.process",       "noun.quantity",
    "noun.relation",    "noun.shape",         "noun.state",
    "noun.substance",   "noun.time",          "verb.body",
    "verb.change",      "verb.cognition",     "verb.communication",
    "verb.competition", "verb.consumption",   "verb.contact",
    "verb.creation",    "verb.emotion",       "verb.motion",
    "verb.perception",  "verb.possession",    "verb.social",
    "verb.stative",     "verb.weather",       "adj.ppl",
};

namespace {

namespace fs = std::filesystem;

// The data files of a WordNet directory, in reading order.
constexpr std::array<const char*, 4> kWordNetFiles = {"data.noun", "data.verb", "data.adj",
                                                      "data.adv"};
constexpr const char* kWordNetPackageHint = "install the Debian package wordnet-base";
constexpr const char* kGcidePackageHint = "install the Debian package dict-gcide";

// Bytes handed to one gzread call.
constexpr unsigned kReadChunk = 1u << 20;

bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

bool IsBlankOrTab(char c) { return c == ' ' || c == '\t'; }

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

bool IsUpper(char c) { return c >= 'A' && c <= 'Z'; }

std::string_view Trim(std::string_view s) {
  while (!s.empty() && IsSpace(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsSpace(s.back())) s.remove_suffix(1);
  return s;
}

bool AllDigits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), IsDigit);
}

// Calls fn(line, line_number) for every line of `text` (numbered from 1); `line` excludes the
// '\n' and a '\r' before it. A final line without '\n' counts; nothing follows a final '\n'.
// Stops early, returning that status, when fn returns a non-OK one.
template <typename Fn>
Status ForEachLine(std::string_view text, Fn&& fn) {
  size_t begin = 0;
  size_t number = 0;
  while (begin < text.size()) {
    const size_t newline = text.find('\n', begin);
    const size_t end = newline == std::string_view::npos ? text.size() : newline;
    std::string_view line = text.substr(begin, end - begin);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    RETURN_IF_ERROR(fn(line, ++number));
    begin = newline == std::string_view::npos ? text.size() : newline + 1;
  }
  return Status::Ok();
}

// Whether `path` exists (anything but a clear "no such file" counts as existing, so that the
// read reports the real problem).
bool Exists(const fs::path& path) {
  std::error_code ec;
  return fs::status(path, ec).type() != fs::file_type::not_found;
}

// The whole content of `path`, gunzipped when it is gzip data (zlib reads other files as they
// are). `what` names the file in messages ("WordNet data file").
Result<std::string> ReadWholeFile(const fs::path& path, std::string_view what) {
  const std::string name = path.string();
  errno = 0;
  gzFile file = gzopen(name.c_str(), "rb");
  if (file == nullptr) {
    return Unavailable(fmt::format("cannot open {} '{}': {}", what, name,
                                   errno != 0 ? std::strerror(errno) : "out of memory"));
  }
  gzbuffer(file, 1u << 17);
  std::string content;
  std::error_code ec;
  const uintmax_t size = fs::file_size(path, ec);
  if (!ec) content.reserve(static_cast<size_t>(size));
  int read = 0;
  do {
    const size_t old = content.size();
    content.resize(old + kReadChunk);
    read = gzread(file, content.data() + old, kReadChunk);
    content.resize(old + static_cast<size_t>(std::max(read, 0)));
  } while (read > 0);
  int error = Z_OK;
  std::string message = gzerror(file, &error);
  if (read == 0 && error == Z_OK) {
    // A gzip stream cut short shows only when the file is closed.
    error = gzclose(file);
    message = "unexpected end of file";
  } else {
    gzclose(file);
  }
  if (error == Z_DATA_ERROR || error == Z_BUF_ERROR) {
    return DataLoss(
        fmt::format("corrupt or truncated gzip data in {} '{}': {}", what, name, message));
  }
  if (error != Z_OK) {  // Z_ERRNO (the message holds strerror), Z_MEM_ERROR
    return Unavailable(fmt::format("error reading {} '{}': {}", what, name, message));
  }
  return content;
}

// ---------------------------------------------------------------------------------------------
// WordNet

// A synset read from a data file: its class, file and example text (pointing into the file's
// content).
struct Synset {
  uint8_t label = 0;
  uint8_t file = 0;
  std::string_view text;
};

// The first whitespace-separated field of `*rest`, removed from it.
std::string_view NextField(std::string_view* rest) {
  std::string_view s = *rest;
  while (!s.empty() && IsBlankOrTab(s.front())) s.remove_prefix(1);
  size_t end = 0;
  while (end < s.size() && !IsBlankOrTab(s[end])) ++end;
  *rest = s.substr(end);
  return s.substr(0, end);
}

// Parses `line` to (lex_filenum, gloss view into `line`).
Result<std::pair<int, std::string_view>> ParseSynsetView(std::string_view line) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  const size_t bar = line.find('|');
  if (bar == std::string_view::npos) {
    return DataLoss("synset line has no '|' before its gloss");
  }
  std::string_view head = line.substr(0, bar);
  const std::string_view offset = NextField(&head);
  if (!AllDigits(offset)) {
    return DataLoss(fmt::format("synset offset '{}' is not a decimal number", offset));
  }
  const std::string_view lex = NextField(&head);
  if (lex.empty()) return DataLoss("synset line has no lex_filenum");
  if (!AllDigits(lex)) {
    return DataLoss(fmt::format("lex_filenum '{}' is not a decimal number", lex));
  }
  size_t value = 0;
  for (char c : lex) {
    value = value * 10 + static_cast<size_t>(c - '0');
    if (value >= kWordNetLexFiles) {
      return DataLoss(
          fmt::format("lex_filenum {} is out of range 0..{}", lex, kWordNetLexFiles - 1));
    }
  }
  return std::pair<int, std::string_view>(static_cast<int>(value), Trim(line.substr(bar + 1)));
}

// Appends `ids`, truncated to max_tokens, as an example of `label`; false (nothing appended)
// when they are fewer than min_tokens.
bool AppendExample(std::vector<int32_t>&& ids, uint8_t label, const GlossOptions& options,
                   Dataset& data) {
  if (ids.size() > options.max_tokens) ids.resize(options.max_tokens);
  if (ids.size() < options.min_tokens) return false;
  data.tokens.insert(data.tokens.end(), ids.begin(), ids.end());
  data.offsets.push_back(data.tokens.size());
  data.labels.push_back(label);
  return true;
}

// ---------------------------------------------------------------------------------------------
// dictd

// A span of the data file named by the index.
struct Span {
  uint64_t offset = 0;
  uint64_t length = 0;
  bool operator==(const Span& other) const {
    return offset == other.offset && length == other.length;
  }
};

struct SpanHash {
  size_t operator()(const Span& s) const {
    return static_cast<size_t>(s.offset * 0x9E3779B97F4A7C15ull ^ s.length);
  }
};

// The index path of a .dict or .dict.dz path, or empty when it has neither suffix.
std::string IndexPathOf(const std::string& path) {
  for (std::string_view suffix : {std::string_view(".dict.dz"), std::string_view(".dict")}) {
    if (path.size() > suffix.size() &&
        std::string_view(path).substr(path.size() - suffix.size()) == suffix) {
      return path.substr(0, path.size() - suffix.size()) + ".index";
    }
  }
  return {};
}

// Whether a word inside brackets belongs to a GCIDE source tag (see CleanGcideEntry).
bool IsSourceWord(std::string_view word, bool* is_number) {
  *is_number = false;
  static constexpr std::array<std::string_view, 11> kWords = {
      "Webster", "Suppl.", "WordNet",    "Wordnet", "sense", "Century",
      "Dict.",   "Dict.,", "Dictionary", "&",       "PJC."};
  if (std::find(kWords.begin(), kWords.end(), word) != kWords.end()) return true;
  if (std::any_of(word.begin(), word.end(), IsDigit) &&
      std::all_of(word.begin(), word.end(),
                  [](char c) { return IsDigit(c) || c == '.' || c == ','; })) {
    *is_number = true;
    return true;
  }
  size_t letters = 0;
  while (letters < word.size() && IsUpper(word[letters])) ++letters;
  return letters >= 2 && letters <= 4 &&
         std::all_of(word.begin() + static_cast<std::ptrdiff_t>(letters), word.end(), IsDigit);
}

// Whether `inside` (the text between '[' and ']') is a source tag.
bool IsSourceTag(std::string_view inside) {
  bool any_word = false;
  bool all_numbers = true;
  size_t i = 0;
  while (i < inside.size()) {
    if (IsSpace(inside[i]) || inside[i] == '+') {
      ++i;
      continue;
    }
    size_t end = i;
    while (end < inside.size() && !IsSpace(inside[end]) && inside[end] != '+') ++end;
    bool is_number = false;
    if (!IsSourceWord(inside.substr(i, end - i), &is_number)) return false;
    any_word = true;
    all_numbers = all_numbers && is_number;
    i = end;
  }
  return !any_word || !all_numbers;
}

// The end (index of the closing backslash) of the pronunciation whose opening backslash is
// just before `from`, or npos when there is none on this line or the next.
size_t PronunciationEnd(std::string_view raw, size_t from) {
  int newlines = 0;
  for (size_t i = from; i < raw.size(); ++i) {
    if (raw[i] == '\\') return i;
    if (raw[i] == '\n' && ++newlines > 1) break;
  }
  return std::string_view::npos;
}

// The length of the well-formed UTF-8 sequence at s[i], or 0 when none starts there.
size_t Utf8SequenceLength(std::string_view s, size_t i) {
  const auto lead = static_cast<unsigned char>(s[i]);
  if (lead < 0x80) return 1;
  size_t length = 0;
  uint32_t code_point = 0;
  uint32_t smallest = 0;
  if ((lead & 0xE0) == 0xC0) {
    length = 2, code_point = lead & 0x1F, smallest = 0x80;
  } else if ((lead & 0xF0) == 0xE0) {
    length = 3, code_point = lead & 0x0F, smallest = 0x800;
  } else if ((lead & 0xF8) == 0xF0) {
    length = 4, code_point = lead & 0x07, smallest = 0x10000;
  } else {
    return 0;
  }
  if (s.size() - i < length) return 0;
  for (size_t k = 1; k < length; ++k) {
    const auto next = static_cast<unsigned char>(s[i + k]);
    if ((next & 0xC0) != 0x80) return 0;
    code_point = (code_point << 6) | (next & 0x3F);
  }
  if (code_point < smallest || code_point > 0x10FFFF ||
      (code_point >= 0xD800 && code_point <= 0xDFFF)) {
    return 0;
  }
  return length;
}

// Appends code point `cp` (< 0x10000) as UTF-8.
void AppendUtf8(uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Windows-1252 bytes 0x80..0x9F as code points (U+FFFD for the five it leaves undefined);
// bytes 0xA0..0xFF are U+00A0..U+00FF.
constexpr std::array<uint16_t, 32> kCp1252High = {
    0x20AC, 0xFFFD, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
    0x2039, 0x0152, 0xFFFD, 0x017D, 0xFFFD, 0xFFFD, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
    0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0xFFFD, 0x017E, 0x0178};

// `text` with every byte that does not begin a well-formed UTF-8 sequence read as
// Windows-1252.
std::string RepairUtf8(std::string text) {
  if (std::all_of(text.begin(), text.end(),
                  [](char c) { return static_cast<unsigned char>(c) < 0x80; })) {
    return text;
  }
  std::string out;
  out.reserve(text.size() + 8);
  size_t i = 0;
  while (i < text.size()) {
    const size_t length = Utf8SequenceLength(text, i);
    if (length > 0) {
      out.append(text, i, length);
      i += length;
      continue;
    }
    const auto byte = static_cast<unsigned char>(text[i]);
    AppendUtf8(byte < 0xA0 ? kCp1252High[byte - 0x80] : byte, out);
    ++i;
  }
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// WordNet

Result<std::pair<int, std::string>> ParseSynsetLine(std::string_view line) {
  ASSIGN_OR_RETURN(auto parsed, ParseSynsetView(line));
  return std::pair<int, std::string>(parsed.first, std::string(parsed.second));
}

std::string_view GlossDefinition(std::string_view gloss) {
  for (size_t semicolon = gloss.find(';'); semicolon != std::string_view::npos;
       semicolon = gloss.find(';', semicolon + 1)) {
    size_t next = semicolon + 1;
    while (next < gloss.size() && IsBlankOrTab(gloss[next])) ++next;
    if (next < gloss.size() && gloss[next] == '"') return Trim(gloss.substr(0, semicolon));
  }
  return Trim(gloss);
}

Result<Dataset> LoadWordNetGlosses(const GlossOptions& options, const TextEncoder& encode,
                                   const std::function<void(size_t, size_t)>& progress) {
  if (options.max_tokens < 2) {
    return InvalidArgument(
        fmt::format("gloss max_tokens must be at least 2, got {}", options.max_tokens));
  }
  if (options.min_tokens > options.max_tokens) {
    return InvalidArgument(fmt::format("gloss min_tokens {} exceeds max_tokens {}",
                                       options.min_tokens, options.max_tokens));
  }
  if (!encode) return InvalidArgument("LoadWordNetGlosses needs an encoder");

  const fs::path dir(options.dir);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return NotFound(fmt::format("WordNet directory '{}' does not exist or is not a directory; {}",
                                options.dir, kWordNetPackageHint));
  }
  std::array<fs::path, kWordNetFiles.size()> paths;
  for (size_t f = 0; f < paths.size(); ++f) {
    paths[f] = dir / kWordNetFiles[f];
    if (!Exists(paths[f])) {
      return NotFound(fmt::format("WordNet data file '{}' does not exist; {}", paths[f].string(),
                                  kWordNetPackageHint));
    }
  }

  // Every file is parsed before anything is encoded, so that a sample can visit a class's
  // synsets across files; the texts point into `contents`.
  std::array<std::string, kWordNetFiles.size()> contents;
  std::vector<Synset> synsets;
  for (size_t f = 0; f < paths.size(); ++f) {
    ASSIGN_OR_RETURN(contents[f], ReadWholeFile(paths[f], "WordNet data file"));
    RETURN_IF_ERROR(ForEachLine(contents[f], [&](std::string_view line, size_t number) {
      if (line.empty() || line.starts_with("  ")) return Status::Ok();  // licence header
      auto parsed = ParseSynsetView(line);
      if (!parsed.ok()) {
        return DataLoss(fmt::format("WordNet data file '{}' line {}: {}", paths[f].string(), number,
                                    parsed.status().message()));
      }
      const auto [lex, gloss] = *parsed;
      synsets.push_back({static_cast<uint8_t>(lex), static_cast<uint8_t>(f),
                         options.examples ? gloss : GlossDefinition(gloss)});
      return Status::Ok();
    }));
  }

  // With a per-class limit, the examples each class keeps, encoded (empty: not kept).
  const size_t limit = options.max_examples_per_class;
  std::vector<std::vector<int32_t>> sampled;
  std::vector<bool> keep;
  if (limit != 0) {
    sampled.resize(synsets.size());
    keep.assign(synsets.size(), false);
    std::array<std::vector<size_t>, kWordNetLexFiles> by_class;
    for (size_t i = 0; i < synsets.size(); ++i) by_class[synsets[i].label].push_back(i);
    for (size_t label = 0; label < by_class.size(); ++label) {
      std::vector<size_t>& members = by_class[label];
      if (members.empty()) continue;
      // A generator per class, so that one class's sample ignores the others.
      std::seed_seq seq{static_cast<uint32_t>(options.seed),
                        static_cast<uint32_t>(options.seed >> 32), static_cast<uint32_t>(label)};
      std::mt19937_64 rng(seq);
      SeededShuffle(members, rng);
      size_t kept = 0;
      for (size_t k = 0; k < members.size() && kept < limit; ++k) {
        const size_t i = members[k];
        std::vector<int32_t> ids = encode(synsets[i].text);
        if (ids.size() > options.max_tokens) ids.resize(options.max_tokens);
        if (ids.size() < options.min_tokens) continue;
        sampled[i] = std::move(ids);
        keep[i] = true;
        ++kept;
      }
    }
  }

  Dataset data;
  data.num_classes = static_cast<int>(kWordNetLexFiles);
  data.class_names.assign(kWordNetLexNames.begin(), kWordNetLexNames.end());
  const size_t expected = limit == 0 || limit >= synsets.size()
                              ? synsets.size()
                              : std::min(synsets.size(), limit * kWordNetLexFiles);
  size_t text_bytes = 0;
  for (const Synset& synset : synsets) text_bytes += synset.text.size();
  // About one id per four bytes of English text under a Llama tokenizer, plus BOS.
  data.tokens.reserve(std::min(expected * options.max_tokens, text_bytes / 4 + expected));
  data.offsets.reserve(expected + 1);
  data.labels.reserve(expected);
  data.offsets.push_back(0);
  size_t i = 0;
  for (size_t f = 0; f < paths.size(); ++f) {
    for (; i < synsets.size() && synsets[i].file == f; ++i) {
      const Synset& synset = synsets[i];
      if (limit == 0) {
        AppendExample(encode(synset.text), synset.label, options, data);
      } else if (keep[i]) {
        AppendExample(std::move(sampled[i]), synset.label, options, data);
      }
    }
    if (progress) progress(f + 1, paths.size());
  }
  if (data.size() == 0) {
    return InvalidArgument(fmt::format("no WordNet gloss of at least {} tokens in '{}'",
                                       options.min_tokens, options.dir));
  }
  return data;
}

// ---------------------------------------------------------------------------------------------
// dictd

uint64_t DecodeDictdBase64(std::string_view text, bool* ok) {
  if (ok != nullptr) *ok = false;
  if (text.empty()) return 0;
  uint64_t value = 0;
  for (char c : text) {
    uint64_t digit = 0;
    if (c >= 'A' && c <= 'Z') {
      digit = static_cast<uint64_t>(c - 'A');
    } else if (c >= 'a' && c <= 'z') {
      digit = static_cast<uint64_t>(c - 'a') + 26;
    } else if (c >= '0' && c <= '9') {
      digit = static_cast<uint64_t>(c - '0') + 52;
    } else if (c == '+') {
      digit = 62;
    } else if (c == '/') {
      digit = 63;
    } else {
      return 0;
    }
    if (value > (UINT64_MAX >> 6)) return 0;  // the shift would lose bits
    value = (value << 6) | digit;
  }
  if (ok != nullptr) *ok = true;
  return value;
}

std::string CleanGcideEntry(std::string_view raw) {
  // 1. Pronunciations.
  std::string text;
  text.reserve(raw.size());
  for (size_t i = 0; i < raw.size();) {
    if (raw[i] != '\\') {
      text.push_back(raw[i++]);
      continue;
    }
    const size_t end = PronunciationEnd(raw, i + 1);
    if (end == std::string_view::npos) {
      ++i;  // a lone backslash
      continue;
    }
    i = end + 1;
    if (i < raw.size() && std::string_view(",;:.)").find(raw[i]) != std::string_view::npos) {
      while (!text.empty() && IsBlankOrTab(text.back())) text.pop_back();
    }
  }

  // 2-4. Source tags, braces and layout. Spaces and block breaks are written lazily, before
  // the next visible character, so the result comes out trimmed.
  std::string out;
  out.reserve(text.size());
  bool space_pending = false;
  bool break_pending = false;
  (void)ForEachLine(text, [&](std::string_view line, size_t) {
    line = Trim(line);
    const bool blank = line.empty();
    if (!line.empty() && line.front() == '[') {
      const size_t close = line.find(']');
      if (close != std::string_view::npos && IsSourceTag(line.substr(1, close - 1))) {
        line = Trim(line.substr(close + 1));
      }
    }
    if (!line.empty() && line.back() == ']') {
      const size_t open = line.rfind('[');
      if (open != std::string_view::npos &&
          IsSourceTag(line.substr(open + 1, line.size() - open - 2))) {
        line = Trim(line.substr(0, open));
      }
    }
    if (line.empty() && !blank) return Status::Ok();  // a source-tag line: dropped, not blank
    if (line.empty()) {
      break_pending = !out.empty();
      return Status::Ok();
    }
    space_pending = true;  // lines of a block are joined by a space
    for (char c : line) {
      if (c == '{' || c == '}') continue;
      if (IsSpace(c)) {
        space_pending = true;
        continue;
      }
      if (!out.empty()) {
        if (break_pending) {
          out.push_back('\n');
        } else if (space_pending) {
          out.push_back(' ');
        }
      }
      break_pending = space_pending = false;
      out.push_back(c);
    }
    return Status::Ok();
  });

  // 5. Encoding.
  return RepairUtf8(std::move(out));
}

Result<std::vector<std::string>> ReadDictdDocuments(const DictdOptions& options) {
  const std::string index_path = IndexPathOf(options.path);
  if (index_path.empty()) {
    return InvalidArgument(
        fmt::format("dictd data path '{}' does not end in .dict or .dict.dz", options.path));
  }
  for (const std::string& path : {options.path, index_path}) {
    if (!Exists(path)) {
      return NotFound(fmt::format("dictd file '{}' does not exist; {}", path, kGcidePackageHint));
    }
  }
  ASSIGN_OR_RETURN(const std::string index, ReadWholeFile(index_path, "dictd index"));
  ASSIGN_OR_RETURN(const std::string data, ReadWholeFile(options.path, "dictd data file"));

  // Every index line, checked; the spans of the 00-database-* entries.
  std::vector<Span> spans;
  std::unordered_set<Span, SpanHash> metadata;
  RETURN_IF_ERROR(ForEachLine(index, [&](std::string_view line, size_t number) {
    if (Trim(line).empty()) return Status::Ok();
    auto bad = [&](std::string_view why) {
      return DataLoss(
          fmt::format("dictd index '{}' line {} ('{}'): {}", index_path, number, line, why));
    };
    const size_t tab1 = line.find('\t');
    const size_t tab2 = tab1 == std::string_view::npos ? tab1 : line.find('\t', tab1 + 1);
    if (tab2 == std::string_view::npos || line.find('\t', tab2 + 1) != std::string_view::npos) {
      return bad("expected headword<TAB>offset<TAB>length");
    }
    bool offset_ok = false;
    bool length_ok = false;
    const Span span{DecodeDictdBase64(line.substr(tab1 + 1, tab2 - tab1 - 1), &offset_ok),
                    DecodeDictdBase64(line.substr(tab2 + 1), &length_ok)};
    if (!offset_ok || !length_ok) return bad("offset or length is not a dictd base64 number");
    if (span.offset > data.size() || span.length > data.size() - span.offset) {
      return bad(fmt::format("entry [{}, {}) lies beyond the {} bytes of '{}'", span.offset,
                             span.offset + span.length, data.size(), options.path));
    }
    if (line.substr(0, tab1).starts_with("00-database-")) {
      metadata.insert(span);
    } else {
      spans.push_back(span);
    }
    return Status::Ok();
  }));

  // Distinct entries, in index order, less the metadata.
  std::vector<Span> entries;
  entries.reserve(spans.size());
  std::unordered_set<Span, SpanHash> seen(metadata.begin(), metadata.end());
  seen.reserve(spans.size() + metadata.size());
  for (const Span& span : spans) {
    if (seen.insert(span).second) entries.push_back(span);
  }

  std::vector<size_t> chosen(entries.size());
  for (size_t i = 0; i < chosen.size(); ++i) chosen[i] = i;
  if (options.max_entries != 0 && options.max_entries < entries.size()) {
    std::mt19937_64 rng(options.seed);
    SeededShuffle(chosen, rng);
    chosen.resize(options.max_entries);
    std::sort(chosen.begin(), chosen.end());
  }

  std::vector<std::string> documents;
  documents.reserve(chosen.size());
  const std::string_view all(data);
  for (size_t i : chosen) {
    std::string document = CleanGcideEntry(all.substr(entries[i].offset, entries[i].length));
    if (!document.empty()) documents.push_back(std::move(document));
  }
  return documents;
}

}  // namespace fedlora::worker::lm
