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

class Ffa final : public Method {
 public:
  std::string_view name() const override { return "ffa"; }
  std::string_view summary() const override { return "FFA-LoRA: A frozen, train and upload B only"; }
  Result<std::unique_ptr<ServerHalf>> Server(const MethodParams&, const AdapterSpec& spec, const LoraLayout& layout,
                                             const EngineSetup&, uint64_t, MethodMemory) const override {
    return std::unique_ptr<ServerHalf>(std::make_unique<FfaServer>(name(), spec, layout));
  }
  std::unique_ptr<ClientHalf> Client() const override { return std::make_unique<FfaClient>(); }
};

}  // namespace

const Method& FfaMethod() {
  static const Ffa method;
  return method;
}

}  // namespace fedlora::methods
