--[[ expire.lua: apply the passage of time to an organization's money, and read it.

Lots whose expiry is at or before `now` stop counting (their remainder is recorded as an
`expiry` ledger event, as admission and settlement do), and holds past their time-to-live
are released. Reading a balance therefore never shows credit that has already expired,
with no background job.

KEYS
  1 account  tw:{org}:acct      2 lots  tw:{org}:lots      3 lotexp  tw:{org}:lotexp
  4 ledger   tw:{org}:ledger    5 holds tw:{org}:holds     6 held    tw:{org}:held
ARGV
  1 now (ms)   2 lot key prefix   3 hold key prefix
RETURNS  {balance, debt, held} in micro-USD, after expiry
]]

local now = tonumber(ARGV[1])
local K_ACCT, K_LOTS, K_LOTEXP, K_LEDGER, K_HOLDS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local K_HELD = KEYS[6]

purge_holds(K_HOLDS, K_ACCT, K_HELD, ARGV[3], now)
expire_lots(K_ACCT, K_LOTS, K_LOTEXP, K_LEDGER, ARGV[2], now)
local a = redis.call('HMGET', K_ACCT, 'balance', 'debt', 'held')
return {num(a[1]), num(a[2]), num(a[3])}
