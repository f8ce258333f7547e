-- Writes terminal events, then acknowledges and deletes the entries. A script runs atomically, so
-- no job is acknowledged without its event, whatever happens to the caller.
-- Many jobs go in one call, so a busy worker pays one round trip for a whole batch.
-- KEYS: jobs, then per job: status, events, in_flight
-- ARGV: group, consumer, events_maxlen, status_ttl_s, track_in_flight (0/1),
--       then per job: entry, job_id, state, event, payload
-- Returns per job 'done', 'finished' or 'lost' (see `ownership`).
local jobs, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local maxlen, ttl, track = ARGV[3], tonumber(ARGV[4]), ARGV[5] == '1'
local now = now_ms()
local results, owned = {}, {}
for j = 0, (#KEYS - 1) / 3 - 1 do
  local status, events, in_flight = KEYS[2 + 3 * j], KEYS[3 + 3 * j], KEYS[4 + 3 * j]
  local entry, id, state, event, payload =
    ARGV[6 + 5 * j], ARGV[7 + 5 * j], ARGV[8 + 5 * j], ARGV[9 + 5 * j], ARGV[10 + 5 * j]
  local owner = ownership(jobs, group, entry, consumer, status)
  if owner == 'mine' then
    add_event(events, maxlen, event)
    -- `request` and `entry` matter for jobs added by a raw client, which have no status yet.
    redis.call('HSET', status, 'state', state, 'last_event', event, 'updated_ms', now,
      'request', payload, 'entry', entry)
    redis.call('EXPIRE', status, ttl)
    if track then redis.call('ZREM', in_flight, id) end
    table.insert(owned, entry)
  end
  table.insert(results, owner == 'mine' and 'done' or owner)
end
-- One XACK and one XDEL for the whole batch; the batch is far below Lua's unpack limit.
if #owned > 0 then
  redis.call('XACK', jobs, group, unpack(owned))
  redis.call('XDEL', jobs, unpack(owned))
end
return results
