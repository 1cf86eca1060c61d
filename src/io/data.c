/* data.c -- data sets: load from a spec (CSV, npy, svmlight, IDX), select
 * examples, moments and standardisation, fingerprint, class count.
 *
 * Every loader reads its file whole (pk_read_file, which also gunzips), checks
 * it completely, and only then fills a pk_data; an error message starts with
 * the file path and says where (line, column, byte offset, element) and what
 * is wrong. On failure `out` is left zeroed. */
#include "io/io.h"

#include <ctype.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#ifndef FMNIST_DIR   /* -DFMNIST_DIR=... only to test the missing-data message */
#define FMNIST_DIR "/usr/share/datasets/fashion-mnist"
#endif
#define MAX_CLASSES ((size_t)1 << 20)

static const char spec_forms[] =
    "PATH.csv, PATH.csv.gz, PATH.svm, PATH.libsvm, npy:FEATURES.npy,TARGETS.npy, "
    "idx:IMAGES,LABELS, fashion-mnist:train or fashion-mnist:test";

pk_load_opts pk_load_opts_defaults(void)
{
    pk_load_opts o = { 0, 0, 0 };
    return o;
}

void pk_data_free(pk_data *data)
{
    if (!data) return;
    free(data->x);
    free(data->y);
    free(data->source);
    memset(data, 0, sizeof *data);
}

/* ----------------------------------------------------------------- helpers */

