-- Adds a webhook delivery, due now, unless it is already waiting or was done: an event read a
-- second time (after a failed acknowledgement or a crash) never sends its delivery again.
-- KEYS: webhooks_due, webhooks, webhook_done
-- ARGV: delivery id, delivery (JSON)
-- Returns 1 when added, 0 when it was there or done.
if redis.call('EXISTS', KEYS[3]) == 1 or redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], as_arg(now_ms()), ARGV[1])
return 1
