--[[ limit_request.lua: file or decide a user's limit-increase request, atomically.

Each user has at most one request record, the latest, in the organization's requests hash
(field "u:<user>", a JSON object with at least `status`: pending | approved | denied).
A user may file only while their latest request is not pending; an admin may decide only
a pending request, and an approval's overrides are written in the same step, so the very
next request of the user sees them.

KEYS
  1 requests   tw:{org}:lir    hash "u:<user>" -> JSON record
  2 overrides  tw:{org}:cfg    run-time overrides (cap:user=U, included:user=U, ...)

ARGV
  1 op         file | decide
  2 user
  3 record     the new record, JSON (file: status pending; decide: approved | denied)
  4..          decide only: override fields and values to set, "field value field value ..."

RETURNS  {done (1|0), the user's record after the call (JSON, '' when there is none)}
  file refused (0): a request is already pending, its record is returned.
  decide refused (0): no pending request with the record's id; the latest record (or '')
  is returned.
]]

local K_REQ, K_CFG = KEYS[1], KEYS[2]
local op, field, record = ARGV[1], 'u:' .. ARGV[2], ARGV[3]

local current = redis.call('HGET', K_REQ, field)
local pending = current and cjson.decode(current).status == 'pending'

if op == 'file' then
  if pending then
    return {0, current}
  end
  redis.call('HSET', K_REQ, field, record)
  return {1, record}
end

if op ~= 'decide' then
  return redis.error_reply('unknown op ' .. op)
end
-- The decided record must be the pending one (not a newer request filed meanwhile).
if not pending or cjson.decode(current).id ~= cjson.decode(record).id then
  return {0, current or ''}
end
for i = 4, #ARGV, 2 do
  redis.call('HSET', K_CFG, ARGV[i], ARGV[i + 1])
end
redis.call('HSET', K_REQ, field, record)
return {1, record}
