#include "tls.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/err.h>

#include "config.h"
#include "log.h"

/* One context per listener (its own protocols, ciphers, client CA and SNI
 * table, even when another listener has the same certificate), for the
 * worker's life; a reload swaps the context inside its entry. */
struct tls_ctx_entry {
    char *listener; /* "address port" */
    char *cert, *key;
    SSL_CTX *ctx;
    struct tls_ctx_entry *next;
};

static pthread_mutex_t tls_lock = PTHREAD_MUTEX_INITIALIZER;
static struct tls_ctx_entry *tls_ctxs;

static void tls_error(char *err, size_t errlen, const char *what, const char *path)
{
    char ossl[256] = "";
    unsigned long e = ERR_get_error();
    if (e)
        ERR_error_string_n(e, ossl, sizeof ossl);
    ERR_clear_error();
    snprintf(err, errlen, "%s %s: %s", what, path, ossl[0] ? ossl : "failed");
}

/* A client certificate is asked for, never required: a client without one
 * (most MTAs) still gets TLS; whether it verified is a fact for plugins. */
static int tls_accept_any_client(int preverify_ok, X509_STORE_CTX *x)
{
    (void)preverify_ok;
    (void)x;
    return 1;
}

static int tls_apply_listener(SSL_CTX *ctx, const struct listen_conf *l, char *err,
                              size_t errlen)
{
    bool v13 = l->tls_min_protocol && strcmp(l->tls_min_protocol, "TLSv1.3") == 0;
    SSL_CTX_set_min_proto_version(ctx, v13 ? TLS1_3_VERSION : TLS1_2_VERSION);
    if (l->tls_ciphers && SSL_CTX_set_cipher_list(ctx, l->tls_ciphers) != 1) {
        tls_error(err, errlen, "tls_ciphers matches no cipher:", l->tls_ciphers);
        return -1;
    }
    if (l->tls_client_ca) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(l->tls_client_ca);
        if (SSL_CTX_load_verify_locations(ctx, l->tls_client_ca, NULL) != 1 || !names) {
            if (names)
                sk_X509_NAME_pop_free(names, X509_NAME_free);
            tls_error(err, errlen, "cannot load tls_client_ca", l->tls_client_ca);
            return -1;
        }
        SSL_CTX_set_client_CA_list(ctx, names);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, tls_accept_any_client);
    }
    return 0;
}

static SSL_CTX *tls_load_one(const struct listen_conf *l, const char *cert, const char *key,
                             char *err, size_t errlen);

/* A listener's certificates by name (SNI), hung on its main context and
 * freed with it: a handshake holds the main context, so the table outlives
 * every handshake that may look in it. */
struct tls_sni_table {
    size_t n;
    char **names;
    SSL_CTX **ctxs;
};

static int tls_sni_index = -1;
static pthread_once_t tls_sni_once = PTHREAD_ONCE_INIT;

static void tls_sni_table_free(struct tls_sni_table *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->n; i++) {
        free(t->names[i]);
        SSL_CTX_free(t->ctxs[i]);
    }
    free(t->names);
    free(t->ctxs);
    free(t);
}

static void tls_sni_ex_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                            void *argp)
{
    (void)parent;
    (void)ad;
    (void)idx;
    (void)argl;
    (void)argp;
    tls_sni_table_free(ptr);
}

static void tls_sni_init_index(void)
{
    tls_sni_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, tls_sni_ex_free);
}

/* The client named a server: its own certificate when there is one. An
 * unknown name keeps the listener's main certificate. */
static int tls_sni_select(SSL *ssl, int *alert, void *arg)
{
    (void)alert;
    (void)arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    struct tls_sni_table *t = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), tls_sni_index);
    for (size_t i = 0; name && t && i < t->n; i++)
        if (strcasecmp(t->names[i], name) == 0) {
            SSL_set_SSL_CTX(ssl, t->ctxs[i]);
            break;
        }
    return SSL_TLSEXT_ERR_OK;
}

static int tls_load_sni(SSL_CTX *ctx, const struct listen_conf *l, char *err, size_t errlen)
{
    pthread_once(&tls_sni_once, tls_sni_init_index);
    struct tls_sni_table *t = calloc(1, sizeof *t);
    if (!t || tls_sni_index < 0 || !(t->names = calloc(l->ntls_sni, sizeof *t->names)) ||
        !(t->ctxs = calloc(l->ntls_sni, sizeof *t->ctxs))) {
        tls_sni_table_free(t);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < l->ntls_sni; i++) {
        const struct tls_sni_conf *c = &l->tls_sni[i];
        t->names[i] = strdup(c->name);
        t->ctxs[i] = tls_load_one(l, c->cert, c->key ? c->key : c->cert, err, errlen);
        t->n = i + 1;
        if (!t->names[i] || !t->ctxs[i]) {
            tls_sni_table_free(t);
            return -1;
        }
    }
    SSL_CTX_set_ex_data(ctx, tls_sni_index, t);
    SSL_CTX_set_tlsext_servername_callback(ctx, tls_sni_select);
    return 0;
}

