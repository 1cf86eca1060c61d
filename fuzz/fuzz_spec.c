/* fuzz_spec -- the spec-string parsers (pk_model_new, pk_act_parse,
 * pk_loss_parse, pk_optim_parse, pk_schedule_parse, pk_quad_parse,
 * pk_kernel_kind_parse, pk_si_form_parse) on a NUL-terminated copy of the
 * input; pk_model_spec prints back what pk_model_new accepted. */
#include <pathkernel.h>
#include <stdint.h>
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = fuzz_cstr(data, size);
    pk_model *m;
    char back[1024];
    for (int p = 0; p < 2; p++)
        if (pk_model_new(s, 3 + (size % 5), 1 + (size % 3), p ? PK_PARAM_NTK : PK_PARAM_STANDARD, 1.0, 0.5, &m) ==
            PK_OK) {
            pk_model_spec(m, back, sizeof back);
            pk_model_free(m);
        }
    pk_act a; pk_loss l; pk_optim_kind o; pk_schedule sc; pk_quad q; pk_kernel_kind k; pk_si_form f;
    (void)pk_act_parse(s, &a);
    (void)pk_loss_parse(s, &l);
    (void)pk_optim_parse(s, &o);
    (void)pk_schedule_parse(s, &sc);
    (void)pk_quad_parse(s, &q);
    (void)pk_kernel_kind_parse(s, &k);
    (void)pk_si_form_parse(s, &f);
    free(s);
    return 0;
}
