-- Writes a non-terminal event (Starting, Progress) for a job this consumer holds.
-- KEYS: jobs, status, events
-- ARGV: group, consumer, entry, event, events_maxlen, status_ttl_s
-- Returns {ownership, cancel requested (0/1)}.
local jobs, status, events = KEYS[1], KEYS[2], KEYS[3]
local owner = ownership(jobs, ARGV[1], ARGV[3], ARGV[2], status)
if owner ~= 'mine' then return {owner, 0} end
add_event(events, ARGV[5], ARGV[4])
redis.call('HSET', status, 'state', 'running', 'last_event', ARGV[4], 'updated_ms', now_ms())
redis.call('HSETNX', status, 'entry', ARGV[3])
redis.call('EXPIRE', status, tonumber(ARGV[6]))
return {'mine', redis.call('HGET', status, 'cancel') == '1' and 1 or 0}
