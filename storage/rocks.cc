#include "storage/rocks.h"

#include <fmt/format.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <filesystem>

#include <rocksdb/cache.h>
#include <rocksdb/env.h>
#include <rocksdb/file_system.h>
#include <rocksdb/table.h>

namespace fedlora::storage::internal {

Status FromRocks(const rocksdb::Status& s, std::string_view context) {
  if (s.ok()) return Status::Ok();
  std::string msg = fmt::format("{}: {}", context, s.ToString());
  if (s.IsNotFound()) return NotFound(std::move(msg));
  if (s.IsCorruption()) return DataLoss(std::move(msg));
  if (s.IsInvalidArgument()) return InvalidArgument(std::move(msg));
  if (s.IsNoSpace() || s.IsMemoryLimit()) return ResourceExhausted(std::move(msg));
  if (s.IsIOError() && s.subcode() == rocksdb::Status::kNoSpace) {
    return ResourceExhausted(std::move(msg));
  }
  return Unavailable(std::move(msg));
}

void AppendBigEndian64(std::string& out, uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8) out.push_back(static_cast<char>((v >> shift) & 0xff));
}

uint64_t ReadBigEndian64(std::string_view in) {
  uint64_t v = 0;
  for (size_t i = 0; i < 8 && i < in.size(); ++i) v = (v << 8) | static_cast<uint8_t>(in[i]);
  return v;
}

std::string SeqKey(std::string_view adapter_id, uint64_t seq) {
  std::string key;
  key.reserve(adapter_id.size() + 9);
  key.append(adapter_id);
  key.push_back('\0');
  AppendBigEndian64(key, seq);
  return key;
}

bool ParseSeqKey(std::string_view key, std::string_view* adapter_id, uint64_t* seq) {
  if (key.size() < 9 || key[key.size() - 9] != '\0') return false;
  *adapter_id = key.substr(0, key.size() - 9);
  *seq = ReadBigEndian64(key.substr(key.size() - 8));
  return true;
}

OpenDb::~OpenDb() {
  if (db) {
    for (auto* h : handles) db->DestroyColumnFamilyHandle(h).PermitUncheckedError();
    db->Close().PermitUncheckedError();
  }
}

namespace {

// RocksDB's file system with one change: a file that cannot be opened for want of a file
// descriptor (EMFILE, ENFILE) is a retryable error. RocksDB takes a plain I/O error while
// switching memtables (the new WAL file) as fatal, and a fatal error refuses every later write
// until the database is reopened; from a retryable one it recovers by itself (its background
// retries, every second) once descriptors are free again.
class DescriptorErrorsRetryable final : public rocksdb::FileSystemWrapper {
 public:
  explicit DescriptorErrorsRetryable(const std::shared_ptr<rocksdb::FileSystem>& target)
      : rocksdb::FileSystemWrapper(target) {}
  static const char* kClassName() { return "FedloraDescriptorErrorsRetryable"; }
  const char* Name() const override { return kClassName(); }

  rocksdb::IOStatus NewWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                    std::unique_ptr<rocksdb::FSWritableFile>* r, rocksdb::IODebugContext* d) override {
    return Mark(target()->NewWritableFile(f, o, r, d));
  }
  rocksdb::IOStatus ReopenWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                       std::unique_ptr<rocksdb::FSWritableFile>* r,
                                       rocksdb::IODebugContext* d) override {
    return Mark(target()->ReopenWritableFile(f, o, r, d));
  }
  rocksdb::IOStatus ReuseWritableFile(const std::string& f, const std::string& old, const rocksdb::FileOptions& o,
                                      std::unique_ptr<rocksdb::FSWritableFile>* r,
                                      rocksdb::IODebugContext* d) override {
    return Mark(target()->ReuseWritableFile(f, old, o, r, d));
  }
  rocksdb::IOStatus NewRandomAccessFile(const std::string& f, const rocksdb::FileOptions& o,
                                        std::unique_ptr<rocksdb::FSRandomAccessFile>* r,
                                        rocksdb::IODebugContext* d) override {
    return Mark(target()->NewRandomAccessFile(f, o, r, d));
  }
  rocksdb::IOStatus NewSequentialFile(const std::string& f, const rocksdb::FileOptions& o,
                                      std::unique_ptr<rocksdb::FSSequentialFile>* r,
                                      rocksdb::IODebugContext* d) override {
    return Mark(target()->NewSequentialFile(f, o, r, d));
  }
  rocksdb::IOStatus NewDirectory(const std::string& name, const rocksdb::IOOptions& o,
                                 std::unique_ptr<rocksdb::FSDirectory>* r, rocksdb::IODebugContext* d) override {
    return Mark(target()->NewDirectory(name, o, r, d));
  }

 private:
  // RocksDB's POSIX file system reports errno as strerror's text.
  static rocksdb::IOStatus Mark(rocksdb::IOStatus s) {
    if (!s.ok() && s.IsIOError() && s.ToString().find("Too many open files") != std::string::npos) {
      s.SetRetryable(true);
    }
    return s;
  }
};

