--[[ release.lua: give back an admission nobody is waiting for, and refuse it if it has not
run yet. Used when an admit timed out (a slow store): Tollway already answered 503, or
served the request fail-open, and the admit script may still run after that.

KEYS
  1 hold       tw:{org}:hold:<rid>     the request's hold (as in admit.lua)
  2 holds      tw:{org}:holds          zset rid -> hold expiry (ms)
  3 account    tw:{org}:acct           hash balance, debt, held (micro-USD)
  4 held       tw:{org}:held           money held and in-flight counts (as in admit.lua)

ARGV
  1 now (ms)   2 request id   3 tombstone time-to-live (ms; 0: no tombstone, for an
                               admission known to have run, as count_tokens' own)

The hold's reservation (held money, reserved tokens) goes back, as when a hold expires;
the request bucket keeps its 1, as for a failed request. The hold key is then left as a
tombstone (field `released`) that admit.lua refuses to admit over, so an admission that
arrives after this script changes nothing. Order-free with settle.lua: a settlement
that ran first already deleted the hold (and debited in full); one that runs after finds
no hold and debits in full.

RETURNS 1 when an admission was given back, 0 when there was none (yet).
]]

local K_HOLD, K_HOLDS, K_ACCT, K_HELD = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local rid, ttl = ARGV[2], tonumber(ARGV[3])

local released = 0
if give_back(K_HOLD, K_ACCT, K_HELD, true) then
  redis.call('ZREM', K_HOLDS, rid)
  released = 1
end
redis.call('DEL', K_HOLD)
if ttl > 0 then
  redis.call('HSET', K_HOLD, 'released', ARGV[1])
  redis.call('PEXPIRE', K_HOLD, int(ttl))
end
return released
