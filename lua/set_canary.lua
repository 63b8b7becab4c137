-- set_canary: an operator's change of the share of traffic routed to the canary group.
--
-- KEYS[1]  pool base "kg:{P}"
-- ARGV[1]  now_ms override (unused)
-- ARGV[2]  percent, integer 0..=100
--
-- Reply: {"ok", percent} or {"nopool"}. Applied by every replica's next select.

if redis.call('EXISTS', META) == 0 then return {'nopool'} end
local p = math.floor(tonumber(ARGV[2]) or -1)
if p < 0 or p > 100 then return redis.error_reply('ERR percent must be 0..=100') end
redis.call('HSET', META, 'canary_percent', p)
bump()
return {'ok', p}
