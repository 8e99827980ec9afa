--[[ admit.lua: admit one request, atomically, or refuse it and take nothing.

KEYS
  1 hold       tw:{org}:hold:<rid>     this request's hold (created on admission)
  2 holds      tw:{org}:holds          zset rid -> hold expiry (ms)
  3 account    tw:{org}:acct           hash balance, debt, held (micro-USD)
  4 lots       tw:{org}:lots           zset of active lots in consumption order
  5 lotexp     tw:{org}:lotexp         zset of active lots by expiry (ms)
  6 ledger     tw:{org}:ledger         stream of money events
  7 month      tw:{org}:mtd:<YYYY-MM>  month-to-date spend (micro-USD), fields spend:<scope>
                                       and extra:<scope>, scope = org | ws=W | user=U | key=K
  8 overrides  tw:{org}:cfg            run-time overrides of caps and extra usage
  9 apikey     tw:{org}:key:<key id>   the caller's key record (field revoked = 0 | 1)
  10..         buckets, one per entry of plan.b, in the same order

ARGV
  1 now (ms)   2 request id   3 plan, JSON:
    ttl     hold time-to-live (ms)
    hp, lp  key prefixes of holds and lots
    est     estimated input tokens (reserved in `tok` and `in` buckets)
    b       [[kind, rate, unit], ...]  kind: req | tok | in | out (see common.lua for units)
    m       money checks, or absent:
      cost      estimated input cost to hold (micro-USD), held only for prepaid extra usage
      prepaid   true: the credit balance must be above zero for extra usage
      seat      {f = month field of the user's spend, inc = included amount, ov = override field}
      extra     {on = extra usage enabled, ov = [override fields, first present wins],
                 off = override field whose value '0' disables extra usage for everyone}
      caps      [[month field, cap or -1 (unlimited), [override fields], label,
                 labels], ...] where labels = [label of each override field]: a refusal
                 names the source that set the cap (an override of the user's cap on a
                 tier's user is the user's cap, not the tier's)

RETURNS  {admitted (1|0), reason, detail, retry_ms, remaining_1, reset_ms_1, ...}
  reason: '' | key | late | rate | included | cap | credit (late: release.lua ran first).
  detail: index (1-based) of the refusing
  bucket; "<label>|<cap>" of the refusing cap (micro-USD); the seat's included amount
  (micro-USD) when its included usage is used up. retry_ms: when the refused bucket can admit
  again (-1: never). remaining_i: whole tokens/requests left in bucket i after this request;
  reset_ms_i: ms until bucket i is full.
]]

local now, rid = tonumber(ARGV[1]), ARGV[2]
local plan = cjson.decode(ARGV[3])
local K_HOLD, K_HOLDS, K_ACCT, K_LOTS, K_LOTEXP, K_LEDGER, K_MONTH, K_CFG, K_APIKEY =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]

local revoked = redis.call('HGET', K_APIKEY, 'revoked')
if revoked ~= '0' then
  return {0, 'key', '', 0}
end

-- A hold key before admission is release.lua's tombstone: this admission came too late
-- (Tollway answered without it), so it takes nothing.
if redis.call('EXISTS', K_HOLD) == 1 then
  return {0, 'late', '', 0}
end

purge_holds(K_HOLDS, K_ACCT, plan.hp, now)

-- 1. Buckets: every one must hold what it needs (common.lua need_units). Amounts are taken
--    only if all of them do.
local levels, times, takes = {}, {}, {}
local refused, retry = nil, 0
for i, b in ipairs(plan.b) do
  local kind, rate, unit = b[1], b[2], b[3]
  local level, t = bucket_level(KEYS[9 + i], rate, now)
  levels[i], times[i] = level, t
  if kind == 'req' then
    takes[i] = unit
  elseif kind == 'tok' or kind == 'in' then
    takes[i] = plan.est * unit
  else
    takes[i] = 0
  end
  local need = need_units(kind, rate, unit)
  if need == nil or level < need then
    local w = wait_ms(level, rate, need)
    if refused == nil or w < 0 or (retry >= 0 and w > retry) then
      refused, retry = i, w
    end
  end
end

local function result(admitted, reason, detail, retry_ms)
  local out = {admitted, reason, detail, retry_ms}
  for i, b in ipairs(plan.b) do
    local level = levels[i]
    if admitted == 1 then
      level = level - takes[i]
    end
    local rem = math.floor(level / b[3])
    if rem < 0 then
      rem = 0
    end
    out[#out + 1] = rem
    out[#out + 1] = reset_ms(level, b[2])
  end
  return out
end

if refused ~= nil then
  return result(0, 'rate', tostring(refused), retry)
end

-- 2. Money: included usage, extra usage, spend caps, credit balance.
local m = plan.m
local hold_cost = 0
if m then
  local function override(fields)
    for i, f in ipairs(fields) do
      local v = redis.call('HGET', K_CFG, f)
      if v then
        return v, i
      end
    end
    return nil
  end

  local extra_now = true
  if m.seat then
    local included = m.seat.inc
    local ov = override({m.seat.ov})
    if ov then
      included = tonumber(ov)
    end
    extra_now = num(redis.call('HGET', K_MONTH, m.seat.f)) >= included
    if extra_now then
      local on = m.extra.on
      local ov_on = override(m.extra.ov)
      if ov_on then
        on = ov_on == '1'
      end
      if m.extra.off and redis.call('HGET', K_CFG, m.extra.off) == '0' then
        on = false
      end
      if not on then
        return result(0, 'included', int(included), 0)
      end
    end
  end

  if extra_now then
    for _, c in ipairs(m.caps) do
      local cap, label = c[2], c[4]
      local ov, at = override(c[3])
      if ov then
        label = c[5][at]
      end
      if ov == 'unlimited' then
        cap = -1
      elseif ov then
        cap = tonumber(ov)
      end
      if cap >= 0 and num(redis.call('HGET', K_MONTH, c[1])) >= cap then
        return result(0, 'cap', label .. '|' .. int(cap), 0)
      end
    end
    if m.prepaid then
      expire_lots(K_ACCT, K_LOTS, K_LOTEXP, K_LEDGER, plan.lp, now)
      if available(K_ACCT) <= 0 then
        return result(0, 'credit', '', 0)
      end
      hold_cost = m.cost
    end
  end
end

-- 3. Admitted: take from the buckets and record the hold.
local reserved = {}
for i, b in ipairs(plan.b) do
  local key = KEYS[9 + i]
  bucket_store(key, levels[i] - takes[i], times[i], b[2])
  if b[1] ~= 'req' and takes[i] ~= 0 then
    reserved[key] = takes[i]
  end
end
if hold_cost ~= 0 then
  redis.call('HINCRBY', K_ACCT, 'held', int(hold_cost))
end
redis.call('HSET', K_HOLD, 'c', int(hold_cost), 'b', encode_reserved(reserved))
redis.call('PEXPIRE', K_HOLD, int(plan.ttl + 86400000))
redis.call('ZADD', K_HOLDS, int(now + plan.ttl), rid)
return result(1, '', '', 0)
