#pragma once
/// \file
/// Log-normal attention (LLN, Nahshan et al. 2023): the kernelised skeleton with
/// φ_q(q) = exp(α·q), φ_k(k) = exp(β·k), α and β chosen by moment matching so the
/// weights' log-normal spread matches softmax's. Before exp, α·q is shifted by its
/// row max and β·k by the per-head maximum over all valid keys and dims (the shifts
/// cancel in the ratio; they only rescale ε). No 1/sqrt(D): options.scale is ignored.
/// Causal masking uses prefix sums like linear attention (current token included).
#include <cmath>
#include <optional>

#include "family.hpp"

namespace attnkit {

/// α and β of one LLN call.
struct lln_coefficients {
  double alpha = 1.0;
  double beta = 1.0;
};

/// Log-normal attention policy. Unset alpha/beta = moment matching from the call's
/// q and k (sample standard deviations over all entries, denominator count − 1).
/// `diag = true` is LLN+Diag: the average of LLN and block-diagonal softmax with
/// block size D (query position p = i + Δ and key j share a block iff p/D == j/D;
/// softmax scale = options.scale or 1/sqrt(D)).
struct log_normal {
  using family = attnkit::family::kernelized;
  std::optional<double> alpha{};
  std::optional<double> beta{};
  double eps = 1e-8;
  bool diag = false;

  /// Moment-matching constants of the paper's fit of log-variance vs. σ².
  static constexpr double a = 0.14855178144710912;
  static constexpr double b = -0.35487039130661086;

  /// σ̃ = sqrt((σq²σk² − b)/(2a)), α = σ̃/σq, β = σ̃/σk. A zero σ gives coefficient 1.
  static lln_coefficients moment_match(double sigma_q, double sigma_k) noexcept {
    const double st = std::sqrt((sigma_q * sigma_q * sigma_k * sigma_k - b) / (2.0 * a));
    return {sigma_q > 0 ? st / sigma_q : 1.0, sigma_k > 0 ? st / sigma_k : 1.0};
  }

  /// The coefficients used for a call with the given sample standard deviations.
  lln_coefficients resolve(double sigma_q, double sigma_k) const noexcept {
    const lln_coefficients m = moment_match(sigma_q, sigma_k);
    return {alpha ? *alpha : m.alpha, beta ? *beta : m.beta};
  }
};

}  // namespace attnkit
