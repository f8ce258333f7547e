-- Cancels a job that has not started; marks a running one so its worker stops it.
-- KEYS: jobs, status, delayed, delayed_jobs, events, in_flight
-- ARGV: group, job_id, event, events_maxlen, status_ttl_s, payload (kept: the entry goes away)
-- Returns 'missing', 'ended:<terminal state>', 'cancelled', or 'requested'.
local jobs, status, delayed, delayed_jobs, events, in_flight =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local group, id = ARGV[1], ARGV[2]
local state = redis.call('HGET', status, 'state')
if not state then return 'missing' end
if state == 'succeeded' or state == 'failed' or state == 'cancelled' then return 'ended:' .. state end

local function cancelled()
  add_event(events, ARGV[4], ARGV[3])
  redis.call('HSET', status, 'state', 'cancelled', 'last_event', ARGV[3], 'updated_ms', now_ms(),
    'request', ARGV[6])
  redis.call('EXPIRE', status, tonumber(ARGV[5]))
  redis.call('ZREM', in_flight, id)
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
