#pragma once
/// \file
/// The backward pass of ring attention (distributed::ring_attention_backward): the
/// gradients of a ring_attention call, computed over the same ring. Each K/V block
/// travels around the ring as in the forward; its dK/dV accumulator follows it one
/// step behind, every rank adding its queries' contribution, and after the last step
/// it takes one more hop home. Every local computation is attention_backward() on a
/// (query run, key run) pair with the pair's global positions and the *global* LSE
/// and output, which makes each pair's contribution exact on its own: with
/// P = exp(S − LSE) and D_i = rowsum(dO ∘ O) taken from the whole row, dQ, dK and dV
/// are sums over key blocks (FlashAttention-2's split, applied across ranks).
/// Included by ring.hpp (and including it), so either header gives both passes.
#include "ring.hpp"

#include "../kernel/backward.hpp"
#include "../parallel/workspace.hpp"

namespace attnkit::distributed {
namespace detail {

/// The backward's own local checks, run inside local_record's error capture:
/// everything validate_backward_call checks (mask and bias span all keys and are
/// checked by local_record), and the outputs the ring cannot produce.
template <class KV>
void check_ring_backward(const tensor_view<const float>& q, const tensor_view<const KV>& k,
                         const tensor_view<const KV>& v, const tensor_view<const float>& out, const float* lse,
                         const tensor_view<const float>& dout, const tensor_view<float>& dq,
                         const tensor_view<float>& dk, const tensor_view<float>& dv, const options& opt,
                         const backward_options& bo) {
  // Per-head sums over every row of the sequence (d sinks, a broadcast d bias) would
  // need a reduction across ranks, and the regulariser needs each row's entropy over
  // all keys in one call: not built (docs/distributed.md).
  if (bo.dsinks) fail("backward_options.dsinks", "", "nullptr (ring_attention_backward computes no d sinks)", "a pointer");
  if (bo.dbias.data) fail("backward_options.dbias", "", "no view (ring_attention_backward computes no d bias)", "a view");
  if (bo.reg.active())
    fail("backward_options.reg", "kind", "none (ring_attention_backward has no fused regulariser)", "a regulariser");
  options probe = opt;
  probe.mask = {};
  probe.bias = {};
  const backward_policy_facts facts{true, false, "softmax"};
  validate_backward_call(q, k, v, out, lse, dout, dq, dk, dv, probe, bo, facts, true);
  for (const auto& g : {byte_range(dq), byte_range(dk), byte_range(dv)})
    if ((opt.mask.data && overlaps(g, byte_range(opt.mask))) || (opt.bias.data && overlaps(g, byte_range(opt.bias))))
      fail("dq, dk, dv", "memory", "no overlap with options.mask or options.bias", "overlap");
}

/// One block's gradients as they travel: dK [B, Hkv, n, D] then dV [B, Hkv, n, Dv].
struct grad_block {
  float* data;
  index_t B, H, n, D, Dv;
  tensor_view<float> dk() const noexcept { return bhsd(data, B, H, n, D); }
  tensor_view<float> dv() const noexcept { return bhsd(data + B * H * n * D, B, H, n, Dv); }
  index_t floats() const noexcept { return B * H * n * (D + Dv); }
};

/// A ring backward's buffers: the K/V blocks in hand and in flight, the gradient
/// accumulators of those blocks, and this rank's part of the block in hand.
template <class KV>
struct ring_grad_buffers {
  std::vector<KV> kv[2];
  std::vector<float> grads[2], part;
  std::size_t bytes() const noexcept {
    return (kv[0].capacity() + kv[1].capacity()) * sizeof(KV) +
           (grads[0].capacity() + grads[1].capacity() + part.capacity()) * sizeof(float);
  }
};

/// The rows of `lse` ([B, H, local rows]) that belong to query run `c`, as the
/// contiguous [B, H, c.length] array attention_backward takes.
inline std::vector<float> run_lse(const float* lse, index_t B, index_t H, index_t local_rows, const chunk& c) {
  std::vector<float> r(static_cast<std::size_t>(B * H * c.length));
  for (index_t bh = 0; bh < B * H; ++bh)
    std::copy_n(lse + bh * local_rows + c.local, c.length, r.data() + bh * c.length);
  return r;
}

/// Adds the contribution of this rank's queries to the gradients of the block of
/// rank `src` (keys k, v; gradients g) and to dq: one attention_backward per
/// visible pair, accumulating. Returns the number of calls.
template <class Arch, class KV, class Between>
int backward_block(const softmax& pol, const ring_plan& plan, int mine, int src, const tensor_view<const float>& q,
                   const tensor_view<const KV>& k, const tensor_view<const KV>& v, const tensor_view<const float>& out,
                   const std::vector<std::vector<float>>& lse_runs, const tensor_view<const float>& dout,
                   const tensor_view<float>& dq, const grad_block& g, const options& user, Between&& between) {
  int calls = 0;
  backward_options acc;
  acc.accumulate = true;
  const auto& qruns = plan.q[static_cast<std::size_t>(mine)];
  for (std::size_t a = 0; a < qruns.size(); ++a)
    for (const chunk& kc : plan.k[static_cast<std::size_t>(src)]) {
      if (!plan.visible(user, qruns[a], kc)) continue;
      const chunk& qc = qruns[a];
      const options o = pair_options(user, plan, qc, kc, nullptr);
      attention_backward<Arch>(pol, seq_slice(q, qc.local, qc.length), seq_slice(k, kc.local, kc.length),
                               seq_slice(v, kc.local, kc.length), seq_slice(out, qc.local, qc.length),
                               lse_runs[a].data(), seq_slice(dout, qc.local, qc.length),
                               seq_slice(dq, qc.local, qc.length), seq_slice(g.dk(), kc.local, kc.length),
                               seq_slice(g.dv(), kc.local, kc.length), o, acc);
      ++calls;
      between();
    }
  return calls;
}

/// Writes (or adds, with `accumulate`) a contiguous [B, H, n, D] gradient into a view.
inline void store_gradient(const float* src, const tensor_view<float>& dst, bool accumulate) {
  for (index_t b = 0; b < dst.batch(); ++b)
    for (index_t h = 0; h < dst.heads(); ++h)
      for (index_t i = 0; i < dst.seq(); ++i, src += dst.dim()) {
        float* row = dst.row(b, h, i);
        for (index_t d = 0; d < dst.dim(); ++d) row[d] = accumulate ? row[d] + src[d] : src[d];
      }
}

inline void zero_gradient(const tensor_view<float>& g) {
  for (index_t b = 0; b < g.batch(); ++b)
    for (index_t h = 0; h < g.heads(); ++h)
      for (index_t i = 0; i < g.seq(); ++i) std::fill_n(g.row(b, h, i), g.dim(), 0.0f);
}

inline void wait_all(std::vector<MPI_Request>& reqs) {
  if (!reqs.empty()) MPI_Waitall(static_cast<int>(reqs.size()), reqs.data(), MPI_STATUSES_IGNORE);
  reqs.clear();
}

template <class Arch, class KV>
void ring_backward_impl(const softmax& pol, const tensor_view<const float>& q, const tensor_view<const KV>& k,
                        const tensor_view<const KV>& v, const tensor_view<const float>& out, const float* lse,
                        const tensor_view<const float>& dout, const tensor_view<float>& dq,
                        const tensor_view<float>& dk, const tensor_view<float>& dv, const options& opt, MPI_Comm comm,
                        const ring_options& ring, const backward_options& bo) {
  const double t0 = MPI_Wtime();
  const ring_place place = ring_position(comm);
  const int P = place.size, me = place.rank;
  const auto recs = gather_records(local_record(pol, q, k, v, out, opt, ring,
                                                [&] { check_ring_backward(q, k, v, out, lse, dout, dq, dk, dv, opt, bo); }),
                                   P, comm);
  const ring_plan plan = global_check(recs, "ring_attention_backward");

  const index_t B = q.batch(), Hq = q.heads(), Hkv = k.heads(), D = q.dim(), Dv = v.dim();
  auto rows_of = [&](int r) { return recs[static_cast<std::size_t>(r)].f[f_nk]; };
  index_t max_elems = 0;
  for (int r = 0; r < P; ++r) {
    index_t e = 0;
    block_elements(B, Hkv, rows_of(r), D, Dv, sizeof(float), e);  // checked by rank r
    max_elems = std::max(max_elems, e);
  }
  // The buffers live in a workspace leased from the pool (not options.workspace,
  // which the local calls lease), so repeated calls reuse them: first-touch page
  // faults of ~5 block-sized buffers would otherwise cost a large part of a call.
  workspace_lease lease(nullptr);
  auto& buffers = lease.get().shared().get<ring_grad_buffers<KV>>();
  auto& kv = buffers.kv;
  auto& grads = buffers.grads;
  auto& part = buffers.part;
  std::vector<std::vector<float>> lse_runs;
  int ok = 1, all_ok = 0;
  try {
    const auto grow = [&](auto& buf) {
      if (buf.size() < static_cast<std::size_t>(max_elems)) buf.resize(static_cast<std::size_t>(max_elems));
    };
    for (int i = 0; i < (P > 1 ? 2 : 1); ++i) {
      grow(kv[i]);
      grow(grads[i]);
    }
    if (P > 1) grow(part);
    for (const chunk& c : plan.q[static_cast<std::size_t>(me)]) lse_runs.push_back(run_lse(lse, B, Hq, q.seq(), c));
  } catch (const std::bad_alloc&) {
    ok = 0;
  }
  MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, comm);
  if (!all_ok)
    throw std::runtime_error("attnkit: ring_attention_backward: a rank could not allocate its ring buffers (" +
                             std::to_string(max_elems * static_cast<index_t>(sizeof(float) + sizeof(KV))) +
                             " bytes per block and its gradients)");
  ring_stats st;
  st.check_s = MPI_Wtime() - t0;
  st.steps = P;
  if (!bo.accumulate) zero_gradient(dq);

