/* io.h -- file formats: the .npy parser for bytes already in memory (data sets: data.c); the .npy writers, whole and in pieces, are declared in pathkernel.h. Not installed. */
#ifndef PK_IO_H
#define PK_IO_H

#include "base/base.h"

#define PK_NPY_MAX_DIM 8

/* Parse a whole .npy image buf[0 .. len) (float64/float32/int64/int32/uint8,
 * little-endian, C order, npy versions 1.0/2.0/3.0, up to 8 dims) into a
 * malloc'ed double array *a (free() it) of shape[0 .. *ndim). `path` only
 * names the file in error messages. Never reads outside buf[0 .. len); on
 * failure *a is NULL and pk_last_error() names path and the byte offset. */
pk_status pk_npy_parse(const char *path, const unsigned char *buf, size_t len,
                       double **a, size_t *ndim, size_t shape[PK_NPY_MAX_DIM]);

/* pk_names_read, with repeated names allowed when `unique` is 0 (the
 * feature names of a header may repeat). */
pk_status pk_names_load(const char *path, int unique, char ***names, size_t *n);

#endif
