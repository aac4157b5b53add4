// Full fine-tuning, the reference for communication: the adapter is every parameter of the
// network (no LoRA), trained and uploaded dense, averaged element-wise.
#include "aggregator/methods/method.h"

namespace fedlora::methods {
namespace {

class Full final : public BasicMethod<NoParams, PlainServer> {
 public:
  using BasicMethod::BasicMethod;
  bool full_model() const override { return true; }
};

}  // namespace

const Method& FullMethod() {
  static const Full method("full", "full fine-tuning of every parameter (reference)");
  return method;
}

}  // namespace fedlora::methods
