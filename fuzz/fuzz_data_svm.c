/* fuzz_data_svm -- the svmlight reader of pk_data_load (src/io/data.c), fed the
 * input as PATH.svm and, gzipped, as PATH.svm.gz (the reader only reads files). */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return fuzz_text_format("in.svm", "in.svm.gz", data, size); }
