/* data.c -- data sets: load from a spec (CSV, npy, svmlight, IDX), select
 * examples, moments and standardisation, fingerprint, class count.
 *
 * Every loader reads its file whole (pk_read_file, which also gunzips), checks
 * it completely, and only then fills a pk_data; an error message starts with
 * the file path and says where (line, column, byte offset, element) and what
 * is wrong. On failure `out` is left zeroed. */
#include "io/io.h"

#include <ctype.h>
#include <errno.h>
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
    "PATH.csv, PATH.csv.gz, PATH.tsv, PATH.tsv.gz, PATH.svm, PATH.libsvm, npy:FEATURES.npy,TARGETS.npy, "
    "idx:IMAGES,LABELS, fashion-mnist:train or fashion-mnist:test";

pk_load_opts pk_load_opts_defaults(void)
{
    pk_load_opts o;
    memset(&o, 0, sizeof o);
    return o;
}

void pk_data_free(pk_data *data)
{
    if (!data) return;
    free(data->x);
    free(data->y);
    free(data->source);
    free(data->class_names);
    free(data->feature_names);
    free(data->warning);
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

/* ------------------------------------------------------------------ names */

/* A list of names as one allocation: (n) pointers, then `bytes` of strings. */
static char **names_alloc(const char *path, size_t n, size_t bytes)
{
    if (n > (SIZE_MAX - bytes - 1) / sizeof(char *)) {
        pk_fail(PK_ERR_NOMEM, "%s: too many names", path);
        return NULL;
    }
    return alloc_for(path, n * sizeof(char *) + bytes + 1, 1, 0);
}

/* Copy names[0 .. n) into one allocation; line breaks become spaces (a
 * name is one line of a names file). NULL with the error set on failure. */
static char **names_copy(const char *path, const char *const *names, const size_t *lens, size_t n)
{
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++) bytes += (lens ? lens[i] : strlen(names[i])) + 1;
    char **out = names_alloc(path, n, bytes);
    if (!out) return NULL;
    char *p = (char *)(out + n);
    for (size_t i = 0; i < n; i++) {
        size_t len = lens ? lens[i] : strlen(names[i]);
        out[i] = p;
        for (size_t k = 0; k < len; k++) p[k] = names[i][k] == '\n' || names[i][k] == '\r' ? ' ' : names[i][k];
        p[len] = 0;
        p += len + 1;
    }
    return out;
}

const char *pk_data_class_name(const pk_data *data, double label)
{
    if (!data || !data->class_names || !(label >= 0) || label != floor(label) ||
        label >= (double)data->n_class_names)
        return NULL;
    return data->class_names[(size_t)label];
}

/* A string [s, s + n) and where it came from (a class index, an example):
 * what name lists and labels are sorted as, for lookups and distinct values. */
typedef struct text_key { const char *s; size_t n, idx; } text_key;

static int cmp_text(const char *a, size_t na, const char *b, size_t nb)
{
    int c = memcmp(a, b, na < nb ? na : nb);
    return c ? c : (na > nb) - (na < nb);
}

static int cmp_text_key(const void *pa, const void *pb)
{
    const text_key *a = pa, *b = pb;
    int c = cmp_text(a->s, a->n, b->s, b->n);
    return c ? c : (a->idx > b->idx) - (a->idx < b->idx);
}

/* names[0 .. n) as text_keys sorted by name (malloc'ed), or NULL. */
static text_key *names_sorted(const char *path, const char *const *names, size_t n)
{
    text_key *k = alloc_for(path, n ? n : 1, sizeof *k, 0);   /* (n) */
    if (!k) return NULL;
    for (size_t i = 0; i < n; i++) k[i] = (text_key){names[i], strlen(names[i]), i};
    qsort(k, n, sizeof *k, cmp_text_key);
    return k;
}

/* The index of the name [s, s + len) among the n sorted keys, or -1. */
static long names_find(const text_key *k, size_t n, const char *s, size_t len)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = cmp_text(k[mid].s, k[mid].n, s, len);
        if (!c) return (long)k[mid].idx;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return -1;
}

