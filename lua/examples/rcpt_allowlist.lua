-- Recipient allow-list per domain: for the domains listed, only the listed
-- local parts exist; everything else gets "550 5.1.1". Recipients of other
-- domains pass to the next entry.
--
-- conf.d/30-allowlist.conf:
--   plugin = "lua";
--   script = "/etc/sluice/lua/rcpt_allowlist.lua";
--   domains = ( { domain = "example.com"; users = [ "alice", "bob", "postmaster" ]; } );

local users_of = {}
for _, d in ipairs(sluice.options.domains or {}) do
    local users = {}
    for _, u in ipairs(d.users or {}) do
        users[u:lower()] = true
    end
    users_of[d.domain:lower()] = users
end

sluice.on("rcpt", function(s)
    local lp, domain = sluice.address_parts(s:rcpt())
    local users = domain and users_of[domain]
    if not users then
        return
    end
    if users[lp:lower()] then
        return sluice.accept()
    end
    return sluice.reject(550, "5.1.1", "No such user here")
end)
