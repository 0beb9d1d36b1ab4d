/* mmap/munmap/mprotect: anonymous memory is zeroed and writable, a write to a page made read-only
 * raises SIGSEGV at that address, an access after munmap raises SIGSEGV, and a shared mapping is
 * seen by a forked child's writes. */
#include "t.h"
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static sigjmp_buf env;
static void *fault_addr;

static void on_segv(int sig, siginfo_t *si, void *uc) {
    (void)sig, (void)uc;
    fault_addr = si->si_addr;
    siglongjmp(env, 1);
}

/* 1 if writing to p faults. */
static int write_faults(volatile char *p) {
    fault_addr = NULL;
    if (sigsetjmp(env, 1)) return 1;
    *p = 1;
    return 0;
}

int main(void) {
    t_name = "memory";
    struct sigaction sa = {0};
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO;
    CHECK(sigaction(SIGSEGV, &sa, NULL) == 0, "sigaction");
    long pg = sysconf(_SC_PAGESIZE);
    size_t len = 16 * pg;
    char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(m != MAP_FAILED, "mmap");
    for (size_t i = 0; i < len; i++) CHECK(m[i] == 0, "anonymous memory not zero at %zu", i);
    memset(m, 0x5a, len);
    CHECK(!write_faults(m + 3 * pg), "write to writable page faulted");
    CHECK(mprotect(m + 3 * pg, pg, PROT_READ) == 0, "mprotect");
    CHECK(m[3 * pg] == 1 && m[3 * pg + 1] == 0x5a, "contents changed by mprotect");
    CHECK(write_faults(m + 3 * pg + 8), "write to read-only page did not fault");
    CHECK(fault_addr == m + 3 * pg + 8, "si_addr %p, want %p", fault_addr, (void *)(m + 3 * pg + 8));
    CHECK(!write_faults(m + 4 * pg), "neighbouring page became read-only");
    CHECK(munmap(m + 8 * pg, pg) == 0, "munmap");
    CHECK(write_faults(m + 8 * pg), "access after munmap did not fault");
    CHECK(munmap(m, len) == 0, "munmap all");

    int *shared = mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(shared != MAP_FAILED, "mmap shared");
    pid_t p = fork();
    CHECK(p >= 0, "fork");
    if (p == 0) {
        *shared = 1234;
        _exit(0);
    }
    int st;
    CHECK(waitpid(p, &st, 0) == p, "waitpid");
    CHECK(*shared == 1234, "child's write to MAP_SHARED not visible (%d)", *shared);
    errno = 0;
    return t_pass();
}
