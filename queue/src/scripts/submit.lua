-- KEYS: jobs, delayed, status, idempotency (or status again when there is none), in_flight, rate, events
-- ARGV: group, job_id, payload, max_backlog, in_flight_limit, rate_limit, window_ms, idempotency_ttl_s
--       (0: no key), status_ttl_s, events_maxlen, queued_event (with the position placeholder),
--       position_placeholder, stale_ms, deadline_ms (0: none)
local jobs, delayed, status, idem, in_flight, rate, events =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local group, id, payload = ARGV[1], ARGV[2], ARGV[3]
local max_backlog, in_flight_limit, rate_limit = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local window_ms, idem_ttl, status_ttl = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9]

if idem_ttl > 0 then
  local existing = redis.call('GET', idem)
  if existing then return {'duplicate', existing} end
end
-- A submit retried after a lost reply carries the same job id: answer with the first.
if redis.call('EXISTS', status) == 1 then return {'duplicate', id} end

local now = now_ms()
local deadline = tonumber(ARGV[14])
if deadline > 0 and deadline <= now then return {'late'} end

local waiting = redis.call('XLEN', jobs) - redis.call('XPENDING', jobs, group)[1]
local backlog = waiting + redis.call('ZCARD', delayed)
if backlog >= max_backlog then return {'full', backlog} end

local stale_ms = tonumber(ARGV[13])
if in_flight_limit > 0 then
  -- Members older than the longest a job can live are leftovers (say, a job whose status expired).
  redis.call('ZREMRANGEBYSCORE', in_flight, '-inf', now - stale_ms)
  local n = redis.call('ZCARD', in_flight)
  if n >= in_flight_limit then return {'busy', n} end
end
if rate_limit > 0 then
  redis.call('ZREMRANGEBYSCORE', rate, '-inf', now - window_ms)
  if redis.call('ZCARD', rate) >= rate_limit then
    local oldest = redis.call('ZRANGE', rate, 0, 0, 'WITHSCORES')
    return {'rate', tonumber(oldest[2]) + window_ms - now}
  end
end

local entry = redis.call('XADD', jobs, '*', 'job', payload)
if in_flight_limit > 0 then
  redis.call('ZADD', in_flight, as_arg(now), id)
  redis.call('PEXPIRE', in_flight, ARGV[13])
end
if rate_limit > 0 then
  redis.call('ZADD', rate, as_arg(now), id)
  redis.call('PEXPIRE', rate, ARGV[7])
end
if idem_ttl > 0 then redis.call('SET', idem, id, 'EX', ARGV[8]) end

local position = waiting + 1
local event = string.gsub(ARGV[11], ARGV[12], '"position":' .. as_arg(position), 1)
add_event(events, ARGV[10], event)
-- The request and the Queued event are not copied here: the stream entry and the event stream
-- hold them, and a waiting job should cost as little memory as possible.
local now_arg = as_arg(now)
redis.call('HSET', status, 'state', 'queued', 'entry', entry, 'submitted_ms', now_arg, 'updated_ms', now_arg)
redis.call('EXPIRE', status, status_ttl)
return {'queued', entry, position}
