#include "worker/method.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

namespace fedlora::worker {
namespace {

struct Pair {
  size_t a = 0;  // spec index of lora_A (r x k)
  size_t b = 0;  // spec index of lora_B (d x r)
};

std::vector<Pair> LoraPairs(const AdapterSpec& spec) {
  std::vector<Pair> pairs;
  for (size_t i = 0; i < spec.tensors.size(); ++i) {
    if (spec.tensors[i].role != TensorRole::kLoraA) continue;
    const std::string stem = spec.tensors[i].name.substr(0, spec.tensors[i].name.size() - 7);  // ".lora_A"
    const int b = spec.Find(stem + ".lora_B");
    if (b >= 0) pairs.push_back({i, static_cast<size_t>(b)});
  }
  return pairs;
}

double RowNorm(const float* x, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += static_cast<double>(x[i]) * x[i];
  return std::sqrt(s);
}

double ColumnNorm(const float* x, uint32_t rows, uint32_t cols, uint32_t col) {
  double s = 0;
  for (uint32_t r = 0; r < rows; ++r) s += static_cast<double>(x[static_cast<size_t>(r) * cols + col]) * x[static_cast<size_t>(r) * cols + col];
  return std::sqrt(s);
}

std::vector<float> ToVector(const torch::Tensor& t) {
  torch::Tensor c = t.detach().to(torch::kFloat).contiguous();
  return {c.data_ptr<float>(), c.data_ptr<float>() + c.numel()};
}

// FLASC download: keep the `density` fraction of largest |value| over the LoRA factors
// together; the rest become zero.
void MaskDownload(AdapterState& state, const AdapterSpec& spec, double density) {
  if (density >= 1.0) return;
  std::vector<float> mags;
  for (size_t t = 0; t < spec.tensors.size(); ++t) {
    if (spec.tensors[t].role == TensorRole::kDense) continue;
    for (float v : state.tensors[t].values) mags.push_back(std::abs(v));
  }
  if (mags.empty()) return;
  const size_t keep = std::max<size_t>(1, static_cast<size_t>(std::floor(density * static_cast<double>(mags.size()))));
  std::nth_element(mags.begin(), mags.begin() + static_cast<ptrdiff_t>(keep - 1), mags.end(), std::greater<float>());
  const float threshold = mags[keep - 1];
  size_t kept = 0;
  for (size_t t = 0; t < spec.tensors.size(); ++t) {
    if (spec.tensors[t].role == TensorRole::kDense) continue;
    for (float& v : state.tensors[t].values) {
      // Ties at the threshold are kept in order until the budget is spent.
      if (std::abs(v) > threshold || (std::abs(v) == threshold && kept < keep)) {
        ++kept;
      } else {
        v = 0.0f;
      }
    }
  }
}

// Picks ranks by score: per module `per_module` of them, or `global_total` over all modules.
std::vector<std::vector<uint32_t>> SelectRanks(const std::vector<std::vector<double>>& scores, uint32_t per_module,
                                               uint32_t global_total) {
  std::vector<std::vector<uint32_t>> selected(scores.size());
  if (global_total > 0) {
    std::vector<std::pair<size_t, uint32_t>> all;
    for (size_t m = 0; m < scores.size(); ++m) {
      for (uint32_t i = 0; i < scores[m].size(); ++i) {
        if (scores[m][i] >= 0) all.emplace_back(m, i);
      }
    }
    std::stable_sort(all.begin(), all.end(), [&](const auto& x, const auto& y) {
      return scores[x.first][x.second] > scores[y.first][y.second];
    });
    for (size_t j = 0; j < std::min<size_t>(global_total, all.size()); ++j) selected[all[j].first].push_back(all[j].second);
  } else {
    for (size_t m = 0; m < scores.size(); ++m) {
      std::vector<uint32_t> order;
      for (uint32_t i = 0; i < scores[m].size(); ++i) {
        if (scores[m][i] >= 0) order.push_back(i);
      }
      std::stable_sort(order.begin(), order.end(), [&](uint32_t x, uint32_t y) { return scores[m][x] > scores[m][y]; });
      order.resize(std::min<size_t>(order.size(), per_module));
      selected[m] = order;
    }
  }
  for (auto& s : selected) std::sort(s.begin(), s.end());
  return selected;
}

codec::EncodedTensor DenseOf(const DenseTensor& d) {
  return {d.name, d.shape, wire::Encoding::Dense, {}, d.values};
}

// The rank slices of a LoRA factor delta (A: rows; B: columns as a d x |ranks| matrix).
codec::EncodedTensor RankSliceOf(const DenseTensor& d, TensorRole role, const std::vector<uint32_t>& ranks) {
  codec::EncodedTensor e{d.name, d.shape, wire::Encoding::RankSlice, ranks, {}};
  if (role == TensorRole::kLoraA) {
    const size_t k = d.shape[1];
    for (uint32_t i : ranks) e.values.insert(e.values.end(), d.values.begin() + static_cast<ptrdiff_t>(i * k),
                                             d.values.begin() + static_cast<ptrdiff_t>((i + 1) * k));
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

double RankScore(const std::vector<float>& b, const std::vector<float>& a, uint32_t d, uint32_t r, uint32_t k,
                 uint32_t i) {
  return ColumnNorm(b.data(), d, r, i) * RowNorm(a.data() + static_cast<size_t>(i) * k, k);
}

std::vector<codec::EncodedTensor> TopKSparse(const AdapterState& delta, double density) {
  size_t total = 0;
  for (const auto& t : delta.tensors) total += t.values.size();
  std::vector<codec::EncodedTensor> out;
  if (total == 0) return out;
  const size_t k = std::max<size_t>(1, static_cast<size_t>(std::floor(density * static_cast<double>(total))));
  // (tensor, index) of every element, ordered by descending magnitude, ties by position.
  std::vector<std::pair<uint32_t, uint32_t>> pos;
  pos.reserve(total);
  for (uint32_t t = 0; t < delta.tensors.size(); ++t) {
    for (uint32_t i = 0; i < delta.tensors[t].values.size(); ++i) pos.emplace_back(t, i);
  }
  auto mag = [&](const std::pair<uint32_t, uint32_t>& p) { return std::abs(delta.tensors[p.first].values[p.second]); };
  std::nth_element(pos.begin(), pos.begin() + static_cast<ptrdiff_t>(k - 1), pos.end(), [&](const auto& x, const auto& y) {
    const float mx = mag(x), my = mag(y);
    return mx != my ? mx > my : x < y;
  });
  pos.resize(k);
  std::sort(pos.begin(), pos.end());
  for (size_t j = 0; j < pos.size();) {
    const uint32_t t = pos[j].first;
    codec::EncodedTensor e{delta.tensors[t].name, delta.tensors[t].shape, wire::Encoding::Sparse, {}, {}};
    for (; j < pos.size() && pos[j].first == t; ++j) {
      e.indices.push_back(pos[j].second);
      e.values.push_back(delta.tensors[t].values[pos[j].second]);
    }
    out.push_back(std::move(e));
  }
  return out;
}

Result<LocalRound> RunLocalRound(Model& model, const AdapterSpec& spec, const AdapterState& global,
                                 const MethodState& method, const ClientSettings& client,
                                 PersonalState* personal, const Dataset& data,
                                 const std::vector<size_t>& shard, const LocalTrainOptions& train,
                                 std::stop_token stop) {
  const Method kind = method.method;
  const uint32_t rank = spec.rank;
  const uint32_t my_rank = client.rank == 0 ? rank : client.rank;
  if (kind != Method::kFull && my_rank > rank) {
    return InvalidArgument(fmt::format("client rank {} is above the adapter's rank {}", my_rank, rank));
  }
  const std::vector<Pair> pairs = LoraPairs(spec);

  // 1. What the local model starts from.
  AdapterState start = global;
  if (kind == Method::kFlasc) MaskDownload(start, spec, method.download_density);
  if (kind == Method::kFedSa && personal != nullptr) {
    for (size_t t = 0; t < spec.tensors.size(); ++t) {
      auto it = personal->tensors.find(spec.tensors[t].name);
      if (spec.tensors[t].role == TensorRole::kLoraB && it != personal->tensors.end()) start.tensors[t].values = it->second;
    }
  }
  // A client of lower rank holds the top-my_rank slice: the other ranks of B are zero locally.
  if (my_rank < rank) {
    for (const Pair& p : pairs) {
      auto& b = start.tensors[p.b].values;
      const uint32_t d = spec.tensors[p.b].shape[0];
      for (uint32_t row = 0; row < d; ++row) {
        for (uint32_t i = my_rank; i < rank; ++i) b[static_cast<size_t>(row) * rank + i] = 0.0f;
      }
    }
  }
  RETURN_IF_ERROR(model.LoadAdapter(start));

  // 2. What trains.
  std::vector<torch::Tensor> tensors = model.AdapterTensors();
  std::vector<bool> trains(spec.tensors.size(), true);
  std::vector<bool> uploads(spec.tensors.size(), true);
  for (size_t t = 0; t < spec.tensors.size(); ++t) {
    const TensorRole role = spec.tensors[t].role;
    if (kind == Method::kFfa && role == TensorRole::kLoraA) trains[t] = uploads[t] = false;
    if (kind == Method::kLoraA2 && role != TensorRole::kDense) {
      const bool trained_factor = method.phase == 0 ? role == TensorRole::kLoraB : role == TensorRole::kLoraA;
      trains[t] = uploads[t] = trained_factor;
    }
    if (kind == Method::kFedSa && role == TensorRole::kLoraB) uploads[t] = false;  // trains, stays here
  }
  if (kind == Method::kAsLora) {
    for (size_t m = 0; m < pairs.size(); ++m) {
      const bool a_trains = m < method.active.size() && method.active[m] == 1;
      trains[pairs[m].a] = uploads[pairs[m].a] = a_trains;
      trains[pairs[m].b] = uploads[pairs[m].b] = !a_trains;
    }
  }

  // 3. Which ranks: everything below my_rank, narrowed by the score for LoRA-A2 / SA-FedLoRA.
  std::vector<std::vector<uint32_t>> ranks(pairs.size());
  for (auto& r : ranks) {
    r.resize(my_rank);
    std::iota(r.begin(), r.end(), 0u);
  }
  const bool scored = method.probe_batches > 0 &&
                      (kind == Method::kLoraA2 ||
                       (kind == Method::kSaFedLora && method.rank_budget > 0 && method.rank_budget < my_rank));
  LocalRound round;
  if (scored) {
    for (auto& t : tensors) t.set_requires_grad(true);
    // Under DP-SGD the scores come from noised gradients too (each probe batch is one more
    // application of the mechanism): the ranks a client uploads must not leak its data.
    RETURN_IF_ERROR(
        AccumulateGradients(model, data, shard, method.probe_batches, train.batch_size, train.seed ^ 0x5eedULL, train.dp));
    if (train.dp.enabled()) round.dp_steps += method.probe_batches;
    std::vector<std::vector<double>> scores(pairs.size(), std::vector<double>(rank, -1.0));
    for (size_t m = 0; m < pairs.size(); ++m) {
      const auto& as = spec.tensors[pairs[m].a];
      const auto& bs = spec.tensors[pairs[m].b];
      const uint32_t d = bs.shape[0], k = as.shape[1];
      const std::vector<float> a = start.tensors[pairs[m].a].values, b = start.tensors[pairs[m].b].values;
      const std::vector<float> ga = ToVector(tensors[pairs[m].a].grad()), gb = ToVector(tensors[pairs[m].b].grad());
      for (uint32_t i = 0; i < my_rank; ++i) {
        const double score_b = RankScore(gb, a, d, rank, k, i);   // ||dB[:, i]|| ||A[i, :]||
        const double score_a = RankScore(b, ga, d, rank, k, i);   // ||B[:, i]|| ||dA[i, :]||
        if (kind == Method::kLoraA2) {
          scores[m][i] = method.phase == 0 ? score_b : score_a;
        } else {
          scores[m][i] = score_b + score_a;
        }
      }
    }
    if (kind == Method::kLoraA2) {
      const uint32_t budget = client.rank_budget > 0 ? client.rank_budget : method.rank_budget;
      ranks = SelectRanks(scores, 0, std::max<uint32_t>(1, budget) * static_cast<uint32_t>(pairs.size()));
    } else {
      ranks = SelectRanks(scores, method.rank_budget == 0 ? my_rank : method.rank_budget, 0);
    }
    model.Train(true);
  }
  for (size_t t = 0; t < spec.tensors.size(); ++t) tensors[t].set_requires_grad(trains[t]);
  for (const auto& r : ranks) round.kept_ranks.push_back(static_cast<uint32_t>(r.size()));

  // Gradient masks: a factor trains only on its kept ranks.
  std::vector<std::pair<torch::Tensor, torch::Tensor>> masks;  // (parameter, mask)
  for (size_t m = 0; m < pairs.size(); ++m) {
    if (ranks[m].size() == rank) continue;
    torch::Tensor keep = torch::zeros({static_cast<int64_t>(rank)});
    for (uint32_t i : ranks[m]) keep[i] = 1.0f;
    if (trains[pairs[m].a]) masks.emplace_back(tensors[pairs[m].a], keep.view({-1, 1}));
    if (trains[pairs[m].b]) masks.emplace_back(tensors[pairs[m].b], keep.view({1, -1}));
  }
  LocalTrainOptions options = train;
  options.grad_masks = masks;
  std::vector<std::pair<torch::Tensor, torch::Tensor>> anchors;  // (parameter, its start value)
  if (method.proximal_mu > 0) {
    for (size_t t = 0; t < spec.tensors.size(); ++t) {
      if (trains[t]) anchors.emplace_back(tensors[t], tensors[t].detach().clone());
    }
    const double mu = method.proximal_mu;
    options.regularizer = [&anchors, mu] {
      torch::Tensor sum = torch::zeros({});
      for (auto& [param, anchor] : anchors) sum = sum + (param - anchor).pow(2).sum();
      return sum * (mu / 2.0);
    };
  }
  if (kind == Method::kLoraA2 && method.phase == 1) options.lr = train.lr * method.a_lr_ratio;

  // 4. Train.
  ASSIGN_OR_RETURN(round.trained, TrainLocal(model, data, shard, options, stop));
  if (train.dp.enabled()) round.dp_steps += round.trained.steps;
  for (auto& t : tensors) t.set_requires_grad(true);
  if (round.trained.stopped) return round;

  // 5. The delta against the local start, and what of it goes up.
  AdapterState delta = model.ExportAdapter();
  if (kind == Method::kFedSa && personal != nullptr) {
    for (size_t t = 0; t < spec.tensors.size(); ++t) {
      if (spec.tensors[t].role == TensorRole::kLoraB) personal->tensors[spec.tensors[t].name] = delta.tensors[t].values;
    }
  }
  for (size_t t = 0; t < delta.tensors.size(); ++t) {
    auto& d = delta.tensors[t].values;
    const auto& s = start.tensors[t].values;
    for (size_t i = 0; i < d.size(); ++i) d[i] -= s[i];
  }
  if (kind == Method::kFlasc) {
    const double density = client.upload_density > 0 ? client.upload_density : method.upload_density;
    round.upload = TopKSparse(delta, density);
  } else {
    std::vector<int> module_of(spec.tensors.size(), -1);
    for (size_t m = 0; m < pairs.size(); ++m) module_of[pairs[m].a] = module_of[pairs[m].b] = static_cast<int>(m);
    for (size_t t = 0; t < spec.tensors.size(); ++t) {
      if (!uploads[t]) continue;
      const int m = module_of[t];
      if (m < 0 || ranks[m].size() == rank) {
        round.upload.push_back(DenseOf(delta.tensors[t]));
      } else if (!ranks[m].empty()) {
        round.upload.push_back(RankSliceOf(delta.tensors[t], spec.tensors[t].role, ranks[m]));
      }
    }
  }
  for (const auto& e : round.upload) round.values_uploaded += e.values.size();
  return round;
}

}  // namespace fedlora::worker
