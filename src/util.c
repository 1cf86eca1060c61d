/* util.c -- errors, checked allocation, atomic files, number parsing, hashing. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>
#include <cblas.h>
#include <omp.h>

static _Thread_local char pk_errbuf[1024];

const char *pk_last_error(void) { return pk_errbuf; }

pk_status pk_fail(pk_status s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pk_errbuf, sizeof pk_errbuf, fmt, ap);
    va_end(ap);
    return s;
}

const char *pk_status_str(pk_status s)
{
    switch (s) {
    case PK_OK: return "ok";
    case PK_ERR_INPUT: return "bad input";
    case PK_ERR_IO: return "input/output error";
    case PK_ERR_NOMEM: return "out of memory";
    case PK_ERR_NUMERIC: return "numerical failure";
    case PK_ERR_STATE: return "inconsistent run";
    case PK_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

static int pk_threads = 0;

void pk_set_threads(int n)
{
    if (n <= 0) n = omp_get_num_procs();
    pk_threads = n;
    openblas_set_num_threads(1); /* BLAS runs inside our tiles: gemm.c; in OpenBLAS's OpenMP build this sets omp threads too */
    omp_set_num_threads(n);
}

int pk_get_threads(void) { return pk_threads > 0 ? pk_threads : omp_get_max_threads(); }

void *pk_alloc(size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size) {
        pk_fail(PK_ERR_NOMEM, "allocation of %zu x %zu bytes overflows", n, size);
        return NULL;
    }
    void *p = malloc(n * size > 0 ? n * size : 1);
    if (!p) pk_fail(PK_ERR_NOMEM, "out of memory allocating %.3g MiB", (double)n * size / 1048576.0);
    return p;
}

void *pk_calloc(size_t n, size_t size)
{
    /* calloc, not malloc + memset: large zeroed blocks come from fresh pages
     * and are not touched until used (a huge size declared by a file costs
     * nothing until the file is found short) */
    if (size && n > SIZE_MAX / size) {
        pk_fail(PK_ERR_NOMEM, "allocation of %zu x %zu bytes overflows", n, size);
        return NULL;
    }
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) pk_fail(PK_ERR_NOMEM, "out of memory allocating %.3g MiB", (double)n * size / 1048576.0);
    return p;
}

char *pk_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = pk_alloc(n, 1);
    if (d) memcpy(d, s, n);
    return d;
}

char *pk_path_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = pk_alloc(a + b + 2, 1);
    if (!p) return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

