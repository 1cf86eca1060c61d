/* fuzz_data_csv -- the CSV reader of pk_data_load (src/io/data.c), fed the
 * input as PATH.csv and, gzipped, as PATH.csv.gz (the reader only reads files);
 * then as PATH.tsv with the labels in the first column mapped through two
 * given classes (unseen ones allowed), and with a given separator ';' and a
 * label column named "y". */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_text_format("in.csv", "in.csv.gz", data, size);
    static const char *const classes[2] = {"a", "1"};
    char path[512];
    pk_data d;
    fuzz_write("in.tsv", data, size, path, sizeof path);
    pk_load_opts lo = pk_load_opts_defaults();
    lo.label_column = "0";
    lo.class_names = classes;
    lo.n_class_names = 2;
    lo.allow_unseen = 1;
    if (pk_data_load(path, &lo, &d) == PK_OK) pk_data_free(&d);
    lo = pk_load_opts_defaults();
    lo.sep = ';';
    lo.label_column = "y";
    if (pk_data_load(path, &lo, &d) == PK_OK) {
        size_t C;
        (void)pk_data_classes(&d, &C);
        pk_data_free(&d);
    }
    return 0;
}
