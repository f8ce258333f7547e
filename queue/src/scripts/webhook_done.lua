-- Forgets a delivery that was made or given up, and remembers for a while that it is done.
-- KEYS: webhooks_due, webhooks, webhook_done
-- ARGV: delivery id, how long to remember (s)
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('SET', KEYS[3], '1', 'EX', ARGV[2])
return 1
