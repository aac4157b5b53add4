// UpdateLog is the durable, ordered record of every accepted update, one sequence per
// adapter (sequence numbers start at 1; 0 means "nothing"). AppendBatch() returns only after
// the whole batch is on disk in one synced write (group commit), so an acknowledged update
// survives a crash of the process or the machine.
//
// Idempotency: each record is indexed by (adapter, client, update id) together with a hash
// of its bytes. Appending the same id with the same bytes again returns the original
// sequence number (duplicate = true) and writes nothing; the same id with different bytes
// is rejected with kAlreadyExists.
//
// The log also keeps, per adapter, the latest global adapter it was told about, so that a
// restarted broker can serve fetches before its aggregator reconnects.
//
// Thread safety: all methods may be called from any thread; appends are serialised
// internally; readers see a consistent prefix of the log.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "schema/hash.h"
#include "schema/status.h"

namespace fedlora::storage {

// Writes to the update log and the adapter store are refused (RESOURCE_EXHAUSTED) while the
// store's file system has less than this free beyond the write itself. RocksDB 7.8 (Debian bookworm's) takes a WAL append that fails for want of space as a
// background error whose recovery then trips an assertion on the failed WAL writer
// (WritableFileWriter::AssertFalseAndGetStatusForPrevError) and aborts the process about a
// second later. The reserve covers a flush of every memtable (db_write_buffer_size, 64 MiB)
// running beside the write, so a WAL append never meets a full disk; a flush or compaction
// that does is a recoverable error.
inline constexpr uint64_t kFreeSpaceReserve = 80u << 20;

struct UpdateLogOptions {
  std::string path;        // Directory of the RocksDB instance; created if missing.
  bool sync = true;        // fsync every batch. false only for benchmarks and tests.
  bool read_only = false;  // Open for inspection while (or after) a broker writes it.
  // Values at least this large go to blob files, keeping the LSM tree small.
  size_t min_blob_size = 4096;
  // Open a log that has lost acknowledged updates (CheckAcknowledged) anyway, and go on from
  // what it holds. Only on an operator's explicit request (`fedlora broker --accept-lost-log-tail`).
  bool accept_lost_tail = false;
};

// Beside a synced log's RocksDB files: every adapter's last acknowledged sequence number,
// rewritten after each group commit (docs/reliability.md).
inline constexpr std::string_view kHeadsFile = "FEDLORA-HEADS";

struct LogAppend {
  std::string_view adapter_id;
  std::string_view client_id;
  std::string_view update_id;
  std::span<const std::byte> bytes;  // the Update envelope, stored verbatim
  // HashBytes(bytes) when the caller has it already (the broker hashes on its I/O thread,
  // while the previous batch syncs); otherwise AppendBatch computes it.
  std::optional<Digest128> digest;
};

struct AppendOutcome {
  uint64_t seq = 0;
  bool duplicate = false;  // the id was logged before (by an earlier batch or this one)
};

struct LogRecord {
  uint64_t seq = 0;
  std::string bytes;
};

class UpdateLog {
 public:
  // Errors: kInvalidArgument (empty path), kUnavailable / kDataLoss (RocksDB could not open).
  static Result<std::unique_ptr<UpdateLog>> Open(const UpdateLogOptions& options);
  virtual ~UpdateLog() = default;

  // Appends every item in one atomic, synced write and returns one result per item, in
  // order: the sequence number, or kAlreadyExists for an id reused with other bytes, or
  // kInvalidArgument for an id containing a NUL byte. When the write itself fails every
  // item gets that error (kUnavailable, kResourceExhausted for a full disk) and nothing is
  // logged.
  virtual std::vector<Result<AppendOutcome>> AppendBatch(std::span<const LogAppend> items) = 0;

  // Up to max_count records with seq >= from_seq, stopping early once max_bytes is reached
  // (at least one record is returned when one exists).
  virtual Result<std::vector<LogRecord>> Read(std::string_view adapter_id, uint64_t from_seq,
                                              size_t max_count, size_t max_bytes) = 0;

  // The log's identity: 32 hex digits drawn at random when the log was created (a log made
  // before identities gets one the first time it is opened for writing), stored in the log
  // itself. A lost log comes back with another; aggregators record it with their cursor, so a
  // log that is not the one they consumed is recognised. Empty only for a read-only open of a
  // log that has none yet.
  virtual const std::string& Id() const = 0;

  // Whether the log holds every update it acknowledged. A synced log writes each adapter's
  // head to kHeadsFile after every group commit (after the sync, so it never runs ahead of
  // what is durable; without a sync of its own, so it may lag after a power cut) and syncs it
  // at a clean close. A log whose write-ahead log lost its tail, or whose files were replaced,
  // is found out on open: kDataLoss names each adapter, how many acknowledged updates are gone
  // and how to recover. A writable open fails with it unless accept_lost_tail; a read-only
  // open leaves the check to the caller.
  virtual Status CheckAcknowledged() const = 0;
  // The loss a writable open with accept_lost_tail went on from (Ok when there was none).
  virtual const Status& AcceptedLoss() const = 0;

  // Last sequence number logged for the adapter (0 when none).
  virtual uint64_t LastSeq(std::string_view adapter_id) const = 0;
  // Adapters that have at least one record, sorted.
  virtual std::vector<std::string> Adapters() const = 0;

  // The latest global adapter envelope announced for `adapter_id`.
  virtual Status PutGlobal(std::string_view adapter_id, std::span<const std::byte> bytes) = 0;
  virtual Result<std::optional<std::string>> GetGlobal(std::string_view adapter_id) = 0;
  virtual std::vector<std::string> AdaptersWithGlobal() = 0;
};

}  // namespace fedlora::storage
