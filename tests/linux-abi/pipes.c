/* Pipes: data crosses a fork intact, EOF after the writer closes, EPIPE/SIGPIPE without readers. */
#include "t.h"
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void) {
    t_name = "pipes";
    int fd[2];
    CHECK(pipe(fd) == 0, "pipe");
    pid_t p = fork();
    CHECK(p >= 0, "fork");
    if (p == 0) {
        close(fd[0]);
        char buf[4096];
        for (int i = 0; i < 64; i++) {
            memset(buf, 'a' + i % 26, sizeof buf);
            if (write(fd[1], buf, sizeof buf) != (ssize_t)sizeof buf) _exit(2);
        }
        _exit(0);
    }
    close(fd[1]);
    char buf[4096];
    size_t total = 0;
    ssize_t n;
    while ((n = read(fd[0], buf, sizeof buf)) > 0) {
        for (ssize_t i = 0; i < n; i++)
            CHECK(buf[i] == 'a' + (int)((total + i) / 4096) % 26, "wrong byte at offset %zu", total + i);
        total += n;
    }
    CHECK(n == 0, "read should end with EOF");
    CHECK(total == 64 * 4096, "got %zu bytes, want %d", total, 64 * 4096);
    int st;
    CHECK(waitpid(p, &st, 0) == p && WIFEXITED(st) && WEXITSTATUS(st) == 0, "writer status %#x", st);
    close(fd[0]);

    CHECK(pipe(fd) == 0, "pipe 2");
    close(fd[0]);
    signal(SIGPIPE, SIG_IGN);
    errno = 0;
    CHECK(write(fd[1], "x", 1) == -1 && errno == EPIPE, "write without reader should fail with EPIPE");
    errno = 0;
    return t_pass();
}
