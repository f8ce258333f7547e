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

-- 'mine' when `consumer` holds `entry` in the group, 'finished' when the entry is gone and the
-- job has its terminal state, 'lost' otherwise (another consumer took it over).
local function ownership(jobs, group, entry, consumer, status)
  local p = redis.call('XPENDING', jobs, group, entry, entry, '1')
  if #p == 1 and p[1][2] == consumer then return 'mine' end
  if #p == 0 then
    local state = redis.call('HGET', status, 'state')
    if state == 'succeeded' or state == 'failed' or state == 'cancelled' then return 'finished' end
  end
  return 'lost'
end

local function add_event(events, maxlen, event)
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'event', event)
end

-- Acknowledge and delete in one step: finished entries never pile up, and the work stream is
-- never trimmed by length (that would drop undelivered jobs).
local function ack_delete(jobs, group, entry)
  redis.call('XACK', jobs, group, entry)
  redis.call('XDEL', jobs, entry)
end
