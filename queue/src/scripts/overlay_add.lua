-- Adds one image to a channel's overlay unless it is there already (a redelivered result), keeps
-- the newest ARGV[3], and renews the overlay's time to live. Scanning the kept entries for the
-- image needs no second key that would have to be trimmed and expired along with them.
-- KEYS[1] the overlay stream. ARGV: what names the image (job id and link), the image (JSON),
-- how many to keep, time to live (s). Returns 1 when added, 0 when it was there.
local overlay, name, kept = KEYS[1], ARGV[1], ARGV[3]
local function shown()
  for _, entry in ipairs(redis.call('XREVRANGE', overlay, '+', '-', 'COUNT', kept)) do
    local fields = entry[2]
    for i = 1, #fields, 2 do
      if fields[i] == 'name' and fields[i + 1] == name then return true end
    end
  end
  return false
end
local added = 0
if not shown() then
  redis.call('XADD', overlay, 'MAXLEN', kept, '*', 'name', name, 'image', ARGV[2])
  added = 1
end
redis.call('EXPIRE', overlay, ARGV[4])
return added
