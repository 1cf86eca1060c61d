/* common.c -- error reporting and strict argument parsing for the CLI. */
#include "cli.h"
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int cli_error(const char *cmd, pk_status s)
{
    const char *msg = pk_last_error();
    fprintf(stderr, "pathkernel %s: %s\n", cmd, *msg ? msg : pk_status_str(s));
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
    pk_set_threads((int)n);
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
