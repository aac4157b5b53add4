// Exact product-space aggregation for heterogeneous ranks (FLoRA stacking with FlexLoRA-style
// re-factorisation, docs/methods.md section 6). Every update contributes, per module, its
// change in product space, B'_k A'_k - B_k A_k (its trained factors minus its base version's
// over the same ranks); the contributions are summed exactly (FLoRA: sum_k w_k B_k A_k whatever
// each rank) with the global product P = B A + R, and P is re-factorised by a truncated SVD
// (FlexLoRA): B A becomes its best rank-r part (A keeps orthogonal rows of the initialisation's
// norm) and, with --flora-merge exact (the default), the residual R = P - B A keeps the rest, so
// nothing any client contributed is ever lost (FLoRA merges the stacked product into the base
// weights; R is that merge, kept in the adapter). --flora-merge truncate drops the remainder at
// each commit, as versions before the residual did. FedAsync mixes in product space:
// P <- (1 - a) P + a (P_base + B'A' - BA). Dense tensors fold as usual.
// Needs sgd on the server and no client-level DP.
#include <fmt/format.h>

#include <cmath>
#include <numeric>

#include "aggregator/methods/method.h"

#include "aggregator/methods/pair_change.h"

namespace fedlora::methods {
namespace {

class FloraParams final : public MethodParams {
 public:
  std::unique_ptr<MethodParams> Clone() const override { return std::make_unique<FloraParams>(*this); }
  void Visit(ParamVisitor& v) override {
    v.Choice("flora-merge", merge, {"exact", "truncate"},
             "flora: keep each module's remainder beyond rank r as a dense residual the global carries "
             "(exact, FLoRA's rule; the download grows by a d x k matrix per module), or drop it at each "
             "commit (truncate: rank-r downloads, the product sum is no longer exact)");
  }
  bool exact() const { return merge == "exact"; }

  std::string merge = "exact";
};

class FloraServer final : public PlainServer {
 public:
  FloraServer(std::string_view name, const AdapterSpec& spec, const LoraLayout& layout, const FloraParams&)
      : PlainServer(name, spec, layout) {}

  bool NeedsBase() const override { return true; }
  bool FoldsOwnTensors() const override { return true; }
  bool FoldsElementwise(size_t t) const override { return layout_.module_of(t) < 0; }

  Status Check(const wire::Update& u) const override {
    for (const CarriedPair& p : CarriedPairs(u, layout_)) {
      const std::string& name = layout_.modules()[p.module].name;
      if (!p.a || !p.b) return InvalidArgument(fmt::format("flora needs both factors of module '{}'", name));
      if (CarriedRanks(*p.a, spec_.rank) != CarriedRanks(*p.b, spec_.rank)) {
        return InvalidArgument(fmt::format("flora: the factors of module '{}' carry different ranks", name));
      }
    }
    return Status::Ok();
  }

  void Buffer(const wire::Update& u, const AdapterState& base, double weight,
              std::vector<std::vector<float>>&) override {
    if (buffered_ == slots_.size()) slots_.emplace_back();
    Slot& slot = slots_[buffered_++];
    slot.weight = weight;
    PairChangesInto(u, base, spec_, layout_, slot.changes, position_);
  }

  void Step(AdapterState& state, const StepSums& sums) override {
    if (sums.scale > 0) {
      // Per module, each buffered update's end and start, in the order they arrived.
      std::vector<std::vector<std::pair<double, const lowrank::Factors*>>> terms(layout_.modules().size());
      for (size_t s = 0; s < buffered_; ++s) {
        for (const PairChange& c : slots_[s].changes) {
          terms[c.module].emplace_back(sums.scale * slots_[s].weight, &c.end);
          terms[c.module].emplace_back(-sums.scale * slots_[s].weight, &c.start);
        }
      }
      for (size_t m = 0; m < terms.size(); ++m) {
        if (!terms[m].empty()) Refactor(state, m, 1.0, terms[m]);
      }
    }
    buffered_ = 0;  // the slots keep their memory for the next step's updates
  }

