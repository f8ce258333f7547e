-- Writes a job's terminal event, then acknowledges and deletes its entry: all or nothing.
-- KEYS: jobs, status, events, in_flight
-- ARGV: group, consumer, entry, job_id, state, event, events_maxlen, status_ttl_s, payload
local jobs, status, events, in_flight = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, consumer, entry = ARGV[1], ARGV[2], ARGV[3]
local owner = ownership(jobs, group, entry, consumer, status)
if owner ~= 'mine' then return owner end
add_event(events, ARGV[7], ARGV[6])
redis.call('HSET', status, 'state', ARGV[5], 'last_event', ARGV[6], 'updated_ms', now_ms())
-- Jobs added by a raw client have no status yet.
redis.call('HSETNX', status, 'request', ARGV[9])
redis.call('HSETNX', status, 'entry', entry)
redis.call('EXPIRE', status, tonumber(ARGV[8]))
redis.call('ZREM', in_flight, ARGV[4])
ack_delete(jobs, group, entry)
return 'done'
