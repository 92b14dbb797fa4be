-- Per-sender rate limit through the store: at most `limit` transactions per
-- sender address per `window`; over it, MAIL FROM gets "451 4.7.1". The
-- counter is one kv_incr with a TTL, so it expires on its own. A store
-- failure lets mail through (fail open).
--
-- conf.d/40-ratelimit.conf:
--   plugin = "lua";
--   script = "/etc/sluice/lua/rate_limit.lua";
--   limit = 100;
--   window = "1h";

local limit = sluice.option("limit", 100)
local window = sluice.option("window", "1h")

sluice.on("mail", function(s)
    local sender = s:sender()
    if sender == nil or sender == "" or s:trusted() then
        return
    end
    local over, count = sluice.rate_exceeded("lua.rate:" .. sender:lower(), limit, window)
    if over then
        s:log("info", "rate limit: " .. sender .. " sent " .. count .. " in " .. window)
        return sluice.tempfail(451, "4.7.1", "Too many messages from this sender, slow down")
    end
end)
