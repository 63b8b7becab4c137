-- report_batch: apply many keys' buffered successes of pool P in one call (successes commute,
-- so a replica adds them up per key and flushes them about every report_flush_ms).
--
-- KEYS[1]  pool base "kg:{P}"
-- ARGV[1]  now_ms override (0: the server's TIME)
-- ARGV[2]  k = how many keys' successes follow
-- then k groups of 4: key id, success count n (>= 1), the last upstream HTTP status, age_ms
--          (how long before this call the key's newest success of the batch happened,
--          measured by the replica's monotonic clock)
-- then h = how many keys' provider hints follow (pools with budgets; README "Budgets"), and
--          h groups of 8: key id, age_ms of the answer that carried them, remaining_requests,
--          reset_requests_ms, remaining_tokens, reset_tokens_ms, limit_requests, limit_tokens
--          (-1: not said); each is applied as lib.lua budget_learn at seen = now - age_ms
-- then triples until the end: key id, lease id (0: none), token delta (real - reserved) of
--          requests on budgeted keys that ended (lib.lua budget_end, as settle.lua does)
--
-- Reply: {"ok", applied, held, now_ms} (applied: keys found; held: keys whose error reset was
--        withheld, see below) or {"nopool"}. Unknown key ids are skipped.
--
-- Per key: successes += n, last_used_ms = max(last_used_ms, seen_ms) with
-- seen_ms = now - age_ms (when the newest success would have reached Redis had it been reported
-- at once), and -- unless a failure is newer -- errors = strikes = 0 and last_status.
-- The late-failure rule: every failure report stamps failed_at_ms = its now (report.lua). The
-- batch resets errors/strikes and sets last_status only when failed_at_ms < seen_ms; a failure
-- in the same millisecond or later wins and is left in place (the key is counted in `held`).
-- The successes never change a status: a half-open key is re-activated only by its probe's own
-- report, and successes carrying a cooldown hint go through report.lua, never through a batch.
-- Hints and ended requests change only budget state, and a key's status only as budget_place
-- does (benched by its budget, or back from it). Their cost: one HMGET of every budget the
-- batch names, per key one ZREM of its ended leases (and its hash read, unless it also had
-- successes), one HSET of every budget changed; each key is placed once, after all its ends.

if redis.call('EXISTS', META) == 0 then return {'nopool'} end
DEFER = true
kb_memo = {}
local now = clock(ARGV[1])
local applied, held = 0, 0
local call, fmt = redis.call, string.format
local nkeys = tonumber(ARGV[2]) or 0
-- With a budget part (hints or ended requests follow the successes), the success read also
-- takes the key's reason, with its status all budget_place needs unless the status changes
-- (lib.lua load_key_budget then finds the key in kb_memo).
local tail = 3 + 4 * nkeys
local budget_part = (tonumber(ARGV[tail]) or 0) > 0 or tail + 1 <= #ARGV
for i = 3, 2 + 4 * nkeys - 3, 4 do
  local n = tonumber(ARGV[i + 1]) or 0
  local seen = now - (tonumber(ARGV[i + 3]) or 0)
  if seen < 0 then seen = 0 end
  local KK = kkey(ARGV[i])
  -- One read and one write per key (not HINCRBY plus up to two HSETs): with many distinct keys
  -- per batch these calls are most of the batch's cost (BENCHMARKS.md, "The report batch's Lua"). The script is
  -- atomic, so old + n written back is the same as HINCRBY, and max(old, seen) written back is
  -- last_used_ms kept or moved forward. The write's fields are spelled out, not built as a table
  -- for unpack: at 10,000 keys this loop runs about once per request.
  local v
  if budget_part then
    v = call('HMGET', KK, 'status', 'failed_at_ms', 'last_used_ms', 'successes', 'reason')
    -- The rest of what budget_place needs is read only if the key's status is to change
    -- (lib.lua key_rest): 4,000 Redis instructions a request less (BENCHMARKS.md, "A pick
    -- without its tables").
    if v[1] then
      kb_memo[ARGV[i]] = {id = ARGV[i], status = v[1], reason = v[5] or '', partial = true}
    end
  else
    v = call('HMGET', KK, 'status', 'failed_at_ms', 'last_used_ms', 'successes')
  end
  if v[1] and n > 0 then
    applied = applied + 1
    local succ = fmt('%d', num(v[4]) + n)
    local used = fmt('%d', max(num(v[3]), seen))
    if num(v[2]) < seen then
      call('HSET', KK, 'successes', succ, 'last_used_ms', used,
        'errors', '0', 'strikes', '0', 'last_status', ARGV[i + 2])
    else
      held = held + 1
      call('HSET', KK, 'successes', succ, 'last_used_ms', used)
    end
  end
end
local i = 3 + 4 * nkeys
local nhints = tonumber(ARGV[i]) or 0
i = i + 1
if nhints > 0 or i <= #ARGV then
  local meta = call('HMGET', META, 'mrt', 'learn')
  local mrt, learn = num(meta[1]), meta[2] == '1'
  -- Every budget the batch names, read with one HMGET (lib.lua load_budget then finds them).
  local ids, seen_id = {}, {}
  local function want(id)
    if not seen_id[id] then
      seen_id[id] = true
      ids[#ids + 1] = id
    end
  end
  local j = i
  for _ = 1, nhints do
    want(ARGV[j])
    j = j + 8
  end
  while j + 2 <= #ARGV do
    want(ARGV[j])
    j = j + 3
  end
  for c = 1, #ids, 512 do
    local part = {unpack(ids, c, min(c + 511, #ids))}
    local v = call('HMGET', BUDGETS, unpack(part))
    for x, id in ipairs(part) do bcache[id] = budget_of(v[x]) end
  end
  for _ = 1, nhints do
    local id = ARGV[i]
    local k, b = load_key_budget(id)
    if k then
      local seen = max(now - (tonumber(ARGV[i + 1]) or 0), 0)
      local h = {}
      for j = 1, 6 do h[j] = tonumber(ARGV[i + 1 + j]) or -1 end
      budget_learn(id, b, h, seen, learn, mrt)
      budget_place(k, b, now)
    end
    i = i + 8
  end
  while i + 2 <= #ARGV do
    budget_end(ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]) or 0, mrt, now)
    i = i + 3
  end
  place_ended(now)
end
flush()
return {'ok', applied, held, now}
