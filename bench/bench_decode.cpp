// KV-cache decoding beside the read limit of the same K/V bytes, measured in the same
// process with the same thread count (a read-only sweep, K and V side by side, as a
// decode kernel reads them).
//
//   bench_decode [--quick] [google-benchmark flags]
//       decode/<kv>/<shape>/<where>/threads:T      (µs per call; GBps and limit_frac)
//       read/<kv>/<shape>/<where>/threads:T        (the sweep of the same bytes)
//   bench_decode --table [--rounds R] [--ggml FILE] [--filter SUBSTRING]
//       every case and its sweep in interleaved rounds (min per case over the rounds),
//       printed as one table; FILE holds `run_decode.sh` lines of ggml
//       (shared/peers/ggml), matched by shape, type and thread count.
//
// Shapes (B = 1, 8 K/V heads, caches of 4096 keys, D = 128, as ggml's PEER_FA=decode):
//   mha    8 query heads, 1 query         gqa    32 query heads (4:1), 1 query
//   new4   8 query heads, 4 new queries   new16  8 query heads, 16 new queries
//   (bottom-right causal)
// where: `l3` = one cache (33.5 MB in fp32: larger than a Zen 5 CCD's 32 MiB L3, so
// partly DRAM-resident there), `dram` = caches of ≥ 1 GiB in all, called in turn.
// kv: f32, bf16, f16, q8 (attnkit::block_q8<float16>, = ggml's q8_0). `api`:
// attention_with_kv_cache (default) or `view` = attention() on strided views.
#include <attnkit/attnkit.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common.hpp"

