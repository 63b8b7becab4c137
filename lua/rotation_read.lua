-- rotation_read: the pool's rotation plan, lease, history and counts, at one moment.
--
-- KEYS[1]  pool base "kg:{P}"
-- ARGV[1]  now_ms override (0: the server's TIME)
--
-- Reply: {now_ms, plan fields (flat name/value), lease fields, history (newest first, at most
-- 50), counts (flat name/value)}. An empty plan list: no plan.

local now = clock(ARGV[1])
return {now, redis.call('HGETALL', ROT), redis.call('HGETALL', LEASE),
  redis.call('LRANGE', HIST, 0, 49), redis.call('HGETALL', STATS)}
