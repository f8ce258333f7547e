-- Reads a job's status hash and, while it is queued, whether a worker holds it and how many
-- entries wait before it (counted up to 1,000).
-- KEYS: jobs, status
-- ARGV: group, whether to count the position ('1'; watchers, which need only the newest event,
--       pass '0': counting reads up to 1,001 entries)
-- Returns {flat hash fields, held (0/1), position (-1: not waiting), request}: the request comes
-- from the hash once the job has left the stream, from the stream entry before.
local jobs, status, group = KEYS[1], KEYS[2], ARGV[1]
local fields = redis.call('HGETALL', status)
if #fields == 0 then return false end
local state, entry, request
for i = 1, #fields, 2 do
  if fields[i] == 'state' then state = fields[i + 1] end
  if fields[i] == 'entry' then entry = fields[i + 1] end
  if fields[i] == 'request' then request = fields[i + 1] end
end
if not request and entry then
  local found = redis.call('XRANGE', jobs, entry, entry)
  if #found == 1 then
    local f = found[1][2]
    for i = 1, #f, 2 do
      if f[i] == 'job' then request = f[i + 1] end
    end
  end
end
local held, position = 0, -1
if state == 'queued' and entry and ARGV[2] ~= '0' then
  if #redis.call('XPENDING', jobs, group, entry, entry, '1') == 1 then
    held = 1
  else
    local last = '0-0'
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', jobs)) do
      local info = {}
      for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
      if info['name'] == group then last = info['last-delivered-id'] end
    end
    position = #redis.call('XRANGE', jobs, '(' .. last, entry, 'COUNT', 1001)
    if position > 1000 then position = 1000 end
  end
end
return {fields, held, position, request or false}
