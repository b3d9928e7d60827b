-- ARGV: id, JSON object of the latest metrics (see merge_progress in common.lua). Returns 1, or
-- 0 when there is no such job.
if redis.call('EXISTS', KEY.job .. ARGV[1]) == 0 then return 0 end
merge_progress(ARGV[1], ARGV[2])
return 1
