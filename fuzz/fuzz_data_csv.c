/* fuzz_data_csv -- the CSV reader of pk_data_load (src/io/data.c), fed the
 * input as PATH.csv and, gzipped, as PATH.csv.gz (the reader only reads files). */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return fuzz_text_format("in.csv", "in.csv.gz", data, size); }
