/* pthreads (clone + futex): threads share memory, a mutex-protected counter adds up, a condition
 * variable wakes a waiter, and join returns each thread's value. */
#include "t.h"
#include <pthread.h>
#include <stdint.h>
#include <unistd.h>
#include <sys/syscall.h>

#define THREADS 4
#define ROUNDS 20000

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static long counter;
static int ready;

static void *work(void *arg) {
    for (int i = 0; i < ROUNDS; i++) {
        pthread_mutex_lock(&lock);
        counter++;
        pthread_mutex_unlock(&lock);
    }
    return (void *)(uintptr_t)(syscall(SYS_gettid) != getpid() ? (uintptr_t)arg : 999);
}

static void *waiter(void *arg) {
    (void)arg;
    pthread_mutex_lock(&lock);
    while (!ready) pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);
    return (void *)7;
}

int main(int argc, char **argv) {
    (void)argc;
    t_init(argv[0], "threads");
    pthread_t t[THREADS], w;
    CHECK(pthread_create(&w, NULL, waiter, NULL) == 0, "create waiter");
    for (uintptr_t i = 0; i < THREADS; i++) CHECK(pthread_create(&t[i], NULL, work, (void *)i) == 0, "create %lu", (unsigned long)i);
    for (uintptr_t i = 0; i < THREADS; i++) {
        void *r;
        CHECK(pthread_join(t[i], &r) == 0, "join");
        CHECK((uintptr_t)r == i, "thread %lu returned %lu (999: it had the process's tid)", (unsigned long)i, (unsigned long)(uintptr_t)r);
    }
    CHECK(counter == (long)THREADS * ROUNDS, "counter %ld, want %d", counter, THREADS * ROUNDS);
    usleep(10000);
    pthread_mutex_lock(&lock);
    ready = 1;
    pthread_cond_signal(&cond);
    pthread_mutex_unlock(&lock);
    void *r;
    CHECK(pthread_join(w, &r) == 0 && r == (void *)7, "condition waiter did not finish properly");
    errno = 0;
    return t_pass();
}
