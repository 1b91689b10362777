#pragma once
/// \file
/// Context-parallel ("ring") softmax attention across MPI processes: each rank holds
/// a block of one sequence's Q, K and V (batch and heads complete on every rank);
/// the K/V blocks travel around the ring while every rank attends its queries to the
/// block in hand, and the partial results are merged by LSE in a fixed order.
/// With ring_backward.hpp (the gradients, included at the end), the only attnkit
/// headers that include <mpi.h>; not part of attnkit/attnkit.hpp.
/// CMake: link attnkit::mpi. Semantics, layouts and the scaling model:
/// docs/distributed.md.
///
/// \code
///   // every rank: its own rows of q [B,Hq,nq,D], k/v [B,Hkv,nk,D|Dv], out [B,Hq,nq,Dv]
///   attnkit::options opt;
///   opt.causal = attnkit::causal::bottom_right;
///   attnkit::distributed::ring_attention(attnkit::softmax{}, q, k, v, out, opt, MPI_COMM_WORLD,
///                                        {.layout = attnkit::distributed::layout::zigzag});
/// \endcode
#include <mpi.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <new>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "../core/dtype.hpp"
#include "../core/dtype_rules.hpp"
#include "../core/validate.hpp"
#include "../parallel/workspace.hpp"
#include "ring_plan.hpp"

