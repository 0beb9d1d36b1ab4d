/* FPU/SSE state: each process keeps its own registers across system calls and switches to
 * another process, a signal handler's changes are undone by sigreturn, fork inherits the state
 * and exec resets it. The register work is done inside single asm blocks, so that nothing the
 * compiler generates can touch xmm5 in between. */
#include "t.h"
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#define MXCSR_DEFAULT 0x1f80u
#define MXCSR_TO_ZERO 0x7f80u /* rounding toward zero */

/* xmm5 = v, then `n` rounds over two pipes (write then read, or read then write), raw system
 * calls only; returns xmm5 afterwards, or 0 if a call failed. */
static unsigned long pingpong(long rfd, long wfd, unsigned long v, long n, long reader_first) {
    unsigned long out;
    char b = 'x';
    __asm__ volatile(
        "movq %[v], %%xmm5\n"
        "1: test %[rf], %[rf]\n"
        "   jnz 2f\n"
        "   mov $1, %%eax\n mov %[w], %%rdi\n lea %[b], %%rsi\n mov $1, %%edx\n syscall\n"
        "   cmp $1, %%rax\n jne 9f\n"
        "2: xor %%eax, %%eax\n mov %[r], %%rdi\n lea %[b], %%rsi\n mov $1, %%edx\n syscall\n"
        "   cmp $1, %%rax\n jne 9f\n"
        "   test %[rf], %[rf]\n jz 3f\n"
        "   mov $1, %%eax\n mov %[w], %%rdi\n lea %[b], %%rsi\n mov $1, %%edx\n syscall\n"
        "   cmp $1, %%rax\n jne 9f\n"
        "3: dec %[n]\n jnz 1b\n"
        "   movq %%xmm5, %[out]\n jmp 8f\n"
        "9: xor %[out], %[out]\n"
        "8:\n"
        : [out] "=&r"(out), [n] "+r"(n), [b] "+m"(b)
        : [v] "r"(v), [r] "r"(rfd), [w] "r"(wfd), [rf] "r"(reader_first)
        : "rax", "rcx", "rdx", "rsi", "rdi", "r11", "xmm5", "memory");
    return out;
}

static void on_usr1(int sig) {
    (void)sig;
    unsigned int m = MXCSR_DEFAULT;
    __asm__ volatile("movq %0, %%xmm5\n ldmxcsr %1" : : "r"(0xbadUL), "m"(m) : "xmm5");
}

/* xmm5 = v and MXCSR = m, then kill(self, SIGUSR1) by a raw system call (the handler runs on
 * its way back); returns xmm5 and MXCSR afterwards. */
static unsigned long through_signal(unsigned long v, unsigned int m, unsigned int *m_after) {
    unsigned long out;
    unsigned int ma;
    long pid = getpid();
    __asm__ volatile(
        "movq %[v], %%xmm5\n ldmxcsr %[m]\n"
        "mov $62, %%eax\n mov %[pid], %%rdi\n mov %[sig], %%esi\n syscall\n"
        "movq %%xmm5, %[out]\n stmxcsr %[ma]\n"
        : [out] "=r"(out), [ma] "=m"(ma)
        : [v] "r"(v), [m] "m"(m), [pid] "r"(pid), [sig] "i"(SIGUSR1)
        : "rax", "rcx", "rdx", "rsi", "rdi", "r11", "xmm5", "memory");
    *m_after = ma;
    return out;
}

/* xmm5 = v, fork by a raw system call; returns (in each process) the fork result and xmm5. */
static long fork_with(unsigned long v, unsigned long *x) {
    long r;
    unsigned long out;
    __asm__ volatile("movq %[v], %%xmm5\n mov $57, %%eax\n syscall\n movq %%xmm5, %[out]\n"
                     : "=a"(r), [out] "=r"(out)
                     : [v] "r"(v)
                     : "rcx", "r11", "xmm5", "memory");
    *x = out;
    return r;
}

static unsigned int mxcsr(void) {
    unsigned int m;
    __asm__ volatile("stmxcsr %0" : "=m"(m));
    return m;
}

int main(int argc, char **argv) {
    t_init(argv[0], "fpu");
    if (argc > 1 && strcmp(argv[1], "after-exec") == 0) {
        /* Silent: the parent reports (3: MXCSR not reset, 4: xmm5 not cleared). */
        unsigned long x;
        __asm__ volatile("movq %%xmm5, %0" : "=r"(x));
        return mxcsr() != MXCSR_DEFAULT ? 3 : x != 0 ? 4 : 0;
    }

    /* Two processes, each with its own xmm5, switching 2,000 times. */
    int ab[2], ba[2];
    CHECK(pipe(ab) == 0 && pipe(ba) == 0, "pipe");
    pid_t p = fork();
    CHECK(p >= 0, "fork");
    if (p == 0) {
        unsigned long x = pingpong(ab[0], ba[1], 0x2222222222222222UL, 2000, 1);
        _exit(x == 0x2222222222222222UL ? 0 : 1);
    }
    unsigned long x = pingpong(ba[0], ab[1], 0x1111111111111111UL, 2000, 0);
    int st;
    CHECK(waitpid(p, &st, 0) == p, "waitpid");
    errno = 0;
    CHECK(x == 0x1111111111111111UL, "parent's xmm5 %#lx after 2,000 switches", x);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child's xmm5 changed over the switches (status %#x)",
          st);

    /* A handler's registers do not leak into the interrupted code. */
    CHECK(signal(SIGUSR1, on_usr1) != SIG_ERR, "signal");
    unsigned int m_after;
    x = through_signal(0x3333333333333333UL, MXCSR_TO_ZERO, &m_after);
    errno = 0;
    CHECK(x == 0x3333333333333333UL, "xmm5 %#lx after a handler that changed it", x);
    CHECK(m_after == MXCSR_TO_ZERO, "MXCSR %#x after a handler that changed it, want %#x", m_after,
          MXCSR_TO_ZERO);

    /* fork: the child starts with the parent's registers. */
    long r = fork_with(0x4444444444444444UL, &x);
    if (r == 0) _exit(x == 0x4444444444444444UL ? 0 : 1);
    CHECK(r > 0, "fork");
    CHECK(waitpid((pid_t)r, &st, 0) == r, "waitpid");
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the child did not inherit xmm5 (status %#x)", st);
    CHECK(x == 0x4444444444444444UL, "parent's xmm5 %#lx after fork", x);

    /* exec: a fresh state (MXCSR default, registers zero), whatever the caller had. */
    p = fork();
    CHECK(p >= 0, "fork");
    if (p == 0) {
        unsigned int m = MXCSR_TO_ZERO;
        __asm__ volatile("ldmxcsr %0\n movq %1, %%xmm5" : : "m"(m), "r"(0x5555UL) : "xmm5");
        execl("/proc/self/exe", argv[0], "after-exec", (char *)NULL);
        _exit(2);
    }
    CHECK(waitpid(p, &st, 0) == p, "waitpid");
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) != 3, "MXCSR not reset by exec");
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) != 4, "xmm5 not cleared by exec");
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the exec'd program failed (status %#x)", st);
    errno = 0;
    return t_pass();
}
