/* The message spool: an evbuffer while the message is small, an unlinked
 * temporary file once it crosses the threshold. Sending never copies file
 * content into memory: the output gets a file segment libevent can sendfile
 * or mmap. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "spool.h"

#include <errno.h>
#include <stdatomic.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "log.h"

#define SPOOL_DEFAULT_DIR "/var/tmp"
#define SPOOL_WRITE_IOVECS 64
/* Once in the file, bytes written in small pieces (the runs between lines
 * the decoder changed) gather in memory up to this much before one pwritev;
 * spool_flush writes the rest. */
#define SPOOL_WRITE_BEHIND (64 * 1024)

struct spool {
    size_t mem_threshold;
    char *dir;
    /* The message while in memory; once in the file, the bytes written to
     * the spool but not yet to the file (spool_flush). */
    struct evbuffer *mem;
    /* In memory, the message's first bytes already handed out by
     * spool_add_new_to (mem holds the rest): kept apart so that later writes
     * to mem never move (realign) bytes an output buffer still references.
     * Empty once the message is in the file. */
    struct evbuffer *head;
    uint64_t handed; /* bytes handed out by spool_add_new_to */
    int fd;          /* the temporary file, kept open across messages; -1 before the first */
    bool in_file;    /* this message lives in fd, not in mem */
    bool handed_out; /* fd content is referenced by a file segment someone may still send */
    int write_errno; /* a failed write spoils the message until spool_reset */
    uint64_t size;
    atomic_int refs; /* the session's, plus one per message reader */
};

struct spool *spool_new(size_t mem_threshold, const char *dir)
{
    struct spool *s = calloc(1, sizeof(*s));

    if (s == NULL)
        return NULL;
    s->mem_threshold = mem_threshold;
    s->dir = strdup(dir != NULL && dir[0] != '\0' ? dir : SPOOL_DEFAULT_DIR);
    s->mem = evbuffer_new();
    s->head = evbuffer_new();
    s->fd = -1;
    atomic_init(&s->refs, 1);
    if (s->dir == NULL || s->mem == NULL || s->head == NULL) {
        spool_free(s);
        return NULL;
    }
    return s;
}

void spool_ref(struct spool *s)
{
    atomic_fetch_add(&s->refs, 1);
}

bool spool_shared(const struct spool *s)
{
    return atomic_load(&((struct spool *)s)->refs) > 1;
}

void spool_free(struct spool *s)
{
    if (s == NULL || atomic_fetch_sub(&s->refs, 1) > 1)
        return;
    if (s->fd >= 0)
        close(s->fd);
    if (s->mem != NULL)
        evbuffer_free(s->mem);
    if (s->head != NULL)
        evbuffer_free(s->head);
    free(s->dir);
    free(s);
}

void spool_reset(struct spool *s)
{
    evbuffer_drain(s->mem, evbuffer_get_length(s->mem));
    evbuffer_drain(s->head, evbuffer_get_length(s->head));
    s->handed = 0;
    /* A file segment handed out may still be in some output buffer; truncating
     * under it would corrupt that send (or SIGBUS an mmap), so start afresh. */
    if (s->fd >= 0 && (s->handed_out || ftruncate(s->fd, 0) != 0)) {
        close(s->fd);
        s->fd = -1;
    }
    s->handed_out = false;
    s->in_file = false;
    s->write_errno = 0;
    s->size = 0;
}

uint64_t spool_size(const struct spool *s)
{
    return s->size;
}

bool spool_in_file(const struct spool *s)
{
    return s->in_file;
}

static int open_unlinked_tmp(const char *dir)
{
    char path[4096];
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);

    if (fd >= 0)
        return fd;
    /* Filesystems without O_TMPFILE: a named file, unlinked at once. */
    if (snprintf(path, sizeof(path), "%s/sluice-spool-XXXXXX", dir) >= (int)sizeof(path)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    fd = mkostemp(path, O_CLOEXEC);
    if (fd >= 0)
        unlink(path);
    return fd;
}

/* Writes and drains all of buf at offset off with pwritev, so nothing depends
 * on the file position a dup()ed descriptor in a file segment shares. */
