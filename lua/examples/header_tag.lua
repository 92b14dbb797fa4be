-- Tag every message with a header carrying the session's score and the
-- forward-confirmed name another entry noted, and drop any tag of the same
-- name the sender forged.
--
-- conf.d/90-tag.conf:
--   plugin = "lua";
--   script = "/etc/sluice/lua/header_tag.lua";
--   header = "X-Sluice-Policy";

local header = sluice.option("header", "X-Sluice-Policy")

sluice.on("eom", function(s)
    s:remove_header(header)
    local value = string.format("checked; score=%.1f; client=%s", s:score(), s:ip())
    local name = s:note("helo.fcrdns")
    if name then
        value = value .. "; fcrdns=" .. name
    end
    s:add_header(header, value)
end)
