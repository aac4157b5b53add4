// A small file system to fill, for the tests of what a full disk does (issue 21).
#pragma once

#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

namespace fedlora::testing {

// A tmpfs of `size` ("128m") mounted at `dir` while this lives. Mounting needs root (CI runs
// as root); mounted() says whether it worked and why_not() why not.
class Tmpfs {
 public:
  Tmpfs(const std::string& dir, const std::string& size) : dir_(dir) {
    std::filesystem::create_directories(dir_);
    mounted_ = ::mount("tmpfs", dir_.c_str(), "tmpfs", 0, ("size=" + size).c_str()) == 0;
    if (!mounted_) why_not_ = std::strerror(errno);
  }
  ~Tmpfs() {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
  }
  Tmpfs(const Tmpfs&) = delete;
  Tmpfs& operator=(const Tmpfs&) = delete;
  bool mounted() const { return mounted_; }
  const std::string& why_not() const { return why_not_; }

 private:
  std::string dir_;
  bool mounted_ = false;
  std::string why_not_;
};

inline uint64_t FreeBytes(const std::string& dir) {
  struct statvfs fs {};
  if (statvfs(dir.c_str(), &fs) != 0) return 0;
  return static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
}

// Writes `file` so that about `keep` bytes stay free on its file system (none written if fewer
// are free already); returns whether that worked.
inline bool FillLeaving(const std::string& file, uint64_t keep) {
  const uint64_t free_bytes = FreeBytes(std::filesystem::path(file).parent_path().string());
  std::ofstream out(file, std::ios::binary);
  const std::string chunk(1u << 16, 'f');
  for (uint64_t left = free_bytes > keep ? free_bytes - keep : 0; left > 0;) {
    const uint64_t k = std::min<uint64_t>(left, chunk.size());
    out.write(chunk.data(), static_cast<std::streamsize>(k));
    left -= k;
  }
  return out.good();
}

}  // namespace fedlora::testing
