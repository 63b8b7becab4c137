-- snapshot: one page of pool P's keys with their state, for metrics, the admin API and the
-- failover store's last-known copy. `RedisStore::snapshot` calls it page after page until the
-- cursor comes back "0", so no single call holds Redis longer than one page takes (a few ms),
-- whatever the pool's size.
--
-- KEYS[1]  pool base "kg:{P}"
-- ARGV[1]  now_ms override (0: the server's TIME). The caller passes the first page's now_ms to
--          every later page, so one snapshot recovers and reports against one clock value.
-- ARGV[2]  SSCAN cursor over kg:{P}:keys ("0": the first page)
-- ARGV[3]  page size (the SSCAN COUNT hint; a page may hold somewhat more or fewer ids)
--
-- Reply: {next_cursor, json} with json {"now_ms", "ver", "canary_group", "canary_percent",
--   "keys": [{id, status, reason, weight, group, errors, strikes, cooldown_until_ms,
--   last_status, last_used_ms, successes, failures, budget?}]}, or {"nopool"}. next_cursor "0":
--   done. budget (keys with limits only): {limits: {rpm, tpm, max_concurrent, rpd, tpd} (in
--   force: configured, else learned), learned: {rpm, tpm} (which were learned, 0: configured or
--   none), next_request_ms, next_tokens_ms, in_flight} (README "Budgets").
--   SSCAN may return an id on more than one page; the caller keeps one and sorts by id.
--
-- Consistency: each key is read whole and atomically, but a paged snapshot is not one atomic
-- moment: keys of different pages are read at different moments, and a change made between two
-- pages shows only if it touched a key of a later page. now_ms is the store clock of the first
-- page; every key due by then is recovered (cooling -> active, open -> half_open, quota ->
-- active) before it is read, so no key shows a deadline at or before now_ms. Work per page is
-- bounded by the page: each of its ids is checked against the due index and recovered if due.
-- ver is the pool's change counter (lib.lua bump) as the page saw it after its own recoveries.

if redis.call('EXISTS', META) == 0 then return {'nopool'} end
local now = clock(ARGV[1])
local scan = redis.call('SSCAN', B .. ':keys', ARGV[2], 'COUNT', tonumber(ARGV[3]) or 256)
local F = {'status', 'reason', 'weight', 'group', 'errors', 'strikes', 'cooldown_until_ms',
  'last_status', 'last_used_ms', 'successes', 'failures'}
-- Budgets are read only in a pool with budgets (a pool without costs what it did before): one
-- HMGET of the page's entries of kg:{P}:budget.
local budgets = {}
if redis.call('HGET', META, 'budgets') == '1' and #scan[2] > 0 then
  local v = redis.call('HMGET', BUDGETS, unpack(scan[2]))
  for i, id in ipairs(scan[2]) do budgets[id] = v[i] end
end

-- The key's budget record, nil without limits (src/store/budget.rs KeyBudget::record).
local function budget_record(id)
  if not budgets[id] then return nil end
  local b = budget_of(budgets[id])
  local rpm, tpm, conc, rpd, tpd = b[RPM], b[TPM], b[CONC], b[RPD], b[TPD]
  -- Learned limits are in force where the config sets none.
  local learned = {rpm = 0, tpm = 0}
  if b[CFG_RPM] == 0 then learned.rpm = b[L_RPM] end
  if b[CFG_TPM] == 0 then learned.tpm = b[L_TPM] end
  if rpm + tpm + conc + rpd + tpd == 0 then return nil end
  local function pick(l1, t1, l2, t2)
    local m = 0
    if l1 > 0 and t1 > m then m = t1 end
    if l2 > 0 and t2 > m then m = t2 end
    return m
  end
  local inflight = 0
  -- Up to +inf excluded: the set's member scored +inf is no lease (lib.lua KEEP_SORTED).
  if conc > 0 then inflight = redis.call('ZCOUNT', inflight_key(id), '(' .. now, '(+inf') end
  return {limits = {rpm = rpm, tpm = tpm, max_concurrent = conc, rpd = rpd, tpd = tpd},
    learned = learned,
    next_request_ms = pick(rpm, b[TAT_R], rpd, b[TAT_RD]),
    next_tokens_ms = pick(tpm, b[TAT_T], tpd, b[TAT_TD]), in_flight = inflight}
end
local keys = {}
for _, id in ipairs(scan[2]) do
  local due = redis.call('ZSCORE', DUE, id)
  if due and tonumber(due) <= now then
    redis.call('ZREM', DUE, id)
    recover_key(id)
  end
  local v = redis.call('HMGET', kkey(id), unpack(F))
  if v[1] then
    keys[#keys + 1] = {id = id, status = v[1], reason = v[2] or '', weight = num(v[3]),
      group = v[4] or 'stable', errors = num(v[5]), strikes = num(v[6]),
      cooldown_until_ms = num(v[7]), last_status = num(v[8]), last_used_ms = num(v[9]),
      successes = num(v[10]), failures = num(v[11]), budget = budget_record(id)}
  end
end
local meta = redis.call('HMGET', META, 'canary_group', 'canary_percent', 'ver')
local out = {now_ms = now, ver = num(meta[3]), canary_group = meta[1] or 'canary',
  canary_percent = num(meta[2]), keys = keys}
if #keys == 0 then
  return {scan[1], (cjson.encode(out):gsub('"keys":{}', '"keys":[]'))}
end
return {scan[1], cjson.encode(out)}
