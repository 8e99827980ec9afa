--[[ settle.lua: replace a request's reservation by what it actually used, atomically and
exactly once per request id.

KEYS
  1 hold      2 holds     3 account   4 lots      5 lotexp    6 ledger    7 month
              (as in admit.lua)
  8 settled   tw:{org}:settled:<rid>   marker holding this script's earlier answer
  9 overrides tw:{org}:cfg             run-time overrides (the seat's included amount,
                                       reload:off, reload:threshold, reload:target)
  10..        buckets, as in admit.lua

ARGV
  1 now (ms)   2 request id   3 plan, JSON:
    ok       true: a successful response, billed; false: a failure, nothing is charged and
             the reservation is released (the request bucket keeps its 1)
    u        [input, output, cache_write, cache_read] tokens
    tin      input tokens counted against tok/in buckets
    cost     cost of the request at API prices (micro-USD, rounded once, in Python)
    prepaid  true: extra spend is debited from credit lots; false: it accrues for invoicing
    seat     {f = month field of the user's spend, inc = included, ov = override field} or absent
    scopes   month scopes the spend is added to: ["org", "ws=W", "user=U", "key=K"]
    day      the day of the settlement in the server's time zone (YYYY-MM-DD), for reports
    sid      the request's session id, or false; up = upstream time (ms)
    b        [[kind, rate, unit], ...] as in admit.lua
    hp, lp   key prefixes of holds and lots
    keep     ms to keep the month counters
    dedup    ms to keep the settled marker (how late a repeated settlement may come)
    reload   {threshold, target} in micro-USD from the config, or absent (see step 5)
    ev       extra ledger fields: [name, value, ...] (model, key, user, ws)

Every settlement appends one ledger event: `debit` (a billed request that cost money),
`usage` (billed, cost 0) or `fail` (a failed request: no tokens, no cost). Usage reports
and sessions are sums of these events in the ledger database (limits/history.py), shipped
there from the stream by limits/shipper.py.

RETURNS  JSON {cost, included, extra, available, reload (micro-USD to buy, 0 if none),
  duplicate (true when this request id was settled before; nothing changed)}
]]

local now, rid = tonumber(ARGV[1]), ARGV[2]
local K_HOLD, K_HOLDS, K_ACCT, K_LOTS, K_LOTEXP, K_LEDGER, K_MONTH, K_SETTLED, K_CFG =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]

local earlier = redis.call('GET', K_SETTLED)
if earlier then
  local r = cjson.decode(earlier)
  r.duplicate = true
  return cjson.encode(r)
end

local plan = cjson.decode(ARGV[3])
purge_holds(K_HOLDS, K_ACCT, plan.hp, now)
expire_lots(K_ACCT, K_LOTS, K_LOTEXP, K_LEDGER, plan.lp, now)

-- 1. Release the hold (if it has not expired already, in which case purge_holds gave its
--    reservation back and the buckets are debited in full below).
local reserved = {}
local h = redis.call('HMGET', K_HOLD, 'c', 'b')
if h[1] then
  if tonumber(h[1]) ~= 0 then
    redis.call('HINCRBY', K_ACCT, 'held', int(-tonumber(h[1])))
  end
  reserved = decode_reserved(h[2])
  redis.call('DEL', K_HOLD)
  redis.call('ZREM', K_HOLDS, rid)
end

-- 2. Buckets: debit actual tokens less what was reserved (they may go below zero).
local u = plan.u
local tin, out = 0, 0
if plan.ok then
  tin, out = plan.tin, u[2]
end
for i, b in ipairs(plan.b) do
  local kind, rate, unit = b[1], b[2], b[3]
  if kind ~= 'req' then
    local key = KEYS[9 + i]
    local actual = 0
    if kind == 'tok' then
      actual = (tin + out) * unit
    elseif kind == 'in' then
      actual = tin * unit
    else
      actual = out * unit
    end
    local delta = actual - (reserved[key] or 0)
    if delta ~= 0 then
      local level, t = bucket_level(key, rate, now)
      bucket_store(key, level - delta, t, rate)
    end
  end
