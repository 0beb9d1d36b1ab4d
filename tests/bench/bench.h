/* Shared by the benchmarks: a monotonic ns clock and the result line `BENCH <name> <value> ns`,
 * the median over REPS repetitions of a timed loop, each giving ns per operation. */
#ifndef L4RS_BENCH_H
#define L4RS_BENCH_H
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define REPS 7

static inline long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Sorts v and prints its median as the result. */
static inline void report(const char *name, double *v, int n) {
    qsort(v, n, sizeof *v, cmp_d);
    double m = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
    printf("BENCH %s %.1f ns\n", name, m);
    fflush(stdout);
}

/* Iteration count from argv[1] (so a quick run can use fewer), else `def`. */
static inline long iters(int argc, char **argv, long def) {
    return argc > 1 ? atol(argv[1]) : def;
}
#endif
