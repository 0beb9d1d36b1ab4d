/* poll and epoll on pipes: nothing ready times out, a write makes the read end ready, epoll reports
 * the registered data, and a hang-up is reported after the writer closes. */
#include "t.h"
#include <poll.h>
#include <sys/epoll.h>
#include <unistd.h>

int main(void) {
    t_name = "poll_epoll";
    int fd[2];
    CHECK(pipe(fd) == 0, "pipe");
    struct pollfd pfd = {.fd = fd[0], .events = POLLIN};
    CHECK(poll(&pfd, 1, 10) == 0, "poll on an empty pipe should time out");
    CHECK(write(fd[1], "x", 1) == 1, "write");
    CHECK(poll(&pfd, 1, 1000) == 1 && (pfd.revents & POLLIN), "poll: pipe with data not readable (revents %#x)", pfd.revents);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    CHECK(ep >= 0, "epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0xfeedULL};
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, fd[0], &ev) == 0, "epoll_ctl");
    struct epoll_event out[4];
    int n = epoll_wait(ep, out, 4, 1000);
    CHECK(n == 1 && out[0].data.u64 == 0xfeedULL && (out[0].events & EPOLLIN), "epoll_wait gave %d events", n);
    char c;
    CHECK(read(fd[0], &c, 1) == 1 && c == 'x', "read");
    CHECK(epoll_wait(ep, out, 4, 10) == 0, "epoll_wait on drained pipe should time out");
    close(fd[1]);
    n = epoll_wait(ep, out, 4, 1000);
    CHECK(n == 1 && (out[0].events & EPOLLHUP), "no EPOLLHUP after writer closed (n %d)", n);
    errno = 0;
    return t_pass();
}
