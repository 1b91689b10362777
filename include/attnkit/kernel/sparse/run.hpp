#pragma once
/// \file
/// The entry of the sparse family: a data-dependent pattern runs its own selection
/// kernel (selection<P>); a static pattern runs through its hooks — in rank space
/// when it can reorder the tokens for this call, else in position space.
#include <vector>

#include "../../policy/sparse.hpp"
#include "../prefill/schedule.hpp"
#include "flex_prefill.hpp"
#include "pattern_keys.hpp"
#include "selection.hpp"
#include "top_k.hpp"

namespace attnkit::detail {

/// The token order of a reordering pattern, kept by the call's workspace.
struct rank_order_storage {
  std::vector<index_t> order;
  std::size_t bytes() const { return order.capacity() * sizeof(index_t); }
};

/// Options that tie a row to its original position (they forbid reordering).
inline bool has_positional_terms(const options& opt) noexcept {
  return opt.causal != causal::none || opt.window.active() || !opt.key_lengths.empty() || opt.mask.data ||
         opt.bias.data || !opt.alibi_slopes.empty();
}

template <class Arch, class P, class Inner, class Obs, class KV>
void run_sparse(const sparse<P, Inner>& pol, const problem_shape& sh, const tensor_view<const float>& q,
                const tensor_view<const KV>& k, const tensor_view<const KV>& v, const tensor_view<float>& out,
                const options& opt, Obs& obs, workspace& ws) {
  if constexpr (pattern::dynamic_pattern<P>) {
    static_assert(requires { selection<P>{}; }, "attnkit: this data-dependent pattern has no selection kernel");
    selection<P>::template run<Arch>(pol, sh, q, k, v, out, opt, obs, ws);
  } else {
    using hooks = pattern_hooks<P>;
    if constexpr (hooks::gathers) {
      // Blocks of rows that pack their own keys, each row's keys one run of them.
      // (Dropout draws by token index: it takes the position-space path.)
      if (sh.q_len == sh.k_len && !has_positional_terms(opt) && !opt.dropout.active() &&
          hooks::gather_rows(pol.pattern) > 0) {
        run_quadratic<Arch>(pol.inner, sh, q, k, v, out, opt, obs, ws,
                            gathered_keys<P>{{}, pol.pattern, opt, sh.q_len, sh.k_len}, hooks::band(pol.pattern));
        return;
      }
    }
    if constexpr (hooks::reorders) {
      // Self-attention whose rows carry no position-dependent option: each row's
      // keys may become one run of ranks — a plain band of full tiles.
      if (sh.q_len == sh.k_len && !has_positional_terms(opt)) {
        auto& order = ws.shared().get<rank_order_storage>().order;
        if (hooks::rank_order(pol.pattern, pattern::rank_query{sh.k_len}, order)) {
          run_quadratic<Arch>(pol.inner, sh, q, k, v, out, opt, obs, ws,
                              rank_keys<P>{{}, pol.pattern, order, sh.k_len}, hooks::rank_band(pol.pattern));
          return;
        }
      }
    }
    run_quadratic<Arch>(pol.inner, sh, q, k, v, out, opt, obs, ws,
                        pattern_keys<P>{{}, pol.pattern, opt, sh.q_len, sh.k_len}, hooks::band(pol.pattern));
  }
}

}  // namespace attnkit::detail