namespace attnkit::distributed {

/// Where one rank's time went in a ring_attention call (seconds, MPI_Wtime).
struct ring_stats {
  double total_s = 0;    ///< the whole call
  double check_s = 0;    ///< the collective checks, including waiting for the other ranks to arrive
  double compute_s = 0;  ///< local attention() calls and their merges
  double wait_s = 0;     ///< blocked in MPI_Waitall for the next block (communication not hidden)
  double finish_s = 0;   ///< final merge, sinks, writing out/lse
  int steps = 0;         ///< ring steps (= number of ranks)
  int attention_calls = 0;  ///< local calls made (pairs no row can see are skipped)
  std::int64_t bytes_sent = 0;
};

/// Ring settings. All ranks must pass the same layout and tag (checked).
struct ring_options {
  distributed::layout layout = distributed::layout::contiguous;
  /// Tag of the point-to-point K/V messages on the communicator.
  int tag = 7411;
  /// Optional: this rank's timings.
  ring_stats* stats = nullptr;
};

namespace detail {
using attnkit::detail::axis_name;
using attnkit::detail::byte_range;
using attnkit::detail::check_unit_dim_stride;
using attnkit::detail::check_view_basics;
using attnkit::detail::fail;
using attnkit::detail::overlaps;

/// Fields every rank reports in the one collective check (MPI_Allgather of a
/// fixed-size record). All but the first three must agree across ranks.
enum rec_field : int {
  f_valid, f_nq, f_nk,  // per rank
  f_batch, f_q_heads, f_kv_heads, f_dim, f_value_dim, f_kv_type, f_layout, f_tag, f_causal, f_window_left,
  f_window_right, f_masked_rows, f_scale, f_softcap, f_alibi, f_sinks, f_mask, f_bias, f_exp,
  f_mask_keys, f_bias_keys,  // per rank, checked against the total key count
  f_count
};

struct field_info {
  const char* argument;
  const char* what;
};

inline field_info info_of(int f) {
  switch (f) {
    case f_batch: return {"q", "extent 'batch'"};
    case f_q_heads: return {"q", "extent 'heads'"};
    case f_kv_heads: return {"k", "extent 'heads'"};
    case f_dim: return {"q", "extent 'dim'"};
    case f_value_dim: return {"v", "extent 'dim'"};
    case f_kv_type: return {"k", "element type (0 float, 1 bfloat16, 2 float16)"};
    case f_layout: return {"ring_options.layout", ""};
    case f_tag: return {"ring_options.tag", ""};
    case f_causal: return {"options.causal", ""};
    case f_window_left: return {"options.window", "left"};
    case f_window_right: return {"options.window", "right"};
    case f_masked_rows: return {"options.masked_rows", ""};
    case f_scale: return {"options.scale", ""};
    case f_softcap: return {"options.softcap", ""};
    case f_alibi: return {"options.alibi_slopes", "values"};
    case f_sinks: return {"options.sinks", "values"};
    case f_mask: return {"options.mask", "present"};
    case f_bias: return {"options.bias", "present"};
    default: return {"policy", "exp mode"};
  }
}

/// A record field as the error message shows it.
inline std::string shown(int field, std::int64_t x) {
  if (field == f_scale) {
    const double d = std::bit_cast<double>(x);
    return std::isnan(d) ? std::string("unset") : std::to_string(d);
  }
  if (field == f_softcap) return std::to_string(std::bit_cast<float>(static_cast<std::int32_t>(x)));
  if (field == f_alibi || field == f_sinks) {
    char hex[24];
    std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(x));
    return std::string("values with hash ") + hex;
  }
  return std::to_string(x);
}

struct rank_record {
  std::int64_t f[f_count] = {};
  char argument[64] = {};
  char message[448] = {};
};

/// FNV-1a over the floats' bits (and the count): equal spans give equal hashes.
inline std::int64_t hash_floats(std::span<const float> x) noexcept {
  std::uint64_t h = 1469598103934665603ull ^ x.size();
  for (float e : x) {
    h ^= std::bit_cast<std::uint32_t>(e);
    h *= 1099511628211ull;
  }
  return static_cast<std::int64_t>(h);
}

inline void copy_text(char* dst, std::size_t cap, const std::string& s) {
  const std::size_t n = std::min(s.size(), cap - 1);
  std::memcpy(dst, s.data(), n);
  dst[n] = '\0';
}

template <class KV>
constexpr std::int64_t kv_code() noexcept {
  return std::is_same_v<KV, float> ? 0 : std::is_same_v<KV, bfloat16> ? 1 : 2;
}

/// Elements of one packed K/V block; false on overflow.
inline bool block_elements(index_t B, index_t H, index_t n, index_t D, index_t Dv, std::size_t elem, index_t& out) {
  constexpr index_t lim = std::numeric_limits<index_t>::max() / 16;
  index_t x = D + Dv;
  for (index_t f : {B, H, n}) {
    if (f != 0 && x > lim / f) return false;
    x *= f;
  }
  if (x > lim / static_cast<index_t>(elem)) return false;
  out = x;
  return true;
}

/// Mask / bias of a ring call: [B|1, Hq|1, nq|1, total keys], columns in global key order.
template <class T, class O>
void check_ring_broadcast(const char* name, const tensor_view<T>& m, const problem_shape& s,
                          const tensor_view<O>& out) {
  if (m.data == nullptr) return;
  check_view_basics(name, m);
  const index_t want[3] = {s.batch, s.q_heads, s.q_len};
  for (int a = 0; a < 3; ++a)
    if (m.extent[a] != want[a] && m.extent[a] != 1)
      fail(name, std::string("extent '") + axis_name(a) + "'", std::to_string(want[a]) + " or 1 (broadcast)", m.extent[a]);
  check_unit_dim_stride(name, m);
  if (overlaps(byte_range(out), byte_range(m))) fail("out", "memory", std::string("no overlap with ") + name, "overlap");
}

/// This rank's record: its shapes and options, and whether its own arguments pass
/// every check that needs no other rank.
/// `extra()` runs the caller's own checks (the backward's) after the common ones.
template <class KV, class O, class Extra>
rank_record local_record(const softmax& pol, const tensor_view<const float>& q, const tensor_view<const KV>& k,
                         const tensor_view<const KV>& v, const tensor_view<O>& out, const options& opt,
                         const ring_options& ring, Extra&& extra) {
  rank_record rec;
  auto& f = rec.f;
  f[f_nq] = q.seq();
  f[f_nk] = k.seq();
  f[f_batch] = q.batch();
  f[f_q_heads] = q.heads();
  f[f_kv_heads] = k.heads();
  f[f_dim] = q.dim();
  f[f_value_dim] = v.dim();
  f[f_kv_type] = kv_code<KV>();
  f[f_layout] = static_cast<std::int64_t>(ring.layout);
  f[f_tag] = ring.tag;
  f[f_causal] = static_cast<std::int64_t>(opt.causal);
  f[f_window_left] = opt.window.left;
  f[f_window_right] = opt.window.right;
  f[f_masked_rows] = static_cast<std::int64_t>(opt.masked_rows);
  f[f_scale] = std::bit_cast<std::int64_t>(opt.scale ? *opt.scale : std::numeric_limits<double>::quiet_NaN());
  f[f_softcap] = std::bit_cast<std::int32_t>(opt.softcap);
  f[f_alibi] = hash_floats(opt.alibi_slopes);
  f[f_sinks] = hash_floats(opt.sinks);
  f[f_mask] = opt.mask.data != nullptr;
  f[f_bias] = opt.bias.data != nullptr;
  f[f_exp] = static_cast<std::int64_t>(pol.exp);
  f[f_mask_keys] = opt.mask.data ? opt.mask.extent[dim_axis] : -1;
  f[f_bias_keys] = opt.bias.data ? opt.bias.extent[dim_axis] : -1;
  try {
    if (!opt.key_lengths.empty())
      fail("options.key_lengths", "", "empty (ring_attention: mask padded keys with options.mask)", opt.key_lengths.size());
    if (opt.positions) fail("options.positions", "", "unset (ring_attention sets it for every block pair)", "positions");
    // Dropout draws its mask from a call's local (row, key) indices: every block pair
    // would reuse the same draws. Refused until the mask can take global positions.
    if (opt.dropout.active())
      fail("options.dropout", "p", "0 (ring attention does not support dropout)", opt.dropout.p);
    if (ring.layout != layout::contiguous && ring.layout != layout::zigzag)
      fail("ring_options.layout", "", "contiguous or zigzag", static_cast<int>(ring.layout));
    if (ring.tag < 0 || ring.tag > 32767) fail("ring_options.tag", "", "in [0, 32767] (MPI_TAG_UB is at least 32767)", ring.tag);
    options probe = opt;  // mask/bias span all keys of the sequence: checked below
    probe.mask = {};
    probe.bias = {};
    const problem_shape s = validate_call(q, k, v, out, probe);
    check_ring_broadcast("options.mask", opt.mask, s, out);
    check_ring_broadcast("options.bias", opt.bias, s, out);
    index_t elems = 0;
    if (!block_elements(s.batch, s.kv_heads, s.k_len, s.head_dim, s.value_dim, sizeof(KV), elems))
      fail("k", "size of the packed K/V block", "to fit in memory", "an overflowing size");
    extra();
    rec.f[f_valid] = 1;
  } catch (const invalid_argument_error& e) {
    copy_text(rec.argument, sizeof rec.argument, e.argument());
    copy_text(rec.message, sizeof rec.message, e.what());
  } catch (const std::exception& e) {
    copy_text(rec.argument, sizeof rec.argument, "(local check)");
    copy_text(rec.message, sizeof rec.message, std::string("unexpected error: ") + e.what());
  }
  return rec;
}

/// Evaluates the gathered records identically on every rank: throws the same
/// invalid_argument_error everywhere, or returns the plan.
inline ring_plan global_check(const std::vector<rank_record>& recs, const char* function = "ring_attention") {
  const int P = static_cast<int>(recs.size());
  const std::string who = std::string("attnkit: ") + function + ": ";
  for (int r = 0; r < P; ++r)
    if (recs[static_cast<std::size_t>(r)].f[f_valid] != 1)
      throw invalid_argument_error(recs[static_cast<std::size_t>(r)].argument,
                                   who + "rank " + std::to_string(r) + " of " + std::to_string(P) +
                                       " rejected its arguments: " + recs[static_cast<std::size_t>(r)].message);
  const auto& r0 = recs[0].f;
  for (int field = f_batch; field < f_mask_keys; ++field)
    for (int r = 1; r < P; ++r)
      if (recs[static_cast<std::size_t>(r)].f[field] != r0[field]) {
        const field_info fi = info_of(field);
        fail(fi.argument, std::string(fi.what) + (*fi.what ? ", " : "") + "across the ranks of the ring",
             shown(field, r0[field]) + " on every rank (as on rank 0)",
             shown(field, recs[static_cast<std::size_t>(r)].f[field]) + " on rank " + std::to_string(r));
      }
  // Totals: positions of the whole sequence must stay far inside int64.
  constexpr index_t cap = max_position_delta / 4;
  std::vector<index_t> nq(static_cast<std::size_t>(P)), nk(static_cast<std::size_t>(P));
  index_t Nq = 0, Nk = 0;
  for (int r = 0; r < P; ++r) {
    nq[static_cast<std::size_t>(r)] = recs[static_cast<std::size_t>(r)].f[f_nq];
    nk[static_cast<std::size_t>(r)] = recs[static_cast<std::size_t>(r)].f[f_nk];
    if (nq[static_cast<std::size_t>(r)] > cap - Nq) fail("q", "extent 'seq' summed over ranks", "<= " + std::to_string(cap), "more");
    if (nk[static_cast<std::size_t>(r)] > cap - Nk) fail("k", "extent 'seq' summed over ranks", "<= " + std::to_string(cap), "more");
    Nq += nq[static_cast<std::size_t>(r)];
    Nk += nk[static_cast<std::size_t>(r)];
  }
  const auto lay = static_cast<layout>(r0[f_layout]);
  if (lay == layout::zigzag)
    for (int r = 0; r < P; ++r) {
      const index_t wq = ring_plan::zigzag_local(Nq, P, r), wk = ring_plan::zigzag_local(Nk, P, r);
      if (nq[static_cast<std::size_t>(r)] != wq)
        fail("q", "extent 'seq' on rank " + std::to_string(r),
             std::to_string(wq) + " (its zig-zag share of " + std::to_string(Nq) + " positions)", nq[static_cast<std::size_t>(r)]);
      if (nk[static_cast<std::size_t>(r)] != wk)
        fail("k", "extent 'seq' on rank " + std::to_string(r),
             std::to_string(wk) + " (its zig-zag share of " + std::to_string(Nk) + " keys)", nk[static_cast<std::size_t>(r)]);
    }
  for (int r = 0; r < P; ++r) {
    const auto& f = recs[static_cast<std::size_t>(r)].f;
    if (f[f_mask_keys] >= 0 && f[f_mask_keys] != Nk)
      fail("options.mask", "extent 'dim' (keys) on rank " + std::to_string(r),
           std::to_string(Nk) + " (all keys of the sequence)", f[f_mask_keys]);
    if (f[f_bias_keys] >= 0 && f[f_bias_keys] != Nk)
      fail("options.bias", "extent 'dim' (keys) on rank " + std::to_string(r),
           std::to_string(Nk) + " (all keys of the sequence)", f[f_bias_keys]);
  }
  const auto c = static_cast<causal>(r0[f_causal]);
  const bool window = r0[f_window_left] >= 0 || r0[f_window_right] >= 0;
  if (c == causal::top_left && Nq != Nk && (window || r0[f_alibi] != hash_floats({})))
    fail("options.causal", "with a window or ALiBi and total q.seq != k.seq",
         "bottom_right or equal totals (top-left causal and the window/ALiBi would need two different offsets)",
         "top_left with " + std::to_string(Nq) + " queries and " + std::to_string(Nk) + " keys");
  return ring_plan::make(lay, nq, nk, c);
}

/// This rank's place in `comm` (size, rank), after checking MPI can be used.
struct ring_place {
  int size = 0, rank = 0;
};
inline ring_place ring_position(MPI_Comm comm) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) fail("comm", "MPI state", "MPI initialised and not finalised", "not usable");
  if (comm == MPI_COMM_NULL) fail("comm", "", "a communicator", "MPI_COMM_NULL");
  int inter = 0;
  MPI_Comm_test_inter(comm, &inter);
  if (inter) fail("comm", "", "an intra-communicator", "an inter-communicator");
  ring_place p;
  MPI_Comm_size(comm, &p.size);
  MPI_Comm_rank(comm, &p.rank);
  return p;
}

