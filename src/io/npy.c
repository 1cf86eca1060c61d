/* npy.c -- NumPy .npy files: read any supported dtype as double, write float64.
 *
 * Format (numpy.lib.format): "\x93NUMPY", major, minor, then the header
 * length (uint16 LE for 1.0, uint32 LE for 2.0/3.0), then a Python dict
 * literal {'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }
 * padded with spaces and a newline, then the raw data in C order.
 * The parser below is bounded by the buffer length everywhere: a garbage or
 * truncated file gives an error naming the byte offset, never an over-read. */
#include "io/io.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define NPY_MAGIC "\x93NUMPY"
#define NPY_MAGIC_LEN 6
#define NPY_ALIGN 64              /* numpy aligns the data to 64 bytes    */
#define NPY_GROWTH_DIGITS 21      /* numpy's spare room for shape[0] digits */

typedef enum npy_dtype { NPY_F8, NPY_F4, NPY_I8, NPY_I4, NPY_U1 } npy_dtype;

static const struct { const char *descr; npy_dtype t; size_t size; } npy_dtypes[] = {
    { "<f8", NPY_F8, 8 }, { "<f4", NPY_F4, 4 }, { "<i8", NPY_I8, 8 },
    { "<i4", NPY_I4, 4 }, { "|u1", NPY_U1, 1 }, { "<u1", NPY_U1, 1 },
};

/* Copy at most n bytes of s into dst (cap bytes) with anything that is not
 * printable ASCII replaced by '?', so that messages stay on one line. */
static void printable(char *dst, size_t cap, const unsigned char *s, size_t n)
{
    size_t k = 0, room = n < cap ? n : (cap > 4 ? cap - 4 : 0);
    for (size_t i = 0; i < room; i++)
        dst[k++] = (s[i] >= 0x20 && s[i] < 0x7f) ? (char)s[i] : '?';
    if (room < n && cap > 4) { memcpy(dst + k, "...", 3); k += 3; }
    dst[k] = 0;
}

static uint64_t le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* ------------------------------------------------------- header dict parse */

typedef struct hdr_cursor {
    const char *path;
    const unsigned char *buf;   /* the whole file, for offsets           */
    size_t pos, end;            /* current position and end of the header */
} hdr_cursor;

static pk_status hdr_error(const hdr_cursor *c, const char *what)
{
    return pk_fail(PK_ERR_INPUT, "%s: byte offset %zu: bad .npy header: %s", c->path,
                   c->pos, what);
}

static void hdr_skip_ws(hdr_cursor *c)
{
    while (c->pos < c->end) {
        unsigned char ch = c->buf[c->pos];
        if (ch != ' ' && ch != '\t' && ch != '\n' && ch != '\r') break;
        c->pos++;
    }
}

static int hdr_peek(const hdr_cursor *c) { return c->pos < c->end ? c->buf[c->pos] : -1; }

/* A quoted Python string without escapes; [*s, *s + *n) of buf. */
static pk_status hdr_string(hdr_cursor *c, size_t *s, size_t *n)
{
    int q = hdr_peek(c);
    if (q != '\'' && q != '"') return hdr_error(c, "expected a quoted string");
    size_t start = ++c->pos;
    while (c->pos < c->end && c->buf[c->pos] != q) {
        if (c->buf[c->pos] == '\\') return hdr_error(c, "escapes in strings are not supported");
        c->pos++;
    }
    if (c->pos >= c->end) return hdr_error(c, "unterminated string");
    *s = start;
    *n = c->pos - start;
    c->pos++;
    return PK_OK;
}

static int hdr_word(hdr_cursor *c, const char *w)
{
    size_t n = strlen(w);
    if (c->end - c->pos < n || memcmp(c->buf + c->pos, w, n) != 0) return 0;
    /* the word must end here */
    if (c->pos + n < c->end) {
        unsigned char ch = c->buf[c->pos + n];
        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_')
            return 0;
    }
    c->pos += n;
    return 1;
}

