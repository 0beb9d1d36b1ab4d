/* L4Linux's fault-around for anonymous memory (linux-patches/0002): a write fault in private
 * anonymous memory right after a present page also faults in the pages after it (up to 15, within
 * the mapping, stopping at a present page), while more than an eighth of RAM is free; nothing
 * else is faulted in ahead. Residency is read with mincore(), which reports the pages present in
 * the process's page table. */
#include "../linux-abi/t.h"
#include <sys/mman.h>
#include <unistd.h>

static long pg;

/* A /proc/meminfo value in KiB. */
static long meminfo(const char *key) {
    FILE *f = fopen("/proc/meminfo", "r");
    CHECK(f, "open /proc/meminfo");
    char line[128];
    long v = -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, strlen(key))) v = atol(line + strlen(key));
    fclose(f);
    CHECK(v >= 0, "no %s in /proc/meminfo", key);
    return v;
}

/* Whether page i of m is resident. */
static int resident(char *m, long i) {
    unsigned char v = 0;
    CHECK(mincore(m + i * pg, pg, &v) == 0, "mincore page %ld", i);
    return v & 1;
}

/* A mapping of `pages` pages that starts a page table (2 MiB), so that fault-around is not cut
 * short by the table's end. */
static char *map(long pages, int flags) {
    const size_t table = 2 << 20;
    char *m = mmap(NULL, pages * pg + table, PROT_READ | PROT_WRITE, flags | MAP_ANONYMOUS, -1, 0);
    CHECK(m != MAP_FAILED, "mmap %ld pages", pages);
    char *start = (char *)(((unsigned long)m + table - 1) & ~(table - 1));
    CHECK(start == m || munmap(m, start - m) == 0, "munmap head");
    CHECK(munmap(start + pages * pg, m + table - start) == 0, "munmap tail");
    return start;
}

int main(void) {
    t_name = "fault_around";
    pg = sysconf(_SC_PAGESIZE);

    /* In order: the second write brings in the next 15 pages, zeroed and writable. */
    char *m = map(64, MAP_PRIVATE);
    m[0] = 1;
    CHECK(!resident(m, 1), "a first write faulted in the page after it");
    m[pg] = 2;
    for (long i = 2; i <= 16; i++) {
        CHECK(resident(m, i), "page %ld not faulted in after writes to pages 0 and 1", i);
        for (long o = 0; o < pg; o += 512) CHECK(m[i * pg + o] == 0, "page %ld not zero at %ld", i, o);
        m[i * pg] = (char)i;
    }
    CHECK(!resident(m, 17), "page 17 faulted in: more than 15 ahead");
    for (long i = 2; i <= 16; i++) CHECK(m[i * pg] == (char)i, "write to page %ld lost", i);

    /* Out of order: no page ahead. */
    m[40 * pg] = 1;
    CHECK(!resident(m, 41), "a write after an absent page faulted in the next one");

    /* It stops at the first page already there. */
    m[33 * pg] = 1;
    m[31 * pg] = 1;
    m[32 * pg] = 1;
    CHECK(!resident(m, 34), "fault-around went past a present page");

    /* It stops at the end of the mapping. */
    char *small = map(4, MAP_PRIVATE);
    small[0] = 1;
    small[pg] = 1;
    CHECK(resident(small, 2) && resident(small, 3), "pages 2 and 3 of 4 not faulted in");
    CHECK(munmap(small, 4 * pg) == 0, "munmap small");

    /* Shared anonymous memory (shmem) is left alone. */
    char *sh = map(8, MAP_SHARED);
    sh[0] = 1;
    sh[pg] = 1;
    CHECK(!resident(sh, 2), "fault-around in shared memory");

    /* Read faults are left alone. */
    volatile char *r = map(8, MAP_PRIVATE);
    CHECK(r[0] == 0 && r[pg] == 0, "fresh memory not zero");
    CHECK(!resident((char *)r, 2), "fault-around after read faults");

    CHECK(munmap(m, 64 * pg) == 0 && munmap(sh, 8 * pg) == 0 && munmap((char *)r, 8 * pg) == 0, "munmap");

    /* Under memory pressure (less than an eighth of RAM free) nothing is faulted in ahead.
     * MAP_POPULATE fills the hog inside Linux, not through the fault path. */
    long total = meminfo("MemTotal:"), free_kb = meminfo("MemFree:");
    char *hog[8];
    long hog_kb[8], hogs = 0;
    /* Freed page cache refills MemFree as the hogs grow: a few rounds. */
    while (free_kb >= total / 8 && hogs < 8) {
        hog_kb[hogs] = free_kb - total / 8 + 8192;
        hog[hogs] = mmap(NULL, hog_kb[hogs] * 1024, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
        CHECK(hog[hogs] != MAP_FAILED, "mmap %ld KiB", hog_kb[hogs]);
        hogs++;
        free_kb = meminfo("MemFree:");
    }
    CHECK(free_kb < total / 8, "still %ld of %ld KiB free", free_kb, total);
    char *p = map(8, MAP_PRIVATE);
    p[0] = 1;
    p[pg] = 1;
    CHECK(!resident(p, 2), "fault-around with %ld of %ld KiB free", free_kb, total);
    CHECK(munmap(p, 8 * pg) == 0, "munmap");
    while (hogs > 0) {
        hogs--;
        CHECK(munmap(hog[hogs], hog_kb[hogs] * 1024) == 0, "munmap hog");
    }

    /* And once memory is back, it works again. */
    p = map(8, MAP_PRIVATE);
    p[0] = 1;
    p[pg] = 1;
    CHECK(resident(p, 2), "no fault-around after the memory came back");
    errno = 0;
    return t_pass();
}
