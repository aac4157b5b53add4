#include "aggregator/methods/method.h"

#include <fmt/format.h>

#include <charconv>
#include <numeric>

#include "aggregator/methods/registry.h"

namespace fedlora::methods {
namespace {

template <typename T>
Status ParseNumber(std::string_view flag, std::string_view text, T& out) {
  T value{};
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) {
    return InvalidArgument(fmt::format("--{}: '{}' is not a number of the right kind", flag, text));
  }
  out = value;
  return Status::Ok();
}

class Setter final : public ParamVisitor {
 public:
  explicit Setter(const std::map<std::string, std::string, std::less<>>& values) : values_(values) {}
  void Float(std::string_view flag, float& v, std::string_view) override { Set(flag, v); }
  void Double(std::string_view flag, double& v, std::string_view) override { Set(flag, v); }
  void Uint(std::string_view flag, uint32_t& v, std::string_view) override { Set(flag, v); }
  void Choice(std::string_view flag, std::string& v, std::vector<std::string> choices, std::string_view) override {
    const auto it = values_.find(flag);
    if (it == values_.end() || !status_.ok()) return;
    if (std::find(choices.begin(), choices.end(), it->second) == choices.end()) {
      status_ = InvalidArgument(fmt::format("--{}: '{}' is not one of {}", flag, it->second, fmt::join(choices, ", ")));
      return;
    }
    v = it->second;
  }
  Status status() const { return status_; }

 private:
  template <typename T>
  void Set(std::string_view flag, T& v) {
    const auto it = values_.find(flag);
    if (it == values_.end() || !status_.ok()) return;
    status_ = ParseNumber(flag, it->second, v);
  }
  const std::map<std::string, std::string, std::less<>>& values_;
  Status status_ = Status::Ok();
};

// fmt prints floating-point numbers as the shortest text that reads back to the same value.
class Printer final : public ParamVisitor {
 public:
  void Float(std::string_view flag, float& v, std::string_view) override { Add(flag, v); }
  void Double(std::string_view flag, double& v, std::string_view) override { Add(flag, v); }
  void Uint(std::string_view flag, uint32_t& v, std::string_view) override { Add(flag, v); }
  void Choice(std::string_view flag, std::string& v, std::vector<std::string>, std::string_view) override { Add(flag, v); }
  std::string Take() { return std::move(text_); }

 private:
  template <typename T>
  void Add(std::string_view flag, const T& v) {
    if (!text_.empty()) text_ += ' ';
    text_ += fmt::format("--{} {}", flag, v);
  }
  std::string text_;
};

}  // namespace

Status SetParams(MethodParams& params, const std::map<std::string, std::string, std::less<>>& values) {
  Setter setter(values);
  params.Visit(setter);
  return setter.status();
}

std::string ParamFlags(const MethodParams& params) {
  std::unique_ptr<MethodParams> copy = params.Clone();
  Printer printer;
  copy->Visit(printer);
  return printer.Take();
}

Result<TrainPlan> ClientHalf::Plan(ClientRound& round) const {
  TrainPlan plan;
  plan.start = round.global;
  const size_t n = round.spec.tensors.size();
  plan.trains.assign(n, true);
  plan.uploads.assign(n, true);
  for (size_t t = 0; t < n; ++t) {  // a residual is the aggregator's alone
    if (round.spec.tensors[t].role == TensorRole::kLoraResidual) plan.trains[t] = plan.uploads[t] = false;
  }
  plan.ranks.resize(round.layout.modules().size());
  for (auto& r : plan.ranks) {
    r.resize(round.rank);
    std::iota(r.begin(), r.end(), 0u);
  }
  return plan;
}

namespace {

codec::EncodedTensor DenseOf(const DenseTensor& d) { return {d.name, d.shape, wire::Encoding::Dense, {}, d.values}; }

// The rank slices of a LoRA factor delta (A: rows; B: columns as a d x |ranks| matrix).
codec::EncodedTensor RankSliceOf(const DenseTensor& d, TensorRole role, const std::vector<uint32_t>& ranks) {
  codec::EncodedTensor e{d.name, d.shape, wire::Encoding::RankSlice, ranks, {}};
  if (role == TensorRole::kLoraA) {
    const size_t k = d.shape[1];
    for (uint32_t i : ranks) {
      e.values.insert(e.values.end(), d.values.begin() + static_cast<ptrdiff_t>(i * k),
                      d.values.begin() + static_cast<ptrdiff_t>((i + 1) * k));
    }
  } else {
    const size_t rows = d.shape[0];
    const size_t r = d.shape[1];
    for (size_t row = 0; row < rows; ++row) {
      for (uint32_t i : ranks) e.values.push_back(d.values[row * r + i]);
    }
  }
  return e;
}

}  // namespace

std::vector<codec::EncodedTensor> ClientHalf::Upload(ClientRound& round, const TrainPlan& plan,
                                                     const AdapterState& delta) const {
  std::vector<codec::EncodedTensor> out;
  const uint32_t rank = round.spec.rank;
  for (size_t t = 0; t < round.spec.tensors.size(); ++t) {
    if (!plan.uploads[t]) continue;
    const int m = round.layout.module_of(t);
    if (m < 0 || plan.ranks[static_cast<size_t>(m)].size() == rank) {
      out.push_back(DenseOf(delta.tensors[t]));
    } else if (!plan.ranks[static_cast<size_t>(m)].empty()) {
      out.push_back(RankSliceOf(delta.tensors[t], round.spec.tensors[t].role, plan.ranks[static_cast<size_t>(m)]));
    }
  }
  return out;
}

Status NoClientDp(std::string_view method) {
  return InvalidArgument(fmt::format("client-level DP is not supported with '{}': its aggregation weights or "
                                     "product-space step have no fixed per-client sensitivity",
                                     method));
}

MethodChoice::MethodChoice() : MethodChoice(*Named("fedavg")) {}

Result<MethodChoice> MethodChoice::Named(std::string_view name) {
  ASSIGN_OR_RETURN(const Method* method, FindMethod(name));
  return MethodChoice(method, method->DefaultParams());
}

MethodChoice::MethodChoice(const MethodChoice& other)
    : method_(other.method_), params_(other.params_->Clone()) {}

MethodChoice& MethodChoice::operator=(const MethodChoice& other) {
  if (this != &other) {
    method_ = other.method_;
    params_ = other.params_->Clone();
  }
  return *this;
}

}  // namespace fedlora::methods
