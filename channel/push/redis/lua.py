"""The Lua scripts of the Redis push stores.

Every script touches only the keys it is given. On a Redis Cluster those are
in one hash slot: the batched scripts (many keys per call) get keys of one slot
there (``Connection.groups``), any keys on one Redis. Lease times come from the
Redis clock (``TIME``), so gateway clocks need not agree.
"""

from __future__ import annotations

from channel.push.redis.connection import Lua

_NOW = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local function ms(x) return string.format('%.0f', x) end
"""

#: The batched scripts take their arguments as one msgpack array (``ARGV[1]``,
#: ``connection.pack_args``): Redis decodes it in C (its Lua has cmsgpack), where
#: packing each value as a command argument cost the gateway ~0.3 µs (hiredis). A
#: number from it is a Lua double, written back with ``ms`` (exact up to 2^53; the
#: conversion Redis applies to a bare number is not meant for 13-digit times).
_ARGS = """
local A = cmsgpack.unpack(ARGV[1])
local function ms(x) return string.format('%.0f', x) end
"""

#: KEYS: nodes, seq. ARGV: node id, lease ms, forget-after ms → node number.
NODE_JOIN = Lua(
    _NOW
    + """
-- Leases that lapsed long ago belong to nodes that died without leaving.
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local lease_end = tonumber(string.match(all[i + 1], '|(%d+)$'))
  if lease_end and lease_end < now - tonumber(ARGV[3]) then
    redis.call('HDEL', KEYS[1], all[i])
  end
end
local n
repeat n = redis.call('INCR', KEYS[2]) until redis.call('HEXISTS', KEYS[1], n) == 0
redis.call('HSET', KEYS[1], n, ARGV[1] .. '|' .. ms(now + tonumber(ARGV[2])))
return n
"""
)

#: KEYS: nodes, seq. ARGV: node number, node id, lease ms
#: → 1 if the lease was held and live, 0 if it was lost (the node is re-registered anyway).
NODE_RENEW = Lua(
    _NOW
    + """
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. ms(now + tonumber(ARGV[3])))
-- A Redis that restarted empty starts numbering again: skip numbers in use.
if tonumber(redis.call('GET', KEYS[2]) or '0') < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], ARGV[1])
end
if not old then return 0 end
local id, lease_end = string.match(old, '^(.*)|(%d+)$')
if id ~= ARGV[2] or tonumber(lease_end) <= now then return 0 end
return 1
"""
)

#: KEYS: nodes → {seconds, microseconds, [node, "id|lease_end", ...]} on the same clock.
NODES_READ = Lua(
    """
local t = redis.call('TIME')
return {t[1], t[2], redis.call('HGETALL', KEYS[1])}
"""
)

#: KEYS: hash. ARGV: field, value → delete the field if it still holds exactly that value.
HDEL_IF_EQUAL = Lua(
    """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""
)

#: KEYS: key. ARGV: value, ms → set the key to expire in ms if it holds exactly that value.
PEXPIRE_IF_EQUAL = Lua(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
)

#: KEYS: key. ARGV: value → delete the key if it holds exactly that value.
DEL_IF_EQUAL = Lua(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
)

#: KEYS: hashes. ARGS (``_ARGS``), for each key in turn: a count, then that many
#: fields → the values of all those fields, in order (nil where there is none): HMGET
#: over many keys.
HMGET_MANY = Lua(
    _ARGS
    + """
local out, p = {}, 1
for i = 1, #KEYS do
  local last = p + A[p]
  p = p + 1
  -- unpack() is bounded by Lua's C stack: many fields go in parts.
  while p <= last do
    local upto = math.min(p + 999, last)
    local values = redis.call('HMGET', KEYS[i], unpack(A, p, upto))
    for j = 1, upto - p + 1 do out[#out + 1] = values[j] end
    p = upto + 1
  end
end
return out
"""
)

