-- ARGV: id, JSON object of the latest metrics. Overlays them on the record's progress, so that
-- the listing shows the newest value of every metric even when an epoch skips evaluation.
-- Returns 1, or 0 when there is no such job.
local job = KEY.job .. ARGV[1]
if redis.call('EXISTS', job) == 0 then return 0 end
local progress = cjson.decode(redis.call('HGET', job, 'progress') or '{}')
for name, value in pairs(cjson.decode(ARGV[2])) do
  progress[name] = value
end
redis.call('HSET', job, 'progress', cjson.encode(progress))
return 1
