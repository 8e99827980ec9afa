--[[ admit.lua: admit one request, atomically, or refuse it and take nothing.

KEYS (named in this order by limits/scriptplans.py ADMIT_KEYS)
  hold       tw:{org}:hold:<rid>     this request's hold (created on admission)
  holds      tw:{org}:holds          zset rid -> hold expiry (ms)
  account    tw:{org}:acct           hash balance, debt, held (micro-USD)
  lots       tw:{org}:lots           zset of active lots in consumption order
  lotexp     tw:{org}:lotexp         zset of active lots by expiry (ms)
  ledger     tw:{org}:ledger         stream of money events
  month      tw:{org}:mtd:<YYYY-MM>  month-to-date spend (micro-USD), fields spend:<scope>
                                     and extra:<scope>, scope = org | ws=W | user=U | key=K
  overrides  tw:{org}:cfg            run-time overrides of caps and extra usage
  apikey     tw:{org}:key:<key id>   the caller's key record (field revoked = 0 | 1)
  pday       tw:{org}:per:d<date>    today's spend (local day), fields as the month's
  pweek      tw:{org}:per:w<week>    this week's spend (ISO week, local), fields as the month's
  held       tw:{org}:held           what requests in flight hold: month fields (micro-USD)
                                     and flight:<scope> counts
  learned    tw:{org}:learned        what settle.lua learned per model (rkeys.Fields.learned)
  session    tw:{org}:sess:<id>      the request's session (field cost), any name without one
  then the buckets, one per entry of plan.buckets, in the same order

ARGV
  1 now (ms)   2 request id   3 plan (limits/scriptplans.py AdmitPlan), JSON:
    hold_ttl_ms              hold time-to-live (ms)
    hold_prefix, lot_prefix  key prefixes of holds and lots
    est_tokens               estimated input tokens (reserved in `tok` and `in` buckets)
    cost                     cost of the estimated input tokens (micro-USD)
    expect     {output_price, max_output, default_output, learned: {out, in_real, in_est}}
               (scriptplans.ExpectPlan): how the expected cost is made, see expected_cost
    flights    [{field, max}, ...]: max_in_flight ceilings, counted in the held hash
    buckets    [{kind, rate, unit}, ...]  kind: req | tok | in | out (units: common.lua)
    money      money checks, or null (an unmetered request):
      prepaid  true: the credit balance must be above zero for extra usage
      seat     {spent, included, override} (plans.SeatPlan) or null
      extra    {on, overrides, off} (plans.ExtraPlan)
      caps     [{spent, cap (-1 unlimited), overrides, label, labels, period}, ...]
               (plans.CapPlan): a refusal names the label of the override that set the
               cap, else `label`; `spent` is read from the period's hash (month|day|week)
      budgets  [CapPlan, ...]: caps checked whether the spend is included or not (a
               key's budget)
    session_budget  {cap, label, held} or null: the session's spend (its hash's cost)
               plus what its requests in flight hold (held hash field `held`) must be
               below cap (scriptplans.SessionBudget)

  Every money limit admits while settled + held < limit (held: what admitted requests not
  yet settled hold); an admitted request holds its expected cost against each of them.

RETURNS  {admitted (1|0), reason, detail, retry_ms, remaining_1, reset_ms_1, ...}
  reason (outcomes.Refusal): '' | key | late | rate | in_flight | included | cap | credit
  (late: release.lua ran first). detail: index (1-based) of the refusing bucket; the
  scope of the max_in_flight ceiling reached; "<label>|<cap>" of the refusing cap (micro-USD); the
  seat's included amount (micro-USD) when its included usage is used up. retry_ms: when
  the refused bucket can admit again (-1: never). remaining_i: whole tokens/requests left in
  bucket i after this request; reset_ms_i: ms until bucket i is full.
]]

local now, rid = tonumber(ARGV[1]), ARGV[2]
local plan = cjson.decode(ARGV[3])
local K, BUCKETS = named_keys({'hold', 'holds', 'account', 'lots', 'lotexp', 'ledger',
  'month', 'overrides', 'apikey', 'pday', 'pweek', 'held', 'learned', 'session'})
local PERIOD = {month = K.month, day = K.pday, week = K.pweek}

