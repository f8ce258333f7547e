-- Stores a webhook delivery again after a failed attempt, due after its backoff.
-- KEYS: webhooks_due, webhooks
-- ARGV: delivery id, delivery (JSON), delay ms
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], as_arg(now_ms() + tonumber(ARGV[3])), ARGV[1])
return 1
