// Entropy collapse as the attention-logit scale grows.
//
// A stack of L "layers" × H heads of random queries and keys; the logit scale
// grows geometrically from layer to layer (and varies a little across heads), as it
// does when Q/K weight norms grow during unstable training (Zhai et al. 2023). Each
// layer runs attnkit::attention with the entropy observer; the program prints mean
// normalised entropy Ĥ per layer, writes entropy.csv, entropy.json,
// entropy_heatmap.svg (Ĥ per layer × head) and entropy_heatmap.gp into argv[1]
// (default: the current directory), renders entropy_heatmap.png from the latter
// when gnuplot is installed (Debian: gnuplot-nox), and exits non-zero if Ĥ does not
// fall as the scale grows.
//
//   ./entropy_collapse [output-dir]
#include <attnkit/attnkit.hpp>
#include <attnkit/observe/entropy.hpp>
#include <attnkit/observe/report.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <random>
#include <string>
#include <vector>

int main(int argc, char** argv) try {
  const std::string dir = argc > 1 ? std::string(argv[1]) + "/" : std::string();
  constexpr int layers = 8, heads = 8;
  constexpr attnkit::index_t B = 1, L = 256, D = 64;

  std::mt19937 gen(2024);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> q(B * heads * L * D), k(q.size()), v(q.size()), out(q.size());

  std::vector<attnkit::entropy_stats> stats;
  std::vector<std::string> labels;
  std::vector<double> layer_scale;
  for (int l = 0; l < layers; ++l) {
    // Logit scale multiplier: 0.25 · 2^(l/1.2): from 0.25 to ~14 across the stack.
    const double scale = 0.25 * std::pow(2.0, l / 1.2);
    for (auto& x : k) x = nd(gen);
    for (auto& x : v) x = nd(gen);
    for (int h = 0; h < heads; ++h) {
      const float head_gain = static_cast<float>(0.7 + 0.6 * h / (heads - 1));  // heads differ a little
      for (attnkit::index_t i = 0; i < L * D; ++i) q[static_cast<std::size_t>(h * L * D + i)] = nd(gen) * head_gain;
    }
    attnkit::options opt;
    opt.scale = scale / std::sqrt(static_cast<double>(D));
    opt.causal = attnkit::causal::bottom_right;

    attnkit::entropy_stats st(attnkit::entropy_config{.top_k = 8}, l);
    attnkit::attention(attnkit::softmax{}, attnkit::bhsd<const float>(q.data(), B, heads, L, D),
                       attnkit::bhsd<const float>(k.data(), B, heads, L, D),
                       attnkit::bhsd<const float>(v.data(), B, heads, L, D), attnkit::bhsd(out.data(), B, heads, L, D),
                       opt, attnkit::observe(st));
    stats.push_back(std::move(st));
    char buf[64];
    std::snprintf(buf, sizeof buf, "L%d  scale %.2f", l, scale);
    labels.emplace_back(buf);
    layer_scale.push_back(scale);
  }

  std::printf("layer  scale   mean H   mean H^  min head H^  max head H^  spread  top-8 mass  collapsed  overloaded\n");
  bool falls = true;
  double prev = 2.0;
  for (int l = 0; l < layers; ++l) {
    const auto& st = stats[static_cast<std::size_t>(l)];
    double lo = 1e9, hi = -1e9, topk = 0;
    int collapsed = 0, overloaded = 0;
    for (const auto& hs : st.pooled_heads) {
      lo = std::min(lo, hs.norm_entropy_mean);
      hi = std::max(hi, hs.norm_entropy_mean);
      topk += hs.topk_mass / heads;
      collapsed += hs.collapsed;
      overloaded += hs.overloaded;
    }
    const double hn = st.mean_norm_entropy();
    std::printf("%5d  %5.2f  %7.3f  %7.3f  %11.3f  %11.3f  %6.3f  %10.3f  %6d/%d  %7d/%d\n", l,
                layer_scale[static_cast<std::size_t>(l)], st.mean_entropy(), hn, lo, hi, st.spread, topk, collapsed,
                heads, overloaded, heads);
    if (!(hn < prev)) falls = false;
    prev = hn;
  }

  attnkit::heatmap_options ho;
  ho.title = "Entropy collapse: mean normalised attention entropy per layer x head";
  ho.row_labels = labels;
  attnkit::save_entropy_csv(dir + "entropy.csv", stats);
  attnkit::save_entropy_json(dir + "entropy.json", stats);
  attnkit::save_entropy_heatmap_svg(dir + "entropy_heatmap.svg", stats, ho);
  attnkit::save_entropy_heatmap_gnuplot(dir + "entropy_heatmap.gp", stats, dir + "entropy_heatmap.png", ho);
  std::printf("wrote %sentropy.csv, %sentropy.json, %sentropy_heatmap.svg, %sentropy_heatmap.gp\n", dir.c_str(),
              dir.c_str(), dir.c_str(), dir.c_str());
  // The PNG, for machines without an SVG viewer: only if gnuplot is there.
  if (std::system("command -v gnuplot >/dev/null 2>&1") == 0) {
    std::remove((dir + "entropy_heatmap.png").c_str());
    const std::string cmd = "gnuplot '" + dir + "entropy_heatmap.gp'";
    if (std::system(cmd.c_str()) != 0 || !std::ifstream(dir + "entropy_heatmap.png")) {
      std::fprintf(stderr, "entropy_collapse: gnuplot did not write %sentropy_heatmap.png\n", dir.c_str());
      return 1;
    }
    std::printf("wrote %sentropy_heatmap.png\n", dir.c_str());
  } else {
    std::printf("for a PNG: install gnuplot (Debian: gnuplot-nox) and run gnuplot %sentropy_heatmap.gp\n", dir.c_str());
  }

  if (!falls) {
    std::fprintf(stderr, "entropy_collapse: mean normalised entropy did not fall with the logit scale\n");
    return 1;
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "entropy_collapse: %s\n", e.what());
  return 2;
}
