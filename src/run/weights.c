/* weights.c -- weights in and out as .npy files in nn.Linear's layout. */
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

/* Files W1.npy, b1.npy, W2.npy, ... for the dense layers in order, with
 * the forward scales applied (the effective weights). */
pk_status pk_model_weights_write(const pk_model *m, const double *w, const char *dir)
{
    pk_status s = pk_mkdirs(dir);
    for (size_t l = 0; l < m->n_weight && !s; l++) {
        const pk_layer *lw = pk_model_weight(m, l);
        if (lw->ops != &pk_dense_ops) return pk_fail(PK_ERR_INPUT, "weights of %s layers have no file layout yet", lw->ops->kind);
        size_t dout = lw->out, din = lw->in;
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
            size_t shape[2] = {dout, din};
            s = p ? pk_npy_write(p, buf, part ? 1 : 2, shape) : PK_ERR_NOMEM;
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
        if (lw->ops != &pk_dense_ops) return pk_fail(PK_ERR_INPUT, "weights of %s layers have no file layout yet", lw->ops->kind);
        size_t dout = lw->out, din = lw->in;
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
            int ok = part ? (nd == 1 && shape[0] == dout) : (nd == 2 && shape[0] == dout && shape[1] == din);
            if (!ok) {
                if (!part) s = pk_fail(PK_ERR_INPUT, "%s: expected shape (%zu, %zu), as nn.Linear(%zu, %zu).weight", p, dout, din, din, dout);
                else s = pk_fail(PK_ERR_INPUT, "%s: expected shape (%zu,), as nn.Linear(%zu, %zu).bias", p, dout, din, dout);
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
