-- Moves a job into the delayed set for a backoff, writing its Retrying event first.
-- KEYS: jobs, status, events, delayed, delayed_jobs
-- ARGV: group, consumer, entry, job_id, delay_ms, event, events_maxlen, status_ttl_s, payload, attempt
local jobs, status, events, delayed, delayed_jobs = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local group, consumer, entry, id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local owner = ownership(jobs, group, entry, consumer, status)
-- A repeat of a call whose reply was lost: the job already waits in the delayed set.
if owner == 'lost' and redis.call('HGET', status, 'state') == 'retrying' then return 'done' end
if owner ~= 'mine' then return owner end
-- Someone cancelled the job while this attempt ran: it must not come back.
if redis.call('HGET', status, 'cancel') == '1' then return 'cancelled' end
local now = now_ms()
redis.call('ZADD', delayed, now + tonumber(ARGV[5]), id)
redis.call('HSET', delayed_jobs, id, ARGV[10] .. ' ' .. ARGV[9])
add_event(events, ARGV[7], ARGV[6])
redis.call('HSET', status, 'state', 'retrying', 'attempt', ARGV[10], 'request', ARGV[9],
  'last_event', ARGV[6], 'updated_ms', now)
redis.call('HDEL', status, 'entry')
redis.call('EXPIRE', status, tonumber(ARGV[8]))
ack_delete(jobs, group, entry)
return 'done'
