-- Turns the connection's score (what the DNSBL and other entries added) into
-- a tarpit: each listed command waits `per_point_ms` per point of score, at
-- most `max_ms`, and a client at or above `throttle_score` is read at most
-- `throttle` bytes per second. A clean client (score 0) is never slowed.
--
-- Waiting never holds a backend connection: from the first accepted
-- recipient on, a backend session is open, so later recipients are not
-- delayed (and the host lifts the throttle while the backend is held).
--
-- Run it after the DNSBL entry, so the score is known at connect:
-- conf.d/30-score-tarpit.conf:
--   plugin = "lua";
--   script = "/etc/sluice/lua/score_tarpit.lua";
--   timeout = "60s";        # longer than max_ms
--   per_point_ms = 2000;
--   max_ms = 30000;
--   hooks = [ "helo", "mail", "rcpt" ];
--   throttle = 512;         # bytes per second; 0: off
--   throttle_score = 5.0;

local per_point_ms = sluice.option("per_point_ms", 2000)
local max_ms = sluice.option("max_ms", 30000)
local throttle = sluice.option("throttle", 0)
local throttle_score = sluice.option("throttle_score", 5.0)
local hooks = sluice.option("hooks", { "helo", "mail", "rcpt" })

local function delay_ms(s)
    local score = s:score()
    if score <= 0 then
        return 0
    end
    return math.min(math.floor(score * per_point_ms), max_ms)
end

local function slow_down(s)
    if throttle > 0 and s:score() >= throttle_score then
        s:throttle(throttle)
    end
    if s:hook() == "rcpt" and #s:recipients() > 0 then
        return -- a backend connection is open: never hold it
    end
    local ms = delay_ms(s)
    if ms > 0 then
        s:log("debug", string.format("score %.2f: waiting %d ms", s:score(), ms))
        sluice.sleep(ms)
    end
end

for _, hook in ipairs(hooks) do
    if hook ~= "data" and hook ~= "eom" then -- a backend is open by then
        sluice.on(hook, slow_down)
    end
end
