/* common.c -- what the commands share: error reporting, strict argument
 * parsing, progress, output directories, small helpers. */
#define _XOPEN_SOURCE 700 /* nftw */
#include "cli.h"
#include "base/base.h" /* pk_parse_double, pk_parse_size: the library's strict numbers */

#include <cjson/cJSON.h>
#include <ctype.h>
#include <ftw.h>
#include <math.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The library's messages name a parameter by its API name (a field or
 * argument of pathkernel.h) in parentheses after the words that say what it
 * is, with a value where they advise one: "try a smaller learning rate (lr),
 * e.g. 0.01", "a mini-batch size (batch)", "(mode trace)", "at most 12
 * queries fit (Q 12)"; and a function of the API in backquotes, with its
 * argument: "`pk_train_resume RUN`". The commands say the same with their
 * flags: each entry rewrites an API name (or a phrase around it, where the
 * command names just the flag) into the flag of the commands in `cmds`
 * (NULL: all of them). A name ("(lr") matches only whole: before ')', ' ' or
 * '`'. At each place in the message the first entry that matches wins, so
 * that a phrase comes before its name. */
typedef struct cli_term { const char *api, *flag, *cmds; } cli_term;
#define TRAINING "train compare convergence mislabel lds"
#define TRAINING_LR "train compare mislabel lds" /* convergence chooses the learning rates and steps itself */
#define EXPLAINING "explain verify"
#define MEM_LIMIT "explain verify attribute report kernel loo mislabel lds"
#define SELECTING "explain verify attribute predict weights info train compare convergence mislabel report"
static const cli_term cli_terms[] = {
    {"learning rate (lr)", "--lr", TRAINING_LR},
    {"(lr", "(--lr", TRAINING_LR},
    {"(steps", "(--steps", TRAINING_LR},
    {"(batch)", "(--batch B)", TRAINING},
    {"(batch", "(--batch", TRAINING},
    {"(optim", "(--optim", TRAINING},
    {"(keep", "(--keep", TRAINING},
    {"(weight_decay", "(--weight-decay", "train compare convergence"},
    {"another run directory (out_dir)", "another --out", NULL},
    {"(out_dir)", "(--out RUN)", "train"},
    {"`pk_train_resume", "`pathkernel train --resume", NULL},
    {"(ridge_grid)", "(--ridge-grid)", "loo"},
    {"(ridge", "(--ridge", "krr compare loo"},
    {"the trace mode (mode trace)", "--mode trace", EXPLAINING},
    {"(mode", "(--mode", EXPLAINING " kernel loo"},
    {"no path kernel (want_kernel 0)", "--no-kernel", EXPLAINING},
    {"(want_kernel 0)", "(--no-kernel)", EXPLAINING},
    {"memory budget (mem_limit)", "--mem", MEM_LIMIT},
    {"(mem_limit", "(--mem", MEM_LIMIT},
    {"(Q", "(--first", EXPLAINING " attribute report"},
    {"(quad", "(--quad", EXPLAINING " attribute selfinfluence export-libsvm mislabel report lds"},
    {"(top", "(--top", "attribute report"},
    {"(frac", "(--flip", "mislabel"},
    {"(query", "(--query", EXPLAINING " attribute convergence report"},
    {"(first", "(--first", SELECTING " export-libsvm ntk"},
    {"(random", "(--random", SELECTING},
    {"(label_column)", "(--label-column)", SELECTING},
    {"with label_column", "with --label-column", SELECTING},
    {"(sep)", "(--sep)", SELECTING},
    {"(class_names", "(--class-names", TRAINING},
    {"(input_shape", "(--input-shape", TRAINING},
    {"(alpha", "(--alpha", "lds"},
    {"(subsets", "(--subsets", "lds"},
    {"(ensembles", "(--ensembles", "lds"},
    {"(epochs", "(--epochs", "lds"},
    {"(dir)", "(--out DIR)", "lds"},
    {"(dir", "(--out", "lds"},
};

/* Is cmd one of the space-separated words of list (NULL: every command)? */
static int cli_term_applies(const char *list, const char *cmd)
{
    if (!list) return 1;
    size_t n = strlen(cmd);
    for (const char *p = list; (p = strstr(p, cmd)) != NULL; p += n)
        if ((p == list || p[-1] == ' ') && (p[n] == ' ' || !p[n])) return 1;
    return 0;
}

