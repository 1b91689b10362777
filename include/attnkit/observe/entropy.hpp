#pragma once
/// \file
/// Attention-entropy instrumentation (docs/entropy.md): an observer that turns the
/// streaming state the kernels already hold into per-row entropy statistics, and
/// per-(batch, head) summaries used to detect entropy collapse (Zhai et al. 2023),
/// entropic overload (Jha & Reagen 2025), attention sinks and over-concentration.
///
/// \code
///   attnkit::entropy_stats stats({.top_k = 8});
///   attnkit::attention(attnkit::softmax{}, q, k, v, out, opt, attnkit::observe(stats));
///   for (const auto& hs : stats.heads) std::printf("%lld %g\n", (long long)hs.head, hs.norm_entropy_mean);
/// \endcode
///
/// Definitions and conventions (natural log, nats):
///  * H_i = −Σ_j p_ij log p_ij over the categories of row i's distribution.
///    Categories: the n_i allowed keys, plus the gpt-oss sink logit when
///    `options.sinks` is used. The sink is a category of the distribution (it takes
///    probability mass), so it is included in H, and Ĥ is normalised by
///    log(n_i + 1) in that case.
///  * Ĥ_i = H_i / log c_i, c_i = number of categories (n_i, or n_i + 1 with a sink).
///    Ĥ ∈ [0, 1] up to rounding; n^Ĥ = e^H is the "effective number of keys"
///    (perplexity). Ĥ is undefined for c_i = 1 (0/0: a one-point distribution has
///    no spread to normalise by); the per-row vector holds 0 there by convention.
///  * Summary rule: per-head summaries of H (entropy_mean/min/max) use the rows
///    with c_i ≥ 1 (head_stats::rows); summaries of Ĥ (norm_entropy_mean/min/max/
///    std, the collapse / overload flags, the spreads, mean_norm_entropy()) use only
///    the rows with c_i ≥ 2 (head_stats::norm_rows). So under causal masking row 0,
///    which sees one key, does not pin norm_entropy_min at 0.
///  * Rows with n_i = 0 (fully masked — also with a sink, the kernel treats the row
///    as empty): H = Ĥ = NaN, LSE = −inf, first-token and top-k mass NaN, mass 0.
///    They are counted in head_stats::empty_rows and excluded from every mean,
///    min, max and rate. Rows with n_i ≥ 1 whose entropy is NaN (NaN logits) are
///    counted in head_stats::nan_rows and excluded likewise.
///  * lse_i: log of the row normaliser. Softmax: the log-sum-exp of the row's logits
///    (sink included), identical to options.lse. Unnormalised policies (sigmoid):
///    log of the row mass Σ_j w_j. With this convention the split/merge rule
///    (entropy_merge) is the same for both families.
///  * mass_i: total weight on the keys. Softmax: 1 − p_sink (1 without sinks).
///    Sigmoid: Σ_j w_j.
///  * first_prob_i: weight of key 0 after normalisation ("attention sink" mass in
///    the StreamingLLM sense), 0 when key 0 is masked for the row. top-k mass: sum of
///    the k largest key probabilities (the sink category is not a key). Both are
///    NaN for unnormalised policies: the observer sees the logit before the policy's
///    own bias (sigmoid b), so it cannot form the weight.
///  * Sigmoid/linear rows report the entropy of the row-normalised weights
///    w_j / Σ_k w_k, and the row mass.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "../core/options.hpp"
#include "../core/tensor_view.hpp"
#include "../core/validate.hpp"
#include "observer.hpp"

