/* Streaming-read kernel for the memory roof: sums a float buffer with wide loads and independent
 * accumulators, so the loop is bound by memory, not by the add chain (a numpy reduction is not).
 * Built on first use by bench/tools.py with -O3 -march=native; one call per thread (ctypes drops the GIL).
 * One loop for every ISA: the vector type, its width and its three operations are chosen below. */
#include <stddef.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#define ISA "avx512"
#define LANES 16
typedef __m512 vec;
#define ZERO() _mm512_setzero_ps()
#define LOAD(p) _mm512_loadu_ps(p)
#define ADD(x, y) _mm512_add_ps(x, y)
#define STORE(p, x) _mm512_storeu_ps(p, x)
#elif defined(__AVX2__)
#include <immintrin.h>
#define ISA "avx2"
#define LANES 8
typedef __m256 vec;
#define ZERO() _mm256_setzero_ps()
#define LOAD(p) _mm256_loadu_ps(p)
#define ADD(x, y) _mm256_add_ps(x, y)
#define STORE(p, x) _mm256_storeu_ps(p, x)
#else
#define ISA "scalar"
#define LANES 1
typedef float vec;
#define ZERO() 0.0f
#define LOAD(p) (*(p))
#define ADD(x, y) ((x) + (y))
#define STORE(p, x) (*(p) = (x))
#endif

const char* kernel_isa(void) { return ISA; }

float stream_read(const float* a, size_t n) {
  vec s0 = ZERO(), s1 = s0, s2 = s0, s3 = s0;  /* four chains: loads, not adds, bound the loop */
  size_t i = 0;
  for (; i + 4 * LANES <= n; i += 4 * LANES) {
    s0 = ADD(s0, LOAD(a + i));
    s1 = ADD(s1, LOAD(a + i + LANES));
    s2 = ADD(s2, LOAD(a + i + 2 * LANES));
    s3 = ADD(s3, LOAD(a + i + 3 * LANES));
  }
  float lanes[LANES], s = 0;
  STORE(lanes, ADD(ADD(s0, s1), ADD(s2, s3)));
  for (int k = 0; k < LANES; ++k) s += lanes[k];
  for (; i < n; ++i) s += a[i];
  return s;
}
