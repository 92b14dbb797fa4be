/*
 * sender_domain_policy: the sluice SDK's example plugin.
 *
 * Refuses MAIL FROM senders whose domain is listed in the entry's settings
 * and marks every message it let through with "X-Example-Checked: yes".
 * Read sdk/README.md alongside: it walks through this file.
 *
 *   plugin = "sender_domain_policy";
 *   reject_domains = [ "spam.example" ];
 *   match_subdomains = true;     # also refuse a.spam.example (default)
 */
#define _POSIX_C_SOURCE 200809L

#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <sluice/sluice.h>

#define SDP_MAX_DOMAINS 1000
#define SDP_NOTE_DOMAIN "sender_domain_policy.domain"

/* The entry's state: built by init(), read-only afterwards, so every loop
 * thread may use it without locks. */
struct sdp_entry {
    char **domains; /* lower case */
    size_t ndomains;
    bool match_subdomains;
    sluice_counter *checks;  /* senders looked at */
    sluice_counter *rejects; /* senders refused */
};

static void sdp_fini(sluice_entry *e, void *state)
{
    struct sdp_entry *sdp = state;
    (void)e;
    if (sdp == NULL) {
        return;
    }
    for (size_t i = 0; i < sdp->ndomains; i++) {
        free(sdp->domains[i]);
    }
    free(sdp->domains);
    free(sdp);
}

/* ---- settings ------------------------------------------------------------ */

