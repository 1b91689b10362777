#pragma once
/// \file
/// The tiled streaming skeleton of the quadratic family (softmax, sigmoid).
///
/// Per (batch, kv-head) Kᵀ is packed once into panels of BN keys and V into
/// zero-padded rows; then each task takes (batch, head, block of BM query rows),
/// walks only the key tiles its rows may see, and for each tile and 6-row strip
///   S = Q·Kᵀ (register tile) → mask → weights P (online softmax or σ) → O += P·V.
/// Q is pre-scaled by τ·log2(e) so the softmax uses exp2. Tiles wholly inside
/// every row's analytic key interval skip masking; tiles outside are never read.
/// Each output row is produced by one task, in a fixed order, so results are
/// bitwise identical for any thread count.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <numbers>
#include <vector>

#include "../core/aligned.hpp"
#include "../core/dtype.hpp"
#include "../core/mask.hpp"
#include "../core/options.hpp"
#include "../core/validate.hpp"
#include "../observe/observer.hpp"
#include "../parallel/thread_pool.hpp"
#include "../policy/family.hpp"
#include "../policy/softmax.hpp"
#include "../simd/microkernel.hpp"
#include "../simd/transpose.hpp"

namespace attnkit::detail {

inline constexpr float log2e = std::numbers::log2e_v<float>;
inline constexpr float ln2 = std::numbers::ln2_v<float>;
inline constexpr float neg_inf = -std::numeric_limits<float>::infinity();

/// Asks for the cache lines of [p, p + bytes) (a hint; no effect on results).
inline void prefetch_row(const void* p, std::size_t bytes) noexcept {
#if defined(__GNUC__)
  const char* c = static_cast<const char*>(p);
  for (std::size_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off, 0, 3);
#else
  (void)p, (void)bytes;
#endif
}

/// As prefetch_row, for lines about to be written.
inline void prefetch_row_for_write(void* p, std::size_t bytes) noexcept {
#if defined(__GNUC__)
  char* c = static_cast<char*>(p);
  for (std::size_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off, 1, 3);
#else
  (void)p, (void)bytes;
#endif
}

/// Spin-wait hint for a short wait on another thread.
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

/// The row order of a plain call: packed key j is key j, task row i is query i.
struct identity_rows {
  static constexpr bool identity = true;
  constexpr index_t operator()(index_t, index_t j) const noexcept { return j; }
};

/// The key order of a pattern that reorders rows (Keys::kv_token, see no_pattern).
template <class Keys>
struct reordered_rows {
  static constexpr bool identity = false;
  const Keys& keys;
  index_t operator()(index_t g, index_t j) const { return keys.kv_token(g, j); }
};

/// Kᵀ panels and padded V rows of every (batch, kv-head), one key tile at a time.
///
/// Eager (the default): every tile is packed up front, in parallel over heads.
/// Lazy (banded calls, where each query block sees a few tiles): a tile is packed
/// by the first task that needs it (`ensure`), right before its use, so the pack's
/// memory reads overlap the other thread's compute instead of forming a separate
/// memory-bound pass, and the freshly packed panels are used from L1/L2. A tile's
/// state moves 0 (not packed) → 1 (being packed) → 2 or 3 (packed; 3: its V rows
/// hold a NaN or Inf) exactly once per call; a task that finds 1 waits for it.
template <class Arch>
struct packed_kv {
  using tile = simd::tile_shape<Arch>;
  static constexpr int BN = tile::keys;
  index_t key_tiles = 0, dim = 0, vdim_padded = 0;
  float* kt = nullptr;  // [B·Hkv][key_tiles][dim][BN]
  float* vr = nullptr;  // [B·Hkv][key_tiles·BN][vdim_padded]
  /// [B·Hkv][key_tiles] tile states (above). A tile whose V holds NaN/Inf takes a
  /// P·V path that skips zero weights, so a masked key's NaN cannot leak in as 0·NaN.
  unsigned char* state = nullptr;

  std::size_t k_head_size() const { return static_cast<std::size_t>(key_tiles * dim * BN); }
  std::size_t v_head_size() const { return static_cast<std::size_t>(key_tiles * BN * vdim_padded); }
  const float* k_head(index_t bg) const { return kt + bg * k_head_size(); }
  const float* v_head(index_t bg) const { return vr + bg * v_head_size(); }

  /// Packs (eager) or prepares (lazy) into storage owned by the calling thread and
  /// reused across calls, so a steady stream of calls neither allocates nor
  /// page-faults. Packed key j of kv head g is row `source(g, j)` of k and v (a
  /// reordering, e.g. the rank order of stochastic permutation attention). Lazy:
  /// k, v and source must outlive the kernel's use of this object.
  template <class KV, class Source>
  void pack(const tensor_view<const KV>& k, const tensor_view<const KV>& v, int threads, const Source& source,
            bool lazy) {
    thread_local aligned_vector<float> storage;
    thread_local std::vector<unsigned char> states;
    const index_t B = k.batch(), G = k.heads(), Lk = k.seq(), Dv = v.dim();
    dim = k.dim();
    key_tiles = (Lk + BN - 1) / BN;
    vdim_padded = (Dv + tile::width - 1) / tile::width * tile::width;
    const std::size_t need = static_cast<std::size_t>(B * G) * (k_head_size() + v_head_size());
    if (storage.size() < need) storage.resize(need);
    kt = storage.data();
    vr = kt + static_cast<std::size_t>(B * G) * k_head_size();
    states.assign(static_cast<std::size_t>(B * G * key_tiles), 0);
    state = states.data();  // the workers write through this (states is this thread's)
    src_k = &k;
    src_v = &v;
    src_rows = &source;
    pack_fn = &pack_tile_of<KV, Source>;
    prefetch_fn = &prefetch_sources_of<KV, Source>;
    is_lazy = lazy;
    if (lazy) return;
    parallel_for(B * G, threads, [&](index_t bg) {
      for (index_t kb = 0; kb < key_tiles; ++kb) state[bg * key_tiles + kb] = pack_tile_of<KV, Source>(*this, bg, kb) ? 3 : 2;
    });
  }

