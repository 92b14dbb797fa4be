/* Asynchronous SDK operations bound to a session and the entry that started
 * them. The callback of an operation reaches the plugin only while both
 * still want it: not after the session ended, not after the entry's pending
 * timeout decided the hook (DESIGN: a late answer never resumes anything). */
#ifndef SLUICE_SDK_OP_H
#define SLUICE_SDK_OP_H

#include <stdbool.h>

struct session;
struct plugin_entry;
struct sdk_op;

/* Called when the operation is abandoned (session end, entry timeout) while
 * still outstanding: cancel what can be cancelled (dns_cancel, event_del).
 * After it, sdk_op_begin() on this op returns false. */
typedef void (*sdk_op_cancel_fn)(void *arg);

/* Registers an operation for the session's current entry (the one whose hook
 * or callback is running). Loop thread. Returns NULL on allocation failure. */
struct sdk_op *sdk_op_new(struct session *s, sdk_op_cancel_fn cancel, void *cancel_arg);

/* When the result arrives (on the loop thread): returns true with *s set and
 * the op's entry made current, when the plugin callback may run; the caller
 * then calls the plugin and sdk_op_end(). Returns false when the op was
 * abandoned: do not call the plugin. Either way the op is consumed (freed by
 * sdk_op_end or by this call when false). */
bool sdk_op_begin(struct sdk_op *op, struct session **s);
void sdk_op_end(struct session *s);

/* Abandons every outstanding op of the session (at its end), or only those
 * of one entry (its pending timeout). Ops whose result may still arrive from
 * another thread (the thread pool) stay allocated until sdk_op_begin. */
void sdk_op_abandon_all(struct session *s);
void sdk_op_abandon_entry(struct session *s, const struct plugin_entry *e);

#endif
