#pragma once
/// \file
/// The transport-free half of ring attention (attnkit/distributed/ring.hpp): how a
/// sequence is laid out over the ranks, which global positions each local row and
/// key holds, which (query chunk, key chunk) pairs can see each other, the local
/// attention() call of one pair, and the fixed-order LSE merge of the partials.
/// No MPI here: the same plan runs in one process (tests/test_ring_plan.cpp) and
/// across processes.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "../core/error.hpp"
#include "../core/options.hpp"
#include "../core/tensor_view.hpp"
#include "../kernel/dispatch.hpp"
#include "../kernel/merge.hpp"
#include "../policy/softmax.hpp"

namespace attnkit::distributed {

/// How one sequence is split over the ranks of a ring.
enum class layout : std::uint8_t {
  /// Rank r holds one block of consecutive positions, ranks in rank order; the
  /// blocks may have any lengths (uneven, empty). Simple, but causal attention
  /// loads the last rank with P times the work of the first.
  contiguous,
  /// The sequence is cut into 2P chunks (zigzag_chunk_length); rank r holds chunks
  /// r and 2P−1−r, in that order, one after the other in its local tensor. Every
  /// rank then does the same causal work (ring-flash-attn's zigzag, Megatron CP).
  zigzag,
};

/// A run of consecutive positions held by one rank.
struct chunk {
  index_t local = 0;   ///< first row of the run in the rank's local tensor
  index_t global = 0;  ///< its position in the whole sequence
  index_t length = 0;
};

/// Length of zig-zag chunk c (of 2·ranks) of an n-position sequence: n / (2·ranks),
/// plus one for the first n mod (2·ranks) chunks.
inline index_t zigzag_chunk_length(index_t n, int ranks, int c) noexcept {
  const index_t parts = 2 * static_cast<index_t>(ranks);
  return n / parts + (c < n % parts ? 1 : 0);
}

/// Position of the first element of zig-zag chunk c.
inline index_t zigzag_chunk_offset(index_t n, int ranks, int c) noexcept {
  const index_t parts = 2 * static_cast<index_t>(ranks);
  return c * (n / parts) + std::min<index_t>(c, n % parts);
}

/// The runs of an n-position sequence that `rank` holds under `l`; for `contiguous`
/// an even split (n / ranks, plus one for the first n mod ranks ranks) — any other
/// split of consecutive blocks in rank order is accepted by ring_attention too.
inline std::vector<chunk> chunks_of(layout l, index_t n, int ranks, int rank) {
  if (ranks <= 0 || rank < 0 || rank >= ranks) attnkit::detail::fail("rank", "", "in [0, ranks)", rank);
  if (n < 0) attnkit::detail::fail("n", "", ">= 0", n);
  if (l == layout::contiguous) {
    const index_t P = ranks, r = rank;
    return {chunk{0, r * (n / P) + std::min<index_t>(r, n % P), n / P + (r < n % P ? 1 : 0)}};
  }
  const int c0 = rank, c1 = 2 * ranks - 1 - rank;
  const index_t len0 = zigzag_chunk_length(n, ranks, c0);
  return {chunk{0, zigzag_chunk_offset(n, ranks, c0), len0},
          chunk{len0, zigzag_chunk_offset(n, ranks, c1), zigzag_chunk_length(n, ranks, c1)}};
}

namespace detail {

/// Which global positions every rank's rows and keys hold, from the local lengths of
/// all ranks (gathered), and the position shift that reproduces the whole-sequence
/// alignment in a local call.
struct ring_plan {
  layout lay = layout::contiguous;
  int ranks = 0;
  index_t q_total = 0, k_total = 0;
  std::vector<std::vector<chunk>> q, k;  ///< per rank: its query / key runs
  /// Added to a query run's global position to give options.positions.query, so
  /// that Δ = query − key is the whole call's Δ: Lk − Lq, or 0 for top-left causal.
  index_t shift = 0;

  /// Expected local length of `rank` under zig-zag (for validation).
  static index_t zigzag_local(index_t n, int ranks, int rank) noexcept {
    return zigzag_chunk_length(n, ranks, rank) + zigzag_chunk_length(n, ranks, 2 * ranks - 1 - rank);
  }

  /// Lengths are per rank (already validated: non-negative, zig-zag-consistent).
  static ring_plan make(layout l, std::span<const index_t> nq, std::span<const index_t> nk, causal c) {
    ring_plan p;
    p.lay = l;
    p.ranks = static_cast<int>(nq.size());
    for (index_t x : nq) p.q_total += x;
    for (index_t x : nk) p.k_total += x;
    auto runs = [&](std::span<const index_t> len, index_t total) {
      std::vector<std::vector<chunk>> out(static_cast<std::size_t>(p.ranks));
      index_t at = 0;
      for (int r = 0; r < p.ranks; ++r) {
        if (l == layout::contiguous) {
          out[static_cast<std::size_t>(r)] = {chunk{0, at, len[static_cast<std::size_t>(r)]}};
          at += len[static_cast<std::size_t>(r)];
        } else {
          out[static_cast<std::size_t>(r)] = chunks_of(l, total, p.ranks, r);
        }
      }
      return out;
    };
    p.q = runs(nq, p.q_total);
    p.k = runs(nk, p.k_total);
    p.shift = c == causal::top_left ? 0 : p.k_total - p.q_total;
    return p;
  }

