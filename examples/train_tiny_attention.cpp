// Training a one-layer attention model with attnkit's backward pass.
//
// Task: associative recall. Each example holds P (key, value) pairs with distinct
// keys, then Lq query keys drawn from them; the model must name each query's value.
// Model (no framework, hand-written chain rule, Adam):
//   x_j = Ek[key_j] + Ev[value_j]   (the pairs),   y_i = Ek[query_i]
//   Q = y·Wq, K = x·Wk, V = x·Wv    (H heads of D, BSHD layout: [B, S, H·D])
//   O = attention(softmax, Q, K, V) (attnkit::attention, keeps the LSE)
//   logits = O·Wo,  loss = mean cross-entropy against the values
// The attention gradients come from attnkit::attention_backward; the two runs share
// data and initial weights, the second adds the fused AEM regulariser λ·mean H
// (backward_options::reg), which sharpens attention. Per epoch it prints the loss,
// held-out accuracy and the per-head mean entropy (the forward's entropy observer);
// it writes train_tiny_attention.gp into argv[1] (default: the current directory)
// and renders train_tiny_attention.png when gnuplot is installed (gnuplot-nox).
// ATTNKIT_EXAMPLE_SHORT=1 (set by ctest) runs a few epochs only.
//
//   ./train_tiny_attention [output-dir]
#include <attnkit/attnkit.hpp>
#include <attnkit/observe/entropy.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace {

using attnkit::index_t;
using vec = std::vector<float>;

constexpr index_t n_keys = 24, n_values = 16;  // vocabularies
constexpr index_t P = 12, Lq = 6;              // pairs and queries per example
constexpr index_t dm = 32, H = 4, D = 8, HD = H * D;
constexpr index_t B = 32;  // batch

/// C[m×n] (+)= op(A)·op(B), row-major; op(A) is m×k, op(B) is k×n.
void gemm(bool ta, bool tb, index_t m, index_t n, index_t k, const float* a, const float* b, float* c, bool acc) {
  for (index_t i = 0; i < m; ++i)
    for (index_t j = 0; j < n; ++j) {
      float s = acc ? c[i * n + j] : 0.0f;
      for (index_t l = 0; l < k; ++l) s += (ta ? a[l * m + i] : a[i * k + l]) * (tb ? b[j * k + l] : b[l * n + j]);
      c[i * n + j] = s;
    }
}

struct batch {
  std::vector<index_t> key, value, query, target;  // [B·P], [B·P], [B·Lq], [B·Lq]
};

batch make_batch(std::mt19937& gen) {
  batch bt;
  std::vector<index_t> ids(n_keys);
  std::uniform_int_distribution<index_t> val(0, n_values - 1);
  for (index_t b = 0; b < B; ++b) {
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), gen);
    const std::size_t first = bt.value.size();
    for (index_t j = 0; j < P; ++j) bt.key.push_back(ids[static_cast<std::size_t>(j)]), bt.value.push_back(val(gen));
    std::shuffle(ids.begin(), ids.begin() + P, gen);  // the queries: Lq of the P keys
    for (index_t i = 0; i < Lq; ++i) {
      const index_t key = ids[static_cast<std::size_t>(i)];
      bt.query.push_back(key);
      for (index_t j = 0; j < P; ++j)
        if (bt.key[first + static_cast<std::size_t>(j)] == key) bt.target.push_back(bt.value[first + static_cast<std::size_t>(j)]);
    }
  }
  return bt;
}

/// The parameters, their Adam moments and gradients, as one flat vector.
struct model {
  enum : index_t { ek = 0, ev = ek + n_keys * dm, wq = ev + n_values * dm, wk = wq + dm * HD, wv = wk + dm * HD,
                   wo = wv + dm * HD, size = wo + HD * n_values };
  vec w = vec(size), g = vec(size), m = vec(size), v = vec(size);
  long step = 0;

