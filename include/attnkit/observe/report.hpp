#pragma once
/// \file
/// Reports of entropy statistics over layers × heads: CSV, JSON, and an SVG heatmap
/// of the mean normalised entropy Ĥ (written by hand: no dependency).
///
/// Each element of the `layers` span is the entropy_stats of one attention call
/// ("layer"); its layer number is `stats.layer` when set, else its position.
///
/// CSV: one header line, then one line per (layer, batch, head), columns
///   layer,batch,head,rows,empty_rows,nan_rows,entropy_mean,entropy_min,entropy_max,
///   norm_entropy_mean,norm_entropy_min,norm_entropy_max,norm_entropy_std,head_spread,
///   sink_mass,sink_rate,top_k,topk_mass,mass_mean,sink,collapsed,overloaded,norm_rows
/// (rows: the rows of the H statistics, n_i ≥ 1; norm_rows: those of the Ĥ statistics,
/// ≥ 2 categories — see observe/entropy.hpp;
/// head_spread: the std across the heads of that layer and batch of their mean Ĥ;
/// sink: sink_mass > ε; flags 0/1; NaN written as `nan`). Numbers use the C locale, 12 significant digits.
///
/// JSON: {"format": "attnkit.entropy/1", "layers": [{"layer", "batch", "heads",
/// "q_len", "k_len", "normalized", "has_sink", "config": {...}, "mean_entropy",
/// "mean_norm_entropy", "spread", "sink_head_rate", "head_spread": [per batch], "heads": [per
/// (batch, head), same fields as the CSV], "pooled_heads": [per head, all batches]}]}
/// NaN and ±inf are written as null.
///
/// Heatmap: write_entropy_heatmap_svg draws it by hand (any browser shows it);
/// write_entropy_heatmap_gnuplot writes a self-contained gnuplot script (data
/// inline) that renders the same picture as a PNG (`gnuplot file.gp`; Debian
/// package gnuplot-nox), for machines without an SVG viewer.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <locale>
#include <ostream>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "entropy.hpp"

