/* fuzz_npy -- the .npy parser: pk_npy_parse (src/io/io.h) on the
 * bytes in memory, then the npy: data spec of pk_data_load (which reads
 * files) with the input as the features and a fixed valid targets file, and
 * as the targets with fixed valid features. */
#include "fuzz_common.h"
#include <pathkernel.h>
#include "io/io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    double *a = NULL;
    size_t nd, shape[PK_NPY_MAX_DIM];
    if (pk_npy_parse("fuzz.npy", data, size, &a, &nd, shape) == PK_OK) free(a);

    static const double xv[6] = { 1, 2, 3, 4, 5, 6 }, yv[2] = { 0, 1 };
    unsigned char buf[256];
    char in[512], fixed[512], spec[1100];
    pk_data d;
    fuzz_write("in.npy", data, size, in, sizeof in);

    size_t n = npy_image(buf, "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", yv, 2);
    fuzz_write("y.npy", buf, n, fixed, sizeof fixed);
    snprintf(spec, sizeof spec, "npy:%s,%s", in, fixed);
    if (pk_data_load(spec, NULL, &d) == PK_OK) pk_data_free(&d);

    n = npy_image(buf, "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }", xv, 6);
    fuzz_write("x.npy", buf, n, fixed, sizeof fixed);
    snprintf(spec, sizeof spec, "npy:%s,%s", fixed, in);
    if (pk_data_load(spec, NULL, &d) == PK_OK) pk_data_free(&d);
    return 0;
}
