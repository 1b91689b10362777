// The patterns' bit form of the partial-tile test (allowed_bits, used by the SIMD
// skeleton) against their element test (allowed, the definition the oracle uses),
// bit by bit: every pattern, self-attention and both alignments of Lq ≠ Lk, key
// lengths, key windows that start anywhere (not only on tile boundaries) and of
// every width up to 64.
#include <catch2/catch.hpp>

#include <attnkit/attnkit.hpp>
#include <attnkit/kernel/sparse/pattern_keys.hpp>

#include <cstdint>
#include <random>
#include <vector>

using namespace attnkit;

namespace {

/// Every (row, window) of a q_len × k_len call with batch key lengths `lengths`:
/// counts the rows × windows compared, fails on the first difference.
template <class Keys>
std::int64_t compare_bits(const Keys& keys, index_t q_len, index_t k_len, index_t batches, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::int64_t compared = 0;
  for (index_t b = 0; b < batches; ++b)
    for (index_t i = 0; i < q_len; ++i)
      for (int rep = 0; rep < 6; ++rep) {
        const int n = rep == 0 ? 64 : 1 + static_cast<int>(rng() % 64);
        if (k_len < 1) continue;
        const index_t j0 = rep == 0 ? (i * 64) % k_len : static_cast<index_t>(rng() % static_cast<std::uint32_t>(k_len));
        const int len = static_cast<int>(std::min<index_t>(n, k_len - j0));
        const std::uint64_t bits = keys.allowed_bits(b, 0, i, j0, len);
        std::uint64_t want = 0;
        for (int jj = 0; jj < len; ++jj) want |= static_cast<std::uint64_t>(keys.allowed(b, 0, i, j0 + jj)) << jj;
        INFO("batch " << b << " row " << i << " keys " << j0 << " + " << len);
        REQUIRE(bits == want);
        ++compared;
      }
  return compared;
}

template <class P>
void check_pattern(const P& pat, const char* what) {
  struct shape {
    index_t q_len, k_len;
  };
  // Self-attention, a query block at the end of the keys (bottom-right positions)
  // and more queries than keys (positions below 0).
  for (const shape s : {shape{300, 300}, shape{70, 333}, shape{200, 130}}) {
    options opt;
    const std::vector<index_t> lengths{s.k_len, s.k_len * 2 / 3};
    opt.key_lengths = lengths;
    const detail::pattern_keys<P> keys{{}, pat, opt, s.q_len, s.k_len};
    INFO(what << ": Lq " << s.q_len << " Lk " << s.k_len);
    CHECK(compare_bits(keys, s.q_len, s.k_len, 2, 7) == 2 * s.q_len * 6);
  }
}

}  // namespace

TEST_CASE("allowed_bits equals allowed for every static pattern", "[sparse][bits]") {
  check_pattern(pattern::sliding_window{37, 5}, "sliding window");
  check_pattern(pattern::sliding_window{-1, 0}, "causal, unbounded left");
  check_pattern(pattern::sliding_window{20, -1}, "unbounded right");
  check_pattern(pattern::dilated_window{9, 3}, "dilated window");
  check_pattern(pattern::dilated_window{0, 5}, "dilated window, width 0");
  check_pattern(pattern::dilated_window{40, 1}, "dilated window, dilation 1");
  check_pattern(pattern::sink_window{4, 50}, "sink window");
  check_pattern(pattern::sink_window{0, 1}, "sink window, no sinks, one key");
  check_pattern(pattern::sink_window{70, 10}, "sink window, sinks beyond the window");
  check_pattern(pattern::neighborhood_1d{13, 2}, "neighbourhood 1-D, dilation 2");
  check_pattern(pattern::neighborhood_1d{8, 1}, "neighbourhood 1-D, even kernel");
  check_pattern(pattern::neighborhood_1d{255, 4}, "neighbourhood 1-D, kernel above the group size");
  check_pattern(pattern::neighborhood_1d{5, 7}, "neighbourhood 1-D, dilation 7");
  check_pattern(pattern::power_attention{16, 1, 1}, "PowerAttention");
  check_pattern(pattern::power_attention{7, 0, 0}, "PowerAttention, odd block, no sinks or local");
  check_pattern(pattern::power_attention{64, 2, 3}, "PowerAttention, 64-key blocks");
  std::vector<char> layout(10 * 12);
  for (std::size_t i = 0; i < layout.size(); ++i) layout[i] = (i * 7) % 3 != 0;
  const auto* lay = reinterpret_cast<const bool*>(layout.data());
  check_pattern(pattern::block_sparse{lay, 64, 64, 5, 6}, "block sparse, 64×64");
  check_pattern(pattern::block_sparse{lay, 40, 30, 10, 12}, "block sparse, 40×30 blocks");
  check_pattern(pattern::block_sparse{lay, 32, 128, 10, 3}, "block sparse, 32×128 blocks");
}

