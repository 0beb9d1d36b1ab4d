/* Shared by the ABI tests: each program checks one area and prints exactly one result line,
 * `PASS <name>` or `FAIL <name>: <why>`, then exits 0 on pass and 1 on failure. */
#ifndef L4RS_ABI_T_H
#define L4RS_ABI_T_H
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *t_name = "unnamed";

/* Fails the test with a printf-style reason (and errno's text when it is set). */
#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        if (!(cond)) {                                                       \
            int e_ = errno;                                                  \
            printf("FAIL %s: ", t_name);                                     \
            printf(__VA_ARGS__);                                             \
            if (e_) printf(" (errno %d %s)", e_, strerror(e_));              \
            printf(" [%s:%d]\n", __FILE__, __LINE__);                        \
            fflush(stdout);                                                  \
            exit(1);                                                         \
        }                                                                    \
    } while (0)

/* The result name: the program's name (its `-dyn` twin, built dynamically, reports as such). */
static inline void t_init(const char *argv0, const char *name) {
    static char buf[64];
    snprintf(buf, sizeof buf, "%s%s", name, strstr(argv0, "-dyn") ? "-dyn" : "");
    t_name = buf;
}

static inline int t_pass(void) {
    printf("PASS %s\n", t_name);
    fflush(stdout);
    return 0;
}
#endif
