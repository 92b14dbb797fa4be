/*
 * sluice plugin SDK: the plugin descriptor, hooks and verdicts.
 *
 * A plugin is a shared object exporting one symbol, `sluice_plugin`, of type
 * `const struct sluice_plugin`. The host dlopen()s it, checks the ABI version
 * (the major must equal the host's, the minor must not be newer), calls
 * init() once per chain entry that names it (a conf.d file), thread_init()
 * once per loop thread, and then its hook functions for every session.
 *
 * Threading: a session lives on one loop thread; every hook and every
 * callback of an asynchronous service for a session runs on that thread. A
 * hook must never block: anything slow (DNS, timers, the store, a virus scan)
 * goes through the services of <sluice/async.h> and <sluice/store.h>, and the
 * hook returns SLUICE_PENDING, later resolved with sluice_resume().
 *
 * Ownership: every pointer the host gives a plugin stays owned by the host
 * and is valid for the duration of the call that gave it, unless a function's
 * documentation says otherwise.
 */
#ifndef SLUICE_PLUGIN_H
#define SLUICE_PLUGIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SLUICE_ABI_MAJOR 1
/* 1.1: sluice_entry_timer(), sluice_entry_dns_query() (<sluice/async.h>).
 * 1.2: message readers usable on the thread pool, sluice_message_pread(),
 *      sluice_message_length() (<sluice/session.h>);
 *      sluice_setting_path(), sluice_config_dir(), sluice_setting_fail()
 *      (<sluice/config.h>); network lists (<sluice/net.h>).
 * 1.3: sluice_entry_timeout(), sluice_entry_set_timeout() (<sluice/config.h>);
 *      sluice_tls_sni(), sluice_tls_client_subject(), sluice_tls_client_verified()
 *      (<sluice/session.h>), and the TLS facts set (STARTTLS and implicit TLS).
 * 1.4: sluice_entry_skip_hook() (<sluice/config.h>). */
#define SLUICE_ABI_MINOR 4

/* Opaque handles. */
typedef struct sluice_session sluice_session; /* one client session */
typedef struct sluice_entry sluice_entry;     /* one chain entry (conf.d file) */

enum sluice_hook {
    SLUICE_HOOK_CONNECT,    /* after accept, limits and the reverse lookup; the
                               greeting waits for it */
    SLUICE_HOOK_HELO,       /* HELO/EHLO, argument in sluice_helo() */
    SLUICE_HOOK_MAIL,       /* MAIL FROM, sender in sluice_sender() */
    SLUICE_HOOK_RCPT,       /* RCPT TO, recipient in sluice_rcpt() */
    SLUICE_HOOK_DATA,       /* DATA, before the 354 */
    SLUICE_HOOK_EOM,        /* end of message: headers and body readable */
    SLUICE_HOOK_DISCONNECT, /* the session ended; the verdict is ignored */
    SLUICE_HOOK_COUNT
};

enum sluice_verdict {
    SLUICE_CONTINUE,   /* no opinion: the next entry runs */
    SLUICE_ACCEPT,     /* this hook passes, later entries are skipped for it;
                          also clears a deferred rejection (see below) */
    SLUICE_REJECT,     /* permanent failure (5xx) */
    SLUICE_TEMPFAIL,   /* temporary failure (4xx; at connect: 421 and close) */
    SLUICE_DISCONNECT, /* 421, then the session is closed */
    SLUICE_PENDING,    /* waiting for I/O: the plugin calls sluice_resume() later */
};

/*
 * A hook function. Returns a verdict; before returning REJECT, TEMPFAIL or
 * DISCONNECT it may set the reply with sluice_reply() (otherwise the hook's
 * default from the reply table is used: reject at helo/mail/rcpt "550 5.7.1",
 * at data/eom "554 5.7.1", at connect "554 5.7.1" as the greeting; tempfail
 * "451 4.7.1", at connect "421 4.7.0"). The host forces the code into the
 * verdict's class.
 *
 * entry_state is what init() stored; thread_state what thread_init() stored
 * for the calling loop thread.
 */
