
-- Takes every cooldown in KEYS at once, or none: a request that one cooldown refuses must not
-- use up another. ARGV[i]: how long KEYS[i] lasts, in ms (0: that one does not apply).
-- Returns 0 when taken, otherwise the longest wait left, in ms.
local wait = 0
for i, key in ipairs(KEYS) do
  if tonumber(ARGV[i]) > 0 then
    local left = redis.call('PTTL', key)
    if left > wait then wait = left end
  end
end
if wait > 0 then return wait end
for i, key in ipairs(KEYS) do
  local ms = tonumber(ARGV[i])
  if ms > 0 then redis.call('SET', key, '1', 'PX', ms) end
end
return 0
