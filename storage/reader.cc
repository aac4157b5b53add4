#include "storage/reader.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "schema/validate.h"

namespace fedlora::storage {

Result<StoredAdapter> StoredAdapter::Open(const StoreLayout& layout, const std::string& adapter, bool writable) {
  if (!std::filesystem::exists(layout.adapters())) {
    return NotFound(fmt::format("no adapter store at '{}' (is --store right?)", layout.adapters()));
  }
  AdapterStoreOptions so;
  so.path = layout.adapters();
  so.read_only = !writable;
  StoredAdapter out;
  ASSIGN_OR_RETURN(out.store_, AdapterStore::Open(so));
  ASSIGN_OR_RETURN(auto cursor, out.store_->GetCursor(adapter));
  if (!cursor) {
    ASSIGN_OR_RETURN(auto adapters, out.store_->Adapters());
    std::string known;
    for (const auto& a : adapters) known += (known.empty() ? "" : ", ") + a;
    return NotFound(fmt::format("store '{}' has no adapter '{}' (it has: {})", layout.dir, adapter,
                                known.empty() ? "none" : known));
  }
  out.adapter_ = adapter;
  out.cursor_ = *cursor;
  return out;
}

Result<codec::VersionInfo> StoredAdapter::Record(uint64_t version) {
  if (version > cursor_.version) {
    return NotFound(fmt::format("adapter '{}' has versions 0..{}, not {}", adapter_, cursor_.version, version));
  }
  return ReadVersionInfo(*store_, adapter_, version);
}

Result<codec::DecodedGlobal> StoredAdapter::Global(uint64_t version) {
  if (version > cursor_.version) {
    return NotFound(fmt::format("adapter '{}' has versions 0..{}, not {}", adapter_, cursor_.version, version));
  }
  return ReadVersion(*store_, adapter_, version);
}

namespace {

std::string TagsPath(const StoreLayout& store) { return store.dir + "/tags.json"; }

Result<nlohmann::json> ReadTagsFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return nlohmann::json::object();
  auto j = nlohmann::json::parse(in, nullptr, false);
  if (!j.is_object()) return DataLoss(fmt::format("'{}' is not a JSON object", path));
  return j;
}

}  // namespace

Result<std::map<std::string, uint64_t>> ReadTags(const StoreLayout& store, const std::string& adapter) {
  ASSIGN_OR_RETURN(auto j, ReadTagsFile(TagsPath(store)));
  std::map<std::string, uint64_t> out;
  if (j.contains(adapter) && j[adapter].is_object()) {
    for (const auto& [name, v] : j[adapter].items()) {
      if (v.is_number_unsigned()) out[name] = v.get<uint64_t>();
    }
  }
  return out;
}

