#include "aggregator/methods/rank_scores.h"

#include <algorithm>
#include <cmath>

namespace fedlora::methods {
namespace {

double RowNorm(const float* x, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += static_cast<double>(x[i]) * x[i];
  return std::sqrt(s);
}

double ColumnNorm(const float* x, uint32_t rows, uint32_t cols, uint32_t col) {
  double s = 0;
  for (uint32_t r = 0; r < rows; ++r) {
    const double v = x[static_cast<size_t>(r) * cols + col];
    s += v * v;
  }
  return std::sqrt(s);
}

}  // namespace

double RankScore(const std::vector<float>& b, const std::vector<float>& a, uint32_t d, uint32_t r, uint32_t k,
                 uint32_t i) {
  return ColumnNorm(b.data(), d, r, i) * RowNorm(a.data() + static_cast<size_t>(i) * k, k);
}

RankScores ScoreRanks(const ClientRound& round, const AdapterState& start, const AdapterState& grad) {
  const uint32_t rank = round.spec.rank;
  const size_t n = round.layout.modules().size();
  RankScores s{std::vector<std::vector<double>>(n, std::vector<double>(rank, -1.0)),
               std::vector<std::vector<double>>(n, std::vector<double>(rank, -1.0))};
  for (size_t m = 0; m < n; ++m) {
    const LoraModule& mod = round.layout.modules()[m];
    const auto& a = start.tensors[mod.a].values;
    const auto& b = start.tensors[mod.b].values;
    const auto& ga = grad.tensors[mod.a].values;
    const auto& gb = grad.tensors[mod.b].values;
    for (uint32_t i = 0; i < round.rank; ++i) {
      s.b[m][i] = RankScore(gb, a, mod.rows, rank, mod.cols, i);  // ||dB[:, i]|| ||A[i, :]||
      s.a[m][i] = RankScore(b, ga, mod.rows, rank, mod.cols, i);  // ||B[:, i]|| ||dA[i, :]||
    }
  }
  return s;
}

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
    for (size_t j = 0; j < std::min<size_t>(global_total, all.size()); ++j) {
      selected[all[j].first].push_back(all[j].second);
    }
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

}  // namespace fedlora::methods
