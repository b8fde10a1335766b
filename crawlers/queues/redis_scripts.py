"""Lua scripts of the Redis lease queue. Each touches only keys of one hash slot.

The public list a producer pushes to is ``K`` (e.g. ``hydra:prices:batches``);
every helper key is ``{K}:...``, whose hash tag is ``K`` itself, so a key
without braces and its helpers share a Redis Cluster slot. Internally a message
travels as an *envelope*, ``<message id>\\n<deliveries>\\n<payload>``: binary
safe (a payload that is not UTF-8 cannot wedge the queue) and parsed without
JSON in Lua.

Helper keys of ``K``:

- ``{K}:ready``     list of envelopes served before ``K``: reclaimed and released
  messages (at the head), requeued remainders and due retries (at the tail)
- ``{K}:delayed``   sorted set envelope -> due time (ms): retries waiting
- ``{K}:leases``    sorted set lease id -> lease deadline (ms)
- ``{K}:held``      hash lease id -> envelope (its payload is the checkpoint)
- ``{K}:deadletter-outbox``  list of dead-letter entries not yet moved to the
  dead-letter list, which lives in another slot (moved by ``TRANSFER``)
"""

from __future__ import annotations

_NOW_MS = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function split(envelope)
  local a = string.find(envelope, '\\n', 1, true)
  local b = string.find(envelope, '\\n', a + 1, true)
  return string.sub(envelope, 1, a - 1), tonumber(string.sub(envelope, a + 1, b - 1)),
    string.sub(envelope, b + 1)
end
"""

# KEYS: list, ready, delayed, leases, held, then one typed ready list per route type
# ARGV: limit, lease_ms, own lease prefix, reclaim_limit, promote_limit,
#       route field ('' = no routing), route types (csv, the order of the typed KEYS),
#       wanted types (csv), route_limit,
#       then `limit` lease ids, then `limit` new message ids
# -> {reclaimed, delayed, lease, envelope, lease, envelope, ...}
#
# Routing (a queue shared by several kinds of worker, e.g. fetch tasks by source
# type): a message of a known type this worker does not want is moved, envelope
# and all, to that type's ready list, where the workers of that type find it
# first. A message that cannot be read, or of an unknown type, is leased to
# whoever claims it, to be dead-lettered.
CLAIM = (
    _NOW_MS
    + """
local limit = tonumber(ARGV[1])
local prefix = ARGV[3]
local field, wanted = ARGV[6], {}
local typed = {}
local position = 5
for name in string.gmatch(ARGV[7], '[^,]+') do
  position = position + 1
  typed[name] = KEYS[position]
end
for name in string.gmatch(ARGV[8], '[^,]+') do wanted[name] = true end
local route_budget = tonumber(ARGV[9])
local first_lease = 9
local function route_of(payload)
  if field == '' then return nil end
  local ok, message = pcall(cjson.decode, payload)
  if not ok or type(message) ~= 'table' then return nil end
  local kind = message[field]
  if type(kind) ~= 'string' or not typed[kind] or wanted[kind] then return nil end
  return typed[kind]
end
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, tonumber(ARGV[5]))
for _, envelope in ipairs(due) do
  redis.call('RPUSH', KEYS[2], envelope)
  redis.call('ZREM', KEYS[3], envelope)
end
local reclaimed = 0
local lease_ms = tonumber(ARGV[2])
local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'WITHSCORES', 'LIMIT', 0,
  tonumber(ARGV[4]))
