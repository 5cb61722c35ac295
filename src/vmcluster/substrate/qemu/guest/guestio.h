/* Console and clock helpers shared by the guest programs (workload.c, diskwriter.c).
 * Header-only: each program is one static binary built from one .c file. */
#ifndef VMC_GUESTIO_H
#define VMC_GUESTIO_H

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Format one line (newline added, truncated to fit); returns its length or -1. */
static int format_line(char *buf, size_t size, const char *fmt, va_list ap)
{
    int n = vsnprintf(buf, size - 1, fmt, ap);
    if (n < 0)
        return -1;
    if (n > (int)size - 2)
        n = (int)size - 2;
    buf[n++] = '\n';
    return n;
}

/* Write all of buf to fd, retrying short writes and EINTR. */
static void write_all(int fd, const char *buf, int n)
{
    for (int off = 0; off < n;) {
        ssize_t w = write(fd, buf + off, (size_t)(n - off));
        if (w <= 0 && errno != EINTR)
            break;
        if (w > 0)
            off += (int)w;
    }
}

#endif
