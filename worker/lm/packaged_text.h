// Text that Debian packages install, read for the language-model task: WordNet's glosses as a
// 45-class classification task (a gloss labelled by its lexicographer file), and a dictd
// dictionary (by default GCIDE) as plain-text documents for pretraining. No LibTorch and no
// tokenizer here (the encoder is a callback, worker/lm/text_corpus.h), so all of it is testable
// alone. Files are read whole through zlib, which reads uncompressed files as they are.
//
// WordNet (package wordnet-base). <dir>/data.{noun,verb,adj,adv} are read in that order. A line
// that starts with two spaces (the licence header) or is empty is skipped; every other line is
// one synset: `offset lex_filenum ss_type w_cnt word lex_id ... | gloss`. The label is
// lex_filenum, the number of the lexicographer file (kWordNetLexNames[lex_filenum] is its
// name). The text of an example is, with GlossOptions::examples false, the gloss's definition:
// the gloss up to its first ';' that is followed (after optional blanks) by a '"', i.e. where
// the quoted usage examples begin (`; "`, and the 3 glosses of WordNet 3.0 written `;"`);
// with examples true, the whole gloss. Either is trimmed of surrounding whitespace. A trailing
// '\r' on a line is ignored.
//
// Examples. A text's ids (the encoder's output, BOS included when the encoder adds one) longer
// than max_tokens are truncated to the first max_tokens ids (one example per synset, never
// windows); texts with fewer than min_tokens ids are dropped. With max_examples_per_class N > 0,
// each class keeps at most N examples: its synsets (in file order) are shuffled by a generator
// seeded by (seed, class) and visited in that order, each encoded and kept when long enough,
// until N are kept or the class is exhausted. Kept examples are always in file order. The sample
// is deterministic in (files, options) across platforms (worker::SeededShuffle), and a class's
// sample does not depend on the other classes.
//
// GCIDE (package dict-gcide). A dictd dictionary is an index (`headword<TAB>offset<TAB>length`,
// offset and length in dictd's base64) and a data file (plain, or dictzip = gzip). Index lines
// pointing at the same bytes (alternative spellings, inflected forms: 203,645 lines for 126,240
// distinct entries in GCIDE 0.48) give one document, at the first such line. Entries named
// `00-database-*` (the dictionary's own metadata), and every entry pointing at the same bytes
// as one of them (GCIDE's `00-gcide-*`, `00-web1913-info`), are skipped. See CleanGcideEntry
// for how an entry becomes a document.
//
// Thread safety: nothing here keeps global state; LoadWordNetGlosses calls `encode` and
// `progress` only from the calling thread, so concurrent loads are safe when their callbacks
// are. The pure functions may be called from any thread.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "schema/status.h"
#include "worker/data.h"
#include "worker/lm/text_corpus.h"

