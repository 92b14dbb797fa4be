/* TLS contexts of the listeners: loaded in the worker (the keys must be
 * readable by the worker's user, DESIGN), once per certificate and key. */
#ifndef SLUICE_TLS_H
#define SLUICE_TLS_H

#include <stddef.h>

#include <openssl/ssl.h>

struct listen_conf;

/* The server context of a listener with tls_cert (TLS 1.2 and up), or NULL
 * with the reason in err. Shared, never freed by the caller. Thread-safe. */
SSL_CTX *tls_server_ctx(const struct listen_conf *l, char *err, size_t errlen);

/* A client context for TLS to backends, verifying with ca_file (NULL: the
 * system's CA store), TLS 1.2 and up; shared per CA file. NULL with err. */
SSL_CTX *tls_client_ctx(const char *ca_file, char *err, size_t errlen);

#endif
