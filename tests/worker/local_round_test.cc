// The worker half of each method on the real (mlp) model: what trains, what stays frozen, and
// what is uploaded in which encoding.
#include "worker/local_round.h"

#include "aggregator/methods/flasc.h"
#include "aggregator/methods/rank_scores.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

namespace fedlora::worker {
namespace {

// Four classes, each lighting up its own band of rows, plus noise.
Dataset BandData(size_t n) {
  std::mt19937_64 rng(3);
  Dataset data;
  data.images.resize(n * kImagePixels);
  for (size_t i = 0; i < n; ++i) {
    const int label = static_cast<int>(i % 4);
    data.labels.push_back(static_cast<uint8_t>(label));
    for (int p = 0; p < kImagePixels; ++p) {
      const int row = p / kImageCols;
      const bool lit = row >= 4 + 5 * label && row < 8 + 5 * label;
      data.images[i * kImagePixels + static_cast<size_t>(p)] = static_cast<uint8_t>((lit ? 180 : 0) + rng() % 60);
    }
  }
  return data;
}

struct Fixture {
  std::unique_ptr<Model> model;
  AdapterState global;
  Dataset data = BandData(128);
  std::vector<size_t> shard;
  LocalTrainOptions train;

  explicit Fixture(bool full = false, bool residual = false) {
    ModelOptions mo;
    mo.arch = "mlp";
    mo.full = full;
    mo.lora_residual = residual;
    model = std::move(Model::Create(mo)).value();
    global = model->ExportAdapter();
    // A non-zero B, as any version after the first has.
    std::mt19937_64 rng(5);
    std::uniform_real_distribution<float> dist(-0.05f, 0.05f);
    for (size_t t = 0; t < global.tensors.size(); ++t) {
      const TensorRole role = model->Spec().tensors[t].role;
      if (role == TensorRole::kLoraB || role == TensorRole::kLoraResidual) {
        for (float& v : global.tensors[t].values) v = dist(rng);
      }
    }
    for (size_t i = 0; i < data.size(); ++i) shard.push_back(i);
    train.steps = 3;
    train.batch_size = 16;
    train.lr = 1e-2f;
  }

  LocalRound Run(const MethodState& m, ClientSettings client = {}, PersonalState* personal = nullptr) {
    PersonalState none;
    auto r = RunLocalRound(*model, model->Spec(), global, m, client, personal ? *personal : none, data, shard, train);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? std::move(*r) : LocalRound{};
  }