const char *cli_message(const char *cmd, pk_status s)
{
    static char out[2048];
    const char *msg = pk_last_error();
    if (!*msg) return pk_status_str(s);
    size_t k = 0;
    while (*msg && k + 1 < sizeof out) {
        const cli_term *hit = NULL;
        size_t n = 0;
        for (size_t i = 0; !hit && i < sizeof cli_terms / sizeof *cli_terms; i++) {
            const cli_term *t = &cli_terms[i];
            n = strlen(t->api);
            if (strncmp(msg, t->api, n) != 0 || !cli_term_applies(t->cmds, cmd)) continue;
            char last = t->api[n - 1], next = msg[n];
            if ((isalnum((unsigned char)last) || last == '_') && next != ')' && next != ' ' && next != '`') continue;
            hit = t;
        }
        if (!hit) { out[k++] = *msg++; continue; }
        k += (size_t)snprintf(out + k, sizeof out - k, "%s", hit->flag);
        if (k >= sizeof out) k = sizeof out - 1;
        msg += n;
    }
    out[k] = 0;
    return out;
}

int cli_error(const char *cmd, pk_status s)
{
    fprintf(stderr, "pathkernel %s: %s\n", cmd, cli_message(cmd, s));
    return s == PK_ERR_INPUT ? EXIT_BAD_INPUT : EXIT_FAIL;
}

int cli_usage(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "pathkernel %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (see pathkernel %s --help)\n", cmd);
    return EXIT_BAD_INPUT;
}

int cli_double(const char *cmd, const char *opt, const char *arg, double *v)
{
    if (pk_parse_double(arg, v)) { cli_usage(cmd, "%s: '%s' is not a finite number", opt, arg); return -1; }
    return 0;
}

int cli_parse_size(const char *s, size_t *v) { return pk_parse_size(s, v); }

int cli_size(const char *cmd, const char *opt, const char *arg, size_t *v)
{
    if (pk_parse_size(arg, v)) { cli_usage(cmd, "%s: '%s' is not a non-negative integer", opt, arg); return -1; }
    return 0;
}

int cli_u64(const char *cmd, const char *opt, const char *arg, uint64_t *v)
{
    size_t s;
    if (pk_parse_size(arg, &s)) { cli_usage(cmd, "%s: '%s' is not a non-negative integer", opt, arg); return -1; }
    *v = s;
    return 0;
}

int cli_threads(const char *cmd, const char *arg)
{
    size_t n;
    if (cli_size(cmd, "--threads", arg, &n)) return -1;
    if (n > 1024) { cli_usage(cmd, "--threads: %zu is too many", n); return -1; }
    pk_threads_set((int)n);
    return 0;
}

int cli_step(const char *cmd, const char *arg, size_t T, size_t *t)
{
    if (!strcmp(arg, "init")) { *t = 0; return 0; }
    if (!strcmp(arg, "final")) { *t = T; return 0; }
    if (cli_size(cmd, "--step", arg, t)) return -1;
    if (*t > T) { cli_usage(cmd, "--step %zu: the run has steps 0..%zu", *t, T); return -1; }
    return 0;
}

/* The entries of opts, those of included tables in their place, appended
 * to list (n so far, room for max); the new count, max + 1 when they do not fit. */
static size_t flatten(const cli_opt *opts, const cli_opt **list, size_t n, size_t max)
{
    for (; opts->name && n <= max; opts++) {
        if (opts->type == CLI_TABLE) n = flatten(opts->dst, list, n, max);
        else if (n < max) list[n++] = opts;
        else n = max + 1;
    }
    return n;
}

/* The option that --NAME (len characters) names: an exact match, else the
 * one option whose name it begins; NULL when none or several. */
static const cli_opt *lookup(const cli_opt *const *list, size_t n, const char *name, size_t len)
{
    const cli_opt *found = NULL;
    int several = 0;
    for (size_t i = 0; i < n; i++) {
        if (strncmp(list[i]->name, name, len)) continue;
        if (!list[i]->name[len]) return list[i];
        several |= found != NULL;
        found = list[i];
    }
    return several ? NULL : found;
}