namespace {

using namespace attnkit_bench;
using attnkit::index_t;

constexpr index_t kv_heads = 8, keys = 4096, head_dim = 128;

enum class kv_kind { f32, bf16, f16, q8 };
const char* kv_name(kv_kind k) {
  switch (k) {
    case kv_kind::f32: return "f32";
    case kv_kind::bf16: return "bf16";
    case kv_kind::f16: return "f16";
    default: return "q8";
  }
}
/// Bytes of one cached row of head_dim elements.
std::size_t row_bytes(kv_kind k) {
  switch (k) {
    case kv_kind::f32: return head_dim * 4;
    case kv_kind::bf16:
    case kv_kind::f16: return head_dim * 2;
    default: return head_dim / 32 * sizeof(attnkit::block_q8<attnkit::float16>);
  }
}

struct shape {
  const char* name;
  index_t q_heads, q_len;
};
const shape shapes[] = {{"mha", 8, 1}, {"gqa", 32, 1}, {"new4", 8, 4}, {"new16", 8, 16}};

struct case_spec {
  kv_kind kv;
  shape sh;
  bool dram;
  int threads;
  bool view_api = false;  ///< attention() on views instead of attention_with_kv_cache
  std::string name(const char* what) const {
    return std::string(what) + "/" + kv_name(kv) + "/" + sh.name + "/" + (dram ? "dram" : "l3") +
           (view_api ? "/view" : "") + "/threads:" + std::to_string(threads);
  }
};

/// One K/V cache pair [1, keys, kv_heads, head_dim] stored BHSD ([1, kv_heads, keys, D],
/// ggml's layout), raw bytes, 64-byte aligned.
struct cache_pair {
  buffer<std::byte> k, v;
  explicit cache_pair(kv_kind kind, std::uint64_t seed) {
    const std::size_t n = static_cast<std::size_t>(kv_heads * keys * head_dim);
    const std::size_t bytes = static_cast<std::size_t>(kv_heads * keys) * row_bytes(kind);
    k.resize(bytes);
    v.resize(bytes);
    std::vector<float> tmp(n);
    for (int which = 0; which < 2; ++which) {
      fill_random(tmp.data(), n, seed + which);
      std::byte* dst = (which ? v : k).data();
      switch (kind) {
        case kv_kind::f32: std::memcpy(dst, tmp.data(), n * 4); break;
        case kv_kind::bf16:
          for (std::size_t i = 0; i < n; ++i) reinterpret_cast<attnkit::bfloat16*>(dst)[i] = attnkit::bfloat16::from_float(tmp[i]);
          break;
        case kv_kind::f16:
          for (std::size_t i = 0; i < n; ++i) reinterpret_cast<attnkit::float16*>(dst)[i] = attnkit::float16::from_float(tmp[i]);
          break;
        case kv_kind::q8:
          attnkit::quantize_q8(tmp.data(), static_cast<index_t>(n), reinterpret_cast<attnkit::block_q8<attnkit::float16>*>(dst));
          break;
      }
    }
  }
};

/// The caches of one case: 1, or enough for ≥ 1 GiB called in turn.
struct cache_set {
  std::vector<std::unique_ptr<cache_pair>> caches;
  cache_set(kv_kind kind, bool dram) {
    const double pair_bytes = 2.0 * static_cast<double>(kv_heads * keys) * static_cast<double>(row_bytes(kind));
    const int n = dram ? static_cast<int>(std::ceil((1 << 30) / pair_bytes)) : 1;
    for (int i = 0; i < n; ++i) caches.push_back(std::make_unique<cache_pair>(kind, 11 + 2 * i));
  }
  double bytes_per_call() const {
    return static_cast<double>(caches[0]->k.size() + caches[0]->v.size());
  }
};

// ---------------------------------------------------------------- the read limit

/// What a sweep accumulates (XOR of everything read), so the reads are not elided.
#if defined(__AVX512BW__)
struct read_acc {
  __m512i a0 = _mm512_setzero_si512(), a1 = a0;
  long long sum() const { return _mm512_reduce_add_epi64(_mm512_xor_si512(a0, a1)); }
};
/// XOR of every 64-byte piece of `bytes` bytes from p into acc (masked tail).
[[gnu::always_inline]] inline void read_row(const std::byte* p, std::size_t bytes, read_acc& acc) {
  std::size_t off = 0;
  for (; off + 128 <= bytes; off += 128) {
    acc.a0 = _mm512_xor_si512(acc.a0, _mm512_loadu_si512(p + off));
    acc.a1 = _mm512_xor_si512(acc.a1, _mm512_loadu_si512(p + off + 64));
  }
  for (; off + 64 <= bytes; off += 64) acc.a0 = _mm512_xor_si512(acc.a0, _mm512_loadu_si512(p + off));
  if (off < bytes)
    acc.a1 = _mm512_xor_si512(acc.a1, _mm512_maskz_loadu_epi8((__mmask64)((~0ull) >> (64 - (bytes - off))), p + off));
}
#else  // portable (not the limit on an AVX-512 host: build with -march=native there)
struct read_acc {
  std::uint64_t a0 = 0, a1 = 0;
  long long sum() const { return static_cast<long long>(a0 ^ a1); }
};
inline void read_row(const std::byte* p, std::size_t bytes, read_acc& acc) {
  std::size_t off = 0;
  for (; off + 16 <= bytes; off += 16) {
    std::uint64_t x[2];
    std::memcpy(x, p + off, 16);
    acc.a0 ^= x[0];
    acc.a1 ^= x[1];
  }
  for (; off < bytes; ++off) acc.a0 ^= static_cast<std::uint64_t>(p[off]);
}
#endif

/// Reads every K and V row of `c` once, row j of K beside row j of V, head by head
/// in chunks of 512 keys spread over `threads` threads (the decode kernel's tasks),
/// asking for the rows 16 ahead (without, the same sweep ran 1.3-1.6x slower on
/// Zen 5): the fastest plain read of these bytes we found, so the limit.
void sweep(const cache_pair& c, std::size_t rb, int threads, std::vector<long long>& sink) {
  constexpr index_t chunk = 512;
  const index_t chunks = keys / chunk;
  attnkit::parallel_for(kv_heads * chunks, threads, [&](index_t task, int slot) {
    const index_t g = task / chunks, j0 = task % chunks * chunk;
    const std::byte* k = c.k.data() + static_cast<std::size_t>(g * keys + j0) * rb;
    const std::byte* v = c.v.data() + static_cast<std::size_t>(g * keys + j0) * rb;
    read_acc ka, va;
    constexpr index_t dist = 16;  // rows ahead: a plain sweep reads ~1.5x faster with it here
    for (index_t j = 0; j < chunk; ++j) {
      if (j + dist < chunk)
        for (std::size_t off = 0; off < rb; off += 64) {
          __builtin_prefetch(k + (j + dist) * rb + off, 0, 3);
          __builtin_prefetch(v + (j + dist) * rb + off, 0, 3);
        }
      read_row(k + j * rb, rb, ka);
      read_row(v + j * rb, rb, va);
    }
    sink[static_cast<std::size_t>(slot) * 8] += ka.sum() ^ va.sum();
  });
}

// ---------------------------------------------------------------- one decode call

struct decode_case {
  case_spec spec;
  cache_set set;
  std::vector<float> q, out;
  std::vector<std::int64_t> seqlens{keys};
  std::vector<long long> sink;
  std::size_t next = 0;
  explicit decode_case(const case_spec& s)
      : spec(s), set(s.kv, s.dram),
        q(static_cast<std::size_t>(s.sh.q_heads * s.sh.q_len * head_dim)), out(q.size()),
        sink(static_cast<std::size_t>(8 * std::max(2, s.threads))) {
    fill_random(q.data(), q.size(), 5);
  }
  const cache_pair& take() {
    const cache_pair& c = *set.caches[next];
    next = (next + 1) % set.caches.size();
    return c;
  }
  template <class T>
  void call_typed(const cache_pair& c) {
    const auto qv = attnkit::bhsd(q.data(), 1, spec.sh.q_heads, spec.sh.q_len, head_dim);
    const auto ov = attnkit::bhsd(out.data(), 1, spec.sh.q_heads, spec.sh.q_len, head_dim);
    const index_t dim = std::is_same_v<T, attnkit::block_q8<attnkit::float16>> ? head_dim / 32 : head_dim;
    const auto kv = attnkit::bhsd(reinterpret_cast<const T*>(c.k.data()), 1, kv_heads, keys, dim);
    const auto vv = attnkit::bhsd(reinterpret_cast<const T*>(c.v.data()), 1, kv_heads, keys, dim);
    if constexpr (!std::is_same_v<T, attnkit::block_q8<attnkit::float16>>) {
      if (spec.view_api) {
        attnkit::options opt;
        opt.num_threads = spec.threads;
        opt.causal = attnkit::causal::bottom_right;
        attnkit::attention(attnkit::softmax{}, qv, kv, vv, ov, opt);
        return;
      }
    }
    attnkit::kv_cache_options opt;
    opt.cache_seqlens = seqlens;
    opt.attention.num_threads = spec.threads;
    attnkit::attention_with_kv_cache(attnkit::softmax{}, qv, kv, vv, ov, opt);
  }
  void call() {
    const cache_pair& c = take();
    switch (spec.kv) {
      case kv_kind::f32: call_typed<float>(c); break;
      case kv_kind::bf16: call_typed<attnkit::bfloat16>(c); break;
      case kv_kind::f16: call_typed<attnkit::float16>(c); break;
      case kv_kind::q8: call_typed<attnkit::block_q8<attnkit::float16>>(c); break;
    }
  }
  void read() { sweep(take(), row_bytes(spec.kv), spec.threads, sink); }
  /// Calls per timed burst: ≥ every cache once, ≥ ~20 ms.
  int burst() const { return std::max<int>(static_cast<int>(set.caches.size()), spec.dram ? 1 : 20); }
};

void bm_case(benchmark::State& st, case_spec spec, bool read) {
  decode_case c(spec);
  for (std::size_t i = 0; i < c.set.caches.size(); ++i) read ? c.read() : c.call();  // warm: pages, pool
  const wall_timer timer;
  for (auto _ : st) {
    read ? c.read() : c.call();
    benchmark::DoNotOptimize(c.out.data());
    benchmark::ClobberMemory();
  }
  const double sec = timer.seconds();
  st.counters["GBps"] = c.set.bytes_per_call() * static_cast<double>(st.iterations()) / sec * 1e-9;
  st.counters["threads"] = spec.threads;
}

std::vector<case_spec> all_cases(bool quick) {
  std::vector<case_spec> out;
  const std::vector<int> threads = quick ? std::vector<int>{1} : std::vector<int>{1, 2};
  for (int t : threads) {
    for (kv_kind k : {kv_kind::f32, kv_kind::f16, kv_kind::bf16, kv_kind::q8})
      for (const shape& s : shapes) out.push_back({k, s, false, t});
    if (!quick)
      for (kv_kind k : {kv_kind::f32, kv_kind::f16, kv_kind::bf16, kv_kind::q8}) out.push_back({k, shapes[0], true, t});
    out.push_back({kv_kind::f32, shapes[0], false, t, true});
    out.push_back({kv_kind::f32, shapes[3], false, t, true});
  }
  return out;
}

void register_all(bool quick) {
  for (const case_spec& s : all_cases(quick)) {
    benchmark::RegisterBenchmark(s.name("decode").c_str(), bm_case, s, false)->Unit(benchmark::kMicrosecond);
    if (!s.view_api)
      benchmark::RegisterBenchmark(s.name("read").c_str(), bm_case, s, true)->Unit(benchmark::kMicrosecond);
  }
}

// ---------------------------------------------------------------- the table

/// ggml's µs per call by "kv_Hq_Lq/threads" from run_decode.sh lines.
std::map<std::string, double> read_ggml(const std::string& path) {
  std::map<std::string, double> m;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream is(line);
    std::string tag, name, th, us;
    if (!(is >> tag >> name >> th >> us) || tag != "ggml") continue;
    const std::string t = th.substr(th.find('=') + 1), u = us.substr(us.find('=') + 1);
    const std::string type = name.substr(0, name.find('_'));
    const auto hq = name.find("_Hq"), lq = name.find("_Lq");
    const std::string key = type + "/" + name.substr(hq + 3, name.find('_', hq + 1) - hq - 3) + "/" +
                            name.substr(lq + 3, name.find('_', lq + 1) - lq - 3) + "/" + t;
    m[key] = std::stod(u);
  }
  return m;
}

