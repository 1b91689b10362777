// Plain driver for the fuzz cases (any compiler, no libFuzzer):
//   fuzz_replay FILE...                    replay inputs (e.g. a libFuzzer crash file)
//   fuzz_replay --iterations N [--seed S]  N pseudo-random inputs from seed S
// ctest runs the second form so every build, sanitizer builds included, executes the
// harness; scripts/fuzz.sh runs the coverage-guided libFuzzer build.
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "fuzz_case.hpp"

int main(int argc, char** argv) {
  long iterations = 0;
  unsigned seed = 1;
  std::vector<std::string> files;
  for (int a = 1; a < argc; ++a) {
    const std::string arg = argv[a];
    if (arg == "--iterations" && a + 1 < argc) {
      iterations = std::atol(argv[++a]);
    } else if (arg == "--seed" && a + 1 < argc) {
      seed = static_cast<unsigned>(std::atol(argv[++a]));
    } else if (!arg.empty() && arg[0] == '-') {
      std::cerr << "usage: fuzz_replay [--iterations N] [--seed S] [FILE...]\n";
      return 2;
    } else {
      files.push_back(arg);
    }
  }
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    if (!in) {
      std::cerr << "fuzz_replay: cannot read " << f << "\n";
      return 2;
    }
    const std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    attnkit_fuzz::run_one(bytes.data(), bytes.size());
  }
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int> len(0, 96), byte(0, 255);
  for (long it = 0; it < iterations; ++it) {
    std::vector<unsigned char> bytes(static_cast<std::size_t>(len(gen)));
    for (auto& b : bytes) b = static_cast<unsigned char>(byte(gen));
    attnkit_fuzz::run_one(bytes.data(), bytes.size());
  }
  std::cout << "fuzz_replay: " << files.size() << " file(s) and " << iterations << " random input(s) (seed " << seed
            << "), no finding\n";
  const auto& t = attnkit_fuzz::counts();
  std::cout << "  " << t.compared << " valid calls matched the oracle (" << t.rows << " query rows), " << t.rejected
            << " invalid option combinations rejected by kernel and oracle alike, " << t.defects
            << " injected defects rejected with the output untouched\n";
  return 0;
}
