--[[ levels.lua: read the current level of buckets (refilled up to now), writing nothing.

Used by the admin API and CLI to show an organization's live limits; it shares
bucket_level with admit.lua and settle.lua, so the refill rule exists once.

KEYS   1..n  buckets (tw:{org}:b:<scope>:<limit>), all of one organization
ARGV   1 now (ms)   2..n+1  rate of each bucket (units per ms, see common.lua)
RETURNS {level_1, reset_ms_1, level_2, reset_ms_2, ...}: level in bucket units (may be
  negative after an overshoot; a missing bucket is full), reset_ms until it is full again.
]]

local now = tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[i + 1])
  local level = bucket_level(key, rate, now)
  out[#out + 1] = math.floor(level)
  out[#out + 1] = reset_ms(level, rate)
end
return out
