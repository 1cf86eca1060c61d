/* fuzz_ckpt -- the weights checkpoint reader pk_ckpt_read (src/run/checkpoint.c). The
 * input gets a valid crc32 trailer appended (else nearly every input would
 * stop at the checksum) and is also read as is. It is read with a fixed
 * expectation (step 3, P 4, S 1) and with the step, P and S its own header
 * claims, when they are small enough to allocate. */
#include "fuzz_common.h"
#include "kernel/kernel.h"

static void read_one(const char *path, const uint8_t *data, size_t size)
{
    double w[4], st[4];
    (void)pk_ckpt_read(path, 3, 4, w, 1, st);
    if (size >= 40) {
        uint64_t h[3];
        memcpy(h, data + 16, 24);
        if (h[1] <= 4096 && h[2] <= 4 && (h[1] || h[2])) {
            double *ww = malloc((h[1] + 1) * sizeof *ww);
            double *ss = malloc((h[1] * h[2] + 1) * sizeof *ss);
            if (!ww || !ss) abort();
            (void)pk_ckpt_read(path, (size_t)h[0], (size_t)h[1], ww, (size_t)h[2], ss);
            free(ww);
            free(ss);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[512];
    unsigned char *c = fuzz_with_crc(data, size);
    fuzz_write("in.pkw", c, size + 4, path, sizeof path);
    free(c);
    read_one(path, data, size);
    fuzz_write("raw.pkw", data, size, path, sizeof path);
    read_one(path, data, size);
    return 0;
}
