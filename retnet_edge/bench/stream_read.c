/* Streaming-read kernel for the memory roof: sums a float buffer with wide loads and independent
 * accumulators, so the loop is bound by memory, not by the add chain (a numpy reduction is not).
 * Built on first use by roof.py with -O3 -march=native; one call per thread (ctypes drops the GIL). */
#include <stddef.h>
#if defined(__AVX512F__)
#include <immintrin.h>
const char* kernel_isa(void) { return "avx512"; }
float stream_read(const float* a, size_t n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    s0 = _mm512_add_ps(s0, _mm512_loadu_ps(a + i));
    s1 = _mm512_add_ps(s1, _mm512_loadu_ps(a + i + 16));
    s2 = _mm512_add_ps(s2, _mm512_loadu_ps(a + i + 32));
    s3 = _mm512_add_ps(s3, _mm512_loadu_ps(a + i + 48));
  }
  float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
  for (; i < n; ++i) s += a[i];
  return s;
}
#elif defined(__AVX2__)
#include <immintrin.h>
const char* kernel_isa(void) { return "avx2"; }
float stream_read(const float* a, size_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_add_ps(s0, _mm256_loadu_ps(a + i));
    s1 = _mm256_add_ps(s1, _mm256_loadu_ps(a + i + 8));
    s2 = _mm256_add_ps(s2, _mm256_loadu_ps(a + i + 16));
    s3 = _mm256_add_ps(s3, _mm256_loadu_ps(a + i + 24));
  }
  float t[8], s = 0;
  _mm256_storeu_ps(t, _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
  for (int k = 0; k < 8; ++k) s += t[k];
  for (; i < n; ++i) s += a[i];
  return s;
}
#else
const char* kernel_isa(void) { return "scalar"; }
float stream_read(const float* a, size_t n) {
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    s0 += a[i]; s1 += a[i + 1]; s2 += a[i + 2]; s3 += a[i + 3];
    s4 += a[i + 4]; s5 += a[i + 5]; s6 += a[i + 6]; s7 += a[i + 7];
  }
  float s = s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7;
  for (; i < n; ++i) s += a[i];
  return s;
}
#endif
