// Internal to storage/: RocksDB helpers shared by the update log and the adapter store.
// Nothing outside storage/ includes this header (no RocksDB type leaks into public headers).
#pragma once

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "schema/status.h"
#include "storage/update_log.h"

namespace fedlora::storage::internal {

// Maps a RocksDB status to ours once, at the boundary.
Status FromRocks(const rocksdb::Status& s, std::string_view context);

void AppendBigEndian64(std::string& out, uint64_t v);
uint64_t ReadBigEndian64(std::string_view in);

// Keys are "<adapter>\0<big-endian seq/version>", so a prefix scan comes out in order.
std::string SeqKey(std::string_view adapter_id, uint64_t seq);
bool ParseSeqKey(std::string_view key, std::string_view* adapter_id, uint64_t* seq);


struct OpenDb {
  std::string path;
  std::unique_ptr<rocksdb::DB> db;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;  // in the order of the requested names
  ~OpenDb();

  // db->Write after checking the free space (storage::kFreeSpaceReserve, update_log.h). Errors: kResourceExhausted
  // (the disk is full, or nearly: the message says how much is free), those of FromRocks.
  Status Write(const rocksdb::WriteOptions& options, rocksdb::WriteBatch* batch, std::string_view context);
};

// Opens (creating if needed, unless read_only) a DB with the given column families; a CF
// whose options should put big values into blob files is named in `blob_cfs`.
// The RocksDB files in `path` (manifests, tables, write-ahead logs, blob files), sorted; none
// when the directory is missing.
std::vector<std::string> RocksFiles(const std::string& path);

Result<std::unique_ptr<OpenDb>> Open(const std::string& path, bool read_only,
                                     const std::vector<std::string>& cf_names,
                                     const std::vector<std::string>& blob_cfs,
                                     uint64_t min_blob_size);

}  // namespace fedlora::storage::internal
