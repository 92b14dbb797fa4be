/* The message spool: memory up to a threshold, then an unlinked temporary file. */
#ifndef SLUICE_SPOOL_H
#define SLUICE_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct evbuffer;
struct spool;

/* mem_threshold: bytes kept in memory; beyond it everything moves to an
 * O_TMPFILE (or mkstemp+unlink) file in dir. Never fails to create. */
struct spool *spool_new(size_t mem_threshold, const char *dir);
/* Drops a reference; the last one frees the spool. Any thread. */
void spool_free(struct spool *s);
/* Another reference, for a reader that may outlive the transaction (a
 * plugin's message reader on the thread pool). A shared spool is read-only:
 * its owner starts the next message in a new spool, never resets it. */
void spool_ref(struct spool *s);
bool spool_shared(const struct spool *s);
/* Drops the content, keeps the spool for the next message. Not on a shared
 * spool. */
void spool_reset(struct spool *s);

/* Moves all of src into the spool (src is drained). Returns 0, or -1 with
 * errno on a write failure (the caller answers 451 4.3.0). */
int spool_append(struct spool *s, struct evbuffer *src);
/* Copies len bytes into the spool: the one copy of the message on its way
 * from the client's input to the backend (none for a large chunk the
 * decoder passed whole: spool_take). Once the message is in the file,
 * small writes gather in memory (a bounded write-behind) and go out in one
 * pwritev; spool_flush writes what is left. Returns 0, or -1 with errno as
 * spool_append (the message is spoiled until spool_reset). */
int spool_write(struct spool *s, const char *p, size_t len);
/* Where spool_take gets its bytes: moves the first n bytes of its source
 * to the end of dst, returns 0 or -1 (io_input_move). */
typedef int (*spool_move_fn)(void *arg, size_t n, struct evbuffer *dst);
/* spool_write without the copy: move puts len bytes into the spool's buffer
 * (whole chains by reference). Returns as spool_write. */
int spool_take(struct spool *s, size_t len, spool_move_fn move, void *arg);
/* Writes the gathered bytes to the file, so a failure is known before the
 * message is answered. Returns 0 or -1 with errno. Readers (spool_read,
 * spool_add_to) flush first, so they always see the whole message. */
int spool_flush(struct spool *s);
uint64_t spool_size(const struct spool *s);
/* True once the current message has moved to the temporary file (for tests
 * and logs). */
bool spool_in_file(const struct spool *s);

/* Adds the whole content to out for sending, without copying file content
 * into memory (evbuffer file segments / sendfile). The spool stays valid and
 * unchanged. Returns 0 or -1. */
int spool_add_to(struct spool *s, struct evbuffer *out);

/* The same from byte off to the end (a message whose header was rewritten). */
int spool_add_range_to(struct spool *s, uint64_t off, struct evbuffer *out);

/* Cut-through: adds the bytes written since the last call (or since
 * spool_reset) to out by reference (file segments once the message is in
 * the file), *added their count; the spool keeps them. Bytes handed out are
 * never moved or changed by later writes. Returns 0 or -1. */
int spool_add_new_to(struct spool *s, struct evbuffer *out, uint64_t *added);

/* Random-access read for plugins: copies up to len bytes at off into buf,
 * returns bytes copied (0 at the end) or -1. */
ssize_t spool_read(struct spool *s, uint64_t off, void *buf, size_t len);

#endif
