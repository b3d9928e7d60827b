-- ARGV: id, and for gc and retention the cutoff (Unix seconds) the job must have finished
-- before, or ''. Removes a finished job from Redis in one step: its record, events, logs, artifacts
-- (its trials' too) and index entries, and notes it in the deleted zset until jobs/deletion.py
-- has removed its folders, so that a delete stopped half way is finished later. A write that
-- comes later finds no record and is refused (lease_problem, write_artifacts.lua).
-- Returns {'deleted', trial id, ...}, {'active', status} for a queued or running job, which is
-- left as it was, {'recent'} for one that finished again after the cutoff (retried since gc
-- listed it), also left, or {'missing'}.
local id, cutoff = ARGV[1], tonumber(ARGV[2])
local job = KEY.job .. id
local fields = redis.call('HMGET', job, 'status', 'model_type', 'kind', 'finished_at', 'updated_at')
local status, model, kind = fields[1], fields[2], fields[3]
if not status then return {'missing'} end
if status == 'queued' or status == 'running' then return {'active', status} end
-- A record from before finished_at was stamped on every ending has updated_at.
local finished = tonumber(fields[4]) or tonumber(fields[5]) or 0
if cutoff and finished >= cutoff then return {'recent'} end

-- Trials with a row in the trials hash, and those that only wrote artifacts.
local reply, seen = {'deleted'}, {}
local trial_lists = {
  redis.call('HKEYS', KEY.trials .. id), redis.call('SMEMBERS', KEY.artifact_trials .. id)
}
for _, trials in ipairs(trial_lists) do
  for _, trial in ipairs(trials) do
    if not seen[trial] then
      seen[trial] = true
      table.insert(reply, trial)
      redis.call('DEL', artifact_key(KEY.metrics, id, trial), artifact_key(KEY.images, id, trial))
    end
  end
end
redis.call('DEL', job, KEY.events .. id, KEY.logs .. id, KEY.log_count .. id,
  KEY.metrics .. id, KEY.images .. id, KEY.checkpoints .. id, KEY.trials .. id,
  KEY.artifact_trials .. id, KEY.footprint .. id)

-- Redis never turns a zset that grew past zset-max-listpack-entries back into a listpack as
-- it shrinks: an index that once listed thousands of jobs keeps a skiplist and a hash table
-- sized for them (10 KiB for 10 jobs left of 1,000). A copy onto itself rebuilds it compactly.
local LISTPACK_ENTRIES = 128  -- Redis's default zset-max-listpack-entries
local indexes = {
  KEY.all_jobs, KEY.status_index .. status, KEY.model_index .. model, KEY.kind_index .. kind
}
for _, index in ipairs(indexes) do
  redis.call('ZREM', index, id)
  local left = redis.call('ZCARD', index)
  if left > 0 and left <= LISTPACK_ENTRIES
      and redis.call('OBJECT', 'ENCODING', index) == 'skiplist' then
    redis.call('ZRANGESTORE', index, index, 0, -1)
  end
end
redis.call('ZADD', KEY.deleted, now_seconds(), id)
return reply
