-- keygate shared Lua library: every script in this folder runs after it (src/store/scripts.rs).
-- It runs in two ways (ARCHITECTURE.md, "The store's scripts"): as one Redis Functions library
-- loaded once, in which each script is a registered function, or, on a Redis without Functions,
-- prefixed to each script sent with EVALSHA. Its top level only defines: what depends on the
-- call (the pool's key names, the call's deferred writes and caches) is set by begin() at the
-- bottom, which every script calls first, so no call sees what an earlier one left (but for
-- `bases`, names that depend on the pool's name alone).
--
-- Key schema for pool P with prefix kg (KEYS[1] of every script is the pool base "kg:{P}";
-- every key below is derived from it, so all of them hash to the same Cluster slot):
--   kg:{P}:meta            hash   policy (*_ms), canary_group, canary_percent, canary_percent_cfg,
--                                 canary_fallback, config_hash, layout, cnt:<state>, ver
--                                 (ver: change counter, see bump below), and sel: what a select
--                                 call reads of the config, packed (SEL_FMT below)
--   kg:{P}:key:<id>        hash   status reason weight group errors strikes cooldown_until_ms
--                                 last_status last_used_ms successes failures
--                                 window_start_ms open_ms cfg_weight cfg_group
--                                 failed_at_ms (time of the last failure report)
--   kg:{P}:keys            set    every key id the pool has held
--   kg:{P}:cls:<g>:<c>     zset   weight class c (0..9) of group g: key id -> weight, for the
--                                 group's selectable keys with 2^c <= weight < 2^(c+1)
--   kg:{P}:clsn:<g>        hash   c -> member count of kg:{P}:cls:<g>:<c>; total -> summed weight
--   kg:{P}:due             zset   key id -> deadline ms, for cooling, open and quota-disabled keys
--   kg:{P}:probe:<group>   zset   half-open key id -> probe lease expiry ms (0: no probe running)
-- Invariant: a key is in its group's class set iff status == active and weight > 0.

-- Set by begin(): the pool base, its meta hash and its due index.
local B, META, DUE
-- math.floor, math.max, math.min and string.byte, set by begin(): a library may not read `math`
-- while Redis loads it, and a global read per use costs more than an upvalue.
local floor, max, min, byte
-- cls3: meta holds sel (a pool of layout cls2 has none: select reads the fields one by one
-- until a sync of this layout writes it, the first one after an upgrade even when the config is
-- unchanged). cls4: the class counts and the per-state counts were recounted from the key
-- hashes (sync.lua; a coalesced select call of an earlier version could leave them short).
local LAYOUT = 'cls4'
-- meta's sel: the settings of the pool's config that every select call reads, written by
-- sync.lua only (the canary percent, which rotation and set_canary change, and the half-open
-- count stay fields of their own): canary_fallback (0|1), probe_lease_ms, budgets (0|1),
-- max_wait_ms, lease_ms, mrt, then the canary group's name. One packed field instead of eight:
-- each field of an HMGET costs a select call about 2,500 Redis instructions (BENCHMARKS.md,
-- "The select call's settings in one field").
local SEL_FMT = '<dddddds'

-- prefix .. id, built once per id and call in `built` (a select or a batch names each key
-- several times).
local function named(built, prefix, id)
  local k = built[id]
  if not k then
    k = prefix .. id
    built[id] = k
  end
  return k
end
-- A key hash's name (kpre and kbuilt are set by begin()).
local kpre, kbuilt
local function kkey(id) return named(kbuilt, kpre, id) end
local function cls_key(g, c) return B .. ':cls:' .. g .. ':' .. c end
local function clsn_key(g) return B .. ':clsn:' .. g end
local function probe_key(g) return B .. ':probe:' .. g end

-- Server clock in ms, or the caller's virtual clock when it passes one (> 0).
local function clock(arg)
  local v = tonumber(arg) or 0
  if v > 0 then return v end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000)
end

local function num(v) return tonumber(v) or 0 end

-- Deferred writes (select.lua and report_batch.lua set DEFER = true and call flush() before
-- they return; every other script writes at once). A call that benches and brings back many
-- keys would otherwise send one HINCRBY per counter change and one HSET per field group: with
-- budgets that is most of its cost (BENCHMARKS.md, "Budgets: the select call's Redis work").
-- Deferred are the counters (hincr: the meta hash's cnt:<state>, ver, lease_seq and the class
-- counts kg:{P}:clsn:<g>) and a key hash's fields (kset). Reads within the call see them:
-- kget and load_key overlay a key's pending fields, pending() gives a counter's pending delta.
-- Sets (class sets, due index, probe sets, leases) are written at once.
local DEFER
local counters, counter_order
local kdirty, kdirty_order

