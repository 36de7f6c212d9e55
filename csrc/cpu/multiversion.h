// SAM3LT_MULTIVERSION: one build of a loop for every CPU torch runs on, the widest path picked at load time (GCC
// function multi-versioning: AVX-512, AVX2, baseline; the build's own -march has only SSE2).
#pragma once

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define SAM3LT_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SAM3LT_MULTIVERSION
#endif
