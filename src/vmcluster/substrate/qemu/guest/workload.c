/*
 * vmcluster guest workload: dirties memory at a set rate and checks it, and
 * answers a small line protocol on TCP.  Built with `gcc -static -O2 -pthread`
 * and run by the guest's /init; also runs unchanged on a Linux host.
 *
 * Memory invariant (after QEMU's migration test, where a guest increments one
 * byte per page in page order and the host later checks that the bytes only
 * ever step down by one, and only at one place: the sweep's position).  Here
 * the writer knows exactly where its sweep is, so the check is exact:
 *
 *   every 4 KiB page of the region starts with { counter, index, tag } where
 *   index is the page number and tag = TAG ^ index (never rewritten);
 *   pages [0, pos)     have counter == sweeps + 1   (already swept this round)
 *   pages [pos, wws)   have counter == sweeps       (not yet swept)
 *   pages [wws, npages) have counter == base        (cold: allocated, not dirtied)
 *
 * A sweep increments the counters of [0, wws) in page order, paced to the
 * requested MiB/s, and checks each counter just before incrementing it.  Every
 * report period the whole region is checked against the invariant.  A page
 * that migration failed to carry (a stale copy of a dirtied page) shows up as
 * a counter one behind; a page from elsewhere as a wrong index/tag.  Any
 * mismatch prints a line with CORRUPT on stdout (the serial console); a clean
 * check prints "MEMOK <sweeps> ... cpu_pct=<p>", p the guest's own CPU use since the
 * last report (busy share of all its CPUs, from /proc/stat: what the host's lab reads as
 * the VM's load, where the host's TCG threads would measure emulation).  After a
 * corruption, reports say CORRUPT
 * forever (the condition is sticky) so it can never be missed.
 *
 * Parameters: kernel command line (vmc.mem_mib= vmc.wws_mib= vmc.dirty_mibps=
 * vmc.port= vmc.report_s= vmc.selftest=corrupt), then argv (--mem-mib N
 * --wws-mib N --dirty-mibps X --port N --report-s X --selftest-corrupt).
 * Port 0 picks a free port; the port is printed on the WORKLOAD-READY line.
 *
 * TCP protocol, one line per request, one line per reply:
 *   <seq>            -> <seq>             (echo, for measuring gaps)
 *   RATE <mibps>     -> OK RATE <mibps>
 *   WWS <mib>        -> OK WWS <mib>      (clamped to the region)
 *   CPU <pct>        -> OK CPU <pct>      (threads keep every vCPU busy pct % of the time)
 *   STATS            -> STATS sweeps=.. dirtied_bytes=.. corrupt=.. checks=.. ...
 *   SELFTEST CORRUPT -> OK SELFTEST       (damages one page; the next check reports it)
 *   QUIT             -> connection closed
 * UDP on the same port: every datagram is echoed back unchanged (blackout probes).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "guestio.h"

#define PAGE_SIZE 4096UL
#define PAGES_PER_MIB 256L
#define TAG 0x564d432d50414745ULL /* "VMC-PAGE" */
#define MAX_CLIENTS 64
#define LINE_MAX_LEN 256
#define MAX_REPORTED 8

struct page_head {
    volatile uint64_t counter;
    uint64_t index;
    uint64_t tag;
};

static long g_mem_mib = 64;
static long g_port = 7777;
static double g_report_s = 2.0;
static int g_selftest_at_start;

static unsigned char *g_region;
static long g_npages;

/* Requests from the server thread to the sweeper. */
static _Atomic double g_rate_mibps = 8.0;
static _Atomic int g_cpu_pct; /* the burner's share of one vCPU, 0..100 */
static atomic_long g_wws_req_pages;
static atomic_int g_corrupt_req;

/* Published by the sweeper, read by STATS. */
static atomic_ullong g_sweeps, g_dirtied_pages, g_corrupt, g_checks;
static atomic_long g_wws_pages;

static pthread_mutex_t g_out_lock = PTHREAD_MUTEX_INITIALIZER;