  explicit model(unsigned seed) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (index_t i = 0; i < size; ++i) w[static_cast<std::size_t>(i)] = nd(gen) * (i < wq ? 1.0f : 1.0f / std::sqrt(float(dm)));
  }
  float* p(index_t off) { return w.data() + off; }
  float* d(index_t off) { return g.data() + off; }

  void adam(float lr) {
    ++step;
    const float b1 = 0.9f, b2 = 0.999f, c1 = 1 - std::pow(b1, float(step)), c2 = 1 - std::pow(b2, float(step));
    for (std::size_t i = 0; i < w.size(); ++i) {
      m[i] = b1 * m[i] + (1 - b1) * g[i];
      v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
      w[i] -= lr * (m[i] / c1) / (std::sqrt(v[i] / c2) + 1e-8f);
    }
  }
};

struct step_result {
  double loss = 0, accuracy = 0;
};

/// One forward (and, when `train`, backward + Adam step) on a batch. `stats`: the
/// forward's entropy observer (nullptr: none).
step_result run_step(model& mdl, const batch& bt, bool train, const attnkit::backward_options& bo,
                     attnkit::entropy_stats* stats) {
  vec x(B * P * dm), y(B * Lq * dm), q(B * Lq * HD), k(B * P * HD), v(B * P * HD), o(B * Lq * HD);
  vec lse(B * H * Lq), logits(B * Lq * n_values);
  for (index_t r = 0; r < B * P; ++r)
    for (index_t c = 0; c < dm; ++c)
      x[r * dm + c] = mdl.w[model::ek + bt.key[r] * dm + c] + mdl.w[model::ev + bt.value[r] * dm + c];
  for (index_t r = 0; r < B * Lq; ++r)
    for (index_t c = 0; c < dm; ++c) y[r * dm + c] = mdl.w[model::ek + bt.query[r] * dm + c];
  gemm(false, false, B * Lq, HD, dm, y.data(), mdl.p(model::wq), q.data(), false);
  gemm(false, false, B * P, HD, dm, x.data(), mdl.p(model::wk), k.data(), false);
  gemm(false, false, B * P, HD, dm, x.data(), mdl.p(model::wv), v.data(), false);

  using attnkit::bshd;
  attnkit::options opt;
  opt.lse = lse.data();
  const auto qv = bshd<const float>(q.data(), B, Lq, H, D), kv = bshd<const float>(k.data(), B, P, H, D),
             vv = bshd<const float>(v.data(), B, P, H, D), ov = bshd<const float>(o.data(), B, Lq, H, D);
  if (stats)
    attnkit::attention(attnkit::softmax{}, qv, kv, vv, bshd(o.data(), B, Lq, H, D), opt, attnkit::observe(*stats));
  else
    attnkit::attention(attnkit::softmax{}, qv, kv, vv, bshd(o.data(), B, Lq, H, D), opt);
  gemm(false, false, B * Lq, n_values, HD, o.data(), mdl.p(model::wo), logits.data(), false);

  // Cross-entropy; dlogits = (softmax − onehot) / rows.
  step_result res;
  const index_t rows = B * Lq;
  for (index_t r = 0; r < rows; ++r) {
    float* z = logits.data() + r * n_values;
    const float mx = *std::max_element(z, z + n_values);
    double sum = 0;
    for (index_t c = 0; c < n_values; ++c) sum += std::exp(double(z[c] - mx));
    const index_t t = bt.target[static_cast<std::size_t>(r)];
    res.loss += (std::log(sum) - (z[t] - mx)) / rows;
    res.accuracy += (std::max_element(z, z + n_values) - z == t) / double(rows);
    for (index_t c = 0; c < n_values; ++c) z[c] = float((std::exp(double(z[c] - mx)) / sum - (c == t)) / rows);
  }
  if (!train) return res;

  std::fill(mdl.g.begin(), mdl.g.end(), 0.0f);
  vec dout(o.size()), dq(q.size()), dk(k.size()), dv(v.size()), dx(x.size()), dy(y.size());
  gemm(true, false, HD, n_values, rows, o.data(), logits.data(), mdl.d(model::wo), false);
  gemm(false, true, rows, HD, n_values, logits.data(), mdl.p(model::wo), dout.data(), false);
  attnkit::attention_backward(attnkit::softmax{}, qv, kv, vv, ov, lse.data(),
                              bshd<const float>(dout.data(), B, Lq, H, D), bshd(dq.data(), B, Lq, H, D),
                              bshd(dk.data(), B, P, H, D), bshd(dv.data(), B, P, H, D), opt, bo);
  gemm(true, false, dm, HD, rows, y.data(), dq.data(), mdl.d(model::wq), false);
  gemm(true, false, dm, HD, B * P, x.data(), dk.data(), mdl.d(model::wk), false);
  gemm(true, false, dm, HD, B * P, x.data(), dv.data(), mdl.d(model::wv), false);
  gemm(false, true, rows, dm, HD, dq.data(), mdl.p(model::wq), dy.data(), false);
  gemm(false, true, B * P, dm, HD, dk.data(), mdl.p(model::wk), dx.data(), false);
  gemm(false, true, B * P, dm, HD, dv.data(), mdl.p(model::wv), dx.data(), true);
  for (index_t r = 0; r < B * P; ++r)
    for (index_t c = 0; c < dm; ++c) {
      mdl.g[model::ek + bt.key[r] * dm + c] += dx[r * dm + c];
      mdl.g[model::ev + bt.value[r] * dm + c] += dx[r * dm + c];
    }
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < dm; ++c) mdl.g[model::ek + bt.query[r] * dm + c] += dy[r * dm + c];
  mdl.adam(3e-3f);
  return res;
}