  /// options.positions of the local call between query run qc and key run kc.
  positions pair_positions(const chunk& qc, const chunk& kc) const noexcept { return {qc.global + shift, kc.global}; }

  /// False when no (row, key) pair of the two runs passes causal and window (the
  /// local call would only produce LSE −inf rows): the pair is skipped. Rows see key
  /// j iff i + Δ − left <= j <= i + Δ + right' (right' = min(right, 0) when causal),
  /// an interval sliding with i, so the union over the run is one interval.
  bool visible(const options& opt, const chunk& qc, const chunk& kc) const noexcept {
    if (qc.length == 0 || kc.length == 0) return false;
    const index_t delta = qc.global + shift - kc.global;  // |Δ| <= total lengths: no overflow
    // Lowest visible key of the first row <= last key:  Δ − left <= nk − 1.
    if (opt.window.left >= 0 && delta - (kc.length - 1) > opt.window.left) return false;
    // Highest visible key of the last row >= 0:  nq − 1 + Δ + right' >= 0.
    index_t right = opt.window.right;  // −1 = unbounded
    if (opt.causal != causal::none) right = right < 0 ? 0 : std::min<index_t>(right, 0);
    if (right >= 0 && qc.length - 1 + delta < -right) return false;
    return true;
  }
};

/// A run of rows (seq axis) of a view.
template <class T>
tensor_view<T> seq_slice(tensor_view<T> t, index_t from, index_t len) noexcept {
  t.data += from * t.stride[seq_axis];
  t.extent[seq_axis] = len;
  return t;
}

/// The mask / bias of one pair: rows of the query run (unless broadcast) and the
/// key run's columns (the user's view spans all keys of the sequence, in global
/// order).
template <class T>
tensor_view<T> pair_slice(tensor_view<T> m, const chunk& qc, const chunk& kc) noexcept {
  if (m.data == nullptr) return m;
  if (m.extent[seq_axis] != 1) m = seq_slice(m, qc.local, qc.length);
  m.data += kc.global * m.stride[dim_axis];
  m.extent[dim_axis] = kc.length;
  return m;
}

/// Options of one local call: the user's, with the pair's positions, the pair's
/// mask/bias columns, no sinks (they are added once, at the end), masked rows as 0
/// with LSE −inf (so they merge as nothing), and the partial LSE output.
inline options pair_options(const options& user, const ring_plan& plan, const chunk& qc, const chunk& kc,
                            float* lse) {
  options o = user;
  o.positions = plan.pair_positions(qc, kc);
  o.mask = pair_slice(user.mask, qc, kc);
  o.bias = pair_slice(user.bias, qc, kc);
  o.sinks = {};
  o.masked_rows = masked_rows::zero;
  o.key_lengths = {};
  o.lse = lse;
  return o;
}

/// The running result of one rank's query runs. Partials are merged by source
/// block index, never by arrival: slot 1 folds the blocks of ranks < own rank in
/// ascending order, slot 0 the blocks of ranks >= own rank in ascending order, and
/// finish() merges slot 1 then slot 0 — a fixed order for a given layout and rank
/// count, so the output is bitwise independent of timing. A slot's first partial is
/// written into it directly (merging it into the empty slot would copy it exactly),
/// and an empty slot 1 is not merged at all. The floats live in a
/// caller-owned vector that is reused from call to call (only grown), so repeated
/// calls neither allocate nor page-fault.
class ring_accumulator {
 public:
  ring_accumulator(index_t batch, index_t heads, index_t value_dim, const std::vector<chunk>& runs,
                   std::vector<float>& storage)
      : B_(batch), H_(heads), Dv_(value_dim), runs_(runs) {
    std::size_t at = 0;
    for (const chunk& c : runs_) {
      const auto n = static_cast<std::size_t>(B_ * H_ * c.length);
      for (int s = 0; s < 2; ++s) {
        filled_[s].push_back(0);
        o_at_[s].push_back(at);
        at += n * static_cast<std::size_t>(Dv_);
        lse_at_[s].push_back(at);
        at += n;
      }
      max_rows_ = std::max(max_rows_, c.length);
    }
    partial_at_ = at;
    at += static_cast<std::size_t>(B_ * H_ * max_rows_ * Dv_);
    partial_lse_at_ = at;
    at += static_cast<std::size_t>(B_ * H_ * max_rows_);
    if (storage.size() < at) storage.resize(at);
    data_ = storage.data();
  }