static int sdp_read_domain(sluice_entry *e, size_t i, char **out, char *err, size_t errlen)
{
    char path[64];
    const char *value = NULL;
    snprintf(path, sizeof(path), "reject_domains.[%zu]", i);
    if (sluice_setting_string(e, path, &value) != 0 || value[0] == '\0'
        || strchr(value, '@') != NULL) {
        snprintf(err, errlen, "line %d: reject_domains must hold domain names, like "
                 "\"spam.example\"", sluice_setting_line(e, "reject_domains"));
        return -1;
    }
    if ((*out = strdup(value)) == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (char *p = *out; *p != '\0'; p++) {
        *p = (char)tolower((unsigned char)*p);
    }
    return 0;
}

static int sdp_read_settings(sluice_entry *e, struct sdp_entry *sdp, char *err, size_t errlen)
{
    static const char *const known[] = {"reject_domains", "match_subdomains", NULL};
    if (sluice_settings_check(e, "", known, err, errlen) < 0) {
        return -1;
    }
    int count = sluice_setting_count(e, "reject_domains");
    if (count < 0 || count > SDP_MAX_DOMAINS) {
        snprintf(err, errlen, "reject_domains: a list of up to %d domains is required, "
                 "e.g. reject_domains = [ \"spam.example\" ];", SDP_MAX_DOMAINS);
        return -1;
    }
    sdp->match_subdomains = true;
    if (sluice_setting_bool(e, "match_subdomains", &sdp->match_subdomains) < 0) {
        snprintf(err, errlen, "line %d: match_subdomains must be true or false",
                 sluice_setting_line(e, "match_subdomains"));
        return -1;
    }
    sdp->domains = calloc((size_t)count + 1, sizeof(*sdp->domains));
    if (sdp->domains == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < (size_t)count; i++) {
        if (sdp_read_domain(e, i, &sdp->domains[i], err, errlen) < 0) {
            return -1;
        }
        sdp->ndomains++;
    }
    return 0;
}

static int sdp_init(sluice_entry *e, void **state, char *err, size_t errlen)
{
    struct sdp_entry *sdp = calloc(1, sizeof(*sdp));
    if (sdp == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (sdp_read_settings(e, sdp, err, errlen) < 0) {
        sdp_fini(e, sdp);
        return -1;
    }
    sdp->checks = sluice_counter_new(e, "sender_checks_total", "MAIL FROM senders checked");
    sdp->rejects = sluice_counter_new(e, "sender_rejects_total", "MAIL FROM senders refused");
    if (sdp->checks == NULL || sdp->rejects == NULL) {
        snprintf(err, errlen, "cannot create the counters");
        sdp_fini(e, sdp);
        return -1;
    }
    sluice_log_entry(e, SLUICE_LOG_INFO, "refusing senders of %zu domain(s)%s", sdp->ndomains,
                     sdp->match_subdomains ? " and their subdomains" : "");
    *state = sdp;
    return 0;
}

/* ---- hooks ---------------------------------------------------------------- */

/* domain is client data: it carries its length and may hold any byte. */
static bool sdp_domain_listed(const struct sdp_entry *sdp, const char *domain, size_t len)
{
    for (size_t i = 0; i < sdp->ndomains; i++) {
        size_t dlen = strlen(sdp->domains[i]);
        if (len == dlen && strncasecmp(domain, sdp->domains[i], len) == 0) {
            return true;
        }
        if (sdp->match_subdomains && len > dlen && domain[len - dlen - 1] == '.'
            && strncasecmp(domain + len - dlen, sdp->domains[i], dlen) == 0) {
            return true;
        }
    }
    return false;
}

/* The domain part of a sender, after its last '@'; NULL when it has none. */
static const char *sdp_sender_domain(const char *sender, size_t len, size_t *dlen)
{
    for (size_t i = len; i > 0; i--) {
        if (sender[i - 1] == '@') {
            *dlen = len - i;
            return sender + i;
        }
    }
    return NULL;
}

/* Tells later entries (a Lua policy, say) which domain was checked. Notes
 * are C strings: a domain holding a NUL byte or longer than a DNS name is
 * not worth one. */
static void sdp_note_domain(sluice_session *s, const char *domain, size_t dlen)
{
    char buf[256];
    if (dlen >= sizeof(buf) || memchr(domain, '\0', dlen) != NULL) {
        return;
    }
    memcpy(buf, domain, dlen);
    buf[dlen] = '\0';
    sluice_note_set_string(s, SLUICE_TRANSACTION, SDP_NOTE_DOMAIN, buf);
}

static enum sluice_verdict sdp_mail(sluice_session *s, void *entry_state, void *thread_state)
{
    const struct sdp_entry *sdp = entry_state;
    size_t len = 0;
    const char *sender = sluice_sender(s, &len);
    (void)thread_state;

    if (sender == NULL || len == 0) {
        return SLUICE_CONTINUE; /* the null sender <> of bounces has no domain */
    }
    sluice_counter_add(sdp->checks, 1);
    size_t dlen = 0;
    const char *domain = sdp_sender_domain(sender, len, &dlen);
    if (domain == NULL) {
        return SLUICE_CONTINUE;
    }
    sdp_note_domain(s, domain, dlen);
    if (!sdp_domain_listed(sdp, domain, dlen)) {
        return SLUICE_CONTINUE;
    }
    sluice_counter_add(sdp->rejects, 1);
    sluice_log(s, SLUICE_LOG_INFO, "refusing sender domain %.*s", (int)dlen, domain);
    sluice_reply(s, 550, "5.7.1", "Mail from %.*s is not accepted here", (int)dlen, domain);
    return SLUICE_REJECT;
}

static enum sluice_verdict sdp_eom(sluice_session *s, void *entry_state, void *thread_state)
{
    (void)entry_state;
    (void)thread_state;
    if (sluice_header_add(s, "X-Example-Checked", "yes") < 0) {
        sluice_log(s, SLUICE_LOG_WARN, "cannot add X-Example-Checked");
    }
    return SLUICE_CONTINUE;
}

SLUICE_PLUGIN = {
    .abi_major = SLUICE_ABI_MAJOR,
    .abi_minor = SLUICE_ABI_MINOR,
    .name = "sender_domain_policy",
    .version = "1.0",
    .init = sdp_init,
    .fini = sdp_fini,
    .hooks = {
        [SLUICE_HOOK_MAIL] = sdp_mail,
        [SLUICE_HOOK_EOM] = sdp_eom,
    },
};
