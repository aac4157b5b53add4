#include "worker/data.h"

#include <fmt/format.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <limits>
#include <random>
#include <system_error>

namespace fedlora::worker {
namespace {

constexpr uint32_t kImageMagic = 0x00000803;
constexpr uint32_t kLabelMagic = 0x00000801;
// Redraws of the Dirichlet proportions before the deterministic top-up takes over.
constexpr int kMaxPartitionRedraws = 100;

// An open gzFile that closes itself; zlib reads raw files through the same handle.
class GzReader {
 public:
  explicit GzReader(const std::string& path) : file_(gzopen(path.c_str(), "rb")) {}
  ~GzReader() {
    if (file_ != nullptr) gzclose(file_);
  }
  GzReader(const GzReader&) = delete;
  GzReader& operator=(const GzReader&) = delete;

  bool is_open() const { return file_ != nullptr; }

  // Reads exactly `size` bytes; false on a short read or a decompression error.
  bool ReadExactly(uint8_t* out, size_t size) {
    while (size > 0) {
      // gzread takes an unsigned count: read in bounded chunks.
      const unsigned chunk = static_cast<unsigned>(std::min<size_t>(size, 1u << 30));
      const int n = gzread(file_, out, chunk);
      if (n <= 0) return false;
      out += n;
      size -= static_cast<size_t>(n);
    }
    return true;
  }

 private:
  gzFile file_;
};

struct IdxFile {
  std::vector<uint32_t> dims;
  std::vector<uint8_t> data;
};

// Reads an unsigned-byte IDX file whose magic (which also encodes the rank) must match.
Result<IdxFile> ReadIdx(const std::string& path, uint32_t expected_magic) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return NotFound(fmt::format("IDX file '{}' does not exist", path));
  }
  GzReader reader(path);
  if (!reader.is_open()) return NotFound(fmt::format("cannot open IDX file '{}'", path));

  std::array<uint8_t, 4> word{};
  auto read_u32 = [&](uint32_t& value) {
    if (!reader.ReadExactly(word.data(), word.size())) return false;
    // IDX integers are big-endian.
    value = (uint32_t{word[0]} << 24) | (uint32_t{word[1]} << 16) | (uint32_t{word[2]} << 8) |
            uint32_t{word[3]};
    return true;
  };

  uint32_t magic = 0;
  if (!read_u32(magic)) return DataLoss(fmt::format("'{}': truncated IDX header", path));
  if (magic != expected_magic) {
    return DataLoss(fmt::format("'{}': IDX magic {:#010x}, expected {:#010x}", path, magic,
                                expected_magic));
  }
  IdxFile idx;
  const uint32_t rank = magic & 0xff;
  size_t total = 1;
  for (uint32_t i = 0; i < rank; ++i) {
    uint32_t dim = 0;
    if (!read_u32(dim)) return DataLoss(fmt::format("'{}': truncated IDX header", path));
    idx.dims.push_back(dim);
    total *= dim;
  }
  // Guards against absurd headers before allocating: Fashion-MNIST is ~47 MB.
  constexpr size_t kMaxBytes = size_t{1} << 32;
  if (total > kMaxBytes) {
    return DataLoss(fmt::format("'{}': IDX payload of {} bytes is implausible", path, total));
  }
  idx.data.resize(total);
  if (!reader.ReadExactly(idx.data.data(), total)) {
    return DataLoss(fmt::format("'{}': truncated IDX payload, expected {} bytes", path, total));
  }
  return idx;
}


// One Dirichlet(alpha) draw over `k` categories.
std::vector<double> DrawDirichlet(std::mt19937_64& rng, int k, double alpha) {
  std::gamma_distribution<double> gamma(alpha, 1.0);
  std::vector<double> p(static_cast<size_t>(k));
  double sum = 0;
  for (double& x : p) {
    x = gamma(rng);
    sum += x;
  }
  if (!(sum > 0)) {
    // Tiny alphas can underflow every component: that is the one-hot limit of the distribution.
    std::fill(p.begin(), p.end(), 0.0);
    p[UniformBelow(rng, static_cast<uint64_t>(k))] = 1.0;
    return p;
  }
  for (double& x : p) x /= sum;
  return p;
}

