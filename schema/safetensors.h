// The safetensors file format (Hugging Face's checkpoints and PEFT adapters), read in place:
// an 8-byte little-endian header length N, N bytes of JSON naming each tensor's dtype, shape
// and [begin, end) byte offsets into the data that follows (plus an optional "__metadata__"
// object of strings), then the data, little-endian and row-major, every byte used by exactly
// one tensor. Parsing checks all of that, so a tensor's bytes can be read without further
// bounds checks; MappedFile maps a file so that its tensors are read from the page cache
// without a copy.
// Thread safety: Header and MappedFile are immutable after construction.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "schema/status.h"

namespace fedlora::safetensors {

enum class Dtype : uint8_t { kF32, kF16, kBF16, kF64, kI64, kI32, kI16, kI8, kU8, kBool };

// "F32", "BF16", ...
std::string_view DtypeName(Dtype dtype);
size_t DtypeSize(Dtype dtype);

struct Entry {
  std::string name;
  Dtype dtype = Dtype::kF32;
  std::vector<uint64_t> shape;
  uint64_t begin = 0;  // offsets into the data (after the header)
  uint64_t end = 0;

  uint64_t numel() const;
};

struct Header {
  std::vector<Entry> tensors;  // in the order of their data
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;     // 8 + N: where the data begins in the file

  // The entry named `name`, or null.
  const Entry* Find(std::string_view name) const;
};

// Parses and checks the header of a whole file's bytes. Errors: kDataLoss (shorter than its
// header, a header that is not JSON or lacks a field, a bad shape or offsets, offsets that do
// not match the shape and dtype, data with a gap, an overlap or unused bytes), kUnimplemented
// (a dtype this build does not know, named).
Result<Header> ParseHeader(std::span<const std::byte> file);

// Converts n elements of F32, F16 or BF16 (little-endian, any alignment) to float. F16 and
// BF16 are exact in float (subnormals, infinities and NaN included).
// Errors: kUnimplemented for other dtypes.
Status ToFloat(Dtype dtype, const std::byte* src, size_t n, float* dst);

// One F32 tensor to write.
struct F32Tensor {
  std::string name;
  std::vector<uint32_t> shape;
  std::span<const float> values;
};
// The file holding `tensors` in this order with `metadata`; the data starts 8-byte aligned.
std::string Encode(const std::vector<F32Tensor>& tensors, const std::map<std::string, std::string>& metadata);

// A file mapped read-only into memory (private: nothing the process does reaches the file).
class MappedFile {
 public:
  // Errors: kNotFound (no such file), kUnavailable (cannot open or map it).
  static Result<MappedFile> Open(const std::string& path);
  MappedFile() = default;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  std::span<const std::byte> bytes() const { return {static_cast<const std::byte*>(data_), size_}; }
  const std::string& path() const { return path_; }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
};

}  // namespace fedlora::safetensors
