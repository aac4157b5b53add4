#include "worker/lm/text_corpus.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <system_error>
#include <utility>

namespace fedlora::worker::lm {
namespace {

namespace fs = std::filesystem;

constexpr size_t kNoInvalidByte = std::string_view::npos;
// Guess of UTF-8 bytes per token used to reserve the token vector once up front (English text
// under a Llama SentencePiece model averages about four); the vector grows as usual past it.
constexpr uint64_t kBytesPerTokenEstimate = 4;

// A file to read, and whether it was found by scanning a directory (binary files found that
// way are skipped instead of failing the load).
struct SourceFile {
  fs::path path;
  bool from_directory = false;
};

bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && IsSpace(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsSpace(s.back())) s.remove_suffix(1);
  return s;
}

bool IsBlank(std::string_view s) { return std::all_of(s.begin(), s.end(), IsSpace); }

// "'a', 'b'" for error messages.
std::string QuotedList(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& item : items) {
    if (!out.empty()) out += ", ";
    out += fmt::format("'{}'", item);
  }
  return out;
}

// The offset of the first byte of `s` that does not start a well-formed UTF-8 sequence
// (overlong forms, surrogates and code points above U+10FFFF are ill-formed), or
// kNoInvalidByte when all of `s` is valid.
size_t FirstInvalidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto lead = static_cast<unsigned char>(s[i]);
    if (lead < 0x80) {
      ++i;
      continue;
    }
    size_t length = 0;
    uint32_t code_point = 0;
    uint32_t smallest = 0;
    if ((lead & 0xE0) == 0xC0) {
      length = 2;
      code_point = lead & 0x1F;
      smallest = 0x80;
    } else if ((lead & 0xF0) == 0xE0) {
      length = 3;
      code_point = lead & 0x0F;
      smallest = 0x800;
    } else if ((lead & 0xF8) == 0xF0) {
      length = 4;
      code_point = lead & 0x07;
      smallest = 0x10000;
    } else {
      return i;  // a continuation byte or 0xF8..0xFF where a sequence must start
    }
    if (s.size() - i < length) return i;
    for (size_t k = 1; k < length; ++k) {
      const auto next = static_cast<unsigned char>(s[i + k]);
      if ((next & 0xC0) != 0x80) return i;
      code_point = (code_point << 6) | (next & 0x3F);
    }
    if (code_point < smallest || code_point > 0x10FFFF ||
        (code_point >= 0xD800 && code_point <= 0xDFFF)) {
      return i;
    }
    i += length;
  }
  return kNoInvalidByte;
}

// Why `text` is not UTF-8 text ("a NUL byte at offset 12"), or empty when it is.
std::string BinaryReason(std::string_view text) {
  if (const size_t nul = text.find('\0'); nul != std::string_view::npos) {
    return fmt::format("a NUL byte at offset {}", nul);
  }
  if (const size_t bad = FirstInvalidUtf8(text); bad != kNoInvalidByte) {
    return fmt::format("invalid UTF-8 at offset {}", bad);
  }
  return {};
}

// Calls fn(line, line_begin, next_line_begin) for every line of `text`; `line` excludes the
// '\n' and a '\r' before it. A final line without '\n' counts; nothing follows a final '\n'.
template <typename Fn>
void ForEachLine(std::string_view text, Fn&& fn) {
  size_t begin = 0;
  while (begin < text.size()) {
    const size_t newline = text.find('\n', begin);
    const size_t end = newline == std::string_view::npos ? text.size() : newline;
    const size_t next = newline == std::string_view::npos ? text.size() : newline + 1;
    std::string_view line = text.substr(begin, end - begin);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    fn(line, begin, next);
    begin = next;
  }
}

// The trimmed, non-empty documents of `text`: fortune entries when some line is exactly "%",
// paragraphs otherwise. The views point into `text`.
std::vector<std::string_view> SplitDocuments(std::string_view text) {
  bool fortune_format = false;
  ForEachLine(text, [&](std::string_view line, size_t, size_t) {
    if (line == "%") fortune_format = true;
  });

  std::vector<std::string_view> documents;
  auto add = [&](size_t begin, size_t end) {
    const std::string_view document = Trim(text.substr(begin, end - begin));
    if (!document.empty()) documents.push_back(document);
  };
  if (fortune_format) {
    size_t entry_begin = 0;
    ForEachLine(text, [&](std::string_view line, size_t line_begin, size_t next) {
      if (line != "%") return;
      add(entry_begin, line_begin);
      entry_begin = next;
    });
    add(entry_begin, text.size());
  } else {
    bool in_paragraph = false;
    size_t paragraph_begin = 0;
    ForEachLine(text, [&](std::string_view line, size_t line_begin, size_t) {
      if (IsBlank(line)) {
        if (in_paragraph) add(paragraph_begin, line_begin);
        in_paragraph = false;
      } else if (!in_paragraph) {
        paragraph_begin = line_begin;
        in_paragraph = true;
      }
    });
    if (in_paragraph) add(paragraph_begin, text.size());
  }
  return documents;
}

