"""The Lua scripts of the Redis queue backend: one per transition, each atomic on the server.

Layout they keep (every key under the hash tag ``{prefix}:``, passed as ``KEYS[1]``, so all share
a cluster slot): ``job:<id>`` hash per job; ``ready:<pool>`` sorted set of claimable jobs (all
scores 0, members ``<inverted priority>:<seq>:<id>`` so lexical order is priority then FIFO);
``delayed`` (score ``not_before``), ``active`` (score lease expiry) and ``final`` (score finish
time) sorted sets of job ids; ``running`` (score: when it started running) set of job ids, for
listing (a job already running when a gantryd without it was upgraded is missing from it until
it ends); ``deliveries`` (score first seen); ``outbox`` (score = seq) with its data in
``outbox:data``; ``counts`` and ``readycount`` hashes kept by the scripts; ``notify`` list (at
most one element) for ``wait_ready``.

Time is an argument (the queue's injected clock), never Redis ``TIME``. ``agent.queue.redis``
loads ``SCRIPTS`` and calls them by their SHA-1 (``SHAS``).
"""

from __future__ import annotations

import hashlib

# The job hash fields that scripts return (``fields(id)``), in this order.
FIELDS = (
    "state", "spec", "attempts", "enqueued_at", "not_before", "updated_at",
    "runner_name", "conclusion", "last_error", "token", "expires",
)  # fmt: skip

# Shared by every script. KEYS[1] is the "{prefix}:" every key starts with.
_LIB = """
local P = KEYS[1]
local FINAL = {done = true, dead = true, cancelled = true}
local FIELDS = {'state', 'spec', 'attempts', 'enqueued_at', 'not_before', 'updated_at',
                'runner_name', 'conclusion', 'last_error', 'token', 'expires'}
local function jkey(id) return P .. 'job:' .. id end
local function count(pool, state, d)
  redis.call('HINCRBY', P .. 'counts', pool .. '\\t' .. state, d)
end
local function move(id, pool, from, to, now)
  count(pool, from, -1); count(pool, to, 1)
  redis.call('HSET', jkey(id), 'state', to, 'updated_at', now)
end
local function notify()
  redis.call('LPUSH', P .. 'notify', '1'); redis.call('LTRIM', P .. 'notify', 0, 0)
end
local function to_ready(id)
  local j = redis.call('HMGET', jkey(id), 'pool', 'priority', 'rkey')
  redis.call('ZADD', P .. 'ready:' .. j[1], 0, j[3])
  redis.call('HINCRBY', P .. 'readycount', j[1] .. '\\t' .. j[2], 1)
end
local function unqueue(id)
  if redis.call('ZREM', P .. 'delayed', id) == 1 then return end
  local j = redis.call('HMGET', jkey(id), 'pool', 'priority', 'rkey')
  if redis.call('ZREM', P .. 'ready:' .. j[1], j[3]) == 1 then
    redis.call('HINCRBY', P .. 'readycount', j[1] .. '\\t' .. j[2], -1)
  end
end
local function place(id, not_before, now)
  if tonumber(not_before) <= tonumber(now) then to_ready(id); notify()
  else redis.call('ZADD', P .. 'delayed', not_before, id) end
end
local function promote(now)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'delayed', '-inf', now)) do
    redis.call('ZREM', P .. 'delayed', id); to_ready(id)
  end
end
local function outbox(id, state, detail)
  local seq = redis.call('INCR', P .. 'seq')
  redis.call('ZADD', P .. 'outbox', seq, id)
  redis.call('HSET', P .. 'outbox:data', id, state .. '\\n' .. detail)
end
local function new_delivery(delivery, now)
  return delivery == '' or redis.call('ZADD', P .. 'deliveries', 'NX', now, delivery) == 1
end
local function leave(id, state, now)
  -- take a non-final job out of whichever index its state puts it in
  if state == 'claimed' then redis.call('ZREM', P .. 'active', id)
  elseif state == 'queued' then unqueue(id)
  elseif state == 'running' then redis.call('ZREM', P .. 'running', id)
  elseif state == 'held' then redis.call('ZREM', P .. 'held', id) end
  redis.call('HDEL', jkey(id), 'token', 'expires')
end
local function finalize(id, pool, state, to, now)
  leave(id, state, now); move(id, pool, state, to, now)
  redis.call('ZADD', P .. 'final', now, id)
end
local function leased(id, token)
  local j = redis.call('HMGET', jkey(id), 'state', 'token', 'pool', 'attempts')
  if j[1] ~= 'claimed' or j[2] ~= token then return nil end
  return j
end
local function fields(id) return redis.call('HMGET', jkey(id), unpack(FIELDS)) end
"""

