-- Renews the leases of the jobs a consumer holds: resets their idle time without counting a
-- delivery (XCLAIM ... JUSTID), but only for entries it still owns, so a renewal never steals a
-- job back from the consumer it was handed to.
-- KEYS: jobs
-- ARGV: group, consumer, status key prefix, then pairs of (entry, job_id)
-- Returns {entries another consumer holds now, entries no longer pending at all (finished,
-- retried or set aside: by this consumer a moment ago, or by another), entries whose job has a
-- cancel request}.
local jobs, group, consumer, prefix = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local taken, gone, cancel = {}, {}, {}
for i = 4, #ARGV, 2 do
  local entry, id = ARGV[i], ARGV[i + 1]
  local p = redis.call('XPENDING', jobs, group, entry, entry, '1')
  if #p == 1 and p[1][2] == consumer then
    redis.call('XCLAIM', jobs, group, consumer, 0, entry, 'JUSTID')
    if id ~= '' and redis.call('HGET', prefix .. id, 'cancel') == '1' then
      table.insert(cancel, entry)
    end
  elseif #p == 1 then
    table.insert(taken, entry)
  else
    table.insert(gone, entry)
  end
end
return {taken, gone, cancel}