namespace attnkit {

/// Configuration of the entropy observer and of the per-head flags.
struct entropy_config {
  /// Track the mass of the k largest key probabilities per row (0: off; at most 256).
  int top_k = 0;
  /// A row is a "sink row" when its first-token probability exceeds ε (the
  /// ε = 0.3 convention of the attention-sink literature).
  double sink_epsilon = 0.3;
  /// A head is *collapsed* when its mean Ĥ < this. Ĥ = 0.1 means an effective
  /// support of n^0.1 keys: 2 keys out of 1024, 3 out of 32k — essentially one-hot
  /// attention, the regime Zhai et al. associate with training instability.
  double collapse_threshold = 0.1;
  /// A head is *overloaded* when its mean Ĥ > this: within γ = 0.2 (Jha & Reagen's
  /// tolerance) of the maximum entropy, i.e. 1 − γ. Ĥ = 0.8 means an effective
  /// support of n^0.8 keys (256 of 1024) spread almost evenly: nearly uniform,
  /// uninformative attention — their "entropic overload". Same default as the
  /// reference oracle's statistics(). Both flags use the head's mean Ĥ.
  double overload_threshold = 0.8;
};

/// Per-row entropy quantities of one row_state (see the file comment).
struct row_entropy {
  double entropy = std::numeric_limits<double>::quiet_NaN();       ///< H (nats)
  double norm_entropy = std::numeric_limits<double>::quiet_NaN();  ///< Ĥ
  double lse = -std::numeric_limits<double>::infinity();           ///< log normaliser
  double first_prob = std::numeric_limits<double>::quiet_NaN();    ///< weight of key 0
  double topk_mass = std::numeric_limits<double>::quiet_NaN();     ///< mass of the k largest keys
  double mass = 0;                                                 ///< weight on the keys
  index_t allowed = 0;                                             ///< n_i
};

/// Ĥ = H / log(categories); 0 for one category, NaN for none.
inline double normalized_entropy(double entropy, index_t categories) noexcept {
  if (categories <= 0) return std::numeric_limits<double>::quiet_NaN();
  if (categories == 1) return entropy != entropy ? entropy : 0.0;
  return entropy / std::log(static_cast<double>(categories));
}

/// Entropy H of the row described by `st` (softmax: sink included as a category;
/// unnormalised: entropy of the normalised weights). NaN for an empty row.
/// `top_k`: how many of st.top_k to sum into topk_mass (0: topk_mass stays NaN).
inline row_entropy row_entropy_of(const row_state& st, int top_k = 0) noexcept {
  constexpr double nan = std::numeric_limits<double>::quiet_NaN();
  constexpr double inf = std::numeric_limits<double>::infinity();
  row_entropy r;
  r.allowed = st.allowed;
  if (st.allowed <= 0) return r;  // empty row: NaN / −inf / 0 (see the file comment)
  if (!st.normalized) {
    const double s = st.sum;
    r.mass = s;
    r.lse = std::log(s);
    r.entropy = s > 0 ? std::log(s) - st.tsum / s : nan;
    if (s > 0 && st.allowed == 1) r.entropy = 0.0;
    r.norm_entropy = normalized_entropy(r.entropy, st.allowed);
    return r;  // first_prob / topk_mass: NaN (policy bias unknown here)
  }
  const double m = st.max, l = st.sum, t = st.tsum, sigma = st.sink_logit_mass;
  if (m == -inf || !(l > 0)) {  // no visible weight although n_i ≥ 1: treat as empty
    if (m != m || l != l) r.entropy = r.norm_entropy = r.lse = nan;
    return r;
  }
  index_t categories = st.allowed;
  if (sigma > 0) {
    // Sink as one more category with logit m + log σ. Re-centre on M = max(m, sink)
    // so every term stays non-negative: H = log L − (t' + σ' log σ')/L.
    ++categories;
    if (sigma == inf) {  // the sink takes all the mass
      r.entropy = 0.0;
      r.norm_entropy = 0.0;
      r.lse = inf;
      r.mass = 0.0;
      r.first_prob = 0.0;
      if (top_k > 0) r.topk_mass = 0.0;
      return r;
    }
    const double a = std::log(sigma);  // sink − m
    const double shift = std::max(0.0, a);
    const double e = std::exp(-shift);
    const double l2 = l * e, t2 = e * (t - shift * l), s2 = std::exp(a - shift);
    const double L = l2 + s2;
    // log L: the larger of l2, s2 is ≥ 1 (the max term); log1p keeps a tiny
    // remainder exact when the sink dominates.
    const double logL = shift > 0 ? std::log1p(l2) : std::log(L);
    r.entropy = logL - (t2 + s2 * (a - shift)) / L;
    r.lse = m + shift + logL;
    r.mass = l2 / L;
  } else {
    r.entropy = std::log(l) - t / l;
    r.lse = m + std::log(l);
    r.mass = 1.0;
  }
  r.norm_entropy = normalized_entropy(r.entropy, categories);
  r.first_prob = st.first_logit == -inf ? 0.0 : std::exp(st.first_logit - r.lse);
  if (top_k > 0) {
    double s = 0;
    const int n = std::min(top_k, st.top_k_count);
    for (int c = 0; c < n && st.top_k; ++c) s += std::exp(static_cast<double>(st.top_k[c]) - r.lse);
    r.topk_mass = s;
  }
  return r;
}

/// Entropy H of the row described by `st` (see row_entropy_of).
inline double entropy_of(const row_state& st) noexcept { return row_entropy_of(st).entropy; }

/// One partial result over a subset of a row's categories: its log normaliser and
/// the entropy of its own (renormalised) distribution.
struct entropy_part {
  double lse = -std::numeric_limits<double>::infinity();
  double entropy = std::numeric_limits<double>::quiet_NaN();
};

/// Exact merge of two partials over disjoint category sets (grouping rule):
///   lse = logaddexp(lse_1, lse_2),  w_k = e^{lse_k − lse},
///   H = Σ_k w_k H_k − Σ_k w_k log w_k   (log w_k = lse_k − lse, taken exactly).
/// A part with lse = −inf contributes nothing; two empty parts give {−inf, NaN}.
/// Works for softmax (lse = log-sum-exp) and for unnormalised weights (lse = log mass).
inline entropy_part entropy_merge(entropy_part a, entropy_part b) noexcept {
  constexpr double inf = std::numeric_limits<double>::infinity();
  if (a.lse == -inf) return b;
  if (b.lse == -inf) return a;
  if (a.lse != a.lse || b.lse != b.lse) return {std::numeric_limits<double>::quiet_NaN(), a.entropy + b.entropy};
  const double hi = std::max(a.lse, b.lse), lo = std::min(a.lse, b.lse);
  const double lse = hi + std::log1p(std::exp(lo - hi));
  const double la = a.lse - lse, lb = b.lse - lse;  // log w
  const double wa = std::exp(la), wb = std::exp(lb);
  const double ha = wa > 0 ? wa * a.entropy - wa * la : 0.0;
  const double hb = wb > 0 ? wb * b.entropy - wb * lb : 0.0;
  return {lse, ha + hb};
}

/// Summary of the rows of one (batch, head) — or of one head over all batches
/// (entropy_stats::pooled_heads, batch = −1). Rows with n_i = 0 or a NaN entropy
/// are excluded from every statistic (counted in empty_rows / nan_rows); the Ĥ
/// statistics and the flags use only the `norm_rows` rows with ≥ 2 categories
/// (see the file comment).
struct head_stats {
  index_t batch = 0, head = 0;
  index_t rows = 0;        ///< rows that entered the statistics of H, mass, sink, top-k
  index_t norm_rows = 0;   ///< rows with ≥ 2 categories: those of the Ĥ statistics and flags
  index_t empty_rows = 0;  ///< rows with n_i = 0
  index_t nan_rows = 0;    ///< rows with n_i ≥ 1 and NaN entropy (NaN logits)
  double entropy_mean = std::numeric_limits<double>::quiet_NaN();
  double entropy_min = std::numeric_limits<double>::quiet_NaN();
  double entropy_max = std::numeric_limits<double>::quiet_NaN();
  double norm_entropy_mean = std::numeric_limits<double>::quiet_NaN();
  double norm_entropy_min = std::numeric_limits<double>::quiet_NaN();
  double norm_entropy_max = std::numeric_limits<double>::quiet_NaN();
  double norm_entropy_std = std::numeric_limits<double>::quiet_NaN();  ///< across rows
  double sink_mass = std::numeric_limits<double>::quiet_NaN();  ///< mean first-token probability
  double sink_rate = std::numeric_limits<double>::quiet_NaN();  ///< fraction of rows with first_prob > ε
  double topk_mass = std::numeric_limits<double>::quiet_NaN();  ///< mean top-k mass (NaN: top_k = 0)
  double mass_mean = std::numeric_limits<double>::quiet_NaN();  ///< mean row mass (softmax: 1 − p_sink)
  bool sink = false;        ///< sink head: sink_mass > sink_epsilon
  bool collapsed = false;   ///< norm_entropy_mean < collapse_threshold (false without norm_rows)
  bool overloaded = false;  ///< norm_entropy_mean > overload_threshold (false without norm_rows)
};

/// Entropy statistics of one attention call (one "layer"). Per-row vectors are
/// indexed [B, Hq, Lq] row-major (index()); per-head summaries [B, Hq].
class entropy_stats {
 public:
  entropy_stats() = default;
  explicit entropy_stats(entropy_config cfg, std::optional<int> layer_index = {})
      : config(cfg), layer(layer_index) {}

