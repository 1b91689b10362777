#pragma once
// One fuzz case: a byte string decides the variant, the shapes, the memory layout
// of every tensor (BHSD, BSHD, or padded strides), the options and the data seed,
// and optionally injects one argument defect. Then
//   - an injected defect must raise attnkit::invalid_argument_error and leave the
//     output (and LSE) buffers untouched;
//   - otherwise the kernel and the float64 oracle must agree on whether the call is
//     valid; a valid call must match the oracle (2e-5 · max|oracle|, NaN where the
//     oracle is NaN, LSE likewise), must not write outside the output view's
//     elements (padding of strided outputs is checked), and must give bitwise the
//     same result for 1 and 3 threads (or a million: the thread cap).
// Overflow-prone fields (options.window, every pattern size, dilation and block,
// the permutation window, the thread count) are put at extremes (INT64_MAX and
// near it) some of the time, by bytes read after all the others, so inputs that
// end earlier decode as they always did.
// A failure prints the decoded case and aborts, which libFuzzer reports as a crash.
// Used by fuzz_attention.cpp (libFuzzer) and fuzz_replay.cpp (plain driver, ctest).
#include <attnkit/attnkit.hpp>
#include <attnkit/reference/reference.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace attnkit_fuzz {

using attnkit::index_t;

/// Reads small integers from the input; an exhausted input reads as zeros, so every
/// byte string (including the empty one) is a valid case.
class byte_reader {
 public:
  byte_reader(const std::uint8_t* p, std::size_t n) : p_(p), n_(n) {}
  /// A value in [0, m).
  std::uint32_t take(std::uint32_t m) {
    if (m <= 1) return 0;
    std::uint32_t x = next();
    if (m > 256) x |= next() << 8;
    return x % m;
  }
  /// True with probability about 1/k (false once the input is exhausted, so short
  /// inputs decode to plain calls).
  bool one_in(std::uint32_t k) { return k <= 1 || take(k) == k - 1; }

 private:
  std::uint32_t next() { return i_ < n_ ? p_[i_++] : 0u; }
  const std::uint8_t* p_;
  std::size_t n_, i_ = 0;
};

/// A tensor stored in a padded buffer with a chosen layout; padding holds a sentinel
/// so writes outside the view's elements are detected.
struct stored_tensor {
  std::vector<float> buf;
  attnkit::tensor_view<float> view;
  static constexpr float sentinel = -12345.0f;

  /// layout 0: BHSD, 1: BSHD, 2: BHSD with padding between rows and heads.
  void make(index_t B, index_t H, index_t L, index_t D, int layout) {
    index_t rowpad = layout == 2 ? 3 : 0, headpad = layout == 2 ? 5 : 0;
    std::array<index_t, 4> ext{B, H, L, D}, st{};
    if (layout == 1) {
      st = {L * H * D, D, H * D, 1};
    } else {
      const index_t row = D + rowpad, head = L * row + headpad;
      st = {H * head, head, row, 1};
    }
    index_t size = 1;  // one past the largest offset
    for (int a = 0; a < 4; ++a) size += ext[a] > 0 ? (ext[a] - 1) * st[a] : 0;
    buf.assign(static_cast<std::size_t>(size + 16), sentinel);  // 16 trailing guard floats
    view = attnkit::tensor_view<float>(buf.data(), ext, st);
  }
  void fill(std::mt19937& gen, float sigma) {
    std::normal_distribution<float> nd(0.0f, sigma);
    for_each([&](float& x) { x = nd(gen); });
  }
  /// For top_k, whose key choice must be the same in float32 and float64: keys are
  /// zero except dim 0, which holds distinct whole numbers (a shuffled 1..Lk per head),
  /// and queries hold whole numbers, so a row's logits q₀·k₀ are either all distinct
  /// by a wide margin or all exactly 0 (q₀ = 0: an exact tie, broken by key index).
  void fill_distinct_keys(std::mt19937& gen) {
    const auto& e = view.extent;
    std::vector<float> ranks(static_cast<std::size_t>(e[2]));
    for (index_t b = 0; b < e[0]; ++b)
      for (index_t h = 0; h < e[1]; ++h) {
        for (std::size_t j = 0; j < ranks.size(); ++j) ranks[j] = static_cast<float>(j + 1);
        std::shuffle(ranks.begin(), ranks.end(), gen);
        for (index_t s = 0; s < e[2]; ++s)
          for (index_t d = 0; d < e[3]; ++d) view(b, h, s, d) = d == 0 ? ranks[static_cast<std::size_t>(s)] : 0.0f;
      }
  }
  void fill_integers(std::mt19937& gen) {
    std::uniform_int_distribution<int> u(-3, 3);
    for_each([&](float& x) { x = static_cast<float>(u(gen)); });
  }
  template <class F>
  void for_each(F&& f) const {
    const auto& e = view.extent;
    for (index_t b = 0; b < e[0]; ++b)
      for (index_t h = 0; h < e[1]; ++h)
        for (index_t s = 0; s < e[2]; ++s)
          for (index_t d = 0; d < e[3]; ++d) f(view(b, h, s, d));
  }
  /// Number of buffer slots outside the view that no longer hold the sentinel.
  std::size_t padding_damage() const {
    std::vector<char> inside(buf.size(), 0);
    for_each([&](float& x) { inside[static_cast<std::size_t>(&x - buf.data())] = 1; });
    std::size_t bad = 0;
    for (std::size_t i = 0; i < buf.size(); ++i)
      if (!inside[i] && std::memcmp(&buf[i], &sentinel, sizeof(float)) != 0) ++bad;
    return bad;
  }
};

