/* Shared by the session modules: session.c (life and I/O), session_cmd.c
 * (commands), session_relay.c (backend side of a transaction, DATA). */
#ifndef SLUICE_SESSION_INTERNAL_H
#define SLUICE_SESSION_INTERNAL_H

#include <sys/queue.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/time.h>

#include "backend.h"
#include "conn_limits.h"
#include "data_codec.h"
#include "dns.h"
#include "hooks.h"
#include "reply.h"
#include "smtp_cmd.h"

#include <sluice/plugin.h>

struct chain;
struct generation;
struct plugin_entry;
struct note;
struct sdk_op;
struct message_info;
struct cmd_row;

enum session_phase {
    PH_PROXY,        /* waiting for the PROXY header */
    PH_RDNS,         /* reverse lookup at accept, before the connect hook */
    PH_CONNECT_HOOK, /* connect hook running */
    PH_COMMANDS,
    PH_DATA,         /* after 354: everything is message */
    PH_CLOSING,
};

/* Where the SMTP conversation is (RFC 5321 4.1.4): what each command is
 * allowed in is the command table's business (session_cmd.c). */
enum smtp_state {
    SS_CONNECTED, /* greeted, no accepted HELO/EHLO yet (also after STARTTLS) */
    SS_HELO,      /* HELO/EHLO accepted, no transaction */
    SS_MAIL,      /* MAIL accepted: a transaction (recipients, DATA) */
    SS_REJECTED,  /* refused at connect: only QUIT */
    SS_COUNT
};

/* What the client's timeouts are armed for. */
enum session_wait { WAIT_UNSET = 0, WAIT_US, WAIT_COMMAND, WAIT_DATA };

/* Cut-through (session_relay.c): with no end-of-data hook the message goes
 * to the backend while the client sends it. */
enum txn_stream {
    STREAM_OFF,      /* stored, then forwarded (an eom hook, or no backend) */
    STREAM_EARLY,    /* DATA went with the last RCPT (the client pipelined
                      * it behind that RCPT); the client's DATA is not
                      * answered yet */
    STREAM_ON,       /* DATA sent, the clean spool follows as it grows */
    STREAM_ANSWERED, /* the backend answered (or was lost) before the client's
                      * end of data: that answer waits for it (stream_*) */
    STREAM_ABORTED,  /* the message turned bad: the backend was closed
                      * without the end of data; sluice's refusal answers */
    STREAM_ENDED,    /* the dot went (or waits for the 354): the final reply answers */
};

struct rcpt_entry {
    char *addr;
    int code; /* the reply the client got */
};

struct txn {
    bool active;       /* MAIL accepted */
    char *from;        /* the reverse path, NUL-terminated copy */
    size_t from_len;
    struct mail_params mp;
    int pool;          /* the route of the transaction, -1 before the first recipient */
    bool backend_open; /* MAIL FROM accepted by the backend: it has a transaction */
    bool rcpt_pipelined; /* the first RCPT went with MAIL, before its reply */
    bool rcpt_waiting;   /* an RCPT sent, its reply not delivered yet */
    /* What answers every later RCPT once the backend refused MAIL or failed:
     * fail_id from the reply table, or the backend's own reply (fail_reply,
     * fail_len, fail_code) when fail_id is R_COUNT. */
    bool failed;
    enum reply_id fail_id;
    char *fail_reply;
    size_t fail_len;
    int fail_code;
    enum txn_stream stream;
    enum backend_status stream_status; /* STREAM_ANSWERED: the backend's reply, */
    int stream_code;                   /* kept whole (stream_text) until the */
    char *stream_text;                 /* client's end of data */
    size_t stream_len, stream_nlines;
    struct rcpt_entry *rcpts;
    size_t nrcpts, cap, naccepted;
    uint64_t size;
    struct timeval start;
};

struct session {
    char sid[16];
    struct loop *loop;
    const struct sluice_config *cfg;
    const struct listen_conf *listen;
    LIST_ENTRY(session) loop_link; /* the loop's sessions_of_loop */

    struct io *io; /* the client connection; NULL once it is closed */
    struct sockaddr_storage peer;  /* the real client (after PROXY) */
    struct sockaddr_storage local; /* where it connected to */
    char client_ip[INET6_ADDRSTRLEN];
    int client_port;
    struct dns_query *rdns_query; /* the reverse lookup, until it ends */
    enum dns_status rdns_status;
    char *rdns_name;
    /* The greeting went while the reverse lookup ran (no connect hook):
     * what reads the name waits for it instead (hooks_run, and XCLIENT:
     * backend_name_known). */
    bool greeted_early;
    bool disconnect_done; /* ended, its reverse lookup still running */
    /* Plugin callbacks of asynchronous operations on the stack (sdk_op_begin
     * to sdk_op_end): a session that ends inside one (its disconnect hook
     * resumed from it) is freed only when the outermost returns. */
    int op_depth;
    bool free_deferred;

