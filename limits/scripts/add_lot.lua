--[[ add_lot.lua: add a credit lot (a purchase, a promotional grant or an auto-reload).

A debt left by a request that overshot the balance is repaid from the new lot first.

KEYS
  1 account  tw:{org}:acct      2 lots  tw:{org}:lots      3 lotexp  tw:{org}:lotexp
  4 lotall   tw:{org}:lotall    zset of every lot ever, by creation time
  5 ledger   tw:{org}:ledger    6 lot  tw:{org}:lot:<id>
ARGV
  1 now (ms)  2 lot id  3 kind (purchased | promotional)  4 amount (micro-USD, > 0)
  5 expires (ms)  6 event type (purchase | grant | reload)  7 reference (payment id or '')
  8 lot key prefix
RETURNS  {available balance after the lot, amount used to repay debt}
]]

local now, id, kind, amount, expires = tonumber(ARGV[1]), ARGV[2], ARGV[3],
  tonumber(ARGV[4]), tonumber(ARGV[5])
local K_ACCT, K_LOTS, K_LOTEXP, K_LOTALL, K_LEDGER, K_LOT =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]

expire_lots(K_ACCT, K_LOTS, K_LOTEXP, K_LEDGER, ARGV[8], now)

local debt = num(redis.call('HGET', K_ACCT, 'debt'))
local repaid = math.min(debt, amount)
local remaining = amount - repaid
if repaid > 0 then
  redis.call('HINCRBY', K_ACCT, 'debt', int(-repaid))
end

-- Consumption order: promotional before purchased, then the earliest expiry.
local rank = 1
if kind == 'promotional' then
  rank = 0
end
redis.call('HSET', K_LOT, 'id', id, 'kind', kind, 'amount', int(amount),
  'remaining', int(remaining), 'repaid', int(repaid), 'created', int(now),
  'expires', int(expires), 'source', ARGV[6], 'ref', ARGV[7])
redis.call('ZADD', K_LOTALL, int(now), id)
if remaining > 0 and expires > now then
  redis.call('ZADD', K_LOTS, int(rank * 10000000000000 + expires), id)
  redis.call('ZADD', K_LOTEXP, int(expires), id)
  redis.call('HINCRBY', K_ACCT, 'balance', int(remaining))
end
redis.call('XADD', K_LEDGER, '*', 'type', ARGV[6], 'ts', int(now), 'lot', id, 'kind', kind,
  'amount', int(amount), 'repaid', int(repaid), 'expires', int(expires), 'ref', ARGV[7])
return {available(K_ACCT), repaid}
