// Full fine-tuning, the reference for communication: the adapter is every parameter of the
// network (no LoRA), trained and uploaded dense, averaged element-wise.
#include "aggregator/methods/method.h"

namespace fedlora::methods {
namespace {

class Full final : public Method {
 public:
  std::string_view name() const override { return "full"; }
  std::string_view summary() const override { return "full fine-tuning of every parameter (reference)"; }
  bool full_model() const override { return true; }
  Result<std::unique_ptr<ServerHalf>> Server(const MethodParams&, const AdapterSpec& spec, const LoraLayout& layout,
                                             const EngineSetup&, uint64_t, MethodMemory) const override {
    return std::unique_ptr<ServerHalf>(std::make_unique<PlainServer>(name(), spec, layout));
  }
};

}  // namespace

const Method& FullMethod() {
  static const Full method;
  return method;
}

}  // namespace fedlora::methods
