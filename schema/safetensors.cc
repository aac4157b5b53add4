#include "schema/safetensors.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <utility>

namespace fedlora::safetensors {
namespace {

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

struct DtypeInfo {
  Dtype dtype;
  std::string_view name;
  size_t size;
};
constexpr DtypeInfo kDtypes[] = {
    {Dtype::kF32, "F32", 4}, {Dtype::kF16, "F16", 2}, {Dtype::kBF16, "BF16", 2}, {Dtype::kF64, "F64", 8},
    {Dtype::kI64, "I64", 8}, {Dtype::kI32, "I32", 4}, {Dtype::kI16, "I16", 2},   {Dtype::kI8, "I8", 1},
    {Dtype::kU8, "U8", 1},   {Dtype::kBool, "BOOL", 1},
};

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {  // infinity or NaN (payload kept)
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);  // rebias 15 -> 127
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal: normalise (every F16 subnormal is a normal float)
    uint32_t e = 113;  // 127 - 15 + 1
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --e;
    }
    bits = sign | (e << 23) | ((mant & 0x3ffu) << 13);
  }
  return std::bit_cast<float>(bits);
}

}  // namespace

std::string_view DtypeName(Dtype dtype) {
  for (const auto& d : kDtypes) {
    if (d.dtype == dtype) return d.name;
  }
  return "?";
}

size_t DtypeSize(Dtype dtype) {
  for (const auto& d : kDtypes) {
    if (d.dtype == dtype) return d.size;
  }
  return 0;
}

uint64_t Entry::numel() const {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  return n;
}

const Entry* Header::Find(std::string_view name) const {
  for (const auto& e : tensors) {
    if (e.name == name) return &e;
  }
  return nullptr;
}

Result<Header> ParseHeader(std::span<const std::byte> file) {
  if (file.size() < 8) return DataLoss("safetensors file is shorter than its 8-byte header length");
  uint64_t n = 0;
  std::memcpy(&n, file.data(), 8);
  if (n > file.size() - 8) {
    return DataLoss(fmt::format("safetensors header says {} bytes, the file has {} after the length", n, file.size() - 8));
  }
  const std::string_view text(reinterpret_cast<const char*>(file.data()) + 8, n);
  const auto json = nlohmann::json::parse(text, nullptr, false);
  if (!json.is_object()) return DataLoss("safetensors header is not a JSON object");
  Header out;
  out.data_start = 8 + n;
  const uint64_t data_size = file.size() - out.data_start;
  for (const auto& [key, value] : json.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) return DataLoss("__metadata__ is not an object");
      for (const auto& [k, v] : value.items()) {
        if (!v.is_string()) return DataLoss(fmt::format("metadata '{}' is not a string", k));
        out.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    if (!value.is_object() || !value.contains("dtype") || !value.contains("shape") || !value.contains("data_offsets") ||
        !value["dtype"].is_string() || !value["shape"].is_array()) {
      return DataLoss(fmt::format("tensor '{}': needs dtype, shape and data_offsets", key));
    }
    Entry e;
    e.name = key;
    const std::string dtype = value["dtype"].get<std::string>();
    const auto info = std::find_if(std::begin(kDtypes), std::end(kDtypes), [&](const DtypeInfo& d) { return d.name == dtype; });
    if (info == std::end(kDtypes)) return Unimplemented(fmt::format("tensor '{}' has dtype {}, which fedlora does not read", key, dtype));
    e.dtype = info->dtype;
    // The element count times the dtype's size must not overflow before it is compared.
    unsigned __int128 bytes = info->size;
    for (const auto& d : value["shape"]) {
      if (!d.is_number_unsigned()) return DataLoss(fmt::format("tensor '{}' has a bad shape {}", key, value["shape"].dump()));
      e.shape.push_back(d.get<uint64_t>());
      bytes *= e.shape.back();
      if (bytes > data_size) bytes = static_cast<unsigned __int128>(data_size) + 1;  // saturate: cannot fit anyway
    }
    const auto& off = value["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned()) {
      return DataLoss(fmt::format("tensor '{}' has bad data_offsets", key));
    }
    e.begin = off[0].get<uint64_t>();
    e.end = off[1].get<uint64_t>();
    if (e.begin > e.end || e.end > data_size || e.end - e.begin != bytes) {
      return DataLoss(fmt::format("tensor '{}': offsets [{}, {}) do not hold its {} shape [{}] within {} data bytes", key,
                                  e.begin, e.end, dtype, fmt::join(e.shape, ","), data_size));
    }
    out.tensors.push_back(std::move(e));
  }
  // The data must be covered exactly: no overlap, no gap.
  std::sort(out.tensors.begin(), out.tensors.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t at = 0;
  for (const auto& e : out.tensors) {
    if (e.begin != at) return DataLoss(fmt::format("safetensors data has a gap or an overlap at byte {}", std::min(e.begin, at)));
    at = e.end;
  }
  if (at != data_size) return DataLoss(fmt::format("safetensors data has {} bytes no tensor uses", data_size - at));
  return out;
}

Status ToFloat(Dtype dtype, const std::byte* src, size_t n, float* dst) {
  switch (dtype) {
    case Dtype::kF32:
      std::memcpy(dst, src, n * sizeof(float));
      return Status::Ok();
    case Dtype::kF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = HalfToFloat(h);
      }
      return Status::Ok();
    case Dtype::kBF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = std::bit_cast<float>(static_cast<uint32_t>(h) << 16);
      }
      return Status::Ok();
    default:
      return Unimplemented(fmt::format("cannot read {} values as floats (F32, F16 and BF16 can be)", DtypeName(dtype)));
  }
}

std::string Encode(const std::vector<F32Tensor>& tensors, const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  size_t offset = 0;
  for (const auto& t : tensors) {
    const size_t bytes = t.values.size() * sizeof(float);
    header[t.name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string json = header.dump();
  json.append((8 - (8 + json.size()) % 8) % 8, ' ');  // data starts 8-byte aligned
  std::string out(8, '\0');
  const uint64_t n = json.size();
  std::memcpy(out.data(), &n, 8);
  out += json;
  out.reserve(out.size() + offset);
  for (const auto& t : tensors) {
    out.append(reinterpret_cast<const char*>(t.values.data()), t.values.size() * sizeof(float));
  }
  return out;
}

Result<MappedFile> MappedFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) return NotFound(fmt::format("'{}' does not exist", path));
    return Unavailable(fmt::format("cannot open '{}': {}", path, std::strerror(err)));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return Unavailable(fmt::format("'{}' is not a regular file", path));
  }
  MappedFile f;
  f.path_ = path;
  f.size_ = static_cast<size_t>(st.st_size);
  if (f.size_ > 0) {
    // Private and writable: pages stay shared with the page cache until something writes one
    // (nothing does: the weights are frozen), and no write could ever reach the file.
    void* p = ::mmap(nullptr, f.size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return Unavailable(fmt::format("cannot map '{}': {}", path, std::strerror(err)));
    }
    f.data_ = p;
  }
  ::close(fd);
  return f;
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)), path_(std::move(other.path_)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) ::munmap(data_, size_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    path_ = std::move(other.path_);
  }
  return *this;
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(data_, size_);
}

}  // namespace fedlora::safetensors
