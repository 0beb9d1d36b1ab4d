/* /proc/self: the exe link points at this program, status names our pid, maps shows the stack and
 * a fresh mapping, and /proc/self/fd lists an open descriptor. */
#include "t.h"
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

static char *slurp(const char *path) {
    static char buf[65536];
    int fd = open(path, O_RDONLY);
    if (fd < 0) return NULL;
    ssize_t n, t = 0;
    while ((n = read(fd, buf + t, sizeof buf - 1 - t)) > 0) t += n;
    close(fd);
    buf[t] = 0;
    return buf;
}

int main(int argc, char **argv) {
    (void)argc;
    t_init(argv[0], "procfs");
    char exe[512];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    CHECK(n > 0, "readlink /proc/self/exe");
    exe[n] = 0;
    const char *base = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
    CHECK(strstr(exe, base), "/proc/self/exe is %s, want it to name %s", exe, base);
    char *s = slurp("/proc/self/status");
    CHECK(s, "read /proc/self/status");
    char want[64];
    snprintf(want, sizeof want, "\nPid:\t%d\n", (int)getpid());
    CHECK(strstr(s, want), "status lacks '%s'", want + 1);
    void *m = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(m != MAP_FAILED, "mmap");
    s = slurp("/proc/self/maps");
    CHECK(s && strstr(s, "[stack]"), "maps lacks [stack]");
    char addr[32];
    snprintf(addr, sizeof addr, "%lx-", (unsigned long)m);
    CHECK(strstr(s, addr), "maps lacks the new mapping at %s", addr);
    int fd = open("/proc/self/status", O_RDONLY);
    char link[64], target[256];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    n = readlink(link, target, sizeof target - 1);
    CHECK(n > 0, "readlink %s", link);
    target[n] = 0;
    CHECK(strstr(target, "/status"), "%s -> %s", link, target);
    errno = 0;
    return t_pass();
}
