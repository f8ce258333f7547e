-- Moves due jobs from the delayed set back into the work stream.
-- KEYS: delayed, delayed_jobs, jobs
-- ARGV: limit, status key prefix, status_ttl_s
-- Returns {promoted, ms until the next one is due (-1: none)}.
local delayed, delayed_jobs, jobs = KEYS[1], KEYS[2], KEYS[3]
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(due) do
  local stored = redis.call('HGET', delayed_jobs, id)
  redis.call('ZREM', delayed, id)
  redis.call('HDEL', delayed_jobs, id)
  if stored then
    local space = string.find(stored, ' ', 1, true)
    local attempt, payload = string.sub(stored, 1, space - 1), string.sub(stored, space + 1)
    local entry = redis.call('XADD', jobs, '*', 'job', payload, 'attempt', attempt)
    -- Status keys share the queue's hash tag, so this stays in one slot on Redis Cluster.
    local status = ARGV[2] .. id
    redis.call('HSET', status, 'state', 'queued', 'entry', entry, 'updated_ms', now)
    redis.call('EXPIRE', status, tonumber(ARGV[3]))
  end
end
local next_due = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
if #next_due == 0 then return {#due, -1} end
return {#due, math.max(0, tonumber(next_due[2]) - now)}
