/* gemm.c -- every matrix product of the library goes through pk_gemm.
 *
 * Determinism whatever the thread count: OpenBLAS splits a threaded DGEMM
 * differently for different thread counts, and the last bits of the result
 * change with it (measured with Debian's OpenBLAS 0.3.21). So BLAS always
 * runs on one thread, and we split C into pieces of a fixed size that does not
 * depend on the thread count; OpenMP threads take whole pieces. */
#include "base/base.h"

#include <cblas.h>
#include <omp.h>
#include <string.h>
#include <strings.h>

/* Pieces of C along its longer side. Splitting the rows re-packs op(B) once
 * per piece, splitting the columns re-packs op(A): the same M*N*K/PIECE extra
 * copies either way, under 1% of the multiply-adds for PIECE = 256. */
#define PIECE PK_PIECE_ROWS

void pk_gemm(int trans_a, int trans_b, size_t M, size_t N, size_t K, double alpha, const double *A,
             size_t lda, const double *B, size_t ldb, double beta, double *C, size_t ldc)
{
    if (!M || !N) return;
    int by_rows = M >= N;
    size_t len = by_rows ? M : N, pieces = (len + PIECE - 1) / PIECE;
    /* small products: one call on one thread (waking a team costs more) */
    if ((double)M * (double)N * (double)K < 1e6) pieces = 1;
    /* OpenBLAS's OpenMP build runs a call outside an active parallel region on
     * omp_get_max_threads() threads: make that one while the single piece runs */
    int nt = pieces == 1 && !omp_in_parallel() ? omp_get_max_threads() : 1;
    if (nt > 1) omp_set_num_threads(1);
    #pragma omp parallel for schedule(dynamic, 1) if (pieces > 1)
    for (size_t p = 0; p < pieces; p++) {
        size_t o = p * PIECE, n = pieces == 1 ? len : (len - o < PIECE ? len - o : PIECE);
        size_t r0 = by_rows ? o : 0, c0 = by_rows ? 0 : o;
        size_t mm = by_rows ? n : M, nn = by_rows ? N : n;
        /* row-major: op(A) rows r0.. start at A + r0*lda (no trans) or A + r0 (trans);
         * op(B) columns c0.. start at B + c0 (no trans) or B + c0*ldb (trans) */
        const double *a = trans_a ? A + r0 : A + r0 * lda;
        const double *b = trans_b ? B + c0 * ldb : B + c0;
        cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                    (int)mm, (int)nn, (int)K, alpha, a, (int)lda, b, (int)ldb, beta, C + r0 * ldc + c0, (int)ldc);
    }
    if (nt > 1) omp_set_num_threads(nt);
}

void pk_gemm_tile(int trans_a, int trans_b, size_t M, size_t N, size_t K, double alpha, const double *A,
                  size_t lda, const double *B, size_t ldb, double beta, double *C, size_t ldc)
{
    if (!M || !N) return;
    /* one BLAS thread, also outside an active parallel region (as above) */
    int nt = !omp_in_parallel() ? omp_get_max_threads() : 1;
    if (nt > 1) omp_set_num_threads(1);
    cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, (int)M,
                (int)N, (int)K, alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
    if (nt > 1) omp_set_num_threads(nt);
}

/* Row tiles. A BLAS kernel computes a row of C differently depending on
 * the call's shape: Haswell's treats the rows past the last multiple of 4
 * apart, SkylakeX's switches to its small-matrix kernel below M N K = 1e6
 * and, above, a row's bits depend on its place in a panel of 16 (all
 * measured with Debian's OpenBLAS 0.3.21). Calls of exactly 8 rows give
 * every row the same bits wherever it sits on every kernel measured
 * (Haswell, SkylakeX, Cooperlake, Zen, Sandybridge, Nehalem, Core2,
 * Prescott, Atom); on all of them but SkylakeX and Cooperlake so do calls of
 * any multiple of 32 rows up to 256, and a row's bits are the same in all
 * such calls. So on those kernels a call takes up to 256 rows (a multiple of
 * 32: fewer copies of the other operand, which the kernel packs once per
 * call) and on SkylakeX and Cooperlake exactly 8. Either way a query's
 * result never depends on which others share its call, nor on the thread
 * count. row_unit: the multiple a call's rows come in. */
