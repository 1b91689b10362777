#pragma once
/// \file
/// The kernelised (linear) skeleton: o_i = φ(q_i)ᵀS_i / (φ(q_i)ᵀz_i + ε) with
/// S_i = Σ_{j<p_i} λ^{p_i−1−j} φ(k_j)v_jᵀ, z_i = Σ_{j<p_i} λ^{p_i−1−j} φ(k_j), where
/// p_i is the number of keys row i sees (all of them when non-causal; the causal
/// prefix, current token included, otherwise) and λ = 1 without decay.
///
/// Causal rows are processed in chunks of one key tile: the state (S, z) over the
/// keys before the chunk is applied with one product φQ·S, the keys inside the
/// chunk with a masked φQ·φKᵀ tile — both on the same qk_tile / pv_tile
/// micro-kernels as softmax. Cost is linear in the sequence length.
#include <algorithm>
#include <cmath>
#include <span>
#include <vector>

#include "../../core/aligned.hpp"
#include "../../core/dtype.hpp"
#include "../../core/mask.hpp"
#include "../../core/options.hpp"
#include "../../core/validate.hpp"
#include "../../parallel/thread_pool.hpp"
#include "../../parallel/workspace.hpp"
#include "../../simd/microkernel.hpp"
#include "../../simd/prefetch.hpp"
#include "../../simd/transpose.hpp"
#include "../../simd/widen.hpp"

