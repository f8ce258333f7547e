-- Queues a job: checks its idempotency key, its deadline, the backlog and the limits of its
-- requester and of its scope, then adds it with its Queued event, all at once.
-- KEYS: jobs, delayed, status, idempotency (or status again when there is none), in_flight,
--       rate, events, scope_in_flight, scope_rate
-- ARGV: group, job_id, payload, max_backlog, in_flight_limit, rate_limit, window_ms,
--       idempotency_ttl_s (0: no key), status_ttl_s, queued_event (with the position
--       placeholder), position_placeholder, stale_ms, deadline_ms (0: none),
--       scope_in_flight_limit, scope_rate_limit, scope_window_ms
-- Limits of 0 mean none. Returns {'queued', entry, position}, {'duplicate', first job id},
-- {'late'}, {'full', backlog}, {'busy', n}, {'rate', retry_ms}, {'scope_busy', n} or
-- {'scope_rate', retry_ms}.
local jobs, delayed, status, idem, in_flight, rate, events, scope_in_flight, scope_rate =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local group, id, payload = ARGV[1], ARGV[2], ARGV[3]
local max_backlog, in_flight_limit, rate_limit = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local window_ms, idem_ttl, status_ttl = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9]
local stale_ms, deadline = tonumber(ARGV[12]), tonumber(ARGV[13])
local scope_in_flight_limit, scope_rate_limit, scope_window_ms =
  tonumber(ARGV[14]), tonumber(ARGV[15]), tonumber(ARGV[16])

if idem_ttl > 0 then
  local existing = redis.call('GET', idem)
  if existing then return {'duplicate', existing} end
end
-- A submit retried after a lost reply carries the same job id: answer with the first.
if redis.call('EXISTS', status) == 1 then return {'duplicate', id} end

local now = now_ms()
if deadline > 0 and deadline <= now then return {'late'} end

local waiting = redis.call('XLEN', jobs) - redis.call('XPENDING', jobs, group)[1]
local backlog = waiting + redis.call('ZCARD', delayed)
if backlog >= max_backlog then return {'full', backlog} end

-- The unfinished jobs of a requester and of a scope are always tracked (a limit may be set
-- later, and "my jobs" lists them); members older than the longest a job can live are leftovers,
-- say of a job whose status expired.
redis.call('ZREMRANGEBYSCORE', in_flight, '-inf', now - stale_ms)
redis.call('ZREMRANGEBYSCORE', scope_in_flight, '-inf', now - stale_ms)
local function busy(set, limit)
  if limit == 0 then return nil end
  local n = redis.call('ZCARD', set)
  if n >= limit then return n end
  return nil
end
-- Milliseconds until the window has room again, or nil when it has room now.
local function too_fast(set, limit, window)
  if limit == 0 then return nil end
  redis.call('ZREMRANGEBYSCORE', set, '-inf', now - window)
  if redis.call('ZCARD', set) < limit then return nil end
  local oldest = redis.call('ZRANGE', set, 0, 0, 'WITHSCORES')
  return tonumber(oldest[2]) + window - now
end
local n = busy(in_flight, in_flight_limit)
if n then return {'busy', n} end
local wait = too_fast(rate, rate_limit, window_ms)
if wait then return {'rate', wait} end
n = busy(scope_in_flight, scope_in_flight_limit)
if n then return {'scope_busy', n} end
wait = too_fast(scope_rate, scope_rate_limit, scope_window_ms)
if wait then return {'scope_rate', wait} end

local entry = redis.call('XADD', jobs, '*', 'job', payload)
local now_arg = as_arg(now)
for _, set in ipairs({in_flight, scope_in_flight}) do
  redis.call('ZADD', set, now_arg, id)
  redis.call('PEXPIRE', set, ARGV[12])
end
if rate_limit > 0 then
  redis.call('ZADD', rate, now_arg, id)
  redis.call('PEXPIRE', rate, ARGV[7])
end
if scope_rate_limit > 0 then
  redis.call('ZADD', scope_rate, now_arg, id)
  redis.call('PEXPIRE', scope_rate, ARGV[16])
end
if idem_ttl > 0 then redis.call('SET', idem, id, 'EX', ARGV[8]) end

local position = waiting + 1
local event = string.gsub(ARGV[10], ARGV[11], '"position":' .. as_arg(position), 1)
local event_entry = add_event(events, event)
-- The request and the Queued event are not copied here: the stream entry and the event stream
-- hold them, and a waiting job should cost as little memory as possible.
redis.call('HSET', status, 'state', 'queued', 'entry', entry, 'submitted_ms', now_arg,
  'updated_ms', now_arg, 'event_entry', event_entry)
redis.call('EXPIRE', status, status_ttl)
return {'queued', entry, position}
