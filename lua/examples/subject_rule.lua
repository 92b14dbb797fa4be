-- A content rule at end of message: refuse a message whose Subject matches
-- one of the Lua patterns given, or whose first `scan_bytes` of text contain
-- one of the body phrases.
--
-- conf.d/50-subject.conf:
--   plugin = "lua";
--   script = "/etc/sluice/lua/subject_rule.lua";
--   subjects = [ "[Cc]heap [Pp]ills", "^%s*WIN " ];
--   subject_bytes = 256;
--   body_phrases = [ "wire the fee" ];
--   scan_bytes = 65536;
--
-- The sender writes the Subject, the operator the patterns: a pattern with
-- several ".-" or ".*" backtracks, and its cost grows with a power of the
-- subject's length (cubic for "[Ff]ree.-[Mm]oney.-[Nn]ow"). Only the first
-- `subject_bytes` of the Subject are matched, which keeps such a pattern at
-- a few hundred microseconds; the call's budget stops anything worse (the
-- message then gets the entry's on_error). Body phrases are plain text
-- (find(..., 1, true)): linear, no pattern.

local subjects, phrases = {}, {}
for _, p in ipairs(sluice.options.subjects or {}) do
    subjects[#subjects + 1] = p
end
for _, p in ipairs(sluice.options.body_phrases or {}) do
    phrases[#phrases + 1] = p:lower()
end
local scan_bytes = sluice.option("scan_bytes", 65536)
local subject_bytes = sluice.option("subject_bytes", 256)

sluice.on("eom", function(s)
    local subject = (s:header("Subject") or ""):sub(1, subject_bytes)
    for _, pattern in ipairs(subjects) do
        if subject:find(pattern) then
            return sluice.reject(554, "5.7.1", "Message refused by content policy (subject)")
        end
    end
    if #phrases == 0 then
        return
    end
    local text = (s:body(scan_bytes) or ""):lower()
    for _, phrase in ipairs(phrases) do
        if text:find(phrase, 1, true) then
            return sluice.reject(554, "5.7.1", "Message refused by content policy (body)")
        end
    end
end)