_ENQUEUE = """
local id, pool, priority, rkey_head, spec, now, not_before, delivery, held = unpack(ARGV)
if not new_delivery(delivery, now) then return 'duplicate_delivery' end
local st = redis.call('HGET', jkey(id), 'state')
if st == 'held' and held ~= '1' then  -- approved: now it may be provisioned
  leave(id, 'held', now)
  move(id, redis.call('HGET', jkey(id), 'pool'), 'held', 'queued', now)
  redis.call('HSET', jkey(id), 'not_before', not_before)
  place(id, not_before, now)
  outbox(id, 'queued', '{}')
  return 'created'
end
if st then if FINAL[st] then return 'finished' end return 'known' end
local state = held == '1' and 'held' or 'queued'
local seq = redis.call('INCR', P .. 'seq')
redis.call('HSET', jkey(id), 'spec', spec, 'state', state, 'pool', pool, 'priority', priority,
  'rkey', rkey_head .. string.format('%020d', seq) .. ':' .. id, 'attempts', 0,
  'enqueued_at', now, 'not_before', not_before, 'updated_at', now)
redis.call('SADD', P .. 'pools', pool)
count(pool, state, 1)
if state == 'queued' then place(id, not_before, now)
else redis.call('ZADD', P .. 'held', now, id) end
outbox(id, state, '{}')
return 'created'
"""

_CLAIM = """
local now, expires, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local pools = ARGV[4] ~= '' and cjson.decode(ARGV[4]) or redis.call('SMEMBERS', P .. 'pools')
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'active', '-inf', now)) do
  redis.call('ZREM', P .. 'active', id)
  redis.call('HDEL', jkey(id), 'token', 'expires')
  move(id, redis.call('HGET', jkey(id), 'pool'), 'claimed', 'queued', now)
  to_ready(id)
end
promote(now)
if n <= 0 then return {} end
local heads = {}
for _, pool in ipairs(pools) do
  if redis.call('SISMEMBER', P .. 'paused', pool) == 0 then
    for _, m in ipairs(redis.call('ZRANGE', P .. 'ready:' .. pool, 0, n - 1)) do
      table.insert(heads, {m, pool})
    end
  end
end
table.sort(heads, function(a, b) return a[1] < b[1] end)
local out = {}
for i = 1, math.min(n, #heads) do
  local m, pool = heads[i][1], heads[i][2]
  local id = string.match(m, ':([^:]+)$')
  local token = ARGV[4 + i]
  redis.call('ZREM', P .. 'ready:' .. pool, m)
  local priority = redis.call('HGET', jkey(id), 'priority')
  redis.call('HINCRBY', P .. 'readycount', pool .. '\\t' .. priority, -1)
  move(id, pool, 'queued', 'claimed', now)
  redis.call('HSET', jkey(id), 'token', token, 'expires', expires)
  redis.call('ZADD', P .. 'active', expires, id)
  table.insert(out, fields(id))
end
return out
"""

_HEARTBEAT = """
local id, token, now, expires = unpack(ARGV)
if not leased(id, token) then return false end
redis.call('HSET', jkey(id), 'expires', expires, 'updated_at', now)
redis.call('ZADD', P .. 'active', expires, id)
return fields(id)
"""

_ACK = """
local now, n = ARGV[1], (#ARGV - 1) / 2
local held = {}
for i = 1, n do
  local id, token = ARGV[2 * i], ARGV[2 * i + 1]
  local j = leased(id, token)
  if not j then return {id, token} end
  held[i] = j[3]
end
for i = 1, n do finalize(ARGV[2 * i], held[i], 'claimed', 'done', now) end
return false
"""

