/* lds.c -- the linear datamodeling score (docs/ATTRIBUTION.md, "LDS"):
 * retrain on seeded subsets of the training set and ask how well each
 * attribution method's summed scores over a subset rank the retrained
 * target, test point by test point (Spearman).
 *
 * Methods, all scores with the sign of a contribution phi_i^g(x) (MATH.md
 * section 11: positive = example i raised the target):
 *   exact:RULE   phi_i^g(x) of the run, quadrature RULE (pk_run_explain)
 *   left         the same with the left rule: the paper's kernel, which is
 *                TracIn over every step
 *   grad-dot     -grad_w g(x) . grad_w l_i at the final weights
 *   grad-cos     the same over |grad_w g(x)| |grad_w l_i|
 *   ensemble:K   the mean of exact:RULE over the runs of seeds seed..seed+K-1
 *
 * The work directory keeps everything a stopped job needs, each piece in
 * its own file written atomically (a crc32 and the job's fingerprint in
 * each): DIR/job.bin (the job's identity), DIR/runs/seed-S (run
 * directories, resumed by pk_train_resume when training was cut short),
 * DIR/runs/seed-S.time, DIR/retrain/subset-M.bin (a subset's retrained
 * targets, kept whatever the methods) and DIR/scores/METHOD-seed-S.bin. */
#include "kernel/kernel.h"

#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

pk_lds_opts pk_lds_opts_defaults(void)
{
    pk_lds_opts o;
    memset(&o, 0, sizeof o);
    o.train = pk_train_opts_defaults();
    o.target.kind = PK_TARGET_LOSS;
    o.subsets = 100;
    o.alpha = 0.5;
    pk_quad_parse("gl2", &o.quad);
    o.ensembles[0] = 1;
    o.ensembles[1] = 5;
    o.ensembles[2] = 20;
    o.n_ensembles = 3;
    return o;
}

void pk_lds_free(pk_lds *l)
{
    free(l->name); free(l->lds); free(l->se); free(l->valid); free(l->seconds); free(l->per_query);
    free(l->predicted); free(l->retrained); free(l->full); free(l->mask);
    memset(l, 0, sizeof *l);
}

/* ---------------------------------------------------------------- Spearman */

typedef struct ranked { double v; size_t i; } ranked;

static int by_value(const void *pa, const void *pb)
{
    const ranked *a = pa, *b = pb;
    return a->v < b->v ? -1 : a->v > b->v ? 1 : (a->i > b->i) - (a->i < b->i);
}

/* r (n) = the ranks of v (stride s), 1-based, ties sharing their mean. */
static void ranks(const double *v, size_t s, size_t n, ranked *it, double *r)
{
    for (size_t i = 0; i < n; i++) it[i] = (ranked){v[i * s], i};
    qsort(it, n, sizeof *it, by_value);
    for (size_t a = 0; a < n;) {
        size_t b = a;
        while (b + 1 < n && it[b + 1].v == it[a].v) b++;
        double mean = 0.5 * ((double)a + (double)b) + 1.0;
        for (size_t j = a; j <= b; j++) r[it[j].i] = mean;
        a = b + 1;
    }
}

double pk_spearman(const double *a, size_t sa, const double *b, size_t sb, size_t n)
{
    if (n < 2) return NAN;
    for (size_t i = 0; i < n; i++)
        if (isnan(a[i * sa]) || isnan(b[i * sb])) return NAN;
    ranked *it = pk_alloc(n, sizeof *it);
    double *ra = pk_alloc(n, sizeof *ra), *rb = pk_alloc(n, sizeof *rb);
    double r = NAN;
    if (it && ra && rb) {
        ranks(a, sa, n, it, ra);
        ranks(b, sb, n, it, rb);
        double ma = 0, mb = 0;
        for (size_t i = 0; i < n; i++) { ma += ra[i]; mb += rb[i]; }
        ma /= (double)n;
        mb /= (double)n;
        double sab = 0, saa = 0, sbb = 0;
        for (size_t i = 0; i < n; i++) {
            double x = ra[i] - ma, y = rb[i] - mb;
            sab += x * y;
            saa += x * x;
            sbb += y * y;
        }
        r = saa > 0 && sbb > 0 ? sab / sqrt(saa * sbb) : NAN;
    }
    free(it); free(ra); free(rb);
    return r;
}

