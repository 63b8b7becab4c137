-- rotation_write: the driving replica changes its running plan (and the canary percent), fenced.
--
-- KEYS[1]  pool base "kg:{P}"
-- ARGV[1]  now_ms override (0: the server's TIME)
-- ARGV[2]  replica id
-- ARGV[3]  the replica's fence
-- ARGV[4]  canary percent to set, or -1 to leave it
-- ARGV[5]  event (advance | rollback | finish | done), for the history
-- ARGV[6]  detail, for the history
-- ARGV[7..] plan fields as name, value pairs ("step_started_ms" with value "now": the clock)
--
-- Reply: {"ok"} | {"noplan"} | {"fenced", lease fence, holder} (refused and recorded: the
-- caller no longer holds a live lease with this fence, or the plan is not running).

local now = clock(ARGV[1])
local state = redis.call('HGET', ROT, 'state')
if not state then return {'noplan'} end
local replica, fence = ARGV[2], tonumber(ARGV[3]) or 0
local l = redis.call('HMGET', LEASE, 'holder', 'until_ms', 'fence')
local holder, until_ms, lfence = l[1] or '', tonumber(l[2] or '0'), tonumber(l[3] or '0')
if state ~= 'running' or holder ~= replica or lfence ~= fence or until_ms <= now then
  history(now, fence, replica, 'refused', ARGV[5] .. ' (plan ' .. state .. ', lease fence ' .. lfence .. ', holder ' .. holder .. ')')
  return {'fenced', lfence, holder}
end
for i = 7, #ARGV - 1, 2 do
  local v = ARGV[i + 1]
  if v == 'now' then v = now end
  redis.call('HSET', ROT, ARGV[i], v)
end
redis.call('HSET', ROT, 'updated_ms', now)
local p = tonumber(ARGV[4]) or -1
if p >= 0 and redis.call('EXISTS', META) == 1 then set_canary_percent(p) end
history(now, fence, replica, ARGV[5], ARGV[6])
return {'ok'}
