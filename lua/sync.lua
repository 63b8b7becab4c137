-- sync: create pool P from config, or bring its settings up to date, keeping live key state.
--
-- KEYS[1]  pool base "kg:{P}"
-- ARGV[1]  config fingerprint (a hash of everything below; equal fingerprint: nothing to do)
-- ARGV[2..8]  cooldown_default_ms cooldown_max_ms breaker_errors breaker_window_ms
--             breaker_open_ms quota_cooldown_ms probe_lease_ms
-- ARGV[9]  canary group   ARGV[10] canary percent from config   ARGV[11] canary fallback 0|1
-- ARGV[12..16]  budgets 0|1, max_wait_ms, lease_ms, max request tokens, learn 0|1 (README
--             "Budgets"; without learn, limits learned before are dropped)
-- ARGV[17..] groups of 8: key id, weight, group, rpm, tpm, max_concurrent, rpd, tpd (0: no
--            limit) — every key of the pool's config, in config order
--
-- Reply: {"unchanged"} or {"synced", created, updated, removed}.
--
-- Safe with many replicas at once: the script is atomic and idempotent. Live state (status,
-- deadlines, counters) is never reset. Weight, group and canary percent follow the config only
-- when the config's value changed since the last sync (cfg_weight / cfg_group /
-- canary_percent_cfg), so an operator's runtime change survives replica restarts until the
-- config itself changes. Keys missing from the config go to draining (reason "removed") and come
-- back to active if they return to the config.
--
-- A pool written by an older keygate is converted once, even when its config is unchanged:
-- layout missing (Fenwick trees kg:{P}:tree:<g>, kg:{P}:slots): the class sets are built from
-- the key hashes and the old keys are deleted; layout missing or 'cls1' (a key's budget in
-- twelve fields b_rpm ... n_in): each key's budget moves into its entry of kg:{P}:budget
-- (lib.lua, "Budgets"), schedules and learned limits kept; layout before cls3: meta's sel (the
-- select call's settings, packed) is written, as every sync writes it; layout before cls4: the
-- class sets, their counts (kg:{P}:clsn:<g>) and the per-state counts (meta cnt:<state>) are
-- rebuilt from the key hashes (at the end). A coalesced select call before cls4 that reserved a
-- key's slot and benched it went on drawing it from its copy of the class set and benched it
-- again, each time taking one from the counts: a pool then drew from fewer keys than it held.

local hm = redis.call('HMGET', META, 'config_hash', 'layout')
if hm[1] == ARGV[1] and hm[2] == LAYOUT then return {'unchanged'} end
local created, updated, removed = 0, 0, 0
local fresh = redis.call('EXISTS', META) == 0
if not fresh and not hm[2] then
  for _, g in ipairs(redis.call('SMEMBERS', B .. ':groups')) do
    redis.call('DEL', B .. ':tree:' .. g)
  end
  redis.call('DEL', B .. ':groups', B .. ':slots')
  redis.call('HDEL', META, 'cap', 'next_slot')
  for _, id in ipairs(redis.call('SMEMBERS', B .. ':keys')) do
    local k = load_key(id)
    if k then
      redis.call('HDEL', kkey(id), 'slot')
      if selectable(k.status, k.weight) then cls_move(k.group, id, k.weight, 1) end
    end
  end
end
if not fresh and (not hm[2] or hm[2] == 'cls1') then
  local old = {'b_rpm', 'b_tpm', 'b_conc', 'b_rpd', 'b_tpd', 'l_rpm', 'l_tpm', 'tat_r', 'tat_rd',
    'tat_t', 'tat_td', 'n_in'}
  for _, id in ipairs(redis.call('SMEMBERS', B .. ':keys')) do
    local o = redis.call('HMGET', kkey(id), unpack(old))
    local any = false
    for j = 1, #old do any = any or o[j] ~= false end
    if any then
      local b = budget_of(nil)
      b[CFG_RPM], b[CFG_TPM], b[CONC], b[RPD], b[TPD] =
        num(o[1]), num(o[2]), num(o[3]), num(o[4]), num(o[5])
      b[L_RPM], b[L_TPM], b[TAT_R], b[TAT_RD], b[TAT_T], b[TAT_TD] =
        num(o[6]), num(o[7]), num(o[8]), num(o[9]), num(o[10]), num(o[11])
      b[N_IN] = o[12] and tonumber(o[12]) or -1
      bsave(id, b)
      redis.call('HDEL', kkey(id), unpack(old))
    end
  end
end
redis.call('HSET', META, 'layout', LAYOUT)
redis.call('HSET', META, 'cooldown_default_ms', ARGV[2], 'cooldown_max_ms', ARGV[3],
  'breaker_errors', ARGV[4], 'breaker_window_ms', ARGV[5], 'breaker_open_ms', ARGV[6],
  'quota_cooldown_ms', ARGV[7], 'probe_lease_ms', ARGV[8], 'canary_group', ARGV[9],
  'canary_fallback', ARGV[11], 'budgets', ARGV[12], 'max_wait_ms', ARGV[13],
  'lease_ms', ARGV[14], 'mrt', ARGV[15], 'learn', ARGV[16],
  'sel', struct.pack(SEL_FMT, num(ARGV[11]), num(ARGV[8]), num(ARGV[12]), num(ARGV[13]),
    num(ARGV[14]), num(ARGV[15]), ARGV[9]))