pk_status pk_lds_score(const double *scores, const unsigned char *mask, const double *retrained, size_t M, size_t N,
                       size_t Q, double *predicted, double *per_query, double *mean, double *se, size_t *valid)
{
    double *Z = pk_alloc(M ? M : 1, N * sizeof *Z);                 /* (M, N) the mask as numbers */
    double *pred = predicted ? predicted : pk_alloc(M ? M : 1, Q * sizeof *pred); /* (M, Q) */
    if (!Z || !pred) {
        free(Z);
        if (!predicted) free(pred);
        return PK_ERR_NOMEM;
    }
    for (size_t j = 0; j < M * N; j++) Z[j] = mask[j] ? 1.0 : 0.0;
    /* predicted (M, Q) = Z scores^T: the sum of each query's scores over subset m */
    if (M && Q) pk_gemm(0, 1, M, Q, N, 1.0, Z, N, scores, N, 0.0, pred, Q);
    double sum = 0, sum2 = 0;
    size_t n = 0;
    for (size_t q = 0; q < Q; q++) {
        double r = pk_spearman(pred + q, Q, retrained + q, Q, M);
        per_query[q] = r;
        if (isnan(r)) continue;
        sum += r;
        n++;
    }
    double mu = n ? sum / (double)n : NAN;
    for (size_t q = 0; q < Q; q++)
        if (!isnan(per_query[q])) sum2 += (per_query[q] - mu) * (per_query[q] - mu);
    *mean = mu;
    *se = n > 1 ? sqrt(sum2 / (double)(n - 1)) / sqrt((double)n) : NAN;
    *valid = n;
    free(Z);
    if (!predicted) free(pred);
    return PK_OK;
}

static uint64_t mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static size_t subset_size(size_t N, double alpha) { return (size_t)floor(alpha * (double)N + 0.5); }

pk_status pk_lds_subsets(size_t N, size_t M, double alpha, uint64_t seed, unsigned char *mask)
{
    if (!(alpha > 0 && alpha < 1)) return pk_fail(PK_ERR_INPUT, "the subsets' fraction (alpha) must be in (0, 1), got %g", alpha);
    size_t k = subset_size(N, alpha);
    if (k < 1 || k >= N)
        return pk_fail(PK_ERR_INPUT, "a fraction %g of %zu training examples is %zu: a subset needs at least one "
                       "example and must leave one out", alpha, N, k);
    if (N > UINT32_MAX) return pk_fail(PK_ERR_INPUT, "too many training examples");
    uint32_t *perm = pk_alloc(N, sizeof *perm);
    if (!perm) return PK_ERR_NOMEM;
    for (size_t m = 0; m < M; m++) {
        pk_rng r;
        pk_rng_seed(&r, mix64(mix64(seed ^ 0x6c64732d73756273ULL) ^ (uint64_t)m));
        for (size_t i = 0; i < N; i++) perm[i] = (uint32_t)i;
        pk_rng_shuffle(&r, perm, N);
        unsigned char *row = mask + m * N;
        memset(row, 0, N);
        for (size_t j = 0; j < k; j++) row[perm[j]] = 1;
    }
    free(perm);
    return PK_OK;
}

/* ------------------------------------------------------------------ files */

/* A kept piece: "PKLDS" magic (8 bytes), u64 fingerprint, u64 n, n doubles,
 * crc32 of everything before it. */
static pk_status save_piece(const char *path, const char magic[8], uint64_t fp, const double *a, size_t n)
{
    size_t len = 24 + 8 * n;
    unsigned char *buf = pk_alloc(len + 4, 1);
    if (!buf) return PK_ERR_NOMEM;
    uint64_t head[2] = {fp, n};
    memcpy(buf, magic, 8);
    memcpy(buf + 8, head, sizeof head);
    if (n) memcpy(buf + 24, a, 8 * n);
    uint32_t crc = pk_crc32(0, buf, len);
    memcpy(buf + len, &crc, 4);
    pk_status s = pk_file_write(path, buf, len + 4);
    free(buf);
    return s;
}

