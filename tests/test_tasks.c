/* pk_tasks (src/base/util.c): every task runs once, on a thread below the
 * count given, a failure skips the tasks not yet started, and with one
 * thread no parallel region is opened, so that the parallel regions inside
 * a task keep libgomp's pool of threads instead of getting fresh ones. */
#define _GNU_SOURCE
#include "base/base.h"

#include <omp.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static int failures = 0, passes = 0;

static void check(const char *what, int ok, double value)
{
    printf("%-64s %.3e %s\n", what, value, ok ? "ok" : "FAIL");
    if (ok) passes++; else failures++;
}

#define N_TASKS 64

typedef struct record {
    int runs[N_TASKS];    /* times task i ran                           */
    int thread[N_TASKS];  /* the thread it ran on                        */
    int level[N_TASKS];   /* omp_get_level() in the task                 */
    long inner[N_TASKS];  /* kernel id of thread 1 of a region in the task */
    size_t fail_at;       /* the task that fails, or N_TASKS              */
} record;

static pk_status task(void *ctx, size_t i, int thread)
{
    record *r = ctx;
    #pragma omp atomic update
    r->runs[i]++;
    r->thread[i] = thread;
    r->level[i] = omp_get_level();
    long inner = 0;
    #pragma omp parallel num_threads(2)
    if (omp_get_thread_num() == 1) inner = (long)syscall(SYS_gettid);
    r->inner[i] = inner;
    return i == r->fail_at ? PK_ERR_NOMEM : PK_OK;
}

int main(void)
{
    omp_set_num_threads(2);
    record *r = calloc(1, sizeof *r);
    if (!r) return 1;

    /* one thread: in order, on the caller, inside no region */
    r->fail_at = N_TASKS;
    pk_status s = pk_tasks(N_TASKS, 1, task, r);
    int once = 1, level0 = 1, same_inner = 1;
    for (size_t i = 0; i < N_TASKS; i++) {
        once &= r->runs[i] == 1 && r->thread[i] == 0;
        level0 &= r->level[i] == 0;
        same_inner &= r->inner[i] == r->inner[0];
    }
    check("one thread: every task once, on thread 0", s == PK_OK && once, (double)s);
    check("one thread: no parallel region around the tasks", level0, (double)r->level[0]);
    /* inside no region the tasks' own regions reuse the pool: thread 1 of
     * every one is the same kernel thread (fresh threads would each have a
     * new id) */
    check("one thread: the tasks' regions reuse one pool thread", same_inner && r->inner[0] > 0,
          (double)r->inner[0]);

    /* two threads: every task once, on threads 0 and 1, inside one region */
    memset(r, 0, sizeof *r);
    r->fail_at = N_TASKS;
    s = pk_tasks(N_TASKS, 2, task, r);
    int on_two = 1, used[2] = {0, 0};
    once = 1;
    for (size_t i = 0; i < N_TASKS; i++) {
        once &= r->runs[i] == 1;
        on_two &= r->thread[i] >= 0 && r->thread[i] < 2 && r->level[i] == 1;
        if (r->thread[i] >= 0 && r->thread[i] < 2) used[r->thread[i]] = 1;
    }
    check("two threads: every task once", s == PK_OK && once, (double)s);
    check("two threads: tasks on threads below 2, inside one region", on_two, (double)(used[0] + used[1]));

    /* more threads than tasks: as many as there are tasks */
    memset(r, 0, sizeof *r);
    r->fail_at = N_TASKS;
    s = pk_tasks(1, 8, task, r);
    check("one task, eight threads asked: run once, inside no region", s == PK_OK && r->runs[0] == 1 &&
          r->level[0] == 0, (double)r->level[0]);

    /* a failure is returned and stops the tasks not yet started */
    memset(r, 0, sizeof *r);
    r->fail_at = 3;
    s = pk_tasks(N_TASKS, 1, task, r);
    int ran = 0;
    for (size_t i = 0; i < N_TASKS; i++) ran += r->runs[i];
    check("one thread: task 3 fails, tasks 4.. skipped", s == PK_ERR_NOMEM && ran == 4, (double)ran);
    memset(r, 0, sizeof *r);
    r->fail_at = 0;
    s = pk_tasks(N_TASKS, 2, task, r);
    ran = 0;
    for (size_t i = 0; i < N_TASKS; i++) ran += r->runs[i];
    check("two threads: a failure is returned, later tasks mostly skipped", s == PK_ERR_NOMEM && ran < N_TASKS,
          (double)ran);

    /* no tasks: nothing runs */
    memset(r, 0, sizeof *r);
    s = pk_tasks(0, 2, task, r);
    check("no tasks: PK_OK", s == PK_OK, (double)s);
    free(r);
    printf("%d passed, %d failed\n", passes, failures);
    return failures ? 1 : 0;
}
