#pragma once
/// \file
/// The backward of every kernelised policy (linear<F> with any differentiable
/// feature map, log_normal, LLN+Diag), through its engine (engine.hpp):
///
/// \code
///   attnkit::detail::run_kernelized_backward<Arch>(policy, shape, q, k, v, out, dout, dq, dk, dv, opt, bopt, ws);
/// \endcode
///
/// called by attnkit::attention_backward after validate_backward_call. It checks
/// the policy's own fields and options again (before any gradient byte is written),
/// then per (batch, query head) runs the two linear-time passes of
/// backward_passes.hpp (and the block-diagonal half, backward_diag.hpp); with GQA
/// the heads of a kv group leave per-key partials that a second phase sums in head
/// order. Every task writes disjoint outputs in a fixed order: dq, dk, dv are
/// bitwise identical for any thread count. Every element is written (or added to,
/// with backward_options::accumulate): rows with no key, keys no row sees and
/// padded keys (≥ key_lengths[b]) get exactly 0.
///
/// Constants of the call (not differentiated): the decay, positions, FAVOR+'s
/// projection; LLN's α, β (moment-matched from q and k when unset) and max shifts.
/// `out` is not read (the normaliser's gradient is rebuilt from the features).
/// Memory: O(BN·(M + Dv)) per worker, plus O(Lk·(M + Dv)) per worker without GQA
/// and O(B·Hq·Lk·(M + Dv)) per call with it.
#include <algorithm>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "../../core/aligned.hpp"
#include "../../core/backward_options.hpp"
#include "../../core/dtype.hpp"
#include "../../core/error.hpp"
#include "../../parallel/thread_pool.hpp"
#include "../../parallel/workspace.hpp"
#include "backward_diag.hpp"
#include "backward_passes.hpp"
#include "engine.hpp"
#include "linear.hpp"
#include "log_normal.hpp"
#include "../../simd/widen.hpp"

