/* lds.c -- `pathkernel lds`: does an attribution predict retraining? The
 * linear datamodeling score of every method on seeded subsets of the
 * training set (src/attribution/lds.c; docs/ATTRIBUTION.md, "LDS"). */
#include "cli.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

static const char *const lds_help =
    "usage: pathkernel lds --data SPEC --test SPEC --model M --loss L --optim O --lr X (--epochs E | --steps T)\n"
    "                      --out DIR [options]\n\n"
    "Retrains the configuration (the options of train) on M seeded subsets of a fraction alpha of the\n"
    "training set, evaluates the target at the test points, and scores each attribution method by the\n"
    "linear datamodeling score (LDS): per test point, the Spearman correlation over the subsets between\n"
    "the method's scores summed over the subset and the retrained target; the mean over the test points\n"
    "and its standard error. Methods (scores signed as contributions: positive = raised the target):\n"
    "  exact:RULE   the exact contributions phi_i^g(x) of the run (MATH.md section 11), --quad RULE\n"
    "  left         the same with the left rule: the paper's kernel, TracIn over every step\n"
    "  grad-dot     -grad g(x) . grad l_i at the final weights; grad-cos: the same as a cosine\n"
    "  ensemble:K   the mean of the exact contributions of K runs of seeds seed .. seed+K-1\n"
    "seconds: training of the runs a method needs plus its scoring (retraining is the evaluation's).\n\n"
    "  --data SPEC, --first N, --test SPEC, --test-first N, --standardize, --model, --loss, --optim,\n"
    "  --lr, --batch, --momentum, ..., --seed S   the training configuration, as for train\n"
    "  --epochs E          every training set, whole or subset, trains E epochs (ceil(n / batch) steps\n"
    "                      each) [the configuration's --steps for all]\n"
    "  --target T          output:C, label, margin or loss (the test point's loss) [loss]\n"
    "  --subsets M         subsets retrained [100]\n"
    "  --alpha A           fraction of the training set in each [0.5]\n"
    "  --subset-seed S     seed of the subsets [0]\n"
    "  --reseed            each subset trains from fresh initial weights and batch order (seed + 1 + m)\n"
    "                      [the configuration's seed: the same initial weights]\n"
    "  --quad R            the exact method's rule: left, mid, gl1..gl8 [gl2]\n"
    "  --ensembles LIST    K of the ensembles, comma-separated, or none [1,5,20]\n"
    "  --keep K            the runs store their weights every K steps [their steps]\n"
    "  --out DIR           (required) lds.csv (method,lds,stderr,valid,seconds), lds.json (the same, the\n"
    "                      configuration, timings), retrained.npy (M, Q), predicted.npy (methods, M, Q),\n"
    "                      per_query.npy (methods, Q), full.npy (Q), subsets.npy (M, k) int64; and the\n"
    "                      work, kept: DIR/runs, DIR/retrain (each subset's retrained targets), DIR/scores.\n"
    "                      The same command continues a stopped job (Ctrl-C, SIGTERM, even SIGKILL) and\n"
    "                      ends with the same files; more subsets or other methods reuse what is there\n"
    "  --mem MIB           memory budget of the explanations [3/4 of free memory]\n"
    "  --threads N         threads [all cores]: the subsets retrain one per thread\n"
    "  --quiet             no progress\n";

/* Progress: the phase, done of total, rate and ETA on stderr. */
typedef struct lds_progress {
    int show, tty;
    char phase[96];
    double t0, last;
    size_t first;
} lds_progress;

static int on_progress(void *ctx, const char *phase, size_t done, size_t total)
{
    lds_progress *p = ctx;
    if (cli_stop_requested()) return 1;
    double t = pk_seconds();
    if (strcmp(p->phase, phase)) {
        if (p->show && p->tty && p->last > 0) fputc('\n', stderr);
        snprintf(p->phase, sizeof p->phase, "%s", phase);
        p->t0 = t;
        p->first = done;
        p->last = 0;
    }
    if (!p->show || (done < total && t - p->last < (p->tty ? 1.0 : 10.0))) return 0;
    p->last = t;
    double rate = done > p->first ? (double)(done - p->first) / (t - p->t0 + 1e-9) : 0;
    double eta = rate > 0 ? (double)(total - done) / rate : 0;
    fprintf(stderr, "%slds: %s: %zu/%zu, ETA %dm%02ds%s", p->tty ? "\r" : "", phase, done, total, (int)(eta / 60),
            (int)eta % 60, p->tty ? "   " : "\n");
    fflush(stderr);
    return 0;
}

static pk_status write_npy(const char *dir, const char *name, const double *a, size_t ndim, const size_t *shape)
{
    char *p = pk_path_join(dir, name);
    pk_status s = p ? pk_npy_write(p, a, ndim, shape) : PK_ERR_NOMEM;
    free(p);
    return s;
}

