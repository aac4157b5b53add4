// The language-model task's examples: plain-text files (by default the Debian `fortunes`
// collection) cut into documents, encoded to token ids by a caller-supplied encoder, and
// packed into a text Dataset (worker/data.h) whose label is the source file an example came
// from; plus the seeded held-out split and the sub-datasets handed to an evaluator. No
// LibTorch and no tokenizer here (the encoder is a callback), so all of it is testable alone.
//
// Sources. Every entry of TextCorpusOptions::paths is a file or a directory. A directory
// contributes its regular files (symlinks to regular files included), sorted by name, not
// recursing into subdirectories and skipping hidden files and every file whose name contains
// a '.' (fortunes ships `*.dat` binary indexes and `*.u8` copies beside each text file). A file
// named directly is always read, whatever its name. Each source file read is one label, in the
// order met; its class name is the file name (not the full path). A source keeps its label even
// when none of its documents yields an example.
//
// Binary files. A file holding a NUL byte or bytes that are not valid UTF-8 is an error
// (kDataLoss, naming it) when named directly, and is silently skipped (no label, no error) when
// found by scanning a directory, so that stray binaries beside the text do not stop a load.
//
// Documents. A file in the fortune format (at least one line that is exactly "%") has one
// document per entry between "%" lines; any other file has one document per paragraph, that is
// per run of lines separated by one or more blank (whitespace-only) lines. A trailing '\r' on a
// line is ignored for both tests, so CRLF files work. Each document is trimmed of leading and
// trailing whitespace; empty documents are skipped.
//
// Examples. A document's ids (the encoder's output, BOS included when the encoder adds one)
// of length L <= max_tokens form one example. Longer ones are cut into consecutive windows
// [0, max_tokens), [max_tokens, 2 max_tokens), ...; only the first starts with BOS, the later
// ones start mid-document. Any example (window tails included) shorter than min_tokens is
// dropped.
//
// Thread safety: LoadTextCorpus keeps no global state and calls `encode` and `progress` only
// from the calling thread, so concurrent loads are safe when their callbacks are. SplitHeldOut
// and Subset are pure functions of their arguments. A loaded Dataset is immutable and may be
// shared by threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "schema/status.h"
#include "worker/data.h"

namespace fedlora::worker::lm {

// Debian package `fortunes` (BSD licence).
inline constexpr const char* kDefaultTextDir = "/usr/share/games/fortunes";

// Labels are uint8_t, so a corpus has at most this many sources.
inline constexpr size_t kMaxTextSources = 256;

struct TextCorpusOptions {
  // Files or directories (a directory: its regular files, sorted by name, non-recursive).
  std::vector<std::string> paths = {kDefaultTextDir};
  // Longest example, BOS included; longer documents are cut into consecutive windows of at
  // most this many tokens.
  size_t max_tokens = 128;
  // Shorter examples (and window tails) are dropped.
  size_t min_tokens = 8;
  // 0: all; otherwise the first N examples (windows count one each) of each source.
  size_t max_examples_per_source = 0;
};

// Encodes one document to token ids (the caller passes the tokenizer with its BOS).
using TextEncoder = std::function<std::vector<int32_t>(std::string_view)>;

// Loads the corpus of `options` (see the file comment for how sources, documents and examples
// are formed). The result is a text Dataset: num_classes = number of sources, class_names one
// file name per source, images empty. `progress`, when set, is called as
// progress(files_done, files_total) after each candidate file, read or skipped.
// Errors:
//   kInvalidArgument  max_tokens < 2, min_tokens > max_tokens, no encoder, more than 256
//                     sources, a path that is neither a regular file nor a directory, or no
//                     example at all (names the paths);
//   kNotFound         a path does not exist (names it);
//   kDataLoss         a file named directly holds a NUL byte or invalid UTF-8 (names it);
//   kUnavailable      a file or directory exists but cannot be read (names it).
Result<Dataset> LoadTextCorpus(const TextCorpusOptions& options, const TextEncoder& encode,
                               const std::function<void(size_t, size_t)>& progress = {});

struct TextSplit {
  std::vector<size_t> train, test;
};

// Deterministic held-out split: within every source (label), a shuffle seeded by (seed, label)
// puts round(test_fraction * n) of its n examples in test (at least one when n >= 2 and
// test_fraction > 0), the rest in train; both lists sorted ascending. test_fraction is clamped
// to [0, 1] (NaN counts as 0). Deterministic in (labels, test_fraction, seed) across platforms,
// and a source's split does not depend on the other sources.
TextSplit SplitHeldOut(const Dataset& data, double test_fraction, uint64_t seed);

// The sub-dataset holding only `indices`, in the order given (labels, tokens, offsets,
// num_classes and class_names carried over; images too for an image dataset). Every index
// must be < data.size().
Dataset Subset(const Dataset& data, const std::vector<size_t>& indices);

}  // namespace fedlora::worker::lm
