#pragma once
// Helpers of the KV-cache tests: dense and paged caches of any element type with a
// NaN sentinel in every slot past the filled tokens (a kernel that reads beyond
// cache_seqlens turns its rows NaN), their stored values as float (what the
// kernel must read), a naive rotary embedding in double, and the comparison with
// the float64 oracle.
#include <attnkit/reference/reference.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <tuple>
#include <vector>

#include "support.hpp"

namespace kvt {

using namespace attnkit;
using attnkit_test::randn;

/// The archs the tests instantiate, plus xsimd::avx512bw (the tag of the wide decode
/// kernels) when the compiler targets it and the list lacks it.
template <class Tuple, class A>
struct append_unique;
template <class... Ts, class A>
struct append_unique<std::tuple<Ts...>, A> {
  using type = std::conditional_t<(std::is_same_v<Ts, A> || ...), std::tuple<Ts...>, std::tuple<Ts..., A>>;
};
#if XSIMD_WITH_AVX512BW
using archs = typename append_unique<attnkit_test::archs, xsimd::avx512bw>::type;
#else
using archs = attnkit_test::archs;
#endif
/// The portable path and the best one.
using two_archs = attnkit_test::best_archs;

template <class T>
constexpr index_t per = values_per_element<T>;
constexpr float nan_f = std::numeric_limits<float>::quiet_NaN();

/// One row of d values in storage type T (the library's conversions).
template <class T>
std::vector<T> stored(const float* x, index_t d) {
  std::vector<T> r(static_cast<std::size_t>(d / per<T>));
  if constexpr (std::is_same_v<T, float>)
    std::copy_n(x, d, r.data());
  else if constexpr (is_q8_v<T>)
    quantize_q8(x, d, r.data());
  else
    for (index_t i = 0; i < d; ++i) r[static_cast<std::size_t>(i)] = T::from_float(x[i]);
  return r;
}

/// The values of a stored row.
template <class T>
std::vector<float> values(const T* row, index_t d) {
  std::vector<float> r(static_cast<std::size_t>(d));
  detail::row_to_float(row, r.data(), d);
  return r;
}

/// A dense cache [B, Lmax, H, ·] (BSHD) or [B, H, Lmax, ·] (BHSD): tokens below
/// fill[b] random, every other slot NaN.
template <class T>
struct dense_cache {
  index_t B, Lmax, H, D, Dv;
  bool bshd_layout;
  std::vector<T> k, v;
  dense_cache(index_t b, index_t lmax, index_t h, index_t d, index_t dv, bool bshd_, const std::vector<std::int64_t>& fill,
              std::uint32_t seed)
      : B(b), Lmax(lmax), H(h), D(d), Dv(dv), bshd_layout(bshd_),
        k(static_cast<std::size_t>(b * lmax * h * d / per<T>)), v(static_cast<std::size_t>(b * lmax * h * dv / per<T>)) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> nd;
    std::vector<float> xk(static_cast<std::size_t>(d)), xv(static_cast<std::size_t>(dv));
    for (index_t bb = 0; bb < b; ++bb)
      for (index_t g = 0; g < h; ++g)
        for (index_t j = 0; j < lmax; ++j) {
          const bool filled = j < fill[static_cast<std::size_t>(bb)];
          for (auto& x : xk) x = filled ? nd(gen) : nan_f;
          for (auto& x : xv) x = filled ? nd(gen) : nan_f;
          put(kview(), bb, g, j, stored<T>(xk.data(), d));
          put(vview(), bb, g, j, stored<T>(xv.data(), dv));
        }
  }
  tensor_view<T> view_of(std::vector<T>& x, index_t d) {
    return bshd_layout ? bshd(x.data(), B, Lmax, H, d / per<T>) : bhsd(x.data(), B, H, Lmax, d / per<T>);
  }
  tensor_view<T> kview() { return view_of(k, D); }
  tensor_view<T> vview() { return view_of(v, Dv); }
  static void put(const tensor_view<T>& view, index_t b, index_t g, index_t j, const std::vector<T>& row) {
    std::copy(row.begin(), row.end(), view.row(b, g, j));
  }
  const T* row(bool is_k, index_t b, index_t g, index_t j) {
    return (is_k ? kview() : vview()).row(b, g, j);
  }
  /// Stored values as float, BHSD [B, H, Lmax, ·].
  std::vector<float> floats(bool is_k) {
    const index_t d = is_k ? D : Dv;
    std::vector<float> r(static_cast<std::size_t>(B * H * Lmax * d));
    for (index_t b = 0; b < B; ++b)
      for (index_t g = 0; g < H; ++g)
        for (index_t j = 0; j < Lmax; ++j) detail::row_to_float(row(is_k, b, g, j), r.data() + ((b * H + g) * Lmax + j) * d, d);
    return r;
  }
};

