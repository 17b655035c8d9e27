// FUZZ_CHECK: the oracle of the fuzz targets. A broken invariant prints what broke and aborts,
// which libFuzzer reports as a crash and saves the input (build-fuzz/fuzz-artifacts/).
#ifndef NEXUSKV_TESTS_FUZZ_FUZZ_CHECK_H_
#define NEXUSKV_TESTS_FUZZ_FUZZ_CHECK_H_

#include <cstdio>
#include <cstdlib>

#define FUZZ_CHECK(condition, ...)                                                                \
  do {                                                                                            \
    if (!(condition)) {                                                                           \
      std::fprintf(stderr, "FUZZ_CHECK failed at %s:%d: %s\n  ", __FILE__, __LINE__, #condition); \
      std::fprintf(stderr, __VA_ARGS__);                                                          \
      std::fprintf(stderr, "\n");                                                                 \
      std::abort();                                                                               \
    }                                                                                             \
  } while (0)

#endif  // NEXUSKV_TESTS_FUZZ_FUZZ_CHECK_H_
