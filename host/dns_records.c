/* From c-ares answers to the text records dns.h promises: addresses with
 * their smallest TTL, joined and sanitised TXT, "pref name" MX, PTR names. */
#include "dns_records.h"

#include <ares.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Enough for any real A/AAAA answer (a UDP reply holds fewer). */
#define DNS_RECORDS_MAX_ADDRTTLS 64

enum dns_status dns_records_status_from_ares(int ares_status)
{
    switch (ares_status) {
    case ARES_SUCCESS:
        return DNS_OK;
    case ARES_ENODATA:
    case ARES_ENOTFOUND:
    case ARES_ENONAME:
    case ARES_EBADNAME:
        return DNS_NOTFOUND;
    default:
        return DNS_TEMPFAIL;
    }
}

void dns_records_clear(struct dns_records *recs)
{
    for (size_t i = 0; i < recs->nrr; i++)
        free(recs->rr[i]);
    free(recs->rr);
    recs->rr = NULL;
    recs->nrr = 0;
    recs->ttl = 0;
}

/* Takes text, even on failure, so callers can pass a strdup() as is. */
static int dns_records_append(struct dns_records *recs, char *text)
{
    if (!text)
        return -1;
    char **grown = realloc(recs->rr, (recs->nrr + 1) * sizeof(*grown));
    if (!grown) {
        free(text);
        return -1;
    }
    recs->rr = grown;
    recs->rr[recs->nrr++] = text;
    return 0;
}

static enum dns_status dns_records_parse_addresses(struct dns_records *recs, enum dns_type type,
                                                   const unsigned char *abuf, int alen)
{
    struct ares_addrttl v4[DNS_RECORDS_MAX_ADDRTTLS];
    struct ares_addr6ttl v6[DNS_RECORDS_MAX_ADDRTTLS];
    int n = DNS_RECORDS_MAX_ADDRTTLS;
    int st = type == DNS_A ? ares_parse_a_reply(abuf, alen, NULL, v4, &n)
                           : ares_parse_aaaa_reply(abuf, alen, NULL, v6, &n);
    if (st != ARES_SUCCESS)
        return dns_records_status_from_ares(st);
    for (int i = 0; i < n; i++) {
        char text[INET6_ADDRSTRLEN];
        int ttl = type == DNS_A ? v4[i].ttl : v6[i].ttl;
        if (type == DNS_A)
            inet_ntop(AF_INET, &v4[i].ipaddr, text, sizeof(text));
        else
            inet_ntop(AF_INET6, &v6[i].ip6addr, text, sizeof(text));
        if (dns_records_append(recs, strdup(text)) < 0)
            return DNS_TEMPFAIL;
        if (ttl >= 0 && (i == 0 || (uint32_t)ttl < recs->ttl))
            recs->ttl = (uint32_t)ttl;
    }
    return recs->nrr ? DNS_OK : DNS_NOTFOUND;
}

enum dns_status dns_records_hold_address(const unsigned char *abuf, int alen,
                                         const struct sockaddr_storage *addr)
{
    struct ares_addrttl v4[DNS_RECORDS_MAX_ADDRTTLS];
    struct ares_addr6ttl v6[DNS_RECORDS_MAX_ADDRTTLS];
    int n = DNS_RECORDS_MAX_ADDRTTLS;
    bool inet = addr->ss_family == AF_INET;
    int st = inet ? ares_parse_a_reply(abuf, alen, NULL, v4, &n)
                  : ares_parse_aaaa_reply(abuf, alen, NULL, v6, &n);
    if (st != ARES_SUCCESS)
        return dns_records_status_from_ares(st);
    const void *want = inet ? (const void *)&((const struct sockaddr_in *)addr)->sin_addr
                            : (const void *)&((const struct sockaddr_in6 *)addr)->sin6_addr;
    for (int i = 0; i < n; i++) {
        const void *got = inet ? (const void *)&v4[i].ipaddr : (const void *)&v6[i].ip6addr;
        if (memcmp(got, want, inet ? 4 : 16) == 0)
            return DNS_OK;
    }
    return DNS_NOTFOUND;
}

