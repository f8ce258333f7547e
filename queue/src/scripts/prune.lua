-- Deletes consumers of a group that have nothing pending and have not read for `idle_ms`: dead
-- workers or front ends would otherwise stay in the group forever. Checking and deleting in one
-- script matters: XGROUP DELCONSUMER drops a consumer's pending entries, so a consumer that
-- read something after the check must not be deleted.
-- KEYS: stream
-- ARGV: group, idle_ms
local stream, group, idle_ms = KEYS[1], ARGV[1], tonumber(ARGV[2])
local deleted = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', stream, group)) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  if tonumber(info['pending']) == 0 and tonumber(info['idle']) >= idle_ms then
    redis.call('XGROUP', 'DELCONSUMER', stream, group, info['name'])
    deleted = deleted + 1
  end
end
return deleted
