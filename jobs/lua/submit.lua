-- ARGV: id, idempotency key ('' for none), its TTL (s), the spec's digest, priority, model
-- type, kind, then the record's field/value pairs. Returns the job id: an earlier job's for a
-- known idempotency key submitted with the same spec, or {'conflict', earlier id} when that
-- key came with another spec. False when the id is taken and the caller must draw another.
-- The key of a job deleted since is free again.
local id, idempotency_key, digest = ARGV[1], ARGV[2], ARGV[4]
if idempotency_key ~= '' then
  local earlier = redis.call('GET', idempotency_key)
  if earlier then
    local earlier_id, earlier_digest = string.match(earlier, '^(%S+) (%S+)$')
    -- a key stored before keys were bound to specs holds the bare id
    earlier_id = earlier_id or earlier
    if redis.call('EXISTS', KEY.job .. earlier_id) == 1 then
      if earlier_digest and earlier_digest ~= digest then return {'conflict', earlier_id} end
      return earlier_id
    end
  end
end
local job = KEY.job .. id
if redis.call('EXISTS', job) == 1 then return false end

local now = now_seconds()
local order = redis.call('INCR', KEY.order)
redis.call('HSET', job, 'order', order, 'created_at', stamp(now), 'updated_at', stamp(now),
  unpack(ARGV, 8))
redis.call('ZADD', KEY.queue, queue_score(ARGV[5], order), id)
local indexes = {
  KEY.all_jobs, KEY.status_index .. 'queued', KEY.model_index .. ARGV[6], KEY.kind_index .. ARGV[7]
}
for _, index in ipairs(indexes) do
  redis.call('ZADD', index, order, id)
end
add_event(id, now, 'queued', 'submitted')
if idempotency_key ~= '' then
  redis.call('SET', idempotency_key, id .. ' ' .. digest, 'EX', ARGV[3])
end
return id
