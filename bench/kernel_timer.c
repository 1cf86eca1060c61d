/* kernel_timer.c -- times pk_kernel_tangent alone (no process start, no data
 * loading, no saving), and cblas_dgemm on square matrices with the same
 * OpenBLAS and thread count, for bench/kernel_bench.py.
 *
 *   kernel_timer RUN X.npy Y.npy THREADS REPEATS [OUT.npy]
 *
 * X.npy (nx, d) and Y.npy (ny, d) are float64 inputs in the run's feature
 * space (the script checks that the run has no standardisation). Prints one
 * JSON object: the kernel's seconds per repeat (wall-clock, and CPU seconds of
 * all threads), and DGEMM seconds / GFLOP/s
 * for n = 2000 (best of REPEATS). OUT.npy receives the (nx, ny, C, C) kernel.
 *
 * Build (kernel_bench.py does this):
 *   gcc -O2 -Iinclude -I/usr/include/x86_64-linux-gnu/openblas-openmp bench/kernel_timer.c \
 *       build/libpathkernel.a -L/usr/lib/x86_64-linux-gnu/openblas-openmp \
 *       -Wl,-rpath,/usr/lib/x86_64-linux-gnu/openblas-openmp -lopenblas -lcjson -lisal -lz -fopenmp -lm
 */
#include <pathkernel.h>

#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double now(void) { return clock_s(CLOCK_MONOTONIC); }

static int die(const char *what)
{
    fprintf(stderr, "kernel_timer: %s: %s\n", what, pk_last_error());
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: kernel_timer RUN X.npy Y.npy THREADS REPEATS [OUT.npy]\n");
        return 2;
    }
    int threads = atoi(argv[4]), reps = atoi(argv[5]);
    if (threads < 1 || reps < 1) { fprintf(stderr, "kernel_timer: bad THREADS or REPEATS\n"); return 2; }
    pk_threads_set(threads);

    pk_run *run;
    if (pk_run_open(argv[1], &run)) return die(argv[1]);
    if (pk_run_mean(run)) { fprintf(stderr, "kernel_timer: the run is standardised; not supported\n"); return 2; }
    const pk_model *m = pk_run_model(run);
    size_t C = pk_model_n_outputs(m);
    double *w = malloc(pk_model_n_params(m) * sizeof *w);
    if (!w || pk_run_weights(run, pk_run_steps(run), w)) return die("weights");
    double *X, *Y;
    size_t ndx, ndy, sx[8], sy[8];
    if (pk_npy_read(argv[2], &X, &ndx, sx)) return die(argv[2]);
    if (pk_npy_read(argv[3], &Y, &ndy, sy)) return die(argv[3]);
    if (ndx != 2 || ndy != 2 || sx[1] != pk_model_n_inputs(m) || sy[1] != pk_model_n_inputs(m)) {
        fprintf(stderr, "kernel_timer: inputs must be (n, %zu)\n", pk_model_n_inputs(m));
        return 2;
    }
    size_t nx = sx[0], ny = sy[0];
    double *K = malloc(nx * ny * C * C * sizeof *K);
    if (!K) { fprintf(stderr, "kernel_timer: out of memory\n"); return 1; }

    double *cpu = malloc((size_t)reps * sizeof *cpu);
    if (!cpu) { fprintf(stderr, "kernel_timer: out of memory\n"); return 1; }
    printf("{\"threads\": %d, \"nx\": %zu, \"ny\": %zu, \"C\": %zu, \"kernel_s\": [", threads, nx, ny, C);
    for (int r = 0; r < reps + 1; r++) {  /* the first call warms up, not reported */
        double t0 = now(), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
        if (pk_kernel_tangent(m, w, X, nx, Y, ny, PK_KMODE_FULL, K)) return die("pk_kernel_tangent");
        double t = now() - t0;
        if (r) cpu[r - 1] = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
        if (r) printf("%s%.6f", r > 1 ? ", " : "", t);
    }
    /* CPU seconds of the process (all threads, user + system) per call: less
     * sensitive to other jobs on the machine than wall-clock */
    printf("], \"kernel_cpu_s\": [");
    for (int r = 0; r < reps; r++) printf("%s%.6f", r ? ", " : "", cpu[r]);
    /* threads OpenMP would use now: the library should have left --threads in place */
    printf("], \"omp_threads_after_kernel\": %d", omp_get_max_threads());

    /* DGEMM peak of the same OpenBLAS with the same threads (in OpenBLAS's
     * OpenMP build a BLAS call outside a parallel region uses
     * omp_get_max_threads() threads) */
    openblas_set_num_threads(threads);
    omp_set_num_threads(threads);
    const int n = 2000;
    double *A = malloc((size_t)n * n * sizeof *A), *B = malloc((size_t)n * n * sizeof *B),
           *Cm = malloc((size_t)n * n * sizeof *Cm);
    if (!A || !B || !Cm) { fprintf(stderr, "kernel_timer: out of memory\n"); return 1; }
    for (size_t i = 0; i < (size_t)n * n; i++) { A[i] = (double)(i % 7) - 3.0; B[i] = (double)(i % 5) * 0.25; }
    double best = 1e30;
    for (int r = 0; r < reps + 1; r++) {
        double t0 = now();
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0, A, n, B, n, 0.0, Cm, n);
        double t = now() - t0;
        if (r && t < best) best = t;
    }
    printf(", \"dgemm_n\": %d, \"dgemm_best_s\": %.6f, \"dgemm_gflops\": %.3f}\n", n, best,
           2.0 * n * (double)n * n / best * 1e-9);
    if (argc > 6) {
        size_t shape[4] = {nx, ny, C, C};
        if (pk_npy_write(argv[6], K, 4, shape)) return die(argv[6]);
    }
    free(A); free(B); free(Cm); free(K); free(cpu); free(X); free(Y); free(w);
    pk_run_close(run);
    return 0;
}
