-- Moves an entry to the dead letters with the reason; when the job's requester can be told (its
-- id and origin could be read), it gets the Failed event and the job keeps a status. The entry
-- is acknowledged and deleted in the same step.
-- KEYS: jobs, dead_letters, status, events, in_flight, scope_in_flight (the last four are
--       dead_letters again when nobody can be told)
-- ARGV: group, consumer, entry, reason, raw fields (JSON), dlq_maxlen, event ('' when nobody can
--       be told), job_id ('' when unknown), status_ttl_s, payload ('' when unreadable),
--       events_max_age_ms
local jobs, dlq, status, events, in_flight, scope_in_flight =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local group, consumer, entry, event, id = ARGV[1], ARGV[2], ARGV[3], ARGV[7], ARGV[8]
local p = redis.call('XPENDING', jobs, group, entry, entry, '1')
if #p == 0 or p[1][2] ~= consumer then return 'lost' end
if event ~= '' then
  local owner = ownership(jobs, group, entry, consumer, status)
  -- A second entry for a job that has its own life gets no event of its own.
  if owner == 'duplicate' then
    set_aside_duplicate(jobs, group, entry, dlq, ARGV[6], status, id)
    return 'duplicate'
  end
end
redis.call('XADD', dlq, 'MAXLEN', '~', ARGV[6], '*', 'entry', entry, 'reason', ARGV[4],
  'fields', ARGV[5], 'job_id', id)
if event ~= '' then
  local now = now_ms()
  local event_entry = add_event(events, event)
  redis.call('HSET', status, 'state', 'failed', 'updated_ms', now)
  if ARGV[10] ~= '' then redis.call('HSET', status, 'request', ARGV[10]) end
  set_last_event(status, event, event_entry)
  redis.call('EXPIRE', status, tonumber(ARGV[9]))
  redis.call('ZREM', in_flight, id)
  redis.call('ZREM', scope_in_flight, id)
  trim_events(events, now, tonumber(ARGV[9]) * 1000, tonumber(ARGV[11]))
end
ack_delete(jobs, group, entry)
return 'done'