/* The first names of a list, for a message: "a, b, c, ... (12 in all)". */
static void names_list(char *dst, size_t cap, const char *const *names, size_t n)
{
    size_t k = 0;
    dst[0] = 0;
    for (size_t i = 0; i < n && i < 8 && k + 60 < cap; i++) {
        char nm[48];
        printable(nm, sizeof nm, names[i], strlen(names[i]));
        k += (size_t)snprintf(dst + k, cap - k, "%s%s", i ? ", " : "", nm);
    }
    if (n > 8 && k + 24 < cap) snprintf(dst + k, cap - k, ", ... (%zu in all)", n);
}

pk_status pk_names_read(const char *path, char ***names, size_t *n) { return pk_names_load(path, 1, names, n); }

pk_status pk_names_load(const char *path, int unique, char ***names, size_t *n)
{
    *names = NULL;
    *n = 0;
    text t;
    pk_status s = text_open(path, &t);
    if (s) return s;
    size_t lines = 1;
    for (size_t i = t.pos; i < t.len; i++) lines += t.buf[i] == '\n';
    const char **name = alloc_for(path, lines, sizeof *name, 0);   /* (lines) into t.buf */
    size_t *len = alloc_for(path, lines, sizeof *len, 0);          /* (lines) */
    size_t count = 0, blank_at = 0;
    char *ln;
    size_t lnn;
    if (!name || !len) s = PK_ERR_NOMEM;
    while (!s && text_line(&t, &ln, &lnn)) {
        char *ls = ln, *le = ln + lnn;
        trim(&ls, &le);
        if (ls == le) {
            if (!blank_at) blank_at = t.lineno;
            continue;
        }
        if (blank_at)
            s = pk_fail(PK_ERR_INPUT, "%s: line %zu: empty name (one name a line, no blank lines but at the end)",
                        path, blank_at);
        name[count] = ls;
        len[count++] = (size_t)(le - ls);
    }
    if (!s && !count) s = pk_fail(PK_ERR_INPUT, "%s: no names (one a line)", path);
    /* a repeated name would make two classes that no one can tell apart */
    char **out = s ? NULL : names_copy(path, name, len, count);
    if (!s && !out) s = PK_ERR_NOMEM;
    text_key *order = s || !unique ? NULL : names_sorted(path, (const char *const *)out, count);
    if (!s && unique && !order) s = PK_ERR_NOMEM;
    for (size_t i = 1; order && i < count && !s; i++)
        if (!cmp_text(order[i].s, order[i].n, order[i - 1].s, order[i - 1].n)) {
            char nm[48];
            printable(nm, sizeof nm, order[i].s, order[i].n);
            s = pk_fail(PK_ERR_INPUT, "%s: name '%s' appears twice (lines %zu and %zu); each class needs "
                        "its own", path, nm, order[i - 1].idx + 1, order[i].idx + 1);
        }
    free(order);
    free(name);
    free(len);
    free(t.buf);
    if (s) { free(out); return s; }
    *names = out;
    *n = count;
    return PK_OK;
}

/* ------------------------------------------------------------------- csv */

/* A CSV reader over a text buffer (RFC 4180): records of fields split at
 * `sep`; a field that starts with '"' (after blanks) runs to the next lone
 * '"', holds "" as one '"' and may hold the separator and line breaks; LF or
 * CRLF ends a record; an unquoted field is trimmed of blanks. */
typedef struct csv_field {
    char *s;       /* the field's text (unquoted in place, when asked) */
    size_t n;
    int quoted;
} csv_field;

typedef struct csv_reader {
    text *t;
    char sep;
    csv_field *f;   /* (cap) the fields of the last record */
    size_t cap, nf; /* its field count */
    size_t line;    /* the line it starts on, 1-based */
} csv_reader;

static int csv_blank(int c, char sep) { return c != sep && (c == ' ' || c == '\t' || c == '\v' || c == '\f'); }

/* The next record into r: 1, 0 at the end of the text, -1 on an error
 * (reported). With unquote 0 the buffer is left as it is and a quoted
 * field's text is its raw inside (doubled quotes kept): enough to count
 * fields and to read numbers, for looking ahead. */
