-- ARGV: id, idempotency key ('' for none), its TTL (s), priority, model type, kind, then the
-- record's field/value pairs. Returns the job id (an earlier job's for a known idempotency
-- key), or false when the id is taken and the caller must draw another.
local id, idempotency_key = ARGV[1], ARGV[2]
if idempotency_key ~= '' then
  local earlier = redis.call('GET', idempotency_key)
  if earlier then return earlier end
end
local job = KEY.job .. id
if redis.call('EXISTS', job) == 1 then return false end

local now = now_seconds()
local order = redis.call('INCR', KEY.order)
redis.call('HSET', job, 'order', order, 'created_at', stamp(now), 'updated_at', stamp(now),
  unpack(ARGV, 7))
redis.call('ZADD', KEY.queue, queue_score(ARGV[4], order), id)
local indexes = {
  KEY.all_jobs, KEY.status_index .. 'queued', KEY.model_index .. ARGV[5], KEY.kind_index .. ARGV[6]
}
for _, index in ipairs(indexes) do
  redis.call('ZADD', index, order, id)
end
add_event(id, now, 'queued', 'submitted')
if idempotency_key ~= '' then
  redis.call('SET', idempotency_key, id, 'EX', ARGV[3])
end
return id
