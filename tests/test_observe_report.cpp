// CSV / JSON / SVG / gnuplot reports of entropy statistics: the written content is read back
// (a tiny CSV splitter and a tiny JSON parser written here) and compared with the
// head summaries. Numbers are written with 12 significant digits: relative
// tolerance 1e-11.
#include <catch2/catch.hpp>

#include <attnkit/observe/report.hpp>

#include <cctype>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "support.hpp"

using namespace attnkit;
using attnkit_test::problem;

namespace {

// ---- a minimal JSON reader (objects, arrays, numbers, strings, true/false/null)
struct jvalue {
  enum kind { null, boolean, number, string, array, object } k = null;
  bool b = false;
  double n = 0;
  std::string s;
  std::vector<jvalue> a;
  std::map<std::string, jvalue> o;
  const jvalue& operator[](const std::string& key) const { return o.at(key); }
  const jvalue& operator[](std::size_t i) const { return a.at(i); }
};

struct jparser {
  const std::string& t;
  std::size_t p = 0;
  void ws() {
    while (p < t.size() && std::isspace(static_cast<unsigned char>(t[p]))) ++p;
  }
  void expect(char c) {
    ws();
    if (p >= t.size() || t[p] != c) throw std::runtime_error(std::string("json: expected ") + c + " at " + std::to_string(p));
    ++p;
  }
  std::string str() {
    expect('"');
    std::string r;
    while (p < t.size() && t[p] != '"') {
      if (t[p] == '\\') ++p;
      r += t[p++];
    }
    expect('"');
    return r;
  }
  jvalue value() {
    ws();
    jvalue v;
    if (t[p] == '{') {
      v.k = jvalue::object;
      ++p;
      ws();
      if (t[p] == '}') return ++p, v;
      for (;;) {
        std::string key = str();
        expect(':');
        v.o[key] = value();
        ws();
        if (t[p] == ',') {
          ++p;
          continue;
        }
        expect('}');
        return v;
      }
    }
    if (t[p] == '[') {
      v.k = jvalue::array;
      ++p;
      ws();
      if (t[p] == ']') return ++p, v;
      for (;;) {
        v.a.push_back(value());
        ws();
        if (t[p] == ',') {
          ++p;
          continue;
        }
        expect(']');
        return v;
      }
    }
    if (t[p] == '"') {
      v.k = jvalue::string;
      v.s = str();
      return v;
    }
    for (const char* w : {"true", "false", "null"})
      if (t.compare(p, std::strlen(w), w) == 0) {
        p += std::strlen(w);
        v.k = w[0] == 'n' ? jvalue::null : jvalue::boolean;
        v.b = w[0] == 't';
        return v;
      }
    std::size_t used = 0;
    v.n = std::stod(t.substr(p, 40), &used);
    if (used == 0) throw std::runtime_error("json: bad value at " + std::to_string(p));
    p += used;
    v.k = jvalue::number;
    return v;
  }
  jvalue parse() {
    jvalue v = value();
    ws();
    if (p != t.size()) throw std::runtime_error("json: trailing text");
    return v;
  }
};

// JSON null ⇔ NaN (or ±inf); numbers to 1e-11 relative.
void check_num(const jvalue& v, double x) {
  if (!std::isfinite(x)) {
    CHECK(v.k == jvalue::null);
  } else {
    REQUIRE(v.k == jvalue::number);
    CHECK(v.n == Approx(x).epsilon(1e-11).margin(1e-300));
  }
}

void check_csv_num(const std::string& f, double x) {
  if (x != x) {
    CHECK(f == "nan");
  } else {
    CHECK(std::stod(f) == Approx(x).epsilon(1e-11).margin(1e-300));
  }
}

std::vector<std::string> split(const std::string& line) {
  std::vector<std::string> r;
  std::stringstream ss(line);
  std::string f;
  while (std::getline(ss, f, ',')) r.push_back(f);
  return r;
}

// Two "layers" of a small model, one with a fully padded batch (NaN summaries).
std::vector<entropy_stats> make_layers() {
  std::vector<entropy_stats> layers;
  for (int l = 0; l < 3; ++l) {
    problem p(2, 3, 3, 20, 45, 16, 16, 50 + static_cast<unsigned>(l));
    std::vector<float> out(p.out_size());
    options o;
    o.scale = 0.25 * (1 << (2 * l));
    const std::vector<std::int64_t> kl{45, 0};
    if (l == 1) o.key_lengths = kl;
    entropy_stats st({.top_k = 4}, l + 10);
    attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(out), o, observe(st));
    layers.push_back(std::move(st));
  }
  return layers;
}

}  // namespace