struct epoch_log {
  double loss = 0, accuracy = 0;
  std::vector<double> head_entropy;  // mean H per head on the held-out batch (nats)
};

std::vector<epoch_log> train(const char* name, int epochs, int steps, double lambda) {
  model mdl(7);
  std::mt19937 data(11), held(99);
  const batch test = make_batch(held);
  attnkit::backward_options bo;
  if (lambda > 0) bo.reg = attnkit::regularizer::mean_entropy(lambda);
  std::vector<epoch_log> log;
  std::printf("\n%s (epoch 0: before training, loss on the held-out batch)\n"
              "epoch  train loss  test acc   mean entropy per head (nats; uniform = %.2f)\n",
              name, std::log(double(P)));
  for (int e = 0; e <= epochs; ++e) {
    epoch_log ep;
    for (int s = 0; s < (e ? steps : 0); ++s) ep.loss += run_step(mdl, make_batch(data), true, bo, nullptr).loss / steps;
    attnkit::entropy_stats st;
    const step_result r = run_step(mdl, test, false, bo, &st);
    if (!e) ep.loss = r.loss;  // epoch 0: before training
    ep.accuracy = r.accuracy;
    std::printf("%5d  %10.4f  %8.3f  ", e, ep.loss, ep.accuracy);
    for (const auto& hs : st.pooled_heads) {
      ep.head_entropy.push_back(hs.entropy_mean);
      std::printf(" %6.3f", hs.entropy_mean);
    }
    std::printf("\n");
    log.push_back(std::move(ep));
  }
  return log;
}

double mean_entropy(const epoch_log& e) {
  return std::accumulate(e.head_entropy.begin(), e.head_entropy.end(), 0.0) / double(e.head_entropy.size());
}

