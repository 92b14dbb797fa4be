/*
 * sluice plugin SDK: what a plugin can know about a session and change in it.
 *
 * All functions take the session handle given to a hook or to a callback of
 * an asynchronous service, and must be called on that session's loop thread.
 * Returned strings are owned by the host and valid until the hook or
 * callback returns, unless stated otherwise. Strings from the client may
 * contain any byte except NUL where a length is returned with them.
 */
#ifndef SLUICE_SESSION_SDK_H
#define SLUICE_SESSION_SDK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the connection (every hook) ----------------------------------------- */

/* The session id that starts every log line of the session. */
const char *sluice_session_id(const sluice_session *s);
/* The real client (after a PROXY header) and the address it connected to. */
const struct sockaddr *sluice_client_addr(const sluice_session *s);
const struct sockaddr *sluice_local_addr(const sluice_session *s);
/* Numeric text form ("192.0.2.1", "2001:db8::1") and port of the client. */
const char *sluice_client_ip(const sluice_session *s);
int sluice_client_port(const sluice_session *s);

enum sluice_rdns { SLUICE_RDNS_OK, SLUICE_RDNS_NONE, SLUICE_RDNS_TEMPFAIL };
/* The forward-confirmed reverse name, or NULL (status says why). */
const char *sluice_client_name(const sluice_session *s);
enum sluice_rdns sluice_client_name_status(const sluice_session *s);

/* True when the client is in relay_networks (or, later, authenticated). */
bool sluice_client_trusted(const sluice_session *s);
/* True when the client sent bytes before the greeting (postscreen's pregreet). */
bool sluice_early_talker(const sluice_session *s);

/* Limits how fast the client's bytes are read (0: no limit), for suspect
 * clients. Applies only while the session holds no backend connection, so a
 * slow client never holds a pool's slot. Any hook. */
void sluice_throttle(sluice_session *s, uint64_t bytes_per_second);

/* True while the session holds a backend connection (from the first
 * recipient a backend accepted until the backend session ends, which may
 * outlast the transaction). A plugin that delays must not hold one. Any hook. */
bool sluice_backend_held(const sluice_session *s);

/* TLS facts of the client connection: false / NULL while it is in plain
 * text. Any hook; the strings live as long as the session. */
bool sluice_tls_active(const sluice_session *s);
const char *sluice_tls_version(const sluice_session *s); /* "TLSv1.3" */
const char *sluice_tls_cipher(const sluice_session *s);  /* "TLS_AES_256_GCM_SHA384" */
/* (SDK 1.3) The server name the client asked for (SNI), or NULL. */
const char *sluice_tls_sni(const sluice_session *s);
/* (SDK 1.3) The subject of the client's certificate ("/CN=client.example"),
 * NULL when it sent none (a listener asks for one with tls_client_ca). */
const char *sluice_tls_client_subject(const sluice_session *s);
/* (SDK 1.3) True when that certificate chained to the listener's
 * tls_client_ca. */
bool sluice_tls_client_verified(const sluice_session *s);

/* ---- the conversation ------------------------------------------------------ */

/* HELO/EHLO argument, NULL before it (helo hook onwards). */
const char *sluice_helo(const sluice_session *s);
bool sluice_esmtp(const sluice_session *s);

/* The sender of the current transaction ("" for <>), NULL outside one
 * (mail hook onwards). */
const char *sluice_sender(const sluice_session *s, size_t *len);
/* MAIL parameters: SIZE declared (-1 when absent), BODY=8BITMIME, SMTPUTF8. */
int64_t sluice_declared_size(const sluice_session *s);
bool sluice_body_8bitmime(const sluice_session *s);
bool sluice_smtputf8(const sluice_session *s);

/* The recipient being decided (rcpt hook only), else NULL. */
const char *sluice_rcpt(const sluice_session *s, size_t *len);
/* The recipients accepted so far in this transaction (the backend said 2xx). */
size_t sluice_rcpt_count(const sluice_session *s);
const char *sluice_rcpt_at(const sluice_session *s, size_t i, size_t *len);

/* ---- the message (eom hook) ------------------------------------------------- */

/* The message size as RFC 1870 counts it and the size limit checks it: the
 * content in bytes, CRLFs included, without dot-stuffing or the terminating
 * ".". */
uint64_t sluice_message_size(const sluice_session *s);

/* Header fields as received, in order. name without the colon; value is the
 * raw field body after the colon (folding kept, no final CRLF). Returns false
 * past the last field. */
