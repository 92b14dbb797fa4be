/* The pure parts of the DNSBL plugin (no SDK calls), unit-tested on their
 * own: query names, answer classes, code weights, networks, reply text. */
#ifndef DNSBL_PARTS_H
#define DNSBL_PARTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define DNSBL_NAME_MAX 254  /* a query name, with its NUL */
#define DNSBL_REASON_MAX 200 /* a TXT reason quoted in a reply */
#define DNSBL_MAX_ANSWERS 8 /* A records of one answer kept */

/* A return code (or a network of them) of a zone with its weight. */
struct dnsbl_code {
    uint32_t addr; /* host order */
    uint32_t mask;
    double weight;
};

enum dnsbl_answer_class {
    DNSBL_ANSWER_LISTED, /* 127.0.0.0/8 outside the error block */
    DNSBL_ANSWER_BAD,    /* outside 127/8 or 127.255.255.0/24: the list refuses us */
};

/* The reversed form of an address for a query ("4.3.2.1", or 32 nibbles for
 * IPv6; an IPv4-mapped IPv6 address reverses as IPv4). Returns 4 or 6, or -1
 * for another family or a too small buffer. */
int dnsbl_reverse_addr(const struct sockaddr *sa, char *out, size_t outlen);

/* "127.0.0.4" or "127.0.0.0/24" into c (weight untouched). */
bool dnsbl_code_parse(const char *text, struct dnsbl_code *c);
bool dnsbl_code_matches(const struct dnsbl_code *c, uint32_t answer);

/* An A answer in text form into host order; false when not an IPv4 address. */
bool dnsbl_answer_parse(const char *text, uint32_t *addr);
enum dnsbl_answer_class dnsbl_answer_classify(uint32_t addr);

/* The weight a listing adds: with no codes, zone_weight when anything was
 * answered; with codes, the sum of the weights of the codes that match at
 * least one answer. *matched tells whether any code matched. */
double dnsbl_listing_weight(double zone_weight, const struct dnsbl_code *codes, size_t ncodes,
                            const uint32_t *answers, size_t nanswers, bool *matched);


/* A HELO argument or a domain made into a lowercase name fit to prefix a
 * zone (labels of letters, digits, '-' and '_', at least two labels, no
 * address literal, no all-digit last label: "192.0.2.1" is an address).
 * Returns false when it is not such a name. */
bool dnsbl_domain_normalize(const char *in, size_t len, char *out, size_t outlen);
/* The domain of a sender address (after the last '@'), normalized. */
bool dnsbl_sender_domain(const char *sender, size_t len, char *out, size_t outlen);

/* "prefix.zone" into out; false when it does not fit a DNS name. */
bool dnsbl_query_name(const char *prefix, const char *zone, char *out, size_t outlen);

/* Postscreen's wording: "Service unavailable; <what> [<subject>] blocked
 * using <zone>[; <reason>]". what is "client" (the subject is bracketed),
 * "helo name" or "sender domain". Returns the length written. */
size_t dnsbl_reply_text(char *out, size_t outlen, const char *what, const char *subject,
                        const char *zone, const char *reason);

#endif
