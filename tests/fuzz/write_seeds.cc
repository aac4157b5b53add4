// Writes the seed corpus (valid messages of every body type and encoding) into a directory:
// `fuzz_seeds DIR`.
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "tests/fuzz/wire_target.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  std::filesystem::create_directories(argv[1]);
  for (const auto& [name, bytes] : fedlora::fuzz::SeedMessages()) {
    std::ofstream out(std::filesystem::path(argv[1]) / (name + ".flr"), std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    if (!out) {
      std::fprintf(stderr, "cannot write %s\n", name.c_str());
      return 1;
    }
  }
  return 0;
}
