-- Writes terminal events, then acknowledges and deletes the entries. A script runs atomically, so
-- no job is acknowledged without its event, whatever happens to the caller.
-- Many jobs go in one call, so a busy worker pays one round trip for a whole batch.
-- KEYS: jobs, then per job: status, events, in_flight
-- ARGV: group, consumer, events_maxlen, status_ttl_s, read (how many new
--       entries to read for the consumer), then per job: entry, job_id, state, event, payload
-- Returns {per job 'done', 'finished' or 'lost' (see `ownership`), the XREADGROUP reply or false}.
local jobs, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local maxlen, ttl, read = ARGV[3], ARGV[4], tonumber(ARGV[5])
local now = as_arg(now_ms())
local results, owned, seen = {}, {}, {}
for j = 0, (#KEYS - 1) / 3 - 1 do
  local status, events, in_flight = KEYS[2 + 3 * j], KEYS[3 + 3 * j], KEYS[4 + 3 * j]
  local entry, id, state, event, payload =
    ARGV[6 + 5 * j], ARGV[7 + 5 * j], ARGV[8 + 5 * j], ARGV[9 + 5 * j], ARGV[10 + 5 * j]
  local owner = ownership(jobs, group, entry, consumer, status)
  local state_now = owner == 'mine' and redis.call('HGET', status, 'state')
  if seen[entry] or state_now == 'succeeded' or state_now == 'failed' or state_now == 'cancelled' then
    -- The same entry twice in one batch, or a second entry with the id of a job that has already
    -- ended (a raw client added it twice): exactly one terminal event per job, so this one is
    -- acknowledged without writing another.
    if owner == 'mine' and not seen[entry] then table.insert(owned, entry) end
    owner = 'finished'
  end
  seen[entry] = true
  if owner == 'mine' then
    add_event(events, maxlen, event)
    -- The request is kept because the entry that held it is about to go.
    redis.call('HSET', status, 'state', state, 'last_event', event, 'updated_ms', now,
      'request', payload)
    redis.call('EXPIRE', status, ttl)
    redis.call('ZREM', in_flight, id)
    table.insert(owned, entry)
  end
  table.insert(results, owner == 'mine' and 'done' or owner)
end
-- One XACK and one XDEL for the whole batch; the batch is far below Lua's unpack limit.
if #owned > 0 then
  redis.call('XACK', jobs, group, unpack(owned))
  redis.call('XDEL', jobs, unpack(owned))
end
-- The worker's freed slots take their next jobs in the same call (a script cannot block, so this
-- reads only what is there).
local fresh = false
if read > 0 then
  fresh = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', ARGV[5], 'STREAMS', jobs, '>')
end
return {results, fresh}