// Deals every class's (shuffled) indices out by one Dirichlet draw per class.
std::vector<std::vector<size_t>> DealOnce(const std::vector<std::vector<size_t>>& by_class,
                                          int num_clients, double alpha, std::mt19937_64& rng) {
  std::vector<std::vector<size_t>> parts(static_cast<size_t>(num_clients));
  for (const auto& class_indices : by_class) {
    std::vector<size_t> shuffled = class_indices;
    SeededShuffle(shuffled, rng);
    const std::vector<double> p = DrawDirichlet(rng, num_clients, alpha);
    const size_t n = shuffled.size();
    double cumulative = 0;
    size_t begin = 0;
    for (int c = 0; c < num_clients; ++c) {
      cumulative += p[static_cast<size_t>(c)];
      size_t end = c + 1 == num_clients
                       ? n
                       : std::min(n, static_cast<size_t>(std::llround(cumulative * double(n))));
      end = std::max(end, begin);
      auto& part = parts[static_cast<size_t>(c)];
      part.insert(part.end(), shuffled.begin() + static_cast<ptrdiff_t>(begin),
                  shuffled.begin() + static_cast<ptrdiff_t>(end));
      begin = end;
    }
  }
  return parts;
}

}  // namespace

Result<Dataset> LoadIdx(const std::string& images_path, const std::string& labels_path) {
  ASSIGN_OR_RETURN(IdxFile images, ReadIdx(images_path, kImageMagic));
  ASSIGN_OR_RETURN(IdxFile labels, ReadIdx(labels_path, kLabelMagic));
  if (images.dims[1] != static_cast<uint32_t>(kImageRows) ||
      images.dims[2] != static_cast<uint32_t>(kImageCols)) {
    return DataLoss(fmt::format("'{}': images are {}x{}, expected {}x{}", images_path,
                                images.dims[1], images.dims[2], kImageRows, kImageCols));
  }
  if (images.dims[0] != labels.dims[0]) {
    return DataLoss(fmt::format("'{}' holds {} images but '{}' holds {} labels", images_path,
                                images.dims[0], labels_path, labels.dims[0]));
  }
  for (size_t i = 0; i < labels.data.size(); ++i) {
    if (labels.data[i] >= kNumClasses) {
      return DataLoss(
          fmt::format("'{}': label {} of example {} is out of range", labels_path, labels.data[i], i));
    }
  }
  Dataset dataset;
  dataset.images = std::move(images.data);
  dataset.labels = std::move(labels.data);
  return dataset;
}

Result<Dataset> LoadFashionMnist(const std::string& dir, Split split) {
  const std::string prefix = split == Split::kTrain ? "train" : "t10k";
  // Prefer the distributed .gz files; fall back to unpacked copies.
  auto pick = [&](const std::string& stem) {
    const std::filesystem::path base = std::filesystem::path(dir) / stem;
    std::error_code ec;
    const std::string gz = base.string() + ".gz";
    return std::filesystem::exists(gz, ec) ? gz : base.string();
  };
  Result<Dataset> dataset =
      LoadIdx(pick(prefix + "-images-idx3-ubyte"), pick(prefix + "-labels-idx1-ubyte"));
  if (!dataset.ok()) return dataset.status().WithContext("loading Fashion-MNIST");
  return dataset;
}

PublicSplit SplitPublic(const Dataset& train, const PublicSplitOptions& options) {
  std::array<bool, kNumClasses> is_public_class{};
  for (int c : options.classes) {
    if (c >= 0 && c < kNumClasses) is_public_class[static_cast<size_t>(c)] = true;
  }
  std::array<std::vector<size_t>, kNumClasses> by_class;
  for (size_t i = 0; i < train.size(); ++i) by_class[train.labels[i]].push_back(i);

  const double fraction = std::clamp(options.fraction, 0.0, 1.0);
  std::mt19937_64 rng(options.seed);
  std::vector<bool> is_public(train.size(), false);
  for (int c = 0; c < kNumClasses; ++c) {
    if (!is_public_class[static_cast<size_t>(c)]) continue;
    std::vector<size_t> indices = by_class[static_cast<size_t>(c)];
    SeededShuffle(indices, rng);
    const auto take = static_cast<size_t>(std::llround(fraction * double(indices.size())));
    for (size_t i = 0; i < take; ++i) is_public[indices[i]] = true;
  }
  PublicSplit split;
  for (size_t i = 0; i < train.size(); ++i) {
    (is_public[i] ? split.public_indices : split.private_indices).push_back(i);
  }
  return split;
}

