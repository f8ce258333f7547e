-- Cancels a job that has not started; marks a running one so its worker stops it. The caller's
-- right to cancel is checked before (the request names who asked).
-- KEYS: jobs, status, delayed, delayed_jobs, events, in_flight, scope_in_flight
-- ARGV: group, job_id, event, status_ttl_s, payload (kept: the entry goes away),
--       events_max_age_ms
-- Returns 'missing', 'ended:<terminal state>', 'cancelled', or 'requested'.
local jobs, status, delayed, delayed_jobs, events, in_flight, scope_in_flight =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local group, id = ARGV[1], ARGV[2]
local state = redis.call('HGET', status, 'state')
if not state then return 'missing' end
if is_terminal(state) then return 'ended:' .. state end

local function cancelled()
  local now = now_ms()
  local event_entry = add_event(events, ARGV[3])
  redis.call('HSET', status, 'state', 'cancelled', 'updated_ms', now, 'request', ARGV[5])
  set_last_event(status, ARGV[3], event_entry)
  redis.call('EXPIRE', status, tonumber(ARGV[4]))
  redis.call('ZREM', in_flight, id)
  redis.call('ZREM', scope_in_flight, id)
  trim_events(events, now, tonumber(ARGV[4]) * 1000, tonumber(ARGV[6]))
  return 'cancelled'
end

if redis.call('ZREM', delayed, id) == 1 then
  redis.call('HDEL', delayed_jobs, id)
  return cancelled()
end
local entry = redis.call('HGET', status, 'entry')
if entry then
  local p = redis.call('XPENDING', jobs, group, entry, entry, '1')
  -- Not delivered yet: deleting the entry means no worker will ever see it.
  if #p == 0 and redis.call('XDEL', jobs, entry) == 1 then return cancelled() end
end
redis.call('HSET', status, 'cancel', 1)
return 'requested'