/* 1 when path holds a whole piece of this fingerprint and size (into a). */
static int load_piece(const char *path, const char magic[8], uint64_t fp, double *a, size_t n)
{
    size_t len = 24 + 8 * n, got;
    unsigned char *buf = NULL;
    int ok = 0;
    if (!access(path, F_OK) && !pk_read_file(path, 0, len + 4, &buf, &got) && got == len + 4) {
        uint64_t head[2];
        uint32_t crc;
        memcpy(head, buf + 8, sizeof head);
        memcpy(&crc, buf + len, 4);
        ok = !memcmp(buf, magic, 8) && head[0] == fp && head[1] == n && crc == pk_crc32(0, buf, len);
        if (ok && n) memcpy(a, buf + 24, 8 * n);
    }
    free(buf);
    return ok;
}

static char *path_fmt(const char *dir, const char *fmt, ...)
#ifdef __GNUC__
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static char *path_fmt(const char *dir, const char *fmt, ...)
{
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    return pk_path_join(dir, name);
}

/* ------------------------------------------------------------------- job */

typedef struct job {
    const pk_data *train, *test;
    const pk_lds_opts *o;
    uint64_t fp;          /* data, configuration, target                    */
    size_t C, ty;
    char *runs, *retrain, *scores;
    double t0;
} job;

static uint64_t hash_str(uint64_t h, const char *s) { return pk_hash_bytes(h, s ? s : "", s ? strlen(s) + 1 : 1); }

static uint64_t job_fingerprint(const pk_data *train, const pk_data *test, const pk_lds_opts *o)
{
    const pk_train_opts *t = &o->train;
    const pk_optim *op = &t->optim;
    uint64_t h = pk_data_fingerprint(train);
    h = pk_hash_bytes(h, test->x, test->n * test->d * sizeof *test->x);
    h = pk_hash_bytes(h, test->y, test->n * test->ty * sizeof *test->y);
    h = hash_str(h, t->model);
    h = hash_str(h, t->init_dir);
    uint64_t u[] = {t->param, t->loss, op->kind, op->batch, op->schedule, op->step_every, t->seed, o->epochs,
                    o->epochs ? 0 : t->steps, o->target.kind, o->target.output, (uint64_t)t->standardize};
    double v[] = {t->sigma_w, t->sigma_b, op->lr, op->momentum, op->beta1, op->beta2, op->eps, op->weight_decay,
                  op->gamma, op->lr_min};
    h = pk_hash_bytes(h, u, sizeof u);
    return pk_hash_bytes(h, v, sizeof v);
}

/* Steps of a training set of n examples. */
static size_t steps_for(const pk_lds_opts *o, size_t n)
{
    if (!o->epochs) return o->train.steps;
    size_t B = pk_optim_batch(&o->train.optim, n);
    return o->epochs * ((n + B - 1) / B);
}

/* The progress of one replay or training, named. */
typedef struct phase { const job *j; char name[128]; } phase;

static int phase_step(void *ctx, size_t step, size_t steps, double loss)
{
    (void)loss;
    const phase *p = ctx;
    return p->j->o->progress ? p->j->o->progress(p->j->o->ctx, p->name, step, steps) : 0;
}

/* The run of seed `seed` on the whole training set, trained (or finished)
 * when it is not complete; *sec its training time (kept in seed-S.time). */
static pk_status ensure_run(const job *j, uint64_t seed, pk_run **run, double *sec)
{
    const pk_lds_opts *o = j->o;
    char *dir = path_fmt(j->runs, "seed-%llu", (unsigned long long)seed);
    char *tpath = path_fmt(j->runs, "seed-%llu.time", (unsigned long long)seed);
    char *cfg = dir ? pk_path_join(dir, "run.json") : NULL;
    pk_status s = dir && tpath && cfg ? PK_OK : PK_ERR_NOMEM;
    phase ph = {j, ""};
    snprintf(ph.name, sizeof ph.name, "training the run of seed %llu", (unsigned long long)seed);
    double t0 = pk_seconds();
    int have_time = !s && load_piece(tpath, "PKLDSTIM", j->fp ^ seed, sec, 1);
    if (!s && !access(cfg, F_OK)) {
        pk_resume_info info;
        s = pk_train_resume(dir, phase_step, &ph, &info);
        if (!s && !info.complete) have_time = 0;
    } else if (!s) {
        pk_train_opts t = o->train;
        t.seed = seed;
        t.steps = steps_for(o, j->train->n);
        t.keep = o->train.keep ? o->train.keep : t.steps;
        t.out_dir = dir;
        t.init_dir = o->train.init_dir;
        s = pk_train(j->train, &t, phase_step, &ph);
        have_time = 0;
    }
    if (!s && !have_time) {
        *sec = pk_seconds() - t0;
        s = save_piece(tpath, "PKLDSTIM", j->fp ^ seed, sec, 1);
    }
    if (!s) s = pk_run_open(dir, run);
    if (!s && (s = pk_run_attach_data(*run, j->train))) { pk_run_close(*run); *run = NULL; }
    free(dir); free(tpath); free(cfg);
    return s;
}