Result<std::vector<std::vector<size_t>>> DirichletPartition(const Dataset& train,
                                                            const std::vector<size_t>& indices,
                                                            int num_clients, double alpha,
                                                            uint64_t seed,
                                                            size_t min_per_client) {
  if (num_clients <= 0) {
    return InvalidArgument(fmt::format("num_clients must be positive, got {}", num_clients));
  }
  if (!(alpha > 0) || !std::isfinite(alpha)) {
    return InvalidArgument(fmt::format("Dirichlet alpha must be positive, got {}", alpha));
  }
  std::vector<std::vector<size_t>> by_class(static_cast<size_t>(std::max(train.num_classes, 1)));
  for (size_t index : indices) {
    if (index >= train.size()) {
      return InvalidArgument(
          fmt::format("index {} is out of range for a dataset of {}", index, train.size()));
    }
    if (train.labels[index] >= by_class.size()) {
      return InvalidArgument(fmt::format("example {} has label {}, beyond the dataset's {} classes", index,
                                         train.labels[index], train.num_classes));
    }
    by_class[train.labels[index]].push_back(index);
  }

  const auto clients = static_cast<size_t>(num_clients);
  const bool feasible = indices.size() >= clients * min_per_client;
  std::mt19937_64 rng(seed);
  std::vector<std::vector<size_t>> parts;
  for (int attempt = 0; attempt < kMaxPartitionRedraws; ++attempt) {
    parts = DealOnce(by_class, num_clients, alpha, rng);
    const bool all_big_enough = std::all_of(parts.begin(), parts.end(), [&](const auto& p) {
      return p.size() >= min_per_client;
    });
    if (all_big_enough || !feasible) break;
  }
  if (feasible) {
    // Redraws failed (extreme alpha): move indices from the largest client to the smallest
    // until every client has its minimum. Deterministic: ties go to the lowest client id.
    for (;;) {
      auto smallest = std::min_element(parts.begin(), parts.end(),
                                       [](const auto& a, const auto& b) { return a.size() < b.size(); });
      if (smallest->size() >= min_per_client) break;
      auto largest = std::max_element(parts.begin(), parts.end(),
                                      [](const auto& a, const auto& b) { return a.size() < b.size(); });
      smallest->push_back(largest->back());
      largest->pop_back();
    }
  }
  for (auto& part : parts) std::sort(part.begin(), part.end());
  return parts;
}

Result<std::vector<std::vector<size_t>>> PathologicalPartition(const Dataset& train,
                                                               const std::vector<size_t>& indices,
                                                               int num_clients, int classes_per_client,
                                                               uint64_t seed) {
  if (num_clients <= 0 || classes_per_client <= 0) {
    return InvalidArgument("pathological split needs positive client and classes-per-client counts");
  }
  const size_t shards = static_cast<size_t>(num_clients) * static_cast<size_t>(classes_per_client);
  if (indices.size() < shards) {
    return InvalidArgument(fmt::format("{} examples cannot fill {} shards", indices.size(), shards));
  }
  std::vector<size_t> sorted;
  sorted.reserve(indices.size());
  for (size_t index : indices) {
    if (index >= train.size()) {
      return InvalidArgument(fmt::format("index {} is out of range for a dataset of {}", index, train.size()));
    }
    sorted.push_back(index);
  }
  std::stable_sort(sorted.begin(), sorted.end(),
                   [&](size_t a, size_t b) { return train.labels[a] < train.labels[b]; });
  std::vector<size_t> order(shards);
  for (size_t i = 0; i < shards; ++i) order[i] = i;
  std::mt19937_64 rng(seed);
  for (size_t i = shards; i > 1; --i) {
    const uint64_t limit = UINT64_MAX - UINT64_MAX % i;
    uint64_t x = rng();
    while (x >= limit) x = rng();
    std::swap(order[i - 1], order[x % i]);
  }
  std::vector<std::vector<size_t>> parts(static_cast<size_t>(num_clients));
  for (size_t j = 0; j < shards; ++j) {
    const size_t shard = order[j];
    const size_t begin = shard * sorted.size() / shards;
    const size_t end = (shard + 1) * sorted.size() / shards;
    auto& part = parts[j / static_cast<size_t>(classes_per_client)];
    part.insert(part.end(), sorted.begin() + static_cast<ptrdiff_t>(begin), sorted.begin() + static_cast<ptrdiff_t>(end));
  }
  for (auto& part : parts) std::sort(part.begin(), part.end());
  return parts;
}

std::vector<size_t> ClassHistogram(const Dataset& data, const std::vector<size_t>& indices) {
  std::vector<size_t> histogram(static_cast<size_t>(std::max(data.num_classes, 0)), 0);
  for (size_t index : indices) {
    if (index < data.size() && data.labels[index] < histogram.size()) ++histogram[data.labels[index]];
  }
  return histogram;
}

uint64_t UniformBelow(std::mt19937_64& rng, uint64_t n) {
  const uint64_t limit = std::numeric_limits<uint64_t>::max() - std::numeric_limits<uint64_t>::max() % n;
  uint64_t x = rng();
  while (x >= limit) x = rng();
  return x % n;
}

void SeededShuffle(std::vector<size_t>& v, std::mt19937_64& rng) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[UniformBelow(rng, i)]);
}

}  // namespace fedlora::worker