static void say(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = format_line(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n <= 0)
        return;
    pthread_mutex_lock(&g_out_lock);
    write_all(1, buf, n);
    pthread_mutex_unlock(&g_out_lock);
}

static struct page_head *page(long i)
{
    return (struct page_head *)(g_region + (unsigned long)i * PAGE_SIZE);
}

/* ---------------------------------------------------------------- sweeper */

/* Sweeper-private state; see the invariant at the top of the file. */
static long s_pos, s_wws;
static uint64_t s_sweeps, s_base;
static int s_reported; /* CORRUPT lines printed in the current check */

static uint64_t expected(long i)
{
    if (i >= s_wws)
        return s_base;
    return i < s_pos ? s_sweeps + 1 : s_sweeps;
}

static void corrupt_at(long i, const char *where, uint64_t want, uint64_t got)
{
    atomic_fetch_add(&g_corrupt, 1);
    if (s_reported++ < MAX_REPORTED)
        say("CORRUPT %s page=%ld expected=%llu found=%llu sweeps=%llu pos=%ld wws_pages=%ld",
            where, i, (unsigned long long)want, (unsigned long long)got,
            (unsigned long long)s_sweeps, s_pos, s_wws);
    page(i)->counter = want; /* repair, so one fault is counted once */
}

static int check_page(long i, const char *where)
{
    struct page_head *p = page(i);
    uint64_t want = expected(i);
    if (p->index != (uint64_t)i || p->tag != (TAG ^ (uint64_t)i)) {
        atomic_fetch_add(&g_corrupt, 1);
        if (s_reported++ < MAX_REPORTED)
            say("CORRUPT %s page=%ld bad-header index=%llu tag=%llx", where, i,
                (unsigned long long)p->index, (unsigned long long)p->tag);
        p->index = (uint64_t)i;
        p->tag = TAG ^ (uint64_t)i;
        return 1;
    }
    if (p->counter != want) {
        corrupt_at(i, where, want, p->counter);
        return 1;
    }
    return 0;
}

/* Hot pages: written on every loop pass (a few hundred times a second), so they
 * stay in the vCPU's TLB and are re-dirtied right after every bitmap sync of a
 * migration -- the pattern a kernel stack or a timer base has.  The counter they
 * must hold is kept by the sweeper; a lost write shows up as a mismatch. */
#define HOT_PAGES 4
static struct page_head *s_hot;
static uint64_t s_hot_seq;

static void touch_hot(void)
{
    for (long k = 0; k < HOT_PAGES; k++) {
        struct page_head *p = (struct page_head *)((unsigned char *)s_hot + k * PAGE_SIZE);
        if (p->counter != s_hot_seq) {
            atomic_fetch_add(&g_corrupt, 1);
            if (s_reported++ < MAX_REPORTED)
                say("CORRUPT hot page=%ld expected=%llu found=%llu", k,
                    (unsigned long long)s_hot_seq, (unsigned long long)p->counter);
        }
        p->counter = s_hot_seq + 1;
    }
    s_hot_seq++;
}

static long full_check(void)
{
    long bad = 0;
    s_reported = 0;
    for (long i = 0; i < g_npages; i++)
        bad += check_page(i, "check");
    atomic_fetch_add(&g_checks, 1);
    return bad;
}

static void dirty_one(void)
{
    struct page_head *p = page(s_pos);
    if (p->counter != s_sweeps) {
        corrupt_at(s_pos, "sweep", s_sweeps, p->counter);
    }
    p->counter = s_sweeps + 1;
    atomic_fetch_add(&g_dirtied_pages, 1);
    if (++s_pos == s_wws) {
        s_pos = 0;
        s_sweeps++;
        atomic_store(&g_sweeps, s_sweeps);
    }
}

/* Change the working set: finish the current sweep at full speed, then bring
 * every page from the smaller of the old and new sizes up to the current sweep
 * count so the invariant holds for the new size. */
