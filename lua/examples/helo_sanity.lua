-- HELO sanity: refuse a bare IP address as HELO name (an address literal
-- "[192.0.2.1]" must be the client's own address), and ask for
-- forward-confirmed reverse DNS of the client (PTR, then A/AAAA back to the
-- address) unless the client is trusted.
--
-- conf.d/15-helo.conf:
--   plugin = "lua";
--   script = "/etc/sluice/lua/helo_sanity.lua";
--   require_fcrdns = true;   # false: only note the name ("helo.fcrdns")

local require_fcrdns = sluice.option("require_fcrdns", true)

sluice.on("helo", function(s)
    local helo = s:helo() or ""
    if s:trusted() then
        return
    end
    local literal = helo:match("^%[(.*)%]$")
    if literal then
        literal = literal:gsub("^[Ii][Pp][Vv]6:", "")
        if literal ~= s:ip() then
            return sluice.reject(550, "5.7.1", "HELO address literal is not your address")
        end
    elseif sluice.is_ip(helo) then
        return sluice.reject(550, "5.7.1", "Bare IP address as HELO name; use a name or [literal]")
    end

    -- The host confirmed the client's first PTR name at connect: when that
    -- passed, nothing more to ask. Otherwise try every PTR name, as a
    -- client may have several and only one confirm.
    local name, status = s:hostname(), nil
    if not name then
        name, status = sluice.fcrdns(s:ip())
    end
    if name then
        s:set_note("helo.fcrdns", name)
        return
    end
    if not require_fcrdns then
        return
    end
    if status == "tempfail" then
        return sluice.tempfail(450, "4.7.25", "Reverse DNS lookup failed, try again later")
    end
    return sluice.reject(550, "5.7.25", "No forward-confirmed reverse DNS for " .. s:ip())
end)