  const auto kv_bytes = [&](int r) { return B * Hkv * rows_of(r) * (D + Dv) * static_cast<index_t>(sizeof(KV)); };
  const auto grad_of = [&](std::vector<float>& buf, int r) { return grad_block{buf.data(), B, Hkv, rows_of(r), D, Dv}; };
  pack_rows(k, kv[0].data());
  pack_rows(v, kv[0].data() + B * Hkv * k.seq() * D);
  const int left = (me + P - 1) % P, right = (me + 1) % P;
  const int grad_tag = (ring.tag + 1) % 32768;
  std::vector<MPI_Request> kv_reqs, grad_sends, grad_recvs;
  for (int s = 0; s < P; ++s) {
    const int src = (me + s) % P, cur = s % 2;
    if (s + 1 < P) {  // K/V only: they are read-only here, so they move while we compute
      post(false, kv[1 - cur].data(), kv_bytes((src + 1) % P), right, ring.tag, comm, kv_reqs);
      post(true, kv[cur].data(), kv_bytes(src), left, ring.tag, comm, kv_reqs);
      st.bytes_sent += kv_bytes(src);
    }
    // The block's accumulator arrives (from the rank that held the block one step
    // ago) while we compute our part into a buffer of our own; the own block (s = 0)
    // starts from zero. Sum order: the arriving accumulator + our part — fixed.
    const double c0 = MPI_Wtime();
    const grad_block mine = grad_of(s == 0 ? grads[cur] : part, src);
    std::fill_n(mine.data, mine.floats(), 0.0f);
    const index_t n = rows_of(src);
    const KV* kb = kv[cur].data();
    st.attention_calls += backward_block<Arch>(
        pol, plan, me, src, q, tensor_view<const KV>(bhsd(kb, B, Hkv, n, D)),
        tensor_view<const KV>(bhsd(kb + B * Hkv * n * D, B, Hkv, n, Dv)), out, lse_runs, dout, dq, mine, opt, [&] {
          int done = 0;  // lets the transfers progress between local calls
          if (!kv_reqs.empty()) MPI_Testall(static_cast<int>(kv_reqs.size()), kv_reqs.data(), &done, MPI_STATUSES_IGNORE);
        });
    const double c1 = MPI_Wtime();
    wait_all(grad_recvs);
    const double c2 = MPI_Wtime();
    if (s > 0) {
      float* acc = grads[cur].data();
      for (index_t i = 0; i < mine.floats(); ++i) acc[i] += part[static_cast<std::size_t>(i)];
    }
    const double c3 = MPI_Wtime();
    wait_all(grad_sends);  // grads[1 - cur] is free again
    if (P > 1) {  // on to the next rank; at the last step this is the hop home
      const index_t grad_bytes = grad_of(grads[cur], src).floats() * static_cast<index_t>(sizeof(float));
      post(true, grads[cur].data(), grad_bytes, left, grad_tag, comm, grad_sends);
      st.bytes_sent += grad_bytes;
      const int next = (src + 1) % P;
      post(false, grads[1 - cur].data(), grad_of(grads[1 - cur], next).floats() * static_cast<index_t>(sizeof(float)),
           right, grad_tag, comm, grad_recvs);
    }
    wait_all(kv_reqs);
    st.compute_s += (c1 - c0) + (c3 - c2);
    st.wait_s += (c2 - c1) + (MPI_Wtime() - c3);
  }
  // finish_s includes waiting for this rank's gradients to come home (on an
  // unbalanced layout, for the slowest rank to finish).
  const double f0 = MPI_Wtime();
  wait_all(grad_recvs);
  wait_all(grad_sends);
  // After P steps this rank's own block has come home (P > 1: into the buffer the
  // last step received into; one rank: the buffer it computed into).
  const grad_block home = grad_of(grads[P > 1 ? 1 - (P - 1) % 2 : 0], me);
  store_gradient(home.data, dk, bo.accumulate);
  store_gradient(home.data + B * Hkv * k.seq() * D, dv, bo.accumulate);
  st.finish_s = MPI_Wtime() - f0;
  st.total_s = MPI_Wtime() - t0;
  if (ring.stats) *ring.stats = st;
}

}  // namespace detail

