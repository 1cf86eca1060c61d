/* mpi.c -- the queries of `attribute` split across MPI ranks (OpenMPI).
 *
 * This file is compiled twice. With PK_MPI_MODULE it is the module
 * libpathkernel-mpi.so, the only code linked to libmpi: four small entry
 * points over MPI. Without, it is the executable's side, which dlopen()s that
 * module only when the process was launched by mpirun/mpiexec. Linking libmpi
 * (and libopen-rte, libopen-pal, hwloc, libevent...) into the executable cost
 * every process start ~2.6 ms (`pathkernel --version`: 5.0 ms against 2.4),
 * for the one command that uses MPI, and only under mpirun. Not under mpirun,
 * the process is rank 0 of 1 and nothing here talks to anyone. */
#include <stddef.h>

/* The module's interface, resolved by name with dlsym(). Each returns
 * non-zero on failure (end: aborts the other ranks when rc != 0). */
typedef int mpi_start_fn(int *argc, char ***argv, int *rank, int *size);
typedef void mpi_end_fn(int rc);
typedef int mpi_send_fn(const double *buf, size_t n, int tag);
typedef int mpi_recv_fn(double *buf, size_t n, int from, int tag);

#ifdef PK_MPI_MODULE
/* ------------------------------------------------ the module (links libmpi) */
#include <mpi.h>

mpi_start_fn pathkernel_mpi_start;
mpi_end_fn pathkernel_mpi_end;
mpi_send_fn pathkernel_mpi_send;
mpi_recv_fn pathkernel_mpi_recv;

/* MPI_Init, then this process's rank and the number of ranks. */
int pathkernel_mpi_start(int *argc, char ***argv, int *rank, int *size)
{
    if (MPI_Init(argc, argv) != MPI_SUCCESS) return 1;
    MPI_Comm_rank(MPI_COMM_WORLD, rank);
    MPI_Comm_size(MPI_COMM_WORLD, size);
    return 0;
}

/* MPI_Finalize; after a failure (rc != 0) MPI_Abort, since the other ranks
 * may be waiting on this one. */
void pathkernel_mpi_end(int rc)
{
    if (rc) MPI_Abort(MPI_COMM_WORLD, rc);
    MPI_Finalize();
}

/* n doubles to rank 0. */
int pathkernel_mpi_send(const double *buf, size_t n, int tag)
{
    return MPI_Send(buf, (int)n, MPI_DOUBLE, 0, tag, MPI_COMM_WORLD) != MPI_SUCCESS;
}

/* n doubles from rank `from`. */
int pathkernel_mpi_recv(double *buf, size_t n, int from, int tag)
{
    return MPI_Recv(buf, (int)n, MPI_DOUBLE, from, tag, MPI_COMM_WORLD, MPI_STATUS_IGNORE) != MPI_SUCCESS;
}

#else
/* ------------------------------------------- the executable (no libmpi) */
#include "cli.h"

#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* PK_MPI_MODULE_NAME (the file name), PK_MPI_MODULE_RELATIVE (its installed
 * place relative to the installed executable's directory) and
 * PK_MPI_MODULE_INSTALLED (its configured full path) come from CMakeLists.txt. */
static struct {
    mpi_start_fn *start;
    mpi_end_fn *end;
    mpi_send_fn *send;
    mpi_recv_fn *recv;
} mod;
static int started;

/* Whether mpirun/mpiexec (OpenMPI, PMIx or PMI) started this process. */
static int launched_by_mpirun(void)
{
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK") || getenv("PMI_SIZE");
}

/* dlopen the module at `path` and resolve its four entry points into `mod`.
 * Returns 0, or 1 with "path: why" in err. RTLD_GLOBAL: OpenMPI's own
 * plugins, which it dlopens in turn, may need libmpi's symbols. */
static int load_module(const char *path, char *err, size_t n)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
    if (h) {
        mod.start = (mpi_start_fn *)dlsym(h, "pathkernel_mpi_start");
        mod.end = (mpi_end_fn *)dlsym(h, "pathkernel_mpi_end");
        mod.send = (mpi_send_fn *)dlsym(h, "pathkernel_mpi_send");
        mod.recv = (mpi_recv_fn *)dlsym(h, "pathkernel_mpi_recv");
        if (mod.start && mod.end && mod.send && mod.recv) return 0;
    }
    const char *why = dlerror();
    if (!why) why = "unknown error";
    /* dlerror() usually names the file already; name it when it does not */
    if (!strncmp(why, path, strlen(path))) snprintf(err, n, "%s", why);
    else snprintf(err, n, "%s: %s", path, why);
    memset(&mod, 0, sizeof mod);
    if (h) dlclose(h);
    return 1;
}

/* The module next to the executable (the build tree), then where an install
 * puts it relative to the executable (any prefix), then the configured
 * installed path. Returns 0, or 1 with what was tried and why it failed in err. */
static int find_module(char *err, size_t n)
{
    char exe[PATH_MAX], path[PATH_MAX + sizeof PK_MPI_MODULE_RELATIVE], why[3][PATH_MAX + 256];
    int tried = 0;
    if (!cli_exe_dir(exe, sizeof exe)) {
        snprintf(path, sizeof path, "%s/%s", exe, PK_MPI_MODULE_NAME);
        if (!load_module(path, why[tried++], sizeof why[0])) return 0;
        snprintf(path, sizeof path, "%s/%s", exe, PK_MPI_MODULE_RELATIVE);
        if (!load_module(path, why[tried++], sizeof why[0])) return 0;
    }
    if (!load_module(PK_MPI_MODULE_INSTALLED, why[tried++], sizeof why[0])) return 0;
    size_t k = 0;
    for (int i = 0; i < tried && k < n; i++) k += (size_t)snprintf(err + k, n - k, "%s%s", i ? "; " : "", why[i]);
    return 1;
}

int cli_mpi_start(const char *cmd, int *argc, char ***argv, int *rank, int *size)
{
    *rank = 0;
    *size = 1;
    if (!launched_by_mpirun()) return 0;
    char err[2 * PATH_MAX + 1024];
    if (find_module(err, sizeof err)) {
        fprintf(stderr, "pathkernel %s: launched by mpirun, but MPI support is not available: %s "
                        "(build with libopenmpi-dev installed, or run without mpirun)\n", cmd, err);
        return EXIT_BAD_INPUT;
    }
    if (mod.start(argc, argv, rank, size)) {
        fprintf(stderr, "pathkernel %s: MPI_Init failed\n", cmd);
        return EXIT_FAIL;
    }
    started = 1;
    return 0;
}

void cli_mpi_end(int rc)
{
    if (!started) return;
    mod.end(rc);
    started = 0;
}

int cli_mpi_send(const double *buf, size_t n, int tag)
{
    return started ? mod.send(buf, n, tag) : 1;
}

int cli_mpi_recv(double *buf, size_t n, int from, int tag)
{
    return started ? mod.recv(buf, n, from, tag) : 1;
}

#endif
