#include "fd_limits.h"

#include <stdio.h>
#include <sys/resource.h>

#include "config.h"
#include "log.h"

void fd_budget_of(const struct sluice_config *cfg, struct fd_budget *out)
{
    *out = (struct fd_budget){0};
    out->unbounded_sessions = cfg->connections.max_sessions == 0;
    out->sessions = 2 * (long)cfg->connections.max_sessions;
    for (size_t i = 0; i < cfg->npools; i++)
        out->backends += cfg->pools[i].max_connections;
    for (size_t i = 0; i < cfg->nentries; i++)
        if (cfg->entries[i].enabled)
            out->plugins += FD_BUDGET_PER_ENTRY * (long)cfg->threads;
    out->fixed = FD_BUDGET_PROCESS +
                 (long)cfg->threads * (FD_BUDGET_PER_THREAD + (long)cfg->nlistens);
    out->total = out->sessions + out->backends + out->plugins + out->fixed;
}

int fd_limit_fit(long need, struct fd_limit *out)
{
    struct rlimit rl;
    *out = (struct fd_limit){0};
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return -1;
    out->before = out->soft = (unsigned long)rl.rlim_cur;
    out->hard = (unsigned long)rl.rlim_max;
    if (rl.rlim_cur != RLIM_INFINITY && (long long)rl.rlim_cur < need) {
        /* Linux refuses an unlimited descriptor limit: ask for what is needed. */
        struct rlimit want = {.rlim_cur = rl.rlim_max == RLIM_INFINITY ? (rlim_t)need : rl.rlim_max,
                              .rlim_max = rl.rlim_max};
        if (want.rlim_cur > rl.rlim_cur && setrlimit(RLIMIT_NOFILE, &want) == 0) {
            out->soft = (unsigned long)want.rlim_cur;
            out->raised = true;
        }
    }
    out->fits = out->soft == (unsigned long)RLIM_INFINITY || (long long)out->soft >= need;
    return 0;
}

bool fd_limits_check(const struct sluice_config *cfg, const char *who)
{
    struct fd_budget b;
    struct fd_limit l;
    fd_budget_of(cfg, &b);
    if (fd_limit_fit(b.total, &l) < 0) {
        log_warn(NULL, "%s: cannot read the descriptor limit (RLIMIT_NOFILE)", who);
        return false;
    }
    if (l.raised)
        log_info(NULL, "%s: descriptor limit raised from %lu to %lu", who, l.before, l.soft);
    char parts[200];
    snprintf(parts, sizeof parts,
             "max_sessions %ld x 2 = %ld, pools %ld, plugins %ld, threads and process %ld",
             b.sessions / 2, b.sessions, b.backends, b.plugins, b.fixed);
    if (!l.fits) {
        log_warn(NULL, "%s: the configuration may need %ld descriptors (%s) but RLIMIT_NOFILE "
                 "is %lu (hard %lu): at the limit new clients get 421 4.3.2; raise the limit "
                 "(LimitNOFILE= in systemd) or lower connections.max_sessions",
                 who, b.total, parts, l.soft, l.hard);
    } else {
        log_info(NULL, "%s: descriptors: up to %ld needed (%s), limit %lu", who, b.total, parts,
                 l.soft);
    }
    if (b.unbounded_sessions)
        log_warn(NULL, "%s: connections.max_sessions = 0: sessions are bounded only by the "
                 "descriptor limit %lu (about %ld sessions)", who, l.soft,
                 ((long)l.soft - b.backends - b.plugins - b.fixed) / 2);
    return l.fits;
}