/* Store the value of option o; 0, or non-zero after an error printed. */
static int set_value(const char *cmd, const cli_opt *o, const char *val)
{
    char flag[80];
    snprintf(flag, sizeof flag, "--%s", o->name);
    size_t mib;
    switch (o->type) {
    case CLI_STR: *(const char **)o->dst = val; return 0;
    case CLI_SIZE: return cli_size(cmd, flag, val, o->dst);
    case CLI_U64: return cli_u64(cmd, flag, val, o->dst);
    case CLI_DOUBLE: return cli_double(cmd, flag, val, o->dst);
    case CLI_FLAG: *(int *)o->dst = 1; return 0;
    case CLI_MIB:
        if (cli_size(cmd, flag, val, &mib)) return 1;
        *(size_t *)o->dst = mib << 20;
        return 0;
    case CLI_THREADS: return cli_threads(cmd, val);
    case CLI_QUAD: return pk_quad_parse(val, o->dst) ? (cli_error(cmd, PK_ERR_INPUT), 1) : 0;
    case CLI_LOSS: return pk_loss_parse(val, o->dst) ? (cli_error(cmd, PK_ERR_INPUT), 1) : 0;
    case CLI_OPTIM: return pk_optim_parse(val, o->dst) ? (cli_error(cmd, PK_ERR_INPUT), 1) : 0;
    case CLI_SCHEDULE: return pk_schedule_parse(val, o->dst) ? (cli_error(cmd, PK_ERR_INPUT), 1) : 0;
    case CLI_KMODE:
        if (!strcmp(val, "full")) *(pk_kmode *)o->dst = PK_KMODE_FULL;
        else if (!strcmp(val, "trace")) *(pk_kmode *)o->dst = PK_KMODE_TRACE;
        else return cli_usage(cmd, "%s: '%s' is not full or trace", flag, val);
        return 0;
    case CLI_PARAM:
        if (!strcmp(val, "standard")) *(pk_param *)o->dst = PK_PARAM_STANDARD;
        else if (!strcmp(val, "ntk")) *(pk_param *)o->dst = PK_PARAM_NTK;
        else return cli_usage(cmd, "%s: '%s' is not standard or ntk", flag, val);
        return 0;
    case CLI_SEP:
        if (!strcmp(val, "comma") || !strcmp(val, ",")) *(char *)o->dst = ',';
        else if (!strcmp(val, "semicolon") || !strcmp(val, ";")) *(char *)o->dst = ';';
        else if (!strcmp(val, "tab") || !strcmp(val, "\\t") || !strcmp(val, "\t")) *(char *)o->dst = '\t';
        else if (strlen(val) == 1 && val[0] != '"' && val[0] != ' ' && val[0] != '\n' && val[0] != '\r')
            *(char *)o->dst = val[0];
        else return cli_usage(cmd, "%s: '%s' is not comma, semicolon, tab or one other character (not a quote, "
                              "space or line break)", flag, val);
        return 0;
    case CLI_TABLE: break;
    }
    return cli_usage(cmd, "internal: option %s has no type", flag);
}

int cli_parse(const char *cmd, const char *help, int argc, char **argv, const cli_opt *opts,
              const char **pos, int npos)
{
    enum { MAX = 128 };
    static const cli_opt help_opt = {"help", CLI_FLAG, NULL, NULL};
    const cli_opt *list[MAX];
    size_t n = flatten(opts, list, 0, MAX - 1);
    if (n > MAX - 1) return cli_usage(cmd, "internal: too many options");
    list[n++] = &help_opt;
    int npos_got = 0, given = 0, options = 1;
    const char *extra = NULL; /* the first positional argument too many */
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (options && !strcmp(arg, "--")) { options = 0; continue; }
        if (!options || arg[0] != '-' || !arg[1]) { /* positional */
            if (npos_got < npos) pos[npos_got++] = arg;
            else if (!extra) extra = arg;
            continue;
        }
        const char *name = arg + 2, *eq = arg[1] == '-' ? strchr(name, '=') : NULL;
        const cli_opt *o = arg[1] == '-' ? lookup(list, n, name, eq ? (size_t)(eq - name) : strlen(name)) : NULL;
        const char *val = eq ? eq + 1 : NULL;
        if (o && o->type != CLI_FLAG && !val && i + 1 < argc) val = argv[++i];
        if (!o || (o->type == CLI_FLAG) != (val == NULL)) /* unknown, or a value missing or not wanted */
            return cli_usage(cmd, "unknown or incomplete option '%s'", arg);
        if (o == &help_opt) { fputs(help, stdout); return -1; }
        if (set_value(cmd, o, val)) return EXIT_BAD_INPUT;
        given++;
        if (o->seen && !*o->seen) *o->seen = given;
    }
    if (npos_got < npos) return cli_usage(cmd, "missing argument (the run directory)");
    if (extra) return cli_usage(cmd, "unexpected argument '%s'", extra);
    return 0;
}