if redis.call('HGET', META, 'canary_percent_cfg') ~= ARGV[10] then
  redis.call('HSET', META, 'canary_percent', ARGV[10], 'canary_percent_cfg', ARGV[10])
end

local in_config = {}
for i = 17, #ARGV, 8 do
  local id, w, g = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  in_config[id] = true
  -- The key's configured limits go into its budget entry (learned ones dropped without learn);
  -- a key that never had limits gets no entry.
  local packed = redis.call('HGET', BUDGETS, id)
  local b = budget_of(packed)
  b[CFG_RPM], b[CFG_TPM], b[CONC], b[RPD], b[TPD] = num(ARGV[i + 3]), num(ARGV[i + 4]),
    num(ARGV[i + 5]), num(ARGV[i + 6]), num(ARGV[i + 7])
  if ARGV[16] ~= '1' then b[L_RPM], b[L_TPM] = 0, 0 end
  if packed or b[CFG_RPM] + b[CFG_TPM] + b[CONC] + b[RPD] + b[TPD] + b[L_RPM] + b[L_TPM] > 0 then
    bsave(id, b)
  end
  local k = load_key(id)
  if not k then
    redis.call('HSET', kkey(id), 'status', 'active', 'reason', '', 'weight', w, 'group', g,
      'errors', 0, 'strikes', 0, 'cooldown_until_ms', 0, 'last_status', 0, 'last_used_ms', 0,
      'successes', 0, 'failures', 0, 'window_start_ms', 0, 'open_ms', 0,
      'cfg_weight', w, 'cfg_group', g)
    redis.call('SADD', B .. ':keys', id)
    redis.call('HINCRBY', META, 'cnt:active', 1)
    cls_move(g, id, w, 1)
    created = created + 1
  else
    local cfg = redis.call('HMGET', kkey(id), 'cfg_weight', 'cfg_group')
    local touched = false
    if tonumber(cfg[1]) ~= w then
      set_weight(k, w)
      redis.call('HSET', kkey(id), 'cfg_weight', w)
      touched = true
    end
    if cfg[2] ~= g then
      set_group(k, g)
      redis.call('HSET', kkey(id), 'cfg_group', g)
      touched = true
    end
    if k.status == 'draining' and k.reason == 'removed' then
      set_status(k, 'active', '', nil)
      touched = true
    end
    if touched then updated = updated + 1 end
  end
end
for _, id in ipairs(redis.call('SMEMBERS', B .. ':keys')) do
  if not in_config[id] then
    local k = load_key(id)
    if k and k.status ~= 'draining' then
      set_status(k, 'draining', 'removed', nil)
      removed = removed + 1
    end
  end
end

-- The class sets, their counts and the per-state counts, made again from the key hashes
-- (lib.lua's invariant: a key is in the class set of its group and weight iff selectable), once:
-- a coalesced select call before layout cls4 could leave the counts short (above). Not at every
-- sync: at 10,000 keys it adds 70-90 ms to a sync's 150-200 ms (BENCHMARKS.md, "Selection at
-- 10,000 keys, with budgets, and a pool that drew from fewer keys than it held").
if not fresh and hm[2] ~= LAYOUT then
  local per_group, states, named = {}, {}, {stable = true, [ARGV[9]] = true}
  for _, id in ipairs(redis.call('SMEMBERS', B .. ':keys')) do
    local k = load_key(id)
    if k then
      states[k.status] = (states[k.status] or 0) + 1
      named[k.group] = true
      if selectable(k.status, k.weight) then
        local c = wclass(k.weight)
        local n = per_group[k.group] or {total = 0, ids = {}}
        per_group[k.group] = n
        n[c] = (n[c] or 0) + 1
        n.total = n.total + k.weight
        n.ids[id] = c
        redis.call('ZADD', cls_key(k.group, c), k.weight, id)
      end
    end
  end
  for g in pairs(named) do
    local n = per_group[g] or {total = 0, ids = {}}
    local fields = {'total', n.total}
    for c = 0, 9 do
      for _, id in ipairs(redis.call('ZRANGE', cls_key(g, c), 0, -1)) do
        if n.ids[id] ~= c then redis.call('ZREM', cls_key(g, c), id) end
      end
      if n[c] then
        fields[#fields + 1] = tostring(c)
        fields[#fields + 1] = n[c]
      end
    end
    redis.call('DEL', clsn_key(g))
    redis.call('HSET', clsn_key(g), unpack(fields))
  end
  for _, st in ipairs(STATES) do
    redis.call('HSET', META, 'cnt:' .. st, states[st] or 0)
  end
end
redis.call('HSET', META, 'config_hash', ARGV[1])
bump()
return {'synced', created, updated, removed}