static int write_buffer_at(int fd, struct evbuffer *buf, uint64_t off)
{
    struct evbuffer_iovec vec[SPOOL_WRITE_IOVECS];

    while (evbuffer_get_length(buf) > 0) {
        int n = evbuffer_peek(buf, -1, NULL, vec, SPOOL_WRITE_IOVECS);
        ssize_t written;

        if (n > SPOOL_WRITE_IOVECS)
            n = SPOOL_WRITE_IOVECS;
        written = pwritev(fd, (struct iovec *)vec, n, (off_t)off);
        if (written < 0 && errno == EINTR)
            continue;
        if (written <= 0) {
            if (written == 0)
                errno = EIO;
            return -1;
        }
        evbuffer_drain(buf, (size_t)written);
        off += (uint64_t)written;
    }
    return 0;
}

/* Crossing the threshold: the memory part goes first, then the rest follows
 * it in the file. */
static int move_to_file(struct spool *s)
{
    if (s->fd < 0) {
        s->fd = open_unlinked_tmp(s->dir);
        if (s->fd < 0) {
            int saved = errno;

            log_err(NULL, "spool: cannot create a temporary file in %s: %s", s->dir,
                    strerror(saved));
            errno = saved;
            return -1;
        }
    }
    s->in_file = true;
    size_t head_len = evbuffer_get_length(s->head);
    if (write_buffer_at(s->fd, s->head, 0) != 0)
        return -1;
    return write_buffer_at(s->fd, s->mem, head_len);
}

static int spool_fail(struct spool *s, struct evbuffer *src)
{
    int saved = errno != 0 ? errno : EIO;

    evbuffer_drain(src, evbuffer_get_length(src));
    s->write_errno = saved;
    errno = saved;
    return -1;
}

int spool_flush(struct spool *s)
{
    size_t pending = evbuffer_get_length(s->mem);

    if (s->write_errno != 0) {
        errno = s->write_errno;
        return -1;
    }
    if (!s->in_file || pending == 0)
        return 0;
    if (write_buffer_at(s->fd, s->mem, s->size - pending) != 0)
        return spool_fail(s, s->mem);
    return 0;
}

/* Before bytes that would cross the threshold: the message moves to the file. */
static int spool_make_room(struct spool *s, size_t len)
{
    if (s->in_file || s->size + len <= s->mem_threshold)
        return 0;
    return move_to_file(s);
}

int spool_write(struct spool *s, const char *p, size_t len)
{
    if (s->write_errno != 0) {
        errno = s->write_errno;
        return -1;
    }
    if (spool_make_room(s, len) != 0 || evbuffer_add(s->mem, p, len) != 0)
        return spool_fail(s, s->mem);
    s->size += len;
    if (s->in_file && evbuffer_get_length(s->mem) >= SPOOL_WRITE_BEHIND)
        return spool_flush(s);
    return 0;
}

int spool_take(struct spool *s, size_t len, spool_move_fn move, void *arg)
{
    if (s->write_errno != 0) {
        errno = s->write_errno;
        return -1;
    }
    if (spool_make_room(s, len) != 0)
        return spool_fail(s, s->mem);
    if (move(arg, len, s->mem) != 0) {
        errno = ENOMEM;
        return spool_fail(s, s->mem);
    }
    s->size += len;
    if (s->in_file && evbuffer_get_length(s->mem) >= SPOOL_WRITE_BEHIND)
        return spool_flush(s);
    return 0;
}

int spool_append(struct spool *s, struct evbuffer *src)
{
    size_t len = evbuffer_get_length(src);

    if (s->write_errno != 0) {
        errno = s->write_errno;
        return spool_fail(s, src);
    }
    if (spool_make_room(s, len) != 0 || evbuffer_add_buffer(s->mem, src) != 0) {
        spool_fail(s, s->mem);
        return spool_fail(s, src);
    }
    s->size += len;
    return spool_flush(s);
}

/* Memory content is added by reference where libevent allows it, else
 * copied (it is at most mem_threshold bytes). */
static int add_buffer_to(struct evbuffer *mem, size_t done, struct evbuffer *out)
{
    struct evbuffer_iovec vec[SPOOL_WRITE_IOVECS];
    size_t total = evbuffer_get_length(mem);

    if (done >= total)
        return 0;
    if (done == 0 && evbuffer_add_buffer_reference(out, mem) == 0)
        return 0;
    while (done < total) {
        struct evbuffer_ptr pos;
        int n;

        if (evbuffer_ptr_set(mem, &pos, done, EVBUFFER_PTR_SET) != 0)
            return -1;
        n = evbuffer_peek(mem, -1, &pos, vec, SPOOL_WRITE_IOVECS);
        if (n <= 0)
            return -1;
        if (n > SPOOL_WRITE_IOVECS)
            n = SPOOL_WRITE_IOVECS;
        for (int i = 0; i < n; i++) {
            if (evbuffer_add(out, vec[i].iov_base, vec[i].iov_len) != 0)
                return -1;
            done += vec[i].iov_len;
        }
    }
    return 0;
}

