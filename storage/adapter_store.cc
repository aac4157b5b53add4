#include "storage/adapter_store.h"

#include <fmt/format.h>
#include <rocksdb/write_batch.h>

#include <algorithm>
#include <mutex>
#include <optional>

#include "storage/rocks.h"

namespace fedlora::storage {
namespace {

using internal::FromRocks;

enum Cf { kDefault = 0, kVersions = 1, kLineage = 2, kCursors = 3, kServerState = 4 };

// A cursor is stored as big-endian version and consumed_seq, then (when known) the log id and
// the consumed record's hash, each a byte of length and its characters. Cursors of 16 bytes
// were written before the log's identity was kept; they read with both empty.
std::string CursorValue(const Cursor& c) {
  std::string v;
  internal::AppendBigEndian64(v, c.version);
  internal::AppendBigEndian64(v, c.consumed_seq);
  if (!c.log_id.empty() || !c.consumed_hash.empty()) {
    for (const std::string* field : {&c.log_id, &c.consumed_hash}) {
      v.push_back(static_cast<char>(std::min<size_t>(field->size(), 255)));
      v.append(field->substr(0, 255));
    }
  }
  return v;
}

std::optional<Cursor> ParseCursor(std::string_view v) {
  if (v.size() < 16) return std::nullopt;
  Cursor c;
  c.version = internal::ReadBigEndian64(v);
  c.consumed_seq = internal::ReadBigEndian64(v.substr(8));
  v.remove_prefix(16);
  if (v.empty()) return c;
  for (std::string* field : {&c.log_id, &c.consumed_hash}) {
    if (v.empty()) return std::nullopt;
    const size_t n = static_cast<uint8_t>(v[0]);
    if (v.size() < 1 + n) return std::nullopt;
    field->assign(v.substr(1, n));
    v.remove_prefix(1 + n);
  }
  if (!v.empty()) return std::nullopt;
  return c;
}

rocksdb::Slice AsSlice(std::span<const std::byte> b) {
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}

class RocksAdapterStore final : public AdapterStore {
 public:
  RocksAdapterStore(std::unique_ptr<internal::OpenDb> db, AdapterStoreOptions options)
      : db_(std::move(db)), options_(std::move(options)) {}

  Status Commit(const VersionCommit& c) override {
    if (options_.read_only) return FailedPrecondition("adapter store opened read-only");
    if (c.adapter_id.empty() || c.adapter_id.find('\0') != std::string_view::npos) {
      return InvalidArgument("adapter id must be non-empty and free of NUL bytes");
    }
    std::lock_guard lock(mu_);
    ASSIGN_OR_RETURN(std::optional<Cursor> cursor, GetCursor(c.adapter_id));
    if (!cursor) {
      if (c.version != 0) {
        return FailedPrecondition(fmt::format(
            "adapter '{}' has no versions yet; the first commit must be version 0, not {}",
            c.adapter_id, c.version));
      }
    } else {
      if (c.version != cursor->version + 1) {
        return FailedPrecondition(fmt::format("adapter '{}' is at version {}; cannot commit {}",
                                              c.adapter_id, cursor->version, c.version));
      }
      if (c.consumed_seq < cursor->consumed_seq) {
        return FailedPrecondition(
            fmt::format("adapter '{}' cursor would move back from log position {} to {}",
                        c.adapter_id, cursor->consumed_seq, c.consumed_seq));
      }
    }
    const std::string key = internal::SeqKey(c.adapter_id, c.version);
    rocksdb::WriteBatch batch;
    batch.Put(db_->handles[kVersions], key, AsSlice(c.global));
    batch.Put(db_->handles[kLineage], key, AsSlice(c.record));
    Cursor next{c.version, c.consumed_seq, std::string(c.log_id), std::string(c.consumed_hash)};
    if (cursor) {
      if (next.log_id.empty()) next.log_id = cursor->log_id;
      if (next.consumed_hash.empty() && next.consumed_seq == cursor->consumed_seq) {
        next.consumed_hash = cursor->consumed_hash;
      }
    }
    batch.Put(db_->handles[kCursors], rocksdb::Slice(c.adapter_id.data(), c.adapter_id.size()), CursorValue(next));
    if (!c.server_state.empty()) {
      batch.Put(db_->handles[kServerState], rocksdb::Slice(c.adapter_id.data(), c.adapter_id.size()),
                AsSlice(c.server_state));
    }
    rocksdb::WriteOptions wo;
    wo.sync = options_.sync;
    return db_->Write(wo, &batch, "commit adapter version");
  }

