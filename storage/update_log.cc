#include "storage/update_log.h"

#include <fmt/format.h>
#include <rocksdb/write_batch.h>

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <map>
#include <mutex>
#include <random>
#include <unordered_map>

#include "schema/hash.h"
#include "storage/rocks.h"

namespace fedlora::storage {
namespace {

using internal::FromRocks;

// Column families: the log's identity (default), records, idempotency index, latest globals.
enum Cf { kDefault = 0, kLog = 1, kIds = 2, kGlobals = 3 };
constexpr std::string_view kLogIdKey = "log_id";

std::string IdKey(std::string_view adapter, std::string_view client, std::string_view update) {
  std::string k;
  k.reserve(adapter.size() + client.size() + update.size() + 2);
  k.append(adapter).push_back('\0');
  k.append(client).push_back('\0');
  k.append(update);
  return k;
}

// Value of an idempotency entry: big-endian seq, then the 16-byte content hash.
std::string IdValue(uint64_t seq, const Digest128& digest) {
  std::string v;
  internal::AppendBigEndian64(v, seq);
  v.append(reinterpret_cast<const char*>(digest.data()), digest.size());
  return v;
}

// The heads file: a header, the log's id, one "<seq> <adapter in hex>" line per adapter, and
// a check line (BLAKE2b of the lines before it), so a torn write is recognised and ignored.
std::string HeadsText(const std::string& id, const std::map<std::string, uint64_t, std::less<>>& heads) {
  std::string text = fmt::format("fedlora log heads 1\nid {}\n", id);
  for (const auto& [adapter, seq] : heads) {
    text += fmt::format("{} {}\n", seq, ToHex({reinterpret_cast<const uint8_t*>(adapter.data()), adapter.size()}));
  }
  const Digest128 check = HashBytes({reinterpret_cast<const std::byte*>(text.data()), text.size()});
  return text + "check " + ToHex(check) + "\n";
}

struct AcknowledgedHeads {
  std::string id;
  std::map<std::string, uint64_t> heads;
};

std::optional<std::string> FromHex(std::string_view hex) {
  if (hex.size() % 2 != 0) return std::nullopt;
  std::string out;
  for (size_t i = 0; i < hex.size(); i += 2) {
    int byte = 0;
    for (size_t j = 0; j < 2; ++j) {
      const char c = hex[i + j];
      const int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
      if (v < 0) return std::nullopt;
      byte = byte * 16 + v;
    }
    out.push_back(static_cast<char>(byte));
  }
  return out;
}

// nullopt when the file is missing, torn or not ours.
std::optional<AcknowledgedHeads> ReadHeads(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  const size_t check_at = text.rfind("check ");
  if (check_at == std::string::npos || text.rfind("fedlora log heads 1\n", 0) != 0) return std::nullopt;
  const Digest128 check = HashBytes({reinterpret_cast<const std::byte*>(text.data()), check_at});
  if (text.compare(check_at, std::string::npos, "check " + ToHex(check) + "\n") != 0) return std::nullopt;
  AcknowledgedHeads out;
  std::istringstream lines(text.substr(0, check_at));
  std::string line;
  std::getline(lines, line);  // the header
  while (std::getline(lines, line)) {
    if (line.rfind("id ", 0) == 0) {
      out.id = line.substr(3);
      continue;
    }
    const size_t space = line.find(' ');
    if (space == std::string::npos) return std::nullopt;
    auto adapter = FromHex(std::string_view(line).substr(space + 1));
    if (!adapter) return std::nullopt;
    out.heads[*adapter] = std::stoull(line.substr(0, space));
  }
  return out;
}

class RocksUpdateLog final : public UpdateLog {
 public:
  RocksUpdateLog(std::unique_ptr<internal::OpenDb> db, UpdateLogOptions options)
      : db_(std::move(db)), options_(std::move(options)) {
    LoadHeads();
  }
  ~RocksUpdateLog() override {
    if (heads_fd_ < 0) return;
    // A clean close leaves the heads on disk, exactly.
    std::lock_guard lock(mu_);
    WriteHeadsLocked();
    (void)::fsync(heads_fd_);
    ::close(heads_fd_);
  }

  std::string HeadsPath() const { return (std::filesystem::path(options_.path) / kHeadsFile).string(); }

  // The heads file as it was before the database was opened: a read-only open of a live log sees
  // at least what the heads named then (they are written after each sync), perhaps more.
  void SetAcknowledged(std::optional<AcknowledgedHeads> heads) { acknowledged_ = std::move(heads); }

