--[[ settle.lua: replace a request's reservation by what it actually used, atomically and
exactly once per request id.

KEYS
  1 hold      2 holds     3 account   4 lots      5 lotexp    6 ledger    7 month
              (as in admit.lua)
  8 settled   tw:{org}:settled:<rid>   marker holding this script's earlier answer
  9 day       tw:{org}:day:<YYYY-MM-DD> usage report counters, fields "<dim>|<metric>"
  10 session  tw:{org}:sess:<id>       session counters (any name when plan.sess is false)
  11 overrides tw:{org}:cfg            run-time overrides (the seat's included amount,
                                       reload:off, reload:threshold, reload:target)
  12 sessions tw:{org}:sessions        sorted set: session id -> its last request end (ms)
  13..        buckets, as in admit.lua

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
    dims     report dimensions: ["org", "ws=W", "user=U", "key=K", "model=M"]
    sess     true when KEYS[10] is a session to update (and KEYS[12] its index); sid its
             id; up = upstream time (ms): the request started at now - up
    b        [[kind, rate, unit], ...] as in admit.lua
    hp, lp   key prefixes of holds and lots
    keep     ms to keep the month and day counters and sessions
    dedup    ms to keep the settled marker (how late a repeated settlement may come)
    retain   ms of ledger history kept in the stream; older events are folded into the
             account's ledger_base (common.lua fold_ledger)
    reload   {threshold, target} in micro-USD from the config, or absent (see step 5)
    ev       extra ledger fields: [name, value, ...]

RETURNS  JSON {cost, included, extra, available, reload (micro-USD to buy, 0 if none),
  duplicate (true when this request id was settled before; nothing changed)}
]]

local now, rid = tonumber(ARGV[1]), ARGV[2]
local K_HOLD, K_HOLDS, K_ACCT, K_LOTS, K_LOTEXP, K_LEDGER, K_MONTH, K_SETTLED, K_DAY, K_SESS =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local K_CFG, K_SESSIONS = KEYS[11], KEYS[12]

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
    local key = KEYS[12 + i]
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

-- 4. Reports, session, ledger.
local metrics
if plan.ok then
  metrics = {req = 1, ['in'] = u[1], out = u[2], cw = u[3], cr = u[4], cost = cost}
else
  metrics = {fail = 1}
end
for _, d in ipairs(plan.dims) do
  for name, v in pairs(metrics) do
    if v ~= 0 then
      redis.call('HINCRBY', K_DAY, d .. '|' .. name, int(v))
    end
  end
end
redis.call('PEXPIRE', K_DAY, int(plan.keep))

-- A session: totals, the same per model ("m|<model>|<metric>"), and its span: first is the
-- earliest request start (now - up), last the latest request end, whatever the order in
-- which concurrent requests settle.
if plan.sess then
  local model
  for _, d in ipairs(plan.dims) do
    if string.sub(d, 1, 6) == 'model=' then
      model = string.sub(d, 7)
    end
  end
  local sm = {req = 1, up_ms = plan.up}
  if plan.ok then
    sm.cost, sm['in'], sm.out, sm.cw, sm.cr = cost, u[1], u[2], u[3], u[4]
  else
    sm.fail = 1
  end
  for name, v in pairs(sm) do
    if v ~= 0 then
      redis.call('HINCRBY', K_SESS, name, int(v))
      if model then
        redis.call('HINCRBY', K_SESS, 'm|' .. model .. '|' .. name, int(v))
      end
    end
  end
  local start = now - plan.up
  local span = redis.call('HMGET', K_SESS, 'first', 'last')
  if not span[1] or start < tonumber(span[1]) then
    redis.call('HSET', K_SESS, 'first', int(start))
  end
  if not span[2] or now > tonumber(span[2]) then
    redis.call('HSET', K_SESS, 'last', int(now))
  end
  redis.call('PEXPIRE', K_SESS, int(plan.keep))
  redis.call('ZADD', K_SESSIONS, 'GT', int(now), plan.sid)
  redis.call('ZREMRANGEBYSCORE', K_SESSIONS, '-inf', int(now - plan.keep))
  redis.call('PEXPIRE', K_SESSIONS, int(plan.keep))
end

if cost > 0 then
  local ev = {'type', 'debit', 'ts', int(now), 'rid', rid, 'cost', int(cost),
    'included', int(included), 'extra', int(extra), 'prepaid', plan.prepaid and '1' or '0',
    'in', int(u[1]), 'out', int(u[2]), 'cw', int(u[3]), 'cr', int(u[4]),
    'lots', table.concat(debits, ',')}
  for _, v in ipairs(plan.ev) do
    ev[#ev + 1] = v
  end
  redis.call('XADD', K_LEDGER, '*', unpack(ev))
end

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

if plan.retain then
  fold_ledger(K_ACCT, K_LEDGER, now - plan.retain, 4)
end

local r = {cost = cost, included = included, extra = extra, available = avail,
  reload = reload, duplicate = false}
local encoded = cjson.encode(r)
redis.call('SET', K_SETTLED, encoded, 'PX', int(plan.dedup or plan.keep))
return encoded
