// A small GPT-style decoder on attnkit's KV-cache entry point: two layers of
// rotary (RoPE) grouped-query attention (8 query heads over 2 K/V heads) plus an
// MLP, each layer with its own paged K/V cache (pages of 16 tokens, handed out in
// a shuffled order, as a serving engine's allocator would). Two sequences: a
// 21-token prompt each (one prefill call per layer), then 50 decode steps, each
// appending one token per layer through attention_with_kv_cache. The result is
// checked against a naive float64 model that recomputes the whole sequence with
// causal attention at every position: the program exits non-zero if they differ.
#include <attnkit/attnkit.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

namespace {

using attnkit::index_t;

constexpr index_t B = 2, model = 64, Hq = 8, Hkv = 2, D = 16, hidden = 128, layers = 2;
constexpr index_t prompt = 21, steps = 50, total = prompt + steps;
constexpr index_t page_size = 16, max_pages = (total + page_size - 1) / page_size;

using matrix = std::vector<float>;  // row-major [rows, cols]

matrix random_matrix(index_t rows, index_t cols, std::mt19937& gen) {
  std::normal_distribution<float> nd(0.0f, 1.0f / std::sqrt(static_cast<float>(rows)));
  matrix m(static_cast<std::size_t>(rows * cols));
  for (auto& x : m) x = nd(gen);
  return m;
}

/// y[cols] = x[rows] · W[rows, cols] (double accumulation: the model's arithmetic
/// around attention is the same in both runs, so their difference is attention's).
template <class T>
void matvec(const T* x, const matrix& w, index_t rows, index_t cols, T* y) {
  for (index_t c = 0; c < cols; ++c) {
    double s = 0;
    for (index_t r = 0; r < rows; ++r) s += static_cast<double>(x[r]) * w[static_cast<std::size_t>(r * cols + c)];
    y[c] = static_cast<T>(s);
  }
}

struct layer_weights {
  matrix wq, wk, wv, wo, w1, w2;
};

/// One sequence position through a layer's MLP: x += W2·relu(W1·x).
template <class T>
void mlp(const layer_weights& w, T* x) {
  std::vector<T> h(static_cast<std::size_t>(hidden)), y(static_cast<std::size_t>(model));
  matvec(x, w.w1, model, hidden, h.data());
  for (auto& e : h) e = std::max<T>(e, 0);
  matvec(h.data(), w.w2, hidden, model, y.data());
  for (index_t i = 0; i < model; ++i) x[i] += y[static_cast<std::size_t>(i)];
}

/// The input of the next token: a fixed function of the last output (stands in
/// for sampling a token and embedding it).
template <class T>
void next_input(const T* out, T* x) {
  for (index_t i = 0; i < model; ++i) x[i] = static_cast<T>(std::tanh(2.0 * out[(i * 7) % model]));
}

struct rope {
  std::vector<float> cos, sin;
  rope() {
    for (index_t p = 0; p < total; ++p)
      for (index_t i = 0; i < D / 2; ++i) {
        const double th = static_cast<double>(p) * std::pow(10000.0, -2.0 * static_cast<double>(i) / D);
        cos.push_back(static_cast<float>(std::cos(th)));
        sin.push_back(static_cast<float>(std::sin(th)));
      }
  }
  attnkit::rotary_embedding tables() const { return {cos.data(), sin.data(), total, D, false}; }
  /// Half-split rotation (GPT-NeoX / Llama), in double for the reference.
  void apply(double* x, index_t p) const {
    for (index_t i = 0; i < D / 2; ++i) {
      const double c = cos[static_cast<std::size_t>(p * D / 2 + i)], s = sin[static_cast<std::size_t>(p * D / 2 + i)];
      const double a = x[i], b = x[i + D / 2];
      x[i] = a * c - b * s;
      x[i + D / 2] = a * s + b * c;
    }
  }
};

/// The model with paged KV caches, run token block by token block.
struct cached_model {
  const std::vector<layer_weights>& w;
  const rope& r;
  std::vector<std::vector<float>> k_pool, v_pool;  // per layer: [pages, page_size, Hkv, D]
  std::vector<std::int32_t> table;                 // [B, max_pages], shared by the layers' pools
  std::vector<std::int64_t> seqlens = std::vector<std::int64_t>(B, 0);
  index_t pages = B * max_pages;

