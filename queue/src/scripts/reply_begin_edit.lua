-- A front end replica asks for its turn to edit its reply to a job.
-- KEYS[1] the reply hash. ARGV: editor token, lease (ms), final ('1' for the result), time to
-- live (s). Leases run on the Redis server's clock.
-- A result marks the reply final first, so no progress edit starts after it; it then waits for
-- any edit in flight (the holder's lease) before it edits. Answers: granted, busy (another
-- editor holds a live lease), finished (a progress edit after the result), delivered (the result
-- went out already).
local reply = KEYS[1]
if redis.call('HGET', reply, 'delivered') == '1' then
  return 'delivered'
end
if ARGV[3] == '1' then
  redis.call('HSET', reply, 'final', '1')
elseif redis.call('HGET', reply, 'final') == '1' then
  return 'finished'
end
local holder = redis.call('HMGET', reply, 'editor', 'editor_until')
if holder[1] and holder[1] ~= ARGV[1] and tonumber(holder[2]) > now_ms() then
  return 'busy'
end
redis.call('HSET', reply, 'editor', ARGV[1], 'editor_until', now_ms() + tonumber(ARGV[2]))
redis.call('EXPIRE', reply, tonumber(ARGV[4]))
return 'granted'
