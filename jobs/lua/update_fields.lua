-- ARGV: id, then field/value pairs, written only when the job exists. Returns 1, or 0.
local job = KEY.job .. ARGV[1]
if redis.call('EXISTS', job) == 0 then return 0 end
redis.call('HSET', job, unpack(ARGV, 2))
return 1