/// Every rank's record, in rank order (one MPI_Allgather).
inline std::vector<rank_record> gather_records(const rank_record& mine, int P, MPI_Comm comm) {
  std::vector<rank_record> recs(static_cast<std::size_t>(P));
  constexpr int rec_bytes = static_cast<int>(sizeof(rank_record));
  MPI_Allgather(&mine, rec_bytes, MPI_BYTE, recs.data(), rec_bytes, MPI_BYTE, comm);
  return recs;
}

/// A ring forward's buffers: the K/V blocks in hand and in flight, the accumulator.
template <class KV>
struct ring_buffers {
  std::vector<KV> kv[2];
  std::vector<float> acc;
  std::size_t bytes() const noexcept {
    return (kv[0].capacity() + kv[1].capacity()) * sizeof(KV) + acc.capacity() * sizeof(float);
  }
};

/// Posts the non-blocking transfer of `bytes` in pieces of at most 1 GiB (MPI counts are int).
inline void post(bool send, void* p, std::int64_t bytes, int peer, int tag, MPI_Comm comm,
                 std::vector<MPI_Request>& reqs) {
  constexpr std::int64_t piece = std::int64_t{1} << 30;
  auto* c = static_cast<char*>(p);
  std::int64_t off = 0;
  do {
    const int n = static_cast<int>(std::min(piece, bytes - off));
    reqs.emplace_back();
    if (send)
      MPI_Isend(c + off, n, MPI_BYTE, peer, tag, comm, &reqs.back());
    else
      MPI_Irecv(c + off, n, MPI_BYTE, peer, tag, comm, &reqs.back());
    off += n;
  } while (off < bytes);
}

