-- settle: ends requests on budgeted keys (frees their in-flight lease, replaces their token
-- reservation by real usage) and renews the leases of a replica's live requests. Ended requests
-- normally ride the success batch (report_batch.lua); this script carries them when a replica
-- batches nothing (store.report_flush_ms = 0), and the lease renewals.
--
-- KEYS[1]  pool base "kg:{P}"
-- ARGV[1]  now_ms override (0: the server's TIME)
-- ARGV[2]  n = how many ended requests follow
-- ARGV[3..] n triples: key id, lease id (0: none), token delta (real - reserved, signed)
-- then pairs: key id, lease id to renew (expiry moves to now + lease_ms; a lease already
-- gone, or expired by now, stays gone: an expired lease may still be in its set, which is
-- purged only when counted near a threshold, and the memory store drops it at once)
--
-- Reply: {"ok", now_ms}. Unknown keys are skipped.
-- Cost: per ended request one HMGET, at most one ZREM, two HSETs and, when the key was benched
-- by its budget, the status change that brings it back; per key renewed one ZREMRANGEBYSCORE
-- and two ZADDs (one XX naming all its leases).

local meta = redis.call('HMGET', META, 'mrt', 'lease_ms')
local mrt, lease_ms = num(meta[1]), num(meta[2])
local now = clock(ARGV[1])
local n = tonumber(ARGV[2]) or 0
local i = 3
for _ = 1, n do
  budget_end(ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]) or 0, mrt, now)
  i = i + 3
end
-- Renewals, per key: its expired leases are dropped (they stay gone, as the memory store drops
-- them at once; n_in stays at least the set's size), then one ZADD XX gives every listed lease
-- still in the set the new expiry. The first ZADD makes sure the set is a skiplist (lib.lua
-- KEEP_SORTED).
local until_ms, per, order = int(now + lease_ms), {}, {}
while i + 1 <= #ARGV do
  local id = ARGV[i]
  local l = per[id]
  if not l then
    l = {}
    per[id] = l
    order[#order + 1] = id
  end
  l[#l + 1] = until_ms
  l[#l + 1] = ARGV[i + 1]
  i = i + 2
end
for _, id in ipairs(order) do
  local ik, l = inflight_key(id), per[id]
  redis.call('ZREMRANGEBYSCORE', ik, '-inf', nowstr(now))
  redis.call('ZADD', ik, '+inf', KEEP_SORTED)
  for j = 1, #l, 1024 do redis.call('ZADD', ik, 'XX', unpack(l, j, min(j + 1023, #l))) end
end
return {'ok', now}