  TensorRole RoleOf(const std::string& name) const { return model->Spec().tensors[model->Spec().Find(name)].role; }
};

MethodState StateOf(std::string_view m) {
  MethodState s;
  s.method = std::string(m);
  return s;
}

TEST(WorkerMethodTest, FedAvgUploadsEveryTensorDense) {
  Fixture f;
  const LocalRound r = f.Run(StateOf("fedavg"));
  EXPECT_EQ(r.upload.size(), f.model->Spec().tensors.size());
  for (const auto& t : r.upload) EXPECT_EQ(t.encoding, wire::Encoding::Dense) << t.name;
  EXPECT_EQ(r.values_uploaded, f.model->Spec().numel());
}

TEST(WorkerMethodTest, FfaKeepsAFrozenAndUploadsOnlyBAndTheHead) {
  Fixture f;
  const LocalRound r = f.Run(StateOf("ffa"));
  for (const auto& t : r.upload) EXPECT_NE(f.RoleOf(t.name), TensorRole::kLoraA) << t.name;
  const AdapterState after = f.model->ExportAdapter();
  size_t b_changed = 0;
  for (size_t t = 0; t < after.tensors.size(); ++t) {
    const auto role = f.model->Spec().tensors[t].role;
    if (role == TensorRole::kLoraA) {
      EXPECT_EQ(after.tensors[t].values, f.global.tensors[t].values);
    }
    if (role == TensorRole::kLoraB && after.tensors[t].values != f.global.tensors[t].values) ++b_changed;
  }
  EXPECT_GT(b_changed, 0u);
}

TEST(WorkerMethodTest, FlascUploadsExactlyTheTopKOfTheDelta) {
  Fixture f;
  MethodState m = StateOf("flasc");
  m.upload_density = 0.1f;
  const LocalRound r = f.Run(m);
  EXPECT_EQ(r.values_uploaded, static_cast<uint64_t>(std::floor(0.1 * f.model->Spec().numel())));
  for (const auto& t : r.upload) EXPECT_EQ(t.encoding, wire::Encoding::Sparse);
  // A client override of the density wins.
  const LocalRound r2 = f.Run(m, ClientSettings{0, 0.05f, 0});
  EXPECT_EQ(r2.values_uploaded, static_cast<uint64_t>(std::floor(0.05 * f.model->Spec().numel())));
}

// A client's own density is its d_0 and decays on the global schedule: after one decay by 0.5,
// a client of 0.2 uploads 0.1 of the delta (not 0.2, and not the global's density).
TEST(WorkerMethodTest, FlascClientDensitiesFollowTheGlobalSchedule) {
  Fixture f;
  MethodState m = StateOf("flasc");
  m.upload_density = 0.05f;  // the global's d_0 = 0.1 after one decay
  m.density_scale = 0.5f;
  const LocalRound r = f.Run(m, ClientSettings{0, 0.2f, 0});
  EXPECT_EQ(r.values_uploaded, static_cast<uint64_t>(std::floor(0.1 * f.model->Spec().numel())));
}

TEST(WorkerMethodTest, TopKSparseKeepsTheKLargestMagnitudes) {
  AdapterState delta;
  delta.tensors = {{"x", {5}, {0.1f, -3.0f, 0.2f, 2.0f, -0.05f}}, {"y", {4}, {-2.5f, 0.0f, 1.0f, 0.3f}}};
  const auto kept = methods::TopKSparse(delta, 0.4);  // floor(0.4 * 9) = 3
  std::vector<float> values;
  for (const auto& t : kept) {
    EXPECT_TRUE(std::is_sorted(t.indices.begin(), t.indices.end()));
    values.insert(values.end(), t.values.begin(), t.values.end());
  }
  std::sort(values.begin(), values.end());
  EXPECT_EQ(values, (std::vector<float>{-3.0f, -2.5f, 2.0f}));
  ASSERT_EQ(kept.size(), 2u);
  EXPECT_EQ(kept[0].indices, (std::vector<uint32_t>{1, 3}));
  EXPECT_EQ(kept[1].indices, (std::vector<uint32_t>{0}));
}

TEST(WorkerMethodTest, LoraA2ScoreIsTheFrobeniusNormOfTheRankOuterProduct) {
  const uint32_t d = 3, r = 2, k = 4;
  const std::vector<float> b = {1, 2, -1, 0.5f, 3, 1};         // d x r
  const std::vector<float> a = {0.2f, -1, 2, 1, 1, 1, -1, 0};  // r x k
  for (uint32_t i = 0; i < r; ++i) {
    double sq = 0;
    for (uint32_t row = 0; row < d; ++row) {
      for (uint32_t c = 0; c < k; ++c) {
        const double outer = static_cast<double>(b[row * r + i]) * a[i * k + c];
        sq += outer * outer;
      }
    }
    EXPECT_NEAR(methods::RankScore(b, a, d, r, k, i), std::sqrt(sq), 1e-9);
  }
}

TEST(WorkerMethodTest, LoraA2UploadsItsRankBudgetOfThePhasesFactorOnly) {
  Fixture f;
  MethodState m = StateOf("lora-a2");
  m.rank_budget = 1;
  m.probe_batches = 1;
  m.a_lr_ratio = 0.2f;
  for (uint8_t phase : {0, 1}) {
    m.phase = phase;
    const LocalRound r = f.Run(m);
    const TensorRole trained = phase == 0 ? TensorRole::kLoraB : TensorRole::kLoraA;
    size_t ranks = 0;
    for (const auto& t : r.upload) {
      const TensorRole role = f.RoleOf(t.name);
      if (role == TensorRole::kDense) continue;
      EXPECT_EQ(role, trained) << t.name;
      EXPECT_EQ(t.encoding, wire::Encoding::RankSlice);
      ranks += t.indices.size();
    }
    // Budget 1 rank per module, chosen over the 2 modules together.
    EXPECT_EQ(ranks, 2u);
  }
}

TEST(WorkerMethodTest, SaFedLoraKeepsItsBudgetPerModuleInBothFactors) {
  Fixture f;
  MethodState m = StateOf("sa-fedlora");
  m.rank_budget = 3;
  m.probe_batches = 1;
  m.proximal_mu = 0.1f;
  const LocalRound r = f.Run(m);
  size_t factors = 0;
  for (const auto& t : r.upload) {
    if (f.RoleOf(t.name) == TensorRole::kDense) continue;
    ++factors;
    EXPECT_EQ(t.encoding, wire::Encoding::RankSlice) << t.name;
    EXPECT_EQ(t.indices.size(), 3u) << t.name;
  }
  EXPECT_EQ(factors, 4u);  // A and B of fc1 and fc2
}

// With own_rank_scale (--rank-scale own) a rank-2 client of a rank-8 adapter trains as a rank-2
// LoRA at scale alpha / 2 (PEFT's convention): its local B starts at the global's B times 2/8, so
// that its product equals the global's over its ranks, and its change to B goes up times 8/2, in
// the global's units. The model is back at the global's scale afterwards. Without it the client
// trains the global's own factors at alpha / 8.
TEST(WorkerMethodTest, ALowerRankClientTrainsAtAlphaOverItsRankAndUploadsInTheGlobalsUnits) {
  for (const bool own : {true, false}) {
  SCOPED_TRACE(own ? "own" : "global");
  Fixture f;
  ASSERT_TRUE(f.model->LoadAdapter(f.global).ok());
  f.model->Train(false);
  const torch::Tensor images = torch::from_blob(f.data.images.data(), {8, 28, 28}, torch::kUInt8).clone();
  const torch::Tensor before = f.model->Forward(images).detach().clone();
  MethodState m = StateOf("fedavg");
  m.own_rank_scale = own;
  const float ratio = own ? 4.0f : 1.0f;
  const LocalRound r = f.Run(m, ClientSettings{2, 0, 0});
  const AdapterState local = f.model->ExportAdapter();  // the client's trained factors, local units
  const int ib = f.model->Spec().Find("fc2.lora_B"), ia = f.model->Spec().Find("fc2.lora_A");
  const auto& global_b = f.global.tensors[static_cast<size_t>(ib)].values;
  const auto& local_b = local.tensors[static_cast<size_t>(ib)].values;
  bool checked_b = false, checked_a = false;
  for (const auto& t : r.upload) {
    if (t.name == "fc2.lora_B") {
      ASSERT_EQ(t.indices, (std::vector<uint32_t>{0, 1}));
      for (size_t row = 0; row < 64; ++row) {
        for (size_t j = 0; j < 2; ++j) {
          const float local_start = global_b[row * 8 + j] / ratio;
          EXPECT_NEAR(t.values[row * 2 + j], (local_b[row * 8 + j] - local_start) * ratio, 1e-6) << row << "," << j;
        }
      }
      checked_b = true;
    }
    if (t.name == "fc2.lora_A") {  // A is the same in both units
      const auto& global_a = f.global.tensors[static_cast<size_t>(ia)].values;
      const auto& local_a = local.tensors[static_cast<size_t>(ia)].values;
      for (size_t i = 0; i < t.values.size(); ++i) EXPECT_NEAR(t.values[i], local_a[i] - global_a[i], 1e-6) << i;
      checked_a = true;
    }
  }
  EXPECT_TRUE(checked_b && checked_a);
  ASSERT_TRUE(f.model->LoadAdapter(f.global).ok());
  f.model->Train(false);
  EXPECT_TRUE(torch::allclose(f.model->Forward(images), before, 1e-6, 1e-6));
  }
}

// The sum over the mlp's modules of ||B[:, from:8] A[from:8, :]||_F.
double TailNorm(const Model& model, const AdapterState& s, size_t from) {
  double norm = 0;
  for (const char* m : {"fc1", "fc2"}) {
    const auto& a = s.tensors[static_cast<size_t>(model.Spec().Find(std::string(m) + ".lora_A"))];
    const auto& b = s.tensors[static_cast<size_t>(model.Spec().Find(std::string(m) + ".lora_B"))];
    const size_t rows = b.shape[0], cols = a.shape[1];
    double sq = 0;
    for (size_t r = 0; r < rows; ++r) {
      for (size_t c = 0; c < cols; ++c) {
        double x = 0;
        for (size_t i = from; i < 8; ++i) x += static_cast<double>(b.values[r * 8 + i]) * a.values[i * cols + c];
        sq += x * x;
      }
    }
    norm += std::sqrt(sq);
  }
  return norm;
}

// HetLoRA's rank self-pruning: the penalty shrinks the top ranks' product, and a client whose
// top-ranks norm fell since its last round keeps floor(gamma r) ranks from then on: it uploads
// that many and trains at alpha over them.
TEST(WorkerMethodTest, HetLoraClientsPenaliseTheirTopRanksAndPruneThemWhenTheyShrink) {
  MethodState m = StateOf("hetlora");
  m.prune_gamma = 0.5f;  // ranks 4..7 are the tail of a rank-8 client
  double free_tail = 0, penalised_tail = 0;
  for (float lambda : {0.0f, 10.0f}) {
    Fixture f;
    m.prune_lambda = lambda;
    PersonalState me;
    f.Run(m, {}, &me);
    (lambda > 0 ? penalised_tail : free_tail) = TailNorm(*f.model, f.model->ExportAdapter(), 4);
  }
  EXPECT_LT(penalised_tail, 0.5 * free_tail);

  Fixture f;
  m.prune_lambda = 0.01f;
  PersonalState me;
  me.tail_norm = 0;  // nothing can shrink below zero: no pruning
  LocalRound r = f.Run(m, {}, &me);
  EXPECT_EQ(me.rank, 0u);
  EXPECT_GT(me.tail_norm, 0.0);
  for (const auto& t : r.upload) EXPECT_EQ(t.encoding, wire::Encoding::Dense) << t.name;
  me.tail_norm = 1e9;  // the tail shrank since "last round"
  f.Run(m, {}, &me);
  EXPECT_EQ(me.rank, 4u);
  r = f.Run(m, {}, &me);
  for (const auto& t : r.upload) {
    if (f.RoleOf(t.name) == TensorRole::kDense) continue;
    EXPECT_EQ(t.encoding, wire::Encoding::RankSlice) << t.name;
    EXPECT_EQ(t.indices, (std::vector<uint32_t>{0, 1, 2, 3})) << t.name;
  }
  // Without the paper's penalty (lambda 0, or the deltas rule) nothing is pruned.
  m.prune_lambda = 0;
  PersonalState other;
  other.tail_norm = 1e9;
  f.Run(m, {}, &other);
  EXPECT_EQ(other.rank, 0u);
}

// AS-LoRA's gradient scores: with probe batches asked for, a client scores both factors of each
// module, S = eta ||g||^2 - (eta^2 / 2) sum g^4 with eta = lr x steps, from the mean gradient
// at the global; under DP-SGD the probes are DP steps.
TEST(WorkerMethodTest, AsLoraClientsScoreBothFactorsFromProbeGradients) {
  Fixture f;
  MethodState m = StateOf("as-lora");
  LocalRound r = f.Run(m);
  EXPECT_TRUE(r.factor_scores.empty());  // the change score needs nothing from clients
  m.probe_batches = 2;
  r = f.Run(m);
  ASSERT_EQ(r.factor_scores.size(), 4u);  // fc1 B, A; fc2 B, A
  for (float s : r.factor_scores) EXPECT_GT(s, 0.0f);
  // Recompute fc2's from the same probe: its gradients at the global over the same two batches.
  ASSERT_TRUE(f.model->LoadAdapter(f.global).ok());
  for (auto& t : f.model->AdapterTensors()) {
    t.set_requires_grad(true);
    if (t.grad().defined()) t.grad().zero_();
  }
  ASSERT_TRUE(AccumulateGradients(*f.model, f.data, f.shard, 2, f.train.batch_size, f.train.seed ^ 0x5eedULL).ok());
  const double eta = f.train.lr * f.train.steps;
  const torch::Tensor g = f.model->AdapterTensors()[static_cast<size_t>(f.model->Spec().Find("fc2.lora_B"))].grad() / 2;
  const double n2 = g.pow(2).sum().item<double>(), n4 = g.pow(4).sum().item<double>();
  EXPECT_NEAR(r.factor_scores[2], eta * n2 - 0.5 * eta * eta * n4, 1e-6 * eta * n2);
  f.train.dp.noise_multiplier = 1.0;
  f.train.dp.seed = 3;
  r = f.Run(m);
  EXPECT_EQ(r.dp_steps, r.trained.steps + 2);
}

TEST(WorkerMethodTest, ALowerRankClientTrainsAndUploadsItsTopSliceOnly) {
  Fixture f;
  const LocalRound r = f.Run(StateOf("flora"), ClientSettings{2, 0, 0});
  for (const auto& t : r.upload) {
    if (f.RoleOf(t.name) == TensorRole::kDense) continue;
    EXPECT_EQ(t.encoding, wire::Encoding::RankSlice);
    EXPECT_EQ(t.indices, (std::vector<uint32_t>{0, 1})) << t.name;
  }
  // Its model holds B's other ranks at zero.
  const AdapterState after = f.model->ExportAdapter();
  const auto& b = after.tensors[static_cast<size_t>(f.model->Spec().Find("fc2.lora_B"))].values;
  for (size_t row = 0; row < 64; ++row) {
    for (size_t i = 2; i < 8; ++i) EXPECT_EQ(b[row * 8 + i], 0.0f);
  }
  ClientSettings too_big{16, 0, 0};
  PersonalState none;
  EXPECT_EQ(RunLocalRound(*f.model, f.model->Spec(), f.global, StateOf("flora"), too_big, none, f.data,
                          f.shard, f.train)
                .status()
                .code(),
            Code::kInvalidArgument);
}

// flora's residual is the global's: a client trains on top of it, never changes or uploads it.
TEST(WorkerMethodTest, FloraTrainsOnTopOfTheResidualAndNeverUploadsIt) {
  Fixture f(/*full=*/false, /*residual=*/true);
  const LocalRound r = f.Run(StateOf("flora"));
  ASSERT_FALSE(r.upload.empty());
  for (const auto& t : r.upload) EXPECT_NE(f.RoleOf(t.name), TensorRole::kLoraResidual) << t.name;
  const int residual = f.model->Spec().Find("fc1.lora_residual");
  ASSERT_GE(residual, 0);
  EXPECT_EQ(f.model->ExportAdapter().tensors[static_cast<size_t>(residual)].values,
            f.global.tensors[static_cast<size_t>(residual)].values);
}

TEST(WorkerMethodTest, FedSaKeepsBPersonalAndUploadsA) {
  Fixture f;
  PersonalState personal;
  const LocalRound r = f.Run(StateOf("fedsa"), {}, &personal);
  for (const auto& t : r.upload) EXPECT_NE(f.RoleOf(t.name), TensorRole::kLoraB) << t.name;
  ASSERT_EQ(personal.tensors.size(), 2u);
  // The next round starts from the personal B, not the global's.
  const std::vector<float> mine = personal.tensors.at("fc1.lora_B");
  EXPECT_NE(mine, f.global.tensors[static_cast<size_t>(f.model->Spec().Find("fc1.lora_B"))].values);
  f.train.steps = 1;
  f.train.lr = 1e-9f;
  f.Run(StateOf("fedsa"), {}, &personal);
  const auto& again = personal.tensors.at("fc1.lora_B");
  for (size_t i = 0; i < mine.size(); ++i) EXPECT_NEAR(again[i], mine[i], 1e-5);
}

TEST(WorkerMethodTest, FullFineTuningTrainsAndUploadsEveryParameter) {
  Fixture f(/*full=*/true);
  EXPECT_EQ(f.model->Spec().rank, 0u);
  for (const auto& t : f.model->Spec().tensors) EXPECT_EQ(t.role, TensorRole::kDense);
  EXPECT_GE(f.model->Spec().Find("fc1.weight"), 0);
  const LocalRound r = f.Run(StateOf("full"));
  EXPECT_EQ(r.values_uploaded, f.model->Spec().numel());
  EXPECT_GT(f.model->Spec().numel(), 100000u);  // the whole mlp, not an adapter
}

}  // namespace
}  // namespace fedlora::worker

