-- ARGV: dispatcher id, lease (s), window, free cpus, free gpus ('' and '' when anything fits).
-- Promotes retries whose backoff is over, then claims the first of the `window` best queued
-- jobs that fits; jobs that do not fit keep their place. Returns the claimed job's record as
-- HGETALL pairs, or false when nothing fits.
local dispatcher, lease = ARGV[1], tonumber(ARGV[2])
local free_cpus, free_gpus = tonumber(ARGV[4]), tonumber(ARGV[5])
local now = now_seconds()
-- First a write that needs memory (INCRBY is deny-oom), so that a full Redis refuses the whole
-- claim rather than let its ZREMs through: a run Redis has no room for never starts.
redis.call('INCRBY', KEY.order, 0)

-- Bounded so that one claim stays short when a burst of retries falls due together.
local due = redis.call('ZRANGEBYSCORE', KEY.delayed, '-inf', now, 'LIMIT', 0, 100)
for _, id in ipairs(due) do
  redis.call('ZREM', KEY.delayed, id)
  enqueue(id)
end

local function fits(id)
  if not free_cpus then return true end
  local needs = redis.call('HMGET', KEY.job .. id, 'needs_cpus', 'needs_gpus')
  return tonumber(needs[1]) <= free_cpus and tonumber(needs[2]) <= free_gpus
end

local window = free_cpus and tonumber(ARGV[3]) or 1
for _, id in ipairs(redis.call('ZRANGE', KEY.queue, 0, window - 1)) do
  if fits(id) then
    local job = KEY.job .. id
    local attempt = redis.call('HINCRBY', job, 'attempts', 1)
    redis.call('HINCRBY', job, 'claims', 1)  -- the new lease's fencing token
    local max_attempts = redis.call('HGET', job, 'max_attempts')
    local deadline = now + lease
    redis.call('HSET', job, 'owner', dispatcher, 'started_at', stamp(now),
      'lease_deadline', stamp(deadline), 'pending_reason', '')
    redis.call('ZREM', KEY.queue, id)
    redis.call('ZADD', KEY.running, deadline, id)
    set_status(id, 'queued', 'running', now)
    add_event(id, now, 'running', string.format('attempt %d of %s', attempt, max_attempts), dispatcher)
    return redis.call('HGETALL', job)
  end
end
return false
