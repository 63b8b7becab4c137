-- report: apply the outcome of one upstream attempt to a key of pool P.
--
-- KEYS[1]  pool base "kg:{P}"
-- ARGV[1]  now_ms override (0: the server's TIME)
-- ARGV[2]  key id
-- ARGV[3]  outcome: success | rate_limited | quota_exhausted | unauthorized | server_error |
--          timeout | connect_error | client_error
-- ARGV[4]  cooldown hint in ms, -1 for none (Retry-After for rate_limited; for success, the
--          reset time announced with x-ratelimit-remaining-*: 0; for unauthorized, how long
--          to bench the key until keygate's own probe confirms the 401/403)
-- ARGV[5]  upstream HTTP status (0 when there was no answer)
-- ARGV[6]  1 when the attempt was keygate's own probe of the key: the half-open probe (from
--          select), or the confirmation probe of a benched key (cooling, auth_unconfirmed)
--
-- Reply: {"ok", status, changed 0|1, cooldown_until_ms, now_ms}  or {"nopool"} or {"nokey"}.
--
-- Late reports never undo newer state: a success only re-activates a half-open key through its
-- probe; cooling deadlines only grow; traffic never touches an admin-disabled or draining key's
-- status, and never re-enables a disabled one. Applying a report twice is harmless except for
-- the counters (a retried script after a timeout is rare and counters are informational).
-- Every failure stamps failed_at_ms = now: a batch of older successes (report_batch.lua) never
-- resets the errors a newer failure counted.
--
-- A 401/403 from traffic comes with a bench time: the key cools (reason auth_unconfirmed) and
-- the replica probes it. Only the probe's own answer decides: unauthorized with probe=1 and no
-- hint disables it, success with probe=1 re-activates it; both apply only to a key still benched.
-- unauthorized without a hint and without probe disables at once (restoring a known state).

if redis.call('EXISTS', META) == 0 then return {'nopool'} end
local now = clock(ARGV[1])
local id, outcome, hint = ARGV[2], ARGV[3], tonumber(ARGV[4]) or -1
local http_status, probe = ARGV[5], ARGV[6] == '1'
local k = load_key(id)
if not k then return {'nokey'} end
local before = k.status
local KK = kkey(id)

local p = redis.call('HMGET', META, 'cooldown_default_ms', 'cooldown_max_ms', 'breaker_errors',
  'breaker_window_ms', 'breaker_open_ms', 'quota_cooldown_ms')
local default_ms, max_ms, threshold = num(p[1]), num(p[2]), num(p[3])
local window_ms, open_base_ms, quota_ms = num(p[4]), num(p[5]), num(p[6])

-- Admin-owned states are never changed by traffic.
local admin_owned = k.status == 'draining' or (k.status == 'disabled' and k.reason ~= 'quota')

local benched = k.status == 'cooling' and k.reason == 'auth_unconfirmed'

local function cool(ms)
  if ms > max_ms then ms = max_ms end
  local deadline = now + ms
  if k.status == 'cooling' and k.cooldown_until_ms > deadline then deadline = k.cooldown_until_ms end
  set_status(k, 'cooling', 'rate_limited', deadline)
end

if outcome == 'client_error' then
  -- The caller's fault: nothing changes; a probe that ended this way frees its lease.
  if probe and k.status == 'half_open' then redis.call('ZADD', probe_key(k.group), 0, id) end
  return {'ok', k.status, 0, k.cooldown_until_ms, now}
end

redis.call('HSET', KK, 'last_status', http_status, 'last_used_ms', now)
if outcome == 'success' then
  redis.call('HINCRBY', KK, 'successes', 1)
  redis.call('HSET', KK, 'errors', 0, 'strikes', 0)
  if probe and (k.status == 'half_open' or benched) then
    redis.call('HSET', KK, 'open_ms', 0)
    set_status(k, 'active', '', nil)
  end
  if hint > 0 and (k.status == 'active' or k.status == 'cooling') then cool(hint) end
else
  redis.call('HINCRBY', KK, 'failures', 1)
  redis.call('HSET', KK, 'failed_at_ms', now)
  if admin_owned then
    -- counted above; the status stays the admin's
  elseif outcome == 'rate_limited' then
    if k.status == 'active' or k.status == 'cooling' or (k.status == 'half_open' and probe) then
      local ms = hint
      if ms < 0 then ms = default_ms * (2 ^ k.strikes) end
      redis.call('HSET', KK, 'strikes', k.strikes + 1)
      cool(ms)
    end
  elseif outcome == 'quota_exhausted' then
    local deadline = now + quota_ms
    if k.status == 'disabled' and k.cooldown_until_ms > deadline then deadline = k.cooldown_until_ms end
    set_status(k, 'disabled', 'quota', deadline)
  elseif outcome == 'unauthorized' and hint > 0 then
    -- May be the key's fault: benched until the probe answers or the deadline passes.
    if k.status == 'active' or k.status == 'cooling' or k.status == 'half_open' then
      local deadline = now + hint
      if k.status == 'cooling' and k.cooldown_until_ms > deadline then deadline = k.cooldown_until_ms end
      set_status(k, 'cooling', 'auth_unconfirmed', deadline)
    end
  elseif outcome == 'unauthorized' then
    if benched or not probe then set_status(k, 'disabled', 'unauthorized', nil) end
  elseif k.status == 'active' then
    -- server_error, timeout, connect_error: count in the breaker window.
    local errors = k.errors
    if now - k.window_start_ms >= window_ms then
      errors = 0
      redis.call('HSET', KK, 'window_start_ms', now)
    end
    errors = errors + 1
    redis.call('HSET', KK, 'errors', errors)
    if errors >= threshold then
      redis.call('HSET', KK, 'open_ms', open_base_ms)
      set_status(k, 'open', 'breaker', now + open_base_ms)
    end
  elseif k.status == 'half_open' and probe then
    local ms = k.open_ms * 2
    if ms < open_base_ms then ms = open_base_ms end
    local cap = max_ms
    if cap < open_base_ms then cap = open_base_ms end
    if ms > cap then ms = cap end
    redis.call('HSET', KK, 'open_ms', ms)
    set_status(k, 'open', 'breaker', now + ms)
  end
end
local changed = 0
if k.status ~= before then changed = 1 end
return {'ok', k.status, changed, num(redis.call('HGET', KK, 'cooldown_until_ms')), now}
