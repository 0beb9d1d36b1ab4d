/* File I/O on tmpfs: write/read back, lseek with a hole, ftruncate, rename, directory listing,
 * O_EXCL, unlink, and fstat sizes. */
#include "t.h"
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

int main(void) {
    t_name = "tmpfs_io";
    const char *dir = "/tmp/abi-tmpfs";
    mkdir(dir, 0755);
    CHECK(chdir(dir) == 0, "chdir %s", dir);
    int fd = open("a", O_RDWR | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0, "open");
    char buf[8192];
    for (int i = 0; i < (int)sizeof buf; i++) buf[i] = (char)(i * 7);
    CHECK(write(fd, buf, sizeof buf) == (ssize_t)sizeof buf, "write");
    CHECK(lseek(fd, 1 << 20, SEEK_SET) == 1 << 20 && write(fd, "z", 1) == 1, "write after hole");
    struct stat st;
    CHECK(fstat(fd, &st) == 0 && st.st_size == (1 << 20) + 1, "size %lld", (long long)st.st_size);
    char back[8192];
    CHECK(pread(fd, back, sizeof back, 0) == (ssize_t)sizeof back && memcmp(buf, back, sizeof buf) == 0, "read back differs");
    CHECK(pread(fd, back, 16, 100000) == 16, "read in hole");
    for (int i = 0; i < 16; i++) CHECK(back[i] == 0, "hole not zero");
    CHECK(ftruncate(fd, 100) == 0 && fstat(fd, &st) == 0 && st.st_size == 100, "ftruncate");
    close(fd);
    CHECK(rename("a", "b") == 0, "rename");
    errno = 0;
    CHECK(open("a", O_RDONLY) < 0 && errno == ENOENT, "old name still exists");
    errno = 0;
    CHECK(open("b", O_RDWR | O_CREAT | O_EXCL, 0644) < 0 && errno == EEXIST, "O_EXCL on existing file");
    errno = 0;
    DIR *d = opendir(".");
    CHECK(d, "opendir");
    int found = 0;
    struct dirent *e;
    while ((e = readdir(d))) found += strcmp(e->d_name, "b") == 0;
    closedir(d);
    CHECK(found == 1, "directory listing shows b %d times", found);
    CHECK(unlink("b") == 0 && chdir("/") == 0 && rmdir(dir) == 0, "cleanup");
    errno = 0;
    return t_pass();
}