for i = 1, #expired, 2 do
  local lease, deadline = expired[i], tonumber(expired[i + 1])
  -- a worker does not reclaim its own leases: it still holds them and renews them;
  -- only one left unrenewed for a whole further lease period is surely forgotten
  if string.sub(lease, 1, #prefix) ~= prefix or deadline < now - lease_ms then
    local envelope = redis.call('HGET', KEYS[5], lease)
    if envelope then
      local id, deliveries, payload = split(envelope)
      redis.call('LPUSH', KEYS[2], id .. '\\n' .. (deliveries + 1) .. '\\n' .. payload)
      reclaimed = reclaimed + 1
    end
    redis.call('HDEL', KEYS[5], lease)
    redis.call('ZREM', KEYS[4], lease)
  end
end
local out = {reclaimed, 0}
local n = 0
local fresh = 0
local function lease_it(envelope)
  n = n + 1
  local lease = ARGV[first_lease + n]
  redis.call('HSET', KEYS[5], lease, envelope)
  redis.call('ZADD', KEYS[4], now + lease_ms, lease)
  table.insert(out, lease)
  table.insert(out, envelope)
end
-- first what was routed to this worker's types
for name, _ in pairs(wanted) do
  while n < limit and typed[name] do
    local envelope = redis.call('LPOP', typed[name])
    if not envelope then break end
    lease_it(envelope)
  end
end
-- then the shared ready list and the public list, routing what is not ours
while n < limit do
  local envelope = redis.call('LPOP', KEYS[2])
  if not envelope then
    local payload = redis.call('LPOP', KEYS[1])
    if not payload then break end
    fresh = fresh + 1
    envelope = ARGV[first_lease + limit + fresh] .. '\\n0\\n' .. payload
  end
  local _, _, payload = split(envelope)
  local destination = route_of(payload)
  if destination and route_budget > 0 then
    route_budget = route_budget - 1
    redis.call('RPUSH', destination, envelope)
  elseif destination then
    redis.call('LPUSH', KEYS[2], envelope)  -- enough routing for one call: next time
    break
  else
    lease_it(envelope)
  end
end
out[2] = redis.call('ZCARD', KEYS[3])
return out
"""
)

# KEYS: leases; ARGV: lease_ms, lease ids...  -> lease ids no longer held
RENEW = (
    _NOW_MS
    + """
local lost = {}
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i])
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
"""
)

# KEYS: leases, held, ready, delayed, outbox
# ARGV: lease, requeue count, (delay_ms, message id, payload) per requeue, dead-letter entries...
# The lease is removed last: a script that fails midway keeps what it wrote, and a
# follow-up pushed twice (the ack retried) beats a lease gone without its follow-ups.
ACK = (
    _NOW_MS
    + """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local requeued = tonumber(ARGV[2])
for i = 0, requeued - 1 do
  local delay = tonumber(ARGV[3 + 3 * i])
  local envelope = ARGV[4 + 3 * i] .. '\\n0\\n' .. ARGV[5 + 3 * i]
  if delay > 0 then
    redis.call('ZADD', KEYS[4], now + delay, envelope)
  else
    redis.call('RPUSH', KEYS[3], envelope)
  end
end
for i = 3 + 3 * requeued, #ARGV do redis.call('RPUSH', KEYS[5], ARGV[i]) end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""
)

# KEYS: leases, held, outbox; ARGV: lease, has payload (0|1), payload, dead-letter entries...
CHECKPOINT = (
    _NOW_MS
    + """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
for i = 4, #ARGV do redis.call('RPUSH', KEYS[3], ARGV[i]) end
if ARGV[2] == '1' then
  local envelope = redis.call('HGET', KEYS[2], ARGV[1])
  if envelope then
    local id, deliveries = split(envelope)
    redis.call('HSET', KEYS[2], ARGV[1], id .. '\\n' .. deliveries .. '\\n' .. ARGV[3])
  end
end
return 1
"""
)

# KEYS: leases, held, ready; ARGV: lease -> 1 if given back
RELEASE = """
local held = redis.call('ZREM', KEYS[1], ARGV[1])
local envelope = redis.call('HGET', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if held == 1 and envelope then
  redis.call('LPUSH', KEYS[3], envelope)
  return 1
end
return 0
"""

# Runs in the dead-letter list's slot. KEYS: dead-letter list, {list}:ids
# ARGV: now_ms, keep_ms, count, entry ids..., entries...  -> entries appended
# An entry already moved (same id) is skipped, so a transfer interrupted
# between this script and the outbox cleanup can be repeated safely.
# A failing script keeps the writes it made before the error, so the list's type is
# checked first, and an id is recorded only after its entry was pushed.
TRANSFER = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'list' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE the dead-letter key holds a ' .. kind)
end
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[2]))
local count = tonumber(ARGV[3])
local moved = 0
for i = 1, count do
  if not redis.call('ZSCORE', KEYS[2], ARGV[3 + i]) then
    redis.call('RPUSH', KEYS[1], ARGV[3 + count + i])
    redis.call('ZADD', KEYS[2], now, ARGV[3 + i])
    moved = moved + 1
  end
end
return moved
"""
