// Read access to a stored run: open a store's adapter and read a version's record (lineage)
// and its global tensors; the tags that name versions (<store>/tags.json). What the inspection,
// export, rollback and dashboard commands read through.
// Thread safety: a StoredAdapter is used by one thread at a time; tag writes take a file lock.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "schema/codec.h"
#include "storage/adapter_store.h"
#include "storage/layout.h"
#include "storage/update_log.h"

namespace fedlora::storage {

class StoredAdapter {
 public:
  // Opens <store>/adapters (read-only unless `writable`). Errors: kNotFound (no store, or no
  // such adapter in it), store errors.
  static Result<StoredAdapter> Open(const StoreLayout& store, const std::string& adapter, bool writable = false);

  const std::string& adapter() const { return adapter_; }
  const Cursor& cursor() const { return cursor_; }
  AdapterStore& store() { return *store_; }
  // A version's record and global. Errors: kNotFound naming the range that exists.
  Result<codec::VersionInfo> Record(uint64_t version);
  Result<codec::DecodedGlobal> Global(uint64_t version);

 private:
  std::unique_ptr<AdapterStore> store_;
  std::string adapter_;
  Cursor cursor_;
};

// Tags name versions of an adapter. They live in <store>/tags.json
// ({"<adapter>": {"<name>": version}}), outside RocksDB, so a tag can be added while an
// aggregator holds the store; writes are atomic (a temporary file renamed over it, under a lock).
Result<std::map<std::string, uint64_t>> ReadTags(const StoreLayout& store, const std::string& adapter);
// Errors: kInvalidArgument (name syntax, or a name that reads as a number), kAlreadyExists
// (the name already tags a version: tags never move), kUnavailable.
Status AddTag(const StoreLayout& store, const std::string& adapter, const std::string& name, uint64_t version);
// A version given as a number or as a tag name. Errors: kNotFound naming the known tags.
Result<uint64_t> ResolveVersion(const StoreLayout& store, const std::string& adapter, const std::string& text);

// The log beside a store, against what the store's aggregator consumed of it (`fedlora log`):
// the cursor of `adapter` in <store>/adapters when that store exists and holds it (nullopt
// otherwise: a log alone is read as it is).
std::optional<Cursor> ConsumedCursor(const StoreLayout& store, const std::string& adapter);
// kFailedPrecondition when `log` is not the log `consumed` was taken from (lost and made afresh,
// or replaced): updates it acknowledged may be gone.
Status CheckLogIdentity(const UpdateLog& log, const Cursor& consumed, const std::string& store_path);
// kDataLoss when `log` ends before what `consumed` consumed of it (a truncated write-ahead log,
// or a log restored from an older copy), saying how many records are missing.
Status CheckLogHead(const UpdateLog& log, const std::string& adapter, const Cursor& consumed,
                    const std::string& store_path);

// Where an update went (`fedlora lineage`): every version that folded or dropped it, in order.
struct UpdateOutcome {
  uint64_t version = 0;
  bool folded = true;                // else dropped, for `drop.reason`
  codec::LineageItem item;           // seq, client, base version, staleness, weight (folded)
  std::string reason;                // dropped
};
struct UpdateWhereabouts {
  std::vector<UpdateOutcome> outcomes;
  std::optional<uint64_t> waiting_at;  // none consumed it: the log seq holding it past the consumed position
};
// Update `update_id` (of `client`, when not empty) in the versions of `stored`, read in chunks,
// and, when none consumed it, in the log at <store>/log. Errors: the store's.
Result<UpdateWhereabouts> FindUpdate(const StoreLayout& store, StoredAdapter& stored, const std::string& update_id,
                                     const std::string& client);

// Updates folded and dropped by the versions after `from` up to `to` (`fedlora diff`).
struct LineageCounts {
  size_t folded = 0;
  size_t dropped = 0;
};
Result<LineageCounts> CountLineage(StoredAdapter& stored, uint64_t from, uint64_t to);

}  // namespace fedlora::storage
