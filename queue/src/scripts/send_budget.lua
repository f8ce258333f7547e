-- Takes one message from a chat sending budget shared by every replica: at most ARGV[2]
-- messages in any ARGV[1] milliseconds (Twitch: 20, or 100 as a moderator, per 30 s).
-- KEYS[1] the budget's sorted set (send times). ARGV: window (ms), limit, a unique member.
-- Returns 0 when the message may go now (and counts it), else the milliseconds until it may.
local budget, window, limit = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', budget, '-inf', now - window)
if redis.call('ZCARD', budget) < limit then
  redis.call('ZADD', budget, now, ARGV[3])
  redis.call('PEXPIRE', budget, window)
  return 0
end
local oldest = redis.call('ZRANGE', budget, 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
