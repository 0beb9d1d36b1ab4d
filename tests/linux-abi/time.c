/* Clocks: CLOCK_MONOTONIC never goes back, nanosleep sleeps at least as long as asked (and not
 * absurdly longer), CLOCK_REALTIME is after 2020, and the process CPU clock advances while busy. */
#include "t.h"
#include <time.h>

static long long ns(clockid_t c) {
    struct timespec ts;
    if (clock_gettime(c, &ts) != 0) return -1;
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(void) {
    t_name = "time";
    long long prev = ns(CLOCK_MONOTONIC);
    CHECK(prev >= 0, "clock_gettime(CLOCK_MONOTONIC)");
    for (int i = 0; i < 100000; i++) {
        long long now = ns(CLOCK_MONOTONIC);
        CHECK(now >= prev, "monotonic clock went back by %lld ns", prev - now);
        prev = now;
    }
    struct timespec req = {0, 20 * 1000 * 1000};
    long long a = ns(CLOCK_MONOTONIC);
    CHECK(nanosleep(&req, NULL) == 0, "nanosleep");
    long long slept = ns(CLOCK_MONOTONIC) - a;
    CHECK(slept >= 20000000LL, "nanosleep(20 ms) returned after %lld ns", slept);
    CHECK(slept < 5000000000LL, "nanosleep(20 ms) took %lld ns", slept);
    CHECK(ns(CLOCK_REALTIME) / 1000000000LL > 1577836800LL, "CLOCK_REALTIME is before 2020");
    long long c0 = ns(CLOCK_PROCESS_CPUTIME_ID);
    volatile unsigned long x = 0;
    for (unsigned long i = 0; i < 20000000UL; i++) x += i;
    CHECK(ns(CLOCK_PROCESS_CPUTIME_ID) > c0, "process CPU clock did not advance");
    errno = 0;
    return t_pass();
}
