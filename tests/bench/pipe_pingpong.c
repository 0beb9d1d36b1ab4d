/* One byte bounced between two processes over two pipes: ns per round trip (two context switches). */
#include "bench.h"
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long n = iters(argc, argv, 2000);
    int ab[2], ba[2];
    if (pipe(ab) || pipe(ba)) return 1;
    pid_t p = fork();
    if (p == 0) {
        char c;
        close(ab[1]); /* else the loop below never sees EOF */
        close(ba[0]);
        while (read(ab[0], &c, 1) == 1) if (write(ba[1], &c, 1) != 1) break;
        _exit(0);
    }
    close(ab[0]);
    close(ba[1]);
    double v[REPS];
    char c = 'x';
    for (int r = 0; r < REPS; r++) {
        long long t = now_ns();
        for (long i = 0; i < n; i++)
            if (write(ab[1], &c, 1) != 1 || read(ba[0], &c, 1) != 1) return 1;
        v[r] = (double)(now_ns() - t) / n;
    }
    close(ab[1]);
    waitpid(p, NULL, 0);
    report("pipe_pingpong", v, REPS);
    return 0;
}