TEST_CASE("entropy CSV: header, one line per (layer, batch, head), values read back", "[observe][report]") {
  const auto layers = make_layers();
  std::ostringstream os;
  write_entropy_csv(os, layers);
  std::istringstream is(os.str());
  std::string line;
  std::getline(is, line);
  CHECK(line == entropy_csv_header());
  const auto header = split(line);
  REQUIRE(header.size() == 23);
  std::size_t lines = 0;
  for (const auto& st : layers)
    for (const head_stats& h : st.heads) {
      REQUIRE(std::getline(is, line));
      ++lines;
      const auto f = split(line);
      REQUIRE(f.size() == header.size());
      INFO(line);
      CHECK(std::stoi(f[0]) == *st.layer);
      CHECK(std::stoll(f[1]) == h.batch);
      CHECK(std::stoll(f[2]) == h.head);
      CHECK(std::stoll(f[3]) == h.rows);
      CHECK(std::stoll(f[4]) == h.empty_rows);
      check_csv_num(f[6], h.entropy_mean);
      check_csv_num(f[7], h.entropy_min);
      check_csv_num(f[8], h.entropy_max);
      check_csv_num(f[9], h.norm_entropy_mean);
      check_csv_num(f[12], h.norm_entropy_std);
      check_csv_num(f[13], st.head_spread[static_cast<std::size_t>(h.batch)]);
      check_csv_num(f[14], h.sink_mass);
      check_csv_num(f[15], h.sink_rate);
      CHECK(f[16] == "4");
      check_csv_num(f[17], h.topk_mass);
      check_csv_num(f[18], h.mass_mean);
      CHECK(f[19] == (h.sink ? "1" : "0"));
      CHECK(f[20] == (h.collapsed ? "1" : "0"));
      CHECK(f[21] == (h.overloaded ? "1" : "0"));
      CHECK(std::stoll(f[22]) == h.norm_rows);
    }
  CHECK(lines == 3 * 2 * 3);
  CHECK_FALSE(std::getline(is, line));
  // Layer 1, batch 1 is fully padded: NaN means written as "nan".
  CHECK(os.str().find(",nan,") != std::string::npos);
}

TEST_CASE("entropy JSON: parses, and every field matches the statistics", "[observe][report]") {
  const auto layers = make_layers();
  std::ostringstream os;
  write_entropy_json(os, layers);
  const std::string text = os.str();
  jvalue doc;
  REQUIRE_NOTHROW(doc = jparser{text}.parse());
  CHECK(doc["format"].s == "attnkit.entropy/1");
  REQUIRE(doc["layers"].a.size() == layers.size());
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const entropy_stats& st = layers[l];
    const jvalue& L = doc["layers"][l];
    CHECK(L["layer"].n == *st.layer);
    CHECK(L["batch"].n == st.batch);
    CHECK(L["heads_count"].n == st.heads_count);
    CHECK(L["normalized"].b == st.normalized);
    CHECK(L["config"]["top_k"].n == 4);
    check_num(L["config"]["sink_epsilon"], 0.3);
    check_num(L["mean_norm_entropy"], st.mean_norm_entropy());
    check_num(L["spread"], st.spread);
    check_num(L["sink_head_rate"], st.sink_head_rate);
    REQUIRE(L["head_spread"].a.size() == st.head_spread.size());
    for (std::size_t b = 0; b < st.head_spread.size(); ++b) check_num(L["head_spread"][b], st.head_spread[b]);
    REQUIRE(L["heads"].a.size() == st.heads.size());
    REQUIRE(L["pooled_heads"].a.size() == st.pooled_heads.size());
    auto check_head = [](const jvalue& j, const head_stats& h) {
      CHECK(j["batch"].n == h.batch);
      CHECK(j["head"].n == h.head);
      CHECK(j["rows"].n == h.rows);
      CHECK(j["norm_rows"].n == h.norm_rows);
      CHECK(j["empty_rows"].n == h.empty_rows);
      check_num(j["entropy_mean"], h.entropy_mean);
      check_num(j["entropy_min"], h.entropy_min);
      check_num(j["entropy_max"], h.entropy_max);
      check_num(j["norm_entropy_mean"], h.norm_entropy_mean);
      check_num(j["norm_entropy_min"], h.norm_entropy_min);
      check_num(j["norm_entropy_max"], h.norm_entropy_max);
      check_num(j["sink_mass"], h.sink_mass);
      check_num(j["sink_rate"], h.sink_rate);
      check_num(j["topk_mass"], h.topk_mass);
      check_num(j["mass_mean"], h.mass_mean);
      CHECK(j["sink"].b == h.sink);
      CHECK(j["collapsed"].b == h.collapsed);
      CHECK(j["overloaded"].b == h.overloaded);
    };
    for (std::size_t k = 0; k < st.heads.size(); ++k) check_head(L["heads"][k], st.heads[k]);
    for (std::size_t k = 0; k < st.pooled_heads.size(); ++k) check_head(L["pooled_heads"][k], st.pooled_heads[k]);
  }
  CHECK(doc["layers"][1]["heads"][3]["norm_entropy_mean"].k == jvalue::null);  // padded batch
}

