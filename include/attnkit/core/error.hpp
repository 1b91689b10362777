#pragma once
/// \file
/// The one exception type attnkit throws for bad input. It derives from
/// std::invalid_argument so generic handlers catch it; `argument()` names the
/// offending argument so programs (and the conformance suite) can react to it.
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace attnkit {

class invalid_argument_error : public std::invalid_argument {
 public:
  invalid_argument_error(std::string argument, const std::string& message)
      : std::invalid_argument(message), argument_(std::move(argument)) {}
  /// Name of the argument that failed validation, e.g. "k", "options.window".
  const std::string& argument() const noexcept { return argument_; }

 private:
  std::string argument_;
};

namespace detail {
/// Throws invalid_argument_error with a message of the form
/// "attnkit: argument 'k' (extent 'dim'): expected 64, got 32".
template <class Expected, class Actual>
[[noreturn]] void fail(const std::string& arg, const std::string& what, const Expected& expected,
                       const Actual& actual) {
  std::ostringstream os;
  os << "attnkit: argument '" << arg << "'";
  if (!what.empty()) os << " (" << what << ")";
  os << ": expected " << expected << ", got " << actual;
  throw invalid_argument_error(arg, os.str());
}
}  // namespace detail
}  // namespace attnkit