#: KEYS: hash. ARGV: field, node number → delete the field if its value is that
#: node number, alone or followed by ":" (a device that moved stays).
HDEL_IF_NODE = Lua(
    """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v and (v == ARGV[2] or string.sub(v, 1, #ARGV[2] + 1) == ARGV[2] .. ':') then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""
)

# Redis's cmsgpack cannot decode msgpack bin values (message bodies), so the
# queue scripts read the two fields they need from PushMessage.pack() directly:
# a fixarray of [id, body, headers, expires_at_ms, collapse_key, priority,
# accepted_at_ms, online_only].
# A script's top level runs on every call: defining these helpers (closures and a
# table) there cost ~1.3 µs per call whether they were used or not, so they are
# built by ``msgpack_helpers()`` only on the paths that read a packed message.
_MSGPACK = """
local function msgpack_helpers()
local function be(s, p, n)
  local v = 0
  for i = p, p + n - 1 do v = v * 256 + string.byte(s, i) end
  return v
end
local W = {[0xc4] = 1, [0xc5] = 2, [0xc6] = 4, [0xd9] = 1, [0xda] = 2, [0xdb] = 4,
           [0xcc] = 1, [0xcd] = 2, [0xce] = 4, [0xcf] = 8, [0xd0] = 1, [0xd1] = 2,
           [0xd2] = 4, [0xd3] = 8, [0xca] = 4, [0xcb] = 8, [0xdc] = 2, [0xdd] = 4,
           [0xde] = 2, [0xdf] = 4}
local skip
-- The value at p (strings and integers; nil for others) and the position after it.
local function item(s, p)
  local b = string.byte(s, p)
  if b <= 0x7f then return b, p + 1 end
  if b >= 0xe0 then return b - 256, p + 1 end
  if b >= 0xa0 and b <= 0xbf then return string.sub(s, p + 1, p + b - 0xa0), p + 1 + b - 0xa0 end
  if b >= 0x90 and b <= 0x9f then return nil, skip(s, p + 1, b - 0x90) end
  if b >= 0x80 and b <= 0x8f then return nil, skip(s, p + 1, 2 * (b - 0x80)) end
  if b == 0xc0 or b == 0xc2 or b == 0xc3 then return nil, p + 1 end
  local w = W[b]
  if not w then error('unexpected msgpack byte ' .. b) end
  if b >= 0xcc and b <= 0xcf then return be(s, p + 1, w), p + 1 + w end
  if b >= 0xd0 and b <= 0xd3 then
    local v = be(s, p + 1, w)
    if v >= 2 ^ (8 * w - 1) then v = v - 2 ^ (8 * w) end
    return v, p + 1 + w
  end
  if b == 0xca or b == 0xcb then return nil, p + 1 + w end
  local n = be(s, p + 1, w)
  if b == 0xdc or b == 0xdd then return nil, skip(s, p + 1 + w, n) end
  if b == 0xde or b == 0xdf then return nil, skip(s, p + 1 + w, 2 * n) end
  if b == 0xd9 or b == 0xda or b == 0xdb then
    return string.sub(s, p + 1 + w, p + w + n), p + 1 + w + n
  end
  return nil, p + 1 + w + n
end
skip = function(s, p, n)
  for _ = 1, n do
    local _v
    _v, p = item(s, p)
  end
  return p
end
-- (collapse key, accepted_at_ms) of a packed PushMessage.
local function meta(s)
  local p = skip(s, 2, 4)
  local ck, accepted
  ck, p = item(s, p)
  p = skip(s, p, 1)
  accepted, p = item(s, p)
  return ck, accepted
end
return meta
end
local function forget(key, id, ck)
  if ck ~= '' and redis.call('HGET', key, 'c:' .. ck) == id then
    redis.call('HDEL', key, 'c:' .. ck)
  end
end
"""

#: KEYS: queues (a device's may come more than once: its messages in order). ARGS
#: (``_ARGS``): cap, then for each key in turn: message id, packed message, collapse
#: key, key ttl ms → a flat list of (key's index from 1, "r" replaced or "d" dropped,
#: message id), for the older messages the new ones replaced or pushed out.
QUEUE_ENQUEUE = Lua(
    _ARGS
    + _MSGPACK
    + """
local cap = A[1]
local out = {}
local meta
local function note(i, what, id)
  out[#out + 1] = i
  out[#out + 1] = what
  out[#out + 1] = id
end
for i = 1, #KEYS do
  local key, a = KEYS[i], 4 * i - 2
  local id, ck = A[a], A[a + 2]
  -- -2: no such key. A new queue holds one message: no cap to check (unless 0).
  local pttl = redis.call('PTTL', key)
  if ck ~= '' then
    local old = redis.call('HGET', key, 'c:' .. ck)
    if old and old ~= id and redis.call('HDEL', key, old) == 1 then note(i, 'r', old) end
    redis.call('HSET', key, 'c:' .. ck, id)
  end
  redis.call('HSET', key, id, A[a + 1])
  -- HLEN counts collapse pointers too: only past it is the full read needed.
  if (pttl ~= -2 or cap < 1) and redis.call('HLEN', key) > cap then
    meta = meta or msgpack_helpers()
    local all = redis.call('HGETALL', key)
    local queued = {}
    for j = 1, #all, 2 do
      if string.sub(all[j], 1, 2) ~= 'c:' then
        local mck, accepted = meta(all[j + 1])
        queued[#queued + 1] = {accepted, all[j], mck}
      end
    end
    if #queued > cap then
      table.sort(queued, function(x, y)
        if x[1] ~= y[1] then return x[1] < y[1] end
        return x[2] < y[2]
      end)
      for j = 1, #queued - cap do
        redis.call('HDEL', key, queued[j][2])
        forget(key, queued[j][2], queued[j][3])
        note(i, 'd', queued[j][2])
      end
    end
  end
  -- The key lives as long as its longest-lived message.
  local ttl = A[a + 3]
  if pttl < ttl then redis.call('PEXPIRE', key, ms(ttl)) end
end
return out
"""
)

#: KEYS: queues. ARGS (``_ARGS``), for each key in turn: message id, then "=" and its
#: collapse key ("=" alone: it has none), or "?" when not known (the queued message is
#: read for it) → for each key, 1 if the message was queued (and now is not), else 0.
QUEUE_REMOVE = Lua(
    _ARGS
    + _MSGPACK
    + """
local out = {}
local meta
for i = 1, #KEYS do
  local key, id, ck = KEYS[i], A[2 * i - 1], A[2 * i]
  local queued = true
  if ck == '?' then
    local v = redis.call('HGET', key, id)
    queued = v ~= false
    if queued then
      meta = meta or msgpack_helpers()
      ck = meta(v) or ''
    end
  else
    ck = string.sub(ck, 2)
  end
  out[i] = 0
  if queued and redis.call('HDEL', key, id) == 1 then
    forget(key, id, ck)
    out[i] = 1
  end
end
return out
"""
)

#: KEYS: statuses. ARGS (``_ARGS``), for each key in turn: target kind,
#: accepted_at_ms, expires_at_ms, unix ms to drop at, delivered count, number of
#: devices, then that many (device id, status letter) pairs → the number of statuses
#: written. ``p`` counts the devices still accepted (``RECEIPT_RECORD``).
STATUS_CREATE = Lua(
    _ARGS
    + """
local p = 1
for i = 1, #KEYS do
  local key = KEYS[i]
  local fields = {'t', A[p], 'a', ms(A[p + 1]), 'e', ms(A[p + 2])}
  if A[p + 4] ~= 0 then
    fields[7], fields[8] = 'n', ms(A[p + 4])
  end
  local q, pending = p + 6, 0
  for _ = 1, A[p + 5] do
    fields[#fields + 1] = 'd:' .. A[q]
    fields[#fields + 1] = A[q + 1]
    if A[q + 1] == 'a' then pending = pending + 1 end
    q = q + 2
    -- unpack() is bounded by Lua's C stack: a long device list goes in parts.
    if #fields >= 1000 then
      redis.call('HSET', key, unpack(fields))
      fields = {}
    end
  end
  if pending > 0 then
    fields[#fields + 1] = 'p'
    fields[#fields + 1] = ms(pending)
  end
  if #fields > 0 then redis.call('HSET', key, unpack(fields)) end
  redis.call('PEXPIREAT', key, ms(A[p + 3]))
  p = q
end
return #KEYS
"""
)

#: KEYS: statuses. ARGS (``_ARGS``), for each key in turn: device id ("" for a
#: fan-out delivery), status letter, the unix ms at which the status is to go once
#: final (0: not sooner) → the number of receipts applied. A listed device moves only
#: from accepted; other deliveries count. When the last listed device leaves accepted,
#: the status expires at that time if it would have lived longer. A listed device's
#: delivery (the common case) is four commands: HGET, HSET, HINCRBY, PEXPIREAT ... LT
#: (Redis ≥ 7.0: only ever brings the expiry closer).
RECEIPT_RECORD = Lua(
    _ARGS
    + """
local function record(key, device, letter, final_at)
  if device ~= '' then
    local f = 'd:' .. device
    local current = redis.call('HGET', key, f)
    if current then
      if current == 'a' then
        redis.call('HSET', key, f, letter)
        -- 'p' counts devices still 'a'. Statuses written before it existed have none:
        -- there the decrement makes it -1, and it is taken away again.
        local pending = redis.call('HINCRBY', key, 'p', -1)
        if pending < 0 then
          redis.call('HDEL', key, 'p')
        elseif pending == 0 and final_at > 0 then
          redis.call('PEXPIREAT', key, ms(final_at), 'LT')
        end
      end
      return
    end
  end
  if redis.call('EXISTS', key) == 0 then return end
  if letter == 'd' then redis.call('HINCRBY', key, 'n', 1) end
end
for i = 1, #KEYS do
  record(KEYS[i], A[3 * i - 2], A[3 * i - 1], A[3 * i])
end
return #KEYS
"""
)

#: KEYS: inbox stream, its entry counter. ARGV: max entries (approximate), payload, idle
#: ttl ms → the entry's number. Numbered in the same step as it is added, so entries
#: are numbered in stream order: a node that reads a number more than one past the last
#: it read knows entries were trimmed before it read them.
INBOX_ADD = Lua(
    """
local n = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 's', n, 'b', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return n
"""
)

#: KEYS: a directory bucket. ARGV: cutoff (unix s) → delete the fields whose last-seen
#: (base 36) is at or before it; returns how many. A bucket holds ~64 users' devices.
DIRECTORY_SWEEP = Lua(
    """
local cutoff = tonumber(ARGV[1])
local all = redis.call('HGETALL', KEYS[1])
local gone = 0
for i = 1, #all, 2 do
  local seen = tonumber(all[i + 1], 36)
  if seen == nil or seen <= cutoff then
    redis.call('HDEL', KEYS[1], all[i])
    gone = gone + 1
  end
end
return gone
"""
)

#: KEYS: status. ARGV: count.
RECEIPT_ADD_DELIVERED = Lua(
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HINCRBY', KEYS[1], 'n', ARGV[1])
"""
)
