/* quad.c -- the quadrature rules of Jbar along a step (MATH.md section 3):
 * left, mid, Gauss-Legendre gl1..gl8, and the exact rule's nodes per piece
 * (MATH.md section 12). Below every sweep that takes a rule (path.c,
 * backward.c, path_kernel.c, kinks.c). */
#include "kernel/kernel.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* Gauss-Legendre nodes and weights on [0, 1] by Newton's method on P_K. */
static void gauss_legendre(size_t K, double *s, double *c)
{
    for (size_t i = 0; i < K; i++) {
        double x = cos(M_PI * ((double)i + 0.75) / ((double)K + 0.5)), dp = 1;
        for (int it = 0; it < 100; it++) {
            double p0 = 1, p1 = x;
            for (size_t k = 2; k <= K; k++) {
                double p2 = ((2.0 * (double)k - 1) * x * p1 - ((double)k - 1) * p0) / (double)k;
                p0 = p1;
                p1 = p2;
            }
            dp = (double)K * (x * p1 - p0) / (x * x - 1);
            double dx = p1 / dp;
            x -= dx;
            if (fabs(dx) < 1e-16) break;
        }
        s[K - 1 - i] = 0.5 * (x + 1);
        c[K - 1 - i] = 1.0 / ((1 - x * x) * dp * dp);  /* (2 / ((1-x^2) P'^2)) / 2 */
    }
}

pk_status pk_quad_parse(const char *name, pk_quad *q)
{
    memset(q, 0, sizeof *q);
    if (!strcmp(name, "left")) { q->n = 1; q->s[0] = 0; q->c[0] = 1; }
    else if (!strcmp(name, "mid")) { q->n = 1; q->s[0] = 0.5; q->c[0] = 1; }
    else if (!strncmp(name, "gl", 2) && name[2] >= '1' && name[2] <= '8' && !name[3]) {
        q->n = (size_t)(name[2] - '0');
        gauss_legendre(q->n, q->s, q->c);
    } else if (!strcmp(name, "exact")) q->exact = 1;
    else if (!strncmp(name, "exact:", 6) && name[6] >= '1' && name[6] <= '8' && !name[7]) {
        q->exact = 1;
        q->per_piece = (size_t)(name[6] - '0');
    } else {
        return pk_fail(PK_ERR_INPUT, "unknown quadrature rule '%s' (use left, mid, gl1..gl8, or exact / exact:K "
                       "for piecewise-linear networks: split at the kinks, K nodes per piece)", name);
    }
    snprintf(q->name, sizeof q->name, "%s", name);
    return PK_OK;
}

int pk_quad_given(const pk_quad *q) { return q && (q->n || q->exact); }

size_t pk_quad_piece_nodes(const pk_quad *q, const pk_model *m, int kernel)
{
    if (!q->exact) return 0;
    if (q->per_piece) return q->per_piece;
    size_t L = m->n_weight, k = kernel ? L : (L + 1) / 2;
    return k < 1 ? 1 : k > (kernel ? PK_PIECE_NODES : 8) ? (kernel ? PK_PIECE_NODES : 8) : k;
}

size_t pk_quad_rows(const pk_quad *q, size_t Qb) { return q->exact && Qb < PK_PIECE_ROWS ? PK_PIECE_ROWS : Qb; }

void pk_gauss_legendre(size_t K, double *s, double *c) { gauss_legendre(K, s, c); }