/// A paged cache: pool [num_pages, page_size, H, ·] with every sequence's pages
/// drawn at random (shuffled), unused table entries −1 (never read), filled tokens
/// random and every other slot NaN.
template <class T>
struct paged_buffers {
  index_t B, pages, ps, H, D, Dv, max_pages;
  std::vector<T> k, v;
  std::vector<std::int32_t> table;
  paged_buffers(index_t b, index_t max_pages_, index_t page_size, index_t h, index_t d, index_t dv,
                const std::vector<std::int64_t>& fill, const std::vector<std::int64_t>& reserve, std::uint32_t seed)
      : B(b), pages(b * max_pages_ + 3), ps(page_size), H(h), D(d), Dv(dv), max_pages(max_pages_),
        k(static_cast<std::size_t>(pages * ps * h * d / per<T>)), v(static_cast<std::size_t>(pages * ps * h * dv / per<T>)),
        table(static_cast<std::size_t>(b * max_pages_), -1) {
    std::vector<std::int32_t> perm(static_cast<std::size_t>(pages));
    std::iota(perm.begin(), perm.end(), 0);
    std::mt19937 gen(seed);
    std::shuffle(perm.begin(), perm.end(), gen);
    std::size_t next = 0;
    for (index_t bb = 0; bb < b; ++bb)  // pages for the tokens each sequence will hold
      for (index_t p = 0; p < detail::ceil_div(reserve[static_cast<std::size_t>(bb)], ps); ++p)
        table[static_cast<std::size_t>(bb * max_pages + p)] = perm[next++];
    std::normal_distribution<float> nd;
    std::vector<float> x(static_cast<std::size_t>(std::max(d, dv)), nan_f);
    for (auto* buf : {&k, &v}) {  // every slot NaN
      const index_t dd = buf == &k ? d : dv;
      const auto nan_row = stored<T>(x.data(), dd);
      for (std::size_t r = 0; r < buf->size() / nan_row.size(); ++r) std::copy(nan_row.begin(), nan_row.end(), buf->data() + r * nan_row.size());
    }
    for (index_t bb = 0; bb < b; ++bb)
      for (index_t g = 0; g < h; ++g)
        for (index_t j = 0; j < fill[static_cast<std::size_t>(bb)]; ++j) {
          for (index_t i = 0; i < d; ++i) x[static_cast<std::size_t>(i)] = nd(gen);
          const auto kr = stored<T>(x.data(), d);
          std::copy(kr.begin(), kr.end(), row(true, bb, g, j));
          for (index_t i = 0; i < dv; ++i) x[static_cast<std::size_t>(i)] = nd(gen);
          const auto vr = stored<T>(x.data(), dv);
          std::copy(vr.begin(), vr.end(), row(false, bb, g, j));
        }
  }
  paged_cache<T> kcache() { return paged(k.data(), pages, ps, H, D / per<T>); }
  paged_cache<T> vcache() { return paged(v.data(), pages, ps, H, Dv / per<T>); }
  T* row(bool is_k, index_t b, index_t g, index_t j) {
    const index_t page = table[static_cast<std::size_t>(b * max_pages + j / ps)];
    const index_t d = (is_k ? D : Dv) / per<T>;
    return (is_k ? k : v).data() + ((page * ps + j % ps) * H + g) * d;
  }
  /// Stored values of the first `len` tokens as float, BHSD [B, H, max_pages·ps, ·]
  /// (NaN past them).
  std::vector<float> floats(bool is_k, const std::vector<std::int64_t>& len) {
    const index_t d = is_k ? D : Dv, L = max_pages * ps;
    std::vector<float> r(static_cast<std::size_t>(B * H * L * d), nan_f);
    for (index_t b = 0; b < B; ++b)
      for (index_t g = 0; g < H; ++g)
        for (index_t j = 0; j < len[static_cast<std::size_t>(b)]; ++j)
          detail::row_to_float(row(is_k, b, g, j), r.data() + ((b * H + g) * L + j) * d, d);
    return r;
  }
};

