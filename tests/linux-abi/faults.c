/* Faults are a process's own business: a wild pointer, a kernel address, a privileged
 * instruction, an invalid opcode, a division by zero and a breakpoint each end only the child
 * that did it, with the signal Linux gives; a fork bomb is stopped by RLIMIT_NPROC; and the
 * system goes on (the parent forks again afterwards). */
#include "t.h"
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

/* Runs f in a child: its terminating signal, or -(exit status) if it exited. */
static int child_signal(void (*f)(void)) {
    pid_t p = fork();
    if (p == 0) {
        f();
        _exit(0);
    }
    int st = 0;
    if (p < 0 || waitpid(p, &st, 0) != p) return -1000;
    return WIFSIGNALED(st) ? WTERMSIG(st) : -WEXITSTATUS(st);
}

static void wild(void) { *(volatile int *)0x1234 = 1; }
static void kernel_address(void) { (void)*(volatile int *)0xffff800000001000ul; }
static void privileged(void) { __asm__ volatile("hlt"); }
static void invalid_opcode(void) { __asm__ volatile("ud2"); }
/* In assembly: the compiler may turn `1 / x` into a comparison that never divides. */
static void divide_by_zero(void) { __asm__ volatile("xor %%ecx, %%ecx; mov $1, %%eax; cltd; idivl %%ecx" ::: "eax", "ecx", "edx"); }
static void breakpoint(void) { __asm__ volatile("int3"); }

/* In a child of its own process group, as an unprivileged user (root ignores RLIMIT_NPROC):
 * forks until refused; reports how many it got and the error through `fd`. */
static void bomb(int fd) {
    setpgid(0, 0);
    struct rlimit r = {30, 30};
    if (setgid(65534) != 0 || setuid(65534) != 0 || setrlimit(RLIMIT_NPROC, &r) != 0) _exit(2);
    int n = 0, err = 0;
    for (;;) {
        pid_t p = fork();
        if (p == 0) {
            pause();
            _exit(0);
        }
        if (p < 0) {
            err = errno;
            break;
        }
        if (++n > 1000) break;
    }
    int msg[2] = {n, err};
    if (write(fd, msg, sizeof msg) != sizeof msg) _exit(3);
    pause();
    _exit(0);
}

int main(int argc, char **argv) {
    (void)argc;
    t_init(argv[0], "faults");
    int s;
    CHECK((s = child_signal(wild)) == SIGSEGV, "wild pointer: signal %d, want SIGSEGV", s);
    CHECK((s = child_signal(kernel_address)) == SIGSEGV, "kernel address: signal %d, want SIGSEGV", s);
    CHECK((s = child_signal(privileged)) == SIGSEGV, "hlt: signal %d, want SIGSEGV", s);
    CHECK((s = child_signal(invalid_opcode)) == SIGILL, "ud2: signal %d, want SIGILL", s);
    CHECK((s = child_signal(divide_by_zero)) == SIGFPE, "1/0: signal %d, want SIGFPE", s);
    CHECK((s = child_signal(breakpoint)) == SIGTRAP, "int3: signal %d, want SIGTRAP", s);

    int fds[2];
    CHECK(pipe(fds) == 0, "pipe");
    pid_t b = fork();
    CHECK(b >= 0, "fork");
    if (b == 0) bomb(fds[1]);
    int msg[2] = {0, 0};
    ssize_t got = read(fds[0], msg, sizeof msg);
    kill(-b, SIGKILL);
    kill(b, SIGKILL);
    while (waitpid(-1, NULL, 0) > 0) {
    }
    errno = 0;
    CHECK(got == sizeof msg, "the fork bomb reported nothing");
    CHECK(msg[1] == EAGAIN && msg[0] < 30, "fork bomb: %d forks, then errno %d; want EAGAIN before 30",
          msg[0], msg[1]);
    CHECK((s = child_signal(breakpoint)) == SIGTRAP, "after the bomb: signal %d", s);
    return t_pass();
}
