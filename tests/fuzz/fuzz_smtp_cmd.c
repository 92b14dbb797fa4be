/* Command lines, MAIL/RCPT paths and parameters, HELO names, xtext. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "smtp_cmd.h"

static bool inside(const char *p, size_t n, const char *base, size_t len)
{
    return p >= base && p + n <= base + len;
}

static void check_path(const char *arg, size_t len, bool is_rcpt, bool utf8)
{
    struct smtp_path path;
    if (smtp_path_parse(arg, len, is_rcpt, utf8, &path) != SMTP_PATH_OK)
        return;
    if (path.addr_len > 0 && !inside(path.addr, path.addr_len, arg, len))
        abort();
    if (path.addr_len > 254 || path.nparams > SMTP_MAX_PARAMS)
        abort();
    for (size_t i = 0; i < path.nparams; i++) {
        const struct smtp_param *prm = &path.params[i];
        if (!inside(prm->key, prm->key_len, arg, len) || prm->key_len == 0)
            abort();
        if (prm->value && !inside(prm->value, prm->value_len, arg, len))
            abort();
    }
    size_t dlen;
    const char *dom = smtp_addr_domain(path.addr, path.addr_len, &dlen);
    if (dlen > 0 && !inside(dom, dlen, path.addr, path.addr_len))
        abort();
    struct mail_params mp;
    struct rcpt_params rp;
    if (smtp_mail_params(&path, &mp) == SMTP_PARAM_OK && strlen(mp.envid) > 100)
        abort();
    if (smtp_rcpt_params(&path, &rp) == SMTP_PARAM_OK && strlen(rp.orcpt) > 500)
        abort();
}

static void check_xtext(const char *in, size_t len)
{
    char out[256];
    int n = smtp_xtext_encode(in, len, out, sizeof out);
    if (n < 0)
        return;
    if ((size_t)n != strlen(out))
        abort();
    for (int i = 0; i < n; i++) {
        if (out[i] < 33 || out[i] > 126 || out[i] == '=')
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *line = (const char *)data;
    struct smtp_cmd cmd;
    if (smtp_cmd_parse(line, size, &cmd) == 0) {
        if (!inside(cmd.arg, cmd.arg_len, line, size))
            abort();
        (void)smtp_verb_name(cmd.verb);
        (void)smtp_helo_valid(cmd.arg, cmd.arg_len);
    }
    check_path(line, size, false, false);
    check_path(line, size, true, true);
    (void)smtp_path_has_smtputf8(line, size);
    check_xtext(line, size);
    return 0;
}
