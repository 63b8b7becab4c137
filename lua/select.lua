-- select: choose a key of pool P for one upstream attempt.
--
-- KEYS[1]  pool base "kg:{P}"
-- ARGV[1]  now_ms override (0: the server's TIME)
-- ARGV[2]  random integer in [0, 2^53), drawn by the replica (weighted choice, deterministic here)
-- ARGV[3]  route: "bucket" (canary by percent), "canary" (forced), "stable" (forced)
-- ARGV[4]  the request's hash bucket 0..99 (used with route "bucket")
-- ARGV[5..] key ids already tried by this request (excluded)
--
-- Reply, one of:
--   {"key", id, group, fallback 0|1, probe 0|1}
--   {"none", earliest_recovery_ms or -1, now_ms, n_active, n_cooling, n_open, n_half_open,
--    n_disabled, n_draining}
--   {"nopool"}   the pool is not in Redis (lost): the caller syncs it from config and retries.
--
-- Cost: O(log n) in the pool size. Due keys are recovered lazily, at most 8 per call.
-- A half-open key whose probe lease is free is chosen first (one probe at a time, cluster-wide);
-- the lease expires after probe_lease_ms so a dead replica cannot wedge the key.

local meta = redis.call('HMGET', META, 'canary_group', 'canary_percent', 'canary_fallback', 'cap',
  'probe_lease_ms')
if not meta[4] then return {'nopool'} end
local now = clock(ARGV[1])
local rand = tonumber(ARGV[2]) or 0
local route, bucket = ARGV[3], tonumber(ARGV[4]) or 0
local excluded = {}
for i = 5, #ARGV do excluded[ARGV[i]] = true end

recover_due(now, 8)
local canary_group, percent = meta[1] or 'canary', num(meta[2])
local fallback_ok, cap, lease = meta[3] ~= '0', num(meta[4]), num(meta[5])

local function try_probe(g)
  local n = 1
  for _ in pairs(excluded) do n = n + 1 end
  local ids = redis.call('ZRANGEBYSCORE', probe_key(g), '-inf', now, 'LIMIT', 0, n)
  for _, id in ipairs(ids) do
    if not excluded[id] then
      redis.call('ZADD', probe_key(g), now + lease, id)
      return id
    end
  end
  return nil
end

-- Weighted choice over the group's tree; excluded keys' weights are taken out of every node on
-- the descent path instead of being removed from the tree.
local function try_weighted(g)
  if cap < 1 then return nil end
  local tk = tree_key(g)
  local total = num(redis.call('HGET', tk, cap))
  local ex = {}
  for id in pairs(excluded) do
    local k = load_key(id)
    if k and k.group == g and in_tree(k.status, k.weight) then
      ex[#ex + 1] = k
      total = total - k.weight
    end
  end
  if total <= 0 then return nil end
  local rem = math.floor(rand / 9007199254740992 * total)
  local pos, step = 0, cap
  while step >= 1 do
    local nxt = pos + step
    if nxt <= cap then
      local v = num(redis.call('HGET', tk, nxt))
      for _, k in ipairs(ex) do
        if k.slot > pos and k.slot <= nxt then v = v - k.weight end
      end
      if v <= rem then pos, rem = nxt, rem - v end
    end
    step = step / 2
  end
  return redis.call('HGET', SLOTS, pos + 1)
end

local function try_group(g)
  local id = try_probe(g)
  if id then return id, 1 end
  id = try_weighted(g)
  if id then return id, 0 end
  return nil
end

local primary = 'stable'
if route == 'canary' or (route == 'bucket' and bucket < percent) then primary = canary_group end
local id, probe = try_group(primary)
local group, fb = primary, 0
if not id and primary ~= 'stable' and fallback_ok then
  id, probe = try_group('stable')
  group, fb = 'stable', 1
end
if id then return {'key', id, group, fb, probe} end

local earliest = -1
local first = redis.call('ZRANGE', DUE, 0, 0, 'WITHSCORES')
if first[2] then earliest = tonumber(first[2]) end
for _, g in ipairs({primary, 'stable'}) do
  local p = redis.call('ZRANGE', probe_key(g), 0, 0, 'WITHSCORES')
  if p[2] and (earliest < 0 or tonumber(p[2]) < earliest) then earliest = tonumber(p[2]) end
end
local reply = {'none', earliest, now}
for _, c in ipairs(state_counts()) do reply[#reply + 1] = c end
return reply