_FAIL = """
local id, token, now, reason = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local j = leased(id, token)
if not j then return false end
local failures = tonumber(j[4]) + 1
local retry_at = ARGV[4 + failures]
redis.call('HSET', jkey(id), 'attempts', failures, 'last_error', reason)
if retry_at == nil then
  finalize(id, j[3], 'claimed', 'dead', now)
  redis.call('HSET', jkey(id), 'conclusion', reason)
  outbox(id, 'dead', cjson.encode({reason = reason}))
  return ''
end
leave(id, 'claimed', now)
move(id, j[3], 'claimed', 'queued', now)
redis.call('HSET', jkey(id), 'not_before', retry_at)
place(id, retry_at, now)
outbox(id, 'queued',
  cjson.encode({reason = reason, attempts = failures, retry_at = tonumber(retry_at)}))
return retry_at
"""

_RELEASE = """
local id, token, now = unpack(ARGV)
local j = leased(id, token)
if not j then return 0 end
leave(id, 'claimed', now)
move(id, j[3], 'claimed', 'queued', now)
to_ready(id); notify()
return 1
"""

_MARK_RUNNING = """
local id, runner, now, delivery = unpack(ARGV)
if not new_delivery(delivery, now) then return 0 end
local j = redis.call('HMGET', jkey(id), 'state', 'pool')
if not j[1] or FINAL[j[1]] then return 0 end
leave(id, j[1], now)
move(id, j[2], j[1], 'running', now)
redis.call('HSET', jkey(id), 'runner_name', runner)
redis.call('ZADD', P .. 'running', now, id)
outbox(id, 'running', cjson.encode({runner_name = runner}))
return 1
"""

_FINISH = """
local id, conclusion, now, delivery, tombstone = unpack(ARGV)
if not new_delivery(delivery, now) then return 0 end
local j = redis.call('HMGET', jkey(id), 'state', 'pool')
if not j[1] then
  redis.call('HSET', jkey(id), 'spec', tombstone, 'state', 'done', 'pool', '', 'priority', 0,
    'attempts', 0, 'enqueued_at', now, 'not_before', now, 'updated_at', now,
    'conclusion', conclusion)
  count('', 'done', 1)
  redis.call('ZADD', P .. 'final', now, id)
  return 1
end
if FINAL[j[1]] then return 0 end
finalize(id, j[2], j[1], 'done', now)
redis.call('HSET', jkey(id), 'conclusion', conclusion)
outbox(id, 'done', cjson.encode({conclusion = conclusion}))
return 1
"""

_CANCEL = """
local id, reason, now = unpack(ARGV)
local j = redis.call('HMGET', jkey(id), 'state', 'pool')
if not j[1] or FINAL[j[1]] then return 0 end
finalize(id, j[2], j[1], 'cancelled', now)
redis.call('HSET', jkey(id), 'conclusion', reason)
outbox(id, 'cancelled', cjson.encode({reason = reason}))
return 1
"""

_RETRY = """
local id, now = unpack(ARGV)
local j = redis.call('HMGET', jkey(id), 'state', 'pool', 'rkey')
if j[1] ~= 'dead' and j[1] ~= 'cancelled' then return 0 end
local seq = redis.call('INCR', P .. 'seq')
redis.call('ZREM', P .. 'final', id)
move(id, j[2], j[1], 'queued', now)
redis.call('HSET', jkey(id), 'attempts', 0, 'not_before', now,
  'rkey', string.match(j[3], '^%d+:') .. string.format('%020d', seq) .. ':' .. id)
redis.call('HDEL', jkey(id), 'conclusion', 'runner_name')
place(id, now, now)
outbox(id, 'queued', '{}')
return 1
"""

