/* Times a whole command: `bench_cmd NAME REPS CMD ARGS...` runs CMD REPS times (fork + execvp +
 * waitpid, output discarded) and prints the median wall time as `BENCH NAME <ns> ns`. Used for the
 * macro loads (busybox tar+gzip, python3 start-up). */
#include "bench.h"
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: bench_cmd NAME REPS CMD [ARGS...]\n");
        return 2;
    }
    int reps = atoi(argv[2]);
    if (reps < 1 || reps > 100) return 2;
    double v[100];
    for (int r = 0; r < reps; r++) {
        long long t = now_ns();
        pid_t p = fork();
        if (p == 0) {
            int null = open("/dev/null", O_WRONLY);
            dup2(null, 1);
            execvp(argv[3], argv + 3);
            _exit(127);
        }
        int st;
        if (p < 0 || waitpid(p, &st, 0) != p || st != 0) {
            fprintf(stderr, "bench_cmd %s: %s failed (status %#x)\n", argv[1], argv[3], st);
            return 1;
        }
        v[r] = (double)(now_ns() - t);
    }
    report(argv[1], v, reps);
    return 0;
}