  /// Tile kb of head bg is packed when this returns (packing it here if no task has
  /// started it); true when its V rows hold a NaN or Inf.
  bool ensure(index_t bg, index_t kb) const {
    std::atomic_ref<unsigned char> st(state[bg * key_tiles + kb]);
    unsigned char x = st.load(std::memory_order_acquire);
    if (x >= 2) [[likely]] return x == 3;
    unsigned char idle = 0;
    if (st.compare_exchange_strong(idle, 1, std::memory_order_acquire)) {
      x = pack_fn(*this, bg, kb) ? 3 : 2;
      st.store(x, std::memory_order_release);
      return x == 3;
    }
    while ((x = st.load(std::memory_order_acquire)) < 2) cpu_relax();
    return x == 3;
  }

  /// Lazy packing only: asks for the source K/V rows of keys [kb·BN + from,
  /// kb·BN + to) of head bg (clipped to Lk) while the tile is not packed yet. A
  /// task calls it for the tile its next task will pack, a slice per key tile of
  /// its own, so the pack finds its rows in cache instead of stalling on them.
  void prefetch_sources(index_t bg, index_t kb, int from, int to) const {
    if (!is_lazy || kb < 0 || kb >= key_tiles || from >= to) return;
    if (std::atomic_ref<unsigned char>(state[bg * key_tiles + kb]).load(std::memory_order_relaxed) != 0) return;
    prefetch_fn(*this, bg, kb, from, to);
  }

 private:
  const void* src_k = nullptr;
  const void* src_v = nullptr;
  const void* src_rows = nullptr;
  bool (*pack_fn)(const packed_kv&, index_t, index_t) = nullptr;
  void (*prefetch_fn)(const packed_kv&, index_t, index_t, int, int) = nullptr;
  bool is_lazy = false;

  template <class KV, class Source>
  static void prefetch_sources_of(const packed_kv& self, index_t bg, index_t kb, int from, int to) {
    if constexpr (!Source::identity) return;  // the pack prefetches scattered rows itself
    const auto& k = *static_cast<const tensor_view<const KV>*>(self.src_k);
    const auto& v = *static_cast<const tensor_view<const KV>*>(self.src_v);
    const Source& source = *static_cast<const Source*>(self.src_rows);
    const index_t G = k.heads(), b = bg / G, g = bg % G;
    const index_t j1 = std::min<index_t>(k.seq(), kb * BN + to);
    for (index_t j = kb * BN + from; j < j1; ++j) {
      const index_t src = source(g, j);
      prefetch_row(k.row(b, g, src), static_cast<std::size_t>(self.dim) * sizeof(KV));
      prefetch_row(v.row(b, g, src), static_cast<std::size_t>(v.dim()) * sizeof(KV));
    }
  }

