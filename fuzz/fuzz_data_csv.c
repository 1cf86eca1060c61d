/* fuzz_data_csv -- the CSV reader of pk_data_load (src/data.c), fed the
 * input as PATH.csv and, gzipped, as PATH.csv.gz (the reader only reads
 * files). */
#include "fuzz_common.h"
#include <pathkernel.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[512];
    pk_data d;
    fuzz_write("in.csv", data, size, path, sizeof path);
    if (pk_data_load(path, NULL, &d) == PK_OK) {
        size_t C;
        (void)pk_data_classes(&d, &C);
        pk_data_free(&d);
    }
    size_t glen;
    unsigned char *gz = fuzz_gzip(data, size, &glen);
    fuzz_write("in.csv.gz", gz, glen, path, sizeof path);
    free(gz);
    pk_load_opts lo = pk_load_opts_defaults();
    lo.random = 2;
    lo.seed = size;
    if (pk_data_load(path, &lo, &d) == PK_OK) pk_data_free(&d);
    return 0;
}