static pk_status write_outputs(const char *dir, const pk_lds *l, const pk_lds_opts *o, const char *data,
                               const char *test)
{
    size_t M = l->M, Q = l->Q, N = l->N, nm = l->n_methods;
    size_t s3[3] = {nm, M, Q}, s2[2] = {nm, Q}, sr[2] = {M, Q}, s1[1] = {Q};
    pk_status s = write_npy(dir, "retrained.npy", l->retrained, 2, sr);
    if (!s) s = write_npy(dir, "predicted.npy", l->predicted, 3, s3);
    if (!s) s = write_npy(dir, "per_query.npy", l->per_query, 2, s2);
    if (!s) s = write_npy(dir, "full.npy", l->full, 1, s1);
    if (!s) {
        size_t k = 0;
        for (size_t i = 0; i < N; i++) k += l->mask[i] != 0;
        int64_t *idx = pk_alloc(M ? M : 1, (k ? k : 1) * sizeof *idx);
        size_t sh[2] = {M, k};
        if (!idx) s = PK_ERR_NOMEM;
        for (size_t m = 0; !s && m < M; m++)
            for (size_t i = 0, r = 0; i < N; i++)
                if (l->mask[m * N + i]) idx[m * k + r++] = (int64_t)i;
        char *p = s ? NULL : pk_path_join(dir, "subsets.npy");
        if (!s) s = p ? pk_npy_write_i64(p, idx, 2, sh) : PK_ERR_NOMEM;
        free(p);
        free(idx);
    }
    char *p = s ? NULL : pk_path_join(dir, "lds.csv");
    pk_atomic at;
    if (!s) s = p ? pk_atomic_open(&at, p) : PK_ERR_NOMEM;
    free(p);
    if (!s) {
        fputs("method,lds,stderr,valid,seconds\n", at.f);
        for (size_t k = 0; k < nm; k++) {
            fprintf(at.f, "%s,", l->name[k]);
            cli_put_num(at.f, l->lds[k]);
            fputc(',', at.f);
            cli_put_num(at.f, l->se[k]);
            fprintf(at.f, ",%zu,", l->valid[k]);
            cli_put_num(at.f, l->seconds[k]);
            fputc('\n', at.f);
        }
        s = pk_atomic_commit(&at);
    }
    if (!s) {
        char tname[32];
        cJSON *r = cJSON_CreateObject(), *ms = cJSON_CreateArray();
        cJSON_AddStringToObject(r, "data", data);
        cJSON_AddStringToObject(r, "test", test);
        cJSON_AddStringToObject(r, "target", pk_target_name(&o->target, tname, sizeof tname));
        cJSON_AddNumberToObject(r, "n_train", (double)N);
        cJSON_AddNumberToObject(r, "n_test", (double)Q);
        cJSON_AddNumberToObject(r, "subsets", (double)M);
        cJSON_AddNumberToObject(r, "alpha", o->alpha);
        cJSON_AddNumberToObject(r, "subset_seed", (double)o->subset_seed);
        cJSON_AddBoolToObject(r, "reseed", o->reseed);
        cJSON_AddStringToObject(r, "model", o->train.model);
        cJSON_AddStringToObject(r, "loss", pk_loss_name(o->train.loss));
        cJSON_AddStringToObject(r, "optim", pk_optim_name(o->train.optim.kind));
        cJSON_AddNumberToObject(r, "lr", o->train.optim.lr);
        cJSON_AddNumberToObject(r, "batch", (double)o->train.optim.batch);
        cJSON_AddNumberToObject(r, "seed", (double)o->train.seed);
        cJSON_AddNumberToObject(r, "epochs", (double)o->epochs);
        cJSON_AddNumberToObject(r, "steps", (double)l->steps);
        cJSON_AddNumberToObject(r, "subset_steps", (double)l->subset_steps);
        cJSON_AddStringToObject(r, "quad", o->quad.name);
        cJSON_AddNumberToObject(r, "seconds_retrain", l->seconds_retrain);
        cJSON_AddItemToObject(r, "methods", ms);
        for (size_t k = 0; k < nm; k++) {
            cJSON *m = cJSON_CreateObject();
            cJSON_AddStringToObject(m, "method", l->name[k]);
            if (isnan(l->lds[k])) cJSON_AddNullToObject(m, "lds");
            else cJSON_AddNumberToObject(m, "lds", l->lds[k]);
            if (isnan(l->se[k])) cJSON_AddNullToObject(m, "stderr");
            else cJSON_AddNumberToObject(m, "stderr", l->se[k]);
            cJSON_AddNumberToObject(m, "valid", (double)l->valid[k]);
            cJSON_AddNumberToObject(m, "seconds", l->seconds[k]);
            cJSON_AddItemToArray(ms, m);
        }
        char *jp = pk_path_join(dir, "lds.json");
        s = cli_write_json(jp, r);
        free(jp);
    }
    return s;
}

