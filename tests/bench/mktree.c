/* Creates the tree the tar+gzip macro load archives: `mktree DIR FILES`, FILES small files of
 * varied text spread over directories of 100. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    int files = atoi(argv[2]);
    char path[4096];
    mkdir(argv[1], 0755);
    for (int i = 0; i < files; i++) {
        snprintf(path, sizeof path, "%s/d%03d", argv[1], i / 100);
        mkdir(path, 0755);
        snprintf(path, sizeof path, "%s/d%03d/f%05d.txt", argv[1], i / 100, i);
        FILE *f = fopen(path, "w");
        if (!f) return 1;
        for (int l = 0; l < 8 + i % 32; l++) fprintf(f, "file %d line %d value %d\n", i, l, (i * 7919 + l * 104729) % 100003);
        fclose(f);
    }
    return 0;
}
