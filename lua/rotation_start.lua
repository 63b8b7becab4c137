-- rotation_start: an operator starts a rotation plan (keygate rotate start).
--
-- KEYS[1]  pool base "kg:{P}"
-- ARGV[1]  now_ms override (0: the server's TIME)
-- ARGV[2]  plan id
-- ARGV[3]  new key ids, comma-separated (each must be in the pool's canary group)
-- ARGV[4]  old key ids, comma-separated (each must be in the stable group)
-- ARGV[5]  steps: canary percents, comma-separated, rising, the last 100
-- ARGV[6..] further plan fields as name, value pairs (min_requests, min_dwell_ms, ...)
--
-- Reply: {"ok", first percent} | {"nopool"} | {"busy", state} (a plan is running or paused) |
--        {"badkey", id, why}.
-- Effect: the plan at step 0 (state running), the step's counters cleared, the canary percent
-- set to the first step, one history entry.

if redis.call('EXISTS', META) == 0 then return {'nopool'} end
local now = clock(ARGV[1])
local state = redis.call('HGET', ROT, 'state')
if state == 'running' or state == 'paused' then return {'busy', state} end
local canary_group = redis.call('HGET', META, 'canary_group') or 'canary'
for id in string.gmatch(ARGV[3], '[^,]+') do
  local g = redis.call('HGET', kkey(id), 'group')
  if not g then return {'badkey', id, 'unknown key'} end
  if g ~= canary_group then return {'badkey', id, 'not in the canary group ' .. canary_group} end
end
for id in string.gmatch(ARGV[4], '[^,]+') do
  local g = redis.call('HGET', kkey(id), 'group')
  if not g then return {'badkey', id, 'unknown key'} end
  if g == canary_group then return {'badkey', id, 'an old key must not be in the canary group'} end
end
local first = tonumber(string.match(ARGV[5], '^(%d+)'))
if not first then return redis.error_reply('ERR steps must start with a number') end
redis.call('DEL', ROT, STATS)
redis.call('HSET', ROT, 'id', ARGV[2], 'state', 'running', 'new_keys', ARGV[3],
  'old_keys', ARGV[4], 'steps', ARGV[5], 'step', 0, 'step_started_ms', now, 'reason', '',
  'started_ms', now, 'updated_ms', now)
for i = 6, #ARGV - 1, 2 do redis.call('HSET', ROT, ARGV[i], ARGV[i + 1]) end
set_canary_percent(first)
local fence = tonumber(redis.call('HGET', LEASE, 'fence') or '0')
history(now, fence, 'admin', 'start', 'new=' .. ARGV[3] .. ' old=' .. ARGV[4] .. ' steps=' .. ARGV[5] .. ' percent=' .. first)
return {'ok', first}
