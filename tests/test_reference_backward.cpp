// The float64 backward oracle, softmax: every gradient (dq, dk, dv, d sinks, d bias)
// against central finite differences of the float64 forward oracle
// (backward_util.hpp: step 2^-17, |analytic − FD| ≤ 1e-7·(1 + |analytic|) per
// element), on odd shapes (B=2, Hq=4, Hkv=2, Lq=7, Lk=11, D=5, Dv=3 and the Lq > Lk
// mirror) with each option, both causal alignments, GQA and BSHD views; exact zeros
// where the options hide rows or keys; accumulate; float outputs; validation.
#include "backward_util.hpp"

#include <cstring>
#include <memory>

using namespace attnkit;
using bwdtest::bias_buffer;
using bwdtest::check_fd;
using bwdtest::check_hidden_zero;
using bwdtest::layout;
using bwdtest::problem;

namespace {

/// The standard odd shape, and its mirror with more queries than keys (bottom-right
/// rows before the first key are fully masked).
problem standard(std::uint64_t seed, layout l = layout::bhsd, double qk = 1.0) {
  return problem(2, 4, 2, 7, 11, 5, 3, seed, l, qk);
}
problem mirrored(std::uint64_t seed, layout l = layout::bhsd) { return problem(2, 4, 2, 11, 7, 5, 3, seed, l); }

/// A boolean mask [B, 1, Lq, Lk] with a pseudo-random pattern and one fully-masked row per batch.
struct mask_buffer {
  index_t B, Lq, Lk;
  std::unique_ptr<bool[]> m;
  mask_buffer(index_t b, index_t lq, index_t lk) : B(b), Lq(lq), Lk(lk), m(new bool[static_cast<std::size_t>(b * lq * lk)]) {
    for (index_t x = 0; x < B * Lq * Lk; ++x) m[static_cast<std::size_t>(x)] = (x * 7 + x / 5) % 3 != 0;
    for (index_t b2 = 0; b2 < B; ++b2)
      for (index_t j = 0; j < Lk; ++j) m[static_cast<std::size_t>((b2 * Lq + 2) * Lk + j)] = false;
  }
  mask_view view() const { return bhsd(static_cast<const bool*>(m.get()), B, 1, Lq, Lk); }
};

}  // namespace

TEST_CASE("backward oracle, softmax: plain, both causal alignments, window, GQA", "[reference][backward][softmax]") {
  const auto r = bwdtest::run(softmax{});
  for (bool mirror : {false, true}) {
    problem p = mirror ? mirrored(11) : standard(11);
    check_fd(r, p, {}, "plain");
    for (causal c : {causal::top_left, causal::bottom_right}) {
      options o;
      o.causal = c;
      check_fd(r, p, o, c == causal::top_left ? "causal top-left" : "causal bottom-right");
      o.window = {2, 1};
      check_fd(r, p, o, "causal + window {2, 1}");
    }
    options w;
    w.window = {1, 3};
    check_fd(r, p, w, "window {1, 3}, no causal");
    options s;
    s.scale = 0.7;
    check_fd(r, p, s, "scale 0.7");
  }
}

TEST_CASE("backward oracle, softmax: bool mask, key lengths, masked rows", "[reference][backward][softmax]") {
  const auto r = bwdtest::run(softmax{});
  problem p = standard(21);
  mask_buffer mask(p.B, p.Lq, p.Lk);
  options m;
  m.mask = mask.view();
  check_fd(r, p, m, "bool mask with a fully-masked row");
  CHECK(check_hidden_zero(r, p, m) > 0);
  const std::int64_t lens[2] = {0, 6};  // batch 0: every key padded
  for (causal c : {causal::none, causal::top_left, causal::bottom_right}) {
    options k;
    k.key_lengths = lens;
    k.causal = c;
    check_fd(r, p, k, "key lengths {0, 6}");
    CHECK(check_hidden_zero(r, p, k) >= p.Hq * p.Lq + p.Hkv * (p.Lk + p.Lk - 6));
  }
  options nan_rows;  // masked rows output NaN: their gradient is still exactly 0
  nan_rows.masked_rows = masked_rows::nan;
  nan_rows.key_lengths = lens;
  nan_rows.mask = mask.view();
  check_fd(r, p, nan_rows, "masked_rows::nan");
  CHECK(check_hidden_zero(r, p, nan_rows) > 0);
  problem pm = mirrored(22);
  options br;
  br.causal = causal::bottom_right;  // Lq > Lk: the first 4 rows see no key
  CHECK(check_hidden_zero(r, pm, br) == pm.B * pm.Hq * 4);
}