end

-- 3. Money: split the cost into included and extra, add it to month-to-date spend, debit
--    the extra from credit lots (prepaid) in consumption order.
local cost = 0
if plan.ok then
  cost = plan.cost
end
local included = 0
if plan.seat and cost > 0 then
  local inc = plan.seat.inc
  local ov = redis.call('HGET', K_CFG, plan.seat.ov)
  if ov then
    inc = tonumber(ov)
  end
  local left = inc - num(redis.call('HGET', K_MONTH, plan.seat.f))
  if left > 0 then
    included = math.min(left, cost)
  end
end
local extra = cost - included

local debits = {}
if cost > 0 then
  for _, s in ipairs(plan.scopes) do
    redis.call('HINCRBY', K_MONTH, 'spend:' .. s, int(cost))
    if extra > 0 then
      redis.call('HINCRBY', K_MONTH, 'extra:' .. s, int(extra))
    end
  end
  redis.call('PEXPIRE', K_MONTH, int(plan.keep))
  if extra > 0 and plan.prepaid then
    local left = extra
    for _, id in ipairs(redis.call('ZRANGE', K_LOTS, 0, -1)) do
      local lk = plan.lp .. id
      local take = math.min(num(redis.call('HGET', lk, 'remaining')), left)
      if take > 0 then
        local rem = redis.call('HINCRBY', lk, 'remaining', int(-take))
        if rem == 0 then
          redis.call('ZREM', K_LOTS, id)
          redis.call('ZREM', K_LOTEXP, id)
        end
        debits[#debits + 1] = id .. '=' .. int(take)
        left = left - take
      end
      if left == 0 then
        break
      end
    end
    redis.call('HINCRBY', K_ACCT, 'balance', int(-(extra - left)))
    if left > 0 then
      redis.call('HINCRBY', K_ACCT, 'debt', int(left))
    end
  end
end

-- 4. The ledger event of this settlement.
local ev = {'type', 'fail', 'ts', int(now), 'rid', rid, 'day', plan.day, 'up', int(plan.up)}
if plan.ok then
  ev[2] = cost > 0 and 'debit' or 'usage'
  local more = {'cost', int(cost), 'included', int(included), 'extra', int(extra),
    'prepaid', plan.prepaid and '1' or '0', 'in', int(u[1]), 'out', int(u[2]),
    'cw', int(u[3]), 'cr', int(u[4]), 'lots', table.concat(debits, ',')}
  for _, v in ipairs(more) do
    ev[#ev + 1] = v
  end
end
if plan.sid then
  ev[#ev + 1] = 'sess'
  ev[#ev + 1] = plan.sid
end
for _, v in ipairs(plan.ev) do
  ev[#ev + 1] = v
end
redis.call('XADD', K_LEDGER, '*', unpack(ev))

-- 5. Auto-reload: report how much to buy when the balance fell below the threshold.
--    Run-time overrides in the cfg hash win over the config: reload:off = '1' disables it,
--    reload:threshold and reload:target (both present) replace the configured pair.
local avail = available(K_ACCT)
local reload = 0
if plan.prepaid then
  local rl = plan.reload
  local ov = redis.call('HMGET', K_CFG, 'reload:off', 'reload:threshold', 'reload:target')
  if ov[1] == '1' then
    rl = false
  elseif ov[2] and ov[3] then
    rl = {threshold = tonumber(ov[2]), target = tonumber(ov[3])}
  end
  if rl and avail < rl.threshold then
    reload = rl.target - avail
  end
end

local r = {cost = cost, included = included, extra = extra, available = avail,
  reload = reload, duplicate = false}
local encoded = cjson.encode(r)
redis.call('SET', K_SETTLED, encoded, 'PX', int(plan.dedup or plan.keep))
return encoded
