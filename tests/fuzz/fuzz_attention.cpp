// libFuzzer entry point (clang -fsanitize=fuzzer): every input is one attention call
// checked against the float64 oracle and the error model; see fuzz_case.hpp.
// Build and run with scripts/fuzz.sh.
#include "fuzz_case.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  attnkit_fuzz::run_one(data, size);
  return 0;
}