const cli_opt *cli_first_given(const cli_opt *opts)
{
    const cli_opt *first = NULL;
    for (; opts->name; opts++) {
        const cli_opt *o = opts->type == CLI_TABLE ? cli_first_given(opts->dst) : opts;
        if (o && o->seen && *o->seen && (!first || *o->seen < *first->seen)) first = o;
    }
    return first;
}

static volatile sig_atomic_t stop_flag;

static void on_stop(int sig)
{
    stop_flag = 1;
    signal(sig, SIG_DFL); /* a second signal ends the process at once */
}

void cli_catch_stop(void)
{
    struct sigaction sa = {0};
    sa.sa_handler = on_stop;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

int cli_stop_requested(void) { return stop_flag != 0; }


void cli_put_text(FILE *f, const char *s)
{
    if (!s) return;
    if (!strpbrk(s, ",\"\r\n")) { fputs(s, f); return; }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"') fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

void cli_put_num(FILE *f, double v)
{
    if (isnan(v)) fputs("nan", f);
    else fprintf(f, "%.17g", v);
}

double cli_max_abs(const double *v, size_t n)
{
    double m = 0;
    for (size_t i = 0; v && i < n; i++) m = isnan(v[i]) || isnan(m) ? NAN : fmax(m, fabs(v[i]));
    return m;
}

char *cli_summary_json(const pk_explain *e, double max_reg)
{
    cJSON *r = cJSON_CreateObject();
    cJSON_AddNumberToObject(r, "max_abs_err", e->max_abs_err);
    cJSON_AddNumberToObject(r, "max_rel_err", e->max_rel_err);
    cJSON_AddNumberToObject(r, "max_abs_regularisation", max_reg);
    cJSON_AddStringToObject(r, "quad", e->quad);
    if (e->piece_nodes) { /* the exact rule */
        cJSON_AddNumberToObject(r, "pieces", e->pieces);
        cJSON_AddNumberToObject(r, "piece_nodes", (double)e->piece_nodes);
    }
    cJSON_AddNumberToObject(r, "steps", (double)e->steps);
    cJSON_AddNumberToObject(r, "n_train", (double)e->N);
    cJSON_AddNumberToObject(r, "n_query", (double)e->Q);
    cJSON_AddNumberToObject(r, "n_outputs", (double)e->C);
    cJSON_AddStringToObject(r, "kernel_mode", e->mode == PK_KMODE_FULL ? "full" : "trace");
    cJSON_AddNumberToObject(r, "seconds", e->seconds);
    char *text = cJSON_Print(r);
    cJSON_Delete(r);
    return text;
}

int cli_class_names(const char *cmd, const char *file, pk_load_opts *lo, char ***names)
{
    *names = NULL;
    if (!file) return 0;
    pk_status s = pk_names_read(file, names, &lo->n_class_names);
    if (s) return cli_error(cmd, s);
    lo->class_names = (const char *const *)*names;
    return 0;
}

void cli_data_warning(const char *cmd, const pk_data *d)
{
    if (d->warning) fprintf(stderr, "pathkernel %s: warning: %s\n", cmd, d->warning);
}

int cli_run_args_parse(const char *cmd, const char *help, int argc, char **argv, cli_run_args *a)
{
    memset(a, 0, sizeof *a);
    a->load = pk_load_opts_defaults();
    const cli_opt opts[] = {{"data", CLI_STR, &a->data, NULL}, {"out", CLI_STR, &a->out, NULL},
                            {"step", CLI_STR, &a->step, NULL}, CLI_SELECT(a->load),
                            {"threads", CLI_THREADS, NULL, NULL}, {NULL, 0, NULL, NULL}};
    return cli_parse(cmd, help, argc, argv, opts, &a->run, 1);
}

int cli_run_weights(const char *cmd, const cli_run_args *a, pk_run **run, double **w, size_t *t)
{
    pk_status s = pk_run_open(a->run, run);
    if (s) return cli_error(cmd, s);
    *t = pk_run_steps(*run);
    if (a->step && cli_step(cmd, a->step, pk_run_steps(*run), t)) { pk_run_close(*run); return EXIT_BAD_INPUT; }
    *w = pk_alloc(pk_model_n_params(pk_run_model(*run)), sizeof **w);
    s = *w ? pk_run_weights(*run, *t, *w) : PK_ERR_NOMEM;
    if (s) { free(*w); pk_run_close(*run); return cli_error(cmd, s); }
    return 0;
}

cli_progress cli_progress_start(const char *cmd)
{
    cli_progress p = {0};
    p.cmd = cmd;
    p.t0 = pk_seconds();
    p.tty = isatty(2);
    p.groups = 1;
    return p;
}

int cli_progress_step(void *ctx, size_t step, size_t steps, double loss)
{
    (void)loss;
    cli_progress *p = ctx;
    p->steps_done += 1;
    if (cli_stop_requested()) return 1;
    double t = pk_seconds();
    if (!p->show || (step < steps && t - p->last < (p->tty ? 1.0 : 10.0))) return 0;
    p->last = t;
    double rate = p->steps_done / (t - p->t0 + 1e-9);
    double left = (double)(p->groups - p->groups_done) * (double)steps - (double)step;
    double eta = left > 0 ? left / rate : 0;
    fprintf(stderr, "%s%s: group %zu/%zu, step %zu/%zu, %zu/%zu queries done, %.1f steps/s, ETA %dm%02ds%s",
            p->tty ? "\r" : "", p->cmd, p->groups_done + 1, p->groups, step, steps, p->queries_done, p->Q, rate,
            (int)(eta / 60), (int)eta % 60, p->tty ? "   " : "\n");
    fflush(stderr);
    return 0;
}

void cli_progress_group_done(cli_progress *p, size_t queries)
{
    p->groups_done++;
    p->queries_done += queries;
}

void cli_progress_end(cli_progress *p)
{
    if (p->show && p->tty && p->last > 0) fputc('\n', stderr);
}

double cli_progress_seconds(const cli_progress *p) { return pk_seconds() - p->t0; }

int cli_dir_exists(const char *dir)
{
    struct stat st;
    return dir && !stat(dir, &st) && S_ISDIR(st.st_mode);
}

void cli_drop_new_dir(const char *dir, int existed)
{
    if (dir && !existed) rmdir(dir); /* only when empty: nothing of a user's is removed */
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st; (void)flag; (void)ftw;
    return remove(path);
}

int cli_remove_tree(const char *dir)
{
    return dir && nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0 ? -1 : 0;
}

double cli_disk_free(const char *path)
{
    char dir[4096];
    const char *slash = strrchr(path, '/');
    size_t n = slash ? (size_t)(slash - path) : 0;
    if (n >= sizeof dir) return -1.0;
    if (slash && n == 0) n = 1; /* "/file": the root */
    memcpy(dir, slash ? path : ".", slash ? n : 1);
    dir[slash ? n : 1] = 0;
    struct statvfs v;
    if (statvfs(dir, &v) != 0) return -1.0;
    return (double)v.f_bavail * (double)v.f_frsize;
}

int cli_exe_dir(char *buf, size_t len)
{
    ssize_t k = readlink("/proc/self/exe", buf, len - 1);
    if (k <= 0) return -1;
    buf[k] = '\0';
    char *slash = strrchr(buf, '/');
    if (!slash) return -1;
    *slash = '\0';
    return 0;
}

pk_status cli_query_labels(pk_run *run, const char *spec, const pk_data *q, const pk_target *t)
{
    const pk_model *m = pk_run_model(run);
    size_t C = pk_model_n_outputs(m), ty = pk_run_loss(run) == PK_LOSS_MSE ? C : 1;
    char name[32];
    if (q->ty != ty)
        return pk_fail(PK_ERR_INPUT, "%s: %zu target column%s per query, but the target %s of this %s run needs %zu",
                       spec, q->ty, q->ty == 1 ? "" : "s", pk_target_name(t, name, sizeof name),
                       pk_loss_name(pk_run_loss(run)), ty);
    pk_status s = pk_target_check(t, C, pk_run_loss(run), q->y, q->n);
    if (!s) return PK_OK;
    char why[512];
    snprintf(why, sizeof why, "%s", pk_last_error());
    return pk_fail(s, "%s: %s", spec, why);
}

pk_status cli_write_json(const char *path, cJSON *root)
{
    char *text = root ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    pk_status s = text && path ? pk_file_write(path, text, strlen(text)) : PK_ERR_NOMEM;
    free(text);
    return s;
}
