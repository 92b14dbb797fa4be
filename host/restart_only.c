#include "restart_only.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"

/* Every setting named here keeps its running value until a restart; the
 * README's list of restart-only settings is this table. */
static const char *const restart_only_names[] = {
    "listen", "threads", "user", "group", "run_as_root", "store", "thread_pool_size",
    "state_file", NULL,
};

struct text {
    char *out;
    size_t len, used;
    bool full;
};

__attribute__((format(printf, 2, 3))) static void text_add(struct text *t, const char *fmt,
                                                           ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->out + t->used, t->len - t->used, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= t->len - t->used)
        t->full = true;
    else
        t->used += (size_t)n;
}

static const char *or_none(const char *s)
{
    return s ? s : "-";
}

int restart_only_describe(const struct sluice_config *cfg, char *out, size_t outlen)
{
    struct text t = {out, outlen, 0, outlen == 0};
    if (outlen)
        out[0] = '\0';
    for (size_t i = 0; i < cfg->nlistens && !t.full; i++) {
        const struct listen_conf *l = &cfg->listens[i];
        text_add(&t, "listen %s %s proxy_protocol=%d proxy_trusted=%zu\n", l->address, l->port,
                 l->proxy_protocol, netlist_count(l->proxy_trusted));
    }
    text_add(&t, "threads %d\n", cfg->threads);
    text_add(&t, "user %s\n", or_none(cfg->user));
    text_add(&t, "group %s\n", or_none(cfg->group));
    text_add(&t, "run_as_root %d\n", cfg->run_as_root);
    const struct store_conf *st = &cfg->store;
    text_add(&t, "store %s %s %lld %s %lld %d\n", st->backend == STORE_LMDB ? "lmdb" : "redis",
             or_none(st->path), (long long)st->map_size, or_none(st->redis_address),
             (long long)st->redis_timeout_ms, st->redis_database);
    text_add(&t, "thread_pool_size %d\n", cfg->thread_pool_size);
    text_add(&t, "state_file %s\n", or_none(cfg->state_file));
    return t.full ? -1 : 0;
}

/* The lines of text that start with "name ", joined, for comparing. */
static char *lines_of(const char *text, const char *name)
{
    size_t nlen = strlen(name), cap = 1, used = 0;
    char *out = calloc(1, 1);
    for (const char *p = text; out && p && *p;) {
        const char *end = strchr(p, '\n');
        size_t len = end ? (size_t)(end - p) + 1 : strlen(p);
        if (len > nlen && strncmp(p, name, nlen) == 0 && p[nlen] == ' ') {
            char *grown = realloc(out, cap + len);
            if (!grown) {
                free(out);
                return NULL;
            }
            out = grown;
            memcpy(out + used, p, len);
            used += len;
            cap += len;
            out[used] = '\0';
        }
        p += len;
    }
    return out;
}

size_t restart_only_changed(const char *running, const char *next, const char **names,
                            size_t max)
{
    size_t n = 0;
    for (size_t i = 0; restart_only_names[i] && n < max; i++) {
        char *a = lines_of(running, restart_only_names[i]);
        char *b = lines_of(next, restart_only_names[i]);
        if (!a || !b || strcmp(a, b) != 0)
            names[n++] = restart_only_names[i];
        free(a);
        free(b);
    }
    return n;
}

/* The state file's directory (/run/sluice), made by the master when no
 * systemd RuntimeDirectory did: one level only, never a whole path. */
static void make_state_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (slash == NULL || slash == path)
        return;
    char dir[4096];
    if (snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path) >= (int)sizeof dir)
        return;
    (void)mkdir(dir, 0755);
}

int restart_only_write_state(const char *path, const char *text)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.new", path) >= (int)sizeof tmp)
        return -1;
    make_state_dir(path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -1;
    size_t len = strlen(text);
    ssize_t n = write(fd, text, len);
    if (close(fd) < 0 || n != (ssize_t)len || rename(tmp, path) < 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

char *restart_only_read_state(const char *path)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return NULL;
    char *text = calloc(1, RESTART_ONLY_TEXT_MAX);
    if (text) {
        size_t n = fread(text, 1, RESTART_ONLY_TEXT_MAX - 1, f);
        text[n] = '\0';
    }
    fclose(f);
    return text;
}