/* Appends one character-string; control bytes (NUL, CR, LF...) become '?'
 * so the text is safe to put into an SMTP reply or a log line. */
static char *dns_records_txt_join(char *text, size_t *len, const unsigned char *s, size_t slen)
{
    char *grown = realloc(text, *len + slen + 1);
    if (!grown) {
        free(text);
        return NULL;
    }
    for (size_t i = 0; i < slen; i++)
        grown[*len + i] = (s[i] < 0x20 || s[i] == 0x7f) ? '?' : (char)s[i];
    *len += slen;
    grown[*len] = '\0';
    return grown;
}

static enum dns_status dns_records_parse_txt(struct dns_records *recs, const unsigned char *abuf,
                                             int alen)
{
    struct ares_txt_ext *txt = NULL;
    int st = ares_parse_txt_reply_ext(abuf, alen, &txt);
    if (st != ARES_SUCCESS)
        return dns_records_status_from_ares(st);
    char *text = NULL;
    size_t len = 0;
    enum dns_status result = DNS_OK;
    for (struct ares_txt_ext *t = txt; t && result == DNS_OK; t = t->next) {
        if (t->record_start && text) {
            result = dns_records_append(recs, text) < 0 ? DNS_TEMPFAIL : DNS_OK;
            text = NULL;
            len = 0;
        }
        if (result == DNS_OK && !(text = dns_records_txt_join(text, &len, t->txt, t->length)))
            result = DNS_TEMPFAIL;
    }
    if (result == DNS_OK && text)
        result = dns_records_append(recs, text) < 0 ? DNS_TEMPFAIL : DNS_OK;
    else
        free(text);
    ares_free_data(txt);
    return result == DNS_OK && recs->nrr == 0 ? DNS_NOTFOUND : result;
}

static enum dns_status dns_records_parse_mx(struct dns_records *recs, const unsigned char *abuf,
                                            int alen)
{
    struct ares_mx_reply *mx = NULL;
    int st = ares_parse_mx_reply(abuf, alen, &mx);
    if (st != ARES_SUCCESS)
        return dns_records_status_from_ares(st);
    enum dns_status result = DNS_OK;
    for (struct ares_mx_reply *m = mx; m && result == DNS_OK; m = m->next) {
        size_t size = strlen(m->host) + 8;
        char *text = malloc(size);
        if (text)
            snprintf(text, size, "%u %s", (unsigned)m->priority, m->host);
        if (dns_records_append(recs, text) < 0)
            result = DNS_TEMPFAIL;
    }
    ares_free_data(mx);
    return result == DNS_OK && recs->nrr == 0 ? DNS_NOTFOUND : result;
}

static enum dns_status dns_records_parse_ptr(struct dns_records *recs, const unsigned char *abuf,
                                             int alen)
{
    /* The parser wants the address asked about; only the names matter here. */
    struct in_addr unused = {0};
    struct hostent *host = NULL;
    int st = ares_parse_ptr_reply(abuf, alen, &unused, sizeof(unused), AF_INET, &host);
    if (st != ARES_SUCCESS)
        return dns_records_status_from_ares(st);
    enum dns_status result = DNS_OK;
    if (dns_records_append(recs, strdup(host->h_name)) < 0)
        result = DNS_TEMPFAIL;
    for (char **alias = host->h_aliases; alias && *alias && result == DNS_OK; alias++) {
        if (strcmp(*alias, host->h_name) != 0 && dns_records_append(recs, strdup(*alias)) < 0)
            result = DNS_TEMPFAIL;
    }
    ares_free_hostent(host);
    return result;
}

enum dns_status dns_records_parse(struct dns_records *recs, enum dns_type type,
                                  const unsigned char *abuf, int alen)
{
    switch (type) {
    case DNS_A:
    case DNS_AAAA:
        return dns_records_parse_addresses(recs, type, abuf, alen);
    case DNS_TXT:
        return dns_records_parse_txt(recs, abuf, alen);
    case DNS_MX:
        return dns_records_parse_mx(recs, abuf, alen);
    case DNS_PTR:
        return dns_records_parse_ptr(recs, abuf, alen);
    }
    return DNS_TEMPFAIL;
}
