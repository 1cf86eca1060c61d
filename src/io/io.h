/* io.h -- file formats: .npy written in pieces, and the .npy parser for bytes already in memory (data sets: data.c). Not installed. */
#ifndef PK_IO_H
#define PK_IO_H

#include "base/base.h"

/* A .npy file written in pieces (float64 or int64, C order), atomically:
 * open with the whole shape, write the elements in order (any number per
 * call), commit (renames; refuses if elements are missing) or abort. Write
 * errors are kept and reported by commit. */
typedef struct pk_npy_stream { pk_atomic at; size_t left, data; int bad, err; } pk_npy_stream;
pk_status pk_npy_stream_open(pk_npy_stream *w, const char *path, int int64, size_t ndim, const size_t *shape);
pk_status pk_npy_stream_write(pk_npy_stream *w, const void *a, size_t count);
/* count elements at element `at` of the data, from any thread, in any order
 * (pwrite); every element must be written once before the commit. */
void pk_npy_stream_write_at(pk_npy_stream *w, size_t at, const void *a, size_t count);
pk_status pk_npy_stream_commit(pk_npy_stream *w);
void pk_npy_stream_abort(pk_npy_stream *w);
/* int64 C-order .npy, atomically (pk_npy_write's twin). */
pk_status pk_npy_write_i64(const char *path, const int64_t *a, size_t ndim, const size_t *shape);


#define PK_NPY_MAX_DIM 8

/* Parse a whole .npy image buf[0 .. len) (float64/float32/int64/int32/uint8,
 * little-endian, C order, npy versions 1.0/2.0/3.0, up to 8 dims) into a
 * malloc'ed double array *a (free() it) of shape[0 .. *ndim). `path` only
 * names the file in error messages. Never reads outside buf[0 .. len); on
 * failure *a is NULL and pk_last_error() names path and the byte offset. */
pk_status pk_npy_parse(const char *path, const unsigned char *buf, size_t len,
                       double **a, size_t *ndim, size_t shape[PK_NPY_MAX_DIM]);

#endif
