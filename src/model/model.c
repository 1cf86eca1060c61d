/* model.c -- models as sequences of layers (model.h): the spec, the
 * parameter blocks in one flat vector, and the passes over every layer:
 * forward, backward (loss deltas and the gradient) and the per-output
 * deltas tangent kernels need (MATH.md section 4). What a layer does is its
 * kind's business (dense.c, activation.c). */
#include "model/model.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------- spec */

/* Append a layer of `ops` mapping `in` values to `out`; its parameters, if
 * it has any, take the next n_w of the vector. */
static pk_layer *add_layer(pk_model *m, const pk_layer_ops *ops, size_t in, size_t out, size_t n_w)
{
    pk_layer *l = &m->layer[m->n_layers++];
    memset(l, 0, sizeof *l);
    l->ops = ops;
    l->in = in;
    l->out = out;
    l->n_w = n_w;
    l->w_off = m->n_params;
    l->src = m->n_layers - 1; /* the previous layer's output (slot k) */
    if (n_w) m->weight[m->n_weight++] = m->n_layers - 1;
    m->n_params += n_w;
    return l;
}

static pk_status add_dense(pk_model *m, const char *spec, size_t in, size_t out)
{
    size_t wn = out * in;
    if (in && wn / in != out) return pk_fail(PK_ERR_INPUT, "model too large");
    if (m->n_params + wn + out > ((size_t)1 << 34))
        return pk_fail(PK_ERR_INPUT, "model '%s' has more than 2^34 parameters", spec);
    pk_layer *l = add_layer(m, &pk_dense_ops, in, out, wn + out);
    l->b_off = l->w_off + wn;
    l->param = m->param;
    l->sw = m->param == PK_PARAM_NTK ? m->sigma_w / sqrt((double)in) : 1.0;
    l->sb = m->param == PK_PARAM_NTK ? m->sigma_b : 1.0;
    return PK_OK;
}

static void add_act(pk_model *m, pk_act act, double slope, size_t d)
{
    pk_layer *l = add_layer(m, &pk_act_ops, d, d, 0);
    l->act = act;
    l->slope = slope;
    l->in_place = 1;
}

static pk_status model_alloc(pk_param param, double sigma_w, double sigma_b, size_t d_in, size_t d_out,
                             pk_model **out)
{
    if (!d_in || !d_out) return pk_fail(PK_ERR_INPUT, "model needs at least one input and one output");
    if (param == PK_PARAM_NTK && !(sigma_w > 0 && isfinite(sigma_w) && sigma_b >= 0 && isfinite(sigma_b)))
        return pk_fail(PK_ERR_INPUT, "ntk parameterisation needs sigma_w > 0 and sigma_b >= 0");
    pk_model *m = pk_calloc(1, sizeof *m);
    if (!m) return PK_ERR_NOMEM;
    m->param = param;
    m->sigma_w = sigma_w;
    m->sigma_b = sigma_b;
    m->n_in = d_in;
    m->n_out = d_out;
    m->in_c = d_in;
    m->in_h = m->in_w = 1;
    *out = m;
    return PK_OK;
}

/* mlp:H1,H2,...:ACT and linear. */
static pk_status mlp_new(const char *spec, pk_model *m)
{
    enum { MAX_HIDDEN = 15 };
    size_t hidden[MAX_HIDDEN], nh = 0;
    pk_act act = PK_ACT_IDENTITY;
    double slope = 0.0;
    if (strcmp(spec, "linear") != 0) {
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
            if (nh == MAX_HIDDEN)
                return pk_fail(PK_ERR_INPUT, "model '%s': at most %d hidden layers", spec, MAX_HIDDEN);
            hidden[nh++] = (size_t)h;
            p = end;
            if (p < colon) {
                if (*p != ',') return pk_fail(PK_ERR_INPUT, "model '%s': widths must be separated by ','", spec);
                p++;
                if (p == colon) return pk_fail(PK_ERR_INPUT, "model '%s': trailing ',' in the widths", spec);
            }
        }
        pk_status s = pk_act_parse_slope(colon + 1, &act, &slope);
        if (s) return pk_fail(s, "model '%s': %s", spec, pk_last_error());
    }
    m->act = act;
    m->act_slope = slope;
    size_t d = m->n_in;
    pk_status s = PK_OK;
    for (size_t i = 0; !s && i < nh; i++) {
        s = add_dense(m, spec, d, hidden[i]);
        if (!s) add_act(m, act, slope, hidden[i]);
        d = hidden[i];
    }
    if (!s) s = add_dense(m, spec, d, m->n_out);
    return s;
}

/* ------------------------------------------------------ layer sequences */

#define LENET5 "conv:6,5,pad=2;tanh;avgpool:2;conv:16,5;tanh;avgpool:2;flatten;dense:120;tanh;dense:84;tanh;dense"

/* The layer sequence a preset name stands for; any other spec as it is. */
static const char *preset(const char *spec) { return strcmp(spec, "lenet5") ? spec : LENET5; }

/* One element of a layer sequence: NAME[:ARGS], ARGS comma-separated
 * positive integers then key=value pairs. */
typedef struct element {
    char name[16];
    size_t pos[3], n_pos;
    size_t stride, pad; /* SIZE_MAX: not given */
} element;

