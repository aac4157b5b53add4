// FLASC (Kuo, Raje, Rajesh, Smith, 2024): the client downloads the global LoRA masked to its
// largest `download_density` fraction, fine-tunes the whole LoRA densely, and uploads the top
// `upload_density` fraction of its delta by magnitude over every tensor together (no error
// feedback). The server sums the sparse deltas (weighted like every method) and steps with
// its optimizer. Densities follow d_t = d_0 * decay^floor(t / decay_every), a client's own
// upload density (ClientSettings::upload_density, its d_0) included.
#pragma once

#include "aggregator/methods/method.h"

namespace fedlora::methods {

struct FlascParams final : MethodParams {
  float download_density = 1.0f;
  float upload_density = 0.1f;
  float density_decay = 1.0f;
  uint32_t decay_every = 0;  // 0: densities never decay

  std::unique_ptr<MethodParams> Clone() const override { return std::make_unique<FlascParams>(*this); }
  void Visit(ParamVisitor& v) override;
  Status Validate() const override;
};

// The k entries of largest magnitude over every tensor together (ties: lower tensor, then lower
// index first), as sparse tensors in spec order; tensors without a kept entry are left out.
// k = floor(density * total elements), at least 1.
std::vector<codec::EncodedTensor> TopKSparse(const AdapterState& delta, double density);

}  // namespace fedlora::methods