/* -grad g(x) . grad l_i and its cosine at weights w, for the test points
 * against every training example: dot and cos (Q, N). */
static pk_status grad_scores(const job *j, const pk_model *m, const double *w, double *dot, double *cos)
{
    const pk_data *tr = j->train, *te = j->test;
    pk_loss loss = j->o->train.loss;
    size_t N = tr->n, Q = te->n, C = m->n_out, d = m->n_in, Bq = 256, Bt = 256;
    pk_tape *qt = pk_tape_new(m, Bq), *tt = pk_tape_new(m, Bt);
    if (qt) qt->queries = 1;
    double *dq[PK_MAX_MODEL_LAYERS] = {0};
    int have_dq = !pk_deltas_new(m, Bq, dq);
    double *R = pk_alloc(Bq > Bt ? Bq : Bt, C * sizeof *R);          /* (B, C) seeds, residuals */
    double *A = pk_alloc(Bq, Bt * sizeof *A), *D = pk_alloc(Bq, Bt * sizeof *D);
    double *qn = pk_alloc(Q ? Q : 1, sizeof *qn), *tn = pk_alloc(N, sizeof *tn); /* squared norms */
    pk_status s = qt && tt && have_dq && R && A && D && qn && tn ? PK_OK : PK_ERR_NOMEM;
    for (size_t q0 = 0; !s && q0 < Q; q0 += Bq) {
        size_t nq = Q - q0 < Bq ? Q - q0 : Bq;
        pk_model_forward(m, w, te->x + q0 * d, nq, qt);
        s = pk_target_deltas(m, w, qt, &j->o->target, loss, te->y + q0 * j->ty, R, dq);
        if (s) break;
        pk_side qs = pk_side_target(m, qt, dq, &j->o->target);
        pk_side_diagonal(m, &qs, &qs, qn + q0);
        for (size_t i0 = 0; i0 < N; i0 += Bt) {
            size_t ni = N - i0 < Bt ? N - i0 : Bt;
            pk_model_forward(m, w, tr->x + i0 * d, ni, tt);
            pk_loss_eval(loss, pk_tape_out(m, tt), tr->y + i0 * tr->ty, ni, C, tr->ty, R);
            pk_model_backward(m, w, tt, R, 1.0, NULL);
            pk_side ts = pk_side_loss(m, tt);
            if (q0 == 0) pk_side_diagonal(m, &ts, &ts, tn + i0);
            pk_side_product(m, &qs, &ts, dot + q0 * N + i0, N, 0, A, D);
        }
    }
    for (size_t q = 0; !s && q < Q; q++)
        for (size_t i = 0; i < N; i++) {
            double v = -dot[q * N + i], den = sqrt(qn[q] * tn[i]);
            dot[q * N + i] = v;
            cos[q * N + i] = den > 0 ? v / den : 0.0;
        }
    pk_tape_free(qt);
    pk_tape_free(tt);
    if (have_dq) pk_deltas_free(m, dq);
    free(R); free(A); free(D); free(qn); free(tn);
    return s;
}

/* exact contributions phi_i^g(x) (Q, N) of a run with rule q. */
static pk_status exact_scores(const job *j, pk_run *run, const pk_quad *q, const char *what, double *out)
{
    pk_explain_opts eo = pk_explain_opts_defaults();
    eo.quad = *q;
    eo.want_kernel = 0;
    eo.target = j->o->target;
    eo.y = j->test->y;
    eo.mem_limit = j->o->mem_limit;
    phase ph = {j, ""};
    snprintf(ph.name, sizeof ph.name, "%s", what);
    eo.progress = phase_step;
    eo.ctx = &ph;
    pk_explain e;
    pk_status s = pk_run_explain(run, j->test->x, j->test->n, &eo, &e);
    if (s) return s;
    memcpy(out, e.contrib, j->test->n * e.N * sizeof *out);
    pk_explain_free(&e);
    return PK_OK;
}

