/* base.h -- what every layer of the library uses: matrix products with results independent of the thread count, reading files, hashing, number parsing and the seeded generator (errors, memory and atomic output files are public: pathkernel.h). Not installed. */
#ifndef PK_BASE_H
#define PK_BASE_H

#include "pathkernel.h"

#include <stdio.h>
#include <stdlib.h>

/* Loops with fewer element operations than this run on one thread: waking
 * a team costs more than it saves. Results never depend on it (each thread
 * owns whole output rows). */
#define PK_PAR_MIN ((size_t)1 << 16)

/* C (M, N) = alpha op(A) op(B) + beta C, row-major, op = transpose when
 * trans_* is set: cblas_dgemm tiled so that the result never depends on the
 * number of threads (gemm.c). */
void pk_gemm(int trans_a, int trans_b, size_t M, size_t N, size_t K, double alpha, const double *A,
             size_t lda, const double *B, size_t ldb, double beta, double *C, size_t ldc);
/* C (M, N) = alpha op(A) op(B) + beta C in one BLAS call on the calling thread, for callers
 * that split their work into pieces of a fixed size themselves (tangent.c). */
void pk_gemm_tile(int trans_a, int trans_b, size_t M, size_t N, size_t K, double alpha, const double *A,
                  size_t lda, const double *B, size_t ldb, double beta, double *C, size_t ldc);
/* pk_gemm for products whose rows are independent items (queries): every
 * BLAS call has the same shape (tiles of a fixed number of rows, the last
 * one padded), so that a row's bits never depend on how many rows share the
 * call, on any OpenBLAS kernel (gemm.c). */
void pk_gemm_rows(int trans_a, int trans_b, size_t M, size_t N, size_t K, double alpha, const double *A,
                  size_t lda, const double *B, size_t ldb, double beta, double *C, size_t ldc);
/* How a pass multiplies (pk_gemm_by): SPLIT, pk_gemm (the library splits
 * the product over threads); ROWS, pk_gemm_rows (rows are independent
 * queries); ONE, one BLAS call on the calling thread (the caller splits its
 * work into pieces of a fixed size itself). */
typedef enum pk_gemm_mode { PK_GEMM_SPLIT, PK_GEMM_ROWS, PK_GEMM_ONE } pk_gemm_mode;
void pk_gemm_by(pk_gemm_mode mode, int trans_a, int trans_b, size_t M, size_t N, size_t K, double alpha,
                const double *A, size_t lda, const double *B, size_t ldb, double beta, double *C, size_t ldc);
/* CRC-32 (zlib's and gzip's) of n bytes, continuing from crc (0 to
 * start), by ISA-L (util.c). */
uint32_t pk_crc32(uint32_t crc, const void *p, size_t n);
/* The fixed piece size, in rows, of work split over threads (gemm.c,
 * pk_mlp_output_deltas, pk_kernel_tangent): never the thread count, so that
 * results are bit-identical whatever the number of threads. */
#define PK_PIECE_ROWS 256

/* LAPACK, from the OpenBLAS the library links (Fortran interface; column-
 * major, so a row-major symmetric matrix is passed as it is). */
void dsyevd_(const char *jobz, const char *uplo, const int *n, double *a, const int *lda, double *w,
             double *work, const int *lwork, int *iwork, const int *liwork, int *info);
void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info);
/* The inverse of a positive definite matrix from its Cholesky factor
 * (dpotrf), in the same triangle. */
void dpotri_(const char *uplo, const int *n, double *a, const int *lda, int *info);
void dpotrs_(const char *uplo, const int *n, const int *nrhs, const double *a, const int *lda, double *b,
             const int *ldb, int *info);

/* fn(ctx, i, thread) for every task i < n, in any order, on threads
 * 0 .. threads - 1 (at most n of them; a task's result must not depend on
 * its thread). With one thread no parallel region is opened at all:
 * libgomp gives the parallel regions inside a region that did not fork
 * fresh threads every time, never its pool (88,000 of them for one query's
 * exact-rule verify of a LeNet-5). After a task fails the ones not yet
 * started are skipped; returns a failure, else PK_OK. */
typedef pk_status (*pk_task_fn)(void *ctx, size_t i, int thread);
pk_status pk_tasks(size_t n, int threads, pk_task_fn fn, void *ctx);

/* Scratch a thread keeps between calls: slot `slot` (< PK_SCRATCH_SLOTS)
 * of the calling thread, at least n doubles, contents undefined; NULL when
 * out of memory. For passes that would otherwise allocate and free
 * megabytes on every call (conv2d's patches): the allocator would hand
 * those pages back and fault them in again at every step. Each caller
 * owns its slot numbers (conv.c: 0-7, model.c: 8); freed when the thread
 * ends. */
#define PK_SCRATCH_SLOTS 9
double *pk_scratch(size_t slot, size_t n);

/* Memory (pk_alloc, pk_calloc, pk_alloc_big, pk_memory_budget) and atomic
 * output files (pk_atomic_*, pk_group_*, pk_file_write, pk_path_join,
 * pk_mkdirs) are declared in pathkernel.h. */

/* "PATH: write failed: <strerror(err)> (nothing was written under that name;
 * what to do)", PK_ERR_IO; err 0 counts as EIO. */
pk_status pk_write_error(const char *path, int err);
/* Read a whole file (plain or gzip) into memory; *buf is malloc'ed and
 * NUL-terminated (len excludes the NUL). `max` bounds the size (0 = 4 GiB). */
pk_status pk_read_file(const char *path, int gunzip, size_t max, unsigned char **buf, size_t *len);

/* The first n bytes of a file (plain or gzip), fewer when it is shorter. */
pk_status pk_read_prefix(const char *path, int gunzip, size_t n, unsigned char **buf, size_t *len);

char *pk_strdup(const char *s);
/* Parse a whole string as a finite double / size_t; 0 on success. */
int pk_parse_double(const char *s, double *v);
int pk_parse_size(const char *s, size_t *v);

/* 64-bit FNV-1a over bytes, chained from h (start with PK_HASH_INIT). */
#define PK_HASH_INIT 0xcbf29ce484222325ULL
uint64_t pk_hash_bytes(uint64_t h, const void *p, size_t n);


/* The library's deterministic generator (xoshiro256**, seeded by
 * splitmix64; rng.c): initialisation, batch order, random selections. */
typedef struct pk_rng { uint64_t s[4]; } pk_rng;
void pk_rng_seed(pk_rng *r, uint64_t seed);
uint64_t pk_rng_u64(pk_rng *r);
double pk_rng_uniform(pk_rng *r);          /* [0, 1) */
double pk_rng_normal(pk_rng *r);           /* N(0, 1) */
size_t pk_rng_below(pk_rng *r, size_t n);  /* uniform in [0, n) */
void pk_rng_shuffle(pk_rng *r, uint32_t *a, size_t n);

#endif