/* "(3, 4)", "(5,)", "()" with Python 2's optional L suffix on integers. */
static pk_status hdr_shape(hdr_cursor *c, size_t *ndim, size_t shape[PK_NPY_MAX_DIM])
{
    if (hdr_peek(c) != '(') return hdr_error(c, "'shape' must be a tuple of integers");
    c->pos++;
    *ndim = 0;
    for (;;) {
        hdr_skip_ws(c);
        int ch = hdr_peek(c);
        if (ch == ')') { c->pos++; return PK_OK; }
        if (ch < '0' || ch > '9') return hdr_error(c, "'shape' must be a tuple of non-negative integers");
        if (*ndim == PK_NPY_MAX_DIM)
            return hdr_error(c, "more than 8 dimensions are not supported");
        size_t v = 0;
        while ((ch = hdr_peek(c)) >= '0' && ch <= '9') {
            size_t digit = (size_t)(ch - '0');
            if (v > (SIZE_MAX - digit) / 10) return hdr_error(c, "a dimension in 'shape' is too large");
            v = v * 10 + digit;
            c->pos++;
        }
        if (hdr_peek(c) == 'L') c->pos++;
        shape[(*ndim)++] = v;
        hdr_skip_ws(c);
        ch = hdr_peek(c);
        if (ch == ',') { c->pos++; continue; }
        if (ch == ')') { c->pos++; return PK_OK; }
        return hdr_error(c, "expected ',' or ')' in 'shape'");
    }
}

/* What the header says: dtype (index in npy_dtypes), shape, element count
 * and where the data start. */
typedef struct npy_hdr { size_t ti, nd, shp[PK_NPY_MAX_DIM], count, doff; } npy_hdr;

