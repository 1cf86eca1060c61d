/* journal.c -- RUN/journal.bin, one checksummed record per finished step:
 * what makes a killed run resumable (train.c, pk_train_resume). */
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

static const char JOURNAL_MAGIC[8] = {'P', 'K', 'J', 'O', 'U', 'R', 'N', 'L'};

char *pk_journal_path(const char *dir) { return pk_path_join(dir, "journal.bin"); }

pk_status pk_journal_create(pk_journal *j, const char *dir)
{
    j->fd = -1;
    j->path = pk_journal_path(dir);
    if (!j->path) return PK_ERR_NOMEM;
    pk_bin b; /* the header, written atomically: a journal never lacks one */
    if (pk_bin_open(&b, j->path)) return b.s;
    pk_bin_put(&b, JOURNAL_MAGIC, 8);
    pk_bin_u32(&b, PK_RUN_VERSION);
    pk_bin_u32(&b, 0);
    uint64_t sizes[5] = {j->T, j->N, j->P, j->S, j->keep};
    pk_bin_put(&b, sizes, sizeof sizes);
    pk_status s = pk_bin_finish(&b);
    if (s) return s;
    j->fd = open(j->path, O_WRONLY | O_APPEND);
    if (j->fd < 0) return pk_fail(PK_ERR_IO, "%s: cannot open for appending: %s", j->path, strerror(errno));
    return PK_OK;
}

/* write(2) all n bytes, through signals and short writes. */
static pk_status write_all(int fd, const char *path, const unsigned char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return pk_fail(PK_ERR_IO, "%s: write failed: %s", path, strerror(w < 0 ? errno : EIO));
        p += w;
        n -= (size_t)w;
    }
    return PK_OK;
}

pk_status pk_journal_append(pk_journal *j, size_t step, double lr, double loss, uint64_t batch)
{
    unsigned char rec[PK_JOURNAL_REC]; /* step, lr, loss, batch hash, crc32 */
    uint64_t st = step;
    memcpy(rec, &st, 8);
    memcpy(rec + 8, &lr, 8);
    memcpy(rec + 16, &loss, 8);
    memcpy(rec + 24, &batch, 8);
    uint32_t crc = pk_crc32(0, rec, PK_JOURNAL_REC - 4);
    memcpy(rec + 32, &crc, 4);
    return write_all(j->fd, j->path, rec, sizeof rec); /* one write: in the kernel's hands once it returns */
}

pk_status pk_journal_open(pk_journal *j, const char *dir, size_t *k, size_t *ignored, double *lr, double *loss,
                          uint64_t *batch)
{
    j->fd = -1;
    *k = *ignored = 0;
    j->path = pk_journal_path(dir);
    if (!j->path) return PK_ERR_NOMEM;
    const size_t H = PK_JOURNAL_HDR, R = PK_JOURNAL_REC;
    size_t want = j->T < (SIZE_MAX - H) / R ? H + j->T * R : SIZE_MAX; /* no more than T records are read */
    unsigned char *buf;
    size_t len;
    pk_status s = pk_read_prefix(j->path, 0, want, &buf, &len);
    if (s) return s;
    uint64_t sizes[5], mine[5] = {j->T, j->N, j->P, j->S, j->keep};
    uint32_t ver, crc;
    if (len >= H) { memcpy(&ver, buf + 8, 4); memcpy(sizes, buf + 16, 40); memcpy(&crc, buf + H - 4, 4); }
    if (len < H || memcmp(buf, JOURNAL_MAGIC, 8) != 0 || crc != pk_crc32(0, buf, H - 4)) {
        free(buf);
        return pk_fail(PK_ERR_STATE, "%s: not a journal or its header (bytes 0..%zu) is damaged", j->path, H - 1);
    }
    if (ver != PK_RUN_VERSION || memcmp(sizes, mine, sizeof mine) != 0) {
        free(buf);
        return pk_fail(PK_ERR_STATE, "%s: header (version %u, %llu steps, %llu examples, %llu parameters) does not "
                       "match run.json (version %d, %zu steps, %zu examples, %zu parameters)", j->path, ver,
                       (unsigned long long)sizes[0], (unsigned long long)sizes[1], (unsigned long long)sizes[2],
                       PK_RUN_VERSION, j->T, j->N, j->P);
    }
    /* the complete records: each whole, its crc32 right and its step next in order */
    size_t n = 0;
    for (size_t o = H; o + R <= len; o += R, n++) {
        const unsigned char *rec = buf + o;
        uint64_t st;
        memcpy(&st, rec, 8);
        memcpy(&crc, rec + 32, 4);
        if (crc != pk_crc32(0, rec, R - 4) || st != n + 1) break;
        memcpy(&lr[n], rec + 8, 8);
        memcpy(&loss[n], rec + 16, 8);
        memcpy(&batch[n], rec + 24, 8);
    }
    struct stat sb;
    *k = n;
    *ignored = stat(j->path, &sb) == 0 && (size_t)sb.st_size > H + n * R ? (size_t)sb.st_size - H - n * R : 0;
    free(buf);
    j->fd = open(j->path, O_WRONLY | O_APPEND);
    if (j->fd < 0) return pk_fail(PK_ERR_IO, "%s: cannot open for appending: %s", j->path, strerror(errno));
    return PK_OK;
}

pk_status pk_journal_truncate(pk_journal *j, size_t k)
{
    if (ftruncate(j->fd, (off_t)(PK_JOURNAL_HDR + k * PK_JOURNAL_REC)) != 0)
        return pk_fail(PK_ERR_IO, "%s: cannot truncate: %s", j->path, strerror(errno));
    return PK_OK;
}

void pk_journal_close(pk_journal *j)
{
    if (j->fd >= 0) close(j->fd);
    j->fd = -1;
    free(j->path);
    j->path = NULL;
}
