// attnkit::runtime::attention in a program compiled for the generic x86-64 baseline
// (no -march): it must select the best target this CPU has (read independently
// from /proc/cpuinfo) and every target this CPU runs must agree with the float64
// oracle and with the compile-time path of this translation unit (SSE2).
// Tolerance: max|out − oracle| ≤ 2e-5·max|oracle| (the oracle tests' bound), and
// the same bound between the run-time and compile-time results. bf16 K/V are
// compared with an oracle fed the same bf16-rounded values.
// Plain checks, no Catch2: its main would be built with -march=native.
#define ATTNKIT_NO_ARCH_WARNING  // this translation unit is below AVX2 on purpose
#include <attnkit/attnkit.hpp>
#include <attnkit/dispatch/runtime.hpp>
#include <attnkit/reference/reference.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace {

using attnkit::index_t;
int failures = 0;

void check(bool ok, const std::string& what) {
  if (!ok) {
    ++failures;
    std::fprintf(stderr, "FAILED: %s\n", what.c_str());
  }
}

/// The CPU's feature flags from /proc/cpuinfo: a source independent of both cpuid
/// readers (xsimd's and the compiler's) that runtime.hpp uses.
std::set<std::string> cpu_flags() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("flags", 0) == 0) {
      std::istringstream words(line.substr(line.find(':') + 1));
      std::set<std::string> flags;
      for (std::string w; words >> w;) flags.insert(w);
      return flags;
    }
  return {};
}

std::string expected_arch(const std::set<std::string>& f) {
  auto has = [&](std::initializer_list<const char*> names) {
    return std::all_of(names.begin(), names.end(), [&](const char* n) { return f.count(n) > 0; });
  };
  // LZCNT ("abm") is left out: some hypervisors hide it from /proc/cpuinfo while
  // cpuid reports it (seen on the Zen 5 development VM).
  const bool v3 = has({"avx2", "fma", "bmi1", "bmi2", "f16c", "movbe"});
  if (v3 && has({"avx512f", "avx512bw", "avx512dq", "avx512cd", "avx512vl"})) return "avx512bw";
  if (v3) return "fma3+avx2";
  return "sse2";
}

std::vector<float> randn(std::size_t n, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> x(n);
  for (auto& e : x) e = d(gen);
  return x;
}

double rel_err(const std::vector<float>& a, const std::vector<double>& ref) {
  double scale = 1e-30, worst = 0;
  for (double r : ref) scale = std::max(scale, std::abs(r));
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) != std::isnan(ref[i])) return INFINITY;  // a NaN where the other has none
    if (!std::isnan(ref[i])) worst = std::max(worst, std::abs(a[i] - ref[i]));
  }
  return worst / scale;
}

struct shape {
  index_t B, Hq, Hkv, Lq, Lk, D, Dv;
  attnkit::causal c;
};

template <class KV>
void run_case(const shape& s, std::uint32_t seed) {
  constexpr double tol = 2e-5;
  const std::size_t nq = static_cast<std::size_t>(s.B * s.Hq * s.Lq * s.D);
  const std::size_t nk = static_cast<std::size_t>(s.B * s.Hkv * s.Lk * s.D);
  const std::size_t nv = static_cast<std::size_t>(s.B * s.Hkv * s.Lk * s.Dv);
  const std::size_t no = static_cast<std::size_t>(s.B * s.Hq * s.Lq * s.Dv);
  const std::vector<float> q = randn(nq, seed);
  std::vector<float> k = randn(nk, seed + 1), v = randn(nv, seed + 2);
  std::vector<KV> kh(nk), vh(nv);  // the K/V the kernels read; k, v: the same values in float
  for (std::size_t i = 0; i < nk; ++i) {
    if constexpr (std::is_same_v<KV, float>) kh[i] = k[i];
    else k[i] = (kh[i] = KV::from_float(k[i])).to_float();
  }
  for (std::size_t i = 0; i < nv; ++i) {
    if constexpr (std::is_same_v<KV, float>) vh[i] = v[i];
    else v[i] = (vh[i] = KV::from_float(v[i])).to_float();
  }
  const auto Q = attnkit::bhsd(q.data(), s.B, s.Hq, s.Lq, s.D);
  const auto K = attnkit::bhsd(static_cast<const KV*>(kh.data()), s.B, s.Hkv, s.Lk, s.D);
  const auto V = attnkit::bhsd(static_cast<const KV*>(vh.data()), s.B, s.Hkv, s.Lk, s.Dv);
  attnkit::options opt;
  opt.causal = s.c;

  std::vector<double> ref(no);
  attnkit::reference::attention(attnkit::softmax{}, Q, attnkit::bhsd(k.data(), s.B, s.Hkv, s.Lk, s.D),
                                attnkit::bhsd(v.data(), s.B, s.Hkv, s.Lk, s.Dv),
                                attnkit::bhsd(ref.data(), s.B, s.Hq, s.Lq, s.Dv), opt);
  std::vector<float> compile_time(no, -7.0f), run_time(no, -7.0f);
  attnkit::attention(attnkit::softmax{}, Q, K, V, attnkit::bhsd(compile_time.data(), s.B, s.Hq, s.Lq, s.Dv), opt);
  attnkit::runtime::attention(attnkit::softmax{}, Q, K, V, attnkit::bhsd(run_time.data(), s.B, s.Hq, s.Lq, s.Dv), opt);

  char what[200];
  std::snprintf(what, sizeof what, "%s K/V, B%lld Hq%lld Hkv%lld Lq%lld Lk%lld D%lld Dv%lld causal %d",
                std::is_same_v<KV, float> ? "float" : "bfloat16", static_cast<long long>(s.B),
                static_cast<long long>(s.Hq), static_cast<long long>(s.Hkv), static_cast<long long>(s.Lq),
                static_cast<long long>(s.Lk), static_cast<long long>(s.D), static_cast<long long>(s.Dv),
                static_cast<int>(s.c));
  const double e_ct = rel_err(compile_time, ref), e_rt = rel_err(run_time, ref);
  std::vector<double> ct(compile_time.begin(), compile_time.end());
  const double e_rt_ct = rel_err(run_time, ct);
  check(e_ct <= tol, std::string("compile-time path vs oracle: ") + what + " err " + std::to_string(e_ct));
  check(e_rt <= tol, std::string("runtime::attention vs oracle: ") + what + " err " + std::to_string(e_rt));
  check(e_rt_ct <= tol, std::string("runtime vs compile-time: ") + what + " err " + std::to_string(e_rt_ct));

  // Every target this CPU runs, forced.
  using attnkit::runtime::target;
  for (target t : {target::x86_64, target::x86_64_v3, target::x86_64_v4}) {
    if (!attnkit::runtime::supported(t)) continue;
    std::vector<float> o(no, -7.0f);
    attnkit::runtime::attention_on(t, attnkit::softmax{}, Q, K, V, attnkit::bhsd(o.data(), s.B, s.Hq, s.Lq, s.Dv),
                                   opt);
    const double e = rel_err(o, ref);
    check(e <= tol, std::string("attention_on(") + attnkit::runtime::target_name(t) + ") vs oracle: " + what +
                        " err " + std::to_string(e));
  }
}

}  // namespace

