-- Rotation plan helpers: every rotation_*.lua script runs after lib.lua and this file
-- (src/store/scripts.rs). The rotation plan of pool P lives beside the pool's keys:
--   kg:{P}:rot         hash  the plan: id state new_keys old_keys steps step step_started_ms
--                            min_requests min_dwell_ms max_error_increase max_p99_ratio
--                            p99_slack_ms reason started_ms updated_ms auto_for
--                            (state: running | paused | rolled_back | done | aborted)
--   kg:{P}:rot:lease   hash  holder (replica id), until_ms, fence (the fencing token: +1 at
--                            every change of holder, never reused)
--   kg:{P}:rot:hist    list  the plan's history, newest first, at most 200 entries:
--                            "<ms> <fence> <replica> <event> <detail>"
--   kg:{P}:rot:stats   hash  "<step>:<group>:<field>" -> count, summed over every replica
-- Invariant: only the lease holder with the current fence changes a running plan or the canary
-- percent (rotation_write.lua checks both inside the script); operators (rotation_start,
-- rotation_control) act with their own authority and are recorded as replica "admin".

-- The plan's key names, set per call by rotation_begin() (after lib.lua begin()).
local ROT, LEASE, HIST, STATS
local function rotation_begin()
  ROT, LEASE, HIST, STATS = B .. ':rot', B .. ':rot:lease', B .. ':rot:hist', B .. ':rot:stats'
end

local function history(now, fence, replica, event, detail)
  redis.call('LPUSH', HIST, now .. ' ' .. fence .. ' ' .. replica .. ' ' .. event .. ' ' .. (detail or ''))
  redis.call('LTRIM', HIST, 0, 199)
end

local function set_canary_percent(p)
  redis.call('HSET', META, 'canary_percent', p)
  bump()
end