TEST_CASE("backward oracle, softmax: bias (d bias), ALiBi, softcap, sinks (d sinks)", "[reference][backward][softmax]") {
  const auto r = bwdtest::run(softmax{});
  problem p = standard(31);
  bias_buffer full({p.B, p.Hq, p.Lq, p.Lk}, 5, 1.0), per_head({1, p.Hq, p.Lq, p.Lk}, 6, 1.0),
      per_batch_key({p.B, 1, 1, p.Lk}, 7, 2.0);
  check_fd(r, p, {}, "bias [B, Hq, Lq, Lk]", &full);
  check_fd(r, p, {}, "bias [1, Hq, Lq, Lk] (summed over batches)", &per_head);
  options c;
  c.causal = causal::bottom_right;
  check_fd(r, p, c, "bias [B, 1, 1, Lk] (summed over heads and rows) + causal", &per_batch_key);
  options a;
  a.alibi_slopes = p.alibi;
  a.causal = causal::top_left;
  check_fd(r, p, a, "ALiBi + causal top-left");
  problem big = standard(32, layout::bhsd, 3.0);  // logits of several units: tanh saturates
  options cap;
  cap.softcap = 1.5f;
  check_fd(r, big, cap, "softcap 1.5");
  options s;
  s.sinks = p.sinks;
  check_fd(r, p, s, "sinks");
  const std::int64_t lens[2] = {0, 9};
  s.key_lengths = lens;  // batch 0: only the sink — output 0, gradient 0
  check_fd(r, p, s, "sinks + a batch with no key");
  CHECK(check_hidden_zero(r, p, s) >= p.Hq * p.Lq);
}

TEST_CASE("backward oracle, softmax: Dv != D, MQA, BSHD strides, dropout", "[reference][backward][softmax]") {
  const auto r = bwdtest::run(softmax{});
  problem mqa(1, 3, 1, 6, 9, 7, 2, 41, layout::bshd);
  check_fd(r, mqa, {}, "MQA (Hkv = 1), D = 7, Dv = 2, BSHD");
  problem p = standard(42, layout::bshd);
  options o;
  o.causal = causal::bottom_right;
  o.window = {3, 0};
  check_fd(r, p, o, "BSHD + causal window");
  options d;
  d.dropout = {0.3f, 1234, 5};
  check_fd(r, p, d, "dropout p = 0.3");
  d.causal = causal::top_left;
  d.sinks = p.sinks;
  check_fd(r, p, d, "dropout + causal + sinks");
}

TEST_CASE("backward oracle, softmax: every option at once", "[reference][backward][softmax]") {
  const auto r = bwdtest::run(softmax{});
  for (causal c : {causal::top_left, causal::bottom_right})
    for (layout l : {layout::bhsd, layout::bshd}) {
      problem p = standard(51, l, 1.5);
      mask_buffer mask(p.B, p.Lq, p.Lk);
      bias_buffer bias({1, p.Hq, p.Lq, p.Lk}, 52, 1.0);
      const std::int64_t lens[2] = {8, 11};
      options o;
      o.causal = c;
      o.window = {4, 2};
      o.mask = mask.view();
      o.key_lengths = lens;
      o.alibi_slopes = p.alibi;
      o.softcap = 2.0f;
      o.sinks = p.sinks;
      o.dropout = {0.2f, 99, 7};
      o.scale = 0.6;
      check_fd(r, p, o, "all options", &bias);
      CHECK(check_hidden_zero(r, p, o, &bias) > 0);
    }
}