# QUEUED/CLAIMED: every candidate's rkey, sorted (= claim order). Others: the running and final
# indexes newest first (final read in chunks until ``limit`` match), then merged by updated_at.
_LIST_JOBS = """
local now, limit, by_pool, only = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1', ARGV[4]
local want = {}
for i = 5, #ARGV do want[ARGV[i]] = true end
promote(now)
local served, others = {}, {}
local function take(into, ids)
  local n = 0
  for _, id in ipairs(ids) do
    local j = redis.call('HMGET', jkey(id), 'state', 'pool', 'rkey', 'updated_at')
    if want[j[1]] and (not by_pool or j[2] == only) then
      table.insert(into, {id, j[3], tonumber(j[4])}); n = n + 1
    end
  end
  return n
end
if want.queued then
  local pools = by_pool and {only} or redis.call('SMEMBERS', P .. 'pools')
  for _, pool in ipairs(pools) do
    for _, m in ipairs(redis.call('ZRANGE', P .. 'ready:' .. pool, 0, limit - 1)) do
      table.insert(served, {string.match(m, ':([^:]+)$'), m})
    end
  end
  take(served, redis.call('ZRANGE', P .. 'delayed', 0, -1))
end
if want.claimed then take(served, redis.call('ZRANGE', P .. 'active', 0, -1)) end
table.sort(served, function(a, b) return a[2] < b[2] end)
if #served < limit then
  if want.running then take(others, redis.call('ZREVRANGE', P .. 'running', 0, -1)) end
  if want.held then take(others, redis.call('ZREVRANGE', P .. 'held', 0, -1)) end
  if want.done or want.dead or want.cancelled then
    local found, from = 0, 0
    while found < limit do
      local ids = redis.call('ZREVRANGE', P .. 'final', from, from + 255)
      if #ids == 0 then break end
      found = found + take(others, ids); from = from + 256
    end
  end
  table.sort(others, function(a, b) return a[3] > b[3] end)
end
local out = {}
for _, list in ipairs({served, others}) do
  for _, e in ipairs(list) do
    if #out >= limit then return out end
    table.insert(out, fields(e[1]))
  end
end
return out
"""

_RECORD_DELIVERY = """
return new_delivery(ARGV[1], ARGV[2]) and 1 or 0
"""

_POSITION = """
local id, now = unpack(ARGV)
promote(now)
local j = redis.call('HMGET', jkey(id), 'state', 'pool', 'rkey')
if j[1] ~= 'queued' then return false end
return redis.call('ZLEXCOUNT', P .. 'ready:' .. j[2], '-', '(' .. j[3]) + 1
"""

_COUNTS = """
promote(ARGV[1])
return {redis.call('HGETALL', P .. 'counts'), redis.call('HGETALL', P .. 'readycount')}
"""

_RESUME = """
redis.call('SREM', P .. 'paused', ARGV[1])
notify()
"""

_OUTBOX = """
local out = {}
for _, id in ipairs(redis.call('ZRANGE', P .. 'outbox', 0, tonumber(ARGV[1]) - 1)) do
  table.insert(out, {id, redis.call('ZSCORE', P .. 'outbox', id),
    redis.call('HGET', P .. 'outbox:data', id), redis.call('HGET', jkey(id), 'spec')})
end
return out
"""

_ACK_OUTBOX = """
local id, seq = unpack(ARGV)
if redis.call('ZSCORE', P .. 'outbox', id) == seq then
  redis.call('ZREM', P .. 'outbox', id); redis.call('HDEL', P .. 'outbox:data', id)
end
"""

_PRUNE = """
local cutoff, batch = '(' .. ARGV[1], tonumber(ARGV[2])
local ids = redis.call('ZRANGEBYSCORE', P .. 'final', '-inf', cutoff, 'LIMIT', 0, batch)
for _, id in ipairs(ids) do
  local j = redis.call('HMGET', jkey(id), 'state', 'pool')
  count(j[2], j[1], -1)
  redis.call('DEL', jkey(id)); redis.call('ZREM', P .. 'final', id)
  redis.call('ZREM', P .. 'outbox', id); redis.call('HDEL', P .. 'outbox:data', id)
end
local d = redis.call('ZRANGEBYSCORE', P .. 'deliveries', '-inf', cutoff, 'LIMIT', 0, batch)
if #d > 0 then redis.call('ZREM', P .. 'deliveries', unpack(d)) end
return {#ids, #d}
"""

SCRIPTS = {
    name: _LIB + body
    for name, body in {
        "enqueue": _ENQUEUE,
        "claim": _CLAIM,
        "heartbeat": _HEARTBEAT,
        "ack": _ACK,
        "fail": _FAIL,
        "release": _RELEASE,
        "mark_running": _MARK_RUNNING,
        "finish": _FINISH,
        "cancel": _CANCEL,
        "retry": _RETRY,
        "list_jobs": _LIST_JOBS,
        "record_delivery": _RECORD_DELIVERY,
        "position": _POSITION,
        "counts": _COUNTS,
        "resume": _RESUME,
        "outbox": _OUTBOX,
        "ack_outbox": _ACK_OUTBOX,
        "prune": _PRUNE,
    }.items()
}
SHAS = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in SCRIPTS.items()}