static int csv_next(const char *path, csv_reader *r, int unquote)
{
    text *t = r->t;
    if (t->pos >= t->len) return 0;
    char *p = t->buf + t->pos, *end = t->buf + t->len;
    r->nf = 0;
    r->line = t->lineno + 1;
    size_t line = r->line;   /* the line p is on */
    for (;;) {
        if (r->nf == r->cap) {
            size_t cap = r->cap ? 2 * r->cap : 16;
            csv_field *f = realloc(r->f, cap * sizeof *f);
            if (!f) { pk_fail(PK_ERR_NOMEM, "%s: out of memory reading line %zu", path, line); return -1; }
            r->f = f;
            r->cap = cap;
        }
        csv_field *f = &r->f[r->nf++];
        char *q = p;
        while (q < end && csv_blank((unsigned char)*q, r->sep)) q++;
        if (q < end && *q == '"') {
            size_t open_line = line, col = r->nf;
            char *dst = q, *src = q + 1;
            f->s = q;
            f->quoted = 1;
            for (;;) {
                if (src >= end) {
                    pk_fail(PK_ERR_INPUT, "%s: line %zu, column %zu: the quoted field opened here is never "
                            "closed (a '\"' inside a quoted field is written '\"\"')", path, open_line, col);
                    return -1;
                }
                if (*src == '"') {
                    if (src + 1 < end && src[1] == '"') {
                        if (unquote) *dst = '"';
                        dst++;
                        src += 2;
                        continue;
                    }
                    src++;
                    break;
                }
                if (*src == '\n') line++;
                if (unquote) *dst = *src;
                dst++;
                src++;
            }
            f->n = (size_t)(dst - q);
            if (!unquote) { f->s = q + 1; f->n = (size_t)(src - 1 - (q + 1)); }
            q = src;
            while (q < end && (csv_blank((unsigned char)*q, r->sep) || (*q == '\r' && q + 1 < end && q[1] == '\n')))
                q++;
            if (q < end && *q != r->sep && *q != '\n') {
                pk_fail(PK_ERR_INPUT, "%s: line %zu, column %zu: text after the closing quote of a quoted "
                        "field (a '\"' inside a quoted field is written '\"\"')", path, line, col);
                return -1;
            }
        } else {
            char *fe = q;
            while (fe < end && *fe != r->sep && *fe != '\n') fe++;
            char *fs = p;
            q = fe;
            trim(&fs, &fe);
            f->s = fs;
            f->n = (size_t)(fe - fs);
            f->quoted = 0;
        }
        if (q < end && *q == r->sep) { p = q + 1; continue; }
        p = q < end ? q + 1 : end;   /* past the '\n' */
        break;
    }
    t->pos = (size_t)(p - t->buf);
    t->lineno = line;   /* the record's last line, done */
    return 1;
}

static int csv_is_blank_record(const csv_reader *r) { return r->nf == 1 && !r->f[0].quoted && !r->f[0].n; }

/* A field is text when it is not empty and not a number (NaN/Inf count as
 * numbers here: they are reported as errors later). */
static int csv_is_text(const csv_field *f)
{
    double v;
    return f->n && parse_number(f->s, f->s + f->n, &v) < 0;
}

/* The separator that splits the first (up to 10) records into the same
 * number of fields, more than one, the most of the candidates (comma first
 * on a tie); else the one giving the first record the most fields. */
static char csv_detect_sep(const char *path, text *t)
{
    static const char cand[3] = {',', ';', '\t'};
    size_t best_ok = 0, best_first = 0;
    char sep_ok = 0, sep_first = ',';
    for (int c = 0; c < 3; c++) {
        text look = *t;
        csv_reader r = {&look, cand[c], NULL, 0, 0, 0};
        size_t first = 0, records = 0;
        int same = 1, rc;
        while (records < 10 && (rc = csv_next(path, &r, 0)) == 1) {
            if (csv_is_blank_record(&r)) continue;
            if (!records) first = r.nf;
            else if (r.nf != first) same = 0;
            records++;
        }
        if (rc < 0) same = 0;
        free(r.f);
        if (same && first > 1 && first > best_ok) { best_ok = first; sep_ok = cand[c]; }
        if (first > best_first) { best_first = first; sep_first = cand[c]; }
    }
    return sep_ok ? sep_ok : sep_first;
}

/* The label column's index among `cols`: an integer (0-based, negative from
 * the end) or a name of the first record `head`; *by_name says which. */
