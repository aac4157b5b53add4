// The fuzz target shared by the libFuzzer binary (ops/fuzz, clang) and the always-on
// regression test (fuzz_test, the normal build): everything that reads untrusted bytes.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "schema/codec.h"
#include "schema/status.h"

namespace fedlora::fuzz {

// Runs one input through envelope verification; for an Update, validation against a small
// LoRA adapter's spec and, when accepted, the aggregation engine (fedavg, FedBuff K=1); for a
// GlobalAdapter, decoding; for every other body, its fields; and the same bytes as a stored
// VersionRecord. Returns non-OK only when an invariant breaks:
//  - a refusal (of the verifier or the validator) without a reason;
//  - an update the validator accepted that the engine fails on, or drops without a reason;
//  - an accepted update carrying an index, rank or value count the spec does not allow
//    (checked here independently of the validator);
//  - a decoded global whose tensors do not match its spec.
Status CheckInput(std::span<const std::byte> bytes);

// Valid messages of every body type and tensor encoding: the seed corpus.
std::vector<std::pair<std::string, codec::Bytes>> SeedMessages();

}  // namespace fedlora::fuzz