  cached_model(const std::vector<layer_weights>& weights, const rope& rr, std::mt19937& gen) : w(weights), r(rr) {
    for (index_t l = 0; l < layers; ++l) {
      k_pool.emplace_back(static_cast<std::size_t>(pages * page_size * Hkv * D));
      v_pool.emplace_back(k_pool.back().size());
    }
    table.resize(static_cast<std::size_t>(B * max_pages));
    std::iota(table.begin(), table.end(), 0);
    std::shuffle(table.begin(), table.end(), gen);  // pages scattered over the pool
  }

  /// Runs n new tokens per sequence (x: [B, n, model], updated in place).
  void forward(std::vector<float>& x, index_t n) {
    std::vector<float> q(static_cast<std::size_t>(B * n * Hq * D)), k(static_cast<std::size_t>(B * n * Hkv * D)),
        v(k.size()), att(q.size()), proj(static_cast<std::size_t>(model));
    for (index_t l = 0; l < layers; ++l) {
      const layer_weights& lw = w[static_cast<std::size_t>(l)];
      for (index_t t = 0; t < B * n; ++t) {  // BSHD rows: token t of every head
        matvec(x.data() + t * model, lw.wq, model, Hq * D, q.data() + t * Hq * D);
        matvec(x.data() + t * model, lw.wk, model, Hkv * D, k.data() + t * Hkv * D);
        matvec(x.data() + t * model, lw.wv, model, Hkv * D, v.data() + t * Hkv * D);
      }
      attnkit::kv_cache_options o;
      o.cache_seqlens = seqlens;
      o.block_table = table;
      o.k_new = attnkit::bshd(static_cast<const float*>(k.data()), B, n, Hkv, D);
      o.v_new = attnkit::bshd(static_cast<const float*>(v.data()), B, n, Hkv, D);
      o.rotary = r.tables();  // q and the new keys rotated to their positions
      attnkit::attention_with_kv_cache(attnkit::softmax{}, attnkit::bshd(static_cast<const float*>(q.data()), B, n, Hq, D),
                                       attnkit::paged(k_pool[static_cast<std::size_t>(l)].data(), pages, page_size, Hkv, D),
                                       attnkit::paged(v_pool[static_cast<std::size_t>(l)].data(), pages, page_size, Hkv, D),
                                       attnkit::bshd(att.data(), B, n, Hq, D), o);
      for (index_t t = 0; t < B * n; ++t) {
        matvec(att.data() + t * Hq * D, lw.wo, Hq * D, model, proj.data());
        for (index_t i = 0; i < model; ++i) x[static_cast<std::size_t>(t * model + i)] += proj[static_cast<std::size_t>(i)];
        mlp(lw, x.data() + t * model);
      }
    }
    for (auto& s : seqlens) s += n;
  }
};

/// The naive model: every position of the sequence recomputed with causal attention
/// over all earlier positions, in double.
std::vector<double> reference(const std::vector<layer_weights>& w, const rope& r, const std::vector<float>& inputs) {
  std::vector<double> x(inputs.begin(), inputs.end());  // [B, total, model]
  for (index_t l = 0; l < layers; ++l) {
    const layer_weights& lw = w[static_cast<std::size_t>(l)];
    std::vector<double> q(static_cast<std::size_t>(B * total * Hq * D)), k(static_cast<std::size_t>(B * total * Hkv * D)),
        v(k.size()), att(q.size());
    for (index_t t = 0; t < B * total; ++t) {
      matvec(x.data() + t * model, lw.wq, model, Hq * D, q.data() + t * Hq * D);
      matvec(x.data() + t * model, lw.wk, model, Hkv * D, k.data() + t * Hkv * D);
      matvec(x.data() + t * model, lw.wv, model, Hkv * D, v.data() + t * Hkv * D);
      for (index_t h = 0; h < Hq; ++h) r.apply(q.data() + (t * Hq + h) * D, t % total);
      for (index_t g = 0; g < Hkv; ++g) r.apply(k.data() + (t * Hkv + g) * D, t % total);
    }
    for (index_t b = 0; b < B; ++b)
      for (index_t i = 0; i < total; ++i)
        for (index_t h = 0; h < Hq; ++h) {
          const index_t g = h / (Hq / Hkv);
          const double* qi = q.data() + ((b * total + i) * Hq + h) * D;
          std::vector<double> s(static_cast<std::size_t>(i + 1));
          double m = -1e300, sum = 0;
          for (index_t j = 0; j <= i; ++j) {
            double dot = 0;
            for (index_t d = 0; d < D; ++d) dot += qi[d] * k[static_cast<std::size_t>(((b * total + j) * Hkv + g) * D + d)];
            s[static_cast<std::size_t>(j)] = dot / std::sqrt(static_cast<double>(D));
            m = std::max(m, s[static_cast<std::size_t>(j)]);
          }
          for (auto& e : s) sum += (e = std::exp(e - m));
          double* o = att.data() + ((b * total + i) * Hq + h) * D;
          for (index_t j = 0; j <= i; ++j)
            for (index_t d = 0; d < D; ++d)
              o[d] += s[static_cast<std::size_t>(j)] / sum * v[static_cast<std::size_t>(((b * total + j) * Hkv + g) * D + d)];
        }
    std::vector<double> proj(static_cast<std::size_t>(model));
    for (index_t t = 0; t < B * total; ++t) {
      matvec(att.data() + t * Hq * D, lw.wo, Hq * D, model, proj.data());
      for (index_t i = 0; i < model; ++i) x[static_cast<std::size_t>(t * model + i)] += proj[static_cast<std::size_t>(i)];
      mlp(lw, x.data() + t * model);
    }
  }
  return x;
}

}  // namespace

