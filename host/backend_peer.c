/* The backend interface: each call goes to the connection's implementation
 * (backend.c's SMTP client, backend_check.c's check mode). */
#include "backend.h"

struct backend *backend_open(const struct backend_ops *ops, struct loop *loop,
                             struct generation *gen, struct pool *pool, int pool_index,
                             const struct backend_client *client, backend_cb cb, void *arg)
{
    return ops->open(loop, gen, pool, pool_index, client, cb, arg);
}

void backend_begin(struct backend *b)
{
    if (b->ops->begin)
        b->ops->begin(b);
}

void backend_command(struct backend *b, enum backend_step step, const char *line, size_t len,
                     backend_cb cb, void *arg)
{
    b->ops->command(b, step, line, len, cb, arg);
}

void backend_send_message(struct backend *b, struct spool *spool, struct evbuffer *prefix,
                          uint64_t offset, backend_cb cb, void *arg)
{
    b->ops->send_message(b, spool, prefix, offset, cb, arg);
}

bool backend_can_stream(const struct backend *b) { return b->ops->stream_begin != NULL; }

void backend_stream_begin(struct backend *b, struct spool *spool, backend_cb cb, void *arg)
{
    b->ops->stream_begin(b, spool, cb, arg);
}

void backend_stream_more(struct backend *b) { b->ops->stream_more(b); }

void backend_stream_end(struct backend *b) { b->ops->stream_end(b); }

void backend_keepalive(struct backend *b, bool on) { b->ops->keepalive(b, on); }

void backend_name_known(struct backend *b, enum dns_status st, const char *name)
{
    if (b->ops->name_known)
        b->ops->name_known(b, st, name);
}

void backend_close(struct backend *b) { b->ops->close(b); }

bool backend_usable(const struct backend *b) { return b->ops->usable(b); }

const struct ehlo_caps *backend_caps(const struct backend *b) { return b->ops->caps(b); }

const char *backend_peer_name(const struct backend *b) { return b->ops->peer_name(b); }

int backend_pool_index(const struct backend *b) { return b->ops->pool_index(b); }
