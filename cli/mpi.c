/* mpi.c -- the queries of `attribute` split across MPI ranks (OpenMPI, when
 * the build found it: PK_HAVE_MPI). MPI is started only when the process
 * was launched by mpirun/mpiexec; otherwise, and in builds without MPI, the
 * process is rank 0 of 1 and nothing here talks to anyone. */
#include "cli.h"

#include <stdlib.h>

#ifdef PK_HAVE_MPI
#include <mpi.h>

static int started;

static int launched_by_mpirun(void)
{
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK") || getenv("PMI_SIZE");
}

void cli_mpi_start(int *argc, char ***argv, int *rank, int *size)
{
    *rank = 0;
    *size = 1;
    if (!launched_by_mpirun()) return;
    MPI_Init(argc, argv);
    started = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, rank);
    MPI_Comm_size(MPI_COMM_WORLD, size);
}

void cli_mpi_end(int rc)
{
    if (!started) return;
    if (rc) MPI_Abort(MPI_COMM_WORLD, rc); /* the other ranks may wait on this one */
    MPI_Finalize();
    started = 0;
}

int cli_mpi_send(const double *buf, size_t n, int tag)
{
    return MPI_Send(buf, (int)n, MPI_DOUBLE, 0, tag, MPI_COMM_WORLD) != MPI_SUCCESS;
}

int cli_mpi_recv(double *buf, size_t n, int from, int tag)
{
    return MPI_Recv(buf, (int)n, MPI_DOUBLE, from, tag, MPI_COMM_WORLD, MPI_STATUS_IGNORE) != MPI_SUCCESS;
}

#else

void cli_mpi_start(int *argc, char ***argv, int *rank, int *size)
{
    (void)argc;
    (void)argv;
    *rank = 0;
    *size = 1;
}

void cli_mpi_end(int rc) { (void)rc; }
int cli_mpi_send(const double *buf, size_t n, int tag) { (void)buf; (void)n; (void)tag; return 1; }
int cli_mpi_recv(double *buf, size_t n, int from, int tag) { (void)buf; (void)n; (void)from; (void)tag; return 1; }

#endif