static pk_status parse_element(const char *spec, const char *e, size_t len, element *el)
{
    memset(el, 0, sizeof *el);
    el->stride = el->pad = SIZE_MAX;
    size_t nl = 0;
    while (nl < len && e[nl] != ':') nl++;
    if (!nl || nl >= sizeof el->name)
        return pk_fail(PK_ERR_INPUT, "model '%s': element '%.*s' has no name", spec, (int)len, e);
    memcpy(el->name, e, nl);
    for (size_t i = nl + 1; i < len;) {
        size_t j = i;
        while (j < len && e[j] != ',') j++;
        char arg[32];
        if (j - i >= sizeof arg || j == i)
            return pk_fail(PK_ERR_INPUT, "model '%s': element '%.*s': empty or overlong argument", spec, (int)len, e);
        memcpy(arg, e + i, j - i);
        arg[j - i] = 0;
        char *eq = strchr(arg, '=');
        size_t v;
        if (pk_parse_size(eq ? eq + 1 : arg, &v) || v > (1u << 24))
            return pk_fail(PK_ERR_INPUT, "model '%s': element '%.*s': '%s' is not an integer in 0..16777216", spec,
                           (int)len, e, arg);
        if (eq) {
            *eq = 0;
            if (!strcmp(arg, "stride")) el->stride = v;
            else if (!strcmp(arg, "pad")) el->pad = v;
            else
                return pk_fail(PK_ERR_INPUT, "model '%s': element '%.*s': unknown option '%s' (stride=, pad=)", spec,
                               (int)len, e, arg);
        } else if (el->n_pos == 3)
            return pk_fail(PK_ERR_INPUT, "model '%s': element '%.*s': too many numbers", spec, (int)len, e);
        else el->pos[el->n_pos++] = v;
        i = j + 1;
        if (j + 1 == len) return pk_fail(PK_ERR_INPUT, "model '%s': element '%.*s': trailing ','", spec, (int)len, e);
    }
    return PK_OK;
}

/* The shapes so far, for errors: "1x28x28 -> conv2d 6x28x28 -> ...". */
static void shape_trail(const pk_model *m, char *buf, size_t cap)
{
    size_t k = (size_t)snprintf(buf, cap, "input %zux%zux%zu", m->in_c, m->in_h, m->in_w);
    for (size_t i = 0; i < m->n_layers && k < cap; i++) {
        const pk_layer *l = &m->layer[i];
        if (l->ops == &pk_act_ops) continue;
        if (l->h_out) k += (size_t)snprintf(buf + k, cap - k, " -> %s %zux%zux%zu", l->ops->kind, l->c_out, l->h_out, l->w_out);
        else k += (size_t)snprintf(buf + k, cap - k, " -> %s %zu", l->ops->kind, l->out);
    }
}

/* A spatial layer on (c, h, w): out of range windows refused with the
 * shapes so far. */
static pk_status add_spatial(pk_model *m, const char *spec, const element *el, const pk_layer_ops *ops, size_t c,
                             size_t h, size_t w)
{
    int conv = ops == &pk_conv_ops;
    size_t need = conv ? 2 : 1;
    if (el->n_pos != need || (!conv && el->pad != SIZE_MAX))
        return pk_fail(PK_ERR_INPUT, "model '%s': %s takes %s", spec, el->name,
                       conv ? "OUT,K[,stride=S][,pad=P] (e.g. conv:6,5,pad=2)" : "K[,stride=S] (e.g. avgpool:2)");
    size_t k = el->pos[need - 1], stride = el->stride == SIZE_MAX ? (conv ? 1 : k) : el->stride;
    size_t pad = el->pad == SIZE_MAX ? 0 : el->pad, out_c = conv ? el->pos[0] : c;
    char trail[512];
    shape_trail(m, trail, sizeof trail);
    if (!k || !stride || !out_c)
        return pk_fail(PK_ERR_INPUT, "model '%s': %s: kernel, stride and channels must be positive", spec, el->name);
    if (h + 2 * pad < k || w + 2 * pad < k)
        return pk_fail(PK_ERR_INPUT, "model '%s': %s:%zu: a %zux%zu window does not fit its input %zux%zux%zu "
                       "(padding %zu); shapes: %s", spec, el->name, k, k, k, c, h, w, pad, trail);
    if (pad >= k && conv)
        return pk_fail(PK_ERR_INPUT, "model '%s': conv padding %zu must be smaller than the kernel %zu", spec, pad, k);
    size_t ho = (h + 2 * pad - k) / stride + 1, wo = (w + 2 * pad - k) / stride + 1;
    size_t n_w = conv ? out_c * c * k * k + out_c : 0;
    if (m->n_params + n_w > ((size_t)1 << 34) || out_c * ho * wo > ((size_t)1 << 28))
        return pk_fail(PK_ERR_INPUT, "model '%s' is too large", spec);
    pk_layer *l = add_layer(m, ops, c * h * w, out_c * ho * wo, n_w);
    l->c_in = c; l->h_in = h; l->w_in = w;
    l->c_out = out_c; l->h_out = ho; l->w_out = wo;
    l->kh = l->kw = k;
    l->stride = stride;
    l->pad = pad;
    if (conv) {
        size_t fan_in = c * k * k;
        l->b_off = l->w_off + n_w - out_c;
        l->param = m->param;
        l->sw = m->param == PK_PARAM_NTK ? m->sigma_w / sqrt((double)fan_in) : 1.0;
        l->sb = m->param == PK_PARAM_NTK ? m->sigma_b : 1.0;
    }
    return PK_OK;
}

/* The length of the element at e: up to the next ';' outside parentheses. */
static size_t element_len(const char *e, size_t len)
{
    size_t i = 0;
    for (int depth = 0; i < len && (depth || e[i] != ';'); i++) depth += e[i] == '(' ? 1 : e[i] == ')' ? -1 : 0;
    return i;
}

/* Where parsing stands: the current shape and whether the input has one. */
typedef struct seq_state {
    size_t c, h, w, index;
    int shaped, depth; /* depth: residual blocks open */
} seq_state;

static pk_status parse_seq(const char *full, const char *spec, size_t slen, pk_model *m, seq_state *st, int top);

/* res(BODY) or res(BODY;proj): y = x + BODY(x), or P x + BODY(x) with P a
 * dense layer (flat values) or a 1x1 convolution (maps) where the shapes
 * differ (MATH.md section 9). */
