#pragma once
/// \file
/// Kᵀ panels and padded V rows of every (batch, kv-head): what the prefill
/// skeleton's micro-kernels read, packed eagerly or lazily per key tile.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../../core/aligned.hpp"
#include "../../core/dtype.hpp"
#include "../../core/tensor_view.hpp"
#include "../../parallel/thread_pool.hpp"
#include "../../simd/microkernel.hpp"
#include "../../simd/prefetch.hpp"
#include "../../simd/transpose.hpp"
#include "../../simd/widen.hpp"

namespace attnkit::detail {

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

  /// The memory of a packing, kept by the call's workspace across calls.
  struct storage {
    aligned_vector<float> panels;
    std::vector<unsigned char> states;
    std::size_t bytes() const { return panels.capacity() * sizeof(float) + states.capacity(); }
  };

  /// Packs (eager) or prepares (lazy) into storage of the call's workspace, reused
  /// across calls, so a steady stream of calls neither allocates nor page-faults.
  /// Packed key j of kv head g is row `source(g, j)` of k and v (a reordering, e.g.
  /// the rank order of stochastic permutation attention). Lazy: k, v and source
  /// must outlive the kernel's use of this object. Workers widen 16-bit rows into
  /// their slot's scratch (`wide_of(slot)`: 16·D floats).
  template <class KV, class Source, class WideOf>
  void pack(const tensor_view<const KV>& k, const tensor_view<const KV>& v, int threads, const Source& source,
            bool lazy, storage& mem, const WideOf& wide_of) {
    auto& panels = mem.panels;
    auto& states = mem.states;
    const index_t B = k.batch(), G = k.heads(), Lk = k.seq(), Dv = v.dim();
    dim = k.dim();
    key_tiles = (Lk + BN - 1) / BN;
    vdim_padded = (Dv + tile::width - 1) / tile::width * tile::width;
    const std::size_t need = static_cast<std::size_t>(B * G) * (k_head_size() + v_head_size());
    if (panels.size() < need) panels.resize(need);
    kt = panels.data();
    vr = kt + static_cast<std::size_t>(B * G) * k_head_size();
    states.assign(static_cast<std::size_t>(B * G * key_tiles), 0);
    state = states.data();
    src_k = &k;
    src_v = &v;
    src_rows = &source;
    pack_fn = &pack_tile_of<KV, Source>;
    prefetch_fn = &prefetch_sources_of<KV, Source>;
    is_lazy = lazy;
    if (lazy) return;
    parallel_for(B * G, threads, [&](index_t bg, int slot) {
      float* wide = wide_of(slot);
      for (index_t kb = 0; kb < key_tiles; ++kb)
        state[bg * key_tiles + kb] = pack_tile_of<KV, Source>(*this, bg, kb, wide) ? 3 : 2;
    });
  }

  /// Tile kb of head bg is packed when this returns (packing it here if no task has
  /// started it, widening 16-bit rows in `wide`, 16·D floats); true when its V rows
  /// hold a NaN or Inf.
  bool ensure(index_t bg, index_t kb, float* wide) const {
    std::atomic_ref<unsigned char> st(state[bg * key_tiles + kb]);
    unsigned char x = st.load(std::memory_order_acquire);
    if (x >= 2) [[likely]] return x == 3;
    unsigned char idle = 0;
    if (st.compare_exchange_strong(idle, 1, std::memory_order_acquire)) {
      x = pack_fn(*this, bg, kb, wide) ? 3 : 2;
      st.store(x, std::memory_order_release);
      return x == 3;
    }
    while ((x = st.load(std::memory_order_acquire)) < 2) simd::cpu_relax();
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
  bool (*pack_fn)(const packed_kv&, index_t, index_t, float*) = nullptr;
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
      simd::prefetch_row(k.row(b, g, src), static_cast<std::size_t>(self.dim) * sizeof(KV));
      simd::prefetch_row(v.row(b, g, src), static_cast<std::size_t>(v.dim()) * sizeof(KV));
    }
  }

  /// Packs keys [kb·BN, kb·BN + BN) of head bg (zeros past Lk); true when a V row
  /// holds a NaN or Inf.
  template <class KV, class Source>
  static bool pack_tile_of(const packed_kv& self, index_t bg, index_t kb, float* wide) {
    const auto& k = *static_cast<const tensor_view<const KV>*>(self.src_k);
    const auto& v = *static_cast<const tensor_view<const KV>*>(self.src_v);
    const Source& source = *static_cast<const Source*>(self.src_rows);
    const index_t G = k.heads(), Lk = k.seq(), Dv = v.dim(), dim = self.dim, Dvp = self.vdim_padded;
    const index_t b = bg / G, g = bg % G;
    float* panel = self.kt + bg * self.k_head_size() + kb * dim * BN;
    float* vh = self.vr + bg * self.v_head_size();
    bool nonfinite = false;
    const index_t j0 = kb * BN, j1 = std::min<index_t>(Lk, (kb + 1) * BN);
    // Half-precision keys are widened into `wide` (16·dim floats) first, 16 rows at a time.
    for (index_t jg = j0; jg < j1; jg += 16) {
      const int n = static_cast<int>(std::min<index_t>(16, j1 - jg));
      const float* krow[16];
      for (int i = 0; i < n; ++i) {
        const index_t j = jg + i, src = source(g, j);
        if constexpr (!Source::identity) {
          // Reordered rows defeat the hardware prefetcher: ask for a later pair.
          if (j + 16 < Lk) {
            const index_t ahead = source(g, j + 16);
            simd::prefetch_row(k.row(b, g, ahead), static_cast<std::size_t>(dim) * sizeof(KV));
            simd::prefetch_row(v.row(b, g, ahead), static_cast<std::size_t>(Dv) * sizeof(KV));
          }
        }
        if constexpr (std::is_same_v<KV, float>) {
          krow[i] = k.row(b, g, src);
        } else {
          widen(k.row(b, g, src), wide + i * dim, dim);
          krow[i] = wide + i * dim;
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

}  // namespace attnkit::detail
