-- rotation_stats: a replica adds what it saw during the current step to the cluster-wide counts.
--
-- KEYS[1]  pool base "kg:{P}"
-- ARGV[1]  the step the counts belong to
-- ARGV[2..] "<group>:<field>", delta pairs (requests, errors, auth_errors, lat_<bucket>)
--
-- Reply: {"ok"} | {"stale"} (no running plan at that step: the counts are dropped).

if redis.call('HGET', ROT, 'state') ~= 'running' or redis.call('HGET', ROT, 'step') ~= ARGV[1] then
  return {'stale'}
end
for i = 2, #ARGV - 1, 2 do
  redis.call('HINCRBY', STATS, ARGV[1] .. ':' .. ARGV[i], tonumber(ARGV[i + 1]) or 0)
end
return {'ok'}