/* The message in memory is head, then mem. */
static int add_memory_to(struct spool *s, size_t off, struct evbuffer *out)
{
    size_t head_len = evbuffer_get_length(s->head);

    if (off < head_len && add_buffer_to(s->head, off, out) != 0)
        return -1;
    return add_buffer_to(s->mem, off < head_len ? 0 : off - head_len, out);
}

static int add_file_to(struct spool *s, uint64_t off, struct evbuffer *out)
{
    struct evbuffer_file_segment *seg;
    int fd = dup(s->fd);
    int rc;

    if (fd < 0)
        return -1;
    seg = evbuffer_file_segment_new(fd, (ev_off_t)off, (ev_off_t)(s->size - off),
                                    EVBUF_FS_CLOSE_ON_FREE);
    if (seg == NULL) {
        close(fd);
        return -1;
    }
    rc = evbuffer_add_file_segment(out, seg, 0, (ev_off_t)(s->size - off));
    /* out holds its own reference; ours goes now. */
    evbuffer_file_segment_free(seg);
    if (rc == 0)
        s->handed_out = true;
    return rc;
}

int spool_add_to(struct spool *s, struct evbuffer *out)
{
    if (spool_flush(s) != 0)
        return -1;
    if (s->size == 0)
        return 0;
    return s->in_file ? add_file_to(s, 0, out) : add_memory_to(s, 0, out);
}

int spool_add_range_to(struct spool *s, uint64_t off, struct evbuffer *out)
{
    if (spool_flush(s) != 0 || off > s->size)
        return -1;
    if (off == s->size)
        return 0;
    return s->in_file ? add_file_to(s, off, out) : add_memory_to(s, (size_t)off, out);
}

int spool_add_new_to(struct spool *s, struct evbuffer *out, uint64_t *added)
{
    uint64_t from = s->handed;
    int rc;

    *added = 0;
    if (spool_flush(s) != 0)
        return -1;
    if (from == s->size)
        return 0;
    if (s->in_file) {
        rc = add_file_to(s, from, out);
    } else {
        /* mem holds exactly the bytes not yet handed out. */
        rc = evbuffer_add_buffer_reference(out, s->mem);
        if (rc == 0)
            rc = evbuffer_add_buffer(s->head, s->mem);
    }
    if (rc != 0)
        return -1;
    s->handed = s->size;
    *added = s->size - from;
    return 0;
}

static ssize_t read_file_at(int fd, uint64_t off, char *buf, size_t len)
{
    size_t done = 0;

    while (done < len) {
        ssize_t n = pread(fd, buf + done, len - done, (off_t)(off + done));

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        done += (size_t)n;
    }
    return (ssize_t)done;
}

ssize_t spool_read(struct spool *s, uint64_t off, void *buf, size_t len)
{
    struct evbuffer_ptr pos;

    if (off >= s->size || len == 0)
        return 0;
    if (spool_flush(s) != 0)
        return -1;
    if (len > s->size - off)
        len = (size_t)(s->size - off);
    if (s->in_file)
        return read_file_at(s->fd, off, buf, len);
    size_t head_len = evbuffer_get_length(s->head);
    size_t done = 0;
    if (off < head_len) {
        size_t n = len < head_len - off ? len : (size_t)(head_len - off);
        if (evbuffer_ptr_set(s->head, &pos, (size_t)off, EVBUFFER_PTR_SET) != 0 ||
            evbuffer_copyout_from(s->head, &pos, buf, n) != (ev_ssize_t)n)
            return -1;
        done = n;
        off = head_len;
    }
    if (done == len)
        return (ssize_t)done;
    if (evbuffer_ptr_set(s->mem, &pos, (size_t)(off - head_len), EVBUFFER_PTR_SET) != 0)
        return -1;
    ev_ssize_t got = evbuffer_copyout_from(s->mem, &pos, (char *)buf + done, len - done);
    return got < 0 ? -1 : (ssize_t)(done + (size_t)got);
}
