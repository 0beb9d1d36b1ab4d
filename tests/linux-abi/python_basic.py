# CPython on the guest: os, subprocess (fork/exec and pipes), threading, signal and socket work.
# Prints `PASS python_basic` or `FAIL python_basic: why` like the C tests.
import os
import signal
import socket
import subprocess
import sys
import threading


def check(cond, why):
    if not cond:
        print("FAIL python_basic: " + why)
        sys.exit(1)


out = subprocess.run(["/bin/echo", "hello"], capture_output=True, text=True)
check(out.returncode == 0 and out.stdout == "hello\n", "subprocess echo gave %r" % (out,))
check(subprocess.call(["/bin/sh", "-c", "exit 3"]) == 3, "subprocess exit status")
results = []
threads = [threading.Thread(target=lambda i=i: results.append(i * i)) for i in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
check(sorted(results) == [0, 1, 4, 9], "threads gave %r" % results)
got = []
signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))
os.kill(os.getpid(), signal.SIGUSR1)
check(got == [signal.SIGUSR1], "signal handler saw %r" % got)
a, b = socket.socketpair()
a.sendall(b"ping")
check(b.recv(4) == b"ping", "unix socketpair")
check(os.getpid() > 1 and os.path.isdir("/proc/self"), "os basics")
print("PASS python_basic")
