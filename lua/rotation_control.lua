-- rotation_control: an operator pauses, resumes or aborts the pool's rotation plan.
--
-- KEYS[1]  pool base "kg:{P}"
-- ARGV[1]  now_ms override (0: the server's TIME)
-- ARGV[2]  "pause" | "resume" | "abort"
-- ARGV[3]  reason (recorded; abort only)
--
-- Reply: {"ok", new state} | {"noplan"} | {"badstate", state}.
-- pause: running -> paused (the driver stops writing; the canary percent stays).
-- resume: paused -> running; the current step's dwell time starts again.
-- abort: running | paused -> aborted, canary percent 0 (the caller then drains the new keys).

local now = clock(ARGV[1])
local state = redis.call('HGET', ROT, 'state')
if not state then return {'noplan'} end
local action = ARGV[2]
local next_state
if action == 'pause' and state == 'running' then next_state = 'paused'
elseif action == 'resume' and state == 'paused' then
  next_state = 'running'
  redis.call('HSET', ROT, 'step_started_ms', now)
elseif action == 'abort' and (state == 'running' or state == 'paused') then
  next_state = 'aborted'
  redis.call('HSET', ROT, 'reason', ARGV[3])
  if redis.call('EXISTS', META) == 1 then set_canary_percent(0) end
else
  return {'badstate', state}
end
redis.call('HSET', ROT, 'state', next_state, 'updated_ms', now)
local fence = tonumber(redis.call('HGET', LEASE, 'fence') or '0')
history(now, fence, 'admin', action, ARGV[3])
return {'ok', next_state}
