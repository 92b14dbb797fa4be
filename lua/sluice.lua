-- sluice.lua: the Lua side of the sluice bridge, loaded into every state
-- before the policy script. It receives the `sluice` table the C side built
-- (on, log, dns, sleep, kv_*, redis, options) and adds the conveniences
-- documented in README.md.
local sluice = ...

-- Verdicts ---------------------------------------------------------------

-- reject(code, esc, text) or reject(text)
local function verdict(name)
    return function(code, esc, text)
        if type(code) == "string" and esc == nil and text == nil then
            code, text = nil, code
        end
        return { verdict = name, code = code, esc = esc, text = text }
    end
end

sluice.reject = verdict("reject")
sluice.tempfail = verdict("tempfail")
sluice.disconnect = verdict("disconnect")

function sluice.accept()
    return { verdict = "accept" }
end

function sluice.continue()
    return nil
end

-- A deferred rejection: refuse at every later RCPT ("rcpt", the default) or
-- at DATA ("data"), so the client's log shows the recipients.
function sluice.defer(code, esc, text, when)
    local v = verdict("defer")(code, esc, text)
    v.when = when or "rcpt"
    return v
end

-- Options -------------------------------------------------------------------

function sluice.option(name, default)
    local v = sluice.options[name]
    if v == nil then
        return default
    end
    return v
end

-- Addresses -----------------------------------------------------------------

-- "User@Example.COM" -> "User", "example.com"; nil for a malformed address
-- or the null sender.
function sluice.address_parts(addr)
    if type(addr) ~= "string" then
        return nil
    end
    local lp, domain = addr:match("^(.*)@([^@]+)$")
    if not lp or lp == "" then
        return nil
    end
    return lp, domain:lower()
end

function sluice.domain(addr)
    local _, domain = sluice.address_parts(addr)
    return domain
end

-- A set for membership tests, keys lowered: sluice.set{"a.test", "B.test"}["b.test"]
function sluice.set(list)
    local s = {}
    for _, v in ipairs(list or {}) do
        s[tostring(v):lower()] = true
    end
    return s
end

-- IP addresses ----------------------------------------------------------------

local function ipv4_octets(text)
    local a, b, c, d = text:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
    if not a then
        return nil
    end
    local o = { tonumber(a), tonumber(b), tonumber(c), tonumber(d) }
    for i = 1, 4 do
        if o[i] > 255 then
            return nil
        end
    end
    return o
end

local function ipv6_groups(text)
    if not text:find(":", 1, true) or text:find("[^%x:]") then
        return nil
    end
    local head, tail = text:match("^(.-)::(.*)$")
    local function split(part)
        local g = {}
        for x in part:gmatch("[^:]+") do
            if #x > 4 then
                return nil
            end
            g[#g + 1] = tonumber(x, 16)
        end
        return g
    end
    local groups
    if head then
        local h, t = split(head), split(tail)
        if not h or not t or #h + #t > 7 then
            return nil
        end
        groups = h
        for _ = 1, 8 - #h - #t do
            groups[#groups + 1] = 0
        end
        for _, x in ipairs(t) do
            groups[#groups + 1] = x
        end
    else
        groups = split(text)
        if not groups or #groups ~= 8 then
            return nil
        end
    end
    return groups
end

-- True for "192.0.2.1", "2001:db8::1" and address literals "[192.0.2.1]",
-- "[IPv6:2001:db8::1]" (what a bare-IP HELO looks like).
function sluice.is_ip(text)
    if type(text) ~= "string" then
        return false
    end
    local inner = text:match("^%[(.*)%]$")
    if inner then
        text = inner:gsub("^[Ii][Pp][Vv]6:", "")
    end
    return ipv4_octets(text) ~= nil or ipv6_groups(text) ~= nil
end

-- The DNS name of an address's reverse zone, without the zone:
-- "192.0.2.1" -> "1.2.0.192", IPv6 -> 32 nibbles. nil when not an address.
function sluice.reverse_ip(ip)
    local o = ipv4_octets(ip)
    if o then
        return string.format("%d.%d.%d.%d", o[4], o[3], o[2], o[1])
    end
    local g = ipv6_groups(ip)
    if not g then
        return nil
    end
    local hex = {}
    for i = 1, 8 do
        hex[#hex + 1] = string.format("%04x", g[i])
    end
    return table.concat(hex):reverse():gsub(".", "%0."):sub(1, -2)
end

-- Forward-confirmed reverse DNS of ip: the first PTR name whose A/AAAA
-- records include ip, or nil. Waits (call it from a handler).
function sluice.fcrdns(ip)
    local rev = sluice.reverse_ip(ip)
    if not rev then
        return nil
    end
    local zone = ip:find(":", 1, true) and ".ip6.arpa" or ".in-addr.arpa"
    local names, st = sluice.dns(rev .. zone, "PTR")
    if st ~= "ok" then
        return nil, st
    end
    local qtype = ip:find(":", 1, true) and "AAAA" or "A"
    for _, name in ipairs(names) do
        local addrs = sluice.dns(name, qtype)
        for _, a in ipairs(addrs) do
            if a == ip then
                return (name:gsub("%.$", ""))
            end
        end
    end
    return nil, "notfound"
end

-- Rate limits -------------------------------------------------------------------

-- Counts one event under key in a window ("1h", or milliseconds); true when
-- the count is now above limit. A store failure counts as under the limit.
function sluice.rate_exceeded(key, limit, window)
    local count, st = sluice.kv_incr(key, 1, window)
    if st ~= "ok" then
        return false, nil
    end
    return count > limit, count
end

return sluice