namespace fedlora::worker {
namespace {

TEST(WorkerMethodTest, FlascStartsFromTheGlobalMaskedToItsDownloadDensity) {
  Fixture f;
  MethodState m = StateOf("flasc");
  m.download_density = 0.25f;
  f.train.steps = 1;
  f.train.lr = 1e-12f;  // the model stays where it started, to within 1e-12
  f.Run(m);
  size_t lora = 0, kept = 0;
  const AdapterState after = f.model->ExportAdapter();
  for (size_t t = 0; t < after.tensors.size(); ++t) {
    if (f.model->Spec().tensors[t].role == TensorRole::kDense) continue;
    for (float v : after.tensors[t].values) {
      ++lora;
      kept += std::abs(v) > 1e-9f;
    }
  }
  EXPECT_EQ(kept, static_cast<size_t>(std::floor(0.25 * static_cast<double>(lora))));
}

TEST(WorkerMethodTest, SaFedLoraProximalTermHoldsTheModelNearTheGlobal) {
  auto distance = [](float mu) {
    Fixture f;
    f.train.steps = 6;
    MethodState m = StateOf("sa-fedlora");
    m.proximal_mu = mu;
    f.Run(m);
    const AdapterState after = f.model->ExportAdapter();
    double sq = 0;
    for (size_t t = 0; t < after.tensors.size(); ++t) {
      for (size_t i = 0; i < after.tensors[t].values.size(); ++i) {
        const double d = after.tensors[t].values[i] - f.global.tensors[t].values[i];
        sq += d * d;
      }
    }
    return std::sqrt(sq);
  };
  EXPECT_LT(distance(1e4f), 0.5 * distance(0.0f));
}

}  // namespace
}  // namespace fedlora::worker