/* The header of buf[0 .. len), which need not hold the data. */
static pk_status npy_header_parse(const char *path, const unsigned char *buf, size_t len, npy_hdr *h)
{
    if (len < 8 || memcmp(buf, NPY_MAGIC, NPY_MAGIC_LEN) != 0) {
        if (len < NPY_MAGIC_LEN || memcmp(buf, NPY_MAGIC, NPY_MAGIC_LEN) != 0)
            return pk_fail(PK_ERR_INPUT, "%s: byte offset 0: not a .npy file (it does not start "
                           "with \\x93NUMPY)", path);
        return pk_fail(PK_ERR_INPUT, "%s: byte offset %zu: truncated .npy file (%zu bytes, "
                       "ends inside the version field)", path, len, len);
    }
    unsigned major = buf[6], minor = buf[7];
    if ((major != 1 && major != 2 && major != 3) || minor != 0)
        return pk_fail(PK_ERR_INPUT, "%s: byte offset 6: unsupported .npy version %u.%u "
                       "(supported: 1.0, 2.0, 3.0)", path, major, minor);
    size_t hstart = major == 1 ? 10 : 12;
    if (len < hstart)
        return pk_fail(PK_ERR_INPUT, "%s: byte offset 8: truncated .npy file (%zu bytes, ends "
                       "inside the header length)", path, len);
    size_t hlen = major == 1 ? (size_t)(buf[8] | buf[9] << 8) : (size_t)le32(buf + 8);
    if (hlen > len - hstart)
        return pk_fail(PK_ERR_INPUT, "%s: byte offset %zu: truncated .npy file: the header "
                       "declares %zu bytes but only %zu follow", path, hstart, hlen, len - hstart);

    hdr_cursor c = { path, buf, hstart, hstart + hlen };
    size_t descr_s = 0, descr_n = 0;
    int have_descr = 0, have_fortran = 0, have_shape = 0, fortran = 0;
    size_t nd = 0, shp[PK_NPY_MAX_DIM] = { 0 };
    pk_status s;

    hdr_skip_ws(&c);
    if (hdr_peek(&c) != '{') return hdr_error(&c, "expected '{'");
    c.pos++;
    for (;;) {
        hdr_skip_ws(&c);
        if (hdr_peek(&c) == '}') { c.pos++; break; }
        size_t ks, kn;
        size_t kpos = c.pos;
        if ((s = hdr_string(&c, &ks, &kn))) return s;
        hdr_skip_ws(&c);
        if (hdr_peek(&c) != ':') return hdr_error(&c, "expected ':' after a key");
        c.pos++;
        hdr_skip_ws(&c);
        if (kn == 5 && !memcmp(buf + ks, "descr", 5)) {
            if (have_descr) { c.pos = kpos; return hdr_error(&c, "'descr' given twice"); }
            if (hdr_peek(&c) == '[')
                return hdr_error(&c, "structured dtypes are not supported (use a plain "
                                 "float64/float32/int64/int32/uint8 array)");
            if ((s = hdr_string(&c, &descr_s, &descr_n))) return s;
            have_descr = 1;
        } else if (kn == 13 && !memcmp(buf + ks, "fortran_order", 13)) {
            if (have_fortran) { c.pos = kpos; return hdr_error(&c, "'fortran_order' given twice"); }
            if (hdr_word(&c, "True")) fortran = 1;
            else if (hdr_word(&c, "False")) fortran = 0;
            else return hdr_error(&c, "'fortran_order' must be True or False");
            have_fortran = 1;
        } else if (kn == 5 && !memcmp(buf + ks, "shape", 5)) {
            if (have_shape) { c.pos = kpos; return hdr_error(&c, "'shape' given twice"); }
            if ((s = hdr_shape(&c, &nd, shp))) return s;
            have_shape = 1;
        } else {
            char key[40];
            printable(key, sizeof key, buf + ks, kn);
            char msg[96];
            snprintf(msg, sizeof msg, "unexpected key '%s'", key);
            c.pos = kpos;
            return hdr_error(&c, msg);
        }
        hdr_skip_ws(&c);
        if (hdr_peek(&c) == ',') { c.pos++; continue; }
        if (hdr_peek(&c) == '}') { c.pos++; break; }
        return hdr_error(&c, "expected ',' or '}'");
    }
    hdr_skip_ws(&c);
    if (c.pos != c.end) return hdr_error(&c, "unexpected text after the header dict");
    if (!have_descr || !have_fortran || !have_shape) {
        c.pos = hstart;
        return hdr_error(&c, !have_descr ? "missing 'descr'"
                             : !have_fortran ? "missing 'fortran_order'" : "missing 'shape'");
    }

    const size_t nt = sizeof npy_dtypes / sizeof npy_dtypes[0];
    size_t ti = nt;
    for (size_t i = 0; i < nt; i++)
        if (strlen(npy_dtypes[i].descr) == descr_n && !memcmp(buf + descr_s, npy_dtypes[i].descr, descr_n))
            ti = i;
    if (ti == nt) {
        char d[24];
        printable(d, sizeof d, buf + descr_s, descr_n);
        const char *why = (descr_n && buf[descr_s] == '>') ? " (big-endian; save it little-endian "
                          "with a.astype(a.dtype.newbyteorder('<')))" : "";
        return pk_fail(PK_ERR_INPUT, "%s: byte offset %zu: unsupported dtype '%s'%s; supported: "
                       "'<f8' float64, '<f4' float32, '<i8' int64, '<i4' int32, '|u1' uint8 "
                       "(convert with a.astype(numpy.float64))", path, descr_s, d, why);
    }
    if (fortran)
        return pk_fail(PK_ERR_INPUT, "%s: byte offset %zu: Fortran-order arrays are not supported; "
                       "save a C-order copy (numpy.save(f, numpy.ascontiguousarray(a)))", path, hstart);

    size_t count = 1;
    for (size_t i = 0; i < nd; i++) {
        if (shp[i] && count > SIZE_MAX / shp[i])
            return pk_fail(PK_ERR_INPUT, "%s: byte offset %zu: the shape's element count "
                           "overflows", path, hstart);
        count *= shp[i];
    }
    size_t isz = npy_dtypes[ti].size;
    if (count > SIZE_MAX / isz || count > SIZE_MAX / sizeof(double))
        return pk_fail(PK_ERR_INPUT, "%s: byte offset %zu: the shape declares more data than can "
                       "be addressed", path, hstart);
    h->ti = ti;
    h->nd = nd;
    memcpy(h->shp, shp, sizeof shp);
    h->count = count;
    h->doff = hstart + hlen;
    return PK_OK;
}

