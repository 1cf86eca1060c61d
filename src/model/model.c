/* model.c -- multilayer perceptrons: spec parsing, initialisation, forward
 * and backward passes, and the per-output deltas that tangent kernels need
 * (MATH.md section 4). Weights are one flat vector; layer l owns
 * W_l (dims[l+1], dims[l]) at w_off[l] and c_l (dims[l+1]) at b_off[l]. */
#include "model/model.h"

#include <math.h>
#include <string.h>

static const char *const act_names[] = {"identity", "tanh", "relu", "sigmoid", "softplus", "gelu", "erf"};

const char *pk_act_name(pk_act a) { return a <= PK_ACT_ERF ? act_names[a] : "?"; }

pk_status pk_act_parse(const char *s, pk_act *a)
{
    for (int i = 0; i <= PK_ACT_ERF; i++)
        if (!strcmp(s, act_names[i])) { *a = (pk_act)i; return PK_OK; }
    if (!strcmp(s, "linear") || !*s) { *a = PK_ACT_IDENTITY; return PK_OK; }
    return pk_fail(PK_ERR_INPUT, "unknown activation '%s' (use identity, tanh, relu, sigmoid, softplus, gelu or erf)", s);
}

pk_status pk_mlp_parse(const char *spec, size_t d_in, size_t d_out, pk_param param,
                       double sigma_w, double sigma_b, pk_mlp *m)
{
    memset(m, 0, sizeof *m);
    m->param = param;
    m->sigma_w = sigma_w;
    m->sigma_b = sigma_b;
    m->act = PK_ACT_IDENTITY;
    if (!d_in || !d_out) return pk_fail(PK_ERR_INPUT, "model needs at least one input and one output");
    if (param == PK_PARAM_NTK && !(sigma_w > 0 && isfinite(sigma_w) && sigma_b >= 0 && isfinite(sigma_b)))
        return pk_fail(PK_ERR_INPUT, "ntk parameterisation needs sigma_w > 0 and sigma_b >= 0");
    size_t hidden[PK_MAX_LAYERS], nh = 0;
    if (strcmp(spec, "linear") != 0) {
        if (strncmp(spec, "mlp:", 4) != 0)
            return pk_fail(PK_ERR_INPUT, "model '%s': expected mlp:H1,H2,...:ACT (e.g. mlp:64,64:tanh) or linear", spec);
        const char *p = spec + 4;
        const char *colon = strchr(p, ':');
        if (!colon)
            return pk_fail(PK_ERR_INPUT, "model '%s': missing ':ACT' after the widths (e.g. mlp:64:tanh)", spec);
        while (p < colon) {
            char *end;
            if (*p < '0' || *p > '9')
                return pk_fail(PK_ERR_INPUT, "model '%s': width at offset %zu is not a positive integer", spec, (size_t)(p - spec));
            unsigned long long h = strtoull(p, &end, 10);
            if (h == 0 || h > (1u << 24))
                return pk_fail(PK_ERR_INPUT, "model '%s': width %llu out of range 1..16777216", spec, h);
            if (nh == PK_MAX_LAYERS - 1)
                return pk_fail(PK_ERR_INPUT, "model '%s': at most %d hidden layers", spec, PK_MAX_LAYERS - 1);
            hidden[nh++] = (size_t)h;
            p = end;
            if (p < colon) {
                if (*p != ',') return pk_fail(PK_ERR_INPUT, "model '%s': widths must be separated by ','", spec);
                p++;
                if (p == colon) return pk_fail(PK_ERR_INPUT, "model '%s': trailing ',' in the widths", spec);
            }
        }
        pk_status s = pk_act_parse(colon + 1, &m->act);
        if (s) return pk_fail(s, "model '%s': %s", spec, pk_last_error());
    }
    m->n_layers = nh + 1;
    m->dims[0] = d_in;
    for (size_t i = 0; i < nh; i++) m->dims[i + 1] = hidden[i];
    m->dims[nh + 1] = d_out;
    size_t off = 0;
    for (size_t l = 0; l < m->n_layers; l++) {
        size_t wn = m->dims[l + 1] * m->dims[l];
        if (m->dims[l] && wn / m->dims[l] != m->dims[l + 1]) return pk_fail(PK_ERR_INPUT, "model too large");
        m->w_off[l] = off;
        m->b_off[l] = off + wn;
        off += wn + m->dims[l + 1];
        if (off > ((size_t)1 << 34)) return pk_fail(PK_ERR_INPUT, "model '%s' has more than 2^34 parameters", spec);
    }
    m->n_params = off;
    return PK_OK;
}

