/* Raw DNS answers in the text form dns_query_records promises its callers
 * (see dns.h). Internal: the parsing half of dns, apart from the channel and
 * the query lifetimes, because it depends on neither. */
#ifndef SLUICE_DNS_RECORDS_H
#define SLUICE_DNS_RECORDS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "dns.h"

/* The records of one answer. Zero-initialised is empty; owned by whoever
 * holds it, released with dns_records_clear. */
struct dns_records {
    char **rr;    /* nrr NUL-terminated texts, each malloc'd */
    size_t nrr;
    uint32_t ttl; /* smallest TTL seen, A/AAAA only */
};

/* What a c-ares status code means to our callers: a definite "no" (no such
 * name, no data, a name that cannot exist) or a temporary failure. */
enum dns_status dns_records_status_from_ares(int ares_status);

/* Appends the records of type found in the answer abuf[0..alen) to recs.
 * DNS_NOTFOUND when it holds none; DNS_TEMPFAIL when it is malformed or
 * memory ran out. Whatever the result, recs may have grown: the holder
 * clears it. */
enum dns_status dns_records_parse(struct dns_records *recs, enum dns_type type,
                                  const unsigned char *abuf, int alen);

/* Whether the A (AF_INET) or AAAA (AF_INET6) answer abuf[0..alen) holds
 * addr's address: DNS_OK, DNS_NOTFOUND (not there, or no address at all),
 * DNS_TEMPFAIL when it is malformed. Allocates nothing. */
enum dns_status dns_records_hold_address(const unsigned char *abuf, int alen,
                                         const struct sockaddr_storage *addr);

/* Frees every record and leaves recs empty. */
void dns_records_clear(struct dns_records *recs);

#endif