pk_status pk_npy_parse(const char *path, const unsigned char *buf, size_t len,
                       double **a, size_t *ndim, size_t shape[PK_NPY_MAX_DIM])
{
    *a = NULL;
    *ndim = 0;
    npy_hdr h;
    pk_status s = npy_header_parse(path, buf, len, &h);
    if (s) return s;
    size_t ti = h.ti, nd = h.nd, count = h.count, isz = npy_dtypes[ti].size, *shp = h.shp;
    size_t doff = h.doff, need = count * isz, have = len - doff;
    if (have < need)
        return pk_fail(PK_ERR_INPUT, "%s: byte offset %zu: truncated .npy data: the shape "
                       "declares %zu bytes but the file has %zu", path, doff, need, have);
    if (have > need)
        return pk_fail(PK_ERR_INPUT, "%s: byte offset %zu: %zu unexpected bytes after the data "
                       "declared by the header", path, doff + need, have - need);

    double *out = pk_alloc(count, sizeof *out);
    if (!out)
        return pk_fail(PK_ERR_NOMEM, "%s: out of memory for %zu elements", path, count);
    const unsigned char *p = buf + doff;
    switch (npy_dtypes[ti].t) {
    case NPY_F8:
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        memcpy(out, p, count * 8); /* the file's bytes are the doubles */
        break;
#endif
        for (size_t i = 0; i < count; i++) {
            uint64_t u = le64(p + 8 * i);
            memcpy(&out[i], &u, 8);
        }
        break;
    case NPY_F4:
        for (size_t i = 0; i < count; i++) {
            uint32_t u = le32(p + 4 * i);
            float f;
            memcpy(&f, &u, 4);
            out[i] = f;
        }
        break;
    case NPY_I8:
        for (size_t i = 0; i < count; i++) {
            uint64_t u = le64(p + 8 * i);
            int64_t v;
            memcpy(&v, &u, 8);
            out[i] = (double)v;
        }
        break;
    case NPY_I4:
        for (size_t i = 0; i < count; i++) {
            uint32_t u = le32(p + 4 * i);
            int32_t v;
            memcpy(&v, &u, 4);
            out[i] = v;
        }
        break;
    case NPY_U1:
        for (size_t i = 0; i < count; i++) out[i] = p[i];
        break;
    }
    *a = out;
    *ndim = nd;
    for (size_t i = 0; i < nd; i++) shape[i] = shp[i];
    return PK_OK;
}

/* A float64 file of exactly the size its header declares, on a
 * little-endian host: the data read straight into the array, no copy of the
 * file in memory. 1: not such a file (the whole-file path then gives the
 * precise reason, if any). */
static int npy_read_direct(const char *path, double **a, size_t *ndim, size_t shape[8], pk_status *s)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 1;
    unsigned char head[4096];
    struct stat st;
    npy_hdr h;
    ssize_t got = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) ? pread(fd, head, sizeof head, 0) : -1;
    int direct = got > 0 && !npy_header_parse(path, head, (size_t)got, &h) && npy_dtypes[h.ti].t == NPY_F8 &&
                 (uint64_t)st.st_size == (uint64_t)h.doff + (uint64_t)h.count * 8;
    double *out = direct ? pk_alloc(h.count ? h.count : 1, sizeof *out) : NULL;
    size_t done = 0, want = direct ? h.count * 8 : 0;
    while (out && done < want) {
        ssize_t r = pread(fd, (unsigned char *)out + done, want - done, (off_t)(h.doff + done));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        done += (size_t)r;
    }
    close(fd);
    if (direct && !out) { *s = PK_ERR_NOMEM; return 0; }
    if (!direct || done < want) { free(out); return 1; } /* a read error or a file that changed: the slow way */
    *a = out;
    *ndim = h.nd;
    memcpy(shape, h.shp, h.nd * sizeof *shape);
    *s = PK_OK;
    return 0;
