-- ARGV: id, reason. Fails a queued job that can never run (it needs more than the whole
-- cluster has), keeping the reason as its error. Returns the status the job had, or 'missing';
-- only a queued job changes.
local id = ARGV[1]
local status = redis.call('HGET', KEY.job .. id, 'status')
if not status then return 'missing' end
if status ~= 'queued' then return status end
redis.call('HSET', KEY.job .. id, 'last_error', ARGV[2])
withdraw(id, now_seconds(), 'failed', 'rejected: ' .. ARGV[2])
return status