typedef enum sluice_verdict (*sluice_hook_fn)(sluice_session *s, void *entry_state,
                                              void *thread_state);

struct sluice_plugin {
    uint16_t abi_major; /* SLUICE_ABI_MAJOR */
    uint16_t abi_minor; /* SLUICE_ABI_MINOR */
    const char *name;   /* short name, e.g. "dnsbl" */
    const char *version;

    /*
     * Once per chain entry, in the worker (and at `sluice -t`): read and check
     * the entry's settings (<sluice/config.h>), allocate the entry's state.
     * Return 0, or -1 after writing a message into err (the host prefixes it
     * with the conf.d file name; use sluice_setting_line() for line numbers).
     * May be NULL.
     */
    int (*init)(sluice_entry *entry, void **entry_state, char *err, size_t errlen);
    /* When the entry's chain is retired (reload or shutdown). May be NULL. */
    void (*fini)(sluice_entry *entry, void *entry_state);

    /* Once per loop thread, on that thread, before its first session; for
     * per-thread caches and connections. May be NULL. */
    int (*thread_init)(sluice_entry *entry, void *entry_state, void **thread_state);
    void (*thread_fini)(sluice_entry *entry, void *entry_state, void *thread_state);

    /* One function per hook; NULL means SLUICE_CONTINUE. */
    sluice_hook_fn hooks[SLUICE_HOOK_COUNT];
};

/* The exported descriptor, one per plugin:
 *     SLUICE_PLUGIN = { .abi_major = SLUICE_ABI_MAJOR, .abi_minor = SLUICE_ABI_MINOR, ... };
 * (it defines the symbol `sluice_plugin` the host looks up). */
#define SLUICE_PLUGIN_SYMBOL "sluice_plugin"
#define SLUICE_PLUGIN_EXPORT __attribute__((visibility("default")))
#define SLUICE_PLUGIN const struct sluice_plugin sluice_plugin SLUICE_PLUGIN_EXPORT

/* ---- replies and verdicts ------------------------------------------------ */

/*
 * Sets the reply for the verdict the current hook returns (or resumes with).
 * code: 0 keeps the default code, else 200..599; esc: NULL for the default,
 * else exactly class.subject.detail ("5.7.1": class 2, 4 or 5, one to three
 * digits each); text: a printf format giving one line (other control bytes
 * are replaced by spaces). A reply that breaks these rules (a code out of
 * range, "5.7.1\r\n250 x", a text with CR or LF) is never sent: the host
 * logs it and the call's verdict becomes SLUICE_TEMPFAIL with the hook's
 * default reply (the plugin's error). Any hook but disconnect.
 */
void sluice_reply(sluice_session *s, int code, const char *esc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/*
 * Finishes a hook that returned SLUICE_PENDING with its verdict (anything but
 * PENDING). Call it on the session's loop thread, from a callback of an
 * asynchronous service. A call after the entry's pending timeout already
 * decided (the host logged it) is ignored, as is a call with no pending hook.
 */
void sluice_resume(sluice_session *s, enum sluice_verdict verdict);

/*
 * Deferred rejection (qpsmtpd's "naughty"): marks the session to be refused
 * later instead of now, so the client's log shows the recipient. when is
 * SLUICE_HOOK_RCPT (refuse every recipient) or SLUICE_HOOK_DATA (refuse at
 * DATA). The reply is given after the rcpt chain, for a recipient no entry
 * accepted; postmaster@ is never refused this way. An ACCEPT verdict at
 * connect, helo or mail clears the mark for the session; at rcpt, for that
 * recipient only. code/esc/fmt as for sluice_reply (defaults 550 5.7.1); a
 * malformed one sets nothing and makes the call's verdict SLUICE_TEMPFAIL.
 * Hooks: connect, helo, mail, rcpt.
 */
void sluice_defer_reject(sluice_session *s, enum sluice_hook when, int code, const char *esc,
                         const char *fmt, ...) __attribute__((format(printf, 5, 6)));
bool sluice_deferred(const sluice_session *s);

#ifdef __cplusplus
}
#endif

#endif