/// Gradients of ring_attention(pol, q, k, v, out, opt, comm, ring) for a loss with
/// d loss/d out = `dout` (collective: every rank calls it with its own block).
/// `out` and `lse` ([B, Hq, local rows]) are this rank's results of that forward
/// call; dq, dk, dv have the extents of this rank's q, k, v and receive the whole
/// sequence's gradients for this rank's rows and keys (overwritten, or added with
/// backward_options::accumulate). Equal to attention_backward() on the whole
/// sequence within the backward's tolerance, and bitwise reproducible for a given
/// layout and rank count. Options as for ring_attention; backward_options: only
/// `accumulate` (dsinks, dbias and the regulariser are refused). Bad or mismatched
/// arguments on any rank make every rank throw the same invalid_argument_error
/// before any gradient byte is written. Messages use tags ring.tag (K/V) and
/// (ring.tag + 1) mod 32768 (gradients).
template <class Arch = simd::default_arch>
void ring_attention_backward(const softmax& pol, tensor_view<const float> q, tensor_view<const float> k,
                             tensor_view<const float> v, tensor_view<const float> out, const float* lse,
                             tensor_view<const float> dout, tensor_view<float> dq, tensor_view<float> dk,
                             tensor_view<float> dv, const options& opt, MPI_Comm comm, const ring_options& ring = {},
                             const backward_options& bo = {}) {
  detail::ring_backward_impl<Arch>(pol, q, k, v, out, lse, dout, dq, dk, dv, opt, comm, ring, bo);
}