/* Copy at most n bytes of s for a message, non-printable bytes as '?'. */
static void printable(char *dst, size_t cap, const char *s, size_t n)
{
    size_t k = 0, room = n < cap ? n : (cap > 4 ? cap - 4 : 0);
    for (size_t i = 0; i < room; i++) {
        unsigned char c = (unsigned char)s[i];
        dst[k++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    if (room < n && cap > 4) { memcpy(dst + k, "...", 3); k += 3; }
    dst[k] = 0;
}

/* pk_alloc with the file named in the message. */
static void *alloc_for(const char *path, size_t n, size_t size, int zero)
{
    void *p = zero ? pk_calloc(n, size) : pk_alloc(n, size);
    if (!p) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s", pk_last_error());
        pk_fail(PK_ERR_NOMEM, "%s: %s", path, msg);
    }
    return p;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a > b && strcasecmp(s + a - b, suffix) == 0;
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* NaN/Inf anywhere in a (count) array of `cols` columns is an error naming the
 * flat element index. */
static pk_status check_finite(const char *path, const double *a, size_t count, size_t cols,
                              const char *what)
{
    for (size_t i = 0; i < count; i++) {
        if (isfinite(a[i])) continue;
        return pk_fail(PK_ERR_INPUT, "%s: element %zu (example %zu, %s column %zu, 0-based) is "
                       "%s; NaN/Inf values are not allowed", path, i, i / cols, what, i % cols,
                       isnan(a[i]) ? "NaN" : a[i] > 0 ? "+Inf" : "-Inf");
    }
    return PK_OK;
}

/* ------------------------------------------------------------- text files */

/* A text buffer split into lines ('\n' or "\r\n"); the lines are not copied. */
typedef struct text {
    char *buf;
    size_t len, pos, lineno;
} text;

static int text_line(text *t, char **s, size_t *n)
{
    if (t->pos >= t->len) return 0;
    char *b = t->buf + t->pos;
    char *nl = memchr(b, '\n', t->len - t->pos);
    size_t m = nl ? (size_t)(nl - b) : t->len - t->pos;
    t->pos += m + (nl ? 1 : 0);
    if (m && b[m - 1] == '\r') m--;
    t->lineno++;
    *s = b;
    *n = m;
    return 1;
}

static pk_status text_open(const char *path, text *t)
{
    memset(t, 0, sizeof *t);
    unsigned char *buf;
    size_t len;
    pk_status s = pk_read_file(path, 1, 0, &buf, &len);
    if (s) return s;
    const unsigned char *z = memchr(buf, 0, len);
    if (z) {
        s = pk_fail(PK_ERR_INPUT, "%s: byte offset %zu: NUL byte; this is not a text file",
                    path, (size_t)(z - buf));
        free(buf);
        return s;
    }
    t->buf = (char *)buf;
    t->len = len;
    if (len >= 3 && buf[0] == 0xef && buf[1] == 0xbb && buf[2] == 0xbf) t->pos = 3; /* UTF-8 BOM */
    return PK_OK;
}

static int is_blank(int c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; }

static void trim(char **s, char **e)
{
    while (*s < *e && is_blank((unsigned char)**s)) (*s)++;
    while (*e > *s && is_blank((unsigned char)(*e)[-1])) (*e)--;
}

/* Parse [s, e) as a number: 0 finite, 1 NaN/Inf, -1 not a number. The byte
 * at e is replaced by a NUL for strtod and restored; e may be the buffer's
 * terminating NUL. */
static int parse_number(char *s, char *e, double *v)
{
    if (s == e) return -1;
    char save = *e;
    *e = 0;
    char *end;
    double x = strtod(s, &end);
    *e = save;
    if (end != e || isblank((unsigned char)*s)) return -1;
    *v = x;
    return isfinite(x) ? 0 : 1;
}

/* ------------------------------------------------------------------- csv */

static size_t count_fields(const char *s, size_t n)
{
    size_t k = 1;
    for (size_t i = 0; i < n; i++) k += s[i] == ',';
    return k;
}

/* Whether the line [s, s + n) has no field that is text: every non-empty
 * field is a number (NaN/Inf count: they are reported as errors later, and so
 * are empty fields). If a field is text, the line is a header. */
static int all_numeric(char *s, size_t n)
{
    char *end = s + n, *f = s;
    for (;;) {
        char *c = memchr(f, ',', (size_t)(end - f));
        char *fs = f, *fe = c ? c : end;
        trim(&fs, &fe);
        double v;
        if (fs != fe && parse_number(fs, fe, &v) < 0) return 0;
        if (!c) return 1;
        f = c + 1;
    }
}

static pk_status load_csv(const char *path, pk_data *d)
{
    text t;
    pk_status s = text_open(path, &t);
    if (s) return s;
    size_t max_lines = 1;
    for (size_t i = t.pos; i < t.len; i++) max_lines += t.buf[i] == '\n';

    size_t cols = 0, first_data = 0, header = 0, header_cols = 0, blank_at = 0, n = 0;
    double *x = NULL, *y = NULL;
    char *ln;
    size_t lnn;
    while (!s && text_line(&t, &ln, &lnn)) {
        char *ls = ln, *le = ln + lnn;
        trim(&ls, &le);
        if (ls == le) {
            if (!blank_at) blank_at = t.lineno;
            continue;
        }
        if (blank_at) {
            s = pk_fail(PK_ERR_INPUT, "%s: line %zu: empty line inside the data (only trailing "
                        "blank lines are allowed)", path, blank_at);
            break;
        }
        size_t nf = count_fields(ln, lnn);
        if (!header && !first_data && !all_numeric(ln, lnn)) {
            header = t.lineno;      /* the first line, not all numbers: a header */
            header_cols = nf;
            continue;
        }
        if (!first_data) {
            first_data = t.lineno;
            cols = nf;
            if (header && header_cols != cols) {
                s = pk_fail(PK_ERR_INPUT, "%s: line %zu: %zu columns, but the header on line %zu "
                            "has %zu", path, t.lineno, cols, header, header_cols);
                break;
            }
            if (cols < 2) {
                s = pk_fail(PK_ERR_INPUT, "%s: line %zu: only 1 column; need the features and "
                            "then the target in the last column", path, t.lineno);
                break;
            }
            /* a row of `cols` fields takes at least cols bytes (the commas and a
             * newline): the rows left are bounded by the bytes left, so the
             * arrays are at most 8x the file however many lines it has */
            size_t max_rows = (t.len - (size_t)(ln - t.buf)) / cols + 1;
            if (max_rows > max_lines) max_rows = max_lines;
            x = alloc_for(path, max_rows, (cols - 1) * sizeof(double), 0);
            y = alloc_for(path, max_rows, sizeof(double), 0);
            if (!x || !y) { s = PK_ERR_NOMEM; break; }
        }
        if (nf != cols) {
            s = pk_fail(PK_ERR_INPUT, "%s: line %zu: %zu columns, expected %zu (as on line %zu)",
                        path, t.lineno, nf, cols, first_data);
            break;
        }
        char *f = ln, *end = ln + lnn;
        for (size_t c = 0; c < cols; c++) {
            char *comma = c + 1 < cols ? memchr(f, ',', (size_t)(end - f)) : end;
            char *fs = f, *fe = comma;
            trim(&fs, &fe);
            double v = 0;
            int r = parse_number(fs, fe, &v);
            if (r) {
                char tok[48];
                printable(tok, sizeof tok, fs, (size_t)(fe - fs));
                if (fs == fe)
                    s = pk_fail(PK_ERR_INPUT, "%s: line %zu, column %zu: empty field", path,
                                t.lineno, c + 1);
                else if (r < 0)
                    s = pk_fail(PK_ERR_INPUT, "%s: line %zu, column %zu: '%s' is not a number",
                                path, t.lineno, c + 1, tok);
                else
                    s = pk_fail(PK_ERR_INPUT, "%s: line %zu, column %zu: '%s' is not finite "
                                "(NaN/Inf values are not allowed)", path, t.lineno, c + 1, tok);
                break;
            }
            if (c + 1 < cols) x[n * (cols - 1) + c] = v;
            else y[n] = v;
            f = comma + 1;
        }
        n++;
    }
    if (!s && !n)
        s = header ? pk_fail(PK_ERR_INPUT, "%s: line %zu is a header and no examples follow",
                             path, header)
                   : pk_fail(PK_ERR_INPUT, "%s: byte offset 0: empty file (no examples)", path);
    free(t.buf);
    if (s) { free(x); free(y); return s; }
    d->n = n;
    d->d = cols - 1;
    d->ty = 1;
    d->x = x;
    d->y = y;
    return PK_OK;
}

/* -------------------------------------------------------------- svmlight */

/* One pass over the file: validate and count (x == NULL), or fill x (n, d),
 * zeroed, and y (n). *d_line is the line of the largest index. */
static pk_status svm_pass(const char *path, text *t, size_t *n_out, size_t *d_out, size_t *d_line,
                          double *x, double *y, size_t d)
{
    size_t n = 0, dmax = 0, dline = 0;
    char *ln;
    size_t lnn;
    while (text_line(t, &ln, &lnn)) {
        char *end = ln + lnn;
        char *hash = memchr(ln, '#', lnn);
        if (hash) end = hash;
        char *p = ln;
        size_t tok_no = 0, prev = 0;
        for (;;) {
            while (p < end && is_blank((unsigned char)*p)) p++;
            if (p >= end) break;
            char *ts = p;
            while (p < end && !is_blank((unsigned char)*p)) p++;
            char *te = p;
            tok_no++;
            char tok[48];
            double v;
            int r;
            if (tok_no == 1) {
                if ((r = parse_number(ts, te, &v))) {
                    printable(tok, sizeof tok, ts, (size_t)(te - ts));
                    return pk_fail(PK_ERR_INPUT, "%s: line %zu, token 1: label '%s' is %s", path,
                                   t->lineno, tok, r < 0 ? "not a number"
                                   : "not finite (NaN/Inf values are not allowed)");
                }
                if (y) y[n] = v;
                continue;
            }
            char *colon = memchr(ts, ':', (size_t)(te - ts));
            printable(tok, sizeof tok, ts, (size_t)(te - ts));
            if (!colon)
                return pk_fail(PK_ERR_INPUT, "%s: line %zu, token %zu: '%s' is missing ':' "
                               "(expected index:value)", path, t->lineno, tok_no, tok);
            size_t idx = 0;
            int bad = colon == ts;
            for (char *c = ts; c < colon && !bad; c++) {
                if (*c < '0' || *c > '9') { bad = 1; break; }
                idx = idx * 10 + (size_t)(*c - '0');
                if (idx > UINT32_MAX) {
                    return pk_fail(PK_ERR_INPUT, "%s: line %zu, token %zu: index in '%s' is too "
                                   "large (at most %u)", path, t->lineno, tok_no, tok, UINT32_MAX);
                }
            }
            if (bad)
                return pk_fail(PK_ERR_INPUT, "%s: line %zu, token %zu: index in '%s' is not a "
                               "positive integer (indices are 1-based)", path, t->lineno, tok_no, tok);
            if (idx == 0)
                return pk_fail(PK_ERR_INPUT, "%s: line %zu, token %zu: index 0 in '%s'; indices "
                               "are 1-based", path, t->lineno, tok_no, tok);
            if (idx <= prev)
                return pk_fail(PK_ERR_INPUT, "%s: line %zu, token %zu: index %zu after index %zu; "
                               "indices must be strictly ascending", path, t->lineno, tok_no, idx, prev);
            prev = idx;
            if ((r = parse_number(colon + 1, te, &v)))
                return pk_fail(PK_ERR_INPUT, "%s: line %zu, token %zu: value in '%s' is %s", path,
                               t->lineno, tok_no, tok, r < 0 ? "not a number"
                               : "not finite (NaN/Inf values are not allowed)");
            if (idx > dmax) { dmax = idx; dline = t->lineno; }
            if (x) x[n * d + idx - 1] = v;
        }
        if (tok_no) n++;   /* blank and comment-only lines are skipped */
    }
    *n_out = n;
    *d_out = dmax;
    *d_line = dline;
    return PK_OK;
}

static pk_status load_svm(const char *path, pk_data *d)
{
    text t;
    pk_status s = text_open(path, &t);
    if (s) return s;
    size_t start = t.pos, n = 0, dim = 0, dline = 0;
    s = svm_pass(path, &t, &n, &dim, &dline, NULL, NULL, 0);
    if (!s && !n) s = pk_fail(PK_ERR_INPUT, "%s: byte offset 0: no examples (empty file)", path);
    if (!s && !dim)
        s = pk_fail(PK_ERR_INPUT, "%s: no features: no line has an index:value pair", path);
    double *x = NULL, *y = NULL;
    if (!s) {
        /* the examples are held densely: (n, largest index) doubles, which a
         * single large index in a small file can make enormous */
        size_t budget = pk_memory_budget(0);
        double bytes = (double)n * (double)dim * sizeof(double);
        if (dim > SIZE_MAX / sizeof(double) / n || bytes > (double)budget) {
            s = pk_fail(PK_ERR_INPUT, "%s: line %zu: feature index %zu makes the dense data %zu "
                        "examples x %zu features = %.3g GiB, more than the %.3g GiB memory budget "
                        "(3/4 of free memory); number the features 1..d without gaps "
                        "(no option makes it fit)", path, dline, dim, n, dim,
                        bytes / 1073741824.0, (double)budget / 1073741824.0);
        } else {
            x = alloc_for(path, n * dim, sizeof(double), 1);   /* (n, d), zero where absent */
            y = alloc_for(path, n, sizeof(double), 0);
            if (!x || !y) s = PK_ERR_NOMEM;
        }
    }
    if (!s) {
        t.pos = start;
        t.lineno = 0;
        size_t n2, d2, l2;
        s = svm_pass(path, &t, &n2, &d2, &l2, x, y, dim);
    }
    free(t.buf);
    if (s) { free(x); free(y); return s; }
    d->n = n;
    d->d = dim;
    d->ty = 1;
    d->x = x;
    d->y = y;
    return PK_OK;
}

/* ------------------------------------------------------------------- npy */

static void shape_str(char *buf, size_t cap, size_t nd, const size_t *shape)
{
    size_t k = (size_t)snprintf(buf, cap, "(");
    for (size_t i = 0; i < nd && k < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, i ? ", %zu" : "%zu", shape[i]);
    if (k < cap) snprintf(buf + k, cap - k, nd == 1 ? ",)" : ")");
}

static pk_status load_npy(const char *fpath, const char *tpath, pk_data *d)
{
    double *x = NULL, *y = NULL;
    size_t fnd, fs[PK_NPY_MAX_DIM], tnd, ts[PK_NPY_MAX_DIM];
    char sh[200];
    pk_status s = pk_npy_read(fpath, &x, &fnd, fs);
    if (s) return s;
    size_t n = 0, dim = 0, c = 0, h = 0, w = 0, ty = 0;
    if (fnd < 1 || fnd > 4) {
        shape_str(sh, sizeof sh, fnd, fs);
        s = pk_fail(PK_ERR_INPUT, "%s: header: features have shape %s; expected (n,), (n, d), "
                    "(n, h, w) or (n, c, h, w)", fpath, sh);
        goto fail;
    }
    n = fs[0];
    dim = 1;
    for (size_t k = 1; k < fnd; k++) dim *= fs[k];
    if (fnd >= 3) { c = fnd == 4 ? fs[1] : 1; h = fs[fnd - 2]; w = fs[fnd - 1]; }
    if (!n) { s = pk_fail(PK_ERR_INPUT, "%s: header: no examples (shape[0] is 0)", fpath); goto fail; }
    if (!dim) { s = pk_fail(PK_ERR_INPUT, "%s: header: zero features per example", fpath); goto fail; }
    if ((s = check_finite(fpath, x, n * dim, dim, "feature"))) goto fail;

    if ((s = pk_npy_read(tpath, &y, &tnd, ts))) goto fail;
    if (tnd < 1 || tnd > 2) {
        shape_str(sh, sizeof sh, tnd, ts);
        s = pk_fail(PK_ERR_INPUT, "%s: header: targets have shape %s; expected (n,) or (n, k)",
                    tpath, sh);
        goto fail;
    }
    if (ts[0] != n) {
        s = pk_fail(PK_ERR_INPUT, "%s: header: %zu rows of targets, but the features in %s have "
                    "%zu rows", tpath, ts[0], fpath, n);
        goto fail;
    }
    ty = tnd == 1 ? 1 : ts[1];
    if (!ty) { s = pk_fail(PK_ERR_INPUT, "%s: header: zero target columns", tpath); goto fail; }
    if ((s = check_finite(tpath, y, n * ty, ty, "target"))) goto fail;
    d->n = n;
    d->d = dim;
    d->ty = ty;
    d->x = x;
    d->y = y;
    d->img_c = c;
    d->img_h = h;
    d->img_w = w;
    return PK_OK;
fail:
    free(x);
    free(y);
    return s;
}

/* ------------------------------------------------------------------- idx */

#define IDX_UBYTE_IMAGES 0x00000803u
#define IDX_UBYTE_LABELS 0x00000801u

static pk_status idx_magic(const char *path, const unsigned char *b, size_t len, uint32_t want)
{
    const char *kind = want == IDX_UBYTE_IMAGES ? "images" : "labels";
    if (len < 4)
        return pk_fail(PK_ERR_INPUT, "%s: byte offset 0: %zu bytes, too short for an IDX header",
                       path, len);
    uint32_t m = be32(b);
    if (m == want) return PK_OK;
    if (m == IDX_UBYTE_LABELS || m == IDX_UBYTE_IMAGES)
        return pk_fail(PK_ERR_INPUT, "%s: byte offset 0: this is an IDX %s file (magic 0x%08x), "
                       "expected %s (0x%08x); are IMAGES and LABELS swapped in idx:IMAGES,LABELS?",
                       path, m == IDX_UBYTE_IMAGES ? "images" : "labels", m, kind, want);
    if (b[0] == 0 && b[1] == 0 && b[2] != 0x08)
        return pk_fail(PK_ERR_INPUT, "%s: byte offset 2: IDX element type 0x%02x is not "
                       "supported (only unsigned bytes, 0x08)", path, b[2]);
    return pk_fail(PK_ERR_INPUT, "%s: byte offset 0: magic 0x%08x is not an IDX unsigned-byte %s "
                   "file (expected 0x%08x)", path, m, kind, want);
}

/* With `first` > 0, only the first examples are read (and decompressed):
 * the rest of the file is not looked at. */
static pk_status load_idx(const char *ipath, const char *lpath, size_t first, pk_data *d)
{
    unsigned char *ib = NULL, *lb = NULL;
    size_t il, ll;
    double *x = NULL, *y = NULL;
    pk_status s;
    if (first) { /* the header says how many bytes the first examples take */
        if ((s = pk_read_prefix(ipath, 1, 16, &ib, &il))) return s;
        uint64_t ni = il >= 16 ? be32(ib + 4) : 0, hw = il >= 16 ? (uint64_t)be32(ib + 8) * be32(ib + 12) : 0;
        int ok = il >= 16 && be32(ib) == IDX_UBYTE_IMAGES && first <= ni && hw && first <= (SIZE_MAX - 16) / hw;
        free(ib);
        ib = NULL;
        if (!ok) first = 0; /* let the full read below say what is wrong */
        else if ((s = pk_read_prefix(ipath, 1, 16 + first * hw, &ib, &il))) return s;
        else if (il < 16 + first * hw) {
            s = pk_fail(PK_ERR_INPUT, "%s: byte offset %zu: the file ends inside image %zu of the first %zu",
                        ipath, il, (il - 16) / hw, first);
            free(ib);
            return s;
        }
    }
    if (!first && (s = pk_read_file(ipath, 1, 0, &ib, &il))) return s;
    size_t n = 0, h = 0, w = 0;
    if ((s = idx_magic(ipath, ib, il, IDX_UBYTE_IMAGES))) goto done;
    if (il < 16) {
        s = pk_fail(PK_ERR_INPUT, "%s: byte offset %zu: truncated IDX header (16 bytes needed, "
                    "the file has %zu)", ipath, il, il);
        goto done;
    }
    uint64_t ni = be32(ib + 4), hi = be32(ib + 8), wi = be32(ib + 12);
    uint64_t have = il - 16, hw = hi * wi;   /* < 2^64: both < 2^32 */
    if (first) ni = first;
    int over = wi && hi && ni > UINT64_MAX / hw;
    if (over || ni * hw != have) {
        char decl[32];
        if (over) snprintf(decl, sizeof decl, "more than 2^64");
        else snprintf(decl, sizeof decl, "%llu", (unsigned long long)(ni * hw));
        s = pk_fail(PK_ERR_INPUT, "%s: byte offset 16: the header declares %llu images of %llu x "
                    "%llu pixels (%s bytes) but %llu bytes follow the header", ipath,
                    (unsigned long long)ni, (unsigned long long)hi, (unsigned long long)wi, decl,
                    (unsigned long long)have);
        goto done;
    }
    if (!ni) { s = pk_fail(PK_ERR_INPUT, "%s: byte offset 4: no images (count 0)", ipath); goto done; }
    if (!hw) { s = pk_fail(PK_ERR_INPUT, "%s: byte offset 8: images of zero size", ipath); goto done; }
    n = (size_t)ni;
    h = (size_t)hi;
    w = (size_t)wi;

    if ((s = first ? pk_read_prefix(lpath, 1, 8 + first, &lb, &ll) : pk_read_file(lpath, 1, 0, &lb, &ll)))
        goto done;
    if ((s = idx_magic(lpath, lb, ll, IDX_UBYTE_LABELS))) goto done;
    if (ll < 8) {
        s = pk_fail(PK_ERR_INPUT, "%s: byte offset %zu: truncated IDX header (8 bytes needed, the "
                    "file has %zu)", lpath, ll, ll);
        goto done;
    }
    uint64_t nl = be32(lb + 4);
    if (first && nl >= first) nl = first; /* only the first labels were read */
    if (nl != ll - 8) {
        s = pk_fail(PK_ERR_INPUT, "%s: byte offset 8: the header declares %llu labels but %zu "
                    "bytes follow the header", lpath, (unsigned long long)nl, ll - 8);
        goto done;
    }
    if (nl != ni) {
        s = pk_fail(PK_ERR_INPUT, "%s: byte offset 4: %llu labels, but %s has %zu images", lpath,
                    (unsigned long long)nl, ipath, n);
        goto done;
    }
    x = alloc_for(ipath, n * h * w, sizeof(double), 0);   /* (n, h*w); n*h*w bytes exist */
    y = alloc_for(lpath, n, sizeof(double), 0);
    if (!x || !y) { s = PK_ERR_NOMEM; goto done; }
    for (size_t i = 0; i < n * h * w; i++) x[i] = ib[16 + i] / 255.0;
    for (size_t i = 0; i < n; i++) y[i] = lb[8 + i];
    d->n = n;
    d->d = h * w;
    d->ty = 1;
    d->img_c = 1;
    d->img_h = h;
    d->img_w = w;
    d->x = x;
    d->y = y;
    x = y = NULL;
done:
    free(ib);
    free(lb);
    free(x);
    free(y);
    return s;
}

/* ------------------------------------------------------------- dispatch */

/* "PREFIX:A,B" -> malloc'ed copies of A and B. */
static pk_status split_pair(const char *spec, size_t skip, const char *form, char **a, char **b)
{
    *a = *b = NULL;
    const char *p = spec + skip, *comma = strchr(p, ',');
    if (!comma || comma == p || !comma[1])
        return pk_fail(PK_ERR_INPUT, "%s: expected %s (two paths separated by a comma)", spec, form);
    size_t na = (size_t)(comma - p);
    *a = alloc_for(spec, na + 1, 1, 0);
    *b = *a ? pk_strdup(comma + 1) : NULL;
    if (!*a || !*b) { free(*a); free(*b); *a = *b = NULL; return PK_ERR_NOMEM; }
    memcpy(*a, p, na);
    (*a)[na] = 0;
    return PK_OK;
}

static pk_status load_fmnist(const char *spec, size_t first, pk_data *d)
{
    const char *split = spec + strlen("fashion-mnist:");
    const char *stem = !strcmp(split, "train") ? "train" : !strcmp(split, "test") ? "t10k" : NULL;
    if (!stem)
        return pk_fail(PK_ERR_INPUT, "%s: unknown fashion-mnist split '%.32s'; use "
                       "fashion-mnist:train or fashion-mnist:test", spec, split);
    char ip[256], lp[256];
    snprintf(ip, sizeof ip, "%s/%s-images-idx3-ubyte.gz", FMNIST_DIR, stem);
    snprintf(lp, sizeof lp, "%s/%s-labels-idx1-ubyte.gz", FMNIST_DIR, stem);
    const char *missing = access(ip, R_OK) ? ip : access(lp, R_OK) ? lp : NULL;
    if (missing)
        return pk_fail(PK_ERR_IO, "%s: cannot read it; %s needs Debian's Fashion-MNIST: "
                       "apt-get install dataset-fashion-mnist", missing, spec);
    return load_idx(ip, lp, first, d);
}

/* Keep the first N, or a seeded random N in data order (partial Fisher-Yates
 * over the indices, then sorted). */
static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static pk_status select_examples(const char *spec, const pk_load_opts *o, pk_data *d)
{
    if (o->first && o->random)
        return pk_fail(PK_ERR_INPUT, "%s: choose the first N (first) or a random N (random) examples, not both",
                       spec);
    size_t want = o->first ? o->first : o->random;
    if (!want) return PK_OK;
    if (want > d->n)
        return pk_fail(PK_ERR_INPUT, "%s: asked for %s%zu examples but it has only %zu", spec,
                       o->first ? "the first " : "a random ", want, d->n);
    if (o->random) {
        if (d->n > UINT32_MAX)
            return pk_fail(PK_ERR_INPUT, "%s: random selection supports at most 2^32-1 examples",
                           spec);
        uint32_t *idx = alloc_for(spec, d->n, sizeof *idx, 0);
        if (!idx) return PK_ERR_NOMEM;
        for (size_t i = 0; i < d->n; i++) idx[i] = (uint32_t)i;
        pk_rng r;
        pk_rng_seed(&r, o->seed);
        for (size_t i = 0; i < want; i++) {
            size_t j = i + pk_rng_below(&r, d->n - i);
            uint32_t tmp = idx[i];
            idx[i] = idx[j];
            idx[j] = tmp;
        }
        qsort(idx, want, sizeof *idx, cmp_u32);
        /* idx[k] >= k (sorted, distinct), so moving rows forward is safe. */
        for (size_t k = 0; k < want; k++) {
            if (idx[k] == k) continue;
            memmove(d->x + k * d->d, d->x + (size_t)idx[k] * d->d, d->d * sizeof *d->x);
            memmove(d->y + k * d->ty, d->y + (size_t)idx[k] * d->ty, d->ty * sizeof *d->y);
        }
        free(idx);
    }
    d->n = want;
    double *nx = realloc(d->x, want * d->d * sizeof *d->x);   /* shrink; keep on failure */
    if (nx) d->x = nx;
    double *ny = realloc(d->y, want * d->ty * sizeof *d->y);
    if (ny) d->y = ny;
    return PK_OK;
}

pk_status pk_data_load(const char *spec, const pk_load_opts *opts, pk_data *out)
{
    if (!out) return pk_fail(PK_ERR_INPUT, "pk_data_load: no output data set given");
    memset(out, 0, sizeof *out);
    if (!spec || !*spec)
        return pk_fail(PK_ERR_INPUT, "(empty data spec): expected one of %s", spec_forms);
    pk_load_opts o = opts ? *opts : pk_load_opts_defaults();
    pk_data d;
    memset(&d, 0, sizeof d);
    pk_status s;
    char *a = NULL, *b = NULL;
    if (!strncmp(spec, "npy:", 4)) {
        if (!(s = split_pair(spec, 4, "npy:FEATURES.npy,TARGETS.npy", &a, &b)))
            s = load_npy(a, b, &d);
    } else if (!strncmp(spec, "idx:", 4)) {
        if (!(s = split_pair(spec, 4, "idx:IMAGES,LABELS", &a, &b)))
            s = load_idx(a, b, o.random ? 0 : o.first, &d);
    } else if (!strncmp(spec, "fashion-mnist:", 14)) {
        s = load_fmnist(spec, o.random ? 0 : o.first, &d);
    } else if (ends_with(spec, ".csv") || ends_with(spec, ".csv.gz")) {
        s = load_csv(spec, &d);
    } else if (ends_with(spec, ".svm") || ends_with(spec, ".libsvm") ||
               ends_with(spec, ".svm.gz") || ends_with(spec, ".libsvm.gz")) {
        s = load_svm(spec, &d);
    } else {
        s = pk_fail(PK_ERR_INPUT, "%s: unknown data spec; expected one of %s", spec, spec_forms);
    }
    free(a);
    free(b);
    if (!s && !d.n) s = pk_fail(PK_ERR_INPUT, "%s: no examples", spec);
    if (!s) s = select_examples(spec, &o, &d);
    if (!s && !(d.source = alloc_for(spec, strlen(spec) + 1, 1, 0))) s = PK_ERR_NOMEM;
    if (s) {
        pk_data_free(&d);
        return s;
    }
    memcpy(d.source, spec, strlen(spec) + 1);
    *out = d;
    return PK_OK;
}

/* ------------------------------------------------------ statistics, checks */

void pk_data_moments(const pk_data *data, double *mean, double *std)
{
    size_t n = data->n, dim = data->d;
    const double *x = data->x;   /* (n, d) */
    if (!n || !x) {
        for (size_t j = 0; j < dim; j++) { mean[j] = 0; std[j] = 1; }
        return;
    }
    /* Pass 1: sums, and in std[] whether the feature varies at all. A
     * constant feature's mean may differ from its value by rounding
     * (40 x 0.1 / 40 != 0.1), so it is detected exactly and gets mean = the
     * value and std 1: it standardises to exactly 0. */
    for (size_t j = 0; j < dim; j++) { mean[j] = 0; std[j] = 0; }
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < dim; j++) {
            double v = x[i * dim + j];
            mean[j] += v;
            if (v != x[j]) std[j] = 1;
        }
    for (size_t j = 0; j < dim; j++) {
        if (std[j] == 0) { mean[j] = x[j]; std[j] = -1; }   /* constant: marked */
        else { mean[j] /= (double)n; std[j] = 0; }
    }
    /* Pass 2: squared deviations (two passes for accuracy), row-major. */
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < dim; j++) {
            if (std[j] < 0) continue;
            double e = x[i * dim + j] - mean[j];
            std[j] += e * e;
        }
    for (size_t j = 0; j < dim; j++) {
        std[j] = std[j] < 0 ? 1 : sqrt(std[j] / (double)n);   /* population std */
        if (!(std[j] > 0)) std[j] = 1;
    }
}

