--[[ reload_lock.lua: extend or release an auto-reload lock, only while we still own it.

The lock itself is taken with SET key token NX PX ttl. A holder that was too slow and lost
it (the time-to-live ran out and another replica took it) must neither extend nor delete
the other replica's lock: hence the compare-and-act here.

KEYS  1 lock  tw:{org}:reload
ARGV  1 token (the value written by SET NX)   2 action: extend | release
      3 time-to-live (ms, for extend)
RETURNS  1 when we owned the lock (and acted), 0 otherwise
]]

if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == 'release' then
  redis.call('DEL', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], int(tonumber(ARGV[3])))
end
return 1