static pk_status csv_label_column(const char *path, const char *want, const csv_reader *head, size_t cols,
                                  size_t *lc, int *by_name)
{
    *by_name = 0;
    if (!want) { *lc = cols - 1; return PK_OK; }
    char *end;
    errno = 0;
    long long v = strtoll(want, &end, 10);
    if (*want && !*end && !isspace((unsigned char)*want) && !errno) {
        if (v >= (long long)cols || v < -(long long)cols)
            return pk_fail(PK_ERR_INPUT, "%s: line %zu: no column %lld for the labels (label_column): the file has "
                           "%zu columns, 0..%zu (or -1..-%zu from the end)", path, head->line, v, cols, cols - 1, cols);
        *lc = v < 0 ? (size_t)((long long)cols + v) : (size_t)v;
        return PK_OK;
    }
    for (size_t c = 0; c < cols; c++)
        if (head->f[c].n == strlen(want) && !memcmp(head->f[c].s, want, head->f[c].n)) {
            *lc = c;
            *by_name = 1;
            return PK_OK;
        }
    char have[400], nm[48];
    size_t k = 0;
    have[0] = 0;
    for (size_t c = 0; c < cols && c < 12 && k + 60 < sizeof have; c++) {
        printable(nm, sizeof nm, head->f[c].s, head->f[c].n);
        k += (size_t)snprintf(have + k, sizeof have - k, "%s'%s'", c ? ", " : "", nm);
    }
    if (cols > 12) snprintf(have + k, sizeof have - k, ", ... (%zu columns)", cols);
    printable(nm, sizeof nm, want, strlen(want));
    return pk_fail(PK_ERR_INPUT, "%s: line %zu: no column named '%s' for the labels (label_column); the first line "
                   "has %s: give one of those names, or the column's index (0-based)", path, head->line, nm, have);
}

/* One label as read: its text (in the file's buffer) and line. */
typedef struct csv_label { const char *s; size_t n, line; } csv_label;

/* Text labels -> class indices y (n): through the classes given (o), or
 * else the sorted distinct labels become the classes (d->class_names). */
static pk_status csv_map_labels(const char *path, const pk_load_opts *o, const csv_label *lab, size_t n, size_t lc,
                                double *y, pk_data *d)
{
    char tok[48], list[600];
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < lab[i].n; k++) {
            unsigned char ch = (unsigned char)lab[i].s[k];
            if (ch >= 0x20 && ch != 0x7f) continue;
            printable(tok, sizeof tok, lab[i].s, lab[i].n);
            return pk_fail(PK_ERR_INPUT, "%s: line %zu, column %zu: label '%s' holds a control character or line "
                           "break; a class name is one line of printable text", path, lab[i].line, lc + 1, tok);
        }
    pk_status s = PK_OK;
    if (!o->class_names) {   /* the classes: the sorted distinct labels */
        text_key *order = alloc_for(path, n, sizeof *order, 0);  /* (n) examples by label */
        const char **name = alloc_for(path, n, sizeof *name, 0); /* (classes) into the buffer */
        size_t *len = alloc_for(path, n, sizeof *len, 0);        /* (classes) */
        if (!order || !name || !len) s = PK_ERR_NOMEM;
        size_t C = 0;
        if (!s) {
            for (size_t i = 0; i < n; i++) order[i] = (text_key){lab[i].s, lab[i].n, i};
            qsort(order, n, sizeof *order, cmp_text_key);
            for (size_t k = 0; k < n; k++) {
                if (!C || cmp_text(name[C - 1], len[C - 1], order[k].s, order[k].n)) {
                    name[C] = order[k].s;
                    len[C++] = order[k].n;
                }
                y[order[k].idx] = (double)(C - 1);
            }
            if (C > MAX_CLASSES)
                s = pk_fail(PK_ERR_INPUT, "%s: %zu distinct labels; at most %zu classes", path, C, MAX_CLASSES);
        }
        if (!s && !(d->class_names = names_copy(path, name, len, C))) s = PK_ERR_NOMEM;
        if (!s) d->n_class_names = C;
        free(order);
        free(name);
        free(len);
        return s;
    }
    /* through the classes given: a name, else an integer index below their count */
    size_t nc = o->n_class_names;
    text_key *known = names_sorted(path, o->class_names, nc);   /* (nc) */
    if (!known) return PK_ERR_NOMEM;
    names_list(list, sizeof list, o->class_names, nc);
    size_t unseen = 0, first_unseen = 0;
    for (size_t i = 0; i < n && !s; i++) {
        long c = names_find(known, nc, lab[i].s, lab[i].n);
        double v;
        char *ls = (char *)lab[i].s;
        if (c < 0 && !parse_number(ls, ls + lab[i].n, &v) && v >= 0 && v == floor(v) && v < (double)nc)
            c = (long)v;
        if (c >= 0) { y[i] = (double)c; continue; }
        printable(tok, sizeof tok, lab[i].s, lab[i].n);
        if (!o->allow_unseen)
            s = pk_fail(PK_ERR_INPUT, "%s: line %zu, column %zu: label '%s' is not one of the %zu known classes (%s); "
                        "use data whose labels the training data have", path, lab[i].line, lc + 1, tok, nc, list);
        if (!unseen++) first_unseen = i;
        y[i] = NAN;
    }
    free(known);
    if (!s && unseen) {
        char msg[900];
        printable(tok, sizeof tok, lab[first_unseen].s, lab[first_unseen].n);
        snprintf(msg, sizeof msg, "%s: %zu label%s not among the %zu known classes (%s), the first '%s' on line "
                 "%zu: %s no label", path, unseen, unseen == 1 ? " is" : "s are", nc, list, tok,
                 lab[first_unseen].line, unseen == 1 ? "that example has" : "those examples have");
        if (!(d->warning = pk_strdup(msg))) s = PK_ERR_NOMEM;
    }
    if (!s && !(d->class_names = names_copy(path, o->class_names, NULL, o->n_class_names))) s = PK_ERR_NOMEM;
    if (!s) d->n_class_names = o->n_class_names;
    return s;
}