/* A method's scores of run `seed` (Q, N), computed or read back; *sec the
 * seconds they took when computed. kind: 0 exact (o->quad), 1 left, 2 grad
 * (out: dot, out2: cos). */
static pk_status scores_of(const job *j, pk_run *run, uint64_t seed, int kind, double *out, double *out2, double *sec)
{
    size_t QN = j->test->n * j->train->n;
    char tag[48];
    if (kind == 0) snprintf(tag, sizeof tag, "exact-%s", j->o->quad.name);
    else snprintf(tag, sizeof tag, "%s", kind == 1 ? "left" : "grad");
    char *p = path_fmt(j->scores, "%s-seed-%llu.bin", tag, (unsigned long long)seed);
    char *p2 = kind == 2 ? path_fmt(j->scores, "grad-cos-seed-%llu.bin", (unsigned long long)seed) : NULL;
    char *pt = path_fmt(j->scores, "%s-seed-%llu.time", tag, (unsigned long long)seed);
    if (!p || !pt || (kind == 2 && !p2)) { free(p); free(p2); free(pt); return PK_ERR_NOMEM; }
    uint64_t fp = pk_hash_bytes(j->fp ^ seed, tag, strlen(tag));
    pk_status s = PK_OK;
    if (!(load_piece(p, "PKLDSSCO", fp, out, QN) && (kind != 2 || load_piece(p2, "PKLDSSCO", fp, out2, QN)) &&
          load_piece(pt, "PKLDSTIM", fp, sec, 1))) {
        double t0 = pk_seconds();
        char what[128];
        snprintf(what, sizeof what, "%s scores of the run of seed %llu", kind == 2 ? "gradient" : tag,
                 (unsigned long long)seed);
        if (kind < 2) {
            pk_quad left;
            pk_quad_parse("left", &left);
            s = exact_scores(j, run, kind == 0 ? &j->o->quad : &left, what, out);
        } else {
            const pk_model *m = pk_run_model(run);
            double *w = pk_alloc(m->n_params, sizeof *w);
            s = w ? pk_run_weights(run, pk_run_steps(run), w) : PK_ERR_NOMEM;
            if (!s) s = grad_scores(j, m, w, out, out2);
            free(w);
        }
        *sec = pk_seconds() - t0;
        if (!s) s = save_piece(p, "PKLDSSCO", fp, out, QN);
        if (!s && kind == 2) s = save_piece(p2, "PKLDSSCO", fp, out2, QN);
        if (!s) s = save_piece(pt, "PKLDSTIM", fp, sec, 1);
    }
    free(p); free(p2); free(pt);
    return s;
}

/* ---------------------------------------------------------------- retrain */

/* Retrain on subset m and evaluate the target at the test points: g (Q). */
static pk_status retrain_one(const job *j, const unsigned char *mask, size_t m, double *g, double *sec)
{
    const pk_data *tr = j->train, *te = j->test;
    const pk_lds_opts *o = j->o;
    size_t N = tr->n, k = 0, d = tr->d, ty = tr->ty;
    for (size_t i = 0; i < N; i++) k += mask[i] != 0;
    pk_data sub = *tr;   /* borrows the names; its own rows, in data order */
    sub.n = k;
    sub.x = pk_alloc(k, d * sizeof *sub.x);
    sub.y = pk_alloc(k, ty * sizeof *sub.y);
    sub.warning = NULL;
    pk_model *net = NULL;
    double *w = NULL, *f = NULL;
    pk_status s = sub.x && sub.y ? PK_OK : PK_ERR_NOMEM;
    for (size_t i = 0, r = 0; !s && i < N; i++)
        if (mask[i]) {
            memcpy(sub.x + r * d, tr->x + i * d, d * sizeof *sub.x);
            memcpy(sub.y + r * ty, tr->y + i * ty, ty * sizeof *sub.y);
            r++;
        }
    double t0 = pk_seconds();
    pk_train_opts t = o->train;
    t.seed = o->reseed ? o->train.seed + 1 + m : o->train.seed;
    t.steps = steps_for(o, k);
    /* the model of the whole set (the same outputs: checked) */
    size_t Cs = 0;
    if (!s) s = pk_loss_outputs(t.loss, &sub, &Cs);
    if (!s && Cs != j->C)
        s = pk_fail(PK_ERR_INPUT, "subset %zu has no example of class %zu: its network would have %zu outputs, not "
                    "%zu; use a larger fraction (alpha) or more training examples", m, j->C - 1, Cs, j->C);
    if (!s) s = pk_model_for_data(t.model, tr, j->C, t.param, t.sigma_w, t.sigma_b, &net);
    if (!s && !(w = pk_alloc(pk_model_n_params(net), sizeof *w))) s = PK_ERR_NOMEM;
    if (!s && !(f = pk_alloc(te->n ? te->n : 1, j->C * sizeof *f))) s = PK_ERR_NOMEM;
    if (!s) s = pk_train_weights(&sub, &t, w);
    if (!s) s = pk_model_predict(net, w, te->x, te->n, f);
    if (!s) pk_target_values(&o->target, t.loss, f, te->y, te->n, j->C, g);
    *sec = pk_seconds() - t0;
    free(sub.x); free(sub.y); free(w); free(f);
    pk_model_free(net);
    return s;
}