namespace attnkit {

namespace detail {
inline std::string fmt_num(double x, bool json) {
  if (!std::isfinite(x)) {
    if (json) return "null";
    return x != x ? "nan" : (x > 0 ? "inf" : "-inf");
  }
  std::ostringstream os;
  os.imbue(std::locale::classic());
  os.precision(12);
  os << x;
  return os.str();
}

inline int layer_number(const entropy_stats& s, std::size_t position) {
  return s.layer ? *s.layer : static_cast<int>(position);
}

inline std::string xml_escape(const std::string& s) {
  std::string r;
  for (char c : s) {
    switch (c) {
      case '&': r += "&amp;"; break;
      case '<': r += "&lt;"; break;
      case '>': r += "&gt;"; break;
      case '"': r += "&quot;"; break;
      default: r += c;
    }
  }
  return r;
}

inline void json_head(std::ostream& os, const head_stats& h, int top_k) {
  auto n = [](double x) { return fmt_num(x, true); };
  os << "{\"batch\": " << h.batch << ", \"head\": " << h.head << ", \"rows\": " << h.rows
     << ", \"norm_rows\": " << h.norm_rows << ", \"empty_rows\": " << h.empty_rows << ", \"nan_rows\": " << h.nan_rows
     << ", \"entropy_mean\": " << n(h.entropy_mean) << ", \"entropy_min\": " << n(h.entropy_min)
     << ", \"entropy_max\": " << n(h.entropy_max) << ", \"norm_entropy_mean\": " << n(h.norm_entropy_mean)
     << ", \"norm_entropy_min\": " << n(h.norm_entropy_min) << ", \"norm_entropy_max\": " << n(h.norm_entropy_max)
     << ", \"norm_entropy_std\": " << n(h.norm_entropy_std) << ", \"sink_mass\": " << n(h.sink_mass)
     << ", \"sink_rate\": " << n(h.sink_rate) << ", \"top_k\": " << top_k << ", \"topk_mass\": " << n(h.topk_mass)
     << ", \"mass_mean\": " << n(h.mass_mean) << ", \"sink\": " << (h.sink ? "true" : "false")
     << ", \"collapsed\": " << (h.collapsed ? "true" : "false")
     << ", \"overloaded\": " << (h.overloaded ? "true" : "false") << "}";
}

template <class F>
void write_file(const std::string& path, F&& f) {
  std::ofstream os(path, std::ios::binary);
  if (!os) throw std::runtime_error("attnkit: cannot open '" + path + "' for writing");
  f(os);
  os.flush();
  if (!os) throw std::runtime_error("attnkit: error writing '" + path + "'");
}
}  // namespace detail

/// The CSV header line (without newline).
inline const char* entropy_csv_header() noexcept {
  return "layer,batch,head,rows,empty_rows,nan_rows,entropy_mean,entropy_min,entropy_max,"
         "norm_entropy_mean,norm_entropy_min,norm_entropy_max,norm_entropy_std,head_spread,"
         "sink_mass,sink_rate,top_k,topk_mass,mass_mean,sink,collapsed,overloaded,norm_rows";
}

/// CSV, one line per (layer, batch, head).
inline void write_entropy_csv(std::ostream& os, std::span<const entropy_stats> layers) {
  auto n = [](double x) { return detail::fmt_num(x, false); };
  os << entropy_csv_header() << '\n';
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const entropy_stats& s = layers[l];
    for (const head_stats& h : s.heads) {
      const double spread = static_cast<std::size_t>(h.batch) < s.head_spread.size()
                                ? s.head_spread[static_cast<std::size_t>(h.batch)]
                                : std::numeric_limits<double>::quiet_NaN();
      os << detail::layer_number(s, l) << ',' << h.batch << ',' << h.head << ',' << h.rows << ',' << h.empty_rows
         << ',' << h.nan_rows << ',' << n(h.entropy_mean) << ',' << n(h.entropy_min) << ',' << n(h.entropy_max) << ','
         << n(h.norm_entropy_mean) << ',' << n(h.norm_entropy_min) << ',' << n(h.norm_entropy_max) << ','
         << n(h.norm_entropy_std) << ',' << n(spread) << ',' << n(h.sink_mass) << ',' << n(h.sink_rate) << ','
         << s.config.top_k << ',' << n(h.topk_mass) << ',' << n(h.mass_mean) << ',' << (h.sink ? 1 : 0) << ',' << (h.collapsed ? 1 : 0) << ','
         << (h.overloaded ? 1 : 0) << ',' << h.norm_rows << '\n';
    }
  }
}

/// JSON document (see the file comment for the layout).
inline void write_entropy_json(std::ostream& os, std::span<const entropy_stats> layers) {
  auto n = [](double x) { return detail::fmt_num(x, true); };
  os << "{\n  \"format\": \"attnkit.entropy/1\",\n  \"layers\": [";
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const entropy_stats& s = layers[l];
    os << (l ? ",\n" : "\n") << "    {\"layer\": " << detail::layer_number(s, l) << ", \"batch\": " << s.batch
       << ", \"heads_count\": " << s.heads_count << ", \"q_len\": " << s.q_len << ", \"k_len\": " << s.k_len
       << ", \"normalized\": " << (s.normalized ? "true" : "false")
       << ", \"has_sink\": " << (s.has_sink ? "true" : "false") << ",\n     \"config\": {\"top_k\": " << s.config.top_k
       << ", \"sink_epsilon\": " << n(s.config.sink_epsilon)
       << ", \"collapse_threshold\": " << n(s.config.collapse_threshold)
       << ", \"overload_threshold\": " << n(s.config.overload_threshold) << "},\n     \"mean_entropy\": "
       << n(s.mean_entropy()) << ", \"mean_norm_entropy\": " << n(s.mean_norm_entropy())
       << ", \"spread\": " << n(s.spread) << ", \"sink_head_rate\": " << n(s.sink_head_rate)
       << ", \"head_spread\": [";
    for (std::size_t b = 0; b < s.head_spread.size(); ++b) os << (b ? ", " : "") << n(s.head_spread[b]);
    os << "],\n     \"heads\": [";
    for (std::size_t k = 0; k < s.heads.size(); ++k) {
      os << (k ? ",\n       " : "\n       ");
      detail::json_head(os, s.heads[k], s.config.top_k);
    }
    os << "],\n     \"pooled_heads\": [";
    for (std::size_t k = 0; k < s.pooled_heads.size(); ++k) {
      os << (k ? ",\n       " : "\n       ");
      detail::json_head(os, s.pooled_heads[k], s.config.top_k);
    }
    os << "]}";
  }
  os << "\n  ]\n}\n";
}

