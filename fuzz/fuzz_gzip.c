/* fuzz_gzip -- pk_read_file (src/base/util.c) with gunzip on (and off, and with a
 * small size bound) on the input as a file; pk_read_prefix too. */
#include "fuzz_common.h"
#include "kernel/kernel.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[512];
    unsigned char *buf;
    size_t len;
    fuzz_write("in.gz", data, size, path, sizeof path);
    if (pk_read_file(path, 1, 0, &buf, &len) == PK_OK) free(buf);
    if (pk_read_file(path, 1, 64, &buf, &len) == PK_OK) free(buf);
    if (pk_read_file(path, 0, 0, &buf, &len) == PK_OK) free(buf);
    if (pk_read_prefix(path, 1, 16, &buf, &len) == PK_OK) free(buf);
    return 0;
}
