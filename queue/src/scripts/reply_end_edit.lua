-- An editor gives its turn back. KEYS[1] the reply hash. ARGV: editor token, delivered ('1' once
-- the result is out, so a result read twice is never sent twice).
local reply = KEYS[1]
if redis.call('HGET', reply, 'editor') == ARGV[1] then
  redis.call('HDEL', reply, 'editor', 'editor_until')
end
if ARGV[2] == '1' then
  redis.call('HSET', reply, 'delivered', '1')
end
return 1