-- Buckets: the level of each now and what this request takes from it; the first bucket
-- that cannot admit (the one to wait longest for, or one that never will).
local function check_buckets()
  local levels, times, deadlines, takes = {}, {}, {}, {}
  local refused, retry = nil, 0
  for i, b in ipairs(plan.buckets) do
    local level, t, x = bucket_level(BUCKETS[i], b.rate, now)
    levels[i], times[i], deadlines[i] = level, t, x
    if b.kind == 'req' then
      takes[i] = b.unit
    elseif b.kind == 'tok' or b.kind == 'in' then
      takes[i] = plan.est_tokens * b.unit
    else
      takes[i] = 0
    end
    local need = need_units(b.kind, b.rate, b.unit)
    if need == nil or levels[i] < need then
      local w = wait_ms(level, b.rate, need)
      if refused == nil or w < 0 or (retry >= 0 and w > retry) then
        refused, retry = i, w
      end
    end
  end
  return {levels = levels, times = times, deadlines = deadlines, takes = takes,
    refused = refused, retry = retry}
end

local function result(state, admitted, reason, detail, retry_ms)
  local out = {admitted, reason, detail, retry_ms}
  for i, b in ipairs(plan.buckets) do
    local level = state.levels[i]
    if admitted == 1 then
      level = level - state.takes[i]
    end
    out[#out + 1] = math.max(0, math.floor(level / b.unit))
    out[#out + 1] = reset_ms(level, b.rate)
  end
  return out
end

-- A field of a hash, read once per script run (false: absent). The checks read the
-- overrides, held and spend hashes field by field, and take() writes the held hash's new
-- values from what was read.
local READ = {}
local function hget(key, field)
  local h = READ[key]
  if not h then
    h = {}
    READ[key] = h
  end
  local v = h[field]
  if v == nil then
    v = redis.call('HGET', key, field) or false
    h[field] = v
  end
  return v or nil
end

-- An overrides field (the seat's, the extra usage switches: read one by one, as a request
-- inside its included usage needs only the first).
local function override(field)
  return hget(K.overrides, field)
end

-- The overrides fields past the included usage (the extra usage switches, the caps': a
-- cap has up to three, its own, its tier's, and per period), read in one HMGET into the
-- per-run cache before they are checked.
local function read_cap_overrides(money)
  local fields = {money.extra.off}
  extend(fields, money.extra.overrides)
  for _, c in ipairs(money.caps) do
    extend(fields, c.overrides)
  end
  local cache = READ[K.overrides] or {}
  READ[K.overrides] = cache
  local missing = {}
  for _, f in ipairs(fields) do
    if cache[f] == nil then
      missing[#missing + 1] = f
    end
  end
  local values = read_fields(K.overrides, missing)
  for _, f in ipairs(missing) do
    cache[f] = values[f] or false
  end
end

-- Whether extra usage is on for this user now (plans.ExtraPlan).
local function extra_usage_on(extra)
  if override(extra.off) == '0' then
    return false
  end
  local v = first_present(override, extra.overrides)
  if v then
    return v == '1'
  end
  return extra.on
end

-- The expected cost of this request (micro-USD): its estimated input, corrected by what
-- settle.lua learned of real against estimated input on this model, plus its expected
-- output: the declared maximum, capped by the high percentile of real outputs learned on
-- this model (the configured default before anything is learned).
local function expected_cost(x)
  local v = redis.call('HMGET', K.learned, x.learned.out, x.learned.in_real, x.learned.in_est)
  local out = x.default_output
  if v[1] then
    out = tonumber(v[1])
  end
  if x.max_output >= 0 and x.max_output < out then
    out = x.max_output
  end
  local ratio = 1
  if num(v[3]) > 0 then
    ratio = math.min(math.max(num(v[2]) / num(v[3]), 0.5), 4)
  end
  return round_micro(plan.cost * ratio * 1000000 + out * x.output_price)
end

-- max_in_flight ceilings: the scope of the first one reached, or nil; `hold` counts this
-- request in each.
local function check_flights(hold)
  for _, f in ipairs(plan.flights) do
    if num(hget(K.held, f.field)) >= f.max then
      return f.field
    end
    hold[f.field] = 1
  end
  return nil
end

-- Money: a key's budgets, included usage, extra usage, spend caps, credit balance, each
-- against settled + held (what requests in flight hold is not tied to a period: it counts
-- against the monthly, weekly and daily caps of its field alike). Returns the refusal
-- (reason, detail), or nil, '' and the credit to hold; `hold` gets the fields to hold
-- `cost` (or its extra part) against.
local function check_money(money, cost, hold)
  local function committed(field, period)
    return num(hget(PERIOD[period or 'month'], field)) + num(hget(K.held, field))
  end
  for _, b in ipairs(money.budgets or {}) do
    if b.cap >= 0 and committed(b.spent, b.period) >= b.cap then
      return 'cap', b.label .. '|' .. int(b.cap)
    end
    hold[b.spent] = cost
  end
  -- A session's budget counts what it settled and what its requests in flight hold.
  local sb = opt(plan.session_budget)
  if sb then
    if num(redis.call('HGET', K.session, 'cost')) + num(hget(K.held, sb.held)) >= sb.cap then
      return 'cap', sb.label .. '|' .. int(sb.cap)
    end
    hold[sb.held] = cost
  end
  local extra = cost
  local seat = opt(money.seat)
  if seat then
    local included = seat.included
    local ov = override(seat.override)
    if ov then
      included = tonumber(ov)
    end
    local used = committed(seat.spent, 'month')
    hold[seat.spent] = cost
    if used < included and used + cost <= included then
      return nil, '', 0  -- inside the included usage, with what is in flight
    end
    -- Crossing it: the part past the included usage is extra usage.
    extra = cost - math.max(0, included - used)
    read_cap_overrides(money)
    if not extra_usage_on(money.extra) then
      return 'included', int(included)
    end
  end
  read_cap_overrides(money)  -- read already when the seat's usage was crossed
  for _, c in ipairs(money.caps) do
    local cap, label = cap_in_force(override, c)
    if cap >= 0 and committed(c.spent, c.period) >= cap then
      return 'cap', label .. '|' .. int(cap)
    end
    hold[c.spent] = extra  -- one hold per field, whatever the caps' periods
  end
  if money.prepaid then
    expire_lots(K.account, K.lots, K.lotexp, K.ledger, plan.lot_prefix, now)
    if available(K.account) <= 0 then
      return 'credit', ''
    end
    return nil, '', extra
  end
  return nil, '', 0
end

-- Admitted: take from the buckets and record the hold (what settle.lua and purge_holds
-- give back: `c` credit, `b` bucket reservations, `held` held-hash amounts, `est`).
local function take(state, credit, hold)
  local reserved = {}
  for i, b in ipairs(plan.buckets) do
    bucket_store(BUCKETS[i], state.levels[i] - state.takes[i], state.times[i], b.rate, now,
      state.deadlines[i])
    if b.kind ~= 'req' and state.takes[i] ~= 0 then
      reserved[BUCKETS[i]] = state.takes[i]
    end
  end
  if credit ~= 0 then
    redis.call('HINCRBY', K.account, 'held', int(credit))
  end
  for field, amount in pairs(hold) do
    if amount == 0 then
      hold[field] = nil
    end
  end
  add_held(K.held, hold, function(field)  -- every field read: a hold is a read-modify-write
    return hget(K.held, field)
  end)
  redis.call('HSET', K.hold, 'c', int(credit), 'b', encode_reserved(reserved),
    'held', encode_reserved(hold), 'est', int(plan.est_tokens))
  redis.call('PEXPIRE', K.hold, int(plan.hold_ttl_ms + 86400000))
  redis.call('ZADD', K.holds, int(now + plan.hold_ttl_ms), rid)
end

if redis.call('HGET', K.apikey, 'revoked') ~= '0' then
  return {0, 'key', '', 0}
end
-- A hold key before admission is release.lua's tombstone: this admission came too late
-- (Tollway answered without it), so it takes nothing.
if redis.call('EXISTS', K.hold) == 1 then
  return {0, 'late', '', 0}
end
purge_holds(K.holds, K.account, K.held, plan.hold_prefix, now)

local state = check_buckets()
if state.refused ~= nil then
  return result(state, 0, 'rate', tostring(state.refused), state.retry)
end
local money = opt(plan.money)
local hold = {}
local over = check_flights(hold)
if over then
  return result(state, 0, 'in_flight', over, 1000)
end
local credit = 0
if money then
  local expect = opt(plan.expect)
  local cost = plan.cost
  if expect then
    cost = expected_cost(expect)
  end
  local reason, detail, held_credit = check_money(money, cost, hold)
  if reason then
    return result(state, 0, reason, detail, 0)
  end
  credit = held_credit
end
take(state, credit, hold)
return result(state, 1, '', '', 0)
