/* TLS contexts of the listeners: loaded in the worker (the keys must be
 * readable by the worker's user, DESIGN), once per certificate and key. */
#ifndef SLUICE_TLS_H
#define SLUICE_TLS_H

#include <stddef.h>

#include <openssl/ssl.h>

struct listen_conf;

/* The server context of a listener with tls_cert (TLS 1.2 and up), or NULL
 * with the reason in err. The caller holds a reference: SSL_CTX_free() it
 * once its SSL is made (a reload may replace the shared one meanwhile).
 * Thread-safe. */
SSL_CTX *tls_server_ctx(const struct listen_conf *l, char *err, size_t errlen);

/* SIGHUP: reads every listener's certificate and key again. A pair that
 * loads replaces the old one for the next handshakes (sessions in TLS keep
 * theirs); one that does not is logged and the old one stays. */
void tls_reload(const struct listen_conf *listens, size_t n);

/* A client context for TLS to backends, verifying with ca_file (NULL: the
 * system's CA store), TLS 1.2 and up; shared per CA file. NULL with err. */
SSL_CTX *tls_client_ctx(const char *ca_file, char *err, size_t errlen);

#endif
