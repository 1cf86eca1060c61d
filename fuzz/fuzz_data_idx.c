/* fuzz_data_idx -- the IDX reader of pk_data_load (idx:IMAGES,LABELS; it
 * only reads files): the input as the images with a fixed valid labels file
 * (2 labels), and as the labels with fixed valid images (2 of 2x2), each
 * also with --first 1. */
#include "fuzz_common.h"
#include <pathkernel.h>

static void load(const char *img, const char *lab)
{
    char spec[1100];
    pk_data d;
    snprintf(spec, sizeof spec, "idx:%s,%s", img, lab);
    if (pk_data_load(spec, NULL, &d) == PK_OK) pk_data_free(&d);
    pk_load_opts lo = pk_load_opts_defaults();
    lo.first = 1;
    if (pk_data_load(spec, &lo, &d) == PK_OK) pk_data_free(&d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const unsigned char labels[] = { 0, 0, 8, 1, 0, 0, 0, 2, 3, 7 };
    static const unsigned char images[] = { 0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2,
                                            0, 64, 128, 255, 1, 2, 3, 4 };
    char in[512], fixed[512];
    fuzz_write("in.idx", data, size, in, sizeof in);
    fuzz_write("labels.idx", labels, sizeof labels, fixed, sizeof fixed);
    load(in, fixed);
    fuzz_write("images.idx", images, sizeof images, fixed, sizeof fixed);
    load(fixed, in);
    return 0;
}