static size_t row_unit(void)
{
    static const char *const wide[] = {"haswell", "zen", "sandybridge", "nehalem", "core2", "prescott", "atom"};
    static size_t unit;
    size_t u;
    #pragma omp atomic read
    u = unit;
    if (u) return u;
    const char *core = openblas_get_corename();
    u = 8;
    for (size_t i = 0; core && i < sizeof wide / sizeof *wide; i++)
        if (!strcasecmp(core, wide[i])) u = 32;
    #pragma omp atomic write
    unit = u;
    return u;
}

void pk_gemm_rows(int trans_a, int trans_b, size_t M, size_t N, size_t K, double alpha, const double *A,
                  size_t lda, const double *B, size_t ldb, double beta, double *C, size_t ldc)
{
    if (!M || !N) return;
    const size_t unit = row_unit();
    int may_par = !omp_in_parallel() && (double)M * (double)N * (double)K >= 1e6;
    size_t nt = may_par ? (size_t)omp_get_max_threads() : 1;
    /* rows per call: 8 on SkylakeX and Cooperlake; else a multiple of 32, at
     * most 256, and small enough that every thread gets a call */
    size_t tile = unit;
    if (unit == 32) {
        size_t share = (M + nt - 1) / nt;
        tile = (share + unit - 1) / unit * unit;
        if (tile > 256) tile = 256;
    }
    size_t tiles = (M + tile - 1) / tile;
    int par = may_par && tiles > 1;
    int ntb = !par && !omp_in_parallel() ? omp_get_max_threads() : 1;
    if (ntb > 1) omp_set_num_threads(1); /* one BLAS thread per call, as in pk_gemm */
    CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans, tb = trans_b ? CblasTrans : CblasNoTrans;
    #pragma omp parallel for schedule(dynamic, 1) if (par)
    for (size_t p = 0; p < tiles; p++) {
        size_t r0 = p * tile, r = M - r0 < tile ? M - r0 : tile, q = r / unit * unit; /* q rows called as they are */
        const double *a = trans_a ? A + r0 : A + r0 * lda;
        double *c = C + r0 * ldc;
        if (q)
            cblas_dgemm(CblasRowMajor, ta, tb, (int)q, (int)N, (int)K, alpha, a, (int)lda, B, (int)ldb, beta, c,
                        (int)ldc);
        if (q == r) continue;
        /* the last r - q < unit rows: through zero-padded copies (unit rows) */
        size_t rest = r - q;
        a = trans_a ? a + q : a + q * lda;
        c += q * ldc;
        double *ap = calloc(unit * K + unit * N, sizeof(double));
        if (!ap) { /* out of memory: the short call as it is */
            cblas_dgemm(CblasRowMajor, ta, tb, (int)rest, (int)N, (int)K, alpha, a, (int)lda, B, (int)ldb, beta, c,
                        (int)ldc);
            continue;
        }
        double *cp = ap + unit * K; /* (unit, N) */
        for (size_t i = 0; i < rest; i++) {
            for (size_t k = 0; k < K; k++) /* op(A)'s row i: (unit, K), or (K, unit) transposed */
                ap[trans_a ? k * unit + i : i * K + k] = trans_a ? a[k * lda + i] : a[i * lda + k];
            if (beta != 0.0) memcpy(cp + i * N, c + i * ldc, N * sizeof *cp);
        }
        cblas_dgemm(CblasRowMajor, ta, tb, (int)unit, (int)N, (int)K, alpha, ap, (int)(trans_a ? unit : K), B,
                    (int)ldb, beta, cp, (int)N);
        for (size_t i = 0; i < rest; i++) memcpy(c + i * ldc, cp + i * N, N * sizeof *cp);
        free(ap);
    }
    if (ntb > 1) omp_set_num_threads(ntb);
}

void pk_gemm_by(pk_gemm_mode mode, int trans_a, int trans_b, size_t M, size_t N, size_t K, double alpha,
                const double *A, size_t lda, const double *B, size_t ldb, double beta, double *C, size_t ldc)
{
    if (mode == PK_GEMM_ROWS) pk_gemm_rows(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    else if (mode == PK_GEMM_SPLIT) pk_gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    else pk_gemm_tile(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
