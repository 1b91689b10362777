// Variants defined in custom_variants.hpp — outside the library — run through
// attnkit::attention() at kernel speed. Each is checked here against the float64
// oracle evaluated from the SAME definition, and each reports its attention entropy
// through the ordinary observer (feature maps of linear attention: through the
// exact entropy diagnostic, kernelized_entropy). (bench/bench_custom.cpp times each beside the
// built-in variant doing the same work.) Exits non-zero when a check fails.
#include <attnkit/reference/reference.hpp>

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "custom_variants.hpp"

namespace {

using attnkit::index_t;

struct tensors {
  index_t B = 1, Hq = 4, Hkv = 2, N = 777, D = 64;
  std::vector<float> q, k, v;
  tensors() {
    std::mt19937 gen(2026);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (auto* x : {&q, &k, &v}) {
      x->resize(static_cast<std::size_t>(B * (x == &q ? Hq : Hkv) * N * D));
      for (auto& e : *x) e = nd(gen);
    }
  }
};

/// Kernel vs oracle (relative to max |oracle|) and kernel entropy vs oracle entropy.
template <class Policy>
bool check(const char* name, const Policy& pol, const tensors& t, const attnkit::options& opt) {
  const auto q = attnkit::bhsd(t.q.data(), t.B, t.Hq, t.N, t.D);
  const auto k = attnkit::bhsd(t.k.data(), t.B, t.Hkv, t.N, t.D);
  const auto v = attnkit::bhsd(t.v.data(), t.B, t.Hkv, t.N, t.D);
  std::vector<float> out(t.q.size());
  std::vector<double> ref(t.q.size());
  attnkit::entropy_stats stats;
  attnkit::attention(pol, q, k, v, attnkit::bhsd(out.data(), t.B, t.Hq, t.N, t.D), opt, attnkit::observe(stats));
  const auto r = attnkit::reference::attention(pol, q, k, v, attnkit::bhsd(ref.data(), t.B, t.Hq, t.N, t.D), opt);
  double scale = 1e-30, err = 0, herr = 0, hmean = 0;
  for (double x : ref) scale = std::max(scale, std::abs(x));
  for (std::size_t i = 0; i < out.size(); ++i) err = std::max(err, std::abs(out[i] - ref[i]) / scale);
  // Rows without weight (e.g. ReLU rows whose logits are all negative) have no
  // entropy: NaN in both, compared as such.
  bool same_nan = true;
  index_t rows = 0;
  for (std::size_t i = 0; i < r.entropy.size(); ++i) {
    same_nan = same_nan && std::isnan(stats.entropy[i]) == std::isnan(r.entropy[i]);
    if (std::isnan(r.entropy[i])) continue;
    herr = std::max(herr, std::abs(stats.entropy[i] - r.entropy[i]));
    hmean += stats.entropy[i];
    ++rows;
  }
  hmean /= static_cast<double>(std::max<index_t>(rows, 1));
  const bool ok = err <= 2e-5 && herr <= 1e-4 && same_nan && stats.complete();
  std::printf("%-28s max error %.2e of max|oracle|, entropy error %.2e (mean H %.3f nats)  %s\n", name, err, herr,
              hmean, ok ? "ok" : "FAILED");
  return ok;
}

/// A feature map in linear attention: kernel vs oracle (relative to max |oracle|),
/// and the exact entropy diagnostic vs the oracle's row entropy.
template <class Map>
bool check_features(const char* name, const Map& phi, const tensors& t, const attnkit::options& opt) {
  const auto q = attnkit::bhsd(t.q.data(), t.B, t.Hq, t.N, t.D);
  const auto k = attnkit::bhsd(t.k.data(), t.B, t.Hkv, t.N, t.D);
  const auto v = attnkit::bhsd(t.v.data(), t.B, t.Hkv, t.N, t.D);
  const attnkit::linear pol{phi};
  std::vector<float> out(t.q.size());
  std::vector<double> ref(t.q.size());
  attnkit::attention(pol, q, k, v, attnkit::bhsd(out.data(), t.B, t.Hq, t.N, t.D), opt);
  const auto r = attnkit::reference::attention(pol, q, k, v, attnkit::bhsd(ref.data(), t.B, t.Hq, t.N, t.D), opt);
  attnkit::entropy_stats stats;
  attnkit::kernelized_entropy(pol, q, k, v, opt, attnkit::observe(stats));
  double scale = 1e-30, err = 0, herr = 0, hmean = 0;
  for (double x : ref) scale = std::max(scale, std::abs(x));
  for (std::size_t i = 0; i < out.size(); ++i) err = std::max(err, std::abs(out[i] - ref[i]) / scale);
  bool same_nan = true;  // a row whose weights are all 0 (relu² can do that) has no entropy
  index_t rows = 0;
  for (std::size_t i = 0; i < r.entropy.size(); ++i) {
    same_nan = same_nan && std::isnan(stats.entropy[i]) == std::isnan(r.entropy[i]);
    if (std::isnan(r.entropy[i])) continue;
    herr = std::max(herr, std::abs(stats.entropy[i] - r.entropy[i]));
    hmean += stats.entropy[i];
    ++rows;
  }
  hmean /= static_cast<double>(std::max<index_t>(rows, 1));
  const bool ok = err <= 2e-5 && herr <= 1e-4 && same_nan && stats.complete();
  std::printf("%-28s max error %.2e of max|oracle|, entropy error %.2e (mean H %.3f nats)  %s\n", name, err, herr,
              hmean, ok ? "ok" : "FAILED");
  return ok;
}

}  // namespace

int main() {
  const tensors t;
  bool ok = true;
  attnkit::options causal;
  causal.causal = attnkit::causal::top_left;
  ok = check("softplus (l1-normalised)", custom::softplus_attention{}, t, {}) && ok;
  ok = check("softplus, causal", custom::softplus_attention{}, t, causal) && ok;
  ok = check("relu / Lk", custom::relu_attention{}, t, {}) && ok;
  ok = check("relu / Lk, causal", custom::relu_attention{}, t, causal) && ok;
  const auto first = custom::document_starts({100, 37, 250, 390});
  ok = check("document mask (softmax)", attnkit::sparse{custom::document_causal{first.data()}}, t, {}) && ok;
  ok = check("document mask (softplus)",
             attnkit::sparse{custom::document_causal{first.data()}, custom::softplus_attention{}}, t, {}) && ok;
  ok = check_features("linear, relu^2 features", custom::relu_squared_features{}, t, {}) && ok;
  ok = check_features("linear, relu^2, causal", custom::relu_squared_features{}, t, causal) && ok;
  const auto W = attnkit::feature::orthogonal_projection(96, t.D, 5);  // stands in for a trained matrix
  ok = check_features("linear, learned features", custom::learned_positive_features{W.data(), 96}, t, causal) && ok;
  std::puts(ok ? "all custom variants match the oracle" : "a custom variant FAILED");
  return ok ? 0 : 1;
}
