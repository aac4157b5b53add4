#include "aggregator/methods/lowrank.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace fedlora::methods::lowrank {
namespace {

// Singular values below this fraction of the largest are numerical noise of a lower rank.
constexpr double kRankTolerance = 1e-12;
// Jacobi rotations stop once every column pair is orthogonal to this relative precision.
constexpr double kJacobiPrecision = 1e-15;
constexpr int kMaxSweeps = 80;

double Dot(const double* x, const double* y, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += x[i] * y[i];
  return s;
}

// Thin QR of a column-major m x n matrix by modified Gram-Schmidt with one re-orthogonalisation
// pass. A column dependent on the previous ones gets q = 0 and a zero row in R, so Q R = X
// still holds and the non-zero columns of Q stay orthonormal.
void ThinQr(std::vector<double>& x, uint32_t m, uint32_t n, std::vector<double>& r) {
  r.assign(static_cast<size_t>(n) * n, 0.0);  // row-major n x n
  for (uint32_t j = 0; j < n; ++j) {
    double* v = x.data() + static_cast<size_t>(j) * m;
    const double original = std::sqrt(Dot(v, v, m));
    for (int pass = 0; pass < 2; ++pass) {
      for (uint32_t i = 0; i < j; ++i) {
        const double* q = x.data() + static_cast<size_t>(i) * m;
        const double p = Dot(q, v, m);
        r[static_cast<size_t>(i) * n + j] += p;
        for (uint32_t k = 0; k < m; ++k) v[k] -= p * q[k];
      }
    }
    const double norm = std::sqrt(Dot(v, v, m));
    if (original == 0 || norm <= kRankTolerance * original) {
      std::fill(v, v + m, 0.0);
      continue;
    }
    for (uint32_t k = 0; k < m; ++k) v[k] /= norm;
    r[static_cast<size_t>(j) * n + j] = norm;
  }
}

// Keeps the singular triplets above the rank tolerance, sorted by descending value.
Svd SortAndTruncate(uint32_t rows, uint32_t cols, const std::vector<double>& s, const std::vector<double>& u,
                    const std::vector<double>& v) {
  std::vector<uint32_t> order(s.size());
  std::iota(order.begin(), order.end(), 0u);
  std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return s[a] > s[b]; });
  Svd out;
  out.rows = rows;
  out.cols = cols;
  const double top = s.empty() ? 0.0 : s[order[0]];
  for (uint32_t i : order) {
    if (!(s[i] > 0) || s[i] <= kRankTolerance * top) break;
    out.s.push_back(s[i]);
    out.u.insert(out.u.end(), u.begin() + static_cast<ptrdiff_t>(i) * rows,
                 u.begin() + static_cast<ptrdiff_t>(i + 1) * rows);
    out.v.insert(out.v.end(), v.begin() + static_cast<ptrdiff_t>(i) * cols,
                 v.begin() + static_cast<ptrdiff_t>(i + 1) * cols);
  }
  return out;
}

}  // namespace

Factors FromDense(std::span<const float> dense, uint32_t rows, uint32_t cols) {
  Factors f;
  f.rows = rows;
  f.cols = cols;
  f.rank = std::min(rows, cols);
  if (rows <= cols) {  // I (rows x rows) times the matrix
    f.b.assign(static_cast<size_t>(rows) * rows, 0.0);
    for (uint32_t i = 0; i < rows; ++i) f.b[static_cast<size_t>(i) * rows + i] = 1.0;
    f.a.assign(dense.begin(), dense.end());
  } else {  // the matrix times I (cols x cols)
    f.b.assign(dense.begin(), dense.end());
    f.a.assign(static_cast<size_t>(cols) * cols, 0.0);
    for (uint32_t i = 0; i < cols; ++i) f.a[static_cast<size_t>(i) * cols + i] = 1.0;
  }
  return f;
}

std::vector<double> Product(const Factors& f) {
  std::vector<double> p(static_cast<size_t>(f.rows) * f.cols, 0.0);
  for (uint32_t i = 0; i < f.rows; ++i) {
    double* row = p.data() + static_cast<size_t>(i) * f.cols;
    for (uint32_t l = 0; l < f.rank; ++l) {
      const double bil = f.b[static_cast<size_t>(i) * f.rank + l];
      if (bil == 0) continue;
      const double* a = f.a.data() + static_cast<size_t>(l) * f.cols;
      for (uint32_t j = 0; j < f.cols; ++j) row[j] += bil * a[j];
    }
  }
  return p;
}

