-- ARGV: id, worker, claim, log lines kept, then one group of four per write: kind, trial ('' for
-- the job itself), and two values. Every write a run makes (metrics, images, logs, checkpoints,
-- trials, events) comes through here, behind the run's fencing token (lease_problem): all of
-- the batch lands, or none of it when the lease is gone. Returns 'ok', or 'lost' / 'missing'.
local id, worker = ARGV[1], ARGV[2]
local problem = lease_problem(id, worker, ARGV[3])
if problem then return problem end
local kept, now = tonumber(ARGV[4]), now_seconds()

local function artifact(family, trial)
  if trial == '' then return family .. id end
  return family .. id .. KEY.trial_infix .. trial
end

-- A run resumed from a checkpoint before its last recorded epoch reports those epochs again:
-- its curve rewinds to the checkpoint, so that each epoch keeps one row, the newest.
local function rewind(key, row)
  local epoch = cjson.decode(row).epoch
  if type(epoch) ~= 'number' then return end
  local function last_epoch()
    local last = redis.call('LINDEX', key, -1)
    return last and tonumber(cjson.decode(last).epoch)
  end
  local last = last_epoch()
  while last and last >= epoch do
    redis.call('RPOP', key)
    last = last_epoch()
  end
end

local kinds = {metrics = true, image = true, log = true, checkpoint = true, trial = true, event = true}
for i = 5, #ARGV, 4 do  -- before any write, so that a bad batch changes nothing
  if not kinds[ARGV[i]] then return redis.error_reply('write_run: unknown kind ' .. ARGV[i]) end
end

for i = 5, #ARGV, 4 do
  local kind, trial, first, second = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if kind == 'metrics' then
    if trial == '' then merge_progress(id, first) end
    rewind(artifact(KEY.metrics, trial), first)
    redis.call('RPUSH', artifact(KEY.metrics, trial), first)
  elseif kind == 'image' then
    redis.call('HSET', artifact(KEY.images, trial), first, second)
  elseif kind == 'log' then
    append_log(id, first, kept)
  elseif kind == 'checkpoint' then
    redis.call('RPUSH', KEY.checkpoints .. id, first)
  elseif kind == 'trial' then
    redis.call('HSET', KEY.trials .. id, trial, first)
  else
    add_event(id, now, 'running', first, worker)
  end
end
return 'ok'