  entropy_config config{};
  std::optional<int> layer{};  ///< optional layer index, used by the report writers

  // Shape of the last call (set by begin()).
  index_t batch = 0, heads_count = 0, q_len = 0, k_len = 0;
  bool normalized = true;  ///< softmax family (from the rows received)
  bool has_sink = false;   ///< options.sinks was used: the sink is a category

  // Per row, [B, Hq, Lq] row-major.
  std::vector<double> entropy, norm_entropy, lse, first_prob, topk_mass, mass;
  std::vector<index_t> allowed;  ///< n_i; −1 until the row is reported

  // Summaries (end() / summarize()).
  std::vector<head_stats> heads;         ///< [B, Hq]
  std::vector<head_stats> pooled_heads;  ///< [Hq], all batches together (batch = −1)
  std::vector<double> head_spread;       ///< [B]: std across heads of the head means of Ĥ
  double spread = std::numeric_limits<double>::quiet_NaN();  ///< same over pooled_heads
  /// Share of the pooled heads (with counted rows) that are sink heads.
  double sink_head_rate = std::numeric_limits<double>::quiet_NaN();

  // Bookkeeping of the observer contract (checked by the tests).
  int begin_calls = 0, end_calls = 0;
  index_t rows_reported = 0;  ///< on_row calls that landed in a slot
  index_t rows_dropped = 0;   ///< on_row calls before begin() or out of range
  index_t rows_missing = 0;   ///< slots never filled (at end())
  /// begin() and end() were called and every row was reported exactly once.
  bool complete() const noexcept {
    return begin_calls > 0 && end_calls == begin_calls && rows_dropped == 0 && rows_missing == 0 &&
           rows_reported == size();
  }