static SSL_CTX *tls_load(const struct listen_conf *l, const char *cert, const char *key,
                         char *err, size_t errlen)
{
    SSL_CTX *ctx = tls_load_one(l, cert, key, err, errlen);
    if (ctx && l->ntls_sni > 0 && tls_load_sni(ctx, l, err, errlen) < 0) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

static SSL_CTX *tls_load_one(const struct listen_conf *l, const char *cert, const char *key,
                             char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        tls_error(err, errlen, "cannot create a TLS context for", cert);
        return NULL;
    }
    /* Renegotiation is a client-driven CPU cost with no use in SMTP. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
    if (tls_apply_listener(ctx, l, err, errlen) < 0) {
        /* err says why */
    } else if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        tls_error(err, errlen, "cannot load the certificate", cert);
    } else if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        tls_error(err, errlen, "cannot load the key", key);
    } else if (SSL_CTX_check_private_key(ctx) != 1) {
        tls_error(err, errlen, "the key does not match the certificate", cert);
    } else {
        return ctx;
    }
    SSL_CTX_free(ctx);
    return NULL;
}

#define TLS_LISTENER_NAME_MAX 320

static void tls_listener_name(const struct listen_conf *l, char *out, size_t cap)
{
    snprintf(out, cap, "%s %s", l->address ? l->address : "", l->port ? l->port : "");
}

/* Under tls_lock. */
static struct tls_ctx_entry *tls_entry_find(const char *listener, const char *cert,
                                            const char *key)
{
    for (struct tls_ctx_entry *t = tls_ctxs; t; t = t->next)
        if (strcmp(t->listener, listener) == 0 && strcmp(t->cert, cert) == 0 &&
            strcmp(t->key, key) == 0)
            return t;
    return NULL;
}

SSL_CTX *tls_server_ctx(const struct listen_conf *l, char *err, size_t errlen)
{
    const char *cert = l->tls_cert, *key = l->tls_key ? l->tls_key : l->tls_cert;
    if (!cert) {
        snprintf(err, errlen, "no tls_cert on this listener");
        return NULL;
    }
    char listener[TLS_LISTENER_NAME_MAX];
    tls_listener_name(l, listener, sizeof listener);
    pthread_mutex_lock(&tls_lock);
    SSL_CTX *ctx = NULL;
    struct tls_ctx_entry *found = tls_entry_find(listener, cert, key);
    if (found) {
        ctx = found->ctx;
        SSL_CTX_up_ref(ctx);
    }
    if (!ctx) {
        struct tls_ctx_entry *t = calloc(1, sizeof *t);
        if (t) {
            t->listener = strdup(listener);
            t->cert = strdup(cert);
            t->key = strdup(key);
        }
        if (!t || !t->listener || !t->cert || !t->key) {
            snprintf(err, errlen, "out of memory");
        } else {
            t->ctx = ctx = tls_load(l, cert, key, err, errlen);
        }
        if (ctx) {
            SSL_CTX_up_ref(ctx); /* one for the cache, one for the caller */
            t->next = tls_ctxs;
            tls_ctxs = t;
        } else if (t) {
            free(t->listener);
            free(t->cert);
            free(t->key);
            free(t);
        }
    }
    pthread_mutex_unlock(&tls_lock);
    return ctx;
}

/* Client contexts, one per CA file ("" for the system's store). */
struct tls_client_entry {
    char *ca;
    SSL_CTX *ctx;
    struct tls_client_entry *next;
};

static struct tls_client_entry *tls_clients;

static SSL_CTX *tls_client_load(const char *ca, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        tls_error(err, errlen, "cannot create a TLS context for", ca[0] ? ca : "backends");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    int ok = ca[0] ? SSL_CTX_load_verify_locations(ctx, ca, NULL)
                   : SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
        tls_error(err, errlen, "cannot load the CA file", ca[0] ? ca : "(system)");
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

SSL_CTX *tls_client_ctx(const char *ca_file, char *err, size_t errlen)
{
    const char *ca = ca_file ? ca_file : "";
    pthread_mutex_lock(&tls_lock);
    SSL_CTX *ctx = NULL;
    for (struct tls_client_entry *t = tls_clients; t; t = t->next)
        if (strcmp(t->ca, ca) == 0)
            ctx = t->ctx;
    if (!ctx) {
        struct tls_client_entry *t = calloc(1, sizeof *t);
        char *copy = t ? strdup(ca) : NULL;
        ctx = copy ? tls_client_load(ca, err, errlen) : NULL;
        if (!copy)
            snprintf(err, errlen, "out of memory");
        if (ctx) {
            t->ca = copy;
            t->ctx = ctx;
            t->next = tls_clients;
            tls_clients = t;
        } else {
            free(copy);
            free(t);
        }
    }
    pthread_mutex_unlock(&tls_lock);
    return ctx;
}

void tls_reload(const struct listen_conf *listens, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const struct listen_conf *l = &listens[i];
        if (!l->tls_cert)
            continue;
        const char *key = l->tls_key ? l->tls_key : l->tls_cert;
        char err[300];
        SSL_CTX *fresh = tls_load(l, l->tls_cert, key, err, sizeof err);
        if (!fresh) {
            log_err(NULL, "reload: TLS of %s:%s keeps its certificate: %s", l->address, l->port,
                    err);
            continue;
        }
        char listener[TLS_LISTENER_NAME_MAX];
        tls_listener_name(l, listener, sizeof listener);
        pthread_mutex_lock(&tls_lock);
        struct tls_ctx_entry *t = tls_entry_find(listener, l->tls_cert, key);
        if (t) {
            SSL_CTX_free(t->ctx); /* sessions holding it keep their reference */
            t->ctx = fresh;
            fresh = NULL;
        }
        pthread_mutex_unlock(&tls_lock);
        if (fresh)
            SSL_CTX_free(fresh); /* never used yet: the first handshake loads it */
        else
            log_info(NULL, "reload: TLS of %s:%s: certificate %s read again", l->address,
                     l->port, l->tls_cert);
    }
}