/// Options of the heatmaps (SVG and gnuplot/PNG).
struct heatmap_options {
  std::string title = "Attention entropy: mean normalised entropy per layer x head";
  /// One label per layer row (e.g. "L3  scale 2.0"); empty: "layer <n>".
  std::vector<std::string> row_labels{};
  int cell = 44;             ///< cell size, px (SVG; the PNG uses 64)
  bool values = true;        ///< print the value in each cell
  bool mark_flags = true;    ///< outline collapsed (red) and overloaded (orange) heads
};

/// Colour of v ∈ [0, 1] on a perceptually ordered scale (viridis control points,
/// linear interpolation). NaN: grey.
inline std::string heatmap_colour(double v) {
  if (v != v) return "#bbbbbb";
  static const double cp[9][3] = {{68, 1, 84},    {71, 44, 122},  {59, 81, 139},   {44, 113, 142}, {33, 144, 141},
                                  {39, 173, 129}, {92, 200, 99},  {170, 220, 50}, {253, 231, 37}};
  v = std::clamp(v, 0.0, 1.0) * 8.0;
  const int i = std::min(7, static_cast<int>(v));
  const double f = v - i;
  char buf[8];
  std::snprintf(buf, sizeof buf, "#%02x%02x%02x", static_cast<int>(std::lround(cp[i][0] + f * (cp[i + 1][0] - cp[i][0]))),
                static_cast<int>(std::lround(cp[i][1] + f * (cp[i + 1][1] - cp[i][1]))),
                static_cast<int>(std::lround(cp[i][2] + f * (cp[i + 1][2] - cp[i][2]))));
  return buf;
}

