"""The Lua scripts of the Redis push stores.

Every script touches only the keys it is given, all in one hash slot, so it
runs unchanged on a Redis Cluster. Lease times come from the Redis clock
(``TIME``), so gateway clocks need not agree.
"""

from __future__ import annotations

from channel.push.redis.connection import Lua

_NOW = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
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

#: KEYS: queue. ARGV: message id, packed message, collapse key, cap, key ttl ms
#: → {replaced ids, dropped ids}.
QUEUE_ENQUEUE = Lua(
    _MSGPACK
    + """
local key, id, ck, cap = KEYS[1], ARGV[1], ARGV[3], tonumber(ARGV[4])
local replaced, dropped = {}, {}
if ck ~= '' then
  local old = redis.call('HGET', key, 'c:' .. ck)
  if old and old ~= id and redis.call('HDEL', key, old) == 1 then replaced[1] = old end
  redis.call('HSET', key, 'c:' .. ck, id)
end
redis.call('HSET', key, id, ARGV[2])
-- HLEN counts collapse pointers too: only past it is the full read needed.
if redis.call('HLEN', key) > cap then
  local meta = msgpack_helpers()
  local all = redis.call('HGETALL', key)
  local queued = {}
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 2) ~= 'c:' then
      local mck, accepted = meta(all[i + 1])
      queued[#queued + 1] = {accepted, all[i], mck}
    end
  end
  if #queued > cap then
    table.sort(queued, function(a, b)
      if a[1] ~= b[1] then return a[1] < b[1] end
      return a[2] < b[2]
    end)
    for i = 1, #queued - cap do
      redis.call('HDEL', key, queued[i][2])
      forget(key, queued[i][2], queued[i][3])
      dropped[#dropped + 1] = queued[i][2]
    end
  end
end
-- The key lives as long as its longest-lived message (PTTL is -1 on a new key).
local ttl = tonumber(ARGV[5])
if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
return {replaced, dropped}
"""
)

#: KEYS: queue. ARGV: message id[, its collapse key] → 1 if it was queued (and now is
#: not), else 0. Without the collapse key, the queued message is read for it. (A message
#: known to have none is removed by a plain ``HDEL``.)
QUEUE_REMOVE = Lua(
    _MSGPACK
    + """
local ck = ARGV[2]
if ck == nil then
  local v = redis.call('HGET', KEYS[1], ARGV[1])
  if not v then return 0 end
  ck = msgpack_helpers()(v)
end
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
forget(KEYS[1], ARGV[1], ck)
return 1
"""
)

#: KEYS: status. ARGV: device id ("" for a fan-out delivery), status letter, the
#: unix ms at which the status is to go once final (0: not sooner). A listed device
#: moves only from accepted; other deliveries count. When the last listed device leaves
#: accepted, the status expires at that time if it would have lived longer.
#: A listed device's delivery (the common case) is four commands: HGET, HSET, HINCRBY,
#: PEXPIREAT ... LT (Redis ≥ 7.0: only ever brings the expiry closer).
RECEIPT_RECORD = Lua(
    """
if ARGV[1] ~= '' then
  local f = 'd:' .. ARGV[1]
  local current = redis.call('HGET', KEYS[1], f)
  if current then
    if current == 'a' then
      redis.call('HSET', KEYS[1], f, ARGV[2])
      -- 'p' counts devices still 'a'. Statuses written before it existed have none:
      -- there the decrement makes it -1, and it is taken away again.
      local pending = redis.call('HINCRBY', KEYS[1], 'p', -1)
      if pending < 0 then
        redis.call('HDEL', KEYS[1], 'p')
      elseif pending == 0 and tonumber(ARGV[3]) > 0 then
        redis.call('PEXPIREAT', KEYS[1], ARGV[3], 'LT')
      end
    end
    return 1
  end
end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[2] == 'd' then redis.call('HINCRBY', KEYS[1], 'n', 1) end
return 1
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
