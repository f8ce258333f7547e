-- Counts a finished job's images and GPU time in its key's usage, once per job.
-- KEYS: api_counted, api_usage
-- ARGV: images, gpu ms, how long to remember (s)
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[3]) then
  return 0
end
redis.call('HINCRBY', KEYS[2], 'images', ARGV[1])
redis.call('HINCRBY', KEYS[2], 'gpu_ms', ARGV[2])
return 1
