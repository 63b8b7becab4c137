-- set_state: an operator's enable / disable / drain of one key.
--
-- KEYS[1]  pool base "kg:{P}"
-- ARGV[1]  now_ms override (0: the server's TIME) (unused; kept for a uniform calling convention)
-- ARGV[2]  key id
-- ARGV[3]  "enable" | "disable" | "drain"
--
-- Reply: {"ok", status} or {"nopool"} or {"nokey"}.
-- enable clears errors, strikes, breaker backoff and any deadline; disable and drain stay until
-- an operator enables the key again (traffic never undoes them).

if redis.call('EXISTS', META) == 0 then return {'nopool'} end
local k = load_key(ARGV[2])
if not k then return {'nokey'} end
local action = ARGV[3]
if action == 'enable' then
  redis.call('HSET', kkey(k.id), 'errors', 0, 'strikes', 0, 'open_ms', 0)
  set_status(k, 'active', '', nil)
elseif action == 'disable' then
  set_status(k, 'disabled', 'admin', nil)
elseif action == 'drain' then
  set_status(k, 'draining', 'admin', nil)
else
  return redis.error_reply('ERR unknown action ' .. tostring(action))
end
return {'ok', k.status}
