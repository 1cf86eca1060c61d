/* fuzz_common.h -- helpers shared by the libFuzzer targets of fuzz/: a
 * per-process scratch directory (in /dev/shm when there is one) and writing
 * the fuzzer's bytes into files there, for parsers that only read files. */
#ifndef PK_FUZZ_COMMON_H
#define PK_FUZZ_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

/* The scratch directory, created on first use; removed at exit by
 * fuzz_cleanup (files named by the targets are unlinked there). */
static char fuzz_dir_buf[256];
static const char *fuzz_names[16];
static int fuzz_n_names;

static inline void fuzz_cleanup(void)
{
    char p[512];
    for (int i = 0; i < fuzz_n_names; i++) {
        snprintf(p, sizeof p, "%s/%s", fuzz_dir_buf, fuzz_names[i]);
        unlink(p);
    }
    if (fuzz_dir_buf[0]) rmdir(fuzz_dir_buf);
}

static inline const char *fuzz_dir(void)
{
    if (!fuzz_dir_buf[0]) {
        const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(fuzz_dir_buf, sizeof fuzz_dir_buf, "%s/pkfuzz.XXXXXX", base);
        if (!mkdtemp(fuzz_dir_buf)) { perror("mkdtemp"); abort(); }
        atexit(fuzz_cleanup);
    }
    return fuzz_dir_buf;
}

/* Write buf[0 .. len) to DIR/name; the path goes to out (cap bytes). */
static inline void fuzz_write(const char *name, const void *buf, size_t len, char *out, size_t cap)
{
    int known = 0;
    for (int i = 0; i < fuzz_n_names; i++) known |= !strcmp(fuzz_names[i], name);
    if (!known && fuzz_n_names < 16) fuzz_names[fuzz_n_names++] = name;
    snprintf(out, cap, "%s/%s", fuzz_dir(), name);
    FILE *f = fopen(out, "wb");
    if (!f) { perror(out); abort(); }
    if (len && fwrite(buf, 1, len, f) != len) { perror(out); abort(); }
    if (fclose(f)) { perror(out); abort(); }
}

/* Gzip buf[0 .. len) into a malloc'ed buffer (*out_len bytes). */
static inline unsigned char *fuzz_gzip(const uint8_t *buf, size_t len, size_t *out_len)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    if (deflateInit2(&z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) abort();
    size_t cap = deflateBound(&z, (uLong)len) + 64;
    unsigned char *o = malloc(cap);
    if (!o) abort();
    z.next_in = (Bytef *)buf;
    z.avail_in = (uInt)len;
    z.next_out = o;
    z.avail_out = (uInt)cap;
    if (deflate(&z, Z_FINISH) != Z_STREAM_END) abort();
    *out_len = z.total_out;
    deflateEnd(&z);
    return o;
}

/* buf[0 .. len) followed by its little-endian crc32 (the trailer of the run
 * directory's binary files), malloc'ed, len + 4 bytes: without it nearly
 * every mutated input would stop at the checksum. */
static inline unsigned char *fuzz_with_crc(const uint8_t *buf, size_t len)
{
    unsigned char *o = malloc(len + 4);
    if (!o) abort();
    if (len) memcpy(o, buf, len);
    uint32_t c = (uint32_t)crc32(0L, NULL, 0);
    c = (uint32_t)crc32(c, buf, (uInt)len);
    memcpy(o + len, &c, 4);   /* x86-64: little-endian */
    return o;
}

/* A float64 .npy (version 1.0) with header dict `dict` and the n values v
 * into out (room for 128 + 8 n bytes); returns its length. */
static inline size_t npy_image(unsigned char *out, const char *dict, const double *v, size_t n)
{
    size_t hl = strlen(dict);
    size_t total = 10 + hl + 1;
    size_t pad = (64 - total % 64) % 64;
    memcpy(out, "\x93NUMPY\x01\x00", 8);
    uint16_t h = (uint16_t)(hl + pad + 1);
    memcpy(out + 8, &h, 2);
    memcpy(out + 10, dict, hl);
    memset(out + 10 + hl, ' ', pad);
    out[10 + hl + pad] = '\n';
    memcpy(out + total + pad, v, n * sizeof *v);
    return total + pad + n * sizeof *v;
}

/* The input as a NUL-terminated string, malloc'ed. */
static inline char *fuzz_cstr(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s) abort();
    memcpy(s, data, size);
    s[size] = 0;
    return s;
}

/* A text-format reader of pk_data_load fed the input as `plain` (e.g.
 * "in.csv") and, gzipped, as `gzipped` ("in.csv.gz", with a random
 * selection): the CSV and svmlight targets. The names must be string
 * literals: fuzz_write keeps them to clean up. */
#include <pathkernel.h>
static inline int fuzz_text_format(const char *plain, const char *gzipped, const uint8_t *data, size_t size)
{
    char path[512];
    pk_data d;
    fuzz_write(plain, data, size, path, sizeof path);
    if (pk_data_load(path, NULL, &d) == PK_OK) {
        size_t C;
        (void)pk_data_classes(&d, &C);
        pk_data_free(&d);
    }
    size_t glen;
    unsigned char *gz = fuzz_gzip(data, size, &glen);
    fuzz_write(gzipped, gz, glen, path, sizeof path);
    free(gz);
    pk_load_opts lo = pk_load_opts_defaults();
    lo.random = 2;
    lo.seed = size;
    if (pk_data_load(path, &lo, &d) == PK_OK) pk_data_free(&d);
    return 0;
}

#endif
