-- Writes a non-terminal event (Starting, Progress) for a job this consumer holds.
-- KEYS: jobs, status, events, dlq
-- ARGV: group, consumer, entry, event, status_ttl_s, job_id, dlq_maxlen
-- Returns {ownership, cancel requested (0/1)}; a 'duplicate' entry is set aside here.
local jobs, status, events, dlq = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, consumer, entry = ARGV[1], ARGV[2], ARGV[3]
local owner = ownership(jobs, group, entry, consumer, status)
if owner == 'duplicate' then
  set_aside_duplicate(jobs, group, entry, dlq, ARGV[7], status, ARGV[6])
  return {owner, 0}
end
if owner ~= 'mine' then return {owner, 0} end
local event_entry = add_event(events, ARGV[4])
redis.call('HSET', status, 'state', 'running', 'updated_ms', now_ms())
set_last_event(status, ARGV[4], event_entry)
redis.call('EXPIRE', status, tonumber(ARGV[5]))
return {'mine', redis.call('HGET', status, 'cancel') == '1' and 1 or 0}
