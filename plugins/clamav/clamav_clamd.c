/* clamd mode: the message goes to a running clamd with INSTREAM, on a
 * thread-pool thread, over TCP or a unix socket. The addresses are tried in
 * order: one that cannot be reached, fails or says nothing within
 * clamd_timeout hands the scan to the next. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "clamav.h"

#define CLAMD_CHUNK 65536
#define CLAMD_REPLY_MAX 1024
#define CLAMD_COMMAND "zINSTREAM"

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* "host:port", "[v6]:port" (numeric only: no DNS on a scan) or a path. */
static int clamd_sockaddr(const char *addr, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof *ss);
    if (addr[0] == '/') {
        struct sockaddr_un *un = (struct sockaddr_un *)ss;
        if (strlen(addr) >= sizeof un->sun_path)
            return -1;
        un->sun_family = AF_UNIX;
        strcpy(un->sun_path, addr);
        *len = sizeof *un;
        return 0;
    }
    char host[INET6_ADDRSTRLEN + 2];
    const char *colon = strrchr(addr, ':');
    if (!colon || (size_t)(colon - addr) >= sizeof host || !colon[1])
        return -1;
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    char *h = host;
    if (h[0] == '[') {
        size_t n = strlen(h);
        if (n < 2 || h[n - 1] != ']')
            return -1;
        h[n - 1] = '\0';
        h++;
    }
    struct addrinfo hints = {.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV,
                             .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai;
    if (getaddrinfo(h, colon + 1, &hints, &ai) != 0)
        return -1;
    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    *len = ai->ai_addrlen;
    freeaddrinfo(ai);
    return 0;
}

bool clamav_clamd_address_ok(const char *addr)
{
    struct sockaddr_storage ss;
    socklen_t len;
    return clamd_sockaddr(addr, &ss, &len) == 0;
}

/* Waits for fd to be ready for events until the deadline. */
static int clamd_wait(int fd, short events, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - now_ms();
        if (left <= 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, (int)left);
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return -1;
    }
}

static int clamd_connect(const char *addr, int64_t deadline)
{
    struct sockaddr_storage ss;
    socklen_t len;
    if (clamd_sockaddr(addr, &ss, &len) < 0) {
        errno = EINVAL;
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&ss, len) < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (clamd_wait(fd, POLLOUT, deadline) < 0 ||
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0 || soerr != 0) {
        if (soerr)
            errno = soerr;
        close(fd);
        return -1;
    }
    return fd;
}

static int clamd_send(int fd, const void *buf, size_t len, int64_t deadline)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (clamd_wait(fd, POLLOUT, deadline) < 0)
                return -1;
            continue;
        }
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* The message in INSTREAM chunks (a 4-byte length, big-endian, then the
 * bytes), ended by an empty chunk. */
static int clamd_stream(int fd, sluice_message_reader *r, int64_t deadline)
{
    static const char cmd[] = CLAMD_COMMAND;
    char *buf = malloc(CLAMD_CHUNK + 4);
    if (!buf || clamd_send(fd, cmd, sizeof cmd, deadline) < 0) {
        free(buf);
        return -1;
    }
    uint64_t off = 0;
    for (;;) {
        ssize_t n = sluice_message_pread(r, buf + 4, CLAMD_CHUNK, off);
        if (n < 0) {
            free(buf);
            return -1;
        }
        uint32_t be = htonl((uint32_t)n);
        memcpy(buf, &be, 4);
        if (clamd_send(fd, buf, (size_t)n + 4, deadline) < 0) {
            free(buf);
            return -1;
        }
        if (n == 0)
            break;
        off += (uint64_t)n;
    }
    free(buf);
    return 0;
}

/* The answer, up to its NUL: "stream: OK", "stream: NAME FOUND", "... ERROR". */
static int clamd_answer(int fd, char *out, size_t outlen, int64_t deadline)
{
    size_t have = 0;
    while (have + 1 < outlen) {
        ssize_t n = recv(fd, out + have, outlen - 1 - have, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (clamd_wait(fd, POLLIN, deadline) < 0)
                return -1;
            continue;
        }
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        have += (size_t)n;
        if (memchr(out, '\0', have))
            break;
    }
    out[have] = '\0';
    size_t len = strlen(out);
    while (len > 0 && (out[len - 1] == '\n' || out[len - 1] == '\r'))
        out[--len] = '\0';
    if (len == 0) {
        errno = ECONNRESET;
        return -1;
    }
    return 0;
}

static enum clamav_result clamd_verdict(const char *answer, char *virname, size_t vlen,
                                        char *detail, size_t dlen)
{
    const char *v = strncmp(answer, "stream: ", 8) == 0 ? answer + 8 : answer;
    size_t n = strlen(v);
    if (strcmp(v, "OK") == 0)
        return CLAMAV_CLEAN;
    if (n > 6 && strcmp(v + n - 6, " FOUND") == 0) {
        snprintf(virname, vlen, "%.*s", (int)(n - 6), v);
        return clamav_classify(virname);
    }
    snprintf(detail, dlen, "clamd: %s", v);
    return CLAMAV_ERROR;
}

enum clamav_result clamav_clamd_scan(const struct clamav_conf *c, sluice_message_reader *r,
                                     char *virname, size_t vlen, char *detail, size_t dlen,
                                     char *failover, size_t flen)
{
    char answer[CLAMD_REPLY_MAX];
    snprintf(detail, dlen, "no clamd address");
    failover[0] = '\0';
    for (size_t i = 0; i < c->nclamd; i++) {
        int64_t deadline = now_ms() + c->clamd_timeout_ms;
        int fd = clamd_connect(c->clamd[i], deadline);
        if (fd >= 0 && clamd_stream(fd, r, deadline) == 0 &&
            clamd_answer(fd, answer, sizeof answer, deadline) == 0) {
            close(fd);
            return clamd_verdict(answer, virname, vlen, detail, dlen);
        }
        int saved = errno;
        if (fd >= 0)
            close(fd);
        snprintf(detail, dlen, "clamd %s: %s", c->clamd[i], strerror(saved));
        size_t used = strlen(failover);
        if (i + 1 < c->nclamd && used < flen)
            snprintf(failover + used, flen - used, "%s%s", used ? "; " : "", detail);
    }
    return CLAMAV_ERROR;
}
