--[[ settle.lua: replace a request's reservation by what it actually used, atomically and
exactly once per request id.

KEYS (named in this order by limits/scriptplans.py SETTLE_KEYS)
  hold, holds, account, lots, lotexp, ledger, month   as in admit.lua
  settled    tw:{org}:settled:<rid>    marker holding this script's earlier answer
  overrides  tw:{org}:cfg              run-time overrides (the seat's included amount,
                                       reload:off, reload:threshold, reload:target)
  pday, pweek                          as in admit.lua: the cost is added to them as to month
  held       tw:{org}:held             what requests in flight hold (as in admit.lua)
  learned    tw:{org}:learned          what settlement learned per model (see learn)
  outputs    tw:{org}:outputs:<model>  list of the latest output token counts on the model
  session    tw:{org}:sess:<id>        the session's spend (field cost), what admit.lua checks a
                                       session budget against (any name without a session)
  then the buckets, as in admit.lua

ARGV
  1 now (ms)   2 request id   3 plan (limits/scriptplans.py SettlePlan), JSON:
    ok         true: a successful response, billed; false: a failure, nothing is charged
               and the reservation is released (the request bucket keeps its 1)
    usage      {input_tokens, output_tokens, cache_write_tokens, cache_read_tokens}
    tpm_input  input tokens counted against tok/in buckets
    cost       cost of the request at API prices (micro-USD, rounded once, in Python)
    prepaid    true: extra spend is debited from credit lots; false: it accrues for invoicing
    seat       {spent, included, override} (plans.SeatPlan) or null
    month_fields  [{spend, extra}, ...]: the month fields the spend and its extra part are
               added to, one pair per scope (org, ws=W, user=U, key=K); the first is the
               organization's (its creation sets the month hash's time-to-live)
    window_fields [{field, extra}, ...]: the day and week fields the spend (extra: its part
               past the included usage) is added to (scriptplans.window_fields)
    session    true when the request belongs to a session, session_id its id
    upstream_ms  upstream time (ms): the request started at now - upstream_ms
    day        the settlement's day in the server's time zone (YYYY-MM-DD), for reports
    buckets    [{kind, rate, unit}, ...] as in admit.lua
    hold_prefix, lot_prefix   key prefixes of holds and lots
    keep_ms    ms to keep the month counters
    dedup_ms   ms to keep the settled marker (how late a repeated settlement may come)
    reload     {threshold, target} in micro-USD from the config, or null (see auto_reload)
    reload_fields  {off, threshold, target}: the override fields of auto-reload
    ledger_fields  extra ledger fields: [name, value, ...] (model, key, user, ws)
    caps       the caps of admit.lua (plans.CapPlan): how far each was overshot is recorded
    learn      {out, out_n, in_real, in_est, in_n, window, quantile, every, min_estimate}
               or null
               (scriptplans.LearnPlan): see learn

Every settlement appends one ledger event: `debit` (a billed request that cost money),
`usage` (billed, cost 0) or `fail` (a failed request: no tokens, no cost). Usage reports
and sessions are sums of these events in the ledger database (limits/history.py), shipped
there from the stream by limits/shipper.py, which also trims the stream.

RETURNS  JSON {cost, included, extra, available, reload (micro-USD to buy, 0 if none),
  overshoot (micro-USD of this request's extra spend past a cap, the largest over the caps),
  duplicate (true when this request id was settled before; nothing changed)}
]]

local now, rid = tonumber(ARGV[1]), ARGV[2]
local K, BUCKETS = named_keys({'hold', 'holds', 'account', 'lots', 'lotexp', 'ledger',
  'month', 'settled', 'overrides', 'pday', 'pweek', 'held', 'learned', 'outputs', 'session'})

local earlier = redis.call('GET', K.settled)
if earlier then
  local r = cjson.decode(earlier)
  r.duplicate = true
  return cjson.encode(r)
end

local plan = cjson.decode(ARGV[3])
local usage = plan.usage

-- Release the hold, if it has not expired already (then purge_holds gave its reservation
-- back and the buckets are debited in full). Returns its fields (common.lua give_back).
local function release_hold()
  local h = give_back(K.hold, K.account, K.held, false)
  if not h then
    return {reserved = {}, est = 0}
  end
  redis.call('DEL', K.hold)
  redis.call('ZREM', K.holds, rid)
  return h
end