  Status CheckAcknowledged() const override {
    const auto& acknowledged = acknowledged_;
    if (!acknowledged) return Status::Ok();
    if (!acknowledged->id.empty() && acknowledged->id != id_) {
      return DataLoss(fmt::format(
          "the update log at '{}' is not the one that acknowledged its updates: {} names log {}, this log is {}. "
          "Its files were lost or replaced, with every update they held; restore the log directory from a copy, "
          "or start a new log in an empty directory (docs/reliability.md)",
          options_.path, kHeadsFile, acknowledged->id, id_.empty() ? "(none)" : id_));
    }
    std::string lost;
    uint64_t total = 0;
    for (const auto& [adapter, seq] : acknowledged->heads) {
      const uint64_t head = LastSeq(adapter);
      if (seq <= head) continue;
      lost += fmt::format("{}adapter '{}': {} acknowledged (seq {}-{}), the log ends at {}", lost.empty() ? "" : "; ",
                          adapter, seq - head, head + 1, seq, head);
      total += seq - head;
    }
    if (total == 0) return Status::Ok();
    return DataLoss(fmt::format(
        "the update log at '{}' has lost {} acknowledged updates from its end ({}). Its write-ahead log was "
        "truncated or damaged after they were synced. Restore the log directory from a copy; or, to go on without "
        "them, start the broker with --accept-lost-log-tail (an aggregator that consumed past the new end refuses "
        "the log and says how to recover)",
        options_.path, total, lost));
  }

  const Status& AcceptedLoss() const override { return accepted_loss_; }