void pk_mlp_spec(const pk_mlp *m, char *buf, size_t len)
{
    if (m->n_layers == 1 && m->act == PK_ACT_IDENTITY) { snprintf(buf, len, "linear"); return; }
    size_t k = (size_t)snprintf(buf, len, "mlp:");
    for (size_t l = 1; l < m->n_layers && k < len; l++)
        k += (size_t)snprintf(buf + k, len - k, "%s%zu", l > 1 ? "," : "", m->dims[l]);
    if (k < len) snprintf(buf + k, len - k, ":%s", pk_act_name(m->act));
}

double pk_mlp_wscale(const pk_mlp *m, size_t l)
{
    return m->param == PK_PARAM_NTK ? m->sigma_w / sqrt((double)m->dims[l]) : 1.0;
}

double pk_mlp_bscale(const pk_mlp *m, size_t l)
{
    (void)l;
    return m->param == PK_PARAM_NTK ? m->sigma_b : 1.0;
}

void pk_mlp_init(const pk_mlp *m, uint64_t seed, double *w)
{
    pk_rng r;
    pk_rng_seed(&r, seed);
    for (size_t l = 0; l < m->n_layers; l++) {
        size_t n = m->dims[l + 1] * (m->dims[l] + 1); /* W_l then c_l, contiguous */
        double *p = w + m->w_off[l];
        if (m->param == PK_PARAM_NTK) {
            for (size_t i = 0; i < n; i++) p[i] = pk_rng_normal(&r);
        } else {
            double bound = 1.0 / sqrt((double)m->dims[l]);
            for (size_t i = 0; i < n; i++) p[i] = bound * (2.0 * pk_rng_uniform(&r) - 1.0);
        }
    }
}

/* ------------------------------------------------------------ activations */

static inline double act_f(pk_act a, double z)
{
    switch (a) {
    case PK_ACT_IDENTITY: return z;
    case PK_ACT_TANH: return tanh(z);
    case PK_ACT_RELU: return z > 0 ? z : 0.0;
    case PK_ACT_SIGMOID: return 1.0 / (1.0 + exp(-z));
    case PK_ACT_SOFTPLUS: return z > 0 ? z + log1p(exp(-z)) : log1p(exp(z));
    case PK_ACT_GELU: return 0.5 * z * (1.0 + erf(z * M_SQRT1_2));
    case PK_ACT_ERF: return erf(z);
    }
    return z;
}

#if defined(__x86_64__) && defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 35)
#include <immintrin.h>
/* glibc's libmvec: tanh on two (SSE) or four (AVX2) doubles, within 4 ulp,
 * 3x and 5x faster than the scalar call (measured); the AVX2 one when the
 * CPU has it (one choice per machine, so results stay reproducible there). */
__m128d _ZGVbN2v_tanh(__m128d);
__attribute__((target("avx2"))) __m256d _ZGVdN4v_tanh(__m256d);
#define PK_HAVE_MVEC 1

__attribute__((target("avx2"))) static size_t tanh_avx2(const double *z, double *y, size_t n)
{
    size_t i = 0;
    for (; i + 4 <= n; i += 4) _mm256_storeu_pd(y + i, _ZGVdN4v_tanh(_mm256_loadu_pd(z + i)));
    return i;
}
#endif

