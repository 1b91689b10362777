#pragma once
/// \file
/// Recurrent (token-by-token) causal linear attention for decoding. The caller owns
/// the state (S, z) of every (batch, query head) and feeds new tokens; each step
/// absorbs the token's key/value, S ← λS + φ(k)vᵀ, z ← λz + φ(k), then answers its
/// query, o = φ(q)ᵀS / (φ(q)ᵀz + ε). Fed the whole sequence, this equals the causal
/// (top-left, Lq = Lk) result of attention(linear{...}) row by row. The state of one
/// head is M·(Dv+1) floats (16 KiB for M = Dv = 64): it stays in L1.
#include <string>
#include <vector>

#include "../../core/dtype_rules.hpp"
#include "../../core/validate.hpp"
#include "../../parallel/thread_pool.hpp"
#include "../../parallel/workspace.hpp"
#include "../../policy/linear.hpp"
#include "../staging.hpp"
#include "features.hpp"
#include "options.hpp"

namespace attnkit {

namespace detail {
/// A worker's φ(q) and φ(k) rows of one recurrent step (in its workspace slot).
struct feature_pair_rows {
  std::vector<float> fq, fk;
  std::size_t bytes() const { return (fq.capacity() + fk.capacity()) * sizeof(float); }
};
}  // namespace detail

/// State of recurrent linear attention: S [B][Hq][M][Dv] and z [B][Hq][M].
struct linear_state {
  index_t batch = 0, heads = 0, feature_dim = 0, value_dim = 0;
  index_t tokens = 0;  ///< tokens absorbed so far (the next token's position)
  std::vector<float> S, z;