-- Learn from a successful request what admit.lua's expected cost needs: the `quantile`
-- of the latest `window` output token counts on this model (every `every` requests), and
-- the decayed sums of real and estimated input tokens (halved once `window` requests are
-- summed, so the ratio follows the traffic). Requests estimated below `min_estimate`
-- tokens teach nothing about input: their ratio is noise. The learned hash and the list
-- get their time-to-live when the percentile is recomputed (every `every` outputs).
local function learn(est)
  local l = opt(plan.learn)
  if not plan.ok or not l then
    return
  end
  local v = redis.call('HMGET', K.learned, l.out_n, l.in_real, l.in_est, l.in_n)
  local out_n = num(v[1]) + 1
  local set = {l.out_n, int(out_n)}
  redis.call('LPUSH', K.outputs, int(usage.output_tokens))
  -- The percentile is recomputed on the first output and every `every` outputs after
  -- it (sorting the window on every settlement was most of the cost of learning).
  if out_n % l.every == 1 then
    redis.call('LTRIM', K.outputs, 0, l.window - 1)
    redis.call('PEXPIRE', K.outputs, int(plan.keep_ms))
    local xs = redis.call('LRANGE', K.outputs, 0, -1)
    for i, x in ipairs(xs) do
      xs[i] = tonumber(x)
    end
    table.sort(xs)
    extend(set, {l.out, int(xs[math.max(1, math.ceil(#xs * l.quantile))])})
  end
  if est >= l.min_estimate then
    local real = usage.input_tokens + usage.cache_write_tokens + usage.cache_read_tokens
    local sum_real, sum_est, n = num(v[2]) + real, num(v[3]) + est, num(v[4]) + 1
    if n >= l.window then
      sum_real, sum_est, n = math.floor(sum_real / 2), math.floor(sum_est / 2), math.floor(n / 2)
    end
    extend(set, {l.in_real, int(sum_real), l.in_est, int(sum_est), l.in_n, int(n)})
  end
  redis.call('HSET', K.learned, unpack(set))
  if out_n % l.every == 1 then
    redis.call('PEXPIRE', K.learned, int(plan.keep_ms))
  end
end

-- Buckets: debit actual tokens less what was reserved (they may go below zero).
local function debit_buckets(reserved)
  local tin, out = 0, 0
  if plan.ok then
    tin, out = plan.tpm_input, usage.output_tokens
  end
  for i, b in ipairs(plan.buckets) do
    if b.kind ~= 'req' then
      local key = BUCKETS[i]
      local actual = out * b.unit
      if b.kind == 'tok' then
        actual = (tin + out) * b.unit
      elseif b.kind == 'in' then
        actual = tin * b.unit
      end
      local delta = actual - (reserved[key] or 0)
      if delta ~= 0 then
        local level, t, x = bucket_level(key, b.rate, now)
        bucket_store(key, level - delta, t, b.rate, now, x)
      end
    end
  end
end

-- The overrides this settlement reads: the seat's included amount and auto-reload's in one
-- HMGET; the caps' (`with_caps`, for overshoot) in a second one, only when extra usage
-- was charged. Returns get(field).
local function overrides()
  local fields = {}
  local seat = opt(plan.seat)
  if seat then
    fields[#fields + 1] = seat.override
  end
  if plan.prepaid then
    local f = plan.reload_fields
    extend(fields, {f.off, f.threshold, f.target})
  end
  local values = read_fields(K.overrides, fields)
  local caps_read = false
  return function(field, with_caps)
    if with_caps and not caps_read then
      caps_read = true
      local more = {}
      for _, c in ipairs(plan.caps) do
        extend(more, c.overrides)
      end
      for f, v in pairs(read_fields(K.overrides, more)) do
        values[f] = v
      end
    end
    return values[field]
  end
end

-- Add `amount` to `field` of hash `key`; `after` records the new value per key and field.
-- The hash's time-to-live is set when this write created it (`ttl_ms`; `first`: the
-- first write to that hash in this settlement, whose field is absent only in a new hash).
local function add(after, key, field, amount, ttl_ms, first)
  local v = redis.call('HINCRBY', key, field, int(amount))
  after[key] = after[key] or {}
  after[key][field] = v
  if first and v == amount then
    redis.call('PEXPIRE', key, int(ttl_ms))
  end
end

-- Debit `extra` from the credit lots in consumption order; what the lots cannot cover
-- becomes debt. Returns the ledger's list of "lot=amount".
local function debit_lots(extra)
  local debits, left = {}, extra
  for _, id in ipairs(redis.call('ZRANGE', K.lots, 0, -1)) do
    local lk = plan.lot_prefix .. id
    local take = math.min(num(redis.call('HGET', lk, 'remaining')), left)
    if take > 0 then
      local rem = redis.call('HINCRBY', lk, 'remaining', int(-take))
      if rem == 0 then
        redis.call('ZREM', K.lots, id)
        redis.call('ZREM', K.lotexp, id)
      end
      debits[#debits + 1] = id .. '=' .. int(take)
      left = left - take
    end
    if left == 0 then
      break
    end
  end
  redis.call('HINCRBY', K.account, 'balance', int(-(extra - left)))
  if left > 0 then
    redis.call('HINCRBY', K.account, 'debt', int(left))
  end
  return debits
end

-- Money: add the cost to month-to-date spend at every scope and the part past the user's
-- included usage (`seat`, plans.SeatPlan; the rest is extra) to the extra fields; the day
-- and week fields (window_fields) likewise; debit the extra from credit lots when
-- prepaid. Returns included, extra, the ledger's lot debits and the new values written
-- (key -> field -> value).
local function charge(cost, ov)
  local after = {}
  if cost <= 0 then
    return 0, 0, {}, after
  end
  local seat = opt(plan.seat)
  for i, f in ipairs(plan.month_fields) do
    add(after, K.month, f.spend, cost, plan.keep_ms, i == 1)
  end
  local included = 0
  if seat then
    local inc = seat.included
    if ov(seat.override) then
      inc = tonumber(ov(seat.override))
    end
    local before = after[K.month][seat.spent]
    if before == nil then  -- not one of the month fields: read it
      before = num(redis.call('HGET', K.month, seat.spent))
    else
      before = before - cost
    end
    included = math.max(0, math.min(inc - before, cost))
  end
  local extra = cost - included
  if extra > 0 then
    for _, f in ipairs(plan.month_fields) do
      add(after, K.month, f.extra, extra, plan.keep_ms, false)
    end
  end
  -- Day and week spend serve only daily and weekly caps and budgets: kept 40 days.
  for _, h in ipairs({K.pday, K.pweek}) do
    local first = true
    for _, w in ipairs(plan.window_fields) do
      local amount = w.extra and extra or cost
      if amount > 0 then
        add(after, h, w.field, amount, 3456000000, first)
        first = false
      end
    end
  end
  local debits = {}
  if extra > 0 and plan.prepaid then
    debits = debit_lots(extra)
  end
  return included, extra, debits, after
end


-- How far this request's extra spend took each cap past its amount: the largest part of
-- `extra` past a cap, recorded per cap in its period's hash at its `overshoot` field (the
-- period's largest). `after`: the values charge() wrote.
local function overshoot(extra, ov, after)
  local worst = 0
  if extra <= 0 then
    return 0
  end
  local period = {month = K.month, day = K.pday, week = K.pweek}
  local function cap_ov(field)
    return ov(field, true)
  end
  for _, c in ipairs(plan.caps) do
    local cap = cap_in_force(cap_ov, c)
    local h = period[c.period or 'month']
    if cap >= 0 then
      local spent = (after[h] or {})[c.spent]
      if spent == nil then  -- a field this settlement did not write
        spent = num(redis.call('HGET', h, c.spent))
      end
      local past = math.min(spent - cap, extra)
      if past > 0 then
        worst = math.max(worst, past)
        if past > num(redis.call('HGET', h, c.overshoot)) then
          redis.call('HSET', h, c.overshoot, int(past))
        end
      end
    end
  end
  return worst
end

-- The ledger event of this settlement: debit, usage or fail (see the header).
local function ledger_event(cost, included, extra, debits)
  if plan.session and cost > 0 then  -- admission needs it: the session budget (admit.lua)
    if redis.call('HINCRBY', K.session, 'cost', int(cost)) == cost then
      redis.call('PEXPIRE', K.session, int(plan.keep_ms))  -- a new session hash
    end
  end
  local ev = {'type', 'fail', 'ts', int(now), 'rid', rid, 'day', plan.day,
    'up', int(plan.upstream_ms)}
  if plan.ok then
    ev[2] = cost > 0 and 'debit' or 'usage'
    local more = {'cost', int(cost), 'included', int(included), 'extra', int(extra),
      'prepaid', plan.prepaid and '1' or '0',
      'in', int(usage.input_tokens), 'out', int(usage.output_tokens),
      'cw', int(usage.cache_write_tokens), 'cr', int(usage.cache_read_tokens),
      'lots', table.concat(debits, ',')}
    extend(ev, more)
  end
  if plan.session then
    ev[#ev + 1] = 'sess'
    ev[#ev + 1] = plan.session_id
  end
  extend(ev, plan.ledger_fields)
  redis.call('XADD', K.ledger, '*', unpack(ev))
end

-- Auto-reload: how much to buy when the balance fell below the threshold. Run-time
-- overrides in the cfg hash (`ov`) win over the config: reload:off = '1' disables it,
-- reload:threshold and reload:target (both present) replace the configured pair.
local function auto_reload(avail, ov)
  if not plan.prepaid then
    return 0
  end
  local rl = opt(plan.reload)
  local f = plan.reload_fields
  if ov(f.off) == '1' then
    rl = nil
  elseif ov(f.threshold) and ov(f.target) then
    rl = {threshold = tonumber(ov(f.threshold)), target = tonumber(ov(f.target))}
  end
  if rl and avail < rl.threshold then
    return rl.target - avail
  end
  return 0
end

purge_holds(K.holds, K.account, K.held, plan.hold_prefix, now)
expire_lots(K.account, K.lots, K.lotexp, K.ledger, plan.lot_prefix, now)
local hold = release_hold()
debit_buckets(hold.reserved)
learn(hold.est)

local cost = 0
if plan.ok then
  cost = plan.cost
end
local ov = overrides()
local included, extra, debits, after = charge(cost, ov)
local over = overshoot(extra, ov, after)
ledger_event(cost, included, extra, debits)

local avail = available(K.account)
local reload = auto_reload(avail, ov)

local r = {cost = cost, included = included, extra = extra, available = avail,
  reload = reload, overshoot = over, duplicate = false}
local encoded = cjson.encode(r)
redis.call('SET', K.settled, encoded, 'PX', int(plan.dedup_ms or plan.keep_ms))
return encoded