static void resize(long new_wws)
{
    if (s_wws > 0)
        while (s_pos != 0)
            dirty_one();
    long from = new_wws < s_wws ? new_wws : s_wws;
    for (long i = from; i < g_npages; i++) {
        check_page(i, "resize");
        page(i)->counter = s_sweeps;
    }
    s_base = s_sweeps;
    s_wws = new_wws;
    s_pos = 0;
    atomic_store(&g_wws_pages, s_wws);
}

/* Simulate what a lost dirty page looks like after a broken migration: one
 * page holds the value it had one sweep (or one write) earlier. */
static void damage_one_page(void)
{
    long i = s_wws > 0 ? s_wws / 2 : g_npages / 2;
    say("SELFTEST damaging page=%ld", i);
    page(i)->counter -= 1;
}

/* Keeps a CPU busy g_cpu_pct % of each 100 ms, asleep the rest (one per vCPU). */
static void *burner(void *arg)
{
    (void)arg;
    for (;;) {
        int pct = atomic_load(&g_cpu_pct);
        double start = now_s(), busy = pct / 1000.0;
        while (now_s() - start < busy)
            ;
        double rest = 0.1 - (now_s() - start);
        if (rest > 0) {
            struct timespec ts = {0, (long)(rest * 1e9)};
            nanosleep(&ts, NULL);
        }
    }
    return NULL;
}

/* The guest's CPU use since the last call (busy share of all CPUs, %), or -1. */
static double cpu_pct_since_last(void)
{
    static unsigned long long last_busy, last_total;
    unsigned long long v[8] = {0};
    FILE *f = fopen("/proc/stat", "r");
    if (f == NULL)
        return -1;
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
                   &v[3], &v[4], &v[5], &v[6], &v[7]);
    fclose(f);
    if (n < 4)
        return -1;
    unsigned long long total = 0;
    for (int i = 0; i < 8; i++)
        total += v[i];
    unsigned long long busy = total - v[3] - v[4]; /* all but idle and iowait */
    double pct = total > last_total ? 100.0 * (double)(busy - last_busy) /
                                          (double)(total - last_total) : -1;
    last_busy = busy;
    last_total = total;
    return pct;
}

