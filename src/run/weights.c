/* weights.c -- weights in and out as .npy files in nn.Linear's and
 * nn.Conv2d's layouts. */
#include "run/run.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <string.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

/* The shape of a layer's W file: (out, in) for dense, (c_out, c_in, kh,
 * kw) for conv2d; and the PyTorch module it is the weight of, for errors. */
static size_t w_shape(const pk_layer *l, size_t shape[4], char *module, size_t cap)
{
    if (l->ops == &pk_conv_ops) {
        shape[0] = l->c_out; shape[1] = l->c_in; shape[2] = l->kh; shape[3] = l->kw;
        snprintf(module, cap, "nn.Conv2d(%zu, %zu, %zu)", l->c_in, l->c_out, l->kh);
        return 4;
    }
    shape[0] = l->out; shape[1] = l->in;
    snprintf(module, cap, "nn.Linear(%zu, %zu)", l->in, l->out);
    return 2;
}

/* Files W1.npy, b1.npy, W2.npy, ... for the layers with parameters in
 * order, with the forward scales applied (the effective weights). */
pk_status pk_model_weights_write(const pk_model *m, const double *w, const char *dir)
{
    pk_status s = pk_mkdirs(dir);
    for (size_t l = 0; l < m->n_weight && !s; l++) {
        const pk_layer *lw = pk_model_weight(m, l);
        size_t shape[4], nd;
        char module[64];
        nd = w_shape(lw, shape, module, sizeof module);
        size_t dout = nd == 4 ? lw->c_out : lw->out, din = (lw->b_off - lw->w_off) / dout;
        double sw = lw->sw, sb = lw->sb;
        double *buf = pk_alloc(dout * din, sizeof *buf);
        if (!buf) return PK_ERR_NOMEM;
        char name[32];
        for (int part = 0; part < 2 && !s; part++) {
            size_t n = part ? dout : dout * din;
            const double *src = w + (part ? lw->b_off : lw->w_off);
            double sc = part ? sb : sw;
            for (size_t i = 0; i < n; i++) buf[i] = sc * src[i];
            snprintf(name, sizeof name, "%c%zu.npy", part ? 'b' : 'W', l + 1);
            char *p = pk_path_join(dir, name);
            s = p ? pk_npy_write(p, buf, part ? 1 : nd, part ? &dout : shape) : PK_ERR_NOMEM;
            free(p);
        }
        free(buf);
    }
    return s;
}

pk_status pk_model_weights_read(const pk_model *m, const char *dir, double *w)
{
    for (size_t l = 0; l < m->n_weight; l++) {
        const pk_layer *lw = pk_model_weight(m, l);
        size_t want[4], wnd;
        char module[64];
        wnd = w_shape(lw, want, module, sizeof module);
        size_t dout = want[0], din = (lw->b_off - lw->w_off) / dout;
        double sw = lw->sw, sb = lw->sb;
        for (int part = 0; part < 2; part++) {
            char name[32];
            snprintf(name, sizeof name, "%c%zu.npy", part ? 'b' : 'W', l + 1);
            char *p = pk_path_join(dir, name);
            if (!p) return PK_ERR_NOMEM;
            double *a;
            size_t nd, shape[8];
            pk_status s = pk_npy_read(p, &a, &nd, shape);
            if (s) { free(p); return s; }
            int ok = part ? (nd == 1 && shape[0] == dout) : nd == wnd;
            for (size_t k = 0; ok && !part && k < wnd; k++) ok = shape[k] == want[k];
            if (!ok) {
                char sh[64];
                size_t k = (size_t)snprintf(sh, sizeof sh, "(%zu", want[0]);
                for (size_t i = 1; i < wnd && k < sizeof sh; i++) k += (size_t)snprintf(sh + k, sizeof sh - k, ", %zu", want[i]);
                if (!part) s = pk_fail(PK_ERR_INPUT, "%s: expected shape %s), as %s.weight", p, sh, module);
                else s = pk_fail(PK_ERR_INPUT, "%s: expected shape (%zu,), as %s.bias", p, dout, module);
                free(a); free(p);
                return s;
            }
            size_t n = part ? dout : dout * din;
            double sc = part ? sb : sw;
            double *dst = w + (part ? lw->b_off : lw->w_off);
            for (size_t i = 0; i < n; i++) {
                if (!isfinite(a[i])) {
                    s = pk_fail(PK_ERR_INPUT, "%s: element %zu is not finite", p, i);
                    free(a); free(p);
                    return s;
                }
                if (sc == 0.0 && a[i] != 0.0) {
                    s = pk_fail(PK_ERR_INPUT, "%s: sigma_b is 0, so the biases must be 0", p);
                    free(a); free(p);
                    return s;
                }
                dst[i] = sc == 0.0 ? 0.0 : a[i] / sc;
            }
            free(a); free(p);
        }
    }
    return PK_OK;
}