/* Every subset without a kept result, two (or more) at a time: one per thread. */
static pk_status retrain_all(const job *j, const unsigned char *mask, double *retrained, double *sec_total)
{
    const pk_lds_opts *o = j->o;
    size_t M = o->subsets, Q = j->test->n, N = j->train->n;
    uint64_t fp = pk_hash_bytes(j->fp, &o->alpha, sizeof o->alpha);
    uint64_t extra[2] = {o->subset_seed, (uint64_t)o->reseed};
    fp = pk_hash_bytes(fp, extra, sizeof extra);
    double *row = pk_alloc(Q + 1, sizeof *row);  /* (Q + 1) targets, then seconds */
    if (!row) return PK_ERR_NOMEM;
    size_t *todo = pk_alloc(M ? M : 1, sizeof *todo), n_todo = 0, done = 0;
    if (!todo) { free(row); return PK_ERR_NOMEM; }
    double secs = 0;
    for (size_t m = 0; m < M; m++) {
        char *p = path_fmt(j->retrain, "subset-%06zu.bin", m);
        if (p && load_piece(p, "PKLDSRET", fp ^ m, row, Q + 1)) {
            memcpy(retrained + m * Q, row, Q * sizeof *row);
            secs += row[Q];
            done++;
        } else
            todo[n_todo++] = m;
        free(p);
    }
    free(row);
    pk_status s = PK_OK;
    int stop = 0;
    const char *what = "retraining the subsets";
    if (o->progress && o->progress(o->ctx, what, done, M)) stop = 1;
    #pragma omp parallel for schedule(dynamic, 1)
    for (size_t k = 0; k < n_todo; k++) {
        int stopped;
        #pragma omp atomic read
        stopped = stop;
        if (stopped) continue;
        size_t m = todo[k];
        double *g = pk_alloc(Q + 1, sizeof *g), sec = 0;
        pk_status ts = g ? retrain_one(j, mask + m * N, m, g, &sec) : PK_ERR_NOMEM;
        char *p = ts ? NULL : path_fmt(j->retrain, "subset-%06zu.bin", m);
        if (!ts) {
            g[Q] = sec;
            ts = p ? save_piece(p, "PKLDSRET", fp ^ m, g, Q + 1) : PK_ERR_NOMEM;
        }
        #pragma omp critical(lds_progress)
        {
            if (ts) {
                if (!s) {
                    char why[600];
                    snprintf(why, sizeof why, "%s", pk_last_error());
                    s = pk_fail(ts, "retraining on subset %zu: %s", m, why);
                }
                #pragma omp atomic write
                stop = 1;
            } else {
                memcpy(retrained + m * Q, g, Q * sizeof *g);
                secs += sec;
                done++;
                if (o->progress && o->progress(o->ctx, what, done, M)) {
                    #pragma omp atomic write
                    stop = 1;
                }
            }
        }
        free(g);
        free(p);
    }
    free(todo);
    *sec_total = secs;
    if (!s && stop) s = pk_fail(PK_ERR_STOPPED, "stopped with %zu of %zu subsets retrained", done, M);
    return s;
}

/* ------------------------------------------------------------------- run */