static pk_status add_residual(const char *full, const char *e, size_t len, pk_model *m, seq_state *st)
{
    if (len < 5 || e[len - 1] != ')')
        return pk_fail(PK_ERR_INPUT, "model '%s': a residual block is res(LAYERS) or res(LAYERS;proj), e.g. "
                       "res(dense:64;tanh;dense:64)", full);
    const char *body = e + 4;
    size_t blen = len - 5, proj = 0;
    if (blen >= 5 && !strncmp(body + blen - 5, ";proj", 5)) { proj = 1; blen -= 5; }
    else if (blen == 4 && !strncmp(body, "proj", 4)) blen = 0;
    if (!blen)
        return pk_fail(PK_ERR_INPUT, "model '%s': residual block '%.*s' has no layers", full, (int)len, e);
    if (st->depth == 8)
        return pk_fail(PK_ERR_INPUT, "model '%s': residual blocks nested more than 8 deep", full);
    size_t in = m->n_layers, c = st->c, h = st->h, w = st->w; /* the block's input: slot `in` */
    size_t first = m->n_layers;
    st->depth++;
    pk_status s = parse_seq(full, body, blen, m, st, 0);
    st->depth--;
    if (s) return s;
    if (m->n_layers == first)
        return pk_fail(PK_ERR_INPUT, "model '%s': residual block '%.*s' has no layers", full, (int)len, e);
    size_t out = m->n_layers; /* the body's output: slot `out` */
    int same = c == st->c && h == st->h && w == st->w;
    if (!proj && !same) {
        char trail[512];
        shape_trail(m, trail, sizeof trail);
        return pk_fail(PK_ERR_INPUT, "model '%s': residual block '%.*s' maps %zux%zux%zu to %zux%zux%zu: end it "
                       "with ';proj' for a learned projection of its input, or keep the shape; shapes: %s", full,
                       (int)len, e, c, h, w, st->c, st->h, st->w, trail);
    }
    if (m->n_layers + 2 > PK_MAX_MODEL_LAYERS)
        return pk_fail(PK_ERR_INPUT, "model '%s': more than %d layers", full, PK_MAX_MODEL_LAYERS);
    size_t skip = in;
    if (proj) {
        if (st->h == 1 && st->w == 1 && h == 1 && w == 1) s = add_dense(m, full, c, st->c);
        else {
            if (st->h == 1 && st->w == 1 && (h > 1 || w > 1))
                return pk_fail(PK_ERR_INPUT, "model '%s': residual block '%.*s' flattens its input: a projection "
                               "maps images to images or flat values to flat values", full, (int)len, e);
            size_t stride = 1; /* the smallest that maps h x w to the body's output */
            while (stride <= h && ((h - 1) / stride + 1 != st->h || (w - 1) / stride + 1 != st->w)) stride++;
            if (stride > h)
                return pk_fail(PK_ERR_INPUT, "model '%s': residual block '%.*s': no 1x1 convolution stride maps "
                               "%zux%zu to %zux%zu", full, (int)len, e, h, w, st->h, st->w);
            element el = {.name = "conv", .pos = {st->c, 1}, .n_pos = 2, .stride = stride, .pad = 0};
            s = add_spatial(m, full, &el, &pk_conv_ops, c, h, w);
        }
        if (s) return s;
        m->layer[m->n_layers - 1].src = in; /* P reads the block's input */
        skip = out;                         /* and the merge adds the body's output to P x */
    }
    pk_layer *l = add_layer(m, &pk_add_ops, m->layer[m->n_layers - 1].out, m->layer[m->n_layers - 1].out, 0);
    l->skip = skip;
    l->in_place = 1;
    l->c_out = st->c; l->h_out = st->h > 1 || st->w > 1 ? st->h : 0; l->w_out = st->w;
    m->graph = 1;
    return PK_OK;
}

/* Elements of spec[0..slen) in order; top: the whole model (its last dense
 * layer may omit its width). */