/* y = act(z) over a row of n values. */
static void act_row(pk_act a, const double *z, double *y, size_t n)
{
    size_t i = 0;
#ifdef PK_HAVE_MVEC
    if (a == PK_ACT_TANH) {
        if (__builtin_cpu_supports("avx2")) i = tanh_avx2(z, y, n);
        for (; i + 2 <= n; i += 2) _mm_storeu_pd(y + i, _ZGVbN2v_tanh(_mm_loadu_pd(z + i)));
    }
#endif
    for (; i < n; i++) y[i] = act_f(a, z[i]);
}

/* Derivative from the pre-activation z and the activation value y = act(z). */
static inline double act_df(pk_act a, double z, double y)
{
    switch (a) {
    case PK_ACT_IDENTITY: return 1.0;
    case PK_ACT_TANH: return 1.0 - y * y;
    case PK_ACT_RELU: return z > 0 ? 1.0 : 0.0;
    case PK_ACT_SIGMOID: return y * (1.0 - y);
    case PK_ACT_SOFTPLUS: return 1.0 / (1.0 + exp(-z));
    case PK_ACT_GELU: return 0.5 * (1.0 + erf(z * M_SQRT1_2)) + z * exp(-0.5 * z * z) * 0.3989422804014327;
    case PK_ACT_ERF: return M_2_SQRTPI * exp(-z * z);
    }
    return 1.0;
}

/* ------------------------------------------------------------------ tape */

pk_tape *pk_tape_new(const pk_mlp *m, size_t cap)
{
    pk_tape *t = pk_calloc(1, sizeof *t);
    if (!t) return NULL;
    t->cap = cap;
    size_t L = m->n_layers;
    for (size_t l = 0; l < L; l++) {
        size_t d = m->dims[l + 1];
        t->z[l] = pk_alloc(cap, d * sizeof(double));
        t->delta[l] = pk_alloc(cap, d * sizeof(double));
        /* a[l+1] = act(z[l]); the last layer has no activation: alias. */
        t->a[l + 1] = l + 1 < L ? pk_alloc(cap, d * sizeof(double)) : t->z[l];
        if (!t->z[l] || !t->delta[l] || !t->a[l + 1]) { pk_tape_free(t); return NULL; }
    }
    return t;
}

void pk_tape_free(pk_tape *t)
{
    if (!t) return;
    for (size_t l = 0; l < PK_MAX_LAYERS; l++) {
        if (t->a[l + 1] && t->a[l + 1] != t->z[l]) free(t->a[l + 1]);
        free(t->z[l]);
        free(t->delta[l]);
    }
    free(t);
}

/* --------------------------------------------------------------- passes */

/* z[l] += sb * c_l when c is given (z[l] holds the product with W_l), then
 * a[l+1] = act(z[l]) (the output layer has none). */
static void finish_layer(const pk_mlp *m, const double *c, pk_tape *t, size_t l)
{
    size_t n = t->n, dout = m->dims[l + 1];
    double sb = pk_mlp_bscale(m, l), *z = t->z[l], *a = t->a[l + 1];
    int last = l + 1 == m->n_layers;
    #pragma omp parallel for schedule(static) if (n * dout >= PK_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        double *zi = z + i * dout;
        if (c)
            for (size_t j = 0; j < dout; j++) zi[j] += sb * c[j];
        if (!last) act_row(m->act, zi, a + i * dout, dout);
    }
}

/* Layers from..L-1, with a[from] in place. */
static void forward_layers(const pk_mlp *m, const double *w, pk_tape *t, size_t from)
{
    for (size_t l = from; l < m->n_layers; l++) {
        size_t din = m->dims[l], dout = m->dims[l + 1];
        /* z (n, dout) = sw * a (n, din) W^T + sb * c */
        (t->queries ? pk_gemm_rows : pk_gemm)(0, 1, t->n, dout, din, pk_mlp_wscale(m, l), t->a[l], din,
                                              w + m->w_off[l], din, 0.0, t->z[l], dout);
        finish_layer(m, w + m->b_off[l], t, l);
    }
}