    enum session_phase phase;
    bool busy;       /* a command is in progress: no further input is read */
    enum session_wait armed_wait;
    bool line_taken; /* a command line was consumed: its successor's deadline starts */
    bool processing; /* inside session_process (re-entrancy guard) */
    bool finishing;
    bool early_talker;
    bool client_eof; /* half-closed: answer what it sent, then close */
    bool limits_admitted;
    struct limits_ticket limits_ticket; /* what the admission counted */
    enum smtp_state state;
    const struct cmd_row *cmd_row; /* the command whose hook runs (session_cmd.c) */
    int errors;
    char *line;    /* the current command line, cfg->max_line_length bytes; NULL
                    * until the first command (session_line_buffer) */

    char *helo;
    bool esmtp;

    struct txn txn;
    char *cur_rcpt_addr; /* the RCPT being processed */
    /* The RCPT's parameters (ORCPT is up to 500 bytes): made at the first
     * RCPT, kept for the next ones. */
    struct rcpt_params *cur_rcpt_params;
    int cur_rcpt_pool;

    struct backend *backend;

    struct spool *spool;        /* NULL until the first DATA (session_data_buffers) */
    struct data_decoder decoder;
    struct event *data_timer;
    bool spool_failed;

    /* ---- plugin host (chain.c, sdk_*.c) ---- */
    struct generation *gen; /* the configuration this session started with */
    struct chain *chain;    /* gen->chain */
    struct {
        enum hook_point point;
        size_t next;       /* the next entry to run */
        hook_done_cb done;
        bool active;       /* a hook is being run */
        bool pending;      /* entry returned PENDING, waiting for sluice_resume */
        bool name_wait;    /* waiting for the reverse lookup (hooks_name_known) */
        bool in_call;      /* inside an entry's hook function */
        bool have_resume;  /* sluice_resume called inside the hook function */
        bool rcpt_accepted;/* an entry accepted the current recipient */
        enum sluice_verdict resumed;
        struct plugin_entry *entry; /* the pending entry */
        struct event *timeout_ev;
    } run;
    struct plugin_entry *current_entry; /* whose code runs now (SDK calls) */
    struct plugin_entry *saved_entry_stack; /* restored after a bound callback */
    struct verdict_reply {
        bool set;
        int code;
        char esc[12];
        char text[256];
    } reply, deferred;
    /* why the current plugin call's reply (or deferred rejection) was refused:
     * a bad code, enhanced code or a text of several lines. NULL when none. */
    const char *reply_refused;
    enum hook_point deferred_when;
    bool deferred_cleared; /* an accept at connect/helo/mail */
    struct note *notes; /* grown on demand (sdk_session.c) */
    size_t nnotes, notes_cap;
    void **entry_data;
    void (**entry_data_free)(void *);
    LIST_HEAD(, sdk_op) ops; /* the plugins' operations in flight (sdk_async.c) */
    struct message_info *msg; /* headers parsed at eom and pending header changes */
    uint64_t throttle_bps;
};

/* session.c */
void session_write(struct session *s, const char *buf, size_t len);
void session_reply(struct session *s, enum reply_id id);
void session_error(struct session *s, enum reply_id id);
void session_close_after(struct session *s, enum reply_id id); /* R_COUNT: no reply */
void session_relay_reply(struct session *s, const struct backend_reply *r);
bool session_apply_verdict(struct session *s, enum hook_point point, const struct hook_verdict *v);
void session_done(struct session *s);
void session_busy(struct session *s);
void session_txn_reset(struct session *s);
/* Makes room for one more recipient before the RCPT is answered, so that
 * recording its reply cannot fail. False: out of memory (answer 451 4.3.0). */
bool session_txn_reserve_rcpt(struct session *s);
void session_txn_add_rcpt(struct session *s, int code);
void session_log_txn(struct session *s, const char *result);
/* The same for a reply code as the result. */
void session_log_txn_code(struct session *s, int code);
/* The spool, made at the first DATA (a session that never sends a message
 * has none). False: out of memory (answer 451 4.3.0). */
bool session_data_buffers(struct session *s);

/* session_cmd.c */
void session_command(struct session *s, const char *line, size_t len);

/* sdk_session.c, sdk_message.c: plugin-visible state */
void session_plugins_init(struct session *s);
void session_plugins_free(struct session *s);
/* sdk_op_end, the last callback on the stack returned: frees a session that
 * ended meanwhile. */
void session_free_deferred(struct session *s);
void session_notes_clear(struct session *s, int scope);
void session_apply_throttle(struct session *s);
void message_info_free(struct message_info *m);
/* Parses the header of the spooled message (eom). False: out of memory, the
 * header plugins would see is incomplete. */
bool message_info_parse(struct session *s);
/* Header changes: returns 1 with *prefix holding the new header (wire form)
 * and *body_offset where the spool continues, 0 when there are none, -1 when
 * the new header could not be built (memory, spool read), -2 when a plugin
 * removes fields and the header goes on past the parser's caps (a field to
 * remove may be among those never seen: the message is refused). */
int message_rewrite(struct session *s, struct evbuffer *prefix, uint64_t *body_offset);

/* session_relay.c */
void session_rcpt_relay(struct session *s);
/* Lets go of the backend session between transactions (it may be kept for
 * a later session, which tells the server who its client is anew). */
void session_backend_drop(struct session *s);
void session_data_start(struct session *s);
/* The client's DATA was refused here (no valid recipient): a DATA that went
 * ahead to the backend must not leave it waiting for a message. */
void session_data_refused(struct session *s);
bool session_data_input(struct session *s);

#endif