static void *sweeper(void *arg)
{
    (void)arg;
    double last = now_s(), next_report = last + g_report_s, budget = 0;
    long last_wws_req = atomic_load(&g_wws_req_pages);
    s_hot = mmap(NULL, HOT_PAGES * PAGE_SIZE, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (s_hot == MAP_FAILED) {
        say("WORKLOAD-FAILED cannot allocate hot pages: %s", strerror(errno));
        exit(1);
    }
    for (;;) {
        touch_hot();
        long req = atomic_load(&g_wws_req_pages);
        if (req != last_wws_req) {
            resize(req);
            last_wws_req = req;
        }
        if (atomic_exchange(&g_corrupt_req, 0))
            damage_one_page();

        double t = now_s(), rate = atomic_load(&g_rate_mibps);
        double pages_per_s = rate * PAGES_PER_MIB;
        budget += (t - last) * pages_per_s;
        last = t;
        /* A stalled guest (paused VM, clock jump) must not dirty in a huge burst. */
        double cap = pages_per_s * 0.25 + 1;
        if (budget > cap)
            budget = cap;
        long n = s_wws > 0 ? (long)budget : 0;
        if (n > 4096)
            n = 4096; /* stay responsive to requests and reports */
        for (long k = 0; k < n; k++)
            dirty_one();
        budget -= (double)n;
        if (s_wws == 0)
            budget = 0;

        if (t >= next_report) {
            double cpu = cpu_pct_since_last(); /* before the check, which is work too */
            long bad = full_check();
            unsigned long long total = atomic_load(&g_corrupt);
            double mib = (double)atomic_load(&g_dirtied_pages) / PAGES_PER_MIB;
            if (bad == 0 && total == 0)
                say("MEMOK %llu checks=%llu dirtied_mib=%.1f rate_mibps=%.3g wws_mib=%.2f "
                    "cpu_pct=%.1f",
                    (unsigned long long)s_sweeps, (unsigned long long)atomic_load(&g_checks),
                    mib, rate, (double)s_wws / PAGES_PER_MIB, cpu);
            else
                say("CORRUPT summary bad_pages_now=%ld corrupt_total=%llu sweeps=%llu",
                    bad, total, (unsigned long long)s_sweeps);
            next_report = t + g_report_s;
        }
        if (n == 0 || budget < 1) {
            struct timespec ts = {0, 5 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    return NULL;
}

/* ----------------------------------------------------------------- server */

struct client {
    int fd;
    size_t len;
    char buf[LINE_MAX_LEN];
};

static void send_line(int fd, const char *fmt, ...)
{
    char buf[LINE_MAX_LEN + 64];
    va_list ap;
    va_start(ap, fmt);
    int n = format_line(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n > 0)
        (void)send(fd, buf, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
}

/* Returns 0 to keep the connection, -1 to close it. */
static int handle_line(int fd, char *line)
{
    size_t len = strlen(line);
    while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == ' '))
        line[--len] = '\0';
    if (len == 0)
        return 0;
    if (strspn(line, "0123456789") == len) {
        send_line(fd, "%s", line);
        return 0;
    }
    char *end;
    if (strncmp(line, "CPU ", 4) == 0) {
        long pct = strtol(line + 4, &end, 10);
        if (end == line + 4 || *end != '\0' || pct < 0 || pct > 100) {
            send_line(fd, "ERR CPU wants a whole percentage 0..100");
            return 0;
        }
        atomic_store(&g_cpu_pct, (int)pct);
        send_line(fd, "OK CPU %ld", pct);
        return 0;
    }
    if (strncmp(line, "RATE ", 5) == 0) {
        double r = strtod(line + 5, &end);
        if (end == line + 5 || *end != '\0' || r < 0 || r > 1e6) {
            send_line(fd, "ERR RATE wants a number of MiB/s >= 0");
            return 0;
        }
        atomic_store(&g_rate_mibps, r);
        send_line(fd, "OK RATE %g", r);
        return 0;
    }
    if (strncmp(line, "WWS ", 4) == 0) {
        double w = strtod(line + 4, &end);
        if (end == line + 4 || *end != '\0' || w < 0) {
            send_line(fd, "ERR WWS wants a number of MiB >= 0");
            return 0;
        }
        long pages = (long)(w * PAGES_PER_MIB);
        if (pages > g_npages)
            pages = g_npages;
        atomic_store(&g_wws_req_pages, pages);
        send_line(fd, "OK WWS %g", (double)pages / PAGES_PER_MIB);
        return 0;
    }
    if (strcmp(line, "STATS") == 0) {
        send_line(fd,
                  "STATS sweeps=%llu dirtied_bytes=%llu corrupt=%llu checks=%llu "
                  "rate_mibps=%g wws_mib=%g mem_mib=%ld",
                  (unsigned long long)atomic_load(&g_sweeps),
                  (unsigned long long)atomic_load(&g_dirtied_pages) * PAGE_SIZE,
                  (unsigned long long)atomic_load(&g_corrupt),
                  (unsigned long long)atomic_load(&g_checks), atomic_load(&g_rate_mibps),
                  (double)atomic_load(&g_wws_pages) / PAGES_PER_MIB, g_mem_mib);
        return 0;
    }
    if (strcmp(line, "SELFTEST CORRUPT") == 0) {
        atomic_store(&g_corrupt_req, 1);
        send_line(fd, "OK SELFTEST");
        return 0;
    }
    if (strcmp(line, "QUIT") == 0)
        return -1;
    send_line(fd, "ERR unknown request (want <seq>, RATE, WWS, CPU, STATS, SELFTEST CORRUPT, "
                  "QUIT)");
    return 0;
}

static int listen_on(long port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 16) < 0) {
        close(fd);
        return -1;
    }
    socklen_t alen = sizeof a;
    if (getsockname(fd, (struct sockaddr *)&a, &alen) == 0)
        g_port = ntohs(a.sin_port);
    return fd;
}

/* UDP echo on the same port: every datagram goes straight back to its sender, so a client
 * probing every few ms sees exactly when the VM stops and starts answering (no TCP
 * retransmission timer in the way). */
static int udp_on(long port)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void udp_echo(int ufd)
{
    char buf[512];
    struct sockaddr_in from;
    for (int n = 0; n < 64; n++) {
        socklen_t flen = sizeof from;
        ssize_t r = recvfrom(ufd, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &flen);
        if (r < 0)
            return;
        sendto(ufd, buf, (size_t)r, MSG_DONTWAIT, (struct sockaddr *)&from, flen);
    }
}

static void serve(int lfd, int ufd)
{
    static struct client cl[MAX_CLIENTS];
    struct pollfd pfd[MAX_CLIENTS + 2];
    for (int i = 0; i < MAX_CLIENTS; i++)
        cl[i].fd = -1;
    for (;;) {
        pfd[0].fd = lfd;
        pfd[0].events = POLLIN;
        for (int i = 0; i < MAX_CLIENTS; i++) {
            pfd[i + 1].fd = cl[i].fd;
            pfd[i + 1].events = POLLIN;
        }
        pfd[MAX_CLIENTS + 1].fd = ufd;
        pfd[MAX_CLIENTS + 1].events = POLLIN;
        if (poll(pfd, MAX_CLIENTS + 2, 1000) < 0) {
            if (errno == EINTR)
                continue;
            say("WORKLOAD poll failed: %s", strerror(errno));
            return;
        }
        if (pfd[MAX_CLIENTS + 1].revents & POLLIN)
            udp_echo(ufd);
        if (pfd[0].revents & POLLIN) {
            int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
            if (fd >= 0) {
                int slot = -1;
                for (int i = 0; i < MAX_CLIENTS && slot < 0; i++)
                    if (cl[i].fd < 0)
                        slot = i;
                if (slot < 0) {
                    send_line(fd, "ERR too many clients");
                    close(fd);
                } else {
                    int one = 1;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    cl[slot].fd = fd;
                    cl[slot].len = 0;
                }
            }
        }
        for (int i = 0; i < MAX_CLIENTS; i++) {
            struct client *c = &cl[i];
            if (c->fd < 0 || !(pfd[i + 1].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            ssize_t r = recv(c->fd, c->buf + c->len, sizeof c->buf - 1 - c->len, 0);
            int drop = r <= 0;
            if (!drop) {
                c->len += (size_t)r;
                char *start = c->buf, *nl;
                while (!drop && (nl = memchr(start, '\n', c->len - (size_t)(start - c->buf)))) {
                    *nl = '\0';
                    drop = handle_line(c->fd, start) < 0;
                    start = nl + 1;
                }
                c->len -= (size_t)(start - c->buf);
                memmove(c->buf, start, c->len);
                if (c->len == sizeof c->buf - 1) {
                    send_line(c->fd, "ERR line too long");
                    drop = 1;
                }
            }
            if (drop) {
                close(c->fd);
                c->fd = -1;
            }
        }
    }
}

/* ------------------------------------------------------------- parameters */

static int set_param(const char *key, const char *val)
{
    char *end;
    double d = strtod(val, &end);
    int numeric = end != val && *end == '\0';
    if (strcmp(key, "mem_mib") == 0 && numeric && d >= 1)
        g_mem_mib = (long)d;
    else if (strcmp(key, "wws_mib") == 0 && numeric && d >= 0)
        atomic_store(&g_wws_req_pages, (long)(d * PAGES_PER_MIB));
    else if (strcmp(key, "dirty_mibps") == 0 && numeric && d >= 0)
        atomic_store(&g_rate_mibps, d);
    else if (strcmp(key, "port") == 0 && numeric && d >= 0 && d < 65536)
        g_port = (long)d;
    else if (strcmp(key, "report_s") == 0 && numeric && d >= 0.1)
        g_report_s = d;
    else if (strcmp(key, "selftest") == 0 && strcmp(val, "corrupt") == 0)
        g_selftest_at_start = 1;
    else
        return -1;
    return 0;
}

static void read_cmdline(void)
{
    char buf[4096];
    FILE *f = fopen("/proc/cmdline", "r");
    if (!f)
        return;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *save = NULL;
    for (char *tok = strtok_r(buf, " \t\n", &save); tok; tok = strtok_r(NULL, " \t\n", &save)) {
        if (strncmp(tok, "vmc.", 4) != 0)
            continue;
        char *eq = strchr(tok, '=');
        if (!eq)
            continue;
        *eq = '\0';
        if (set_param(tok + 4, eq + 1) < 0 && strcmp(tok + 4, "ip") != 0 &&
            strcmp(tok + 4, "gw") != 0)
            say("WORKLOAD ignoring bad kernel parameter vmc.%s=%s", tok + 4, eq + 1);
    }
}

static int parse_argv(int argc, char **argv)
{
    static const struct { const char *flag, *key; } map[] = {
        {"--mem-mib", "mem_mib"},         {"--wws-mib", "wws_mib"}, {"--dirty-mibps", "dirty_mibps"},
        {"--port", "port"},               {"--report-s", "report_s"},
    };
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--selftest-corrupt") == 0) {
            g_selftest_at_start = 1;
            continue;
        }
        int ok = 0;
        for (size_t m = 0; m < sizeof map / sizeof map[0]; m++)
            if (strcmp(argv[i], map[m].flag) == 0 && i + 1 < argc) {
                ok = set_param(map[m].key, argv[++i]) == 0;
                break;
            }
        if (!ok) {
            fprintf(stderr,
                    "workload: bad argument %s (use --mem-mib N --wws-mib N --dirty-mibps X "
                    "--port N --report-s X --selftest-corrupt)\n",
                    argv[i]);
            return -1;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    atomic_store(&g_wws_req_pages, 16 * PAGES_PER_MIB);
    read_cmdline();
    if (parse_argv(argc, argv) < 0)
        return 2;
    g_npages = g_mem_mib * PAGES_PER_MIB;
    if (atomic_load(&g_wws_req_pages) > g_npages)
        atomic_store(&g_wws_req_pages, g_npages);

    g_region = mmap(NULL, (size_t)g_npages * PAGE_SIZE, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (g_region == MAP_FAILED) {
        say("WORKLOAD-FAILED cannot allocate %ld MiB: %s", g_mem_mib, strerror(errno));
        return 1;
    }
    for (long i = 0; i < g_npages; i++) {
        page(i)->counter = 0;
        page(i)->index = (uint64_t)i;
        page(i)->tag = TAG ^ (uint64_t)i;
    }
    s_wws = atomic_load(&g_wws_req_pages);
    atomic_store(&g_wws_pages, s_wws);

    int lfd = listen_on(g_port);
    if (lfd < 0) {
        say("WORKLOAD-FAILED cannot listen on port %ld: %s", g_port, strerror(errno));
        return 1;
    }
    int ufd = udp_on(g_port);
    if (ufd < 0) {
        say("WORKLOAD-FAILED cannot bind UDP port %ld: %s", g_port, strerror(errno));
        return 1;
    }
    if (g_selftest_at_start)
        atomic_store(&g_corrupt_req, 1);
    say("WORKLOAD-READY port=%ld mem_mib=%ld wws_mib=%.2f dirty_mibps=%g report_s=%g", g_port,
        g_mem_mib, (double)s_wws / PAGES_PER_MIB, atomic_load(&g_rate_mibps), g_report_s);

    pthread_t th, burn;
    if (pthread_create(&th, NULL, sweeper, NULL) != 0) {
        say("WORKLOAD-FAILED cannot start the sweeper thread");
        return 1;
    }
    for (long c = sysconf(_SC_NPROCESSORS_ONLN); c > 0; c--) { /* one burner per vCPU */
        if (pthread_create(&burn, NULL, burner, NULL) != 0) {
            say("WORKLOAD-FAILED cannot start a burner thread");
            return 1;
        }
    }
    serve(lfd, ufd);
    return 1;
}
