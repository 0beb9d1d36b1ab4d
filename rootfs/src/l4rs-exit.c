/* Ends the QEMU run with a status: `l4rs-exit [STATUS]` writes STATUS to the isa-debug-exit port
 * (0xf4), which makes QEMU exit with (STATUS << 1) | 1. The console is drained first so the
 * guest's last output line is not lost in the UART queue.
 * Under User-Mode Linux (nested in the reference guest) there is no port: STATUS goes to UML's
 * /proc/exitcode and UML powers off, so the `linux` program exits with STATUS. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/io.h>
#include <sys/reboot.h>
#include <termios.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int status = argc > 1 ? atoi(argv[1]) : 0;
    fflush(stdout);
    tcdrain(1);
    tcdrain(2);
    FILE *uml = fopen("/proc/exitcode", "w");
    if (uml) {
        fprintf(uml, "%d\n", status);
        if (fclose(uml) != 0) {
            perror("l4rs-exit: /proc/exitcode");
            return 1;
        }
        sync();
        reboot(RB_POWER_OFF);
        perror("l4rs-exit: reboot(RB_POWER_OFF)");
        return 1;
    }
    if (ioperm(0xf4, 4, 1) != 0) {
        perror("l4rs-exit: ioperm (needs root and CONFIG_X86_IOPL_IOPERM)");
        return 1;
    }
    outl((unsigned)status, 0xf4);
    /* Only reached without the isa-debug-exit device. */
    fprintf(stderr, "l4rs-exit: no isa-debug-exit device at 0xf4\n");
    return 1;
}
