-- reset: an operator's reset of one key's counters (errors, strikes, successes, failures).
--
-- KEYS[1]  pool base "kg:{P}"
-- ARGV[1]  now_ms override (unused)
-- ARGV[2]  key id
--
-- Reply: {"ok"} or {"nopool"} or {"nokey"}. The key's status is left as it is.

if redis.call('EXISTS', META) == 0 then return {'nopool'} end
local k = load_key(ARGV[2])
if not k then return {'nokey'} end
redis.call('HSET', kkey(k.id), 'errors', 0, 'strikes', 0, 'successes', 0, 'failures', 0,
  'window_start_ms', 0)
bump()
return {'ok'}
