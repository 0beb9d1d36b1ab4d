/* Two processes calling sched_yield in turns on one CPU: ns per yield (each one switches to the
 * other process). */
#define _GNU_SOURCE
#include "bench.h"
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long n = iters(argc, argv, 5000);
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(0, &one);
    sched_setaffinity(0, sizeof one, &one); /* both on one CPU, inherited by the child */
    pid_t p = fork();
    if (p == 0) {
        for (;;) sched_yield();
    }
    double v[REPS];
    for (int r = 0; r < REPS; r++) {
        long long t = now_ns();
        for (long i = 0; i < n; i++) sched_yield();
        /* Each of our yields lets the other process run one yield: 2 yields per iteration. */
        v[r] = (double)(now_ns() - t) / (2.0 * n);
    }
    kill(p, SIGKILL);
    waitpid(p, NULL, 0);
    report("sched_yield", v, REPS);
    return 0;
}