  index_t size() const noexcept { return batch * heads_count * q_len; }
  index_t index(index_t b, index_t h, index_t i) const noexcept { return (b * heads_count + h) * q_len + i; }
  const head_stats& head(index_t b, index_t h) const { return heads.at(static_cast<std::size_t>(b * heads_count + h)); }

  /// Mean Ĥ over every row of the call with ≥ 2 categories (NaN if none).
  double mean_norm_entropy() const noexcept { return mean_of(norm_entropy, 2); }
  /// Mean H over every row of the call with ≥ 1 allowed key (NaN if none).
  double mean_entropy() const noexcept { return mean_of(entropy, 1); }

  /// Categories of row slot k: n_i, plus the sink when options.sinks was used.
  index_t categories(std::size_t k) const noexcept {
    return allowed[k] <= 0 ? 0 : allowed[k] + (has_sink && normalized ? 1 : 0);
  }

  /// Sizes the per-row storage for a call of this shape and clears everything.
  void reset(index_t b, index_t h, index_t lq, index_t lk = 0) {
    batch = b, heads_count = h, q_len = lq, k_len = lk;
    const auto n = static_cast<std::size_t>(size());
    constexpr double nan = std::numeric_limits<double>::quiet_NaN();
    for (auto* v : {&entropy, &norm_entropy, &first_prob, &topk_mass}) v->assign(n, nan);
    lse.assign(n, -std::numeric_limits<double>::infinity());
    mass.assign(n, 0.0);
    allowed.assign(n, -1);
    heads.clear();
    pooled_heads.clear();
    head_spread.clear();
    spread = sink_head_rate = nan;
    rows_reported = rows_dropped = rows_missing = 0;
    normalized = true;
  }