static pk_status parse_seq(const char *full, const char *spec, size_t slen, pk_model *m, seq_state *st, int top)
{
    for (const char *e = spec, *stop = spec + slen; e < stop; st->index++) {
        size_t len = element_len(e, (size_t)(stop - e));
        int last = e + len == stop;
        pk_status s;
        char trail[512];
        pk_act act;
        size_t c = st->c, h = st->h, w = st->w;
        if (m->n_layers == PK_MAX_MODEL_LAYERS)
            return pk_fail(PK_ERR_INPUT, "model '%s': more than %d layers", full, PK_MAX_MODEL_LAYERS);
        if (len >= 4 && !strncmp(e, "res(", 4)) {
            if ((s = add_residual(full, e, len, m, st))) return s;
            goto next;
        }
        if (len > 8 && !strncmp(e, "dropout:", 8)) {
            char num[32], *end;
            if (len - 8 >= sizeof num) return pk_fail(PK_ERR_INPUT, "model '%s': dropout:P, P in [0, 1)", full);
            memcpy(num, e + 8, len - 8);
            num[len - 8] = 0;
            double p = strtod(num, &end);
            if (*end || !(p >= 0 && p < 1))
                return pk_fail(PK_ERR_INPUT, "model '%s': dropout:%s: the probability must be a number in [0, 1) "
                               "(e.g. dropout:0.5)", full, num);
            pk_layer *l = add_layer(m, &pk_dropout_ops, c * h * w, c * h * w, 0);
            l->in_place = 1;
            l->p = p;
            l->c_out = c; l->h_out = h > 1 || w > 1 ? h : 0; l->w_out = w;
            m->graph = 1;
            goto next;
        }
        if (len >= 10 && !strncmp(e, "leaky_relu", 10) && (len == 10 || e[10] == ':')) {
            char text[48];
            double slope;
            if (len >= sizeof text) return pk_fail(PK_ERR_INPUT, "model '%s': leaky_relu:A, A a number", full);
            memcpy(text, e, len);
            text[len] = 0;
            if ((s = pk_act_parse_slope(text, &act, &slope))) return pk_fail(s, "model '%s': %s", full, pk_last_error());
            add_act(m, act, slope, c * h * w);
            if ((int)m->act < 0) { m->act = act; m->act_slope = slope; }
            goto next;
        }
        element el;
        if ((s = parse_element(full, e, len, &el))) return s;
        if (!strcmp(el.name, "in")) {
            if (st->index || el.n_pos != 3 || !el.pos[0] || !el.pos[1] || !el.pos[2])
                return pk_fail(PK_ERR_INPUT, "model '%s': in:C,H,W must come first, three positive numbers", full);
            if (el.pos[0] * el.pos[1] * el.pos[2] != m->n_in)
                return pk_fail(PK_ERR_INPUT, "model '%s': input shape %zux%zux%zu is %zu values, the data has %zu",
                               full, el.pos[0], el.pos[1], el.pos[2], el.pos[0] * el.pos[1] * el.pos[2], m->n_in);
            m->in_c = st->c = el.pos[0];
            m->in_h = st->h = el.pos[1];
            m->in_w = st->w = el.pos[2];
            st->shaped = 1;
        } else if (!strcmp(el.name, "conv") || !strcmp(el.name, "avgpool") || !strcmp(el.name, "maxpool")) {
            const pk_layer_ops *ops = el.name[0] == 'c' ? &pk_conv_ops : el.name[0] == 'a' ? &pk_avgpool_ops : &pk_maxpool_ops;
            if (!st->shaped)
                return pk_fail(PK_ERR_INPUT, "model '%s': %s needs an image shape, and the data has none: give "
                               "it one (input_shape C,H,W) or start the spec with in:C,H,W", full, el.name);
            if ((s = add_spatial(m, full, &el, ops, c, h, w))) return s;
            const pk_layer *l = &m->layer[m->n_layers - 1];
            st->c = l->c_out; st->h = l->h_out; st->w = l->w_out;
        } else if (!strcmp(el.name, "flatten")) {
            if (el.n_pos) return pk_fail(PK_ERR_INPUT, "model '%s': flatten takes no arguments", full);
            pk_layer *l = add_layer(m, &pk_flatten_ops, c * h * w, c * h * w, 0);
            l->in_place = 1;
            st->c = c * h * w;
            st->h = st->w = 1;
        } else if (!strcmp(el.name, "dense")) {
            if (h != 1 || w != 1) {
                shape_trail(m, trail, sizeof trail);
                return pk_fail(PK_ERR_INPUT, "model '%s': dense after a %zux%zux%zu map: add flatten before it; "
                               "shapes: %s", full, c, h, w, trail);
            }
            if (el.n_pos > 1 || el.stride != SIZE_MAX || el.pad != SIZE_MAX)
                return pk_fail(PK_ERR_INPUT, "model '%s': dense takes one width (dense:N), or none for the output layer", full);
            size_t out = el.n_pos ? el.pos[0] : m->n_out;
            if (!out) return pk_fail(PK_ERR_INPUT, "model '%s': dense width must be positive", full);
            if (top && last && out != m->n_out)
                return pk_fail(PK_ERR_INPUT, "model '%s': the last dense layer has %zu outputs, the task needs %zu "
                               "(write it as plain 'dense')", full, out, m->n_out);
            if (!(top && last) && !el.n_pos)
                return pk_fail(PK_ERR_INPUT, "model '%s': only the last dense layer may omit its width", full);
            if ((s = add_dense(m, full, c, out))) return s;
            st->c = out;
        } else if (!pk_act_parse(el.name, &act) && strcmp(el.name, "linear") && el.name[0]) {
            if (el.n_pos) return pk_fail(PK_ERR_INPUT, "model '%s': %s takes no arguments", full, el.name);
            add_act(m, act, 0.0, c * h * w);
            if ((int)m->act < 0) m->act = act;
        } else
            return pk_fail(PK_ERR_INPUT, "model '%s': unknown layer '%s' (in, conv, avgpool, maxpool, flatten, "
                           "dense, dropout:P, res(...), or an activation: identity, tanh, relu, leaky_relu:A, sigmoid, softplus, "
                           "gelu, erf); a model is mlp:H1,H2,...:ACT, linear, lenet5 or such layers separated by "
                           "';'", full, el.name);
    next:
        e += len + !last;
        if (last) break;
        if (e == stop) return pk_fail(PK_ERR_INPUT, "model '%s': trailing ';'", full);
    }
    return PK_OK;
}

/* Who reads which slot, in the order the backward passes visit the layers
 * (last first): the first to send deltas into a slot writes them, the
 * others add (MATH.md section 9); an in-place layer shares its input's
 * delta buffer only when it is that slot's sole reader. */
static void graph_finish(pk_model *m)
{
    int written[PK_MAX_MODEL_LAYERS + 1] = {0};
    size_t readers[PK_MAX_MODEL_LAYERS + 1] = {0};
    for (size_t k = 0; k < m->n_layers; k++) {
        readers[m->layer[k].src]++;
        if (m->layer[k].ops == &pk_add_ops) readers[m->layer[k].skip]++;
    }
    for (size_t k = m->n_layers; k-- > 0;) {
        pk_layer *l = &m->layer[k];
        l->acc = written[l->src];
        written[l->src] = 1;
        if (l->ops == &pk_add_ops) {
            l->acc_skip = written[l->skip];
            written[l->skip] = 1;
        }
        l->shares = k && l->in_place && l->src == k && readers[k] == 1;
    }
}

/* in:C,H,W;conv:...;tanh;avgpool:...;flatten;dense:N;...;dense (model.h). */
static pk_status sequence_new(const char *spec, pk_model *m)
{
    const char *full = spec;
    spec = preset(spec);
    m->layered = 1;
    m->act = (pk_act)-1;
    seq_state st = {m->in_c, m->in_h, m->in_w, 0, 0, 0};
    pk_status s = parse_seq(full, spec, strlen(spec), m, &st, 1);
    if (s) return s;
    if ((int)m->act < 0) m->act = PK_ACT_IDENTITY;
    if (!m->n_layers || m->layer[m->n_layers - 1].ops != &pk_dense_ops)
        return pk_fail(PK_ERR_INPUT, "model '%s': the last layer must be dense (plain 'dense': one output per "
                       "class)", full);
    if (m->graph && strlen(full) >= sizeof m->text)
        return pk_fail(PK_ERR_INPUT, "model '%s...': a spec with residual blocks or dropout is at most %zu "
                       "characters", full, sizeof m->text - 1);
    if (m->graph) snprintf(m->text, sizeof m->text, "%s", full);
    return PK_OK;
}

