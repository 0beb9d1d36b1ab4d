/* fork/exec/wait and exit codes: a child's _exit status, an exec'd program's status, a child killed
 * by a signal, and waitpid(WNOHANG) on a running child. */
#include "t.h"
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    t_name = "proc_exec";
    if (argc == 2) return atoi(argv[1]); /* exec'd copy: exit with the requested code */
    pid_t p = fork();
    CHECK(p >= 0, "fork");
    if (p == 0) _exit(42);
    int st;
    CHECK(waitpid(p, &st, 0) == p, "waitpid");
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 42, "child status %#x, want exit 42", st);

    p = fork();
    CHECK(p >= 0, "fork 2");
    if (p == 0) {
        char *av[] = {argv[0], "7", NULL};
        execv("/proc/self/exe", av);
        _exit(99);
    }
    CHECK(waitpid(p, &st, 0) == p, "waitpid exec");
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 7, "exec'd child status %#x, want exit 7", st);

    p = fork();
    CHECK(p >= 0, "fork 3");
    if (p == 0) {
        pause();
        _exit(0);
    }
    CHECK(waitpid(p, &st, WNOHANG) == 0, "WNOHANG on a running child should return 0");
    CHECK(kill(p, SIGKILL) == 0, "kill");
    CHECK(waitpid(p, &st, 0) == p, "waitpid killed");
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "status %#x, want SIGKILL", st);
    errno = 0;
    CHECK(waitpid(-1, &st, WNOHANG) == -1 && errno == ECHILD, "no children left should give ECHILD");
    errno = 0;
    return t_pass();
}