TEST_CASE("entropy heatmap SVG: one cell per layer × head, labels, colour bar", "[observe][report]") {
  const auto layers = make_layers();
  heatmap_options ho;
  ho.row_labels = {"scale 0.25", "scale 1", "scale <4>"};
  std::ostringstream os;
  write_entropy_heatmap_svg(os, layers, ho);
  const std::string svg = os.str();
  CHECK(svg.rfind("<svg xmlns=\"http://www.w3.org/2000/svg\"", 0) == 0);
  CHECK(svg.substr(svg.size() - 7) == "</svg>\n");
  std::size_t cells = 0;
  for (std::size_t p = svg.find("<title>layer "); p != std::string::npos; p = svg.find("<title>layer ", p + 1)) ++cells;
  CHECK(cells == 3 * 3);
  CHECK(svg.find("scale &lt;4&gt;") != std::string::npos);  // labels are escaped
  std::size_t rects = 0;
  for (std::size_t p = svg.find("<rect"); p != std::string::npos; p = svg.find("<rect", p + 1)) ++rects;
  CHECK(rects == 1 + 3 * 3 + 64 + 1);  // background, cells, colour-bar bands, bar frame
  CHECK(heatmap_colour(0.0) == "#440154");
  CHECK(heatmap_colour(1.0) == "#fde725");
  CHECK(heatmap_colour(std::nan("")) == "#bbbbbb");
  // Tags balanced (a cheap well-formedness check).
  std::size_t open = 0, close = 0;
  for (std::size_t p = svg.find("<text"); p != std::string::npos; p = svg.find("<text", p + 1)) ++open;
  for (std::size_t p = svg.find("</text>"); p != std::string::npos; p = svg.find("</text>", p + 1)) ++close;
  CHECK(open == close);
}

TEST_CASE("entropy heatmap gnuplot script: inline cells, flags, escaped labels", "[observe][report]") {
  const auto layers = make_layers();
  heatmap_options ho;
  ho.title = "a \"quoted\" title";
  ho.row_labels = {"scale 0.25", "scale 1", "scale \"4\""};
  std::ostringstream os;
  write_entropy_heatmap_gnuplot(os, layers, "out/heat.png", ho);
  const std::string gp = os.str();
  CHECK(gp.find("set terminal pngcairo") != std::string::npos);
  CHECK(gp.find("set output \"out/heat.png\"") != std::string::npos);
  CHECK(gp.find("set title \"a \\\"quoted\\\" title\"") != std::string::npos);
  CHECK(gp.find("\"scale \\\"4\\\"\" 2") != std::string::npos);  // row label of layer 2, escaped
  CHECK(gp.find("with image") != std::string::npos);
  // One data line per (layer, head) between "$cells << EOD" and "EOD": head, layer,
  // mean Ĥ of the pooled head (NaN written as NaN), collapsed, overloaded.
  std::istringstream is(gp.substr(gp.find("$cells << EOD\n") + 14));
  std::string line;
  std::getline(is, line);  // the column comment
  CHECK(line.rfind("# head layer", 0) == 0);
  std::size_t cells = 0;
  while (std::getline(is, line) && line != "EOD") {
    std::istringstream ls(line);
    std::size_t h = 0, l = 0;
    std::string value;
    int collapsed = -1, overloaded = -1;
    ls >> h >> l >> value >> collapsed >> overloaded;
    REQUIRE(l < layers.size());
    REQUIRE(h < layers[l].pooled_heads.size());
    const head_stats& hs = layers[l].pooled_heads[h];
    INFO(line);
    if (std::isnan(hs.norm_entropy_mean))
      CHECK(value == "NaN");
    else
      CHECK(std::stod(value) == Approx(hs.norm_entropy_mean).epsilon(1e-11));
    CHECK(collapsed == (hs.collapsed ? 1 : 0));
    CHECK(overloaded == (hs.overloaded ? 1 : 0));
    ++cells;
  }
  CHECK(line == "EOD");
  CHECK(cells == 3 * 3);
}