int main() {
  std::mt19937 gen(2024);
  std::vector<layer_weights> w;
  for (index_t l = 0; l < layers; ++l)
    w.push_back({random_matrix(model, Hq * D, gen), random_matrix(model, Hkv * D, gen), random_matrix(model, Hkv * D, gen),
                 random_matrix(Hq * D, model, gen), random_matrix(model, hidden, gen), random_matrix(hidden, model, gen)});
  const rope r;
  cached_model m(w, r, gen);

  // Inputs [B, total, model] (the prompt random, later tokens from the outputs) and
  // the cached model's final states of every position.
  std::vector<float> inputs(static_cast<std::size_t>(B * total * model)), outputs(inputs.size());
  std::normal_distribution<float> nd;
  for (index_t b = 0; b < B; ++b)
    for (index_t i = 0; i < prompt * model; ++i) inputs[static_cast<std::size_t>(b * total * model + i)] = nd(gen);

  std::vector<float> x(static_cast<std::size_t>(B * prompt * model));  // prefill: the whole prompt per layer
  for (index_t b = 0; b < B; ++b)
    std::copy_n(inputs.begin() + b * total * model, prompt * model, x.begin() + b * prompt * model);
  m.forward(x, prompt);
  for (index_t b = 0; b < B; ++b)
    std::copy_n(x.begin() + b * prompt * model, prompt * model, outputs.begin() + b * total * model);
  std::vector<float> step(static_cast<std::size_t>(B * model));
  for (index_t t = prompt; t < total; ++t) {  // decode: one token per sequence per call
    for (index_t b = 0; b < B; ++b) {
      next_input(outputs.data() + (b * total + t - 1) * model, inputs.data() + (b * total + t) * model);
      std::copy_n(inputs.begin() + (b * total + t) * model, model, step.begin() + b * model);
    }
    m.forward(step, 1);
    for (index_t b = 0; b < B; ++b) std::copy_n(step.begin() + b * model, model, outputs.begin() + (b * total + t) * model);
  }

  const auto ref = reference(w, r, inputs);
  double worst = 0, scale = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    worst = std::max(worst, std::abs(outputs[i] - ref[i]));
    scale = std::max(scale, std::abs(ref[i]));
  }
  std::printf("kv_cache_decode: %ld layers, GQA %ld:%ld, RoPE, paged cache (%ld pages of %ld tokens, shuffled)\n",
              static_cast<long>(layers), static_cast<long>(Hq), static_cast<long>(Hkv), static_cast<long>(m.pages),
              static_cast<long>(page_size));
  std::printf("prefill %ld tokens + %ld decode steps, 2 sequences: max |cached - naive| = %.2e (max |naive| = %.2f)\n",
              static_cast<long>(prompt), static_cast<long>(steps), worst, scale);
  return worst <= 1e-4 * std::max(1.0, scale) ? 0 : 1;
}
