/* Signals: a handler runs with SA_SIGINFO data, a blocked signal stays pending until unblocked,
 * and a signal sent by another process carries its pid. */
#include "t.h"
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t hits, sender;

static void handler(int sig, siginfo_t *si, void *uc) {
    (void)uc;
    if (sig == SIGUSR1) hits++;
    sender = si->si_pid;
}

int main(void) {
    t_name = "signals";
    struct sigaction sa = {0};
    sa.sa_sigaction = handler;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(SIGUSR1, &sa, NULL) == 0, "sigaction");
    CHECK(raise(SIGUSR1) == 0 && hits == 1, "handler ran %d times after raise, want 1", (int)hits);
    CHECK(sender == getpid(), "si_pid %d, want own pid %d", (int)sender, (int)getpid());

    sigset_t set, old, pend;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    CHECK(sigprocmask(SIG_BLOCK, &set, &old) == 0, "sigprocmask");
    kill(getpid(), SIGUSR1);
    CHECK(hits == 1, "blocked signal was delivered");
    CHECK(sigpending(&pend) == 0 && sigismember(&pend, SIGUSR1), "SIGUSR1 should be pending");
    CHECK(sigprocmask(SIG_SETMASK, &old, NULL) == 0, "unblock");
    CHECK(hits == 2, "unblocked signal not delivered (hits %d)", (int)hits);

    pid_t parent = getpid();
    pid_t p = fork();
    CHECK(p >= 0, "fork");
    if (p == 0) {
        kill(parent, SIGUSR1);
        _exit(0);
    }
    int st;
    while (waitpid(p, &st, 0) != p) CHECK(errno == EINTR, "waitpid");
    for (int i = 0; i < 1000 && hits < 3; i++) usleep(1000);
    CHECK(hits == 3, "signal from child not delivered (hits %d)", (int)hits);
    CHECK(sender == p, "si_pid %d, want child %d", (int)sender, (int)p);
    errno = 0;
    return t_pass();
}