TEST_CASE("backward oracle: accumulate adds, float outputs are the rounded doubles", "[reference][backward]") {
  problem p = standard(61);
  options o;
  o.causal = causal::bottom_right;
  o.sinks = p.sinks;
  bias_buffer bias({1, 1, p.Lq, p.Lk}, 62, 1.0);
  o.bias = bias.view();
  std::vector<float> lse(static_cast<std::size_t>(p.B * p.Hq * p.Lq));
  bwdtest::tensor4 out = p.like_out();
  o.lse = lse.data();
  reference::attention(softmax{}, p.q.cview(), p.k.cview(), p.v.cview(), out.view(), o);
  auto grads = [&](auto& dq, auto& dk, auto& dv, backward_options bo) {
    return reference::attention_backward(softmax{}, p.q.cview(), p.k.cview(), p.v.cview(),
                                         static_cast<tensor_view<const double>>(out.view()), lse.data(), p.dout.cview(),
                                         dq, dk, dv, o, bo);
  };
  bwdtest::tensor4 dq(p.q.e, p.lay, 0, 0), dk(p.k.e, p.lay, 0, 0), dv(p.v.e, p.lay, 0, 0);
  std::vector<float> ds(4), db(bias.x.size());
  backward_options bo;
  bo.dsinks = ds.data();
  bo.dbias = bhsd(db.data(), 1, 1, p.Lq, p.Lk);
  auto dqv = dq.view(), dkv = dk.view(), dvv = dv.view();
  const auto base = grads(dqv, dkv, dvv, bo);
  // Accumulate onto known values: exactly prior + gradient.
  bwdtest::tensor4 aq(p.q.e, p.lay, 71, 1.0), ak(p.k.e, p.lay, 72, 1.0), av(p.v.e, p.lay, 73, 1.0);
  const auto q0 = aq.x, k0 = ak.x, v0 = av.x;
  std::vector<float> ds2 = {1, 2, 3, 4}, db2(db.size(), 0.5f);
  backward_options acc = bo;
  acc.accumulate = true;
  acc.dsinks = ds2.data();
  acc.dbias = bhsd(db2.data(), 1, 1, p.Lq, p.Lk);
  auto aqv = aq.view(), akv = ak.view(), avv = av.view();
  grads(aqv, akv, avv, acc);
  for (std::size_t x = 0; x < q0.size(); ++x) CHECK(aq.x[x] == q0[x] + dq.x[x]);
  for (std::size_t x = 0; x < k0.size(); ++x) CHECK(ak.x[x] == k0[x] + dk.x[x]);
  for (std::size_t x = 0; x < v0.size(); ++x) CHECK(av.x[x] == v0[x] + dv.x[x]);
  for (std::size_t h = 0; h < 4; ++h) CHECK(ds2[h] == static_cast<float>(static_cast<double>(h + 1) + base.dsinks[h]));
  for (std::size_t x = 0; x < db.size(); ++x) CHECK(db2[x] == static_cast<float>(0.5 + base.dbias[x]));
  // Float gradient views: the float64 result rounded once.
  std::vector<float> fq(p.q.x.size()), fk(p.k.x.size()), fv(p.v.x.size());
  auto fqv = p.q.view_of(fq.data()), fkv = p.k.view_of(fk.data()), fvv = p.v.view_of(fv.data());
  grads(fqv, fkv, fvv, bo);
  for (std::size_t x = 0; x < fq.size(); ++x) CHECK(fq[x] == static_cast<float>(dq.x[x]));
  for (std::size_t x = 0; x < fk.size(); ++x) CHECK(fk[x] == static_cast<float>(dk.x[x]));
  for (std::size_t x = 0; x < fv.size(); ++x) CHECK(fv[x] == static_cast<float>(dv.x[x]));
}

TEST_CASE("backward oracle: float and bfloat16 inputs read as the forward reads them", "[reference][backward]") {
  problem p = standard(81);
  // float q, bf16 k/v: the oracle converts each element exactly as the forward does,
  // so the gradient equals the one of the double problem holding the converted values.
  std::vector<float> qf(p.q.x.size()), doutf(p.dout.x.size());
  std::vector<bfloat16> kb(p.k.x.size()), vb(p.v.x.size());
  for (std::size_t x = 0; x < qf.size(); ++x) p.q.x[x] = qf[x] = static_cast<float>(p.q.x[x]);
  for (std::size_t x = 0; x < kb.size(); ++x) p.k.x[x] = to_float(kb[x] = bfloat16::from_float(static_cast<float>(p.k.x[x])));
  for (std::size_t x = 0; x < vb.size(); ++x) p.v.x[x] = to_float(vb[x] = bfloat16::from_float(static_cast<float>(p.v.x[x])));
  for (std::size_t x = 0; x < doutf.size(); ++x) p.dout.x[x] = doutf[x] = static_cast<float>(p.dout.x[x]);
  options o;
  o.causal = causal::top_left;
  std::vector<float> lse(static_cast<std::size_t>(p.B * p.Hq * p.Lq)), out(p.dout.x.size());
  o.lse = lse.data();
  const auto qv = p.q.view_of(static_cast<const float*>(qf.data()));
  const auto kv = p.k.view_of(static_cast<const bfloat16*>(kb.data()));
  const auto vv = p.v.view_of(static_cast<const bfloat16*>(vb.data()));
  reference::attention(softmax{}, qv, kv, vv, p.dout.view_of(out.data()), o);
  bwdtest::tensor4 dq(p.q.e, p.lay, 0, 0), dk(p.k.e, p.lay, 0, 0), dv(p.v.e, p.lay, 0, 0);
  reference::attention_backward(softmax{}, qv, kv, vv, p.dout.view_of(static_cast<const float*>(out.data())), lse.data(),
                                p.dout.view_of(static_cast<const float*>(doutf.data())), dq.view(), dk.view(), dv.view(), o);
  bwdtest::tensor4 eq(p.q.e, p.lay, 0, 0), ek(p.k.e, p.lay, 0, 0), ev(p.v.e, p.lay, 0, 0);
  bwdtest::run(softmax{}).backward(p, o, {}, eq, ek, ev);
  CHECK(reftest::max_diff(dq.x, eq.x) == 0.0);
  CHECK(reftest::max_diff(dk.x, ek.x) == 0.0);
  CHECK(reftest::max_diff(dv.x, ev.x) == 0.0);
}
