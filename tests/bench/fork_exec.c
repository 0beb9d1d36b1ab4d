/* fork + execve of a tiny static program + waitpid: ns per child. The program is `tiny` next to
 * this one (argv[2] overrides). */
#include "bench.h"
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long n = iters(argc, argv, 50);
    char path[512];
    if (argc > 2) {
        snprintf(path, sizeof path, "%s", argv[2]);
    } else {
        snprintf(path, sizeof path, "%s", argv[0]);
        char *slash = strrchr(path, '/');
        snprintf(slash ? slash + 1 : path, sizeof path - (slash ? slash + 1 - path : 0), "tiny");
    }
    char *av[] = {path, NULL}, *ev[] = {NULL};
    double v[REPS];
    for (int r = 0; r < REPS; r++) {
        long long t = now_ns();
        for (long i = 0; i < n; i++) {
            pid_t p = fork();
            if (p == 0) {
                execve(path, av, ev);
                _exit(127);
            }
            int st;
            if (p < 0 || waitpid(p, &st, 0) != p || st != 0) {
                fprintf(stderr, "fork_exec: %s failed (status %#x)\n", path, st);
                return 1;
            }
        }
        v[r] = (double)(now_ns() - t) / n;
    }
    report("fork_exec", v, REPS);
    return 0;
}
