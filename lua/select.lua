-- select: choose a key of pool P for each of a batch of upstream attempts (one or more
-- requests, in order, exactly as if each had its own call: the replica coalesces the selects
-- that wait on one pool while a call is in flight).
--
-- KEYS[1]  pool base "kg:{P}"
-- ARGV[1]  now_ms override (0: the server's TIME)
-- ARGV[2..], for each request of the batch:
--          rand (integer in [0, 2^53), drawn by the replica: the weighted choice is
--          deterministic here), route ("bucket": canary by percent, "canary", "stable": forced),
--          the request's hash bucket 0..99 (used with route "bucket"), the request's token
--          reservation (used when the pool has budgets), n = how many key ids follow, then n
--          key ids the request already tried (excluded)
--
-- Reply: "nopool" (the pool is not in Redis (lost): the caller syncs it from config and
-- retries), or one line per request, in order, joined by "\n" into one string, each line
-- words separated by one space (key ids and group names hold neither), one of:
--   key <id> <group> <fallback 0|1> <probe 0|1> <wait_ms> <lease> <crowded 0|1>  (wait_ms:
--    send not before this many ms from now, a reserved future slot; lease: the in-flight lease
--    to release, usually the request's rand (lib.lua budget_spend), 0: none; crowded 1: the
--    lease left at least half the key's slots taken; all 0 in a pool without budgets)
--   none <earliest_recovery_ms or -1> <now_ms> <n_active> <n_cooling> <n_open> <n_half_open>
--    <n_disabled> <n_draining> <budget 0|1>  (budget 1: the first key to recover is benched by
--    its own budget, reason 'budget' or 'busy': the pool is exhausted, not rate limited)
-- One string rather than an array of words per request: the replica's Redis client parses each
-- value of a reply at a cost of its own, and a call's eight values a request were about 8,000
-- of a request's instructions in keygate (BENCHMARKS.md, "One string for a select call's
-- reply"); Redis too writes one value instead of nine a request.
--
-- Cost: O(1) expected Redis calls per request whatever the pool size. Once per batch: the meta
-- HMGET, TIME, the due-key recovery (at most 8 keys per request, 64 per call), one HGETALL of
-- each group's class counts, and one ZRANGE of each small class drawn from (see WHOLE); then
-- on average at most 2 ZRANGEs by rank per weighted choice in the larger classes.
-- A half-open key whose probe lease is free is chosen first (one probe at a time, cluster-wide,
-- also within a batch: the lease is taken before the next request of the batch looks);
-- the lease expires after probe_lease_ms so a dead replica cannot wedge the key.
-- Budgets (meta budgets = 1; README "Budgets"): the chosen key's budget is spent in this call;
-- a drawn key without headroom is benched (lib.lua budget_place) and the draw repeats, at most
-- 8 times; with no key at hand, the earliest budget-benched key due within max_wait_ms is
-- reserved for its future slot. Without budgets none of this runs.
-- Counter changes and key-hash fields are written once at the end of the call (lib.lua
-- DEFER / flush): a key benched and brought back within one call costs one HSET, and the
-- state counts, class counts, change counter and lease sequence one HINCRBY each per call.
-- With budgets, a pick costs its draw, one HGET of its budget entry (none for a key this call
-- read already; a key drawn from its class set is active, so its hash is not read), a ZADD of
-- its lease set (max_concurrent; the set is counted only near a threshold, lib.lua n_in), and,
-- when its schedule benches it (further out than LAZY_MS), a ZREM of its class set and a ZADD
-- of the due index; the call writes every budget it changed with one HSET.

-- The call's state, set by select_call() at the bottom, which runs per call (the functions
-- above it are made once, when Redis loads the library: src/store/scripts.rs).
local now, BUDGET, max_wait, lease_ms, mrt
local half_open, canary_group, percent, fallback_ok, lease
-- The key ids the current request already tried.
local excluded
-- string.format, set per call (a library's top level may not read globals).
local fmt

local function try_probe(g)
  local n = 1
  for _ in pairs(excluded) do n = n + 1 end
  local ids = redis.call('ZRANGEBYSCORE', probe_key(g), '-inf', nowstr(now), 'LIMIT', '0', str(n))
  for _, id in ipairs(ids) do
    if not excluded[id] then
      redis.call('ZADD', probe_key(g), int(now + lease), id)
      return id
    end
  end
  return nil
end

-- Weighted choice by exact rejection sampling over the group's weight classes. Class c holds the
-- keys with weight in [2^c, 2^(c+1)); B_c = 2^(c+1) - 1 bounds them and its upper-bound mass is
-- M_c = n_c * B_c. A round draws a class with probability M_c / sum(M), a member uniformly by
-- rank, and accepts it with probability w / B_c: key i wins a round with probability
-- w_i / sum(M), so the accepted key follows the weights exactly and a round succeeds with
-- probability > 1/2 (always when every key weighs 1). Excluded keys count as rejections. The
-- draws come from a Park-Miller stream seeded by the request's rand (exact in doubles);
-- src/store/tree.rs does the same arithmetic in the same order, so both stores pick the same
-- key. After 64 rejected rounds (< 1e-9 without exclusions) the first non-excluded member is
-- taken, scanning classes from high to low by rank.
local PM_M = 2147483647
local ROUNDS = 64
-- Index c + 1 for class c: its bound 2^(c+1) - 1 (the largest weight it can hold) and its name.
local BOUND = {1, 3, 7, 15, 31, 63, 127, 255, 511, 1023}
local CLS = {'0', '1', '2', '3', '4', '5', '6', '7', '8', '9'}
-- A class's name -> its index (c + 1).
local CLS_INDEX = {['0'] = 1, ['1'] = 2, ['2'] = 3, ['3'] = 4, ['4'] = 5, ['5'] = 6, ['6'] = 7,
  ['7'] = 8, ['8'] = 9, ['9'] = 10}
local pm_x = 1
local function seed(rand)
  pm_x = rand % (PM_M - 1)
  if pm_x < 0 then pm_x = pm_x + (PM_M - 1) end
  if pm_x >= PM_M - 1 then pm_x = pm_x - (PM_M - 1) end
  pm_x = pm_x + 1
end
-- A draw is u = pm_x / PM_M, then pm_x = 16807 * pm_x % PM_M: written out where it is used
-- (try_weighted), as a Lua function call costs Redis more than the arithmetic.

-- Per group: the names of its class sets (kept per pool base in names_of while the library is
-- loaded: one entry per pool and group, bounded by the config), and the copies read whole
-- (per call; the table is kept when a call made none).
local set_names, copies = nil, {}
local names_of = {}
-- Each group's class counts, read once per batch, and again after a class set changed (a budget
-- benching a key, below): {total weight, member count per class, summed upper-bound mass}.
local classes
-- class_moves (lib.lua) as of the counts and copies in hand; the counts and copies are read
-- again when it moved (fresh_classes, below).
local classes_seen, fresh_classes
-- Reads group g's counts into classes[g] (try_weighted looks there first).
local function read_class_counts(g)
  -- Fields: total, and c -> member count of each class that ever had a member (at most 11).
  -- The call's pending class-count changes (lib.lua hincr) are added in.
  -- The counts' name is kept with the group's class-set names (member, below).
  local names = set_names[g]
  if not names then
    names = {}
    set_names[g] = names
  end
  local h = names.clsn
  if not h then
    h = clsn_key(g)
    names.clsn = h
  end
  local v = redis.call('HGETALL', h)
  local total, n, summ = 0, {0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0
  for j = 1, #v, 2 do
    local name, x = v[j], tonumber(v[j + 1]) or 0
    if name == 'total' then
      total = x
    else
      local ix = CLS_INDEX[name]
      if ix then n[ix] = x end
    end
  end
  local pend = counters[h]
  if pend then
    for name, d in pairs(pend) do
      if name == 'total' then
        total = total + d
      else
        local ix = CLS_INDEX[name]
        if ix then n[ix] = n[ix] + d end
      end
    end
  end
  for i = 1, 10 do summ = summ + n[i] * BOUND[i] end
  classes[g] = {total, n, summ}
  return total, n, summ
end

-- In a batch of several requests, a class of at most 16 members (or of at most 2 per request;
-- class 0, read without scores, of at most 8 per request) is read whole the first time a draw
-- lands in it, and later draws of the batch index that copy: each ZRANGE by rank costs a
-- redis.call with its conversions. With a batch of 10 selects from a 4-key pool this makes the
-- call cheaper, and a batch of 12 from 64 keys of weight 1 (BENCHMARKS.md, "Small classes read
-- whole"); a batch of one reads by rank, as a whole class costs it more. The copy cannot go
-- stale within the call: a class set changes only through lib.lua's cls_move (within a select
-- call, a budget benching a key), which counts its moves, and a move since the copy was made
-- drops it (fresh_classes). A larger class is read one member per draw (O(log n) each, whatever
-- the pool size).
-- The largest class read whole in this call (none in a call of one): WHOLE0 for class 0, read
-- without scores (a member costs about a tenth of a read by rank), WHOLE for the others.
local WHOLE, WHOLE0
-- The excluded set of every request that excludes nothing.
local NONE = {}
-- A key benched in this call left its class set: the counts and copies are read again, and
-- class 0 from then on only as small as the others (a call that benches many keys would
-- otherwise read a large class whole once per bench). Derived from cls_move's count, not called
-- by each path that benches: a path that forgot (a key reserved for a waiting request) left a
-- benched key in the copy, the rest of the call benched it again, and each second bench took
-- one from the class count while the set no longer held the key (tests/it/store/coalesce.rs).
fresh_classes = function()
  classes, copies = {}, {}
  WHOLE0 = WHOLE
  classes_seen = class_moves
end
-- The member of rank r (0-based) of class i of group g and its weight (nil when there is none).
local function member(g, i, r, n_i)
  local names = set_names[g]
  if not names then
    names = {}
    set_names[g] = names
  end
  local key = names[i]
  if not key then
    key = cls_key(g, CLS[i])
    names[i] = key
  end
  local c = copies[key]
  if i == 1 then
    -- Class 0 holds weight 1 alone (weights are whole numbers), so its members are read without
    -- their scores, which Redis would print as doubles for the script to parse back
    -- (BENCHMARKS.md, "Redis Functions, not EVALSHA": 4,500 instructions a read).
    if not c and n_i <= WHOLE0 then
      c = redis.call('ZRANGE', key, '0', '-1')
      copies[key] = c
    end
    if c then return c[r + 1], 1 end
    local rs = str(r)
    return redis.call('ZRANGE', key, rs, rs)[1], 1
  end
  if not c and n_i <= WHOLE then
    c = redis.call('ZRANGE', key, '0', '-1', 'WITHSCORES')
    copies[key] = c
  end
  if c then return c[2 * r + 1], c[2 * r + 2] end
  local rs = str(r)
  local m = redis.call('ZRANGE', key, rs, rs, 'WITHSCORES')
  return m[1], m[2]
end

local function try_weighted(g)
  -- The counts in hand, read again after a class move (fresh_classes). Compared here, not in a
  -- function: a function call per draw cost a call of 12 selects about 5,500 Redis instructions.
  if classes_seen ~= class_moves then fresh_classes() end
  local total, n, summ
  local c = classes[g]
  if c then total, n, summ = c[1], c[2], c[3] else total, n, summ = read_class_counts(g) end
  local nex = 0
  -- (NONE, the set of a request that excludes nothing, is empty.)
  if excluded ~= NONE then
    for id, v in pairs(excluded) do
      local k = type(v) == 'table' and v or load_key(id)
      if k and k.group == g and selectable(k.status, k.weight) then
        total = total - k.weight
        nex = nex + 1
      end
    end
  end
  if total <= 0 or summ <= 0 then return nil end
  for _ = 1, ROUNDS do
    local u = pm_x / PM_M
    pm_x = (16807 * pm_x) % PM_M
    local t = floor(u * summ)
    local i, cum = 1, n[1] * BOUND[1]
    while cum <= t and i < 10 do
      i = i + 1
      cum = cum + n[i] * BOUND[i]
    end
    u = pm_x / PM_M
    pm_x = (16807 * pm_x) % PM_M
    local id, w = member(g, i, floor(u * n[i]), n[i])
    u = pm_x / PM_M
    pm_x = (16807 * pm_x) % PM_M
    local acc = floor(u * BOUND[i])
    if id then
      -- Class 0's member comes with the number 1 (member), the others' with a score string.
      if i > 1 then w = tonumber(w) end
      if not excluded[id] and acc < w then return id, w end
    end
  end
  for i = 10, 1, -1 do
    if n[i] > 0 then
      local m = redis.call('ZRANGE', cls_key(g, CLS[i]), '0', str(nex), 'WITHSCORES')
      for j = 1, #m, 2 do
        if not excluded[m[j]] then return m[j], tonumber(m[j + 1]) end
      end
    end
  end
  return nil
end

local function try_group(g)
  -- No half-open key in the pool (the per-state counter): no probe set to look at.
  local id = half_open > 0 and try_probe(g) or nil
  if id then return id, 1 end
  local w
  id, w = try_weighted(g)
  if id then return id, 0, w end
  return nil
end

-- The keys the current request drew that have no headroom yet but will within LAZY_MS (lib.lua
-- budget_place leaves them active): {k, b, at} in the order drawn. They join the request's
-- excluded keys (a copy: requests that exclude nothing share one empty set). A request skips
-- at most SKIPS keys; from the next such draw on, it benches that key and the skipped ones
-- (most of the pool is then a few ms from headroom). Neither costs an attempt: each removes
-- a key that has no headroom from this request's choice, as benching every spent key at once
-- would have, so the attempts go to keys benched for other reasons (busy, further out).
local SKIPS = 16
local skipped, skips = {}, 0
local function bench_skipped(k, b, at)
  skipped[#skipped + 1] = {k, b, at}
  for _, s in ipairs(skipped) do
    set_status(s[1], 'cooling', 'budget', s[3])
    s[1].cooldown_until_ms = s[3]
  end
  skipped = {}
end
local function skip(k, b, at)
  if skips == 0 then
    local ex = {}
    for id, v in pairs(excluded) do ex[id] = v end
    excluded = ex
  end
  skipped[#skipped + 1] = {k, b, at}
  skips = skips + 1
  excluded[k.id] = k
end

-- A drawn key's table for budget_place (drawn from its class set: active).
local function active_key(id, w, g)
  return {id = id, status = 'active', reason = '', weight = w, group = g, cooldown_until_ms = 0}
end

-- try_group with the budget check: a drawn key without headroom is benched, or skipped when
-- its headroom returns within LAZY_MS, and the draw repeats (reseeded, as the memory store's
-- sampler is); 8 attempts, which only keys benched further out than LAZY_MS take. Answers
-- id, probe, lease.
local function try_budgeted(g, rand, tokens)
  if not BUDGET then
    -- try_group, written out: this is every pick of a pool without budgets.
    if half_open > 0 then
      local id = try_probe(g)
      if id then return id, 1, 0 end
    end
    local id = try_weighted(g)
    if id then return id, 0, 0 end
    return nil
  end
  local attempts = 0
  while attempts < 8 do
    seed(rand)
    local id, probe, w = try_group(g)
    if not id then return nil end
    if probe == 1 then
      local _, b = load_key_budget(id)
      return id, probe, budget_spend(id, b, now, tokens, mrt, lease_ms, now)
    end
    -- Drawn from its class set: active, of weight w, in group g (lib.lua's invariant), so
    -- only its budget is read (at most once per call: a key this call spent is in bcache).
    local b = load_budget(id)
    local at, busy = budget_headroom(id, b, now)
    if not busy and at <= now then
      -- The common case, without the key's table: it has headroom now, so budget_place would
      -- leave it active; after the spend it benches the key only when its headroom is gone.
      local lease = budget_spend(id, b, now, tokens, mrt, lease_ms, now)
      if budget_may_bench(id, b, now) then budget_place(active_key(id, w, g), b, now) end
      return id, probe, lease
    end
    -- Without headroom now. budget_place benches it when every slot is taken or its headroom
    -- is further out than LAZY_MS, and leaves it active otherwise: that case, the usual one
    -- (a key started a request less than its interval ago), is decided here from the headroom
    -- just read, without placing the key (BENCHMARKS.md, "Budgets: the select call's Redis
    -- work").
    local k = active_key(id, w, g)
    local benched = false
    if busy or at > now + LAZY_MS then benched, at = budget_place(k, b, now) end
    if benched then
      attempts = attempts + 1
    elseif skips < SKIPS then
      -- Not benched: its headroom returns within LAZY_MS.
      skip(k, b, at)
    else
      bench_skipped(k, b, at)
    end
  end
  return nil
end

-- No key has headroom now: reserve the skipped key whose headroom comes first (the first
-- drawn of equals), else the earliest budget-benched key of `groups` whose rate headroom comes
-- within max_wait_ms (one not busy). Skipped keys that cannot be waited for are benched, so
-- the answer without a key counts them. Answers key, wait_ms, lease.
local function try_wait(groups, tokens)
  if not BUDGET then return nil end
  local best = nil
  for _, s in ipairs(skipped) do
    if not best or s[3] < best[3] then best = s end
  end
  if best and best[3] <= now + max_wait then
    local k, b, at = best[1], best[2], best[3]
    local lease = budget_spend(k.id, b, at, tokens, mrt, lease_ms, now)
    budget_place(k, b, now)
    return k, at - now, lease
  end
  if #skipped > 0 then
    local last = table.remove(skipped)
    bench_skipped(last[1], last[2], last[3])
  end
  if max_wait <= 0 then return nil end
  local due = redis.call('ZRANGEBYSCORE', DUE, '-inf', int(now + max_wait), 'WITHSCORES', 'LIMIT',
    '0', '8')
  for j = 1, #due, 2 do
    local id = due[j]
    local k, b = load_key_budget(id)
    if k and k.status == 'cooling' and k.reason == 'budget' and groups[k.group]
      and not excluded[id] then
      local at, busy = budget_headroom(id, b, now)
      if not busy and at <= now + max_wait then
        local start = max(at, now)
        local lease = budget_spend(id, b, start, tokens, mrt, lease_ms, now)
        budget_place(k, b, now)
        return k, start - now, lease
      end
    end
  end
  return nil
end

-- One request's reply (see the top).
local function select_one(rand, route, bucket, tokens)
  seed(rand)
  if BUDGET then
    if #skipped > 0 then skipped = {} end
    skips = 0
  end
  local primary = 'stable'
  -- The bucket (a string) is read as a number only when a canary takes a share of the pool.
  if route == 'canary' or (route == 'bucket' and percent > 0 and (tonumber(bucket) or 0) < percent)
  then
    primary = canary_group
  end
  spent_crowded = 0
  local id, probe, lease = try_budgeted(primary, rand, tokens)
  local group, fb = primary, 0
  local may_fall_back = primary ~= 'stable' and fallback_ok
  if not id and may_fall_back then
    id, probe, lease = try_budgeted('stable', rand, tokens)
    group, fb = 'stable', 1
  end
  if id then
    -- Concatenated from literals in one step (an intermediate string would be interned too),
    -- not string.format'd: each number formatted is a sprintf (BENCHMARKS.md, "A pick's line
    -- without string.format"). A lease is the one budget_spend just took and wrote.
    local f, p = fb == 1 and ' 1' or ' 0', probe == 1 and ' 1 0 ' or ' 0 0 '
    local crowded = spent_crowded == 1 and ' 1' or ' 0'
    if lease == 0 then return 'key ' .. id .. ' ' .. group .. f .. p .. '0' .. crowded end
    return 'key ' .. id .. ' ' .. group .. f .. p .. spent_lease_str .. crowded
  end
  local groups = {[primary] = true}
  if may_fall_back then groups.stable = true end
  local k, wait_ms, wlease = try_wait(groups, tokens)
  if k then
    return fmt('key %s %s %d 0 %d %s %d', k.id, k.group, k.group ~= primary and 1 or 0, wait_ms,
      wlease, spent_crowded)
  end

  local earliest, budget_first = -1, 0
  local first = redis.call('ZRANGE', DUE, '0', '0', 'WITHSCORES')
  if first[2] then
    earliest = tonumber(first[2])
    if BUDGET then
      local f = kget(first[1], {'status', 'reason'})
      if f[1] == 'cooling' and (f[2] == 'budget' or f[2] == 'busy') then budget_first = 1 end
    end
  end
  for _, g in ipairs({primary, 'stable'}) do
    local p = redis.call('ZRANGE', probe_key(g), '0', '0', 'WITHSCORES')
    if p[2] and (earliest < 0 or tonumber(p[2]) < earliest) then
      earliest, budget_first = tonumber(p[2]), 0
    end
  end
  local reply = {fmt('none %d %d', earliest, now)}
  for _, c in ipairs(state_counts()) do reply[#reply + 1] = fmt('%d', c) end
  reply[#reply + 1] = budget_first
  return table.concat(reply, ' ')
end

-- One call: the replies to every request of the batch, in order.
local function select_call(KEYS, ARGV)
  -- The config's settings packed in sel (lib.lua SEL_FMT) and the two fields that change at
  -- run time. sel is in force only under this layout: an older keygate's sync (a replica of
  -- the previous version during a rolling upgrade) writes the fields one by one and its own
  -- layout, and leaves sel as it was; the fields are then read one by one, as it wrote them.
  local meta = redis.call('HMGET', META, 'sel', 'layout', 'canary_percent', 'cnt:half_open')
  local fb, probe_ms, budgets, group
  if meta[1] and meta[2] == LAYOUT then
    fb, probe_ms, budgets, max_wait, lease_ms, mrt, group = struct.unpack(SEL_FMT, meta[1])
  else
    local f = redis.call('HMGET', META, 'config_hash', 'canary_fallback', 'probe_lease_ms',
      'budgets', 'max_wait_ms', 'lease_ms', 'mrt', 'canary_group')
    if not f[1] then return 'nopool' end
    fb, probe_ms, budgets = f[2] == '0' and 0 or 1, num(f[3]), num(f[4])
    max_wait, lease_ms, mrt, group = num(f[5]), num(f[6]), num(f[7]), f[8] or 'canary'
  end
  DEFER = true
  fmt = string.format
  now = clock(ARGV[1])

  BUDGET = budgets == 1

  -- How many requests the batch holds (each: rand, route, bucket, tokens, n, then n key ids).
  local nreq, last, i = 0, #ARGV, 2
  while i + 4 <= last do
    nreq = nreq + 1
    local x = ARGV[i + 4]
    i = i + 5
    if x ~= '0' then i = i + (tonumber(x) or 0) end
  end

  -- The half-open count as of now: recovery may have just turned an open key half-open.
  recover_due(now, min(8 * nreq, 64))
  half_open = num(meta[4]) + pending(META, 'cnt:half_open')
  canary_group, percent = group, num(meta[3])
  fallback_ok, lease = fb ~= 0, probe_ms
  classes, classes_seen = {}, class_moves
  if next(copies) then copies = {} end
  set_names = names_of[B]
  if not set_names then
    set_names = {}
    names_of[B] = set_names
  end
  WHOLE = nreq > 1 and max(16, 2 * nreq) or 0
  WHOLE0 = nreq > 1 and max(16, 8 * nreq) or 0
  if #skipped > 0 then skipped = {} end
  skips = 0

  -- Each request as it is read. Requests that exclude nothing share one empty set (nothing
  -- writes to a set once parsed). The bucket stays a string until a canary needs it, and the
  -- tokens are read only in a pool with budgets: a tonumber costs about 1,600 Redis
  -- instructions (BENCHMARKS.md, "A pick's line without string.format").
  local replies = nreq > 1 and {} or nil
  i = 2
  for r = 1, nreq do
    local ex, n = NONE, 0
    if ARGV[i + 4] ~= '0' then n = tonumber(ARGV[i + 4]) or 0 end
    if n > 0 then ex = {} end
    for j = i + 5, i + 4 + n do ex[ARGV[j]] = true end
    excluded = ex
    lease_rand = ARGV[i]
    local reply = select_one(tonumber(ARGV[i]) or 0, ARGV[i + 1], ARGV[i + 2],
      BUDGET and min(tonumber(ARGV[i + 3]) or 0, mrt) or 0)
    -- A call of one request (c=1) answers its line as it is.
    if not replies then
      flush()
      return reply
    end
    replies[r] = reply
    i = i + 5 + n
  end
  flush()
  return table.concat(replies or {}, '\n')
end
