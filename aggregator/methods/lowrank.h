// Exact low-rank algebra for product-space LoRA aggregation (FLoRA stacking with FlexLoRA-style
// truncated-SVD re-factorisation, docs/methods.md section 6). Everything runs in double
// precision, is deterministic (same inputs, same bits), and never forms a d x k product unless
// that is the cheaper route.
// Thread safety: pure functions.
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

namespace fedlora::methods::lowrank {

// The product B A of B (rows x rank) and A (rank x cols), both row-major.
struct Factors {
  uint32_t rows = 0;
  uint32_t cols = 0;
  uint32_t rank = 0;
  std::vector<double> b;  // rows x rank
  std::vector<double> a;  // rank x cols
};

// rows x cols, row-major.
std::vector<double> Product(const Factors& f);

// A dense rows x cols matrix (row-major) as factors of rank min(rows, cols), one of them the
// identity, so that it stacks with low-rank terms.
Factors FromDense(std::span<const float> dense, uint32_t rows, uint32_t cols);

// FLoRA stacking: B_g = [w_1 B_1, ..., w_K B_K] (columns), A_g = [A_1; ...; A_K] (rows), so that
// B_g A_g = sum_k w_k B_k A_k exactly, whatever each rank. Every term must have the same rows
// and cols (checked by the caller).
Factors Stack(std::span<const std::pair<double, const Factors*>> terms);

// The singular value decomposition of a product, truncated to its numerical rank n:
// B A = U diag(s) V^T with U rows x n and V cols x n (column-major: column i of U is
// u[i * rows .. (i + 1) * rows)), s descending and positive.
struct Svd {
  uint32_t rows = 0;
  uint32_t cols = 0;
  std::vector<double> u;
  std::vector<double> s;
  std::vector<double> v;
};
Svd ProductSvd(const Factors& f);

// One-sided Jacobi SVD of a dense row-major m x n matrix (exposed for tests).
Svd DenseSvd(const std::vector<double>& matrix, uint32_t m, uint32_t n);

// The best rank-r approximation of B A (Eckart-Young), re-factorised as A = c V_r^T (rows of A
// orthogonal with norm c, the scale LoRA's initialisation gives A) and B = U_r diag(s_r) / c.
// When B A has fewer than r non-zero singular values, the remaining rows of A complete an
// orthogonal set (deterministically) with B's columns zero, so the adapter stays trainable.
Factors Refactor(const Factors& f, uint32_t r, double a_row_norm);

}  // namespace fedlora::methods::lowrank