static pk_status csv_field_error(const char *path, size_t line, size_t col, const csv_field *f, int r, int is_label)
{
    char tok[48];
    printable(tok, sizeof tok, f->s, f->n);
    if (!f->n) return pk_fail(PK_ERR_INPUT, "%s: line %zu, column %zu: empty field", path, line, col);
    if (r < 0)
        return pk_fail(PK_ERR_INPUT, "%s: line %zu, column %zu: '%s' is not a number (only the labels may be text: "
                       "name their column with label_column)", path, line, col, tok);
    return pk_fail(PK_ERR_INPUT, "%s: line %zu, column %zu: %s'%s' is not finite (NaN/Inf values are not allowed)",
                   path, line, col, is_label ? "label " : "", tok);
}

static pk_status load_csv(const char *path, const pk_load_opts *o, pk_data *d)
{
    text t;
    pk_status s = text_open(path, &t);
    if (s) return s;
    char sep = o->sep ? o->sep : (ends_with(path, ".tsv") || ends_with(path, ".tsv.gz")) ? '\t'
                                                                                          : csv_detect_sep(path, &t);
    size_t max_lines = 1;
    for (size_t i = t.pos; i < t.len; i++) max_lines += t.buf[i] == '\n';

    csv_reader r = {&t, sep, NULL, 0, 0, 0};
    size_t cols = 0, lc = 0, first_data = 0, header = 0, blank_at = 0, n = 0;
    int by_name = 0, text_labels = 0, rc;
    double *x = NULL, *y = NULL;   /* (max_rows, cols - 1), (max_rows) */
    csv_label *lab = NULL;         /* (max_rows) the label fields */
    char **features = NULL;        /* (cols - 1) from the header */
    while (!s && (rc = csv_next(path, &r, 1)) != 0) {
        if (rc < 0) { s = PK_ERR_INPUT; break; }
        if (csv_is_blank_record(&r)) {
            if (!blank_at) blank_at = r.line;
            continue;
        }
        if (blank_at) {
            s = pk_fail(PK_ERR_INPUT, "%s: line %zu: empty line inside the data (only trailing "
                        "blank lines are allowed)", path, blank_at);
            break;
        }
        if (!cols) {   /* the first record: the label column, and is it a header? */
            cols = r.nf;
            if (cols < 2) {
                s = pk_fail(PK_ERR_INPUT, "%s: line %zu: only 1 column; need the features and a target column "
                            "(the separator is detected among comma, semicolon and tab, or given: sep)", path, r.line);
                break;
            }
            if ((s = csv_label_column(path, o->label_column, &r, cols, &lc, &by_name))) break;
            int feature_text = 0;
            for (size_t c = 0; c < cols; c++) feature_text |= c != lc && csv_is_text(&r.f[c]);
            int is_header = by_name || feature_text;
            if (!is_header && csv_is_text(&r.f[lc])) {
                /* text only in the label column: a header when the next
                 * record's label is a number, else a first text label */
                text look = t;
                csv_reader ahead = {&look, sep, NULL, 0, 0, 0};
                int ra;
                while ((ra = csv_next(path, &ahead, 0)) == 1 && csv_is_blank_record(&ahead)) {}
                is_header = ra == 1 && ahead.nf == cols && !csv_is_text(&ahead.f[lc]);
                free(ahead.f);
            }
            if (is_header) {
                header = r.line;
                const char **nm = alloc_for(path, cols, sizeof *nm, 0);   /* (cols - 1) */
                size_t *len = alloc_for(path, cols, sizeof *len, 0);      /* (cols - 1) */
                char *unnamed = alloc_for(path, cols, 24, 0);   /* (cols, 24) "column C" */
                if (nm && len && unnamed)
                    for (size_t c = 0, j = 0; c < cols; c++) {
                        if (c == lc) continue;
                        nm[j] = r.f[c].s;
                        len[j] = r.f[c].n;
                        if (!len[j]) {   /* an empty name (pandas' index column): its place */
                            nm[j] = unnamed + 24 * c;
                            len[j] = (size_t)snprintf(unnamed + 24 * c, 24, "column %zu", c + 1);
                        }
                        j++;
                    }
                if (!nm || !len || !unnamed || !(features = names_copy(path, nm, len, cols - 1)))
                    s = PK_ERR_NOMEM;
                free(unnamed);
                free(nm);
                free(len);
                if (s) break;
            }
            /* a row of `cols` fields takes at least cols bytes (the separators
             * and a newline): the rows left are bounded by the bytes left, so
             * the arrays are at most 8x the file however many lines it has */
            size_t max_rows = (t.len - t.pos) / cols + 2;
            if (max_rows > max_lines) max_rows = max_lines;
            x = alloc_for(path, max_rows, (cols - 1) * sizeof(double), 0);
            y = alloc_for(path, max_rows, sizeof(double), 0);
            lab = alloc_for(path, max_rows, sizeof *lab, 0);
            if (!x || !y || !lab) { s = PK_ERR_NOMEM; break; }
            if (is_header) continue;
        }
        if (!first_data) first_data = r.line;
        if (r.nf != cols) {
            if (header)
                s = pk_fail(PK_ERR_INPUT, "%s: line %zu: %zu columns, but the header on line %zu has %zu", path,
                            r.line, r.nf, header, cols);
            else
                s = pk_fail(PK_ERR_INPUT, "%s: line %zu: %zu columns, expected %zu (as on line %zu)", path, r.line,
                            r.nf, cols, first_data);
            break;
        }
        for (size_t c = 0, j = 0; c < cols; c++) {
            csv_field *f = &r.f[c];
            double v = 0;
            int num = parse_number(f->s, f->s + f->n, &v);
            if (c == lc) {
                if (!f->n || num > 0) { s = csv_field_error(path, r.line, c + 1, f, num, 1); break; }
                char *ls = f->s, *le = f->s + f->n;   /* a quoted label too: names are trimmed */
                trim(&ls, &le);
                lab[n] = (csv_label){ls, (size_t)(le - ls), r.line};
                text_labels |= num < 0;
                y[n] = v;
                continue;
            }
            if (num) { s = csv_field_error(path, r.line, c + 1, f, num, 0); break; }
            x[n * (cols - 1) + j++] = v;
        }
        if (s) break;
        n++;
    }
    if (!s && !n)
        s = header ? pk_fail(PK_ERR_INPUT, "%s: line %zu is a header and no examples follow", path, header)
                   : pk_fail(PK_ERR_INPUT, "%s: byte offset 0: empty file (no examples)", path);
    if (!s && (text_labels || o->class_names)) s = csv_map_labels(path, o, lab, n, lc, y, d);
    free(lab);
    free(r.f);
    free(t.buf);
    if (s) {
        free(x);
        free(y);
        free(features);
        free(d->class_names);
        free(d->warning);
        d->class_names = NULL;
        d->warning = NULL;
        d->n_class_names = 0;
        return s;
    }
    d->n = n;
    d->d = cols - 1;
    d->ty = 1;
    d->x = x;
    d->y = y;
    d->feature_names = features;
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

/* Fashion-MNIST's classes, in label order (Xiao, Rasul, Vollgraf 2017). */
static const char *const fmnist_classes[10] = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"};

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
    pk_status s = load_idx(ip, lp, first, d);
    if (!s && !(d->class_names = names_copy(spec, fmnist_classes, NULL, 10))) s = PK_ERR_NOMEM;
    if (!s) d->n_class_names = 10;
    return s;
}