pk_status pk_model_new(const char *spec, size_t d_in, size_t d_out, pk_param param, double sigma_w, double sigma_b,
                       pk_model **out)
{
    *out = NULL;
    pk_model *m = NULL;
    pk_status s = model_alloc(param, sigma_w, sigma_b, d_in, d_out, &m);
    if (s) return s;
    if (!strcmp(spec, "linear") || !strncmp(spec, "mlp:", 4)) s = mlp_new(spec, m);
    else if (!*spec)
        s = pk_fail(PK_ERR_INPUT, "empty model spec: expected mlp:H1,H2,...:ACT (e.g. mlp:64,64:tanh), linear, "
                    "lenet5 or a layer sequence (e.g. conv:6,5;tanh;avgpool:2;flatten;dense)");
    else s = sequence_new(spec, m);
    if (s) { free(m); return s; }
    graph_finish(m);
    *out = m;
    return PK_OK;
}

pk_status pk_model_for_data(const char *spec, const pk_data *data, size_t d_out, pk_param param, double sigma_w,
                            double sigma_b, pk_model **out)
{
    int shaped = data->img_h && data->img_w && (data->img_c ? data->img_c : 1) * data->img_h * data->img_w == data->d;
    spec = preset(spec);
    if (!shaped || !strncmp(spec, "mlp:", 4) || !strcmp(spec, "linear") || !strncmp(spec, "in:", 3))
        return pk_model_new(spec, data->d, d_out, param, sigma_w, sigma_b, out);
    size_t len = strlen(spec) + 80;
    char *full = pk_alloc(len, 1);
    if (!full) return PK_ERR_NOMEM;
    snprintf(full, len, "in:%zu,%zu,%zu;%s", data->img_c ? data->img_c : 1, data->img_h, data->img_w, spec);
    pk_status s = pk_model_new(full, data->d, d_out, param, sigma_w, sigma_b, out);
    free(full);
    return s;
}

void pk_model_free(pk_model *m) { free(m); }

size_t pk_model_widths(const pk_model *m)
{
    size_t s = m->n_in;
    for (size_t l = 0; l < m->n_weight; l++) s += pk_model_weight(m, l)->out;
    return s;
}
size_t pk_model_n_params(const pk_model *m) { return m->n_params; }
size_t pk_model_n_layers(const pk_model *m) { return m->n_layers; }
size_t pk_model_n_weight_layers(const pk_model *m) { return m->n_weight; }
size_t pk_model_n_inputs(const pk_model *m) { return m->n_in; }
size_t pk_model_n_outputs(const pk_model *m) { return m->n_out; }
pk_param pk_model_param(const pk_model *m) { return m->param; }
double pk_model_sigma_w(const pk_model *m) { return m->sigma_w; }
double pk_model_sigma_b(const pk_model *m) { return m->sigma_b; }

/* pre, leaky_relu's slope in the fewest digits that read back the same, post. */
static size_t slope_text(double a, char *buf, size_t len, const char *pre, const char *post)
{
    char num[32];
    for (int digits = 1; digits <= 17; digits++) {
        snprintf(num, sizeof num, "%.*g", digits, a);
        if (strtod(num, NULL) == a) break;
    }
    int k = snprintf(buf, len, "%s%s%s", pre, num, post);
    return k < 0 ? 0 : (size_t)k;
}

void pk_model_spec(const pk_model *m, char *buf, size_t len)
{
    if (m->graph) { snprintf(buf, len, "%s", m->text); return; }
    if (!m->layered || pk_model_mlp_act(m) >= 0) {
        if (m->n_layers == 1) { snprintf(buf, len, "linear"); return; }
        size_t k = (size_t)snprintf(buf, len, "mlp:"), h = 0;
        for (size_t l = 0; l + 1 < m->n_weight && k < len; l++)
            k += (size_t)snprintf(buf + k, len - k, "%s%zu", h++ ? "," : "", pk_model_weight(m, l)->out);
        if (k < len) snprintf(buf + k, len - k, ":%s", pk_act_name(m->act));
        k = strlen(buf);
        if (m->act == PK_ACT_LEAKY_RELU && k < len) slope_text(m->act_slope, buf + k, len - k, ":", "");
        return;
    }
    /* a layer sequence, with its input shape when that is an image */
    size_t k = 0;
    buf[0] = 0;
    if (m->in_h > 1 || m->in_w > 1) k = (size_t)snprintf(buf, len, "in:%zu,%zu,%zu;", m->in_c, m->in_h, m->in_w);
    for (size_t i = 0; i < m->n_layers && k < len; i++) {
        const pk_layer *l = &m->layer[i];
        const char *sep = i + 1 < m->n_layers ? ";" : "";
        if (l->ops == &pk_act_ops && l->act == PK_ACT_LEAKY_RELU)
            k += slope_text(l->slope, buf + k, len - k, "leaky_relu:", sep);
        else if (l->ops == &pk_act_ops) k += (size_t)snprintf(buf + k, len - k, "%s%s", pk_act_name(l->act), sep);
        else if (l->ops == &pk_flatten_ops) k += (size_t)snprintf(buf + k, len - k, "flatten%s", sep);
        else if (l->ops == &pk_dense_ops && i + 1 == m->n_layers) k += (size_t)snprintf(buf + k, len - k, "dense");
        else if (l->ops == &pk_dense_ops) k += (size_t)snprintf(buf + k, len - k, "dense:%zu%s", l->out, sep);
        else if (l->ops == &pk_conv_ops) {
            k += (size_t)snprintf(buf + k, len - k, "conv:%zu,%zu", l->c_out, l->kh);
            if (l->stride != 1 && k < len) k += (size_t)snprintf(buf + k, len - k, ",stride=%zu", l->stride);
            if (l->pad && k < len) k += (size_t)snprintf(buf + k, len - k, ",pad=%zu", l->pad);
            if (k < len) k += (size_t)snprintf(buf + k, len - k, "%s", sep);
        } else {
            k += (size_t)snprintf(buf + k, len - k, "%s:%zu", l->ops->kind, l->kh);
            if (l->stride != l->kh && k < len) k += (size_t)snprintf(buf + k, len - k, ",stride=%zu", l->stride);
            if (k < len) k += (size_t)snprintf(buf + k, len - k, "%s", sep);
        }
    }
}