enum class defect : int {
  none,
  k_dim,            // k.dim != q.dim
  null_q,           // q.data == nullptr
  negative_extent,  // q.seq = -1
  gqa_ratio,        // out.heads != q.heads
  out_overlaps_q,   // out aliases q's buffer
  window_left,      // options.window.left = -2
  key_length_big,   // key_lengths[0] = Lk + 1
  key_length_size,  // key_lengths.size() != B
  mask_keys,        // mask last extent != Lk
  v_seq,            // v.seq != k.seq
  out_dim,          // out.dim != v.dim
  negative_stride,  // k.stride(seq) < 0
  threads,          // num_threads = -1
  scale_nan,        // scale = NaN
  softcap_negative, // softcap = -1
  out_huge_stride,  // an out stride of 2^62: the byte range overflows
  out_self_overlap, // out rows closer than Dv: two elements at one address
  lse_overlaps_k,   // options.lse inside k's buffer
  count
};

inline const char* defect_name(defect d) {
  static const char* names[] = {"none",          "k_dim",        "null_q",         "negative_extent",
                                "gqa_ratio",     "out_overlaps_q", "window_left",  "key_length_big",
                                "key_length_size", "mask_keys",   "v_seq",          "out_dim",
                                "negative_stride", "threads",     "scale_nan",      "softcap_negative",
                                "out_huge_stride", "out_self_overlap", "lse_overlaps_k"};
  return names[static_cast<int>(d)];
}

/// What the cases did, so a driver can show that they exercise something.
struct tally {
  long defects = 0;   ///< injected defects, all rejected
  long rejected = 0;  ///< option combinations both kernel and oracle refused
  long compared = 0;  ///< valid calls matched against the oracle
  long rows = 0;      ///< query rows compared
};
inline tally& counts() {
  static tally t;
  return t;
}

[[noreturn]] inline void report(const std::string& what, const std::string& desc) {
  std::fprintf(stderr, "attnkit fuzz FAILURE: %s\n  case: %s\n", what.c_str(), desc.c_str());
  std::fflush(stderr);
  std::abort();
}

/// Bitwise equality that treats every NaN as equal to every NaN.
inline bool same_bits(float a, float b) {
  if (std::isnan(a) && std::isnan(b)) return true;
  return std::memcmp(&a, &b, sizeof(float)) == 0;
}

/// Everything decoded from the bytes except the policy.
struct fuzz_case {
  index_t B = 1, Hkv = 1, group = 1, Lq = 1, Lk = 1, D = 1, Dv = 1;
  int layout[4] = {0, 0, 0, 0};
  float sigma = 1.0f;
  std::uint32_t seed = 0;
  attnkit::options opt;
  bool want_lse = false, use_mask = false, use_bias = false;
  bool integer_qk = false;  ///< q, k hold whole numbers (set for top_k)
  index_t mask_ext[3] = {1, 1, 1};
  std::vector<std::int64_t> key_lengths;
  std::vector<float> slopes, sinks;
  defect bad = defect::none;
  bool huge_threads = false;  ///< the thread-count comparison asks for a million threads
  std::string policy_name;

