-- Takes due webhook deliveries for one API replica: each taken delivery is pushed `lease` ms into
-- the future, so no other replica takes it while this one sends it; if this replica dies, it
-- comes due again after the lease.
-- KEYS: webhooks_due, webhooks
-- ARGV: lease ms, count
-- Returns {id, delivery, id, delivery, …}.
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local taken = {}
for _, id in ipairs(due) do
  local delivery = redis.call('HGET', KEYS[2], id)
  if delivery then
    redis.call('ZADD', KEYS[1], as_arg(now + tonumber(ARGV[1])), id)
    taken[#taken + 1] = id
    taken[#taken + 1] = delivery
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return taken