  /// Stores one row (slot index(b, h, i)).
  void store(index_t idx, const row_entropy& r) noexcept {
    const auto s = static_cast<std::size_t>(idx);
    entropy[s] = r.entropy;
    norm_entropy[s] = r.norm_entropy;
    lse[s] = r.lse;
    first_prob[s] = r.first_prob;
    topk_mass[s] = r.topk_mass;
    mass[s] = r.mass;
    allowed[s] = r.allowed;
  }

  /// Recomputes heads, pooled_heads, head_spread and spread from the per-row vectors.
  void summarize() {
    heads.assign(static_cast<std::size_t>(batch * heads_count), {});
    pooled_heads.assign(static_cast<std::size_t>(heads_count), {});
    head_spread.assign(static_cast<std::size_t>(batch), std::numeric_limits<double>::quiet_NaN());
    std::vector<acc> pooled(static_cast<std::size_t>(heads_count));
    for (index_t b = 0; b < batch; ++b) {
      std::vector<double> means;
      for (index_t h = 0; h < heads_count; ++h) {
        acc a;
        for (index_t i = 0; i < q_len; ++i) {
          a.add(*this, index(b, h, i));
          pooled[static_cast<std::size_t>(h)].add(*this, index(b, h, i));
        }
        head_stats& hs = heads[static_cast<std::size_t>(b * heads_count + h)];
        a.finish(hs, config);
        hs.batch = b;
        hs.head = h;
        if (hs.norm_rows > 0) means.push_back(hs.norm_entropy_mean);
      }
      head_spread[static_cast<std::size_t>(b)] = stddev(means);
    }
    std::vector<double> means;
    double sinks = 0, counted = 0;
    for (index_t h = 0; h < heads_count; ++h) {
      head_stats& hs = pooled_heads[static_cast<std::size_t>(h)];
      pooled[static_cast<std::size_t>(h)].finish(hs, config);
      hs.batch = -1;
      hs.head = h;
      if (hs.norm_rows > 0) means.push_back(hs.norm_entropy_mean);
      if (hs.rows > 0) sinks += hs.sink, counted += 1;
    }
    spread = stddev(means);
    sink_head_rate = counted > 0 ? sinks / counted : std::numeric_limits<double>::quiet_NaN();
  }