static pk_status check_opts(const pk_data *train, const pk_data *test, const pk_lds_opts *o, size_t *C)
{
    char name[32];
    if (!o->dir) return pk_fail(PK_ERR_INPUT, "the LDS needs a work directory (dir)");
    if (pk_target_columns(&o->target, 2) != 1)
        return pk_fail(PK_ERR_INPUT, "target %s: the LDS ranks one number per test point; use output:C, label, "
                       "margin or loss", pk_target_name(&o->target, name, sizeof name));
    if (!o->subsets || o->subsets < 3) return pk_fail(PK_ERR_INPUT, "the LDS needs at least 3 subsets (subsets), got %zu", o->subsets);
    if (!test->n) return pk_fail(PK_ERR_INPUT, "no test points");
    if (test->d != train->d)
        return pk_fail(PK_ERR_INPUT, "the test points have %zu features, the training data %zu", test->d, train->d);
    if (!o->quad.n) return pk_fail(PK_ERR_INPUT, "no quadrature rule given (quad)");
    if (o->n_ensembles > PK_LDS_MAX_ENSEMBLES)
        return pk_fail(PK_ERR_INPUT, "at most %d ensembles (ensembles)", PK_LDS_MAX_ENSEMBLES);
    for (size_t e = 0; e < o->n_ensembles; e++)
        if (!o->ensembles[e]) return pk_fail(PK_ERR_INPUT, "an ensemble needs at least one run (ensembles)");
    if (o->epochs && !pk_optim_batch(&o->train.optim, 1))
        return pk_fail(PK_ERR_INPUT, "epochs need a batch schedule");
    pk_status s = pk_loss_outputs(o->train.loss, train, C);
    if (s) return s;
    if (test->ty != train->ty)
        return pk_fail(PK_ERR_INPUT, "the test points have %zu target columns, the training data %zu", test->ty, train->ty);
    return pk_target_check(&o->target, *C, o->train.loss, test->y, test->n);
}

static pk_status mkdir_in(const char *dir, const char *name, char **out)
{
    *out = pk_path_join(dir, name);
    return *out ? pk_mkdirs(*out) : PK_ERR_NOMEM;
}

