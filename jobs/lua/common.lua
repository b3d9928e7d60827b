-- Helpers every genfleet script shares. queue.py puts keys.py's KEY table above this file and
-- the script's own body below it.

local function now_seconds()
  local time = redis.call('TIME')
  return tonumber(time[1]) + tonumber(time[2]) / 1e6
end

local function stamp(seconds)
  return string.format('%.6f', seconds)
end

-- Higher priority first, then submit order; both parts fit exactly in a double's 53 bits.
local function queue_score(priority, order)
  return (9 - tonumber(priority)) * 2 ^ 40 + tonumber(order)
end

local function enqueue(id)
  local fields = redis.call('HMGET', KEY.job .. id, 'priority', 'order')
  redis.call('ZADD', KEY.queue, queue_score(fields[1], fields[2]), id)
end

-- Lists capped by bytes (keys.py's *_BYTES_KEPT, and a count for logs): the job's footprint
-- hash keeps each list's bytes under `<name>:bytes` and the entries it dropped, oldest first,
-- under `<name>:dropped`, so that a reader can say what is missing.
-- A list from before lists were capped has no count of its bytes yet: count them once.
local function count_held(footprint, key, name)
  if redis.call('HEXISTS', footprint, name .. ':bytes') == 1 then return end
  local bytes = 0
  for _, entry in ipairs(redis.call('LRANGE', key, 0, -1)) do bytes = bytes + #entry end
  redis.call('HSET', footprint, name .. ':bytes', bytes)
end

local function push_capped(id, key, name, value, cap_bytes, cap_count)
  local footprint = KEY.footprint .. id
  count_held(footprint, key, name)
  local count = redis.call('RPUSH', key, value)
  local bytes = redis.call('HINCRBY', footprint, name .. ':bytes', #value)
  while count > 1 and (bytes > cap_bytes or (cap_count and count > cap_count)) do
    local dropped = redis.call('LPOP', key)
    bytes = redis.call('HINCRBY', footprint, name .. ':bytes', -#dropped)
    redis.call('HINCRBY', footprint, name .. ':dropped', 1)
    count = count - 1
  end
end

local function pop_capped(id, key, name)
  count_held(KEY.footprint .. id, key, name)
  local value = redis.call('RPOP', key)
  if value then redis.call('HINCRBY', KEY.footprint .. id, name .. ':bytes', -#value) end
end

local function add_event(id, now, status, message, dispatcher)
  local event = {ts = now, status = status, message = message, dispatcher = dispatcher}
  push_capped(id, KEY.events .. id, 'events', cjson.encode(event), CAP.event_bytes)
end

-- Moves the job between status indexes, keeping its submit-order score, and stamps it.
local function set_status(id, from, to, now)
  local submitted = redis.call('ZSCORE', KEY.all_jobs, id)
  redis.call('ZREM', KEY.status_index .. from, id)
  redis.call('ZADD', KEY.status_index .. to, submitted, id)
  redis.call('HSET', KEY.job .. id, 'status', to, 'updated_at', stamp(now))
end

-- nil when the lease (`dispatcher`, `claim`) still holds the running job, else why not: 'missing'
-- or 'lost'. The claim number is the fencing token: it grows with every claim, so a dispatcher
-- that lost the job and claimed it again cannot write for its old copy of the run.
local function lease_problem(id, dispatcher, claim)
  local state = redis.call('HMGET', KEY.job .. id, 'status', 'owner', 'claims')
  if not state[1] then return 'missing' end
  if state[1] ~= 'running' or state[2] ~= dispatcher or state[3] ~= claim then return 'lost' end
  return nil
end

-- Overlays a metrics row (JSON) on the record's progress, so that the listing shows the newest
-- value of every metric even when an epoch skips evaluation.
local function merge_progress(id, row)
  local job = KEY.job .. id
  local progress = cjson.decode(redis.call('HGET', job, 'progress') or '{}')
  for name, value in pairs(cjson.decode(row)) do
    progress[name] = value
  end
  redis.call('HSET', job, 'progress', cjson.encode(progress))
end

local function append_log(id, line)
  push_capped(id, KEY.logs .. id, 'logs', line, CAP.log_bytes, CAP.log_lines)
  redis.call('INCR', KEY.log_count .. id)
end

local function artifact_key(family, id, trial)
  if trial == '' then return family .. id end
  return family .. id .. KEY.trial_infix .. trial
end

-- A run resumed from a checkpoint before its last recorded epoch reports those epochs again:
-- its curve rewinds to the checkpoint, so that each epoch keeps one row, the newest.
local function rewind(id, key, name, row)
  local epoch = cjson.decode(row).epoch
  if type(epoch) ~= 'number' then return end
  local function last_epoch()
    local last = redis.call('LINDEX', key, -1)
    return last and tonumber(cjson.decode(last).epoch)
  end
  local last = last_epoch()
  while last and last >= epoch do
    pop_capped(id, key, name)
    last = last_epoch()
  end
end

-- Writes a batch of artifacts: ARGV from `first` on, in groups of four (kind, trial or '' for
-- the job itself, two values; see store.py's _run_write). Checks every kind before the first
-- write, so that a bad batch changes nothing; returns an error reply for one, else nil.
local ARTIFACT_KINDS = {
  metrics = true, image = true, log = true, checkpoint = true, trial = true, event = true,
}
local function write_artifacts(id, dispatcher, first)
  for i = first, #ARGV, 4 do
    if not ARTIFACT_KINDS[ARGV[i]] then
      return redis.error_reply('write_artifacts: unknown kind ' .. ARGV[i])
    end
  end
  local now = now_seconds()
  for i = first, #ARGV, 4 do
    local kind, trial, value, extra = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    if trial ~= '' then redis.call('SADD', KEY.artifact_trials .. id, trial) end
    if kind == 'metrics' then
      if trial == '' then merge_progress(id, value) end
      local key, name = artifact_key(KEY.metrics, id, trial), 'metrics:' .. trial
      rewind(id, key, name, value)
      push_capped(id, key, name, value, CAP.metric_bytes)
    elseif kind == 'image' then  -- value: "<name>:<epoch>", extra: the JSON index entry
      redis.call('HSET', artifact_key(KEY.images, id, trial), value, extra)
    elseif kind == 'log' then
      append_log(id, value)
    elseif kind == 'checkpoint' then
      redis.call('RPUSH', KEY.checkpoints .. id, value)
    elseif kind == 'trial' then
      redis.call('HSET', KEY.trials .. id, trial, value)
    else
      add_event(id, now, 'running', value, dispatcher)
    end
  end
  return nil
end

-- Takes a queued job (waiting in the queue or out its backoff) away for good.
local function withdraw(id, now, to, message)
  redis.call('ZREM', KEY.queue, id)
  redis.call('ZREM', KEY.delayed, id)
  redis.call('HSET', KEY.job .. id, 'finished_at', stamp(now), 'pending_reason', '')
  set_status(id, 'queued', to, now)
  add_event(id, now, to, message)
end

-- Ends a running job's attempt in a terminal status.
local function finish(id, now, to, message, dispatcher)
  redis.call('ZREM', KEY.running, id)
  redis.call('HSET', KEY.job .. id, 'finished_at', stamp(now), 'lease_deadline', '')
  set_status(id, 'running', to, now)
  add_event(id, now, to, message, dispatcher)
end

-- Ends an attempt that did not succeed: cancelled when a cancel was asked for, failed when it
-- may not be retried, dead when its attempts are used up, else queued again, after waiting
-- out the backoff in the delayed set when that is positive. Returns the new status.
local function end_failed_attempt(id, now, retryable, backoff, message, dispatcher)
  local job = KEY.job .. id
  local fields = redis.call('HMGET', job, 'attempts', 'max_attempts', 'cancel_requested')
  local attempts, max_attempts = tonumber(fields[1]), tonumber(fields[2])
  local to = nil
  if fields[3] == '1' then
    to = 'cancelled'
  elseif not retryable then
    to = 'failed'
  elseif attempts >= max_attempts then
    to = 'dead'
  end
  if to then
    finish(id, now, to, message, dispatcher)
    return to
  end
  redis.call('ZREM', KEY.running, id)
  redis.call('HSET', job, 'lease_deadline', '')
  local delay = math.min(backoff.cap, backoff.base * 2 ^ (attempts - 1))
  if delay > 0 then
    redis.call('ZADD', KEY.delayed, now + delay, id)
    redis.call('HSET', job, 'pending_reason', string.format('retry after %.1f s backoff', delay))
    message = message .. string.format('; retry in %.1f s', delay)
  else
    enqueue(id)
  end
  set_status(id, 'running', 'queued', now)
  add_event(id, now, 'queued', message, dispatcher)
  return 'queued'
end


-- Hands a running job back to the queue at its old place without using an attempt: its run
-- stopped for a reason outside the job (its dispatcher stopped or crashed, a node or the relay
-- was lost). `counted` interruptions (crashes, not clean stops) have a cap of their own, so
-- that a job which takes its dispatcher down every time still ends, dead. Returns the status.
local function hand_back(id, now, message, dispatcher, counted, max_interruptions)
  local job = KEY.job .. id
  redis.call('HINCRBY', job, 'attempts', -1)
  if redis.call('HGET', job, 'cancel_requested') == '1' then
    finish(id, now, 'cancelled', message, dispatcher)
    return 'cancelled'
  end
  if counted then
    local interruptions = redis.call('HINCRBY', job, 'interruptions', 1)
    message = string.format('%s (interruption %d of %d)', message, interruptions, max_interruptions)
    redis.call('HSET', job, 'last_error', message)
    if interruptions >= max_interruptions then
      finish(id, now, 'dead', message .. ': too many interruptions', dispatcher)
      return 'dead'
    end
  end
  redis.call('ZREM', KEY.running, id)
  redis.call('HSET', job, 'lease_deadline', '')
  enqueue(id)
  set_status(id, 'running', 'queued', now)
  add_event(id, now, 'queued', message, dispatcher)
  return 'queued'
end
