/* fuzz_traj -- the trajectory reader pk_traj_read (src/run/trajectory.c), the input
 * with a valid crc32 trailer appended and as is. */
#include "fuzz_common.h"
#include "kernel/kernel.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[512];
    pk_traj tr;
    unsigned char *c = fuzz_with_crc(data, size);
    fuzz_write("in.bin", c, size + 4, path, sizeof path);
    free(c);
    if (pk_traj_read(path, &tr) == PK_OK) {
        /* what pk_run_weights relies on: every batch inside idx/iota */
        for (size_t t = 0; t < tr.T; t++) {
            uint64_t a = tr.off[t], b = tr.off[t + 1];
            const uint32_t *ix = b > a ? tr.idx + a : tr.iota;
            size_t nb = b > a ? (size_t)(b - a) : tr.N;
            /* first and last entry: ASan checks the range is inside the
             * buffer without walking a header-sized N (that timed out) */
            volatile uint32_t sum = 0;
            if (nb) sum += ix[0] + ix[nb - 1];
            (void)sum;
        }
        pk_traj_free(&tr);
    }
    fuzz_write("raw.bin", data, size, path, sizeof path);
    if (pk_traj_read(path, &tr) == PK_OK) pk_traj_free(&tr);
    return 0;
}
