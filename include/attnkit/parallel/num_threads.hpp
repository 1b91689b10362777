#pragma once
/// \file
/// How many threads one call uses: options.num_threads if > 0, else the
/// ATTNKIT_NUM_THREADS environment variable if set, else the hardware
/// concurrency; in every case at most max_threads().
///
/// ATTNKIT_NUM_THREADS takes a whole number >= 1 (surrounding blanks allowed), or
/// is unset or empty; any other value ("abc", "-3", "0", "99999999999") is an
/// error, reported as invalid_argument_error naming the variable by every call
/// that would read it (validation runs before any output is written).
#include <algorithm>
#include <cctype>
#include <climits>
#include <cstdlib>
#include <string>
#include <thread>

#include "../core/error.hpp"

namespace attnkit {

/// No call uses more threads than this, whatever it asks for.
inline constexpr int hard_max_threads = 1024;

/// The thread cap of this process: 4 × the hardware concurrency (more threads
/// than cores only add contention), and never more than hard_max_threads; 64 when
/// the hardware concurrency is unknown. Larger requests are lowered to it, so the
/// pool never holds more than max_threads() − 1 OS threads.
inline int max_threads() noexcept {
  static const int cap = [] {
    const unsigned hc = std::thread::hardware_concurrency();
    if (hc == 0) return 64;
    return static_cast<int>(std::min<unsigned long>(4ul * hc, static_cast<unsigned long>(hard_max_threads)));
  }();
  return cap;
}

namespace detail {
/// ATTNKIT_NUM_THREADS as a count (0: unset or empty); throws for any other value.
inline int env_num_threads() {
  const char* env = std::getenv("ATTNKIT_NUM_THREADS");
  if (env == nullptr) return 0;
  std::string s(env);
  const auto blank = [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; };
  while (!s.empty() && blank(s.back())) s.pop_back();
  std::size_t i = 0;
  while (i < s.size() && blank(s[i])) ++i;
  s.erase(0, i);
  if (s.empty()) return 0;
  long long n = 0;
  bool ok = s.size() <= 10;  // INT_MAX has 10 digits
  for (char c : s) ok = ok && c >= '0' && c <= '9';
  if (ok) n = std::strtoll(s.c_str(), nullptr, 10);
  if (!ok || n < 1 || n > INT_MAX)
    fail("ATTNKIT_NUM_THREADS", "environment variable", "a whole number of threads in [1, 2^31 - 1], or unset",
         "'" + std::string(env) + "'");
  return static_cast<int>(n);
}
}  // namespace detail

/// Threads a call uses: `requested` if > 0, else ATTNKIT_NUM_THREADS if set, else
/// std::thread::hardware_concurrency(); at most max_threads(). Throws
/// invalid_argument_error for an invalid ATTNKIT_NUM_THREADS (only when it is read).
inline int resolve_num_threads(int requested) {
  int n = requested > 0 ? requested : detail::env_num_threads();
  if (n <= 0) n = static_cast<int>(std::thread::hardware_concurrency());
  return std::clamp(n, 1, max_threads());
}

}  // namespace attnkit