/// Seconds of CPU time of this process (all threads): insensitive to time slices
/// lost to other processes of a shared machine (not to their memory traffic).
double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

int run_table(int rounds, const std::string& ggml_file, const std::string& filter, bool cpu_time) {
  const auto ggml = ggml_file.empty() ? std::map<std::string, double>{} : read_ggml(ggml_file);
  std::vector<std::unique_ptr<decode_case>> cases;
  std::vector<double> best_call, best_read;
  for (const case_spec& s : all_cases(false))
    if (filter.empty() || s.name("decode").find(filter) != std::string::npos) {
      cases.push_back(std::make_unique<decode_case>(s));
      best_call.push_back(1e30);
      best_read.push_back(1e30);
    }
  const auto timed = [cpu_time](decode_case& c, bool read) {
    const int n = c.burst();
    const double c0 = process_cpu_seconds();
    const auto t0 = clock_type::now();
    for (int i = 0; i < n; ++i) read ? c.read() : c.call();
    const double wall = std::chrono::duration<double>(clock_type::now() - t0).count();
    return (cpu_time ? (process_cpu_seconds() - c0) / c.spec.threads : wall) / n * 1e6;
  };
  for (auto& c : cases) timed(*c, false), timed(*c, true);  // warm
  for (int r = 0; r < rounds; ++r)
    for (std::size_t i = 0; i < cases.size(); ++i) {  // interleaved: the sweep right beside its case
      best_read[i] = std::min(best_read[i], timed(*cases[i], true));
      best_call[i] = std::min(best_call[i], timed(*cases[i], false));
      best_read[i] = std::min(best_read[i], timed(*cases[i], true));
    }
  std::printf("attnkit %s, arch %s; min over %d interleaved rounds, µs per call (%s)\n", attnkit::version(),
              attnkit::simd::arch_name<attnkit::simd::default_arch>(), rounds,
              cpu_time ? "process CPU time / threads" : "wall clock");
  std::printf("%-34s %10s %10s %8s %10s %9s\n", "case", "read_us", "attnkit_us", "of_limit", "ggml_us", "vs_ggml");
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const case_spec& s = cases[i]->spec;
    const std::string gkey = std::string(s.kv == kv_kind::q8 ? "q8_0" : kv_name(s.kv)) + "/" +
                             std::to_string(s.sh.q_heads) + "/" + std::to_string(s.sh.q_len) + "/" +
                             std::to_string(s.threads);
    const auto g = s.dram ? ggml.end() : ggml.find(gkey);
    char gcol[32] = "-", rcol[32] = "-";
    if (g != ggml.end()) {
      std::snprintf(gcol, sizeof gcol, "%.0f", g->second);
      std::snprintf(rcol, sizeof rcol, "%.2fx", g->second / best_call[i]);
    }
    std::printf("%-34s %10.0f %10.0f %7.1f%% %10s %9s\n", s.name("").substr(1).c_str(), best_read[i], best_call[i],
                100.0 * best_read[i] / best_call[i], gcol, rcol);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (take_flag(argc, argv, "--table")) {
    const bool cpu_time = take_flag(argc, argv, "--cpu-time");
    int rounds = 7;
    std::string ggml, filter;
    for (int i = 1; i + 1 < argc; ++i) {
      if (std::string(argv[i]) == "--rounds") rounds = std::atoi(argv[i + 1]);
      if (std::string(argv[i]) == "--ggml") ggml = argv[i + 1];
      if (std::string(argv[i]) == "--filter") filter = argv[i + 1];
    }
    return run_table(rounds, ggml, filter, cpu_time);
  }
  return attnkit_bench::bench_main(argc, argv, register_all);
}
