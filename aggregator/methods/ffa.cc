// FFA-LoRA (Sun, Li, Li, Ding, ICLR 2024): A stays at its seeded initialisation on every client
// (identical everywhere: the spec carries the seed), only B (and the dense tensors) train and
// go up, and the server's weighted mean of B is exact, also under DP (no cross terms).
#include "aggregator/methods/method.h"

namespace fedlora::methods {
namespace {

class FfaServer final : public PlainServer {
 public:
  using PlainServer::PlainServer;
  bool Moves(size_t t, uint64_t) const override { return spec_.tensors[t].role != TensorRole::kLoraA; }
  Status Check(const wire::Update& u) const override {
    if (Carries(u, TensorRole::kLoraA)) return InvalidArgument("ffa keeps lora_A frozen; the update carries an A factor");
    return Status::Ok();
  }
};

class FfaClient final : public ClientHalf {
 public:
  Result<TrainPlan> Plan(ClientRound& round) const override {
    ASSIGN_OR_RETURN(TrainPlan plan, ClientHalf::Plan(round));
    for (const LoraModule& m : round.layout.modules()) plan.trains[m.a] = plan.uploads[m.a] = false;
    return plan;
  }
};

}  // namespace

const Method& FfaMethod() {
  static const BasicMethod<NoParams, FfaServer, FfaClient> method("ffa", "FFA-LoRA: A frozen, train and upload B only");
  return method;
}

}  // namespace fedlora::methods