/// K/V stored as bfloat16 (sent as bfloat16; the gradients are float).
template <class Arch = simd::default_arch>
void ring_attention_backward(const softmax& pol, tensor_view<const float> q, tensor_view<const bfloat16> k,
                             tensor_view<const bfloat16> v, tensor_view<const float> out, const float* lse,
                             tensor_view<const float> dout, tensor_view<float> dq, tensor_view<float> dk,
                             tensor_view<float> dv, const options& opt, MPI_Comm comm, const ring_options& ring = {},
                             const backward_options& bo = {}) {
  detail::ring_backward_impl<Arch>(pol, q, k, v, out, lse, dout, dq, dk, dv, opt, comm, ring, bo);
}

/// K/V stored as IEEE float16.
template <class Arch = simd::default_arch>
void ring_attention_backward(const softmax& pol, tensor_view<const float> q, tensor_view<const float16> k,
                             tensor_view<const float16> v, tensor_view<const float> out, const float* lse,
                             tensor_view<const float> dout, tensor_view<float> dq, tensor_view<float> dk,
                             tensor_view<float> dv, const options& opt, MPI_Comm comm, const ring_options& ring = {},
                             const backward_options& bo = {}) {
  detail::ring_backward_impl<Arch>(pol, q, k, v, out, lse, dout, dq, dk, dv, opt, comm, ring, bo);
}

}  // namespace attnkit::distributed
