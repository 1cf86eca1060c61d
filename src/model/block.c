/* block.c -- the two kinds that make a sequence of layers more than a
 * chain (MATH.md section 9): the merge at the end of a residual block
 * (`add`: y = x + s, s the block's input or its projection, added by the
 * passes of model.c from the tape) and inverted dropout (`dropout:p`: y = x
 * at test time; in training y = x o m, m the example's mask, drawn from
 * (seed, step, example, layer, unit) by pk_dropout_mask). Both copy their
 * input here; what a mask or a skip adds is the passes' business, since
 * only they see the tape. */
#include "model/model.h"

#include <string.h>

static void copy_forward(const pk_layer *l, const double *w, const double *x, double *y, size_t n, pk_gemm_mode mode)
{
    (void)w; (void)mode;
    memcpy(y, x, n * l->out * sizeof *y);
}

static void copy_backward(const pk_layer *l, const double *w, const double *x, const double *y, const double *gy,
                          double *gx, size_t n, size_t per, pk_gemm_mode mode)
{
    (void)w; (void)x; (void)y; (void)mode;
    if (gx != gy) memmove(gx, gy, n * per * l->out * sizeof *gx);
}

const pk_layer_ops pk_add_ops = {.kind = "add", .forward = copy_forward, .backward = copy_backward};
const pk_layer_ops pk_dropout_ops = {.kind = "dropout", .forward = copy_forward, .backward = copy_backward};

/* splitmix64's finaliser (Steele, Lea and Flood 2014). */
static uint64_t mix(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void pk_dropout_mask(double p, uint64_t seed, uint64_t step, uint64_t example, uint64_t layer, size_t units,
                     double *mask)
{
    /* MATH.md section 9: key = mix(mix(mix(mix(seed) ^ step) ^ example) ^ layer);
     * unit u is kept when the top 53 bits of mix(key ^ u), as a fraction
     * in [0, 1), are >= p; a kept unit is scaled by 1 / (1 - p) */
    uint64_t key = mix(mix(mix(mix(seed) ^ step) ^ example) ^ layer);
    double keep = 1.0 / (1.0 - p);
    for (size_t u = 0; u < units; u++)
        mask[u] = (double)(mix(key ^ (uint64_t)u) >> 11) * 0x1p-53 >= p ? keep : 0.0;
}