size_t sluice_header_count(const sluice_session *s);
bool sluice_header_at(const sluice_session *s, size_t i, const char **name, size_t *name_len,
                      const char **value, size_t *value_len);
/* The idx-th field named name (case-insensitive), or NULL. */
const char *sluice_header_get(const sluice_session *s, const char *name, size_t idx,
                              size_t *value_len);

/* The whole message (headers and body, un-dot-stuffed, CRLF line ends) as a
 * stream read from the spool, never copied whole into memory.
 *
 * Open it at eom, on the loop thread. The reader holds its own reference to
 * the spooled message (since ABI 1.2): it may be handed to a thread-pool
 * function (sluice_work) and read there, by one thread at a time, and stays
 * valid after the hook returns, the transaction ends or the session closes,
 * until sluice_message_close(), which may be called on any thread. The
 * message it reads never changes (header changes are not part of it). */
typedef struct sluice_message_reader sluice_message_reader;
sluice_message_reader *sluice_message_open(sluice_session *s);
/* Returns bytes read, 0 at the end, -1 on an error. */
ssize_t sluice_message_read(sluice_message_reader *r, void *buf, size_t len);
/* Random access (since ABI 1.2), for scanners that map the message (e.g.
 * libclamav's cl_fmap_open_handle): up to len bytes at offset off of the
 * un-stuffed message; returns bytes read (fewer only at the end), 0 past the
 * end, -1 on an error. Moves the read position of sluice_message_read to
 * off + the bytes read. Reading forward is cheap; an offset before the
 * position re-reads the spool from the nearest 1 MiB mark before it. */
ssize_t sluice_message_pread(sluice_message_reader *r, void *buf, size_t len, uint64_t off);
/* The un-stuffed message's length in bytes, or -1 on an error (since ABI
 * 1.2). The first call reads the whole spool once (on a large message, call
 * it from the thread-pool function); later calls return the same value. */
int64_t sluice_message_length(sluice_message_reader *r);
void sluice_message_close(sluice_message_reader *r);

/* Header changes, applied when the message is sent to the backend. add puts
 * "name: value" on top of the header; remove drops the idx-th field named
 * name (idx < 0: every one). value must not contain bare CR/LF (folding is
 * "\r\n\t"). Returns 0, or -1 on bad input or over the per-message caps.
 * The header is read up to 1000 fields and 1 MiB; a message with more whose
 * header a remove was asked for is refused with 552 5.3.4 (a field past the
 * caps, one a client forged, could not be removed). Hook: eom. */
int sluice_header_add(sluice_session *s, const char *name, const char *value);
int sluice_header_remove(sluice_session *s, const char *name, int idx);

/* ---- notes: how entries tell each other things ------------------------------ */

enum sluice_scope {
    SLUICE_CONNECTION,  /* lives as long as the session */
    SLUICE_TRANSACTION, /* cleared at the end of each transaction (RSET, end of message) */
};

/* Set a note (replacing one of the same key). Keys are short names
 * ("dnsbl.zone"); prefix them with your plugin's name. Returns -1 over the
 * per-session caps (64 notes, 64-byte keys, 1 KiB strings). Any hook. */
int sluice_note_set_int(sluice_session *s, enum sluice_scope scope, const char *key, int64_t v);
int sluice_note_set_double(sluice_session *s, enum sluice_scope scope, const char *key, double v);
int sluice_note_set_string(sluice_session *s, enum sluice_scope scope, const char *key,
                           const char *v);
/* Get a note; false when absent or of another type. */
bool sluice_note_get_int(const sluice_session *s, enum sluice_scope scope, const char *key,
                         int64_t *v);
bool sluice_note_get_double(const sluice_session *s, enum sluice_scope scope, const char *key,
                            double *v);
const char *sluice_note_get_string(const sluice_session *s, enum sluice_scope scope,
                                   const char *key);

/* The shared numeric score of the connection (note "score", a double): the
 * DNSBL adds to it, the tarpit reads it. */
double sluice_score(const sluice_session *s);
void sluice_score_add(sluice_session *s, double delta);

/* Per-entry data attached to the session, freed with free_fn when the
 * session ends (or replaced). For the calling entry. */
void *sluice_session_data(const sluice_session *s);
void sluice_session_set_data(sluice_session *s, void *data, void (*free_fn)(void *));

#ifdef __cplusplus
}
#endif

#endif