  /// Where the next local call of query run `run` for `slot` writes (out view, LSE):
  /// the accumulator itself while it is empty — merging into an empty accumulator
  /// (LSE −inf) would copy the partial exactly, so the copy is skipped — else the
  /// partial buffer, merged by commit().
  tensor_view<float> target_out(std::size_t run, int slot) noexcept {
    return filled(slot, run) ? bhsd(data_ + partial_at_, B_, H_, runs_[run].length, Dv_) : view(slot, run);
  }
  float* target_lse(std::size_t run, int slot) noexcept {
    return filled(slot, run) ? data_ + partial_lse_at_ : data_ + lse_at_[slot][run];
  }

  /// Takes the partial just written to target_out(run, slot) into the accumulator.
  void commit(std::size_t run, int slot) {
    if (!filled(slot, run)) {
      filled_[slot][run] = 1;
      return;
    }
    const auto acc = view(slot, run);
    float* L = data_ + lse_at_[slot][run];
    merge_partials(acc, L, bhsd(data_ + partial_at_, B_, H_, runs_[run].length, Dv_), data_ + partial_lse_at_, acc, L);
  }

  /// Final merge, sinks (counted once: Σ over keys, plus e^{sink}), the masked-row
  /// policy, then the result into `out` (local rows) and `lse` ([B, H, local rows]).
  void finish(const options& user, tensor_view<float> out, float* lse, index_t local_rows) {
    const float ninf = -std::numeric_limits<float>::infinity();
    const float fill = user.masked_rows == masked_rows::nan ? std::numeric_limits<float>::quiet_NaN() : 0.0f;
    for (std::size_t run = 0; run < runs_.size(); ++run) {
      const auto acc = view(0, run);
      float* L = data_ + lse_at_[0][run];
      if (!filled(0, run)) {  // no visible block: the empty result, output 0 and LSE −inf
        std::fill(data_ + o_at_[0][run], L, 0.0f);
        std::fill_n(L, B_ * H_ * runs_[run].length, ninf);
      }
      if (filled(1, run)) merge_partials(view(1, run), data_ + lse_at_[1][run], acc, L, acc, L);
      const chunk& c = runs_[run];
      for (index_t b = 0; b < B_; ++b)
        for (index_t h = 0; h < H_; ++h)
          for (index_t i = 0; i < c.length; ++i) {
            const index_t r = (b * H_ + h) * c.length + i;
            float scale = 1.0f, total = L[r];
            if (!user.sinks.empty() && !std::isnan(L[r])) {
              const float sink = user.sinks[static_cast<std::size_t>(h)];
              const float m = std::max(L[r], sink);
              total = m + std::log(std::exp(L[r] - m) + std::exp(sink - m));  // logaddexp
              scale = L[r] == ninf ? 0.0f : std::exp(L[r] - total);
            }
            const float* src = acc.row(b, h, i);
            float* dst = out.row(b, h, c.local + i);
            for (index_t d = 0; d < Dv_; ++d)
              dst[d * out.stride[dim_axis]] = L[r] == ninf ? fill : src[d] * scale;
            if (lse) lse[(b * H_ + h) * local_rows + c.local + i] = total;
          }
    }
  }

 private:
  tensor_view<float> view(int slot, std::size_t run) noexcept {
    return bhsd(data_ + o_at_[slot][run], B_, H_, runs_[run].length, Dv_);
  }
  bool filled(int slot, std::size_t run) const noexcept { return filled_[slot][run] != 0; }

  index_t B_, H_, Dv_, max_rows_ = 0;
  std::vector<chunk> runs_;
  std::vector<std::size_t> o_at_[2], lse_at_[2];
  std::vector<char> filled_[2];  ///< per run: a partial has been written to the slot
  std::size_t partial_at_ = 0, partial_lse_at_ = 0;
  float* data_ = nullptr;
};

/// Runs every visible pair of (this rank's query runs) × (the key runs of the block
/// of rank `src`) and merges each partial into the accumulator. `k`/`v` hold that
/// block's keys ([B, Hkv, block rows, D]); `mine` is this rank. `between` is called
/// after each local call (the MPI ring uses it to let transfers progress).
template <class Arch, class KV, class Between>
int run_block(const softmax& pol, const ring_plan& plan, int mine, int src, const tensor_view<const float>& q,
              const tensor_view<const KV>& k, const tensor_view<const KV>& v, const options& user,
              ring_accumulator& acc, Between&& between) {
  int calls = 0;
  const auto& qruns = plan.q[static_cast<std::size_t>(mine)];
  for (std::size_t a = 0; a < qruns.size(); ++a)
    for (const chunk& kc : plan.k[static_cast<std::size_t>(src)]) {
      if (!plan.visible(user, qruns[a], kc)) continue;
      const int slot = src < mine ? 1 : 0;
      const options o = pair_options(user, plan, qruns[a], kc, acc.target_lse(a, slot));
      attention<Arch>(pol, seq_slice(q, qruns[a].local, qruns[a].length), seq_slice(k, kc.local, kc.length),
                      seq_slice(v, kc.local, kc.length), acc.target_out(a, slot), o);
      acc.commit(a, slot);
      ++calls;
      between();
    }
  return calls;
}

}  // namespace detail
}  // namespace attnkit::distributed