// The regular files of `dir` that a scan takes (see the header), sorted by name.
Result<std::vector<fs::path>> ListDirectory(const fs::path& dir) {
  std::vector<std::pair<std::string, fs::path>> named;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec); !ec && it != fs::directory_iterator();
       it.increment(ec)) {
    std::string name = it->path().filename().string();
    if (name.empty() || name.front() == '.' || name.find('.') != std::string::npos) continue;
    std::error_code type_ec;
    if (!it->is_regular_file(type_ec)) continue;  // subdirectories, sockets, broken links
    named.emplace_back(std::move(name), it->path());
  }
  if (ec) {
    return Unavailable(
        fmt::format("cannot list text directory '{}': {}", dir.string(), ec.message()));
  }
  std::sort(named.begin(), named.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<fs::path> files;
  files.reserve(named.size());
  for (auto& [name, path] : named) files.push_back(std::move(path));
  return files;
}

// Every file to read, in label order.
Result<std::vector<SourceFile>> CollectSources(const std::vector<std::string>& paths) {
  std::vector<SourceFile> sources;
  for (const std::string& path : paths) {
    std::error_code ec;
    const fs::file_status status = fs::status(path, ec);
    if (status.type() == fs::file_type::not_found) {
      return NotFound(fmt::format("text path '{}' does not exist", path));
    }
    if (ec) return Unavailable(fmt::format("cannot stat text path '{}': {}", path, ec.message()));
    if (fs::is_directory(status)) {
      ASSIGN_OR_RETURN(std::vector<fs::path> files, ListDirectory(path));
      for (fs::path& file : files) sources.push_back({std::move(file), /*from_directory=*/true});
    } else if (fs::is_regular_file(status)) {
      sources.push_back({fs::path(path), /*from_directory=*/false});
    } else {
      return InvalidArgument(
          fmt::format("text path '{}' is neither a regular file nor a directory", path));
    }
  }
  return sources;
}

// The whole content of `path`.
Result<std::string> ReadWholeFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Unavailable(fmt::format("cannot open text file '{}'", path.string()));
  std::string content;
  std::error_code ec;
  const uintmax_t size = fs::file_size(path, ec);
  if (!ec) content.reserve(static_cast<size_t>(size));
  std::array<char, 1 << 16> buffer;
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    content.append(buffer.data(), static_cast<size_t>(in.gcount()));
  }
  if (in.bad()) return Unavailable(fmt::format("error reading text file '{}'", path.string()));
  return content;
}

// Appends the examples of one source's `text` under `label`.
void AppendExamples(std::string_view text, uint8_t label, const TextCorpusOptions& options,
                    const TextEncoder& encode, Dataset& data) {
  const size_t limit = options.max_examples_per_source;
  size_t kept = 0;
  for (std::string_view document : SplitDocuments(text)) {
    const std::vector<int32_t> ids = encode(document);
    for (size_t begin = 0; begin < ids.size(); begin += options.max_tokens) {
      const size_t end = std::min(ids.size(), begin + options.max_tokens);
      // Only the last window can be short.
      if (end - begin < options.min_tokens) break;
      data.tokens.insert(data.tokens.end(), ids.begin() + static_cast<std::ptrdiff_t>(begin),
                         ids.begin() + static_cast<std::ptrdiff_t>(end));
      data.offsets.push_back(data.tokens.size());
      data.labels.push_back(label);
      if (++kept == limit) return;  // never true for limit 0: no limit
    }
  }
}

}  // namespace

