-- keygate shared Lua library: prepended to every script in this folder (see src/store/scripts.rs).
--
-- Key schema for pool P with prefix kg (KEYS[1] of every script is the pool base "kg:{P}";
-- every key below is derived from it, so all of them hash to the same Cluster slot):
--   kg:{P}:meta            hash   policy (*_ms), canary_group, canary_percent, canary_percent_cfg,
--                                 canary_fallback, next_slot, cap, config_hash, cnt:<state>
--   kg:{P}:key:<id>        hash   status reason weight group errors strikes cooldown_until_ms
--                                 last_status last_used_ms successes failures slot
--                                 window_start_ms open_ms cfg_weight cfg_group
--   kg:{P}:keys            set    every key id the pool has held
--   kg:{P}:groups          set    every group that has a weight tree
--   kg:{P}:slots           hash   slot number -> key id
--   kg:{P}:tree:<group>    hash   Fenwick tree over slots 1..cap: node -> summed weight of the
--                                 group's selectable keys (status active, weight > 0)
--   kg:{P}:due             zset   key id -> deadline ms, for cooling, open and quota-disabled keys
--   kg:{P}:probe:<group>   zset   half-open key id -> probe lease expiry ms (0: no probe running)
-- Invariant: a key's weight is in its group's tree iff status == active and weight > 0.

local B = KEYS[1]
local META = B .. ':meta'
local DUE = B .. ':due'
local SLOTS = B .. ':slots'

local function kkey(id) return B .. ':key:' .. id end
local function tree_key(g) return B .. ':tree:' .. g end
local function probe_key(g) return B .. ':probe:' .. g end

-- Server clock in ms, or the caller's virtual clock when it passes one (> 0).
local function clock(arg)
  local v = tonumber(arg) or 0
  if v > 0 then return v end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function num(v) return tonumber(v) or 0 end

local function lowbit(i) return bit.band(i, -i) end

local function tree_add(g, slot, delta)
  if delta == 0 or slot <= 0 then return end
  local cap = num(redis.call('HGET', META, 'cap'))
  local tk = tree_key(g)
  local i = slot
  while i <= cap do
    redis.call('HINCRBY', tk, i, delta)
    i = i + lowbit(i)
  end
end

-- Loads the fields the transitions need into a Lua table.
local FIELDS = {'status', 'reason', 'weight', 'group', 'errors', 'strikes', 'cooldown_until_ms',
  'slot', 'window_start_ms', 'open_ms'}
local function load_key(id)
  local v = redis.call('HMGET', kkey(id), unpack(FIELDS))
  if not v[1] then return nil end
  return {id = id, status = v[1], reason = v[2] or '', weight = num(v[3]), group = v[4] or 'stable',
    errors = num(v[5]), strikes = num(v[6]), cooldown_until_ms = num(v[7]), slot = num(v[8]),
    window_start_ms = num(v[9]), open_ms = num(v[10])}
end

local function in_tree(status, weight) return status == 'active' and weight > 0 end

-- The one place a key's status changes: keeps the weight trees, the probe sets, the due index
-- and the per-state counters consistent with the key hash.
-- deadline: ms for cooling/open/disabled(quota); nil clears the key from the due index.
local function set_status(k, status, reason, deadline)
  local old = k.status
  local was, now_in = in_tree(old, k.weight), in_tree(status, k.weight)
  if was and not now_in then tree_add(k.group, k.slot, -k.weight)
  elseif now_in and not was then tree_add(k.group, k.slot, k.weight) end
  if old ~= status then
    redis.call('HINCRBY', META, 'cnt:' .. old, -1)
    redis.call('HINCRBY', META, 'cnt:' .. status, 1)
    if old == 'half_open' then redis.call('ZREM', probe_key(k.group), k.id) end
    if status == 'half_open' then redis.call('ZADD', probe_key(k.group), 0, k.id) end
  end
  if deadline then
    redis.call('ZADD', DUE, deadline, k.id)
  else
    redis.call('ZREM', DUE, k.id)
  end
  k.status, k.reason = status, reason
  redis.call('HSET', kkey(k.id), 'status', status, 'reason', reason,
    'cooldown_until_ms', deadline or 0)
end

-- Moves keys whose deadline has passed to their next state: cooling -> active,
-- open -> half_open, disabled(quota) -> active. At most `limit` keys per call.
local function recover_due(now, limit)
  local ids = redis.call('ZRANGEBYSCORE', DUE, '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do
    local k = load_key(id)
    if not k then
      redis.call('ZREM', DUE, id)
    elseif k.status == 'cooling' or (k.status == 'disabled' and k.reason == 'quota') then
      set_status(k, 'active', '', nil)
    elseif k.status == 'open' then
      set_status(k, 'half_open', 'breaker', nil)
    else
      redis.call('ZREM', DUE, id)
    end
  end
  return #ids
end

local STATES = {'active', 'cooling', 'open', 'half_open', 'disabled', 'draining'}
local function state_counts()
  local f = {}
  for i, s in ipairs(STATES) do f[i] = 'cnt:' .. s end
  local v = redis.call('HMGET', META, unpack(f))
  local out = {}
  for i = 1, #STATES do out[i] = num(v[i]) end
  return out
end

-- Grows every group's tree so that `slot` fits. A Fenwick tree over 1..2c extends one over 1..c
-- by setting node 2c to the old total: every other new node covers only empty slots.
local function ensure_capacity(slot)
  local cap = num(redis.call('HGET', META, 'cap'))
  if cap < 1 then cap = 1 end
  while cap < slot do
    for _, g in ipairs(redis.call('SMEMBERS', B .. ':groups')) do
      local total = redis.call('HGET', tree_key(g), cap)
      if total then redis.call('HSET', tree_key(g), cap * 2, total) end
    end
    cap = cap * 2
  end
  redis.call('HSET', META, 'cap', cap)
end

-- Moves a key to another group (weight tree and probe set follow).
local function set_group(k, g)
  if g == k.group then return end
  redis.call('SADD', B .. ':groups', g)
  if in_tree(k.status, k.weight) then
    tree_add(k.group, k.slot, -k.weight)
    tree_add(g, k.slot, k.weight)
  end
  if k.status == 'half_open' then
    redis.call('ZREM', probe_key(k.group), k.id)
    redis.call('ZADD', probe_key(g), 0, k.id)
  end
  k.group = g
  redis.call('HSET', kkey(k.id), 'group', g)
end

local function set_weight(k, w)
  if in_tree(k.status, k.weight) then tree_add(k.group, k.slot, -k.weight) end
  k.weight = w
  if in_tree(k.status, w) then tree_add(k.group, k.slot, w) end
  redis.call('HSET', kkey(k.id), 'weight', w)
end