namespace attnkit::detail {

/// The per-key results of one kv head: dk_j = vjp(k_j, Σ_h dφk_h[j]) + Σ_h dk_h[j],
/// dv_j = Σ_h dv_h[j] over the group's heads (in head order), for keys [j0, j1);
/// keys ≥ lk get 0.
template <class Arch, class FK, class KV>
void finish_keys(const FK& fk, const problem_shape& sh, index_t b, index_t g, index_t j0, index_t j1,
                 const tensor_view<const KV>& k, const tensor_view<float>& dk, const tensor_view<float>& dv,
                 const options& opt, bool accumulate, const float* const* dphik, const float* const* dvb,
                 const float* const* dkd, int heads, index_t Mp, index_t Dvp, kernelized_backward_scratch& s) {
  const index_t D = sh.head_dim, Dv = sh.value_dim;
  const batch_keys bk = keys_of_batch(opt, b, sh.q_len, sh.k_len);
  grow(s.dsum, Mp), grow(s.dx, D), grow(s.xrow, std::max(D, Dv));
  auto put = [&](float* dst, const float* src, index_t n) {
    if (accumulate)
      simd::axpy<Arch>(1.0f, src, dst, n);
    else
      std::copy_n(src, n, dst);
  };
  for (index_t j = j0; j < j1; ++j) {
    float* dkr = dk.row(b, g, j);
    float* dvr = dv.row(b, g, j);
    if (j >= bk.lk) {  // padded key: no gradient
      if (!accumulate) std::fill_n(dkr, D, 0.0f), std::fill_n(dvr, Dv, 0.0f);
      continue;
    }
    std::copy_n(dphik[0] + j * Mp, Mp, s.dsum.data());
    for (int x = 1; x < heads; ++x) simd::axpy<Arch>(1.0f, dphik[x] + j * Mp, s.dsum.data(), Mp);
    std::fill_n(s.dx.data(), D, 0.0f);
    const float* kx;
    if constexpr (std::is_same_v<KV, float>) {
      kx = k.row(b, g, j);
    } else {
      widen(k.row(b, g, j), s.xrow.data(), D);
      kx = s.xrow.data();
    }
    if (!std::all_of(s.dsum.data(), s.dsum.data() + Mp, [](float x) { return x == 0.0f; }))  // unseen keys: exactly 0
      fk.vjp(kx, token_ref{b, g, j, false, bk}, s.dsum.data(), s.dx.data());
    if (dkd)
      for (int x = 0; x < heads; ++x) simd::axpy<Arch>(1.0f, dkd[x] + j * D, s.dx.data(), D);
    put(dkr, s.dx.data(), D);
    std::copy_n(dvb[0] + j * Dvp, Dv, s.dsum.data());
    for (int x = 1; x < heads; ++x) simd::axpy<Arch>(1.0f, dvb[x] + j * Dvp, s.dsum.data(), Dv);
    put(dvr, s.dsum.data(), Dv);
  }
}

template <class Arch, class P, class KV>
void run_kernelized_backward(const P& pol, const problem_shape& sh, const tensor_view<const float>& q,
                             const tensor_view<const KV>& k, const tensor_view<const KV>& v,
                             const tensor_view<const float>& out, const tensor_view<const float>& dout,
                             const tensor_view<float>& dq, const tensor_view<float>& dk, const tensor_view<float>& dv,
                             const options& opt, const backward_options& bo, workspace& ws) {
  static_assert(check_kernelized_policy<P>());
  using E = kernelized_engine<P>;
  (void)out;
  E::check(pol, sh, opt);
  if (bo.reg.active()) fail("backward_options.reg", "kind", std::string("none for ") + E::name, "a regulariser");
  if (bo.dsinks) fail("backward_options.dsinks", "", "nullptr (no sinks in a kernelised policy)", "a pointer");
  if (bo.dbias.data) fail("backward_options.dbias", "", "no view (no bias in a kernelised policy)", "a view");
  const bool diag = E::block_diagonal(pol);
  const float share = static_cast<float>(E::kernel_share(pol));
  const int threads = resolve_num_threads(opt.num_threads);
  const index_t Hq = sh.q_heads, G = sh.group(), Lk = sh.k_len, D = sh.head_dim;
  ws.reserve_slots(threads);
  E::template with_features<Arch>(pol, sh, q, k, opt, ws, [&](const auto& fq, const auto& fk, const kernelized_params& prm) {
    using head = kernelized_head_backward<Arch, std::remove_cvref_t<decltype(fq)>, std::remove_cvref_t<decltype(fk)>, KV>;
    constexpr int W = simd::ops<Arch>::width, BN = head::BN;
    const index_t M = fq.dim(), Mp = (M + W - 1) / W * W, Dvp = (sh.value_dim + W - 1) / W * W;
    // With GQA the group's heads leave per-key partials here, summed in phase 2 (pass
    // 2 zeroes each key tile of φk and v when it reaches it; keys ≥ lk are never read).
    std::unique_ptr<float[]> part_phik, part_v;
    aligned_vector<float> part_k;
    if (G > 1) {
      part_phik.reset(new float[static_cast<std::size_t>(sh.batch * Hq * Lk * Mp)]);
      part_v.reset(new float[static_cast<std::size_t>(sh.batch * Hq * Lk * Dvp)]);
      if (diag) part_k.assign(static_cast<std::size_t>(sh.batch * Hq * Lk * D), 0.0f);
    }
    parallel_for(sh.batch * Hq, threads, [&](index_t task, int slot) {
      const index_t b = task / Hq, h = task % Hq;
      auto& s = ws.slot(slot).get<kernelized_backward_scratch>();
      head hb{fq, fk, prm, share, sh, q, k, v, dout, opt, s};
      hb.init(b, h);
      hb.queries(dq, bo.accumulate);
      float *dphik, *dvb, *dkd = nullptr;
      const index_t lk = hb.bk.lk;
      if (G > 1) {
        dphik = part_phik.get() + task * Lk * Mp;
        dvb = part_v.get() + task * Lk * Dvp;
        if (diag) dkd = part_k.data() + task * Lk * D;
      } else {
        grow(s.dphik, Lk * Mp), grow(s.dvb, Lk * Dvp);
        dphik = s.dphik.data(), dvb = s.dvb.data();
        if (diag) {
          grow(s.dkd, Lk * D);
          std::fill_n(s.dkd.data(), lk * D, 0.0f);
          dkd = s.dkd.data();
        }
      }
      hb.keys(dphik, dvb);
      if (diag)
        block_diagonal_backward<Arch>(1.0f - share, sh, b, h, q, k, v, dout, dq, dkd, dvb, Dvp, opt,
                                      ws.slot(slot).get<block_diagonal_backward_scratch>());
      if (G == 1)  // this head is its kv head's only one: finish its keys now
        finish_keys<Arch>(fk, sh, b, h, 0, Lk, k, dk, dv, opt, bo.accumulate, &dphik, &dvb,
                          diag ? &dkd : nullptr, 1, Mp, Dvp, s);
    });
    if (G == 1) return;
    // Phase 2: per (batch, kv head, key tile), the group's partials in head order.
    const index_t tiles = (Lk + BN - 1) / BN;
    parallel_for(sh.batch * sh.kv_heads * tiles, threads, [&](index_t task, int slot) {
      const index_t tile = task % tiles, bg = task / tiles, b = bg / sh.kv_heads, g = bg % sh.kv_heads;
      std::vector<const float*> pk(static_cast<std::size_t>(G)), pv(pk.size()), pd(pk.size());
      for (index_t x = 0; x < G; ++x) {
        const index_t t = b * Hq + g * G + x;
        pk[static_cast<std::size_t>(x)] = part_phik.get() + t * Lk * Mp;
        pv[static_cast<std::size_t>(x)] = part_v.get() + t * Lk * Dvp;
        if (diag) pd[static_cast<std::size_t>(x)] = part_k.data() + t * Lk * D;
      }
      finish_keys<Arch>(fk, sh, b, g, tile * BN, std::min<index_t>(Lk, tile * BN + BN), k, dk, dv, opt, bo.accumulate,
                        pk.data(), pv.data(), diag ? pd.data() : nullptr, static_cast<int>(G), Mp, Dvp,
                        ws.slot(slot).get<kernelized_backward_scratch>());
    });
  });
}

}  // namespace attnkit::detail
