/* Null system call: raw getpid (no libc caching), ns per call. */
#include "bench.h"
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long n = iters(argc, argv, 100000);
    double v[REPS];
    for (int r = 0; r < REPS; r++) {
        long long t = now_ns();
        for (long i = 0; i < n; i++) syscall(SYS_getpid);
        v[r] = (double)(now_ns() - t) / n;
    }
    report("getpid", v, REPS);
    return 0;
}
