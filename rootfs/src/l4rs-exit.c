/* Ends the QEMU run with a status: `l4rs-exit [STATUS]` writes STATUS to the isa-debug-exit port
 * (0xf4), which makes QEMU exit with (STATUS << 1) | 1. The console is drained first so the
 * guest's last output line is not lost in the UART queue. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/io.h>
#include <termios.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int status = argc > 1 ? atoi(argv[1]) : 0;
    fflush(stdout);
    tcdrain(1);
    tcdrain(2);
    if (ioperm(0xf4, 4, 1) != 0) {
        perror("l4rs-exit: ioperm (needs root and CONFIG_X86_IOPL_IOPERM)");
        return 1;
    }
    outl((unsigned)status, 0xf4);
    /* Only reached without the isa-debug-exit device. */
    fprintf(stderr, "l4rs-exit: no isa-debug-exit device at 0xf4\n");
    return 1;
}