/* The classes given (o->class_names) for a format whose labels are numbers:
 * every label an index below their count, which names it (or, with
 * allow_unseen, NaN: no label). */
static pk_status name_classes(const char *spec, const pk_load_opts *o, pk_data *d)
{
    if (d->ty != 1)
        return pk_fail(PK_ERR_INPUT, "%s: class names (class_names) need class labels, one target column; "
                       "this data has %zu", spec, d->ty);
    size_t unseen = 0, first_unseen = 0;
    for (size_t i = 0; i < d->n; i++) {
        double v = d->y[i];
        if (v >= 0 && v == floor(v) && v < (double)o->n_class_names) continue;
        if (!o->allow_unseen)
            return pk_fail(PK_ERR_INPUT, "%s: example %zu (0-based): label %.17g is not one of the %zu classes "
                           "named (class_names), 0..%zu", spec, i, v, o->n_class_names, o->n_class_names - 1);
        if (!unseen++) first_unseen = i;
        d->y[i] = NAN;
    }
    if (unseen) {
        char msg[400];
        snprintf(msg, sizeof msg, "%s: %zu label%s not among the %zu known classes, the first at example %zu "
                 "(0-based): %s no label", spec, unseen, unseen == 1 ? " is" : "s are", o->n_class_names,
                 first_unseen, unseen == 1 ? "that example has" : "those examples have");
        if (!(d->warning = pk_strdup(msg))) return PK_ERR_NOMEM;
    }
    free(d->class_names);
    d->class_names = names_copy(spec, o->class_names, NULL, o->n_class_names);
    if (!d->class_names) return PK_ERR_NOMEM;
    d->n_class_names = o->n_class_names;
    return PK_OK;
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

int pk_data_spec_is_csv(const char *spec)
{
    return ends_with(spec, ".csv") || ends_with(spec, ".csv.gz") || ends_with(spec, ".tsv") ||
           ends_with(spec, ".tsv.gz");
}

pk_status pk_data_load(const char *spec, const pk_load_opts *opts, pk_data *out)
{
    if (!out) return pk_fail(PK_ERR_INPUT, "pk_data_load: no output data set given");
    memset(out, 0, sizeof *out);
    if (!spec || !*spec)
        return pk_fail(PK_ERR_INPUT, "(empty data spec): expected one of %s", spec_forms);
    pk_load_opts o = opts ? *opts : pk_load_opts_defaults();
    int csv = pk_data_spec_is_csv(spec);
    if (!csv && (o.sep || o.label_column))
        return pk_fail(PK_ERR_INPUT, "%s: a separator (sep) and a label column (label_column) are for CSV and TSV "
                       "files only", spec);
    if (o.sep == '"' || o.sep == '\n' || o.sep == '\r' || o.sep == ' ')
        return pk_fail(PK_ERR_INPUT, "%s: '%s' cannot separate fields (sep): use comma, semicolon, tab or another "
                       "character", spec, o.sep == '"' ? "\"" : o.sep == ' ' ? "space" : "line break");
    if (o.class_names && !o.n_class_names)
        return pk_fail(PK_ERR_INPUT, "%s: an empty list of class names (class_names)", spec);
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
    } else if (csv) {
        s = load_csv(spec, &o, &d);
    } else if (ends_with(spec, ".svm") || ends_with(spec, ".libsvm") ||
               ends_with(spec, ".svm.gz") || ends_with(spec, ".libsvm.gz")) {
        s = load_svm(spec, &d);
    } else {
        s = pk_fail(PK_ERR_INPUT, "%s: unknown data spec; expected one of %s", spec, spec_forms);
    }
    free(a);
    free(b);
    if (!s && !d.n) s = pk_fail(PK_ERR_INPUT, "%s: no examples", spec);
    /* CSV files map their labels through the classes given themselves */
    if (!s && o.class_names && !csv) s = name_classes(spec, &o, &d);
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
