/* checkpoint.c -- weights and optimiser state after a step (RUN/weights/). */
#include "run/run.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <string.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

static const char CKPT_MAGIC[8] = {'P', 'K', 'W', 'E', 'I', 'G', 'H', 'T'};

char *pk_ckpt_path(const char *dir, size_t t)
{
    char name[64];
    snprintf(name, sizeof name, "weights/step-%08zu.pkw", t);
    return pk_path_join(dir, name);
}

pk_status pk_ckpt_write(const char *path, size_t step, size_t P, const double *w, size_t S, const double *state)
{
    pk_bin b;
    if (pk_bin_open(&b, path)) return b.s;
    pk_bin_put(&b, CKPT_MAGIC, 8);
    pk_bin_u32(&b, PK_RUN_VERSION);
    pk_bin_u32(&b, 0);
    pk_bin_u64(&b, step);
    pk_bin_u64(&b, P);
    pk_bin_u64(&b, S);
    pk_bin_put(&b, w, P * sizeof *w);
    if (S) pk_bin_put(&b, state, S * P * sizeof *state);
    return pk_bin_finish(&b);
}

/* Read exactly n bytes of fd into dst (NULL: read and drop them), adding
 * them to *crc. Returns 0, or -1 with errno set (0 for a short file). */
static int read_crc(int fd, void *dst, size_t n, uint32_t *crc)
{
    unsigned char drop[1 << 16], *p = dst;
    while (n) {
        size_t want = !p ? (n < sizeof drop ? n : sizeof drop) : n < (1u << 30) ? n : (1u << 30);
        ssize_t r = read(fd, p ? p : drop, want);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) { if (r == 0) errno = 0; return -1; }
        *crc = pk_crc32(*crc, p ? p : drop, (size_t)r);
        if (p) p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* A checkpoint of the expected size and header, read straight into w and
 * state (no copy of the file in memory). 1: the file is not of that shape,
 * read it the slow way for the precise reason. */
static int ckpt_read_direct(const char *path, size_t step, size_t P, double *w, size_t S, double *state,
                            pk_status *s)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 1;
    struct stat st;
    uint64_t hdr[5], want_hdr[5];
    uint32_t ver = PK_RUN_VERSION, zero = 0, want;
    memcpy(want_hdr, CKPT_MAGIC, 8);
    memcpy((char *)want_hdr + 8, &ver, 4);
    memcpy((char *)want_hdr + 12, &zero, 4);
    want_hdr[2] = step; want_hdr[3] = P; want_hdr[4] = S;
    uint32_t crc = 0;
    int slow = fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
               (uint64_t)st.st_size != sizeof hdr + (P + S * P) * sizeof(double) + 4 ||
               read_crc(fd, hdr, sizeof hdr, &crc) || memcmp(hdr, want_hdr, sizeof hdr) != 0;
    if (!slow) {
        uint32_t none = 0;
        if (read_crc(fd, w, P * sizeof *w, &crc) || read_crc(fd, state, S * P * sizeof *state, &crc) ||
            read_crc(fd, &want, 4, &none))
            *s = errno ? pk_fail(PK_ERR_IO, "%s: read error: %s", path, strerror(errno))
                       : pk_fail(PK_ERR_STATE, "%s: truncated while reading", path);
        else if (crc != want)
            *s = pk_fail(PK_ERR_STATE, "%s: checksum mismatch (file damaged or truncated)", path);
        else *s = PK_OK;
    }
    close(fd);
    return slow;
}

pk_status pk_ckpt_read(const char *path, size_t step, size_t P, double *w, size_t S, double *state)
{
    pk_status direct;
    if (!ckpt_read_direct(path, step, P, w, S, state, &direct)) return direct;
    unsigned char *buf;
    size_t len;
    pk_status s = pk_bin_read(path, CKPT_MAGIC, &buf, &len);
    if (s) return s;
    uint64_t hdr[3];
    if (len < 40) { free(buf); return pk_fail(PK_ERR_STATE, "%s: truncated header", path); }
    memcpy(hdr, buf + 16, 24);
    if (hdr[0] != step || hdr[1] != P || hdr[2] != S || len != 40 + (P + S * P) * sizeof(double)) {
        free(buf);
        return pk_fail(PK_ERR_STATE, "%s: holds step %llu with %llu parameters and %llu state vectors; expected step %zu, %zu and %zu",
                       path, (unsigned long long)hdr[0], (unsigned long long)hdr[1], (unsigned long long)hdr[2], step, P, S);
    }
    memcpy(w, buf + 40, P * sizeof *w);
    if (S && state) memcpy(state, buf + 40 + P * sizeof *w, S * P * sizeof *state);
    free(buf);
    return PK_OK;
}