  index_t Hq() const { return Hkv * group; }
  std::string describe() const {
    std::ostringstream os;
    os << "policy=" << policy_name << " B=" << B << " Hq=" << Hq() << " Hkv=" << Hkv << " Lq=" << Lq << " Lk=" << Lk
       << " D=" << D << " Dv=" << Dv << " layouts=" << layout[0] << layout[1] << layout[2] << layout[3]
       << " sigma=" << sigma << " seed=" << seed << " causal=" << static_cast<int>(opt.causal)
       << " window=" << opt.window.left << "," << opt.window.right << " mask=" << use_mask << "(" << mask_ext[0]
       << "," << mask_ext[1] << "," << mask_ext[2] << ") bias=" << use_bias << " key_lengths=" << key_lengths.size()
       << " alibi=" << slopes.size() << " sinks=" << sinks.size() << " softcap=" << opt.softcap
       << " scale=" << (opt.scale ? *opt.scale : -1.0) << " masked_rows=" << static_cast<int>(opt.masked_rows)
       << " lse=" << want_lse << " defect=" << defect_name(bad) << " huge_threads=" << huge_threads;
    return os.str();
  }
};

inline fuzz_case decode_case(byte_reader& in, bool self_attention) {
  fuzz_case c;
  c.B = 1 + in.take(2);
  c.Hkv = 1 + in.take(3);
  c.group = 1 + in.take(3);
  c.Lq = in.take(40);
  if (in.one_in(3)) c.Lq += 16 + in.take(150);  // past one query block
  c.Lk = in.one_in(2) || self_attention ? c.Lq : in.take(200);
  if (self_attention) c.Lk = c.Lq;
  c.D = 1 + in.take(48);
  c.Dv = in.one_in(2) ? c.D : 1 + in.take(40);
  for (int& l : c.layout) l = static_cast<int>(in.take(3));
  const float sigmas[] = {1.0f, 0.3f, 2.0f, 3.0f};
  c.sigma = sigmas[in.take(4)];
  c.seed = in.take(65536);
  c.opt.causal = static_cast<attnkit::causal>(in.take(3));
  if (in.one_in(4)) c.opt.window = {static_cast<index_t>(in.take(40)) - 1, static_cast<index_t>(in.take(40)) - 1};
  if (in.one_in(4)) {
    c.use_mask = true;
    c.mask_ext[0] = in.one_in(2) ? 1 : c.B;
    c.mask_ext[1] = in.one_in(2) ? 1 : c.Hq();
    c.mask_ext[2] = in.one_in(2) ? 1 : c.Lq;
  }
  if (in.one_in(5)) c.use_bias = true;
  if (in.one_in(4))
    for (index_t b = 0; b < c.B; ++b) c.key_lengths.push_back(static_cast<std::int64_t>(in.take(static_cast<std::uint32_t>(c.Lk + 1))));
  if (in.one_in(5))
    for (index_t h = 0; h < c.Hq(); ++h) c.slopes.push_back(0.01f * static_cast<float>(1 + in.take(50)));
  if (in.one_in(6))
    for (index_t h = 0; h < c.Hq(); ++h) c.sinks.push_back(0.25f * static_cast<float>(in.take(17)) - 2.0f);
  if (in.one_in(5)) c.opt.softcap = 1.0f + static_cast<float>(in.take(30));
  if (in.one_in(5)) c.opt.scale = in.one_in(2) ? 0.05 : 1.0;
  c.opt.masked_rows = in.one_in(2) ? attnkit::masked_rows::zero : attnkit::masked_rows::nan;
  c.want_lse = in.one_in(3);
  if (in.one_in(4)) c.bad = static_cast<defect>(1 + in.take(static_cast<std::uint32_t>(defect::count) - 1));
  return c;
}

/// An extreme size: INT64_MAX, near it, half of it, or far past any length here.
inline index_t pick_extreme(byte_reader& in) {
  constexpr index_t max = std::numeric_limits<index_t>::max();
  constexpr index_t picks[] = {max, max - 1, max / 2, max / 2 + 1, index_t{1} << 40, index_t{1} << 32, 1000, 257};
  return picks[in.take(8)];
}
/// `value` most of the time, an extreme one about one time in six.
inline index_t extreme(byte_reader& in, index_t value) { return in.one_in(6) ? pick_extreme(in) : value; }

