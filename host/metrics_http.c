/* The /metrics endpoint: an evhttp server on its own event_base and thread,
 * so a slow or stuck scraper never delays a loop thread. */
#include "metrics.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <event2/thread.h>

#define METRICS_PATH "/metrics"
#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
#define METRICS_HTTP_TIMEOUT_S 10  /* a scraper that stalls is dropped */
#define METRICS_HTTP_MAX_HEADERS 8192
#define METRICS_HTTP_MAX_BODY 4096 /* nothing we serve takes a body */
#define METRICS_HTTP_BACKLOG 64
/* Connections open at once: past this the listener pauses, so scrapers
 * cannot take the descriptors the SMTP sessions are budgeted. */
#define METRICS_HTTP_MAX_CONNS 32
/* A connection's whole life: the timeout above restarts at every byte, so
 * a client trickling its request (or reading the reply a byte at a time)
 * would otherwise hold its descriptor for hours. */
#define METRICS_HTTP_MAX_LIFE_S 20
/* What a connection may have read and not parsed yet; above the limits
 * evhttp enforces, so it only bounds a connection evhttp has let go of. */
#define METRICS_HTTP_READ_HIGH_WM (METRICS_HTTP_MAX_HEADERS + METRICS_HTTP_MAX_BODY + 4096)

/* evhttp (2.1) has neither a connection limit nor a hook when a connection
 * goes away. The endpoint makes each connection's bufferevent (bevcb) and
 * keeps a reference to it: once evhttp frees it, its callbacks are cleared,
 * and the sweep drops the last reference (closing the socket). */
struct endpoint_conn {
    struct bufferevent *bev;
    time_t since;
};

static struct {
    struct event_base *base;
    struct evhttp *http;
    struct evconnlistener *listener;
    struct event *sweep;
    struct endpoint_conn conns[METRICS_HTTP_MAX_CONNS];
    size_t nconns;
    pthread_t thread;
    bool running;
    _Atomic int port;
} endpoint = {.port = -1};

/* ---- requests ---- */

static void endpoint_free_render(const void *data, size_t len, void *extra)
{
    free((void *)data);
}

static bool endpoint_method_ok(enum evhttp_cmd_type cmd)
{
    return cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD;
}

static void endpoint_serve_metrics(struct evhttp_request *req)
{
    size_t len = 0;
    char *text = metrics_render(&len);
    struct evbuffer *body = evbuffer_new();
    if (text == NULL || body == NULL ||
        evbuffer_add_reference(body, text, len, endpoint_free_render, NULL) < 0) {
        free(text);
        if (body)
            evbuffer_free(body);
        evhttp_send_error(req, HTTP_INTERNAL, NULL);
        return;
    }
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      METRICS_CONTENT_TYPE);
    evhttp_send_reply(req, HTTP_OK, "OK", body);
    evbuffer_free(body);
}

/* evhttp_send_error drops our headers, and a 405 must carry Allow. */
static void endpoint_refuse_method(struct evhttp_request *req)
{
    static const char text[] = "405 Method Not Allowed: " METRICS_PATH " takes GET or HEAD\n";
    struct evkeyvalq *headers = evhttp_request_get_output_headers(req);
    struct evbuffer *body = evbuffer_new();
    evhttp_add_header(headers, "Allow", "GET, HEAD");
    evhttp_add_header(headers, "Content-Type", "text/plain; charset=utf-8");
    evhttp_add_header(headers, "Connection", "close");
    if (body)
        evbuffer_add(body, text, sizeof text - 1);
    evhttp_send_reply(req, 405, "Method Not Allowed", body);
    if (body)
        evbuffer_free(body);
}

static void endpoint_request(struct evhttp_request *req, void *arg)
{
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    if (path == NULL || strcmp(path, METRICS_PATH) != 0) {
        evhttp_send_error(req, HTTP_NOTFOUND, NULL);
        return;
    }
    if (!endpoint_method_ok(evhttp_request_get_command(req))) {
        endpoint_refuse_method(req);
        return;
    }
    endpoint_serve_metrics(req);
}

/* ---- the listening socket ---- */

