// libFuzzer entry (built by ops/fuzz with clang -fsanitize=fuzzer,address,undefined): a broken
// invariant aborts, which libFuzzer reports as a crash and saves the input.
#include <cstdio>
#include <cstdlib>

#include "tests/fuzz/wire_target.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const fedlora::Status s = fedlora::fuzz::CheckInput({reinterpret_cast<const std::byte*>(data), size});
  if (!s.ok()) {
    std::fprintf(stderr, "invariant broken: %s\n", s.ToString().c_str());
    std::abort();
  }
  return 0;
}