/// The options' overflow-prone fields at extremes (read after everything else).
inline void decode_extremes(byte_reader& in, fuzz_case& c) {
  if (in.one_in(5)) {
    if (in.one_in(2))
      c.opt.window.left = pick_extreme(in);
    else if (in.one_in(2))
      c.opt.window.right = pick_extreme(in);
    else
      c.opt.window = {pick_extreme(in), pick_extreme(in)};
  }
  c.huge_threads = in.one_in(6);
}

/// Runs one decoded case for one policy; aborts on a finding.
template <class Policy>
void check_case(const Policy& pol, fuzz_case c) {
  const std::string desc = c.describe();
  const index_t Hq = c.Hq();
  std::mt19937 gen(c.seed);
  stored_tensor q, k, v, out;
  q.make(c.B, Hq, c.Lq, c.D, c.layout[0]);
  k.make(c.B, c.Hkv, c.Lk, c.D, c.layout[1]);
  v.make(c.B, c.Hkv, c.Lk, c.Dv, c.layout[2]);
  out.make(c.B, Hq, c.Lq, c.Dv, c.layout[3]);
  if (c.integer_qk) {
    q.fill_integers(gen);
    k.fill_distinct_keys(gen);
  } else {
    q.fill(gen, c.sigma);
    k.fill(gen, c.sigma);
  }
  v.fill(gen, 1.0f);

  attnkit::options opt = c.opt;
  const index_t mask_cells = c.mask_ext[0] * c.mask_ext[1] * c.mask_ext[2] * c.Lk;
  std::vector<std::uint8_t> mask_bytes;  // viewed as bool (vector<bool> has no data())
  if (c.use_mask) {
    mask_bytes.resize(static_cast<std::size_t>(mask_cells));
    std::bernoulli_distribution keep(0.7);
    for (auto& m : mask_bytes) m = keep(gen) ? 1 : 0;
    opt.mask = attnkit::bhsd(reinterpret_cast<const bool*>(mask_bytes.data()), c.mask_ext[0], c.mask_ext[1],
                             c.mask_ext[2], c.Lk);
    for (int a = 0; a < 3; ++a)
      if (opt.mask.extent[static_cast<std::size_t>(a)] == 1) opt.mask.stride[static_cast<std::size_t>(a)] = 0;
  }
  std::vector<float> bias;
  if (c.use_bias) {
    bias.resize(static_cast<std::size_t>(c.B * Hq * c.Lq * c.Lk));
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (auto& x : bias) x = nd(gen);
    opt.bias = attnkit::bhsd(static_cast<const float*>(bias.data()), c.B, Hq, c.Lq, c.Lk);
  }
  auto key_lengths = c.key_lengths;
  opt.key_lengths = key_lengths;
  opt.alibi_slopes = c.slopes;
  opt.sinks = c.sinks;
  std::vector<float> lse(static_cast<std::size_t>(c.B * Hq * c.Lq) + 1, stored_tensor::sentinel);
  if (c.want_lse) opt.lse = lse.data();

  // The views as passed; a defect edits one of them.
  attnkit::tensor_view<float> qv = q.view, kv = k.view, vv = v.view, ov = out.view;
  std::vector<std::int64_t> wrong_lengths;
  std::vector<std::uint8_t> wrong_mask;
  // An empty view may be null and overlaps nothing: those defects need Lq > 0.
  if ((c.bad == defect::null_q || c.bad == defect::out_overlaps_q) && c.Lq == 0) c.bad = defect::negative_extent;
  int long_axis = -1;  // an axis of out with extent > 1 (batch, heads or seq)
  for (int a : {2, 1, 0})
    if (long_axis < 0 && ov.extent[static_cast<std::size_t>(a)] > 1 && c.Dv > 0) long_axis = a;
  if (c.bad == defect::out_huge_stride && (long_axis < 0 || c.Lq == 0)) c.bad = defect::negative_extent;
  if (c.bad == defect::out_self_overlap && c.Lq < 2) c.bad = defect::negative_extent;
  if (c.bad == defect::lse_overlaps_k && (c.Lk == 0 || c.Lq == 0)) c.bad = defect::negative_extent;
  switch (c.bad) {
    case defect::none: break;
    case defect::k_dim: kv.extent[3] = c.D + 1; k.make(c.B, c.Hkv, c.Lk, c.D + 1, 0); kv = k.view; break;
    case defect::null_q: qv.data = nullptr; break;
    case defect::negative_extent: qv.extent[2] = -1; break;
    case defect::gqa_ratio: ov.extent[1] = Hq + 1; out.make(c.B, Hq + 1, c.Lq, c.Dv, 0); ov = out.view; break;
    case defect::out_overlaps_q:
      // out starts inside q's buffer; the call must refuse before writing anything.
      ov = attnkit::tensor_view<float>(q.buf.data(), out.view.extent, out.view.stride);
      break;
    case defect::window_left: opt.window.left = -2; break;
    case defect::key_length_big:
      wrong_lengths.assign(static_cast<std::size_t>(c.B), 0);
      wrong_lengths[0] = c.Lk + 1;
      opt.key_lengths = wrong_lengths;
      break;
    case defect::key_length_size:
      wrong_lengths.assign(static_cast<std::size_t>(c.B + 1), 0);
      opt.key_lengths = wrong_lengths;
      break;
    case defect::mask_keys:
      wrong_mask.assign(static_cast<std::size_t>(c.Lk + 1), 1);
      opt.mask = attnkit::bhsd(reinterpret_cast<const bool*>(wrong_mask.data()), 1, 1, 1, c.Lk + 1);
      opt.mask.stride = {0, 0, 0, 1};
      break;
    case defect::v_seq: v.make(c.B, c.Hkv, c.Lk + 1, c.Dv, 0); vv = v.view; break;
    case defect::out_dim: out.make(c.B, Hq, c.Lq, c.Dv + 1, 0); ov = out.view; break;
    case defect::negative_stride: kv.stride[2] = -kv.stride[2] - 1; break;
    case defect::threads: opt.num_threads = -1; break;
    case defect::scale_nan: opt.scale = std::nan(""); break;
    case defect::softcap_negative: opt.softcap = -1.0f; break;
    case defect::out_huge_stride: ov.stride[static_cast<std::size_t>(long_axis)] = index_t{1} << 62; break;
    case defect::out_self_overlap: ov.stride[2] = c.Dv - 1; break;         // Lq >= 2: rows overlap (or broadcast)
    case defect::lse_overlaps_k: opt.lse = k.buf.data() + 1; break;
    case defect::count: break;
  }

  const std::vector<float> out_before = out.buf, q_before = q.buf, lse_before = lse;
  auto untouched = [&](const char* when) {
    if (std::memcmp(out.buf.data(), out_before.data(), out.buf.size() * sizeof(float)) != 0 ||
        std::memcmp(q.buf.data(), q_before.data(), q.buf.size() * sizeof(float)) != 0)
      report(std::string("output written before an error was raised (") + when + ")", desc);
    if (std::memcmp(lse.data(), lse_before.data(), lse.size() * sizeof(float)) != 0)
      report(std::string("LSE written before an error was raised (") + when + ")", desc);
  };

  opt.num_threads = c.bad == defect::threads ? -1 : 1;
  bool kernel_threw = false;
  try {
    attnkit::attention(pol, attnkit::tensor_view<const float>(qv), attnkit::tensor_view<const float>(kv),
                       attnkit::tensor_view<const float>(vv), ov, opt);
  } catch (const attnkit::invalid_argument_error& e) {
    kernel_threw = true;
    if (std::string(e.argument()).empty()) report("invalid_argument_error without an argument name", desc);
  } catch (const std::exception& e) {
    report(std::string("unexpected exception type: ") + e.what(), desc);
  }
  if (c.bad != defect::none) {
    if (!kernel_threw) report("an injected defect was accepted", desc);
    untouched("injected defect");
    ++counts().defects;
    return;
  }

  // The oracle: same views (contiguous double output), LSE from its result.
  std::vector<double> ref(static_cast<std::size_t>(c.B * Hq * c.Lq * c.Dv));
  attnkit::options ropt = opt;
  std::vector<float> ref_lse(lse.size());  // the oracle validates and writes LSE too
  ropt.lse = c.want_lse ? ref_lse.data() : nullptr;
  ropt.num_threads = 1;
  bool oracle_threw = false;
  attnkit::reference::result res;
  try {
    res = attnkit::reference::attention(pol, attnkit::tensor_view<const float>(qv), attnkit::tensor_view<const float>(kv),
                                        attnkit::tensor_view<const float>(vv),
                                        attnkit::bhsd(ref.data(), c.B, Hq, c.Lq, c.Dv), ropt);
  } catch (const attnkit::invalid_argument_error&) {
    oracle_threw = true;
  }
  if (kernel_threw != oracle_threw)
    report(std::string("kernel and oracle disagree on validity: kernel ") + (kernel_threw ? "threw" : "accepted") +
               ", oracle " + (oracle_threw ? "threw" : "accepted"),
           desc);
  if (kernel_threw) {
    untouched("rejected option");
    ++counts().rejected;
    return;
  }

  if (out.padding_damage() != 0) report("write outside the output view's elements", desc);
  double scale = 1e-30;
  for (double r : ref)
    if (!std::isnan(r)) scale = std::max(scale, std::abs(r));
  std::size_t idx = 0;
  double worst = 0;
  for (index_t b = 0; b < c.B; ++b)
    for (index_t h = 0; h < Hq; ++h)
      for (index_t i = 0; i < c.Lq; ++i)
        for (index_t d = 0; d < c.Dv; ++d, ++idx) {
          const double r = ref[idx], o = ov(b, h, i, d);
          if (std::isnan(r) != std::isnan(o)) report("NaN pattern differs from the oracle", desc);
          if (!std::isnan(r)) worst = std::max(worst, std::abs(o - r) / scale);
        }
  // The oracle tests' tolerance, 2e-5 relative to max|oracle|. When the weighted sums
  // cancel (outputs far smaller than the values they mix, e.g. D = 1 linear attention
  // averaging values of both signs), the scale is instead the same call on |v|: a dot
  // product's rounding error is bounded by ε·Σ|w·v|, not by its result. Every policy
  // fuzzed here has nonnegative weights, so that call is exactly Σ|w||v| per row.
  constexpr double tol = 2e-5;
  if (worst > tol) {
    stored_tensor va = v;
    va.view.data = va.buf.data();
    va.for_each([](float& x) { x = std::abs(x); });
    std::vector<double> mag(ref.size());
    attnkit::reference::attention(pol, attnkit::tensor_view<const float>(qv), attnkit::tensor_view<const float>(kv),
                                  attnkit::tensor_view<const float>(va.view),
                                  attnkit::bhsd(mag.data(), c.B, Hq, c.Lq, c.Dv), ropt);
    double mscale = 1e-30;
    for (double m : mag)
      if (!std::isnan(m)) mscale = std::max(mscale, std::abs(m));
    if (worst * scale / std::max(scale, mscale) > tol)
      report("output differs from the oracle by " + std::to_string(worst) + " of max|oracle| and " +
                 std::to_string(worst * scale / mscale) + " of max|oracle on |v||, > " + std::to_string(tol),
             desc);
  }
  if (c.want_lse) {
    for (std::size_t r = 0; r + 1 < lse.size(); ++r) {
      const double want = res.lse[r];
      if (std::isfinite(want)) {
        if (!(std::abs(lse[r] - want) <= tol * std::max(1.0, std::abs(want)))) report("LSE differs from the oracle", desc);
      } else if (!(lse[r] == static_cast<float>(want))) {
        report("LSE of a row without keys differs from the oracle", desc);
      }
    }
    if (!same_bits(lse.back(), stored_tensor::sentinel)) report("write past the LSE buffer", desc);
  }

  // Thread-count independence: 3 threads (or a million, lowered to the cap) give
  // bitwise the same output.
  const std::vector<float> once = out.buf;
  opt.num_threads = c.huge_threads ? 1'000'000 : 3;
  attnkit::attention(pol, attnkit::tensor_view<const float>(qv), attnkit::tensor_view<const float>(kv),
                     attnkit::tensor_view<const float>(vv), ov, opt);
  for (std::size_t i = 0; i < once.size(); ++i)
    if (!same_bits(once[i], out.buf[i])) report("1 and 3 (or a million) threads differ", desc);
  ++counts().compared;
  counts().rows += c.B * Hq * c.Lq;
}