/// SVG heatmap of the pooled (all batches) mean Ĥ: one row per layer (top to
/// bottom in span order), one column per head, a colour bar from 0 to 1.
inline void write_entropy_heatmap_svg(std::ostream& os, std::span<const entropy_stats> layers,
                                      const heatmap_options& ho = {}) {
  std::size_t heads = 0;
  for (const auto& s : layers) heads = std::max(heads, s.pooled_heads.size());
  const int c = std::max(8, ho.cell);
  const int left = 150, top = 72, bar_w = 16, gap = 30;
  const int grid_w = c * static_cast<int>(std::max<std::size_t>(heads, 1));
  const int grid_h = c * static_cast<int>(std::max<std::size_t>(layers.size(), 1));
  const int width = left + grid_w + gap + bar_w + 60, height = top + grid_h + 60;
  auto num = [](double x, int prec) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.*f", prec, x);
    return std::string(buf);
  };
  os << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
     << "\" viewBox=\"0 0 " << width << ' ' << height << "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  os << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  os << "<text x=\"" << width / 2 << "\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">"
     << detail::xml_escape(ho.title) << "</text>\n";
  os << "<text x=\"" << left + grid_w / 2 << "\" y=\"" << top - 28 << "\" text-anchor=\"middle\">head</text>\n";
  for (std::size_t h = 0; h < heads; ++h)
    os << "<text x=\"" << left + static_cast<int>(h) * c + c / 2 << "\" y=\"" << top - 6
       << "\" text-anchor=\"middle\">" << h << "</text>\n";
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const entropy_stats& s = layers[l];
    const int y = top + static_cast<int>(l) * c;
    const std::string label = l < ho.row_labels.size() ? ho.row_labels[l]
                                                        : "layer " + std::to_string(detail::layer_number(s, l));
    os << "<text x=\"" << left - 8 << "\" y=\"" << y + c / 2 + 4 << "\" text-anchor=\"end\">"
       << detail::xml_escape(label) << "</text>\n";
    for (std::size_t h = 0; h < s.pooled_heads.size(); ++h) {
      const head_stats& hs = s.pooled_heads[h];
      const double v = hs.norm_entropy_mean;
      const int x = left + static_cast<int>(h) * c;
      os << "<rect x=\"" << x << "\" y=\"" << y << "\" width=\"" << c << "\" height=\"" << c << "\" fill=\""
         << heatmap_colour(v) << "\"";
      if (ho.mark_flags && (hs.collapsed || hs.overloaded))
        os << " stroke=\"" << (hs.collapsed ? "#d62728" : "#ff7f0e") << "\" stroke-width=\"3\"";
      else
        os << " stroke=\"white\" stroke-width=\"1\"";
      os << "><title>layer " << detail::layer_number(s, l) << ", head " << h << ": mean H^ = "
         << detail::fmt_num(v, false) << ", mean H = " << detail::fmt_num(hs.entropy_mean, false)
         << " nats</title></rect>\n";
      if (ho.values && c >= 28)
        os << "<text x=\"" << x + c / 2 << "\" y=\"" << y + c / 2 + 4 << "\" text-anchor=\"middle\" font-size=\""
           << std::max(8, c / 4) << "\" fill=\"" << (v == v && v > 0.6 ? "black" : "white") << "\">"
           << (v == v ? num(v, 2) : std::string("n/a")) << "</text>\n";
    }
  }
  // Colour bar: stacked bands (no gradient: every SVG renderer draws plain rects).
  const int bx = left + grid_w + gap;
  constexpr int bands = 64;
  for (int k = 0; k < bands; ++k) {
    const int y0 = top + grid_h - grid_h * (k + 1) / bands, y1 = top + grid_h - grid_h * k / bands;
    os << "<rect x=\"" << bx << "\" y=\"" << y0 << "\" width=\"" << bar_w << "\" height=\"" << y1 - y0
       << "\" fill=\"" << heatmap_colour((k + 0.5) / bands) << "\"/>\n";
  }
  os << "<rect x=\"" << bx << "\" y=\"" << top << "\" width=\"" << bar_w << "\" height=\"" << grid_h
     << "\" fill=\"none\" stroke=\"black\" stroke-width=\"0.5\"/>\n";
  for (int k = 0; k <= 4; ++k) {
    const int y = top + grid_h - grid_h * k / 4;
    os << "<line x1=\"" << bx + bar_w << "\" y1=\"" << y << "\" x2=\"" << bx + bar_w + 4 << "\" y2=\"" << y
       << "\" stroke=\"black\"/><text x=\"" << bx + bar_w + 6 << "\" y=\"" << y + 4 << "\">" << num(k / 4.0, 2)
       << "</text>\n";
  }
  os << "<text x=\"" << bx + bar_w / 2 << "\" y=\"" << top - 8 << "\" text-anchor=\"middle\">H^</text>\n";
  if (ho.mark_flags)
    os << "<text x=\"" << left << "\" y=\"" << top + grid_h + 24
       << "\">outline: red = collapsed (mean H^ below threshold), orange = overloaded (above)</text>\n";
  os << "</svg>\n";
}

namespace detail {
/// A gnuplot double-quoted string literal.
inline std::string gp_string(const std::string& s) {
  std::string r = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') r += '\\';
    r += c;
  }
  return r + '"';
}
}  // namespace detail

