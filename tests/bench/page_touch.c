/* mmap 4 MiB anonymous, write one byte per page, munmap: ns per page (fault + zeroing + unmap). */
#include "bench.h"
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long n = iters(argc, argv, 10);
    size_t len = 4 << 20, pg = (size_t)sysconf(_SC_PAGESIZE), pages = len / pg;
    double v[REPS];
    for (int r = 0; r < REPS; r++) {
        long long t = now_ns();
        for (long i = 0; i < n; i++) {
            volatile char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (m == MAP_FAILED) return 1;
            for (size_t o = 0; o < len; o += pg) m[o] = 1;
            munmap((void *)m, len);
        }
        v[r] = (double)(now_ns() - t) / (n * (double)pages);
    }
    report("page_touch", v, REPS);
    return 0;
}
