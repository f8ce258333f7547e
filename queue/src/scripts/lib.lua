-- Shared helpers, prepended to every script (see scripts.rs).

-- The Redis server's clock in milliseconds: every queue timing uses it, so workers with skewed
-- clocks still agree on leases, windows and due times.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Numbers handed to redis.call are formatted with '%.17g', which costs more than the command
-- itself; scripts pass strings (ARGV as given, or this once per call).
local function as_arg(n)
  return string.format('%d', n)
end

local function is_terminal(state)
  return state == 'succeeded' or state == 'failed' or state == 'cancelled'
end

-- Where `consumer` stands with `entry` of the job whose status hash is `status`:
--   'mine'      it holds the entry, and the entry is the job's (a raw job's first entry claims
--               its id here);
--   'duplicate' it holds the entry, but the job id is another entry's (queued, running, waiting
--               out a retry, or finished): a second entry for one job, which must never run;
--   'finished'  the entry is gone and the job has its terminal state;
--   'lost'      another consumer took the entry over.
local function ownership(jobs, group, entry, consumer, status)
  local p = redis.call('XPENDING', jobs, group, entry, entry, '1')
  if #p == 1 and p[1][2] == consumer then
    local fields = redis.call('HMGET', status, 'state', 'entry')
    local state, owner = fields[1], fields[2]
    if owner then
      if owner ~= entry then return 'duplicate' end
    elseif state == 'retrying' or is_terminal(state) then
      return 'duplicate'
    else
      redis.call('HSET', status, 'entry', entry)
    end
    return 'mine'
  end
  if #p == 0 and is_terminal(redis.call('HGET', status, 'state')) then return 'finished' end
  return 'lost'
end

-- Appends an event; returns its entry id. Event streams are trimmed by `trim_events`, never by
-- length: a length cap would drop results no front end has read yet.
local function add_event(events, event)
  return redis.call('XADD', events, '*', 'event', event)
end

-- Records `event` (written as entry `event_entry`) as the job's newest, for status readers and
-- for watchers that start late.
local function set_last_event(status, event, event_entry)
  redis.call('HSET', status, 'last_event', event, 'event_entry', event_entry)
end

local function parse_id(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end

local function id_less(a, b)
  local a_ms, a_seq = parse_id(a)
  local b_ms, b_seq = parse_id(b)
  return a_ms < b_ms or (a_ms == b_ms and a_seq < b_seq)
end

-- Drops the events of an origin's stream that no reader needs any more: those before the oldest
-- entry some consumer group has not acknowledged (or not read yet). A stream no group reads
-- keeps `orphan_ms` of events (for clients that follow a job without a group); nothing is kept
-- past `max_age_ms`, so a front end that is gone for good does not hold memory forever.
local function trim_events(events, now, orphan_ms, max_age_ms)
  local keep
  local groups = redis.call('XINFO', 'GROUPS', events)
  if #groups == 0 then
    keep = as_arg(now - orphan_ms) .. '-0'
  else
    for _, g in ipairs(groups) do
      local info = {}
      for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
      local pending = redis.call('XPENDING', events, info['name'])
      local need
      if tonumber(pending[1]) > 0 then
        need = pending[2]
      else
        local ms, seq = parse_id(info['last-delivered-id'])
        need = as_arg(ms) .. '-' .. as_arg(seq + 1)
      end
      if keep == nil or id_less(need, keep) then keep = need end
    end
  end
  local oldest = as_arg(now - max_age_ms) .. '-0'
  if id_less(keep, oldest) then keep = oldest end
  -- Approximate trimming drops whole stream nodes, at most 10,000 entries a call (Redis's own
  -- bound for `~`), so no call runs long; a stream far behind catches up over the next ends.
  redis.call('XTRIM', events, 'MINID', '~', keep)
end

-- Acknowledge and delete in one step: finished entries never pile up, and the work stream is
-- never trimmed by length (that would drop undelivered jobs).
local function ack_delete(jobs, group, entry)
  redis.call('XACK', jobs, group, entry)
  redis.call('XDEL', jobs, entry)
end

-- Sets aside a second entry for a job id (see `ownership`): into the dead letters with the
-- reason, acknowledged and deleted, and no event, since the job it copies has its own.
local function set_aside_duplicate(jobs, group, entry, dlq, dlq_maxlen, status, id)
  local state = redis.call('HGET', status, 'state') or 'unknown'
  redis.call('XADD', dlq, 'MAXLEN', '~', dlq_maxlen, '*', 'entry', entry, 'job_id', id,
    'reason', 'job id ' .. id .. ' is already ' .. state ..
    ' as another entry; a job id is one job (docs/job-contract.md)')
  ack_delete(jobs, group, entry)
end