static bool port_text_ok(const char *port)
{
    size_t n = strlen(port);
    if (n == 0 || n > 5 || strspn(port, "0123456789") != n)
        return false;
    return atoi(port) <= 65535;
}

/* "ip:port" or "[v6]:port", numeric only: the endpoint must not depend on
 * DNS at worker start. Port 0 picks a free port (tests). */
static int endpoint_split(const char *where, char *host, size_t hostlen, const char **port)
{
    const char *colon;
    const char *start = where, *end;
    if (where[0] == '[') {
        start = where + 1;
        end = strchr(start, ']');
        if (end == NULL || end[1] != ':')
            return -1;
        colon = end + 1;
    } else {
        colon = strchr(where, ':');
        if (colon == NULL || strchr(colon + 1, ':') != NULL)
            return -1;
        end = colon;
    }
    size_t n = (size_t)(end - start);
    if (n == 0 || n >= hostlen || !port_text_ok(colon + 1))
        return -1;
    memcpy(host, start, n);
    host[n] = '\0';
    *port = colon + 1;
    return 0;
}

static int endpoint_resolve(const char *where, struct sockaddr_storage *ss, socklen_t *sslen)
{
    char host[64];
    const char *port;
    if (where == NULL || endpoint_split(where, host, sizeof host, &port) < 0)
        return -1;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE};
    struct addrinfo *res = NULL;
    if (getaddrinfo(host, port, &hints, &res) != 0 || res == NULL)
        return -1;
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *sslen = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static int endpoint_bound_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        return -1;
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static int endpoint_socket(const char *where, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t sslen;
    if (endpoint_resolve(where, &ss, &sslen) < 0) {
        snprintf(err, errlen, "metrics: bad listen address \"%s\" (want ip:port)",
                 where ? where : "");
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int on = 1;
    if (fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) == 0 &&
        (ss.ss_family != AF_INET6 ||
         setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof on) == 0) &&
        bind(fd, (struct sockaddr *)&ss, sslen) == 0 && listen(fd, METRICS_HTTP_BACKLOG) == 0)
        return fd;
    snprintf(err, errlen, "metrics: cannot listen on %s: %s", where, strerror(errno));
    if (fd >= 0)
        close(fd);
    return -1;
}

/* ---- connections ---- */

static time_t endpoint_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec;
}

static struct bufferevent *endpoint_new_bev(struct event_base *base, void *arg)
{
    if (endpoint.nconns >= METRICS_HTTP_MAX_CONNS)
        return NULL; /* not reached: the listener pauses at the limit */
    struct bufferevent *bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (bev == NULL)
        return NULL;
    bufferevent_setwatermark(bev, EV_READ, 0, METRICS_HTTP_READ_HIGH_WM);
    bufferevent_incref(bev);
    endpoint.conns[endpoint.nconns++] = (struct endpoint_conn){bev, endpoint_now()};
    if (endpoint.nconns >= METRICS_HTTP_MAX_CONNS && endpoint.listener)
        evconnlistener_disable(endpoint.listener);
    return bev;
}

static bool endpoint_conn_released(struct bufferevent *bev)
{
    bufferevent_data_cb readcb, writecb;
    bufferevent_event_cb eventcb;
    bufferevent_getcb(bev, &readcb, &writecb, &eventcb, NULL);
    return readcb == NULL && writecb == NULL && eventcb == NULL;
}

/* Drops the connections evhttp has freed, ends those past their life (the
 * shutdown makes evhttp see an error and free the connection), and resumes
 * the listener below the limit. */
static void endpoint_sweep(evutil_socket_t fd, short what, void *arg)
{
    time_t now = endpoint_now();
    for (size_t i = 0; i < endpoint.nconns;) {
        struct endpoint_conn *c = &endpoint.conns[i];
        if (endpoint_conn_released(c->bev)) {
            bufferevent_decref(c->bev);
            *c = endpoint.conns[--endpoint.nconns];
            continue;
        }
        if (now - c->since >= METRICS_HTTP_MAX_LIFE_S && bufferevent_getfd(c->bev) >= 0)
            shutdown(bufferevent_getfd(c->bev), SHUT_RDWR);
        i++;
    }
    if (endpoint.nconns < METRICS_HTTP_MAX_CONNS && endpoint.listener)
        evconnlistener_enable(endpoint.listener);
}