int pk_model_mlp_act(const pk_model *m)
{
    /* dense, act, dense, act, ..., dense: every activation the same */
    if (!(m->n_layers % 2)) return -1;
    for (size_t k = 0; k < m->n_layers; k++) {
        const pk_layer *l = &m->layer[k];
        if (l->ops != (k % 2 ? &pk_act_ops : &pk_dense_ops)) return -1;
        if (k % 2 && (l->act != m->act || l->slope != m->act_slope)) return -1;
    }
    return (int)m->act;
}

void pk_model_init(const pk_model *m, uint64_t seed, double *w)
{
    pk_rng r;
    pk_rng_seed(&r, seed);
    for (size_t k = 0; k < m->n_layers; k++)
        if (m->layer[k].ops->init) m->layer[k].ops->init(&m->layer[k], &r, w);
}

/* ------------------------------------------------------------------ tape */

pk_tape *pk_tape_new(const pk_model *m, size_t cap)
{
    pk_tape *t = pk_calloc(1, sizeof *t);
    if (!t) return NULL;
    t->cap = cap;
    size_t acc = 0; /* values per example of the widest slot read twice */
    for (size_t k = 0; k < m->n_layers; k++) {
        const pk_layer *l = &m->layer[k];
        t->src[k] = l->src;
        t->y[k] = pk_alloc_big(cap, l->out * sizeof(double));
        /* an in-place layer's deltas overwrite its input's */
        t->g[k] = l->shares ? t->g[k - 1] : pk_alloc_big(cap, l->out * sizeof(double));
        if (!t->y[k] || !t->g[k]) { pk_tape_free(t); return NULL; }
        if (l->ops == &pk_dropout_ops && !(t->mask[k] = pk_alloc(cap, l->out * sizeof(double)))) {
            pk_tape_free(t);
            return NULL;
        }
        if (l->acc && l->in > acc) acc = l->in;
    }
    if (acc && !(t->acc = pk_alloc(cap, acc * sizeof(double)))) { pk_tape_free(t); return NULL; }
    return t;
}

pk_status pk_tape_along(pk_tape *t, const pk_model *m, const double *dir, const double *at)
{
    t->dir = dir;
    t->at = at;
    if (!dir || t->dtmp) return PK_OK;
    size_t wmax = 1;
    for (size_t l = 0; l < m->n_weight; l++) {
        const pk_layer *lw = pk_model_weight(m, l);
        wmax = lw->in > wmax ? lw->in : wmax;
        wmax = lw->out > wmax ? lw->out : wmax;
    }
    t->dtmp = pk_alloc_big(t->cap * m->n_out, wmax * sizeof *t->dtmp);
    if (!t->dtmp) { t->dir = NULL; return PK_ERR_NOMEM; }
    return PK_OK;
}

/* y (n per, len) += at[row / per] tmp: the dir part of rows at weights of their own. */
static void add_along(double *y, const double *tmp, const double *at, size_t n, size_t per, size_t len)
{
    #pragma omp parallel for schedule(static) if (n * per * len >= PK_PAR_MIN)
    for (size_t r = 0; r < n * per; r++) {
        double a = at[r / per];
        for (size_t j = 0; j < len; j++) y[r * len + j] += a * tmp[r * len + j];
    }
}

void pk_tape_free(pk_tape *t)
{
    if (!t) return;
    free(t->dtmp);
    for (size_t k = 0; k < PK_MAX_MODEL_LAYERS; k++) {
        free(t->y[k]);
        free(t->mask[k]);
        if (!(k && t->g[k] == t->g[k - 1])) free(t->g[k]);
    }
    free(t->acc);
    free(t);
}

/* --------------------------------------------------------------- passes */

static pk_gemm_mode tape_mode(const pk_tape *t) { return t->queries ? PK_GEMM_ROWS : PK_GEMM_SPLIT; }

/* The values of slot s (0: the input). */
static double *slot_g(const pk_tape *t, size_t s) { return t->g[s - 1]; }
static const double *slot_y(const pk_tape *t, size_t s) { return s ? t->y[s - 1] : t->x; }

/* y (n, d) o= the masks (n, d), each example's row on `per` rows. */
static void apply_mask(const double *mask, double *y, size_t n, size_t per, size_t d)
{
    for (size_t i = 0; i < n; i++)
        for (size_t r = 0; r < per; r++)
            for (size_t u = 0; u < d; u++) y[(i * per + r) * d + u] *= mask[i * d + u];
}

/* y (n, d) += x (n, d) */
static void add_to(double *y, const double *x, size_t len)
{
    for (size_t j = 0; j < len; j++) y[j] += x[j];
}

void pk_model_forward_from(const pk_model *m, const double *w, pk_tape *t, size_t from)
{
    for (size_t k = from; k < m->n_layers; k++) {
        const pk_layer *l = &m->layer[k];
        l->ops->forward(l, w, pk_tape_in(t, k), t->y[k], t->n, tape_mode(t));
        if (t->dir && l->n_w) {
            l->ops->forward(l, t->dir, pk_tape_in(t, k), t->dtmp, t->n, tape_mode(t));
            add_along(t->y[k], t->dtmp, t->at, t->n, 1, l->out);
        }
        if (l->ops == &pk_add_ops) add_to(t->y[k], slot_y(t, l->skip), t->n * l->out); /* x + F(x) */
        if (l->ops == &pk_dropout_ops && t->train && l->p > 0) { /* MATH.md section 9: training masks */
            for (size_t i = 0; i < t->n; i++)
                pk_dropout_mask(l->p, t->seed, t->step, t->idx ? t->idx[i] : i, k, l->out, t->mask[k] + i * l->out);
            apply_mask(t->mask[k], t->y[k], t->n, 1, l->out);
        }
    }
}

void pk_model_forward(const pk_model *m, const double *w, const double *x, size_t n, pk_tape *t)
{
    t->n = n;
    t->x = x; /* the input is borrowed, never written */
    pk_model_forward_from(m, w, t, 0);
}

