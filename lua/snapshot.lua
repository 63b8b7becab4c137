-- snapshot: every key of pool P with its state, for metrics and the admin API.
--
-- KEYS[1]  pool base "kg:{P}"
-- ARGV[1]  now_ms override (0: the server's TIME)
--
-- Reply: a JSON string {"now_ms", "canary_group", "canary_percent", "keys": [{id, status, reason,
--   weight, group, errors, strikes, cooldown_until_ms, last_status, last_used_ms, successes,
--   failures}]}, or {"nopool"}.
-- Recovers every due key first (so no key shows "cooling" past its deadline). O(pool size):
-- meant for cached scrapes and admin calls, never per request.

if redis.call('EXISTS', META) == 0 then return {'nopool'} end
local now = clock(ARGV[1])
recover_due(now, 1000000)
local meta = redis.call('HMGET', META, 'canary_group', 'canary_percent')
local keys = {}
local F = {'status', 'reason', 'weight', 'group', 'errors', 'strikes', 'cooldown_until_ms',
  'last_status', 'last_used_ms', 'successes', 'failures'}
local ids = redis.call('SMEMBERS', B .. ':keys')
table.sort(ids)
for _, id in ipairs(ids) do
  local v = redis.call('HMGET', kkey(id), unpack(F))
  if v[1] then
    keys[#keys + 1] = {id = id, status = v[1], reason = v[2] or '', weight = num(v[3]),
      group = v[4] or 'stable', errors = num(v[5]), strikes = num(v[6]),
      cooldown_until_ms = num(v[7]), last_status = num(v[8]), last_used_ms = num(v[9]),
      successes = num(v[10]), failures = num(v[11])}
  end
end
local out = {now_ms = now, canary_group = meta[1] or 'canary', canary_percent = num(meta[2]),
  keys = keys}
if #keys == 0 then
  return (cjson.encode(out):gsub('"keys":{}', '"keys":[]'))
end
return cjson.encode(out)
