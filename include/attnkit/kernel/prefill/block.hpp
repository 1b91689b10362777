#pragma once
/// \file
/// One prefill task: a block of query rows of one head, its strips and key spans,
/// and the prefetches that hide the block's Q, O and lazily packed K/V misses.
#include <algorithm>
#include <vector>

#include "../../simd/prefetch.hpp"
#include "chunk.hpp"
#include "epilogue.hpp"
#include "gather.hpp"

namespace attnkit::detail {

/// Rows per query block: a multiple of the strip height, sized so Q, O and the
/// current K/V tiles stay in L2.
template <class Arch>
inline constexpr int block_rows = 24 * simd::tile_shape<Arch>::rows;

/// Rows per task for a call: the L2-sized default, smaller when every row sees a
/// narrow band of keys (a local window), so tiles outside the band stay rare.
template <class Arch>
inline int choose_block_rows(index_t band) {
  constexpr int MR = simd::tile_shape<Arch>::rows;
  if (band <= 0) return block_rows<Arch>;
  const index_t rows = std::clamp<index_t>(band / 4, 4 * MR, block_rows<Arch>);
  return static_cast<int>(rows / MR * MR);
}

/// Query rows [row0, row0 + n) of head (b, h): one task (n = 0: none).
struct block_ref {
  index_t b = 0, h = 0, row0 = 0;
  int n = 0;
};

/// Query rows [row0, row0 + n) of head (b, h) against packed head `bg` of c.kv.
/// With a pattern that reorders rows, `next` (the task this thread will likely run
/// next) has its query rows prefetched during this one's key loop.
template <class Arch, class Pol, class Obs, class Keys>
void run_rows(const quadratic_call<Arch, Pol, Keys>& c, Obs& obs, int slot, index_t b, index_t h, index_t row0, int n,
              const block_ref& next, index_t bg) {
  using tile = simd::tile_shape<Arch>;
  constexpr int MR = tile::rows, BN = tile::keys;
  const problem_shape& sh = c.shape;
  const options& opt = c.opt;
  const index_t D = sh.head_dim, Dvp = c.kv->vdim_padded;
  const batch_keys bk = keys_of_batch(opt, b, sh.q_len, sh.k_len);

  block_scratch& sc = c.ws.slot(slot).template get<block_scratch>();
  auto grow = [](auto& vec, std::size_t size) {
    if (vec.size() < size) vec.resize(size);
  };
  grow(sc.q, static_cast<std::size_t>(n * D));
  grow(sc.wide, static_cast<std::size_t>(16 * D));
  grow(sc.o, static_cast<std::size_t>(n * Dvp));
  grow(sc.tile, MR * BN);
  for (auto* v : {&sc.m, &sc.l, &sc.t, &sc.row_scale, &sc.first}) grow(*v, static_cast<std::size_t>(n));
  constexpr int W = tile::width;
  // Per row, a vector of partial weight sums (softmax's denominator, the divisor of
  // ℓ1-normalised rows, the mass of unnormalised ones for the observer).
  grow(sc.lvec, static_cast<std::size_t>(n * W));
  simd::fill<Arch>(sc.lvec.data(), 0.0f, n * W);
  const int K = c.obs_topk;
  if constexpr (Obs::enabled) {
    grow(sc.topk, static_cast<std::size_t>(n * K));
    grow(sc.extras, static_cast<std::size_t>(K));
    std::fill_n(sc.first.data(), n, neg_inf);
    std::fill_n(sc.topk.data(), n * K, neg_inf);
  }
  for (auto* v : {&sc.lo, &sc.hi, &sc.count}) grow(*v, static_cast<std::size_t>(n));

  // Scaled Q rows, zeroed accumulators, per-row key intervals.
  index_t lo_min = bk.lk, hi_max = 0;
  // The token a skeleton row stands for (itself, unless the pattern reorders rows).
  const auto token = [&](index_t i) {
    if constexpr (Keys::reordered)
      return c.keys.token(h, i);
    else
      return i;
  };
  constexpr bool reordered = Keys::reordered;
  for (int r = 0; r < n; ++r) {
    simd::scale_copy<Arch>(c.q.row(b, h, token(row0 + r)), c.q_scale, sc.q.data() + r * D, D);
    key_range kr = analytic_range(opt, bk, row0 + r);
    if constexpr (Keys::gathers) {  // positions in the block's gathered keys
      const key_range pr = c.keys.gathered_hull(b, h, row0 + r, row0, n);
      kr.lo = std::max(kr.lo, pr.lo);
      kr.hi = std::max(kr.lo, std::min(kr.hi, pr.hi));
    } else if constexpr (Keys::active) {
      const key_range pr = c.keys.hull(b, h, row0 + r);
      kr.lo = std::max(kr.lo, pr.lo);
      kr.hi = std::max(kr.lo, std::min(kr.hi, pr.hi));
    }
    sc.lo[r] = kr.lo;
    sc.hi[r] = kr.hi;
    sc.count[r] = c.count_dynamic ? 0 : kr.size();
    if (kr.size() > 0) {
      lo_min = std::min(lo_min, kr.lo);
      hi_max = std::max(hi_max, kr.hi);
    }
    sc.m[r] = neg_inf;
    sc.l[r] = 0.0f;
    sc.t[r] = 0.0f;
  }
  simd::fill<Arch>(sc.o.data(), 0.0f, n * Dvp);
  if constexpr (Keys::prepares) {
    // A data-dependent pattern decides the block's keys from its logits (top_k) and
    // may narrow the rows' intervals.
    c.keys.prepare(c, sc, b, h, bk, row0, n);
    lo_min = bk.lk, hi_max = 0;
    for (int r = 0; r < n; ++r)
      if (sc.hi[r] > sc.lo[r]) {
        lo_min = std::min(lo_min, sc.lo[r]);
        hi_max = std::max(hi_max, sc.hi[r]);
      }
  }

  // The weight function's parameters for this batch (e.g. sigmoid's −ln Lk bias).
  const auto wp = resolve_weight(c.pol, weight_context{bk.lk, sh.q_len, sh.head_dim});

  // The strips and the union / intersection of their rows' key intervals.
  auto& strips = sc.strips;
  strips.clear();
  for (int r0 = 0, R = 0; r0 < n; r0 += R) {
    R = std::min(MR, n - r0);
    if constexpr (Keys::active) {
      // A strip never straddles the pattern's query blocks: a straddling strip sees
      // the union of two blocks' key sets, so its tiles turn partial (element test).
      const index_t rb = c.keys.row_block(), i = row0 + r0;
      if (rb > 0) R = static_cast<int>(std::min<index_t>(R, sat_mul(i / rb + 1, rb) - i));
    }
    strip_keys sk{r0, R, bk.lk, 0, bk.lk, 0};
    for (int r = r0; r < r0 + R; ++r) {
      sk.lo_lo = std::min(sk.lo_lo, sc.lo[r]);
      sk.lo_hi = std::max(sk.lo_hi, sc.lo[r]);
      sk.hi_lo = std::min(sk.hi_lo, sc.hi[r]);
      sk.hi_hi = std::max(sk.hi_hi, sc.hi[r]);
    }
    if (sk.hi_hi > sk.lo_lo) strips.push_back(sk);  // else: empty for every row
  }
  // Q rows are read at the block's start and O rows written at its end; left to
  // the hardware prefetcher, each is a burst of misses that stalls the core (in a
  // banded call, where a block does little work, a tenth of the time). So are the
  // source K/V rows of a lazily packed tile. Their prefetches are spread over the
  // block's strip steps instead, a few lines each: this block's output rows, the
  // next block's query rows (reordered rows are scattered, so the hardware could
  // not find them at all) and, when the next task continues this head's rows, the
  // tile after this block's last one, which that task will pack.
  index_t steps = 0;
  for (const strip_keys& sk : strips) steps += (sk.hi_hi + BN - 1) / BN - sk.lo_lo / BN;
  steps = std::max<index_t>(steps, 1);
  int pf_rows = static_cast<int>((std::max(n, next.n) + steps - 1) / steps);
  int pf_out = 0, pf_next = 0, pf_key = BN, pf_keys = 0;
  index_t pf_tile = -1;
  if (next.n > 0 && next.b == b && next.h == h && next.row0 == row0 + n && hi_max > lo_min) {
    pf_tile = (hi_max - 1) / BN + 1;
    pf_key = 0;
    pf_keys = static_cast<int>((BN + steps - 1) / steps);
  }
  const auto prefetch_some = [&] {
    const auto vbytes = static_cast<std::size_t>(sh.value_dim) * sizeof(float);
    for (int e = pf_out + pf_rows; pf_out < std::min(n, e); ++pf_out)
      simd::prefetch_row_for_write(c.out.row(b, h, token(row0 + pf_out)), vbytes);
    for (int e = pf_next + pf_rows; pf_next < std::min(next.n, e); ++pf_next) {
      index_t i = next.row0 + pf_next;
      if constexpr (reordered) i = c.keys.token(next.h, i);
      simd::prefetch_row(c.q.row(next.b, next.h, i), static_cast<std::size_t>(D) * sizeof(float));
    }
    if (pf_key < BN) {
      c.kv->prefetch_sources(bg, pf_tile, pf_key, pf_key + pf_keys);
      pf_key += pf_keys;
    }
  };
  // A narrow band (every strip sees at most max_chunk_keys keys, plus its edges)
  // is done a strip at once, its K/V window staying in L2 from strip to strip.
  // Longer ranges go in spans of K/V tiles that fit L2 together (at least one
  // chunk's worth), every strip of the block through one span before the next, so
  // the span's K/V are read from L2 by all strips; within a span each strip goes
  // in chunks of max_chunk_keys visited keys (strip_chunk). A sparse pattern's
  // chunk thus gathers visited tiles from the whole span.
  constexpr index_t chunk_tiles = max_chunk_keys / BN, l2_span_bytes = 512 * 1024;
  index_t most = 0;
  for (const strip_keys& sk : strips)
    most = std::max(most, ((sk.hi_hi + W - 1) / W * W + BN - 1) / BN - sk.lo_lo / W * W / BN);
  const bool whole_strips = c.band > 0 && c.band <= max_chunk_keys && most <= chunk_capacity<Arch>;
  grow(sc.band, static_cast<std::size_t>(MR * chunk_capacity<Arch> * BN));
  grow(sc.chunk_max, static_cast<std::size_t>(MR * W));
  if (whole_strips) {
    for (const strip_keys& sk : strips)
      strip_chunk<Arch, Pol, Obs>(c, sc, sk, row0, b, h, bg, bk, sk.lo_lo / BN, (sk.hi_hi + BN - 1) / BN, wp,
                                  prefetch_some);
  } else {
    const auto tile_bytes = static_cast<index_t>(BN * (D + Dvp) * sizeof(float));
    const index_t span = std::max(chunk_tiles, l2_span_bytes / tile_bytes);
    for (index_t kc = lo_min / BN; kc * BN < hi_max; kc += span)
      for (const strip_keys& sk : strips)
        strip_chunk<Arch, Pol, Obs>(c, sc, sk, row0, b, h, bg, bk, kc, kc + span, wp, prefetch_some);
  }
  // Steps count a pattern's empty tiles too, which take none: what is left of the
  // next block's query rows is asked for now.
  pf_rows = std::max(n, next.n);
  prefetch_some();

  for (int r = 0; r < n; ++r) {
    const float l = simd::ops<Arch>::reduce_add(simd::ops<Arch>::load(sc.lvec.data() + r * W));
    finalize_row<Arch, Pol>(c.shape, c.opt, c.out, obs, b, h, token(row0 + r), sc.m[r], l, sc.t[r], sc.count[r],
                            sc.o.data() + r * Dvp, row_extras{sc.first[r], K ? sc.topk.data() + r * K : nullptr, K},
                            sc.extras.data());
  }
}

/// One task: query rows [row0, row0 + n) of head (b, h). A gathering key set packs
/// the block's own keys first (in the task, into the worker's slot) and runs the
/// rows against them; otherwise the rows run against the call's packed K/V.
template <class Arch, class Pol, class Obs, class Keys, class KV>
void run_block(const quadratic_call<Arch, Pol, Keys>& c, Obs& obs, int slot, index_t b, index_t h, index_t row0, int n,
               const block_ref& next, const tensor_view<const KV>& k, const tensor_view<const KV>& v) {
  const index_t g = h / c.shape.group();
  if constexpr (Keys::gathers) {
    auto& gb = c.ws.slot(slot).template get<gathered_block<Arch>>();
    c.keys.gather_keys(b, h, row0, n, gb.keys);
    block_scratch& sc = c.ws.slot(slot).template get<block_scratch>();
    if (sc.wide.size() < static_cast<std::size_t>(16 * c.shape.head_dim))
      sc.wide.resize(static_cast<std::size_t>(16 * c.shape.head_dim));
    const packed_kv<Arch> local = pack_gathered<Arch>(gb, k, v, b, g, c.call_id, sc.wide.data());
    quadratic_call<Arch, Pol, Keys> own = c;
    own.kv = &local;
    const auto at = std::find(gb.keys.begin(), gb.keys.end(), index_t{0});
    own.key0 = at == gb.keys.end() ? -1 : static_cast<index_t>(at - gb.keys.begin());
    run_rows(own, obs, slot, b, h, row0, n, block_ref{}, 0);
  } else {
    (void)k, (void)v;
    run_rows(c, obs, slot, b, h, row0, n, next, b * c.shape.kv_heads + g);
  }
}

}  // namespace attnkit::detail