void pk_data_standardize(pk_data *data, const double *mean, const double *std)
{
    size_t n = data->n, dim = data->d;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < dim; j++)
            data->x[i * dim + j] = (data->x[i * dim + j] - mean[j]) / std[j];
}

uint64_t pk_data_fingerprint(const pk_data *data)
{
    uint64_t h = PK_HASH_INIT;
    uint64_t dims[3] = { data->n, data->d, data->ty };
    h = pk_hash_bytes(h, dims, sizeof dims);
    if (data->x) h = pk_hash_bytes(h, data->x, data->n * data->d * sizeof *data->x);
    if (data->y) h = pk_hash_bytes(h, data->y, data->n * data->ty * sizeof *data->y);
    return h;
}

pk_status pk_data_classes(const pk_data *data, size_t *n_classes)
{
    const char *src = data->source ? data->source : "(data)";
    *n_classes = 0;
    if (data->ty != 1)
        return pk_fail(PK_ERR_INPUT, "%s: targets have %zu columns; class labels need exactly 1",
                       src, data->ty);
    if (!data->n) return pk_fail(PK_ERR_INPUT, "%s: no examples", src);
    double mx = 0;
    for (size_t i = 0; i < data->n; i++) {
        double v = data->y[i];
        if (!(v >= 0) || v != floor(v) || v >= (double)MAX_CLASSES)
            return pk_fail(PK_ERR_INPUT, "%s: example %zu (0-based): target %.17g is not a class "
                           "index (an integer in 0..%zu)", src, i, v, MAX_CLASSES - 1);
        if (v > mx) mx = v;
    }
    *n_classes = (size_t)mx + 1;
    return PK_OK;
}
