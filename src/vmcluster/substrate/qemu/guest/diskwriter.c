/*
 * vmcluster guest disk writer: sequence-numbered, checksummed 4 KiB blocks to
 * the VM's disk, each acknowledged on the serial console once it is durable.
 * Built with `gcc -static -O2 -pthread`; started in the background by /init.
 *
 * Block s (s = 1, 2, ...) goes to slot (s - 1) % nslots of the device:
 *   0    u64 magic "VMCDISK1"
 *   8    u64 seq s
 *   16   u64 slot
 *   24   u64 boot id (the writer's start time; tells runs apart)
 *   32   payload (xorshift64 from the seq)
 *   4088 u32 CRC-32 (IEEE, as zlib.crc32) of bytes [0, 4088)
 *   4092 u32 zero
 * The device is opened O_DIRECT | O_DSYNC, so pwrite() returns only once the
 * block is on stable storage (the host flushes it to the LUN).  "DISKACK <s>"
 * means every block 1..s was durably written; it is printed at most every
 * 200 ms (and always before a stats line).  On start the writer scans the disk
 * and continues after the highest valid sequence number, so a restarted VM
 * never reuses one.  A write that fails is retried (the same block) and shown
 * as DISKERR; a write that takes longer than 200 ms is shown as DISKSTALL.
 *
 * Parameters (kernel command line): vmc.disk_kibps=N (write rate, 0 = as fast
 * as the disk goes; default 256), vmc.disk_dev=/dev/vda, vmc.disk_report_s=X
 * (period of the "DISKSTATS n=.. kibps=.. acked=.." console line, default 2),
 * vmc.disk_port=N (default 7778).
 *
 * TCP, one line per request and reply:
 *   RATE <kibps> -> OK RATE <kibps>
 *   STATS        -> STATS n=.. kibps=.. p50_us=.. p99_us=.. max_us=.. acked=..
 *                   (the writes since the previous STATS; the window restarts)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "guestio.h"

#define BLK 4096
#define MAGIC 0x314b534944434d56ULL /* "VMCDISK1" little-endian */
#define WIN_MAX 200000

static const char *g_dev = "/dev/vda";
static double g_kibps = 256;
static double g_report_s = 2.0;
static int g_port = 7778;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static uint32_t *g_win; /* latencies (us) of the current window */
static long g_win_n;
static double g_win_t0;
static uint64_t g_acked;

