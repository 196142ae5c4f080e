/*
 * xslat.c - per-operation latency of a xenstore daemon holding a big tree.
 *
 * Part of pyxenstored's benchmark harness (bench/run.py builds it with
 * `cc -O2 bench/xslat.c -lxenstore`).  It complements the peers' xsbench,
 * which measures throughput on a small tree: xslat times single requests
 * against the per-domain nodes that libxl writes (sim/toolstack.py's
 * domain_skeleton), spread over domains 1..N so that every lookup goes
 * somewhere different in the tree.
 *
 *   read      XS_READ      /local/domain/D/name
 *   write     XS_WRITE     /local/domain/D/memory/target (an existing node)
 *   dir       XS_DIRECTORY /local/domain/D (about 15 children)
 *   perms     XS_GET_PERMS /local/domain/D/device/vif/0
 *   txn       start, read memory/target, write memory/target and
 *             memory/static-max, commit (5 requests)
 *   watch1    with -W N watches registered on another connection (on
 *             /local/domain/K/control/shutdown, K = 1..N): write
 *             /local/domain/1/control/shutdown, which fires exactly one of
 *             them, and time until the event arrives
 *   nowatch   with the same watches registered: write a node that fires
 *             none of them (/local/domain/1/data/bench-nowatch)
 *
 * Usage: xslat [-s socket] [-n domains] [-d seconds] [-m max_iters]
 *              [-W watches] [-l label] test...
 * One JSON object per test on stdout; latencies in microseconds.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <xenstore.h>

static double duration = 0.5;
static long max_iters = 200000;
static long ndomains = 10;
static long nwatches = 0;
static const char *label = "";

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    perror(what);
    exit(3);
}

static struct xs_handle *open_or_die(void)
{
    struct xs_handle *h = xs_open(0);

    if (!h)
        die("xs_open");
    return h;
}

/* Spread consecutive iterations over the domains (7919 is prime). */
static long domain_for(long i)
{
    return 1 + (i * 7919) % ndomains;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

static void report(const char *test, double *lat, long n, double secs,
                   const char *extra)
{
    double sum = 0;
    long k;

    if (n == 0) {
        printf("{\"client\":\"libxenstore\",\"label\":\"%s\",\"test\":\"%s\","
               "\"count\":0}\n", label, test);
        return;
    }
    qsort(lat, n, sizeof(*lat), cmp_double);
    for (k = 0; k < n; k++)
        sum += lat[k];
    printf("{\"client\":\"libxenstore\",\"label\":\"%s\",\"test\":\"%s\","
           "\"domains\":%ld,\"watches\":%ld,\"count\":%ld,\"seconds\":%.4f,"
           "\"rate\":%.1f,\"lat_us_p50\":%.1f,\"lat_us_p99\":%.1f,"
           "\"lat_us_mean\":%.1f,\"lat_us_min\":%.1f,\"lat_us_max\":%.1f%s%s}\n",
           label, test, ndomains, nwatches, n, secs, n / secs, lat[n / 2],
           lat[(n * 99) / 100], sum / n, lat[0], lat[n - 1],
           extra ? "," : "", extra ? extra : "");
    fflush(stdout);
}

static bool one_op(struct xs_handle *h, const char *test, long i)
{
    char path[128], path2[128];
    long d = domain_for(i);
    unsigned int len;

    if (strcmp(test, "read") == 0) {
        char *v;

        snprintf(path, sizeof(path), "/local/domain/%ld/name", d);
        v = xs_read(h, XBT_NULL, path, &len);
        free(v);
        return v != NULL;
    }
    if (strcmp(test, "write") == 0) {
        snprintf(path, sizeof(path), "/local/domain/%ld/memory/target", d);
        return xs_write(h, XBT_NULL, path, "524288", 6);
    }
    if (strcmp(test, "dir") == 0) {
        char **e;

        snprintf(path, sizeof(path), "/local/domain/%ld", d);
        e = xs_directory(h, XBT_NULL, path, &len);
        free(e);
        return e != NULL;
    }
    if (strcmp(test, "perms") == 0) {
        struct xs_permissions *p;

        snprintf(path, sizeof(path), "/local/domain/%ld/device/vif/0", d);
        p = xs_get_permissions(h, XBT_NULL, path, &len);
        free(p);
        return p != NULL;
    }
    if (strcmp(test, "txn") == 0) {
        xs_transaction_t t;
        char *v;

        snprintf(path, sizeof(path), "/local/domain/%ld/memory/target", d);
        snprintf(path2, sizeof(path2), "/local/domain/%ld/memory/static-max",
                 d);
        for (;;) {
            t = xs_transaction_start(h);
            if (t == XBT_NULL)
                return false;
            v = xs_read(h, t, path, &len);
            if (!v)
                return false;
            free(v);
            if (!xs_write(h, t, path, "524288", 6) ||
                !xs_write(h, t, path2, "524288", 6))
                return false;
            if (xs_transaction_end(h, t, false))
                return true;
            if (errno != EAGAIN)
                return false;
        }
    }
    fprintf(stderr, "xslat: unknown test %s\n", test);
    exit(1);
}

static void run_op(struct xs_handle *h, const char *test)
{
    double *lat = malloc(max_iters * sizeof(*lat));
    double t0, end, secs;
    long i;

    if (!lat)
        die("malloc");
    /* warm up (untimed) */
    for (i = 0; i < 200; i++)
        if (!one_op(h, test, i))
            die(test);
    t0 = now();
    end = t0 + duration;
    for (i = 0; i < max_iters; i++) {
        double a = now();

        if (a >= end)
            break;
        if (!one_op(h, test, i))
            die(test);
        lat[i] = (now() - a) * 1e6;
    }
    secs = now() - t0;
    report(test, lat, i, secs, NULL);
    free(lat);
}

/* Wait (bounded) for a watch event on h whose path is `path`. */
static bool wait_event(struct xs_handle *h, const char *path, double limit)
{
    int fd = xs_fileno(h);
    double end = now() + limit;

    for (;;) {
        char **ev;
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        int ms;

        while ((ev = xs_check_watch(h)) != NULL) {
            bool match = path && strcmp(ev[XS_WATCH_PATH], path) == 0;

            free(ev);
            if (match)
                return true;
        }
        ms = (int)((end - now()) * 1000);
        if (ms <= 0)
            return false;
        if (poll(&pfd, 1, ms) < 0 && errno != EINTR)
            return false;
    }
}

static struct xs_handle *register_watches(double *reg_secs)
{
    struct xs_handle *w = open_or_die();
    char path[128], token[32];
    double t0 = now(), end;
    long k, seen = 0;

    for (k = 1; k <= nwatches; k++) {
        snprintf(path, sizeof(path), "/local/domain/%ld/control/shutdown", k);
        snprintf(token, sizeof(token), "t%ld", k);
        if (!xs_watch(w, path, token))
            die("xs_watch");
    }
    *reg_secs = now() - t0;
    /* every registration fires one initial event: drain them all */
    end = now() + 60;
    while (seen < nwatches && now() < end) {
        char **ev = xs_check_watch(w);

        if (ev) {
            free(ev);
            seen++;
            continue;
        }
        {
            struct pollfd pfd = { .fd = xs_fileno(w), .events = POLLIN };

            poll(&pfd, 1, 100);
        }
    }
    if (seen < nwatches) {
        fprintf(stderr, "xslat: only %ld of %ld initial events\n", seen,
                nwatches);
        exit(3);
    }
    return w;
}

static void run_watch(struct xs_handle *h, struct xs_handle *w,
                      const char *test, double reg_secs)
{
    double *lat = malloc(max_iters * sizeof(*lat));
    const char *node = strcmp(test, "watch1") == 0
        ? "/local/domain/1/control/shutdown"
        : "/local/domain/1/data/bench-nowatch";
    bool fires = strcmp(test, "watch1") == 0;
    double t0, end, secs;
    char val[32], extra[64];
    long i;

    if (!lat)
        die("malloc");
    /* warm up (untimed) */
    for (i = 0; i < 200; i++) {
        snprintf(val, sizeof(val), "w%ld", i);
        if (!xs_write(h, XBT_NULL, node, val, strlen(val)))
            die("xs_write (watch warm-up)");
        if (fires && !wait_event(w, node, 5.0)) {
            fprintf(stderr, "xslat: watch event lost in warm-up\n");
            exit(3);
        }
    }
    t0 = now();
    end = t0 + duration;
    for (i = 0; i < max_iters; i++) {
        double a = now();

        if (a >= end)
            break;
        snprintf(val, sizeof(val), "v%ld", i);
        if (!xs_write(h, XBT_NULL, node, val, strlen(val)))
            die("xs_write (watch)");
        if (fires && !wait_event(w, node, 5.0)) {
            fprintf(stderr, "xslat: watch event lost at %ld\n", i);
            exit(3);
        }
        lat[i] = (now() - a) * 1e6;
    }
    secs = now() - t0;
    snprintf(extra, sizeof(extra), "\"register_s\":%.4f", reg_secs);
    report(test, lat, i, secs, extra);
    free(lat);
}

int main(int argc, char **argv)
{
    struct xs_handle *h, *w = NULL;
    double reg_secs = 0;
    int opt, i;

    while ((opt = getopt(argc, argv, "s:n:d:m:W:l:h")) != -1) {
        switch (opt) {
        case 's':
            setenv("XENSTORED_PATH", optarg, 1);
            break;
        case 'n':
            ndomains = atol(optarg);
            break;
        case 'd':
            duration = atof(optarg);
            break;
        case 'm':
            max_iters = atol(optarg);
            break;
        case 'W':
            nwatches = atol(optarg);
            break;
        case 'l':
            label = optarg;
            break;
        default:
            fprintf(stderr,
                    "usage: %s [-s socket] [-n domains] [-d seconds] "
                    "[-m max_iters] [-W watches] [-l label] "
                    "[read|write|dir|perms|txn|watch1|nowatch ...]\n",
                    argv[0]);
            return opt == 'h' ? 0 : 1;
        }
    }
    if (ndomains < 1 || duration <= 0 || duration > 60 || max_iters < 1) {
        fprintf(stderr, "xslat: bad -n, -d or -m\n");
        return 1;
    }
    h = open_or_die();
    for (i = optind; i < argc; i++) {
        if (strcmp(argv[i], "watch1") == 0 || strcmp(argv[i], "nowatch") == 0) {
            if (nwatches < 1) {
                fprintf(stderr, "xslat: %s needs -W N (N >= 1)\n", argv[i]);
                return 1;
            }
            if (!w)
                w = register_watches(&reg_secs);
            run_watch(h, w, argv[i], reg_secs);
        } else {
            run_op(h, argv[i]);
        }
    }
    if (w)
        xs_close(w);
    xs_close(h);
    return 0;
}