/// Decodes the policy and runs the case: the entry point of both drivers.
inline void run_one(const std::uint8_t* data, std::size_t size) {
  byte_reader in(data, size);
  const auto variant = in.take(16);
  const bool self = variant == 13;
  fuzz_case c = decode_case(in, self);
  namespace ak = attnkit;
  namespace pt = attnkit::pattern;
  const index_t w = static_cast<index_t>(in.take(24));
  std::vector<std::uint8_t> layout_bits;
  // Every case reads its own fields first (the order inputs always decoded in),
  // then their extremes, then the options' (decode_extremes).
  const auto run = [&](const auto& pol) {
    decode_extremes(in, c);
    check_case(pol, c);
  };
  const auto ix = [&](std::uint32_t m) { return static_cast<index_t>(in.take(m)); };
  switch (variant) {
    case 0: c.policy_name = "softmax"; run(ak::softmax{}); break;
    case 1: c.policy_name = "softmax(precise)"; run(ak::softmax{.exp = ak::exp_mode::precise}); break;
    case 2: c.policy_name = "sigmoid"; run(ak::sigmoid{}); break;
    case 3: c.policy_name = "linear(elu+1)"; run(ak::linear{ak::feature::elu_plus_one{}}); break;
    case 4: c.policy_name = "log_normal"; run(ak::log_normal{}); break;
    case 5: c.policy_name = "log_normal(diag)"; run(ak::log_normal{.diag = true}); break;
    case 6: {
      c.policy_name = "sliding_window";
      const index_t right = ix(5);
      run(ak::sparse{pt::sliding_window{extreme(in, w), extreme(in, right)}});
      break;
    }
    case 7: {
      c.policy_name = "sink_window";
      const index_t sinks = ix(5);
      run(ak::sparse{pt::sink_window{extreme(in, sinks), extreme(in, w)}});
      break;
    }
    case 8: {
      c.policy_name = "dilated_window";
      const index_t dil = 1 + ix(3);
      run(ak::sparse{pt::dilated_window{extreme(in, w), extreme(in, dil)}});
      break;
    }
    case 9: {
      c.policy_name = "neighborhood_1d";
      const index_t dil = 1 + ix(3);
      run(ak::sparse{pt::neighborhood_1d{extreme(in, 1 + w), extreme(in, dil)}});
      break;
    }
    case 10: {
      c.policy_name = "power_attention";
      const index_t sinks = ix(3), local = ix(3);
      run(ak::sparse{pt::power_attention{extreme(in, 1 + w), extreme(in, sinks), extreme(in, local)}});
      break;
    }
    case 11: {
      c.policy_name = "block_sparse";
      const index_t bq = 1 + ix(40), bk = 1 + ix(40);
      const index_t nq = (c.Lq + bq - 1) / bq, nk = (c.Lk + bk - 1) / bk;
      layout_bits.resize(static_cast<std::size_t>(std::max<index_t>(1, nq * nk)));
      for (auto& x : layout_bits) x = in.one_in(2) ? 1 : 0;
      // Extreme blocks: one block holds every row (or key); the layout's first
      // cell then decides, and the counts stay 1 (or what they were).
      const index_t ebq = extreme(in, bq), ebk = extreme(in, bk);
      const index_t enq = ebq == bq ? nq : 1, enk = ebk == bk ? nk : 1;
      if (enq * enk > nq * nk) layout_bits.resize(static_cast<std::size_t>(enq * enk), 1);
      run(ak::sparse{pt::block_sparse{reinterpret_cast<const bool*>(layout_bits.data()), ebq, ebk, enq, enk}});
      break;
    }
    case 12: {
      c.policy_name = "flex_prefill";
      const double gamma = 0.5 + 0.05 * in.take(10);
      const index_t block = 1 + ix(40), budget = ix(3);
      run(ak::sparse{pt::flex_prefill{.gamma = gamma, .block = extreme(in, block), .min_budget = extreme(in, budget)}});
      break;
    }
    case 13: {
      c.policy_name = "stochastic_permutation";
      const std::uint64_t seed = in.take(1000);
      const auto kind = static_cast<ak::window_kind>(in.take(3));
      run(ak::stochastic_permutation{.window = extreme(in, w), .seed = seed, .kind = kind});
      break;
    }
    case 14: {
      // top_k: logits must order the same in float32 and float64 (fill_distinct_keys),
      // so nothing else is added to them.
      c.policy_name = "top_k";
      c.integer_qk = true;
      c.use_bias = false;
      c.slopes.clear();
      c.opt.softcap = 0.0f;
      const index_t kk = ix(12);
      const bool soft = in.one_in(2);
      const index_t ek = extreme(in, kk);
      if (soft)
        run(ak::sparse{pt::top_k{ek}});
      else
        run(ak::sparse{pt::top_k{ek}, ak::sigmoid{}});
      break;
    }
    case 15: {
      c.policy_name = "sliding_window+sigmoid";
      const index_t right = ix(5);
      run(ak::sparse{pt::sliding_window{extreme(in, w), extreme(in, right)}, ak::sigmoid{}});
      break;
    }
    default: break;
  }
}

}  // namespace attnkit_fuzz
