#include "aggregator/methods/hetlora.h"

#include <fmt/format.h>

#include "aggregator/methods/pair_change.h"

namespace fedlora::methods {

void HetLoraParams::Visit(ParamVisitor& v) {
  v.Choice("hetlora-rule", rule, {"paper", "deltas"},
           "hetlora: paper = zero-padded factors averaged with weights ||B_k A_k||_F / Z; deltas = an unsent "
           "rank keeps the global value, weights n_k ||B_k A_k||_F");
}

namespace {

class HetLoraServer final : public PlainServer {
 public:
  HetLoraServer(std::string_view name, const AdapterSpec& spec, const LoraLayout& layout, HetLoraParams params)
      : PlainServer(name, spec, layout), paper_(params.rule == "paper") {}

  bool NeedsBase() const override { return true; }

  double Weight(const wire::Update& u, const AdapterState& base, double data_weight) const override {
    const std::vector<PairChange> changes = PairChanges(u, base, spec_, layout_);
    std::vector<int> slot(layout_.modules().size(), -1);
    for (size_t i = 0; i < changes.size(); ++i) slot[changes[i].module] = static_cast<int>(i);
    double norm = 0;
    for (size_t m : layout_.by_name()) {  // the order the sum has always been taken in
      if (slot[m] >= 0) norm += ProductNorm(changes[static_cast<size_t>(slot[m])].end);
    }
    return paper_ ? norm : data_weight * norm;
  }

  // Zero padding: a rank the update does not carry counts as the client's zero, i.e. a change of
  // minus the base value, in both factors of every module it carries.
  void Buffer(const wire::Update& u, const AdapterState& base, double weight,
              std::vector<std::vector<float>>& acc) override {
    if (!paper_) return;
    const float w = static_cast<float>(weight);
    const uint32_t r = spec_.rank;
    for (const CarriedPair& p : CarriedPairs(u, layout_)) {
      const LoraModule& m = layout_.modules()[p.module];
      std::vector<bool> sent(r, false);
      for (uint32_t i : CarriedRanks(p.a ? *p.a : *p.b, r)) sent[i] = true;
      const auto& a = base.tensors[m.a].values;
      const auto& b = base.tensors[m.b].values;
      auto& acc_a = acc[m.a];
      auto& acc_b = acc[m.b];
      for (uint32_t i = 0; i < r; ++i) {
        if (sent[i]) continue;
        for (uint32_t c = 0; c < m.cols; ++c) acc_a[static_cast<size_t>(i) * m.cols + c] -= w * a[static_cast<size_t>(i) * m.cols + c];
        for (uint32_t row = 0; row < m.rows; ++row) acc_b[static_cast<size_t>(row) * r + i] -= w * b[static_cast<size_t>(row) * r + i];
      }
    }
  }

 private:
  bool paper_;
};

class HetLora final : public Method {
 public:
  std::string_view name() const override { return "hetlora"; }
  std::string_view summary() const override { return "HetLoRA: per-client ranks, zero-padded norm-weighted mean"; }
  std::unique_ptr<MethodParams> DefaultParams() const override { return std::make_unique<HetLoraParams>(); }
  Status Supports(const EngineSetup& setup, const MethodParams&) const override {
    if (setup.client_dp) {
      return InvalidArgument(fmt::format("client-level DP is not supported with '{}': its aggregation weights or "
                                         "product-space step have no fixed per-client sensitivity",
                                         name()));
    }
    return Status::Ok();
  }
  Result<std::unique_ptr<ServerHalf>> Server(const MethodParams& params, const AdapterSpec& spec,
                                             const LoraLayout& layout, const EngineSetup&, uint64_t,
                                             MethodMemory) const override {
    return std::unique_ptr<ServerHalf>(
        std::make_unique<HetLoraServer>(name(), spec, layout, dynamic_cast<const HetLoraParams&>(params)));
  }
};

}  // namespace

const Method& HetLoraMethod() {
  static const HetLora method;
  return method;
}

}  // namespace fedlora::methods
