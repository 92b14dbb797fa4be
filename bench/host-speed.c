/*
 * How fast this host is right now, for reading full-bench.py's figures
 * across runs: on a shared VM the same binaries have differed by a fifth
 * from one hour to the next, every row alike. Two figures, on the CPU it
 * is pinned to:
 *   pair   one send of 48 bytes over a loopback TCP connection and its recv,
 *          in µs: the kernel path a relay pays for every command and reply;
 *   cpu    a fixed integer loop, in ns per 1,000 rounds: plain CPU speed.
 *
 * usage: host-speed [ROUNDS]   (prints "pair_us=X cpu_ns=Y")
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* A connected loopback pair: *out sends, *in receives. */
static int loopback_pair(int *out, int *in)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    int one = 1;
    int l = socket(AF_INET, SOCK_STREAM, 0);
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) < 0 ||
        getsockname(l, (struct sockaddr *)&a, &alen) < 0 || listen(l, 1) < 0)
        return -1;
    *out = socket(AF_INET, SOCK_STREAM, 0);
    if (*out < 0 || connect(*out, (struct sockaddr *)&a, sizeof a) < 0)
        return -1;
    *in = accept(l, NULL, NULL);
    close(l);
    setsockopt(*out, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return *in < 0 ? -1 : 0;
}

static double pair_us(long rounds)
{
    int out, in;
    if (loopback_pair(&out, &in) < 0)
        return -1;
    char msg[48], buf[4096];
    memset(msg, 'x', sizeof msg);
    double t0 = now_s();
    for (long i = 0; i < rounds; i++) {
        if (send(out, msg, sizeof msg, 0) != (ssize_t)sizeof msg ||
            recv(in, buf, sizeof buf, 0) <= 0)
            return -1;
    }
    double us = (now_s() - t0) / (double)rounds * 1e6;
    close(out);
    close(in);
    return us;
}

static double cpu_ns(long rounds)
{
    volatile uint64_t sink;
    uint64_t h = 1469598103934665603ull;
    double t0 = now_s();
    for (long i = 0; i < rounds * 1000; i++)
        h = (h ^ (uint64_t)i) * 1099511628211ull;
    sink = h;
    (void)sink;
    return (now_s() - t0) / (double)rounds * 1e9;
}

int main(int argc, char **argv)
{
    long rounds = argc > 1 ? strtol(argv[1], NULL, 10) : 100000;
    if (rounds <= 0) {
        fprintf(stderr, "usage: %s [ROUNDS]\n", argv[0]);
        return 2;
    }
    double pair = pair_us(rounds);
    if (pair < 0) {
        perror("host-speed: loopback");
        return 1;
    }
    printf("pair_us=%.2f cpu_ns=%.0f\n", pair, cpu_ns(rounds));
    return 0;
}