TEST_CASE("allowed_bits equals allowed for 2-D neighbourhoods", "[sparse][bits]") {
  struct grid {
    index_t height, width, kh, kw, dilation;
  };
  for (const grid g : {grid{15, 20, 7, 5, 1}, grid{15, 20, 3, 9, 2}, grid{10, 30, 11, 4, 3}, grid{3, 100, 7, 7, 1},
                       grid{30, 10, 5, 5, 4}, grid{4, 80, 1, 1, 1}}) {
    const pattern::neighborhood_2d pat{g.height, g.width, g.kh, g.kw, g.dilation};
    const index_t L = g.height * g.width;
    for (const index_t q_len : {L, L / 3}) {
      options opt;
      const detail::pattern_keys<pattern::neighborhood_2d> keys{{}, pat, opt, q_len, L};
      INFO("grid " << g.height << "×" << g.width << " kernel " << g.kh << "×" << g.kw << " dilation " << g.dilation
                   << " Lq " << q_len);
      CHECK(compare_bits(keys, q_len, L, 1, 11) == q_len * 6);
    }
  }
}

TEST_CASE("allowed_bits equals allowed for a block selection", "[sparse][bits]") {
  detail::block_selection_keys sel;
  for (const index_t block : {64, 16, 48, 100}) {
    sel.block = block;
    sel.q_blocks = (250 + block - 1) / block;
    sel.k_blocks = (310 + block - 1) / block;
    sel.heads = 1;
    sel.keep.assign(static_cast<std::size_t>(2 * sel.q_blocks * sel.k_blocks), 0);
    std::mt19937 rng(static_cast<std::uint32_t>(block));
    for (auto& x : sel.keep) x = rng() % 3 == 0;
    INFO("block " << block);
    CHECK(compare_bits(sel, 250, 310, 2, 3) == 2 * 250 * 6);
  }
}

TEST_CASE("tile_keys holds every allowed key of a strip's tile (sink window)", "[sparse][bits]") {
  // The skeleton computes only the vectors of a partial tile inside tile_keys.
  for (const pattern::sink_window pat : {pattern::sink_window{4, 50}, pattern::sink_window{0, 64},
                                         pattern::sink_window{70, 10}, pattern::sink_window{1, 300}}) {
    for (const index_t q_len : {300, 90}) {
      const index_t k_len = 300;
      options opt;
      const detail::pattern_keys<pattern::sink_window> keys{{}, pat, opt, q_len, k_len};
      std::int64_t inside = 0;
      for (index_t i0 = 0; i0 < q_len; i0 += 5)
        for (index_t rows = 1; rows <= 6 && i0 + rows <= q_len; ++rows)
          for (index_t j0 = 0; j0 < k_len; j0 += 64) {
            const key_range kr = keys.tile_keys(0, 0, i0, i0 + rows, j0, j0 + 64);
            for (index_t i = i0; i < i0 + rows; ++i)
              for (index_t j = j0; j < std::min(k_len, j0 + 64); ++j)
                if (keys.allowed(0, 0, i, j)) {
                  INFO("sinks " << pat.sinks << " window " << pat.window << " rows " << i0 << " + " << rows << " key "
                                << j << " range [" << kr.lo << ", " << kr.hi << ")");
                  REQUIRE(kr.contains(j));
                  ++inside;
                }
          }
      CHECK(inside > 0);
    }
  }
}
