-- A content rule at end of message: refuse a message whose Subject matches
-- one of the Lua patterns given, or whose first `scan_bytes` of text contain
-- one of the body phrases.
--
-- conf.d/50-subject.conf:
--   plugin = "lua";
--   script = "/etc/sluice/lua/subject_rule.lua";
--   subjects = [ "[Cc]heap [Pp]ills", "^%s*WIN " ];
--   body_phrases = [ "wire the fee" ];
--   scan_bytes = 65536;

local subjects, phrases = {}, {}
for _, p in ipairs(sluice.options.subjects or {}) do
    subjects[#subjects + 1] = p
end
for _, p in ipairs(sluice.options.body_phrases or {}) do
    phrases[#phrases + 1] = p:lower()
end
local scan_bytes = sluice.option("scan_bytes", 65536)

sluice.on("eom", function(s)
    local subject = s:header("Subject") or ""
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
