// FedSA-LoRA (share A only): clients train A and B; only A goes up and is averaged, B stays on
// the client as its personal part (every client evaluates the global with its own B).
#include "aggregator/methods/method.h"

namespace fedlora::methods {
namespace {

class FedSaServer final : public PlainServer {
 public:
  using PlainServer::PlainServer;
  bool Moves(size_t t, uint64_t) const override { return spec_.tensors[t].role != TensorRole::kLoraB; }
  Status Check(const wire::Update& u) const override {
    if (Carries(u, TensorRole::kLoraB)) return InvalidArgument("fedsa shares lora_A only; the update carries a B factor");
    return Status::Ok();
  }
};

class FedSaClient final : public ClientHalf {
 public:
  Result<TrainPlan> Plan(ClientRound& round) const override {
    ASSIGN_OR_RETURN(TrainPlan plan, ClientHalf::Plan(round));
    for (const LoraModule& m : round.layout.modules()) {
      const auto it = round.personal->tensors.find(round.spec.tensors[m.b].name);
      if (it != round.personal->tensors.end()) plan.start.tensors[m.b].values = it->second;
      plan.uploads[m.b] = false;  // trains, stays here
    }
    return plan;
  }
  std::vector<codec::EncodedTensor> Upload(ClientRound& round, const TrainPlan& plan,
                                           const AdapterState& delta) const override {
    for (const LoraModule& m : round.layout.modules()) {
      std::vector<float> end = plan.start.tensors[m.b].values;
      const auto& d = delta.tensors[m.b].values;
      for (size_t i = 0; i < end.size(); ++i) end[i] += d[i];
      round.personal->tensors[round.spec.tensors[m.b].name] = std::move(end);
    }
    return ClientHalf::Upload(round, plan, delta);
  }
};

class FedSa final : public BasicMethod<NoParams, FedSaServer, FedSaClient> {
 public:
  using BasicMethod::BasicMethod;
  bool personal() const override { return true; }
};

}  // namespace

const Method& FedSaMethod() {
  static const FedSa method("fedsa", "FedSA-LoRA: share A only, B stays personal");
  return method;
}

}  // namespace fedlora::methods