  linear_state() = default;
  linear_state(index_t b, index_t h, index_t m, index_t dv)
      : batch(b), heads(h), feature_dim(m), value_dim(dv),
        S(static_cast<std::size_t>(b * h * m * dv), 0.0f), z(static_cast<std::size_t>(b * h * m), 0.0f) {}
  float* s_of(index_t b, index_t h) { return S.data() + (b * heads + h) * feature_dim * value_dim; }
  float* z_of(index_t b, index_t h) { return z.data() + (b * heads + h) * feature_dim; }
};

/// An empty state for `pol` with B batches, Hq query heads, head dim D and value dim Dv.
template <class F>
linear_state make_linear_state(const linear<F>& pol, index_t batch, index_t q_heads, index_t head_dim,
                               index_t value_dim) {
  if (batch < 0 || q_heads < 0 || head_dim <= 0 || value_dim <= 0)
    detail::fail("make_linear_state", "extents", "batch, heads >= 0 and dims > 0",
                 std::to_string(batch) + "," + std::to_string(q_heads) + "," + std::to_string(head_dim) + "," +
                     std::to_string(value_dim));
  return linear_state(batch, q_heads, feature::output_dim(pol.phi, head_dim), value_dim);
}

namespace detail {
/// Every check of a linear_step call (views, options, the state against them).
template <class F, class Q, class K, class V, class O>
problem_shape check_linear_step(const linear<F>& pol, const tensor_view<Q>& q, const tensor_view<K>& k,
                                const tensor_view<V>& v, const tensor_view<O>& out, const linear_state& state,
                                const options& opt) {
  const problem_shape sh = validate_call(q, k, v, out, opt);
  detail::check_kernelized_options(opt, "linear_step");
  if (opt.causal != causal::none || !opt.key_lengths.empty())
    detail::fail("options", "causal/key_lengths", "defaults (linear_step is causal by construction)", "set");
  if (sh.k_len != sh.q_len) detail::fail("k", "extent 'seq'", std::to_string(sh.q_len) + " (one key per query token)", sh.k_len);
  if (state.batch != sh.batch) detail::fail("state", "batch", sh.batch, state.batch);
  if (state.heads != sh.q_heads) detail::fail("state", "heads", sh.q_heads, state.heads);
  if (state.value_dim != sh.value_dim) detail::fail("state", "value_dim", sh.value_dim, state.value_dim);
  if (state.feature_dim != feature::output_dim(pol.phi, sh.head_dim))
    detail::fail("state", "feature_dim", feature::output_dim(pol.phi, sh.head_dim), state.feature_dim);
  detail::check_linear_fields(pol, sh.q_heads, sh.head_dim, false, true);  // decay size, eps, the map's own check (a stream)
  return sh;
}

/// A checked linear_step, in workspace `ws`.
template <class Arch, class F>
void linear_step_run(const linear<F>& pol, const problem_shape& sh, const tensor_view<const float>& q,
                     const tensor_view<const float>& k, const tensor_view<const float>& v,
                     const tensor_view<float>& out, linear_state& state, const options& opt, workspace& ws) {
  const double tau = resolved_scale(opt, sh.head_dim);
  const index_t M = state.feature_dim, Dv = sh.value_dim, T = sh.q_len;
  const index_t pos0 = state.tokens;
  const int threads = resolve_num_threads(opt.num_threads);
  ws.reserve_slots(threads);
  parallel_for(sh.batch * sh.q_heads, threads, [&](index_t bh, int slot) {
    const index_t b = bh / sh.q_heads, h = bh % sh.q_heads, g = h / sh.group();
    const float lambda = pol.decay.empty() ? 1.0f : pol.decay[static_cast<std::size_t>(h)];
    // Positions as in a self-attention call over the whole stream (Δ = 0).
    const batch_keys bk{pos0 + T, 0};
    const detail::linear_feature<Arch, F> phi{pol.phi, sh.head_dim, pos0 + T, tau};
    auto& rows = ws.slot(slot).get<detail::feature_pair_rows>();
    auto &fq = rows.fq, &fk = rows.fk;
    fq.resize(static_cast<std::size_t>(M));
    fk.resize(static_cast<std::size_t>(M));
    float* S = state.s_of(b, h);
    float* z = state.z_of(b, h);
    for (index_t t = 0; t < T; ++t) {
      phi.map(k.row(b, g, t), detail::token_ref{b, g, pos0 + t, false, bk}, fk.data());
      const float* vr = v.row(b, g, t);
      for (index_t m = 0; m < M; ++m) {
        float* sm = S + m * Dv;
        if (lambda != 1.0f)
          for (index_t d = 0; d < Dv; ++d) sm[d] *= lambda;
        simd::axpy<Arch>(fk[static_cast<std::size_t>(m)], vr, sm, Dv);
        z[m] = lambda * z[m] + fk[static_cast<std::size_t>(m)];
      }
      phi.map(q.row(b, h, t), detail::token_ref{b, h, pos0 + t, true, bk}, fq.data());
      float* o = out.row(b, h, t);
      for (index_t d = 0; d < Dv; ++d) o[d] = 0.0f;
      for (index_t m = 0; m < M; ++m) simd::axpy<Arch>(fq[static_cast<std::size_t>(m)], S + m * Dv, o, Dv);
      if (pol.normalize) {
        const float inv = static_cast<float>(1.0 / (simd::dot<Arch>(fq.data(), z, M) + pol.eps));
        for (index_t d = 0; d < Dv; ++d) o[d] *= inv;
      }
    }
  });
  state.tokens += T;
}
}  // namespace detail

/// Feeds T new tokens: q [B,Hq,T,D], k [B,Hkv,T,D], v [B,Hkv,T,Dv] → out [B,Hq,T,Dv].
/// Token t of this call has position state.tokens + t. options: scale and threads
/// are used; masks are meaningless here (the recurrence is causal by construction).
template <class Arch = simd::default_arch, class F>
void linear_step(const linear<F>& pol, tensor_view<const float> q, tensor_view<const float> k,
                 tensor_view<const float> v, tensor_view<float> out, linear_state& state, const options& opt = {}) {
  const problem_shape sh = detail::check_linear_step(pol, q, k, v, out, state, opt);
  workspace_lease lease(opt.workspace);
  detail::linear_step_run<Arch>(pol, sh, q, k, v, out, state, opt, lease.get());
}

/// The same with 16-bit tensors, under attention()'s rule (core/dtype_rules.hpp):
/// the token rows are widened to float, the state stays float, and a 16-bit out is
/// rounded once at the end.
template <class Arch = simd::default_arch, class F, class Q, class K, class V, class O>
  requires detail::io_dtypes<Q, K, V, O> && (!detail::fp32_dtypes<Q, K, V, O>)
void linear_step(const linear<F>& pol, tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<O> out,
                 linear_state& state, const options& opt = {}) {
  const problem_shape sh = detail::check_linear_step(pol, q, k, v, out, state, opt);
  workspace_lease lease(opt.workspace);
  workspace& ws = lease.get();
  auto& staged = ws.shared().get<detail::staging_buffers<4>>();
  const tensor_view<float> of = detail::float_out(out, staged.slot[3]);
  detail::linear_step_run<Arch>(pol, sh, detail::float_input(q, staged.slot[0]), detail::float_input(k, staged.slot[1]),
                                detail::float_input(v, staged.slot[2]), of, state, opt, ws);
  detail::finish_out(of, out);
}

/// Any other element types: a one-line compile error stating the rule.
template <class Arch = simd::default_arch, class F, class Q, class K, class V, class O>
  requires(!detail::io_dtypes<Q, K, V, O>)
void linear_step(const linear<F>&, tensor_view<Q>, tensor_view<K>, tensor_view<V>, tensor_view<O>, linear_state&,
                 const options& = {}) {
  detail::reject_io_dtypes<Q, K, V, O>();
}

}  // namespace attnkit