rocksdb::Env* StoreEnv() {
  static const std::unique_ptr<rocksdb::Env> env =
      rocksdb::NewCompositeEnv(std::make_shared<DescriptorErrorsRetryable>(rocksdb::FileSystem::Default()));
  return env.get();
}

// A store directory that holds RocksDB's files but no CURRENT (the pointer to its manifest)
// is damaged, not new: opening it with create_if_missing would write a fresh, empty database
// over the remains. Refused, so nothing is rewritten unless the operator chooses to.
Status RefuseDamaged(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::exists(std::filesystem::path(path) / "CURRENT", ec)) return Status::Ok();
  const std::vector<std::string> remains = RocksFiles(path);
  if (remains.empty()) return Status::Ok();
  return DataLoss(fmt::format("store '{}' is damaged: it holds {} RocksDB files (e.g. {}) but no CURRENT file, so "
                              "its state cannot be found. Nothing was changed. Restore the directory from a backup, "
                              "or move it aside to start afresh",
                              path, remains.size(), remains.front()));
}

}  // namespace

std::vector<std::string> RocksFiles(const std::string& path) {
  std::error_code ec;
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(path, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.starts_with("MANIFEST-") || name.ends_with(".sst") || name.ends_with(".log") || name.ends_with(".blob")) {
      files.push_back(name);
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

Status OpenDb::Write(const rocksdb::WriteOptions& options, rocksdb::WriteBatch* batch, std::string_view context) {
  struct statvfs fs {};
  if (statvfs(path.c_str(), &fs) == 0) {
    const uint64_t free_bytes = static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
    const uint64_t need = batch->GetDataSize() + storage::kFreeSpaceReserve;
    if (free_bytes < need) {
      return ResourceExhausted(fmt::format("{}: the disk of '{}' is full: {:.1f} MiB free, a write needs {:.1f} MiB "
                                           "free (its {:.1f} MiB and a reserve of {} MiB for RocksDB's flushes)",
                                           context, path, free_bytes / 1048576.0, need / 1048576.0,
                                           batch->GetDataSize() / 1048576.0, storage::kFreeSpaceReserve >> 20));
    }
  }
  return FromRocks(db->Write(options, batch), context);
}

Result<std::unique_ptr<OpenDb>> Open(const std::string& path, bool read_only,
                                     const std::vector<std::string>& cf_names,
                                     const std::vector<std::string>& blob_cfs,
                                     uint64_t min_blob_size) {
  if (path.empty()) return InvalidArgument("store path is empty");
  if (read_only && !std::filesystem::exists(path)) {
    return NotFound(fmt::format("no store at '{}'", path));
  }
  if (!read_only) {
    std::error_code ec;
    std::filesystem::create_directories(path, ec);
    if (ec) return Unavailable(fmt::format("cannot create '{}': {}", path, ec.message()));
    RETURN_IF_ERROR(RefuseDamaged(path));
  }
  rocksdb::DBOptions db_options;
  db_options.env = StoreEnv();
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  db_options.info_log_level = rocksdb::InfoLogLevel::WARN_LEVEL;
  db_options.keep_log_file_num = 2;
  db_options.max_background_jobs = 2;
  // Descriptors are shared with every connection of the broker: the log keeps at most this many
  // table and blob files open (RocksDB's default keeps every one), broker.h kReservedFiles.
  db_options.max_open_files = 256;
  // Memory is bounded whatever the load: all memtables together flush at 64 MiB (RocksDB's
  // default is 64 MiB per column family, times up to two each), and one 32 MiB block cache is
  // shared by every column family.
  db_options.db_write_buffer_size = 64u << 20;
  static const auto block_cache = rocksdb::NewLRUCache(32u << 20);
  rocksdb::BlockBasedTableOptions table;
  table.block_cache = block_cache;

  std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
  for (const auto& name : cf_names) {
    rocksdb::ColumnFamilyOptions cf;
    cf.write_buffer_size = 16u << 20;
    cf.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
    if (std::find(blob_cfs.begin(), blob_cfs.end(), name) != blob_cfs.end()) {
      cf.enable_blob_files = true;
      cf.min_blob_size = min_blob_size;
      cf.enable_blob_garbage_collection = false;  // logs and versions are append-only
    }
    cfs.emplace_back(name, cf);
  }
  auto out = std::make_unique<OpenDb>();
  out->path = path;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s;
  if (read_only) {
    // A live writer may delete a WAL or table file between our reading the manifest and opening
    // the file (a memtable flush, a compaction): that race ends in an error naming a missing
    // file (IOError, or Corruption wrapping it), and a retry sees the new state.
    for (int attempt = 0; attempt < 20; ++attempt) {
      out->handles.clear();
      s = rocksdb::DB::OpenForReadOnly(db_options, path, cfs, &out->handles, &raw);
      if (s.ok() || s.ToString().find("No such file or directory") == std::string::npos) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10 * (attempt + 1)));
    }
  } else {
    s = rocksdb::DB::Open(db_options, path, cfs, &out->handles, &raw);
  }
  if (!s.ok()) return FromRocks(s, fmt::format("open store '{}'", path));
  out->db.reset(raw);
  return out;
}

}  // namespace fedlora::storage::internal
