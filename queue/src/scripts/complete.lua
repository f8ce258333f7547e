-- Writes terminal events, then acknowledges and deletes the entries. A script runs atomically, so
-- no job is acknowledged without its event, whatever happens to the caller.
-- Many jobs go in one call, so a busy worker pays one round trip for a whole batch.
-- KEYS: jobs, dlq, then per job: status, events, in_flight, scope_in_flight
-- ARGV: group, consumer, status_ttl_s, read (how many new entries to read for the consumer),
--       dlq_maxlen, events_max_age_ms, then per job: entry, job_id, state, event, payload
-- Returns {per job 'done', 'finished', 'lost' or 'duplicate' (see `ownership`), the XREADGROUP
-- reply or false}.
local jobs, dlq, group, consumer = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local ttl, read, dlq_maxlen, max_age_ms = ARGV[3], tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local now = now_ms()
local now_arg = as_arg(now)
local results, owned, seen, streams = {}, {}, {}, {}
for j = 0, (#KEYS - 2) / 4 - 1 do
  local status, events, in_flight, scope_in_flight =
    KEYS[3 + 4 * j], KEYS[4 + 4 * j], KEYS[5 + 4 * j], KEYS[6 + 4 * j]
  local entry, id, state, event, payload =
    ARGV[7 + 5 * j], ARGV[8 + 5 * j], ARGV[9 + 5 * j], ARGV[10 + 5 * j], ARGV[11 + 5 * j]
  local owner
  if seen[entry] then
    -- The same entry twice in one batch: the first one wrote its end.
    owner = 'finished'
  else
    owner = ownership(jobs, group, entry, consumer, status)
  end
  seen[entry] = true
  if owner == 'duplicate' then
    set_aside_duplicate(jobs, group, entry, dlq, dlq_maxlen, status, id)
  elseif owner == 'mine' then
    local event_entry = add_event(events, event)
    streams[events] = true
    -- The request is kept because the entry that held it is about to go.
    redis.call('HSET', status, 'state', state, 'updated_ms', now_arg, 'request', payload)
    set_last_event(status, event, event_entry)
    redis.call('EXPIRE', status, ttl)
    redis.call('ZREM', in_flight, id)
    redis.call('ZREM', scope_in_flight, id)
    table.insert(owned, entry)
  end
  table.insert(results, owner == 'mine' and 'done' or owner)
end
-- One XACK and one XDEL for the whole batch; the batch is far below Lua's unpack limit.
if #owned > 0 then
  redis.call('XACK', jobs, group, unpack(owned))
  redis.call('XDEL', jobs, unpack(owned))
end
for events in pairs(streams) do
  trim_events(events, now, tonumber(ttl) * 1000, max_age_ms)
end
-- The worker's freed slots take their next jobs in the same call (a script cannot block, so this
-- reads only what is there).
local fresh = false
if read > 0 then
  fresh = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', ARGV[4], 'STREAMS', jobs, '>')
end
return {results, fresh}
