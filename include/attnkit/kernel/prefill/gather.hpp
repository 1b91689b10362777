#pragma once
/// \file
/// Packing for key sets that gather (Keys::gathers, e.g. the 2-D neighbourhood):
/// each task's block of query rows packs its own list of keys, in the pattern's
/// order, into its worker's slot. Consecutive blocks of one head share most of
/// their keys — a 2-D neighbourhood's next grid row keeps kernel_h − 1 of its
/// kernel_h band rows, at the same positions since the pattern places row r at
/// slot r mod kernel_h — so a block repacks only the positions whose key changed
/// since the slot's previous block of the same call and head: about one grid row
/// per block instead of kernel_h.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../../core/aligned.hpp"
#include "../../core/tensor_view.hpp"
#include "../../simd/microkernel.hpp"
#include "../../simd/transpose.hpp"
#include "../../simd/widen.hpp"
#include "packed_kv.hpp"

namespace attnkit::detail {

/// A process-wide call number: what a slot packed in an earlier call (other K/V
/// bytes) is never reused.
inline std::uint64_t next_gather_call() noexcept {
  static std::atomic<std::uint64_t> calls{0};
  return calls.fetch_add(1, std::memory_order_relaxed) + 1;
}

/// A worker's gathered block: the keys of its current task and what its panels
/// hold (one kv head: Kᵀ panels [tiles][dim][BN], then V rows [tiles·BN][Dvp]).
template <class Arch>
struct gathered_block {
  std::vector<index_t> keys;          ///< this task's keys (token indices), in packing order
  std::vector<index_t> packed;        ///< the token packed at each position (−1: zeros)
  std::vector<unsigned char> bad;     ///< per position: its V row holds NaN or Inf
  std::vector<unsigned char> states;  ///< per tile: 2, or 3 when a V row of it holds NaN/Inf
  aligned_vector<float> panels;
  std::uint64_t call = 0;
  index_t head = -1, dim = 0, vdim = 0;
  std::size_t bytes() const {
    return (keys.capacity() + packed.capacity()) * sizeof(index_t) + bad.capacity() + states.capacity() +
           panels.capacity() * sizeof(float);
  }
};

/// Packs keys[j] of kv head (b, g) at position j of gb's panels, repacking only
/// positions that changed since gb's last block of the same call and head, and
/// returns the packed_kv view of them (head 0, every tile packed).
template <class Arch, class KV>
packed_kv<Arch> pack_gathered(gathered_block<Arch>& gb, const tensor_view<const KV>& k,
                              const tensor_view<const KV>& v, index_t b, index_t g, std::uint64_t call, float* wide) {
  constexpr int BN = simd::tile_shape<Arch>::keys;
  const index_t nk = static_cast<index_t>(gb.keys.size()), D = k.dim(), Dv = v.dim();
  packed_kv<Arch> kv;
  kv.key_tiles = (nk + BN - 1) / BN;
  kv.dim = D;
  kv.vdim_padded = (Dv + simd::tile_shape<Arch>::width - 1) / simd::tile_shape<Arch>::width * simd::tile_shape<Arch>::width;
  const index_t slots = kv.key_tiles * BN, Dvp = kv.vdim_padded;
  const index_t head = b * k.heads() + g;
  if (gb.call != call || gb.head != head || gb.dim != D || gb.vdim != Dv ||
      static_cast<index_t>(gb.packed.size()) != slots) {
    // Another call, head or size: start from zeros (tail keys stay zero).
    gb.panels.assign(static_cast<std::size_t>(slots * (D + Dvp)), 0.0f);
    gb.packed.assign(static_cast<std::size_t>(slots), -1);
    gb.bad.assign(static_cast<std::size_t>(slots), 0);
    gb.call = call, gb.head = head, gb.dim = D, gb.vdim = Dv;
  }
  gb.states.resize(static_cast<std::size_t>(kv.key_tiles));
  kv.kt = gb.panels.data();
  kv.vr = kv.kt + slots * D;
  kv.state = gb.states.data();

  const auto k_row = [&](index_t j, float* buf) -> const float* {
    if constexpr (std::is_same_v<KV, float>) {
      (void)buf;
      return k.row(b, g, gb.keys[static_cast<std::size_t>(j)]);
    } else {
      widen(k.row(b, g, gb.keys[static_cast<std::size_t>(j)]), buf, D);
      return buf;
    }
  };
  const auto put_v = [&](index_t j) {
    float* dst = kv.vr + j * Dvp;
    const KV* src = v.row(b, g, gb.keys[static_cast<std::size_t>(j)]);
    bool nonfinite;
    if constexpr (std::is_same_v<KV, float>) {
      nonfinite = simd::copy_probe<Arch>(src, dst, Dv);
    } else {
      widen(src, dst, Dv);
      nonfinite = simd::any_nonfinite<Arch>(dst, Dv);
    }
    gb.bad[static_cast<std::size_t>(j)] = nonfinite;
    gb.packed[static_cast<std::size_t>(j)] = gb.keys[static_cast<std::size_t>(j)];
  };
  for (index_t t = 0; t < kv.key_tiles; ++t) {
    const index_t j0 = t * BN, j1 = std::min(nk, j0 + BN);
    float* panel = kv.kt + t * D * BN;
    int changed = 0;
    for (index_t j = j0; j < j1; ++j) changed += gb.packed[static_cast<std::size_t>(j)] != gb.keys[static_cast<std::size_t>(j)];
    if (BN % 16 == 0 && changed == BN) {  // a whole tile: one register transpose per 16 keys
      for (index_t j = j0; j < j1; j += 16) {
        const float* rows[16];
        for (int i = 0; i < 16; ++i) rows[i] = k_row(j + i, wide + i * D);
        simd::transpose_16<Arch>(rows, D, panel + (j - j0), BN);
        for (int i = 0; i < 16; ++i) put_v(j + i);
      }
    } else if (changed > 0) {  // a few keys (or narrow tiles): their Kᵀ columns one by one
      for (index_t j = j0; j < j1; ++j) {
        if (gb.packed[static_cast<std::size_t>(j)] == gb.keys[static_cast<std::size_t>(j)]) continue;
        const float* row = k_row(j, wide);
        for (index_t d = 0; d < D; ++d) panel[d * BN + (j - j0)] = row[d];
        put_v(j);
      }
    }
    bool tile_bad = false;
    for (index_t j = j0; j < j1; ++j) tile_bad = tile_bad || gb.bad[static_cast<std::size_t>(j)];
    gb.states[static_cast<std::size_t>(t)] = tile_bad ? 3 : 2;
  }
  return kv;
}

}  // namespace attnkit::detail
