-- set_weight: an operator's change of one key's weight (0 = never selected).
--
-- KEYS[1]  pool base "kg:{P}"
-- ARGV[1]  now_ms override (unused)
-- ARGV[2]  key id
-- ARGV[3]  weight, integer 0..=1000 (checked by the caller)
--
-- Reply: {"ok", weight} or {"nopool"} or {"nokey"}.

if redis.call('EXISTS', META) == 0 then return {'nopool'} end
local k = load_key(ARGV[2])
if not k then return {'nokey'} end
local w = math.floor(tonumber(ARGV[3]) or -1)
if w < 0 or w > 1000 then return redis.error_reply('ERR weight must be 0..=1000') end
set_weight(k, w)
return {'ok', w}