void pk_model_backward(const pk_model *m, const double *w, pk_tape *t, const double *R, double scale, double *grad)
{
    size_t last = m->n_layers - 1, n = t->n;
    memcpy(t->g[last], R, n * m->n_out * sizeof(double));
    for (size_t k = last + 1; k-- > 0;) {
        const pk_layer *l = &m->layer[k];
        if (grad && l->ops->grad) l->ops->grad(l, pk_tape_in(t, k), t->g[k], n, scale, grad + l->w_off);
        /* deltas to every slot it read: written by the last reader, added by the others */
        if (l->ops == &pk_add_ops && l->skip) {
            if (l->acc_skip) add_to(slot_g(t, l->skip), t->g[k], n * l->out);
            else memcpy(slot_g(t, l->skip), t->g[k], n * l->out * sizeof(double));
        }
        if (!l->src) continue;
        double *gx = l->acc ? t->acc : slot_g(t, l->src);
        l->ops->backward(l, w, pk_tape_in(t, k), t->y[k], t->g[k], gx, n, 1, tape_mode(t));
        if (t->dir && l->n_w) {
            l->ops->backward(l, t->dir, pk_tape_in(t, k), t->y[k], t->g[k], t->dtmp, n, 1, tape_mode(t));
            add_along(gx, t->dtmp, t->at, n, 1, l->in);
        }
        if (l->ops == &pk_dropout_ops && t->train && l->p > 0) apply_mask(t->mask[k], gx, n, 1, l->out);
        if (l->acc) add_to(slot_g(t, l->src), gx, n * l->in);
    }
}

/* Per-output deltas of examples i0..i0+ne, from the output layer down to
 * the first layer with parameters, each layer's product on the calling
 * thread while the piece's rows are in cache. buf[k]: layer k's output
 * deltas (n C, out_k) or, NULL, the piece's scratch sc[k] (ne C, out_k). */
static void output_deltas_piece(const pk_model *m, const double *w, const pk_tape *t, double *const *buf,
                                double *const *sc, double *acc, double *along, size_t i0, size_t ne)
{
    size_t C = m->n_out, last = m->n_layers - 1, low = m->weight[0];
    pk_gemm_mode mode = t->queries ? PK_GEMM_ROWS : PK_GEMM_ONE;
    #define AT(k) (buf[k] ? buf[k] + i0 * C * m->layer[k].out : sc[k])
    const pk_layer *top = &m->layer[last];
    top->ops->backward_unit(top, w, AT(last - 1), ne); /* d f_c / d (its input): row c of its W */
    if (t->dir) { /* rows at w + at[i] dir: and of at[i] dir's */
        top->ops->backward_unit(top, t->dir, along, ne);
        add_along(AT(last - 1), along, t->at + i0, ne, C, top->in);
    }
    /* as pk_model_backward: deltas to every slot read (those of layers from
     * `low` on), written by the last reader, added by the others */
    for (size_t k = last - 1; k > low; k--) {
        const pk_layer *l = &m->layer[k];
        if (l->ops == &pk_add_ops && l->skip > low) {
            if (l->acc_skip) add_to(AT(l->skip - 1), AT(k), ne * C * l->out);
            else memcpy(AT(l->skip - 1), AT(k), ne * C * l->out * sizeof(double));
        }
        if (l->src <= low) continue;
        double *gx = l->acc ? acc : AT(l->src - 1);
        l->ops->backward(l, w, pk_tape_in(t, k) + i0 * l->in, t->y[k] + i0 * l->out, AT(k), gx, ne, C, mode);
        if (t->dir && l->n_w) {
            l->ops->backward(l, t->dir, pk_tape_in(t, k) + i0 * l->in, t->y[k] + i0 * l->out, AT(k), along, ne, C,
                             mode);
            add_along(gx, along, t->at + i0, ne, C, l->in);
        }
        if (l->ops == &pk_dropout_ops && t->train && l->p > 0) apply_mask(t->mask[k] + i0 * l->out, gx, ne, C, l->out);
        if (l->acc) add_to(AT(l->src - 1), gx, ne * C * l->in);
    }
    #undef AT
}

pk_status pk_model_output_deltas(const pk_model *m, const double *w, const pk_tape *t, double *const *deltas)
{
    return pk_model_output_rows(m, w, t, deltas, NULL);
}

/* A piece's gradient rows of the layers with rows[l], from its deltas in
 * the piece's scratch sc (their deltas[l] are NULL). Nonzero when out of
 * memory. */
static int piece_rows(const pk_model *m, const pk_tape *t, double *const *sc, double *const *rows, size_t i0,
                      size_t ne)
{
    size_t n = t->n, C = m->n_out;
    for (size_t l = 0; rows && l < m->n_weight; l++) {
        if (!rows[l]) continue;
        size_t k = m->weight[l];
        const pk_layer *lw = &m->layer[k];
        size_t nW = lw->b_off - lw->w_off, nb = lw->n_w - nW;
        if (lw->ops->grad_rows(lw, ne, C, pk_tape_in(t, k) + i0 * lw->in, sc[k], rows[l] + i0 * C * nW,
                               rows[l] + n * C * nW + i0 * C * nb))
            return 1;
    }
    return 0;
}

/* What the threads of pk_model_output_rows share. */
typedef struct pieces_ctx {
    const pk_model *m;
    const double *w;
    const pk_tape *t;
    double *const *rows, *const *buf;
    const size_t *need;
    size_t last, E, n, C, acc, sc_len;
} pieces_ctx;

/* Piece p of pk_model_output_rows (examples p E ..), in the scratch of
 * the thread that takes it. */
static pk_status output_piece(void *ctx, size_t p, int thread)
{
    (void)thread;
    const pieces_ctx *c = ctx;
    const pk_model *m = c->m;
    size_t E = c->E, C = c->C, n = c->n, last = c->last;
    double *scratch = c->sc_len ? pk_scratch(8, c->sc_len) : NULL, *sc[PK_MAX_MODEL_LAYERS] = {0};
    if (c->sc_len && !scratch) return PK_ERR_NOMEM;
    size_t off = 0;
    for (size_t k = 0; scratch && k < last; k++) {
        if (c->need[k]) { sc[k] = scratch + off; off += E * C * c->need[k]; }
        else if (k) sc[k] = sc[k - 1]; /* in place: its input's */
    }
    double *acc_sc = scratch ? scratch + off : NULL; /* (E C, acc) */
    double *along_sc = scratch ? scratch + off + E * C * c->acc : NULL; /* (E C, along) */
    size_t ne = n - p * E < E ? n - p * E : E;
    output_deltas_piece(m, c->w, c->t, c->buf, sc, acc_sc, along_sc, p * E, ne);
    return piece_rows(m, c->t, sc, c->rows, p * E, ne) ? PK_ERR_NOMEM : PK_OK;
}