static uint32_t crc_table[256];

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc32_ieee(const unsigned char *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    while (n--)
        c = crc_table[(c ^ *p++) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static void say(const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    int n = format_line(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n > 0)
        write_all(1, buf, n);
}

static void fill(unsigned char *b, uint64_t seq, uint64_t slot, uint64_t boot)
{
    uint64_t h[4] = {MAGIC, seq, slot, boot};
    memcpy(b, h, sizeof h);
    uint64_t x = seq * 0x9E3779B97F4A7C15ULL + 1;
    for (int off = 32; off < 4088; off += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memcpy(b + off, &x, 8);
    }
    uint32_t crc = crc32_ieee(b, 4088), zero = 0;
    memcpy(b + 4088, &crc, 4);
    memcpy(b + 4092, &zero, 4);
}

static int valid(const unsigned char *b, uint64_t *seq)
{
    uint64_t magic, crc_stored = 0;
    memcpy(&magic, b, 8);
    if (magic != MAGIC)
        return 0;
    memcpy(&crc_stored, b + 4088, 4);
    if (crc32_ieee(b, 4088) != (uint32_t)crc_stored)
        return 0;
    memcpy(seq, b + 8, 8);
    return 1;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Stats of the STATS window so far; restarts it. Caller holds g_lock. */
static void window(char *out, size_t len)
{
    double dt = now_s() - g_win_t0;
    long n = g_win_n;
    uint32_t p50 = 0, p99 = 0, mx = 0;
    if (n > 0) {
        qsort(g_win, (size_t)n, sizeof *g_win, cmp_u32);
        p50 = g_win[n / 2];
        p99 = g_win[(n * 99) / 100 < n ? (n * 99) / 100 : n - 1];
        mx = g_win[n - 1];
    }
    snprintf(out, len, "n=%ld kibps=%.1f p50_us=%u p99_us=%u max_us=%u acked=%llu", n,
             dt > 0 ? n * 4.0 / dt : 0.0, p50, p99, mx, (unsigned long long)g_acked);
    g_win_n = 0;
    g_win_t0 = now_s();
}

static void *writer(void *arg)
{
    int fd = *(int *)arg;
    unsigned long long bytes = 0;
    if (ioctl(fd, BLKGETSIZE64, &bytes) != 0 || bytes < BLK) {
        say("DISKERR cannot size %s", g_dev);
        return NULL;
    }
    uint64_t nslots = bytes / BLK, seq = 0;
    unsigned char *buf;
    if (posix_memalign((void **)&buf, BLK, 64 * BLK) != 0)
        return NULL;
    for (uint64_t s = 0; s < nslots; s += 64) { /* continue after the highest seq on disk */
        uint64_t k = nslots - s < 64 ? nslots - s : 64;
        if (pread(fd, buf, k * BLK, (off_t)(s * BLK)) != (ssize_t)(k * BLK))
            break;
        for (uint64_t i = 0; i < k; i++) {
            uint64_t q;
            if (valid(buf + i * BLK, &q) && q > seq)
                seq = q;
        }
    }
    uint64_t boot = (uint64_t)(now_s() * 1e6);
    pthread_mutex_lock(&g_lock);
    g_acked = seq;
    g_win_t0 = now_s();
    pthread_mutex_unlock(&g_lock);
    say("DISKREADY slots=%llu start=%llu", (unsigned long long)nslots,
        (unsigned long long)seq + 1);
    double next = now_s(), last_ack = 0, last_report = now_s();
    uint64_t printed = seq, report_from = seq;
    for (;;) {
        seq++;
        uint64_t slot = (seq - 1) % nslots;
        fill(buf, seq, slot, boot);
        double t0 = now_s();
        for (int tries = 0;; tries++) {
            ssize_t w = pwrite(fd, buf, BLK, (off_t)(slot * BLK));
            if (w == BLK)
                break;
            say("DISKERR seq=%llu try=%d errno=%d", (unsigned long long)seq, tries,
                w < 0 ? errno : 0);
            usleep(100000);
        }
        double t1 = now_s(), lat = t1 - t0;
        if (lat > 0.2)
            say("DISKSTALL ms=%.0f seq=%llu", lat * 1000, (unsigned long long)seq);
        pthread_mutex_lock(&g_lock);
        g_acked = seq;
        if (g_win_n < WIN_MAX)
            g_win[g_win_n++] = (uint32_t)(lat * 1e6);
        double rate = g_kibps;
        pthread_mutex_unlock(&g_lock);
        if (t1 - last_ack >= 0.2) {
            say("DISKACK %llu", (unsigned long long)seq);
            printed = seq;
            last_ack = t1;
        }
        if (t1 - last_report >= g_report_s) { /* leaves the STATS window alone */
            if (printed != seq)
                say("DISKACK %llu", (unsigned long long)seq);
            printed = seq;
            say("DISKSTATS n=%llu kibps=%.1f acked=%llu",
                (unsigned long long)(seq - report_from),
                (double)(seq - report_from) * 4.0 / (t1 - last_report), (unsigned long long)seq);
            report_from = seq;
            last_report = t1;
        }
        if (rate > 0) {
            next += 4.0 / rate;
            double d = next - now_s();
            if (d > 0)
                usleep((useconds_t)(d * 1e6));
            else if (d < -1.0)
                next = now_s(); /* fell behind (a stall): do not burst to catch up */
        }
    }
    return NULL;
}

static void serve(void)
{
    int srv = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(srv, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g_port)};
    if (bind(srv, (struct sockaddr *)&a, sizeof a) != 0 || listen(srv, 4) != 0) {
        say("DISKERR cannot listen on %d", g_port);
        for (;;)
            pause();
    }
    for (;;) {
        int c = accept(srv, NULL, NULL);
        if (c < 0)
            continue;
        FILE *f = fdopen(c, "r+");
        char line[128];
        while (f && fgets(line, sizeof line, f)) {
            char out[256];
            double v;
            pthread_mutex_lock(&g_lock);
            if (sscanf(line, "RATE %lf", &v) == 1 && v >= 0) {
                g_kibps = v;
                snprintf(out, sizeof out, "OK RATE %g", v);
            } else if (strncmp(line, "STATS", 5) == 0) {
                char w[200];
                window(w, sizeof w);
                snprintf(out, sizeof out, "STATS %s", w);
            } else {
                snprintf(out, sizeof out, "ERR unknown request");
            }
            pthread_mutex_unlock(&g_lock);
            fprintf(f, "%s\n", out);
            fflush(f);
        }
        if (f)
            fclose(f);
        else
            close(c);
    }
}

int main(void)
{
    char cmd[2048] = "";
    FILE *f = fopen("/proc/cmdline", "r");
    if (f) {
        if (!fgets(cmd, sizeof cmd, f))
            cmd[0] = 0;
        fclose(f);
    }
    static char dev[128];
    for (char *tok = strtok(cmd, " \n"); tok; tok = strtok(NULL, " \n")) {
        if (!strncmp(tok, "vmc.disk_kibps=", 15))
            g_kibps = atof(tok + 15);
        else if (!strncmp(tok, "vmc.disk_report_s=", 18))
            g_report_s = atof(tok + 18);
        else if (!strncmp(tok, "vmc.disk_port=", 14))
            g_port = atoi(tok + 14);
        else if (!strncmp(tok, "vmc.disk_dev=", 13)) {
            snprintf(dev, sizeof dev, "%s", tok + 13);
            g_dev = dev;
        }
    }
    crc_init();
    g_win = calloc(WIN_MAX, sizeof *g_win);
    int fd = -1;
    for (int i = 0; i < 100 && fd < 0; i++) { /* the device may appear a little late */
        fd = open(g_dev, O_RDWR | O_DIRECT | O_DSYNC);
        if (fd < 0)
            usleep(100000);
    }
    if (fd < 0 || !g_win) {
        say("DISKERR cannot open %s (errno %d); no disk check", g_dev, errno);
        return 1;
    }
    pthread_t t;
    pthread_create(&t, NULL, writer, &fd);
    serve();
    return 0;
}