void pk_mlp_forward(const pk_mlp *m, const double *w, const double *x, size_t n, pk_tape *t)
{
    t->n = n;
    t->a[0] = (double *)x; /* the input is borrowed, never written */
    forward_layers(m, w, t, 0);
}

void pk_mlp_forward_after_first(const pk_mlp *m, const double *w, pk_tape *t)
{
    finish_layer(m, NULL, t, 0);
    forward_layers(m, w, t, 1);
}

/* g (n, dout) times W_l (dout, din) times sw into out (n, din), then the
 * Hadamard product with act'(z_{l-1}) row by row: the backward step through
 * layer l. */
static void back_through(const pk_mlp *m, const double *w, const pk_tape *t, size_t l,
                         const double *g, size_t rows, double *out)
{
    size_t din = m->dims[l], dout = m->dims[l + 1];
    (t->queries ? pk_gemm_rows : pk_gemm)(0, 0, rows, din, dout, pk_mlp_wscale(m, l), g, dout, w + m->w_off[l],
                                          din, 0.0, out, din);
    const double *z = t->z[l - 1], *a = t->a[l];
    #pragma omp parallel for schedule(static) if (rows * din >= PK_PAR_MIN)
    for (size_t r = 0; r < rows; r++) {
        double *o = out + r * din;
        for (size_t j = 0; j < din; j++) o[j] *= act_df(m->act, z[r * din + j], a[r * din + j]);
    }
}

void pk_mlp_backward(const pk_mlp *m, const double *w, pk_tape *t, const double *R,
                     double scale, double *grad)
{
    size_t L = m->n_layers, n = t->n;
    memcpy(t->delta[L - 1], R, n * m->dims[L] * sizeof(double));
    for (size_t l = L; l-- > 0;) {
        size_t din = m->dims[l], dout = m->dims[l + 1];
        const double *delta = t->delta[l];
        if (grad) {
            /* dW (dout, din) = scale * sw * delta^T a ; dc = scale * sb * sum_i delta_i */
            pk_gemm(1, 0, dout, din, n, scale * pk_mlp_wscale(m, l), delta, dout, t->a[l], din, 0.0, grad + m->w_off[l], din);
            double *gc = grad + m->b_off[l], sb = scale * pk_mlp_bscale(m, l);
            for (size_t j = 0; j < dout; j++) gc[j] = 0.0;
            for (size_t i = 0; i < n; i++)
                for (size_t j = 0; j < dout; j++) gc[j] += delta[i * dout + j];
            for (size_t j = 0; j < dout; j++) gc[j] *= sb;
        }
        if (l > 0) back_through(m, w, t, l, delta, n, t->delta[l - 1]);
    }
}

void pk_mlp_act_grad(const pk_mlp *m, const pk_tape *t, size_t l, double *out)
{
    size_t n = t->n * m->dims[l + 1];
    for (size_t i = 0; i < n; i++) out[i] = act_df(m->act, t->z[l][i], t->a[l + 1][i]);
}

/* Per-output deltas of examples i0..i0+ne: layer L-2's from the output
 * weights and act'(z_{L-2}), then down through the layers, each GEMM on the
 * calling thread while the piece's rows are in cache. g (ne C, dims[L-1])
 * holds layer L-2's when delta_out does not keep them. */