/* --ensembles 1,5,20 or none. */
static int parse_ensembles(const char *cmd, const char *arg, pk_lds_opts *o)
{
    o->n_ensembles = 0;
    if (!strcmp(arg, "none")) return 0;
    for (const char *p = arg; *p;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p), k;
        char num[32];
        if (!len || len >= sizeof num || o->n_ensembles == PK_LDS_MAX_ENSEMBLES)
            return cli_usage(cmd, "--ensembles %s: at most %d sizes, comma-separated", arg, PK_LDS_MAX_ENSEMBLES);
        memcpy(num, p, len);
        num[len] = 0;
        if (cli_parse_size(num, &k) || !k)
            return cli_usage(cmd, "--ensembles %s: '%s' is not a positive number of runs", arg, num);
        o->ensembles[o->n_ensembles++] = k;
        p += len + (e ? 1 : 0);
    }
    return 0;
}

int cmd_lds(int argc, char **argv)
{
    const char *cmd = "lds";
    cli_train_args a;
    cli_train_args_init(&a, 1);
    pk_lds_opts o = pk_lds_opts_defaults();
    const char *target = "loss", *ens = "1,5,20";
    int quiet = 0;
    size_t mem = 0;
    const cli_opt opts[] = {CLI_INCLUDE(a.opts), {"epochs", CLI_SIZE, &o.epochs, NULL},
                            {"target", CLI_STR, &target, NULL}, {"subsets", CLI_SIZE, &o.subsets, NULL},
                            {"alpha", CLI_DOUBLE, &o.alpha, NULL}, {"subset-seed", CLI_U64, &o.subset_seed, NULL},
                            {"reseed", CLI_FLAG, &o.reseed, NULL}, {"quad", CLI_QUAD, &o.quad, NULL},
                            {"ensembles", CLI_STR, &ens, NULL}, {"mem", CLI_MIB, &mem, NULL},
                            {"threads", CLI_THREADS, NULL, NULL}, {"quiet", CLI_FLAG, &quiet, NULL},
                            {NULL, 0, NULL, NULL}};
    a.to.keep = 0; /* the runs' own steps unless --keep */
    int rc = cli_parse(cmd, lds_help, argc, argv, opts, NULL, 0);
    if (rc) return rc < 0 ? EXIT_OK : rc;
    if (!a.data) return cli_usage(cmd, "--data SPEC is required");
    if (!a.test) return cli_usage(cmd, "--test SPEC is required: the test points whose target the subsets predict");
    if (!a.to.out_dir) return cli_usage(cmd, "--out DIR is required (the work is kept there)");
    if (pk_target_parse(target, &o.target)) return cli_usage(cmd, "--target %s: %s", target, pk_last_error());
    if (o.target.kind == PK_TARGET_OUTPUTS) return cli_usage(cmd, "--target outputs: use output:C, label, margin or loss");
    if (!(o.alpha > 0 && o.alpha < 1)) return cli_usage(cmd, "--alpha %g: the fraction must be in (0, 1)", o.alpha);
    if (o.subsets < 3) return cli_usage(cmd, "--subsets %zu: at least 3", o.subsets);
    if ((rc = parse_ensembles(cmd, ens, &o))) return rc;
    const char *dir = a.to.out_dir;
    pk_data train = {0}, test = {0};
    double *mean = NULL, *sd = NULL;
    pk_status s = cli_load_train_data(&a, &train, &test, &mean, &sd);
    o.train = a.to;
    o.train.out_dir = NULL;
    o.dir = dir;
    o.mem_limit = mem;
    lds_progress pr = {0};
    pr.tty = isatty(2);
    pr.show = !quiet;
    o.progress = on_progress;
    o.ctx = &pr;
    cli_catch_stop();
    pk_lds l;
    int existed = cli_dir_exists(dir);
    if (!s) s = pk_lds_run(&train, &test, &o, &l);
    if (pr.show && pr.tty && pr.last > 0) fputc('\n', stderr);
    if (s == PK_ERR_STOPPED) {
        char why[512];
        snprintf(why, sizeof why, "%s", pk_last_error());
        s = pk_fail(s, "%s; what is finished is kept in %s: the same command continues the job", why, dir);
    }
    if (!s) {
        pk_group_begin(); /* every output file or none */
        s = pk_group_end(write_outputs(dir, &l, &o, a.data, a.test));
        if (!s) {
            printf("LDS of %zu test points over %zu subsets (alpha %g) of %zu training examples, target %s\n", l.Q,
                   l.M, o.alpha, l.N, target);
            printf("%-14s %8s %8s %6s %10s\n", "method", "LDS", "stderr", "valid", "seconds");
            for (size_t k = 0; k < l.n_methods; k++)
                printf("%-14s %8.4f %8.4f %6zu %10.1f\n", l.name[k], l.lds[k], l.se[k], l.valid[k], l.seconds[k]);
            printf("retraining: %zu subsets of %zu steps, %.1f s of training in all; this call %.1f s; wrote %s\n",
                   l.M, l.subset_steps, l.seconds_retrain, l.seconds_total, dir);
        }
        pk_lds_free(&l);
    }
    if (s) cli_drop_new_dir(dir, existed);
    pk_data_free(&train);
    pk_data_free(&test);
    free(mean);
    free(sd);
    cli_train_args_free(&a);
    return s ? cli_error(cmd, s) : EXIT_OK;
}