pk_status pk_atomic_open(pk_atomic *a, const char *path)
{
    memset(a, 0, sizeof *a);
    a->path = pk_strdup(path);
    a->tmp = pk_alloc(strlen(path) + 32, 1);
    if (!a->path || !a->tmp) { free(a->path); free(a->tmp); return PK_ERR_NOMEM; }
    sprintf(a->tmp, "%s.tmp.%ld", path, (long)getpid());
    a->f = fopen(a->tmp, "wb");
    if (!a->f) {
        pk_status s = pk_fail(PK_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
        free(a->path); free(a->tmp);
        a->path = a->tmp = NULL;
        return s;
    }
    return PK_OK;
}

pk_status pk_atomic_commit(pk_atomic *a)
{
    /* No fsync: rename is atomic, so a killed process never leaves a half
     * file under the final name; surviving power loss is not promised (an
     * fsync per checkpoint cost 15% of training time). */
    int bad = ferror(a->f) || fflush(a->f) != 0;
    int err = errno;
    if (fclose(a->f) != 0 && !bad) { bad = 1; err = errno; }
    a->f = NULL;
    if (!bad && rename(a->tmp, a->path) != 0) { bad = 1; err = errno; }
    pk_status s = PK_OK;
    if (bad) {
        s = pk_fail(PK_ERR_IO, "%s: write failed: %s (nothing was written under that name)",
                    a->path, strerror(err ? err : EIO));
        unlink(a->tmp);
    }
    free(a->path); free(a->tmp);
    a->path = a->tmp = NULL;
    return s;
}

void pk_atomic_abort(pk_atomic *a)
{
    if (a->f) fclose(a->f);
    if (a->tmp) unlink(a->tmp);
    free(a->path); free(a->tmp);
    memset(a, 0, sizeof *a);
}

pk_status pk_write_file(const char *path, const void *buf, size_t len)
{
    pk_atomic a;
    pk_status s = pk_atomic_open(&a, path);
    if (s) return s;
    if (len && fwrite(buf, 1, len, a.f) != len) {
        s = pk_fail(PK_ERR_IO, "%s: write failed: %s", path, strerror(errno));
        pk_atomic_abort(&a);
        return s;
    }
    return pk_atomic_commit(&a);
}

static pk_status read_impl(const char *path, int gunzip, size_t max, int prefix, unsigned char **buf, size_t *len);

pk_status pk_read_file(const char *path, int gunzip, size_t max, unsigned char **buf, size_t *len)
{
    return read_impl(path, gunzip, max, 0, buf, len);
}

pk_status pk_read_prefix(const char *path, int gunzip, size_t n, unsigned char **buf, size_t *len)
{
    return read_impl(path, gunzip, n, 1, buf, len);
}

static pk_status read_impl(const char *path, int gunzip, size_t max, int prefix, unsigned char **buf, size_t *len)
{
    *buf = NULL;
    *len = 0;
    if (!max) max = (size_t)4 << 30;
    int fd = open(path, O_RDONLY);
    /* an input that cannot be opened is the caller's bad input (exit 2) */
    if (fd < 0) return pk_fail(PK_ERR_INPUT, "%s: cannot open: %s", path, strerror(errno));
    gzFile g = NULL;
    FILE *f = NULL;
    if (gunzip) {
        g = gzdopen(fd, "rb");
        if (!g) { close(fd); return pk_fail(PK_ERR_NOMEM, "%s: cannot open gzip stream", path); }
        gzbuffer(g, 1 << 17);
    } else {
        f = fdopen(fd, "rb");
        if (!f) { close(fd); return pk_fail(PK_ERR_IO, "%s: cannot open: %s", path, strerror(errno)); }
    }
    size_t cap = prefix && max < (1 << 16) ? max : 1 << 16, n = 0;
    unsigned char *b = malloc(cap + 1);
    pk_status s = PK_OK;
    if (!b) s = pk_fail(PK_ERR_NOMEM, "%s: out of memory", path);
    while (!s) {
        if (n == cap) {
            if (prefix && n >= max) break;
            if (cap >= max) {
                s = pk_fail(PK_ERR_INPUT, "%s: larger than the limit of %zu bytes", path, max);
                break;
            }
            size_t nc = cap * 2 > max ? max : cap * 2;
            unsigned char *nb = realloc(b, nc + 1);
            if (!nb) { s = pk_fail(PK_ERR_NOMEM, "%s: out of memory at %zu bytes", path, cap); break; }
            b = nb;
            cap = nc;
        }
        size_t want = cap - n;
        if (want > (1u << 30)) want = 1u << 30;
        if (g) {
            int r = gzread(g, b + n, (unsigned)want);
            if (r < 0) {
                int zerr;
                const char *msg = gzerror(g, &zerr);
                s = pk_fail(PK_ERR_INPUT, "%s: corrupt gzip data near uncompressed byte %zu: %s", path, n, msg);
                break;
            }
            if (r == 0) {
                int zerr;
                const char *msg = gzerror(g, &zerr);
                if (zerr != Z_OK && zerr != Z_STREAM_END)
                    s = pk_fail(PK_ERR_INPUT, "%s: corrupt gzip data near uncompressed byte %zu: %s", path, n, msg);
                else if (!gzeof(g))
                    s = pk_fail(PK_ERR_INPUT, "%s: truncated gzip data after %zu uncompressed bytes", path, n);
                break;
            }
            n += (size_t)r;
        } else {
            size_t r = fread(b + n, 1, want, f);
            n += r;
            if (r < want) {
                if (ferror(f)) s = pk_fail(PK_ERR_IO, "%s: read error: %s", path, strerror(errno));
                break;
            }
        }
    }
    if (g) {
        int rc = gzclose(g);
        if (!s && rc == Z_BUF_ERROR)
            s = pk_fail(PK_ERR_INPUT, "%s: truncated gzip file (ends in the middle of a stream)", path);
    }
    if (f) fclose(f);
    if (s) { free(b); return s; }
    b[n] = 0;
    *buf = b;
    *len = n;
    return PK_OK;
}

int pk_parse_double(const char *s, double *v)
{
    if (!s || !*s) return -1;
    char *end;
    errno = 0;
    double x = strtod(s, &end);
    if (*end || end == s || !isfinite(x)) return -1;
    *v = x;
    return 0;
}

int pk_parse_size(const char *s, size_t *v)
{
    if (!s || !*s || *s == '-' || *s == '+') return -1;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 10);
    if (*end || end == s || errno == ERANGE || x > SIZE_MAX) return -1;
    *v = (size_t)x;
    return 0;
}

uint64_t pk_hash_bytes(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

pk_status pk_mkdirs(const char *dir)
{
    char *p = pk_strdup(dir);
    if (!p) return PK_ERR_NOMEM;
    for (char *c = p + 1; ; c++) {
        if (*c == '/' || !*c) {
            char keep = *c;
            *c = 0;
            if (mkdir(p, 0777) != 0 && errno != EEXIST) {
                pk_status s = pk_fail(PK_ERR_IO, "%s: cannot create directory: %s", p, strerror(errno));
                free(p);
                return s;
            }
            *c = keep;
            if (!keep) break;
        }
    }
    free(p);
    return PK_OK;
}
