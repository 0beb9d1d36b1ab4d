/* Path names copied from user memory at awkward places: starting at a page start, crossing
 * into the next page, ending (NUL included) exactly at a page end, running into an unmapped
 * page (EFAULT), longer than PATH_MAX (ENAMETOOLONG); each file made through the awkward copy
 * is then found through an ordinary one. */
#include "t.h"
#include <fcntl.h>
#include <limits.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *dir = "/tmp/abi-paths";

/* Creates `name` (a path under `dir`) from the copy at `at`, then stats it from a stack copy. */
static void make_at(char *at, const char *name) {
    strcpy(at, name);
    int fd = open(at, O_CREAT | O_WRONLY | O_TRUNC, 0644);
    CHECK(fd >= 0, "open %s from %p", name, (void *)at);
    close(fd);
    char copy[PATH_MAX];
    strcpy(copy, name);
    struct stat st;
    CHECK(stat(copy, &st) == 0 && S_ISREG(st.st_mode), "%s not found after creating it", name);
    CHECK(mkdir(at, 0755) < 0 && errno == EEXIST, "mkdir over %s", name);
    errno = 0;
}

int main(void) {
    t_name = "paths";
    long page = sysconf(_SC_PAGESIZE);
    mkdir(dir, 0755);
    /* Two pages, then an unmapped one. */
    char *m = mmap(NULL, 3 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(m != MAP_FAILED, "mmap");
    CHECK(munmap(m + 2 * page, page) == 0, "munmap the guard page");
    memset(m, 'x', 2 * page);
    char name[64];
    snprintf(name, sizeof name, "%s/at-page-start", dir);
    make_at(m, name);
    snprintf(name, sizeof name, "%s/across-pages", dir);
    make_at(m + page - 7, name);
    /* The NUL the last byte of the first page; then the first byte of the second. */
    snprintf(name, sizeof name, "%s/nul-last-byte", dir);
    make_at(m + page - (long)strlen(name) - 1, name);
    snprintf(name, sizeof name, "%s/nul-next-page", dir);
    make_at(m + page - (long)strlen(name), name);
    /* No NUL before the unmapped page. */
    memset(m, 'y', 2 * page);
    memcpy(m + 2 * page - 20, "/tmp/abi-paths/zzzzz", 20);
    errno = 0;
    CHECK(open(m + 2 * page - 20, O_RDONLY) < 0 && errno == EFAULT, "a path into unmapped memory: not EFAULT");
    /* Longer than PATH_MAX, NUL-terminated. */
    char *longp = malloc(PATH_MAX + 16);
    CHECK(longp, "malloc");
    memset(longp, 'a', PATH_MAX + 15);
    longp[0] = '/';
    longp[PATH_MAX + 15] = 0;
    errno = 0;
    CHECK(open(longp, O_RDONLY) < 0 && errno == ENAMETOOLONG, "a path longer than PATH_MAX: not ENAMETOOLONG");
    errno = 0;
    CHECK(access(longp, F_OK) < 0 && errno == ENAMETOOLONG, "access: not ENAMETOOLONG");
    errno = 0;
    /* The names created above, listed. */
    const char *made[] = {"at-page-start", "across-pages", "nul-last-byte", "nul-next-page"};
    for (unsigned i = 0; i < sizeof made / sizeof *made; i++) {
        snprintf(name, sizeof name, "%s/%s", dir, made[i]);
        CHECK(unlink(name) == 0, "unlink %s", name);
    }
    CHECK(rmdir(dir) == 0, "rmdir");
    return t_pass();
}
