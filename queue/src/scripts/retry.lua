-- Moves a job into the delayed set for a backoff, writing its Retrying event first.
-- KEYS: jobs, status, events, delayed, delayed_jobs, dlq
-- ARGV: group, consumer, entry, job_id, delay_ms, event, status_ttl_s, payload, attempt,
--       dlq_maxlen
local jobs, status, events, delayed, delayed_jobs, dlq =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local group, consumer, entry, id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
-- A repeat of a call whose reply was lost: the job already waits in the delayed set.
local p = redis.call('XPENDING', jobs, group, entry, entry, '1')
if #p == 0 and redis.call('HGET', status, 'state') == 'retrying' then return 'done' end
local owner = ownership(jobs, group, entry, consumer, status)
if owner == 'duplicate' then
  set_aside_duplicate(jobs, group, entry, dlq, ARGV[10], status, id)
  return owner
end
if owner ~= 'mine' then return owner end
-- Someone cancelled the job while this attempt ran: it must not come back.
if redis.call('HGET', status, 'cancel') == '1' then return 'cancelled' end
local now = now_ms()
redis.call('ZADD', delayed, now + tonumber(ARGV[5]), id)
redis.call('HSET', delayed_jobs, id, ARGV[9] .. ' ' .. ARGV[8])
local event_entry = add_event(events, ARGV[6])
redis.call('HSET', status, 'state', 'retrying', 'attempt', ARGV[9], 'request', ARGV[8],
  'updated_ms', now)
set_last_event(status, ARGV[6], event_entry)
redis.call('HDEL', status, 'entry')
redis.call('EXPIRE', status, tonumber(ARGV[7]))
ack_delete(jobs, group, entry)
return 'done'
