// AdapterStore holds every version of every global adapter with its lineage (which updates,
// with which staleness and weight, made it; which were dropped and why) and each adapter's
// cursor: the last version and the last update-log position it has consumed, and the server
// optimizer's state after the latest version (Adam's moments; none for SGD). Commit()
// writes them all in one atomic, synced write, which is what makes aggregation
// exactly-once: after a crash the cursor says precisely which log records are already in
// the latest version.
//
// Thread safety: all methods may be called from any thread; commits are serialised.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "schema/codec.h"
#include "schema/status.h"

namespace fedlora::storage {

struct AdapterStoreOptions {
  std::string path;        // Directory of the RocksDB instance; created if missing.
  bool sync = true;        // fsync every commit. false only for tests.
  bool read_only = false;  // For history/inspect while an aggregator may be writing.
};

struct Cursor {
  uint64_t version = 0;       // latest committed version
  uint64_t consumed_seq = 0;  // last update-log sequence number folded into or dropped by it
  // Where that position is: the identity of the update log it was consumed from
  // (UpdateLog::Id) and the hex content hash of the record at consumed_seq. Empty when not
  // known (a store made before they were kept, a replayed store, version 0).
  std::string log_id;
  std::string consumed_hash;
};

struct VersionCommit {
  std::string_view adapter_id;
  uint64_t version = 0;
  uint64_t consumed_seq = 0;
  std::span<const std::byte> global;  // GlobalAdapter envelope
  std::span<const std::byte> record;  // VersionRecord (lineage)
  // The server optimizer's state after this version (ServerState); empty: the optimizer is
  // stateless and any stored state is left as it is.
  std::span<const std::byte> server_state = {};
  // The cursor's log identity and the hash of the record at consumed_seq (Cursor). Empty
  // log_id: the cursor keeps the one it has; empty consumed_hash: kept when consumed_seq
  // does not move, otherwise unknown.
  std::string_view log_id = {};
  std::string_view consumed_hash = {};
};

class AdapterStore {
 public:
  static Result<std::unique_ptr<AdapterStore>> Open(const AdapterStoreOptions& options);
  virtual ~AdapterStore() = default;

  // Commits a version atomically. Version 0 is accepted only for an adapter without a
  // cursor; every later version must be exactly cursor.version + 1 and must not consume
  // less of the log than its parent. Errors: kFailedPrecondition (version skipped or
  // reused, cursor moving backwards), kUnavailable (write failed; nothing was written).
  virtual Status Commit(const VersionCommit& commit) = 0;

  virtual Result<std::optional<Cursor>> GetCursor(std::string_view adapter_id) = 0;
  // The server optimizer state committed with the latest version; nullopt when none was.
  virtual Result<std::optional<std::string>> GetServerState(std::string_view adapter_id) = 0;
  // Errors: kNotFound.
  virtual Result<std::string> GetGlobal(std::string_view adapter_id, uint64_t version) = 0;
  virtual Result<std::string> GetRecord(std::string_view adapter_id, uint64_t version) = 0;
  // Records of versions in [from, to], in order.
  virtual Result<std::vector<std::string>> GetRecords(std::string_view adapter_id, uint64_t from,
                                                      uint64_t to) = 0;
  virtual Result<std::vector<std::string>> Adapters() = 0;
};

// Version `version` of an adapter, verified and decoded. Errors: kNotFound, kDataLoss
// (unreadable bytes), kInvalidArgument (tensors not matching the stored spec).
Result<codec::DecodedGlobal> ReadVersion(AdapterStore& store, std::string_view adapter_id, uint64_t version);
// The lineage of that version. Errors: kNotFound, kDataLoss.
Result<codec::VersionInfo> ReadVersionInfo(AdapterStore& store, std::string_view adapter_id, uint64_t version);

}  // namespace fedlora::storage