 private:
  // Accumulator of one head's rows.
  struct acc {
    index_t rows = 0, norm_rows = 0, empty = 0, nans = 0, sink_rows = 0, first_rows = 0, topk_rows = 0;
    double h = 0, hmin = std::numeric_limits<double>::infinity(), hmax = -std::numeric_limits<double>::infinity();
    double hn = 0, hn2 = 0, hnmin = std::numeric_limits<double>::infinity(),
           hnmax = -std::numeric_limits<double>::infinity();
    double first = 0, topk = 0, mass = 0;
    double eps = 0.3;
    void add(const entropy_stats& s, index_t idx) {
      const auto k = static_cast<std::size_t>(idx);
      eps = s.config.sink_epsilon;
      if (s.allowed[k] <= 0) {
        ++empty;
        return;
      }
      const double H = s.entropy[k], Hn = s.norm_entropy[k];
      if (H != H || Hn != Hn) {
        ++nans;
        return;
      }
      ++rows;
      h += H, hmin = std::min(hmin, H), hmax = std::max(hmax, H);
      if (s.categories(k) >= 2) {  // Ĥ is defined only with two or more categories
        ++norm_rows;
        hn += Hn, hn2 += Hn * Hn, hnmin = std::min(hnmin, Hn), hnmax = std::max(hnmax, Hn);
      }
      mass += s.mass[k];
      if (const double f = s.first_prob[k]; f == f) {
        ++first_rows;
        first += f;
        sink_rows += f > s.config.sink_epsilon;
      }
      if (const double t = s.topk_mass[k]; t == t) {
        ++topk_rows;
        topk += t;
      }
    }
    void finish(head_stats& hs, const entropy_config& cfg) const {
      hs.rows = rows;
      hs.norm_rows = norm_rows;
      hs.empty_rows = empty;
      hs.nan_rows = nans;
      if (rows == 0) return;
      const double n = static_cast<double>(rows);
      hs.entropy_mean = h / n, hs.entropy_min = hmin, hs.entropy_max = hmax;
      if (norm_rows > 0) {
        const double nn = static_cast<double>(norm_rows);
        hs.norm_entropy_mean = hn / nn, hs.norm_entropy_min = hnmin, hs.norm_entropy_max = hnmax;
        hs.norm_entropy_std = std::sqrt(std::max(0.0, hn2 / nn - (hn / nn) * (hn / nn)));
        hs.collapsed = hs.norm_entropy_mean < cfg.collapse_threshold;
        hs.overloaded = hs.norm_entropy_mean > cfg.overload_threshold;
      }
      hs.mass_mean = mass / n;
      if (first_rows > 0) {
        hs.sink_mass = first / static_cast<double>(first_rows);
        hs.sink_rate = static_cast<double>(sink_rows) / static_cast<double>(first_rows);
      }
      if (topk_rows > 0) hs.topk_mass = topk / static_cast<double>(topk_rows);
      hs.sink = hs.sink_mass > cfg.sink_epsilon;  // false when sink_mass is NaN
    }
  };

  static double stddev(const std::vector<double>& x) {
    if (x.empty()) return std::numeric_limits<double>::quiet_NaN();
    double m = 0;
    for (double v : x) m += v;
    m /= static_cast<double>(x.size());
    double s = 0;
    for (double v : x) s += (v - m) * (v - m);
    return std::sqrt(s / static_cast<double>(x.size()));  // population std
  }

  double mean_of(const std::vector<double>& v, index_t min_categories) const noexcept {
    double s = 0;
    index_t n = 0;
    for (std::size_t k = 0; k < v.size(); ++k)
      if (categories(k) >= min_categories && entropy[k] == entropy[k] && norm_entropy[k] == norm_entropy[k])
        s += v[k], ++n;
    return n ? s / static_cast<double>(n) : std::numeric_limits<double>::quiet_NaN();
  }
};

/// The observer returned by observe(stats): fills `stats` during an attention call.
/// begin() sizes the storage, on_row() writes the row's own slot (rows are
/// distinct, so no lock), end() computes the summaries.
class entropy_observer {
 public:
  static constexpr bool enabled = true;
  static constexpr bool wants_entropy = true;
  static constexpr bool wants_first_logit = true;

  explicit entropy_observer(entropy_stats& s) noexcept : s_(&s) {}
  entropy_observer(const entropy_observer&) = delete;
  entropy_observer& operator=(const entropy_observer&) = delete;

  int top_k() const noexcept { return std::clamp(s_->config.top_k, 0, 256); }

  void begin(const problem_shape& shape, const options& opt) {
    s_->reset(shape.batch, shape.q_heads, shape.q_len, shape.k_len);
    s_->has_sink = !opt.sinks.empty();
    ++s_->begin_calls;
    reported_.store(0, std::memory_order_relaxed);
    dropped_.store(0, std::memory_order_relaxed);
    non_normalized_.store(false, std::memory_order_relaxed);
  }