Status AddTag(const StoreLayout& store, const std::string& adapter, const std::string& name, uint64_t version) {
  RETURN_IF_ERROR(ValidateId("tag name", name, 128));
  if (name.find_first_not_of("0123456789") == std::string::npos) {
    return InvalidArgument(fmt::format("tag '{}' reads as a version number; use a name with a letter in it", name));
  }
  const std::string path = TagsPath(store);
  // One writer at a time; readers see the old or the new file, never half of one.
  const int lock = ::open((path + ".lock").c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
  if (lock < 0) return Unavailable(fmt::format("cannot create '{}.lock'", path));
  ::flock(lock, LOCK_EX);
  auto release = std::unique_ptr<int, void (*)(int*)>(new int(lock), [](int* fd) {
    ::flock(*fd, LOCK_UN);
    ::close(*fd);
    delete fd;
  });
  ASSIGN_OR_RETURN(auto j, ReadTagsFile(path));
  auto& tags = j[adapter];
  if (!tags.is_object()) tags = nlohmann::json::object();
  if (tags.contains(name)) {
    return AlreadyExists(fmt::format("tag '{}' already names version {} of '{}'; tags never move", name,
                                     tags[name].dump(), adapter));
  }
  tags[name] = version;
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << j.dump(2) << "\n";
    if (!out.flush()) return Unavailable(fmt::format("cannot write '{}'", tmp));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return Unavailable(fmt::format("cannot replace '{}': {}", path, ec.message()));
  return Status::Ok();
}

Result<uint64_t> ResolveVersion(const StoreLayout& store, const std::string& adapter, const std::string& text) {
  if (!text.empty() && text.find_first_not_of("0123456789") == std::string::npos) {
    try {
      return static_cast<uint64_t>(std::stoull(text));
    } catch (const std::exception&) {
      return InvalidArgument(fmt::format("version '{}' is out of range", text));
    }
  }
  ASSIGN_OR_RETURN(auto tags, ReadTags(store, adapter));
  auto it = tags.find(text);
  if (it != tags.end()) return it->second;
  std::string known;
  for (const auto& [name, v] : tags) known += fmt::format("{}{} (v{})", known.empty() ? "" : ", ", name, v);
  return NotFound(fmt::format("'{}' is neither a version number nor a tag of '{}' (tags: {})", text, adapter,
                              known.empty() ? "none" : known));
}

std::optional<Cursor> ConsumedCursor(const StoreLayout& store, const std::string& adapter) {
  AdapterStoreOptions so;
  so.path = store.adapters();
  so.read_only = true;
  if (!std::filesystem::exists(so.path)) return std::nullopt;
  auto opened = AdapterStore::Open(so);
  if (!opened.ok()) return std::nullopt;
  auto cursor = (*opened)->GetCursor(adapter);
  if (!cursor.ok() || !*cursor) return std::nullopt;
  return **cursor;
}

Status CheckLogIdentity(const UpdateLog& log, const Cursor& consumed, const std::string& store_path) {
  if (consumed.log_id.empty() || log.Id().empty() || consumed.log_id == log.Id()) return Status::Ok();
  return FailedPrecondition(fmt::format(
      "this log (id {}) is not the one the aggregator's store '{}' consumed (id {}, up to seq {}): the log was lost or "
      "replaced, and updates it acknowledged may be gone",
      log.Id(), store_path, consumed.log_id, consumed.consumed_seq));
}

Status CheckLogHead(const UpdateLog& log, const std::string& adapter, const Cursor& consumed,
                    const std::string& store_path) {
  const uint64_t head = log.LastSeq(adapter);
  if (consumed.consumed_seq <= head) return Status::Ok();
  return DataLoss(fmt::format("the log ends at seq {}, but the aggregator's store '{}' consumed it up to seq {}: {} "
                              "acknowledged record(s) are missing (a truncated write-ahead log, or a log restored "
                              "from an older copy)",
                              head, store_path, consumed.consumed_seq, consumed.consumed_seq - head));
}

Result<UpdateWhereabouts> FindUpdate(const StoreLayout& store, StoredAdapter& stored, const std::string& update_id,
                                     const std::string& client) {
  auto matches = [&](const std::string& c, const std::string& id) {
    return id == update_id && (client.empty() || c == client);
  };
  UpdateWhereabouts out;
  const std::string& adapter = stored.adapter();
  const uint64_t latest = stored.cursor().version;
  // Versions in chunks, so a long history is never held in memory at once.
  constexpr uint64_t kChunk = 1024;
  for (uint64_t from = 1; from <= latest; from += kChunk) {
    ASSIGN_OR_RETURN(auto records, stored.store().GetRecords(adapter, from, std::min(latest, from + kChunk - 1)));
    for (const auto& bytes : records) {
      ASSIGN_OR_RETURN(const auto* rec, codec::VerifyVersionRecord(codec::AsBytes(bytes)));
      const auto v = codec::DecodeVersionRecord(*rec);
      for (const auto& a : v.applied) {
        if (matches(a.client_id, a.update_id)) out.outcomes.push_back({v.version, true, a, ""});
      }
      for (const auto& d : v.dropped) {
        if (!matches(d.client_id, d.update_id)) continue;
        codec::LineageItem item;
        item.seq = d.seq;
        item.client_id = d.client_id;
        item.update_id = d.update_id;
        item.base_version = d.base_version;
        item.staleness = d.staleness;
        out.outcomes.push_back({v.version, false, std::move(item), d.reason});
      }
    }
  }
  if (!out.outcomes.empty()) return out;
  // Logged but not consumed yet?
  UpdateLogOptions lo;
  lo.path = store.log();
  lo.read_only = true;
  if (!std::filesystem::exists(lo.path)) return out;
  auto log = UpdateLog::Open(lo);
  if (!log.ok()) return out;
  const uint64_t head = (*log)->LastSeq(adapter);
  for (uint64_t seq = stored.cursor().consumed_seq + 1; seq <= head && !out.waiting_at;) {
    ASSIGN_OR_RETURN(auto batch, (*log)->Read(adapter, seq, 256, 64u << 20));
    if (batch.empty()) break;
    for (const auto& r : batch) {
      seq = r.seq + 1;
      auto env = codec::VerifyEnvelope(codec::AsBytes(r.bytes), codec::kMaxBufferBytes);
      if (!env.ok() || (*env)->body_type() != wire::Body::Update) continue;
      const auto* u = (*env)->body_as_Update();
      if (matches(u->client_id()->str(), u->update_id()->str())) {
        out.waiting_at = r.seq;
        break;
      }
    }
  }
  return out;
}

Result<LineageCounts> CountLineage(StoredAdapter& stored, uint64_t from, uint64_t to) {
  LineageCounts out;
  const uint64_t lo = std::min(from, to), hi = std::max(from, to);
  if (lo == hi) return out;
  ASSIGN_OR_RETURN(auto records, stored.store().GetRecords(stored.adapter(), lo + 1, hi));
  for (const auto& bytes : records) {
    ASSIGN_OR_RETURN(const auto* rec, codec::VerifyVersionRecord(codec::AsBytes(bytes)));
    const auto v = codec::DecodeVersionRecord(*rec);
    out.folded += v.applied.size();
    out.dropped += v.dropped.size();
  }
  return out;
}

}  // namespace fedlora::storage