/// Copies a (strided) K or V view into a contiguous [B, H, n, D] buffer.
template <class KV>
void pack_rows(const tensor_view<const KV>& t, KV* dst) {
  for (index_t b = 0; b < t.batch(); ++b)
    for (index_t h = 0; h < t.heads(); ++h)
      for (index_t i = 0; i < t.seq(); ++i, dst += t.dim()) std::memcpy(dst, t.row(b, h, i), static_cast<std::size_t>(t.dim()) * sizeof(KV));
}

template <class Arch, class KV>
void ring_attention_impl(const softmax& pol, const tensor_view<const float>& q, const tensor_view<const KV>& k,
                         const tensor_view<const KV>& v, const tensor_view<float>& out, const options& opt,
                         MPI_Comm comm, const ring_options& ring) {
  const double t0 = MPI_Wtime();
  const ring_place place = ring_position(comm);
  const int P = place.size, me = place.rank;
  // One collective check before any send: every rank learns every rank's record.
  const auto recs = gather_records(local_record(pol, q, k, v, out, opt, ring, [] {}), P, comm);
  const ring_plan plan = global_check(recs);

  // Buffers; a rank that cannot allocate stops every rank (no one blocks in a receive).
  const index_t B = q.batch(), Hq = q.heads(), Hkv = k.heads(), D = q.dim(), Dv = v.dim();
  index_t max_elems = 0;
  for (int r = 0; r < P; ++r) {
    index_t e = 0;
    block_elements(B, Hkv, recs[static_cast<std::size_t>(r)].f[f_nk], D, Dv, sizeof(KV), e);  // checked by rank r
    max_elems = std::max(max_elems, e);
  }
  // In a workspace leased from the pool (not options.workspace, which the local calls
  // lease), so they are reused from call to call (grown, never shrunk): first-touch
  // page faults of fresh buffers would otherwise cost as much as a small call.
  workspace_lease lease(nullptr);
  auto& buffers = lease.get().shared().get<ring_buffers<KV>>();
  auto& buf = buffers.kv;
  auto& acc_storage = buffers.acc;
  std::optional<ring_accumulator> acc;
  int ok = 1, all_ok = 0;
  try {
    // Own block first, then every other in turn.
    if (buf[0].size() < static_cast<std::size_t>(max_elems)) buf[0].resize(static_cast<std::size_t>(max_elems));
    if (P > 1 && buf[1].size() < static_cast<std::size_t>(max_elems)) buf[1].resize(static_cast<std::size_t>(max_elems));
    acc.emplace(B, Hq, Dv, plan.q[static_cast<std::size_t>(me)], acc_storage);
  } catch (const std::bad_alloc&) {
    ok = 0;
  }
  MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, comm);
  if (!all_ok)
    throw std::runtime_error("attnkit: ring_attention: a rank could not allocate its ring buffers (" +
                             std::to_string(max_elems * static_cast<index_t>(sizeof(KV))) + " bytes per K/V block)");
  ring_stats st;
  st.check_s = MPI_Wtime() - t0;
  st.steps = P;

  auto block_bytes = [&](int r) {
    return B * Hkv * recs[static_cast<std::size_t>(r)].f[f_nk] * (D + Dv) * static_cast<index_t>(sizeof(KV));
  };
  pack_rows(k, buf[0].data());
  pack_rows(v, buf[0].data() + B * Hkv * k.seq() * D);
  const int left = (me + P - 1) % P, right = (me + 1) % P;
  std::vector<MPI_Request> reqs;
  for (int s = 0; s < P; ++s) {
    const int src = (me + s) % P, cur = s % 2;
    reqs.clear();
    if (s + 1 < P) {  // the next block comes from the right while this one goes left
      post(false, buf[1 - cur].data(), block_bytes((src + 1) % P), right, ring.tag, comm, reqs);
      post(true, buf[cur].data(), block_bytes(src), left, ring.tag, comm, reqs);
      st.bytes_sent += block_bytes(src);
    }
    const double c0 = MPI_Wtime();
    const index_t n = recs[static_cast<std::size_t>(src)].f[f_nk];
    const KV* kb = buf[cur].data();
    st.attention_calls += run_block<Arch>(
        pol, plan, me, src, q, tensor_view<const KV>(bhsd(kb, B, Hkv, n, D)),
        tensor_view<const KV>(bhsd(kb + B * Hkv * n * D, B, Hkv, n, Dv)), opt, *acc, [&] {
          int done = 0;  // lets the transfer progress between local calls
          if (!reqs.empty()) MPI_Testall(static_cast<int>(reqs.size()), reqs.data(), &done, MPI_STATUSES_IGNORE);
        });
    const double c1 = MPI_Wtime();
    if (!reqs.empty()) MPI_Waitall(static_cast<int>(reqs.size()), reqs.data(), MPI_STATUSES_IGNORE);
    st.compute_s += c1 - c0;
    st.wait_s += MPI_Wtime() - c1;
  }
  const double f0 = MPI_Wtime();
  acc->finish(opt, out, opt.lse, q.seq());
  st.finish_s = MPI_Wtime() - f0;
  st.total_s = MPI_Wtime() - t0;
  if (ring.stats) *ring.stats = st;
}

}  // namespace detail

