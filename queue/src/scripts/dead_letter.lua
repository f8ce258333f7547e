-- Moves an entry to the dead letters with the reason; when the job could be decoded, its
-- requester gets the Failed event. The entry is acknowledged and deleted in the same step.
-- KEYS: jobs, dead_letters, status, events, in_flight (the last three are dead_letters again
--       when the entry could not be decoded)
-- ARGV: group, consumer, entry, reason, raw fields (JSON), events_maxlen, event ('' when
--       undecodable), job_id, status_ttl_s, payload
local jobs, dlq, status, events, in_flight = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local group, consumer, entry = ARGV[1], ARGV[2], ARGV[3]
local p = redis.call('XPENDING', jobs, group, entry, entry, '1')
if #p == 0 or p[1][2] ~= consumer then return 'lost' end
redis.call('XADD', dlq, 'MAXLEN', '~', ARGV[6], '*', 'entry', entry, 'reason', ARGV[4],
  'fields', ARGV[5], 'job_id', ARGV[8])
local state = ARGV[7] ~= '' and redis.call('HGET', status, 'state')
local ended = state == 'succeeded' or state == 'failed' or state == 'cancelled'
-- A job whose id already ended (a raw client added it twice) gets no second terminal event.
if ARGV[7] ~= '' and not ended then
  add_event(events, ARGV[6], ARGV[7])
  redis.call('HSET', status, 'state', 'failed', 'last_event', ARGV[7], 'updated_ms', now_ms(),
    'request', ARGV[10])
  redis.call('EXPIRE', status, tonumber(ARGV[9]))
  redis.call('ZREM', in_flight, ARGV[8])
end
ack_delete(jobs, group, entry)
return 'done'