/// Naive rotary embedding (double) of one row at position p.
inline std::vector<double> rotate_naive(const rotary_embedding& r, index_t p, const float* x, index_t d) {
  std::vector<double> y(x, x + d);
  const index_t half = r.rotary_dim / 2;
  for (index_t i = 0; i < half; ++i) {
    const index_t a = r.interleaved ? 2 * i : i, b = r.interleaved ? 2 * i + 1 : i + half;
    const double c = r.cos[p * half + i], s = r.sin[p * half + i];
    y[static_cast<std::size_t>(a)] = x[a] * c - x[b] * s;
    y[static_cast<std::size_t>(b)] = x[a] * s + x[b] * c;
  }
  return y;
}

/// RoPE tables of `positions` rows for rotary_dim dims (base 10000).
struct rope_tables {
  std::vector<float> cos, sin;
  rotary_embedding emb;
  rope_tables(index_t positions, index_t rotary_dim, bool interleaved) {
    const index_t half = rotary_dim / 2;
    for (index_t p = 0; p < positions; ++p)
      for (index_t i = 0; i < half; ++i) {
        const double th = static_cast<double>(p) * std::pow(10000.0, -2.0 * static_cast<double>(i) / static_cast<double>(rotary_dim));
        cos.push_back(static_cast<float>(std::cos(th)));
        sin.push_back(static_cast<float>(std::sin(th)));
      }
    emb = {cos.data(), sin.data(), positions, rotary_dim, interleaved};
  }
};

struct oracle_result {
  double err = 0;  ///< max |out − ref| / max |ref|
  bool nan_mismatch = false;
};

/// The float64 oracle on float caches kf / vf (BHSD [B, H, L, ·]) with key lengths
/// `len` and bottom-right causal (unless opt says otherwise), against `out` (BHSD
/// [B, Hq, Lq, Dv]).
template <class P>
oracle_result compare(const P& pol, const std::vector<float>& q, const std::vector<float>& kf,
                      const std::vector<float>& vf, const std::vector<float>& out, index_t B, index_t Hq, index_t H,
                      index_t Lq, index_t L, index_t D, index_t Dv, const std::vector<std::int64_t>& len,
                      options opt) {
  std::vector<double> ref(out.size());
  opt.key_lengths = len;
  opt.lse = nullptr;
  reference::attention(pol, bhsd(q.data(), B, Hq, Lq, D), bhsd(kf.data(), B, H, L, D), bhsd(vf.data(), B, H, L, Dv),
                       bhsd(ref.data(), B, Hq, Lq, Dv), opt);
  oracle_result r;
  double scale = 1e-30;
  for (double x : ref)
    if (!std::isnan(x)) scale = std::max(scale, std::abs(x));
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (std::isnan(ref[i]) != std::isnan(out[i])) r.nan_mismatch = true;
    if (!std::isnan(ref[i])) r.err = std::max(r.err, std::abs(out[i] - ref[i]) / scale);
  }
  return r;
}

/// Bytes of a buffer, for "nothing written" checks.
template <class T>
std::vector<unsigned char> bytes_of(const std::vector<T>& x) {
  std::vector<unsigned char> r(x.size() * sizeof(T));
  std::memcpy(r.data(), x.data(), r.size());
  return r;
}

}  // namespace kvt
