#include "aggregator/methods/flasc.h"

#include <algorithm>
#include <cmath>

namespace fedlora::methods {

void FlascParams::Visit(ParamVisitor& v) {
  v.Float("download-density", download_density, "flasc: fraction of the global LoRA downloaded");
  v.Float("upload-density", upload_density, "flasc: fraction of the delta uploaded (top-k by magnitude)");
  v.Float("density-decay", density_decay, "flasc: densities x decay every --decay-every versions");
  v.Uint("decay-every", decay_every, "flasc: versions between density decays (0: never)");
}

namespace {

bool Fraction(float x) { return std::isfinite(x) && x > 0 && x <= 1; }

}  // namespace

Status FlascParams::Validate() const {
  if (!Fraction(download_density)) return InvalidArgument("download density must be in (0, 1]");
  if (!Fraction(upload_density)) return InvalidArgument("upload density must be in (0, 1]");
  if (!Fraction(density_decay)) return InvalidArgument("density decay must be in (0, 1]");
  return Status::Ok();
}

std::vector<codec::EncodedTensor> TopKSparse(const AdapterState& delta, double density) {
  size_t total = 0;
  for (const auto& t : delta.tensors) total += t.values.size();
  std::vector<codec::EncodedTensor> out;
  if (total == 0) return out;
  const size_t k = std::max<size_t>(1, static_cast<size_t>(std::floor(density * static_cast<double>(total))));
  // (tensor, index) of every element, ordered by descending magnitude, ties by position.
  std::vector<std::pair<uint32_t, uint32_t>> pos;
  pos.reserve(total);
  for (uint32_t t = 0; t < delta.tensors.size(); ++t) {
    for (uint32_t i = 0; i < delta.tensors[t].values.size(); ++i) pos.emplace_back(t, i);
  }
  auto mag = [&](const std::pair<uint32_t, uint32_t>& p) { return std::abs(delta.tensors[p.first].values[p.second]); };
  std::nth_element(pos.begin(), pos.begin() + static_cast<ptrdiff_t>(k - 1), pos.end(), [&](const auto& x, const auto& y) {
    const float mx = mag(x), my = mag(y);
    return mx != my ? mx > my : x < y;
  });
  pos.resize(k);
  std::sort(pos.begin(), pos.end());
  for (size_t j = 0; j < pos.size();) {
    const uint32_t t = pos[j].first;
    codec::EncodedTensor e{delta.tensors[t].name, delta.tensors[t].shape, wire::Encoding::Sparse, {}, {}};
    for (; j < pos.size() && pos[j].first == t; ++j) {
      e.indices.push_back(pos[j].second);
      e.values.push_back(delta.tensors[t].values[pos[j].second]);
    }
    out.push_back(std::move(e));
  }
  return out;
}

namespace {

// The download: keep the `density` fraction of largest |value| over the LoRA factors
// together; the rest become zero.
void MaskDownload(AdapterState& state, const AdapterSpec& spec, double density) {
  if (density >= 1.0) return;
  std::vector<float> mags;
  for (size_t t = 0; t < spec.tensors.size(); ++t) {
    if (spec.tensors[t].role == TensorRole::kDense) continue;
    for (float v : state.tensors[t].values) mags.push_back(std::abs(v));
  }
  if (mags.empty()) return;
  const size_t keep = std::max<size_t>(1, static_cast<size_t>(std::floor(density * static_cast<double>(mags.size()))));
  std::nth_element(mags.begin(), mags.begin() + static_cast<ptrdiff_t>(keep - 1), mags.end(), std::greater<float>());
  const float threshold = mags[keep - 1];
  size_t kept = 0;
  for (size_t t = 0; t < spec.tensors.size(); ++t) {
    if (spec.tensors[t].role == TensorRole::kDense) continue;
    for (float& v : state.tensors[t].values) {
      // Ties at the threshold are kept in order until the budget is spent.
      if (std::abs(v) > threshold || (std::abs(v) == threshold && kept < keep)) {
        ++kept;
      } else {
        v = 0.0f;
      }
    }
  }
}

class FlascServer final : public PlainServer {
 public:
  FlascServer(std::string_view name, const AdapterSpec& spec, const LoraLayout& layout, FlascParams params)
      : PlainServer(name, spec, layout), params_(params) {}
  MethodState StateAt(uint64_t version) const override {
    MethodState s = PlainServer::StateAt(version);
    double factor = 1.0;
    if (params_.decay_every > 0) {
      factor = std::pow(static_cast<double>(params_.density_decay), static_cast<double>(version / params_.decay_every));
    }
    s.download_density = static_cast<float>(params_.download_density * factor);
    s.upload_density = static_cast<float>(params_.upload_density * factor);
    s.density_scale = static_cast<float>(factor);
    return s;
  }

 private:
  FlascParams params_;
};

class FlascClient final : public ClientHalf {
 public:
  Result<TrainPlan> Plan(ClientRound& round) const override {
    ASSIGN_OR_RETURN(TrainPlan plan, ClientHalf::Plan(round));
    MaskDownload(plan.start, round.spec, round.state.download_density);
    return plan;
  }
  std::vector<codec::EncodedTensor> Upload(ClientRound& round, const TrainPlan&,
                                           const AdapterState& delta) const override {
    // A client's own density is its d_0: it decays on the global's schedule.
    const double density = round.client.upload_density > 0
                               ? static_cast<double>(round.client.upload_density) * round.state.density_scale
                               : round.state.upload_density;
    return TopKSparse(delta, std::min(1.0, density));
  }
};

}  // namespace

const Method& FlascMethod() {
  static const BasicMethod<FlascParams, FlascServer, FlascClient> method(
      "flasc", "FLASC: dense local training, top-k sparse upload");
  return method;
}

}  // namespace fedlora::methods