  void on_row(const row_state& st) noexcept {
    entropy_stats& s = *s_;
    const bool in_range = st.batch >= 0 && st.batch < s.batch && st.head >= 0 && st.head < s.heads_count &&
                          st.row >= 0 && st.row < s.q_len;
    if (!in_range || s.allowed.size() != static_cast<std::size_t>(s.size())) {  // begin() not called
      dropped_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    if (!st.normalized) non_normalized_.store(true, std::memory_order_relaxed);
    s.store(s.index(st.batch, st.head, st.row), row_entropy_of(st, top_k()));
    reported_.fetch_add(1, std::memory_order_relaxed);
  }

  void end() {
    entropy_stats& s = *s_;
    ++s.end_calls;
    s.rows_reported = reported_.load();
    s.rows_dropped = dropped_.load();
    s.normalized = !non_normalized_.load();
    s.rows_missing = static_cast<index_t>(std::count(s.allowed.begin(), s.allowed.end(), index_t{-1}));
    s.summarize();
  }

 private:
  entropy_stats* s_;
  std::atomic<index_t> reported_{0}, dropped_{0};
  std::atomic<bool> non_normalized_{false};
};

/// The entropy observer for `stats`, to pass as the last argument of attention():
///   attnkit::attention(pol, q, k, v, out, opt, attnkit::observe(stats));
inline entropy_observer observe(entropy_stats& stats) noexcept { return entropy_observer(stats); }

/// Row-wise merge of two calls over disjoint key sets of the same queries (split-KV,
/// chunked prefill, ring attention): H and lse by entropy_merge, n_i added, mass
/// combined with the weights w_k (sigmoid: added). `a` must be the part holding the
/// sequence's key 0: the merged first-token probability is w_a · first_prob_a (b's
/// "first" key is not the sequence's first token). top-k mass is
/// not mergeable from the parts' masses and becomes NaN. If sinks were used, the
/// sink must be in exactly one part (as for merge_partials). Summaries recomputed.
inline entropy_stats entropy_merge(const entropy_stats& a, const entropy_stats& b) {
  if (a.batch != b.batch || a.heads_count != b.heads_count || a.q_len != b.q_len || a.size() != b.size() ||
      a.allowed.size() != static_cast<std::size_t>(a.size()) || b.allowed.size() != a.allowed.size())
    throw std::invalid_argument("attnkit::entropy_merge: the two entropy_stats have different shapes");
  entropy_stats r(a.config, a.layer);
  r.reset(a.batch, a.heads_count, a.q_len, a.k_len + b.k_len);
  r.has_sink = a.has_sink || b.has_sink;
  r.normalized = a.normalized && b.normalized;
  r.begin_calls = r.end_calls = 1;
  const bool normalized = r.normalized;
  for (std::size_t k = 0; k < a.allowed.size(); ++k) {
    const index_t na = std::max<index_t>(0, a.allowed[k]), nb = std::max<index_t>(0, b.allowed[k]);
    row_entropy x;
    x.allowed = na + nb;
    if (x.allowed > 0) {
      const entropy_part pa = na ? entropy_part{a.lse[k], a.entropy[k]} : entropy_part{};
      const entropy_part pb = nb ? entropy_part{b.lse[k], b.entropy[k]} : entropy_part{};
      const entropy_part m = entropy_merge(pa, pb);
      x.entropy = m.entropy;
      x.lse = m.lse;
      x.norm_entropy = normalized_entropy(m.entropy, x.allowed + (r.has_sink && normalized ? 1 : 0));
      const double wa = na ? std::exp(a.lse[k] - m.lse) : 0.0, wb = nb ? std::exp(b.lse[k] - m.lse) : 0.0;
      if (normalized) {
        x.mass = wa * (na ? a.mass[k] : 0.0) + wb * (nb ? b.mass[k] : 0.0);
        x.first_prob = na ? wa * a.first_prob[k] : 0.0;  // key 0 lives in part `a`
      } else {
        x.mass = (na ? a.mass[k] : 0.0) + (nb ? b.mass[k] : 0.0);
      }
    }
    r.store(static_cast<index_t>(k), x);
  }
  r.rows_reported = r.size();
  r.summarize();
  return r;
}

}  // namespace attnkit