pk_status pk_model_output_rows(const pk_model *m, const double *w, const pk_tape *t, double *const *deltas,
                               double *const *rows)
{
    size_t n = t->n, C = m->n_out, last = m->n_layers - 1;
    double *top = deltas[m->n_weight - 1]; /* (n, C, C): d f_k / d z_out = e_k */
    if (top) {
        memset(top, 0, n * C * C * sizeof(double));
        for (size_t i = 0; i < n; i++)
            for (size_t k = 0; k < C; k++) top[(i * C + k) * C + k] = 1.0;
    }
    if (m->n_weight < 2 || !n) return PK_OK;
    /* where each layer's deltas go: a layer with parameters into its
     * deltas[] (or scratch), an in-place one into its input's */
    double *buf[PK_MAX_MODEL_LAYERS] = {0};
    size_t need[PK_MAX_MODEL_LAYERS] = {0}, wi = 0, wmax = 0, acc = 0; /* need: values per row of own scratch */
    for (size_t k = 0; k < last; k++) {
        const pk_layer *l = &m->layer[k];
        int shares = !l->n_w && l->shares;
        if (l->n_w) buf[k] = deltas[wi++];
        else if (shares) buf[k] = buf[k - 1];
        need[k] = !buf[k] && !shares ? l->out : 0;
        wmax = l->out > wmax ? l->out : wmax;
        if (l->acc && l->in > acc) acc = l->in;
    }
    /* pieces of a fixed number of examples (never of the thread count) */
    size_t E = PK_PIECE_ROWS / C ? PK_PIECE_ROWS / C : 1, pieces = (n + E - 1) / E, sc_len = E * C * acc;
    size_t along = 0; /* rows at weights of their own: the dir part of a layer's deltas (E C, widest in) */
    for (size_t l = 0; t->dir && l < m->n_weight; l++)
        along = pk_model_weight(m, l)->in > along ? pk_model_weight(m, l)->in : along;
    sc_len += E * C * along;
    for (size_t k = 0; k < last; k++) sc_len += need[k] ? E * C * need[k] : 0;
    pieces_ctx c = {m, w, t, rows, buf, need, last, E, n, C, acc, sc_len};
    /* a team only for enough work (pk_tasks opens no region without one) */
    return pk_tasks(pieces, pieces > 1 && n * C * wmax >= PK_PAR_MIN ? omp_get_max_threads() : 1, output_piece, &c);
}

pk_status pk_deltas_new(const pk_model *m, size_t cap, double **deltas)
{
    memset(deltas, 0, PK_MAX_MODEL_LAYERS * sizeof *deltas);
    for (size_t l = 0; l < m->n_weight; l++) {
        deltas[l] = pk_alloc_big(cap * m->n_out, pk_model_weight(m, l)->out * sizeof(double));
        if (!deltas[l]) { pk_deltas_free(m, deltas); return PK_ERR_NOMEM; }
    }
    return PK_OK;
}

void pk_deltas_free(const pk_model *m, double **deltas)
{
    for (size_t l = 0; l < m->n_weight; l++) { free(deltas[l]); deltas[l] = NULL; }
}

void pk_gram_rows(size_t nx, size_t rx, const double *Vx, const double *Bx, size_t ny, size_t ry, const double *Vy,
                  const double *By, size_t nW, size_t nb, pk_gemm_mode mode, double *D, double *S, size_t ldy,
                  int pairs)
{
    size_t cols = ny * ry;
    /* D first, then added: a product with beta = 1 straight into S would
     * add the BLAS's partial sums in an order that depends on the kernel */
    pk_gemm_by(mode, 0, 1, nx * rx, cols, nW, 1.0, Vx, nW, Vy, nW, 0.0, D, cols);
    pk_gemm_by(mode, 0, 1, nx * rx, cols, nb, 1.0, Bx, nb, By, nb, 1.0, D, cols);
    #pragma omp parallel for schedule(static) if (nx * rx * cols >= PK_PAR_MIN)
    for (size_t i = 0; i < nx; i++)
        for (size_t kx = 0; kx < rx; kx++) {
            const double *src = D + (i * rx + kx) * cols;
            if (!pairs) {
                double *dst = S + (i * rx + kx) * ldy * ry;
                for (size_t c = 0; c < cols; c++) dst[c] += src[c];
            } else
                for (size_t j = 0; j < ny; j++) {
                    double *dst = S + ((i * ldy + j) * rx + kx) * ry;
                    for (size_t ky = 0; ky < ry; ky++) dst[ky] += src[j * ry + ky];
                }
        }
}

size_t pk_tape_values(const pk_model *m)
{
    size_t v = 0;
    for (size_t k = 0; k < m->n_layers; k++)
        v += m->layer[k].out * (m->layer[k].shares ? 1 : 2) + (m->layer[k].ops == &pk_dropout_ops ? m->layer[k].out : 0);
    return v;
}

pk_status pk_model_predict(const pk_model *m, const double *w, const double *x, size_t n, double *f)
{
    /* blocks of up to 1024 examples and about 8 MB of tape (a conv net's
     * values per example are many: fresh megabytes cost page faults) */
    size_t block = ((size_t)1 << 20) / pk_tape_values(m), C = m->n_out;
    if (block > 1024) block = 1024;
    if (block < 16) block = 16;
    if (block > n) block = n ? n : 1;
    pk_tape *t = pk_tape_new(m, block);
    if (!t) return PK_ERR_NOMEM;
    t->queries = 1; /* a prediction never depends on the block it is in */
    for (size_t i = 0; i < n; i += block) {
        size_t b = n - i < block ? n - i : block;
        pk_model_forward(m, w, x + i * m->n_in, b, t);
        memcpy(f + i * C, pk_tape_out(m, t), b * C * sizeof(double));
    }
    pk_tape_free(t);
    return PK_OK;
}
