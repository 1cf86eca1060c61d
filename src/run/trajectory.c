/* trajectory.c -- RUN/trajectory.bin: learning rate, batch loss and batch of
 * every step. */
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

static const char TRAJ_MAGIC[8] = {'P', 'K', 'T', 'R', 'A', 'J', 0, 0};

pk_status pk_traj_write(const char *path, const pk_traj *tr)
{
    pk_bin b;
    size_t total = tr->off[tr->T];
    if (pk_bin_open(&b, path)) return b.s;
    pk_bin_put(&b, TRAJ_MAGIC, 8);
    pk_bin_u32(&b, PK_RUN_VERSION);
    pk_bin_u32(&b, 0);
    pk_bin_u64(&b, tr->T);
    pk_bin_u64(&b, tr->N);
    pk_bin_u64(&b, total);
    pk_bin_put(&b, tr->lr, tr->T * sizeof(double));
    pk_bin_put(&b, tr->loss, tr->T * sizeof(double));
    pk_bin_put(&b, tr->off, (tr->T + 1) * sizeof(uint64_t));
    if (total) pk_bin_put(&b, tr->idx, total * sizeof(uint32_t));
    return pk_bin_finish(&b);
}

/* The trajectory reader. With `expect` (T and N from run.json), the header
 * must declare exactly those sizes; in every case they must fit the file's
 * length before anything is allocated, and iota (N) is allocated only when a
 * step used the full batch. */
pk_status pk_traj_read_sized(const char *path, const size_t *expect, pk_traj *tr)
{
    memset(tr, 0, sizeof *tr);
    unsigned char *buf;
    size_t len;
    pk_status s = pk_bin_read(path, TRAJ_MAGIC, &buf, &len);
    if (s) return s;
    uint64_t h[3];
    if (len < 40) { free(buf); return pk_fail(PK_ERR_STATE, "%s: truncated header", path); }
    memcpy(h, buf + 16, 24);
    uint64_t T = h[0], N = h[1], total = h[2];
    if (expect && (T != expect[0] || N != expect[1])) {
        free(buf);
        return pk_fail(PK_ERR_STATE, "%s: records %llu steps of %llu examples, run.json says %zu and %zu", path,
                       (unsigned long long)T, (unsigned long long)N, expect[0], expect[1]);
    }
    if (T > (len / 24) || total > len / 4 || N > UINT32_MAX ||
        len != 40 + T * 16 + (T + 1) * 8 + total * 4) {
        free(buf);
        return pk_fail(PK_ERR_STATE, "%s: sizes in the header do not match the file", path);
    }
    tr->T = T;
    tr->N = N;
    tr->lr = pk_alloc(T + 1, sizeof(double));
    tr->loss = pk_alloc(T + 1, sizeof(double));
    tr->off = pk_alloc(T + 1, sizeof(uint64_t));
    tr->idx = pk_alloc(total + 1, sizeof(uint32_t));
    if (!tr->lr || !tr->loss || !tr->off || !tr->idx) { free(buf); pk_traj_free(tr); return PK_ERR_NOMEM; }
    const unsigned char *p = buf + 40;
    memcpy(tr->lr, p, T * 8); p += T * 8;
    memcpy(tr->loss, p, T * 8); p += T * 8;
    memcpy(tr->off, p, (T + 1) * 8); p += (T + 1) * 8;
    memcpy(tr->idx, p, total * 4);
    free(buf);
    int full = 0;
    for (size_t t = 0; t < T; t++) {
        if (tr->off[t + 1] < tr->off[t] || tr->off[t + 1] > total) { pk_traj_free(tr); return pk_fail(PK_ERR_STATE, "%s: batch offsets out of order at step %zu", path, t); }
        full |= tr->off[t + 1] == tr->off[t];
    }
    for (size_t k = 0; k < total; k++)
        if (tr->idx[k] >= N) {
            /* Fuzzing (fuzz_traj) found: the message read tr->idx[k] after
             * pk_traj_free had set tr->idx to NULL (a crash on any trajectory
             * with an out-of-range batch index). Keep the value first. */
            uint32_t bad = tr->idx[k];
            pk_traj_free(tr);
            return pk_fail(PK_ERR_STATE, "%s: batch index %u out of range", path, bad);
        }
    if (full) { /* only full-batch steps read iota: N of them */
        tr->iota = pk_alloc(N + 1, sizeof(uint32_t));
        if (!tr->iota) { pk_traj_free(tr); return PK_ERR_NOMEM; }
        for (size_t i = 0; i < N; i++) tr->iota[i] = (uint32_t)i;
    }
    return PK_OK;
}

pk_status pk_traj_read(const char *path, pk_traj *tr) { return pk_traj_read_sized(path, NULL, tr); }

void pk_traj_free(pk_traj *tr)
{
    free(tr->lr); free(tr->loss); free(tr->off); free(tr->idx); free(tr->iota);
    memset(tr, 0, sizeof *tr);
}
