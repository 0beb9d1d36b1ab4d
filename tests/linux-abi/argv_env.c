/* Large argument and environment vectors: exec ourselves with 1,000 arguments and 1,000 environment
 * strings of 100 bytes (about 200 KB) and check the child sees every one unchanged. */
#include "t.h"
#include <sys/wait.h>
#include <unistd.h>

#define N 1000
#define LEN 100

static void fill(char *s, int i, char tag) {
    snprintf(s, LEN + 1, "%c%04d", tag, i);
    for (int k = 5; k < LEN; k++) s[k] = 'a' + (i + k) % 26;
    s[LEN] = 0;
}

int main(int argc, char **argv, char **envp) {
    t_name = "argv_env";
    static char strs[2 * N][LEN + 1], want[LEN + 1];
    if (argc > 1) { /* the child */
        CHECK(argc == N + 1, "child got %d arguments, want %d", argc, N + 1);
        for (int i = 0; i < N; i++) {
            fill(want, i, 'A');
            CHECK(strcmp(argv[i + 1], want) == 0, "argument %d differs", i);
        }
        int seen = 0;
        for (char **e = envp; *e; e++) {
            if (strncmp(*e, "L4RS", 4)) continue;
            int i = atoi(*e + 4);
            char w[LEN + 16];
            fill(want, i, 'E');
            snprintf(w, sizeof w, "L4RS%04d=%s", i, want);
            CHECK(strcmp(*e, w) == 0, "environment entry %d differs", i);
            seen++;
        }
        CHECK(seen == N, "child saw %d environment entries, want %d", seen, N);
        return 0;
    }
    static char *av[N + 2], *ev[N + 1];
    static char envs[N][LEN + 16];
    av[0] = argv[0];
    for (int i = 0; i < N; i++) {
        fill(strs[i], i, 'A');
        av[i + 1] = strs[i];
        fill(strs[N + i], i, 'E');
        snprintf(envs[i], sizeof envs[i], "L4RS%04d=%s", i, strs[N + i]);
        ev[i] = envs[i];
    }
    pid_t p = fork();
    CHECK(p >= 0, "fork");
    if (p == 0) {
        execve("/proc/self/exe", av, ev);
        printf("FAIL argv_env: execve: %s\n", strerror(errno));
        _exit(2);
    }
    int st;
    CHECK(waitpid(p, &st, 0) == p, "waitpid");
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %#x", st);
    errno = 0;
    return t_pass();
}
