-- set_group: an operator's move of one key to another traffic group (e.g. stable <-> canary).
--
-- KEYS[1]  pool base "kg:{P}"
-- ARGV[1]  now_ms override (unused)
-- ARGV[2]  key id
-- ARGV[3]  group name (validated by the caller: "stable" or the pool's canary group)
--
-- Reply: {"ok", group} or {"nopool"} or {"nokey"}.

if redis.call('EXISTS', META) == 0 then return {'nopool'} end
local k = load_key(ARGV[2])
if not k then return {'nokey'} end
set_group(k, ARGV[3])
return {'ok', ARGV[3]}
