// FedAvg-LoRA (a.k.a. FedIT), the baseline: clients train A and B and upload both; the server
// averages each factor separately. Inexact (the mean of products is not the product of means),
// and the reference every other method is compared against.
#include "aggregator/methods/method.h"

namespace fedlora::methods {

const Method& FedAvgMethod() {
  static const BasicMethod<NoParams, PlainServer> method("fedavg", "FedAvg-LoRA: train A and B, average each factor");
  return method;
}

}  // namespace fedlora::methods