int main() {
  // This translation unit must really be the generic baseline, else the test proves nothing.
  check(std::strcmp(attnkit::simd::arch_name<>(), "sse2") == 0,
        std::string("built without -march, the compile-time path must be sse2, got ") + attnkit::simd::arch_name<>());

  const std::set<std::string> flags = cpu_flags();
  const std::string want = flags.empty() ? "" : expected_arch(flags);
  const char* got = attnkit::runtime::selected_arch_name();
  std::printf("runtime dispatch: target %s, kernels %s (compile-time path of this TU: %s)\n",
              attnkit::runtime::target_name(attnkit::runtime::selected_target()), got, attnkit::simd::arch_name<>());
  if (flags.empty())
    std::printf("no /proc/cpuinfo flags: the selection is not cross-checked\n");
  else
    check(want == got, "selected kernels " + std::string(got) + ", /proc/cpuinfo says " + want);

  using attnkit::causal;
  const shape shapes[] = {
      {1, 4, 2, 1, 333, 64, 64, causal::none},            // decode, GQA
      {2, 2, 2, 77, 131, 40, 24, causal::bottom_right},   // odd prefill, Dv != D
      {1, 6, 3, 129, 129, 128, 128, causal::top_left},    // self-attention, D = 128
      {1, 2, 1, 200, 90, 32, 32, causal::bottom_right},   // Lq > Lk: leading rows fully masked
  };
  std::uint32_t seed = 11;
  for (const shape& s : shapes) {
    run_case<float>(s, seed += 10);
    run_case<attnkit::bfloat16>(s, seed += 10);
  }

  // Validation is the same as attention()'s: a bad call throws before any write.
  std::vector<float> q(64), k(64), v(64), out(64, 3.0f);
  bool threw = false;
  try {
    attnkit::runtime::attention(attnkit::softmax{}, attnkit::bhsd(q.data(), 1, 1, 4, 16),
                                attnkit::bhsd(k.data(), 1, 1, 4, 16), attnkit::bhsd(v.data(), 1, 1, 4, 8),
                                attnkit::bhsd(out.data(), 1, 1, 4, 16));  // out's dim must be v's (8)
  } catch (const attnkit::invalid_argument_error&) {
    threw = true;
  }
  check(threw, "runtime::attention with a bad out extent must throw invalid_argument_error");
  check(std::all_of(out.begin(), out.end(), [](float x) { return x == 3.0f; }), "out written before the error");
  // A target this CPU cannot run is refused (only observable on a CPU without AVX-512).
  if (!attnkit::runtime::supported(attnkit::runtime::target::x86_64_v4)) {
    bool refused = false;
    try {
      attnkit::runtime::attention_on(attnkit::runtime::target::x86_64_v4, attnkit::softmax{},
                                     attnkit::bhsd(q.data(), 1, 1, 4, 16), attnkit::bhsd(k.data(), 1, 1, 4, 16),
                                     attnkit::bhsd(v.data(), 1, 1, 4, 16), attnkit::bhsd(out.data(), 1, 1, 4, 16));
    } catch (const attnkit::invalid_argument_error&) {
      refused = true;
    }
    check(refused, "attention_on(x86-64-v4) on a CPU without AVX-512 must throw");
  }

  std::printf("%s (%d failures)\n", failures == 0 ? "PASSED" : "FAILED", failures);
  return failures == 0 ? 0 : 1;
}