#else
    (void)path; (void)a; (void)ndim; (void)shape; (void)s;
    return 1;
#endif
}

pk_status pk_npy_read(const char *path, double **a, size_t *ndim, size_t shape[8])
{
    *a = NULL;
    *ndim = 0;
    pk_status direct;
    if (!npy_read_direct(path, a, ndim, shape, &direct)) return direct;
    unsigned char *buf;
    size_t len;
    pk_status s = pk_read_file(path, 0, 0, &buf, &len);
    if (s) return s;
    s = pk_npy_parse(path, buf, len, a, ndim, shape);
    free(buf);
    return s;
}

/* ------------------------------------------------------------------ write */

/* The header exactly as numpy 1.24 writes it (np.save gives the same bytes). */
static int npy_header(FILE *f, const char *descr, size_t ndim, const size_t *shape)
{
    char hdr[512];
    int k = snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': False, 'shape': (", descr);
    for (size_t i = 0; i < ndim; i++)
        k += snprintf(hdr + k, sizeof hdr - (size_t)k, i ? ", %zu" : "%zu", shape[i]);
    k += snprintf(hdr + k, sizeof hdr - (size_t)k, ndim == 1 ? ",), }" : "), }");
    if (ndim > 0) {
        int digits = snprintf(NULL, 0, "%zu", shape[0]);
        for (int i = digits; i < NPY_GROWTH_DIGITS; i++) hdr[k++] = ' ';
    }
    size_t hl = (size_t)k + 1;                       /* + the final newline */
    size_t pad = NPY_ALIGN - ((NPY_MAGIC_LEN + 4 + hl) % NPY_ALIGN);
    memset(hdr + k, ' ', pad);
    hdr[k + pad] = '\n';
    hl += pad;

    unsigned char pre[10];
    memcpy(pre, NPY_MAGIC, NPY_MAGIC_LEN);
    pre[6] = 1;
    pre[7] = 0;
    pre[8] = (unsigned char)(hl & 0xff);
    pre[9] = (unsigned char)(hl >> 8);
    return fwrite(pre, 1, sizeof pre, f) != sizeof pre || fwrite(hdr, 1, hl, f) != hl;
}

pk_status pk_npy_stream_open(pk_npy_stream *w, const char *path, int int64, size_t ndim, const size_t *shape)
{
    memset(w, 0, sizeof *w);
    if (ndim > PK_NPY_MAX_DIM)
        return pk_fail(PK_ERR_INPUT, "%s: cannot write %zu dimensions (at most 8)", path, ndim);
    size_t count = 1;
    for (size_t i = 0; i < ndim; i++) {
        if (shape[i] && count > SIZE_MAX / shape[i] / sizeof(double))
            return pk_fail(PK_ERR_INPUT, "%s: the shape's element count overflows", path);
        count *= shape[i];
    }
    pk_status s = pk_atomic_open(&w->at, path);
    if (s) return s;
    w->left = count;
    w->bad = npy_header(w->at.f, int64 ? "<i8" : "<f8", ndim, shape);
    /* Large files: allocate the blocks now, so that ext4 need not flush
     * them when the rename replaces an older file (10-20 ms for 32 MB) */
    long at = ftell(w->at.f);
    if (!w->bad && count >= ((size_t)1 << 17) && at > 0) (void)posix_fallocate(fileno(w->at.f), at, (off_t)(count * 8));
    w->data = at > 0 ? (size_t)at : 0;
    if (!w->bad) w->bad = fflush(w->at.f) != 0; /* the header on disk before any positioned write */
    if (w->bad) w->err = errno ? errno : EIO;
    return PK_OK;
}