Factors Stack(std::span<const std::pair<double, const Factors*>> terms) {
  Factors out;
  if (terms.empty()) return out;
  out.rows = terms[0].second->rows;
  out.cols = terms[0].second->cols;
  for (const auto& [w, f] : terms) out.rank += f->rank;
  out.b.assign(static_cast<size_t>(out.rows) * out.rank, 0.0);
  out.a.reserve(static_cast<size_t>(out.rank) * out.cols);
  uint32_t offset = 0;
  for (const auto& [w, f] : terms) {
    for (uint32_t i = 0; i < out.rows; ++i) {
      for (uint32_t l = 0; l < f->rank; ++l) {
        out.b[static_cast<size_t>(i) * out.rank + offset + l] = w * f->b[static_cast<size_t>(i) * f->rank + l];
      }
    }
    out.a.insert(out.a.end(), f->a.begin(), f->a.end());
    offset += f->rank;
  }
  return out;
}

Svd DenseSvd(const std::vector<double>& matrix, uint32_t m, uint32_t n) {
  if (m < n) {
    std::vector<double> t(matrix.size());
    for (uint32_t i = 0; i < m; ++i) {
      for (uint32_t j = 0; j < n; ++j) t[static_cast<size_t>(j) * m + i] = matrix[static_cast<size_t>(i) * n + j];
    }
    Svd s = DenseSvd(t, n, m);
    std::swap(s.u, s.v);
    std::swap(s.rows, s.cols);
    return s;
  }
  // Columns of the matrix, column-major; V starts as the identity.
  std::vector<double> w(static_cast<size_t>(m) * n);
  for (uint32_t i = 0; i < m; ++i) {
    for (uint32_t j = 0; j < n; ++j) w[static_cast<size_t>(j) * m + i] = matrix[static_cast<size_t>(i) * n + j];
  }
  std::vector<double> v(static_cast<size_t>(n) * n, 0.0);
  for (uint32_t j = 0; j < n; ++j) v[static_cast<size_t>(j) * n + j] = 1.0;
  for (int sweep = 0; sweep < kMaxSweeps; ++sweep) {
    bool rotated = false;
    for (uint32_t p = 0; p + 1 < n; ++p) {
      for (uint32_t q = p + 1; q < n; ++q) {
        double* wp = w.data() + static_cast<size_t>(p) * m;
        double* wq = w.data() + static_cast<size_t>(q) * m;
        const double alpha = Dot(wp, wp, m);
        const double beta = Dot(wq, wq, m);
        const double gamma = Dot(wp, wq, m);
        if (alpha == 0 || beta == 0 || std::abs(gamma) <= kJacobiPrecision * std::sqrt(alpha * beta)) continue;
        rotated = true;
        const double zeta = (beta - alpha) / (2.0 * gamma);
        const double t = (zeta >= 0 ? 1.0 : -1.0) / (std::abs(zeta) + std::sqrt(1.0 + zeta * zeta));
        const double c = 1.0 / std::sqrt(1.0 + t * t);
        const double s = c * t;
        for (uint32_t k = 0; k < m; ++k) {
          const double x = wp[k];
          const double y = wq[k];
          wp[k] = c * x - s * y;
          wq[k] = s * x + c * y;
        }
        double* vp = v.data() + static_cast<size_t>(p) * n;
        double* vq = v.data() + static_cast<size_t>(q) * n;
        for (uint32_t k = 0; k < n; ++k) {
          const double x = vp[k];
          const double y = vq[k];
          vp[k] = c * x - s * y;
          vq[k] = s * x + c * y;
        }
      }
    }
    if (!rotated) break;
  }
  std::vector<double> sv(n);
  for (uint32_t j = 0; j < n; ++j) {
    double* wj = w.data() + static_cast<size_t>(j) * m;
    sv[j] = std::sqrt(Dot(wj, wj, m));
    if (sv[j] > 0) {
      for (uint32_t k = 0; k < m; ++k) wj[k] /= sv[j];
    }
  }
  return SortAndTruncate(m, n, sv, w, v);
}

