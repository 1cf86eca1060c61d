/* binfile.c -- the run directory's binary files: written straight through
 * to a temporary name with their crc32 kept on the way, read back whole
 * with magic, version and crc32 checked (formats in run/run.h). */
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


pk_status pk_bin_open(pk_bin *b, const char *path)
{
    b->crc = 0;
    b->s = pk_atomic_open(&b->a, path);
    return b->s;
}

void pk_bin_put(pk_bin *b, const void *src, size_t n)
{
    if (b->s) return;
    b->crc = pk_crc32(b->crc, src, n);
    if (n && fwrite(src, 1, n, b->a.f) != n) b->s = pk_write_error(b->a.path, errno);
}
void pk_bin_u32(pk_bin *b, uint32_t v) { pk_bin_put(b, &v, 4); }
void pk_bin_u64(pk_bin *b, uint64_t v) { pk_bin_put(b, &v, 8); }

pk_status pk_bin_finish(pk_bin *b)
{
    pk_bin_u32(b, b->crc);
    if (b->s) { pk_atomic_abort(&b->a); return b->s; }
    return pk_atomic_commit(&b->a);
}

/* Read a whole binary file and check its magic, version and crc32. */
pk_status pk_bin_read(const char *path, const char magic[8], unsigned char **buf, size_t *len)
{
    pk_status s = pk_read_file(path, 0, 0, buf, len);
    if (s) return s;
    if (*len < 20 || memcmp(*buf, magic, 8) != 0) {
        free(*buf);
        return pk_fail(PK_ERR_STATE, "%s: not a pathkernel %.6s file (wrong magic or too short)", path, magic);
    }
    uint32_t ver, crc, want;
    memcpy(&ver, *buf + 8, 4);
    if (ver != PK_RUN_VERSION) {
        free(*buf);
        return pk_fail(PK_ERR_STATE, "%s: format version %u, this build reads version %d", path, ver, PK_RUN_VERSION);
    }
    memcpy(&want, *buf + *len - 4, 4);
    crc = pk_crc32(0, *buf, *len - 4);
    if (crc != want) {
        free(*buf);
        return pk_fail(PK_ERR_STATE, "%s: checksum mismatch (file damaged or truncated)", path);
    }
    *len -= 4;
    return PK_OK;
}