/// A gnuplot script that renders the heatmap of write_entropy_heatmap_svg as the
/// PNG `png_path` (pngcairo terminal): mean Ĥ per layer (rows, first on top) × head,
/// the viridis scale from 0 to 1, values in the cells, collapsed (red) and
/// overloaded (orange) heads outlined. The data are inline: run `gnuplot file.gp`.
inline void write_entropy_heatmap_gnuplot(std::ostream& os, std::span<const entropy_stats> layers,
                                          const std::string& png_path, const heatmap_options& ho = {}) {
  std::size_t heads = 1;
  for (const auto& s : layers) heads = std::max(heads, s.pooled_heads.size());
  const std::size_t rows = std::max<std::size_t>(layers.size(), 1);
  auto num = [](double x) { return x == x ? detail::fmt_num(x, false) : std::string("NaN"); };
  const int cell = 64;
  os << "# attnkit entropy heatmap: `gnuplot <this file>` writes " << png_path << "\n"
     << "set terminal pngcairo size " << 260 + cell * static_cast<int>(heads) + 150 << ','
     << 150 + cell * static_cast<int>(rows) << " font 'sans,11' noenhanced\n"
     << "set output " << detail::gp_string(png_path) << "\n"
     << "set title " << detail::gp_string(ho.title) << " font ',13'\n"
     << "$cells << EOD\n# head layer mean_norm_entropy collapsed overloaded\n";
  for (std::size_t l = 0; l < layers.size(); ++l)
    for (std::size_t h = 0; h < layers[l].pooled_heads.size(); ++h) {
      const head_stats& hs = layers[l].pooled_heads[h];
      os << h << ' ' << l << ' ' << num(hs.norm_entropy_mean) << ' ' << (ho.mark_flags && hs.collapsed) << ' '
         << (ho.mark_flags && hs.overloaded) << '\n';
    }
  os << "EOD\n"
     << "set xrange [-0.5:" << heads - 0.5 << "]\nset yrange [" << rows - 0.5 << ":-0.5]\n"
     << "set xtics 1 scale 0\nset x2tics 1 scale 0 format ''\nset xlabel 'head'\nset ytics scale 0 (";
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const std::string label = l < ho.row_labels.size() ? ho.row_labels[l]
                                                       : "layer " + std::to_string(detail::layer_number(layers[l], l));
    os << (l ? ", " : "") << detail::gp_string(label) << ' ' << l;
  }
  os << ")\nset cbrange [0:1]\nset cbtics 0.25\nset cblabel 'mean normalised entropy H^'\n"
     << "set palette defined (0 '#440154', 0.125 '#472c7a', 0.25 '#3b518b', 0.375 '#2c718e', 0.5 '#21908d', "
        "0.625 '#27ad81', 0.75 '#5cc863', 0.875 '#aadc32', 1 '#fde725')\n"
     << "set size ratio -1\nunset key\n";
  if (ho.mark_flags)
    os << "set bmargin 6\nset label 1 'outline: red = collapsed (mean H^ below threshold), orange = overloaded "
          "(above)' at screen 0.03, screen 0.03 font ',10'\n";
  os << "plot $cells using 1:2:3 with image, \\\n"
     << "     $cells using ($4 + $5 > 0 ? $1 : 1/0):2:(0.5):(0.5):($4 > 0 ? 0xd62728 : 0xff7f0e) with boxxyerror "
        "fill empty border lw 4 lc rgb variable";
  if (ho.values)
    os << ", \\\n     $cells using 1:2:($3 == $3 ? sprintf('%.2f', $3) : 'n/a'):($3 > 0.6 ? 0 : 0xffffff) "
          "with labels tc rgb variable font ',10'";
  os << "\n";
}

/// File versions; they throw std::runtime_error if the file cannot be written.
inline void save_entropy_csv(const std::string& path, std::span<const entropy_stats> layers) {
  detail::write_file(path, [&](std::ostream& os) { write_entropy_csv(os, layers); });
}
inline void save_entropy_json(const std::string& path, std::span<const entropy_stats> layers) {
  detail::write_file(path, [&](std::ostream& os) { write_entropy_json(os, layers); });
}
inline void save_entropy_heatmap_svg(const std::string& path, std::span<const entropy_stats> layers,
                                     const heatmap_options& ho = {}) {
  detail::write_file(path, [&](std::ostream& os) { write_entropy_heatmap_svg(os, layers, ho); });
}
inline void save_entropy_heatmap_gnuplot(const std::string& path, std::span<const entropy_stats> layers,
                                         const std::string& png_path, const heatmap_options& ho = {}) {
  detail::write_file(path, [&](std::ostream& os) { write_entropy_heatmap_gnuplot(os, layers, png_path, ho); });
}

}  // namespace attnkit