namespace fedlora::worker::lm {

// Debian package `wordnet-base` (WordNet 3.0 licence).
inline constexpr const char* kDefaultWordNetDir = "/usr/share/wordnet";

// WordNet's lexicographer files 0..44 (its `lexnames` file, which wordnet-base does not
// install); index = lex_filenum = label.
inline constexpr size_t kWordNetLexFiles = 45;
extern const std::array<std::string_view, kWordNetLexFiles> kWordNetLexNames;

struct GlossOptions {
  std::string dir = kDefaultWordNetDir;
  // Longest example, BOS included; longer glosses are truncated to this many ids (not windowed).
  size_t max_tokens = 64;
  // Shorter examples are dropped.
  size_t min_tokens = 2;
  // 0: all; otherwise a seeded sample of at most this many examples of each class, kept in file
  // order (see the file comment).
  size_t max_examples_per_class = 0;
  uint64_t seed = 1;
  // false: only the definition (the gloss up to its first `; "` example quote); true: the whole
  // gloss, usage examples included.
  bool examples = false;
};

// Loads one example per synset of the WordNet data files in options.dir (see the file comment).
// The result is a text Dataset: label = lex_filenum, num_classes = 45, class_names =
// kWordNetLexNames (all 45, whether or not a class has examples), images empty. `progress`,
// when set, is called as progress(files_done, 4) after each data file's examples are in the
// dataset.
// Errors:
//   kInvalidArgument  max_tokens < 2, min_tokens > max_tokens, no encoder, or no example at all;
//   kNotFound         options.dir or one of its four data files is missing (names it and says
//                     to install the Debian package wordnet-base);
//   kDataLoss         a malformed synset line (names the file and line number; see
//                     ParseSynsetLine);
//   kUnavailable      a data file exists but cannot be read (names it).
Result<Dataset> LoadWordNetGlosses(const GlossOptions& options, const TextEncoder& encode,
                                   const std::function<void(size_t, size_t)>& progress = {});

// Parses one synset line of a WordNet data file: (lex_filenum, the whole gloss after the first
// '|', trimmed). A trailing '\r' is ignored.
// Errors: kDataLoss when the line has no '|', its first field (the byte offset) is not a decimal
// number, or its second field (lex_filenum) is missing, not a decimal number or above 44.
Result<std::pair<int, std::string>> ParseSynsetLine(std::string_view line);

// The definition part of a gloss: up to its first ';' followed by optional blanks and a '"',
// trimmed; the whole gloss, trimmed, when there is no such quote.
std::string_view GlossDefinition(std::string_view gloss);

// Debian package `dict-gcide` (GPL-2+).
inline constexpr const char* kDefaultGcidePath = "/usr/share/dictd/gcide.dict.dz";

struct DictdOptions {
  // The .dict.dz (or an uncompressed .dict); the index is the same path with .dict[.dz]
  // replaced by .index.
  std::string path = kDefaultGcidePath;
  // 0: all; otherwise a seeded sample of this many entries (seed), kept in index order.
  size_t max_entries = 0;
  uint64_t seed = 1;
};

// One document per distinct entry of the index (see the file comment), in index order, each
// cleaned by CleanGcideEntry; an entry that cleans to nothing gives no document. With
// max_entries N > 0 and more than N distinct entries, N of them are drawn by a shuffle seeded
// by `seed` (worker::SeededShuffle, deterministic across platforms), then kept in index order.
// Every index line is checked, sampled or not.
// Errors:
//   kInvalidArgument  options.path does not end in ".dict" or ".dict.dz";
//   kNotFound         the data file or the index is missing (names it and says to install the
//                     Debian package dict-gcide);
//   kDataLoss         an index line that is not three tab-separated fields with valid base64
//                     numbers, or whose offset + length lies beyond the data (names the index
//                     file, line number and line); corrupt or truncated gzip data (names it);
//   kUnavailable      a file exists but cannot be read (names it).
Result<std::vector<std::string>> ReadDictdDocuments(const DictdOptions& options);

// Turns one GCIDE entry (as the dictd data file holds it) into plain text:
//  1. Pronunciations: every backslash-delimited span (`\Ab*do"men\`) is removed, backslashes
//     included; the closing backslash must be on the same or the next line (GCIDE wraps a few
//     long ones), otherwise only the lone backslash is removed. When the span is directly
//     followed by one of , ; : . ) the blanks before it are removed too, so that
//     "Abdomen \Ab*do"men\, n." becomes "Abdomen, n.".
//  2. Source tags: a bracketed source tag that starts or ends a line (trimmed) is removed, and
//     a line left empty by that is dropped (it does not count as blank). GCIDE mostly puts the
//     tag on a line of its own; ~4,000 lines start with one followed by the next headword (an
//     artefact of the conversion) and a few dozen end with one. A tag inside a line stays. A
//     source tag is a bracket whose words (split at blanks and '+') are all source words
//     (Webster, Suppl., WordNet, Wordnet, sense, Century, Dict., Dictionary, &, PJC.), numbers
//     (1913, 1.5) or contributors' initials (2 to 4 capital letters, optionally followed by
//     digits: PJC, AS, RDH, MW10), with at least one word not a number; e.g. [1913 Webster],
//     [PJC], [WordNet 1.5 +PJC], [Webster 1913 Suppl.], [Century Dict. 1906], and also an
//     empty []. Usage labels such as [Obs.], [R.], [Colloq.], etymologies ([F.], [NL.]) and
//     numbers alone ([1]) stay.
//  3. Braces: '{' and '}' are removed, their content kept.
//  4. Layout: blank (whitespace-only) lines separate blocks; within a block the lines are
//     joined and every run of whitespace becomes one space; blocks are joined with "\n"; the
//     result is trimmed.
//  5. Encoding: a byte that does not begin a valid UTF-8 sequence is read as Windows-1252
//     (GCIDE 0.48 has three such bytes: 0x92, 0xE7, 0xB9) and written as UTF-8, so the
//     result is always valid UTF-8.
// GCIDE's ASCII accent notation inside respellings ("[a^]", "[=e]") is left as it is.
std::string CleanGcideEntry(std::string_view raw);

// A number in dictd's base64: digits A-Z a-z 0-9 + / (values 0..63), most significant first.
// *ok (when ok is not null) is set to false, and 0 returned, for an empty string, a character
// outside the alphabet, or a value above 2^64 - 1; otherwise *ok is set to true.
uint64_t DecodeDictdBase64(std::string_view text, bool* ok);

}  // namespace fedlora::worker::lm