/// Ring attention over the ranks of `comm` (collective: every rank calls it with its
/// own block). q [B,Hq,nq,D], k [B,Hkv,nk,D], v [B,Hkv,nk,Dv], out [B,Hq,nq,Dv] hold
/// this rank's positions under ring.layout; B, heads, dims, options and the policy
/// must be the same on every rank. The result equals attention() on the whole
/// sequence within the kernel's tolerance and is bitwise reproducible. options:
/// causal (both alignments, on the whole sequence), window, ALiBi, softcap, sinks,
/// masked_rows, scale, num_threads (per rank), lse (this rank's rows); mask and bias
/// span all keys of the sequence ([B|1, Hq|1, nq|1, total keys], global key order);
/// key_lengths and positions are rejected. Bad or mismatched arguments on any rank
/// make every rank throw the same invalid_argument_error before any message is sent.
template <class Arch = simd::default_arch>
void ring_attention(const softmax& pol, tensor_view<const float> q, tensor_view<const float> k,
                    tensor_view<const float> v, tensor_view<float> out, const options& opt, MPI_Comm comm,
                    const ring_options& ring = {}) {
  detail::ring_attention_impl<Arch>(pol, q, k, v, out, opt, comm, ring);
}

/// K/V stored as bfloat16 (sent as bfloat16: half the bytes on the wire).
template <class Arch = simd::default_arch>
void ring_attention(const softmax& pol, tensor_view<const float> q, tensor_view<const bfloat16> k,
                    tensor_view<const bfloat16> v, tensor_view<float> out, const options& opt, MPI_Comm comm,
                    const ring_options& ring = {}) {
  detail::ring_attention_impl<Arch>(pol, q, k, v, out, opt, comm, ring);
}

/// K/V stored as IEEE float16.
template <class Arch = simd::default_arch>
void ring_attention(const softmax& pol, tensor_view<const float> q, tensor_view<const float16> k,
                    tensor_view<const float16> v, tensor_view<float> out, const options& opt, MPI_Comm comm,
                    const ring_options& ring = {}) {
  detail::ring_attention_impl<Arch>(pol, q, k, v, out, opt, comm, ring);
}

/// Any other element types: a one-line compile error stating attention()'s rule.
template <class Arch = simd::default_arch, class Q, class K, class V, class O>
  requires(!attnkit::detail::attention_dtypes<Q, K, V, O>)
void ring_attention(const softmax&, tensor_view<Q>, tensor_view<K>, tensor_view<V>, tensor_view<O>, const options&,
                    MPI_Comm, const ring_options& = {}) {
  attnkit::detail::reject_attention_dtypes<Q, K, V, O>();
}

}  // namespace attnkit::distributed

// The backward pass over the same ring (its header includes this one first).
#include "ring_backward.hpp"
