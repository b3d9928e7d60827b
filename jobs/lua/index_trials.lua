-- ARGV: id, then trial ids that have artifact keys (metrics or images). Stores from before
-- artifact_trials:<id> did not list them there; this adds them, so that a delete of the sweep
-- finds them. For a job that no longer exists (its record deleted by hand: genfleet's own
-- writes refuse a job without one) the trials' artifact keys are garbage and are removed.
-- Returns {trials added, keys removed}.
local id = ARGV[1]
if redis.call('EXISTS', KEY.job .. id) == 1 then
  local trials = {}
  for i = 2, #ARGV do trials[#trials + 1] = ARGV[i] end
  return {redis.call('SADD', KEY.artifact_trials .. id, unpack(trials)), 0}
end
local removed = 0
for i = 2, #ARGV do
  removed = removed + redis.call('DEL', artifact_key(KEY.metrics, id, ARGV[i]),
    artifact_key(KEY.images, id, ARGV[i]))
end
return {0, removed}