Result<Dataset> LoadTextCorpus(const TextCorpusOptions& options, const TextEncoder& encode,
                               const std::function<void(size_t, size_t)>& progress) {
  if (options.max_tokens < 2) {
    return InvalidArgument(
        fmt::format("text max_tokens must be at least 2, got {}", options.max_tokens));
  }
  if (options.min_tokens > options.max_tokens) {
    return InvalidArgument(fmt::format("text min_tokens {} exceeds max_tokens {}",
                                       options.min_tokens, options.max_tokens));
  }
  if (!encode) return InvalidArgument("LoadTextCorpus needs an encoder");
  if (options.paths.empty()) return InvalidArgument("no text paths given");

  ASSIGN_OR_RETURN(std::vector<SourceFile> files, CollectSources(options.paths));

  // One up-front reservation from the files' sizes, bounded by what the options can keep.
  uint64_t total_bytes = 0;
  for (const SourceFile& file : files) {
    std::error_code ec;
    const uintmax_t size = fs::file_size(file.path, ec);
    if (!ec) total_bytes += size;
  }
  uint64_t expected_tokens = total_bytes / kBytesPerTokenEstimate;
  if (options.max_examples_per_source != 0) {
    const uint64_t most = uint64_t{std::min(files.size(), kMaxTextSources)} *
                          options.max_examples_per_source * options.max_tokens;
    expected_tokens = std::min(expected_tokens, most);
  }

  Dataset data;
  data.tokens.reserve(static_cast<size_t>(expected_tokens));
  data.offsets.push_back(0);
  for (size_t f = 0; f < files.size(); ++f) {
    const SourceFile& file = files[f];
    ASSIGN_OR_RETURN(std::string text, ReadWholeFile(file.path));
    if (const std::string reason = BinaryReason(text); !reason.empty()) {
      if (!file.from_directory) {
        return DataLoss(fmt::format("text file '{}' is not UTF-8 text: {}", file.path.string(),
                                    reason));
      }
      // A binary file beside the text in a scanned directory: not a source.
    } else {
      if (data.class_names.size() == kMaxTextSources) {
        return InvalidArgument(fmt::format(
            "more than {} text sources in {} (labels are 8-bit); name fewer files",
            kMaxTextSources, QuotedList(options.paths)));
      }
      const auto label = static_cast<uint8_t>(data.class_names.size());
      data.class_names.push_back(file.path.filename().string());
      AppendExamples(text, label, options, encode, data);
    }
    if (progress) progress(f + 1, files.size());
  }
  data.num_classes = static_cast<int>(data.class_names.size());
  if (data.size() == 0) {
    return InvalidArgument(fmt::format("no text example of at least {} tokens in {}",
                                       options.min_tokens, QuotedList(options.paths)));
  }
  return data;
}

TextSplit SplitHeldOut(const Dataset& data, double test_fraction, uint64_t seed) {
  const double fraction = std::isnan(test_fraction) ? 0.0 : std::clamp(test_fraction, 0.0, 1.0);
  std::array<std::vector<size_t>, 256> by_source;
  for (size_t i = 0; i < data.size(); ++i) by_source[data.labels[i]].push_back(i);

  std::vector<bool> in_test(data.size(), false);
  for (size_t label = 0; label < by_source.size(); ++label) {
    std::vector<size_t>& indices = by_source[label];
    const size_t n = indices.size();
    auto take = static_cast<size_t>(std::llround(fraction * static_cast<double>(n)));
    if (fraction > 0 && n >= 2) take = std::max<size_t>(take, 1);
    take = std::min(take, n);
    if (take == 0) continue;
    // A generator per source, so that one source's split ignores the others.
    std::seed_seq seq{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32),
                      static_cast<uint32_t>(label)};
    std::mt19937_64 rng(seq);
    SeededShuffle(indices, rng);
    for (size_t k = 0; k < take; ++k) in_test[indices[k]] = true;
  }

  TextSplit split;
  for (size_t i = 0; i < data.size(); ++i) (in_test[i] ? split.test : split.train).push_back(i);
  return split;
}

Dataset Subset(const Dataset& data, const std::vector<size_t>& indices) {
  Dataset out;
  out.num_classes = data.num_classes;
  out.class_names = data.class_names;
  out.labels.reserve(indices.size());
  const bool text = data.is_text();
  const bool images = !data.images.empty();
  const auto pixels = static_cast<size_t>(kImagePixels);
  if (text) {
    size_t total = 0;
    for (size_t i : indices) total += data.offsets[i + 1] - data.offsets[i];
    out.tokens.reserve(total);
    out.offsets.reserve(indices.size() + 1);
    out.offsets.push_back(0);
  }
  if (images) out.images.reserve(indices.size() * pixels);
  for (size_t i : indices) {
    out.labels.push_back(data.labels[i]);
    if (text) {
      out.tokens.insert(out.tokens.end(),
                        data.tokens.begin() + static_cast<std::ptrdiff_t>(data.offsets[i]),
                        data.tokens.begin() + static_cast<std::ptrdiff_t>(data.offsets[i + 1]));
      out.offsets.push_back(out.tokens.size());
    }
    if (images) {
      const auto first = data.images.begin() + static_cast<std::ptrdiff_t>(i * pixels);
      out.images.insert(out.images.end(), first, first + static_cast<std::ptrdiff_t>(pixels));
    }
  }
  return out;
}

}  // namespace fedlora::worker::lm