namespace attnkit::detail {

/// One token handed to a resolved feature map: its batch, head (query head for
/// queries, kv head for keys), index in its sequence, role and the batch's keys.
struct token_ref {
  index_t batch = 0, head = 0, index = 0;
  bool query = true;
  batch_keys keys{};
};

/// What the skeletons need from a feature map after the policy's engine resolved it
/// for one call (kernel/kernelized/features.hpp):
///   index_t dim() const                                       — feature dimension M
///   void map(const float* x, const token_ref&, float* out) const — one token's features
/// and, for the backward (kernel/kernelized/backward.hpp),
///   void vjp(const float* x, const token_ref&, const float* dphi, float* dx) const — dx += Jᵀ·dphi
template <class F>
concept resolved_feature = requires(const F& f, const float* x, float* out, const token_ref& t) {
  { f.dim() } -> std::convertible_to<index_t>;
  f.map(x, t, out);
};

/// Keys row i of a kernelised call sees: the prefix [0, p_i) (all valid keys when
/// non-causal; the causal prefix, current token included, otherwise). Never
/// decreases with i, and grows by at most 1 per row below lk.
inline index_t kernelized_prefix(const options& opt, const batch_keys& bk, index_t i) noexcept {
  index_t p = bk.lk;
  if (opt.causal == causal::top_left) p = std::min(p, i + 1);
  if (opt.causal == causal::bottom_right) p = std::min(p, i + bk.delta + 1);
  return std::max<index_t>(p, 0);
}

/// Parameters of one kernelised call, resolved by the policy adapter.
struct kernelized_params {
  bool normalize = true;
  double eps = 1e-6;
  std::span<const float> decay{};  ///< per query head λ (causal only); empty = none
};

/// A worker's buffers for one (batch, head) of the kernelised skeleton (in its
/// workspace slot).
struct kernelized_scratch {
  aligned_vector<float> S, z, phik_t, phik_rows, vpad, phiq, o, xrow, P, rowscale;
  std::vector<double> den;
  std::size_t bytes() const {
    std::size_t n = den.capacity() * sizeof(double);
    for (const auto* v : {&S, &z, &phik_t, &phik_rows, &vpad, &phiq, &o, &xrow, &P, &rowscale})
      n += v->capacity() * sizeof(float);
    return n;
  }
};

template <class Arch, resolved_feature FQ, resolved_feature FK, class KV>
void run_kernelized(const FQ& fq, const FK& fk, const kernelized_params& prm, const problem_shape& sh,
                    const tensor_view<const float>& q, const tensor_view<const KV>& k, const tensor_view<const KV>& v,
                    const tensor_view<float>& out, const options& opt, workspace& ws) {
  using O = simd::ops<Arch>;
  using tile = simd::tile_shape<Arch>;
  constexpr int W = O::width, MR = tile::rows, BN = tile::keys, NV = tile::value_vectors;
  const index_t M = fq.dim(), Dv = sh.value_dim, Lq = sh.q_len, Lk = sh.k_len;
  const index_t Dvp = (Dv + W - 1) / W * W;
  const bool causal_rows = opt.causal != causal::none;
  const int threads = resolve_num_threads(opt.num_threads);

  ws.reserve_slots(threads);
  parallel_for(sh.batch * sh.q_heads, threads, [&](index_t task, int slot) {
    const index_t b = task / sh.q_heads, h = task % sh.q_heads, g = h / sh.group();
    const batch_keys bk = keys_of_batch(opt, b, Lq, Lk);
    const double lambda = prm.decay.empty() ? 1.0 : prm.decay[static_cast<std::size_t>(h)];
    auto prefix = [&](index_t i) { return kernelized_prefix(opt, bk, i); };  // keys [0, prefix(i))

    // Named references, not a structured binding: the lambdas below capture them
    // (clang before 16 cannot capture structured bindings).
    kernelized_scratch& ks = ws.slot(slot).get<kernelized_scratch>();
    auto &S = ks.S, &z = ks.z, &phik_t = ks.phik_t, &phik_rows = ks.phik_rows, &vpad = ks.vpad, &phiq = ks.phiq;
    auto &o = ks.o, &xrow = ks.xrow, &P = ks.P, &rowscale = ks.rowscale;
    auto& den = ks.den;
    auto grow = [](aligned_vector<float>& x, index_t n) {
      if (x.size() < static_cast<std::size_t>(n)) x.resize(static_cast<std::size_t>(n));
    };
    grow(S, M * Dvp);
    grow(z, M);
    grow(phik_t, M * BN);
    grow(phik_rows, BN * M);
    grow(vpad, BN * Dvp);
    grow(phiq, BN * M);
    grow(o, BN * Dvp);
    grow(xrow, std::max(sh.head_dim, M));
    grow(P, MR * BN);
    grow(rowscale, std::max<index_t>(M, BN));
    std::fill_n(S.data(), M * Dvp, 0.0f);
    std::fill_n(z.data(), M, 0.0f);
    index_t absorbed = 0;  // keys [0, absorbed) are in (S, z)

    // Feature-map keys [j0, j0+n) into phik_t [M][BN] (transposed, zero-padded) and
    // their values into vpad [BN][Dvp].
    index_t loaded_j0 = -1, loaded_n = 0;  // keys currently in phik_t / vpad (unscaled by decay)
    bool loaded_v_nonfinite = false;       // vpad holds a NaN or Inf
    auto load_keys = [&](index_t j0, index_t n) {
      if (j0 == loaded_j0 && n == loaded_n) return;  // the intra-chunk keys are absorbed next: reuse
      loaded_j0 = j0;
      loaded_n = n;
      bool nonfinite = false;
      if (n < BN) {  // only a partial chunk needs zero padding
        std::fill_n(phik_t.data(), M * BN, 0.0f);
        std::fill_n(vpad.data(), BN * Dvp, 0.0f);
      }
      for (index_t jj = 0; jj < n; ++jj) {
        // The next chunk's K and V rows are requested now and arrive while this
        // chunk's products run: at D = 64 the streams of Q, K, V and O are a
        // visible share of the time.
        if (const index_t jn = j0 + BN + jj; jn < Lk) {
          simd::prefetch_row(k.row(b, g, jn), static_cast<std::size_t>(sh.head_dim) * sizeof(KV));
          simd::prefetch_row(v.row(b, g, jn), static_cast<std::size_t>(Dv) * sizeof(KV));
        }
        const float* x = nullptr;
        if constexpr (std::is_same_v<KV, float>) {
          x = k.row(b, g, j0 + jj);
        } else {
          widen(k.row(b, g, j0 + jj), xrow.data(), sh.head_dim);
          x = xrow.data();
        }
        fk.map(x, token_ref{b, g, j0 + jj, false, bk}, phik_rows.data() + jj * M);
        float* vrow = vpad.data() + jj * Dvp;
        widen(v.row(b, g, j0 + jj), vrow, Dv);
        nonfinite = nonfinite || simd::any_nonfinite<Arch>(vrow, Dv);
        std::fill(vrow + Dv, vrow + Dvp, 0.0f);
      }
      loaded_v_nonfinite = nonfinite;
      // Feature rows → φKᵀ panel, 16 keys at a time (a register transpose on AVX-512).
      index_t jj = 0;
      if constexpr (BN % 16 == 0)
        for (; jj + 16 <= n; jj += 16) simd::transpose_16<Arch>(phik_rows.data() + jj * M, M, M, phik_t.data() + jj, BN);
      for (; jj < n; ++jj)
        for (index_t m = 0; m < M; ++m) phik_t[static_cast<std::size_t>(m * BN + jj)] = phik_rows[static_cast<std::size_t>(jj * M + m)];
    };
    // (S, z) ← λ^n (S, z) + Σ_j λ^{n−1−jj} φ(k_j) (v_j, 1) over the loaded keys.
    auto absorb = [&](index_t n) {
      if (lambda != 1.0) {
        const float a = static_cast<float>(std::pow(lambda, static_cast<double>(n)));
        for (index_t x = 0; x < M * Dvp; ++x) S[static_cast<std::size_t>(x)] *= a;
        for (index_t m = 0; m < M; ++m) z[static_cast<std::size_t>(m)] *= a;
        for (index_t jj = 0; jj < n; ++jj) {
          const float w = static_cast<float>(std::pow(lambda, static_cast<double>(n - 1 - jj)));
          for (index_t m = 0; m < M; ++m) phik_t[static_cast<std::size_t>(m * BN + jj)] *= w;
        }
        loaded_j0 = -1;  // phik_t now holds decayed features
      }
      const float ones[MR] = {1, 1, 1, 1, 1, 1};
      for (index_t m0 = 0; m0 < M; m0 += MR) {
        const int R = static_cast<int>(std::min<index_t>(MR, M - m0));
        for (index_t dc = 0; dc < Dvp;) {
          const int nv = static_cast<int>(std::min<index_t>(NV, (Dvp - dc) / W));
          simd::pv_rows<Arch>(R, nv, phik_t.data() + m0 * BN, BN, vpad.data() + dc, Dvp, n, S.data() + m0 * Dvp + dc, Dvp,
                        ones);
          dc += nv * W;
        }
      }
      for (index_t m = 0; m < M; ++m) {  // z += Σ_j φ(k_j); columns past n are zero
        typename O::vf s = O::set1(0.0f);
        for (index_t jj = 0; jj < BN; jj += W) s = s + O::load(phik_t.data() + m * BN + jj);
        z[static_cast<std::size_t>(m)] += O::reduce_add(s);
      }
    };
    auto advance_to = [&](index_t target) {
      while (absorbed < target) {
        const index_t n = std::min<index_t>(BN, target - absorbed);
        load_keys(absorbed, n);
        absorb(n);
        absorbed += n;
      }
    };

    for (index_t i0 = 0; i0 < Lq; i0 += BN) {
      const index_t rows = std::min<index_t>(BN, Lq - i0);
      const index_t p_last = prefix(i0 + rows - 1);
      // Causal: absorb up to p_last − BN (never past the chunk's first prefix, since
      // prefixes grow by ≤ 1 per row), so the chunk's own keys [absorbed, p_last)
      // fill one whole tile and are the very tile the next chunk absorbs: each key
      // is feature-mapped, transposed and copied once, and no tile needs zero
      // padding. Absorbing up to the first prefix shifted the two tiles by one key
      // and did all of that twice (linear causal: 34.9 → 30.4 ms at N = 16384).
      advance_to(causal_rows ? std::max(absorbed, p_last - BN) : bk.lk);
      // φQ for the chunk.
      for (index_t r = 0; r < rows; ++r) {
        if (i0 + BN + r < Lq) simd::prefetch_row(q.row(b, h, i0 + BN + r), static_cast<std::size_t>(sh.head_dim) * sizeof(float));
        const float* qr = q.row(b, h, i0 + r);
        fq.map(qr, token_ref{b, h, i0 + r, true, bk}, phiq.data() + r * M);
      }
      // Inter-chunk part: o = φQ·S, den = φQ·z (decay: × λ^{p_i − absorbed}).
      std::fill_n(o.data(), rows * Dvp, 0.0f);
      den.assign(static_cast<std::size_t>(rows), 0.0);
      const float ones[MR] = {1, 1, 1, 1, 1, 1};
      for (index_t r0 = 0; r0 < rows; r0 += MR) {
        const int R = static_cast<int>(std::min<index_t>(MR, rows - r0));
        for (index_t dc = 0; dc < Dvp;) {
          const int nv = static_cast<int>(std::min<index_t>(NV, (Dvp - dc) / W));
          simd::pv_rows<Arch>(R, nv, phiq.data() + r0 * M, M, S.data() + dc, Dvp, M, o.data() + r0 * Dvp + dc, Dvp, ones);
          dc += nv * W;
        }
      }
      for (index_t r = 0; r < rows; ++r) {
        den[static_cast<std::size_t>(r)] = simd::dot<Arch>(phiq.data() + r * M, z.data(), M);
        if (lambda != 1.0 && causal_rows) {
          const float a = static_cast<float>(std::pow(lambda, static_cast<double>(prefix(i0 + r) - absorbed)));
          for (index_t d = 0; d < Dvp; ++d) o[static_cast<std::size_t>(r * Dvp + d)] *= a;
          den[static_cast<std::size_t>(r)] *= a;
        }
      }
      // Intra-chunk part: keys [absorbed, p_last) with the per-row prefix mask.
      if (causal_rows && p_last > absorbed) {
        const index_t n = p_last - absorbed;  // <= BN by construction (prefix grows by <= 1 per row)
        load_keys(absorbed, n);
        for (index_t r0 = 0; r0 < rows; r0 += MR) {
          const int R = static_cast<int>(std::min<index_t>(MR, rows - r0));
          simd::qk_rows<Arch>(R, phiq.data() + r0 * M, M, phik_t.data(), M, P.data());  // φQ·φKᵀ
          for (int r = 0; r < R; ++r) {
            float* pr = P.data() + r * BN;
            const index_t pi = prefix(i0 + r0 + r);
            if (lambda == 1.0) {  // keys jj < pi − absorbed (and < n) keep their weight
              const float upto = static_cast<float>(std::clamp<index_t>(pi - absorbed, 0, n));
              typename O::vf sum = O::set1(0.0f);
              for (index_t jj = 0; jj < BN; jj += W) {
                const typename O::vf x = O::keep_below(O::load(pr + jj), O::iota(static_cast<float>(jj)), upto);
                O::store(pr + jj, x);
                sum = sum + x;
              }
              den[static_cast<std::size_t>(r0 + r)] += O::reduce_add(sum);
              continue;
            }
            double rs = 0;  // decayed weights λ^{p_i−1−j}
            for (index_t jj = 0; jj < BN; ++jj) {
              const index_t j = absorbed + jj;
              if (jj >= n || j >= pi) {
                pr[jj] = 0.0f;
                continue;
              }
              pr[jj] *= static_cast<float>(std::pow(lambda, static_cast<double>(pi - 1 - j)));
              rs += pr[jj];
            }
            den[static_cast<std::size_t>(r0 + r)] += rs;
          }
          if (loaded_v_nonfinite) [[unlikely]] {  // keep a later key's NaN/Inf V out of earlier rows (0·NaN)
            for (int r = 0; r < R; ++r)
              for (index_t jj = 0; jj < n; ++jj)
                if (const float p = P[static_cast<std::size_t>(r * BN + jj)]; p != 0.0f)
                  simd::axpy<Arch>(p, vpad.data() + jj * Dvp, o.data() + (r0 + r) * Dvp, Dvp);
            continue;
          }
          for (index_t dc = 0; dc < Dvp;) {
            const int nv = static_cast<int>(std::min<index_t>(NV, (Dvp - dc) / W));
            simd::pv_rows<Arch>(R, nv, P.data(), BN, vpad.data() + dc, Dvp, n, o.data() + r0 * Dvp + dc, Dvp, ones);
            dc += nv * W;
          }
        }
      }
      // Write rows.
      for (index_t r = 0; r < rows; ++r) {
        float* dst = out.row(b, h, i0 + r);
        const float* src = o.data() + r * Dvp;
        if (prm.normalize) {
          const float inv = static_cast<float>(1.0 / (den[static_cast<std::size_t>(r)] + prm.eps));
          for (index_t d = 0; d < Dv; ++d) dst[d] = src[d] * inv;
        } else {
          for (index_t d = 0; d < Dv; ++d) dst[d] = src[d];
        }
      }
    }
  });
}

}  // namespace attnkit::detail