/* accept(2) failed for want of descriptors or memory: a listener left
 * armed would be woken again at once; the sweep resumes it. */
static void endpoint_accept_error(struct evconnlistener *listener, void *arg)
{
    evconnlistener_disable(listener);
}

/* ---- the thread ---- */

static void *endpoint_main(void *arg)
{
    event_base_dispatch(endpoint.base);
    return NULL;
}

static void endpoint_free(void)
{
    if (endpoint.http)
        evhttp_free(endpoint.http); /* closes the listening socket too */
    for (size_t i = 0; i < endpoint.nconns; i++)
        bufferevent_decref(endpoint.conns[i].bev); /* evhttp_free released them */
    endpoint.nconns = 0;
    endpoint.listener = NULL;
    if (endpoint.sweep)
        event_free(endpoint.sweep);
    endpoint.sweep = NULL;
    if (endpoint.base)
        event_base_free(endpoint.base);
    endpoint.http = NULL;
    endpoint.base = NULL;
    atomic_store(&endpoint.port, -1);
}

/* Takes the listening socket: it is closed on failure, or by evhttp_free. */
static int endpoint_setup(int fd)
{
    /* loopexit comes from another thread: the base needs its locks */
    if (evthread_use_pthreads() == 0)
        endpoint.base = event_base_new();
    endpoint.http = endpoint.base ? evhttp_new(endpoint.base) : NULL;
    struct evconnlistener *listener =
        endpoint.http ? evconnlistener_new(endpoint.base, NULL, NULL,
                                           LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1, fd)
                      : NULL;
    if (listener == NULL) {
        close(fd);
        return -1;
    }
    if (evhttp_bind_listener(endpoint.http, listener) == NULL) {
        evconnlistener_free(listener);
        return -1;
    }
    endpoint.listener = listener;
    evconnlistener_set_error_cb(listener, endpoint_accept_error);
    const struct timeval second = {1, 0};
    endpoint.sweep = event_new(endpoint.base, -1, EV_PERSIST, endpoint_sweep, NULL);
    if (endpoint.sweep == NULL || event_add(endpoint.sweep, &second) < 0)
        return -1;
    evhttp_set_bevcb(endpoint.http, endpoint_new_bev, NULL);
    evhttp_set_timeout(endpoint.http, METRICS_HTTP_TIMEOUT_S);
    evhttp_set_max_headers_size(endpoint.http, METRICS_HTTP_MAX_HEADERS);
    evhttp_set_max_body_size(endpoint.http, METRICS_HTTP_MAX_BODY);
    /* every method reaches endpoint_request, which answers 405 itself */
    evhttp_set_allowed_methods(endpoint.http, EVHTTP_REQ_GET | EVHTTP_REQ_POST |
                                                  EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT |
                                                  EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
                                                  EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT |
                                                  EVHTTP_REQ_PATCH);
    evhttp_set_gencb(endpoint.http, endpoint_request, NULL);
    return 0;
}

int metrics_start(const char *where, char *err, size_t errlen)
{
    if (endpoint.running) {
        snprintf(err, errlen, "metrics: endpoint already started");
        return -1;
    }
    int fd = endpoint_socket(where, err, errlen);
    if (fd < 0)
        return -1;
    int port = endpoint_bound_port(fd);
    if (endpoint_setup(fd) < 0) {
        endpoint_free();
        snprintf(err, errlen, "metrics: cannot set up the HTTP server");
        return -1;
    }
    if (pthread_create(&endpoint.thread, NULL, endpoint_main, NULL) != 0) {
        endpoint_free();
        snprintf(err, errlen, "metrics: cannot start the endpoint thread");
        return -1;
    }
    atomic_store(&endpoint.port, port);
    endpoint.running = true;
    return 0;
}

void metrics_stop(void)
{
    if (!endpoint.running)
        return;
    event_base_loopexit(endpoint.base, NULL);
    pthread_join(endpoint.thread, NULL);
    endpoint_free();
    endpoint.running = false;
}

int metrics_port(void)
{
    return atomic_load(&endpoint.port);
}
