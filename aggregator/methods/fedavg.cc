// FedAvg-LoRA (a.k.a. FedIT), the baseline: clients train A and B and upload both; the server
// averages each factor separately. Inexact (the mean of products is not the product of means),
// and the reference every other method is compared against.
#include "aggregator/methods/method.h"

namespace fedlora::methods {
namespace {

class FedAvg final : public Method {
 public:
  std::string_view name() const override { return "fedavg"; }
  std::string_view summary() const override { return "FedAvg-LoRA: train A and B, average each factor"; }
  Result<std::unique_ptr<ServerHalf>> Server(const MethodParams&, const AdapterSpec& spec, const LoraLayout& layout,
                                             const EngineSetup&, uint64_t, MethodMemory) const override {
    return std::unique_ptr<ServerHalf>(std::make_unique<PlainServer>(name(), spec, layout));
  }
};

}  // namespace

const Method& FedAvgMethod() {
  static const FedAvg method;
  return method;
}

}  // namespace fedlora::methods