  /// Packs keys [kb·BN, kb·BN + BN) of head bg (zeros past Lk); true when a V row
  /// holds a NaN or Inf.
  template <class KV, class Source>
  static bool pack_tile_of(const packed_kv& self, index_t bg, index_t kb) {
    const auto& k = *static_cast<const tensor_view<const KV>*>(self.src_k);
    const auto& v = *static_cast<const tensor_view<const KV>*>(self.src_v);
    const Source& source = *static_cast<const Source*>(self.src_rows);
    const index_t G = k.heads(), Lk = k.seq(), Dv = v.dim(), dim = self.dim, Dvp = self.vdim_padded;
    const index_t b = bg / G, g = bg % G;
    float* panel = self.kt + bg * self.k_head_size() + kb * dim * BN;
    float* vh = self.vr + bg * self.v_head_size();
    bool nonfinite = false;
    const index_t j0 = kb * BN, j1 = std::min<index_t>(Lk, (kb + 1) * BN);
    // Half-precision keys are widened into this buffer first, 16 rows at a time.
    thread_local aligned_vector<float> wide;
    if constexpr (!std::is_same_v<KV, float>)
      if (wide.size() < static_cast<std::size_t>(16 * dim)) wide.resize(static_cast<std::size_t>(16 * dim));
    for (index_t jg = j0; jg < j1; jg += 16) {
      const int n = static_cast<int>(std::min<index_t>(16, j1 - jg));
      const float* krow[16];
      for (int i = 0; i < n; ++i) {
        const index_t j = jg + i, src = source(g, j);
        if constexpr (!Source::identity) {
          // Reordered rows defeat the hardware prefetcher: ask for a later pair.
          if (j + 16 < Lk) {
            const index_t ahead = source(g, j + 16);
            prefetch_row(k.row(b, g, ahead), static_cast<std::size_t>(dim) * sizeof(KV));
            prefetch_row(v.row(b, g, ahead), static_cast<std::size_t>(Dv) * sizeof(KV));
          }
        }
        if constexpr (std::is_same_v<KV, float>) {
          krow[i] = k.row(b, g, src);
        } else {
          widen(k.row(b, g, src), wide.data() + i * dim, dim);
          krow[i] = wide.data() + i * dim;
        }
        float* vrow = vh + j * Dvp;
        if constexpr (std::is_same_v<KV, float>) {
          nonfinite = simd::copy_probe<Arch>(v.row(b, g, src), vrow, Dv) || nonfinite;
        } else {
          widen(v.row(b, g, src), vrow, Dv);
          nonfinite = simd::any_nonfinite<Arch>(vrow, Dv) || nonfinite;
        }
        std::fill(vrow + Dv, vrow + Dvp, 0.0f);
      }
      // Kᵀ: whole groups of 16 keys through a register transpose, the tail by element.
      if (n == 16) {
        simd::transpose_16<Arch>(krow, dim, panel + (jg - j0), BN);
      } else {
        for (int i = 0; i < n; ++i)
          for (index_t d = 0; d < dim; ++d) panel[d * BN + (jg - j0) + i] = krow[i][d];
      }
    }
    for (index_t j = j1; j < (kb + 1) * BN; ++j) {  // tail keys: zero K columns and V rows
      for (index_t d = 0; d < dim; ++d) panel[d * BN + (j % BN)] = 0.0f;
      std::fill(vh + j * Dvp, vh + (j + 1) * Dvp, 0.0f);
    }
    return nonfinite;
  }
};

/// A strip of a query block: rows [r0, r0 + rows), the lowest and highest start
/// and end of their key intervals.
struct strip_keys {
  int r0, rows;
  index_t lo_lo, lo_hi, hi_lo, hi_hi;
};

/// Per-thread scratch of one query block; reused across calls, grown on demand.
struct block_scratch {
  aligned_vector<float> q, o, tile;
  aligned_vector<float> band;       ///< one strip's logits / weights over a chunk (strip_chunk)
  aligned_vector<float> chunk_max;  ///< per strip row, a vector of that chunk's logit maxima
  aligned_vector<float> m, l, t, row_scale, first, topk;
  aligned_vector<float> lvec;  ///< per row, one vector of partial softmax denominators
  aligned_vector<index_t> lo, hi, count;
  std::vector<strip_keys> strips;
};
inline block_scratch& thread_scratch() {
  thread_local block_scratch s;
  return s;
}

/// How a key tile relates to the rows of a strip, as a pattern sees it.
enum class tile_class : unsigned char { empty, partial, full };

/// The key-set hook of the quadratic skeleton. A pattern adapter (kernel/pattern.hpp)
/// provides, for head (b, h):
///   key_range hull(b, h, i)                  — a key interval containing row i's keys
///   tile_class classify(b, h, i0, i1, j0, j1) — analytic class of rows [i0,i1) × keys [j0,j1)
///   bool allowed(b, h, i, j)                 — element test, used on partial tiles only
///   (optional key_range tile_keys(b, h, i0, i1, j0, j1) — an interval holding every
///                                               allowed key of a partial tile: the
///                                               vectors outside it are not computed)
///   (or also uint64 allowed_bits(b, h, i, j0, n) — the same test for keys j0 … j0+n−1
///                                               as bits, n ≤ 64: preferred when given)
///   (or float adjust(b, h, i, j)             — additive logit term, −inf = masked)
///   (or filter<Arch, NC>(b, h, i, j0, row)   — masks one row's logit vectors in place)
/// intersected with the options' own masks, and optionally
///   prepare(call, scratch, b, h, bk, row0, n) — per query block, before the main pass
///                                               (may narrow scratch.lo/hi)
///   index_t token(h, i), kv_token(g, j)        — a reordering: skeleton row i of query
///                                               head h reads and writes token row
///                                               token(h, i); packed key j of kv head
///                                               g is key kv_token(g, j)
/// `no_pattern` is the plain call.
struct no_pattern {
  static constexpr bool active = false;
};

/// Everything a task needs to know about the call, resolved once.
template <class Arch, class Pol, class Keys = no_pattern>
struct quadratic_call {
  const Keys& keys;
  const Pol& pol;
  const problem_shape& shape;
  const tensor_view<const float>& q;
  const tensor_view<float>& out;
  const options& opt;
  const packed_kv<Arch>& kv;
  float q_scale = 1.0f;    ///< τ·log2(e)
  bool elementwise = false;  ///< mask / bias / ALiBi / softcap present
  int obs_topk = 0;          ///< top-k logits the observer wants per row (0: none)
  int block_rows = 0;        ///< query rows per task (a multiple of the strip height)
  /// Allowed-key counts come from counting finite logits (masks, patterns) rather
  /// than from the analytic interval.
  bool count_dynamic = false;
  /// Every row sees at most this many keys (a local window or banded pattern), 0:
  /// unbounded. A narrow band is done a strip at once (strip_chunk).
  index_t band = 0;
};

template <class Pol>
constexpr bool use_precise_exp(const Pol& pol) {
  if constexpr (requires { pol.exp; })
    return pol.exp == exp_mode::precise;
  else
    return false;
}

/// Element path: applies range mask, soft-capping, bias, ALiBi and the boolean
/// mask to one R×len tile held in `tile` (log2-scaled logits).
inline void apply_elementwise(float* tile, index_t tile_stride, index_t len, int R, index_t row0, index_t j0,
                              const options& opt, index_t b, index_t h, batch_keys bk, const index_t* lo,
                              const index_t* hi) {
  const float cap = opt.softcap;
  const float slope = opt.alibi_slopes.empty() ? 0.0f : opt.alibi_slopes[static_cast<std::size_t>(h)];
  for (int r = 0; r < R; ++r) {
    const index_t i = row0 + r;
    const float* brow = opt.bias.data ? broadcast_row(opt.bias, b, h, i) : nullptr;
    const std::uint8_t* mrow = opt.mask.data ? broadcast_row(opt.mask, b, h, i) : nullptr;
    float* s = tile + r * tile_stride;
    for (index_t jj = 0; jj < len; ++jj) {
      const index_t j = j0 + jj;
      if (j < lo[r] || j >= hi[r] || (mrow && !mrow[j])) {
        s[jj] = neg_inf;
        continue;
      }
      float x = s[jj];
      if (cap > 0.0f) x = cap * std::tanh(x * ln2 / cap) * log2e;
      if (brow) x += brow[j] * log2e;
      if (slope != 0.0f) x -= slope * static_cast<float>(std::abs(i + bk.delta - j)) * log2e;
      s[jj] = x;
    }
  }
}

/// Inserts x into a descending list of K entries (−inf = empty slot).
inline void topk_insert(float* list, int K, float x) noexcept {
  if (!(x > list[K - 1])) return;
  int pos = K - 1;
  while (pos > 0 && list[pos - 1] < x) {
    list[pos] = list[pos - 1];
    --pos;
  }
  list[pos] = x;
}

/// Instrumentation extras of one row, in log2 units, handed to finalize_row.
struct row_extras {
  float first = neg_inf;          ///< logit of key 0 (log2 units)
  const float* topk = nullptr;    ///< K largest logits, descending (log2 units)
  int k = 0;
};

/// Writes one finished row: sinks, normalisation, masked-row policy, LSE, observer.
/// (m, l, t) are the row's streaming state in log2 units over its keys; o the
/// unnormalised accumulator.
/// Converts the extras to natural-log units into a per-thread buffer.
inline void report_extras(row_state& st, const row_extras& ex) {
  thread_local float buf[256];
  st.first_logit = ex.first == neg_inf ? -std::numeric_limits<double>::infinity()
                                       : static_cast<double>(ex.first) * std::numbers::ln2;
  int n = 0;
  for (; n < ex.k && n < 256 && ex.topk[n] != neg_inf; ++n) buf[n] = ex.topk[n] * ln2;
  st.top_k = n ? buf : nullptr;
  st.top_k_count = n;
}

template <class Arch, class Pol, class Obs>
void finalize_row(const problem_shape& sh, const options& opt, const tensor_view<float>& out, Obs& obs, index_t b,
                  index_t h, index_t i, float m, float l, float t, index_t count, const float* o,
                  const row_extras& ex = {}) {
  const index_t Dv = sh.value_dim;
  float* dst = out.row(b, h, i);
  if constexpr (Pol::normalized) {
    // A sink adds 2^(sink − m) to the denominator only.
    const float sink = opt.sinks.empty() ? neg_inf : opt.sinks[static_cast<std::size_t>(h)] * log2e;
    const bool empty = m == neg_inf, has_sink = sink != neg_inf;
    // Without a sink m_all = m, and the exp2(0) = 1 factors are skipped (same bits).
    const float m_all = has_sink ? std::max(m, sink) : m;  // row max including the sink
    const float l_all = has_sink ? (empty ? 0.0f : l * std::exp2(m - m_all)) + std::exp2(sink - m_all)
                                 : (empty ? 0.0f : l);
    if (empty) {
      const float fill = opt.masked_rows == masked_rows::nan ? std::numeric_limits<float>::quiet_NaN() : 0.0f;
      for (index_t d = 0; d < Dv; ++d) dst[d] = fill;
    } else {
      const float rescale = has_sink ? std::exp2(m - m_all) / l_all : 1.0f / l_all;
      simd::scale_copy<Arch>(o, rescale, dst, Dv);
    }
    if (opt.lse) {
      const float lse = m_all == neg_inf ? neg_inf : (m_all + std::log2(l_all)) * ln2;
      opt.lse[(b * sh.q_heads + h) * sh.q_len + i] = lse;
    }
    if constexpr (Obs::enabled) {
      row_state st;
      st.batch = b;
      st.head = h;
      st.row = i;
      st.max = static_cast<double>(m) * std::numbers::ln2;
      st.sum = l;
      st.tsum = static_cast<double>(t) * std::numbers::ln2;
      st.allowed = count;
      st.sink_logit_mass = (sink == neg_inf || empty) ? 0.0 : std::exp2(static_cast<double>(sink) - m);
      report_extras(st, ex);
      obs.on_row(st);
    }
  } else {
    std::memcpy(dst, o, static_cast<std::size_t>(Dv) * sizeof(float));
    if constexpr (Obs::enabled) {
      // Unnormalised weights: l = row mass, t = Σ w log w (natural log), max unused.
      row_state st;
      st.batch = b;
      st.head = h;
      st.row = i;
      st.normalized = false;
      st.max = 0.0;
      st.sum = l;
      st.tsum = t;
      st.allowed = count;
      report_extras(st, ex);
      obs.on_row(st);
    } else {
      (void)m, (void)l, (void)t, (void)count, (void)obs, (void)ex;
    }
  }
}

/// Vector form of apply_elementwise for tiles wholly inside [0, Lk): works on the
/// register tile, loading bias and mask rows as vectors.
template <class Arch, int R, int NC>
inline void apply_elementwise_tile(typename simd::ops<Arch>::vf (&acc)[R][NC], index_t row0, index_t j0,
                                   const options& opt, index_t b, index_t h, batch_keys bk, const index_t* lo,
                                   const index_t* hi) {
  using O = simd::ops<Arch>;
  using vf = typename O::vf;
  constexpr int W = O::width;
  const float cap = opt.softcap;
  const float slope = opt.alibi_slopes.empty() ? 0.0f : opt.alibi_slopes[static_cast<std::size_t>(h)] * log2e;
  const vf io = O::iota(static_cast<float>(j0));
  for (int r = 0; r < R; ++r) {
    const index_t i = row0 + r;
    const float* brow = opt.bias.data ? broadcast_row(opt.bias, b, h, i) : nullptr;
    const std::uint8_t* mrow = opt.mask.data ? broadcast_row(opt.mask, b, h, i) : nullptr;
    const float flo = static_cast<float>(lo[r]), fhi = static_cast<float>(hi[r]);
    const vf diag = O::set1(static_cast<float>(i + bk.delta));
    for (int c = 0; c < NC; ++c) {
      const vf idx = io + O::set1(static_cast<float>(c * W));
      const index_t j = j0 + c * W;
      vf x = acc[r][c];
      if (cap > 0.0f) x = O::set1(cap * log2e) * O::tanh(x * O::set1(ln2 / cap));
      if (brow) x = O::fma(O::load(brow + j), O::set1(log2e), x);
      if (slope != 0.0f) x = x - O::set1(slope) * O::abs(diag - idx);
      x = O::mask_range(x, idx, flo, fhi);
      if (mrow) x = O::mask_bool(x, mrow + j);
      acc[r][c] = x;
    }
  }
}

/// The final logits (log2 units) of one strip of R rows against one key tile, with
/// the options' masks applied (masked → −inf) when Masked. Shared by strip_step and
/// by patterns that look at the logits before the main pass (top_k), so both see
/// bitwise the same values. NK ≤ key_vectors: the strip may compute only the NK
/// vectors of keys from j0 on (kpanel then points into a wider panel). Forced
/// inline: out of line, the register tile would go through memory (GCC does not
/// inline the masked instances by itself).
template <class Arch, int R, bool Masked, class Pol, class Keys, int NK>
#if defined(__GNUC__)
[[gnu::always_inline]]
#endif
inline void strip_logits(const quadratic_call<Arch, Pol, Keys>& c, block_scratch& sc, int r0, index_t row0, index_t j0,
                  const float* kpanel, index_t b, index_t h, batch_keys bk,
                  typename simd::ops<Arch>::vf (&acc)[R][NK]) {
  using O = simd::ops<Arch>;
  using vf = typename O::vf;
  using tile = simd::tile_shape<Arch>;
  constexpr int W = O::width, NC = NK, BN = tile::keys, span = NK * W;
  const index_t D = c.shape.head_dim;
  simd::qk_tile<Arch, R, NC>(sc.q.data() + r0 * D, D, kpanel, D, acc, BN);

  if constexpr (Masked) {
    // The vector/scalar choice follows the whole tile, not the computed vectors: the
    // two paths round softcap's tanh differently, and top_k's passes must agree.
    const index_t tile_end = j0 / BN * BN + BN;
    if (c.elementwise && tile_end <= c.shape.k_len) {
      apply_elementwise_tile<Arch, R, NC>(acc, row0 + r0, j0, c.opt, b, h, bk, sc.lo.data() + r0, sc.hi.data() + r0);
    } else if (c.elementwise) {  // the tile crosses Lk: bias/mask rows end inside it
      float* t = sc.tile.data();
      for (int r = 0; r < R; ++r)
        for (int k = 0; k < NC; ++k) O::store(t + r * BN + k * W, acc[r][k]);
      apply_elementwise(t, BN, span, R, row0 + r0, j0, c.opt, b, h, bk, sc.lo.data() + r0, sc.hi.data() + r0);
      for (int r = 0; r < R; ++r)
        for (int k = 0; k < NC; ++k) acc[r][k] = O::load(t + r * BN + k * W);
    } else {
      const vf io = O::iota(static_cast<float>(j0));
      for (int r = 0; r < R; ++r) {
        const float lo = static_cast<float>(sc.lo[r0 + r]), hi = static_cast<float>(sc.hi[r0 + r]);
        for (int k = 0; k < NC; ++k) acc[r][k] = O::mask_range(acc[r][k], io + O::set1(float(k * W)), lo, hi);
      }
    }
  } else {
    (void)sc, (void)row0, (void)j0, (void)b, (void)h, (void)bk;
  }
}

/// The pattern's own test on a tile it classifies partial, applied to a strip's
/// logit vectors (masked → −inf): a value filter (top_k) or the element test.
template <class Arch, int R, int NC, class Pol, class Keys>
#if defined(__GNUC__)
[[gnu::always_inline]]
#endif
inline void apply_pattern_partial(const quadratic_call<Arch, Pol, Keys>& c, int r0, index_t row0, index_t j0, index_t b,
                                  index_t h, typename simd::ops<Arch>::vf (&acc)[R][NC]) {
  using O = simd::ops<Arch>;
  constexpr int W = O::width;
  if constexpr (requires { c.keys.template filter<Arch, NC>(b, h, row0, j0, acc[0]); }) {
    for (int r = 0; r < R; ++r)  // value-based test on the row's logits (top_k)
      if (row0 + r0 + r < c.shape.q_len) c.keys.template filter<Arch, NC>(b, h, row0 + r0 + r, j0, acc[r]);
  } else if constexpr (NC * W <= 64 && requires { c.keys.allowed_bits(b, h, row0, j0, int{}); }) {
    // The pattern's test as bits per row, applied as lane masks. Keys past Lk never
    // reach the pattern (nor do padding rows).
    const int n = static_cast<int>(std::min<index_t>(NC * W, c.shape.k_len - j0));
    for (int r = 0; r < R; ++r) {
      const index_t row = row0 + r0 + r;
      if (row >= c.shape.q_len) continue;
      const std::uint64_t bits = n > 0 ? c.keys.allowed_bits(b, h, row, j0, n) : 0;
      for (int k = 0; k < NC; ++k) acc[r][k] = O::mask_bits(acc[r][k], static_cast<std::uint32_t>(bits >> (k * W)));
    }
  } else {  // the pattern's element test on a tile it calls partial
    alignas(64) float t[NC * W];
    for (int r = 0; r < R; ++r) {
      // Padding rows of the last strip and keys past Lk never reach the pattern:
      // its hooks may index per-row or per-key tables (found by ASan).
      const index_t row = row0 + r0 + r;
      if (row >= c.shape.q_len) continue;
      for (int k = 0; k < NC; ++k) O::store(t + k * W, acc[r][k]);
      for (int jj = 0; jj < NC * W; ++jj) {
        const index_t j = j0 + jj;
        if (j >= c.shape.k_len)
          t[jj] = neg_inf;
        else if constexpr (requires { c.keys.adjust(b, h, index_t{}, index_t{}); }) {  // additive: −inf masks
          const float a = c.keys.adjust(b, h, row, j);
          t[jj] = a == neg_inf ? neg_inf : t[jj] + a * log2e;  // assigned: a masked NaN logit stays masked
        }
        else if (!c.keys.allowed(b, h, row, j))
          t[jj] = neg_inf;
      }
      for (int k = 0; k < NC; ++k) acc[r][k] = O::load(t + k * W);
    }
  }
}

/// Logits of one strip against key vectors [c0, c1) of the tile at j0, stored to the
/// strip's logit rows `srow` (row stride `ss`): masked (options and pattern) unless
/// `full`. Each row's running chunk maximum (a vector per row at `rmax`) takes the
/// new logits while they are in registers, so the weights pass needs no maximum
/// pass of its own (x86 max drops NaN: row_weights finds NaN rows another way).
template <class Arch, class Pol, int R, int NK, class Keys>
#if defined(__GNUC__)
[[gnu::always_inline]]
#endif
inline void tile_logits_to(const quadratic_call<Arch, Pol, Keys>& c, block_scratch& sc, int r0, index_t row0,
                           index_t j0, const float* kpanel, index_t b, index_t h, batch_keys bk, bool full,
                           bool partial, float* srow, index_t ss, float* rmax) {
  using O = simd::ops<Arch>;
  constexpr int W = O::width;
  typename O::vf acc[R][NK];
  if (full) {
    strip_logits<Arch, R, false>(c, sc, r0, row0, j0, kpanel, b, h, bk, acc);
  } else {
    strip_logits<Arch, R, true>(c, sc, r0, row0, j0, kpanel, b, h, bk, acc);
    if constexpr (Keys::active)
      if (partial) apply_pattern_partial<Arch, R>(c, r0, row0, j0, b, h, acc);
  }
  ATTNKIT_UNROLL
  for (int r = 0; r < R; ++r) {
    typename O::vf mx = O::load(rmax + r * W);
    ATTNKIT_UNROLL
    for (int k = 0; k < NK; ++k) {
      O::store(srow + r * ss + k * W, acc[r][k]);
      if constexpr (Pol::normalized) mx = O::max(acc[r][k], mx);
    }
    if constexpr (Pol::normalized) O::store(rmax + r * W, mx);
  }
}

/// Instrumentation of one row's logits in a chunk (log2 units, masked = −inf):
/// allowed-key count, key-0 logit, running top-k.
template <class Arch, class Pol, class Keys>
void observe_logits(const quadratic_call<Arch, Pol, Keys>& c, block_scratch& sc, int row, const float* x,
                    index_t n, bool has_key0) {
  using O = simd::ops<Arch>;
  constexpr int W = O::width;
  if (c.count_dynamic) {
    float cnt = 0.0f;
    for (index_t k = 0; k < n; k += W) cnt += O::count_finite(O::load(x + k));
    sc.count[row] += static_cast<index_t>(cnt);
  }
  if (has_key0) sc.first[row] = x[0];
  if (const int K = c.obs_topk; K > 0) {
    float* list = sc.topk.data() + row * K;
    for (index_t j = 0; j < n; ++j) topk_insert(list, K, x[j]);
  }
}

/// One row's weights over its logits x[0, n) in place (n a multiple of W), merged
/// into the row's running state: softmax takes the chunk's exact maximum (the lanes
/// of `mxv`, gathered by tile_logits_to), rescales the denominator (a vector,
/// summed once in finalize) and returns α, the factor for O; sigmoid returns 1.
template <class Arch, class Pol, class Obs, class Keys>
#if defined(__GNUC__)
[[gnu::always_inline]]
#endif
inline float row_weights(const quadratic_call<Arch, Pol, Keys>& c, block_scratch& sc, int row, float* x, index_t n,
                         const float* mxv, float bias2) {
  using O = simd::ops<Arch>;
  using vf = typename O::vf;
  constexpr int W = O::width;
  constexpr bool entropy = Obs::enabled && Obs::wants_entropy;
  if constexpr (Pol::normalized) {
    // The maximum leaves NaN logits out (x86 max drops NaN operands). A NaN logit
    // still makes its row NaN, as in the oracle: its weight 2^(NaN − m) is NaN, and
    // so are the denominator and O from then on; a +inf logit (the maximum) gives
    // 2^(inf − inf) = NaN the same way. Only a chunk with nothing else visible needs
    // a look for NaN, before its weights are set to zero. A NaN maximum stays NaN.
    const float m_old = sc.m[row];
    float m_new = std::max(m_old, O::reduce_max(O::load(mxv)));  // m_old NaN: stays NaN
    if (m_new == neg_inf) {
      bool nan = false;
      for (index_t k = 0; k < n; k += W) nan = O::has_nan(O::load(x + k)) || nan;
      if (!nan) {  // nothing visible yet: weights are all zero
        for (index_t k = 0; k < n; k += W) O::store(x + k, O::set1(0.0f));
        return 1.0f;
      }
      m_new = std::numeric_limits<float>::quiet_NaN();
    }
    const float alpha = m_old == m_new ? 1.0f : std::exp2(m_old - m_new);
    const vf mv = O::set1(m_new);
    vf sum = O::set1(0.0f), tv = O::set1(0.0f);
    // The exp choice is hoisted: tested inside, it is reloaded after every store.
    auto weights = [&](auto precise) {
      for (index_t k = 0; k < n; k += W) {
        const vf d = O::load(x + k) - mv;
        const vf p = decltype(precise)::value ? O::exp2_precise(d) : O::exp2_fast(d);
        sum = sum + p;
        if constexpr (entropy) tv = O::fma(p, O::max(d, O::set1(-200.0f)), tv);
        O::store(x + k, p);
      }
    };
    if (use_precise_exp(c.pol))
      weights(std::true_type{});
    else
      weights(std::false_type{});
    float* lv = sc.lvec.data() + row * W;
    if constexpr (entropy) {
      const float l_old = O::reduce_add(O::load(lv));
      const float t_old = l_old > 0.0f ? alpha * (sc.t[row] + l_old * (m_old - m_new)) : 0.0f;
      sc.t[row] = t_old + O::reduce_add(tv);
    }
    O::store(lv, O::fma(O::load(lv), O::set1(alpha), sum));
    sc.m[row] = m_new;
    return alpha;
  } else {
    const vf nb = O::set1(-bias2);  // σ(x+b) = 1/(1+2^(−(x+b)·log2e))
    vf mass = O::set1(0.0f), wlogw = O::set1(0.0f);
    for (index_t k = 0; k < n; k += W) {
      const vf v = O::load(x + k);
      const vf e = O::exp2_fast(nb - v);  // NaN in, NaN out
      vf p = O::set1(1.0f) / (O::set1(1.0f) + e);
      if constexpr (simd::is_scalar_v<Arch>)
        p = v == neg_inf ? 0.0f : p;
      else
        p = xsimd::select(v == O::set1(neg_inf), O::set1(0.0f), p);
      if constexpr (entropy) {  // log σ = −log(1 + e^{−x}); masked lanes have p = 0
        mass = mass + p;
        wlogw = O::fma(p, O::set1(0.0f) - O::log1p(O::min(e, O::set1(3.0e38f))), wlogw);
      }
      O::store(x + k, p);
    }
    if constexpr (entropy) {
      sc.l[row] += O::reduce_add(mass);
      sc.t[row] += O::reduce_add(wlogw);
    } else {
      (void)sc, (void)row;
    }
    return 1.0f;
  }
}

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

/// Steps 2 and 3 of strip_chunk on a filled buffer S (row stride ss) whose runs of
/// consecutive visited keys are runs[0, nruns) (in key order, at least one).
template <class Arch, class Pol, class Obs, class Keys>
void chunk_apply(const quadratic_call<Arch, Pol, Keys>& c, block_scratch& sc, const strip_keys& sk, index_t bg,
                 float* S, index_t ss, const chunk_run* runs, int nruns, bool vbad, float bias2) {
  constexpr int W = simd::ops<Arch>::width;
  const index_t Dvp = c.kv.vdim_padded;
  const int r0 = sk.r0, R = sk.rows;
  // Computed columns: [first run's start, last run's end) (runs are in key order).
  const index_t cbeg = runs[0].col0;
  const index_t cend = runs[nruns - 1].col0 + (runs[nruns - 1].key1 - runs[nruns - 1].key0);
  float* scale = sc.row_scale.data() + r0;
  for (int r = 0; r < R; ++r) {
    float* x = S + r * ss + cbeg;
    if constexpr (Obs::enabled) observe_logits<Arch>(c, sc, r0 + r, x, cend - cbeg, runs[0].key0 == 0);
    scale[r] = row_weights<Arch, Pol, Obs>(c, sc, r0 + r, x, cend - cbeg, sc.chunk_max.data() + r * W, bias2);
  }

  // O = α·O + P·V.
  const float* vhead = c.kv.v_head(bg);
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
                 index_t b, index_t h, index_t bg, batch_keys bk, index_t kb_lo, index_t kb_hi, float bias2,
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
  const float* khead = c.kv.k_head(bg);
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
      chunk_apply<Arch, Pol, Obs>(c, sc, sk, bg, S, ss, runs, nruns, vbad, bias2);
      nruns = 0, cols = 0, vbad = false;
      simd::fill<Arch>(rmax, neg_inf, R * W);
    }
    const index_t j0 = kb * BN;
    bool full = sk.lo_hi <= j0 && sk.hi_lo >= j0 + BN && !c.elementwise;
    bool partial = false;
    if constexpr (Keys::active) {
      const tile_class tc = c.keys.classify(b, h, row0 + r0, row0 + r0 + R, j0, j0 + BN);
      if (tc == tile_class::empty) continue;
      partial = tc == tile_class::partial;
      full = full && !partial;
    }
    // Vectors outside [js, je) are masked for every row of the strip: not computed.
    int c0 = static_cast<int>(std::max<index_t>(js - j0, 0) / W);
    int c1 = static_cast<int>((std::min<index_t>(je - j0, BN) + W - 1) / W);
    bool trimmed = false;
    if constexpr (requires { c.keys.tile_keys(b, h, row0, row0, j0, j0); }) {
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
    vbad = c.kv.ensure(bg, kb) || vbad;
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
  if (nruns > 0) chunk_apply<Arch, Pol, Obs>(c, sc, sk, bg, S, ss, runs, nruns, vbad, bias2);
}

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

/// One task: query rows [row0, row0 + n) of head (b, h). With a pattern that
/// reorders rows, `next` (the task this thread will likely run next) has its
/// query rows prefetched during this one's key loop.
template <class Arch, class Pol, class Obs, class Keys>
void run_block(const quadratic_call<Arch, Pol, Keys>& c, Obs& obs, index_t b, index_t h, index_t row0, int n,
               const block_ref& next = {}) {
  using tile = simd::tile_shape<Arch>;
  constexpr int MR = tile::rows, BN = tile::keys;
  constexpr bool normalized = Pol::normalized;
  const problem_shape& sh = c.shape;
  const options& opt = c.opt;
  const index_t D = sh.head_dim, Dvp = c.kv.vdim_padded;
  const index_t g = h / sh.group();
  const index_t bg = b * sh.kv_heads + g;
  const batch_keys bk = keys_of_batch(opt, b, sh.q_len, sh.k_len);

  block_scratch& sc = thread_scratch();
  auto grow = [](auto& vec, std::size_t size) {
    if (vec.size() < size) vec.resize(size);
  };
  grow(sc.q, static_cast<std::size_t>(n * D));
  grow(sc.o, static_cast<std::size_t>(n * Dvp));
  grow(sc.tile, MR * BN);
  for (auto* v : {&sc.m, &sc.l, &sc.t, &sc.row_scale, &sc.first}) grow(*v, static_cast<std::size_t>(n));
  constexpr int W = tile::width;
  if constexpr (normalized) {
    grow(sc.lvec, static_cast<std::size_t>(n * W));
    simd::fill<Arch>(sc.lvec.data(), 0.0f, n * W);
  }
  const int K = c.obs_topk;
  if constexpr (Obs::enabled) {
    grow(sc.topk, static_cast<std::size_t>(n * K));
    std::fill_n(sc.first.data(), n, neg_inf);
    std::fill_n(sc.topk.data(), n * K, neg_inf);
  }
  for (auto* v : {&sc.lo, &sc.hi, &sc.count}) grow(*v, static_cast<std::size_t>(n));

  // Scaled Q rows, zeroed accumulators, per-row key intervals.
  index_t lo_min = bk.lk, hi_max = 0;
  // The token a skeleton row stands for (itself, unless the pattern reorders rows).
  const auto token = [&](index_t i) {
    if constexpr (requires { c.keys.token(h, i); })
      return c.keys.token(h, i);
    else
      return i;
  };
  constexpr bool reordered = requires { c.keys.token(h, index_t{}); };
  for (int r = 0; r < n; ++r) {
    simd::scale_copy<Arch>(c.q.row(b, h, token(row0 + r)), c.q_scale, sc.q.data() + r * D, D);
    key_range kr = analytic_range(opt, bk, row0 + r);
    if constexpr (Keys::active) {
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
  if constexpr (requires { c.keys.prepare(c, sc, b, h, bk, row0, n); }) {
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

  float bias2 = 0.0f;
  if constexpr (!normalized) bias2 = static_cast<float>(c.pol.resolved_bias(bk.lk)) * log2e;

  // The strips and the union / intersection of their rows' key intervals.
  auto& strips = sc.strips;
  strips.clear();
  for (int r0 = 0, R = 0; r0 < n; r0 += R) {
    R = std::min(MR, n - r0);
    if constexpr (requires { c.keys.row_block(); }) {
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
      prefetch_row_for_write(c.out.row(b, h, token(row0 + pf_out)), vbytes);
    for (int e = pf_next + pf_rows; pf_next < std::min(next.n, e); ++pf_next) {
      index_t i = next.row0 + pf_next;
      if constexpr (reordered) i = c.keys.token(next.h, i);
      prefetch_row(c.q.row(next.b, next.h, i), static_cast<std::size_t>(D) * sizeof(float));
    }
    if (pf_key < BN) {
      c.kv.prefetch_sources(bg, pf_tile, pf_key, pf_key + pf_keys);
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
      strip_chunk<Arch, Pol, Obs>(c, sc, sk, row0, b, h, bg, bk, sk.lo_lo / BN, (sk.hi_hi + BN - 1) / BN, bias2,
                                  prefetch_some);
  } else {
    const auto tile_bytes = static_cast<index_t>(BN * (D + Dvp) * sizeof(float));
    const index_t span = std::max(chunk_tiles, l2_span_bytes / tile_bytes);
    for (index_t kc = lo_min / BN; kc * BN < hi_max; kc += span)
      for (const strip_keys& sk : strips)
        strip_chunk<Arch, Pol, Obs>(c, sc, sk, row0, b, h, bg, bk, kc, kc + span, bias2, prefetch_some);
  }
  // Steps count a pattern's empty tiles too, which take none: what is left of the
  // next block's query rows is asked for now.
  pf_rows = std::max(n, next.n);
  prefetch_some();

  for (int r = 0; r < n; ++r) {
    float l = sc.l[r];
    if constexpr (normalized) l = simd::ops<Arch>::reduce_add(simd::ops<Arch>::load(sc.lvec.data() + r * W));
    finalize_row<Arch, Pol>(c.shape, c.opt, c.out, obs, b, h, token(row0 + r), sc.m[r], l, sc.t[r], sc.count[r],
                      sc.o.data() + r * Dvp, row_extras{sc.first[r], K ? sc.topk.data() + r * K : nullptr, K});
  }
}

/// Entry of the quadratic skeleton (called by attention() after validation).
template <class Arch, class Pol, class Obs, class KV, class Keys = no_pattern>
void run_quadratic(const Pol& pol, const problem_shape& sh, const tensor_view<const float>& q,
                   const tensor_view<const KV>& k, const tensor_view<const KV>& v, const tensor_view<float>& out,
                   const options& opt, Obs& obs, const Keys& keys = {}, index_t band = 0) {
  if (sh.batch == 0 || sh.q_heads == 0 || sh.q_len == 0) return;
  const int threads = resolve_num_threads(opt.num_threads);
  // A local window (options or pattern) bounds the keys each row sees.
  const bool right_bounded = opt.window.right >= 0 || opt.causal != causal::none;
  if (opt.window.left >= 0 && right_bounded) {
    const index_t w = sat_add(sat_add(opt.window.left, std::max<index_t>(opt.window.right, 0)), 1);  // sides up to INT64_MAX
    band = band > 0 ? std::min(band, w) : w;
  }
  // Banded calls pack lazily: each query block touches a few key tiles (packed_kv).
  packed_kv<Arch> kv;
  const identity_rows identity;
  [[maybe_unused]] const reordered_rows<Keys> reordered{keys};
  if constexpr (requires { keys.kv_token(index_t{}, index_t{}); }) {
    kv.pack(k, v, threads, reordered, band > 0);
  } else {
    kv.pack(k, v, threads, identity, band > 0);
  }

  quadratic_call<Arch, Pol, Keys> c{keys, pol, sh, q, out, opt, kv};
  const double tau = opt.scale ? *opt.scale : 1.0 / std::sqrt(static_cast<double>(sh.head_dim));
  c.q_scale = static_cast<float>(tau * std::numbers::log2e);
  c.elementwise = has_elementwise_terms(opt);
  if constexpr (Obs::enabled) c.obs_topk = std::max(0, obs.top_k());
  c.count_dynamic = c.elementwise || Keys::active;
  c.block_rows = choose_block_rows<Arch>(band);
  if constexpr (requires { keys.row_block(); }) {
    // Whole pattern row blocks per task: a task that starts mid-block cuts its
    // strips short twice (strips never straddle a pattern block).
    const index_t rb = keys.row_block();
    if (rb > 0 && rb < c.block_rows) c.block_rows = static_cast<int>(c.block_rows / rb * rb);
  }
  c.band = band;
  const int BM = c.block_rows;
  const index_t q_blocks = (sh.q_len + BM - 1) / BM;
  const index_t heads = sh.batch * sh.q_heads;
  // Head by head: `threads` heads run side by side (task t on head t mod threads
  // of its group) and each head's query blocks follow one another, so the head's
  // packed K/V stay in L2/L3 from one block to the next instead of being evicted
  // by the other heads' (heads-first order cost 5-10% at N = 4096, H = 8, and a
  // sixth of a scattered block-sparse call, whose tiles the hardware prefetcher
  // cannot stream back in), and concurrent tasks rarely need the same lazily
  // packed tile. A band (every row sees at most `band` keys) makes all blocks
  // cost the same: its blocks go in order, so Q/O stream forward. Without one,
  // later query blocks may see more keys (causal masks, causal patterns): they
  // go first, so the call ends on short tasks.
  const bool ascending = band > 0;
  const index_t lanes = std::min<index_t>(threads, heads), full_groups = heads / lanes;
  const auto block_of = [&](index_t task) {
    const index_t group = task / (lanes * q_blocks);
    const index_t width = group < full_groups ? lanes : heads - full_groups * lanes;
    const index_t t = task - group * lanes * q_blocks;
    const index_t qb = ascending ? t / width : q_blocks - 1 - t / width, bh = group * lanes + t % width;
    const index_t row0 = qb * BM;
    return block_ref{bh / sh.q_heads, bh % sh.q_heads, row0, static_cast<int>(std::min<index_t>(BM, sh.q_len - row0))};
  };
  parallel_for(heads * q_blocks, threads, [&](index_t task) {
    const block_ref blk = block_of(task);
    // Tasks are handed out in order, so this thread's next is about `threads` on.
    const index_t next = task + threads;
    run_block<Arch>(c, obs, blk.b, blk.h, blk.row0, blk.n, next < heads * q_blocks ? block_of(next) : block_ref{});
  });
}

}  // namespace attnkit::detail
