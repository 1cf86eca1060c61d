/* fuzz_number -- the CLI's number parsers pk_parse_double / pk_parse_size
 * (src/base/base.h) on a NUL-terminated copy of the input. */
#include "kernel/kernel.h"
#include <math.h>
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = fuzz_cstr(data, size);
    double v;
    size_t n;
    if (pk_parse_double(s, &v) == 0 && !isfinite(v)) abort();   /* documented: finite */
    (void)pk_parse_size(s, &n);
    free(s);
    return 0;
}
