#pragma once
/// \file
/// The optional part of a backward call,
///   attention_backward(policy, q, k, v, out, lse, dout, dq, dk, dv, opt [, backward_options]):
/// accumulation instead of overwriting, the gradients of the attention sinks and of
/// the additive bias, and an entropy regulariser whose gradient is fused into dS.
/// See docs/training.md. The float64 oracle reference::attention_backward
/// (reference/backward.hpp) implements this contract.
#include <cstdint>
#include <span>

#include "../observe/regularizer.hpp"
#include "tensor_view.hpp"

namespace attnkit {

/// Which loss of observe/regularizer.hpp the backward adds (its definitions, over
/// the rows of the call; H_i = softmax entropy of row i's finite logits, the sinks
/// not counted, rows without a visible key left out):
enum class regularizer_kind : std::uint8_t {
  none,              ///< no regulariser
  mean_entropy,      ///< AEM: λ · mean_i H_i over all rows of the call (mean_entropy_loss)
  negative_entropy,  ///< EAR: −λ · mean_i H_i (negative_entropy_loss)
  entropy_band,      ///< Jha & Reagen's band penalty, heads = the call's query heads (entropy_band_penalty)
};

/// An entropy regulariser R of the attention logits, with its weight λ: the
/// backward adds ∂(λ·R)/∂s to dS (the logits' gradient), i.e. it returns the
/// gradient of loss + λ·R. Only for softmax-normalised policies (R is an entropy
/// of softmax(logits)). For entropy_band, head h's rows are the rows of query head
/// h in every batch: E_h = their mean H, pen_h = band penalty of E_h − θ_h, value
/// λ · mean_h pen_h; E_max = max_entropy, or log(k.seq) when 0.
struct regularizer {
  regularizer_kind kind = regularizer_kind::none;
  double lambda = 0.0;              ///< λ ≥ 0, finite
  std::span<const double> theta{};  ///< entropy_band: θ_h in nats, one per query head
  double gamma = 0.2;               ///< entropy_band: the band's half-width γ·E_max (band_config::gamma)
  double max_entropy = 0.0;         ///< entropy_band: E_max; 0 = log(k.seq) (band_config::max_entropy)
  band_config::shape form = band_config::shape::squared;  ///< entropy_band: squared or hinge

  constexpr bool active() const noexcept { return kind != regularizer_kind::none; }
  /// The band_config of observe/regularizer.hpp with these parameters.
  constexpr band_config band() const noexcept { return {lambda, gamma, max_entropy, form}; }

  /// AEM: λ · mean H (minimising it sharpens attention).
  static constexpr regularizer mean_entropy(double lambda) noexcept { return of(regularizer_kind::mean_entropy, lambda); }
  /// EAR: −λ · mean H (minimising it spreads attention).
  static constexpr regularizer negative_entropy(double lambda) noexcept {
    return of(regularizer_kind::negative_entropy, lambda);
  }
  /// Band penalty with thresholds θ (one per query head) and band_config's λ, γ, E_max, form.
  static constexpr regularizer entropy_band(std::span<const double> theta, const band_config& cfg) noexcept {
    regularizer r = of(regularizer_kind::entropy_band, cfg.lambda);
    r.theta = theta;
    r.gamma = cfg.gamma;
    r.max_entropy = cfg.max_entropy;
    r.form = cfg.form;
    return r;
  }

 private:
  static constexpr regularizer of(regularizer_kind k, double lambda) noexcept {
    regularizer r;
    r.kind = k;
    r.lambda = lambda;
    return r;
  }
};

/// Optional arguments of a backward call. Defaults: overwrite dq/dk/dv, no extra
/// gradients, no regulariser.
struct backward_options {
  /// false: dq, dk, dv (and dsinks, dbias) are overwritten; true: the gradients are added.
  bool accumulate = false;
  /// d loss / d options.sinks, [Hq] floats (summed over batches and rows); nullptr:
  /// not written. Only with options.sinks.
  float* dsinks = nullptr;
  /// d loss / d options.bias, with the extents of options.bias (broadcast axes are
  /// summed); data == nullptr: not written. Only with options.bias.
  tensor_view<float> dbias{};
  /// Entropy regulariser fused into dS; none by default.
  regularizer reg{};
};

}  // namespace attnkit