-- The pending table of `name` in `tables` (created and listed in `order` on first use).
local function pending_table(tables, order, name)
  local t = tables[name]
  if not t then
    t = {}
    tables[name] = t
    order[#order + 1] = name
  end
  return t
end

local function hincr(h, f, d)
  if not DEFER then return redis.call('HINCRBY', h, f, d) end
  local t = pending_table(counters, counter_order, h)
  t[f] = (t[f] or 0) + d
end

local function pending(h, f)
  local t = counters[h]
  return t and t[f] or 0
end

-- Sets fields of key `id`: kset(id, field, value, field, value, ...).
local function kset(id, f, x, ...)
  if not DEFER then return redis.call('HSET', kkey(id), f, x, ...) end
  local t = pending_table(kdirty, kdirty_order, id)
  t[f] = x
  if select('#', ...) > 0 then
    local a = {...}
    for i = 1, #a, 2 do t[a[i]] = a[i + 1] end
  end
end

-- HMGET of key `id`'s fields, with the call's pending writes in place.
local function kget(id, fields)
  local v = redis.call('HMGET', kkey(id), unpack(fields))
  local t = kdirty[id]
  if t then
    for i, f in ipairs(fields) do
      local x = t[f]
      if x ~= nil then v[i] = x end
    end
  end
  return v
end

-- An integer as the decimal string Redis would store. A Lua number passed to redis.call is
-- printed with snprintf("%.17g"), about 3,300 Redis instructions each; string.format('%d')
-- about 1,900; a whole number in -1024..1024 (ranks, weights, LIMIT counts, counter deltas)
-- is formatted once and kept in SMALL, which lives as long as the Functions library (an
-- EVALSHA script starts it empty every call; BENCHMARKS.md, "Numbers passed to
-- redis.call"). The arguments select.lua, report_batch.lua and the budget functions give
-- redis.call are strings.
-- (A Functions library may not read the string table while it loads: looked up per call.)
local function int(x) return string.format('%d', x) end
local SMALL = {}
local function str(x)
  local s = SMALL[x]
  if s then return s end
  s = int(x)
  if x >= -1024 and x <= 1024 then SMALL[x] = s end
  return s
end
-- int with a memo of the last number: a call formats the same one (its now, its leases'
-- expiry) for several commands.
local function int_memo()
  local v, s
  return function(x)
    if x ~= v then v, s = x, int(x) end
    return s
  end
end
-- now as a string.
local nowstr = int_memo()

-- Removes the leases of ended requests the call deferred (set in the budget part below).
local flush_lease_ends
-- Writes the budgets the call changed (set in the budget part below).
local flush_budgets

-- Writes what the call deferred: one ZREM per key whose requests ended, one HSET of every budget
-- changed, one HSET per key hash written, one HINCRBY per counter moved.
local function flush()
  if flush_lease_ends then flush_lease_ends() end
  if flush_budgets then flush_budgets() end
  for _, id in ipairs(kdirty_order) do
    local a = {}
    for f, x in pairs(kdirty[id]) do
      a[#a + 1] = f
      if type(x) == 'number' then x = str(x) end
      a[#a + 1] = x
    end
    redis.call('HSET', kkey(id), unpack(a))
  end
  for _, h in ipairs(counter_order) do
    for f, d in pairs(counters[h]) do
      if d ~= 0 then redis.call('HINCRBY', h, f, str(d)) end
    end
  end
  if #counter_order > 0 then counters, counter_order = {}, {} end
  if #kdirty_order > 0 then kdirty, kdirty_order = {}, {} end
end

-- The weight class of a weight in 1..=1000: floor(log2(w)), by exact integer comparison.
local function wclass(w)
  local c = 0
  while c < 9 and w >= 2 ^ (c + 1) do c = c + 1 end
  return c
end

-- Class set changes since the library was loaded: select.lua reads a class's count and small
-- members once per call and reads them again whenever this has moved since.
local class_moves = 0

-- Adds (sign 1) or removes (sign -1) a selectable key of weight w > 0 to / from group g's sets.
local function cls_move(g, id, w, sign)
  if w <= 0 then return end
  class_moves = class_moves + 1
  local c = wclass(w)
  if sign > 0 then redis.call('ZADD', cls_key(g, c), str(w), id)
  else redis.call('ZREM', cls_key(g, c), id) end
  hincr(clsn_key(g), tostring(c), sign)
  hincr(clsn_key(g), 'total', sign * w)
end

-- Loads the fields the transitions need into a Lua table.
local FIELDS = {'status', 'reason', 'weight', 'group', 'errors', 'strikes', 'cooldown_until_ms',
  'window_start_ms', 'open_ms'}
local function key_of(id, v)
  if not v[1] then return nil end
  return {id = id, status = v[1], reason = v[2] or '', weight = num(v[3]), group = v[4] or 'stable',
    errors = num(v[5]), strikes = num(v[6]), cooldown_until_ms = num(v[7]),
    window_start_ms = num(v[8]), open_ms = num(v[9])}
end
local function load_key(id) return key_of(id, kget(id, FIELDS)) end

local function selectable(status, weight) return status == 'active' and weight > 0 end

-- Bumps the pool's change counter (meta field ver). Every path that changes what a snapshot
-- shows of a key's status, reason, deadline, weight, group or membership, or the canary
-- percent, bumps it, so a replica can skip re-reading an unchanged pool. Counters (successes,
-- errors, last_used_ms...) do not bump it.
local function bump() hincr(META, 'ver', 1) end

-- The one place a key's status changes: keeps the class sets, the probe sets, the due index
-- and the per-state counters consistent with the key hash.
-- deadline: ms for cooling/open/disabled(quota); nil clears the key from the due index.
local function set_status(k, status, reason, deadline)
  local old = k.status
  local was, now_in = selectable(old, k.weight), selectable(status, k.weight)
  if was and not now_in then cls_move(k.group, k.id, k.weight, -1)
  elseif now_in and not was then cls_move(k.group, k.id, k.weight, 1) end
  if old ~= status then
    hincr(META, 'cnt:' .. old, -1)
    hincr(META, 'cnt:' .. status, 1)
    if old == 'half_open' then redis.call('ZREM', probe_key(k.group), k.id) end
    if status == 'half_open' then redis.call('ZADD', probe_key(k.group), '0', k.id) end
  end
  if deadline then
    redis.call('ZADD', DUE, int(deadline), k.id)
  elseif not k.off_due then
    redis.call('ZREM', DUE, k.id)
  end
  k.status, k.reason = status, reason
  kset(k.id, 'status', status, 'reason', reason, 'cooldown_until_ms', deadline or 0)
  bump()
end

-- Moves one key whose deadline has passed to its next state: cooling -> active,
-- open -> half_open, disabled(quota) -> active (anything else just leaves the due index).
-- Every id recovered leaves the due index: the caller has removed it already.
local function recover_key(id)
  local k = load_key(id)
  if not k then return end
  k.off_due = true
  if k.status == 'cooling' or (k.status == 'disabled' and k.reason == 'quota') then
    set_status(k, 'active', '', nil)
  elseif k.status == 'open' then
    set_status(k, 'half_open', 'breaker', nil)
  end
end

-- Recovers keys whose deadline has passed, at most `limit` per call (one ZREM for all of them).
local function recover_due(now, limit)
  local ids = redis.call('ZRANGEBYSCORE', DUE, '-inf', nowstr(now), 'LIMIT', '0', str(limit))
  if #ids > 0 then redis.call('ZREM', DUE, unpack(ids)) end
  for _, id in ipairs(ids) do recover_key(id) end
  return #ids
end

local STATES = {'active', 'cooling', 'open', 'half_open', 'disabled', 'draining'}
local function state_counts()
  local f = {}
  for i, s in ipairs(STATES) do f[i] = 'cnt:' .. s end
  local v = redis.call('HMGET', META, unpack(f))
  local out = {}
  for i = 1, #STATES do out[i] = num(v[i]) + pending(META, f[i]) end
  return out
end

-- Moves a key to another group (class set and probe set follow).
local function set_group(k, g)
  if g == k.group then return end
  if selectable(k.status, k.weight) then
    cls_move(k.group, k.id, k.weight, -1)
    cls_move(g, k.id, k.weight, 1)
  end
  if k.status == 'half_open' then
    redis.call('ZREM', probe_key(k.group), k.id)
    redis.call('ZADD', probe_key(g), '0', k.id)
  end
  k.group = g
  kset(k.id, 'group', g)
  bump()
end

local function set_weight(k, w)
  if selectable(k.status, k.weight) then cls_move(k.group, k.id, k.weight, -1) end
  k.weight = w
  if selectable(k.status, w) then cls_move(k.group, k.id, w, 1) end
  kset(k.id, 'weight', w)
  bump()
end

-- Budgets (README "Budgets"; src/store/budget.rs does the same integer steps).
-- kg:{P}:budget  hash  key id -> the key's budget, a struct.pack (BUDGET_FMT) of twelve doubles
--   (integers, exact below 2^53); a key without an entry has no limits:
--     b_rpm b_tpm b_conc b_rpd b_tpd  the key's configured limits (0: none)
--     l_rpm l_tpm                     limits the provider announced (x-ratelimit-limit-*), in
--                                     force where b_rpm / b_tpm is 0 (0: none learned)
--     tat_r tat_rd tat_t tat_td       theoretical arrival times (ms) of its GCRA schedules
--     n_in                            at least the size of its lease set (each lease taken adds
--                                     one; freed and expired ones count until a recount; -1: not
--                                     counted yet): the set is counted only near a threshold
--   One field per key in one hash, rather than twelve fields of the key hash: a pick reads its
--   key's budget with one HGET, and a call writes every budget it changed with one HSET
--   (BENCHMARKS.md, "Budgets: the select call's Redis work"). README "Budgets" shows how to read
--   an entry with redis-cli.
-- kg:{P}:inflight:<id>  zset  lease id -> expiry ms, the key's requests in flight
-- meta fields: budgets (1: some key has limits, or the pool learns them), learn (1: the pool
-- learns limits), max_wait_ms, lease_ms, mrt (max request tokens), lease_seq. A key without
-- headroom is 'cooling' with reason 'budget' (rate) or 'busy' (every slot taken) and sits in
-- the due index until its headroom returns.
local MINUTE, DAY = 60600, 87264000
local BUDGETS
local BUDGET_FMT = '<dddddddddddd'

-- A lease set's name (ipre and ibuilt set by begin()).
local ipre, ibuilt
local function inflight_key(id) return named(ibuilt, ipre, id) end
-- A member longer than zset-max-listpack-value (64 bytes by default), scored +inf and counted
-- by no count, added to a lease set when it holds many leases (a renewal, or a lease taken on a
-- key with SORTED_FROM in flight): Redis then keeps the set as a skiplist whatever its size, a
-- reload from disk included. As a listpack (up to 128 members) each insertion, update and
-- removal scans the set and parses the score of every member it passes: renewing 8,000 leases
-- held on 64 keys cost about 48,000 instructions a lease, against 8,400 with skiplists
-- (BENCHMARKS.md, "Lease renewals"). A few leases are cheaper in a listpack, so a set starts as
-- one.
local KEEP_SORTED = '~keygate-keeps-this-set-a-skiplist-longer-than-zset-max-listpack-value~'
local SORTED_FROM = 16
-- The leases in set ik (KEEP_SORTED is not one).
local function count_leases(ik)
  return redis.call('ZCOUNT', ik, '-inf', '(+inf')
end
local function ceil_div(a, b)
  if b <= 0 then return 0 end
  return floor((a + b - 1) / b)
end

-- A key's budget in a call is an array indexed by the names below (built from the packed entry
-- with one table constructor; named fields cost Redis about 4,000 more instructions per request
-- in bench/budget_replay.sh): [RPM] and [TPM] the limits in force (configured, else learned),
-- then the packed entry's twelve fields in BUDGET_FMT's order; N_IN is -1 while the key's lease
-- set was never counted.
local RPM, TPM, CFG_RPM, CFG_TPM, CONC, RPD, TPD = 1, 2, 3, 4, 5, 6, 7
local L_RPM, L_TPM, TAT_R, TAT_RD, TAT_T, TAT_TD, N_IN = 8, 9, 10, 11, 12, 13, 14
-- A key's budget from its packed entry (nil: none).
local function budget_of(packed)
  local b
  if packed then
    b = {0, 0, struct.unpack(BUDGET_FMT, packed)}
    b[15] = nil -- (unpack's last value: where it stopped reading)
  else
    b = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, -1}
  end
  local rpm, tpm = b[CFG_RPM], b[CFG_TPM]
  if rpm == 0 then rpm = b[L_RPM] end
  if tpm == 0 then tpm = b[L_TPM] end
  b[RPM], b[TPM] = rpm, tpm
  return b
end
local function pack_budget(b)
  return struct.pack(BUDGET_FMT, unpack(b, CFG_RPM, N_IN))
end

-- Each key's budget as this call read and changed it (every change goes through its table and
-- bsave), so an entry is read at most once per call; with DEFER the changed ones are written
-- with one HSET at flush.
local bcache
local bdirty, bdirty_order

local function bsave(id, b)
  if not DEFER then return redis.call('HSET', BUDGETS, id, pack_budget(b)) end
  if not bdirty[id] then
    bdirty[id] = true
    bdirty_order[#bdirty_order + 1] = id
  end
end
flush_budgets = function()
  local a = {}
  for i, id in ipairs(bdirty_order) do
    a[#a + 1] = id
    a[#a + 1] = pack_budget(bcache[id])
    if #a >= 1024 or i == #bdirty_order then
      redis.call('HSET', BUDGETS, unpack(a))
      a = {}
    end
  end
  if #bdirty_order > 0 then bdirty, bdirty_order = {}, {} end
end

-- Key id's budget alone (a key drawn from a class set: its status is known).
local function load_budget(id)
  local b = bcache[id]
  if b then return b end
  b = budget_of(redis.call('HGET', BUDGETS, id))
  bcache[id] = b
  return b
end

-- A key and its budget: k (nil when the key is gone) and b. k holds only what set_status and
-- budget_place use (status, reason, weight, group, cooldown_until_ms).
local KFIELDS = {'status', 'reason', 'weight', 'group', 'cooldown_until_ms'}
local function key_head(id, v)
  return {id = id, status = v[1], reason = v[2] or '', weight = num(v[3]),
    group = v[4] or 'stable', cooldown_until_ms = num(v[5])}
end
-- Fills in a k that holds only id, status and reason (partial = true: report_batch.lua reads no
-- more with a key's successes) before its status changes.
local function key_rest(k)
  local v = kget(k.id, {'weight', 'group', 'cooldown_until_ms'})
  k.weight, k.group, k.cooldown_until_ms, k.partial = num(v[1]), v[2] or 'stable', num(v[3]), nil
end
-- A script that changes a key's status only through the k its load_key_budget answered may
-- set kb_memo = {}: a key's k is then read once per call and shared (report_batch.lua, whose
-- batch ends many requests on each key).
local kb_memo
local function load_key_budget(id)
  local k = kb_memo and kb_memo[id]
  if not k then
    local v = kget(id, KFIELDS)
    if not v[1] then return nil end
    k = key_head(id, v)
    if kb_memo then kb_memo[id] = k end
  end
  return k, load_budget(id)
end

-- Per key, n_in as this call last saw or wrote it.
local lease_count
local function set_lease_count(id, b, c)
  lease_count[id] = c
  if b[N_IN] ~= c then
    b[N_IN] = c
    bsave(id, b)
  end
end

-- The number of leases of key `id` counted against its max_concurrent `conc` when `need` more
-- would be taken: n_in, at least the set's size; the set is purged of expired leases and
-- counted only when n_in could reach a threshold that matters (every slot taken, or half of
-- them after `need` more), so below those n_in decides the same as the exact count.
-- Deferred lease removals (report_batch.lua: its batch ends many requests on each key): key id
-- -> lease ids, removed with one ZREM per key before the set is next counted and at flush.
-- n_in is not lowered for them: it stays at least the set's size.
local ended, ended_order
local function remove_ended(id)
  local l = ended[id]
  if not l then return end
  ended[id] = nil
  for i = 1, #l, 512 do
    redis.call('ZREM', inflight_key(id), unpack(l, i, min(i + 511, #l)))
  end
end
flush_lease_ends = function()
  for _, id in ipairs(ended_order) do remove_ended(id) end
  if #ended_order > 0 then ended_order = {} end
end

local function leases_held(id, b, now, conc, need)
  local c = lease_count[id]
  if not c then
    c = b[N_IN]
    if c < 0 then
      remove_ended(id)
      c = count_leases(inflight_key(id))
      set_lease_count(id, b, c)
    end
  end
  if c >= conc or 2 * (c + need) >= conc then
    local ik = inflight_key(id)
    remove_ended(id)
    redis.call('ZREMRANGEBYSCORE', ik, '-inf', nowstr(now))
    c = count_leases(ik)
    set_lease_count(id, b, c)
  end
  return c
end

-- The earliest start the rate schedules allow, and the earliest lease expiry when every
-- in-flight slot is taken (nil otherwise). Expired leases are dropped first.
local function budget_headroom(id, b, now)
  local at = 0
  if b[RPM] > 0 and b[TAT_R] > at then at = b[TAT_R] end
  if b[RPD] > 0 and b[TAT_RD] > at then at = b[TAT_RD] end
  if b[TPM] > 0 and b[TAT_T] > at then at = b[TAT_T] end
  if b[TPD] > 0 and b[TAT_TD] > at then at = b[TAT_TD] end
  if b[CONC] > 0 and leases_held(id, b, now, b[CONC], 1) >= b[CONC] then
    local first = redis.call('ZRANGE', inflight_key(id), '0', '0', 'WITHSCORES')
    return at, tonumber(first[2])
  end
  return at, nil
end

-- The next lease id (the meta field lease_seq, counted up; deferred: read once per call).
local lease_seq
local function next_lease()
  if not DEFER then return redis.call('HINCRBY', META, 'lease_seq', '1') end
  if not lease_seq then lease_seq = num(redis.call('HGET', META, 'lease_seq')) end
  lease_seq = lease_seq + 1
  hincr(META, 'lease_seq', 1)
  return lease_seq
end

-- A lease expiry as the string ZADD takes: most leases of a call expire at its now + lease_ms,
-- formatted once.
local expiry_of = int_memo()

-- Whether the last budget_spend left the key's in-flight slots at least half taken (1, else 0):
-- the end of such a request is written at once rather than with the next success batch.
local spent_crowded
-- The last budget_spend's lease id as written (select.lua's reply line takes it from here: a
-- number formatted is a sprintf, BENCHMARKS.md "A pick's line without string.format").
local spent_lease_str
-- The rand of the request select.lua is answering, as the call received it (a string): the
-- lease id budget_spend tries first. A rand is 53 random bits, so two requests in flight on one
-- key almost never share one, and its string costs nothing to make, where the next lease_seq
-- costs a meta counter and a string.format per lease (BENCHMARKS.md, "Lease ids").
local lease_rand

-- Spends one request of `tokens` starting at `start`, at `now`; answers its lease id (a
-- string; 0: none).
-- "Crowded" counts the leases unexpired at `now`.
local function budget_spend(id, b, start, tokens, mrt, lease_ms, now)
  spent_crowded = 0
  -- Each schedule moves by its step, ceil(window / limit) for requests and
  -- ceil(tokens * window / max(limit - mrt, 1)) for tokens, from start or later; written out
  -- rather than through ceil_div and math.max: a pick runs this, and each function call costs
  -- Redis about as much as the arithmetic.
  local lim, t = b[RPM], b[TAT_R]
  if lim > 0 then
    if t < start then t = start end
    b[TAT_R] = t + floor((MINUTE + lim - 1) / lim)
  end
  lim, t = b[RPD], b[TAT_RD]
  if lim > 0 then
    if t < start then t = start end
    b[TAT_RD] = t + floor((DAY + lim - 1) / lim)
  end
  lim, t = b[TPM], b[TAT_T]
  if lim > 0 then
    if t < start then t = start end
    local room = lim - mrt
    if room < 1 then room = 1 end
    b[TAT_T] = t + floor((tokens * MINUTE + room - 1) / room)
  end
  lim, t = b[TPD], b[TAT_TD]
  if lim > 0 then
    if t < start then t = start end
    local room = lim - mrt
    if room < 1 then room = 1 end
    b[TAT_TD] = t + floor((tokens * DAY + room - 1) / room)
  end
  bsave(id, b)
  local conc = b[CONC]
  if conc <= 0 then return 0 end
  local c = leases_held(id, b, now, conc, 1)
  local ik, exp = inflight_key(id), expiry_of(start + lease_ms)
  -- The lease id is the request's rand as the replica sent it, unless that is no id (0, or
  -- not a number as the replica formats one: its first character must be 1-9) or already a
  -- lease of the key: then the next lease_seq not in the set. ZADD NX adds only a new id, so
  -- the set holds one more.
  local lease = lease_rand
  local first = lease and byte(lease, 1)
  if not first or first < 49 or first > 57
    or redis.call('ZADD', ik, 'NX', exp, lease) == 0 then
    repeat
      lease = int(next_lease())
    until redis.call('ZADD', ik, 'NX', exp, lease) == 1
  end
  spent_lease_str = lease
  if c == SORTED_FROM then redis.call('ZADD', ik, '+inf', KEEP_SORTED) end
  c = c + 1
  set_lease_count(id, b, c)
  if 2 * c >= conc then spent_crowded = 1 end
  return lease
end

-- Replaces a reservation by real usage: delta = real - reserved tokens.
local function settle_schedule(id, b, field, limit, window, delta, mrt, now)
  if limit <= 0 then return end
  local room = max(limit - mrt, 1)
  local tat = b[field]
  if delta > 0 then
    tat = max(tat, now) + ceil_div(delta * window, room)
  elseif tat > now then
    -- A schedule at or before now stays (every moment up to now allows the same): no write.
    tat = max(tat - floor(-delta * window / room), now)
  end
  if tat ~= b[field] then
    b[field] = tat
    bsave(id, b)
  end
end
local function budget_settle(id, b, delta, mrt, now)
  if delta == 0 then return end
  if b[TPM] > 0 then settle_schedule(id, b, TAT_T, b[TPM], MINUTE, delta, mrt, now) end
  if b[TPD] > 0 then settle_schedule(id, b, TAT_TD, b[TPD], DAY, delta, mrt, now) end
end

-- How soon an active key's rate schedules must let it start again for it to stay active
-- (budget_place, below).
local LAZY_MS = 10
-- Whether budget_place could bench an active key right after budget_spend: its rate schedules
-- reach past LAZY_MS, or its lease count (at least the number in flight) fills every slot. A
-- check without the lease set's recount, so it may answer yes where budget_place then
-- finds a free slot, never no where budget_place would bench.
local function budget_may_bench(id, b, now)
  local late = now + LAZY_MS
  if (b[RPM] > 0 and b[TAT_R] > late) or (b[RPD] > 0 and b[TAT_RD] > late)
    or (b[TPM] > 0 and b[TAT_T] > late) or (b[TPD] > 0 and b[TAT_TD] > late) then
    return true
  end
  local conc = b[CONC]
  return conc > 0 and (lease_count[id] or b[N_IN]) >= conc
end

-- Puts a key where its budget says: benched ('cooling' 'budget'/'busy' until its headroom) or,
-- if it was benched by its budget and has headroom again, active. Keys in any other state are
-- left alone. An active key whose rate schedules let it start again within LAZY_MS stays
-- active (selection skips it until then, select.lua try_budgeted): with zero burst every
-- request puts its key's schedule one interval ahead, and benching and bringing back the key
-- for an interval of a few milliseconds would cost more than the few draws that land on it.
-- Answers whether the key is now benched by its budget, and when its rate schedules allow
-- its next start.
local function budget_place(k, b, now)
  local benched = k.status == 'cooling' and (k.reason == 'budget' or k.reason == 'busy')
  if k.status ~= 'active' and not benched then return false, 0 end
  local at, busy = budget_headroom(k.id, b, now)
  local reason, deadline = nil, nil
  if busy then reason, deadline = 'busy', max(at, busy)
  elseif at > now + (benched and 0 or LAZY_MS) then reason, deadline = 'budget', at end
  if (reason or benched) and k.partial then key_rest(k) end
  if reason then
    if not benched or k.reason ~= reason or k.cooldown_until_ms ~= deadline then
      set_status(k, 'cooling', reason, deadline)
      k.cooldown_until_ms = deadline
    end
    return true, at
  end
  if benched then set_status(k, 'active', '', nil) end
  return false, at
end

-- Takes in what the provider said about a key at `seen` (src/store/budget.rs KeyBudget::learn
-- does the same steps). h: {remaining_requests, reset_requests_ms, remaining_tokens,
-- reset_tokens_ms, limit_requests, limit_tokens}, -1 where the answer did not say. With learn,
-- an announced limit fills in one the config leaves unset (a token limit only above mrt); then,
-- read as "only remaining more until the reset", each per-minute schedule moves late enough
-- that its starts before the reset fit in remaining plus one request (one largest reservation
-- of tokens) of slack. Never earlier.
local function budget_learn(id, b, h, seen, learn, mrt)
  if learn and b[CFG_RPM] == 0 and h[5] > 0 and h[5] ~= b[RPM] then
    b[RPM], b[L_RPM] = h[5], h[5]
    bsave(id, b)
  end
  if learn and b[CFG_TPM] == 0 and h[6] > mrt and h[6] ~= b[TPM] then
    b[TPM], b[L_TPM] = h[6], h[6]
    bsave(id, b)
  end
  -- How long `remaining` must last: the reset, else the time the limit takes to refill what
  -- is spent, else a minute; the schedule moves to `window - free` from seen (not earlier).
  local function target(remaining, reset, limit, free)
    local window = MINUTE
    if reset >= 0 then window = reset
    elseif limit > 0 then window = floor(max(limit - remaining, 0) * MINUTE / limit) end
    return seen + max(window - free, 0)
  end
  if b[RPM] > 0 and h[1] >= 0 then
    local at = target(h[1], h[2], h[5], (h[1] + 1) * ceil_div(MINUTE, b[RPM]))
    if at > b[TAT_R] then
      b[TAT_R] = at
      bsave(id, b)
    end
  end
  if b[TPM] > 0 and h[3] >= 0 then
    local at = target(h[3], h[4], h[6], floor((h[3] + mrt) * MINUTE / b[TPM]))
    if at > b[TAT_T] then
      b[TAT_T] = at
      bsave(id, b)
    end
  end
end

-- Ends one request on a budgeted key: frees its lease (lease '0': none), replaces its token
-- reservation by real usage (delta = real - reserved), and puts the key where its budget says.
-- With DEFER the key is placed once, by place_ended (report_batch.lua calls it before flush):
-- where its budget leaves it after all the call's ends, as placing it after each would.
local to_place, to_place_order
local function budget_end(id, lease, delta, mrt, now)
  -- In report_batch.lua the key and its budget are usually in the call's memos already (read
  -- with its successes, and with one HMGET of every budget the batch names): looked up there
  -- directly, as a Lua function call costs Redis about as much as the arithmetic.
  local k, b
  if kb_memo then
    k = kb_memo[id]
    b = k and bcache[id]
  end
  if not b then
    k, b = load_key_budget(id)
    if not k then return end
  end
  if DEFER and not to_place[id] then
    to_place[id] = k
    to_place_order[#to_place_order + 1] = id
  end
  if lease ~= '0' and DEFER then
    local l = ended[id]
    if not l then
      l = {}
      ended[id] = l
      ended_order[#ended_order + 1] = id
    end
    l[#l + 1] = lease
  elseif lease ~= '0' then
    local removed = redis.call('ZREM', inflight_key(id), lease)
    local c = lease_count[id] or (b[N_IN] >= 0 and b[N_IN] or nil)
    if c then set_lease_count(id, b, max(c - removed, 0)) end
  end
  if delta ~= 0 then budget_settle(id, b, delta, mrt, now) end
  if not DEFER then budget_place(k, b, now) end
end
local function place_ended(now)
  for _, id in ipairs(to_place_order) do budget_place(to_place[id], bcache[id], now) end
  if #to_place_order > 0 then to_place, to_place_order = {}, {} end
end

-- Per pool base, the names derived from it: {meta, due, budget, key prefix, lease set prefix},
-- made at a pool's first call and kept while the library is loaded (as Functions; an EVALSHA
-- script starts empty every call). About 5,000 Redis instructions a call less than making the
-- five strings and two closures each time (BENCHMARKS.md, "The select call's settings in one
-- field"). One entry per pool a replica names: bounded by the config.
local bases = {}

-- Starts a call on pool base keys[1]: the pool's key names, and every deferred write, cache and
-- memo of the call empty. Every script calls it before anything else (src/store/scripts.rs
-- puts the call in front of each script's body); with Functions the library's top level ran
-- once, when it was loaded, and this is all that runs again per call.
local function begin(keys)
  B = keys[1]
  floor, max, min, byte = math.floor, math.max, math.min, string.byte
  local n = bases[B]
  if not n then
    n = {B .. ':meta', B .. ':due', B .. ':budget', B .. ':key:', B .. ':inflight:'}
    bases[B] = n
  end
  META, DUE, BUDGETS, kpre, ipre = n[1], n[2], n[3], n[4], n[5]
  DEFER = false
  -- A table the previous call left empty is kept (with Functions; an EVALSHA script starts
  -- with none): most calls write into few of these, and a table made, freed and swept costs
  -- Redis about 1,000 instructions against a few for the check (BENCHMARKS.md, "Tables a call
  -- does not make"). A map and its order list are written together, so the list's length
  -- tells whether either holds anything.
  if not kbuilt or next(kbuilt) then kbuilt = {} end
  if not ibuilt or next(ibuilt) then ibuilt = {} end
  if not counter_order or #counter_order > 0 then counters, counter_order = {}, {} end
  if not kdirty_order or #kdirty_order > 0 then kdirty, kdirty_order = {}, {} end
  if not bcache or next(bcache) then bcache = {} end
  if not bdirty_order or #bdirty_order > 0 then bdirty, bdirty_order = {}, {} end
  if not lease_count or next(lease_count) then lease_count = {} end
  if not ended_order or #ended_order > 0 then ended, ended_order = {}, {} end
  if not to_place_order or #to_place_order > 0 then to_place, to_place_order = {}, {} end
  kb_memo = nil
  lease_seq, spent_crowded, lease_rand = nil, 0, nil
end