Svd ProductSvd(const Factors& f) {
  const uint64_t dense_cost = static_cast<uint64_t>(f.rows) * f.cols;
  const uint64_t factored_cost = static_cast<uint64_t>(f.rows + f.cols) * f.rank;
  if (f.rank == 0 || f.rows == 0 || f.cols == 0) {
    Svd empty;
    empty.rows = f.rows;
    empty.cols = f.cols;
    return empty;
  }
  if (dense_cost <= factored_cost) return DenseSvd(Product(f), f.rows, f.cols);

  // B = Q_B R_B and A^T = Q_A R_A, so B A = Q_B (R_B R_A^T) Q_A^T: only an R x R SVD remains.
  const uint32_t rr = f.rank;
  std::vector<double> qb(static_cast<size_t>(f.rows) * rr), qa(static_cast<size_t>(f.cols) * rr);
  for (uint32_t i = 0; i < f.rows; ++i) {
    for (uint32_t l = 0; l < rr; ++l) qb[static_cast<size_t>(l) * f.rows + i] = f.b[static_cast<size_t>(i) * rr + l];
  }
  for (uint32_t l = 0; l < rr; ++l) {
    for (uint32_t j = 0; j < f.cols; ++j) qa[static_cast<size_t>(l) * f.cols + j] = f.a[static_cast<size_t>(l) * f.cols + j];
  }
  std::vector<double> rb, ra;
  ThinQr(qb, f.rows, rr, rb);
  ThinQr(qa, f.cols, rr, ra);
  std::vector<double> m(static_cast<size_t>(rr) * rr, 0.0);  // R_B R_A^T
  for (uint32_t i = 0; i < rr; ++i) {
    for (uint32_t j = 0; j < rr; ++j) {
      double s = 0;
      for (uint32_t k = std::max(i, j); k < rr; ++k) s += rb[static_cast<size_t>(i) * rr + k] * ra[static_cast<size_t>(j) * rr + k];
      m[static_cast<size_t>(i) * rr + j] = s;
    }
  }
  const Svd small = DenseSvd(m, rr, rr);
  Svd out;
  out.rows = f.rows;
  out.cols = f.cols;
  out.s = small.s;
  const size_t n = small.s.size();
  out.u.assign(n * f.rows, 0.0);
  out.v.assign(n * f.cols, 0.0);
  for (size_t c = 0; c < n; ++c) {
    for (uint32_t l = 0; l < rr; ++l) {
      const double wu = small.u[c * rr + l];
      const double wv = small.v[c * rr + l];
      for (uint32_t i = 0; i < f.rows; ++i) out.u[c * f.rows + i] += wu * qb[static_cast<size_t>(l) * f.rows + i];
      for (uint32_t j = 0; j < f.cols; ++j) out.v[c * f.cols + j] += wv * qa[static_cast<size_t>(l) * f.cols + j];
    }
  }
  return out;
}

Factors Refactor(const Factors& f, uint32_t r, double a_row_norm) {
  const Svd svd = ProductSvd(f);
  Factors out;
  out.rows = f.rows;
  out.cols = f.cols;
  out.rank = r;
  out.b.assign(static_cast<size_t>(f.rows) * r, 0.0);
  out.a.assign(static_cast<size_t>(r) * f.cols, 0.0);
  const uint32_t n = std::min<uint32_t>(r, static_cast<uint32_t>(svd.s.size()));
  for (uint32_t i = 0; i < n; ++i) {
    for (uint32_t j = 0; j < f.cols; ++j) out.a[static_cast<size_t>(i) * f.cols + j] = a_row_norm * svd.v[static_cast<size_t>(i) * f.cols + j];
    for (uint32_t k = 0; k < f.rows; ++k) {
      out.b[static_cast<size_t>(k) * r + i] = svd.u[static_cast<size_t>(i) * f.rows + k] * svd.s[i] / a_row_norm;
    }
  }
  // Complete A's rows with unit vectors orthogonalised against the rows so far.
  std::vector<double> cand(f.cols);
  uint32_t next_basis = 0;
  for (uint32_t i = n; i < r && next_basis < f.cols; ++i) {
    while (next_basis < f.cols) {
      std::fill(cand.begin(), cand.end(), 0.0);
      cand[next_basis++] = 1.0;
      for (int pass = 0; pass < 2; ++pass) {
        for (uint32_t k = 0; k < i; ++k) {
          const double* row = out.a.data() + static_cast<size_t>(k) * f.cols;
          const double p = Dot(row, cand.data(), f.cols) / (a_row_norm * a_row_norm);
          for (uint32_t j = 0; j < f.cols; ++j) cand[j] -= p * row[j];
        }
      }
      const double norm = std::sqrt(Dot(cand.data(), cand.data(), f.cols));
      if (norm > 0.5) {  // well away from the span so far
        for (uint32_t j = 0; j < f.cols; ++j) out.a[static_cast<size_t>(i) * f.cols + j] = a_row_norm * cand[j] / norm;
        break;
      }
    }
  }
  return out;
}

}  // namespace fedlora::methods::lowrank
