#pragma once
/// \file
/// One strip of query rows against its keys, in chunks of up to 512 visited keys:
/// logits into an L1 buffer, weights, then O = α·O + P·V in one register pass.
#include <algorithm>
#include <utility>

#include "../../simd/microkernel.hpp"
#include "../dropout_bits.hpp"
#include "logits.hpp"
#include "row_weights.hpp"

namespace attnkit::detail {

/// Visited keys per chunk of a strip (strip_chunk): 6 rows of their logits fit in
/// L1 (12 KiB).
inline constexpr index_t max_chunk_keys = 512;

/// Tiles a strip's logit buffer holds: a chunk, or a narrow band's whole range
/// (up to max_chunk_keys keys plus a partial tile at either edge).
template <class Arch>
inline constexpr index_t chunk_capacity = max_chunk_keys / simd::tile_shape<Arch>::keys + 2;

/// Keys [key0, key1) of a strip's chunk, at its logit buffer's columns from col0.
struct chunk_run {
  index_t key0, key1, col0;
};

/// The column (from cbeg) of key 0's logit in a chunk's buffer, −1 if the chunk
/// does not hold it (the observer's first-token statistics).
template <class Call>
index_t first_column(const Call& c, const chunk_run* runs, int nruns, index_t cbeg) {
  for (int u = 0; u < nruns; ++u)
    if (runs[u].key0 <= c.key0 && c.key0 < runs[u].key1) return runs[u].col0 + (c.key0 - runs[u].key0) - cbeg;
  return -1;
}

/// Dropout (options.dropout) on a strip's weights in S, between the row state, which
/// keeps the undropped weights (LSE, denominators), and P·V: kept weights × 1/(1 − p),
/// dropped ones 0, each drawn by its original (b, h, i, j) (kernel/dropout_bits.hpp).
template <class Arch, class Pol, class Keys>
void chunk_dropout(const quadratic_call<Arch, Pol, Keys>& c, const strip_keys& sk, index_t row0, index_t b,
                   index_t h, index_t bg, float* S, index_t ss, const chunk_run* runs, int nruns) {
  const dropout_mask drop(c.opt.dropout);
  const auto scale = static_cast<float>(drop.scale());
  const index_t g = bg % c.shape.kv_heads;
  for (int r = 0; r < sk.rows; ++r) {
    index_t i = row0 + sk.r0 + r;
    if constexpr (Keys::reordered) i = c.keys.token(h, i);
    for (int u = 0; u < nruns; ++u) {
      // Keys past Lk (a tile's tail) weigh 0 and have no original index.
      const index_t n = std::min(runs[u].key1, c.shape.k_len) - runs[u].key0;
      float* p = S + r * ss + runs[u].col0;
      if constexpr (Keys::reordered)
        drop_weights_mapped(drop, scale, b, h, i, p, n, [&](index_t t) { return c.keys.kv_token(g, runs[u].key0 + t); });
      else
        drop_weights(drop, scale, b, h, i, runs[u].key0, p, n);
    }
  }
}

/// Steps 2 and 3 of strip_chunk on a filled buffer S (row stride ss) whose runs of
/// consecutive visited keys are runs[0, nruns) (in key order, at least one).
template <class Arch, class Pol, class Obs, class Keys>
void chunk_apply(const quadratic_call<Arch, Pol, Keys>& c, block_scratch& sc, const strip_keys& sk, index_t row0,
                 index_t b, index_t h, index_t bg, float* S, index_t ss, const chunk_run* runs, int nruns, bool vbad,
                 const weight_params_t<Pol>& wp) {
  constexpr int W = simd::ops<Arch>::width;
  const index_t Dvp = c.kv->vdim_padded;
  const int r0 = sk.r0, R = sk.rows;
  // Computed columns: [first run's start, last run's end) (runs are in key order).
  const index_t cbeg = runs[0].col0;
  const index_t cend = runs[nruns - 1].col0 + (runs[nruns - 1].key1 - runs[nruns - 1].key0);
  float* scale = sc.row_scale.data() + r0;
  for (int r = 0; r < R; ++r) {
    float* x = S + r * ss + cbeg;
    if constexpr (Obs::enabled) observe_logits<Arch>(c, sc, r0 + r, x, cend - cbeg, first_column(c, runs, nruns, cbeg));
    scale[r] = row_weights<Arch, Pol, Obs>(c, sc, r0 + r, x, cend - cbeg, sc.chunk_max.data() + r * W, wp);
  }
  if (c.opt.dropout.active()) [[unlikely]]
    chunk_dropout(c, sk, row0, b, h, bg, S, ss, runs, nruns);

  // O = α·O + P·V.
  const float* vhead = c.kv->v_head(bg);
  float* o = sc.o.data() + r0 * Dvp;
  if (vbad) [[unlikely]] {  // V holds NaN/Inf: only keys with a nonzero weight touch O
    for (int r = 0; r < R; ++r) {
      float* orow = o + r * Dvp;
      if (scale[r] != 1.0f)
        for (index_t d = 0; d < Dvp; ++d) orow[d] *= scale[r];
      for (int u = 0; u < nruns; ++u)
        for (index_t j = runs[u].key0; j < runs[u].key1; ++j)
          if (const float p = S[r * ss + runs[u].col0 + (j - runs[u].key0)]; p != 0.0f)
            simd::axpy<Arch>(p, vhead + j * Dvp, orow, Dvp);
    }
    return;
  }
  simd::pv_segment seg[chunk_capacity<Arch>];
  for (int u = 0; u < nruns; ++u)
    seg[u] = {S + runs[u].col0, vhead + runs[u].key0 * Dvp, static_cast<long>(runs[u].key1 - runs[u].key0)};
  simd::pv_segments<Arch>(R, static_cast<int>(Dvp / W), seg, nruns, ss, Dvp, o, Dvp, scale);
}


/// One strip against the keys of tiles [kb_lo, kb_hi), in chunks of up to
/// max_chunk_keys visited keys (a range of at most chunk_capacity tiles is one
/// chunk: a narrow band's whole range). Per chunk, in three steps:
///   1. the strip's logits, tile by tile through the register tile, into an L1
///      buffer (masked unless the tile is full for every row); tiles the pattern
///      calls empty are neither computed nor given a place in the buffer, so a
///      sparse pattern's chunk gathers up to max_chunk_keys keys it does visit;
///   2. per row, the chunk's exact maximum merged into the running maximum, the
///      weights in place, the denominator and the factor α for O (row_weights);
///   3. O = α·O + P·V in one register pass over the runs of consecutive visited
///      tiles (packed V rows are contiguous within a run).
/// The online-softmax bookkeeping (row-maximum reduction, scalar state, O rescale,
/// O loads and stores) is paid once per chunk of up to 512 keys instead of once
/// per 64-key tile, and the weights' pass is a stream of independent vectors.
template <class Arch, class Pol, class Obs, class Keys, class Prefetch>
void strip_chunk(const quadratic_call<Arch, Pol, Keys>& c, block_scratch& sc, const strip_keys& sk, index_t row0,
                 index_t b, index_t h, index_t bg, batch_keys bk, index_t kb_lo, index_t kb_hi, const weight_params_t<Pol>& wp,
                 const Prefetch& prefetch_some) {
  using O = simd::ops<Arch>;
  using tile = simd::tile_shape<Arch>;
  constexpr int W = O::width, NC = tile::key_vectors, BN = tile::keys, MR = tile::rows;
  const index_t D = c.shape.head_dim;
  const int r0 = sk.r0, R = sk.rows;
  // Keys [js, je): the strip's vectors inside the chunk.
  const index_t js = std::max(sk.lo_lo, kb_lo * BN) / W * W;
  const index_t je = (std::min(sk.hi_hi, kb_hi * BN) + W - 1) / W * W;
  if (je <= js) return;
  const index_t kb0 = js / BN, kb1 = (je + BN - 1) / BN;
  const float* khead = c.kv->k_head(bg);
  // The buffer holds the visited tiles side by side; runs of consecutive tiles are
  // the P·V segments. ss: row stride, a whole number of tiles.
  constexpr index_t cap = chunk_capacity<Arch>;
  const index_t ss = cap * BN;
  const index_t chunk = kb1 - kb0 <= cap ? cap : max_chunk_keys / BN;  // visited tiles per chunk
  float* S = sc.band.data();  // sized by run_block (sc.tile is apply_elementwise's)
  chunk_run runs[cap];
  int nruns = 0;
  index_t cols = 0;  // buffer columns used (whole tiles)
  bool vbad = false;
  float* rmax = sc.chunk_max.data();  // the rows' running maxima over the chunk, a vector each
  simd::fill<Arch>(rmax, neg_inf, R * W);
  using std::integral_constant;
  for (index_t kb = kb0; kb < kb1; ++kb) {
    if (cols == chunk * BN) {  // the buffer is full: weights and P·V, then the next chunk
      chunk_apply<Arch, Pol, Obs>(c, sc, sk, row0, b, h, bg, S, ss, runs, nruns, vbad, wp);
      nruns = 0, cols = 0, vbad = false;
      simd::fill<Arch>(rmax, neg_inf, R * W);
    }
    const index_t j0 = kb * BN;
    bool full = sk.lo_hi <= j0 && sk.hi_lo >= j0 + BN && !c.elementwise;
    bool partial = false;
    if constexpr (Keys::active) {
      const tile_class tc = c.keys.classify(sc, b, h, row0 + r0, row0 + r0 + R, j0, j0 + BN);
      if (tc == tile_class::empty) continue;
      partial = tc == tile_class::partial;
      full = full && !partial;
    }
    // Vectors outside [js, je) are masked for every row of the strip: not computed.
    int c0 = static_cast<int>(std::max<index_t>(js - j0, 0) / W);
    int c1 = static_cast<int>((std::min<index_t>(je - j0, BN) + W - 1) / W);
    bool trimmed = false;
    if constexpr (Keys::has_tile_keys) {
      // A partial tile whose allowed keys lie in fewer vectors (the sinks of a sink
      // window): only those are computed; the slot's other columns read −inf.
      if (partial) {
        const key_range kr = c.keys.tile_keys(b, h, row0 + r0, row0 + r0 + R, j0, j0 + BN);
        const int t0 = static_cast<int>(std::clamp<index_t>(kr.lo - j0, 0, BN) / W);
        const int t1 = static_cast<int>((std::clamp<index_t>(kr.hi - j0, 0, BN) + W - 1) / W);
        if (t0 > c0 || t1 < c1) {
          c0 = std::max(c0, t0), c1 = std::min(c1, t1), trimmed = true;
          if (c1 <= c0) continue;
        }
      }
    }
    prefetch_some();  // visited tiles only: on an empty one the call cost more than the tile
    vbad = c.kv->ensure(bg, kb, sc.wide.data()) || vbad;
    float* stile = S + cols;
    if (trimmed)
      for (int r = 0; r < R; ++r)
        for (int k = 0; k < NC; ++k)
          if (k < c0 || k >= c1) O::store(stile + r * ss + k * W, O::set1(neg_inf));
    if (nruns > 0 && runs[nruns - 1].key1 == j0 + c0 * W) {
      runs[nruns - 1].key1 = j0 + c1 * W;
    } else {
      runs[nruns++] = chunk_run{j0 + c0 * W, j0 + c1 * W, cols + c0 * W};
    }
    cols += BN;
    const float* kp = khead + kb * D * BN;
    auto narrow = [&](auto nk) {
      tile_logits_to<Arch, Pol, MR, decltype(nk)::value>(c, sc, r0, row0, j0 + c0 * W, kp + c0 * W, b, h, bk, full,
                                                         partial, stile + c0 * W, ss, rmax);
    };
    if (R == MR) {
      if constexpr (NC == 4) {
        switch (c1 - c0) {
          case 1: narrow(integral_constant<int, 1>{}); continue;
          case 2: narrow(integral_constant<int, 2>{}); continue;
          case 3: narrow(integral_constant<int, 3>{}); continue;
          default: break;
        }
      }
      if (c1 - c0 == NC) {
        narrow(integral_constant<int, NC>{});
        continue;
      }
    }
    // Short strips (and other widths off AVX-512): the whole tile, masked unless
    // all of it is in range.
    const bool keep_full = full && c0 == 0 && c1 == NC;
    auto whole = [&](auto rows) {
      tile_logits_to<Arch, Pol, decltype(rows)::value, NC>(c, sc, r0, row0, j0, kp, b, h, bk, keep_full, partial,
                                                           stile, ss, rmax);
    };
    switch (R) {
      case 6: whole(integral_constant<int, 6>{}); break;
      case 5: whole(integral_constant<int, 5>{}); break;
      case 4: whole(integral_constant<int, 4>{}); break;
      case 3: whole(integral_constant<int, 3>{}); break;
      case 2: whole(integral_constant<int, 2>{}); break;
      default: whole(integral_constant<int, 1>{}); break;
    }
  }
  if (nruns > 0) chunk_apply<Arch, Pol, Obs>(c, sc, sk, row0, b, h, bg, S, ss, runs, nruns, vbad, wp);
}

}  // namespace attnkit::detail