  Result<std::optional<Cursor>> GetCursor(std::string_view adapter_id) override {
    std::string v;
    rocksdb::Status s = db_->db->Get(rocksdb::ReadOptions(), db_->handles[kCursors],
                                     rocksdb::Slice(adapter_id.data(), adapter_id.size()), &v);
    if (s.IsNotFound()) return std::optional<Cursor>();
    RETURN_IF_ERROR(FromRocks(s, "read cursor"));
    auto cursor = ParseCursor(v);
    if (!cursor) return DataLoss(fmt::format("cursor of '{}' is corrupt ({} bytes)", adapter_id, v.size()));
    return cursor;
  }

  Result<std::optional<std::string>> GetServerState(std::string_view adapter_id) override {
    std::string v;
    rocksdb::Status s = db_->db->Get(rocksdb::ReadOptions(), db_->handles[kServerState],
                                     rocksdb::Slice(adapter_id.data(), adapter_id.size()), &v);
    if (s.IsNotFound()) return std::optional<std::string>();
    RETURN_IF_ERROR(FromRocks(s, "read server optimizer state"));
    return std::optional<std::string>(std::move(v));
  }

  Result<std::string> GetGlobal(std::string_view adapter_id, uint64_t version) override {
    return Get(kVersions, adapter_id, version, "version");
  }

  Result<std::string> GetRecord(std::string_view adapter_id, uint64_t version) override {
    return Get(kLineage, adapter_id, version, "lineage of version");
  }

  Result<std::vector<std::string>> GetRecords(std::string_view adapter_id, uint64_t from,
                                              uint64_t to) override {
    std::vector<std::string> out;
    std::unique_ptr<rocksdb::Iterator> it(
        db_->db->NewIterator(rocksdb::ReadOptions(), db_->handles[kLineage]));
    for (it->Seek(internal::SeqKey(adapter_id, from)); it->Valid(); it->Next()) {
      std::string_view adapter;
      uint64_t version = 0;
      if (!internal::ParseSeqKey(it->key().ToStringView(), &adapter, &version) ||
          adapter != adapter_id || version > to) {
        break;
      }
      out.push_back(it->value().ToString());
    }
    RETURN_IF_ERROR(FromRocks(it->status(), "scan lineage"));
    return out;
  }

  Result<std::vector<std::string>> Adapters() override {
    std::vector<std::string> out;
    std::unique_ptr<rocksdb::Iterator> it(
        db_->db->NewIterator(rocksdb::ReadOptions(), db_->handles[kCursors]));
    for (it->SeekToFirst(); it->Valid(); it->Next()) out.push_back(it->key().ToString());
    RETURN_IF_ERROR(FromRocks(it->status(), "list adapters"));
    return out;
  }

 private:
  Result<std::string> Get(Cf cf, std::string_view adapter_id, uint64_t version, const char* what) {
    std::string v;
    rocksdb::Status s =
        db_->db->Get(rocksdb::ReadOptions(), db_->handles[cf], internal::SeqKey(adapter_id, version), &v);
    if (s.IsNotFound()) {
      return NotFound(fmt::format("adapter '{}' has no {} {}", adapter_id, what, version));
    }
    RETURN_IF_ERROR(FromRocks(s, "read adapter store"));
    return v;
  }

  std::unique_ptr<internal::OpenDb> db_;
  AdapterStoreOptions options_;
  std::mutex mu_;
};

}  // namespace

Result<codec::DecodedGlobal> ReadVersion(AdapterStore& store, std::string_view adapter_id, uint64_t version) {
  ASSIGN_OR_RETURN(std::string bytes, store.GetGlobal(adapter_id, version));
  auto env = codec::VerifyEnvelope(codec::AsBytes(bytes), codec::kMaxBufferBytes);
  if (!env.ok() || (*env)->body_type() != wire::Body::GlobalAdapter) {
    return DataLoss(fmt::format("stored version {} of '{}' is unreadable", version, adapter_id));
  }
  return codec::DecodeGlobal(*(*env)->body_as_GlobalAdapter());
}

Result<codec::VersionInfo> ReadVersionInfo(AdapterStore& store, std::string_view adapter_id, uint64_t version) {
  ASSIGN_OR_RETURN(std::string bytes, store.GetRecord(adapter_id, version));
  ASSIGN_OR_RETURN(const store::VersionRecord* record, codec::VerifyVersionRecord(codec::AsBytes(bytes)));
  return codec::DecodeVersionRecord(*record);
}

Result<std::unique_ptr<AdapterStore>> AdapterStore::Open(const AdapterStoreOptions& options) {
  ASSIGN_OR_RETURN(auto db, internal::Open(options.path, options.read_only,
                                           {rocksdb::kDefaultColumnFamilyName, "versions", "lineage", "cursors", "server_state"},
                                           {"versions"}, 4096));  // server_state is overwritten: no blob files
  return std::unique_ptr<AdapterStore>(new RocksAdapterStore(std::move(db), options));
}

}  // namespace fedlora::storage
