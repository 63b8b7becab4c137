-- rotation_lease: a replica takes or renews the lease that lets it drive the pool's rotation.
--
-- KEYS[1]  pool base "kg:{P}"
-- ARGV[1]  now_ms override (0: the server's TIME)
-- ARGV[2]  replica id
-- ARGV[3]  the fence the replica holds (0: none)
-- ARGV[4]  lease length, ms
--
-- Reply: {"held", fence, until_ms} the caller holds the lease (taken or renewed) |
--        {"other", holder, fence, until_ms} another replica holds a live lease |
--        {"lost", holder, fence, until_ms} the caller's fence is stale: another replica took
--          the lease since (recorded in the plan's history as a refused renewal) |
--        {"idle"} no running plan: nothing to drive.
-- A renewal with the current fence succeeds even after the lease ran out, as long as nobody
-- took it in between; a lease that ran out is taken with fence + 1.

local now = clock(ARGV[1])
if redis.call('HGET', ROT, 'state') ~= 'running' then return {'idle'} end
local replica, mine, len = ARGV[2], tonumber(ARGV[3]) or 0, tonumber(ARGV[4]) or 0
local l = redis.call('HMGET', LEASE, 'holder', 'until_ms', 'fence')
local holder, until_ms, fence = l[1] or '', tonumber(l[2] or '0'), tonumber(l[3] or '0')
if mine > 0 then
  if holder == replica and fence == mine then
    redis.call('HSET', LEASE, 'until_ms', now + len)
    return {'held', fence, now + len}
  end
  history(now, mine, replica, 'refused', 'renew with a stale fence (lease fence ' .. fence .. ', holder ' .. holder .. ')')
  return {'lost', holder, fence, until_ms}
end
if holder ~= '' and until_ms > now then return {'other', holder, fence, until_ms} end
fence = fence + 1
redis.call('HSET', LEASE, 'holder', replica, 'until_ms', now + len, 'fence', fence)
history(now, fence, replica, 'lease', 'acquired' .. (holder ~= '' and (' after ' .. holder) or ''))
return {'held', fence, now + len}
