/* fork + _exit + waitpid: ns per child. */
#include "bench.h"
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long n = iters(argc, argv, 100);
    double v[REPS];
    for (int r = 0; r < REPS; r++) {
        long long t = now_ns();
        for (long i = 0; i < n; i++) {
            pid_t p = fork();
            if (p == 0) _exit(0);
            if (p < 0 || waitpid(p, NULL, 0) != p) return 1;
        }
        v[r] = (double)(now_ns() - t) / n;
    }
    report("fork_exit", v, REPS);
    return 0;
}
