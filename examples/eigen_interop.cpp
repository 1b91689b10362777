// One attention head as Eigen matrices (rows = tokens, columns = head dim).
// attnkit::eigen::attention reads row-major matrices in place (column-major ones are
// copied to row-major first); the result is checked against a naive Eigen
// implementation, softmax(Q Kᵀ / sqrt(D)) V, computed here in double precision.
#include <attnkit/interop/eigen.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>

int main() {
  using mat = attnkit::eigen::row_matrix;  // Eigen::Matrix<float, Dynamic, Dynamic, RowMajor>
  const int Lq = 12, Lk = 20, D = 32, Dv = 16;
  std::srand(7);
  const mat Q = mat::Random(Lq, D), K = mat::Random(Lk, D), V = mat::Random(Lk, Dv);

  mat O;  // resized to Lq × Dv
  attnkit::eigen::attention(attnkit::softmax{}, Q, K, V, O);

  // Naive reference in double: materialises the Lq × Lk probabilities.
  Eigen::MatrixXd S = Q.cast<double>() * K.cast<double>().transpose() / std::sqrt(double(D));
  for (int i = 0; i < Lq; ++i) {
    S.row(i).array() = (S.row(i).array() - S.row(i).maxCoeff()).exp();
    S.row(i) /= S.row(i).sum();
  }
  const Eigen::MatrixXd ref = S * V.cast<double>();
  const double err = (O.cast<double>() - ref).cwiseAbs().maxCoeff();

  std::printf("O (%ld x %ld), first row: ", static_cast<long>(O.rows()), static_cast<long>(O.cols()));
  for (int j = 0; j < 6; ++j) std::printf("%.4f ", O(0, j));
  std::printf("...\nmax |attnkit - naive double| = %.2e  -> %s\n", err, err < 1e-5 ? "OK" : "FAILED");
  return err < 1e-5 ? 0 : 1;
}