void write_gnuplot(const std::string& gp, const std::string& png, const std::vector<epoch_log>* runs,
                   const char* const* names) {
  std::ofstream os(gp);
  os << "# attnkit train_tiny_attention: `gnuplot <this file>` writes " << png << "\n"
     << "set terminal pngcairo size 1100,420 font 'sans,10' noenhanced\nset output '" << png << "'\n"
     << "set multiplot layout 1,2\nset grid\nset xlabel 'epoch'\nset key top right\n";
  for (int r = 0; r < 2; ++r) {
    os << "$run" << r << " << EOD\n# epoch loss accuracy H_head0..\n";
    for (std::size_t e = 0; e < runs[r].size(); ++e) {
      os << e << ' ' << runs[r][e].loss << ' ' << runs[r][e].accuracy;
      for (double h : runs[r][e].head_entropy) os << ' ' << h;
      os << '\n';
    }
    os << "EOD\n";
  }
  os << "set title 'training loss (cross-entropy; epoch 0: before training)'\nset ylabel 'loss'\nset logscale y\nplot $run0 using 1:2 with linespoints title '"
     << names[0] << "', $run1 using 1:2 with linespoints title '" << names[1] << "'\n"
     << "unset logscale y\nset title 'mean attention entropy per head (held-out batch)'\nset ylabel 'H (nats)'\nplot ";
  for (int r = 0; r < 2; ++r)
    for (index_t h = 0; h < H; ++h)
      os << (r || h ? ", " : "") << "$run" << r << " using 1:" << 4 + h << " with lines lw 2 dt " << (r ? 2 : 1)
         << " lc " << h + 1 << " title '" << (r ? "AEM" : "plain") << " head " << h << "'";
  os << "\nunset multiplot\n";
}

}  // namespace

int main(int argc, char** argv) try {
  const std::string dir = argc > 1 ? std::string(argv[1]) + "/" : std::string();
  const char* short_env = std::getenv("ATTNKIT_EXAMPLE_SHORT");
  const bool short_mode = short_env && *short_env && std::string(short_env) != "0";
  const int epochs = short_mode ? 4 : 20, steps = 50;
  const double lambda = 0.05;
  const char* names[2] = {"plain cross-entropy", "cross-entropy + AEM regulariser (lambda = 0.05)"};
  const std::vector<epoch_log> runs[2] = {train(names[0], epochs, steps, 0.0), train(names[1], epochs, steps, lambda)};

  const std::string gp = dir + "train_tiny_attention.gp", png = dir + "train_tiny_attention.png";
  write_gnuplot(gp, png, runs, names);
  std::printf("\nwrote %s\n", gp.c_str());
  if (std::system("command -v gnuplot >/dev/null 2>&1") == 0) {
    std::remove(png.c_str());
    if (std::system(("gnuplot '" + gp + "'").c_str()) != 0 || !std::ifstream(png)) {
      std::fprintf(stderr, "train_tiny_attention: gnuplot did not write %s\n", png.c_str());
      return 1;
    }
    std::printf("wrote %s\n", png.c_str());
  } else {
    std::printf("for a PNG: install gnuplot (Debian: gnuplot-nox) and run gnuplot %s\n", gp.c_str());
  }

  // The checks: both runs learn (the loss falls well below its start), and the
  // regulariser leaves the attention sharper (lower mean entropy) than plain training.
  bool ok = true;
  for (int r = 0; r < 2; ++r)
    if (!(runs[r].back().loss < 0.8 * runs[r].front().loss)) {
      std::fprintf(stderr, "train_tiny_attention: %s did not learn (loss %.4f -> %.4f)\n", names[r],
                   runs[r].front().loss, runs[r].back().loss);
      ok = false;
    }
  if (!(mean_entropy(runs[1].back()) < mean_entropy(runs[0].back()))) {
    std::fprintf(stderr, "train_tiny_attention: the AEM regulariser did not lower the attention entropy\n");
    ok = false;
  }
  if (!short_mode && !(runs[0].back().accuracy > 0.9)) {
    std::fprintf(stderr, "train_tiny_attention: held-out accuracy %.3f <= 0.9\n", runs[0].back().accuracy);
    ok = false;
  }
  return ok ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "train_tiny_attention: %s\n", e.what());
  return 2;
}
