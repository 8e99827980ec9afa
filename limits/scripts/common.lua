--[[ common.lua: helpers prepended to every Tollway script when it is registered.

Units used by every script:
  * money: integer micro-USD;
  * time: integer milliseconds since the Unix epoch (the caller's injected clock);
  * buckets: a bucket's level is stored in "units". A bucket with a limit of L per minute
    refills at `rate` units per millisecond and holds at most `rate * 60000` units, where
    token buckets use rate = L and unit = 60000 units per token, and request buckets
    use rate = L * 1000 (L may have 3 decimals) and unit = 60,000,000 units per request.
    Every quantity stays an integer, exactly representable in a Lua double.

A bucket is a hash {l = level, t = time of level}; a missing bucket is full.
]]

local function num(v)
  return tonumber(v) or 0
end

-- Optional plan entries arrive as JSON null, which cjson decodes to a truthy sentinel.
local function opt(v)
  if v == cjson.null then
    return nil
  end
  return v
end

-- A script's KEYS by name: the first #names keys are named in that order (the script's
-- header lists them; limits/scriptplans.py builds them from the same names), the rest are
-- the buckets of plan.buckets, in order.
local function named_keys(names)
  local k, buckets = {}, {}
  for i, name in ipairs(names) do
    k[name] = KEYS[i]
  end
  for i = #names + 1, #KEYS do
    buckets[#buckets + 1] = KEYS[i]
  end
  return k, buckets
end

-- Reads of several fields of one hash in one HMGET: `fields` is a list (repeats allowed);
-- returns field -> value (absent fields are missing from the table).
local function read_fields(key, fields)
  local list, seen = {}, {}
  for _, f in ipairs(fields) do
    if not seen[f] then
      seen[f] = true
      list[#list + 1] = f
    end
  end
  local out = {}
  if #list > 0 then
    local v = redis.call('HMGET', key, unpack(list))
    for i, f in ipairs(list) do
      if v[i] then
        out[f] = v[i]
      end
    end
  end
  return out
end

-- Append the items of list `b` to list `a`.
local function extend(a, b)
  for _, x in ipairs(b or {}) do
    a[#a + 1] = x
  end
  return a
end

-- The first of `fields` for which `get(field)` has a value: that value and its position
-- (nil if none).
local function first_present(get, fields)
  for i, f in ipairs(fields) do
    local v = get(f)
    if v then
      return v, i
    end
  end
  return nil
end

-- Every number handed to Redis goes through here: newer servers format Lua numbers in the
-- shortest form ("1e+09"), which HINCRBY and friends refuse as "not an integer".
local function int(n)
  return string.format('%d', n)
end

-- Reservations of a hold, encoded as "key amount key amount ..." (cjson keeps 14 digits).
local function encode_reserved(reserved)
  local parts = {}
  for key, amount in pairs(reserved) do
    parts[#parts + 1] = key .. ' ' .. int(amount)
  end
  return table.concat(parts, ' ')
end

local function decode_reserved(text)
  local reserved = {}
  for key, amount in string.gmatch(text or '', '(%S+) (%S+)') do
    reserved[key] = tonumber(amount)
  end
  return reserved
end

-- Level of a bucket refilled up to `now` (writes nothing), the time of that level, and
-- the bucket's expiry deadline (field x, 0 when unknown: see bucket_store). Time never
-- runs backwards: a replica whose clock is behind sees no refill rather than a double one.
local function bucket_level(key, rate, now)
  local v = redis.call('HMGET', key, 'l', 't', 'x')
  local cap = rate * 60000
  if not v[1] then
    return cap, now, 0
  end
  local level, t = tonumber(v[1]), tonumber(v[2])
  if now > t then
    level = level + (now - t) * rate
    t = now
  end
  if level > cap then
    level = cap
  end
  return level, t, num(v[3])
end

-- How far past what it needs a bucket's expiry is pushed: a busy bucket then costs one
-- PEXPIRE every ~10 minutes instead of one per write.
local BUCKET_TTL_SLACK = 600000

-- Store a bucket level. The key must live until a minute after the bucket would be full
-- again anyway (a missing bucket is a full one; the margin keeps a key from vanishing
-- under a replica whose clock is a little behind, and under tests that move an injected
-- clock). Field x keeps the deadline the key's expiry was last set to: the expiry is
-- pushed (BUCKET_TTL_SLACK past the need) only when this write needs more than x. A key
-- written by an older version has no x: its first write here sets one.
local function bucket_store(key, level, t, rate, now, x)
  local cap = rate * 60000
  local full_in = 60000
  if rate > 0 and level < cap then
    full_in = math.ceil((cap - level) / rate) + 60000
  end
  if now + full_in > x then
    local ttl = full_in + BUCKET_TTL_SLACK
    redis.call('HSET', key, 'l', int(level), 't', int(t), 'x', int(now + ttl))
    redis.call('PEXPIRE', key, int(ttl))
  else
    redis.call('HSET', key, 'l', int(level), 't', int(t))
  end
end

-- What a bucket must hold to admit a request: a token bucket must be above zero (one unit);
-- a request bucket must hold a whole request, or its whole capacity when the limit is
-- below one request per minute. A zero limit admits nothing.
local function need_units(kind, rate, unit)
  if rate <= 0 then
    return nil
  end
  if kind == 'req' then
    return math.min(unit, rate * 60000)
  end
  return 1
end

-- Milliseconds until a bucket at `level` holds `need` units (-1: never, a zero limit).
local function wait_ms(level, rate, need)
  if need == nil then
    return -1
  end
  if level >= need then
    return 0
  end
  return math.ceil((need - level) / rate)
end

-- Milliseconds until a bucket at `level` is full again.
local function reset_ms(level, rate)
  local cap = rate * 60000
  if rate <= 0 or level >= cap then
    return 0
  end
  return math.ceil((cap - level) / rate)
end

-- The cap in force of a plans.CapPlan (-1 unlimited) under the overrides hash (`ov(field)`
-- its value), and the label a refusal names it by.
local function cap_in_force(ov, c)
  local v, at = first_present(ov, c.overrides)
  if v == 'unlimited' then
    return -1, c.labels[at]
  elseif v then
    return tonumber(v), c.labels[at]
  end
  return c.cap, c.label
end

-- The one rounding rule of tollway.limits.prices.round_micro: an amount in 10^-6 micro-USD
-- to micro-USD, half up.
local function round_micro(exact)
  return math.floor((exact + 500000) / 1000000)
end

-- Add `amounts` (field -> micro-USD or count) to the held hash; fields that reach zero
-- are deleted. `get` (optional): get(field) is the hash's current value of a field (the
-- caller reads it, or has read it already). Without it: two fields or fewer take one
-- HINCRBY each, more one HMGET; then one write (and one delete).
local function add_held(held_key, amounts, get)
  local fields = {}
  for field, amount in pairs(amounts) do
    if amount ~= 0 then
      fields[#fields + 1] = field
    end
  end
  if #fields == 0 then
    return
  end
  if not get then
    if #fields <= 2 then
      for _, f in ipairs(fields) do
        if redis.call('HINCRBY', held_key, f, int(amounts[f])) == 0 then
          redis.call('HDEL', held_key, f)
        end
      end
      return
    end
    local current = read_fields(held_key, fields)
    get = function(f)
      return current[f]
    end
  end
  local set, gone = {}, {}
  for _, f in ipairs(fields) do
    local v = num(get(f)) + amounts[f]
    if v == 0 then
      gone[#gone + 1] = f
    else
      set[#set + 1] = f
      set[#set + 1] = int(v)
    end
  end
  if #set > 0 then
    redis.call('HSET', held_key, unpack(set))
  end
  if #gone > 0 then
    redis.call('HDEL', held_key, unpack(gone))
  end
end

-- Give back what hold `hk` reserved, if it exists: its credit hold leaves the account's
-- `held`, its money holds and in-flight counts leave the held hash (fields at zero are
-- deleted), and with `buckets` its token reservations return to their buckets. Returns
-- the hold's fields (nil when there was no hold): reserved buckets and estimated tokens.
-- The caller deletes the hold.
local function give_back(hk, acct_key, held_key, buckets)
  local h = redis.call('HMGET', hk, 'c', 'b', 'held', 'est')
  if not h[1] then
    return nil
  end
  if tonumber(h[1]) ~= 0 then
    redis.call('HINCRBY', acct_key, 'held', int(-tonumber(h[1])))
  end
  local back = {}
  for field, amount in pairs(decode_reserved(h[3])) do
    back[field] = -amount
  end
  add_held(held_key, back)
  local reserved = decode_reserved(h[2])
  if buckets then
    for bkey, amount in pairs(reserved) do
      if amount ~= 0 and redis.call('EXISTS', bkey) == 1 then
        redis.call('HINCRBY', bkey, 'l', int(amount))
      end
    end
  end
  return {reserved = reserved, est = num(h[4])}
end

-- Give back what expired holds reserved (give_back). A proxy that died mid-request
-- therefore keeps nothing beyond the hold's time-to-live.
local function purge_holds(holds_key, acct_key, held_key, hold_prefix, now)
  local expired = redis.call('ZRANGEBYSCORE', holds_key, '-inf', int(now))
  for _, rid in ipairs(expired) do
    local hk = hold_prefix .. rid
    give_back(hk, acct_key, held_key, true)
    redis.call('DEL', hk)
  end
  if #expired > 0 then
    redis.call('ZREMRANGEBYSCORE', holds_key, '-inf', int(now))
  end
end

-- Expire the credit lots whose expiry is at or before `now`: their remainder stops
-- counting at that instant and is recorded as an `expiry` ledger event.
local function expire_lots(acct_key, lots_key, lotexp_key, ledger_key, lot_prefix, now)
  local due = redis.call('ZRANGEBYSCORE', lotexp_key, '-inf', int(now), 'WITHSCORES')
  for i = 1, #due, 2 do
    local id, expires = due[i], due[i + 1]
    local lk = lot_prefix .. id
    local rem = num(redis.call('HGET', lk, 'remaining'))
    redis.call('HSET', lk, 'remaining', 0, 'expired', int(rem))
    redis.call('ZREM', lots_key, id)
    redis.call('ZREM', lotexp_key, id)
    if rem > 0 then
      redis.call('HINCRBY', acct_key, 'balance', int(-rem))
      redis.call('XADD', ledger_key, '*', 'type', 'expiry', 'ts', expires, 'lot', id,
        'amount', int(rem))
    end
  end
end

-- What the organization can still spend: lots' remainders, less any debt left by an
-- overshooting request, less the holds of requests in flight.
local function available(acct_key)
  local a = redis.call('HMGET', acct_key, 'balance', 'debt', 'held')
  return num(a[1]) - num(a[2]) - num(a[3])
end

-- How each ledger event moves the balance the ledger implies (lots total less debt);
-- limits/credits.py recompute_from_ledger replays the same rule.
local function ledger_effect(f)
  local t = f.type
  if t == 'purchase' or t == 'grant' or t == 'reload' then
    return num(f.amount)
  elseif t == 'debit' and f.prepaid == '1' then
    return -num(f.extra)
  elseif t == 'expiry' then
    return -num(f.amount)
  end
  return 0
end

-- Keep the ledger stream bounded: fold up to `max_n` of its oldest events whose time is
-- before `before_ms` into the account's `ledger_base` and delete them. The balance the
-- ledger implies stays exactly `ledger_base` plus the effect of the events kept. Called by
-- every settlement, so folding keeps pace with appending.
local function fold_ledger(acct_key, ledger_key, before_ms, max_n)
  local entries = redis.call('XRANGE', ledger_key, '-', '+', 'COUNT', max_n)
  local base, ids, last = 0, {}, 0
  for _, e in ipairs(entries) do
    local f = {}
    for i = 1, #e[2], 2 do
      f[e[2][i]] = e[2][i + 1]
    end
    if num(f.ts) >= before_ms then
      break
    end
    base = base + ledger_effect(f)
    ids[#ids + 1] = e[1]
    last = math.max(last, num(f.ts))
  end
  if #ids > 0 then
    if base ~= 0 then
      redis.call('HINCRBY', acct_key, 'ledger_base', int(base))
    end
    -- How far back the ledger is no longer complete: reports that replay events (a
    -- month's statement) can tell whether they still can.
    if last > num(redis.call('HGET', acct_key, 'ledger_folded_ts')) then
      redis.call('HSET', acct_key, 'ledger_folded_ts', int(last))
    end
    redis.call('XDEL', ledger_key, unpack(ids))
  end
end