  void Mix(AdapterState& state, const AdapterState& base, const wire::Update& u, double alpha) override {
    for (const PairChange& c : PairChanges(u, base, spec_, layout_)) {
      const LoraModule& mod = layout_.modules()[c.module];
      const lowrank::Factors base_full = Slice(base, mod, spec_.rank, AllRanks());
      std::vector<std::pair<double, const lowrank::Factors*>> terms = {
          {alpha, &base_full}, {alpha, &c.end}, {-alpha, &c.start}};
      lowrank::Factors base_residual;
      if (mod.residual >= 0) {
        base_residual = lowrank::FromDense(base.tensors[static_cast<size_t>(mod.residual)].values, mod.rows, mod.cols);
        terms.emplace_back(alpha, &base_residual);
      }
      Refactor(state, c.module, 1.0 - alpha, terms);
    }
  }

 private:
  std::vector<uint32_t> AllRanks() const {
    std::vector<uint32_t> all(spec_.rank);
    std::iota(all.begin(), all.end(), 0u);
    return all;
  }

  // The RMS row norm of module m's current A factor, which re-factorisation keeps.
  double ARowNorm(const AdapterState& state, const LoraModule& m) const {
    double sq = 0;
    for (float v : state.tensors[m.a].values) sq += static_cast<double>(v) * v;
    const double n = std::sqrt(sq / static_cast<double>(spec_.rank));
    return n > 0 ? n : 1.0;
  }

  // Module m of `state` becomes the truncated SVD of keep * P + sum_i w_i B_i A_i, where P is
  // the module's product B A plus its residual R, if it keeps one; R then holds what the
  // rank-r factors leave out.
  void Refactor(AdapterState& state, size_t m, double keep,
                const std::vector<std::pair<double, const lowrank::Factors*>>& extra) const {
    const LoraModule& mod = layout_.modules()[m];
    const lowrank::Factors current = Slice(state, mod, spec_.rank, AllRanks());
    std::vector<std::pair<double, const lowrank::Factors*>> terms;
    terms.emplace_back(keep, &current);
    lowrank::Factors residual;
    if (mod.residual >= 0) {
      residual = lowrank::FromDense(state.tensors[static_cast<size_t>(mod.residual)].values, mod.rows, mod.cols);
      terms.emplace_back(keep, &residual);
    }
    terms.insert(terms.end(), extra.begin(), extra.end());
    const lowrank::Factors stacked = lowrank::Stack(terms);
    const lowrank::Factors next = lowrank::Refactor(stacked, spec_.rank, ARowNorm(state, mod));
    auto& a = state.tensors[mod.a].values;
    auto& b = state.tensors[mod.b].values;
    for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(next.a[i]);
    for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>(next.b[i]);
    if (mod.residual < 0) return;
    // R = P - B A with the factors as stored (rounded to float), so that B A + R is P up to R's
    // own rounding.
    lowrank::Factors rounded = next;
    for (size_t i = 0; i < a.size(); ++i) rounded.a[i] = a[i];
    for (size_t i = 0; i < b.size(); ++i) rounded.b[i] = b[i];
    const std::vector<double> exact = lowrank::Product(stacked);
    const std::vector<double> kept = lowrank::Product(rounded);
    auto& r = state.tensors[static_cast<size_t>(mod.residual)].values;
    for (size_t i = 0; i < r.size(); ++i) r[i] = static_cast<float>(exact[i] - kept[i]);
  }

  // The step's updates, kept whole until it stacks them (FLoRA's product space cannot be summed
  // as they arrive): each update's factors per module, in double precision, in slots that keep
  // their memory from one step to the next (so the process holds a step's worth between steps).
  struct Slot {
    double weight = 0;
    std::vector<PairChange> changes;
  };
  std::vector<Slot> slots_;
  size_t buffered_ = 0;
  std::vector<int> position_;
};

class Flora final : public BasicMethod<FloraParams, FloraServer> {
 public:
  using BasicMethod::BasicMethod;
  bool KeepsResiduals(const MethodParams& params) const override {
    return dynamic_cast<const FloraParams&>(params).exact();
  }
  Status Supports(const EngineSetup& setup, const MethodParams&) const override {
    if (setup.client_dp) return NoClientDp(name());
    if (setup.stateful_optimizer) {
      return InvalidArgument("flora re-factorises in product space; it has no per-element server step (use sgd)");
    }
    return Status::Ok();
  }
};

}  // namespace

const Method& FloraMethod() {
  static const Flora method("flora", "FLoRA/FlexLoRA: exact product sum, truncated-SVD refactor");
  return method;
}

}  // namespace fedlora::methods
