/* pk_data_dump -- load a data spec with pk_data_load and write what was loaded
 * as .npy files, for the Python tests to compare against numpy:
 *
 *   pk_data_dump SPEC OUTDIR [--first N] [--random N --seed S] [--standardize]
 *                [--sep C] [--label-column NAME|INDEX] [--class-names FILE] [--allow-unseen]
 *
 * writes OUTDIR/x.npy (n, d), OUTDIR/y.npy (n, ty) and OUTDIR/meta.txt
 * ("key value" lines: n d ty img_h img_w classes fingerprint source, then
 * "class NAME" for each class name and "feature NAME" for each feature
 * name, in order, and "warning TEXT" when loading left one); with
 * --standardize also OUTDIR/mean.npy and OUTDIR/std.npy (d) from
 * pk_data_moments, and x.npy holds the standardised features.
 * Exit status: 0 ok; 2 bad input (PK_ERR_INPUT, PK_ERR_IO on loading) or bad
 * arguments; 1 anything else. Errors go to stderr as one line. */
#include <pathkernel.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int usage(void)
{
    fprintf(stderr, "usage: pk_data_dump SPEC OUTDIR [--first N] [--random N --seed S] "
                    "[--standardize] [--sep C] [--label-column NAME|INDEX] [--class-names FILE] "
                    "[--allow-unseen]\n");
    return 2;
}

static int parse_u64(const char *s, unsigned long long *v)
{
    char *end;
    errno = 0;
    if (!s || !*s || *s == '-') return -1;
    *v = strtoull(s, &end, 10);
    return (*end || errno) ? -1 : 0;
}

static int write_npy(const char *dir, const char *name, const double *a, size_t ndim,
                     const size_t *shape)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (pk_npy_write(path, a, ndim, shape) != PK_OK) {
        fprintf(stderr, "%s\n", pk_last_error());
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3) return usage();
    const char *spec = argv[1], *dir = argv[2];
    pk_load_opts lo = pk_load_opts_defaults();
    int standardize = 0;
    char **names = NULL;
    for (int i = 3; i < argc; i++) {
        unsigned long long v;
        if (!strcmp(argv[i], "--standardize")) { standardize = 1; continue; }
        if (!strcmp(argv[i], "--allow-unseen")) { lo.allow_unseen = 1; continue; }
        if (i + 1 < argc && !strcmp(argv[i], "--sep")) {
            const char *c = argv[++i];
            lo.sep = !strcmp(c, "tab") ? '\t' : c[0];
            continue;
        }
        if (i + 1 < argc && !strcmp(argv[i], "--label-column")) { lo.label_column = argv[++i]; continue; }
        if (i + 1 < argc && !strcmp(argv[i], "--class-names")) {
            if (pk_names_read(argv[++i], &names, &lo.n_class_names) != PK_OK) {
                fprintf(stderr, "%s\n", pk_last_error());
                return 2;
            }
            lo.class_names = (const char *const *)names;
            continue;
        }
        if (i + 1 >= argc || parse_u64(argv[i + 1], &v)) return usage();
        if (!strcmp(argv[i], "--first")) lo.first = (size_t)v;
        else if (!strcmp(argv[i], "--random")) lo.random = (size_t)v;
        else if (!strcmp(argv[i], "--seed")) lo.seed = (uint64_t)v;
        else return usage();
        i++;
    }

    pk_data d;
    pk_status s = pk_data_load(spec, &lo, &d);
    free(names);
    if (s != PK_OK) {
        fprintf(stderr, "%s\n", pk_last_error());
        return (s == PK_ERR_INPUT || s == PK_ERR_IO) ? 2 : 1;
    }
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "%s: cannot create: %s\n", dir, strerror(errno));
        pk_data_free(&d);
        return 1;
    }

    int rc = 0;
    size_t classes = 0;
    int have_classes = pk_data_classes(&d, &classes) == PK_OK;
    uint64_t fp = pk_data_fingerprint(&d);
    if (standardize) {
        double *mean = malloc((d.d ? d.d : 1) * sizeof *mean);
        double *std = malloc((d.d ? d.d : 1) * sizeof *std);
        if (!mean || !std) { fprintf(stderr, "out of memory\n"); rc = 1; }
        if (!rc) {
            pk_data_moments(&d, mean, std);
            pk_data_standardize(&d, mean, std);
            rc = write_npy(dir, "mean.npy", mean, 1, &d.d) || write_npy(dir, "std.npy", std, 1, &d.d);
        }
        free(mean);
        free(std);
    }
    size_t xs[2] = { d.n, d.d }, ys[2] = { d.n, d.ty };
    if (!rc) rc = write_npy(dir, "x.npy", d.x, 2, xs) || write_npy(dir, "y.npy", d.y, 2, ys);

    if (!rc) {
        char path[4096];
        snprintf(path, sizeof path, "%s/meta.txt", dir);
        FILE *f = fopen(path, "w");
        if (!f) {
            fprintf(stderr, "%s: cannot create: %s\n", path, strerror(errno));
            rc = 1;
        } else {
            fprintf(f, "n %zu\nd %zu\nty %zu\nimg_h %zu\nimg_w %zu\n", d.n, d.d, d.ty, d.img_h,
                    d.img_w);
            if (have_classes) fprintf(f, "classes %zu\n", classes);
            else fprintf(f, "classes none\n");
            fprintf(f, "fingerprint %llu\nsource %s\n", (unsigned long long)fp, d.source);
            for (size_t c = 0; c < d.n_class_names; c++) fprintf(f, "class %s\n", d.class_names[c]);
            for (size_t j = 0; d.feature_names && j < d.d; j++) fprintf(f, "feature %s\n", d.feature_names[j]);
            if (d.warning) fprintf(f, "warning %s\n", d.warning);
            if (fclose(f) != 0) rc = 1;
        }
    }
    pk_data_free(&d);
    return rc;
}
