/* rng.c -- the library's own seeded generator: xoshiro256** seeded by
 * splitmix64, so that a seed means the same numbers on every machine. */
#include "base/base.h"
#include <math.h>

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void pk_rng_seed(pk_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t pk_rng_u64(pk_rng *r)
{
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

double pk_rng_uniform(pk_rng *r) { return (double)(pk_rng_u64(r) >> 11) * 0x1.0p-53; }

double pk_rng_normal(pk_rng *r)
{
    /* Box-Muller with the cosine branch only: one draw, no cached state. */
    double u1 = 1.0 - pk_rng_uniform(r), u2 = pk_rng_uniform(r);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

size_t pk_rng_below(pk_rng *r, size_t n)
{
    /* Lemire's unbiased bounded integers (rejection on the low product). */
    uint64_t x = pk_rng_u64(r);
    __uint128_t m = (__uint128_t)x * n;
    uint64_t lo = (uint64_t)m;
    if (lo < n) {
        uint64_t t = (uint64_t)(-(uint64_t)n) % n;
        while (lo < t) {
            x = pk_rng_u64(r);
            m = (__uint128_t)x * n;
            lo = (uint64_t)m;
        }
    }
    return (size_t)(m >> 64);
}

void pk_rng_shuffle(pk_rng *r, uint32_t *a, size_t n)
{
    for (size_t i = n; i > 1; i--) {
        size_t j = pk_rng_below(r, i);
        uint32_t t = a[i - 1];
        a[i - 1] = a[j];
        a[j] = t;
    }
}