  // At a writable open: the check, then the heads file kept from here on (synced logs only:
  // an unsynced log acknowledges what a power cut may take).
  Status Verify() {
    Status check = CheckAcknowledged();
    if (!check.ok()) {
      if (!options_.accept_lost_tail) return check;
      accepted_loss_ = check;
      acknowledged_.reset();  // from here on, what the log holds is what it acknowledges
    }
    if (!options_.sync) {
      std::error_code ec;
      std::filesystem::remove(HeadsPath(), ec);  // it would name heads this log may not keep
      return Status::Ok();
    }
    heads_fd_ = ::open(HeadsPath().c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (heads_fd_ < 0) return Unavailable(fmt::format("cannot open '{}': {}", HeadsPath(), std::strerror(errno)));
    std::lock_guard lock(mu_);
    WriteHeadsLocked();
    if (::fsync(heads_fd_) != 0) return Unavailable(fmt::format("cannot sync '{}'", HeadsPath()));
    return Status::Ok();
  }

  // Reads the log's identity, making and storing one (synced) when a writable log has none.
  Status LoadId() {
    rocksdb::Status s = db_->db->Get(rocksdb::ReadOptions(), db_->handles[kDefault], kLogIdKey, &id_);
    if (s.ok()) return Status::Ok();
    if (!s.IsNotFound()) return FromRocks(s, "read the log's identity");
    id_.clear();
    if (options_.read_only) return Status::Ok();
    std::random_device random;
    std::array<uint8_t, 16> raw{};
    for (size_t i = 0; i < raw.size(); i += 4) {
      const uint32_t word = random();
      std::memcpy(raw.data() + i, &word, 4);
    }
    std::string id = ToHex(raw);
    rocksdb::WriteBatch batch;
    batch.Put(db_->handles[kDefault], kLogIdKey, id);
    rocksdb::WriteOptions wo;
    wo.sync = true;
    RETURN_IF_ERROR(db_->Write(wo, &batch, "store the log's identity"));
    id_ = std::move(id);
    return Status::Ok();
  }

  const std::string& Id() const override { return id_; }

  std::vector<Result<AppendOutcome>> AppendBatch(std::span<const LogAppend> items) override {
    std::vector<Result<AppendOutcome>> results;
    results.reserve(items.size());
    if (options_.read_only) {
      for (size_t i = 0; i < items.size(); ++i) results.emplace_back(FailedPrecondition("log opened read-only"));
      return results;
    }
    std::lock_guard lock(mu_);
    rocksdb::WriteBatch batch;
    // Ids first seen in this batch, so a retry that races its original within one batch is
    // still logged once.
    std::unordered_map<std::string, std::string> batch_ids;
    std::map<std::string, uint64_t, std::less<>> next_heads;
    bool any_write = false;
    for (const auto& item : items) {
      if (item.adapter_id.find('\0') != std::string_view::npos ||
          item.client_id.find('\0') != std::string_view::npos ||
          item.update_id.find('\0') != std::string_view::npos) {
        results.emplace_back(InvalidArgument("ids must not contain NUL bytes"));
        continue;
      }
      const Digest128 digest = item.digest ? *item.digest : HashBytes(item.bytes);
      std::string key = IdKey(item.adapter_id, item.client_id, item.update_id);
      std::string existing;
      bool found = false;
      if (auto it = batch_ids.find(key); it != batch_ids.end()) {
        existing = it->second;
        found = true;
      } else {
        rocksdb::Status s = db_->db->Get(rocksdb::ReadOptions(), db_->handles[kIds], key, &existing);
        if (s.ok()) {
          found = true;
        } else if (!s.IsNotFound()) {
          results.emplace_back(FromRocks(s, "read idempotency index"));
          continue;
        }
      }
      if (found) {
        if (existing.size() != 24 ||
            existing.compare(8, 16, reinterpret_cast<const char*>(digest.data()), 16) != 0) {
          results.emplace_back(AlreadyExists(fmt::format(
              "update id '{}' of client '{}' was already logged with different content",
              item.update_id, item.client_id)));
          continue;
        }
        results.emplace_back(AppendOutcome{internal::ReadBigEndian64(existing), true});
        continue;
      }
      auto head_it = next_heads.find(item.adapter_id);
      if (head_it == next_heads.end()) {
        head_it = next_heads.emplace(std::string(item.adapter_id), LastSeqLocked(item.adapter_id)).first;
      }
      const uint64_t seq = ++head_it->second;
      std::string value = IdValue(seq, digest);
      batch.Put(db_->handles[kLog], internal::SeqKey(item.adapter_id, seq),
                rocksdb::Slice(reinterpret_cast<const char*>(item.bytes.data()), item.bytes.size()));
      batch.Put(db_->handles[kIds], key, value);
      batch_ids.emplace(std::move(key), std::move(value));
      results.emplace_back(AppendOutcome{seq, false});
      any_write = true;
    }
    if (!any_write) return results;
    rocksdb::WriteOptions wo;
    wo.sync = options_.sync;
    Status written = db_->Write(wo, &batch, "append to update log");
    if (!written.ok()) {
      const Status& err = written;
      for (auto& r : results) {
        if (r.ok() && !r->duplicate) r = err;
      }
      return results;
    }
    for (const auto& [adapter, head] : next_heads) heads_[adapter] = head;
    WriteHeadsLocked();
    return results;
  }

  Result<std::vector<LogRecord>> Read(std::string_view adapter_id, uint64_t from_seq,
                                      size_t max_count, size_t max_bytes) override {
    std::vector<LogRecord> out;
    if (max_count == 0) return out;
    std::unique_ptr<rocksdb::Iterator> it(db_->db->NewIterator(rocksdb::ReadOptions(), db_->handles[kLog]));
    size_t bytes = 0;
    for (it->Seek(internal::SeqKey(adapter_id, from_seq)); it->Valid(); it->Next()) {
      std::string_view adapter;
      uint64_t seq = 0;
      if (!internal::ParseSeqKey(it->key().ToStringView(), &adapter, &seq) || adapter != adapter_id) break;
      if (!out.empty() && bytes + it->value().size() > max_bytes) break;
      bytes += it->value().size();
      out.push_back({seq, it->value().ToString()});
      if (out.size() >= max_count) break;
    }
    RETURN_IF_ERROR(FromRocks(it->status(), "read update log"));
    return out;
  }

  uint64_t LastSeq(std::string_view adapter_id) const override {
    std::lock_guard lock(mu_);
    return LastSeqLocked(adapter_id);
  }

  std::vector<std::string> Adapters() const override {
    std::lock_guard lock(mu_);
    std::vector<std::string> out;
    for (const auto& [a, h] : heads_) {
      if (h > 0) out.push_back(a);
    }
    return out;
  }

  Status PutGlobal(std::string_view adapter_id, std::span<const std::byte> bytes) override {
    rocksdb::WriteOptions wo;
    wo.sync = false;  // a lost global is re-sent by the aggregator; no need to pay for fsync
    rocksdb::WriteBatch batch;
    batch.Put(db_->handles[kGlobals], rocksdb::Slice(adapter_id.data(), adapter_id.size()),
              rocksdb::Slice(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
    return db_->Write(wo, &batch, "store global");
  }

  Result<std::optional<std::string>> GetGlobal(std::string_view adapter_id) override {
    std::string value;
    rocksdb::Status s = db_->db->Get(rocksdb::ReadOptions(), db_->handles[kGlobals], adapter_id, &value);
    if (s.IsNotFound()) return std::optional<std::string>();
    RETURN_IF_ERROR(FromRocks(s, "read global"));
    return std::optional<std::string>(std::move(value));
  }

  std::vector<std::string> AdaptersWithGlobal() override {
    std::vector<std::string> out;
    std::unique_ptr<rocksdb::Iterator> it(db_->db->NewIterator(rocksdb::ReadOptions(), db_->handles[kGlobals]));
    for (it->SeekToFirst(); it->Valid(); it->Next()) out.push_back(it->key().ToString());
    return out;
  }

 private:
  // After the batch's synced write: a write to the page cache, about 100 bytes per adapter. A
  // failure is not an error of the append (the updates are durable); the check then knows less.
  void WriteHeadsLocked() {
    if (heads_fd_ < 0) return;
    const std::string text = HeadsText(id_, heads_);
    if (::pwrite(heads_fd_, text.data(), text.size(), 0) == static_cast<ssize_t>(text.size())) {
      (void)::ftruncate(heads_fd_, static_cast<off_t>(text.size()));
    }
  }

  uint64_t LastSeqLocked(std::string_view adapter_id) const {
    auto it = heads_.find(adapter_id);
    return it == heads_.end() ? 0 : it->second;
  }

  // Finds each adapter's last sequence number by jumping from adapter to adapter.
  void LoadHeads() {
    std::unique_ptr<rocksdb::Iterator> it(db_->db->NewIterator(rocksdb::ReadOptions(), db_->handles[kLog]));
    it->SeekToFirst();
    while (it->Valid()) {
      std::string_view adapter;
      uint64_t seq = 0;
      if (!internal::ParseSeqKey(it->key().ToStringView(), &adapter, &seq)) {
        it->Next();
        continue;
      }
      std::string name(adapter);
      std::string upper = name;
      upper.push_back('\x01');  // sorts after every "<name>\0<seq>" key
      it->SeekForPrev(upper);
      if (it->Valid() && internal::ParseSeqKey(it->key().ToStringView(), &adapter, &seq)) {
        heads_[name] = seq;
      }
      it->Seek(upper);
    }
  }

  std::unique_ptr<internal::OpenDb> db_;
  UpdateLogOptions options_;
  mutable std::mutex mu_;
  std::map<std::string, uint64_t, std::less<>> heads_;
  std::string id_;  // set once, before the log is shared
  int heads_fd_ = -1;  // kHeadsFile, writable synced logs only
  std::optional<AcknowledgedHeads> acknowledged_;  // read at open
  Status accepted_loss_;
};

}  // namespace

Result<std::unique_ptr<UpdateLog>> UpdateLog::Open(const UpdateLogOptions& options) {
  // Only the heads file left: every RocksDB file is gone (were some left, the store would be
  // refused as damaged when opened).
  const auto only_heads_left = [](const std::filesystem::path& dir) {
    std::error_code ec;
    return std::filesystem::exists(dir / kHeadsFile, ec) && !std::filesystem::exists(dir / "CURRENT", ec) &&
           internal::RocksFiles(dir.string()).empty();
  };
  std::optional<AcknowledgedHeads> acknowledged;
  if (!options.path.empty()) acknowledged = ReadHeads((std::filesystem::path(options.path) / kHeadsFile).string());
  if (!options.path.empty() && !options.accept_lost_tail && only_heads_left(options.path)) {
    return DataLoss(fmt::format(
        "the update log at '{}' has lost its files: only its record of acknowledged updates ({}) is left. Restore "
        "the log directory from a copy, or start a new log in an empty directory",
        options.path, kHeadsFile));
  }
  ASSIGN_OR_RETURN(auto db, internal::Open(options.path, options.read_only,
                                           {rocksdb::kDefaultColumnFamilyName, "log", "ids", "globals"},
                                           {"log"}, options.min_blob_size));
  auto log = std::make_unique<RocksUpdateLog>(std::move(db), options);
  log->SetAcknowledged(std::move(acknowledged));
  RETURN_IF_ERROR(log->LoadId());
  if (!options.read_only) RETURN_IF_ERROR(log->Verify());
  return std::unique_ptr<UpdateLog>(std::move(log));
}

}  // namespace fedlora::storage
