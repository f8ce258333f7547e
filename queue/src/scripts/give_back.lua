-- Makes entries this consumer holds but will not run claimable by other workers at once, by
-- setting their idle time to a whole lease. Entries another consumer has taken over are left
-- alone: a give-back never steals a running job.
-- KEYS: jobs
-- ARGV: group, consumer, lease_ms, then entries
local jobs, group, consumer, lease = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local given = 0
for i = 4, #ARGV do
  local p = redis.call('XPENDING', jobs, group, ARGV[i], ARGV[i], '1')
  if #p == 1 and p[1][2] == consumer then
    redis.call('XCLAIM', jobs, group, consumer, '0', ARGV[i], 'IDLE', lease, 'JUSTID')
    given = given + 1
  end
end
return given