pk_status pk_lds_run(const pk_data *train, const pk_data *test, const pk_lds_opts *o, pk_lds *out)
{
    memset(out, 0, sizeof *out);
    job j = {train, test, o, 0, 0, 0, NULL, NULL, NULL, pk_seconds()};
    pk_status s = check_opts(train, test, o, &j.C);
    if (s) return s;
    j.ty = train->ty;
    j.fp = job_fingerprint(train, test, o);
    size_t N = train->n, Q = test->n, M = o->subsets, KE = 0;
    for (size_t e = 0; e < o->n_ensembles; e++) KE = o->ensembles[e] > KE ? o->ensembles[e] : KE;
    size_t nm = 4 + o->n_ensembles;
    /* the job's identity: a directory of another job is refused */
    s = pk_mkdirs(o->dir);
    char *jp = s ? NULL : pk_path_join(o->dir, "job.bin");
    if (!s && !jp) s = PK_ERR_NOMEM;
    if (!s && !access(jp, F_OK) && !load_piece(jp, "PKLDSJOB", j.fp, NULL, 0))
        s = pk_fail(PK_ERR_INPUT, "%s holds the work of another LDS job (other data, test points, training options "
                    "or target): use another directory (dir), or remove it to start again", o->dir);
    if (!s && access(jp, F_OK)) s = save_piece(jp, "PKLDSJOB", j.fp, NULL, 0);
    free(jp);
    if (!s) s = mkdir_in(o->dir, "runs", &j.runs);
    if (!s) s = mkdir_in(o->dir, "retrain", &j.retrain);
    if (!s) s = mkdir_in(o->dir, "scores", &j.scores);

    out->M = M; out->Q = Q; out->N = N; out->n_methods = nm;
    out->name = pk_calloc(nm, sizeof *out->name);
    out->lds = pk_alloc(nm, sizeof(double));
    out->se = pk_alloc(nm, sizeof(double));
    out->valid = pk_calloc(nm, sizeof(size_t));
    out->seconds = pk_calloc(nm, sizeof(double));
    out->per_query = pk_alloc(nm * Q, sizeof(double));
    out->predicted = pk_alloc(nm * M, Q * sizeof(double));
    out->retrained = pk_alloc(M, Q * sizeof(double));
    out->full = pk_alloc(Q, sizeof(double));
    out->mask = pk_alloc(M, N);
    out->steps = steps_for(o, N);
    out->subset_steps = steps_for(o, subset_size(N, o->alpha));
    double *S = pk_alloc(4 * Q, N * sizeof *S);     /* (4, Q, N): exact, left, grad-dot, grad-cos of run 0 */
    double *E = pk_alloc(Q, N * sizeof *E);         /* (Q, N) a run's exact scores */
    double *acc = pk_calloc(Q, N * sizeof *acc);    /* (Q, N) their running sum    */
    if (!s && (!out->name || !out->lds || !out->se || !out->valid || !out->seconds || !out->per_query ||
               !out->predicted || !out->retrained || !out->full || !out->mask || !S || !E || !acc))
        s = PK_ERR_NOMEM;
    if (!s) s = pk_lds_subsets(N, M, o->alpha, o->subset_seed, out->mask);

    /* the run on everything, then the subsets, then the methods */
    pk_run *run = NULL;
    double t_run0 = 0, sec = 0;
    if (!s) s = ensure_run(&j, o->train.seed, &run, &t_run0);
    if (!s) {
        const pk_model *m = pk_run_model(run);
        double *w = pk_alloc(m->n_params, sizeof *w), *f = pk_alloc(Q, j.C * sizeof *f);
        s = w && f ? pk_run_weights(run, pk_run_steps(run), w) : PK_ERR_NOMEM;
        if (!s) s = pk_model_predict(m, w, test->x, Q, f);
        if (!s) pk_target_values(&o->target, o->train.loss, f, test->y, Q, j.C, out->full);
        free(w);
        free(f);
    }
    if (!s) s = retrain_all(&j, out->mask, out->retrained, &out->seconds_retrain);
    for (int k = 0; !s && k < 3; k++) {
        s = scores_of(&j, run, o->train.seed, k, S + (size_t)k * Q * N, k == 2 ? S + 3 * Q * N : NULL, &sec);
        out->seconds[k] = t_run0 + sec;
        if (k == 2) out->seconds[3] = t_run0 + sec;
    }
    if (run) pk_run_close(run);
    snprintf(out->name[0], 32, "exact:%s", o->quad.name);
    snprintf(out->name[1], 32, "left");
    snprintf(out->name[2], 32, "grad-dot");
    snprintf(out->name[3], 32, "grad-cos");
    for (size_t k = 0; !s && k < 4; k++)
        s = pk_lds_score(S + k * Q * N, out->mask, out->retrained, M, N, Q, out->predicted + k * M * Q,
                         out->per_query + k * Q, &out->lds[k], &out->se[k], &out->valid[k]);
    /* the ensembles: runs of seeds seed, seed + 1, ... (the first is the run above) */
    double cost = 0;
    for (size_t r = 0; !s && r < KE; r++) {
        uint64_t seed = o->train.seed + r;
        double tr = 0, te = 0;
        if (r == 0) {
            memcpy(E, S, Q * N * sizeof *E);
            tr = t_run0;
            te = out->seconds[0] - t_run0;
        } else {
            s = ensure_run(&j, seed, &run, &tr);
            if (!s) s = scores_of(&j, run, seed, 0, E, NULL, &te);
            if (run) { pk_run_close(run); run = NULL; }
        }
        if (s) break;
        cost += tr + te;
        for (size_t i = 0; i < Q * N; i++) acc[i] += E[i];
        for (size_t e = 0; e < o->n_ensembles; e++) {
            if (o->ensembles[e] != r + 1) continue;
            size_t k = 4 + e;
            snprintf(out->name[k], 32, "ensemble:%zu", r + 1);
            for (size_t i = 0; i < Q * N; i++) E[i] = acc[i] / (double)(r + 1);
            out->seconds[k] = cost;
            s = pk_lds_score(E, out->mask, out->retrained, M, N, Q, out->predicted + k * M * Q, out->per_query + k * Q,
                             &out->lds[k], &out->se[k], &out->valid[k]);
        }
    }
    free(S); free(E); free(acc);
    free(j.runs); free(j.retrain); free(j.scores);
    if (s) { pk_lds_free(out); return s; }
    out->seconds_total = pk_seconds() - j.t0;
    return PK_OK;
}