static void output_deltas_piece(const pk_mlp *m, const double *w, const pk_tape *t, double *const *delta_out,
                                size_t i0, size_t ne, double *g)
{
    size_t L = m->n_layers, C = m->dims[L], rows = ne * C, d = m->dims[L - 1];
    const double *W = w + m->w_off[L - 1], *z = t->z[L - 2] + i0 * d, *a = t->a[L - 1] + i0 * d;
    double sw = pk_mlp_wscale(m, L - 1), *cur = delta_out[L - 2] ? delta_out[L - 2] + i0 * C * d : g;
    /* d f_c / d z_{L-2} = sw W_L[c,:] o act'(z_{L-2}) */
    for (size_t i = 0; i < ne; i++)
        for (size_t c = 0; c < C; c++)
            for (size_t k = 0; k < d; k++)
                cur[(i * C + c) * d + k] = (sw * W[c * d + k]) * act_df(m->act, z[i * d + k], a[i * d + k]);
    for (size_t l = L - 2; l > 0; l--) { /* layer l-1's rows: (cur W_l) sw o act'(z_{l-1}) */
        size_t din = m->dims[l], dout = m->dims[l + 1];
        double *next = delta_out[l - 1] + i0 * C * din;
        if (t->queries)
            pk_gemm_rows(0, 0, rows, din, dout, pk_mlp_wscale(m, l), cur, dout, w + m->w_off[l], din, 0.0, next, din);
        else
            pk_gemm_tile(0, 0, rows, din, dout, pk_mlp_wscale(m, l), cur, dout, w + m->w_off[l], din, next, din);
        const double *zl = t->z[l - 1] + i0 * din, *al = t->a[l] + i0 * din;
        for (size_t r = 0; r < rows; r++) {
            size_t i = r / C;
            double *o = next + r * din;
            for (size_t j = 0; j < din; j++) o[j] *= act_df(m->act, zl[i * din + j], al[i * din + j]);
        }
        cur = next;
    }
}

pk_status pk_mlp_output_deltas(const pk_mlp *m, const double *w, const pk_tape *t, double *const *delta_out)
{
    size_t L = m->n_layers, n = t->n, C = m->dims[L];
    double *top = delta_out[L - 1]; /* (n, C, C): d f_k / d z_L = e_k */
    if (top) {
        memset(top, 0, n * C * C * sizeof(double));
        for (size_t i = 0; i < n; i++)
            for (size_t k = 0; k < C; k++) top[(i * C + k) * C + k] = 1.0;
    }
    if (L < 2 || !n) return PK_OK;
    /* pieces of a fixed number of examples (never of the thread count) */
    size_t E = PK_PIECE_ROWS / C ? PK_PIECE_ROWS / C : 1, pieces = (n + E - 1) / E, wmax = 0;
    for (size_t l = 1; l < L; l++) wmax = m->dims[l] > wmax ? m->dims[l] : wmax;
    size_t g_len = delta_out[L - 2] ? 0 : E * C * m->dims[L - 1];
    int fail = 0;
    #pragma omp parallel if (pieces > 1 && n * C * wmax >= PK_PAR_MIN)
    {
        double *g = g_len ? pk_alloc(g_len, sizeof(double)) : NULL;
        if (g_len && !g) {
            #pragma omp atomic write
            fail = 1;
        }
        #pragma omp for schedule(dynamic, 1)
        for (size_t p = 0; p < pieces; p++)
            if (g || !g_len) output_deltas_piece(m, w, t, delta_out, p * E, n - p * E < E ? n - p * E : E, g);
        free(g);
    }
    return fail ? PK_ERR_NOMEM : PK_OK;
}

pk_status pk_predict(const pk_mlp *m, const double *w, const double *x, size_t n, double *f)
{
    size_t block = n < 1024 ? (n ? n : 1) : 1024, C = m->dims[m->n_layers];
    pk_tape *t = pk_tape_new(m, block);
    if (!t) return PK_ERR_NOMEM;
    t->queries = 1; /* a prediction never depends on the block it is in */
    for (size_t i = 0; i < n; i += block) {
        size_t b = n - i < block ? n - i : block;
        pk_mlp_forward(m, w, x + i * m->dims[0], b, t);
        memcpy(f + i * C, t->a[m->n_layers], b * C * sizeof(double));
    }
    pk_tape_free(t);
    return PK_OK;
}