/* n bytes at off, whole (pwrite may write less); the first error is kept. */
static void pwrite_all(pk_npy_stream *w, const unsigned char *p, size_t n, size_t off)
{
    int fd = fileno(w->at.f), bad;
    while (n) {
        #pragma omp atomic read
        bad = w->bad;
        if (bad) return;
        ssize_t r = pwrite(fd, p, n, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            #pragma omp critical(pk_npy_stream_error)
            if (!w->bad) {
                w->err = e;
                #pragma omp atomic write
                w->bad = 1;
            }
            return;
        }
        p += r;
        off += (size_t)r;
        n -= (size_t)r;
    }
}

void pk_npy_stream_write_at(pk_npy_stream *w, size_t at, const void *a, size_t count)
{
    #pragma omp atomic
    w->left -= count;
    size_t off = w->data + 8 * at;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    pwrite_all(w, a, 8 * count, off);
#else
    const unsigned char *p = a; /* big-endian host: swapped in blocks */
    unsigned char blk[8 * 1024];
    for (size_t i = 0; i < count; i += sizeof blk / 8) {
        size_t m = count - i < sizeof blk / 8 ? count - i : sizeof blk / 8;
        for (size_t j = 0; j < 8 * m; j++) blk[j] = p[8 * i + (j & ~(size_t)7) + 7 - (j & 7)];
        pwrite_all(w, blk, 8 * m, off + 8 * i);
    }
#endif
}

pk_status pk_npy_stream_write(pk_npy_stream *w, const void *a, size_t count)
{
    if (count > w->left) return pk_fail(PK_ERR_INTERNAL, "%s: more elements than the shape holds", w->at.path);
    w->left -= count;
    /* 8-byte elements little-endian regardless of the host: as they are on a
     * little-endian host (one write), byte-swapped in blocks elsewhere. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (!w->bad && count) w->bad = fwrite(a, 8, count, w->at.f) != count;
    count = 0;
#endif
    unsigned char blk[8 * 1024];
    for (size_t i = 0; i < count && !w->bad;) {
        size_t m = count - i < sizeof blk / 8 ? count - i : sizeof blk / 8;
        for (size_t j = 0; j < m; j++) {
            uint64_t u;
            memcpy(&u, (const unsigned char *)a + 8 * (i + j), 8);
            for (int b = 0; b < 8; b++) blk[8 * j + (size_t)b] = (unsigned char)(u >> (8 * b));
        }
        w->bad = fwrite(blk, 8, m, w->at.f) != m;
        i += m;
    }
    if (w->bad) w->err = errno ? errno : EIO;
    return PK_OK;
}

int pk_npy_stream_failed(const pk_npy_stream *w)
{
    int bad;
    #pragma omp atomic read
    bad = w->bad;
    return bad;
}

pk_status pk_npy_stream_flush(pk_npy_stream *w)
{
    if (!w->bad && fflush(w->at.f) != 0) {
        w->bad = 1;
        w->err = errno ? errno : EIO;
    }
    return w->bad ? pk_write_error(w->at.path, w->err) : PK_OK;
}

pk_status pk_npy_stream_commit(pk_npy_stream *w)
{
    if (w->bad || w->left) {
        pk_status s = w->left && !w->bad
                          ? pk_fail(PK_ERR_INTERNAL, "%s: %zu elements were never written", w->at.path, w->left)
                          : pk_write_error(w->at.path, w->err);
        pk_atomic_abort(&w->at);
        return s;
    }
    return pk_atomic_commit(&w->at);
}

void pk_npy_stream_abort(pk_npy_stream *w)
{
    if (w->at.f) pk_atomic_abort(&w->at);
}

static pk_status npy_write(const char *path, int int64, const void *a, size_t ndim, const size_t *shape)
{
    pk_npy_stream w;
    pk_status s = pk_npy_stream_open(&w, path, int64, ndim, shape);
    if (s) return s;
    pk_npy_stream_write(&w, a, w.left);
    return pk_npy_stream_commit(&w);
}

pk_status pk_npy_write(const char *path, const double *a, size_t ndim, const size_t *shape)
{
    return npy_write(path, 0, a, ndim, shape);
}

pk_status pk_npy_write_i64(const char *path, const int64_t *a, size_t ndim, const size_t *shape)
{
    return npy_write(path, 1, a, ndim, shape);
}
